"""Body download: sendfile(2), the fallback without it, and a blob shorter than stored."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import aiohttp
import pytest

from protocol.packet import parse_envelope

from .helpers import HubEnv, send, world

pytestmark = pytest.mark.asyncio


async def _status(env: HubEnv, w: Any, packet_id: str) -> Any:
    resp = await env.client.get(f"/v1/packets/{packet_id}/status", headers=w.province.headers)
    return (await resp.json())["recipients"][0]


@pytest.mark.parametrize("sendfile", [True, False])
async def test_whole_and_ranged_downloads(
    hub_env: HubEnv, monkeypatch: pytest.MonkeyPatch, sendfile: bool
) -> None:
    env = hub_env
    w = await world(env)
    data = bytes(range(256)) * 5000  # more than one read piece of the fallback
    _, envelope, body = await send(env, w.province, [w.yen_lac], data=data)
    if not sendfile:

        async def unsupported(*_args: Any, **_kw: Any) -> int:
            raise NotImplementedError

        monkeypatch.setattr(asyncio.get_running_loop(), "sendfile", unsupported)
    url = f"/v1/bodies/{parse_envelope(envelope).body_info.sha256.hex()}"
    h = w.yen_lac.headers
    resp = await env.client.get(url, headers=h)
    assert (resp.status, resp.headers["Content-Length"]) == (200, str(len(body)))
    assert await resp.read() == body
    resp = await env.client.get(url, headers={**h, "Range": "bytes=1000-300000"})
    assert (resp.status, await resp.read()) == (206, body[1000:300001])


async def test_a_blob_shorter_than_recorded_breaks_the_answer(hub_env: HubEnv) -> None:
    env = hub_env
    w = await world(env)
    answer, envelope, _ = await send(env, w.province, [w.yen_lac], data=b"x" * 200_000)
    blobs = env.hub.blobs
    real = blobs.size
    blobs.size = lambda digest: (real(digest) or 0) + 10  # type: ignore[method-assign]
    digest = parse_envelope(envelope).body_info.sha256.hex()
    resp = await env.client.get(f"/v1/bodies/{digest}", headers=w.yen_lac.headers)
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    await asyncio.sleep(0.2)
    assert (await _status(env, w, answer["packet_id"]))["fetched_at"] is None


async def test_a_handler_cancelled_while_the_blob_opens_closes_it(
    hub_env: HubEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The executor finishes opening after the handler is gone: the file is closed anyway."""
    from hub.api.bodies import _open_blob

    env = hub_env
    w = await world(env)
    _, envelope, _body = await send(env, w.province, [w.yen_lac])
    digest = parse_envelope(envelope).body_info.sha256
    blobs = env.hub.blobs
    release = threading.Event()
    opened: list[Any] = []
    real_open = blobs.open

    def slow_open(d: bytes) -> Any:
        release.wait(5)
        fh = real_open(d)
        opened.append(fh)
        return fh

    monkeypatch.setattr(blobs, "open", slow_open)
    task = asyncio.ensure_future(_open_blob(env.hub, digest))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    for _ in range(100):
        if opened and opened[0].closed:
            break
        await asyncio.sleep(0.02)
    assert opened
    assert opened[0].closed
