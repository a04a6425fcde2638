"""The audit log inside the real hub (``create_app``), on SQLite and PostgreSQL: a packet's
life through the API ends up in a bundle an auditor verifies offline -- office receipt
signatures and the hub's ``accepted`` receipt included -- with real bearer tokens, and
offices witness checkpoints with their directory keys."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from hub.app import log_origin
from protocol.audit import Event
from protocol.bundle import (
    log_verifier,
    open_bundle,
    verify_bundle,
    witness_signer,
    witness_verifier,
)
from protocol.checkpoint import (
    add_cosignature,
    check_consistent,
    open_checkpoint,
    verify_cosignatures,
)
from protocol.directory import DirectoryEntry
from protocol.merkle import leaf_hash, verify_inclusion
from protocol.packet import parse_envelope
from protocol.receipts import verify_hub_receipt, verify_office_receipt

from .helpers import (
    HubEnv,
    Office,
    ack,
    log_kinds,
    mailbox,
    office_receipt,
    post_receipts,
    send,
    unb64,
    world,
)

pytestmark = pytest.mark.asyncio


def verifier(env: HubEnv) -> Any:
    return log_verifier(env.keys.hub.public_key(), log_origin(env.settings))


async def history(env: HubEnv) -> tuple[Any, bytes, Any]:
    """A packet from the province to two communes; one fetches it and answers 01."""
    w = await world(env)
    answer, envelope, _ = await send(env, w.province, [w.yen_lac, w.tam_hong])
    items = await mailbox(env, w.yen_lac)
    resp = await env.client.get(items[0]["body"]["url"], headers=w.yen_lac.headers)
    assert resp.status == 200
    await resp.read()
    await ack(env, w.yen_lac, items)
    status, doc = await post_receipts(env, w.yen_lac, [office_receipt(w.yen_lac, envelope, "01")])
    assert status == 200, doc
    await log_kinds(env)  # every event indexed
    return w, envelope, answer


async def test_auditor_verifies_a_packets_bundle(hub_env: HubEnv) -> None:
    env = hub_env
    w, envelope, answer = await history(env)
    parsed = parse_envelope(envelope)
    path = f"/v1/log/packets/{parsed.packet_id.hex()}/bundle"
    resp = await env.client.get(path, headers=w.auditor.headers)
    assert resp.status == 200, await resp.text()
    data = await resp.read()

    entries: dict[str, DirectoryEntry] = {w.yen_lac.code: _entry(w.yen_lac)}
    checked: list[str] = []

    def check_receipt(event: Event) -> None:
        receipt = verify_office_receipt(
            event.fields["receipt"],
            entries[event.fields["organ"]],
            packet_id=event.fields["packet_id"],
            envelope_digest=event.fields["envelope_digest"],
        )
        checked.append(receipt.status)

    opened = open_bundle(data, verifier(env), check_receipt=check_receipt)
    kinds = [e.kind for e in opened.events]
    assert kinds[0] == "packet_accepted"
    assert "body_fetched" in kinds
    assert kinds[-1] == "receipt"
    assert checked == ["01"]
    accepted = opened.events[0].fields
    assert accepted["envelope_digest"] == parsed.digest
    assert accepted["sender"] == w.province.code
    assert sorted(accepted["recipients"]) == sorted([w.yen_lac.code, w.tam_hong.code])

    # the hub's signed "accepted" receipt names the index the bundle proves
    hub_receipt = verify_hub_receipt(
        unb64(answer["receipt"]), env.keys.hub.public_key(), envelope=parsed, kind="accepted"
    )
    assert hub_receipt.log_index == opened.indexes[0]

    # parties may fetch it too; others may not, whatever their role
    for office in (w.province, w.yen_lac):
        resp = await env.client.get(path, headers=office.headers)
        assert resp.status == 200
        assert len(verify_bundle(await resp.read(), verifier(env))) == len(kinds)
    for office, expected in (
        (w.chi_bo, (404, "packet_unknown")),
        (w.admin, (403, "role_forbidden")),
    ):
        resp = await env.client.get(path, headers=office.headers)
        assert (resp.status, (await resp.json())["code"]) == expected
    resp = await env.client.get(path)
    assert (resp.status, (await resp.json())["code"]) == (401, "token_missing")


def _entry(office: Office) -> DirectoryEntry:
    assert office.entry is not None
    return office.entry


async def test_auditor_follows_the_log(hub_env: HubEnv) -> None:
    env = hub_env
    w = await world(env)
    resp = await env.client.get("/v1/log/checkpoint")  # public
    assert resp.status == 200
    first = open_checkpoint(await resp.read(), verifier(env))
    await history_more(env, w)
    latest = open_checkpoint(
        await (await env.client.get("/v1/log/checkpoint")).read(), verifier(env)
    )
    assert latest.size > first.size
    headers = w.auditor.headers
    resp = await env.client.get(
        f"/v1/log/proof/consistency?old={first.size}&new={latest.size}", headers=headers
    )
    assert resp.status == 200
    check_consistent(first, latest, [base64.b64decode(h) for h in (await resp.json())["proof"]])
    resp = await env.client.get(f"/v1/log/entries?start=0&end={latest.size}", headers=headers)
    got = [base64.b64decode(e) for e in (await resp.json())["entries"]]
    assert len(got) == latest.size
    index = latest.size - 1
    resp = await env.client.get(
        f"/v1/log/proof/inclusion?index={index}&size={latest.size}", headers=w.tam_hong.headers
    )
    proof = [base64.b64decode(h) for h in (await resp.json())["proof"]]
    verify_inclusion(leaf_hash(got[index]), index, latest.size, proof, latest.root_hash)


async def history_more(env: HubEnv, w: Any) -> None:
    await send(env, w.province, [w.yen_lac])
    await log_kinds(env)


async def test_offices_witness_with_their_directory_key(hub_env: HubEnv) -> None:
    env = hub_env
    w = await world(env)
    await log_kinds(env)
    note = await (await env.client.get("/v1/log/checkpoint")).read()
    now = int(time.time())
    cosigned = add_cosignature(note, witness_signer(w.yen_lac.code, w.yen_lac.signing), now)
    resp = await env.client.post("/v1/log/cosignatures", data=cosigned, headers=w.yen_lac.headers)
    assert resp.status == 200, await resp.text()
    # yen_lac's cosignature presented under another office's token is not that office's
    resp = await env.client.post("/v1/log/cosignatures", data=cosigned, headers=w.tam_hong.headers)
    assert (resp.status, (await resp.json())["code"]) == (422, "cosignature_invalid")
    size = open_checkpoint(note, verifier(env)).size
    published = await (await env.client.get(f"/v1/log/checkpoint?size={size}")).read()
    witness = witness_verifier(w.yen_lac.code, w.yen_lac.signing.public_key())
    assert verify_cosignatures(published, [witness], 1) == [witness.name]
