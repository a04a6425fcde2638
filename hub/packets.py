"""Packet submission: the envelope checked completely, then the body streamed and checked.

1. :func:`submit_envelope` -- strict parse; the sender is the caller; an existing packet
   of that id answers idempotently (same envelope digest) or ``packet_conflict``; the
   sender's signature against its *signed* directory entry at the hub's time; the
   creation time within the clock skew; every recipient enrolled, valid now and addressed
   to a valid encryption key of its own; then the deployment's policy (sizes, secrecy,
   routes).  Refusals of an authentic envelope are logged (``policy_refused``).  The
   packet is stored ``awaiting_body``: visible to nobody but its sender.
2. :func:`upload_body` -- the body streams through :class:`protocol.packet.BodyVerifier`
   into a temp file of the blob store; any mismatch (digest, longer, shorter) removes the
   temp file and leaves the packet awaiting its body, so the upload can simply be retried.
3. :func:`accept` -- one transaction: the packet becomes ``accepted``, a delivery
   (``pending``) and a mailbox item per recipient, the ``packet_accepted`` audit event,
   a pending hub receipt; the recipients' long-polls are woken.

:func:`submit_batch` does all of it for many small packets, with one transaction and bulk
inserts for the whole batch.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import Table, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from protocol.audit import encode_event
from protocol.directory import DirectoryEntry
from protocol.errors import RemoteError
from protocol.mail import check_email_delivery
from protocol.packet import ENVELOPE_MAX, BodyVerifier, Envelope, parse_envelope
from protocol.policy import check_packet

from . import directory
from .auditlog import append_encoded, append_event
from .blobs import write_stream
from .clock import now
from .context import Hub
from .db import in_list, run
from .logs import get_logger
from .models import DeliveryRow, HubReceiptPending, MailboxItem, Packet
from .sessions import Caller

AWAITING: Final = "awaiting_body"
ACCEPTED: Final = "accepted"
#: From this many recipients on, they are woken once the submitter's receipt is signed
#: (or after :data:`WAKE_DEFER_MAX` seconds): their long-polls answering all at once would
#: otherwise hold up the submitter's own answer on the event loop until the last of them.
QUIET_FANOUT: Final = 50
WAKE_DEFER_MAX: Final = 0.5
log = get_logger("hub.packets")


def _table(model: type[Any]) -> Table:
    table: Table = model.__table__
    return table


# Built once: Core bulk inserts (executemany), no ORM unit of work on the hot path.
_INSERT_PACKETS = insert(_table(Packet))
_INSERT_DELIVERIES = insert(_table(DeliveryRow))
_INSERT_MAILBOX = insert(_table(MailboxItem))
_INSERT_RECEIPTS_PENDING = insert(_table(HubReceiptPending))


def packet_path(packet_id: bytes) -> str:
    return f"/v1/packets/{uuid.UUID(bytes=packet_id)}"


@dataclass(slots=True)
class Answer:
    """What a submission answers: 202 awaiting the body, or 200 with the hub receipt."""

    status: int
    doc: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Stored:
    """What an answer needs of a stored packet (read without its envelope)."""

    id: bytes
    sender: str
    state: str
    envelope_digest: bytes
    body_size: int
    body_sha256: bytes
    accepted_at: int | None
    hub_receipt: bytes | None
    transport: str


_STORED = select(
    Packet.id,
    Packet.sender,
    Packet.state,
    Packet.envelope_digest,
    Packet.body_size,
    Packet.body_sha256,
    Packet.accepted_at,
    Packet.hub_receipt,
    Packet.transport,
).where(in_list(_table(Packet).c.id, "ids"))


async def stored_packets(session: AsyncSession, packet_ids: Sequence[bytes]) -> dict[bytes, Stored]:
    """Packets already stored under these ids, without their envelopes (one query)."""
    if not packet_ids:
        return {}
    out: dict[bytes, Stored] = {}
    for (
        pid,
        sender,
        state,
        digest,
        size,
        sha,
        accepted_at,
        receipt,
        transport,
    ) in await run(session, _STORED, {"ids": list(packet_ids)}):
        out[bytes(pid)] = Stored(
            bytes(pid),
            sender,
            state,
            bytes(digest),
            size,
            bytes(sha),
            accepted_at,
            None if receipt is None else bytes(receipt),
            transport,
        )
    return out


def awaiting_answer(packet: Stored) -> Answer:
    path = packet_path(packet.id)
    return Answer(
        202,
        {
            "packet_id": path.rsplit("/", 1)[1],
            "state": AWAITING,
            "upload_url": f"{path}/body",
            "body_size": packet.body_size,
            "body_sha256": packet.body_sha256.hex(),
        },
    )


def accepted_answer(packet: Stored) -> Answer:
    return Answer(200, accepted_doc(packet.id, packet.accepted_at, packet.hub_receipt))


def accepted_doc(
    packet_id: bytes, accepted_at: int | None, receipt: bytes | None
) -> dict[str, Any]:
    """The answer for an accepted packet, from what the caller has in hand."""
    path = packet_path(packet_id)
    return {
        "packet_id": path.rsplit("/", 1)[1],
        "state": ACCEPTED,
        "accepted_at": accepted_at,
        "status_url": f"{path}/status",
        "receipt": None if receipt is None else base64.b64encode(receipt).decode(),
    }


# --- checks ----------------------------------------------------------------------------


def _check_recipients(env: Envelope, entries: dict[str, DirectoryEntry], at: int) -> None:
    for stanza in env.recipients:
        entry = entries.get(stanza.organ)
        if entry is None:
            raise RemoteError("recipient_unknown", f"{stanza.organ} is not in the directory")
        try:
            entry.check_valid(at)
        except RemoteError:
            if entry.successor is not None:
                raise RemoteError(
                    "organ_not_valid",
                    f"{stanza.organ} has merged into {entry.successor}: "
                    f"address {entry.successor} instead",
                ) from None
            raise RemoteError("organ_not_valid", f"{stanza.organ} is not valid now") from None
        if entry.role != "office":
            raise RemoteError("route_not_allowed", f"{stanza.organ} is not an office")
        try:
            entry.encryption_key(stanza.kid, at)
        except RemoteError as exc:
            raise RemoteError(exc.code, f"recipient {stanza.organ}: {exc.detail}") from None


@dataclass(slots=True)
class _Known:
    """The verified entries and the tree around the organs of some envelopes."""

    entries: dict[str, DirectoryEntry]
    tree: directory.Tree


async def _lookup(hub: Hub, session: AsyncSession, envs: Sequence[Envelope]) -> _Known:
    """One query (per 1,000 organs) for any number of envelopes: checked all at once."""
    codes = {e.sender for e in envs} | {s.organ for e in envs for s in e.recipients}
    entries, tree = await directory.lookup(session, hub.entries, codes)
    return _Known(entries=entries, tree=tree)


async def _check_envelope(
    hub: Hub, session: AsyncSession, env: Envelope, at: int, transport: str, known: _Known
) -> None:
    """Everything decided before one byte of the body: see the module docstring.

    Raises before the signature verifies are not logged (anyone can send garbage); after
    it, the refusal is about a genuine envelope of the sender and is logged.
    """
    sender = known.entries.get(env.sender)
    if sender is None:
        raise RemoteError("organ_unknown", f"{env.sender} has no directory entry")
    env.verify_sender(sender, at=at)
    try:
        if abs(env.created_at - at) > hub.settings.clock_skew:
            raise RemoteError(
                "clock_skew",
                f"created at {env.created_at}, the hub's clock says {at} "
                f"(allowed skew {hub.settings.clock_skew} s)",
            )
        _check_recipients(env, known.entries, at)
        check_packet(env, known.tree, hub.secrecy, hub.routes, transport, hub.limits)
        # An office that receives by e-mail only must be reachable by e-mail at all.
        email_only = {o for o, e in known.entries.items() if e.transports == ("email",)}
        check_email_delivery(env, email_only, hub.settings.email.max_size)
        if env.routing.target is not None:
            target = await session.get(Packet, env.routing.target)
            if target is None or target.sender != env.sender or target.state != ACCEPTED:
                raise RemoteError(
                    "packet_unknown", f"{env.kind} names a packet this sender has not sent"
                )
    except RemoteError as exc:
        raise PolicyRefusal(exc) from None


class _Concurrent(Exception):
    """Another request accepted one of the batch's packets meanwhile."""


