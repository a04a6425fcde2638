"""Receipt endpoint: office receipts posted in batches."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from protocol.errors import RemoteError
from protocol.receipts import RECEIPT_MAX

from .. import deliveries
from ..context import hub_of
from .common import b64decode, json_response, read_json, require

routes = web.RouteTableDef()
BATCH_MAX: Final = 1000


@routes.post("/v1/receipts")
async def post(request: web.Request) -> web.Response:
    caller = await require(request, "office")
    doc = await read_json(request, max_size=BATCH_MAX * RECEIPT_MAX // 4)
    items = doc.get("receipts")
    if not isinstance(items, list) or not items or len(items) > BATCH_MAX:
        raise RemoteError("request_invalid", f"receipts must list 1 to {BATCH_MAX} receipts")
    raws = [b64decode(item, "receipts[]", max_size=RECEIPT_MAX) for item in items]
    results = await deliveries.post_receipts(hub_of(request), caller, raws)
    return json_response({"results": results})
