"""The e-mail message format (protocol.mail): round trips, headers, and one refusal per check.

Pure tests: messages are built and parsed in memory with real keys and sealed packets.
"""

from __future__ import annotations

import base64
import contextlib
import re
import uuid
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import mail
from protocol.errors import RemoteError
from protocol.keys import SigningPrivateKey
from protocol.packet import (
    DocumentMetadata,
    Recipient,
    Reference,
    Routing,
    parse_envelope,
    seal_packet,
)
from protocol.receipts import (
    HubReceipt,
    OfficeReceipt,
    parse_hub_receipt,
    parse_office_receipt,
    sign_hub_receipt,
    sign_office_receipt,
)
from tests.protocol.builders import SUBJECT, T0, Office, make_office

HUB = ("lienthong@hub.tinhuy.vn", "Lienthong — Văn phòng Tỉnh ủy")
OFFICE = ("vanthu@yenlac.vn", "Đảng ủy xã Yên Lạc")
DOMAIN = "hub.tinhuy.vn"
MAX = 8 * 1024 * 1024
AUTHORITY = SigningPrivateKey.generate()
PROVINCE = make_office("000.00.00.H41", "Văn phòng Tỉnh ủy", AUTHORITY)
YEN_LAC = make_office("000.00.12.H41", "Đảng ủy xã Yên Lạc", AUTHORITY, parent=PROVINCE.code)
REFERENCE = Reference("KH", "05", "KH/TU", "2025-11-20")


def sealed(
    sender: Office = PROVINCE,
    recipients: tuple[Office, ...] = (YEN_LAC,),
    *,
    secrecy: int = 0,
    data: bytes = "Nội dung kế hoạch tổng kết năm 2025.\n".encode() * 50,
) -> tuple[bytes, bytes]:
    return seal_packet(
        sender=sender.code,
        signing_key=sender.signing,
        recipients=[Recipient(r.code, r.encryption.public_key()) for r in recipients],
        metadata=DocumentMetadata(subject=SUBJECT, doc_type="KH", number="05", notation="KH/TU"),
        files=[("Báo cáo quý III.pdf", "application/pdf", data)],
        routing=Routing(urgency=1, secrecy=secrecy, reference=None if secrecy else REFERENCE),
    )


def packet_bytes(**kwargs: object) -> tuple[bytes, bytes, bytes]:
    envelope, body = sealed(**kwargs)  # type: ignore[arg-type]
    msg = mail.packet_message(
        parse_envelope(envelope),
        body,
        sender=HUB,
        recipient=OFFICE,
        domain=DOMAIN,
        at=T0,
        entries=[PROVINCE.entry_bytes],
    )
    return mail.to_bytes(msg), envelope, body


_RECEIPT_ENVELOPE = parse_envelope(sealed()[0])


def receipt_raw(status: str = "01") -> bytes:
    env = _RECEIPT_ENVELOPE
    return sign_office_receipt(
        OfficeReceipt(
            packet_id=env.packet_id,
            envelope_digest=env.digest,
            organ=YEN_LAC.code,
            signer=YEN_LAC.code,
            signer_kid=YEN_LAC.signing.kid,
            status=status,
            at=T0,
        ),
        YEN_LAC.signing,
    )


def receipt_bytes() -> bytes:
    msg = mail.receipt_message(
        parse_office_receipt(receipt_raw()),
        sender=OFFICE,
        recipient=HUB,
        domain="yenlac.vn",
        at=T0,
        entries=[YEN_LAC.entry_bytes],
    )
    return mail.to_bytes(msg)


def refused(data: bytes, code: str = "mail_invalid") -> RemoteError:
    with pytest.raises(RemoteError) as info:
        mail.parse_message(data, max_size=MAX)
    assert info.value.code == code, info.value
    return info.value


