"""Body download by digest, with ``Range`` for resumed transfers.

Only the packet's sender and its addressed recipients may download a body (auditors
never).  A recipient's download that delivers the last byte -- a whole body, or the final
range of a resumed one -- records ``fetched`` once (see :func:`hub.deliveries.record_fetch`).
Bodies of at most 64 KiB also come inline in mailbox answers (:mod:`hub.mailbox`), so
nodes seldom ask here for them.
"""

from __future__ import annotations

import asyncio
import re
from typing import BinaryIO, Final

from aiohttp import web

from protocol.errors import RemoteError

from .. import deliveries
from ..context import Hub, hub_of
from .common import REQUEST_ID, hexdecode, require

routes = web.RouteTableDef()
CHUNK: Final = 256 * 1024
_RANGE: Final = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end exclusive)`` of a single ``bytes=`` range, or None for the whole."""
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None or (not match.group(1) and not match.group(2)):
        raise RemoteError("range_invalid", "only a single bytes=START-END range is supported")
    first, last = match.group(1), match.group(2)
    if not first:  # the last N bytes
        suffix = int(last)
        if suffix == 0:
            raise RemoteError("range_invalid", "an empty suffix range")
        return max(0, size - suffix), size
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size or end <= start:
        raise RemoteError("range_invalid", f"the body has {size} bytes")
    return start, end


async def _send(
    request: web.Request, response: web.StreamResponse, fh: BinaryIO, start: int, count: int
) -> None:
    """``count`` bytes of ``fh`` from ``start``: by sendfile(2) when the transport allows.

    The kernel copies from the page cache to the socket (as :class:`web.FileResponse`
    does): no read into Python, no copy into the transport's buffer.  A TLS transport
    falls back to reading in pieces (asyncio's own fallback).
    """
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the connection is gone")
    try:
        sent = await asyncio.get_running_loop().sendfile(transport, fh, start, count)
    except (NotImplementedError, RuntimeError):  # a loop or transport without sendfile
        if transport.is_closing():
            raise ConnectionResetError("the connection is gone") from None
        sent = await _copy(response, fh, start, count)
    if sent < count:
        raise ConnectionResetError("the blob is shorter than recorded")


async def _copy(response: web.StreamResponse, fh: BinaryIO, start: int, count: int) -> int:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, fh.seek, start)
    sent = 0
    while sent < count:
        chunk = await loop.run_in_executor(None, fh.read, min(CHUNK, count - sent))
        if not chunk:
            break
        await response.write(chunk)
        sent += len(chunk)
    return sent


async def _open_blob(hub: Hub, digest: bytes) -> BinaryIO:
    """Open the blob in the executor; a handler cancelled meanwhile still closes it."""
    opening = asyncio.get_running_loop().run_in_executor(None, hub.blobs.open, digest)
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_opened)
        raise


def _close_opened(opening: asyncio.Future[BinaryIO]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


@routes.get("/v1/bodies/{digest}", allow_head=False)
async def download(request: web.Request) -> web.StreamResponse:
    caller = await require(request, "office")
    hub = hub_of(request)
    digest = hexdecode(request.match_info["digest"], "digest", 32)
    as_recipient, as_sender = await deliveries.readable_packets(hub, caller, digest)
    if not as_recipient and not as_sender:
        raise RemoteError("body_unknown")
    size = await hub.blocking(hub.blobs.size, digest)
    if size is None:
        raise RemoteError("body_unknown", "the body is no longer stored")
    try:
        wanted = parse_range(request.headers.get("Range"), size)
    except RemoteError as exc:
        return web.json_response(
            exc.to_problem(),
            status=exc.status,
            content_type="application/problem+json",
            headers={"Content-Range": f"bytes */{size}"},
        )
    start, end = wanted if wanted is not None else (0, size)
    response = web.StreamResponse(status=206 if wanted is not None else 200)
    response.content_type = "application/octet-stream"
    response.content_length = end - start
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["ETag"] = f'"{digest.hex()}"'
    response.headers["X-Request-Id"] = request.get(REQUEST_ID, "")
    if wanted is not None:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    fh = await _open_blob(hub, digest)
    try:
        await response.prepare(request)  # the headers go out at once (a StreamResponse)
        await _send(request, response, fh, start, end - start)
        await response.write_eof()
    finally:
        fh.close()  # a read-only file: no flush; at once, so a cancelled handler closes it too
    hub.metrics.body_bytes.labels("out").inc(end - start)
    if end == size and as_recipient:
        await deliveries.record_fetch(hub, caller.organ, as_recipient)
    return response
