"""Enrolment and sessions: the only endpoints that authenticate by something else than a token.

``POST /v1/enrol`` carries a one-time enrolment token and a proof of possession of the new
signing key; the session endpoints carry a signed challenge.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from protocol.errors import RemoteError
from protocol.keys import KID_SIZE, EncryptionPublicKey, SigningPublicKey

from .. import directory, sessions
from ..clock import now
from ..context import hub_of
from ..hubkeys import HubKeys
from .common import (
    b64,
    b64_field,
    hex_field,
    json_response,
    read_json,
    signatures_field,
    text_field,
)

routes = web.RouteTableDef()


def _public_key(doc: dict[str, Any], name: str) -> tuple[str, bytes]:
    value = doc.get(name)
    if not isinstance(value, dict):
        raise RemoteError("request_invalid", f"{name} must be an object {{alg, pub}}")
    return text_field(value, "alg"), b64_field(value, "pub", max_size=4096)


def key_doc(alg: str, raw: bytes, kid: bytes) -> dict[str, str]:
    return {"alg": alg, "pub": b64(raw), "kid": kid.hex()}


def hub_identity(keys: HubKeys) -> dict[str, Any]:
    authority = keys.authority.public_key()
    hub_key = keys.hub.public_key()
    return {
        "authority": key_doc(authority.alg, authority.raw, authority.kid),
        "hub_key": key_doc(hub_key.alg, hub_key.raw, hub_key.kid),
    }


@routes.post("/v1/enrol")
async def enrol(request: web.Request) -> web.Response:
    hub = hub_of(request)
    doc = await read_json(request)
    token = text_field(doc, "token")
    organ = text_field(doc, "organ")
    if not token.isascii() or len(token) > 128 or not organ.isascii():
        raise RemoteError("enrolment_token_invalid")
    sign_alg, sign_pub = _public_key(doc, "signing_key")
    enc_alg, enc_pub = _public_key(doc, "encryption_key")
    enrolment = directory.Enrolment(
        token=token,
        organ=organ,
        signing_key=SigningPublicKey.from_raw(sign_alg, sign_pub),
        encryption_key=EncryptionPublicKey.from_raw(enc_alg, enc_pub),
        proof=signatures_field(doc, "proof"),
    )
    async with hub.sessions.begin() as session:
        entry = await directory.enrol(
            session, hub.keys, enrolment, hub.settings.key_lifetime, now()
        )
        serial = hub.entries.verify(entry).serial
        await hub.notifier.sessions_changed(session)  # superseded keys' sessions end
    hub.notifier.sessions_dropped()
    return json_response(
        {"organ": organ, "serial": serial, "entry": b64(entry), **hub_identity(hub.keys)},
        status=201,
    )


@routes.post("/v1/sessions/challenge")
async def challenge(request: web.Request) -> web.Response:
    hub = hub_of(request)
    doc = await read_json(request)
    organ = text_field(doc, "organ")
    async with hub.sessions.begin() as session:
        value, expires = await sessions.new_challenge(
            session, organ, hub.settings.challenge_lifetime, now()
        )
    return json_response({"challenge": b64(value), "expires": expires})


@routes.post("/v1/sessions")
async def open_session(request: web.Request) -> web.Response:
    hub = hub_of(request)
    doc = await read_json(request)
    organ = text_field(doc, "organ")
    kid = hex_field(doc, "kid", KID_SIZE)
    value = b64_field(doc, "challenge", max_size=64)
    signatures = signatures_field(doc, "signatures")
    at = now()
    async with hub.sessions.begin() as session:
        await sessions.consume_challenge(session, organ, value, at)
    async with hub.sessions.begin() as session:
        token, expires, role = await sessions.open_session(
            session,
            hub.entries,
            organ=organ,
            kid=kid,
            challenge=value,
            signatures=signatures,
            lifetime=hub.settings.token_lifetime,
            now=at,
        )
    return json_response(
        {"token": token, "token_type": "Bearer", "expires": expires, "organ": organ, "role": role},
        status=201,
    )
