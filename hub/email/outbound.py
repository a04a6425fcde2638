"""The outbound sender: what e-mail offices have in their hub mailbox, through a relay.

A background task of every hub process (:class:`Sender`), in two steps per pass:

1. **Queue** (:meth:`Sender.enqueue`).  For each office whose verified directory entry
   allows e-mail: every mailbox item (an envelope addressed to it, a receipt relayed to
   it, a hub ``fetched`` receipt) -- at once when the entry says e-mail *only*, or, for
   an office that also takes HTTPS, once the item has waited longer than
   ``email.fallback_after[urgency]`` seconds (0: never) -- gets one ``email_messages``
   row.  The row is unique per (recipient, item digest): queueing is idempotent however
   often passes run, in however many hub processes.  Offices that submitted a packet by
   e-mail get the hub's ``accepted`` receipt back the same way (queued by the inbound
   gateway, sent once it is signed).
2. **Send** (:meth:`Sender.send_due`).  Due rows are claimed one at a time (``pending``
   -> ``sending`` with a claim deadline, so two processes never send one row and a crashed
   one's claim expires), built (:func:`hub.email.mime.message_for`) and handed to the relay
   with aiosmtplib (STARTTLS, implicit TLS or none, optional authentication).  Then, in
   one transaction, the row becomes ``sent``, an ``email`` audit event records it and the
   mailbox item it delivered is removed.  A 4xx answer or an unreachable relay defers the
   row with exponential back-off (each attempt an ``email`` event, state ``deferred``); a
   5xx answer, a packet that must not or cannot go by e-mail, or ``give_up_after``
   seconds without success fail it for good (``failed``, with the reason's code).

Exactly once is as close as SMTP allows: a crash after the relay said 250 and before our
commit sends the message again on restart -- with the same deterministic Message-ID, and
the office's node keeps one copy of any packet or receipt (by packet id and digest).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aiosmtplib
from sqlalchemy import and_, case, delete, exists, false, or_, select, update
from sqlalchemy.exc import IntegrityError

from protocol.directory import DirectoryEntry
from protocol.errors import RemoteError

from .. import directory
from ..auditlog import append_event
from ..clock import now
from ..context import Hub
from ..logs import get_logger
from ..models import DeliveryEvent, MailboxItem, Organ, Packet
from .mime import Outgoing, message_for
from .models import FAILED, OUT, PENDING, SENDING, SENT, EmailMessageRow
from .settings import EmailSettings

log = get_logger("hub.email.outbound")
#: Mailbox items one pass queues at most.
QUEUE_BATCH: Final = 500
_KIND_ITEM: Final = {"envelope": "packet", "receipt": "receipt", "hub_receipt": "fetched"}


@dataclass
class PassReport:
    queued: int = 0
    sent: list[int] = field(default_factory=list)
    deferred: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


class _RelayDown(Exception):
    """The relay cannot be reached or refused our session: defer the rest of the pass."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _detail(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:400] if text else type(exc).__name__


