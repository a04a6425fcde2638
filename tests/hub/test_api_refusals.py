"""One test per way to attack the hub's checks: each breaks exactly one thing, expects exactly
its error code, and checks that nothing was stored (or, for a bad body, that the packet
still awaits its body and the retry succeeds).  On SQLite and PostgreSQL."""

from __future__ import annotations

import time
from typing import Any

import pytest

from protocol import signed
from protocol.codec import decode, encode
from protocol.keys import EncryptionPrivateKey, SigningPrivateKey
from protocol.packet import Recipient, new_packet_id, parse_envelope

from .helpers import (
    HubEnv,
    Office,
    b64,
    challenge,
    log_kinds,
    seal,
    send,
    session_body,
    stored,
    submit,
    submit_batch,
    upload,
    with_routing,
    world,
)

pytestmark = pytest.mark.asyncio

NOTHING = {"packets": 0, "deliveries": 0, "events": 0, "mailbox": 0, "accepted": 0, "blobs": 0}


def _nothing(counts: dict[str, int]) -> None:
    assert {k: counts[k] for k in NOTHING} == NOTHING
    assert counts["temp"] == 0


async def _refused(env: HubEnv, office: Office, envelope: bytes, code: str, status: int) -> None:
    got_status, doc = await submit(env, office, envelope)
    assert (got_status, doc["code"]) == (status, code), doc
    assert doc["status"] == status
    assert doc["detail"]


async def test_envelope_refusals(hub_env: HubEnv) -> None:
    env = hub_env
    w = await world(env)
    province, yen_lac = w.province, w.yen_lac

    # Malformed CBOR.
    await _refused(env, province, b"\xa1\x61", "cbor_malformed", 400)
    # Oversized envelope: refused before it is parsed.
    await _refused(
        env, province, b"\x00" * (env.settings.envelope_max + 1), "size_limit_exceeded", 413
    )
    # Sent on behalf of another office.
    envelope, _ = seal(yen_lac, [province])
    await _refused(env, province, envelope, "organ_mismatch", 422)
    # Signed with another office's key (its key id).
    envelope, _ = seal(province, [yen_lac])
    forged_kid, _ = seal(Office(province.code, "", yen_lac.signing, province.encryption), [yen_lac])
    await _refused(env, province, forged_kid, "key_unknown", 422)
    # Signed by another office's key, naming the sender's key id.
    body = decode(envelope)["body"]
    forged = signed.sign(yen_lac.signing, signed.CTX_ENVELOPE, body)
    await _refused(env, province, forged, "signature_invalid", 422)
    # Unknown recipient.
    stranger = Office(
        "000.99.99.H41",
        "Đảng ủy xã Không Có",
        SigningPrivateKey.generate(),
        EncryptionPrivateKey.generate(),
    )
    envelope, _ = seal(province, [stranger])
    await _refused(env, province, envelope, "recipient_unknown", 422)
    # A recipient stanza sealed to a key that is not the recipient's.
    envelope, _ = seal(
        province, [Office(yen_lac.code, "", yen_lac.signing, EncryptionPrivateKey.generate())]
    )
    await _refused(env, province, envelope, "key_unknown", 422)
    # Route not allowed: the chi bộ may not write to the neighbouring commune.
    envelope, _ = seal(w.chi_bo, [w.tam_hong])
    await _refused(env, w.chi_bo, envelope, "route_not_allowed", 403)
    # Tối mật declared.
    envelope, _ = seal(province, [yen_lac], routing=with_routing(secrecy=2))
    await _refused(env, province, envelope, "secrecy_refused", 403)
    # Mật is not carried by this deployment either (unclassified only by default).
    envelope, _ = seal(province, [yen_lac], routing=with_routing(secrecy=1))
    await _refused(env, province, envelope, "secrecy_refused", 403)
    # Created an hour ago: outside the clock skew.
    envelope, _ = seal(province, [yen_lac], created_at=int(time.time()) - 3600)
    await _refused(env, province, envelope, "clock_skew", 422)
    # A recall naming a packet this sender never sent.
    envelope, _ = seal(
        province, [yen_lac], kind="recall", routing=with_routing(target=new_packet_id())
    )
    await _refused(env, province, envelope, "packet_unknown", 404)

    _nothing(await stored(env))
    kinds = await log_kinds(env)
    # Refusals of authentic envelopes are logged; forged and malformed ones are not.
    assert kinds.count("policy_refused") == 7


