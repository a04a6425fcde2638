"""Sealing files into a spool body, and opening a body into the inbox as it downloads.

All of it runs in worker threads (``asyncio.to_thread``): they are blocking file I/O and CPU
work (AES-GCM, SHA-256) over bodies of any size, in bounded memory -- one read buffer
and one STREAM chunk at a time, whatever the document's size.

Opening follows the rule of DESIGN.md §7: *a plaintext file is released to the inbox
only after the signature, body hash, CEK commitment and every chunk tag have verified.*
The :class:`protocol.packet.Opener` hands out plaintext before it has seen the last
chunk, so every file is first written under a numbered name in a private work folder;
only when :meth:`Opener.finish` returns are the files given their names, the
``metadata.json`` written, and the folder renamed to ``inbox/<packet-id>`` in one atomic
step.  Any failure removes the work folder: nothing of a bad packet is ever visible.
:class:`BodyReceiver` does this while the body downloads (the bytes also go to the
resumable ``.part`` file, never read back unless a download resumes);
:func:`open_to_inbox` does it from a body file.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import mimetypes
import os
import shutil
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from protocol.codec import nfc
from protocol.errors import RemoteError
from protocol.packet import BodyVerifier, Opener, Sealer, check_file_name

from .errors import NodeError

READ: Final = 1024 * 1024
#: The spool's write-back is started every this many bytes while sealing goes on, so the
#: closing fsync finds little left (see :class:`_WriteBack`).
WRITEBACK_EVERY: Final = 8 * 1024 * 1024
METADATA_FILE: Final = "metadata.json"
#: Longest file name in bytes most file systems take.
NAME_BYTES_MAX: Final = 255

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A file to seal: where it is, the NFC name it travels under, its media type."""

    path: Path
    name: str
    media_type: str
    size: int


def source_files(paths: Sequence[Path]) -> list[SourceFile]:
    """Check the files to send and give each an NFC name and a media type."""
    if not paths:
        raise NodeError("files_missing", "name at least one file to send")
    out = []
    for path in paths:
        try:
            st = path.stat()
        except OSError as exc:
            raise NodeError("file_unreadable", f"{path}: {exc.strerror or exc}") from None
        if not path.is_file():
            raise NodeError("file_unreadable", f"{path} is not a regular file")
        name = nfc(path.name)
        try:
            check_file_name(name)
        except Exception as exc:
            raise NodeError("file_name_invalid", f"{path.name!r}: {exc}") from None
        media = mimetypes.guess_type(name)[0] or "application/octet-stream"
        out.append(SourceFile(path, name, media, st.st_size))
    return out


def unique_names(names: Sequence[str]) -> list[str]:
    """File names safe to write side by side: ``a.pdf``, ``a (2).pdf``; never metadata.json.

    Names are compared case-insensitively and after NFC, as macOS and Windows shares
    would; a name too long for the file system is shortened, keeping its extension.
    """
    used: set[str] = {METADATA_FILE}
    out = []
    for raw in names:
        name = _fit(nfc(raw))
        stem, dot, ext = name.rpartition(".")
        if not dot or not stem:
            stem, ext = name, ""
        candidate, n = name, 1
        while candidate.casefold() in used:
            n += 1
            candidate = _fit(f"{stem} ({n})" + (f".{ext}" if ext else ""))
        used.add(candidate.casefold())
        out.append(candidate)
    return out


def _fit(name: str) -> str:
    if len(name.encode()) <= NAME_BYTES_MAX:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or len(ext) > 16:
        stem, ext = name, ""
    suffix = f".{ext}" if ext else ""
    budget = NAME_BYTES_MAX - len(suffix.encode())
    while len(stem.encode()) > budget:
        stem = stem[:-1]
    return unicodedata.normalize("NFC", stem) + suffix


def copy_archive(files: Sequence[SourceFile], folder: Path) -> list[SourceFile]:
    """Copy the files into the archive folder (bản lưu) under their NFC names."""
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700, parents=True)
    try:
        names = unique_names([f.name for f in files])
        out = []
        for f, name in zip(files, names, strict=True):
            shutil.copyfile(f.path, tmp / name)
            out.append(SourceFile(folder / name, f.name, f.media_type, f.size))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        return out
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return None
    func = getattr(libc, "sync_file_range", None)
    if func is None:
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func  # type: ignore[no-any-return]


