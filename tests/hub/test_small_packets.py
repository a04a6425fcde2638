"""The small-packet path: inline bodies, ``fetched`` on acknowledgement, receipt batches,
the bearer-token cache and the mailbox's encoded-packet cache."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select, text, update

from hub import mailbox as hub_mailbox
from hub import notify as hub_notify
from hub import sessions
from hub.api import common
from hub.app import create_app
from hub.context import HUB
from hub.deliveries import INLINE_BODY_MAX
from hub.mailcache import B64, CHUNK, Encoded, ItemCache, chunks, to_json
from hub.models import DeliveryEvent, Packet
from hub.sessions import TokenCache, TokenRow
from protocol.packet import parse_envelope
from protocol.receipts import (
    OfficeReceipt,
    parse_hub_receipt,
    sign_office_receipt,
    verify_hub_receipt,
)

from .conftest import hub_settings
from .helpers import (
    HubEnv,
    ack,
    eventually,
    log_kinds,
    mailbox,
    office_receipt,
    post_receipts,
    send,
    unb64,
    world,
)


async def _status(env: HubEnv, office: Any, packet_id: str) -> dict[str, Any]:
    resp = await env.client.get(f"/v1/packets/{packet_id}/status", headers=office.headers)
    assert resp.status == 200
    doc: dict[str, Any] = await resp.json()
    return doc


async def _fetched_receipts(env: HubEnv, sender: Any) -> list[dict[str, Any]]:
    return [i for i in await mailbox(env, sender) if i["kind"] == "hub_receipt"]


@pytest.mark.asyncio
async def test_small_body_inline_fetched_once_on_ack(hub_env: HubEnv) -> None:
    env = hub_env
    w = await world(env)
    answer, envelope, body = await send(env, w.province, [w.yen_lac, w.tam_hong])
    assert len(body) <= INLINE_BODY_MAX
    parsed = parse_envelope(envelope)
    items = await mailbox(env, w.yen_lac)
    [item] = items
    assert unb64(item["envelope"]) == envelope
    assert item["body"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert item["body"]["size"] == len(body)
    assert item["body"]["url"] == f"/v1/bodies/{item['body']['sha256']}"
    assert unb64(item["body"]["data"]) == body
    # Reading is not fetching: nothing recorded before the acknowledgement.
    doc = await _status(env, w.province, answer["packet_id"])
    assert all(r["fetched_at"] is None for r in doc["recipients"])

    await ack(env, w.yen_lac, items)
    doc = await _status(env, w.province, answer["packet_id"])
    by_organ = {r["organ"]: r for r in doc["recipients"]}
    assert by_organ[w.yen_lac.code]["fetched_at"] is not None
    assert by_organ[w.tam_hong.code]["fetched_at"] is None
    # Tam Hồng downloads first, then acknowledges: still one fetched each.
    [other] = await mailbox(env, w.tam_hong)
    resp = await env.client.get(other["body"]["url"], headers=w.tam_hong.headers)
    assert await resp.read() == body
    await ack(env, w.tam_hong, [other])
    # Yên Lạc downloads again and acknowledges nothing new: no second fetched.
    resp = await env.client.get(item["body"]["url"], headers=w.yen_lac.headers)
    assert await resp.read() == body
    resp = await env.client.post(
        "/v1/mailbox/ack", json={"ids": [item["id"]]}, headers=w.yen_lac.headers
    )
    assert (await resp.json())["acknowledged"] == 0

    async def both() -> list[dict[str, Any]] | None:
        found = await _fetched_receipts(env, w.province)
        return found if len(found) == 2 else None

    relayed = await eventually(both)
    assert relayed is not None
    await asyncio.sleep(0.3)
    assert len(await _fetched_receipts(env, w.province)) == 2
    assert sorted(i["organ"] for i in relayed) == sorted([w.yen_lac.code, w.tam_hong.code])
    hub_pub = env.keys.hub.public_key()
    for i in relayed:
        verify_hub_receipt(unb64(i["receipt"]), hub_pub, envelope=parsed, kind="fetched")
    # The stored digest of each hub receipt (computed, not parsed back) is its body's.
    async with env.hub.sessions() as session:
        stored = (
            await session.execute(
                select(DeliveryEvent.receipt, DeliveryEvent.digest).where(
                    DeliveryEvent.source == "hub"
                )
            )
        ).all()
    assert len(stored) == 2
    for raw, digest in stored:
        assert bytes(digest) == parse_hub_receipt(bytes(raw)).digest
    doc = await _status(env, w.province, answer["packet_id"])
    for r in doc["recipients"]:
        assert [h["status"] for h in r["history"]] == ["fetched"]
    kinds = await log_kinds(env)
    assert kinds.count("body_fetched") == 2


@pytest.mark.asyncio
async def test_acknowledge_and_poll_in_one_request(hub_env: HubEnv) -> None:
    """``POST /v1/mailbox``: the previous answer's items are removed (inline body:
    ``fetched`` recorded) before the mailbox is read or waited on; a refused request
    (bad window, bad ids) acknowledges nothing; another office's ids remove nothing."""
    env = hub_env
    w = await world(env)
    first, _, _ = await send(env, w.province, [w.yen_lac, w.tam_hong])
    items = await mailbox(env, w.yen_lac)
    ids = [i["id"] for i in items]
    url = "/v1/mailbox"
    for params, body in (
        ({"wait": "61"}, {"ack": ids}),
        ({"limit": "0"}, {"ack": ids}),
        ({"wait": "0"}, {"ack": ["1"]}),
        ({"wait": "0"}, {"ids": ids}),
        ({"wait": "0"}, {"ack": list(range(5001))}),
    ):
        resp = await env.client.post(url, params=params, json=body, headers=w.yen_lac.headers)
        assert (resp.status, (await resp.json())["code"]) == (400, "request_invalid"), params
    assert [i["id"] for i in await mailbox(env, w.yen_lac)] == ids  # still there
    # Another office's ids: nothing removed, its own (empty-handed) answer.
    resp = await env.client.post(url, json={"ack": ids}, headers=w.chi_bo.headers)
    assert await resp.json() == {"items": [], "acknowledged": 0}
    # Acknowledged, then a long-poll that the next packet answers.
    waiting = asyncio.create_task(
        env.client.post(url, params={"wait": "30"}, json={"ack": ids}, headers=w.yen_lac.headers)
    )
    await asyncio.sleep(0.3)
    doc = await _status(env, w.province, first["packet_id"])
    by_organ = {r["organ"]: r for r in doc["recipients"]}
    assert by_organ[w.yen_lac.code]["fetched_at"] is not None
    assert by_organ[w.tam_hong.code]["fetched_at"] is None
    assert not waiting.done()
    second, _, _ = await send(env, w.province, [w.yen_lac])
    resp = await asyncio.wait_for(waiting, 10)
    answer = await resp.json()
    assert answer["acknowledged"] == len(ids)
    assert [i["packet_id"] for i in answer["items"]] == [second["packet_id"]]


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each mailbox read of the long-poll (the organ read)."""
    reads: list[str] = []
    original = hub_mailbox.read_items

    async def counting(hub: Any, conn: Any, organ: str, limit: int) -> Any:
        reads.append(organ)
        return await original(hub, conn, organ, limit)

    monkeypatch.setattr(hub_mailbox, "read_items", counting)
    return reads


async def _ack_and_poll(env: HubEnv, office: Any, ids: list[int], **params: str) -> dict[str, Any]:
    resp = await env.client.post(
        "/v1/mailbox", params={"wait": "0", **params}, json={"ack": ids}, headers=office.headers
    )
    assert resp.status == 200
    doc: dict[str, Any] = await resp.json()
    return doc


@pytest.mark.asyncio
async def test_acknowledging_a_whole_answer_skips_the_next_read(
    hub_env: HubEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer that held the whole mailbox, acknowledged whole by the next long-poll
    with nothing arrived since: the mailbox is known empty, the poll waits without
    reading it -- and what arrives then still answers it."""
    env = hub_env
    w = await world(env)
    await send(env, w.province, [w.yen_lac], data="Công văn số 1".encode())
    items = await mailbox(env, w.yen_lac)
    reads = _count_reads(monkeypatch)
    doc = await _ack_and_poll(env, w.yen_lac, [i["id"] for i in items])
    assert doc == {"items": [], "acknowledged": 1}
    assert reads == []
    # A plain poll acknowledges nothing: that answer's items may still be there.
    assert await mailbox(env, w.yen_lac) == []
    assert reads == [w.yen_lac.code]
    # ... but an empty answer is remembered as well.
    assert await mailbox(env, w.yen_lac) == []
    assert reads == [w.yen_lac.code]
    waiting = asyncio.create_task(_ack_and_poll(env, w.yen_lac, [], wait="30"))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    second, _, _ = await send(env, w.province, [w.yen_lac])
    answer = await asyncio.wait_for(waiting, 10)
    assert [i["packet_id"] for i in answer["items"]] == [second["packet_id"]]


