"""Fuzz the Merkle proof verifiers of :mod:`protocol.merkle`.

The input is read as ``flags (1) || a (8) || b (8) || rest``.  Two kinds of run:

* raw: ``a`` and ``b`` are any uint64 size and index, ``rest`` is cut into 32-byte hashes
  (leaf or old root, root, then the proof; the last piece may be short);
* tampered: a genuine proof from a real 64-leaf tree is XORed with ``rest``, maybe cut or
  extended, and checked against a claimed index or sizes -- always with the true root of
  the claimed size, as a checkpoint would give.  A proof that then verifies must be the
  genuine proof of exactly that claim: anything else is a forgery the verifier let through.

Run: ``python tests/fuzz/fuzz_merkle_proof.py -atheris_runs=5000``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protocol.merkle import (
    MemoryHashStore,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    tree_hash,
    verify_consistency,
    verify_inclusion,
)
from tests.fuzz._harness import guarded, run

_N = 64
_STORE = MemoryHashStore(leaf_hash(b"%d" % i) for i in range(_N))
_ROOTS = [tree_hash(n, _STORE) for n in range(_N + 1)]


def _check(ok: bool, what: str) -> None:
    # Not ``assert``: the invariants (and the calls inside them) must survive ``python -O``.
    if not ok:
        raise AssertionError(what)


def _u64(raw: bytes) -> int:
    return int.from_bytes(raw[:8].ljust(8, b"\x00"), "big")


def _split(data: bytes) -> tuple[int, int, int, bytes]:
    flags = data[0] if data else 0
    return flags, _u64(data[1:9]), _u64(data[9:17]), data[17:]


def _hashes(raw: bytes) -> list[bytes]:
    return [raw[i : i + 32] for i in range(0, len(raw), 32)]


def _raw_inclusion(data: bytes) -> None:
    _, size, index, rest = _split(data)
    hashes = _hashes(rest)
    leaf = hashes[0] if hashes else b""
    root = hashes[1] if len(hashes) > 1 else b""
    verify_inclusion(leaf, index, size, hashes[2:], root)


def _raw_consistency(data: bytes) -> None:
    _, new, old, rest = _split(data)
    hashes = _hashes(rest)
    old_root = hashes[0] if hashes else b""
    new_root = hashes[1] if len(hashes) > 1 else b""
    verify_consistency(old, new, old_root, new_root, hashes[2:])


def _tamper(proof: list[bytes], flags: int, mask: bytes) -> list[bytes]:
    flat = bytearray(b"".join(proof))
    for i, m in enumerate(mask[: len(flat)]):
        flat[i] ^= m
    out = _hashes(bytes(flat))
    if flags & 0x02 and out:
        out.pop()
    if flags & 0x04:
        out.append(mask[-32:])
    if flags & 0x08 and out:
        out.insert(0, out[-1])
    return out


def _tampered_inclusion(data: bytes) -> None:
    flags, a, b, rest = _split(data)
    size = 1 + a % _N
    index = b % size
    proof = _tamper(inclusion_proof(index, size, _STORE), flags, rest)
    claimed_size = (a >> 8) % (_N + 1) if flags & 0x10 else size
    claimed_index = b >> 8 if flags & 0x20 else index
    verify_inclusion(
        leaf_hash(b"%d" % index), claimed_index, claimed_size, proof, _ROOTS[claimed_size]
    )
    _check(claimed_index == index, "a leaf verified at another index")
    _check(proof == inclusion_proof(index, claimed_size, _STORE), "a forged proof verified")


def _tampered_consistency(data: bytes) -> None:
    flags, a, b, rest = _split(data)
    new = a % (_N + 1)
    old = b % (new + 1)
    proof = _tamper(consistency_proof(old, new, _STORE), flags, rest)
    claimed_new = (a >> 8) % (_N + 1) if flags & 0x10 else new
    claimed_old = (b >> 8) % (_N + 1) if flags & 0x20 else old
    verify_consistency(claimed_old, claimed_new, _ROOTS[claimed_old], _ROOTS[claimed_new], proof)
    genuine = consistency_proof(claimed_old, claimed_new, _STORE)
    _check(proof == genuine, "a forged consistency proof verified")


def target(data: bytes) -> None:
    """Every proof verifier: verify, or raise a RemoteError; never accept a forgery."""
    guarded(_raw_inclusion, data)
    guarded(_raw_consistency, data)
    guarded(_tampered_inclusion, data)
    guarded(_tampered_consistency, data)


if __name__ == "__main__":
    run(target)
