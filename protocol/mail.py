"""Lienthong over e-mail: sealed packets and receipts as MIME messages, sans-IO.

E-mail carries exactly the objects HTTPS carries -- the signed envelope container, the
encrypted body, signed office and hub receipts -- byte for byte, as attachments of a
``multipart/mixed`` message.  Nothing in a message is trusted because of the mail: the
reader verifies the attachments as it would an HTTP submission (the envelope's signature,
the body's size and SHA-256, the receipt's signature).  The mail only adds what a mail
system and a human who opens the message need::

    multipart/mixed
    ├── text/plain; charset=utf-8                     a note: what this is, the packet id,
    │                                                 the sender, the clear reference
    ├── application/vnd.lienthong.envelope+cbor       packet: the envelope container
    ├── application/vnd.lienthong.body                packet: the encrypted body
    ├── application/vnd.lienthong.receipt+cbor        receipt: an office receipt
    ├── application/vnd.lienthong.hub-receipt+cbor    hub-receipt: a hub receipt
    └── application/vnd.lienthong.directory-entry+cbor  0-4 signed directory entries of
                                                      the signers, for offices that read
                                                      only mail (verified against the
                                                      pinned authority key, never trusted)

Headers: ``Lienthong-Version: 1``, ``Lienthong-Kind`` (``packet``, ``receipt``,
``hub-receipt``), ``Lienthong-Packet-Id`` (the packet's UUID, for threading and for
searching a mailbox), a deterministic ``Message-ID`` per (item, recipient address) so a
message sent twice is recognisably the same message, ``References`` to a per-packet root
so mail clients thread a packet with its receipts, and a ``Subject`` with the packet id
and the *clear reference only* (số/ký hiệu and date, which unclassified envelopes carry
in clear anyway) -- never the document's subject (trích yếu), which travels encrypted.

Non-ASCII headers are written as RFC 2047 encoded words (every mail system reads them)
unless an address itself needs RFC 6531/6532 (SMTPUTF8); both forms are read.  File names
are RFC 2231 encoded.  The parser (:func:`parse_message`) is strict: a message either
yields one :data:`MailItem` or raises a :class:`RemoteError` (``mail_invalid`` for the
mail layer, the protocol's own codes for the objects inside), nothing else.

Bodies too large for mail are refused, not fragmented: see docs/email.md for why.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
import unicodedata
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import format_datetime
from typing import Final, TypeAlias

from .directory import ENTRY_MAX
from .errors import LocalError, RemoteError
from .packet import ENVELOPE_MAX, Envelope, Reference, parse_envelope
from .policy import Secrecy, Urgency
from .receipts import (
    RECEIPT_MAX,
    ParsedHubReceipt,
    ParsedReceipt,
    parse_hub_receipt,
    parse_office_receipt,
)

__all__ = [
    "BODY_TYPE",
    "ENTRIES_BYTES_MAX",
    "ENTRIES_MAX",
    "ENTRY_TYPE",
    "ENVELOPE_TYPE",
    "HEADER_KIND",
    "HEADER_PACKET",
    "HEADER_VERSION",
    "HUB_RECEIPT_TYPE",
    "KINDS",
    "MAIL_VERSION",
    "RECEIPT_TYPE",
    "RESERVE",
    "HubReceiptMail",
    "MailItem",
    "PacketMail",
    "ReceiptMail",
    "accepted_packet",
    "accepted_reply",
    "check_email_delivery",
    "encoded_size",
    "fits_in_mail",
    "hub_receipt_message",
    "message_id",
    "packet_message",
    "parse_message",
    "receipt_message",
    "refusal_code",
    "smtp_refusal",
    "thread_root",
    "to_bytes",
]

MAIL_VERSION: Final = "1"
HEADER_VERSION: Final = "Lienthong-Version"
HEADER_KIND: Final = "Lienthong-Kind"
HEADER_PACKET: Final = "Lienthong-Packet-Id"
KINDS: Final = ("packet", "receipt", "hub-receipt")

ENVELOPE_TYPE: Final = "application/vnd.lienthong.envelope+cbor"
BODY_TYPE: Final = "application/vnd.lienthong.body"
RECEIPT_TYPE: Final = "application/vnd.lienthong.receipt+cbor"
HUB_RECEIPT_TYPE: Final = "application/vnd.lienthong.hub-receipt+cbor"
ENTRY_TYPE: Final = "application/vnd.lienthong.directory-entry+cbor"
_OURS: Final = (ENVELOPE_TYPE, BODY_TYPE, RECEIPT_TYPE, HUB_RECEIPT_TYPE, ENTRY_TYPE)

#: Directory entries one message may carry (the signer's, and a successor's at most),
#: and their bytes together (one entry's bound: real entries are a few KiB).
ENTRIES_MAX: Final = 4
ENTRIES_BYTES_MAX: Final = ENTRY_MAX
#: Bytes of a message that are not the envelope or the body: headers, the note, the
#: MIME boundaries and the directory entries (base64).
RESERVE: Final = 64 * 1024 + 4 * (ENTRIES_BYTES_MAX + 2) // 3 * 78 // 76 + 2 * 1024
#: Parts a message may have: ours, the note, and a few text parts a relay may add
#: (a disclaimer); anything beyond is not one of our messages.
_PARTS_MAX: Final = 16
_DOMAIN_RE: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.\-]{0,251}[A-Za-z0-9])?")


# --- what a message carries ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PacketMail:
    """A sealed packet: the parsed (not yet verified) envelope, the body, entries."""

    envelope: Envelope
    body: bytes
    entries: tuple[bytes, ...]
    message_id: str | None


@dataclass(frozen=True, slots=True)
class ReceiptMail:
    """An office receipt (parsed, not yet verified) and the entries that came with it."""

    receipt: ParsedReceipt
    entries: tuple[bytes, ...]
    message_id: str | None


@dataclass(frozen=True, slots=True)
class HubReceiptMail:
    """A hub receipt (parsed, not yet verified against the pinned hub key)."""

    receipt: ParsedHubReceipt
    message_id: str | None


MailItem: TypeAlias = PacketMail | ReceiptMail | HubReceiptMail


# --- sizes -----------------------------------------------------------------------------


def encoded_size(size: int) -> int:
    """Bytes ``size`` bytes take in base64 with 76-character lines and CRLF."""
    chars = 4 * math.ceil(size / 3)
    return chars + 2 * math.ceil(chars / 76)


def fits_in_mail(envelope_size: int, body_size: int, max_size: int) -> bool:
    """Whether a packet's message stays within ``max_size`` bytes (an upper bound)."""
    return encoded_size(envelope_size) + encoded_size(body_size) + RESERVE <= max_size


