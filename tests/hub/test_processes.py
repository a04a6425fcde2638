"""End to end with real ``lienthong-hub serve`` processes (slow).

* Two hub processes on one PostgreSQL and one data folder: a packet submitted to one wakes
  a long-poll waiting on the other within a second, and the audit log, sequenced by
  whichever process holds the lock, has every event exactly once, without gaps.
* SIGKILL in the middle of a large upload: after a restart no partial packet is visible
  and the upload can be retried.
* A key revoked through one process (the admin API) or the CLI: a session the other
  process remembers (its bearer-token cache) ends there at once.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hub.sessions import TOKEN_CACHE_TTL
from protocol.audit import parse_event

from .conftest import empty_tables
from .helpers import (
    ADMIN,
    PROVINCE,
    TAM_HONG,
    YEN_LAC,
    Office,
    Remote,
    eventually,
    mailbox,
    seal,
    send,
    submit,
    upload,
)
from .processes import HubProcess, cli, init, office_via_cli, remote

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


async def _log(api: Remote, reader_headers: dict[str, str]) -> list[bytes]:
    """Every entry of the log, through the API, page by page."""
    entries: list[bytes] = []
    while True:
        resp = await api.client.get(
            f"/v1/log/entries?start={len(entries)}&end={len(entries) + 1000}",
            headers=reader_headers,
        )
        if resp.status != 200:
            return entries
        page = [base64.b64decode(e) for e in (await resp.json())["entries"]]
        if not page:
            return entries
        entries.extend(page)


async def test_two_hub_processes_on_one_postgresql(pg_database: str, tmp_path: Path) -> None:
    await empty_tables(pg_database)
    data = tmp_path / "hub"
    await init(data, pg_database)
    first, second = HubProcess(data), HubProcess(data)
    await asyncio.gather(first.start(), second.start())
    a, b = remote(first.url, data), remote(second.url, data)
    try:
        province = await office_via_cli(
            a, data, PROVINCE, "Văn phòng Tỉnh ủy", "--level", "province"
        )
        yen_lac = await office_via_cli(
            b, data, YEN_LAC, "Đảng ủy xã Yên Lạc", "--parent", PROVINCE, "--level", "commune"
        )
        tam_hong = await office_via_cli(
            a, data, TAM_HONG, "Đảng ủy xã Tam Hồng", "--parent", PROVINCE, "--level", "commune"
        )
        # A long-poll waits on the second process; the packet goes to the first.
        waiting = asyncio.create_task(mailbox(b, yen_lac, wait=30))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        envelope, body = seal(province, [yen_lac])
        status, doc = await submit(a, province, envelope)
        assert status == 202
        status, doc = await upload(a, province, doc["packet_id"], body)
        accepted_at = time.monotonic()
        assert status == 200
        assert doc["receipt"]
        items = await asyncio.wait_for(waiting, 10)
        latency = time.monotonic() - accepted_at
        assert [base64.b64decode(i["envelope"]) for i in items] == [envelope]
        assert latency < 1.0, f"woken after {latency:.3f} s"
        sent_ids = [doc["packet_id"]]
        # The next long-polls acknowledge what came (the second process then knows the
        # mailbox empty and waits without reading it) and are still woken, by a packet
        # submitted to the other process and by one submitted to their own.
        for api in (a, b):
            acked = [i["id"] for i in items]
            waiting = asyncio.create_task(
                b.client.post(
                    "/v1/mailbox",
                    params={"wait": "30"},
                    json={"ack": acked},
                    headers=yen_lac.headers,
                )
            )
            await asyncio.sleep(0.5)
            assert not waiting.done()
            envelope, body = seal(province, [yen_lac])
            status, doc = await submit(api, province, envelope)
            assert status == 202
            sent_ids.append(doc["packet_id"])
            status, doc = await upload(api, province, doc["packet_id"], body)
            sent_at = time.monotonic()
            resp = await asyncio.wait_for(waiting, 10)
            latency = time.monotonic() - sent_at
            answer = await resp.json()
            assert answer["acknowledged"] == len(acked)
            items = answer["items"]
            assert [base64.b64decode(i["envelope"]) for i in items] == [envelope]
            assert latency < 1.0, f"woken after {latency:.3f} s"
        # Many packets through both processes at once: the log has each event once.
        sends = [
            send(api, province, [yen_lac, tam_hong], data=f"Công văn {i}".encode())
            for i, api in zip(range(20), [a, b] * 10, strict=True)
        ]
        answers = await asyncio.gather(*sends)
        packet_ids = {doc["packet_id"] for doc, _, _ in answers} | set(sent_ids)

        async def complete() -> list[bytes]:
            for _ in range(100):
                entries = await _log(a, province.headers)
                kinds = [parse_event(e).kind for e in entries]
                if kinds.count("packet_accepted") == len(packet_ids):
                    return entries
                await asyncio.sleep(0.1)
            raise AssertionError("the log did not catch up")

        entries = await complete()
        accepted = [
            parse_event(e).fields["packet_id"]
            for e in entries
            if parse_event(e).kind == "packet_accepted"
        ]
        assert len(accepted) == len(set(accepted)) == 23
        assert len(entries) == len(set(entries))
        # Every answer carried a hub receipt whose log index is that of its event.
        from protocol.receipts import parse_hub_receipt

        for doc, _, _ in answers:
            receipt = parse_hub_receipt(base64.b64decode(doc["receipt"])).receipt
            event = parse_event(entries[receipt.log_index])
            assert event.kind == "packet_accepted"
            assert event.fields["packet_id"] == receipt.packet_id
    finally:
        await a.client.close()
        await b.client.close()
        await asyncio.gather(first.stop(), second.stop())


async def _slow_body(body: bytes, sent: asyncio.Event, kill_after: int) -> AsyncIterator[bytes]:
    step = 256 * 1024
    for offset in range(0, len(body), step):
        yield body[offset : offset + step]
        if offset >= kill_after:
            sent.set()
            await asyncio.sleep(0.05)


async def test_sigkill_during_upload_then_retry(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    await init(data)
    hub = HubProcess(data)
    await hub.start()
    api = remote(hub.url, data)
    try:
        province = await office_via_cli(api, data, PROVINCE, "Văn phòng Tỉnh ủy")
        yen_lac = await office_via_cli(
            api, data, YEN_LAC, "Đảng ủy xã Yên Lạc", "--parent", PROVINCE
        )
        envelope, body = seal(province, [yen_lac], data=os.urandom(24 * 1024 * 1024))
        status, doc = await submit(api, province, envelope)
        assert status == 202
        packet_id = doc["packet_id"]
        sent = asyncio.Event()
        upload_task = asyncio.create_task(
            api.client.put(
                f"/v1/packets/{packet_id}/body",
                data=_slow_body(body, sent, kill_after=8 * 1024 * 1024),
                headers={**province.headers, "Content-Type": "application/octet-stream"},
            )
        )
        await asyncio.wait_for(sent.wait(), 60)
        hub.kill()
        assert await hub.wait() == -9
        with pytest.raises(Exception):  # noqa: B017, PT011 - the connection is gone, whatever the error
            await upload_task
        # Whatever was half written is only a temp file: no blob, nothing accepted.
        blobs = data / "blobs"
        assert not [p for p in blobs.rglob("*") if p.is_file() and p.parent.name != "tmp"]
        await api.client.close()

        hub = HubProcess(data)
        await hub.start()
        api = remote(hub.url, data)
        assert await mailbox(api, yen_lac) == []
        status, doc = await submit(api, province, envelope)
        assert (status, doc["state"]) == (202, "awaiting_body")
        status, doc = await upload(api, province, packet_id, body)
        assert status == 200, doc
        assert doc["receipt"]
        items = await mailbox(api, yen_lac)
        assert [base64.b64decode(i["envelope"]) for i in items] == [envelope]
        resp = await api.client.get(items[0]["body"]["url"], headers=yen_lac.headers)
        assert await resp.read() == body
    finally:
        await api.client.close()
        await hub.stop()


async def _refused_after(api: Remote, office: Office, stop: asyncio.Event) -> float:
    """Poll the mailbox until the session is refused; the monotonic time it was."""
    while True:
        resp = await api.client.get("/v1/mailbox", headers=office.headers)
        if resp.status == 401:
            assert (await resp.json())["code"] == "token_invalid"
            return time.monotonic()
        assert resp.status == 200
        if stop.is_set():
            raise AssertionError("the session was still accepted")
        await asyncio.sleep(0.02)


async def test_revocation_reaches_every_hub_process(pg_database: str, tmp_path: Path) -> None:
    await empty_tables(pg_database)
    data = tmp_path / "hub"
    await init(data, pg_database)
    first, second = HubProcess(data), HubProcess(data)
    await asyncio.gather(first.start(), second.start())
    a, b = remote(first.url, data), remote(second.url, data)
    try:
        admin = await office_via_cli(a, data, ADMIN, "Quản trị hệ thống", "--role", "admin")
        yen_lac = await office_via_cli(a, data, YEN_LAC, "Đảng ủy xã Yên Lạc")
        tam_hong = await office_via_cli(a, data, TAM_HONG, "Đảng ủy xã Tam Hồng")
        # The second process looks Yên Lạc's session up and remembers it ...
        assert await mailbox(b, yen_lac) == []
        resp = await a.client.post(
            "/v1/admin/revoke", json={"organ": YEN_LAC}, headers=admin.headers
        )
        assert resp.status == 200
        revoked = time.monotonic()
        # ... and forgets it when the first revokes the key (NOTIFY), not at the TTL.
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(TOKEN_CACHE_TTL, stop.set)
        assert await _refused_after(b, yen_lac, stop) - revoked < TOKEN_CACHE_TTL
        # The CLI revokes too, and tells the running processes (they log hearing it).
        dropped = "sessions changed: remembered bearer tokens dropped"
        heard = sum(line.get("event") == dropped for line in second.lines)
        stop = asyncio.Event()
        polling = asyncio.create_task(_refused_after(b, tam_hong, stop))
        await asyncio.sleep(0.1)
        assert not polling.done()
        await cli("revoke", "--data", str(data), TAM_HONG)
        done = time.monotonic()
        asyncio.get_running_loop().call_later(TOKEN_CACHE_TTL, stop.set)
        assert await polling - done < TOKEN_CACHE_TTL

        async def told() -> bool:
            return sum(line.get("event") == dropped for line in second.lines) > heard

        assert await eventually(told)
    finally:
        await a.client.close()
        await b.client.close()
        await asyncio.gather(first.stop(), second.stop())
