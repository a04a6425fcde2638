"""An auditor reads the log and delivery metadata, never an office's mailbox, never a body.

Every route the hub registers is called with an auditor's bearer token; the few an
auditor may use are listed here on purpose, every other one must answer
``403 role_forbidden`` (or refuse as it refuses anyone without a proof: enrolment and
sessions).  A route added later is covered without editing this test -- and fails it
until someone decides what an auditor may do with it.  Then every body the hub stores is
asked for, whole and by range: each is refused.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from sqlalchemy import select

from hub.models import Packet
from tests.hub.helpers import CBOR, HubEnv, b64, office_receipt

from .helpers import history

pytestmark = pytest.mark.asyncio

#: (method, route) an auditor may call.  Public routes answer anyone.
AUDITOR_ALLOWED = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/v1/directory/authority"),
    ("GET", "/v1/directory"),
    ("GET", "/v1/directory/{organ}"),
    ("GET", "/v1/directory/{organ}/children"),
    ("GET", "/v1/packets/{id}/status"),
    ("GET", "/v1/log/checkpoint"),
    ("GET", "/v1/log/entries"),
    ("GET", "/v1/log/proof/inclusion"),
    ("GET", "/v1/log/proof/consistency"),
    ("GET", "/v1/log/packets/{packet_id}/bundle"),
    ("GET", "/v1/log/directory/{organ}"),
    ("POST", "/v1/log/cosignatures"),
    ("GET", "/v1/audit/packets/{packet_id}/envelope"),
}
#: Routes that authenticate by a proof in the body, not a token: refused to anyone
#: without one (an auditor included).
BY_PROOF = {("POST", "/v1/enrol"), ("POST", "/v1/sessions/challenge"), ("POST", "/v1/sessions")}
PARAM = re.compile(r"\{([a-z_]+)\}")


async def test_an_auditor_token_is_refused_by_every_office_endpoint(hub_env: HubEnv) -> None:
    env = hub_env
    h = await history(env)
    async with env.hub.sessions() as session:
        digests = [bytes(d) for d in (await session.scalars(select(Packet.body_sha256))).all()]
    assert digests
    values = {
        "id": h.packet,
        "packet_id": uuid.UUID(h.packet).hex,
        "organ": h.w.yen_lac.code,
        "digest": digests[0].hex(),
    }
    bodies: dict[str, Any] = {
        "json": {
            "receipts": [
                b64(office_receipt(h.w.yen_lac, h.envelope, "04", details={"assignee": "x"}))
            ],
            "ids": [1],
        }
    }
    checked = []
    failures = []
    for route in env.app.router.routes():
        method = route.method
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path is None or method == "HEAD" or path.startswith("/audit"):
            continue  # the page signs in by cookie: tested in test_page.py
        key = (method, path)
        concrete = PARAM.sub(lambda m: values[m.group(1)], path)
        headers = {**h.w.auditor.headers, "Content-Type": CBOR if method != "GET" else "text/plain"}
        resp = await env.client.request(
            method,
            concrete,
            headers=headers,
            data=h.envelope if method in ("PUT",) else None,
            **({} if method in ("GET", "PUT") else bodies),
        )
        doc = await resp.read()
        checked.append(key)
        if key in AUDITOR_ALLOWED:
            if resp.status in (401, 403):
                failures.append(f"{method} {path}: an auditor may use it, got {resp.status}")
            continue
        if key in BY_PROOF:
            if resp.status < 400:
                failures.append(f"{method} {path}: answered {resp.status} without a proof")
            continue
        if resp.status != 403 or b'"role_forbidden"' not in doc:
            failures.append(
                f"{method} {path}: {resp.status} {doc[:120]!r}, want 403 role_forbidden"
            )
    assert not failures, "\n".join(failures)
    # the office routes are all among those checked
    for expected in (
        ("POST", "/v1/packets"),
        ("PUT", "/v1/packets/{id}/body"),
        ("POST", "/v1/packets/batch"),
        ("GET", "/v1/mailbox"),
        ("POST", "/v1/mailbox/ack"),
        ("GET", "/v1/bodies/{digest}"),
        ("POST", "/v1/receipts"),
        ("POST", "/v1/admin/enrolments"),
    ):
        assert expected in checked, expected

    # every stored body, whole or by range, is refused to the auditor
    for digest in digests:
        for extra in ({}, {"Range": "bytes=0-15"}, {"Range": "bytes=16-"}):
            resp = await env.client.get(
                f"/v1/bodies/{digest.hex()}", headers={**h.w.auditor.headers, **extra}
            )
            body = await resp.read()
            assert resp.status == 403, (digest.hex(), extra, resp.status)
            assert b"role_forbidden" in body
    # ... while the office it was addressed to gets it
    resp = await env.client.get(f"/v1/bodies/{digests[0].hex()}", headers=h.w.yen_lac.headers)
    assert resp.status == 200
    await resp.read()
