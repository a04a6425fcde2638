"""Sealing into the spool and opening into the inbox: bounded, atomic, nothing on failure."""

from __future__ import annotations

import dataclasses
import json
import os
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from nodes import transfer
from nodes.errors import NodeError
from protocol.errors import RemoteError
from protocol.keys import EncryptionPrivateKey, SigningPrivateKey
from protocol.packet import DocumentMetadata, Opener, Recipient, Sealer, parse_envelope

SUBJECT = "Kế hoạch tổ chức Hội nghị tổng kết công tác văn phòng cấp ủy năm 2025"


def seal(tmp_path: Path, files: dict[str, bytes]) -> tuple[bytes, Path, EncryptionPrivateKey]:
    src = tmp_path / "src"
    src.mkdir()
    paths = []
    for name, data in files.items():
        path = src / name
        path.write_bytes(data)
        paths.append(path)
    key = EncryptionPrivateKey.generate()
    sealer = Sealer(
        sender="000.00.00.H41",
        signing_key=SigningPrivateKey.generate(),
        recipients=[Recipient("000.00.12.H41", key.public_key())],
        metadata=DocumentMetadata(subject=SUBJECT, doc_type="KH"),
    )
    body = tmp_path / "body"
    seen: list[tuple[int, int]] = []
    envelope, size = transfer.seal_to_file(
        sealer, transfer.source_files(paths), body, lambda d, t: seen.append((d, t))
    )
    assert size == body.stat().st_size
    assert seen[-1][0] == seen[-1][1] == sum(len(d) for d in files.values())
    return envelope, body, key


def open_(envelope: bytes, body: Path, key: EncryptionPrivateKey, tmp_path: Path) -> Path:
    env = parse_envelope(envelope)
    opener = Opener(env, organ="000.00.12.H41", key=key)
    final = tmp_path / "inbox" / "p"
    final.parent.mkdir(exist_ok=True)

    def meta(files: list[dict[str, Any]]) -> dict[str, Any]:
        return {"subject": opener.metadata.subject, "files": files}

    transfer.open_to_inbox(opener, body, tmp_path / "work", final, meta)
    return final


