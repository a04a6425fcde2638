"""Helpers for the hub's API tests: offices enrolled and logged in through the real API.

``world`` builds the usual little tree, with Vietnamese names::

    000.00.00.H41  Văn phòng Tỉnh ủy                 (province)
    ├── 000.00.12.H41  Đảng ủy xã Yên Lạc           (commune)
    │   └── 000.12.03.H41  Chi bộ Trường THCS Tam Hồng  (grassroots)
    └── 000.00.13.H41  Đảng ủy xã Tam Hồng          (commune)
    UBKT.TU  Ủy ban Kiểm tra Tỉnh ủy (auditor)      QTHT.TU  Quản trị hệ thống (admin)

The admin creates an organ and its one-time token the way ``lienthong-hub enroll`` does
(same service function); everything after that -- enrolment with proof of possession,
challenge, session, every packet and receipt -- goes over HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient

from hub import directory
from hub.context import HUB, Hub
from hub.hubkeys import HubKeys
from hub.settings import HubSettings
from protocol import signed
from protocol.codec import encode
from protocol.directory import DirectoryEntry, verify_entry
from protocol.keys import EncryptionPrivateKey, SigningPrivateKey
from protocol.packet import DocumentMetadata, Recipient, Routing, seal_packet
from protocol.receipts import OfficeReceipt, sign_office_receipt

SUBJECT = "Kế hoạch tổ chức Hội nghị tổng kết công tác văn phòng cấp ủy năm 2025"
PROVINCE = "000.00.00.H41"
YEN_LAC = "000.00.12.H41"
CHI_BO = "000.12.03.H41"
TAM_HONG = "000.00.13.H41"
AUDITOR = "UBKT.TU"
ADMIN = "QTHT.TU"
CBOR = "application/cbor"


class Api(Protocol):
    """What the HTTP helpers need: a client (relative paths) and the hub's public keys."""

    @property
    def client(self) -> Any: ...

    @property
    def keys(self) -> HubKeys: ...


@dataclass
class Remote:
    """A hub running as a process: a client session with its base URL, and its keys."""

    client: ClientSession
    keys: HubKeys


@dataclass
class HubEnv:
    client: TestClient[web.Request, web.Application]
    app: web.Application
    settings: HubSettings
    keys: HubKeys

    @property
    def hub(self) -> Hub:
        return self.app[HUB]


@dataclass
class Office:
    code: str
    name: str
    signing: SigningPrivateKey
    encryption: EncryptionPrivateKey
    entry: DirectoryEntry | None = None
    token: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def recipient(self) -> Recipient:
        return Recipient(self.code, self.encryption.public_key())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


async def create_organ(
    env: HubEnv,
    code: str,
    name: str,
    *,
    parent: str | None = None,
    level: str = "other",
    role: str = "office",
) -> str:
    """Create the organ as the admin CLI does; returns its enrolment token."""
    hub = env.hub
    async with hub.sessions.begin() as session:
        fields = directory.OrganFields(code, name, parent=parent, level=level, role=role)
        await directory.upsert_organ(session, hub.keys, fields, int(time.time()))
        token, _ = await directory.issue_enrolment_token(
            session, code, hub.settings.enrolment_token_lifetime, int(time.time())
        )
    return token


def enrol_body(
    office: Office, token: str, *, proof_key: SigningPrivateKey | None = None
) -> dict[str, Any]:
    sign_pub = office.signing.public_key()
    enc_pub = office.encryption.public_key()
    proof = (proof_key or office.signing).sign(
        signed.CTX_ENROL, directory.enrol_message(token, office.code)
    )
    return {
        "token": token,
        "organ": office.code,
        "signing_key": {"alg": sign_pub.alg, "pub": b64(sign_pub.raw)},
        "encryption_key": {"alg": enc_pub.alg, "pub": b64(enc_pub.raw)},
        "proof": {k: b64(v) for k, v in proof.items()},
    }


async def enrol(env: Api, office: Office, token: str) -> Office:
    resp = await env.client.post("/v1/enrol", json=enrol_body(office, token))
    doc = await resp.json()
    assert resp.status == 201, doc
    authority = env.keys.authority.public_key()
    assert doc["authority"]["pub"] == b64(authority.raw)
    office.entry = verify_entry(unb64(doc["entry"]), authority, organ=office.code).entry
    return office


