"""Fuzz protocol.codec.decode: strict deterministic CBOR from untrusted bytes.

Every input decodes or raises a RemoteError (a ``cbor_*`` code), nothing else; and what
decodes re-encodes to exactly the input: one value, one encoding.

Run: ``python tests/fuzz/fuzz_cbor.py -atheris_runs=3000 tests/fuzz/corpus/fuzz_cbor``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protocol.codec import decode, encode
from tests.fuzz._harness import guarded, run


def _decode(data: bytes) -> None:
    value = decode(data)
    if encode(value) != data:
        raise AssertionError("a decoded value does not re-encode to its input")


def target(data: bytes) -> None:
    guarded(_decode, data)


if __name__ == "__main__":
    run(target)
