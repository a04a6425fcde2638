"""Request middleware: request ids, JSON problem answers, access logs and metrics.

Every answer carries ``X-Request-Id`` (the client's, if well-formed, else a new one).  A
:class:`RemoteError` becomes ``{"code", "status", "detail"}`` with its status; aiohttp's
own HTTP errors (unknown route, wrong method, body too large) become the same shape; any
other exception is our bug: a 500 ``internal`` with the request id, logged with its
traceback -- bad input never gets there.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Final

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from protocol.errors import RemoteError

from .api.common import CALLER, REQUEST_ID
from .context import METRICS
from .logs import get_logger

_RID_RE: Final = re.compile(r"[A-Za-z0-9._\-]{1,64}")
PROBLEM_TYPE: Final = "application/problem+json"
#: The status recorded (metrics, access log) for a request whose client disconnected or
#: whose handler was cancelled.
CLIENT_GONE: Final = 499
log = get_logger("hub.http")


def problem(code: str, status: int, detail: str) -> web.Response:
    return web.json_response(
        {"code": code, "status": status, "detail": detail},
        status=status,
        content_type=PROBLEM_TYPE,
    )


def _http_problem(exc: web.HTTPException) -> web.Response:
    if exc.status == 413:
        return problem("size_limit_exceeded", 413, "the request body is too large")
    reason = exc.reason or "request refused"
    code = {404: "route_unknown", 405: "method_not_allowed"}.get(exc.status, "request_invalid")
    return problem(code, exc.status, reason)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = request.headers.get("X-Request-Id", "")
    if _RID_RE.fullmatch(rid) is None:
        rid = uuid.uuid4().hex
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=rid)
    request[REQUEST_ID] = rid
    started = time.perf_counter()
    route = request.match_info.route.resource
    pattern = route.canonical if route is not None else "unmatched"
    status = 500
    try:
        response = await _answer(request, handler, rid, pattern)
        status = response.status
        return response
    except web.HTTPException as exc:  # passed through on purpose (see _answer)
        status = exc.status
        raise
    except asyncio.CancelledError:
        # aiohttp cancels the handler when its client disconnects (a long-poll given up, a
        # streamed answer abandoned), as does a server stopping: not an error of ours.
        status = CLIENT_GONE
        raise
    except ConnectionResetError:
        transport = request.transport
        if transport is not None and not transport.is_closing():
            raise  # a handler breaking its own answer on purpose (a blob shorter than recorded)
        # The client went away while a streamed answer (a large mailbox answer, a body)
        # was being written: not our error, and nothing to log a traceback for.  Counted
        # as 499 (as nginx does); the answer returned goes nowhere (aiohttp finds the
        # connection closed and only logs the access).
        status = CLIENT_GONE
        return web.Response(status=CLIENT_GONE)
    finally:
        elapsed = time.perf_counter() - started
        metrics = request.app[METRICS]
        metrics.requests.labels(pattern, request.method, str(status)).inc()
        metrics.latency.labels(pattern).observe(elapsed)
        log.info(
            "request",
            method=request.method,
            route=pattern,
            status=status,
            ms=round(elapsed * 1000, 1),
            organ=getattr(request.get(CALLER), "organ", None),
        )


async def _answer(
    request: web.Request, handler: Handler, rid: str, pattern: str
) -> web.StreamResponse:
    response: web.StreamResponse
    try:
        response = await handler(request)
    except RemoteError as exc:
        response = problem(exc.code, exc.status, exc.detail)
    except web.HTTPException as exc:
        # aiohttp's own refusals (no such route, wrong method, body too large) get the
        # problem shape; an HTTP error a handler raised on purpose passes as it is.
        own = request.match_info.http_exception is not None or exc.status == 413
        if exc.status < 400 or not own:
            raise
        response = _http_problem(exc)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error", route=pattern, method=request.method)
        response = problem("internal", 500, f"internal error (request id {rid})")
    if not response.prepared:
        response.headers["X-Request-Id"] = rid
    return response
