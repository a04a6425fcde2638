"""The hub's side of the e-mail format: the bytes of each message it sends.

:func:`message_for` turns one queued ``email_messages`` row into the RFC 5322 bytes of
:mod:`protocol.mail` -- the stored envelope with the body read back from the blob store,
a relayed office receipt, or a hub receipt -- with the signed directory entry of whoever
signed it attached, so an office that reads only mail can verify it against the authority
key it pinned at enrolment.  Nothing is re-serialised: envelopes and receipts go out as
the exact bytes their signers signed.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from protocol import mail
from protocol.errors import LocalError, RemoteError
from protocol.packet import ENVELOPE_MAX, parse_envelope
from protocol.policy import Secrecy
from protocol.receipts import parse_hub_receipt, parse_office_receipt

from .. import directory
from ..blobs import BlobStore
from ..context import Hub
from ..models import DeliveryEvent, Packet
from .models import EmailMessageRow
from .settings import EmailSettings


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message ready for the relay: SMTP envelope addresses and the bytes."""

    mail_from: str
    rcpt_to: str
    data: bytes
    message_id: str
    smtputf8: bool


def _read_body(blobs: BlobStore, digest: bytes, size: int) -> bytes:
    with blobs.open(digest) as fh:
        data = fh.read(size + 1)
    if len(data) != size:
        raise LocalError(f"the stored body {digest.hex()[:16]} has the wrong size")
    return data


async def message_for(hub: Hub, cfg: EmailSettings, row: EmailMessageRow, at: int) -> Outgoing:
    """The message delivering ``row``'s item to ``row.address``.

    Raises :class:`RemoteError` for an item that must never go by e-mail (a classified
    packet: ``secrecy_not_by_email``) or cannot (``size_limit_exceeded``), and
    ``body_unknown`` when retention removed the body meanwhile -- all permanent.
    """
    async with hub.sessions() as session:
        packet = await session.get(Packet, row.packet_id)
        if packet is None:
            raise RemoteError("packet_unknown", "the packet is no longer stored")
        event = None
        if row.item in ("receipt", "fetched"):
            event = await session.scalar(
                select(DeliveryEvent).where(DeliveryEvent.digest == row.digest)
            )
            if event is None:
                raise RemoteError("packet_unknown", "the receipt is no longer stored")
        signer = packet.sender
        if row.item == "receipt" and event is not None:
            signer = event.signer
        wanted = {row.organ, signer}
        raw_entries = await directory.signed_entries(session, wanted)
        entries = {code: hub.entries.verify(raw) for code, raw in raw_entries.items()}
    recipient_entry = entries.get(row.organ)
    to_name = recipient_entry.name if recipient_entry is not None else row.organ
    sender = (cfg.address, cfg.name)
    recipient = (row.address, to_name)
    domain = cfg.message_domain
    attach = [raw_entries[signer]] if signer in raw_entries and row.item != "accepted" else []
    if row.item == "packet":
        # Defence in depth: submission already refused these for e-mail-only offices, but
        # an office's transports may change, and fallback must never carry them.
        if packet.secrecy != Secrecy.NONE:
            raise RemoteError(
                "secrecy_not_by_email", f"{Secrecy(packet.secrecy).label} never goes by e-mail"
            )
        if not mail.fits_in_mail(len(packet.envelope), packet.body_size, cfg.max_size):
            raise RemoteError(
                "size_limit_exceeded",
                f"a body of {packet.body_size} bytes does not fit in {cfg.max_size}",
            )
        if packet.body_deleted_at is not None:
            raise RemoteError("body_unknown", "retention removed the body")
        try:
            body = await hub.blocking(_read_body, hub.blobs, packet.body_sha256, packet.body_size)
        except FileNotFoundError:
            raise RemoteError("body_unknown", "the body is not in the blob store") from None
        env = parse_envelope(packet.envelope, max_size=max(ENVELOPE_MAX, len(packet.envelope)))
        msg = mail.packet_message(
            env, body, sender=sender, recipient=recipient, domain=domain, at=at, entries=attach
        )
    elif row.item == "receipt":
        assert event is not None
        msg = mail.receipt_message(
            parse_office_receipt(bytes(event.receipt)),
            sender=sender,
            recipient=recipient,
            domain=domain,
            at=at,
            entries=attach,
        )
    else:
        raw = bytes(event.receipt) if event is not None else packet.hub_receipt
        if raw is None:
            raise LocalError("an accepted packet without its hub receipt was queued")
        msg = mail.hub_receipt_message(
            parse_hub_receipt(bytes(raw)), sender=sender, recipient=recipient, domain=domain, at=at
        )
    data = mail.to_bytes(msg)
    if len(data) > cfg.max_size:
        raise RemoteError("size_limit_exceeded", f"a message of {len(data)} bytes")
    return Outgoing(
        mail_from=cfg.address,
        rcpt_to=row.address,
        data=data,
        message_id=str(msg["Message-ID"]),
        smtputf8=not (cfg.address.isascii() and row.address.isascii()),
    )
