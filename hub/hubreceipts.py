"""Hub receipts (``accepted``, ``fetched``): signed once the audit log has indexed the event.

A hub receipt names the audit-log index of its event (:class:`protocol.receipts.HubReceipt`),
and indexes are given by the sequencer in batches after the event's transaction commits.
So the transaction that accepts a packet (or records a fetch) also queues a row in
``hub_receipts_pending`` with the encoded event; :func:`sign_ready` later finds the entry
in ``log_entries`` (by packet id and exact bytes), signs the receipt and files it:
``accepted`` on the packet row (returned to the uploader, and on every idempotent
re-submission), ``fetched`` in the delivery's history and in the sender's mailbox.

Who signs what:

* a submission waits (briefly) for its ``accepted`` receipts with
  :meth:`ReceiptSigner.wait_accepted_many`: rounds of "sequence now, then sign the
  receipts this process is waiting for", shared by every concurrent submission of the
  process (group commit), the signed bytes handed to the waiters without reading them back;
* the background loop (:meth:`ReceiptSigner.run`) signs every ``fetched`` receipt, and the
  ``accepted`` ones nobody waits for any more (older than :data:`LEFT_OVER` seconds: the
  answer went out without it, or the process stopped).

Several hub processes may sign concurrently: PostgreSQL's ``SKIP LOCKED`` gives each
pending row to one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, cast

from sqlalchemy import (
    BigInteger,
    Select,
    Table,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hub.auditlog.models import LogEntry
from hub.auditlog.sequencer import LOCK_KEY
from protocol.codec import encode
from protocol.keys import SigningPrivateKey
from protocol.merkle import leaf_hash
from protocol.receipts import HubReceipt, sign_hub_receipt

from .clock import now
from .db import in_list, run
from .logs import get_logger
from .models import DeliveryEvent, HubReceiptPending, MailboxItem, Packet
from .notify import MailboxNotifier

#: The ``signer`` column of a hub receipt in a delivery's history.
HUB_SIGNER: Final = "hub"
BATCH: Final = 1000
#: Seconds after which the background loop signs an ``accepted`` receipt too: until then
#: the submission that queued it signs it in its own round (and gets the bytes directly).
LEFT_OVER: Final = 1
#: Longest pause between two attempts of a waiting submission (it starts at 50 ms).
WAIT_STEP_MAX: Final = 0.5
log = get_logger("hub.receipts")


# Prebuilt Core statements (building them per pass cost more Python than their round
# trips); lists go in as one parameter (:func:`hub.db.in_list`).
_H = cast(Table, HubReceiptPending.__table__)
_P = cast(Table, Packet.__table__)
_L = cast(Table, LogEntry.__table__)
_E = cast(Table, DeliveryEvent.__table__)
_M = cast(Table, MailboxItem.__table__)


def _pending_query(variant: str, postgres: bool) -> Select[Any]:
    query = (
        select(
            _H.c.id,
            _H.c.kind,
            _H.c.packet_id,
            _H.c.organ,
            _H.c.at,
            _H.c.event,
            _P.c.envelope_digest,
            _P.c.sender,
            _P.c.urgency,
        )
        .select_from(_H.join(_P, _P.c.id == _H.c.packet_id))
        .order_by(_H.c.id)
        .limit(BATCH)
    )
    if variant == "only":
        query = query.where(_H.c.kind == "accepted", in_list(_H.c.packet_id, "ids"))
    elif variant == "before":
        query = query.where(or_(_H.c.kind != "accepted", _H.c.at < bindparam("before")))
    if postgres:
        query = query.with_for_update(of=_H, skip_locked=True)
    return query


_PENDING: Final = {
    (variant, postgres): _pending_query(variant, postgres)
    for variant in ("only", "before", "all")
    for postgres in (False, True)
}
_INDEXED: Final = select(_L.c.idx, _L.c.data, _L.c.packet_id).where(
    in_list(_L.c.packet_id, "ids"),
    in_list(_L.c.leaf_hash, "leaves"),
)
_SET_ACCEPTED: Final = (
    update(_P).where(_P.c.id == bindparam("b_id")).values(hub_receipt=bindparam("b_receipt"))
)
_INSERT_FETCHED: Final = insert(_E).returning(_E.c.id, _E.c.packet_id, _E.c.at)
_INSERT_MAIL: Final = insert(_M)
#: Receipts another process (or the background loop) signed for packets waited for here.
_SIGNED_ELSEWHERE: Final = select(_P.c.id, _P.c.hub_receipt).where(
    in_list(_P.c.id, "ids"), _P.c.hub_receipt.is_not(None)
)
_DONE: Final = delete(_H).where(in_list(_H.c.id, "ids"))
#: In key order: the primary key's index skips rows signed and deleted since (their index
#: entries are marked dead on the first visit), where a bare LIMIT 1 scans the table's
#: dead rows from its first page on every pass until VACUUM.
_ANY_PENDING: Final = select(_H.c.id).order_by(_H.c.id).limit(1)
_WAIT_LOCK: Final = select(func.pg_advisory_xact_lock(bindparam("key", type_=BigInteger)))


@dataclass(slots=True)
class Signed:
    """What one signing pass did."""

    #: The packet ids of every receipt signed, in order.
    packet_ids: list[bytes] = field(default_factory=list)
    #: Organs whose mailbox got a ``fetched`` receipt (to wake).
    wake: set[str] = field(default_factory=set)
    #: The ``accepted`` receipts signed, by packet id.
    accepted: dict[bytes, bytes] = field(default_factory=dict)


async def sign_ready(
    session: AsyncSession,
    key: SigningPrivateKey,
    notifier: MailboxNotifier,
    postgres: bool,
    *,
    only: Collection[bytes] | None = None,
    accepted_before: int | None = None,
) -> Signed:
    """Sign the pending receipts whose events are indexed, in the caller's transaction.

    ``only``: just the ``accepted`` receipts of these packets (a submission's round);
    ``accepted_before``: ``accepted`` receipts only when queued before that time (the
    background pass; ``fetched`` ones always).
    """
    if only is not None:
        if not only:
            return Signed()
        params: dict[str, Any] = {"ids": sorted(set(only))}
        variant = "only"
    elif accepted_before is not None:
        params, variant = {"before": accepted_before}, "before"
    else:
        params, variant = {}, "all"
    pending = [
        (row_id, kind, bytes(pid), organ, at, bytes(event), bytes(digest), sender, urgency)
        for row_id, kind, pid, organ, at, event, digest, sender, urgency in await run(
            session, _PENDING[variant, postgres], params
        )
    ]
    if not pending:
        return Signed()
    rows = await run(
        session,
        _INDEXED,
        {
            "ids": sorted({p[2] for p in pending}),
            "leaves": sorted({leaf_hash(p[5]) for p in pending}),
        },
    )
    indexes = {(bytes(pid), bytes(data)): idx for idx, data, pid in rows if pid is not None}
    out = Signed()
    kid = key.kid
    updates: list[dict[str, Any]] = []
    fetched: list[dict[str, Any]] = []
    about: dict[bytes, tuple[str, int]] = {}
    done: list[int] = []
    for row_id, kind, packet_id, organ, at, event, digest, sender, urgency in pending:
        index = indexes.get((packet_id, event))
        if index is None:
            continue
        receipt = HubReceipt(
            kind=kind,
            packet_id=packet_id,
            envelope_digest=digest,
            organ=organ,
            at=at,
            log_index=index,
        )
        raw = sign_hub_receipt(receipt, key)
        if kind == "accepted":
            updates.append({"b_id": packet_id, "b_receipt": raw})
            out.accepted[packet_id] = raw
        else:
            about[packet_id] = (sender, urgency)
            fetched.append(
                {
                    "packet_id": packet_id,
                    "organ": organ,
                    "source": "hub",
                    "status": "fetched",
                    "at": at,
                    "received_at": at,
                    "signer": HUB_SIGNER,
                    "receipt": raw,
                    # The receipt's digest is SHA-256 of its body, the deterministic
                    # encoding of these fields: no need to parse back what we just signed.
                    "digest": hashlib.sha256(encode(receipt.to_cbor(kid))).digest(),
                }
            )
        done.append(row_id)
        out.packet_ids.append(packet_id)
    if not done:
        return Signed()
    # Bulk statements: one round trip for a whole batch of receipts, not one per row.
    if updates:
        await run(session, _SET_ACCEPTED, updates)
    if fetched:
        inserted = await session.execute(_INSERT_FETCHED, fetched)
        mail = []
        for event_id, packet_id, at in inserted:
            sender, urgency = about[bytes(packet_id)]
            mail.append(
                {
                    "organ": sender,
                    "kind": "hub_receipt",
                    "packet_id": bytes(packet_id),
                    "urgency": urgency,
                    "event_id": event_id,
                    "created_at": at,
                }
            )
            out.wake.add(sender)
        await run(session, _INSERT_MAIL, mail)
    await run(session, _DONE, {"ids": done})
    if out.wake:
        await notifier.publish(session, out.wake)
    return out


class ReceiptSigner:
    """Signer of pending hub receipts: submissions' rounds and a background loop."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        key: SigningPrivateKey,
        notifier: MailboxNotifier,
        *,
        postgres: bool,
        poke_log: Callable[[], None],
        sequence_now: Callable[[], Awaitable[object]] | None = None,
        idle_interval: float = 2.0,
        busy_interval: float = 0.01,
        lock_key: int = LOCK_KEY,
    ) -> None:
        self._sessions = sessions
        self._key = key
        self._notifier = notifier
        self._postgres = postgres
        self._poke_log = poke_log
        self._sequence_now = sequence_now
        self._idle = idle_interval
        self._busy = busy_interval
        self._lock_key = lock_key
        self._wake = asyncio.Event()
        #: Submissions waiting for their ``accepted`` receipt, by packet id.
        self._waiters: dict[bytes, set[asyncio.Future[bytes]]] = {}
        self._lock = asyncio.Lock()
        # Group commit of the submissions' "sequence now, sign now" (see _flush).
        self._round: asyncio.Future[None] | None = None
        self._next_round: asyncio.Future[None] | None = None

    def poke(self) -> None:
        """Something was queued: ask the sequencer for a batch and look again soon."""
        self._poke_log()
        self._wake.set()

    def _hand_over(self, accepted: dict[bytes, bytes]) -> None:
        for packet_id, raw in accepted.items():
            for waiter in self._waiters.get(packet_id, ()):
                if not waiter.done():
                    waiter.set_result(raw)

    async def run_once(self) -> tuple[int, bool]:
        """Sign what is ready; returns (receipts signed, whether some still wait).

        ``accepted`` receipts only once they are left over (see :data:`LEFT_OVER`).
        """
        async with self._lock, self._sessions.begin() as session:
            signed = await sign_ready(
                session,
                self._key,
                self._notifier,
                self._postgres,
                accepted_before=now() - LEFT_OVER,
            )
            remaining = (await run(session, _ANY_PENDING)).scalar()
        self._notifier.wake(signed.wake)
        self._hand_over(signed.accepted)
        return len(signed.packet_ids), remaining is not None

    async def _sign_waited(self) -> None:
        """Sign the ``accepted`` receipts this process's submissions are waiting for."""
        async with self._lock:
            wanted = list(self._waiters)
            if not wanted:
                return
            async with self._sessions.begin() as session:
                signed = await sign_ready(
                    session, self._key, self._notifier, self._postgres, only=wanted
                )
        self._hand_over(signed.accepted)

    def _flush(self) -> asyncio.Future[None]:
        """A sequencer batch and a signing pass that start after this call: shared.

        Concurrent submissions share the work rather than each running its own batch one
        after the other behind the locks (each batch is a dozen round trips and a
        checkpoint signature): at most one round runs and one waits.  A round already
        running may have started before the caller's events were committed, so callers
        join the *next* round, which starts once the running one ends and takes every
        event pending by then.
        """
        if self._next_round is None:
            self._next_round = asyncio.ensure_future(self._next(self._round))
        return self._next_round

    async def _next(self, previous: asyncio.Future[None] | None) -> None:
        if previous is not None:
            with contextlib.suppress(Exception):
                await previous
        current = self._next_round
        self._next_round, self._round = None, current  # later callers queue behind us
        try:
            sequence = self._sequence_now
            if sequence is not None and await sequence() is None and self._postgres:
                # Another process holds the sequencer lock: its batch may or may not hold
                # our events.  Wait until it commits, then once more.
                await self._await_other_sequencer()
                await sequence()
            await self._sign_waited()
        finally:
            if self._round is current:
                self._round = None

    async def _await_other_sequencer(self) -> None:
        async with self._sessions.begin() as session:
            await run(session, _WAIT_LOCK, {"key": self._lock_key})

    async def run(self) -> None:
        """Sign in the background: soon after progress, backing off while the log lags."""
        delay = self._busy
        while True:
            try:
                signed, waiting = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("signing hub receipts failed")
                signed, waiting = 0, False
            if signed:
                delay = self._busy
            elif waiting:  # the sequencer has not indexed them yet (or is failing)
                delay = min(max(delay * 2, 0.05), 1.0)
            else:
                delay = self._idle
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def wait_accepted(self, packet_id: bytes, wait: float) -> bytes | None:
        """The packet's signed ``accepted`` receipt, waiting up to ``wait`` seconds."""
        return (await self.wait_accepted_many([packet_id], wait)).get(packet_id)

    async def wait_accepted_many(
        self, packet_ids: Iterable[bytes], wait: float
    ) -> dict[bytes, bytes]:
        """The signed ``accepted`` receipts of these packets that exist within ``wait`` s.

        Each attempt joins the next round (a sequencer batch now, which takes every
        pending event, then signing what this process waits for); a receipt another
        process signed meanwhile is read from the packet row.  The waits between
        attempts grow from 50 ms to :data:`WAIT_STEP_MAX`.
        """
        if wait <= 0:  # the answer goes out without it: the background signs it
            self.poke()
            return {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        mine: dict[bytes, asyncio.Future[bytes]] = {}
        for packet_id in packet_ids:
            if packet_id not in mine:
                mine[packet_id] = loop.create_future()
                self._waiters.setdefault(packet_id, set()).add(mine[packet_id])
        found: dict[bytes, bytes] = {}
        step = 0.05
        try:
            while True:
                if self._sequence_now is not None:
                    try:
                        await asyncio.wait_for(
                            asyncio.shield(self._flush()), max(0.0, deadline - loop.time())
                        )
                    except TimeoutError:
                        pass
                    except Exception:
                        log.exception("signing for a submission failed; the background retries")
                else:
                    self.poke()
                self._collect(mine, found)
                if not mine or loop.time() >= deadline:
                    return found
                # Signed by another process (or, in SQLite mode, by the background loop)?
                async with self._sessions() as session:
                    rows = await run(session, _SIGNED_ELSEWHERE, {"ids": list(mine)})
                for packet_id, raw in rows:
                    if raw is not None and bytes(packet_id) in mine:
                        found[bytes(packet_id)] = bytes(raw)
                        self._release(bytes(packet_id), mine.pop(bytes(packet_id)))
                if not mine:
                    return found
                left = deadline - loop.time()
                if left <= 0:
                    return found
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        asyncio.wait(list(mine.values()), return_when=asyncio.ALL_COMPLETED),
                        min(left, step),
                    )
                step = min(step * 2, WAIT_STEP_MAX)
                self._collect(mine, found)
                if not mine or loop.time() >= deadline:
                    return found
        finally:
            for packet_id, waiter in mine.items():
                self._release(packet_id, waiter)

    def _collect(self, mine: dict[bytes, asyncio.Future[bytes]], found: dict[bytes, bytes]) -> None:
        for packet_id in [p for p, w in mine.items() if w.done()]:
            waiter = mine.pop(packet_id)
            found[packet_id] = waiter.result()
            self._release(packet_id, waiter)

    def _release(self, packet_id: bytes, waiter: asyncio.Future[bytes]) -> None:
        waiters = self._waiters.get(packet_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[packet_id]
        if not waiter.done():
            waiter.cancel()