class PolicyRefusal(Exception):
    """An authentic envelope refused: logged, then answered with the inner error."""

    def __init__(self, error: RemoteError) -> None:
        super().__init__(error.code)
        self.error = error


async def _log_refusal(hub: Hub, env: Envelope, exc: RemoteError, at: int) -> None:
    async with hub.sessions.begin() as session:
        await append_event(
            session,
            "policy_refused",
            at,
            sender=env.sender,
            code=exc.code,
            packet_id=env.packet_id,
            envelope_digest=env.digest,
        )
    hub.metrics.policy_refused.labels(exc.code).inc()
    log.info("packet refused", packet_id=env.packet_uuid.hex, code=exc.code)


def _existing(packet: Stored, env: Envelope) -> Answer:
    if packet.envelope_digest != env.digest:
        raise RemoteError("packet_conflict", "another envelope was submitted with this packet id")
    return accepted_answer(packet) if packet.state == ACCEPTED else awaiting_answer(packet)


def parse(hub: Hub, data: bytes) -> Envelope:
    if len(data) > hub.limits.envelope_max:
        raise RemoteError(
            "size_limit_exceeded",
            f"envelope of {len(data)} bytes exceeds {hub.limits.envelope_max}",
        )
    return parse_envelope(data, max_size=hub.limits.envelope_max)


