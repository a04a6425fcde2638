"""The blob writer on the upload path: hashing through the body check, write-back, the
executor pipeline of :func:`hub.blobs.write_stream`."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from hub import blobs
from hub.blobs import BlobStore, write_stream
from protocol.errors import RemoteError
from protocol.packet import BodyInfo, BodyVerifier

DATA = os.urandom(3 * 1024 * 1024 + 5)
INFO = BodyInfo(size=len(DATA), chunk=64 * 1024, sha256=hashlib.sha256(DATA).digest())


def _temp(store: BlobStore) -> list[Path]:
    return list((store.root / blobs.TMP_DIR).iterdir())


def test_a_checked_writer_hashes_through_the_check(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    writer = store.writer(BodyVerifier(INFO))
    writer.write_many([DATA[:1000], DATA[1000:]])
    assert writer.commit(INFO.sha256) == INFO.sha256
    with store.open(INFO.sha256) as fh:
        assert fh.read() == DATA
    assert _temp(store) == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (DATA[:-1], "truncated_body"),
        (DATA[:-1] + bytes([DATA[-1] ^ 1]), "body_digest_mismatch"),
    ],
)
def test_a_checked_writer_refuses_at_commit(tmp_path: Path, body: bytes, code: str) -> None:
    store = BlobStore(tmp_path)
    writer = store.writer(BodyVerifier(INFO))
    writer.write(body)
    with pytest.raises(RemoteError) as err:
        writer.commit(INFO.sha256)
    assert err.value.code == code
    assert _temp(store) == []
    assert not store.exists(INFO.sha256)


def test_a_checked_writer_refuses_a_byte_too_many_before_writing_it(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    writer = store.writer(BodyVerifier(INFO))
    writer.write(DATA)
    with pytest.raises(RemoteError) as err:
        writer.write(b"!")
    assert err.value.code == "body_extended"
    assert writer.size == len(DATA)
    writer.abort()
    assert _temp(store) == []


def test_write_back_starts_as_the_blob_grows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int, int]] = []

    def record(fd: int, start: int, length: int, flags: int) -> int:
        assert os.fstat(fd).st_size == start + length  # flushed before
        calls.append((start, length, flags))
        return 0

    monkeypatch.setattr(blobs, "_SYNC_FILE_RANGE", record)
    store = BlobStore(tmp_path)
    writer = store.writer()
    piece = b"x" * (1024 * 1024)
    for _ in range(20):
        writer.write(piece)
    writer.commit()
    mib8 = blobs.WRITEBACK_EVERY
    assert calls == [(0, mib8, 2), (mib8, mib8, 2)]
    # Without sync_file_range (another platform), the writer works the same.
    monkeypatch.setattr(blobs, "_SYNC_FILE_RANGE", None)
    writer = store.writer()
    for _ in range(20):
        writer.write(piece + b"y")
    writer.commit()
    assert len(calls) == 2


async def _chunks(
    pieces: Sequence[bytes], then: asyncio.Event | None = None
) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece
    if then is not None:
        await then.wait()


@pytest.mark.asyncio
async def test_write_stream_batches_and_keeps_order(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    writer = store.writer(BodyVerifier(INFO))
    step = 100_003
    await write_stream(writer, _chunks([DATA[i : i + step] for i in range(0, len(DATA), step)]))
    assert writer.commit(INFO.sha256) == INFO.sha256


@pytest.mark.asyncio
async def test_write_stream_raises_a_refusal_from_the_executor(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    writer = store.writer(BodyVerifier(INFO))
    with pytest.raises(RemoteError) as err:
        await write_stream(writer, _chunks([DATA, b"more"]), batch=1024)
    assert err.value.code == "body_extended"
    writer.abort()


@pytest.mark.asyncio
async def test_a_cancelled_write_stream_returns_only_once_no_write_runs(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    writer = store.writer()
    slow = threading.Event()
    ended: list[float] = []
    real = writer.write_many

    def write_many(pieces: Sequence[bytes]) -> None:
        slow.wait(5)
        real(pieces)
        ended.append(time.monotonic())

    writer.write_many = write_many  # type: ignore[method-assign]
    task = asyncio.create_task(
        write_stream(writer, _chunks([b"a" * 600_000], asyncio.Event()), batch=512 * 1024)
    )
    await asyncio.sleep(0.1)  # the batch is in the executor, the stream waits for more
    task.cancel()
    await asyncio.sleep(0.1)
    assert not task.done()  # still waiting for the write to end
    slow.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(ended) == 1
    writer.abort()
    assert _temp(store) == []


@pytest.mark.parametrize("count", [1, blobs.SYNCFS_FROM - 1, blobs.SYNCFS_FROM, 25])
def test_put_many_stores_every_blob_durably(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    """A few blobs: an fsync each; from SYNCFS_FROM on: one syncfs before and after renaming."""
    store = BlobStore(tmp_path / "blobs")
    flushes: list[str] = []
    real_syncfs = store._syncfs
    monkeypatch.setattr(store, "_syncfs", lambda: (flushes.append("syncfs"), real_syncfs()))
    real_fsync = os.fsync
    monkeypatch.setattr(blobs.os, "fsync", lambda fd: (flushes.append("fsync"), real_fsync(fd)))
    items = [(f"văn bản {i}".encode() * 100, b"") for i in range(count)]
    items = [(data, hashlib.sha256(data).digest()) for data, _ in items]
    store.put_many(items)
    for data, digest in items:
        with store.open(digest) as fh:
            assert fh.read() == data
    assert _temp(store) == []
    if blobs._SYNCFS is not None and count >= blobs.SYNCFS_FROM:
        assert flushes == ["syncfs", "syncfs"]
    else:
        assert flushes.count("fsync") == 2 * count  # the file, then its directory
        assert "syncfs" not in flushes
