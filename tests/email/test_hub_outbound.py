"""The hub's outbound sender: mail for e-mail offices through a real (aiosmtpd) relay.

The relay runs in the test's event loop on a free port; it can be stopped and started
again on the same port, or made to refuse.  What arrives there is parsed with the
protocol's own parser and its signatures checked as an office would check them.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hub.email.app import EMAIL
from hub.email.models import EmailMessageRow
from hub.models import DeliveryRow, MailboxItem
from hub.retention import collect_garbage
from protocol import mail
from protocol.audit import parse_event
from protocol.directory import verify_entry
from protocol.packet import Routing, parse_envelope
from protocol.receipts import verify_hub_receipt, verify_office_receipt
from tests.hub.conftest import running_hub
from tests.hub.helpers import (
    PROVINCE,
    HubEnv,
    eventually,
    login,
    mailbox,
    office_receipt,
    post_receipts,
    seal,
    send,
    world,
)

from .helpers import (
    email_hub,
    gateway_settings,
    make_email_office,
    smtp_port,
    smtp_send,
)
from .servers import Relay
from .test_hub_inbound import packet_mail

pytestmark = pytest.mark.asyncio

VAN_HOI = "000.00.21.H41"


async def events(env: HubEnv, kind: str = "email") -> list[dict[str, Any]]:
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
                if event.kind == kind:
                    out.append(event.fields)
    return out


async def rows(env: HubEnv) -> list[EmailMessageRow]:
    async with env.hub.sessions() as session:
        return list((await session.scalars(select(EmailMessageRow))).all())


def items(relay: Relay, address: str) -> list[mail.MailItem]:
    return [mail.parse_message(m.data, max_size=1 << 26) for m in relay.for_address(address)]


async def all_sent(env: HubEnv, count: int, within: float = 10.0) -> bool:
    """``count`` rows sent (the relay has the message a moment before our commit)."""

    async def check() -> bool:
        return [r.state for r in await rows(env)] == ["sent"] * count

    return bool(await eventually(check, within))


async def arrived(relay: Relay, address: str, count: int = 1, within: float = 10.0) -> bool:
    async def check() -> bool:
        return len(relay.for_address(address)) >= count

    return bool(await eventually(check, within))


async def test_packet_to_an_email_only_office_goes_out_once(
    database_url: str, hub_data: Path, relay: Relay
) -> None:
    async with email_hub(database_url, hub_data, relay.port) as env:
        w = await world(env)
        van_hoi = await make_email_office(env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE)
        address = van_hoi.extra["email"]
        _doc, envelope, body = await send(env, w.province, [van_hoi, w.yen_lac])
        assert await arrived(relay, address)
        [item] = items(relay, address)
        assert isinstance(item, mail.PacketMail)
        assert item.envelope.raw == envelope
        assert item.body == body
        # The sender's signed entry came along, and verifies against the authority.
        authority = env.keys.authority.public_key()
        [entry] = item.entries
        assert verify_entry(entry, authority, organ=PROVINCE).entry.organ == PROVINCE
        item.envelope.verify_sender(verify_entry(entry, authority).entry)
        assert await all_sent(env, 1)
        # The mailbox item is delivered: gone from the HTTPS mailbox; the HTTP office's stays.
        assert await mailbox(env, van_hoi) == []
        assert len(await mailbox(env, w.yen_lac)) == 1
        [row] = await rows(env)
        assert (row.state, row.attempts, row.item) == ("sent", 1, "packet")
        assert [(e["state"], e["attempt"]) for e in await events(env)] == [("sent", 1)]
        # However many passes follow, nothing is sent twice.
        sender = env.app[EMAIL].sender
        assert sender is not None
        for _ in range(3):
            await sender.run_once()
        assert len(relay.for_address(address)) == 1
        assert relay.messages[0].mail_from == gateway_settings()["address"]


async def test_a_body_mailed_to_every_office_that_has_no_https_is_collected(
    database_url: str, hub_data: Path, relay: Relay
) -> None:
    """Retention counts a packet the relay accepted as delivered; a failed one keeps the body."""
    async with email_hub(database_url, hub_data, relay.port) as env:
        hub = env.hub
        w = await world(env)
        van_hoi = await make_email_office(env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE)
        _doc, _envelope, body = await send(env, w.province, [van_hoi, w.yen_lac])
        digest = hashlib.sha256(body).digest()
        assert await all_sent(env, 1)
        later = int(time.time()) + hub.settings.retention_seconds + 10
        # Mailed to Vân Hội, but Yên Lạc has not fetched it: kept.
        assert (await collect_garbage(hub, now=later)).bodies_deleted == 0
        await login(env, w.yen_lac)
        resp = await env.client.get(f"/v1/bodies/{digest.hex()}", headers=w.yen_lac.headers)
        assert await resp.read() == body

        async def fetched() -> bool:
            async with hub.sessions() as session:
                rows = (await session.scalars(select(DeliveryRow.fetched_at))).all()
            return any(rows)

        assert await eventually(fetched)
        assert (await collect_garbage(hub, now=later)).bodies_deleted == 1
        assert not hub.blobs.exists(digest)


async def test_a_body_whose_mail_failed_is_kept(
    database_url: str, hub_data: Path, relay: Relay
) -> None:
    relay.refuse = "550 5.1.1 no such mailbox"
    async with email_hub(database_url, hub_data, relay.port) as env:
        hub = env.hub
        w = await world(env)
        van_hoi = await make_email_office(env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE)
        _doc, _envelope, body = await send(env, w.province, [van_hoi])

        async def failed() -> list[EmailMessageRow]:
            return [r for r in await rows(env) if r.state == "failed"]

        assert await eventually(failed, 10)
        later = int(time.time()) + hub.settings.retention_seconds + 10
        assert (await collect_garbage(hub, now=later)).bodies_deleted == 0
        assert hub.blobs.exists(hashlib.sha256(body).digest())


async def test_relay_down_for_a_while(database_url: str, hub_data: Path, relay: Relay) -> None:
    async with email_hub(database_url, hub_data, relay.port) as env:
        w = await world(env)
        van_hoi = await make_email_office(env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE)
        address = van_hoi.extra["email"]
        await relay.stop()
        await send(env, w.province, [van_hoi])
        await send(env, w.province, [van_hoi], routing=Routing(urgency=3))

        async def deferred_twice() -> bool:
            states = [e for e in await events(env) if e["state"] == "deferred"]
            return len(states) >= 4

        assert await eventually(deferred_twice, 15)
        assert all(e["code"] == "relay_unreachable" for e in await events(env))
        assert all(r.state in ("pending", "sending") for r in await rows(env))
        # Nothing lost meanwhile: both still wait in the hub mailbox.
        assert len(await mailbox(env, van_hoi)) == 2
        await relay.start()  # the same port again
        assert await arrived(relay, address, 2, within=15)
        assert await all_sent(env, 2)
        sender = env.app[EMAIL].sender
        assert sender is not None
        await sender.run_once()
        assert len(relay.for_address(address)) == 2  # once each, never twice
        envelopes = {i.envelope.packet_id for i in items(relay, address)}  # type: ignore[union-attr]
        assert len(envelopes) == 2
        for row in await rows(env):
            assert row.state == "sent"
            assert row.attempts >= 3
        states = [e["state"] for e in await events(env)]
        assert states.count("sent") == 2
        assert await mailbox(env, van_hoi) == []


async def test_relay_that_refuses_for_a_while_then_accepts(
    database_url: str, hub_data: Path, relay: Relay
) -> None:
    relay.refuse = "451 4.3.0 mailbox busy, try later"
    async with email_hub(database_url, hub_data, relay.port) as env:
        w = await world(env)
        van_hoi = await make_email_office(env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE)
        await send(env, w.province, [van_hoi])

        async def deferred() -> bool:
            return any(e["code"] == "smtp_451" for e in await events(env))

        assert await eventually(deferred, 10)
        relay.refuse = None
        assert await arrived(relay, van_hoi.extra["email"], within=15)
        assert await all_sent(env, 1)
        states = [e["state"] for e in await events(env)]
        assert states[-1] == "sent"
        assert set(states[:-1]) == {"deferred"}


async def test_relay_that_refuses_for_good(database_url: str, hub_data: Path, relay: Relay) -> None:
    relay.refuse = "550 5.1.1 no such mailbox"
    async with email_hub(database_url, hub_data, relay.port) as env:
        w = await world(env)
        van_hoi = await make_email_office(env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE)
        await send(env, w.province, [van_hoi])

        async def failed() -> list[EmailMessageRow]:
            return [r for r in await rows(env) if r.state == "failed"]

        [row] = await eventually(failed, 10)
        assert row.error is not None
        assert row.error.startswith("smtp_550")
        assert [(e["state"], e.get("code")) for e in await events(env)] == [("failed", "smtp_550")]
        # A clear final failure, and the item is not lost: still in the hub mailbox.
        assert len(await mailbox(env, van_hoi)) == 1
        relay.refuse = None
        sender = env.app[EMAIL].sender
        assert sender is not None
        await sender.run_once()
        assert relay.messages == []


async def test_gives_up_after_the_configured_time(
    database_url: str, hub_data: Path, relay: Relay
) -> None:
    await relay.stop()
    async with email_hub(database_url, hub_data, relay.port, give_up_after=5, interval=3600) as env:
        w = await world(env)
        van_hoi = await make_email_office(env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE)
        await send(env, w.province, [van_hoi])
        sender = env.app[EMAIL].sender
        assert sender is not None
        report = await sender.run_once()
        assert len(report.deferred) == 1
        report = await sender.run_once(at=int(time.time()) + 60)
        assert len(report.failed) == 1
        [row] = await rows(env)
        assert row.state == "failed"
        assert row.error is not None
        assert "gave up" in row.error
        assert [e["state"] for e in await events(env)] == ["deferred", "failed"]


async def test_fallback_by_urgency_for_offices_with_both_transports(
    database_url: str, hub_data: Path, relay: Relay
) -> None:
    async with email_hub(
        database_url, hub_data, relay.port, interval=3600, fallback_after=[0, 0, 0, 30, 30]
    ) as env:
        w = await world(env)
        van_hoi = await make_email_office(
            env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE, transports=("http", "email")
        )
        address = van_hoi.extra["email"]
        _, urgent, _ = await send(env, w.province, [van_hoi], routing=Routing(urgency=3))
        await send(env, w.province, [van_hoi], routing=Routing(urgency=0))
        sender = env.app[EMAIL].sender
        assert sender is not None
        report = await sender.run_once()
        assert report.queued == 0  # it may still be fetched over HTTPS
        report = await sender.run_once(at=int(time.time()) + 31)
        assert (report.queued, len(report.sent)) == (1, 1)
        [item] = items(relay, address)
        assert isinstance(item, mail.PacketMail)
        assert item.envelope.raw == urgent  # hỏa tốc: after 30 s; thường: never
        [left] = await mailbox(env, van_hoi)
        assert left["urgency"] == 0
        report = await sender.run_once(at=int(time.time()) + 86400)
        assert report.queued == 0


async def test_classified_packet_never_falls_back_to_email(
    database_url: str, hub_data: Path, relay: Relay
) -> None:
    async with running_hub(
        database_url,
        hub_data,
        secrecy_allowed=["none", "mat"],
        email=gateway_settings(relay.port, interval=3600, fallback_after=[1, 1, 1, 1, 1]),
    ) as env:
        w = await world(env)
        van_hoi = await make_email_office(
            env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE, transports=("http", "email")
        )
        await send(env, w.province, [van_hoi], routing=Routing(secrecy=1))
        sender = env.app[EMAIL].sender
        assert sender is not None
        report = await sender.run_once(at=int(time.time()) + 60)
        assert len(report.failed) == 1
        assert relay.messages == []
        [row] = await rows(env)
        assert row.error is not None
        assert row.error.startswith("secrecy_not_by_email")
        assert len(await mailbox(env, van_hoi)) == 1  # HTTPS still delivers it


async def test_submission_by_email_is_answered_by_email(
    database_url: str, hub_data: Path, relay: Relay
) -> None:
    async with email_hub(database_url, hub_data, relay.port) as env:
        w = await world(env)
        van_hoi = await make_email_office(env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE)
        address = van_hoi.extra["email"]
        envelope, body = seal(van_hoi, [w.province])
        reply = await smtp_send(smtp_port(env), packet_mail(van_hoi, envelope, body))
        assert reply.code == 250
        # The hub's accepted receipt goes back by e-mail once the log has indexed it.
        assert await arrived(relay, address)
        [item] = items(relay, address)
        assert isinstance(item, mail.HubReceiptMail)
        hub_key = env.keys.hub.public_key()
        receipt = verify_hub_receipt(item.receipt, hub_key, envelope=parse_envelope(envelope))
        assert (receipt.kind, receipt.organ) == ("accepted", VAN_HOI)
        # The province answers 01 over HTTPS: relayed to Vân Hội by e-mail, with the
        # province's entry so that an office reading only mail can verify it.
        [envelope_item] = await mailbox(env, w.province)
        status, doc = await post_receipts(
            env, w.province, [office_receipt(w.province, envelope, "01")]
        )
        assert status == 200, doc
        assert await arrived(relay, address, 2)
        receipt_items = [i for i in items(relay, address) if isinstance(i, mail.ReceiptMail)]
        [got] = receipt_items
        entry = verify_entry(got.entries[0], env.keys.authority.public_key()).entry
        verified = verify_office_receipt(got.receipt, entry, envelope=parse_envelope(envelope))
        assert verified.status == "01"
        assert envelope_item["kind"] == "envelope"

        # Nothing waits in Vân Hội's HTTPS mailbox: all of it went by e-mail.
        async def emptied() -> bool:
            async with env.hub.sessions() as session:
                left = await session.scalars(
                    select(MailboxItem).where(MailboxItem.organ == VAN_HOI)
                )
                return not left.all()

        assert await eventually(emptied)