def _packet_values(env: Envelope, at: int, transport: str, state: str) -> dict[str, Any]:
    return {
        "id": env.packet_id,
        "sender": env.sender,
        "state": state,
        "envelope": env.raw,
        "envelope_digest": env.digest,
        "kind": env.kind,
        "urgency": env.routing.urgency,
        "secrecy": env.routing.secrecy,
        "created_at": env.created_at,
        "submitted_at": at,
        "accepted_at": at if state == ACCEPTED else None,
        "body_sha256": env.body_info.sha256,
        "body_size": env.body_info.size,
        "target": env.routing.target,
        "transport": transport,
    }


# --- envelope first ----------------------------------------------------------------------


async def submit_envelope(hub: Hub, caller: Caller, data: bytes, transport: str = "http") -> Answer:
    env = parse(hub, data)
    if env.sender != caller.organ:
        raise RemoteError("organ_mismatch", f"the envelope's sender is {env.sender}, not you")
    at = now()
    values = _packet_values(env, at, transport, AWAITING)
    try:
        # One transaction: the idempotency check, the directory, the checks, the row.
        async with hub.sessions.begin() as session:
            existing = (await stored_packets(session, [env.packet_id])).get(env.packet_id)
            if existing is not None:
                return _existing(existing, env)
            known = await _lookup(hub, session, [env])
            await _check_envelope(hub, session, env, at, transport, known)
            await run(session, _INSERT_PACKETS, [values])
    except PolicyRefusal as refusal:
        await _log_refusal(hub, env, refusal.error, at)
        raise refusal.error from None
    except IntegrityError:  # the same id, concurrently
        async with hub.sessions() as session:
            existing = (await stored_packets(session, [env.packet_id])).get(env.packet_id)
        if existing is None:
            raise
        return _existing(existing, env)
    log.info("envelope stored", packet_id=env.packet_uuid.hex, recipients=len(env.recipients))
    return awaiting_answer(
        Stored(
            env.packet_id,
            env.sender,
            AWAITING,
            env.digest,
            env.body_info.size,
            env.body_info.sha256,
            None,
            None,
            transport,
        )
    )


# --- then the body -----------------------------------------------------------------------


async def upload_body(
    hub: Hub, caller: Caller, packet_id: bytes, chunks: AsyncIterator[bytes]
) -> Answer:
    async with hub.sessions() as session:
        packet = await session.get(Packet, packet_id)
    if packet is None or packet.sender != caller.organ:
        raise RemoteError("packet_unknown")
    if packet.state != AWAITING:
        raise RemoteError("body_not_expected", "the body of this packet is already stored")
    env = parse_envelope(packet.envelope, max_size=max(ENVELOPE_MAX, len(packet.envelope)))
    # The writer hashes through the verifier, in the executor while the next bytes arrive:
    # one SHA-256 pass; commit raises the verifier's code (digest, longer, shorter).
    writer = await hub.blocking(hub.blobs.writer, BodyVerifier(env.body_info))
    try:
        await write_stream(writer, chunks)
        await hub.blocking(writer.commit, env.body_info.sha256)
    except BaseException:
        writer.abort()  # quick (close and unlink), so also safe when cancelled
        raise
    hub.metrics.body_bytes.labels("in").inc(env.body_info.size)
    return await accept(hub, packet, env)