def test_published_document_is_on_disk_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every plaintext file, metadata.json and the folder's entries are fsynced before
    the folder is renamed into the inbox (and the hub's item acknowledged): a crash
    must not leave a published document whose files are empty."""
    files = {"Báo cáo.pdf": b"%PDF" * 10_000, "trống.txt": b"", "Phụ lục.txt": b"x" * 300}
    envelope, body, key = seal(tmp_path, files)
    synced: list[str] = []
    real_fsync = os.fsync
    real_replace = os.replace
    published: list[list[str]] = []

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        published.append(list(synced))
        real_replace(src, dst)

    monkeypatch.setattr(transfer.os, "fsync", fsync)
    monkeypatch.setattr(transfer.os, "replace", replace)
    final = open_(envelope, body, key, tmp_path)
    work = str(tmp_path / "work")
    [before] = [p for p in published if p]  # what was synced when the folder was renamed
    assert {str(Path(p).relative_to(work)) for p in before if p.startswith(work + "/")} == {
        "00000", "00001", "00002", "metadata.json"
    }  # fmt: skip
    assert work in before  # the folder's entries (file names)
    assert sorted(p.name for p in final.iterdir()) == sorted([*files, "metadata.json"])


def test_round_trip_with_vietnamese_names(tmp_path: Path) -> None:
    nfd = unicodedata.normalize("NFD", "Báo cáo quý III.pdf")
    files = {nfd: b"%PDF" * 70_000, "Kế hoạch.txt": "Nội dung".encode() * 50, "trống.txt": b""}
    envelope, body, key = seal(tmp_path, files)
    final = open_(envelope, body, key, tmp_path)
    got = {p.name: p.read_bytes() for p in final.iterdir()}
    meta = json.loads(got.pop("metadata.json"))
    assert got == {unicodedata.normalize("NFC", k): v for k, v in files.items()}
    assert meta["subject"] == SUBJECT
    assert [f["size"] for f in meta["files"]] == [len(v) for v in files.values()]
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_tampered_body_leaves_nothing(tmp_path: Path, where: str) -> None:
    envelope, body, key = seal(tmp_path, {"a.pdf": b"x" * 200_000})
    data = bytearray(body.read_bytes())
    data[{"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]] ^= 1
    body.write_bytes(bytes(data))
    with pytest.raises(RemoteError) as err:
        open_(envelope, body, key, tmp_path)
    assert err.value.code in ("chunk_tag_invalid", "body_digest_mismatch")
    assert not (tmp_path / "inbox" / "p").exists()
    assert not (tmp_path / "work").exists()


def test_a_truncated_body_leaves_nothing(tmp_path: Path) -> None:
    envelope, body, key = seal(tmp_path, {"a.pdf": b"x" * 200_000})
    body.write_bytes(body.read_bytes()[:-100])
    with pytest.raises(RemoteError) as err:
        open_(envelope, body, key, tmp_path)
    assert err.value.code == "truncated_body"
    assert not (tmp_path / "inbox" / "p").exists()


def test_unique_names() -> None:
    assert transfer.unique_names(["a.pdf", "A.pdf", "a.pdf", "metadata.json", "b"]) == [
        "a.pdf",
        "A (2).pdf",
        "a (3).pdf",
        "metadata (2).json",
        "b",
    ]
    long = "Tài liệu " * 40 + ".pdf"
    [short] = transfer.unique_names([long])
    assert len(short.encode()) <= 255
    assert short.endswith(".pdf")


def test_source_files_are_checked(tmp_path: Path) -> None:
    with pytest.raises(NodeError) as err:
        transfer.source_files([tmp_path / "khong-co.pdf"])
    assert err.value.code == "file_unreadable"
    with pytest.raises(NodeError):
        transfer.source_files([])
    (tmp_path / "x.pdf").write_bytes(b"x")
    [f] = transfer.source_files([tmp_path / "x.pdf"])
    assert f.media_type == "application/pdf"


# --- opening while the body downloads (BodyReceiver) ---------------------------------------


def receiver(envelope: bytes, key: EncryptionPrivateKey, tmp_path: Path) -> transfer.BodyReceiver:
    opener = Opener(parse_envelope(envelope), organ="000.00.12.H41", key=key)
    (tmp_path / "inbox").mkdir(exist_ok=True)
    return transfer.BodyReceiver(opener, tmp_path / "body.part", tmp_path / "work")


def receive(rx: transfer.BodyReceiver, data: bytes, step: int = 50_001) -> list[dict[str, Any]]:
    """Start, feed ``data`` in pieces, finish into ``inbox/p``: as the mailbox does."""
    have = rx.start()
    for i in range(have, len(data), step):
        rx.feed([data[i : i + step // 2], data[i + step // 2 : i + step]])
    return rx.finish(rx.work.parent / "inbox" / "p", lambda files: {"files": files})


def _nothing_left(rx: transfer.BodyReceiver) -> None:
    rx.discard()
    assert not (rx.work.parent / "inbox" / "p").exists()
    assert not rx.work.exists()
    assert not rx.part.exists()


def test_receiver_opens_while_downloading(tmp_path: Path) -> None:
    files = {"Báo cáo.pdf": b"%PDF" * 70_000, "trống.txt": b"", "Kế hoạch.txt": b"k" * 1000}
    envelope, body, key = seal(tmp_path, files)
    rx = receiver(envelope, key, tmp_path)
    listing = receive(rx, body.read_bytes())
    final = tmp_path / "inbox" / "p"
    assert [f["name"] for f in listing] == list(files)
    assert {p.name: p.read_bytes() for p in final.iterdir() if p.name != "metadata.json"} == files
    assert json.loads((final / "metadata.json").read_text())["files"] == listing
    assert not rx.part.exists()  # the download is not kept once published
    assert not rx.work.exists()


def test_receiver_resumes_from_the_part_file(tmp_path: Path) -> None:
    data = b"x" * 300_000
    envelope, body, key = seal(tmp_path, {"a.pdf": data})
    raw = body.read_bytes()
    rx = receiver(envelope, key, tmp_path)
    assert rx.start() == 0
    rx.feed([raw[:100_000]])
    rx.suspend()  # the connection broke: the bytes stay, the unverified plaintext goes
    assert rx.part.read_bytes() == raw[:100_000]
    assert not rx.work.exists()
    rx = receiver(envelope, key, tmp_path)
    receive(rx, raw)
    assert (tmp_path / "inbox" / "p" / "a.pdf").read_bytes() == data


def test_receiver_starts_over_when_the_part_file_is_too_long(tmp_path: Path) -> None:
    envelope, body, key = seal(tmp_path, {"a.pdf": b"y" * 100_000})
    raw = body.read_bytes()
    (tmp_path / "body.part").write_bytes(raw + b"more")
    rx = receiver(envelope, key, tmp_path)
    assert rx.start() == 0
    assert rx.part.stat().st_size == 0
    rx.close()
    receive(receiver(envelope, key, tmp_path), raw)
    assert (tmp_path / "inbox" / "p" / "a.pdf").read_bytes() == b"y" * 100_000


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_receiver_a_changed_body_is_a_digest_mismatch(tmp_path: Path, where: str) -> None:
    # The hub changed a byte: the chunk's tag fails first, but the body is not the one
    # the envelope names, and that is what is reported (as when downloading first).
    envelope, body, key = seal(tmp_path, {"a.pdf": b"x" * 200_000})
    data = bytearray(body.read_bytes())
    data[{"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]] ^= 1
    rx = receiver(envelope, key, tmp_path)
    with pytest.raises(RemoteError) as err:
        receive(rx, bytes(data))
    assert err.value.code == "body_digest_mismatch"
    _nothing_left(rx)


def test_receiver_a_bad_tag_in_the_named_body_is_a_tag_error(tmp_path: Path) -> None:
    # The sender sealed a broken chunk and signed its digest: the body is the one named,
    # the chunk's tag is what fails.
    src = tmp_path / "a.pdf"
    src.write_bytes(b"z" * 200_000)
    key = EncryptionPrivateKey.generate()
    sealer = Sealer(
        sender="000.00.00.H41",
        signing_key=SigningPrivateKey.generate(),
        recipients=[Recipient("000.00.12.H41", key.public_key())],
        metadata=DocumentMetadata(subject=SUBJECT, doc_type="KH"),
    )
    real = sealer._keys.body

    class Flip:
        calls = 0

        def encrypt(self, nonce: bytes, data: bytes, aad: bytes | None) -> bytes:
            ct = real.encrypt(nonce, data, aad)
            Flip.calls += 1
            return ct if Flip.calls != 2 else bytes([ct[0] ^ 1]) + ct[1:]

    sealer._keys = dataclasses.replace(sealer._keys, body=Flip())  # type: ignore[arg-type]
    envelope, _ = transfer.seal_to_file(sealer, transfer.source_files([src]), tmp_path / "b")
    rx = receiver(envelope, key, tmp_path)
    with pytest.raises(RemoteError) as err:
        receive(rx, (tmp_path / "b").read_bytes())
    assert err.value.code == "chunk_tag_invalid"
    _nothing_left(rx)


def test_receiver_refuses_a_longer_body_before_writing_it(tmp_path: Path) -> None:
    envelope, body, key = seal(tmp_path, {"a.pdf": b"x" * 100_000})
    raw = body.read_bytes()
    rx = receiver(envelope, key, tmp_path)
    rx.start()
    rx.feed([raw[:-10]])
    with pytest.raises(RemoteError) as err:
        rx.feed([raw[-10:] + b"!"])
    assert err.value.code == "body_extended"
    rx.close()
    assert rx.part.stat().st_size == len(raw) - 10  # not a byte past the declared end
    _nothing_left(rx)


def test_receiver_refuses_a_shorter_body(tmp_path: Path) -> None:
    envelope, body, key = seal(tmp_path, {"a.pdf": b"x" * 100_000})
    rx = receiver(envelope, key, tmp_path)
    with pytest.raises(RemoteError) as err:
        receive(rx, body.read_bytes()[:-1])
    assert err.value.code == "truncated_body"
    _nothing_left(rx)


def test_sealing_and_opening_start_the_write_back_as_they_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int, int]] = []

    def record(fd: int, start: int, length: int, flags: int) -> int:
        calls.append((start, length, flags))
        return 0

    monkeypatch.setattr(transfer, "_SYNC_FILE_RANGE", record)
    monkeypatch.setattr(transfer, "WRITEBACK_EVERY", 100_000)
    envelope, body, key = seal(tmp_path, {"a.pdf": b"w" * 350_000})
    assert calls
    assert all(flags == 2 for _, _, flags in calls)
    assert [start for start, _, _ in calls] == [0, *(s + n for s, n, _ in calls[:-1])]
    assert all(n >= 100_000 for _, n, _ in calls)
    # Opening writes the plaintext back the same way (publishing then fsyncs it).
    calls.clear()
    final = open_(envelope, body, key, tmp_path)
    assert (final / "a.pdf").read_bytes() == b"w" * 350_000
    assert len(calls) >= 2
    assert [start for start, _, _ in calls] == [0, *(s + n for s, n, _ in calls[:-1])]
    assert all(n >= 100_000 for _, n, _ in calls)
    # Without sync_file_range (another platform) sealing works the same.
    monkeypatch.setattr(transfer, "_SYNC_FILE_RANGE", None)
    (tmp_path / "src").rename(tmp_path / "src1")
    (tmp_path / "inbox").rename(tmp_path / "inbox1")
    envelope, body, key = seal(tmp_path, {"a.pdf": b"v" * 350_000})
    assert (open_(envelope, body, key, tmp_path) / "a.pdf").read_bytes() == b"v" * 350_000
