"""A body opened while it downloads (``mailbox.download_into``), against a stand-in hub.

The stand-in serves a real sealed body, honouring ``Range`` or not, or breaking the
connection half-way: the cases a resumed download must get right.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from nodes import transfer
from nodes.client import HubClient
from nodes.errors import HubError, HubUnavailable
from nodes.mailbox import download_into
from protocol.errors import RemoteError
from protocol.keys import EncryptionPrivateKey, SigningPrivateKey
from protocol.packet import DocumentMetadata, Opener, Recipient, parse_envelope, seal_packet

ORGAN = "000.00.12.H41"
KEY = EncryptionPrivateKey.generate()
DATA = bytes(range(256)) * 3000
ENVELOPE, BODY = seal_packet(
    sender="000.00.00.H41",
    signing_key=SigningPrivateKey.generate(),
    recipients=[Recipient(ORGAN, KEY.public_key())],
    metadata=DocumentMetadata(subject="Tài liệu", doc_type="CV"),
    files=[("Tài liệu.pdf", "application/pdf", DATA)],
)
DIGEST = parse_envelope(ENVELOPE).body_info.sha256
seen: list[str | None] = []
mode = {"range": True, "break": False, "tamper": False}


async def body(request: web.Request) -> web.StreamResponse:
    header = request.headers.get("Range")
    seen.append(header)
    data = BODY if not mode["tamper"] else BODY[:-1] + bytes([BODY[-1] ^ 1])
    start = int(header.removeprefix("bytes=").rstrip("-")) if header and mode["range"] else 0
    resp = web.StreamResponse(status=206 if start else 200)
    resp.content_length = len(data) - start
    await resp.prepare(request)
    if mode["break"]:
        await resp.write(data[start : start + 100_000])
        assert request.transport is not None
        request.transport.close()  # the connection breaks half-way
        return resp
    await resp.write(data[start:])
    await resp.write_eof()
    return resp


async def gone(_request: web.Request) -> web.Response:
    return web.json_response({"code": "body_unknown", "status": 404, "detail": "x"}, status=404)


@pytest_asyncio.fixture
async def server() -> AsyncIterator[TestServer]:
    app = web.Application()
    app.router.add_get(f"/v1/bodies/{DIGEST.hex()}", body)
    app.router.add_get(f"/v1/bodies/{'00' * 32}", gone)
    srv = TestServer(app)
    await srv.start_server()
    seen.clear()
    mode.update({"range": True, "break": False, "tamper": False})
    yield srv
    await srv.close()


def client(srv: TestServer) -> HubClient:
    c = HubClient(str(srv.make_url("")), organ=ORGAN, signing_key=None)
    c._token = "test"
    return c


def receiver(tmp_path: Path) -> transfer.BodyReceiver:
    opener = Opener(parse_envelope(ENVELOPE), organ=ORGAN, key=KEY)
    return transfer.BodyReceiver(opener, tmp_path / "p.body", tmp_path / "p.open")


def finish(rx: transfer.BodyReceiver, tmp_path: Path) -> bytes:
    rx.finish(tmp_path / "inbox", lambda files: {"files": files})
    return (tmp_path / "inbox" / "Tài liệu.pdf").read_bytes()


@pytest.mark.asyncio
@pytest.mark.parametrize("honoured", [True, False])
async def test_a_resumed_download_opens_the_whole_body(
    server: TestServer, tmp_path: Path, honoured: bool
) -> None:
    mode["range"] = honoured
    (tmp_path / "p.body").write_bytes(BODY[:300_000])
    rx = receiver(tmp_path)
    progress: list[tuple[int, int]] = []
    async with client(server) as c:
        await download_into(c, rx, lambda d, t: progress.append((d, t)))
    assert seen == ["bytes=300000-"]
    assert progress[-1] == (len(BODY), len(BODY))
    assert finish(rx, tmp_path) == DATA  # a hub ignoring the range: the prefix is skipped
    assert not (tmp_path / "p.body").exists()


@pytest.mark.asyncio
async def test_a_broken_connection_keeps_what_arrived(server: TestServer, tmp_path: Path) -> None:
    mode["break"] = True
    rx = receiver(tmp_path)
    async with client(server) as c:
        with pytest.raises(HubUnavailable):
            await download_into(c, rx)
    rx.suspend()
    assert BODY.startswith((tmp_path / "p.body").read_bytes())
    assert (tmp_path / "p.body").stat().st_size > 0
    mode["break"] = False
    rx = receiver(tmp_path)
    async with client(server) as c:
        await download_into(c, rx)
    assert seen[-1] is not None
    assert finish(rx, tmp_path) == DATA


@pytest.mark.asyncio
async def test_a_changed_body_is_refused(server: TestServer, tmp_path: Path) -> None:
    mode["tamper"] = True
    rx = receiver(tmp_path)
    async with client(server) as c:
        await download_into(c, rx)
    with pytest.raises(RemoteError) as err:
        finish(rx, tmp_path)
    assert err.value.code == "body_digest_mismatch"
    rx.discard()
    assert not any(p.exists() for p in (rx.part, rx.work, tmp_path / "inbox"))


@pytest.mark.asyncio
async def test_a_problem_answer_is_a_hub_error(server: TestServer, tmp_path: Path) -> None:
    rx = receiver(tmp_path)
    info = rx.info
    rx.info = type(info)(size=info.size, chunk=info.chunk, sha256=bytes(32))
    async with client(server) as c:
        with pytest.raises(HubError) as err:
            await download_into(c, rx)
    assert err.value.code == "body_unknown"
    rx.discard()
