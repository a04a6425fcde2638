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

import base64
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from protocol.audit import encode_event
from protocol.directory import DirectoryEntry
from protocol.errors import RemoteError
from protocol.mail import check_email_delivery
from protocol.packet import ENVELOPE_MAX, BodyVerifier, Envelope, parse_envelope
from protocol.policy import check_packet

from . import directory
from .auditlog import append_event
from .blobs import write_stream
from .clock import now
from .context import Hub
from .logs import get_logger
from .models import DeliveryRow, HubReceiptPending, MailboxItem, Packet
from .sessions import Caller

AWAITING: Final = "awaiting_body"
ACCEPTED: Final = "accepted"
log = get_logger("hub.packets")


def packet_path(packet_id: bytes) -> str:
    return f"/v1/packets/{uuid.UUID(bytes=packet_id)}"


@dataclass(slots=True)
class Answer:
    """What a submission answers: 202 awaiting the body, or 200 with the hub receipt."""

    status: int
    doc: dict[str, Any] = field(default_factory=dict)


def awaiting_answer(packet: Packet) -> Answer:
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


def accepted_answer(packet: Packet) -> Answer:
    path = packet_path(packet.id)
    receipt = packet.hub_receipt
    return Answer(
        200,
        {
            "packet_id": path.rsplit("/", 1)[1],
            "state": ACCEPTED,
            "accepted_at": packet.accepted_at,
            "status_url": f"{path}/status",
            "receipt": None if receipt is None else base64.b64encode(receipt).decode(),
        },
    )


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
    """Two queries for any number of envelopes: the batch path checks all at once."""
    codes = {e.sender for e in envs} | {s.organ for e in envs for s in e.recipients}
    return _Known(
        entries=await directory.verified_entries(session, hub.entries, codes),
        tree=await directory.tree_around(session, codes),
    )


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


def _existing(packet: Packet, env: Envelope) -> Answer:
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


def _packet_row(env: Envelope, at: int, transport: str, state: str) -> Packet:
    return Packet(
        id=env.packet_id,
        sender=env.sender,
        state=state,
        envelope=env.raw,
        envelope_digest=env.digest,
        kind=env.kind,
        urgency=env.routing.urgency,
        secrecy=env.routing.secrecy,
        created_at=env.created_at,
        submitted_at=at,
        accepted_at=at if state == ACCEPTED else None,
        body_sha256=env.body_info.sha256,
        body_size=env.body_info.size,
        target=env.routing.target,
        transport=transport,
    )


# --- envelope first ----------------------------------------------------------------------


async def submit_envelope(hub: Hub, caller: Caller, data: bytes, transport: str = "http") -> Answer:
    env = parse(hub, data)
    if env.sender != caller.organ:
        raise RemoteError("organ_mismatch", f"the envelope's sender is {env.sender}, not you")
    at = now()
    async with hub.sessions() as session:
        existing = await session.get(Packet, env.packet_id)
        if existing is not None:
            return _existing(existing, env)
        try:
            known = await _lookup(hub, session, [env])
            await _check_envelope(hub, session, env, at, transport, known)
        except PolicyRefusal as refusal:
            await session.rollback()
            await _log_refusal(hub, env, refusal.error, at)
            raise refusal.error from None
    packet = _packet_row(env, at, transport, AWAITING)
    try:
        async with hub.sessions.begin() as session:
            session.add(packet)
    except IntegrityError:  # the same id, concurrently
        async with hub.sessions() as session:
            existing = await session.get(Packet, env.packet_id)
        if existing is None:
            raise
        return _existing(existing, env)
    log.info("envelope stored", packet_id=env.packet_uuid.hex, recipients=len(env.recipients))
    return awaiting_answer(packet)


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


def _accepted_event(env: Envelope, at: int, transport: str) -> bytes:
    return encode_event("packet_accepted", at, **_accepted_fields(env, transport))


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
    hub: Hub, session: AsyncSession, envs: Sequence[tuple[Envelope, str]], at: int
) -> None:
    """Deliveries, mailbox items, audit events and pending receipts for accepted packets."""
    deliveries: list[dict[str, Any]] = []
    mail: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    organs: set[str] = set()
    for env, transport in envs:
        for stanza in env.recipients:
            deliveries.append(
                {
                    "packet_id": env.packet_id,
                    "organ": stanza.organ,
                    "state": "pending",
                    "updated_at": at,
                }
            )
            mail.append(
                {
                    "organ": stanza.organ,
                    "kind": "envelope",
                    "packet_id": env.packet_id,
                    "urgency": env.routing.urgency,
                    "created_at": at,
                }
            )
            organs.add(stanza.organ)
        await append_event(session, "packet_accepted", at, **_accepted_fields(env, transport))
        pending.append(
            {
                "kind": "accepted",
                "packet_id": env.packet_id,
                "organ": env.sender,
                "at": at,
                "event": _accepted_event(env, at, transport),
            }
        )
    if deliveries:
        await session.execute(insert(DeliveryRow), deliveries)
        await session.execute(insert(MailboxItem), mail)
    if pending:
        await session.execute(insert(HubReceiptPending), pending)
    await hub.notifier.publish(session, organs)


