"""Helpers shared by the API handlers: auth, JSON in and out, ids and base64.

Wire conventions (docs/api.md): JSON bodies; binary objects (envelopes, entries, receipts,
keys, signatures, challenges) as standard base64; packet ids as UUID text; digests and key
ids as lowercase hex.  Every malformed input is a ``request_invalid`` (or the protocol's
own code), never an exception escaping as a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Mapping
from typing import Any, Final

from aiohttp import web

from protocol.errors import RemoteError
from protocol.packet import check_packet_id

from ..clock import now
from ..context import hub_of
from ..directory import token_hash
from ..sessions import Caller, find_token

JSON_MAX: Final = 1024 * 1024
READ_CHUNK: Final = 256 * 1024
CALLER: Final = web.RequestKey("caller", Caller)
REQUEST_ID: Final = web.RequestKey("request_id", str)


async def require(request: web.Request, *roles: str) -> Caller:
    """The caller's verified session; ``role_forbidden`` unless its role is in ``roles``.

    The token's row comes from the process's token cache when it was looked up in the
    last seconds (:class:`hub.sessions.TokenCache`), else from the database without a
    transaction; expiry and revocation times are checked against the clock either way.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise RemoteError("token_missing")
    if scheme.lower() != "bearer" or not token.strip() or len(token) > 256:
        raise RemoteError("token_invalid", "use the header Authorization: Bearer <token>")
    hub = hub_of(request)
    digest = token_hash(token.strip())
    row = hub.tokens.get(digest)
    if row is None:
        generation = hub.tokens.generation
        async with hub.reader.connect() as conn:
            row = await find_token(conn, digest)
        if row is None:
            raise RemoteError("token_invalid", "the bearer token is unknown")
        hub.tokens.put(digest, row, generation)
    caller = row.caller(now())
    request[CALLER] = caller
    if caller.role not in roles:
        raise RemoteError("role_forbidden", f"the {caller.role} role may not do this")
    return caller


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The whole request body, refused with ``size_limit_exceeded`` past ``limit`` bytes."""
    too_large = RemoteError("size_limit_exceeded", f"the request body exceeds {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    body = bytearray()
    while chunk := await request.content.read(min(READ_CHUNK, limit + 1 - len(body))):
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


async def read_json(request: web.Request, max_size: int = JSON_MAX) -> dict[str, Any]:
    data = await read_limited(request, max_size)
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise RemoteError("request_invalid", "the body is not JSON") from None
    if not isinstance(value, dict):
        raise RemoteError("request_invalid", "the JSON body must be an object")
    return value


def text_field(doc: Mapping[str, Any], name: str, *, optional: bool = False) -> Any:
    value = doc.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise RemoteError("request_invalid", f"{name} must be a string")
    return value


def b64_field(doc: Mapping[str, Any], name: str, *, max_size: int = 1 << 20) -> bytes:
    return b64decode(text_field(doc, name), name, max_size=max_size)


def b64decode(value: Any, name: str, *, max_size: int = 1 << 20) -> bytes:
    if not isinstance(value, str) or len(value) > (max_size * 4) // 3 + 4:
        raise RemoteError("request_invalid", f"{name} must be base64 of at most {max_size} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RemoteError("request_invalid", f"{name} is not valid base64") from None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hex_field(doc: Mapping[str, Any], name: str, size: int) -> bytes:
    return hexdecode(text_field(doc, name), name, size)


def hexdecode(value: str, name: str, size: int) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise RemoteError("request_invalid", f"{name} must be hex") from None
    if len(raw) != size or value != raw.hex():
        raise RemoteError("request_invalid", f"{name} must be {size * 2} lowercase hex digits")
    return raw


def packet_id_from(value: str) -> bytes:
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise RemoteError("packet_id_invalid", "a packet id is a UUID") from None
    return check_packet_id(parsed.bytes)


def signatures_field(doc: Mapping[str, Any], name: str) -> dict[str, bytes]:
    value = doc.get(name)
    if not isinstance(value, dict) or not value or len(value) > 2:
        raise RemoteError("request_invalid", f"{name} must map ed25519 (and mldsa65) to base64")
    out: dict[str, bytes] = {}
    for alg, sig in value.items():
        if alg not in ("ed25519", "mldsa65"):
            raise RemoteError("signature_unexpected", f"unknown signature {str(alg)[:20]!r}")
        out[alg] = b64decode(sig, f"{name}.{alg}", max_size=8192)
    return out


def int_query(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RemoteError("request_invalid", f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise RemoteError("request_invalid", f"{name} must be from {lo} to {hi}")
    return value


def json_response(doc: Any, status: int = 200) -> web.Response:
    return web.json_response(doc, status=status)
