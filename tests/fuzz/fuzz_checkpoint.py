"""Fuzz the signed-note and checkpoint parsers of :mod:`protocol.checkpoint`.

Random bytes rarely carry a valid signature, so besides feeding them raw to every entry
point this harness also (a) wraps them as the text of a note the log really signed, which
drives the body parser behind a passing signature check, and (b) reads them as edits to a
genuine cosigned checkpoint, which reaches every signature-line path.  Beyond "parse or
raise a RemoteError" it checks that what opens is exactly what was signed.

Run: ``python tests/fuzz/fuzz_checkpoint.py -atheris_runs=5000``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.checkpoint import (
    Checkpoint,
    CosignatureSigner,
    Note,
    NoteSignature,
    NoteSigner,
    add_cosignature,
    open_checkpoint,
    parse_note,
    sign_checkpoint,
    verify_cosignatures,
)
from tests.fuzz._harness import guarded, run

_LOG = NoteSigner("fuzz.example/log", Ed25519PrivateKey.from_private_bytes(b"\x01" * 32))
_LOG_VERIFIER = _LOG.verifier()
_WITNESS = CosignatureSigner("fuzz.example/w", Ed25519PrivateKey.from_private_bytes(b"\x02" * 32))
_WITNESS_VERIFIER = _WITNESS.verifier()
_CHECKPOINT = Checkpoint("fuzz.example/log", 7, b"\x07" * 32, ("ext",))
_VALID = add_cosignature(sign_checkpoint(_CHECKPOINT, _LOG), _WITNESS, 1_700_000_000)


def _check(ok: bool, what: str) -> None:
    # Not ``assert``: the invariants (and the calls inside them) must survive ``python -O``.
    if not ok:
        raise AssertionError(what)


def _open_raw(data: bytes) -> None:
    cp = open_checkpoint(data, _LOG_VERIFIER)
    _check(
        Checkpoint.parse_body(cp.body()) == cp,
        "an opened checkpoint must round-trip through its body",
    )


def _parse_raw(data: bytes) -> None:
    note = parse_note(data)
    _check(note.encode() == data, "a parsed note must re-encode to the same bytes")


def _open_signed(data: bytes) -> None:
    # Any text, validly signed by the log: only the body rules stand between it and a
    # Checkpoint.  An accepted one must be exactly the text that was signed.
    sig = NoteSignature(_LOG.name, _LOG.key_hash, _LOG.sign(data))
    note = Note(data, (sig,)).encode()
    cp = open_checkpoint(note, _LOG_VERIFIER, origin=_origin(data))
    _check(cp.body() == data, "an opened checkpoint must be the text that was signed")
    cosigned = add_cosignature(note, _WITNESS, 1_700_000_000)
    _check(
        verify_cosignatures(cosigned, [_WITNESS_VERIFIER], 1) == [_WITNESS.name],
        "a fresh cosignature must verify",
    )
    _check(
        open_checkpoint(cosigned, _LOG_VERIFIER, origin=cp.origin) == cp,
        "cosigning must not change the checkpoint",
    )


def _edited(data: bytes) -> bytes:
    """The genuine cosigned note, edited by ``position (2) || op (1) || value (1)`` groups."""
    note = bytearray(_VALID)
    for i in range(0, len(data) - 3, 4):
        pos = int.from_bytes(data[i : i + 2], "big") % (len(note) + 1)
        op, value = data[i + 2] % 3, data[i + 3]
        if op == 0 and pos < len(note):
            note[pos] = value
        elif op == 1:
            note.insert(pos, value)
        elif pos < len(note):
            del note[pos]
    return bytes(note)


def _open_edited(data: bytes) -> None:
    # Edits may only survive in signature lines other than the log's: the checkpoint that
    # opens is always the one signed.
    _check(
        open_checkpoint(_edited(data), _LOG_VERIFIER) == _CHECKPOINT,
        "an edited note opened as another checkpoint",
    )


def _cosignatures_edited(data: bytes) -> None:
    note = _edited(data)
    _check(
        verify_cosignatures(note, [_WITNESS_VERIFIER], 1) == [_WITNESS.name],
        "an edited note lost or gained a cosigner",
    )
    _check(parse_note(note).text == _CHECKPOINT.body(), "a cosignature survived a body edit")


def _origin(data: bytes) -> str:
    first = data.split(b"\n", 1)[0]
    return first.decode("utf-8", "replace") or "x"


def _cosignatures(data: bytes) -> None:
    verify_cosignatures(data, [_WITNESS_VERIFIER], 1)


def _add_cosignature(data: bytes) -> None:
    verify_cosignatures(add_cosignature(data, _WITNESS, 42), [_WITNESS_VERIFIER], 1)


def target(data: bytes) -> None:
    """Every checkpoint entry point: parse, or raise a RemoteError."""
    guarded(_parse_raw, data)
    guarded(_open_raw, data)
    guarded(Checkpoint.parse_body, data)
    guarded(_open_signed, data)
    guarded(_cosignatures, data)
    guarded(_add_cosignature, data)
    guarded(_open_edited, data)
    guarded(_cosignatures_edited, data)


if __name__ == "__main__":
    run(target)
