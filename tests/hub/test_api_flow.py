"""The hub's main flow over HTTP, on SQLite and PostgreSQL: enrol, log in, send, fetch,
receipt, status -- each step checked against the signed objects the hub returns."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from protocol.directory import verify_entry
from protocol.keys import (
    ENC_HYBRID,
    ENC_X25519,
    SIG_ED25519,
    SIG_HYBRID,
    EncryptionPrivateKey,
    SigningPrivateKey,
)
from protocol.packet import open_packet, parse_envelope
from protocol.receipts import verify_hub_receipt, verify_office_receipt

from .conftest import running_hub
from .helpers import (
    PROVINCE,
    YEN_LAC,
    HubEnv,
    Office,
    ack,
    create_organ,
    enrol,
    enrol_body,
    eventually,
    log_kinds,
    login,
    mailbox,
    make_office,
    office_receipt,
    post_receipts,
    send,
    unb64,
    with_routing,
    world,
)

pytestmark = pytest.mark.asyncio


async def test_health_and_openapi(hub_env: HubEnv) -> None:
    client = hub_env.client
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    spec = await (await client.get("/v1/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    metrics = await (await client.get("/metrics")).text()
    assert "lienthong_http_requests_total" in metrics


async def test_send_fetch_receipt_status(hub_env: HubEnv) -> None:
    env = hub_env
    w = await world(env)
    answer, envelope, body = await send(env, w.province, [w.yen_lac, w.tam_hong])
    parsed = parse_envelope(envelope)
    hub_pub = env.keys.hub.public_key()
    assert answer["receipt"] is not None
    accepted = verify_hub_receipt(
        unb64(answer["receipt"]), hub_pub, envelope=parsed, kind="accepted"
    )
    assert accepted.organ == w.province.code

    items = await mailbox(env, w.yen_lac)
    assert [i["kind"] for i in items] == ["envelope"]
    item = items[0]
    assert unb64(item["envelope"]) == envelope
    resp = await env.client.get(item["body"]["url"], headers=w.yen_lac.headers)
    assert resp.status == 200
    fetched_body = await resp.read()
    assert fetched_body == body
    meta, _files = open_packet(parsed, fetched_body, organ=w.yen_lac.code, key=w.yen_lac.encryption)
    assert meta.subject.startswith("Kế hoạch")
    await ack(env, w.yen_lac, items)
    assert await mailbox(env, w.yen_lac) == []

    status, doc = await post_receipts(env, w.yen_lac, [office_receipt(w.yen_lac, envelope, "01")])
    assert status == 200, doc
    assert doc["results"][0]["state"] == "01"

    relayed = await mailbox(env, w.province, wait=5)
    kinds = sorted(i["kind"] for i in relayed)
    assert "receipt" in kinds

    async def fetched_status() -> Any:
        resp = await env.client.get(
            f"/v1/packets/{answer['packet_id']}/status", headers=w.province.headers
        )
        assert resp.status == 200
        doc = await resp.json()
        return doc if all(r["fetched_at"] for r in doc["recipients"][:1]) else None

    st = await eventually(fetched_status)
    by_organ = {r["organ"]: r for r in st["recipients"]}
    assert by_organ[w.yen_lac.code]["state"] == "01"
    assert by_organ[w.yen_lac.code]["fetched_at"] is not None
    assert by_organ[w.tam_hong.code]["state"] == "pending"


async def test_long_poll_wakes_on_submission(hub_env: HubEnv) -> None:
    env = hub_env
    w = await world(env)
    loop = asyncio.get_running_loop()
    started = loop.time()
    waiting = asyncio.create_task(mailbox(env, w.yen_lac, wait=30))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    _answer, envelope, _ = await send(env, w.province, [w.yen_lac], routing=with_routing(urgency=3))
    items = await asyncio.wait_for(waiting, 10)
    assert loop.time() - started < 10
    assert [unb64(i["envelope"]) for i in items] == [envelope]
    assert items[0]["urgency"] == 3


async def test_mailbox_order_and_ack(hub_env: HubEnv) -> None:
    env = hub_env
    w = await world(env)
    sent = []
    for urgency in (0, 2, 0, 4, 1):
        answer, _, _ = await send(
            env, w.province, [w.yen_lac], routing=with_routing(urgency=urgency)
        )
        sent.append((urgency, answer["packet_id"]))
    items = await mailbox(env, w.yen_lac)
    expected = [pid for _, pid in sorted(sent, key=lambda s: -s[0])]
    assert [i["packet_id"] for i in items] == expected
    # Items stay until acknowledged; limit pages through them.
    assert [i["packet_id"] for i in await mailbox(env, w.yen_lac, limit=2)] == expected[:2]
    await ack(env, w.yen_lac, items[:2])
    assert [i["packet_id"] for i in await mailbox(env, w.yen_lac)] == expected[2:]
    # Acknowledging another organ's items does nothing.
    resp = await env.client.post(
        "/v1/mailbox/ack", json={"ids": [i["id"] for i in items]}, headers=w.tam_hong.headers
    )
    assert (await resp.json())["acknowledged"] == 0
    assert len(await mailbox(env, w.yen_lac)) == 3


async def test_range_download_resume(hub_env: HubEnv) -> None:
    env = hub_env
    w = await world(env)
    data = bytes(range(256)) * 2000  # ~0.5 MB, several chunks
    answer, envelope, body = await send(env, w.province, [w.yen_lac], data=data)
    digest = parse_envelope(envelope).body_info.sha256.hex()
    url = f"/v1/bodies/{digest}"
    h = w.yen_lac.headers
    half = len(body) // 2
    resp = await env.client.get(url, headers={**h, "Range": f"bytes=0-{half - 1}"})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes 0-{half - 1}/{len(body)}"
    first = await resp.read()
    # Not complete yet: no fetched receipt.
    status = await (
        await env.client.get(
            f"/v1/packets/{answer['packet_id']}/status", headers=w.province.headers
        )
    ).json()
    assert status["recipients"][0]["fetched_at"] is None
    resp = await env.client.get(url, headers={**h, "Range": f"bytes={half}-"})
    assert resp.status == 206
    rest = await resp.read()
    assert first + rest == body
    # Suffix range, and a range past the end.
    resp = await env.client.get(url, headers={**h, "Range": "bytes=-10"})
    assert (resp.status, await resp.read()) == (206, body[-10:])
    resp = await env.client.get(url, headers={**h, "Range": f"bytes={len(body)}-"})
    assert (resp.status, (await resp.json())["code"]) == (416, "range_invalid")
    assert resp.headers["Content-Range"] == f"bytes */{len(body)}"

    async def fetched() -> Any:
        doc = await (
            await env.client.get(
                f"/v1/packets/{answer['packet_id']}/status", headers=w.province.headers
            )
        ).json()
        history = doc["recipients"][0]["history"]
        return history if doc["recipients"][0]["fetched_at"] and history else None

    history = await eventually(fetched)
    assert [h["status"] for h in history] == ["fetched"]
    hub_pub = env.keys.hub.public_key()
    receipt = verify_hub_receipt(
        unb64(history[0]["receipt"]), hub_pub, envelope=parse_envelope(envelope), kind="fetched"
    )
    assert receipt.organ == w.yen_lac.code
    # Relayed to the sender's mailbox, once, however often the body is downloaded again.
    await env.client.get(url, headers=h)

    async def relayed() -> Any:
        items = await mailbox(env, w.province)
        return [i for i in items if i["kind"] == "hub_receipt"]

    hub_items = await eventually(relayed)
    await asyncio.sleep(0.3)
    assert len(await relayed()) == len(hub_items) == 1
    assert hub_items[0]["status"] == "fetched"
    # Auditors and unaddressed offices cannot download.
    for office in (w.tam_hong, w.auditor):
        resp = await env.client.get(url, headers=office.headers)
        assert resp.status in (403, 404)


async def test_receipts_recall_and_status(hub_env: HubEnv) -> None:
    env = hub_env
    w = await world(env)
    answer, envelope, _ = await send(env, w.province, [w.yen_lac, w.tam_hong])
    t = int(time.time())
    r01 = office_receipt(w.yen_lac, envelope, "01", at=t)
    r03 = office_receipt(w.yen_lac, envelope, "03", at=t + 1, details={"incoming_number": "125"})
    status, doc = await post_receipts(env, w.yen_lac, [r01, r03, r01])
    assert status == 200
    assert [r.get("state") for r in doc["results"]] == ["01", "03", "03"]
    assert doc["results"][2]["duplicate"] is True
    # Impossible transitions, a receipt for someone else, a receipt by someone else.
    bad = [
        office_receipt(w.yen_lac, envelope, "02", at=t + 2, reason="Sai thẩm quyền"),
        office_receipt(w.yen_lac, envelope, "01", about=w.tam_hong.code, at=t + 2),
        office_receipt(w.tam_hong, envelope, "01", at=t + 2),
    ]
    status, doc = await post_receipts(env, w.yen_lac, bad)
    assert [r.get("code") for r in doc["results"]] == [
        "transition_invalid",
        "receipt_signer_mismatch",
        "receipt_signer_mismatch",
    ]
    # An office not involved learns nothing.
    status, doc = await post_receipts(env, w.chi_bo, [office_receipt(w.chi_bo, envelope, "01")])
    assert doc["results"][0]["code"] == "packet_unknown"
    # The sender asks for a recall of its copy at Yên Lạc: relayed to Yên Lạc.
    r13 = office_receipt(
        w.province,
        envelope,
        "13",
        about=w.yen_lac.code,
        at=t + 3,
        reason="Ban hành nhầm, đề nghị thu hồi",
    )
    status, doc = await post_receipts(env, w.province, [r13])
    assert doc["results"][0]["state"] == "13", doc
    items = await mailbox(env, w.yen_lac)
    recall = [i for i in items if i["kind"] == "receipt"]
    assert [i["status"] for i in recall] == ["13"]
    assert unb64(recall[0]["receipt"]) == r13
    r15 = office_receipt(w.yen_lac, envelope, "15", at=t + 4)
    status, doc = await post_receipts(env, w.yen_lac, [r15])
    assert doc["results"][0]["state"] == "recalled"
    # The sender sees every receipt relayed, and verifies each signature itself.
    relayed = [i for i in await mailbox(env, w.province) if i["kind"] == "receipt"]
    assert [i["status"] for i in relayed] == ["01", "03", "15"]
    parsed = parse_envelope(envelope)
    for item in relayed:
        verify_office_receipt(unb64(item["receipt"]), w.yen_lac.entry, envelope=parsed)
    # Status: the sender and auditors; not the recipients.
    for office, code in ((w.province, 200), (w.auditor, 200), (w.yen_lac, 404), (w.admin, 403)):
        resp = await env.client.get(
            f"/v1/packets/{answer['packet_id']}/status", headers=office.headers
        )
        assert resp.status == code, office.code
    resp = await env.client.get(
        f"/v1/packets/{answer['packet_id']}/status", headers=w.auditor.headers
    )
    doc = await resp.json()
    by_organ = {r["organ"]: r for r in doc["recipients"]}
    assert by_organ[w.yen_lac.code]["state"] == "recalled"
    assert [h["status"] for h in by_organ[w.yen_lac.code]["history"]] == ["01", "03", "13", "15"]
    assert by_organ[w.tam_hong.code] == {
        **by_organ[w.tam_hong.code],
        "state": "pending",
        "history": [],
    }
    kinds = await log_kinds(env)
    assert kinds.count("receipt") == 4
    assert kinds.count("packet_accepted") == 1


async def test_directory_endpoints(hub_env: HubEnv) -> None:
    env = hub_env
    w = await world(env)
    h = w.chi_bo.headers
    authority = env.keys.authority.public_key()
    doc = await (await env.client.get("/v1/directory/authority", headers=h)).json()
    assert unb64(doc["authority"]["pub"]) == authority.raw
    assert doc["authority"]["kid"] == authority.kid.hex()
    doc = await (await env.client.get(f"/v1/directory/{w.yen_lac.code}", headers=h)).json()
    entry = verify_entry(unb64(doc["entry"]), authority, organ=w.yen_lac.code).entry
    assert entry.name == "Đảng ủy xã Yên Lạc"
    assert entry.parent == w.province.code
    codes = f"{w.yen_lac.code},{w.tam_hong.code},000.99.99.H41"
    doc = await (await env.client.get(f"/v1/directory?organs={codes}", headers=h)).json()
    assert sorted(doc["entries"]) == sorted([w.yen_lac.code, w.tam_hong.code])
    assert doc["unknown"] == ["000.99.99.H41"]
    url = f"/v1/directory/{w.province.code}/children"
    doc = await (await env.client.get(url, headers=h)).json()
    assert [e["organ"] for e in doc["entries"]] == [w.yen_lac.code, w.tam_hong.code]
    doc = await (await env.client.get(url + "?depth=5", headers=h)).json()
    assert [e["organ"] for e in doc["entries"]] == [w.yen_lac.code, w.tam_hong.code, w.chi_bo.code]
    kinds = await log_kinds(env)
    assert kinds.count("directory") == 6


async def test_admin_enrolment_and_rotation(hub_env: HubEnv) -> None:
    env = hub_env
    w = await world(env)
    resp = await env.client.post(
        "/v1/admin/enrolments",
        json={
            "organ": "000.13.01.H41",
            "name": "Chi bộ Thôn Đông",
            "parent": w.tam_hong.code,
            "level": "grassroots",
        },
        headers=w.admin.headers,
    )
    doc = await resp.json()
    assert resp.status == 201
    assert doc["created"] is True
    office = Office(
        "000.13.01.H41",
        "Chi bộ Thôn Đông",
        SigningPrivateKey.generate(),
        EncryptionPrivateKey.generate(),
    )
    await enrol(env, office, doc["token"])
    await login(env, office)
    # A new token rotates the keys: the old session ends, the new key works.
    resp = await env.client.post(
        "/v1/admin/enrolments",
        json={
            "organ": office.code,
            "name": "Chi bộ Thôn Đông",
            "parent": w.tam_hong.code,
            "level": "grassroots",
        },
        headers=w.admin.headers,
    )
    doc = await resp.json()
    assert doc["created"] is False
    old_headers = office.headers
    office.signing = SigningPrivateKey.generate()
    office.encryption = EncryptionPrivateKey.generate()
    await enrol(env, office, doc["token"])
    assert office.entry is not None
    assert len(office.entry.signing_keys) == 2
    resp = await env.client.get("/v1/mailbox", headers=old_headers)
    assert (await resp.json())["code"] == "token_invalid"
    await login(env, office)
    await send(env, office, [w.tam_hong])
    # Offices may not use admin endpoints.
    resp = await env.client.post(
        "/v1/admin/revoke", json={"organ": office.code}, headers=office.headers
    )
    assert (resp.status, (await resp.json())["code"]) == (403, "role_forbidden")


async def test_hybrid_hub(database_url: str, tmp_path: Path) -> None:
    async with running_hub(database_url, tmp_path / "hub", hybrid=True) as env:
        token = await create_organ(env, PROVINCE, "Văn phòng Tỉnh ủy", level="province")
        classic = Office(
            PROVINCE, "", SigningPrivateKey.generate(), EncryptionPrivateKey.generate()
        )
        resp = await env.client.post("/v1/enrol", json=enrol_body(classic, token))
        assert (resp.status, (await resp.json())["code"]) == (400, "algorithm_unsupported")
        province = await make_office(env, "000.00.01.H41", "Văn phòng Tỉnh ủy", hybrid=True)
        commune = await make_office(
            env, YEN_LAC, "Đảng ủy xã Yên Lạc", parent="000.00.01.H41", hybrid=True
        )
        answer, envelope, _ = await send(env, province, [commune])
        receipt = verify_hub_receipt(
            unb64(answer["receipt"]),
            env.keys.hub.public_key(),
            envelope=parse_envelope(envelope),
            kind="accepted",
        )
        assert receipt.kind == "accepted"


async def test_openapi_describes_every_route(hub_env: HubEnv) -> None:
    spec = await (await hub_env.client.get("/v1/openapi.json")).json()
    served = set()
    for route in hub_env.app.router.routes():
        if route.method in ("HEAD", "OPTIONS"):
            continue
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        served.add((route.method.lower(), path))
    described = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    assert served == described


@pytest.mark.parametrize("hybrid", [False, True])
async def test_node_enrolment_retries_with_hybrid_keys_once(
    database_url: str, tmp_path: Path, hybrid: bool
) -> None:
    """``nodes.client.enrol_new_keys`` (both ``init`` commands): classic keys first; a hub
    that takes hybrid keys only refuses them, and new hybrid keys are enrolled."""
    from nodes.client import HubClient, enrol_new_keys
    from nodes.errors import HubError

    async with running_hub(database_url, tmp_path / "hub", hybrid=hybrid) as env:
        token = await create_organ(env, PROVINCE, "Văn phòng Tỉnh ủy", level="province")
        retries: list[None] = []
        url = str(env.client.make_url("")).rstrip("/")
        async with HubClient(url, organ=PROVINCE) as client:
            keystore, enrolled = await enrol_new_keys(
                client, token, on_hybrid_retry=lambda: retries.append(None)
            )
            assert len(retries) == (1 if hybrid else 0)
            # The token is spent: refused with the hub's own code, and not tried again.
            again: list[None] = []
            with pytest.raises(HubError) as refused:
                await enrol_new_keys(
                    client, token, hybrid=hybrid, on_hybrid_retry=lambda: again.append(None)
                )
            assert refused.value.code == "enrolment_token_invalid"
            assert again == []
        [signing] = keystore.signing_keys
        [encryption] = keystore.encryption_keys
        assert signing.alg == (SIG_HYBRID if hybrid else SIG_ED25519)
        assert encryption.public_key().alg == (ENC_HYBRID if hybrid else ENC_X25519)
        assert (keystore.organ, keystore.hub_url) == (PROVINCE, url)
        assert keystore.hub_key == enrolled.hub_key == env.keys.hub.public_key()
        assert keystore.authority == enrolled.authority
        assert signing.public_key().kid in {k.kid for k in enrolled.entry.entry.signing_keys}