async def accept(hub: Hub, packet: Packet, env: Envelope) -> Answer:
    at = now()
    async with hub.sessions.begin() as session:
        claimed = await session.execute(
            update(Packet)
            .where(Packet.id == packet.id, Packet.state == AWAITING)
            .values(state=ACCEPTED, accepted_at=at)
        )
        if claimed.rowcount == 1:  # type: ignore[attr-defined]
            await _record_acceptance(hub, session, [(env, packet.transport)], at)
    if claimed.rowcount == 1:  # type: ignore[attr-defined]
        hub.notifier.wake(s.organ for s in env.recipients)
        hub.metrics.packets_accepted.inc()
        log.info(
            "packet accepted",
            packet_id=env.packet_uuid.hex,
            body_sha256=env.body_info.sha256.hex(),
            size=env.body_info.size,
        )
    await hub.signer.wait_accepted(packet.id, hub.settings.receipt_wait)
    async with hub.sessions() as session:
        stored = await session.get(Packet, packet.id)
    assert stored is not None
    return accepted_answer(stored)


# --- many small packets at once ------------------------------------------------------------


async def submit_batch(
    hub: Hub, caller: Caller, items: Sequence[tuple[bytes, bytes]], transport: str = "http"
) -> list[dict[str, Any]]:
    """Envelope and body together, for small packets; one result per item, in order.

    New, valid packets are accepted in one transaction with bulk inserts; an item that
    fails answers its own error code and does not affect the others.
    """
    at = now()
    results: list[dict[str, Any] | None] = [None] * len(items)
    parsed: list[tuple[int, Envelope, bytes]] = []
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
            parsed.append((i, env, body))
        except RemoteError as exc:
            results[i] = _error(exc)
    good: list[tuple[int, Envelope, bytes]] = []
    refusals: list[tuple[Envelope, RemoteError]] = []
    async with hub.sessions() as session:
        existing = {
            p.id: p
            for p in await session.scalars(
                select(Packet).where(Packet.id.in_([env.packet_id for _, env, _ in parsed]))
            )
        }
        known = await _lookup(hub, session, [env for _, env, _ in parsed])
        for i, env, body in parsed:
            try:
                if env.packet_id in existing:
                    answer = _existing(existing[env.packet_id], env)
                    if answer.status == 200:
                        results[i] = {"status": 200, **answer.doc}
                        continue
                    # Awaiting its body from an earlier single submission: take it here.
                else:
                    try:
                        await _check_envelope(hub, session, env, at, transport, known)
                    except PolicyRefusal as refusal:
                        refusals.append((env, refusal.error))
                        raise refusal.error from None
                verifier = BodyVerifier(env.body_info)
                verifier.feed(body)
                verifier.finish()
                good.append((i, env, body))
            except RemoteError as exc:
                results[i] = _error(exc)
    if good:
        await hub.blocking(hub.blobs.put_many, [(b, env.body_info.sha256) for _, env, b in good])
        hub.metrics.body_bytes.labels("in").inc(sum(len(b) for _, _, b in good))
    if good or refusals:
        try:
            await _accept_many(
                hub,
                [(env, existing.get(env.packet_id)) for _, env, _ in good],
                refusals,
                at,
                transport,
            )
        except (IntegrityError, _Concurrent):
            # A concurrent submission of one of these ids: fall back to one at a time.
            for i, env, body in good:
                results[i] = await _one_by_one(hub, caller, env, body, transport)
            good = []
    if good:
        await _wait_receipts(hub, [env.packet_id for _, env, _ in good])
        async with hub.sessions() as session:
            stored = {
                p.id: p
                for p in await session.scalars(
                    select(Packet).where(Packet.id.in_([env.packet_id for _, env, _ in good]))
                )
            }
        for i, env, _ in good:
            results[i] = {"status": 200, **accepted_answer(stored[env.packet_id]).doc}
    return [r if r is not None else _error(RemoteError("request_invalid")) for r in results]


async def _accept_many(
    hub: Hub,
    packets: Sequence[tuple[Envelope, Packet | None]],
    refusals: Sequence[tuple[Envelope, RemoteError]],
    at: int,
    transport: str,
) -> None:
    async with hub.sessions.begin() as session:
        new = [env for env, row in packets if row is None]
        if new:
            await session.execute(
                insert(Packet),
                [_packet_columns(_packet_row(env, at, transport, ACCEPTED)) for env in new],
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
    for _, exc in refusals:
        hub.metrics.policy_refused.labels(exc.code).inc()
    hub.notifier.wake(s.organ for env, _ in packets for s in env.recipients)
    hub.metrics.packets_accepted.inc(len(packets))
    log.info("batch accepted", packets=len(packets), refused=len(refusals))


def _packet_columns(packet: Packet) -> dict[str, Any]:
    return {c.key: getattr(packet, c.key) for c in Packet.__table__.columns}


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


async def _wait_receipts(hub: Hub, packet_ids: Sequence[bytes]) -> None:
    """Wait (bounded) until the batch's receipts are signed: they are signed together."""
    if packet_ids:
        await hub.signer.wait_accepted(packet_ids[-1], hub.settings.receipt_wait)


def _error(exc: RemoteError) -> dict[str, Any]:
    return {"status": exc.status, "code": exc.code, "detail": exc.detail}
