"""Hub receipts (``accepted``, ``fetched``): signed once the audit log has indexed the event.

A hub receipt names the audit-log index of its event (:class:`protocol.receipts.HubReceipt`),
and indexes are given by the sequencer in batches after the event's transaction commits.
So the transaction that accepts a packet (or records a fetch) also queues a row in
``hub_receipts_pending`` with the encoded event; :func:`sign_ready` later finds the entry
in ``log_entries`` (by packet id and exact bytes), signs the receipt and files it:
``accepted`` on the packet row (returned to the uploader, and on every idempotent
re-submission), ``fetched`` in the delivery's history and in the sender's mailbox.

:class:`ReceiptSigner` runs :func:`sign_ready` in the background; the upload handler pokes
the sequencer and waits briefly so that its answer usually carries the signed receipt.
Several hub processes may sign concurrently: PostgreSQL's ``SKIP LOCKED`` gives each
pending row to one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, Final

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hub.auditlog.models import LogEntry
from protocol.keys import SigningPrivateKey
from protocol.merkle import leaf_hash
from protocol.receipts import HubReceipt, parse_hub_receipt, sign_hub_receipt

from .logs import get_logger
from .models import DeliveryEvent, HubReceiptPending, MailboxItem, Packet
from .notify import MailboxNotifier

#: The ``signer`` column of a hub receipt in a delivery's history.
HUB_SIGNER: Final = "hub"
BATCH: Final = 1000
log = get_logger("hub.receipts")


async def sign_ready(
    session: AsyncSession, key: SigningPrivateKey, notifier: MailboxNotifier, postgres: bool
) -> tuple[list[bytes], set[str]]:
    """Sign the pending receipts whose events are indexed; returns (packet ids, organs to wake).

    Runs in the caller's transaction.
    """
    query = select(HubReceiptPending).order_by(HubReceiptPending.id).limit(BATCH)
    if postgres:
        query = query.with_for_update(skip_locked=True)
    pending = (await session.scalars(query)).all()
    if not pending:
        return [], set()
    packet_ids = {p.packet_id for p in pending}
    rows = await session.execute(
        select(LogEntry.idx, LogEntry.data, LogEntry.packet_id).where(
            LogEntry.packet_id.in_(packet_ids),
            LogEntry.leaf_hash.in_({leaf_hash(p.event) for p in pending}),
        )
    )
    indexes = {(bytes(pid), bytes(data)): idx for idx, data, pid in rows if pid is not None}
    packets = {
        bytes(p.id): p
        for p in await session.execute(
            select(
                Packet.id, Packet.envelope_digest, Packet.sender, Packet.urgency, Packet.accepted_at
            ).where(Packet.id.in_(packet_ids))
        )
    }
    signed: list[bytes] = []
    accepted: list[dict[str, Any]] = []
    fetched: list[dict[str, Any]] = []
    done: list[int] = []
    when: dict[bytes, int] = {}
    for item in pending:
        index = indexes.get((item.packet_id, item.event))
        if index is None:
            continue
        packet = packets[item.packet_id]
        raw = sign_hub_receipt(
            HubReceipt(
                kind=item.kind,
                packet_id=item.packet_id,
                envelope_digest=packet.envelope_digest,
                organ=item.organ,
                at=item.at,
                log_index=index,
            ),
            key,
        )
        if item.kind == "accepted":
            accepted.append({"id": item.packet_id, "hub_receipt": raw})
        else:
            when[item.packet_id] = item.at
            fetched.append(
                {
                    "packet_id": item.packet_id,
                    "organ": item.organ,
                    "source": "hub",
                    "status": "fetched",
                    "at": item.at,
                    "received_at": item.at,
                    "signer": HUB_SIGNER,
                    "receipt": raw,
                    "digest": parse_hub_receipt(raw).digest,
                }
            )
        done.append(item.id)
        signed.append(item.packet_id)
    if not done:
        return [], set()
    # Bulk statements: one round trip for a whole batch of receipts, not one per row.
    if accepted:
        await session.execute(update(Packet).execution_options(synchronize_session=False), accepted)
    wake: set[str] = set()
    if fetched:
        inserted = await session.execute(
            insert(DeliveryEvent).returning(DeliveryEvent.id, DeliveryEvent.packet_id), fetched
        )
        mail = []
        for event_id, packet_id in inserted:
            packet = packets[bytes(packet_id)]
            mail.append(
                {
                    "organ": packet.sender,
                    "kind": "hub_receipt",
                    "packet_id": packet.id,
                    "urgency": packet.urgency,
                    "event_id": event_id,
                    "created_at": when[packet.id],
                }
            )
            wake.add(packet.sender)
        await session.execute(insert(MailboxItem), mail)
    await session.execute(delete(HubReceiptPending).where(HubReceiptPending.id.in_(done)))
    if wake:
        await notifier.publish(session, wake)
    return signed, wake


class ReceiptSigner:
    """Background signer of pending hub receipts, with waiters for ``accepted`` ones."""

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
    ) -> None:
        self._sessions = sessions
        self._key = key
        self._notifier = notifier
        self._postgres = postgres
        self._poke_log = poke_log
        self._sequence_now = sequence_now
        self._idle = idle_interval
        self._busy = busy_interval
        self._wake = asyncio.Event()
        self._signed: defaultdict[bytes, set[asyncio.Event]] = defaultdict(set)
        self._lock = asyncio.Lock()
        # Group commit of wait_accepted's "sequence now, sign now" (see _flush).
        self._round: asyncio.Future[None] | None = None
        self._next_round: asyncio.Future[None] | None = None

    def poke(self) -> None:
        """Something was queued: ask the sequencer for a batch and look again soon."""
        self._poke_log()
        self._wake.set()

    async def run_once(self) -> tuple[int, bool]:
        """Sign what is ready; returns (receipts signed, whether some still wait)."""
        async with self._lock, self._sessions.begin() as session:
            signed, wake = await sign_ready(session, self._key, self._notifier, self._postgres)
            remaining = await session.scalar(select(HubReceiptPending.id).limit(1))
        self._notifier.wake(wake)
        for packet_id in signed:
            for event in self._signed.pop(packet_id, ()):
                event.set()
        return len(signed), remaining is not None

    def _flush(self) -> asyncio.Future[None]:
        """A sequencer batch and a signing pass that start after this call: shared.

        Concurrent uploads share the work rather than each running its own batch one
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
            assert self._sequence_now is not None
            await self._sequence_now()
            await self.run_once()
        finally:
            if self._round is current:
                self._round = None

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
        """The packet's signed ``accepted`` receipt, waiting up to ``wait`` seconds.

        First try to get there at once: run a sequencer batch now (it takes every pending
        event, so concurrent uploads share one batch) and sign what it indexed.  When
        another process holds the sequencer lock, poll for its batch.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        self.poke()
        if self._sequence_now is not None:
            try:
                await asyncio.shield(self._flush())
            except Exception:
                log.exception("sequencing for a receipt failed; the background task retries")
        while True:
            async with self._sessions() as session:
                found = await session.scalar(
                    select(Packet.hub_receipt).where(Packet.id == packet_id)
                )
            if found is not None:
                return bytes(found)
            left = deadline - loop.time()
            if left <= 0:
                return None
            event = asyncio.Event()
            self._signed[packet_id].add(event)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(left, 0.05))
            finally:
                waiters = self._signed.get(packet_id)
                if waiters is not None:
                    waiters.discard(event)
                    if not waiters:
                        del self._signed[packet_id]
