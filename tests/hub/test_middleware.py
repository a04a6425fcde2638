"""The request middleware on its own: what it records for answers that do not finish."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from hub.context import METRICS
from hub.metrics import Metrics
from hub.middleware import CLIENT_GONE, problem_middleware


@pytest.mark.asyncio
async def test_client_gone_is_not_counted_as_our_error(caplog: pytest.LogCaptureFixture) -> None:
    """A streamed answer whose client disconnects is counted as 499, not as a 500 of ours,
    and leaves no traceback in the log; a handler that breaks its own answer (the
    connection still open) is still our error."""
    headers_sent = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 1 << 30
        await response.prepare(request)
        headers_sent.set()
        while True:  # until the client is gone (aiohttp cancels the handler, or a write fails)
            await response.write(b"x" * 65536)

    async def breaks(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 100
        await response.prepare(request)
        await response.write(b"x" * 10)
        raise ConnectionResetError("the blob is shorter than recorded")

    async def write_fails(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        assert request.transport is not None
        request.transport.close()  # the peer reset it before aiohttp cancelled us
        raise ConnectionResetError("Cannot write to closing transport")

    app = web.Application(middlewares=[problem_middleware])
    app[METRICS] = metrics = Metrics()
    app.router.add_get("/stream", stream)
    app.router.add_get("/breaks", breaks)
    app.router.add_get("/write-fails", write_fails)
    async with TestClient(TestServer(app)) as client:
        server = client.server
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"GET /stream HTTP/1.1\r\nHost: hub\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(headers_sent.wait(), 5)
        await reader.read(1000)
        writer.close()
        await writer.wait_closed()

        def count(route: str, status: int) -> float | None:
            return metrics.registry.get_sample_value(
                "lienthong_http_requests_total",
                {"route": route, "method": "GET", "status": str(status)},
            )

        for _ in range(100):
            if count("/stream", CLIENT_GONE):
                break
            await asyncio.sleep(0.05)
        assert count("/stream", CLIENT_GONE) == 1
        assert count("/stream", 500) is None
        assert "Error handling request" not in caplog.text

        with pytest.raises(aiohttp.ClientError):
            await (await client.get("/write-fails")).read()
        assert count("/write-fails", CLIENT_GONE) == 1

        resp = await client.get("/breaks")
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert count("/breaks", CLIENT_GONE) is None
    assert count("/breaks", 500) == 1
