"""HTTP API of the audit log, under ``/v1/log``.

==========================================  ================  ==================================
``GET  /v1/log/checkpoint``                 anyone            the signed note (text/plain),
                                                              witness cosignatures appended;
                                                              ``?size=N`` a past checkpoint,
                                                              ``?min_cosignatures=K`` the newest
                                                              with at least K cosignatures
``GET  /v1/log/entries?start=&end=``        auditor, office   entries ``[start, end)``, at most
                                                              1,000 (fewer past ~4 MiB); JSON
                                                              base64, or CBOR on
                                                              ``Accept: application/cbor``
``GET  /v1/log/proof/inclusion``            auditor, office   ``?index=&size=``
``GET  /v1/log/proof/consistency``          auditor, office   ``?old=&new=``
``GET  /v1/log/packets/{id}/bundle``        auditor, office   the packet's proof bundle (id:
                                            (party only)      32 hex digits or UUID text;
                                                              application/cbor, see
                                                              :mod:`protocol.bundle`);
                                                              ``?size=N`` against that checkpoint
``POST /v1/log/cosignatures``               office, auditor   a witness's cosigned checkpoint
                                                              note (text/plain)
==========================================  ================  ==================================

JSON bodies carry bytes as standard base64; CBOR bodies (deterministic) carry them as byte
strings, with the same keys.  Every refusal is a problem body from a
:class:`~protocol.errors.RemoteError`: bad query parameters are ``request_invalid``; sizes
and indexes outside the tree, a size the log signed no checkpoint for, and a
``min_cosignatures`` no checkpoint has yet are ``tree_size_invalid``; no input makes a
handler answer 500.  The one exception: before the log's first checkpoint (the sequencer
signs the empty tree as the hub starts) ``/v1/log/checkpoint`` answers 503 with
``Retry-After``.

An office may fetch only bundles of packets it is a party to -- the sender and addressed
recipients of the packet's ``packet_accepted`` event, or an organ that fetched, answered or
was mailed it (:func:`hub.auditlog.store.packet_parties`); any other packet is
``packet_unknown``, as if it did not exist.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from protocol.checkpoint import CosignatureVerifier
from protocol.codec import encode
from protocol.errors import RemoteError

from . import store

#: Roles that may read the log beyond the public checkpoint.
READERS: Final = frozenset({"auditor", "office"})
#: Roles whose members may cosign checkpoints as witnesses.
WITNESSES: Final = frozenset({"office", "auditor"})
#: Largest cosigned note accepted.
COSIGNATURE_BODY_MAX: Final = 64 * 1024

_UINT: Final = re.compile(r"[0-9]{1,19}")
_PACKET_HEX: Final = re.compile(r"[0-9a-f]{32}")
_PACKET_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_CBOR: Final = "application/cbor"


class Caller(Protocol):
    """Who is calling, as the bearer token says (``hub.sessions.Caller`` is one)."""

    @property
    def organ(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def kid(self) -> bytes | None: ...


#: Checks the request's bearer token and role; returns the caller or raises a RemoteError
#: (``token_missing``, ``token_invalid``, ``role_forbidden``).  Supplied by the app.
Authorize = Callable[[web.Request, frozenset[str]], Awaitable[Caller]]

#: The cosignature verifiers of a caller's witness key(s), from the directory.
WitnessKeys = Callable[[Caller], Awaitable[Sequence[CosignatureVerifier]]]


@dataclass(frozen=True, slots=True)
class LogApi:
    """What the handlers need, stored in the app under :data:`hub.auditlog.app.LOG_API`."""

    engine: Callable[[], AsyncEngine]
    authorize: Authorize
    witness_keys: WitnessKeys
    known_size: store.KnownSize = field(default_factory=store.KnownSize)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ApiGetter = Callable[[web.Request], LogApi]


def problem(exc: RemoteError) -> web.Response:
    """The JSON problem response of a remote error."""
    return web.json_response(
        exc.to_problem(), status=exc.status, content_type="application/problem+json"
    )


def _guard(
    handler: Callable[[web.Request, LogApi], Awaitable[web.StreamResponse]], api: ApiGetter
) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request, api(request))
        except RemoteError as exc:
            return problem(exc)

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


# --- parameters and bodies ----------------------------------------------------------------


def _uint(request: web.Request, name: str, *, required: bool = True) -> int | None:
    values = request.query.getall(name, [])
    if not values:
        if required:
            raise RemoteError("request_invalid", f"query parameter {name} is required")
        return None
    if len(values) > 1:
        raise RemoteError("request_invalid", f"query parameter {name} is given twice")
    value = values[0]
    if _UINT.fullmatch(value) is None or int(value) >= 1 << 63:
        raise RemoteError("request_invalid", f"{name} must be a decimal integer from 0 to 2^63-1")
    return int(value)


def _req(request: web.Request, name: str) -> int:
    value = _uint(request, name)
    assert value is not None
    return value


async def _read_limited(request: web.Request, limit: int) -> bytes:
    too_large = RemoteError("size_limit_exceeded", f"the request body exceeds {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    body = bytearray()
    while chunk := await request.content.read(limit + 1 - len(body)):
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _wants_cbor(request: web.Request) -> bool:
    return _CBOR in request.headers.get("Accept", "")


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _respond(request: web.Request, body: dict[str, Any]) -> web.Response:
    """JSON (bytes as base64), or deterministic CBOR when the client asks for it."""
    if _wants_cbor(request):
        return web.Response(body=encode(body), content_type=_CBOR)
    return web.Response(
        text=json.dumps(_jsonable(body), separators=(",", ":")), content_type="application/json"
    )


# --- handlers -----------------------------------------------------------------------------


async def get_checkpoint(request: web.Request, api: LogApi) -> web.StreamResponse:
    """The newest signed checkpoint, or the one of ``size``, as a C2SP signed note."""
    size = _uint(request, "size", required=False)
    min_cosigned = _uint(request, "min_cosignatures", required=False)
    if size is not None and min_cosigned is not None:
        raise RemoteError("request_invalid", "give size or min_cosignatures, not both")
    async with store.reading(api.engine()) as conn:
        if min_cosigned:
            cosigned = await store.latest_cosigned_checkpoint(conn, min_cosigned)
            if cosigned is None:
                raise RemoteError(
                    "tree_size_invalid",
                    f"no stored checkpoint has {min_cosigned} witness cosignatures yet",
                )
            size = cosigned.size
        published = await store.published_checkpoint(conn, size)
    if published is None:
        if size is not None:
            raise RemoteError("tree_size_invalid", f"the log signed no checkpoint of size {size}")
        raise web.HTTPServiceUnavailable(
            text="the log has signed no checkpoint yet", headers={"Retry-After": "1"}
        )
    checkpoint, note = published
    return web.Response(
        text=note,
        content_type="text/plain",
        charset="utf-8",
        headers={"Cache-Control": "no-cache", "X-Tree-Size": str(checkpoint.size)},
    )


async def get_entries(request: web.Request, api: LogApi) -> web.StreamResponse:
    """Entries ``[start, end)``, clamped to the tree and the page bounds."""
    await api.authorize(request, READERS)
    start, end = _req(request, "start"), _req(request, "end")
    async with store.reading(api.engine()) as conn:
        entries = await store.get_entries(conn, start, end)
    return _respond(request, {"start": start, "entries": entries})


async def get_inclusion(request: web.Request, api: LogApi) -> web.StreamResponse:
    """Inclusion proof of leaf ``index`` in the tree of ``size``."""
    await api.authorize(request, READERS)
    index, size = _req(request, "index"), _req(request, "size")
    async with store.reading(api.engine()) as conn:
        proof = await store.inclusion(conn, index, size, api.known_size)
    return _respond(request, {"index": index, "size": size, "proof": proof})


async def get_consistency(request: web.Request, api: LogApi) -> web.StreamResponse:
    """Consistency proof from the tree of ``old`` to that of ``new``."""
    await api.authorize(request, READERS)
    old, new = _req(request, "old"), _req(request, "new")
    async with store.reading(api.engine()) as conn:
        proof = await store.consistency(conn, old, new, api.known_size)
    return _respond(request, {"old": old, "new": new, "proof": proof})


async def get_bundle(request: web.Request, api: LogApi) -> web.StreamResponse:
    """A packet's proof bundle against the newest checkpoint (or the one of ``size``)."""
    caller = await api.authorize(request, READERS)
    text = request.match_info["packet_id"].lower()
    if _PACKET_HEX.fullmatch(text) is None and _PACKET_UUID.fullmatch(text) is None:
        raise RemoteError("packet_id_invalid", "the packet id must be 32 hex digits or a UUID")
    packet_id = bytes.fromhex(text.replace("-", ""))
    size = _uint(request, "size", required=False)
    async with store.reading(api.engine()) as conn:
        bundle = await store.packet_bundle(conn, packet_id, size)
    if bundle is None or (caller.role == "office" and caller.organ not in bundle.parties):
        raise RemoteError("packet_unknown", f"no logged event of packet {text} is visible")
    return web.Response(
        body=bundle.data,
        content_type=_CBOR,
        headers={
            "X-Tree-Size": str(bundle.size),
            "Content-Disposition": f'attachment; filename="{packet_id.hex()}.bundle"',
        },
    )


