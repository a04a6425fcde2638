"""The hub's inbound gateway: packets and receipts by SMTP, verified like HTTP submissions.

A real hub (``create_app`` with its sequencer and background tasks) on both database back
ends, its aiosmtpd gateway on a free port, and aiosmtplib as the office's client.  Every
refusal is checked three ways: the SMTP reply and its stable code, nothing stored, and
(for authentic senders) the audit log.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

from hub.email.models import EmailMessageRow
from hub.models import Packet
from protocol import mail, signed
from protocol.audit import parse_event
from protocol.codec import encode
from protocol.packet import Routing, parse_envelope
from protocol.receipts import parse_office_receipt
from protocol.signed import CTX_ENVELOPE
from tests.hub.conftest import running_hub
from tests.hub.helpers import (
    PROVINCE,
    HubEnv,
    Office,
    log_kinds,
    mailbox,
    office_receipt,
    seal,
    send,
    stored,
    submit,
    upload,
    world,
)

from .helpers import (
    GATEWAY,
    email_hub,
    gateway_settings,
    make_email_office,
    smtp_port,
    smtp_send,
)

pytestmark = pytest.mark.asyncio

VAN_HOI = "000.00.21.H41"


def packet_mail(office: Office, envelope: bytes, body: bytes) -> bytes:
    msg = mail.packet_message(
        parse_envelope(envelope),
        body,
        sender=(office.extra.get("email", "vanthu@lienthong.test"), office.name),
        recipient=(GATEWAY, "Lienthong"),
        domain="lienthong.test",
        at=int(time.time()),
    )
    return mail.to_bytes(msg)


def receipt_mail(office: Office, raw: bytes) -> bytes:
    msg = mail.receipt_message(
        parse_office_receipt(raw),
        sender=(office.extra.get("email", "vanthu@lienthong.test"), office.name),
        recipient=(GATEWAY, "Lienthong"),
        domain="lienthong.test",
        at=int(time.time()),
    )
    return mail.to_bytes(msg)


async def email_events(env: HubEnv) -> list[dict[str, object]]:
    from hub.auditlog.models import LogEntry, LogPending

    out = []
    async with env.hub.sessions() as session:
        queries = (
            select(LogEntry.data).order_by(LogEntry.idx),
            select(LogPending.data).order_by(LogPending.id),
        )
        for query in queries:
            for data in await session.scalars(query):
                event = parse_event(bytes(data))
                if event.kind == "email":
                    out.append(event.fields)
    return out


async def test_packet_by_email_is_accepted_and_delivered(database_url: str, hub_data: Path) -> None:
    async with email_hub(database_url, hub_data) as env:
        w = await world(env)
        van_hoi = await make_email_office(
            env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE, transports=("http", "email")
        )
        envelope, body = seal(van_hoi, [w.province])
        reply = await smtp_send(smtp_port(env), packet_mail(van_hoi, envelope, body))
        env_ = parse_envelope(envelope)
        assert reply.code == 250, reply
        assert reply.message == mail.accepted_reply(env_.packet_id)[4:]
        assert mail.accepted_packet(reply.message) == env_.packet_id
        [item] = await mailbox(env, w.province)
        assert item["packet_id"] == str(env_.packet_uuid)
        async with env.hub.sessions() as session:
            packet = await session.get(Packet, env_.packet_id)
            assert packet is not None
            assert packet.state == "accepted"
            assert packet.transport == "email"
            rows = (await session.scalars(select(EmailMessageRow))).all()
        # Received, and the hub's accepted receipt queued to go back by e-mail.
        assert sorted((r.direction, r.item, r.state) for r in rows) == [
            ("in", "packet", "received"),
            ("out", "accepted", "pending"),
        ]
        assert "email" in await log_kinds(env)
        [event] = await email_events(env)
        assert event["direction"] == "in"
        assert event["state"] == "received"
        assert event["organ"] == VAN_HOI


async def test_same_packet_by_http_and_by_email_is_one_packet(
    database_url: str, hub_data: Path
) -> None:
    async with email_hub(database_url, hub_data) as env:
        w = await world(env)
        van_hoi = await make_email_office(
            env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE, transports=("http", "email")
        )
        # HTTP first, then the same packet by e-mail (the node's fallback after a lost answer).
        doc, envelope, body = await send(env, van_hoi, [w.province])
        before = await stored(env)
        reply = await smtp_send(smtp_port(env), packet_mail(van_hoi, envelope, body))
        assert reply.code == 250
        assert mail.accepted_packet(reply.message) is not None
        assert await stored(env) == before
        # E-mail first, then the same packet by HTTP.
        envelope2, body2 = seal(van_hoi, [w.province])
        assert (await smtp_send(smtp_port(env), packet_mail(van_hoi, envelope2, body2))).code == 250
        status, answer = await submit(env, van_hoi, envelope2)
        assert (status, answer["state"]) == (200, "accepted"), answer
        # And the same message twice: still one packet, one record.
        assert (await smtp_send(smtp_port(env), packet_mail(van_hoi, envelope2, body2))).code == 250
        assert (await stored(env))["packets"] == before["packets"] + 1
        assert len([m for m in await mailbox(env, w.province)]) == 2
        _ = doc


async def test_body_arriving_by_email_for_an_envelope_sent_by_http(
    database_url: str, hub_data: Path
) -> None:
    async with email_hub(database_url, hub_data) as env:
        w = await world(env)
        van_hoi = await make_email_office(
            env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE, transports=("http", "email")
        )
        envelope, body = seal(van_hoi, [w.province])
        status, doc = await submit(env, van_hoi, envelope)
        assert status == 202, doc  # HTTPS failed during the upload: the node falls back
        reply = await smtp_send(smtp_port(env), packet_mail(van_hoi, envelope, body))
        assert reply.code == 250, reply
        status, doc = await upload(env, van_hoi, doc["packet_id"], body)
        assert status == 409
        assert doc["code"] == "body_not_expected"


async def test_receipt_by_email_reaches_the_sender(database_url: str, hub_data: Path) -> None:
    async with email_hub(database_url, hub_data) as env:
        w = await world(env)
        van_hoi = await make_email_office(
            env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE, transports=("http", "email")
        )
        _doc, envelope, _body = await send(env, w.province, [van_hoi])
        raw = office_receipt(van_hoi, envelope, "01")
        reply = await smtp_send(smtp_port(env), receipt_mail(van_hoi, raw))
        pid = parse_envelope(envelope).packet_id
        assert reply.code == 250
        assert reply.message == f"2.0.0 lienthong stored {uuid.UUID(bytes=pid)}"
        items = [i for i in await mailbox(env, w.province) if i["kind"] == "receipt"]
        assert [i["status"] for i in items] == ["01"]
        # Again: a duplicate, acknowledged, not stored twice.
        assert (await smtp_send(smtp_port(env), receipt_mail(van_hoi, raw))).code == 250
        assert len([i for i in await mailbox(env, w.province) if i["kind"] == "receipt"]) == 1


# --- refusals: the SMTP code, the stable error code, nothing stored ------------------------


async def refused(env: HubEnv, data: bytes, code: int, error: str, **kwargs: object) -> None:
    before = await stored(env)
    reply = await smtp_send(smtp_port(env), data, **kwargs)  # type: ignore[arg-type]
    assert reply.code == code, reply
    assert mail.refusal_code(reply.message) is not None, reply
    assert mail.refusal_code(reply.message)[0] == error, reply  # type: ignore[index]
    assert await stored(env) == before


async def test_junk_mail_is_refused(database_url: str, hub_data: Path) -> None:
    async with email_hub(database_url, hub_data) as env:
        await world(env)
        junk = (
            "From: =?utf-8?q?Khuy=E1=BA=BFn_m=C3=A3i?= <spam@example.com>\r\n"
            f"To: {GATEWAY}\r\nSubject: Trúng thưởng!\r\n\r\nNhấn vào đây.\r\n"
        ).encode()
        await refused(env, junk, 554, "mail_invalid")
        assert await email_events(env) == []


async def test_packet_with_a_bad_signature_is_refused(database_url: str, hub_data: Path) -> None:
    async with email_hub(database_url, hub_data) as env:
        w = await world(env)
        van_hoi = await make_email_office(env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE)
        envelope, body = seal(van_hoi, [w.province])
        # The same envelope bytes, signed by someone else's key (a forgery).
        container = signed.parse(envelope, max_size=1 << 22, where="envelope")
        forged = encode(
            {"body": container.body, "sig": w.tam_hong.signing.sign(CTX_ENVELOPE, container.body)}
        )
        await refused(env, packet_mail(van_hoi, forged, body), 554, "signature_invalid")
        # Signed with a key the directory does not list for the sender.
        stranger = replace(van_hoi, signing=w.tam_hong.signing)
        other, other_body = seal(stranger, [w.province])
        await refused(env, packet_mail(van_hoi, other, other_body), 550, "key_unknown")
        # Nothing about either in the audit log: unauthenticated mail is not an event.
        assert "policy_refused" not in await log_kinds(env)


async def test_packet_with_a_tampered_body_is_refused(database_url: str, hub_data: Path) -> None:
    async with email_hub(database_url, hub_data) as env:
        w = await world(env)
        van_hoi = await make_email_office(env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE)
        envelope, body = seal(van_hoi, [w.province])
        tampered = bytes([body[0] ^ 1]) + body[1:]
        await refused(env, packet_mail(van_hoi, envelope, tampered), 554, "body_digest_mismatch")


async def test_oversized_message_is_refused(database_url: str, hub_data: Path) -> None:
    async with email_hub(database_url, hub_data, max_size=300_000) as env:
        w = await world(env)
        van_hoi = await make_email_office(env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE)
        envelope, body = seal(van_hoi, [w.province], data=b"\x00" * 400_000)
        data = packet_mail(van_hoi, envelope, body)
        # Announced with SIZE=: refused at MAIL FROM; not announced: refused after DATA.
        await refused(env, data, 552, "size_limit_exceeded", size=True)
        await refused(env, data, 552, "size_limit_exceeded")


async def test_office_whose_entry_does_not_allow_email(database_url: str, hub_data: Path) -> None:
    async with email_hub(database_url, hub_data) as env:
        w = await world(env)
        envelope, body = seal(w.yen_lac, [w.province])  # yen_lac: HTTP only
        await refused(env, packet_mail(w.yen_lac, envelope, body), 550, "transport_not_allowed")
        # An authentic sender refused by policy: logged, as HTTP refusals are.
        assert "policy_refused" in await log_kinds(env)


async def test_classified_packet_by_email_is_refused(database_url: str, hub_data: Path) -> None:
    async with email_hub(database_url, hub_data, **{}) as env:
        w = await world(env)
        van_hoi = await make_email_office(env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE)
        envelope, body = seal(van_hoi, [w.province], routing=Routing(secrecy=1))
        await refused(env, packet_mail(van_hoi, envelope, body), 550, "secrecy_refused")


async def test_receipt_from_the_wrong_office_is_refused(database_url: str, hub_data: Path) -> None:
    async with email_hub(database_url, hub_data) as env:
        w = await world(env)
        van_hoi = await make_email_office(env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE)
        other = await make_email_office(env, "000.00.22.H41", "Đảng ủy xã Kim Sơn", parent=PROVINCE)
        _doc, envelope, _body = await send(env, w.province, [van_hoi])
        # Kim Sơn is not a recipient: it may not speak about this packet at all.
        own = office_receipt(other, envelope, "01")
        await refused(env, receipt_mail(other, own), 550, "packet_unknown")
        # Nor about Vân Hội's delivery, even signed with its own genuine key.
        about = office_receipt(other, envelope, "01", about=VAN_HOI)
        await refused(env, receipt_mail(other, about), 550, "packet_unknown")
        items = [i for i in await mailbox(env, w.province) if i["kind"] == "receipt"]
        assert items == []


async def test_mail_for_another_address_is_refused(database_url: str, hub_data: Path) -> None:
    async with email_hub(database_url, hub_data) as env:
        w = await world(env)
        van_hoi = await make_email_office(env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE)
        envelope, body = seal(van_hoi, [w.province])
        await refused(
            env,
            packet_mail(van_hoi, envelope, body),
            550,
            "mail_invalid",
            rcpt="bi.thu@example.com",
        )


# --- submission-time refusals for e-mail-only recipients ------------------------------------


async def test_classified_packet_to_an_email_only_office_is_refused_at_submission(
    database_url: str, hub_data: Path
) -> None:
    async with email_hub(database_url, hub_data, smtp_port=None) as env:
        w = await world(env)
        van_hoi = await make_email_office(env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE)
        before = await stored(env)
        envelope, _body = seal(w.province, [van_hoi, w.yen_lac], routing=Routing(secrecy=1))
        # Mật is refused on this deployment anyway; allow it to reach the e-mail rule.
        status, doc = await submit(env, w.province, envelope)
        assert status == 403
        assert doc["code"] in ("secrecy_refused", "secrecy_not_by_email")
        assert await stored(env) == before


async def test_secrecy_rule_names_email_when_mat_is_allowed(
    database_url: str, hub_data: Path
) -> None:
    async with running_hub(
        database_url,
        hub_data,
        secrecy_allowed=["none", "mat"],
        email=gateway_settings(None, smtp_port=None),
    ) as env:
        w = await world(env)
        van_hoi = await make_email_office(env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE)
        before = await stored(env)
        envelope, _ = seal(w.province, [van_hoi], routing=Routing(secrecy=1))
        status, doc = await submit(env, w.province, envelope)
        assert (status, doc["code"]) == (403, "secrecy_not_by_email"), doc
        # The same document to an HTTP office is fine on this deployment.
        envelope, _ = seal(w.province, [w.yen_lac], routing=Routing(secrecy=1))
        status, doc = await submit(env, w.province, envelope)
        assert status == 202, doc
        assert (await stored(env))["accepted"] == before["accepted"]
        assert "policy_refused" in await log_kinds(env)


async def test_body_too_large_for_an_email_only_office_is_refused_at_submission(
    database_url: str, hub_data: Path
) -> None:
    async with email_hub(database_url, hub_data, smtp_port=None, max_size=300_000) as env:
        w = await world(env)
        van_hoi = await make_email_office(env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE)
        envelope, _ = seal(w.province, [van_hoi], data=b"\x00" * 300_000)
        status, doc = await submit(env, w.province, envelope)
        assert (status, doc["code"]) == (413, "size_limit_exceeded"), doc
        assert "e-mail only" in doc["detail"]
        # Small enough: accepted.
        envelope, _ = seal(w.province, [van_hoi], data=b"\x00" * 1000)
        status, doc = await submit(env, w.province, envelope)
        assert status == 202, doc