def check_email_delivery(envelope: Envelope, email_only: Collection[str], max_size: int) -> None:
    """Refuse a packet that could not reach its e-mail-only recipients.

    Checked at submission, before any byte of the body is stored: an office that receives
    by e-mail only can never get a classified document (``secrecy_not_by_email``) nor a
    body too large for a message of ``max_size`` bytes (``size_limit_exceeded``).
    """
    reached = [s.organ for s in envelope.recipients if s.organ in email_only]
    if not reached:
        return
    secrecy = Secrecy(envelope.routing.secrecy)
    if secrecy != Secrecy.NONE:
        raise RemoteError(
            "secrecy_not_by_email",
            f"{reached[0]} receives by e-mail only, and {secrecy.label} documents never "
            "travel by e-mail",
        )
    if not fits_in_mail(len(envelope.raw), envelope.body_info.size, max_size):
        raise RemoteError(
            "size_limit_exceeded",
            f"{reached[0]} receives by e-mail only, and a body of {envelope.body_info.size} "
            f"bytes does not fit in a message of at most {max_size} bytes",
        )


# --- identifiers -----------------------------------------------------------------------


def _check_domain(domain: str) -> str:
    if _DOMAIN_RE.fullmatch(domain) is None:
        raise LocalError(f"{domain!r} is not a domain name for Message-IDs")
    return domain.lower()


def thread_root(packet_id: bytes) -> str:
    """The ``References`` root every message about one packet shares (never sent itself)."""
    return f"<packet.{uuid.UUID(bytes=packet_id)}@lienthong>"


def message_id(kind: str, packet_id: bytes, item: bytes, recipient: str, domain: str) -> str:
    """The Message-ID of one item (by its digest) to one address: the same every time.

    A message sent again -- after a crash between the relay's answer and our record of it
    -- carries the same Message-ID, so every reader can tell it is the same message.
    """
    tag = hashlib.sha256(item + b"\x00" + recipient.lower().encode()).hexdigest()[:20]
    return f"<lt{MAIL_VERSION}.{kind}.{uuid.UUID(bytes=packet_id)}.{tag}@{_check_domain(domain)}>"


# --- building --------------------------------------------------------------------------