def parsed(data: bytes) -> EmailMessage:
    msg = message_from_bytes(data, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


# --- round trips ---------------------------------------------------------------------------


def test_packet_round_trip() -> None:
    data, envelope, body = packet_bytes()
    item = mail.parse_message(data, max_size=MAX)
    assert isinstance(item, mail.PacketMail)
    assert item.envelope.raw == envelope
    assert item.body == body
    assert item.entries == (PROVINCE.entry_bytes,)
    assert item.message_id is not None
    assert item.message_id.startswith(f"<lt1.packet.{item.envelope.packet_uuid}.")


def test_receipt_round_trip() -> None:
    item = mail.parse_message(receipt_bytes(), max_size=MAX)
    assert isinstance(item, mail.ReceiptMail)
    assert item.receipt.raw == receipt_raw()
    assert item.receipt.receipt.status == "01"
    assert item.entries == (YEN_LAC.entry_bytes,)


def test_hub_receipt_round_trip() -> None:
    env = parse_envelope(sealed()[0])
    hub_key = SigningPrivateKey.generate()
    raw = sign_hub_receipt(
        HubReceipt("accepted", env.packet_id, env.digest, PROVINCE.code, T0, 7), hub_key
    )
    msg = mail.hub_receipt_message(
        parse_hub_receipt(raw), sender=HUB, recipient=OFFICE, domain=DOMAIN, at=T0
    )
    item = mail.parse_message(mail.to_bytes(msg), max_size=MAX)
    assert isinstance(item, mail.HubReceiptMail)
    assert item.receipt.container.raw == raw
    assert item.receipt.receipt.log_index == 7


def test_lf_line_endings_and_crlf_both_read() -> None:
    data, envelope, _ = packet_bytes()
    assert b"\r\n" in data
    item = mail.parse_message(data.replace(b"\r\n", b"\n"), max_size=MAX)
    assert isinstance(item, mail.PacketMail)
    assert item.envelope.raw == envelope


# --- what the headers say (and never say) -------------------------------------------------


def test_subject_has_packet_id_and_clear_reference_never_the_document_subject() -> None:
    data, envelope, _ = packet_bytes()
    msg = parsed(data)
    pid = str(parse_envelope(envelope).packet_uuid)
    assert msg["Subject"] == f"[Lienthong] 05-KH/TU ngày 20/11/2025 · {pid}"
    assert msg[mail.HEADER_PACKET] == pid
    assert msg[mail.HEADER_KIND] == "packet"
    assert msg["References"] == f"<packet.{pid}@lienthong>"
    note = msg.get_body(preferencelist=("plain",))
    assert note is not None
    text = note.get_content()
    assert pid in text
    assert "05-KH/TU" in text
    # The trích yếu travels encrypted: no trace of it in any header or the note.
    for word in ("Hội nghị tổng kết", "Kế hoạch tổ chức"):
        assert word not in str(msg["Subject"])
        assert word not in text


def test_classified_packet_subject_has_no_reference() -> None:
    data, envelope, _ = packet_bytes(secrecy=1)
    msg = parsed(data)
    assert msg["Subject"] == f"[Lienthong] gói tin {parse_envelope(envelope).packet_uuid}"
    assert "KH/TU" not in data.decode("ascii")


def test_headers_are_rfc2047_ascii_on_the_wire() -> None:
    data, _, _ = packet_bytes()
    head = data.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    assert b"=?utf-8?" in head
    msg = parsed(data)
    assert msg["From"].addresses[0].display_name == HUB[1]
    assert msg["To"].addresses[0].display_name == OFFICE[1]


def test_rfc6532_utf8_headers_when_the_address_needs_them() -> None:
    envelope, body = sealed()
    msg = mail.packet_message(
        parse_envelope(envelope),
        body,
        sender=HUB,
        recipient=("văn-thư@yênlạc.vn", "Đảng ủy xã Yên Lạc"),
        domain=DOMAIN,
        at=T0,
    )
    data = mail.to_bytes(msg)
    head = data.split(b"\r\n\r\n", 1)[0]
    assert "văn-thư@yênlạc.vn".encode() in head  # raw UTF-8 (SMTPUTF8), not encoded words
    item = mail.parse_message(data, max_size=MAX)
    assert isinstance(item, mail.PacketMail)
    # The stdlib reads raw UTF-8 header bytes as surrogate escapes (RFC 6532 is ours to
    # decode); only the ASCII Lienthong-* headers matter to the parser.
    spec = parsed(data)["To"].addresses[0].addr_spec
    assert spec.encode("ascii", "surrogateescape").decode() == "văn-thư@yênlạc.vn"


def test_attachment_names_are_rfc2231() -> None:
    data, envelope, _ = packet_bytes()
    assert b"filename*" in data
    assert b"utf-8''G%C3%B3i" in data
    pid = parse_envelope(envelope).packet_uuid
    names = [p.get_filename() for p in parsed(data).iter_attachments()]
    assert f"Gói tin 05-KH_TU ngày 20_11_2025 {pid}.envelope.cbor" in names
    assert f"Gói tin 05-KH_TU ngày 20_11_2025 {pid}.body" in names
    types = [p.get_content_type() for p in parsed(data).iter_attachments()]
    assert types == [mail.ENVELOPE_TYPE, mail.BODY_TYPE, mail.ENTRY_TYPE]


def test_message_id_is_the_same_for_the_same_item_and_address() -> None:
    pid = uuid.uuid4().bytes
    one = mail.message_id("packet", pid, b"digest", "a@x.vn", DOMAIN)
    assert one == mail.message_id("packet", pid, b"digest", "A@X.vn", DOMAIN)
    assert one != mail.message_id("packet", pid, b"digest", "b@x.vn", DOMAIN)
    assert one != mail.message_id("packet", pid, b"other", "a@x.vn", DOMAIN)
    assert re.fullmatch(r"<lt1\.packet\.[0-9a-f-]{36}\.[0-9a-f]{20}@hub\.tinhuy\.vn>", one)


def test_receipt_threads_under_its_packet() -> None:
    msg = parsed(receipt_bytes())
    pid = msg[mail.HEADER_PACKET]
    assert msg["In-Reply-To"] == msg["References"] == f"<packet.{pid}@lienthong>"
    assert msg["Subject"] == f"[Lienthong] biên nhận 01 (đã đến) · {pid}"


def test_size_bound_holds_for_real_messages() -> None:
    for size in (0, 1, 1000, 300_000):
        envelope, body = sealed(data=b"\x00" * size)
        data = mail.to_bytes(
            mail.packet_message(
                parse_envelope(envelope),
                body,
                sender=HUB,
                recipient=OFFICE,
                domain=DOMAIN,
                at=T0,
                entries=[PROVINCE.entry_bytes] * mail.ENTRIES_MAX,
            )
        )
        assert (
            len(data)
            <= mail.encoded_size(len(envelope)) + mail.encoded_size(len(body)) + mail.RESERVE
        )
        assert mail.fits_in_mail(len(envelope), len(body), len(data) + mail.RESERVE)


# --- the submission-time check for e-mail-only recipients ---------------------------------


def test_classified_packet_to_email_only_office_is_refused() -> None:
    env = parse_envelope(sealed(secrecy=1)[0])
    with pytest.raises(RemoteError) as info:
        mail.check_email_delivery(env, {YEN_LAC.code}, MAX)
    assert info.value.code == "secrecy_not_by_email"
    mail.check_email_delivery(env, {"000.00.99.H41"}, MAX)  # not a recipient: no matter


def test_body_too_large_for_email_only_office_is_refused() -> None:
    env = parse_envelope(sealed(data=b"\x00" * 200_000)[0])
    with pytest.raises(RemoteError) as info:
        mail.check_email_delivery(env, {YEN_LAC.code}, 200_000)
    assert info.value.code == "size_limit_exceeded"
    mail.check_email_delivery(env, set(), 200_000)
    mail.check_email_delivery(env, {YEN_LAC.code}, MAX)


# --- one refusal per check -----------------------------------------------------------------


def replace_header(data: bytes, name: str, value: str | None) -> bytes:
    head, body = data.split(b"\r\n\r\n", 1)
    lines = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(name.lower().encode())]
    if value is not None:
        lines.append(f"{name}: {value}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def test_junk_is_not_a_lienthong_message() -> None:
    refused(b"From: spam@example.com\r\nSubject: Win\r\n\r\nBuy now!\r\n")
    refused(b"\x00\xff garbage")
    refused(b"")


def test_missing_version_header() -> None:
    data, _, _ = packet_bytes()
    refused(replace_header(data, mail.HEADER_VERSION, None))


def test_other_version() -> None:
    data, _, _ = packet_bytes()
    refused(replace_header(data, mail.HEADER_VERSION, "2"), "version_unsupported")


def test_duplicate_version_header() -> None:
    data, _, _ = packet_bytes()
    refused(data.replace(b"Lienthong-Version: 1\r\n", b"Lienthong-Version: 1\r\n" * 2))


def test_unknown_kind() -> None:
    data, _, _ = packet_bytes()
    refused(replace_header(data, mail.HEADER_KIND, "document"))


def test_kind_that_does_not_match_the_parts() -> None:
    data, _, _ = packet_bytes()
    refused(replace_header(data, mail.HEADER_KIND, "receipt"))


def test_packet_header_missing_or_not_a_uuid_or_another_packet() -> None:
    data, _, _ = packet_bytes()
    refused(replace_header(data, mail.HEADER_PACKET, None))
    refused(replace_header(data, mail.HEADER_PACKET, "not-a-uuid"))
    refused(replace_header(data, mail.HEADER_PACKET, str(uuid.uuid4())))


def test_not_multipart() -> None:
    data, _envelope, _ = packet_bytes()
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    head = [h for h in head if not h.startswith((b"Content-Type", b" boundary"))]
    refused(b"\r\n".join([*head, b"Content-Type: text/plain"]) + b"\r\n\r\nhello\r\n")


def _rebuild(data: bytes, change: object) -> bytes:
    msg = parsed(data)
    parts = list(msg.iter_parts())
    change(msg, parts)  # type: ignore[operator]
    msg.set_payload(parts)
    return msg.as_bytes(policy=policy.SMTP)


def test_two_envelopes() -> None:
    data, _, _ = packet_bytes()
    refused(_rebuild(data, lambda m, p: p.insert(1, p[1])))


def test_missing_body() -> None:
    data, _, _ = packet_bytes()
    refused(_rebuild(data, lambda m, p: p.pop(2)))


def test_unexpected_attachment() -> None:
    data, _, _ = packet_bytes()

    def add_pdf(msg: EmailMessage, parts: list[EmailMessage]) -> None:
        extra = EmailMessage()
        extra.set_content(b"%PDF-1.7", maintype="application", subtype="pdf")
        parts.append(extra)

    refused(_rebuild(data, add_pdf))


def test_our_part_inside_an_attached_message() -> None:
    data, _, _ = packet_bytes()

    def wrap(msg: EmailMessage, parts: list[EmailMessage]) -> None:
        inner = EmailMessage()
        inner.set_content(parsed(data))  # a forwarded copy of a valid message
        parts.append(inner)

    refused(_rebuild(data, wrap))


def test_disclaimer_text_added_by_a_relay_is_tolerated() -> None:
    data, envelope, _ = packet_bytes()

    def disclaimer(msg: EmailMessage, parts: list[EmailMessage]) -> None:
        extra = EmailMessage()
        extra.set_content("Thư được quét virus bởi máy chủ của Tỉnh ủy.")
        parts.append(extra)

    item = mail.parse_message(_rebuild(data, disclaimer), max_size=MAX)
    assert isinstance(item, mail.PacketMail)
    assert item.envelope.raw == envelope


def test_part_not_base64() -> None:
    data, _, _ = packet_bytes()

    def qp(msg: EmailMessage, parts: list[EmailMessage]) -> None:
        del parts[1]["Content-Transfer-Encoding"]
        parts[1]["Content-Transfer-Encoding"] = "quoted-printable"

    refused(_rebuild(data, qp))


def test_part_with_bad_base64() -> None:
    data, _, _ = packet_bytes()

    def bad(msg: EmailMessage, parts: list[EmailMessage]) -> None:
        parts[1].set_payload("!!!not base64!!!")

    refused(_rebuild(data, bad))


def test_body_shorter_than_declared() -> None:
    data, _, body = packet_bytes()

    def cut(msg: EmailMessage, parts: list[EmailMessage]) -> None:
        parts[2].set_payload(base64.encodebytes(body[:-1]).decode())

    refused(_rebuild(data, cut), "body_size_mismatch")


def test_tampered_envelope_bytes() -> None:
    data, envelope, _ = packet_bytes()

    def tamper(msg: EmailMessage, parts: list[EmailMessage]) -> None:
        parts[1].set_payload(base64.encodebytes(envelope + b"\x00").decode())

    refused(_rebuild(data, tamper), "cbor_malformed")


def test_too_many_entries() -> None:
    data, _, _ = packet_bytes()
    refused(_rebuild(data, lambda m, p: p.extend([p[3]] * mail.ENTRIES_MAX)))


def test_too_many_parts() -> None:
    data, _, _ = packet_bytes()

    def many(msg: EmailMessage, parts: list[EmailMessage]) -> None:
        for _ in range(20):
            extra = EmailMessage()
            extra.set_content("chú thích")
            parts.append(extra)

    refused(_rebuild(data, many))


def test_oversized_message() -> None:
    data, _, _ = packet_bytes()
    with pytest.raises(RemoteError) as info:
        mail.parse_message(data, max_size=len(data) - 1)
    assert info.value.code == "size_limit_exceeded"


def test_receipt_with_another_packet_header() -> None:
    refused(replace_header(receipt_bytes(), mail.HEADER_PACKET, str(uuid.uuid4())))


# --- hostile input: parse or a remote error, nothing else ---------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes_parse_or_remote_error(data: bytes) -> None:
    with contextlib.suppress(RemoteError):
        mail.parse_message(data, max_size=MAX)


_VALID = packet_bytes()[0]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.binary(max_size=8)), max_size=4))
def test_mutated_messages_parse_or_remote_error(edits: list[tuple[int, bytes]]) -> None:
    data = bytearray(_VALID)
    for pos, new in edits:
        data[pos : pos + len(new)] = new
    with contextlib.suppress(RemoteError):
        mail.parse_message(bytes(data), max_size=MAX)