async def challenge(env: Api, organ: str) -> bytes:
    resp = await env.client.post("/v1/sessions/challenge", json={"organ": organ})
    doc = await resp.json()
    assert resp.status == 200, doc
    return unb64(doc["challenge"])


def session_body(office: Office, value: bytes) -> dict[str, Any]:
    sigs = office.signing.sign(signed.CTX_SESSION, directory.session_message(value, office.code))
    return {
        "organ": office.code,
        "kid": office.signing.kid.hex(),
        "challenge": b64(value),
        "signatures": {k: b64(v) for k, v in sigs.items()},
    }


async def login(env: Api, office: Office) -> Office:
    value = await challenge(env, office.code)
    resp = await env.client.post("/v1/sessions", json=session_body(office, value))
    doc = await resp.json()
    assert resp.status == 201, doc
    office.token = doc["token"]
    return office


async def make_office(
    env: HubEnv,
    code: str,
    name: str,
    *,
    parent: str | None = None,
    level: str = "other",
    role: str = "office",
    hybrid: bool = False,
) -> Office:
    token = await create_organ(env, code, name, parent=parent, level=level, role=role)
    office = Office(
        code,
        name,
        SigningPrivateKey.generate(hybrid=hybrid),
        EncryptionPrivateKey.generate(hybrid=hybrid),
    )
    await enrol(env, office, token)
    return await login(env, office)


@dataclass
class World:
    province: Office
    yen_lac: Office
    chi_bo: Office
    tam_hong: Office
    auditor: Office
    admin: Office


async def world(env: HubEnv) -> World:
    province = await make_office(env, PROVINCE, "Văn phòng Tỉnh ủy", level="province")
    yen_lac = await make_office(
        env, YEN_LAC, "Đảng ủy xã Yên Lạc", parent=PROVINCE, level="commune"
    )
    chi_bo = await make_office(
        env, CHI_BO, "Chi bộ Trường THCS Tam Hồng", parent=YEN_LAC, level="grassroots"
    )
    tam_hong = await make_office(
        env, TAM_HONG, "Đảng ủy xã Tam Hồng", parent=PROVINCE, level="commune"
    )
    auditor = await make_office(env, AUDITOR, "Ủy ban Kiểm tra Tỉnh ủy", role="auditor")
    admin = await make_office(env, ADMIN, "Quản trị hệ thống", role="admin")
    return World(province, yen_lac, chi_bo, tam_hong, auditor, admin)


def seal(
    sender: Office,
    recipients: Sequence[Office],
    *,
    data: bytes = "Nội dung kế hoạch tổng kết.\n".encode() * 100,
    routing: Routing | None = None,
    **kwargs: Any,
) -> tuple[bytes, bytes]:
    """A sealed packet from ``sender``: (envelope container, body)."""
    return seal_packet(
        sender=sender.code,
        signing_key=sender.signing,
        recipients=[r.recipient() for r in recipients],
        metadata=DocumentMetadata(subject=SUBJECT, doc_type="KH", number="05", notation="KH/TU"),
        files=[("Kế hoạch tổng kết.pdf", "application/pdf", data)],
        routing=routing,
        **kwargs,
    )


def payload(data: bytes) -> Any:
    """Large bodies go as a file-like object (aiohttp warns on big raw bytes)."""
    return io.BytesIO(data) if len(data) > 512 * 1024 else data


async def submit(env: Api, office: Office, envelope: bytes) -> tuple[int, dict[str, Any]]:
    resp = await env.client.post(
        "/v1/packets", data=payload(envelope), headers={**office.headers, "Content-Type": CBOR}
    )
    return resp.status, await resp.json()


async def upload(
    env: Api, office: Office, packet_id: str, body: bytes
) -> tuple[int, dict[str, Any]]:
    resp = await env.client.put(
        f"/v1/packets/{packet_id}/body",
        data=payload(body),
        headers={**office.headers, "Content-Type": "application/octet-stream"},
    )
    return resp.status, await resp.json()


async def send(
    env: Api, sender: Office, recipients: Sequence[Office], **kwargs: Any
) -> tuple[dict[str, Any], bytes, bytes]:
    """Seal, submit and upload; returns (the accepted answer, envelope, body)."""
    envelope, body = seal(sender, recipients, **kwargs)
    status, doc = await submit(env, sender, envelope)
    assert status == 202, doc
    status, doc = await upload(env, sender, doc["packet_id"], body)
    assert status == 200, doc
    return doc, envelope, body


