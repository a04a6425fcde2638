"""The hub client's error mapping and body download, against a small local server.

The real hub is exercised by the end-to-end tests; here a stand-in serves exactly the
answers whose handling is being checked (a problem body, a 502 from a proxy, a Range
request), which the real hub would not produce on demand.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from nodes.client import HubClient
from nodes.errors import HubError, HubUnavailable
from protocol.errors import RemoteError
from protocol.keys import SigningPrivateKey
from protocol.packet import BodyInfo

BODY = bytes(range(256)) * 1000 + b"tail"  # not a real STREAM body: only size and digest
INFO = BodyInfo(size=len(BODY), chunk=64 * 1024, sha256=hashlib.sha256(BODY).digest())
ranges: list[str | None] = []


async def problem(_request: web.Request) -> web.Response:
    return web.json_response(
        {"code": "route_not_allowed", "status": 403, "detail": "không được phép"}, status=403
    )


async def proxy_error(_request: web.Request) -> web.Response:
    return web.Response(status=502, text="Bad Gateway")


async def body(request: web.Request) -> web.Response:
    header = request.headers.get("Range")
    ranges.append(header)
    if header:
        start = int(header.removeprefix("bytes=").rstrip("-"))
        return web.Response(body=BODY[start:], status=206)
    return web.Response(body=BODY)


async def tampered(_request: web.Request) -> web.Response:
    return web.Response(body=BODY[:-1] + b"X")


@pytest_asyncio.fixture
async def server() -> AsyncIterator[TestServer]:
    app = web.Application()
    app.router.add_post("/v1/packets", problem)
    app.router.add_get("/v1/mailbox", proxy_error)
    app.router.add_get(f"/v1/bodies/{INFO.sha256.hex()}", body)
    app.router.add_get(f"/v1/bodies/{'00' * 32}", tampered)
    srv = TestServer(app)
    await srv.start_server()
    yield srv
    await srv.close()


def client(srv: TestServer) -> HubClient:
    c = HubClient(str(srv.make_url("")), organ="000.00.12.H41", signing_key=None)
    c._token = "test"
    return c


@pytest.mark.asyncio
async def test_a_problem_answer_is_a_hub_error_with_its_code(server: TestServer) -> None:
    async with client(server) as c:
        with pytest.raises(HubError) as err:
            await c.submit_envelope(b"\xa0")
    assert (err.value.code, err.value.status) == ("route_not_allowed", 403)
    assert err.value.detail == "không được phép"
    assert not err.value.transient


@pytest.mark.asyncio
async def test_a_proxy_error_means_unavailable(server: TestServer) -> None:
    async with client(server) as c:
        with pytest.raises(HubUnavailable):
            await c.mailbox()


@pytest.mark.asyncio
async def test_no_hub_at_all_means_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    c = HubClient(f"http://127.0.0.1:{port}", organ="X", signing_key=SigningPrivateKey.generate())
    async with c:
        with pytest.raises(HubUnavailable) as err:
            await c.mailbox()
    assert "cannot connect" in err.value.detail


@pytest.mark.asyncio
async def test_download_resumes_with_range(server: TestServer, tmp_path: Path) -> None:
    dest = tmp_path / "body.part"
    dest.write_bytes(BODY[:100_000])
    ranges.clear()
    async with client(server) as c:
        await c.download_body(INFO.sha256, INFO, dest)
    assert ranges == ["bytes=100000-"]
    assert dest.read_bytes() == BODY


@pytest.mark.asyncio
async def test_a_body_that_does_not_match_is_removed(server: TestServer, tmp_path: Path) -> None:
    dest = tmp_path / "body.part"
    info = BodyInfo(size=INFO.size, chunk=INFO.chunk, sha256=INFO.sha256)
    async with client(server) as c:
        with pytest.raises(RemoteError) as err:
            await c.download_body(bytes(32), info, dest)
    assert err.value.code == "body_digest_mismatch"
    assert not dest.exists()


def test_an_inline_body_is_checked_like_a_download() -> None:
    import base64

    from nodes.client import inline_body

    def item(data: object) -> dict[str, object]:
        return {
            "kind": "envelope",
            "body": {"sha256": INFO.sha256.hex(), "size": INFO.size, "data": data},
        }

    assert inline_body(item(base64.b64encode(BODY).decode()), INFO) == BODY
    # None: no inline body (a large one, an older hub), or one that is not base64 --
    # the node then downloads it.
    assert inline_body({"kind": "envelope", "body": {"sha256": "", "size": 1}}, INFO) is None
    assert inline_body({"kind": "envelope"}, INFO) is None
    assert inline_body(item("not base64!"), INFO) is None
    assert inline_body(item(12), INFO) is None
    # The wrong bytes are refused exactly as a downloaded body would be.
    for data, code in (
        (BODY[:-1] + b"X", "body_digest_mismatch"),
        (BODY + b"X", "body_extended"),
        (BODY[:-1], "truncated_body"),
    ):
        with pytest.raises(RemoteError) as caught:
            inline_body(item(base64.b64encode(data).decode()), INFO)
        assert caught.value.code == code
