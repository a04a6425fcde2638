"""Sealing files into a spool body, and opening a downloaded body into the inbox.

Both run in a worker thread (``asyncio.to_thread``): they are blocking file I/O and CPU
work (AES-GCM, SHA-256) over bodies of any size, in bounded memory -- one read buffer
and one STREAM chunk at a time, whatever the document's size.

Opening follows the rule of DESIGN.md §7: *a plaintext file is released to the inbox
only after the signature, body hash, CEK commitment and every chunk tag have verified.*
The :class:`protocol.packet.Opener` hands out plaintext before it has seen the last
chunk, so every file is first written under a numbered name in a private work folder;
only when :meth:`Opener.finish` returns are the files given their names, the
``metadata.json`` written, and the folder renamed to ``inbox/<packet-id>`` in one atomic
step.  Any failure removes the work folder: nothing of a bad packet is ever visible.
"""

from __future__ import annotations

import contextlib
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
from protocol.packet import Opener, Sealer, check_file_name

from .errors import NodeError

READ: Final = 1024 * 1024
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


def seal_to_file(
    sealer: Sealer, files: Sequence[SourceFile], dest: Path, progress: Progress | None = None
) -> tuple[bytes, int]:
    """Stream ``files`` through ``sealer`` into ``dest``; returns (envelope, body size)."""
    total = sum(f.size for f in files)
    done = 0
    tmp = dest.with_name(dest.name + ".partial")
    size = 0
    try:
        with tmp.open("wb") as out:
            for f in files:
                sealer.add_file(f.name, f.media_type)
                with f.path.open("rb") as fh:
                    while piece := fh.read(READ):
                        for chunk in sealer.feed(piece):
                            out.write(chunk)
                            size += len(chunk)
                        done += len(piece)
                        if progress is not None:
                            progress(done, total)
            last, envelope = sealer.finish()
            out.write(last)
            size += len(last)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return envelope, size


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
    files = opener.metadata.files
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700, parents=True)
    current: tuple[int, IO[bytes]] | None = None
    try:

        def write(pieces: list[tuple[int, bytes]]) -> None:
            nonlocal current
            for index, data in pieces:
                if current is None or current[0] != index:
                    if current is not None:
                        current[1].close()
                    current = (index, (work / f"{index:05d}").open("ab"))
                current[1].write(data)

        total = body.stat().st_size
        done = 0
        with body.open("rb") as fh:
            while piece := fh.read(READ):
                write(opener.feed(piece))
                done += len(piece)
                if progress is not None:
                    progress(done, total)
        write(opener.finish())
        if current is not None:
            current[1].close()
            current = None
        # Every check passed: name the files, write the metadata, publish atomically.
        names = unique_names([f.name for f in files])
        listing = []
        for index, (info, name) in enumerate(zip(files, names, strict=True)):
            numbered = work / f"{index:05d}"
            if not numbered.exists():
                numbered.touch()  # an empty file yields no plaintext pieces
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
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
        with contextlib.suppress(OSError):
            fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return listing
    except BaseException:
        if current is not None:
            current[1].close()
        shutil.rmtree(work, ignore_errors=True)
        raise
