"""Fuzz verify_entry: a signed directory entry checked against the pinned authority key.

Nodes run this on every entry the hub hands them.  Each input is tried as it is and
spliced into valid signed entries (the first two bytes pick the offset), so the fuzzer
reaches the entry parser and the signature check, not only the container parser.

Run: ``python tests/fuzz/fuzz_directory_entry.py -atheris_runs=3000
tests/fuzz/corpus/fuzz_directory_entry``.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protocol.directory import FOREVER, DirectoryEntry, KeyRecord, sign_entry, verify_entry
from protocol.keys import ENC_HYBRID, ENC_X25519, EncryptionPrivateKey, SigningPrivateKey
from tests.fuzz._harness import guarded, run


def fixed(label: str, size: int) -> bytes:
    return hashlib.shake_256(b"lienthong fuzz\x00" + label.encode()).digest(size)


T0 = 1_759_190_400
AUTHORITY = SigningPrivateKey.from_private_bytes("ed25519", fixed("authority", 32))
AUTHORITY_PUB = AUTHORITY.public_key()


def sample_entries() -> list[tuple[str, bytes]]:
    """Valid signed entries: the splice seeds and the corpus."""
    sk = SigningPrivateKey.from_private_bytes("ed25519+mldsa65", fixed("office sign", 64))
    ek = EncryptionPrivateKey.from_private_bytes(ENC_HYBRID, fixed("office enc", 96))
    sk2 = SigningPrivateKey.from_private_bytes("ed25519", fixed("cb sign", 32))
    ek2 = EncryptionPrivateKey.from_private_bytes(ENC_X25519, fixed("cb enc", 32))

    def rec(pub_alg: str, pub: bytes, revoked: int | None = None) -> KeyRecord:
        return KeyRecord(pub_alg, pub, T0, FOREVER, revoked)

    province = DirectoryEntry(
        organ="000.00.00.H41",
        name="Văn phòng Tỉnh ủy",
        role="office",
        level="province",
        signing_keys=(rec(sk.alg, sk.public_key().raw),),
        encryption_keys=(rec(ek.alg, ek.public_key().raw),),
        valid_from=T0,
        serial=7,
        issued_at=T0,
        authority_kid=AUTHORITY.kid,
        email="vanthu@tinhuy.example.vn",
        transports=("http", "email"),
    )
    grassroots = DirectoryEntry(
        organ="CB-THCS-TAMHONG",
        name="Chi bộ Trường THCS Tam Hồng",
        role="office",
        level="grassroots",
        signing_keys=(rec(sk2.alg, sk2.public_key().raw, T0 + 100),),
        encryption_keys=(rec(ek2.alg, ek2.public_key().raw),),
        valid_from=T0,
        valid_until=T0 + 10**8,
        successor="DU-XYL",
        parent="DU-XYL",
        serial=2,
        issued_at=T0,
        authority_kid=AUTHORITY.kid,
    )
    return [
        ("province", sign_entry(province, AUTHORITY)),
        ("grassroots", sign_entry(grassroots, AUTHORITY)),
    ]


_SEEDS = [entry for _, entry in sample_entries()]


def _verify(data: bytes) -> None:
    verify_entry(data, AUTHORITY_PUB)


def _splice(seed: bytes, data: bytes) -> bytes:
    pos = int.from_bytes(data[:2], "big") % len(seed)
    patch = data[2:]
    return seed[:pos] + patch + seed[pos + len(patch) :]


def target(data: bytes) -> None:
    guarded(_verify, data)
    if len(data) > 2:
        for seed in _SEEDS:
            guarded(_verify, _splice(seed, data))


if __name__ == "__main__":
    run(target)
