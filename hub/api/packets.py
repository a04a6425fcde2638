"""Packet endpoints: envelope submission, body upload, batches, status."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

from aiohttp import web

from protocol.codec import decode
from protocol.errors import RemoteError

from .. import deliveries, packets
from ..context import hub_of
from .common import READ_CHUNK, json_response, packet_id_from, read_limited, require

routes = web.RouteTableDef()
CBOR: Final = "application/cbor"


def _answer(answer: packets.Answer) -> web.Response:
    return json_response(answer.doc, status=answer.status)


@routes.post("/v1/packets")
async def submit(request: web.Request) -> web.Response:
    caller = await require(request, "office")
    hub = hub_of(request)
    data = await read_limited(request, hub.limits.envelope_max)
    return _answer(await packets.submit_envelope(hub, caller, data))


@routes.put("/v1/packets/{id}/body")
async def upload(request: web.Request) -> web.Response:
    caller = await require(request, "office")
    packet_id = packet_id_from(request.match_info["id"])

    async def chunks() -> AsyncIterator[bytes]:
        async for chunk in request.content.iter_chunked(READ_CHUNK):
            yield chunk

    return _answer(await packets.upload_body(hub_of(request), caller, packet_id, chunks()))


@routes.post("/v1/packets/batch")
async def batch(request: web.Request) -> web.Response:
    caller = await require(request, "office")
    hub = hub_of(request)
    data = await read_limited(request, hub.settings.batch_request_max)
    items = decode(data, max_size=hub.settings.batch_request_max, max_depth=3)
    if not isinstance(items, list) or not items:
        raise RemoteError("request_invalid", "a batch is a CBOR array of [envelope, body] pairs")
    if len(items) > hub.settings.batch_items_max:
        raise RemoteError(
            "size_limit_exceeded", f"a batch holds at most {hub.settings.batch_items_max} packets"
        )
    pairs: list[tuple[bytes, bytes]] = []
    for item in items:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(isinstance(part, bytes) for part in item)
        ):
            raise RemoteError("request_invalid", "each batch item is [envelope bytes, body bytes]")
        pairs.append((item[0], item[1]))
    results: list[dict[str, Any]] = await packets.submit_batch(hub, caller, pairs)
    return json_response({"results": results})


@routes.get("/v1/packets/{id}/status")
async def status(request: web.Request) -> web.Response:
    caller = await require(request, "office", "auditor")
    packet_id = packet_id_from(request.match_info["id"])
    return json_response(await deliveries.packet_status(hub_of(request), caller, packet_id))