async def test_expired_recipient_names_successor(hub_env: HubEnv) -> None:
    env = hub_env
    w = await world(env)
    resp = await env.client.post(
        "/v1/admin/merge",
        json={"organ": w.tam_hong.code, "successor": w.yen_lac.code},
        headers=w.admin.headers,
    )
    assert resp.status == 200, await resp.text()
    envelope, _ = seal(w.province, [w.tam_hong])
    status, doc = await submit(env, w.province, envelope)
    assert (status, doc["code"]) == (422, "organ_not_valid")
    assert w.yen_lac.code in doc["detail"]
    # The merged organ's entry names its successor.
    resp = await env.client.get(f"/v1/directory/{w.tam_hong.code}", headers=w.province.headers)
    from protocol.directory import verify_entry

    entry = verify_entry(
        __import__("base64").b64decode((await resp.json())["entry"]),
        env.keys.authority.public_key(),
    ).entry
    assert entry.successor == w.yen_lac.code
    assert entry.valid_until is not None
    _nothing(await stored(env))


async def test_revoked_sender(hub_env: HubEnv) -> None:
    env = hub_env
    w = await world(env)
    envelope, _ = seal(w.yen_lac, [w.province])
    resp = await env.client.post(
        "/v1/admin/revoke", json={"organ": w.yen_lac.code}, headers=w.admin.headers
    )
    assert resp.status == 200, await resp.text()
    # The session ends at once ...
    await _refused(env, w.yen_lac, envelope, "token_invalid", 401)
    # ... and no new one opens with the revoked key.
    value = await challenge(env, w.yen_lac.code)
    resp = await env.client.post("/v1/sessions", json=session_body(w.yen_lac, value))
    assert (resp.status, (await resp.json())["code"]) == (422, "key_revoked")
    _nothing(await stored(env))


@pytest.mark.parametrize(
    ("damage", "code"),
    [
        ("tamper", "body_digest_mismatch"),
        ("longer", "body_extended"),
        ("shorter", "truncated_body"),
    ],
)
async def test_bad_body_keeps_nothing_and_retry_works(
    hub_env: HubEnv, damage: str, code: str
) -> None:
    env = hub_env
    w = await world(env)
    envelope, body = seal(w.province, [w.yen_lac])
    status, doc = await submit(env, w.province, envelope)
    assert status == 202
    packet_id = doc["packet_id"]
    bad = {
        "tamper": body[:100] + bytes([body[100] ^ 1]) + body[101:],
        "longer": body + b"\x00",
        "shorter": body[:-1],
    }[damage]
    status, doc = await upload(env, w.province, packet_id, bad)
    assert (status, doc["code"]) == (422, code), doc
    counts = await stored(env)
    assert counts["packets"] == 1
    assert counts["accepted"] == 0
    assert counts["blobs"] == 0
    assert counts["temp"] == 0
    assert counts["deliveries"] == counts["mailbox"] == 0
    # Nothing is visible to the recipient.
    resp = await env.client.get("/v1/mailbox", headers=w.yen_lac.headers)
    assert (await resp.json())["items"] == []
    # The upload can be retried.
    status, doc = await upload(env, w.province, packet_id, body)
    assert status == 200, doc
    assert (await stored(env))["accepted"] == 1


