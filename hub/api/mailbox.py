"""Mailbox endpoints: long-poll for what arrived, acknowledge what was stored."""

from __future__ import annotations

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
    hub = hub_of(request)
    wait = int_query(request, "wait", 0, 0, WAIT_MAX)
    limit_max = hub.settings.mailbox_limit_max
    limit = int_query(request, "limit", min(100, limit_max), 1, limit_max)
    items = await mailbox.long_poll(hub, caller.organ, wait, limit)
    parts = to_json({"items": items})
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


@routes.post("/v1/mailbox/ack")
async def ack(request: web.Request) -> web.Response:
    caller = await require(request, "office")
    doc = await read_json(request)
    ids = doc.get("ids")
    if (
        not isinstance(ids, list)
        or len(ids) > mailbox.ACK_MAX
        or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**63 for i in ids)
    ):
        raise RemoteError(
            "request_invalid", f"ids must be a list of at most {mailbox.ACK_MAX} item ids"
        )
    removed = await mailbox.ack(hub_of(request), caller.organ, ids)
    return json_response({"acknowledged": removed})
