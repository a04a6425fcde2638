"""Content-addressed blob store for packet bodies.

A blob lives at ``<root>/ab/cd/abcd...`` (its SHA-256 in hex, two levels of fan-out).
Writing goes to a temp file under ``<root>/tmp`` -- the same file system, so the final
``rename`` is atomic -- with the digest computed on the way; :meth:`BlobWriter.commit`
fsyncs the file, renames it into place and fsyncs the directory.  A blob is therefore
either absent or complete: a crash mid-upload leaves only a temp file, swept later.
Nothing here holds a whole body in memory.

:meth:`BlobStore.put_many` stores many small bodies (the batch endpoint) with one
durability barrier for all of them instead of two fsyncs each: write every temp file,
``syncfs`` the file system, rename them all, ``syncfs`` again.

When a blob of the same digest already exists (two packets with one body), it is kept --
after checking that its content really has that digest, so a file damaged by a crash can
never stand in for a verified body.

A writer given a :class:`Check` (the upload's :class:`protocol.packet.BodyVerifier`) hashes
through it instead of hashing a second time: one SHA-256 pass per uploaded byte, done in
the executor thread right before the bytes are written, and :meth:`BlobWriter.close`
takes the check's verdict (``finish``) as the digest.

The methods are blocking file I/O: the hub calls them through ``run_in_executor``;
:func:`write_stream` does so itself, receiving the next batch of a request while the
previous one is hashed and written (the two overlap on two cores).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Final, Protocol

from protocol.errors import LocalError

TMP_DIR: Final = "tmp"
TMP_PREFIX: Final = "upload-"
DIGEST_SIZE: Final = 32
_HASH_CHUNK: Final = 1024 * 1024
#: Bytes of a request gathered before they are handed to the executor in one call.
WRITE_BATCH: Final = 512 * 1024


class Check(Protocol):
    """Checks a blob's bytes as they are written (:class:`protocol.packet.BodyVerifier`).

    ``feed`` raises before the bytes it refuses are written; ``finish`` raises unless the
    whole content is right, and returns its SHA-256.
    """

    def feed(self, data: bytes | bytearray | memoryview) -> None: ...

    def finish(self) -> bytes: ...


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _libc_function(name: str, *argtypes: type[ctypes._SimpleCData[Any]]) -> Any:
    """A libc function returning int, or None where the platform lacks it."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return None
    func = getattr(libc, name, None)
    if func is None:
        return None
    func.argtypes = list(argtypes)
    func.restype = ctypes.c_int
    return func


#: From this many blobs on, :meth:`BlobStore.put_many` flushes with ``syncfs``.
SYNCFS_FROM: Final = 4
#: Linux's syncfs(2): flush one file system (data and metadata) in one call.
_SYNCFS: Final[Callable[[int], int] | None] = _libc_function("syncfs", ctypes.c_int)
#: Linux's sync_file_range(2), to start the write-back of a range without waiting for it.
_SYNC_FILE_RANGE: Final[Callable[[int, int, int, int], int] | None] = _libc_function(
    "sync_file_range", ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint
)
SYNC_FILE_RANGE_WRITE: Final = 2
#: A writer starts the write-back of every this many bytes as it goes, so the disk works
#: while the next bytes arrive and the fsync of :meth:`BlobWriter.close` finds little left
#: (for a 256 MiB upload, write plus fsync took a third less time here).
WRITEBACK_EVERY: Final = 8 * 1024 * 1024


def _file_digest(path: Path) -> bytes | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                h.update(chunk)
    except FileNotFoundError:
        return None
    return h.digest()


