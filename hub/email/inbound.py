"""The inbound gateway: an aiosmtpd server that takes packets and receipts from offices.

It runs in the hub's own event loop (started from the application's ``cleanup_ctx``),
accepts mail only for the gateway address, and answers every message in the SMTP
transaction itself -- so an office's node, talking to the gateway directly, learns the
outcome at once, exactly as from an HTTP answer:

* ``250 2.0.0 lienthong accepted <packet id>`` -- the packet is stored and logged (or was
  already: the same packet by HTTPS and by e-mail is one packet);
* ``250 2.0.0 lienthong stored <packet id>`` -- the receipt is stored and relayed;
* ``552 5.3.4 size_limit_exceeded: ...``, ``554 5.7.7 signature_invalid: ...``,
  ``550 5.7.1 transport_not_allowed: ...``, ``554 5.6.0 mail_invalid: ...`` -- refused,
  the stable code first (:func:`protocol.mail.smtp_refusal`);
* ``451 4.3.0`` -- our own trouble (the database is away): try again later.

There is no bearer token on this path: **the signature is the authentication**.  The
signer's signed directory entry is verified against the authority key, the envelope's
(or receipt's) signature against it, and only then is anything else looked at -- the
entry must allow e-mail, and the packet then goes through :func:`hub.packets.submit_envelope`
and :func:`hub.packets.upload_body` (a receipt through
:func:`hub.deliveries.post_receipts`) with the signer as the caller, so it meets every
check an HTTP submission meets, in the same order, with ``transport="email"`` (which
refuses anything classified).  Unauthenticated junk is refused and logged (structured
log), never written to the audit log: anyone can send mail, and the log is for events
about genuine packets.  Authentic submissions refused by policy are logged there as
``policy_refused`` like HTTP ones; accepted ones add an ``email`` event (``received``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy.exc import IntegrityError

from protocol import mail, signed
from protocol.directory import DirectoryEntry
from protocol.errors import CODES, RemoteError
from protocol.packet import BodyVerifier

from .. import deliveries, directory, packets
from ..auditlog import append_event
from ..clock import now
from ..context import Hub
from ..logs import get_logger
from ..models import Packet
from ..sessions import Caller
from .models import IN, OUT, PENDING, RECEIVED, EmailMessageRow
from .settings import EmailSettings

log = get_logger("hub.email.inbound")
#: Recipients one message may name (all must be the gateway address).
RCPT_MAX = 10
TEMPORARY = "451 4.3.0 internal: the hub cannot take this message now, try again later"


async def _entry(hub: Hub, organ: str) -> DirectoryEntry:
    async with hub.sessions() as session:
        entries = await directory.verified_entries(session, hub.entries, [organ])
    entry = entries.get(organ)
    if entry is None:
        raise RemoteError("organ_unknown", f"{organ} has no directory entry")
    return entry


def _allows_email(entry: DirectoryEntry) -> None:
    if entry.role != "office":
        raise RemoteError("role_forbidden", f"{entry.organ} is not an office")
    if "email" not in entry.transports:
        raise RemoteError(
            "transport_not_allowed", f"{entry.organ}'s directory entry does not allow e-mail"
        )


async def _refusal(
    hub: Hub, organ: str, exc: RemoteError, packet_id: bytes, digest: bytes | None, at: int
) -> None:
    """An authenticated message refused by policy: logged like an HTTP refusal."""
    async with hub.sessions.begin() as session:
        await append_event(
            session,
            "policy_refused",
            at,
            sender=organ,
            code=exc.code,
            packet_id=packet_id,
            envelope_digest=digest,
        )
    hub.metrics.policy_refused.labels(exc.code).inc()


async def _record(
    hub: Hub,
    *,
    organ: str,
    packet_id: bytes,
    item: str,
    digest: bytes,
    urgency: int,
    address: str,
    message_id: str | None,
    answer_accepted: bool,
    at: int,
) -> None:
    """The message as received (``email`` event), and -- for a packet -- the hub's
    ``accepted`` receipt queued to go back by e-mail once it is signed."""
    rows = [
        EmailMessageRow(
            direction=IN,
            organ=organ,
            packet_id=packet_id,
            item=item,
            digest=digest,
            urgency=urgency,
            address=address[:254],
            message_id=(message_id or "")[:255] or None,
            state=RECEIVED,
            attempts=0,
            next_attempt=0,
            created_at=at,
            updated_at=at,
        )
    ]
    if answer_accepted:
        rows.append(
            EmailMessageRow(
                direction=OUT,
                organ=organ,
                packet_id=packet_id,
                item="accepted",
                # The sender is never a recipient of its own packet, so the envelope
                # digest names this answer uniquely among the sender's messages.
                digest=digest,
                urgency=urgency,
                address="",  # the sender's directory address, filled in when sent
                state=PENDING,
                attempts=0,
                next_attempt=at,
                created_at=at,
                updated_at=at,
            )
        )
    try:
        async with hub.sessions.begin() as session:
            session.add_all(rows)
            await append_event(
                session,
                "email",
                at,
                packet_id=packet_id,
                organ=organ,
                direction=IN,
                state=RECEIVED,
                attempt=1,
            )
    except IntegrityError:
        pass  # the same message twice (a sender's retry): recorded once


async def _single(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def ingest_packet(
    hub: Hub, item: mail.PacketMail, *, mail_from: str = "", at: int | None = None
) -> str:
    env = item.envelope
    at = now() if at is None else at
    entry = await _entry(hub, env.sender)
    env.verify_sender(entry, at=at)  # the authentication: nothing before it is trusted
    try:
        _allows_email(entry)
    except RemoteError as exc:
        await _refusal(hub, env.sender, exc, env.packet_id, env.digest, at)
        raise
    # The whole body is here: check it before anything is stored, so a message with a
    # bad body leaves no envelope waiting for a body (as an interrupted HTTP upload would).
    verifier = BodyVerifier(env.body_info)
    verifier.feed(item.body)
    verifier.finish()
    caller = Caller(organ=env.sender, kid=env.sender_kid, role="office")
    async with hub.sessions() as session:
        before = await session.get(Packet, env.packet_id)
    already = before is not None and before.state == packets.ACCEPTED
    answer = await packets.submit_envelope(hub, caller, env.raw, transport="email")
    if answer.status == 202:
        answer = await packets.upload_body(hub, caller, env.packet_id, _single(item.body))
    if not already:
        await _record(
            hub,
            organ=env.sender,
            packet_id=env.packet_id,
            item="packet",
            digest=env.digest,
            urgency=env.routing.urgency,
            address=mail_from,
            message_id=item.message_id,
            answer_accepted=True,
            at=at,
        )
    log.info(
        "mail packet accepted",
        packet_id=env.packet_uuid.hex,
        sender=env.sender,
        duplicate=already,
        size=len(item.body),
    )
    return mail.accepted_reply(env.packet_id)


async def ingest_receipt(
    hub: Hub, item: mail.ReceiptMail, *, mail_from: str = "", at: int | None = None
) -> str:
    parsed = item.receipt
    r = parsed.receipt
    at = now() if at is None else at
    entry = await _entry(hub, r.signer)
    entry.check_valid(r.at)
    parsed.container.verify(entry.signing_key(r.signer_kid, r.at), signed.CTX_RECEIPT)
    entry.signing_key(r.signer_kid, at)  # and still valid now: no backdated receipts
    try:
        _allows_email(entry)
    except RemoteError as exc:
        await _refusal(hub, r.signer, exc, r.packet_id, r.envelope_digest, at)
        raise
    caller = Caller(organ=r.signer, kid=r.signer_kid, role="office")
    [result] = await deliveries.post_receipts(hub, caller, [parsed.raw])
    if result.get("status") != 200:
        code = str(result.get("code"))
        raise RemoteError(code if code in CODES else "request_invalid", str(result.get("detail")))
    if not result.get("duplicate"):
        await _record(
            hub,
            organ=r.signer,
            packet_id=r.packet_id,
            item="receipt",
            digest=parsed.digest,
            urgency=0,
            address=mail_from,
            message_id=item.message_id,
            answer_accepted=False,
            at=at,
        )
    log.info(
        "mail receipt stored",
        packet_id=r.packet_id.hex(),
        signer=r.signer,
        status=r.status,
        duplicate=bool(result.get("duplicate")),
    )
    return mail.accepted_reply(r.packet_id, "stored")


async def ingest(hub: Hub, cfg: EmailSettings, data: bytes, *, mail_from: str = "") -> str:
    """Read one message and submit what it carries; the 250 reply, or a RemoteError."""
    item = mail.parse_message(data, max_size=cfg.max_size, envelope_max=hub.limits.envelope_max)
    if isinstance(item, mail.PacketMail):
        return await ingest_packet(hub, item, mail_from=mail_from)
    if isinstance(item, mail.ReceiptMail):
        return await ingest_receipt(hub, item, mail_from=mail_from)
    raise RemoteError("mail_invalid", "the gateway takes packets and office receipts only")


class Gateway:
    """aiosmtpd handler hooks: only the gateway address, every message answered in-line."""

    def __init__(self, hub: Hub, cfg: EmailSettings, counter: Any = None) -> None:
        self.hub = hub
        self.cfg = cfg
        self.address = cfg.address.lower()
        self.counter = counter

    def _count(self, outcome: str) -> None:
        if self.counter is not None:
            self.counter.labels("in", outcome).inc()

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address.lower() != self.address:
            log.info("mail recipient refused", peer=str(session.peer), rcpt=address[:254])
            self._count("refused")
            return f"550 5.1.1 mail_invalid: this gateway takes mail for {self.cfg.address} only"
        if len(envelope.rcpt_tos) >= RCPT_MAX:
            return "452 4.5.3 too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        mail_from = str(envelope.mail_from or "")[:254]
        context = {"peer": str(session.peer), "mail_from": mail_from, "size": len(data)}
        try:
            reply = await ingest(self.hub, self.cfg, data, mail_from=mail_from)
        except RemoteError as exc:
            log.info("mail refused", code=exc.code, detail=exc.detail[:300], **context)
            self._count(exc.code)
            return mail.smtp_refusal(exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("mail ingestion failed", **context)
            self._count("error")
            return TEMPORARY
        self._count("accepted")
        return reply


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP, with its built-in size refusals carrying our stable code."""

    async def push(self, status: AnyStr) -> None:
        text = status.decode("ascii", "replace") if isinstance(status, bytes) else status
        if text.startswith("552 Error"):
            log.info("mail refused", code="size_limit_exceeded", limit=self.data_size_limit)
            await super().push(
                f"552 5.3.4 size_limit_exceeded: a message to this gateway is at most "
                f"{self.data_size_limit} bytes"
            )
            return
        await super().push(status)


def tls_context(cfg: EmailSettings) -> ssl.SSLContext | None:
    if cfg.smtp_tls_cert is None or cfg.smtp_tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cfg.smtp_tls_cert, cfg.smtp_tls_key)
    return context


async def start_server(hub: Hub, cfg: EmailSettings, counter: Any = None) -> asyncio.Server:
    """Listen on ``cfg.smtp_host:cfg.smtp_port`` in the running loop; the caller closes it."""
    loop = asyncio.get_running_loop()
    handler = Gateway(hub, cfg, counter)
    tls = tls_context(cfg)

    def factory() -> SMTP:
        return GatewaySMTP(
            handler,
            data_size_limit=cfg.max_size,
            enable_SMTPUTF8=True,
            hostname=cfg.message_domain,
            ident="Lienthong hub gateway",
            tls_context=tls,
            require_starttls=cfg.smtp_require_tls,
            timeout=cfg.smtp_timeout,
            loop=loop,
        )

    return await loop.create_server(factory, cfg.smtp_host, cfg.smtp_port)
