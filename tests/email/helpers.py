"""Helpers for the e-mail tests: offices with e-mail transports, SMTP submissions."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib

from hub import directory
from hub.email.app import EMAIL
from protocol.keys import EncryptionPrivateKey, SigningPrivateKey
from tests.hub.conftest import running_hub
from tests.hub.helpers import HubEnv, Office, enrol, login

GATEWAY = "lienthong@hub.lienthong.test"


def gateway_settings(relay_port: int | None = None, **extra: Any) -> dict[str, Any]:
    """The ``email`` settings of a test hub: inbound on a free port, outbound via the relay."""
    cfg: dict[str, Any] = {
        "address": GATEWAY,
        "name": "Lienthong — Văn phòng Tỉnh ủy",
        "smtp_port": 0,
        "interval": 0.2,
        "retry_base": 0.3,
        "retry_max": 1.0,
        "max_size": 2 * 1024 * 1024,
    }
    if relay_port is not None:
        cfg.update(relay_host="127.0.0.1", relay_port=relay_port, relay_tls="none")
    cfg.update(extra)
    return cfg


def email_hub(url: str, data: Path, relay_port: int | None = None, **extra: Any) -> running_hub:
    return running_hub(url, data, email=gateway_settings(relay_port, **extra))


def smtp_port(env: HubEnv) -> int:
    port = env.app[EMAIL].port
    assert port is not None
    return port


def address_of(code: str) -> str:
    return f"vanthu.{code.lower().replace('/', '-')}@lienthong.test"


async def make_email_office(
    env: HubEnv,
    code: str,
    name: str,
    *,
    parent: str | None,
    transports: tuple[str, ...] = ("email",),
    email: str | None = None,
) -> Office:
    """Create, enrol and log in an office whose entry allows (or requires) e-mail."""
    hub = env.hub
    at = int(time.time())
    async with hub.sessions.begin() as session:
        fields = directory.OrganFields(
            code,
            name,
            parent=parent,
            level="commune",
            email=email or address_of(code),
            transports=transports,
        )
        await directory.upsert_organ(session, hub.keys, fields, at)
        token, _ = await directory.issue_enrolment_token(
            session, code, hub.settings.enrolment_token_lifetime, at
        )
    office = Office(code, name, SigningPrivateKey.generate(), EncryptionPrivateKey.generate())
    await enrol(env, office, token)
    office.extra["email"] = email or address_of(code)
    return await login(env, office)


@dataclass
class Reply:
    code: int
    message: str


async def smtp_send(
    port: int,
    data: bytes,
    *,
    mail_from: str = "vanthu@lienthong.test",
    rcpt: str = GATEWAY,
    size: bool = False,
) -> Reply:
    """Hand ``data`` to the hub's gateway; the final reply (250, or the refusal)."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=30)
    await client.connect()
    try:
        options = [f"SIZE={len(data)}"] if size else []
        try:
            _, message = await client.sendmail(mail_from, [rcpt], data, mail_options=options)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            first = exc.recipients[0]
            return Reply(first.code, first.message)
        except aiosmtplib.SMTPResponseException as exc:
            return Reply(exc.code, exc.message)
        return Reply(250, message)
    finally:
        try:
            await client.quit()
        except aiosmtplib.SMTPException:
            client.close()
