"""Fuzz the audit-proof verifier of :mod:`protocol.evidence` (what ``lienthong-audit verify``
runs on a file an auditor was handed).

Besides raw bytes, the harness reads its input as edits to a genuine, witness-cosigned
proof (``position (2) || op (1) || value (1)`` groups: set, insert or delete a byte).
Beyond "verify or raise a RemoteError" it checks that whatever verifies after edits
proves exactly the genuine facts: the same events at the same indexes, the same receipt
verified by the same organ, the same witness.

Run: ``python tests/fuzz/fuzz_audit_proof.py -atheris_runs=5000``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protocol.evidence import verify_proof
from tests.audit.proofs import build, proof
from tests.fuzz._harness import guarded, run

LOG = build()
VALID = proof(LOG, LOG.note(LOG.province))
GENUINE = verify_proof(VALID)


def _check(ok: bool, what: str) -> None:
    # Not ``assert``: the invariants must survive ``python -O``.
    if not ok:
        raise AssertionError(what)


def _edited(data: bytes) -> bytes:
    out = bytearray(VALID)
    for i in range(0, len(data) - 3, 4):
        pos = int.from_bytes(data[i : i + 2], "big") % (len(out) + 1)
        op, value = data[i + 2] % 3, data[i + 3]
        if op == 0 and pos < len(out):
            out[pos] = value
        elif op == 1:
            out.insert(pos, value)
        elif pos < len(out):
            del out[pos]
    return bytes(out)


def _verify_edited(data: bytes) -> None:
    verified = verify_proof(
        _edited(data), hub_key=LOG.hub.public_key(), authority=LOG.authority.public_key()
    )
    _check(verified.bundle.indexes == GENUINE.bundle.indexes, "events moved")
    _check(
        [e.raw for e in verified.bundle.events] == [e.raw for e in GENUINE.bundle.events],
        "an event verified with other bytes",
    )
    _check(verified.receipts == GENUINE.receipts, "another receipt verified")
    _check(verified.witnesses.keys() == GENUINE.witnesses.keys(), "another witness verified")


def target(data: bytes) -> None:
    guarded(verify_proof, data)
    guarded(_verify_edited, data)


if __name__ == "__main__":
    run(target)