class Sender:
    """Queues and sends the e-mail offices' mail; :meth:`run` is the background task."""

    def __init__(self, hub: Hub, cfg: EmailSettings, counter: Any = None) -> None:
        self.hub = hub
        self.cfg = cfg
        self.counter = counter
        self._wake = asyncio.Event()

    def poke(self) -> None:
        self._wake.set()

    def _count(self, outcome: str) -> None:
        if self.counter is not None:
            self.counter.labels("out", outcome).inc()

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("e-mail pass failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.cfg.interval)

    async def run_once(self, at: int | None = None) -> PassReport:
        report = PassReport()
        report.queued = await self.enqueue(at)
        await self.send_due(report, at)
        return report

    # --- queueing ----------------------------------------------------------------------

    async def _email_offices(self) -> dict[str, DirectoryEntry]:
        async with self.hub.sessions() as session:
            rows = await session.execute(
                select(Organ.code, Organ.entry).where(
                    Organ.transports.like("%email%"), Organ.entry.is_not(None)
                )
            )
            found = {}
            for code, raw in rows:
                if raw is None:
                    continue
                entry = self.hub.entries.verify(bytes(raw))
                if "email" in entry.transports and entry.email and entry.role == "office":
                    found[code] = entry
        return found

    def _wanted(self, offices: dict[str, DirectoryEntry], at: int) -> Any:
        """Mailbox items due by e-mail: all of e-mail-only offices', and those of offices
        with both transports that waited longer than their urgency's fallback delay."""
        only = sorted(c for c, e in offices.items() if e.transports == ("email",))
        both = sorted(c for c, e in offices.items() if e.transports != ("email",))
        late = [
            and_(MailboxItem.urgency == urgency, MailboxItem.created_at <= at - delay)
            for urgency, delay in enumerate(self.cfg.fallback_after)
            if delay > 0
        ]
        wanted: list[Any] = [MailboxItem.organ.in_(only)] if only else []
        if both and late:
            wanted.append(and_(MailboxItem.organ.in_(both), or_(*late)))
        return or_(*wanted) if wanted else false()

    async def enqueue(self, at: int | None = None) -> int:
        at = now() if at is None else at
        offices = await self._email_offices()
        if not offices:
            return 0
        queued = 0
        try:
            async with self.hub.sessions.begin() as session:
                # Already queued: by (organ, item digest), never by mailbox id -- SQLite
                # may give a deleted item's id to a new one.
                item_digest = case(
                    (MailboxItem.kind == "envelope", Packet.envelope_digest),
                    else_=DeliveryEvent.digest,
                )
                queued_before = exists().where(
                    EmailMessageRow.direction == OUT,
                    EmailMessageRow.organ == MailboxItem.organ,
                    EmailMessageRow.digest == item_digest,
                )
                items = (
                    await session.execute(
                        select(MailboxItem, Packet.envelope_digest, DeliveryEvent.digest)
                        .join(Packet, Packet.id == MailboxItem.packet_id)
                        .outerjoin(DeliveryEvent, DeliveryEvent.id == MailboxItem.event_id)
                        .where(self._wanted(offices, at), ~queued_before)
                        .order_by(MailboxItem.urgency.desc(), MailboxItem.id)
                        .limit(QUEUE_BATCH)
                    )
                ).all()
                for item, envelope_digest, event_digest in items:
                    entry = offices[item.organ]
                    kind = _KIND_ITEM.get(item.kind)
                    digest = envelope_digest if kind == "packet" else event_digest
                    if kind is None or digest is None:
                        continue
                    session.add(
                        EmailMessageRow(
                            direction=OUT,
                            organ=item.organ,
                            packet_id=item.packet_id,
                            item=kind,
                            digest=bytes(digest),
                            mailbox_id=item.id,
                            urgency=item.urgency,
                            address=entry.email or "",
                            state=PENDING,
                            attempts=0,
                            next_attempt=at,
                            created_at=at,
                            updated_at=at,
                        )
                    )
                    queued += 1
        except IntegrityError:
            return 0  # another hub process queued the same items: its rows stand
        return queued

    # --- sending -----------------------------------------------------------------------

    async def _due(self, at: int) -> Sequence[EmailMessageRow]:
        async with self.hub.sessions() as session:
            return (
                await session.scalars(
                    select(EmailMessageRow)
                    .where(EmailMessageRow.direction == OUT, self._claimable(at))
                    .order_by(EmailMessageRow.urgency.desc(), EmailMessageRow.id)
                    .limit(self.cfg.batch)
                )
            ).all()

    @staticmethod
    def _claimable(at: int) -> Any:
        return or_(
            and_(EmailMessageRow.state == PENDING, EmailMessageRow.next_attempt <= at),
            and_(EmailMessageRow.state == SENDING, EmailMessageRow.claimed_until < at),
        )

    async def _claim(self, row: EmailMessageRow, at: int) -> bool:
        async with self.hub.sessions.begin() as session:
            result = await session.execute(
                update(EmailMessageRow)
                .where(EmailMessageRow.id == row.id, self._claimable(at))
                .values(state=SENDING, claimed_until=at + int(self.cfg.relay_timeout) * 3 + 60)
            )
        return int(result.rowcount) == 1  # type: ignore[attr-defined]

    async def _release(self, row: EmailMessageRow, at: int) -> None:
        """Put a claimed row back without counting an attempt (its item is not ready)."""
        async with self.hub.sessions.begin() as session:
            await session.execute(
                update(EmailMessageRow)
                .where(EmailMessageRow.id == row.id, EmailMessageRow.state == SENDING)
                .values(state=PENDING, claimed_until=None, next_attempt=at + 1)
            )

    async def _settle(
        self,
        row: EmailMessageRow,
        state: str,
        at: int,
        *,
        code: str | None = None,
        detail: str | None = None,
        message_id: str | None = None,
        next_attempt: int | None = None,
    ) -> None:
        """Record one attempt: the row's new state and its ``email`` event, together."""
        attempt = row.attempts + 1
        values: dict[str, Any] = {
            "state": PENDING if state == "deferred" else state,
            "attempts": attempt,
            "claimed_until": None,
            "updated_at": at,
            "error": None if code is None else f"{code}: {detail or ''}"[:512],
        }
        if message_id is not None:
            values["message_id"] = message_id[:255]
        if next_attempt is not None:
            values["next_attempt"] = next_attempt
        async with self.hub.sessions.begin() as session:
            result = await session.execute(
                update(EmailMessageRow)
                .where(EmailMessageRow.id == row.id, EmailMessageRow.state == SENDING)
                .values(**values)
            )
            if int(result.rowcount) != 1:  # type: ignore[attr-defined]
                return  # our claim expired and another process took the row over
            await append_event(
                session,
                "email",
                at,
                packet_id=row.packet_id,
                organ=row.organ,
                direction=OUT,
                state=state,
                attempt=attempt,
                code=code,
            )
            if state == SENT and row.mailbox_id is not None:
                kind = {"packet": "envelope", "fetched": "hub_receipt"}.get(row.item, row.item)
                await session.execute(
                    delete(MailboxItem).where(
                        MailboxItem.id == row.mailbox_id,
                        MailboxItem.organ == row.organ,
                        MailboxItem.packet_id == row.packet_id,
                        MailboxItem.kind == kind,
                    )
                )
        self._count(state)
        fields = {"packet_id": row.packet_id.hex(), "organ": row.organ, "item": row.item}
        if state == SENT:
            log.info("e-mail sent", attempt=attempt, **fields)
        elif state == FAILED:
            log.warning("e-mail failed for good", code=code, detail=detail, **fields)
        else:
            log.info("e-mail deferred", code=code, detail=detail, attempt=attempt, **fields)

    async def _defer(
        self, row: EmailMessageRow, at: int, code: str, detail: str, report: PassReport
    ) -> None:
        if at - row.created_at >= self.cfg.give_up_after:
            await self._settle(row, FAILED, at, code=code, detail=f"gave up: {detail}")
            report.failed.append(row.id)
            return
        report.deferred.append(row.id)
        delay = min(self.cfg.retry_max, self.cfg.retry_base * 2 ** min(row.attempts, 30))
        delay *= random.uniform(0.8, 1.0)  # noqa: S311 - jitter, not crypto
        await self._settle(
            row, "deferred", at, code=code, detail=detail, next_attempt=at + max(1, int(delay))
        )

    async def _address(self, row: EmailMessageRow) -> str | None:
        if row.address:
            return row.address
        async with self.hub.sessions() as session:
            entries = await directory.verified_entries(session, self.hub.entries, [row.organ])
        entry = entries.get(row.organ)
        if entry is None or not entry.email:
            return None
        async with self.hub.sessions.begin() as session:
            await session.execute(
                update(EmailMessageRow)
                .where(EmailMessageRow.id == row.id)
                .values(address=entry.email)
            )
        row.address = entry.email
        return entry.email

    async def _hub_receipt_ready(self, row: EmailMessageRow) -> bool:
        async with self.hub.sessions() as session:
            found = await session.scalar(
                select(Packet.hub_receipt).where(Packet.id == row.packet_id)
            )
        return found is not None

    async def send_due(self, report: PassReport | None = None, at: int | None = None) -> PassReport:
        report = report or PassReport()
        at = now() if at is None else at
        rows = await self._due(at)
        if not rows:
            return report
        client: aiosmtplib.SMTP | None = None
        down: str | None = None
        try:
            for row in rows:
                if not await self._claim(row, at):
                    continue
                if row.item == "accepted" and not await self._hub_receipt_ready(row):
                    await self._release(row, at)
                    continue
                if await self._address(row) is None:
                    await self._settle(row, FAILED, at, code="organ_unknown", detail="no address")
                    report.failed.append(row.id)
                    continue
                try:
                    out = await message_for(self.hub, self.cfg, row, now())
                except RemoteError as exc:
                    await self._settle(row, FAILED, at, code=exc.code, detail=exc.detail)
                    report.failed.append(row.id)
                    continue
                if down is not None:
                    await self._defer(row, at, "relay_unreachable", down, report)
                    continue
                try:
                    if client is None:
                        client = await self._connect()
                    await self._send(client, out)
                except _RelayDown as exc:
                    down = exc.detail
                    client = None
                    await self._defer(row, at, "relay_unreachable", down, report)
                except aiosmtplib.SMTPResponseException as exc:
                    code = f"smtp_{exc.code}"
                    if 400 <= exc.code < 500:
                        await self._defer(row, at, code, exc.message, report)
                    else:
                        await self._settle(row, FAILED, at, code=code, detail=exc.message)
                        report.failed.append(row.id)
                else:
                    await self._settle(row, SENT, at, message_id=out.message_id)
                    report.sent.append(row.id)
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.quit()
        return report

    async def _connect(self) -> aiosmtplib.SMTP:
        cfg = self.cfg
        context = None
        if cfg.relay_tls != "none":
            context = ssl.create_default_context(
                cafile=str(cfg.relay_ca_file) if cfg.relay_ca_file else None
            )
        client = aiosmtplib.SMTP(
            hostname=cfg.relay_host,
            port=cfg.relay_port,
            use_tls=cfg.relay_tls == "tls",
            start_tls=cfg.relay_tls == "starttls",
            tls_context=context,
            timeout=cfg.relay_timeout,
            local_hostname=cfg.message_domain,
        )
        try:
            await client.connect()
            if cfg.relay_username:
                await client.login(cfg.relay_username, cfg.password())
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            with contextlib.suppress(Exception):
                client.close()
            raise _RelayDown(_detail(exc)) from None
        return client

    async def _send(self, client: aiosmtplib.SMTP, out: Outgoing) -> None:
        try:
            await client.sendmail(
                out.mail_from,
                [out.rcpt_to],
                out.data,
                mail_options=["SMTPUTF8"] if out.smtputf8 else [],
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            first = exc.recipients[0]
            raise aiosmtplib.SMTPResponseException(first.code, first.message) from None
        except aiosmtplib.SMTPResponseException:
            raise
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise _RelayDown(_detail(exc)) from None