def _accepted_fields(env: Envelope, transport: str) -> dict[str, Any]:
    return {
        "packet_id": env.packet_id,
        "envelope_digest": env.digest,
        "sender": env.sender,
        "recipients": [s.organ for s in env.recipients],
        "packet_kind": env.kind,
        "urgency": env.routing.urgency,
        "secrecy": env.routing.secrecy,
        "due": env.routing.due,
        "created": env.created_at,
        "body_size": env.body_info.size,
        "body_sha256": env.body_info.sha256,
        "transport": transport,
        "target": env.routing.target,
    }


async def _record_acceptance(
    hub: Hub,
    session: AsyncSession,
    envs: Sequence[tuple[Envelope, str]],
    at: int,
    *,
    notify: bool = True,
) -> None:
    """Deliveries, mailbox items, audit events and pending receipts for accepted packets.

    One bulk statement per table whatever the number of packets and recipients (Core
    inserts: no ORM unit of work for a fan-out's thousand rows).
    """
    deliveries: list[dict[str, Any]] = []
    mail: list[dict[str, Any]] = []
    events: list[tuple[bytes, bytes | None]] = []
    pending: list[dict[str, Any]] = []
    organs: set[str] = set()
    for env, transport in envs:
        for stanza in env.recipients:
            deliveries.append(
                {
                    "packet_id": env.packet_id,
                    "organ": stanza.organ,
                    "state": "pending",
                    "fetched_at": None,
                    "updated_at": at,
                }
            )
            mail.append(
                {
                    "organ": stanza.organ,
                    "kind": "envelope",
                    "packet_id": env.packet_id,
                    "urgency": env.routing.urgency,
                    "event_id": None,
                    "created_at": at,
                }
            )
            organs.add(stanza.organ)
        # The same bytes are logged and named by the pending receipt (found by them).
        event = encode_event("packet_accepted", at, **_accepted_fields(env, transport))
        events.append((event, env.packet_id))
        pending.append(
            {
                "kind": "accepted",
                "packet_id": env.packet_id,
                "organ": env.sender,
                "at": at,
                "event": event,
            }
        )
    await append_encoded(session, events)
    if deliveries:
        await run(session, _INSERT_DELIVERIES, deliveries)
        await run(session, _INSERT_MAILBOX, mail)
    if pending:
        await run(session, _INSERT_RECEIPTS_PENDING, pending)
    if notify:
        await hub.notifier.publish(session, organs)


def _quiet(envs: Sequence[Envelope]) -> bool:
    """Whether to wake the recipients only after the submitter's receipts (a fan-out)."""
    return sum(len(env.recipients) for env in envs) >= QUIET_FANOUT


_notifying: set[asyncio.Task[None]] = set()


async def _publish(hub: Hub, organs: set[str]) -> None:
    try:
        async with hub.sessions.begin() as session:
            await hub.notifier.publish(session, organs)
    except Exception:  # a hint only: the other processes' long-polls re-check anyway
        log.exception("notifying the other hub processes failed")
        hub.notifier.wake_here(organs)  # this one's waiters were left to the notification


async def _wake_and_wait(hub: Hub, envs: Sequence[Envelope], quiet: bool) -> dict[bytes, bytes]:
    """After the commit: wake the recipients and wait for the submitter's receipts.

    ``quiet`` (a fan-out, see :data:`QUIET_FANOUT`): the transaction did not notify; the
    recipients are woken here once the receipts are signed, or after
    :data:`WAKE_DEFER_MAX` seconds, and in any case before returning or being cancelled.
    """
    organs = {s.organ for env in envs for s in env.recipients}
    ids = [env.packet_id for env in envs]
    wait = hub.settings.receipt_wait
    if not quiet:
        hub.notifier.wake(organs)
        return await hub.signer.wait_accepted_many(ids, wait)
    waiting = asyncio.ensure_future(hub.signer.wait_accepted_many(ids, wait))
    try:
        await asyncio.wait([waiting], timeout=min(WAKE_DEFER_MAX, wait))
    finally:
        hub.notifier.wake(organs)
        task = asyncio.ensure_future(_publish(hub, organs))
        _notifying.add(task)
        task.add_done_callback(_notifying.discard)
    return await waiting


