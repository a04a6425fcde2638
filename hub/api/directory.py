"""Directory endpoints: signed entries for any authenticated caller; the hub's public keys
for anyone (a node compares them with the ones it pinned before it logs in, and an office
checks the authority fingerprint before it spends its one-time enrolment token).

Organ codes may hold ``/``: clients percent-encode it (``%2F``) in paths.
"""

from __future__ import annotations

from aiohttp import web

from protocol.directory import check_organ_code
from protocol.errors import RemoteError

from .. import directory
from ..clock import now
from ..context import hub_of
from .common import b64, int_query, json_response, require
from .sessions import hub_identity

routes = web.RouteTableDef()
ANY_ROLE = ("office", "auditor", "admin")
BATCH_MAX = 2000


@routes.get("/v1/directory/authority")
async def authority(request: web.Request) -> web.Response:
    return json_response(hub_identity(hub_of(request).keys))


@routes.get("/v1/directory")
async def batch(request: web.Request) -> web.Response:
    await require(request, *ANY_ROLE)
    raw = request.query.get("organs", "")
    codes = [c for c in raw.split(",") if c]
    if not codes or len(codes) > BATCH_MAX:
        raise RemoteError("request_invalid", f"organs must list 1 to {BATCH_MAX} codes")
    for code in codes:
        check_organ_code(code)
    async with hub_of(request).sessions() as session:
        found = await directory.signed_entries(session, codes)
    return json_response(
        {
            "entries": {code: b64(raw) for code, raw in sorted(found.items())},
            "unknown": sorted(set(codes) - set(found)),
        }
    )


@routes.get("/v1/directory/{organ}/children")
async def children(request: web.Request) -> web.Response:
    await require(request, *ANY_ROLE)
    code = check_organ_code(request.match_info["organ"])
    depth = int_query(request, "depth", 1, 1, directory.TREE_DEPTH_MAX)
    hub = hub_of(request)
    at = now()
    async with hub.sessions() as session:
        await directory.require_organ(session, code)
        codes = await directory.descendants(session, code, depth)
        found = await directory.signed_entries(session, codes)
    entries = []
    for organ, raw in sorted(found.items()):
        entry = hub.entries.verify(raw)
        if entry.valid_from <= at and (entry.valid_until is None or at < entry.valid_until):
            entries.append({"organ": organ, "parent": entry.parent, "entry": b64(raw)})
    return json_response({"organ": code, "depth": depth, "entries": entries})


@routes.get("/v1/directory/{organ}")
async def one(request: web.Request) -> web.Response:
    await require(request, *ANY_ROLE)
    code = check_organ_code(request.match_info["organ"])
    async with hub_of(request).sessions() as session:
        row = await directory.require_organ(session, code)
    if row.entry is None:
        raise RemoteError("organ_unknown", f"{code} has not enrolled keys yet")
    return json_response({"organ": code, "serial": row.serial, "entry": b64(row.entry)})
