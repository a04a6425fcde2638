"""Sealing into the spool and opening into the inbox: bounded, atomic, nothing on failure."""

from __future__ import annotations

import json
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
