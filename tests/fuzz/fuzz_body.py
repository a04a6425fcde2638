"""Fuzz the opener: fuzz bytes as the body of a fixed, valid envelope.

The first byte says how many split sizes follow (0-3), each next byte one size (1-256);
the rest is the body, fed to an Opener in those pieces (cycled), then ``finish``.  The
envelope is sealed at start-up with a fixed CEK and packet id, so its body is the same on
every run and the corpus holds the valid body: mutations of it test every chunk check.

Run: ``python tests/fuzz/fuzz_body.py -atheris_runs=3000 tests/fuzz/corpus/fuzz_body``.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protocol.keys import ENC_X25519, EncryptionPrivateKey, SigningPrivateKey
from protocol.packet import (
    DocumentMetadata,
    Opener,
    Recipient,
    parse_envelope,
    seal_packet,
)
from tests.fuzz._harness import guarded, run


def fixed(label: str, size: int) -> bytes:
    return hashlib.shake_256(b"lienthong fuzz\x00" + label.encode()).digest(size)


T0 = 1_759_190_400
ORGAN = "CB-THCS-TAMHONG"
KEY = EncryptionPrivateKey.from_private_bytes(ENC_X25519, fixed("body enc", 32))


def _packet_id() -> bytes:
    """A fixed UUIDv7: the creation time in milliseconds, then fixed 'random' bits."""
    value = bytearray((T0 * 1000).to_bytes(6, "big") + fixed("body packet id", 10))
    value[6] = 0x70 | (value[6] & 0x0F)
    value[8] = 0x80 | (value[8] & 0x3F)
    return bytes(value)


PACKET_ID = _packet_id()
FILES = [
    ("Báo cáo quý III.pdf", "application/pdf", fixed("file 0", 150)),
    ("Danh sách trống.txt", "text/plain", b""),
    ("Phụ lục.txt", "text/plain", "Đề nghị các đồng chí nghiên cứu.\n".encode() * 2),
]


def _seal() -> tuple[bytes, bytes]:
    return seal_packet(
        sender="000.00.00.H41",
        signing_key=SigningPrivateKey.from_private_bytes("ed25519", fixed("body sign", 32)),
        recipients=[Recipient(ORGAN, KEY.public_key())],
        metadata=DocumentMetadata(subject="Công văn về việc triển khai Chỉ thị số 12-CT/TW"),
        files=FILES,
        packet_id=PACKET_ID,
        cek=fixed("body cek", 32),
        created_at=T0,
    )


_ENV_BYTES, VALID_BODY = _seal()
ENVELOPE = parse_envelope(_ENV_BYTES)


def split_header(sizes: list[int]) -> bytes:
    """The prefix that makes ``target`` feed the body in pieces of ``sizes`` (1-256)."""
    return bytes([len(sizes)] + [s - 1 for s in sizes])


def _open(data: bytes) -> None:
    n = data[0] % 4 if data else 0
    sizes = [b + 1 for b in data[1 : 1 + n]] or [1 << 20]
    body = data[1 + n :]
    opener = Opener(ENVELOPE, organ=ORGAN, key=KEY)
    pos = i = 0
    while pos < len(body):
        step = sizes[i % len(sizes)]
        opener.feed(body[pos : pos + step])
        pos, i = pos + step, i + 1
    opener.finish()


def target(data: bytes) -> None:
    guarded(_open, data)


if __name__ == "__main__":
    run(target)