def _address(addr: str, name: str) -> Address:
    try:
        if addr.isascii():
            return Address(display_name=name, addr_spec=addr)
        # An internationalised address (RFC 6531): the stdlib refuses to parse a non-ASCII
        # local part, but writes one given in pieces (with the SMTPUTF8 policy).
        user, at, domain = addr.rpartition("@")
        if not at or not user or not domain or any(c in addr for c in ' <>()[],;:"\\'):
            raise ValueError("expected local-part@domain")
        return Address(display_name=name, username=user, domain=domain)
    except (ValueError, IndexError) as exc:
        raise LocalError(f"{addr!r} is not an e-mail address: {exc}") from None


def _reference_text(ref: Reference) -> str:
    if ref.number and ref.notation:
        text = f"{ref.number}-{ref.notation}"
    else:
        text = ref.notation or ref.number or ref.doc_type
    if ref.date:
        year, month, day = ref.date.split("-")
        text += f" ngày {day}/{month}/{year}"
    return text


def _file_stem(pid: uuid.UUID, ref: Reference | None) -> str:
    if ref is None:
        return f"Gói tin {pid}"
    clean = re.sub(r"[^\w .,-]", "_", _reference_text(ref).replace("/", "_"))
    return f"Gói tin {clean} {pid}"


_NOTE: Final = (
    "Thư này do hệ thống Lienthong gửi tự động. Tệp đính kèm là {what} đã ký số{sealed}; "
    "chỉ phần mềm Lienthong của đơn vị nhận xử lý được. Xin đừng chuyển tiếp, sửa hay "
    "xóa thư này bằng tay.\r\n"
    "This message was sent automatically by Lienthong. The attachment is {what_en}, "
    "signed{sealed_en}; only the receiving office's Lienthong software handles it. Please "
    "do not forward, edit or delete it by hand.\r\n\r\n"
)


def _base(
    kind: str,
    packet_id: bytes,
    item: bytes,
    *,
    sender: tuple[str, str],
    recipient: tuple[str, str],
    domain: str,
    subject: str,
    at: int,
) -> EmailMessage:
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = _address(*sender)
    msg["To"] = _address(*recipient)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.fromtimestamp(at, UTC))
    msg["Message-ID"] = message_id(kind, packet_id, item, recipient[0], domain)
    msg["References"] = thread_root(packet_id)
    if kind != "packet":
        msg["In-Reply-To"] = thread_root(packet_id)
    msg["MIME-Version"] = "1.0"
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to this
    msg[HEADER_VERSION] = MAIL_VERSION
    msg[HEADER_KIND] = kind
    msg[HEADER_PACKET] = str(uuid.UUID(bytes=packet_id))
    return msg


def _attach(msg: EmailMessage, data: bytes, media_type: str, filename: str) -> None:
    maintype, subtype = media_type.split("/", 1)
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)


def _attach_entries(msg: EmailMessage, entries: Sequence[bytes]) -> None:
    if len(entries) > ENTRIES_MAX or sum(len(e) for e in entries) > ENTRIES_BYTES_MAX:
        raise LocalError(
            f"a message carries at most {ENTRIES_MAX} directory entries, "
            f"{ENTRIES_BYTES_MAX} bytes together"
        )
    for n, entry in enumerate(entries, 1):
        _attach(msg, entry, ENTRY_TYPE, f"Danh bạ {n}.entry.cbor")


def packet_message(
    envelope: Envelope,
    body: bytes,
    *,
    sender: tuple[str, str],
    recipient: tuple[str, str],
    domain: str,
    at: int,
    entries: Sequence[bytes] = (),
) -> EmailMessage:
    """A sealed packet as a message from ``sender`` to ``recipient`` ((address, name)).

    ``entries`` are signed directory entries the reader may need to verify the sender
    (its own entry, for an office that never talks to the hub over HTTPS).
    """
    if len(body) != envelope.body_info.size:
        raise LocalError("the body's length differs from the envelope's declared size")
    pid = envelope.packet_uuid
    ref = envelope.routing.reference
    subject = f"[Lienthong] {_reference_text(ref)} · {pid}" if ref else f"[Lienthong] gói tin {pid}"
    msg = _base(
        "packet",
        envelope.packet_id,
        envelope.digest,
        sender=sender,
        recipient=recipient,
        domain=domain,
        subject=subject,
        at=at,
    )
    urgency = Urgency(envelope.routing.urgency)
    note = _NOTE.format(
        what="một gói tin văn bản",
        sealed=" và mã hóa",
        what_en="a document packet",
        sealed_en=" and encrypted",
    )
    note += f"Gói tin / packet: {pid}\r\nĐơn vị gửi / sender: {envelope.sender}\r\n"
    note += f"Độ khẩn / urgency: {urgency.label}\r\n"
    if ref is not None:
        note += f"Số, ký hiệu / reference: {_reference_text(ref)}\r\n"
    msg.set_content(note, charset="utf-8", cte="quoted-printable")
    stem = _file_stem(pid, ref)
    _attach(msg, envelope.raw, ENVELOPE_TYPE, f"{stem}.envelope.cbor")
    _attach(msg, body, BODY_TYPE, f"{stem}.body")
    _attach_entries(msg, entries)
    return msg


