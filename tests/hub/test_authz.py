"""The authorisation matrix: every endpoint × every kind of caller → the expected status.

Callers: anonymous, office A (the sender of a packet), office B (its recipient), an
auditor, an admin, an office whose key was revoked, and an office whose token expired.
Only health, metrics, the OpenAPI file, the log's checkpoint and the hub's public keys
answer without a token; enrolment and sessions carry their own proof instead (a one-time
token, a signed challenge), so they answer the same to everyone -- here a 400 for an
empty body.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import update

from hub.models import SessionToken
from protocol.codec import encode
from protocol.packet import parse_envelope

from .helpers import (
    CBOR,
    HubEnv,
    b64,
    eventually,
    log_kinds,
    office_receipt,
    send,
    world,
)

pytestmark = pytest.mark.asyncio

CALLERS = ("anonymous", "office_a", "office_b", "auditor", "admin", "revoked", "expired")
DENIED = {"anonymous": 401, "revoked": 401, "expired": 401}
PUBLIC = dict.fromkeys(CALLERS, 200)
BY_PROOF = dict.fromkeys(CALLERS, 400)


def row(a: int, b: int, auditor: int, admin: int) -> dict[str, int]:
    return {**DENIED, "office_a": a, "office_b": b, "auditor": auditor, "admin": admin}


async def test_authorisation_matrix(hub_env: HubEnv) -> None:
    env = hub_env
    w = await world(env)
    answer, envelope, body = await send(env, w.province, [w.yen_lac])
    parsed = parse_envelope(envelope)
    packet = answer["packet_id"]
    digest = parsed.body_info.sha256.hex()
    receipt = office_receipt(w.yen_lac, envelope, "01")
    await log_kinds(env)  # the packet's events are in the log: bundles and proofs exist
    # An office whose key is revoked, one whose session expired.
    resp = await env.client.post(
        "/v1/admin/revoke", json={"organ": w.tam_hong.code}, headers=w.admin.headers
    )
    assert resp.status == 200
    async with env.hub.sessions.begin() as session:
        await session.execute(
            update(SessionToken).where(SessionToken.organ == w.chi_bo.code).values(expires_at=0)
        )
    headers = {
        "anonymous": {},
        "office_a": w.province.headers,
        "office_b": w.yen_lac.headers,
        "auditor": w.auditor.headers,
        "admin": w.admin.headers,
        "revoked": w.tam_hong.headers,
        "expired": w.chi_bo.headers,
    }
    batch = encode([[envelope, body]])
    endpoints: list[tuple[str, str, dict[str, Any], dict[str, int]]] = [
        ("GET", "/healthz", {}, PUBLIC),
        ("GET", "/readyz", {}, PUBLIC),
        ("GET", "/metrics", {}, PUBLIC),
        ("GET", "/v1/openapi.json", {}, PUBLIC),
        ("GET", "/v1/log/checkpoint", {}, PUBLIC),
        ("POST", "/v1/enrol", {"json": {}}, BY_PROOF),
        ("POST", "/v1/sessions/challenge", {"json": {}}, BY_PROOF),
        ("POST", "/v1/sessions", {"json": {}}, BY_PROOF),
        ("GET", "/v1/directory/authority", {}, PUBLIC),
        ("GET", f"/v1/directory/{w.yen_lac.code}", {}, row(200, 200, 200, 200)),
        ("GET", f"/v1/directory?organs={w.yen_lac.code}", {}, row(200, 200, 200, 200)),
        ("GET", f"/v1/directory/{w.province.code}/children", {}, row(200, 200, 200, 200)),
        # B may not submit A's envelope (organ_mismatch); A gets the original answer.
        ("POST", "/v1/packets", {"data": envelope, "ctype": CBOR}, row(200, 422, 403, 403)),
        ("PUT", f"/v1/packets/{packet}/body", {"data": body}, row(409, 404, 403, 403)),
        ("POST", "/v1/packets/batch", {"data": batch, "ctype": CBOR}, row(200, 200, 403, 403)),
        ("GET", f"/v1/packets/{packet}/status", {}, row(200, 404, 200, 403)),
        ("GET", "/v1/mailbox", {}, row(200, 200, 403, 403)),
        ("POST", "/v1/mailbox/ack", {"json": {"ids": []}}, row(200, 200, 403, 403)),
        ("POST", "/v1/mailbox", {"json": {"ack": []}}, row(200, 200, 403, 403)),
        ("GET", f"/v1/bodies/{digest}", {}, row(200, 200, 403, 403)),
        ("POST", "/v1/receipts", {"json": {"receipts": [b64(receipt)]}}, row(200, 200, 403, 403)),
        (
            "POST",
            "/v1/admin/enrolments",
            {"json": {"organ": "000.00.99.H41", "name": "Đảng ủy phường Mới"}},
            row(403, 403, 403, 201),
        ),
        ("POST", "/v1/admin/revoke", {"json": {"organ": "000.99.99.H41"}}, row(403, 403, 403, 404)),
        (
            "POST",
            "/v1/admin/merge",
            {"json": {"organ": "000.99.99.H41", "successor": w.yen_lac.code}},
            row(403, 403, 403, 404),
        ),
        ("GET", "/v1/log/entries?start=0&end=1", {}, row(200, 200, 200, 403)),
        ("GET", "/v1/log/proof/inclusion?index=0&size=1", {}, row(200, 200, 200, 403)),
        ("GET", "/v1/log/proof/consistency?old=1&new=1", {}, row(200, 200, 200, 403)),
        (
            "GET",
            f"/v1/log/packets/{uuid.UUID(packet).hex}/bundle",
            {},
            row(200, 200, 200, 403),
        ),
        ("POST", "/v1/log/cosignatures", {"data": b"not a note"}, row(400, 400, 400, 403)),
    ]
    failures = []
    for method, path, kwargs, expected in endpoints:
        for caller in CALLERS:
            options = dict(kwargs)
            ctype = options.pop("ctype", None)
            h = dict(headers[caller])
            if ctype:
                h["Content-Type"] = ctype
            resp = await env.client.request(method, path, headers=h, **options)
            await resp.read()
            if resp.status != expected[caller]:
                failures.append(
                    f"{method} {path} as {caller}: {resp.status}, want {expected[caller]}"
                )
            if resp.status in (401, 403) and resp.content_type.endswith("json"):
                code = (await resp.json())["code"]
                assert code in {"token_missing", "token_invalid", "role_forbidden"}, code
    assert not failures, "\n".join(failures)
    # The unauthenticated answers say why.
    resp = await env.client.get("/v1/mailbox")
    assert (await resp.json())["code"] == "token_missing"
    resp = await env.client.get("/v1/mailbox", headers=headers["expired"])
    assert (await resp.json())["code"] == "token_invalid"

    async def fetched() -> bool:
        doc = await (
            await env.client.get(f"/v1/packets/{packet}/status", headers=w.province.headers)
        ).json()
        return bool(doc["recipients"][0]["fetched_at"])

    assert await eventually(fetched)
