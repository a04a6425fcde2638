"""Admin endpoints: the same operations as ``lienthong-hub enroll``, ``revoke`` and ``merge``."""

from __future__ import annotations

from aiohttp import web

from protocol.errors import LocalError, RemoteError

from .. import directory
from ..clock import now, vn_midnight
from ..context import hub_of
from .common import b64, json_response, read_json, require, text_field

routes = web.RouteTableDef()


@routes.post("/v1/admin/enrolments")
async def enrolments(request: web.Request) -> web.Response:
    await require(request, "admin")
    hub = hub_of(request)
    doc = await read_json(request)
    transports = doc.get("transports", ["http"])
    if not isinstance(transports, list) or not all(isinstance(t, str) for t in transports):
        raise RemoteError("request_invalid", "transports must be a list of strings")
    fields = directory.OrganFields(
        code=text_field(doc, "organ"),
        name=text_field(doc, "name"),
        parent=text_field(doc, "parent", optional=True),
        level=text_field(doc, "level", optional=True) or "other",
        role=text_field(doc, "role", optional=True) or "office",
        email=text_field(doc, "email", optional=True),
        transports=tuple(transports),
    )
    at = now()
    async with hub.sessions.begin() as session:
        organ, created = await directory.upsert_organ(session, hub.keys, fields, at)
        token, expires = await directory.issue_enrolment_token(
            session, organ.code, hub.settings.enrolment_token_lifetime, at
        )
    return json_response(
        {"organ": organ.code, "created": created, "token": token, "expires": expires},
        status=201,
    )


@routes.post("/v1/admin/revoke")
async def revoke(request: web.Request) -> web.Response:
    await require(request, "admin")
    hub = hub_of(request)
    doc = await read_json(request)
    organ = text_field(doc, "organ")
    kid = text_field(doc, "kid", optional=True)
    async with hub.sessions.begin() as session:
        entry = await directory.revoke(session, hub.keys, organ, kid, now())
        await hub.notifier.sessions_changed(session)  # every hub process drops its tokens
    hub.notifier.sessions_dropped()
    return json_response({"organ": organ, "entry": b64(entry)})


@routes.post("/v1/admin/merge")
async def merge(request: web.Request) -> web.Response:
    await require(request, "admin")
    hub = hub_of(request)
    doc = await read_json(request)
    old = text_field(doc, "organ")
    new = text_field(doc, "successor")
    day = text_field(doc, "from", optional=True)
    at = now()
    try:
        when = vn_midnight(day) if day is not None else at
    except LocalError as exc:
        raise RemoteError("request_invalid", str(exc)) from None
    async with hub.sessions.begin() as session:
        organ = await directory.merge(session, hub.keys, old, new, when, at)
    return json_response(
        {"organ": old, "successor": new, "valid_until": when, "entry": b64(organ.entry or b"")}
    )
