"""TLS on both SMTP paths: STARTTLS on the hub's gateway, STARTTLS and implicit TLS to the
relay -- with a self-signed certificate the clients are told to trust, and without."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import aiosmtplib
import pytest

from hub.email.app import EMAIL
from protocol import mail
from tests.hub.helpers import PROVINCE, eventually, seal, send, world

from .helpers import GATEWAY, email_hub, make_email_office, smtp_port
from .servers import Relay, self_signed, server_context
from .test_hub_inbound import packet_mail

pytestmark = pytest.mark.asyncio
VAN_HOI = "000.00.21.H41"


async def test_gateway_offers_and_requires_starttls(database_url: str, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls")
    async with email_hub(
        database_url,
        tmp_path / "hub",
        smtp_tls_cert=str(cert),
        smtp_tls_key=str(key),
        smtp_require_tls=True,
    ) as env:
        w = await world(env)
        van_hoi = await make_email_office(env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE)
        data = packet_mail(van_hoi, *seal(van_hoi, [w.province]))
        plain = aiosmtplib.SMTP(hostname="127.0.0.1", port=smtp_port(env), start_tls=False)
        await plain.connect()
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
            await plain.sendmail("vanthu@vanhoi.vn", [GATEWAY], data)
        assert info.value.code == 530  # STARTTLS first
        plain.close()
        trusted = ssl.create_default_context(cafile=str(cert))
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=smtp_port(env), start_tls=True, tls_context=trusted
        )
        await client.connect()
        _, reply = await client.sendmail("vanthu@vanhoi.vn", [GATEWAY], data)
        await client.quit()
        assert mail.accepted_packet(reply) is not None


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit-tls"])
async def test_sender_uses_tls_to_the_relay(
    database_url: str, tmp_path: Path, implicit: bool
) -> None:
    cert, key = self_signed(tmp_path / "tls")
    relay = await Relay(tls=server_context(cert, key), implicit=implicit).start()
    try:
        async with email_hub(
            database_url,
            tmp_path / "hub",
            relay.port,
            relay_tls="tls" if implicit else "starttls",
            relay_ca_file=str(cert),
        ) as env:
            w = await world(env)
            van_hoi = await make_email_office(env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE)
            await send(env, w.province, [van_hoi])

            async def arrived() -> bool:
                return len(relay.messages) == 1

            assert await eventually(arrived, 10)
    finally:
        await relay.stop()


async def test_relay_with_an_untrusted_certificate_is_not_used(
    database_url: str, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path / "tls")
    relay = await Relay(tls=server_context(cert, key)).start()
    try:
        async with email_hub(
            database_url, tmp_path / "hub", relay.port, relay_tls="starttls", interval=3600
        ) as env:
            w = await world(env)
            van_hoi = await make_email_office(env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE)
            await send(env, w.province, [van_hoi])
            sender = env.app[EMAIL].sender
            assert sender is not None
            report = await sender.run_once(at=int(time.time()))
            assert len(report.deferred) == 1
            assert relay.messages == []
    finally:
        await relay.stop()


async def test_sender_logs_in_to_the_relay(database_url: str, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls")
    secret = tmp_path / "relay-password"
    secret.write_text("mật khẩu máy chủ thư\n", encoding="utf-8")
    relay = await Relay(
        tls=server_context(cert, key), login=("lienthong", "mật khẩu máy chủ thư")
    ).start()
    try:
        async with email_hub(
            database_url,
            tmp_path / "hub",
            relay.port,
            relay_tls="starttls",
            relay_ca_file=str(cert),
            relay_username="lienthong",
            relay_password_file=str(secret),
            interval=3600,
        ) as env:
            w = await world(env)
            van_hoi = await make_email_office(env, VAN_HOI, "Đảng ủy xã Vân Hội", parent=PROVINCE)
            await send(env, w.province, [van_hoi])
            sender = env.app[EMAIL].sender
            assert sender is not None
            report = await sender.run_once()
            assert len(report.sent) == 1
            assert len(relay.messages) == 1
            relay.login = ("lienthong", "another password")
            await send(env, w.province, [van_hoi])
            report = await sender.run_once()
            assert len(report.deferred) == 1  # a login refused: the relay is not usable
    finally:
        await relay.stop()