async def test_duplicates(hub_env: HubEnv) -> None:
    env = hub_env
    w = await world(env)
    packet_id = new_packet_id()
    answer, envelope, body = await send(env, w.province, [w.yen_lac], packet_id=packet_id)
    # The same envelope again: the original answer, with the original receipt.
    status, doc = await submit(env, w.province, envelope)
    assert status == 200
    assert doc == answer
    # The same id with other bytes: a conflict, never an overwrite.
    other, _ = seal(w.province, [w.yen_lac], packet_id=packet_id, data=b"other content")
    status, doc = await submit(env, w.province, other)
    assert (status, doc["code"]) == (409, "packet_conflict")
    # The body again: refused, the stored one stays.
    status, doc = await upload(env, w.province, answer["packet_id"], body)
    assert (status, doc["code"]) == (409, "body_not_expected")
    counts = await stored(env)
    assert counts["packets"] == 1
    assert counts["deliveries"] == 1
    assert counts["mailbox"] == 1


async def test_request_refusals(hub_env: HubEnv) -> None:
    env = hub_env
    w = await world(env)
    h = w.province.headers
    cases: list[tuple[str, str, dict[str, Any], int, str]] = [
        ("put", "/v1/packets/not-a-uuid/body", {"data": b"x"}, 400, "packet_id_invalid"),
        (
            "put",
            f"/v1/packets/{__import__('uuid').UUID(bytes=new_packet_id())}/body",
            {"data": b"x"},
            404,
            "packet_unknown",
        ),
        ("get", "/v1/bodies/00", {}, 400, "request_invalid"),
        ("get", "/v1/bodies/" + "ab" * 32, {}, 404, "body_unknown"),
        ("get", "/v1/mailbox?wait=61", {}, 400, "request_invalid"),
        ("get", "/v1/mailbox?limit=x", {}, 400, "request_invalid"),
        ("post", "/v1/mailbox/ack", {"data": b"{not json"}, 400, "request_invalid"),
        ("post", "/v1/mailbox/ack", {"json": {"ids": ["1"]}}, 400, "request_invalid"),
        ("post", "/v1/receipts", {"json": {"receipts": []}}, 400, "request_invalid"),
        ("post", "/v1/receipts", {"json": {"receipts": ["%%%"]}}, 400, "request_invalid"),
        ("get", "/v1/directory/bad%20code", {}, 400, "organ_code_invalid"),
        ("get", "/v1/directory/000.77.77.H41", {}, 404, "organ_unknown"),
        ("get", "/v1/directory", {}, 400, "request_invalid"),
        ("get", "/v1/directory/000.00.00.H41/children?depth=0", {}, 400, "request_invalid"),
        ("post", "/v1/packets/batch", {"data": encode([b"x"])}, 400, "request_invalid"),
        ("post", "/v1/packets/batch", {"data": b"\xff"}, 400, "cbor_malformed"),
        ("get", "/v1/nowhere", {}, 404, "route_unknown"),
        ("delete", "/v1/mailbox", {}, 405, "method_not_allowed"),
    ]
    for method, path, kwargs, status, code in cases:
        resp = await env.client.request(method, path, headers=h, **kwargs)
        doc = await resp.json()
        assert (resp.status, doc["code"]) == (status, code), (method, path, doc)
    _nothing(await stored(env))


async def test_session_refusals(hub_env: HubEnv) -> None:
    env = hub_env
    w = await world(env)
    office = w.yen_lac
    value = await challenge(env, office.code)
    body = session_body(office, value)
    resp = await env.client.post("/v1/sessions", json=body)
    assert resp.status == 201
    # Replayed challenge.
    resp = await env.client.post("/v1/sessions", json=body)
    assert (resp.status, (await resp.json())["code"]) == (401, "challenge_invalid")
    # A wrong signature uses the challenge up all the same.
    value = await challenge(env, office.code)
    body = session_body(office, value)
    body["signatures"]["ed25519"] = b64(bytes(64))
    resp = await env.client.post("/v1/sessions", json=body)
    assert (resp.status, (await resp.json())["code"]) == (422, "signature_invalid")
    resp = await env.client.post("/v1/sessions", json=session_body(office, value))
    assert (resp.status, (await resp.json())["code"]) == (401, "challenge_invalid")
    # Another organ's challenge.
    value = await challenge(env, w.province.code)
    resp = await env.client.post("/v1/sessions", json=session_body(office, value))
    assert (resp.status, (await resp.json())["code"]) == (401, "challenge_invalid")
    # A challenge for an organ that is not in the directory.
    resp = await env.client.post("/v1/sessions/challenge", json={"organ": "000.99.99.H41"})
    assert (resp.status, (await resp.json())["code"]) == (404, "organ_unknown")
    # Tokens: missing, malformed, unknown.
    for headers, code in (
        ({}, "token_missing"),
        ({"Authorization": "Basic abc"}, "token_invalid"),
        ({"Authorization": "Bearer nope"}, "token_invalid"),
    ):
        resp = await env.client.get("/v1/mailbox", headers=headers)
        assert (resp.status, (await resp.json())["code"]) == (401, code)