def receipt_message(
    receipt: ParsedReceipt,
    *,
    sender: tuple[str, str],
    recipient: tuple[str, str],
    domain: str,
    at: int,
    entries: Sequence[bytes] = (),
) -> EmailMessage:
    """An office receipt as a message; ``entries`` as for :func:`packet_message`."""
    r = receipt.receipt
    pid = uuid.UUID(bytes=r.packet_id)
    msg = _base(
        "receipt",
        r.packet_id,
        receipt.digest,
        sender=sender,
        recipient=recipient,
        domain=domain,
        subject=f"[Lienthong] biên nhận {r.status} ({r.label}) · {pid}",
        at=at,
    )
    note = _NOTE.format(what="một biên nhận", sealed="", what_en="a delivery receipt", sealed_en="")
    note += f"Gói tin / packet: {pid}\r\nĐơn vị / organ: {r.organ}\r\n"
    note += f"Trạng thái / status: {r.status} {r.label}\r\n"
    msg.set_content(note, charset="utf-8", cte="quoted-printable")
    _attach(msg, receipt.raw, RECEIPT_TYPE, f"Biên nhận {r.status} {pid}.receipt.cbor")
    _attach_entries(msg, entries)
    return msg


def hub_receipt_message(
    receipt: ParsedHubReceipt,
    *,
    sender: tuple[str, str],
    recipient: tuple[str, str],
    domain: str,
    at: int,
) -> EmailMessage:
    """A hub receipt (``accepted``, ``fetched``) as a message."""
    r = receipt.receipt
    pid = uuid.UUID(bytes=r.packet_id)
    msg = _base(
        "hub-receipt",
        r.packet_id,
        receipt.digest,
        sender=sender,
        recipient=recipient,
        domain=domain,
        subject=f"[Lienthong] biên nhận của hub ({r.kind}) · {pid}",
        at=at,
    )
    note = _NOTE.format(
        what="một biên nhận của hub", sealed="", what_en="a receipt of the hub", sealed_en=""
    )
    note += f"Gói tin / packet: {pid}\r\nLoại / kind: {r.kind}\r\n"
    msg.set_content(note, charset="utf-8", cte="quoted-printable")
    _attach(
        msg, receipt.container.raw, HUB_RECEIPT_TYPE, f"Biên nhận hub {r.kind} {pid}.receipt.cbor"
    )
    return msg


def to_bytes(msg: EmailMessage) -> bytes:
    """The message on the wire: CRLF lines, RFC 2047 headers -- or RFC 6532 UTF-8 headers
    when an address cannot be written in ASCII (the server must then offer SMTPUTF8)."""
    specs = "".join(
        a.addr_spec for name in ("From", "To") for a in getattr(msg[name], "addresses", ())
    )
    return msg.as_bytes(policy=policy.SMTP if specs.isascii() else policy.SMTPUTF8)


# --- parsing -----------------------------------------------------------------------------


def _invalid(detail: str) -> RemoteError:
    return RemoteError("mail_invalid", detail)


def _one_header(msg: Message, name: str) -> str:
    values = msg.get_all(name) or []
    if len(values) != 1:
        if not values:
            raise _invalid(f"no {name} header: not a Lienthong message")
        raise _invalid(f"the {name} header appears {len(values)} times")
    return str(values[0]).strip()


def _base64(part: Message, what: str) -> bytes:
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if cte != "base64":
        raise _invalid(f"the {what} must be base64-encoded, not {cte or '7bit'}")
    payload = part.get_payload(decode=False)
    if not isinstance(payload, str):
        raise _invalid(f"the {what} part has no payload")
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(f"the {what} is not valid base64") from None