#: Linux's sync_file_range(2) (None elsewhere): start a range's write-back, no waiting.
_SYNC_FILE_RANGE: Final = _libc_sync_file_range()
SYNC_FILE_RANGE_WRITE: Final = 2


class _WriteBack:
    """A file written sequentially, its write-back started every :data:`WRITEBACK_EVERY`
    bytes (no waiting), so that the fsync that makes it durable finds little left."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.size = self._started = out.tell()

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self.size += len(data)
        if self.size - self._started >= WRITEBACK_EVERY:
            if _SYNC_FILE_RANGE is not None:
                self.out.flush()
                _SYNC_FILE_RANGE(
                    self.out.fileno(), self._started, self.size - self._started,
                    SYNC_FILE_RANGE_WRITE,
                )  # fmt: skip
            self._started = self.size


def seal_to_file(
    sealer: Sealer, files: Sequence[SourceFile], dest: Path, progress: Progress | None = None
) -> tuple[bytes, int]:
    """Stream ``files`` through ``sealer`` into ``dest``; returns (envelope, body size)."""
    total = sum(f.size for f in files)
    done = 0
    tmp = dest.with_name(dest.name + ".partial")
    try:
        with tmp.open("wb") as fh_out:
            out = _WriteBack(fh_out)
            for f in files:
                sealer.add_file(f.name, f.media_type)
                with f.path.open("rb") as fh:
                    while piece := fh.read(READ):
                        for chunk in sealer.feed(piece):
                            out.write(chunk)
                        done += len(piece)
                        if progress is not None:
                            progress(done, total)
            last, envelope = sealer.finish()
            out.write(last)
            size = out.size
            fh_out.flush()
            os.fsync(fh_out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return envelope, size


class _Plaintext:
    """The opener's pieces, written to numbered files of the private work folder."""

    def __init__(self, work: Path) -> None:
        self.work = work
        # Written back as it comes: publishing fsyncs each file (_publish).
        self._current: tuple[int, _WriteBack] | None = None

    def write(self, pieces: list[tuple[int, bytes]]) -> None:
        for index, data in pieces:
            if self._current is None or self._current[0] != index:
                self.close()
                self._current = (index, _WriteBack((self.work / f"{index:05d}").open("ab")))
            self._current[1].write(data)

    def close(self) -> None:
        if self._current is not None:
            self._current[1].out.close()
            self._current = None