async def accept(hub: Hub, packet: Packet, env: Envelope) -> Answer:
    at = now()
    async with hub.sessions.begin() as session:
        claimed = await session.execute(
            update(Packet)
            .where(Packet.id == packet.id, Packet.state == AWAITING)
            .values(state=ACCEPTED, accepted_at=at)
        )
        if claimed.rowcount == 1:  # type: ignore[attr-defined]
            await _record_acceptance(
                hub, session, [(env, packet.transport)], at, notify=not _quiet([env])
            )
    if claimed.rowcount == 1:  # type: ignore[attr-defined]
        hub.metrics.packets_accepted.inc()
        log.info(
            "packet accepted",
            packet_id=env.packet_uuid.hex,
            body_sha256=env.body_info.sha256.hex(),
            size=env.body_info.size,
        )
        receipts = await _wake_and_wait(hub, [env], _quiet([env]))
        return Answer(200, accepted_doc(packet.id, at, receipts.get(packet.id)))
    # Accepted meanwhile by another request: answer what that one stored.
    await hub.signer.wait_accepted(packet.id, hub.settings.receipt_wait)
    async with hub.sessions() as session:
        stored = (await stored_packets(session, [packet.id]))[packet.id]
    return accepted_answer(stored)


# --- many small packets at once ------------------------------------------------------------


async def submit_batch(
    hub: Hub, caller: Caller, items: Sequence[tuple[bytes, bytes]], transport: str = "http"
) -> list[dict[str, Any]]:
    """Envelope and body together, for small packets; one result per item, in order.

    New, valid packets are accepted in one transaction -- the same that checks them --
    with bulk inserts; an item that fails answers its own error code and does not affect
    the others.  Concurrent batches of one process share that transaction
    (:mod:`hub.groupcommit`), except a fan-out, which goes alone.  The
    answers are built from what is in hand, with the receipts handed over by the signer
    (:meth:`hub.hubreceipts.ReceiptSigner.wait_accepted_many`).
    """
    results: list[dict[str, Any] | None] = [None] * len(items)
    parsed: list[_Item] = []
    seen: set[bytes] = set()
    for i, (data, body) in enumerate(items):
        try:
            env = parse(hub, data)
            if env.sender != caller.organ:
                raise RemoteError("organ_mismatch", f"the envelope's sender is {env.sender}")
            if env.packet_id in seen:
                raise RemoteError("packet_conflict", "the packet id appears twice in the batch")
            seen.add(env.packet_id)
            if len(body) > hub.settings.batch_body_max:
                raise RemoteError(
                    "size_limit_exceeded",
                    f"bodies in a batch are at most {hub.settings.batch_body_max} bytes",
                )
            parsed.append(_Item(caller, i, env, body))
        except RemoteError as exc:
            results[i] = _error(exc)
    if parsed:
        quiet = _quiet([item.env for item in parsed])
        if quiet:  # a fan-out: its own transaction, its recipients woken after its receipts
            stored = await _store(hub, parsed, transport, quiet=True)
        else:

            async def run(items: Sequence[_Item]) -> _Stored:
                return await _store(hub, items, transport)

            stored = await hub.submissions.submit(transport, parsed, run, _Stored.part)
        for item, answer in stored.answers.items():
            results[item.index] = answer
        good = [item.env for item in stored.good]
        if good or stored.refused:
            _accepted_now(hub, good, stored.refusals())
        if good:
            hub.metrics.body_bytes.labels("in").inc(sum(len(item.body) for item in stored.good))
            receipts = await _wake_and_wait(hub, good, quiet)
            for item in stored.good:
                doc = accepted_doc(item.env.packet_id, stored.at, receipts.get(item.env.packet_id))
                results[item.index] = {"status": 200, **doc}
    return [r if r is not None else _error(RemoteError("request_invalid")) for r in results]


@dataclass(frozen=True, slots=True, eq=False)
class _Item:
    """One parsed packet of a batch: whose, where in the batch, what."""

    caller: Caller
    index: int
    env: Envelope
    body: bytes


@dataclass(slots=True)
class _Stored:
    """What one transaction made of some items: each item is either accepted (``good``)
    or answered (stored before, refused: ``answers``); refusals of authentic envelopes
    are also in ``refused`` (counted and logged)."""

    at: int
    good: list[_Item] = field(default_factory=list)
    answers: dict[_Item, dict[str, Any]] = field(default_factory=dict)
    refused: dict[_Item, RemoteError] = field(default_factory=dict)

    def part(self, items: Sequence[_Item]) -> _Stored:
        """The outcome of some of the items (one request's), in time linear in ``items``."""
        return _Stored(
            self.at,
            [item for item in items if item not in self.answers],
            {item: self.answers[item] for item in items if item in self.answers},
            {item: self.refused[item] for item in items if item in self.refused},
        )

    def refusals(self) -> list[tuple[Envelope, RemoteError]]:
        return [(item.env, exc) for item, exc in self.refused.items()]