def _only_text(part: Message, depth: int) -> None:
    """A nested part may only be text (a disclaimer a relay added), never our data."""
    if depth > 3:
        raise _invalid("the message nests parts too deeply")
    if part.is_multipart():
        if part.get_content_maintype() != "multipart":
            raise _invalid("attached messages are not accepted")
        for sub in part.iter_parts() if isinstance(part, EmailMessage) else []:
            _only_text(sub, depth + 1)
        return
    if part.get_content_maintype() != "text":
        raise _invalid(f"unexpected part of type {part.get_content_type()}")


def _read(msg: EmailMessage, envelope_max: int) -> MailItem:
    version = _one_header(msg, HEADER_VERSION)
    if version != MAIL_VERSION:
        raise RemoteError("version_unsupported", f"Lienthong mail version {version[:16]!r}")
    kind = _one_header(msg, HEADER_KIND)
    if kind not in KINDS:
        raise _invalid(f"unknown {HEADER_KIND} {kind[:32]!r}")
    try:
        packet_header = uuid.UUID(_one_header(msg, HEADER_PACKET))
    except ValueError:
        raise _invalid(f"the {HEADER_PACKET} header is not a UUID") from None
    if msg.get_content_type() != "multipart/mixed":
        raise _invalid(f"the message is {msg.get_content_type()}, not multipart/mixed")
    found: dict[str, list[bytes]] = {t: [] for t in _OURS}
    parts = list(msg.iter_parts())
    if len(parts) > _PARTS_MAX:
        raise _invalid(f"the message has more than {_PARTS_MAX} parts")
    for part in parts:
        media = part.get_content_type()
        if media in found:
            if part.is_multipart():
                raise _invalid(f"the {media} part is multipart")
            found[media].append(_base64(part, media))
        else:
            _only_text(part, 1)
    entries = tuple(found[ENTRY_TYPE])
    if len(entries) > ENTRIES_MAX or sum(len(e) for e in entries) > ENTRIES_BYTES_MAX:
        raise _invalid(
            f"at most {ENTRIES_MAX} directory entries, {ENTRIES_BYTES_MAX} bytes together"
        )
    wanted = {
        "packet": {ENVELOPE_TYPE: 1, BODY_TYPE: 1},
        "receipt": {RECEIPT_TYPE: 1},
        "hub-receipt": {HUB_RECEIPT_TYPE: 1},
    }[kind]
    for media in (ENVELOPE_TYPE, BODY_TYPE, RECEIPT_TYPE, HUB_RECEIPT_TYPE):
        count = len(found[media])
        if count != wanted.get(media, 0):
            raise _invalid(f"a {kind} message has {count} part(s) of type {media}")
    msg_id = msg.get("Message-ID")
    message_id_text = str(msg_id).strip()[:998] if msg_id is not None else None
    if kind == "packet":
        envelope = parse_envelope(found[ENVELOPE_TYPE][0], max_size=envelope_max)
        body = found[BODY_TYPE][0]
        if envelope.packet_uuid != packet_header:
            raise _invalid(f"the {HEADER_PACKET} header names another packet")
        if len(body) != envelope.body_info.size:
            raise RemoteError(
                "body_size_mismatch",
                f"{len(body)} bytes of body, the envelope declares {envelope.body_info.size}",
            )
        return PacketMail(envelope, body, entries, message_id_text)
    if kind == "receipt":
        raw = found[RECEIPT_TYPE][0]
        if len(raw) > RECEIPT_MAX:
            raise RemoteError("cbor_too_large", f"receipt larger than {RECEIPT_MAX} bytes")
        receipt = parse_office_receipt(raw)
        if uuid.UUID(bytes=receipt.receipt.packet_id) != packet_header:
            raise _invalid(f"the {HEADER_PACKET} header names another packet")
        return ReceiptMail(receipt, entries, message_id_text)
    raw = found[HUB_RECEIPT_TYPE][0]
    if len(raw) > RECEIPT_MAX:
        raise RemoteError("cbor_too_large", f"hub receipt larger than {RECEIPT_MAX} bytes")
    hub_receipt = parse_hub_receipt(raw)
    if uuid.UUID(bytes=hub_receipt.receipt.packet_id) != packet_header:
        raise _invalid(f"the {HEADER_PACKET} header names another packet")
    return HubReceiptMail(hub_receipt, message_id_text)