async def test_enrolment_refusals(hub_env: HubEnv) -> None:
    from .helpers import create_organ, enrol_body

    env = hub_env
    token = await create_organ(env, "000.00.14.H41", "Đảng ủy xã Hồng Phong")
    office = Office(
        "000.00.14.H41",
        "Đảng ủy xã Hồng Phong",
        SigningPrivateKey.generate(),
        EncryptionPrivateKey.generate(),
    )
    cases: list[tuple[dict[str, Any], int, str]] = []
    cases.append((enrol_body(office, "wrong-token"), 401, "enrolment_token_invalid"))
    proof_by_other = enrol_body(office, token, proof_key=SigningPrivateKey.generate())
    cases.append((proof_by_other, 422, "signature_invalid"))
    bad_key = enrol_body(office, token)
    bad_key["signing_key"]["pub"] = b64(b"\x01" * 31)
    cases.append((bad_key, 400, "key_invalid"))
    bad_alg = enrol_body(office, token)
    bad_alg["encryption_key"]["alg"] = "rsa"
    cases.append((bad_alg, 400, "algorithm_unsupported"))
    other_organ = enrol_body(Office("000.00.00.H41", "", office.signing, office.encryption), token)
    cases.append((other_organ, 401, "enrolment_token_invalid"))
    for body, status, code in cases:
        resp = await env.client.post("/v1/enrol", json=body)
        assert (resp.status, (await resp.json())["code"]) == (status, code), code
    resp = await env.client.post("/v1/enrol", json=enrol_body(office, token))
    assert resp.status == 201
    # One time only.
    resp = await env.client.post("/v1/enrol", json=enrol_body(office, token))
    assert (resp.status, (await resp.json())["code"]) == (401, "enrolment_token_invalid")


async def test_batch(hub_env: HubEnv) -> None:
    env = hub_env
    w = await world(env)
    good = [
        seal(w.province, [w.yen_lac, w.tam_hong], data=f"Công văn số {i}".encode())
        for i in range(20)
    ]
    bad_route = seal(w.chi_bo, [w.tam_hong])
    tampered_env, tampered_body = seal(w.province, [w.yen_lac])
    tampered = (tampered_env, tampered_body[:-1] + bytes([tampered_body[-1] ^ 1]))
    secret = seal(w.province, [w.yen_lac], routing=with_routing(secrecy=3))
    items = [*good, bad_route, tampered, secret, (b"\xa0", b"")]
    results = await submit_batch(env, w.province, items)
    assert [r["status"] for r in results[:20]] == [200] * 20
    assert all(r["receipt"] for r in results[:20])
    assert [r.get("code") for r in results[20:]] == [
        "organ_mismatch",  # the chi bộ's envelope, submitted by the province
        "body_digest_mismatch",
        "secrecy_refused",
        "field_missing",
    ]
    counts = await stored(env)
    assert counts["accepted"] == counts["packets"] == 20
    assert counts["deliveries"] == counts["mailbox"] == 40
    # The same batch again is idempotent.
    again = await submit_batch(env, w.province, good)
    assert again == results[:20]
    # Recipients see them, most urgent first then oldest.
    resp = await env.client.get("/v1/mailbox?limit=100", headers=w.yen_lac.headers)
    items_seen = (await resp.json())["items"]
    assert len(items_seen) == 20
    assert parse_envelope(__import__("base64").b64decode(items_seen[0]["envelope"])).packet_id
    assert isinstance(Recipient, type)