async def _store(
    hub: Hub, items: Sequence[_Item], transport: str, *, quiet: bool = False
) -> _Stored:
    """Check and accept parsed items in one transaction (bodies durable before it commits)."""
    out = _Stored(now())
    at = out.at
    existing: dict[bytes, Stored] = {}
    try:
        async with hub.sessions.begin() as session:
            existing = await stored_packets(session, [item.env.packet_id for item in items])
            known = await _lookup(hub, session, [item.env for item in items])
            for item in items:
                env = item.env
                try:
                    if env.packet_id in existing:
                        answer = _existing(existing[env.packet_id], env)
                        if answer.status == 200:
                            out.answers[item] = {"status": 200, **answer.doc}
                            continue
                        # Awaiting its body from an earlier single submission: take it here.
                    else:
                        try:
                            await _check_envelope(hub, session, env, at, transport, known)
                        except PolicyRefusal as refusal:
                            out.refused[item] = refusal.error
                            raise refusal.error from None
                    verifier = BodyVerifier(env.body_info)
                    verifier.feed(item.body)
                    verifier.finish()
                    out.good.append(item)
                except RemoteError as exc:
                    out.answers[item] = _error(exc)
            if out.good:
                # Durable before the transaction that makes the packets visible commits.
                await hub.blocking(
                    hub.blobs.put_many,
                    [(item.body, item.env.body_info.sha256) for item in out.good],
                )
            if out.good or out.refused:
                await _accept_many(
                    hub,
                    session,
                    [(item.env, existing.get(item.env.packet_id)) for item in out.good],
                    out.refusals(),
                    at,
                    transport,
                    quiet=quiet,
                )
    except (IntegrityError, _Concurrent):
        # A concurrent submission of one of these ids: fall back to one at a time.  The
        # refusals' log events went with the rolled back transaction: log them again.
        for env, error in out.refusals():
            await _log_refusal(hub, env, error, at)
        out.refused = {}
        for item in out.good:
            out.answers[item] = await _one_by_one(hub, item.caller, item.env, item.body, transport)
        out.good = []
    return out


async def _accept_many(
    hub: Hub,
    session: AsyncSession,
    packets: Sequence[tuple[Envelope, Stored | None]],
    refusals: Sequence[tuple[Envelope, RemoteError]],
    at: int,
    transport: str,
    *,
    quiet: bool,
) -> None:
    """In the caller's transaction: store new packets, claim awaiting ones, record it all."""
    new = [env for env, row in packets if row is None]
    if new:
        await run(
            session, _INSERT_PACKETS, [_packet_values(env, at, transport, ACCEPTED) for env in new]
        )
    for env, row in packets:
        if row is not None:
            claimed = await session.execute(
                update(Packet)
                .where(Packet.id == env.packet_id, Packet.state == AWAITING)
                .values(state=ACCEPTED, accepted_at=at)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                raise _Concurrent
    await _record_acceptance(
        hub,
        session,
        [(env, row.transport if row is not None else transport) for env, row in packets],
        at,
        notify=not quiet,
    )
    for env, exc in refusals:
        await append_event(
            session,
            "policy_refused",
            at,
            sender=env.sender,
            code=exc.code,
            packet_id=env.packet_id,
            envelope_digest=env.digest,
        )


def _accepted_now(
    hub: Hub, accepted: Sequence[Envelope], refusals: Sequence[tuple[Envelope, RemoteError]]
) -> None:
    """After the commit: count, log (ids only)."""
    for _, exc in refusals:
        hub.metrics.policy_refused.labels(exc.code).inc()
    hub.metrics.packets_accepted.inc(len(accepted))
    log.info("batch accepted", packets=len(accepted), refused=len(refusals))


async def _one_by_one(
    hub: Hub, caller: Caller, env: Envelope, body: bytes, transport: str
) -> dict[str, Any]:
    async def once() -> AsyncIterator[bytes]:
        yield body

    try:
        answer = await submit_envelope(hub, caller, env.raw, transport)
        if answer.status == 202:
            answer = await upload_body(hub, caller, env.packet_id, once())
    except RemoteError as exc:
        return _error(exc)
    return {"status": answer.status, **answer.doc}


def _error(exc: RemoteError) -> dict[str, Any]:
    return {"status": exc.status, "code": exc.code, "detail": exc.detail}