@pytest.mark.asyncio
async def test_what_is_known_of_a_mailbox_goes_with_arrivals_and_partial_answers(
    hub_env: HubEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next poll reads when something arrived since the answer, when the answer held
    only part of the mailbox (its limit), or when not all of it is acknowledged."""
    env = hub_env
    w = await world(env)
    reads = _count_reads(monkeypatch)
    # Something arrived after the answer.
    await send(env, w.province, [w.yen_lac])
    (first,) = await mailbox(env, w.yen_lac)
    arrived, _, _ = await send(env, w.province, [w.yen_lac])
    doc = await _ack_and_poll(env, w.yen_lac, [first["id"]])
    assert [i["packet_id"] for i in doc["items"]] == [arrived["packet_id"]]
    # The answer stopped at its limit: the rest is still there.
    await send(env, w.province, [w.yen_lac])
    part = await mailbox(env, w.yen_lac, limit=1)
    assert len(part) == 1
    doc = await _ack_and_poll(env, w.yen_lac, [part[0]["id"]], limit="1")
    assert len(doc["items"]) == 1
    assert doc["items"][0]["id"] != part[0]["id"]
    # Only part of a whole answer acknowledged: the rest comes again.
    rest = doc["items"][0]
    await _ack_and_poll(env, w.yen_lac, [rest["id"]])
    await send(env, w.province, [w.yen_lac])
    await send(env, w.province, [w.yen_lac])
    both = await mailbox(env, w.yen_lac)
    assert len(both) == 2
    before = len(reads)
    doc = await _ack_and_poll(env, w.yen_lac, [both[0]["id"]])
    assert [i["id"] for i in doc["items"]] == [both[1]["id"]]
    assert len(reads) == before + 1
    # The answer's byte budget left an item out: the rest is still there.
    await send(env, w.province, [w.yen_lac])
    monkeypatch.setattr(hub_mailbox, "BYTES_BUDGET", 1)  # one item per answer
    (one,) = await mailbox(env, w.yen_lac)
    assert one["id"] == both[1]["id"]
    doc = await _ack_and_poll(env, w.yen_lac, [one["id"]])
    assert len(doc["items"]) == 1
    assert doc["items"][0]["id"] != one["id"]


def test_notifier_remembers_a_whole_answer_only_while_nothing_woke_it() -> None:
    notifier = hub_notify.MailboxNotifier("lienthong_test")
    organ = "000.00.00.H41"
    # A read and its result: known empty once acknowledged whole.
    token = notifier.reading(organ)
    notifier.read(organ, token, [7, 8])
    assert notifier.known_empty(organ, [7, 8, 9])
    assert not notifier.known_empty(organ, [7])
    assert not notifier.known_empty("000.00.01.H41", [])
    # A wake-up during the read: what it found is not kept.
    token = notifier.reading(organ)
    notifier.wake([organ])
    notifier.read(organ, token, [])
    assert not notifier.known_empty(organ, [])
    # A later read replaces an earlier one's token; a partial read forgets.
    first = notifier.reading(organ)
    second = notifier.reading(organ)
    notifier.read(organ, first, [])
    assert not notifier.known_empty(organ, [])
    notifier.read(organ, second, [])
    assert notifier.known_empty(organ, [])
    notifier.read(organ, notifier.reading(organ), None)
    assert not notifier.known_empty(organ, [])
    # A wake-up of all (the listener came back) forgets everything.
    notifier.read(organ, notifier.reading(organ), [])
    notifier.wake(["*"])
    assert not notifier.known_empty(organ, [])
    # On PostgreSQL, nothing is known while the listening connection is down.
    notifier.read(organ, notifier.reading(organ), [])
    notifier._postgres = True
    assert not notifier.known_empty(organ, [])
    notifier._conn = object()
    assert notifier.known_empty(organ, [])


def test_notifier_on_postgresql_wakes_through_the_notification_only() -> None:
    """While the listener is up, the committing process's own wake-up leaves the waiters
    and what is known to the notification (which PostgreSQL delivers to it as well); while
    it is down, the process wakes its waiters itself."""
    notifier = hub_notify.MailboxNotifier("lienthong_test")
    organ = "000.00.00.H41"
    notifier._postgres, notifier._conn = True, object()
    with notifier.listen(organ) as woken:
        notifier.read(organ, notifier.reading(organ), [])
        notifier.wake([organ])
        assert not woken.is_set()
        assert notifier.known_empty(organ, [])
        notifier._on_notify(None, 0, notifier.channel, f"{organ},X.Y")
        assert woken.is_set()
        assert not notifier.known_empty(organ, [])
        woken.clear()
        notifier._conn = None
        notifier.wake([organ])
        assert woken.is_set()


def test_notifier_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_notify, "_SEEN_MAX", 3)
    notifier = hub_notify.MailboxNotifier("lienthong_test")
    for n in range(3):
        notifier.read(f"O{n}", notifier.reading(f"O{n}"), [])
    assert notifier.known_empty("O0", [])
    notifier.read("O3", notifier.reading("O3"), [])
    assert not notifier.known_empty("O0", [])
    assert notifier.known_empty("O3", [])


@pytest.mark.asyncio
async def test_large_body_not_inline_ack_records_nothing(hub_env: HubEnv) -> None:
    env = hub_env
    w = await world(env)
    answer, _, body = await send(env, w.province, [w.yen_lac], data=os.urandom(80 * 1024))
    assert len(body) > INLINE_BODY_MAX
    items = await mailbox(env, w.yen_lac)
    assert "data" not in items[0]["body"]
    await ack(env, w.yen_lac, items)
    await asyncio.sleep(0.2)
    doc = await _status(env, w.province, answer["packet_id"])
    assert doc["recipients"][0]["fetched_at"] is None
    resp = await env.client.get(items[0]["body"]["url"], headers=w.yen_lac.headers)
    assert await resp.read() == body
    doc = await _status(env, w.province, answer["packet_id"])
    assert doc["recipients"][0]["fetched_at"] is not None


@pytest.mark.asyncio
async def test_deleted_body_not_inline(hub_env: HubEnv) -> None:
    env = hub_env
    w = await world(env)
    answer, envelope, _ = await send(env, w.province, [w.yen_lac])
    async with env.hub.sessions.begin() as session:
        await session.execute(
            update(Packet)
            .where(Packet.id == parse_envelope(envelope).packet_id)
            .values(body_deleted_at=int(time.time()))
        )
    items = await mailbox(env, w.yen_lac)
    assert "data" not in items[0]["body"]
    await ack(env, w.yen_lac, items)
    doc = await _status(env, w.province, answer["packet_id"])
    assert doc["recipients"][0]["fetched_at"] is None


@pytest.mark.asyncio
async def test_inline_bodies_count_against_the_budget(
    hub_env: HubEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = hub_env
    w = await world(env)
    sent = [await send(env, w.province, [w.yen_lac]) for _ in range(3)]
    envelope_size, body_size = len(sent[0][1]), len(sent[0][2])
    # Room for one envelope and a half, bodies included: one item per answer, each whole.
    monkeypatch.setattr(hub_mailbox, "BYTES_BUDGET", int(1.5 * (envelope_size + body_size)))
    seen = []
    for _ in range(3):
        items = await mailbox(env, w.yen_lac)
        assert len(items) == 1
        assert "data" in items[0]["body"]
        seen.append(items[0]["packet_id"])
        await ack(env, w.yen_lac, items)
    assert sorted(seen) == sorted(doc["packet_id"] for doc, _, _ in sent)
    assert await mailbox(env, w.yen_lac) == []


@pytest.mark.asyncio
async def test_large_answer_is_written_in_pieces(hub_env: HubEnv) -> None:
    """An answer beyond one piece (inline bodies here; a fan-out's envelope in use) is
    streamed with its length and request id; the office reads the same items."""
    env = hub_env
    w = await world(env)
    sent = [
        await send(env, w.province, [w.yen_lac], data=os.urandom(INLINE_BODY_MAX - 4096))
        for _ in range(6)
    ]
    resp = await env.client.get(
        "/v1/mailbox",
        params={"wait": "0", "limit": "10"},
        headers={**w.yen_lac.headers, "X-Request-Id": "ans-1"},
    )
    raw = await resp.read()
    assert resp.status == 200
    assert len(raw) > CHUNK
    assert resp.headers["Content-Length"] == str(len(raw))
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers["X-Request-Id"] == "ans-1"
    items = json.loads(raw)["items"]
    got = {i["packet_id"]: (unb64(i["envelope"]), unb64(i["body"]["data"])) for i in items}
    assert got == {doc["packet_id"]: (envelope, body) for doc, envelope, body in sent}


@pytest.mark.asyncio
async def test_receipt_batch_checked_one_by_one(hub_env: HubEnv) -> None:
    env = hub_env
    w = await world(env)
    _, first, _ = await send(env, w.province, [w.yen_lac, w.tam_hong])
    _, second, _ = await send(env, w.province, [w.yen_lac])
    _, unrelated, _ = await send(env, w.tam_hong, [w.province])
    t = int(time.time())
    r01 = office_receipt(w.yen_lac, first, "01", at=t)
    r03 = office_receipt(w.yen_lac, first, "03", at=t + 2, details={"incoming_number": "7"})
    late04 = office_receipt(w.yen_lac, first, "04", at=t + 1)
    env2 = parse_envelope(second)
    wrong_digest = sign_office_receipt(
        OfficeReceipt(
            packet_id=env2.packet_id,
            envelope_digest=parse_envelope(first).digest,
            organ=w.yen_lac.code,
            signer=w.yen_lac.code,
            signer_kid=w.yen_lac.signing.kid,
            status="01",
            at=t,
        ),
        w.yen_lac.signing,
    )
    batch = [
        r01,
        r03,
        r01,  # the same bytes again, in the same batch
        office_receipt(w.yen_lac, first, "02", at=t + 3, reason="Sai"),  # cannot follow 03
        office_receipt(w.tam_hong, first, "01", at=t),  # signed by another office
        office_receipt(w.yen_lac, unrelated, "01", at=t),  # not our packet
        wrong_digest,
        office_receipt(w.yen_lac, second, "01", at=t),
        b"not a receipt",
        late04,
    ]
    status, doc = await post_receipts(env, w.yen_lac, batch)
    assert status == 200, doc
    results = doc["results"]
    assert [(r["status"], r.get("code")) for r in results] == [
        (200, None),
        (200, None),
        (200, None),
        (409, "transition_invalid"),
        (422, "receipt_signer_mismatch"),
        (404, "packet_unknown"),
        (422, "receipt_envelope_mismatch"),
        (200, None),
        (400, "cbor_malformed"),
        (409, "transition_invalid"),  # 04 before the 03 already there: 01, 04, 03 does not fit
    ]
    assert [r.get("state") for r in results[:3]] == ["01", "03", "03"]
    assert results[2]["duplicate"] is True
    assert results[7]["state"] == "01"
    # Relayed to the sender, in order, once each.
    relayed = [i for i in await mailbox(env, w.province) if i["kind"] == "receipt"]
    assert [(i["packet_id"], i["status"]) for i in relayed] == [
        (str(parse_envelope(first).packet_uuid), "01"),
        (str(parse_envelope(first).packet_uuid), "03"),
        (str(env2.packet_uuid), "01"),
    ]
    # The same batch again: the stored ones are duplicates with the current states.
    status, doc = await post_receipts(env, w.yen_lac, [r01, r03, batch[7]])
    assert [(r["state"], r["duplicate"]) for r in doc["results"]] == [
        ("03", True),
        ("03", True),
        ("01", True),
    ]
    # A recipient not addressed by the packet.
    status, doc = await post_receipts(
        env,
        w.province,
        [office_receipt(w.province, first, "13", about=w.chi_bo.code, at=t, reason="Nhầm")],
    )
    assert doc["results"][0]["code"] == "recipient_not_addressed"
    kinds = await log_kinds(env)
    assert kinds.count("receipt") == 3


@pytest.mark.asyncio
async def test_revocation_ends_a_cached_session(hub_env: HubEnv) -> None:
    env = hub_env
    w = await world(env)
    assert (await env.client.get("/v1/mailbox", headers=w.yen_lac.headers)).status == 200
    assert len(env.hub.tokens) > 0  # remembered
    resp = await env.client.post(
        "/v1/admin/revoke", json={"organ": w.yen_lac.code}, headers=w.admin.headers
    )
    assert resp.status == 200
    resp = await env.client.get("/v1/mailbox", headers=w.yen_lac.headers)
    assert (resp.status, (await resp.json())["code"]) == (401, "token_invalid")


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.asyncio
async def test_revocation_reaches_the_other_hub_process(hub_env: HubEnv, tmp_path: Path) -> None:
    """Two hubs on one database (as two processes would be): a session the second one
    remembers ends there as soon as the first revokes the key."""
    env = hub_env
    w = await world(env)
    other_app = create_app(hub_settings(env.settings.data_dir, env.settings.database_url))
    server = TestServer(other_app)
    await server.start_server()
    other = TestClient(server)
    await other.start_server()
    try:
        for office in (w.yen_lac, w.tam_hong):
            assert (await other.get("/v1/mailbox", headers=office.headers)).status == 200
        assert len(other_app[HUB].tokens) >= 2
        resp = await env.client.post(
            "/v1/admin/revoke", json={"organ": w.yen_lac.code}, headers=w.admin.headers
        )
        assert resp.status == 200

        async def refused() -> bool:
            resp = await other.get("/v1/mailbox", headers=w.yen_lac.headers)
            return resp.status == 401

        # Well within the cache's lifetime: the NOTIFY did it, not the TTL.
        started = time.monotonic()
        assert await eventually(refused, within=1.0)
        assert time.monotonic() - started < other_app[HUB].tokens.ttl
        # Other sessions are only looked up again.
        assert (await other.get("/v1/mailbox", headers=w.tam_hong.headers)).status == 200
    finally:
        await other.close()
        await server.close()


@pytest.mark.asyncio
async def test_fan_out_reads_the_envelope_once(hub_env: HubEnv) -> None:
    env = hub_env
    w = await world(env)
    offices = [w.yen_lac, w.tam_hong, w.chi_bo]
    waiting = [asyncio.create_task(mailbox(env, o, wait=10)) for o in offices]
    await asyncio.sleep(0.3)
    loads = env.hub.items.loads
    _, envelope, body = await send(env, w.province, offices)
    answers = await asyncio.wait_for(asyncio.gather(*waiting), 10)
    for items in answers:
        assert [unb64(i["envelope"]) for i in items] == [envelope]
        assert unb64(items[0]["body"]["data"]) == body
    for office in offices:  # and again, from the cache
        assert unb64((await mailbox(env, office))[0]["envelope"]) == envelope
    assert env.hub.items.loads - loads == 1


@pytest.mark.asyncio
async def test_empty_long_poll_ends_in_the_last_fifth_of_its_wait(
    hub_env: HubEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty answer comes at a random point of the last fifth of the wait (offices
    that began together drift apart): at the extremes of the draw, 1.6 s and 2 s."""
    env = hub_env
    w = await world(env)
    for draw, low, high in ((1.0, 1.55, 1.9), (0.0, 1.95, 2.5)):
        monkeypatch.setattr(hub_mailbox.random, "random", lambda draw=draw: draw)
        started = time.monotonic()
        assert await mailbox(env, w.yen_lac, wait=2) == []
        assert low <= time.monotonic() - started < high


@pytest.mark.asyncio
async def test_small_envelope_comes_with_its_item(
    hub_env: HubEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small envelope is read with its mailbox item (one query for the answer); past
    ``ENVELOPE_WITH_ITEM`` it is loaded by a second query.  The answers are the same."""
    env = hub_env
    w = await world(env)
    _, envelope, body = await send(env, w.province, [w.yen_lac])
    queries: list[Any] = []
    real_read_rows = hub_mailbox.read_rows

    async def counted(conn: Any, statement: Any, params: Any) -> Any:
        queries.append(statement)
        return await real_read_rows(conn, statement, params)

    monkeypatch.setattr(hub_mailbox, "read_rows", counted)
    answers = []
    for limit in (hub_mailbox.ENVELOPE_WITH_ITEM, 0):
        monkeypatch.setattr(hub_mailbox, "ENVELOPE_WITH_ITEM", limit)
        env.hub.items.clear()
        queries.clear()
        [item] = await mailbox(env, w.yen_lac)
        assert unb64(item["envelope"]) == envelope
        assert unb64(item["body"]["data"]) == body
        answers.append(item)
        expected = [hub_mailbox._ITEMS] if limit else [hub_mailbox._ITEMS, hub_mailbox._PACKETS]
        assert queries == expected
    assert answers[0] == answers[1]


# --- the caches on their own ------------------------------------------------------------


def _encoded(n: int) -> Encoded:
    return Encoded(envelope=B64(b"e" * n), envelope_size=n, body=None)


@pytest.mark.asyncio
async def test_item_cache_loads_once_for_concurrent_readers() -> None:
    cache = ItemCache()
    calls: list[list[bytes]] = []
    gate = asyncio.Event()

    async def load(ids: list[bytes]) -> dict[bytes, Encoded]:
        calls.append(ids)
        await gate.wait()
        return {i: _encoded(10) for i in ids if i != b"gone"}

    readers = [asyncio.create_task(cache.get_many([b"a", b"b"], load)) for _ in range(20)]
    await asyncio.sleep(0.01)
    gate.set()
    for found in await asyncio.gather(*readers):
        assert set(found) == {b"a", b"b"}
    assert calls == [[b"a", b"b"]]
    # A packet the load did not find is not cached, and each reader asks for it.
    found = await cache.get_many([b"a", b"gone"], load)
    assert set(found) == {b"a"}
    assert calls[-1] == [b"gone"]


@pytest.mark.asyncio
async def test_item_cache_failed_load_lets_waiters_load() -> None:
    cache = ItemCache()
    gate = asyncio.Event()

    async def failing(ids: list[bytes]) -> dict[bytes, Encoded]:
        await gate.wait()
        raise OSError("database gone")

    async def working(ids: list[bytes]) -> dict[bytes, Encoded]:
        return {i: _encoded(1) for i in ids}

    first = asyncio.create_task(cache.get_many([b"a"], failing))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(cache.get_many([b"a"], working))
    await asyncio.sleep(0.01)
    gate.set()
    with pytest.raises(OSError, match="database gone"):
        await first
    assert set(await second) == {b"a"}


@pytest.mark.asyncio
async def test_item_cache_bounds() -> None:
    cache = ItemCache(ttl=0.05, max_bytes=100)

    async def load(ids: list[bytes]) -> dict[bytes, Encoded]:
        return {i: _encoded(40) for i in ids}

    await cache.get_many([b"a", b"b", b"c"], load)
    assert cache.loads == 3
    await cache.get_many([b"a"], load)  # dropped: 120 characters do not fit in 100
    assert cache.loads == 4
    await cache.get_many([b"c"], load)
    assert cache.loads == 4
    await asyncio.sleep(0.06)
    await cache.get_many([b"c"], load)  # expired
    assert cache.loads == 5


def test_token_cache() -> None:
    row = TokenRow("000.00.12.H41", b"k" * 32, "office", 2_000_000_000, None, 2_000_000_000)
    cache = TokenCache(ttl=0.05, size=2)
    generation = cache.generation
    cache.put(b"t1", row, generation)
    assert cache.get(b"t1") == row
    # A lookup that began before a clear is not kept.
    generation = cache.generation
    cache.clear()
    cache.put(b"t1", row, generation)
    assert cache.get(b"t1") is None
    for name in (b"t1", b"t2", b"t3"):
        cache.put(name, row, cache.generation)
    assert len(cache) == 2
    assert cache.get(b"t1") is None
    time.sleep(0.06)
    assert cache.get(b"t3") is None
    # Times are checked on every use, cached or not.
    assert row.caller(1_000).organ == "000.00.12.H41"
    with pytest.raises(Exception, match="expired"):
        TokenRow("x", b"k", "office", 10, None, 100).caller(10)
    with pytest.raises(Exception, match="revoked"):
        TokenRow("x", b"k", "office", 100, 5, 100).caller(10)


def test_token_cache_unused_while_changes_cannot_arrive() -> None:
    row = TokenRow("000.00.12.H41", b"k" * 32, "office", 2_000_000_000, None, 2_000_000_000)
    hears = [True]
    cache = TokenCache(ttl=60, trusted=lambda: hears[0])
    cache.put(b"t1", row, cache.generation)
    hears[0] = False
    assert cache.get(b"t1") is None  # asks the database
    cache.put(b"t2", row, cache.generation)
    hears[0] = True
    assert cache.get(b"t2") is None  # nothing was stored meanwhile
    assert cache.get(b"t1") == row  # the listener clears it when it is back


@pytest.mark.asyncio
async def test_lost_listener_stops_the_token_cache(
    hub_env: HubEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL, while the listening connection is down a revocation in another
    process could not reach this one: every request asks the database, and the listener
    that comes back forgets what was remembered."""
    env = hub_env
    if not env.settings.database_url.startswith("postgresql"):
        pytest.skip("notifications across processes are PostgreSQL's")
    w = await world(env)
    hub = env.hub
    lookups: list[bytes] = []
    original = sessions.find_token

    async def counted(conn: Any, digest: bytes) -> Any:
        lookups.append(digest)
        return await original(conn, digest)

    monkeypatch.setattr(common, "find_token", counted)

    async def poll() -> None:
        assert (await env.client.get("/v1/mailbox", headers=w.yen_lac.headers)).status == 200

    await poll()
    await poll()
    assert len(lookups) == 1  # remembered
    assert hub.notifier.hears_sessions()
    # The listener's connection goes, and cannot come back for now.
    real_connect = hub_notify.asyncpg.connect

    async def refused(*_args: Any, **_kwargs: Any) -> Any:
        raise OSError("no database for the listener")

    monkeypatch.setattr(hub_notify.asyncpg, "connect", refused)
    listener = hub.notifier._conn.get_server_pid()
    async with hub.engine.connect() as conn:
        await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": listener})

    async def deaf() -> bool:
        return not hub.notifier.hears_sessions()

    assert await eventually(deaf, within=5.0)
    await poll()
    await poll()
    assert len(lookups) == 3  # each asked the database
    monkeypatch.setattr(hub_notify.asyncpg, "connect", real_connect)

    async def back() -> bool:
        return hub.notifier.hears_sessions()

    assert await eventually(back, within=15.0)
    assert len(hub.tokens) == 0
    await poll()
    await poll()
    assert len(lookups) == 4  # asked once, then remembered again


def _plain(value: object) -> object:
    """``value`` with base64 bytes as the text they stand for."""
    if isinstance(value, B64):
        return value.decode("ascii")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def test_answer_json_is_the_standard_encoding() -> None:
    """Base64 is copied as it is; everything else is escaped as json.dumps does; the
    pieces written out are the same bytes whatever their size."""
    doc = {
        "items": [
            {
                "id": 1,
                "envelope": B64.of(os.urandom(100)),
                "body": {"size": 3, "data": B64.of(b'\x00\xff"x'), "url": None},
                "organ": 'H\u1ed3ng "q" \\ \n\t\x01',
                "subject": unicodedata.normalize("NFD", "Trích yếu công văn"),
                "flags": [True, False, None, -5, "\u00e9"],
            },
            {"id": 2, "empty": {}, "none": []},
            {"id": 3, "envelope": B64.of(os.urandom(3000))},
        ],
        'k"ey': "v",
    }
    parts = to_json(doc)
    whole = b"".join(parts)
    assert whole == json.dumps(_plain(doc)).encode()
    assert json.loads(whole) == _plain(doc)
    assert B64.of(b"\xfb\xff") == base64.b64encode(b"\xfb\xff")
    for size in (1, 7, 100, 1000, 10_000):
        pieces = [bytes(p) for p in chunks(parts, size)]
        assert b"".join(pieces) == whole
        assert all(pieces)
        # Large parts are sliced, small ones gathered up to about ``size``.
        assert all(len(p) < 2 * size for p in pieces)
        assert len(pieces) <= 2 * (len(whole) // size + 1) + len(parts)
