"""Fuzz the envelope: parse_envelope, then verify_sender against a fixed directory entry.

The hub runs exactly this on every submission before it stores a byte of the body, so
both steps must parse or raise a RemoteError, nothing else.  Random bytes rarely form a
signed container, so each input is also spliced into valid envelopes made at start-up
(the first two bytes pick the offset): that takes the fuzzer inside the signed body, and
past the parser to the key lookup and the signature check.

Run: ``python tests/fuzz/fuzz_envelope.py -atheris_runs=3000 tests/fuzz/corpus/fuzz_envelope``.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protocol.directory import FOREVER, DirectoryEntry, KeyRecord
from protocol.keys import ENC_HYBRID, ENC_X25519, EncryptionPrivateKey, SigningPrivateKey
from protocol.packet import (
    DocumentMetadata,
    Recipient,
    Reference,
    Routing,
    new_packet_id,
    parse_envelope,
    seal_packet,
)
from tests.fuzz._harness import guarded, run


def fixed(label: str, size: int) -> bytes:
    return hashlib.shake_256(b"lienthong fuzz\x00" + label.encode()).digest(size)


T0 = 1_759_190_400
SENDER = "000.00.00.H41"
SIGNING = SigningPrivateKey.from_private_bytes("ed25519", fixed("signing", 32))
SIGNING_HYBRID = SigningPrivateKey.from_private_bytes("ed25519+mldsa65", fixed("signing h", 64))
RECIPIENTS = [
    Recipient(
        "CB-THCS-TAMHONG",
        EncryptionPrivateKey.from_private_bytes(ENC_X25519, fixed("enc x", 32)).public_key(),
    ),
    Recipient(
        "DU-XYL",
        EncryptionPrivateKey.from_private_bytes(ENC_HYBRID, fixed("enc h", 96)).public_key(),
    ),
]


def _record(key: SigningPrivateKey) -> KeyRecord:
    pub = key.public_key()
    return KeyRecord(pub.alg, pub.raw, 0, FOREVER)


ENTRY = DirectoryEntry(
    organ=SENDER,
    name="Văn phòng Tỉnh ủy",
    role="office",
    level="province",
    signing_keys=(_record(SIGNING), _record(SIGNING_HYBRID)),
    encryption_keys=(),
    valid_from=0,
    serial=1,
    issued_at=T0,
    authority_kid=bytes(32),
)


def sample_envelopes() -> list[tuple[str, bytes]]:
    """Valid envelopes from the entry's keys: the splice seeds and the corpus."""
    meta = DocumentMetadata(
        subject="Kế hoạch tổ chức Hội nghị tổng kết công tác văn phòng cấp ủy năm 2025",
        doc_type="KH",
        number="123",
        notation="KH/TU",
    )
    out = []
    for name, key, routing, kind in [
        ("classic", SIGNING, Routing(urgency=3, reference=Reference("KH", "123", "KH/TU")), None),
        ("hybrid", SIGNING_HYBRID, Routing(secrecy=1, due="2025-10-15"), None),
        ("recall", SIGNING, Routing(target=new_packet_id(T0 * 1000)), "recall"),
    ]:
        env, _ = seal_packet(
            sender=SENDER,
            signing_key=key,
            recipients=RECIPIENTS if name != "recall" else RECIPIENTS[:1],
            metadata=meta,
            files=[("Báo cáo quý III.pdf", "application/pdf", b"%PDF-1.7 ...")],
            routing=routing,
            kind=kind or "document",
            created_at=T0,
        )
        out.append((name, env))
    return out


_SEEDS = [env for _, env in sample_envelopes()[:2]]


def _parse_and_verify(data: bytes) -> None:
    envelope = parse_envelope(data)
    envelope.verify_sender(ENTRY)


def _splice(seed: bytes, data: bytes) -> bytes:
    pos = int.from_bytes(data[:2], "big") % len(seed)
    patch = data[2:]
    return seed[:pos] + patch + seed[pos + len(patch) :]


def target(data: bytes) -> None:
    guarded(_parse_and_verify, data)
    if len(data) > 2:
        for seed in _SEEDS:
            guarded(_parse_and_verify, _splice(seed, data))


if __name__ == "__main__":
    run(target)
