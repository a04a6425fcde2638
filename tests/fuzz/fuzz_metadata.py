"""Fuzz the encrypted metadata parser: DocumentMetadata.from_cbor(decode(data)).

This is what an opener parses once the metadata's AEAD tag has verified, so only a
dishonest sender can reach it -- all the more reason it must parse or raise a RemoteError.

Run: ``python tests/fuzz/fuzz_metadata.py -atheris_runs=3000 tests/fuzz/corpus/fuzz_metadata``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protocol.codec import decode
from protocol.packet import DocumentMetadata
from tests.fuzz._harness import guarded, run


def _parse(data: bytes) -> None:
    # The same bounds as protocol.packet.Opener.
    DocumentMetadata.from_cbor(decode(data, max_size=1 << 20, max_depth=4))


def target(data: bytes) -> None:
    guarded(_parse, data)


if __name__ == "__main__":
    run(target)