class BlobWriter:
    """One blob being written; either :meth:`commit` or :meth:`abort` it.

    With a ``check``, the bytes are hashed by the check alone (see :class:`Check`).
    """

    def __init__(self, store: BlobStore, check: Check | None = None) -> None:
        self._store = store
        self._check = check
        self._hash = hashlib.sha256() if check is None else None
        self.size = 0
        self._written_back = 0
        name = TMP_PREFIX + secrets.token_hex(16)
        self.temp_path = store.root / TMP_DIR / name
        self._fh: BinaryIO | None = open(self.temp_path, "xb")  # noqa: SIM115 - closed in commit/abort

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._fh is None:
            raise LocalError("blob writer already closed")
        if self._check is not None:
            self._check.feed(data)  # refuses before a byte too many is written
        else:
            assert self._hash is not None
            self._hash.update(data)
        self._fh.write(data)
        self.size += len(data)
        if self.size - self._written_back >= WRITEBACK_EVERY:
            self._write_back()

    def _write_back(self) -> None:
        """Start writing the bytes so far to disk (no wait; the fsync is what counts)."""
        assert self._fh is not None
        if _SYNC_FILE_RANGE is None:
            return
        self._fh.flush()
        start, self._written_back = self._written_back, self.size
        _SYNC_FILE_RANGE(self._fh.fileno(), start, self.size - start, SYNC_FILE_RANGE_WRITE)

    def write_many(self, pieces: Sequence[bytes | bytearray | memoryview]) -> None:
        """:meth:`write` each piece in turn: one executor call for a batch."""
        for piece in pieces:
            self.write(piece)

    def close(self, expected: bytes | None = None, *, sync: bool = True) -> bytes:
        """Finish writing (fsync unless ``sync`` is false); returns the digest.

        The content is judged before the fsync: a refused blob costs no disk flush and
        leaves no temp file.  A check's own refusal (e.g. ``truncated_body``) is raised
        as it is.
        """
        if self._fh is None:
            raise LocalError("blob writer already closed")
        fh, self._fh = self._fh, None
        try:
            if self._check is not None:
                digest = self._check.finish()
            else:
                assert self._hash is not None
                digest = self._hash.digest()
            if expected is not None and digest != expected:
                raise LocalError("blob digest differs from the one expected")
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
        except BaseException:
            fh.close()
            self.temp_path.unlink(missing_ok=True)
            raise
        fh.close()
        return digest

    def install(self, digest: bytes, *, sync: bool = True) -> None:
        """Rename the closed temp file into place (fsync the directory unless ``sync``)."""
        final = self._store.path_for(digest)
        try:
            if final.exists() and _file_digest(final) == digest:
                self.temp_path.unlink(missing_ok=True)  # the same content is stored already
                return
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.temp_path, final)
            if sync:
                _fsync_dir(final.parent)
        except BaseException:
            self.temp_path.unlink(missing_ok=True)
            raise

    def commit(self, expected: bytes | None = None) -> bytes:
        """Make the blob durable under its digest; returns the digest."""
        digest = self.close(expected)
        self.install(digest)
        return digest

    def abort(self) -> None:
        """Drop the temp file; nothing of this blob remains."""
        if self._fh is not None:
            fh, self._fh = self._fh, None
            fh.close()
        self.temp_path.unlink(missing_ok=True)


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / TMP_DIR).mkdir(parents=True, exist_ok=True)

    def path_for(self, digest: bytes) -> Path:
        if len(digest) != DIGEST_SIZE:
            raise LocalError("a blob digest is 32 bytes")
        h = digest.hex()
        return self.root / h[:2] / h[2:4] / h

    def writer(self, check: Check | None = None) -> BlobWriter:
        return BlobWriter(self, check)

    def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Store ``(data, digest)`` pairs durably, with one barrier for all of them.

        A few blobs get an fsync of their own (file and directory) instead: ``syncfs``
        flushes whatever else is dirty on the file system too (the database's files,
        when they share it), which costs more than a couple of fsyncs.
        """
        if _SYNCFS is None or len(items) < SYNCFS_FROM:
            for data, digest in items:
                writer = self.writer()
                try:
                    writer.write(data)
                    writer.commit(digest)
                except BaseException:
                    writer.abort()
                    raise
            return
        writers: list[tuple[BlobWriter, bytes]] = []
        try:
            for data, digest in items:
                writer = self.writer()
                writers.append((writer, digest))
                writer.write(data)
                writer.close(digest, sync=False)
            self._syncfs()  # the contents, before any name points at them
            for writer, digest in writers:
                writer.install(digest, sync=False)
            self._syncfs()  # the names
        except BaseException:
            for writer, _ in writers:
                writer.abort()
            raise

    def _syncfs(self) -> None:
        assert _SYNCFS is not None
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _SYNCFS(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        finally:
            os.close(fd)

    def exists(self, digest: bytes) -> bool:
        return self.path_for(digest).is_file()

    def size(self, digest: bytes) -> int | None:
        try:
            return self.path_for(digest).stat().st_size
        except FileNotFoundError:
            return None

    def open(self, digest: bytes) -> BinaryIO:
        """Open for reading (seek for ranges); FileNotFoundError if absent."""
        return open(self.path_for(digest), "rb")

    def delete(self, digest: bytes) -> bool:
        try:
            self.path_for(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    def digests(self) -> Iterator[bytes]:
        """Every stored blob's digest (for the orphan sweep)."""
        for first in self.root.iterdir():
            if first.name == TMP_DIR or not first.is_dir() or len(first.name) != 2:
                continue
            for second in first.iterdir():
                for blob in second.iterdir():
                    try:
                        yield bytes.fromhex(blob.name)
                    except ValueError:
                        continue

    def age(self, digest: bytes, now: float | None = None) -> float | None:
        try:
            mtime = self.path_for(digest).stat().st_mtime
        except FileNotFoundError:
            return None
        return (time.time() if now is None else now) - mtime

    def sweep_temp(self, older_than: float, now: float | None = None) -> int:
        """Remove temp files untouched for ``older_than`` seconds (crashed uploads)."""
        limit = (time.time() if now is None else now) - older_than
        removed = 0
        for path in (self.root / TMP_DIR).glob(TMP_PREFIX + "*"):
            try:
                if path.stat().st_mtime < limit:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


async def write_stream(
    writer: BlobWriter, chunks: AsyncIterable[bytes], batch: int = WRITE_BATCH
) -> None:
    """Write a request's ``chunks`` through ``writer`` in the default executor.

    Pieces are gathered into batches of about ``batch`` bytes (kept as they came: no
    copy); one batch is hashed and written in the executor while the next one arrives,
    so at most two batches are held.  When this returns or raises, no write is running:
    the caller may ``commit`` or ``abort`` at once.
    """
    loop = asyncio.get_running_loop()
    inflight: asyncio.Future[None] | None = None
    pending: list[bytes] = []
    size = 0
    try:
        async for chunk in chunks:
            pending.append(chunk)
            size += len(chunk)
            if size >= batch:
                if inflight is not None:
                    await asyncio.shield(inflight)
                inflight = loop.run_in_executor(None, writer.write_many, pending)
                pending, size = [], 0
        if inflight is not None:
            await asyncio.shield(inflight)
        if pending:
            inflight = loop.run_in_executor(None, writer.write_many, pending)
            await asyncio.shield(inflight)
    except BaseException:
        if inflight is not None:
            await _settle(inflight)
        raise


async def _settle(future: asyncio.Future[None]) -> None:
    """Wait for an executor call to end, whatever it or the caller raises meanwhile.

    ``future`` is awaited through :func:`asyncio.shield` above: a cancelled future would
    not say when its thread ends.
    """
    while not future.done():
        with contextlib.suppress(BaseException):
            await asyncio.wait([future])
    if not future.cancelled():
        future.exception()  # retrieved: its error, if any, is superseded by the caller's
