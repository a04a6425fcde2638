"""Mailbox endpoints: long-poll for what arrived, acknowledge what was stored."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from protocol.errors import RemoteError

from .. import mailbox
from ..context import hub_of
from ..mailcache import CHUNK, chunks, to_json
from .common import REQUEST_ID, int_query, json_response, read_json, require

routes = web.RouteTableDef()
WAIT_MAX = 60


@routes.get("/v1/mailbox")
async def poll(request: web.Request) -> web.StreamResponse:
    caller = await require(request, "office")
    return await _items(request, caller.organ, *_window(request), {})


@routes.post("/v1/mailbox")
async def ack_and_poll(request: web.Request) -> web.StreamResponse:
    """Acknowledge the items of the previous answer, then long-poll: one request per
    answer instead of two (a delivery costs the hub and the office a request less)."""
    caller = await require(request, "office")
    window = _window(request)  # checked first: a refused request acknowledges nothing
    ids = _ids(await read_json(request), "ack")
    acknowledged = await mailbox.ack(hub_of(request), caller.organ, ids)
    return await _items(request, caller.organ, *window, {"acknowledged": acknowledged}, ids)


def _window(request: web.Request) -> tuple[int, int]:
    """The ``wait`` (seconds) and ``limit`` (items) of a long-poll."""
    limit_max = hub_of(request).settings.mailbox_limit_max
    return (
        int_query(request, "wait", 0, 0, WAIT_MAX),
        int_query(request, "limit", min(100, limit_max), 1, limit_max),
    )


async def _items(
    request: web.Request,
    organ: str,
    wait: int,
    limit: int,
    extra: dict[str, int],
    acknowledged: list[int] | None = None,
) -> web.StreamResponse:
    items = await mailbox.long_poll(hub_of(request), organ, wait, limit, acknowledged or ())
    parts = to_json({"items": items, **extra})
    size = sum(map(len, parts))
    if size <= CHUNK:
        return web.Response(body=b"".join(parts), content_type="application/json")
    # A large answer (a fan-out's envelope goes to every office at once) is written out
    # piece by piece, waiting for each connection to drain: the hub holds the cached
    # base64 once, not a copy per office in its socket buffers.
    response = web.StreamResponse()
    response.content_type = "application/json"
    response.content_length = size
    response.headers["X-Request-Id"] = request.get(REQUEST_ID, "")
    await response.prepare(request)
    for piece in chunks(parts):
        await response.write(piece)
    await response.write_eof()
    return response


def _ids(doc: dict[str, Any], key: str) -> list[int]:
    ids = doc.get(key)
    if (
        not isinstance(ids, list)
        or len(ids) > mailbox.ACK_MAX
        or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**63 for i in ids)
    ):
        raise RemoteError(
            "request_invalid", f"{key} must be a list of at most {mailbox.ACK_MAX} item ids"
        )
    return ids


@routes.post("/v1/mailbox/ack")
async def ack(request: web.Request) -> web.Response:
    caller = await require(request, "office")
    ids = _ids(await read_json(request), "ids")
    removed = await mailbox.ack(hub_of(request), caller.organ, ids)
    return json_response({"acknowledged": removed})
