"""Fuzz the proof-bundle verifier of :mod:`protocol.bundle`.

Random bytes rarely get past the checkpoint's signature, so besides feeding them raw to
:func:`~protocol.bundle.verify_bundle` the harness reads them as edits to a genuine bundle
(``position (2) || op (1) || value (1)`` groups: set, insert or delete a byte).  Beyond
"verify or raise a RemoteError" it checks that whatever verifies after edits is a subset of
the genuine events, each at its genuine index: no edit may forge or move an event.

Run: ``python tests/fuzz/fuzz_bundle.py -atheris_runs=5000``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.audit import encode_event
from protocol.bundle import BundleEvent, encode_bundle, open_bundle, verify_bundle
from protocol.checkpoint import (
    Checkpoint,
    CosignatureSigner,
    NoteSigner,
    add_cosignature,
    sign_checkpoint,
)
from protocol.merkle import MemoryHashStore, inclusion_proof, leaf_hash
from tests.fuzz._harness import guarded, run

ORIGIN = "lienthong.hub/fuzz"
LOG = NoteSigner(ORIGIN, Ed25519PrivateKey.from_private_bytes(b"\x03" * 32))
LOG_VERIFIER = LOG.verifier()
WITNESS = CosignatureSigner(
    "lienthong.witness/000.00.01.H41", Ed25519PrivateKey.from_private_bytes(b"\x04" * 32)
)
WITNESS_VERIFIER = WITNESS.verifier()
PACKET = bytes.fromhex("019a0000000070008000000000000001")
DIGEST = bytes(range(32))
#: Leaf indexes of the packet's events in the sample log of 13 entries.
PACKET_INDEXES = (2, 7, 11)


def _entries() -> list[bytes]:
    out = [
        encode_event(
            "body_fetched",
            1_750_000_000 + i,
            packet_id=i.to_bytes(16, "big"),
            envelope_digest=bytes(32),
            organ="000.00.09.H41",
        )
        for i in range(13)
    ]
    out[2] = encode_event(
        "packet_accepted",
        1_750_000_002,
        packet_id=PACKET,
        envelope_digest=DIGEST,
        sender="000.00.00.H41",
        recipients=["000.00.01.H41", "000.00.02.H41"],
        packet_kind="document",
        urgency=3,
        secrecy=0,
        created=1_750_000_000,
        body_size=10240,
        body_sha256=bytes(32),
        transport="http",
    )
    out[7] = encode_event(
        "body_fetched",
        1_750_000_007,
        packet_id=PACKET,
        envelope_digest=DIGEST,
        organ="000.00.01.H41",
    )
    out[11] = encode_event(
        "receipt",
        1_750_000_011,
        packet_id=PACKET,
        envelope_digest=DIGEST,
        organ="000.00.01.H41",
        status="01",
        receipt=b"\xa2dbodyAxcsig\xa0",
    )
    return out


ENTRIES = _entries()


def sample_bundle(*, cosigned: bool = False, indexes: tuple[int, ...] = PACKET_INDEXES) -> bytes:
    """A genuine bundle of the sample log (optionally with a witness cosignature)."""
    store = MemoryHashStore(leaf_hash(e) for e in ENTRIES)
    checkpoint = Checkpoint(ORIGIN, store.size, store.root(), ("time 1750000100",))
    note = sign_checkpoint(checkpoint, LOG)
    if cosigned:
        note = add_cosignature(note, WITNESS, 1_750_000_200)
    events = [
        BundleEvent(i, ENTRIES[i], tuple(inclusion_proof(i, store.size, store))) for i in indexes
    ]
    return encode_bundle(PACKET, note, events)


VALID = sample_bundle(cosigned=True)


def _check(ok: bool, what: str) -> None:
    # Not ``assert``: the invariants must survive ``python -O``.
    if not ok:
        raise AssertionError(what)


def _edited(data: bytes) -> bytes:
    bundle = bytearray(VALID)
    for i in range(0, len(data) - 3, 4):
        pos = int.from_bytes(data[i : i + 2], "big") % (len(bundle) + 1)
        op, value = data[i + 2] % 3, data[i + 3]
        if op == 0 and pos < len(bundle):
            bundle[pos] = value
        elif op == 1:
            bundle.insert(pos, value)
        elif pos < len(bundle):
            del bundle[pos]
    return bytes(bundle)


def _verify_raw(data: bytes) -> None:
    verify_bundle(data, LOG_VERIFIER)


def _verify_edited(data: bytes) -> None:
    opened = open_bundle(_edited(data), LOG_VERIFIER, witnesses=[WITNESS_VERIFIER], threshold=1)
    for index, event in zip(opened.indexes, opened.events, strict=True):
        _check(index in PACKET_INDEXES, f"an event verified at index {index}")
        _check(event.raw == ENTRIES[index], f"entry {index} verified with other bytes")
    _check(opened.packet_id == PACKET, "the bundle verified for another packet")


def target(data: bytes) -> None:
    """Verify, or raise a RemoteError; edits never forge or move an event."""
    guarded(_verify_raw, data)
    guarded(_verify_edited, data)


if __name__ == "__main__":
    run(target)