async def submit_batch(
    env: Api, office: Office, items: Sequence[tuple[bytes, bytes]]
) -> list[dict[str, Any]]:
    """``POST /v1/packets/batch`` (answered 200); the per-item results."""
    resp = await env.client.post(
        "/v1/packets/batch",
        data=encode([list(i) for i in items]),
        headers={**office.headers, "Content-Type": CBOR},
    )
    doc = await resp.json()
    assert resp.status == 200, doc
    results: list[dict[str, Any]] = doc["results"]
    return results


async def mailbox(
    env: Api, office: Office, wait: int = 0, limit: int | None = None
) -> list[dict[str, Any]]:
    params = {"wait": str(wait)}
    if limit is not None:
        params["limit"] = str(limit)
    resp = await env.client.get("/v1/mailbox", params=params, headers=office.headers)
    doc = await resp.json()
    assert resp.status == 200, doc
    items: list[dict[str, Any]] = doc["items"]
    return items


async def ack(env: Api, office: Office, items: Sequence[dict[str, Any]]) -> None:
    resp = await env.client.post(
        "/v1/mailbox/ack", json={"ids": [i["id"] for i in items]}, headers=office.headers
    )
    assert resp.status == 200, await resp.text()


def office_receipt(
    office: Office,
    envelope: bytes,
    status: str,
    *,
    about: str | None = None,
    at: int | None = None,
    reason: str | None = None,
    details: dict[str, str] | None = None,
) -> bytes:
    from protocol.packet import parse_envelope

    env = parse_envelope(envelope)
    receipt = OfficeReceipt(
        packet_id=env.packet_id,
        envelope_digest=env.digest,
        organ=about or office.code,
        signer=office.code,
        signer_kid=office.signing.kid,
        status=status,
        at=int(time.time()) if at is None else at,
        reason=reason,
        details=details or {},
    )
    return sign_office_receipt(receipt, office.signing)


async def post_receipts(
    env: Api, office: Office, receipts: Sequence[bytes]
) -> tuple[int, dict[str, Any]]:
    resp = await env.client.post(
        "/v1/receipts", json={"receipts": [b64(r) for r in receipts]}, headers=office.headers
    )
    return resp.status, await resp.json()


async def eventually(check: Any, within: float = 5.0) -> Any:
    """Poll an async ``check`` until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await check()
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.05)


def with_routing(**kwargs: Any) -> Routing:
    return replace(Routing(), **kwargs)


async def stored(env: HubEnv) -> dict[str, int]:
    """Rows and files the hub holds: to check that a refusal stored nothing."""
    from sqlalchemy import func, select

    from hub.blobs import TMP_DIR
    from hub.models import DeliveryEvent, DeliveryRow, MailboxItem, Packet

    out: dict[str, int] = {}
    async with env.hub.sessions() as session:
        for name, table in (
            ("packets", Packet),
            ("deliveries", DeliveryRow),
            ("events", DeliveryEvent),
            ("mailbox", MailboxItem),
        ):
            out[name] = int(await session.scalar(select(func.count()).select_from(table)) or 0)
        out["accepted"] = int(
            await session.scalar(
                select(func.count()).select_from(Packet).where(Packet.state == "accepted")
            )
            or 0
        )
    root = env.hub.blobs.root
    out["blobs"] = len(list(env.hub.blobs.digests()))
    out["temp"] = len(list((root / TMP_DIR).iterdir()))
    return out


async def log_kinds(env: HubEnv) -> list[str]:
    """Kinds of every audit event, in log order, once the sequencer has indexed them all."""
    from sqlalchemy import func, select

    from hub.auditlog.app import LOG_RUNTIME
    from hub.auditlog.models import LogEntry, LogPending
    from protocol.audit import parse_event

    async def drained() -> bool:
        sequencer = env.app[LOG_RUNTIME].sequencer
        assert sequencer is not None
        sequencer.notify()
        async with env.hub.sessions() as session:
            left = await session.scalar(select(func.count()).select_from(LogPending))
        return not left

    assert await eventually(drained), "the sequencer did not index every event"
    async with env.hub.sessions() as session:
        rows = await session.scalars(select(LogEntry.data).order_by(LogEntry.idx))
        return [parse_event(bytes(d)).kind for d in rows]