def parse_message(data: bytes, *, max_size: int, envelope_max: int = ENVELOPE_MAX) -> MailItem:
    """Strictly read one Lienthong message (RFC 5322 bytes, CRLF or LF line ends).

    Raises ``size_limit_exceeded`` past ``max_size`` bytes, ``mail_invalid`` for anything
    that is not one of our messages, and the protocol's codes for the objects inside.
    The objects are parsed, not verified: signatures are the caller's to check.
    """
    if len(data) > max_size:
        raise RemoteError(
            "size_limit_exceeded", f"a message of {len(data)} bytes exceeds {max_size}"
        )
    try:
        msg = BytesParser(policy=policy.default).parsebytes(data)
        assert isinstance(msg, EmailMessage)
        return _read(msg, envelope_max)
    except RemoteError:
        raise
    except Exception as exc:
        # The stdlib parser is lenient by design and records defects instead of raising,
        # but its header parsers have raised IndexError, AttributeError, ValueError ... on
        # hostile input over the years.  Whatever it is, the message is not ours.
        raise _invalid(f"the message cannot be parsed ({type(exc).__name__})") from None


# --- SMTP replies: what the hub's gateway answers, and what a sender reads back -----------

#: Codes whose refusal means the sender is not who it claims, or may not do this.
_AUTHORITY_CODES: Final = frozenset(
    {
        "organ_unknown",
        "organ_not_valid",
        "organ_mismatch",
        "key_unknown",
        "key_expired",
        "key_not_yet_valid",
        "key_revoked",
        "receipt_signer_mismatch",
        "recipient_not_addressed",
        "transport_not_allowed",
        "packet_unknown",
    }
)
#: Codes whose refusal means bytes were altered (RFC 3463 5.7.7, integrity failure).
_INTEGRITY_CODES: Final = frozenset(
    {
        "signature_invalid",
        "hybrid_signature_missing",
        "signature_unexpected",
        "directory_signature_invalid",
        "body_digest_mismatch",
        "body_size_mismatch",
        "truncated_body",
        "body_extended",
    }
)
_REPLY_RE: Final = re.compile(
    r"(?:[245]\.\d{1,3}\.\d{1,3}\s+)?([a-z][a-z0-9_]{1,63}):\s?(.*)", re.S
)
_ACCEPTED_RE: Final = re.compile(r"lienthong (accepted|stored) ([0-9a-f-]{36})")


def _ascii(text: str, limit: int = 300) -> str:
    """Reply text in ASCII on one line: SMTP replies are 7-bit (Vietnamese loses marks)."""
    text = text.replace("đ", "d").replace("Đ", "D")
    flat = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return " ".join(flat.split())[:limit]


def smtp_refusal(exc: RemoteError) -> str:
    """The SMTP reply refusing a message for ``exc``: ``5yz x.y.z <code>: <detail>``.

    552 5.3.4 for sizes, 554 5.7.7 for altered bytes (signatures, body digests), 550 5.7.1
    when the sender may not do this (unknown, revoked, not allowed e-mail, not a party to
    the packet), 554 5.6.0 for any other malformed content.  The stable code always comes
    first in the text, so a sender's software reads it back with :func:`refusal_code`.
    """
    if exc.status == 413 or exc.code == "size_limit_exceeded":
        prefix = "552 5.3.4"
    elif exc.code in _INTEGRITY_CODES:
        prefix = "554 5.7.7"
    elif exc.code in _AUTHORITY_CODES or exc.status in (401, 403):
        prefix = "550 5.7.1"
    else:
        prefix = "554 5.6.0"
    return f"{prefix} {exc.code}: {_ascii(exc.detail)}"


def refusal_code(message: str) -> tuple[str, str] | None:
    """``(code, detail)`` from a Lienthong gateway's refusal text, or None if it is not one."""
    found = _REPLY_RE.fullmatch(message.strip())
    if found is None:
        return None
    return found.group(1), found.group(2).strip()


def accepted_reply(packet_id: bytes, what: str = "accepted") -> str:
    """The gateway's 250 reply: a packet ``accepted``, or a receipt about it ``stored``."""
    if what not in ("accepted", "stored"):
        raise LocalError(f"reply {what!r}")
    return f"250 2.0.0 lienthong {what} {uuid.UUID(bytes=packet_id)}"


def accepted_packet(message: str) -> bytes | None:
    """The packet id a gateway's 250 text says it accepted, or None (e.g. a plain relay)."""
    found = _ACCEPTED_RE.search(message)
    if found is None or found.group(1) != "accepted":
        return None
    return uuid.UUID(found.group(2)).bytes