def _publish(
    opener: Opener,
    work: Path,
    final: Path,
    metadata: Callable[[list[dict[str, Any]]], Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Every check passed: name the files, write the metadata, publish atomically."""
    files = opener.metadata.files
    names = unique_names([f.name for f in files])
    listing = []
    for index, (info, name) in enumerate(zip(files, names, strict=True)):
        numbered = work / f"{index:05d}"
        if not numbered.exists():
            numbered.touch()  # an empty file yields no plaintext pieces
        # On disk before the document is published (and the hub's item acknowledged):
        # metadata.json naming files a crash left empty would be a document lost.
        _fsync(numbered)
        numbered.rename(work / name)
        listing.append(
            {
                "name": name,
                "original_name": info.name,
                "media_type": info.media_type,
                "size": info.size,
                "sha256": info.sha256.hex(),
            }
        )
    doc = metadata(listing)
    with (work / METADATA_FILE).open("w", encoding="utf-8") as out:
        json.dump(doc, out, ensure_ascii=False, indent=2)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())
    _fsync(work, directory=True)  # the files' names and metadata.json's
    if final.exists():
        shutil.rmtree(final)
    os.replace(work, final)
    with contextlib.suppress(OSError):
        _fsync(final.parent, directory=True)
    return listing


def _fsync(path: Path, *, directory: bool = False) -> None:
    """Flush a file's data (or a folder's entries) to disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_to_inbox(
    opener: Opener,
    body: Path,
    work: Path,
    final: Path,
    metadata: Callable[[list[dict[str, Any]]], Mapping[str, Any]],
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Decrypt ``body`` with ``opener``; on success, atomically publish ``final``.

    ``metadata`` is called with the file list (name as written, media type, size,
    SHA-256) once everything verified, and returns the ``metadata.json`` document.
    Raises the opener's :class:`RemoteError` on any failed check, leaving nothing behind.
    """
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700, parents=True)
    out = _Plaintext(work)
    try:
        total = body.stat().st_size
        done = 0
        with body.open("rb") as fh:
            while piece := fh.read(READ):
                out.write(opener.feed(piece))
                done += len(piece)
                if progress is not None:
                    progress(done, total)
        out.write(opener.finish())
        out.close()
        return _publish(opener, work, final, metadata)
    except BaseException:
        out.close()
        shutil.rmtree(work, ignore_errors=True)
        raise


class BodyReceiver:
    """Open a body while it downloads, keeping the downloaded bytes for a resumption.

    Each piece is appended to ``part`` (the resumable download) and fed to the
    :class:`Opener`, whose plaintext goes to the private work folder; :meth:`finish`
    publishes ``final`` only once the opener's every check passed (DESIGN.md §7).  So the
    body crosses the disk once on the way in and is never read back.

    A resumed download first feeds the bytes already in ``part`` (:meth:`start`).  The
    order of the refusals is that of checking the body before opening it: a body that
    is not the one the envelope names fails with ``body_extended``, ``truncated_body`` or
    ``body_digest_mismatch``, whatever a chunk tag said before.  When the opener refuses
    a piece, the rest of the body is still received (into ``part`` only, up to its
    declared size) and the whole is hashed to tell the two apart.

    Blocking file and CPU work: call the methods from a worker thread, one at a time.
    """

    def __init__(self, opener: Opener, part: Path, work: Path) -> None:
        self.opener = opener
        self.info = opener.envelope.body_info
        self.part = part
        self.work = work
        self.received = 0
        self._refused: RemoteError | None = None
        self._fh: IO[bytes] | None = None
        self._out = _Plaintext(work)

    def start(self) -> int:
        """Fresh work folder; feed what ``part`` holds already.  Returns its size."""
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(mode=0o700, parents=True)
        try:
            have = self.part.stat().st_size
        except FileNotFoundError:
            have = 0
        if have > self.info.size:
            have = 0  # not a prefix of this body: start over
        self._fh = self.part.open("r+b" if have else "wb")
        while self.received < have:
            self._open(self._fh.read(min(READ, have - self.received)))
        return have

    def feed(self, pieces: Sequence[bytes]) -> None:
        """Append ``pieces`` to ``part`` and open them."""
        if self._fh is None:
            raise NodeError("local", "the body receiver is not started")
        for piece in pieces:
            if self.received + len(piece) > self.info.size:
                raise RemoteError(
                    "body_extended", f"body exceeds its declared {self.info.size} bytes"
                )
            self._fh.write(piece)
            self._open(piece)

    def keep(self, pieces: Sequence[bytes]) -> None:
        """Append ``pieces`` to ``part`` only: the download broke, they wait for a resumption."""
        if self._fh is None:
            return
        for piece in pieces:
            if self.received + len(piece) > self.info.size:
                return
            self._fh.write(piece)
            self.received += len(piece)

    def _open(self, piece: bytes) -> None:
        self.received += len(piece)
        if self._refused is not None:
            return
        try:
            self._out.write(self.opener.feed(piece))
        except RemoteError as exc:
            if exc.code == "body_extended":
                raise
            self._refused = exc  # judged once the whole body is here

    def finish(
        self, final: Path, metadata: Callable[[list[dict[str, Any]]], Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """Every check; then publish ``final`` and drop ``part``."""
        if self.received < self.info.size:
            raise RemoteError("truncated_body", f"{self.received} of {self.info.size} bytes")
        try:
            if self._refused is not None:
                raise self._refused
            self._out.write(self.opener.finish())
        except RemoteError as exc:
            self._judge(exc)
        self.close()
        listing = _publish(self.opener, self.work, final, metadata)
        self.part.unlink(missing_ok=True)
        return listing

    def _judge(self, exc: RemoteError) -> None:
        """Raise ``body_digest_mismatch`` if the body is not the envelope's, else ``exc``."""
        if self._fh is not None:
            self._fh.flush()
        check = BodyVerifier(self.info)
        with self.part.open("rb") as fh:
            while block := fh.read(READ):
                check.feed(block)
        check.finish()
        raise exc

    def close(self) -> None:
        """Close the files; ``part`` stays (flushed) for a later resumption."""
        self._out.close()
        if self._fh is not None:
            fh, self._fh = self._fh, None
            fh.close()

    def suspend(self) -> None:
        """The connection broke: keep ``part`` durably, drop the unverified plaintext."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        self.close()
        shutil.rmtree(self.work, ignore_errors=True)

    def discard(self) -> None:
        """A refused body: nothing of it remains."""
        self.close()
        shutil.rmtree(self.work, ignore_errors=True)
        self.part.unlink(missing_ok=True)
