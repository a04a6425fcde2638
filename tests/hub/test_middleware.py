"""The request middleware on its own: what it records for answers that do not finish."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from hub.context import METRICS
from hub.metrics import Metrics
from hub.middleware import CLIENT_GONE, problem_middleware


async def _gone(_request: web.Request) -> web.StreamResponse:
    raise ConnectionResetError("the client went away")


async def _broken(_request: web.Request) -> web.StreamResponse:
    raise ValueError("a bug")


@pytest.mark.asyncio
async def test_client_gone_is_not_counted_as_our_error(caplog: pytest.LogCaptureFixture) -> None:
    """A handler that finds its client gone (a write raising ConnectionResetError) is
    counted as 499, not as a 500 of ours, and leaves no traceback in the log."""
    app = web.Application(middlewares=[problem_middleware])
    app[METRICS] = metrics = Metrics()
    app.router.add_get("/gone", _gone)
    app.router.add_get("/broken", _broken)
    async with TestClient(TestServer(app)) as client:
        # Here the client is still there to see what is answered; a real one is gone.
        resp = await client.get("/gone")
        assert resp.status == CLIENT_GONE
        resp = await client.get("/broken")
        assert resp.status == 500
        assert (await resp.json())["code"] == "internal"

    def count(route: str, status: int) -> float | None:
        return metrics.registry.get_sample_value(
            "lienthong_http_requests_total",
            {"route": route, "method": "GET", "status": str(status)},
        )

    assert count("/gone", CLIENT_GONE) == 1
    assert count("/gone", 500) is None
    assert count("/broken", 500) == 1
    assert "Error handling request" not in caplog.text
