"""Unauthenticated endpoints: liveness, readiness, metrics and the OpenAPI file."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Final

from aiohttp import web
from sqlalchemy import text

from ..context import METRICS, hub_of
from ..logs import get_logger
from ..metrics import CONTENT_TYPE

routes = web.RouteTableDef()
OPENAPI_FILE: Final = Path(__file__).resolve().parent.parent / "openapi.json"
OPENAPI: Final = web.AppKey("openapi", bytes)
log = get_logger("hub.health")


@routes.get("/healthz")
async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    hub = hub_of(request)
    try:
        async with asyncio.timeout(2), hub.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure means not ready
        log.warning("database not reachable", error=type(exc).__name__)
        return web.json_response({"status": "unavailable", "database": "unreachable"}, status=503)
    return web.json_response({"status": "ready"})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@routes.get("/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")