async def post_cosignature(request: web.Request, api: LogApi) -> web.StreamResponse:
    """Store the caller's witness cosignature on a checkpoint the log signed."""
    caller = await api.authorize(request, WITNESSES)
    body = await _read_limited(request, COSIGNATURE_BODY_MAX)
    verifiers = await api.witness_keys(caller)
    if not verifiers:
        raise RemoteError("role_forbidden", "the caller has no valid key to cosign with")
    async with api.engine().begin() as conn:
        size, names = await store.store_cosignature(conn, body, caller.organ, verifiers)
    return web.json_response({"size": size, "witnesses": names})


def make_routes(api: ApiGetter) -> list[web.RouteDef]:
    """The route table; ``api`` finds the :class:`LogApi` for a request (in its app)."""
    return [
        web.get("/v1/log/checkpoint", _guard(get_checkpoint, api), allow_head=False),
        web.get("/v1/log/entries", _guard(get_entries, api), allow_head=False),
        web.get("/v1/log/proof/inclusion", _guard(get_inclusion, api), allow_head=False),
        web.get("/v1/log/proof/consistency", _guard(get_consistency, api), allow_head=False),
        web.get("/v1/log/packets/{packet_id}/bundle", _guard(get_bundle, api), allow_head=False),
        web.post("/v1/log/cosignatures", _guard(post_cosignature, api)),
    ]
