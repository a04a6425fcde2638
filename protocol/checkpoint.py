"""Signed checkpoints of the audit log: C2SP signed-note, tlog-checkpoint, tlog-cosignature.

The hub's sequencer signs each tree head it publishes as a checkpoint (DESIGN.md §5):

    <origin>
    <tree size>
    <base64 root hash>
    [extension lines]

    — <key name> base64(key ID || Ed25519 signature)

in the text formats of https://c2sp.org/signed-note, https://c2sp.org/tlog-checkpoint and
https://c2sp.org/tlog-cosignature, so any tool of that ecosystem (witnesses, monitors) can
read them.  Offices act as witnesses: they add Ed25519 ``cosignature/v1`` lines after
checking consistency with the last checkpoint they saw.

Keys travel as the ecosystem's text strings: a verifier key ("vkey")
``<name>+<hex key ID>+<base64(type || public key)>`` and a signer key
``PRIVATE+KEY+<name>+<hex key ID>+<base64(type || seed)>``, where the key ID is the first
four bytes of SHA-256(name || 0x0A || type || public key).

Parsing is strict -- a note that any of those specifications would reject, or that is not
in the one canonical encoding, is a ``checkpoint_malformed`` :class:`RemoteError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Final, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.errors import LocalError, RemoteError
from protocol.merkle import HASH_SIZE, MAX_TREE_SIZE, verify_consistency

__all__ = [
    "MAX_NOTE_SIZE",
    "MAX_SIGNATURES",
    "SIG_TYPE_COSIGNATURE_V1",
    "SIG_TYPE_ED25519",
    "Checkpoint",
    "CosignatureSigner",
    "CosignatureVerifier",
    "Note",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "add_cosignature",
    "check_consistent",
    "open_checkpoint",
    "parse_note",
    "sign_checkpoint",
    "sign_note",
    "verify_cosignatures",
]

#: Largest signed note accepted.  The spec asks verifiers to bound a note's size and accept
#: at least 16 signatures; a checkpoint with even 100 Ed25519 signatures is under 16 KiB.
MAX_NOTE_SIZE: Final = 1 << 20

#: Most signature lines accepted in one note.
MAX_SIGNATURES: Final = 100

#: Signature type byte of plain Ed25519 note signatures (c2sp.org/signed-note).
SIG_TYPE_ED25519: Final = 0x01

#: Signature type byte of timestamped Ed25519 witness cosignatures (c2sp.org/tlog-cosignature).
SIG_TYPE_COSIGNATURE_V1: Final = 0x04

_KEY_HASH_SIZE: Final = 4
_ED25519_SIG_SIZE: Final = 64
_ED25519_KEY_SIZE: Final = 32
_TIMESTAMP_SIZE: Final = 8
_MAX_TIMESTAMP: Final = (1 << 63) - 1

_SIG_PREFIX: Final = "— ".encode()
# Bytes below 0x20 never occur inside a UTF-8 multi-byte sequence, so testing the raw bytes
# finds exactly the ASCII control characters the spec forbids (all but newline).
_CONTROL: Final = re.compile(rb"[\x00-\x09\x0b-\x1f]")
_DECIMAL: Final = re.compile(r"0|[1-9][0-9]{0,19}")
_HEX_KEY_HASH: Final = re.compile(r"[0-9a-fA-F]{8}")
_COSIGNATURE_HEADER: Final = b"cosignature/v1\ntime "


def _malformed(detail: str) -> RemoteError:
    return RemoteError("checkpoint_malformed", detail)


def _b64decode(text: str) -> bytes | None:
    """Strict standard base64: padded, no stray characters, and the one canonical spelling."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    # b64decode ignores non-zero padding bits; re-encoding rejects those alternative
    # spellings, so one signature or hash has one text form.
    if base64.b64encode(raw).decode("ascii") != text:
        return None
    return raw


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def valid_key_name(name: str) -> bool:
    """Key names are non-empty, without Unicode spaces or '+' (signed-note §Format)."""
    if not name or "+" in name or any(c.isspace() or c < " " for c in name):
        return False
    try:
        name.encode()
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8 form
        return False
    return True


def _key_hash(name: str, sig_type: int, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([sig_type]) + public_key).digest()[:4]


# --- checkpoint body ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's tree head: origin line, tree size, root hash and optional extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or _has_control(self.origin):
            raise LocalError("checkpoint origin must be one non-empty line")
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise LocalError(f"checkpoint size {self.size} outside 0..2^64-1")
        if len(self.root_hash) != HASH_SIZE:
            raise LocalError("checkpoint root hash must be 32 bytes")
        if any(not line or _has_control(line) for line in self.extensions):
            raise LocalError("checkpoint extension lines must be non-empty single lines")
        try:
            self.body()
        except UnicodeEncodeError:
            raise LocalError("checkpoint text has characters with no UTF-8 form") from None

    def body(self) -> bytes:
        """The note text: every line newline-terminated, the last one included."""
        lines = [self.origin, str(self.size), _b64encode(self.root_hash), *self.extensions]
        return ("\n".join(lines) + "\n").encode()

    @classmethod
    def parse_body(cls, body: bytes) -> Checkpoint:
        """Parse a note text as a checkpoint; anything off-format is ``checkpoint_malformed``."""
        text = _decode_note_text(body, "checkpoint")
        if not text.endswith("\n"):
            raise _malformed("checkpoint text does not end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise _malformed("checkpoint has fewer than three lines")
        origin, size_text, root_text, *extensions = lines
        if not origin:
            raise _malformed("checkpoint origin line is empty")
        # int() alone would accept "+1", " 1", "1_0" and non-ASCII digits.
        if _DECIMAL.fullmatch(size_text) is None:
            raise _malformed("checkpoint tree size is not a decimal without leading zeros")
        size = int(size_text)
        if size > MAX_TREE_SIZE:
            raise _malformed("checkpoint tree size exceeds 2^64-1")
        root_hash = _b64decode(root_text)
        if root_hash is None or len(root_hash) != HASH_SIZE:
            raise _malformed("checkpoint root hash is not base64 of 32 bytes")
        if any(not line for line in extensions):
            raise _malformed("checkpoint has an empty extension line")
        return cls(origin, size, root_hash, tuple(extensions))


def _has_control(text: str) -> bool:
    return any(c < " " for c in text)


def _decode_note_text(raw: bytes, what: str) -> str:
    if len(raw) > MAX_NOTE_SIZE:
        raise _malformed(f"{what} exceeds {MAX_NOTE_SIZE} bytes")
    if _CONTROL.search(raw) is not None:
        raise _malformed(f"{what} holds an ASCII control character")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed(f"{what} is not valid UTF-8") from None


# --- signed notes -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line of a note: key name, 4-byte key ID and the signature after it."""

    name: str
    key_hash: bytes
    signature: bytes

    def line(self) -> bytes:
        """The signature line, newline included."""
        return _SIG_PREFIX + f"{self.name} {_b64encode(self.key_hash + self.signature)}\n".encode()


@dataclass(frozen=True, slots=True)
class Note:
    """A signed note split into its text and signatures -- none of them verified yet."""

    text: bytes
    signatures: tuple[NoteSignature, ...]

    def encode(self) -> bytes:
        """The note in its wire form."""
        return self.text + b"\n" + b"".join(sig.line() for sig in self.signatures)


def parse_note(note: bytes) -> Note:
    """Split a signed note into text and signature lines, checking only their syntax.

    The text must be ignored until a trusted key's signature over it has been verified:
    use :func:`open_checkpoint` / :func:`verify_cosignatures`.
    """
    _decode_note_text(note, "note")
    split = note.rfind(b"\n\n")
    if split < 0:
        raise _malformed("note has no blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block or not block.endswith(b"\n"):
        raise _malformed("note signatures do not end with a newline")
    lines = block[:-1].split(b"\n")
    if len(lines) > MAX_SIGNATURES:
        raise _malformed(f"note has more than {MAX_SIGNATURES} signatures")
    return Note(text, tuple(_parse_signature_line(line) for line in lines))


def _parse_signature_line(line: bytes) -> NoteSignature:
    if not line.startswith(_SIG_PREFIX):
        raise _malformed("signature line does not start with an em dash and a space")
    name, sep, encoded = line[len(_SIG_PREFIX) :].decode("utf-8").partition(" ")
    if not sep or not valid_key_name(name):
        raise _malformed("signature line has an invalid key name")
    raw = _b64decode(encoded)
    if raw is None or len(raw) <= _KEY_HASH_SIZE:
        raise _malformed("signature is not base64 of a key ID and a signature")
    return NoteSignature(name, raw[:_KEY_HASH_SIZE], raw[_KEY_HASH_SIZE:])


# --- keys ---------------------------------------------------------------------------------


def _key_invalid(detail: str) -> RemoteError:
    return RemoteError("key_invalid", detail)


def _parse_key_string(parts: list[str], sig_type: int, what: str) -> tuple[str, bytes, bytes]:
    """Check ``[name, hex key ID, base64(type || key)]``; return name, key ID and key."""
    if len(parts) != 3:
        raise _key_invalid(f"{what} is not <name>+<key ID>+<key>")
    name, hash_hex, key_b64 = parts
    if not valid_key_name(name):
        raise _key_invalid(f"{what} has an invalid key name")
    if _HEX_KEY_HASH.fullmatch(hash_hex) is None:
        raise _key_invalid(f"{what} key ID is not 8 hex digits")
    raw = _b64decode(key_b64)
    if raw is None or len(raw) != 1 + _ED25519_KEY_SIZE:
        raise _key_invalid(f"{what} key is not base64 of a type byte and 32 bytes")
    if raw[0] != sig_type:
        raise _key_invalid(f"{what} has signature type {raw[0]:#04x}, expected {sig_type:#04x}")
    return name, bytes.fromhex(hash_hex), raw[1:]


class _Verifier:
    """An Ed25519 public key under a name, for one signature type."""

    TYPE: ClassVar[int]
    __slots__ = ("_raw", "key_hash", "name", "public_key")

    def __init__(self, name: str, public_key: Ed25519PublicKey) -> None:
        if not valid_key_name(name):
            raise LocalError(f"invalid key name {name!r}")
        self.name = name
        self.public_key = public_key
        self._raw = public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_hash = _key_hash(name, self.TYPE, self._raw)

    @classmethod
    def from_vkey(cls, vkey: str) -> Self:
        """Parse a verifier key string; any flaw is ``key_invalid``."""
        name, key_hash, raw = _parse_key_string(vkey.split("+", 2), cls.TYPE, "verifier key")
        if _key_hash(name, cls.TYPE, raw) != key_hash:
            raise _key_invalid("verifier key ID does not match its name and key")
        try:
            public_key = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError:
            raise _key_invalid("verifier key is not an Ed25519 public key") from None
        return cls(name, public_key)

    def to_vkey(self) -> str:
        """The verifier key string."""
        return f"{self.name}+{self.key_hash.hex()}+{_b64encode(bytes([self.TYPE]) + self._raw)}"

    def _matches(self, sig: NoteSignature) -> bool:
        # A known key is name *and* ID; sharing only one of them is someone else's key.
        return sig.name == self.name and sig.key_hash == self.key_hash

    def _ed25519_ok(self, signature: bytes, message: bytes) -> bool:
        if len(signature) != _ED25519_SIG_SIZE:
            return False
        try:
            self.public_key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_vkey()!r})"


class _Signer:
    """An Ed25519 private key under a name, for one signature type."""

    TYPE: ClassVar[int]
    __slots__ = ("_private_key", "_public_raw", "key_hash", "name")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        if not valid_key_name(name):
            raise LocalError(f"invalid key name {name!r}")
        self.name = name
        self._private_key = private_key
        self._public_raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_hash = _key_hash(name, self.TYPE, self._public_raw)

    @classmethod
    def generate(cls, name: str) -> Self:
        """A fresh random key under ``name``."""
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_skey(cls, skey: str) -> Self:
        """Parse a ``PRIVATE+KEY+...`` signer key string; any flaw is ``key_invalid``."""
        parts = skey.split("+", 4)
        if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
            raise _key_invalid("signer key is not PRIVATE+KEY+<name>+<key ID>+<key>")
        name, key_hash, seed = _parse_key_string(parts[2:], cls.TYPE, "signer key")
        try:
            private_key = Ed25519PrivateKey.from_private_bytes(seed)
        except ValueError:
            raise _key_invalid("signer key is not an Ed25519 private key") from None
        signer = cls(name, private_key)
        # The key ID is of the public key, so it can only be checked after deriving it.
        if signer.key_hash != key_hash:
            raise _key_invalid("signer key ID does not match its name and key")
        return signer

    def to_skey(self) -> str:
        """The secret signer key string (keep it secret)."""
        seed = self._private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        encoded = _b64encode(bytes([self.TYPE]) + seed)
        return f"PRIVATE+KEY+{self.name}+{self.key_hash.hex()}+{encoded}"

    def __repr__(self) -> str:
        # Never print the private key.
        return f"{type(self).__name__}(name={self.name!r}, key_hash={self.key_hash.hex()})"


class NoteVerifier(_Verifier):
    """Verifies plain Ed25519 note signatures (type 0x01): the log's checkpoint key."""

    TYPE: ClassVar[int] = SIG_TYPE_ED25519
    __slots__ = ()

    def verify(self, text: bytes, signature: bytes) -> bool:
        """Whether ``signature`` (without key ID) is this key's over the note ``text``."""
        return self._ed25519_ok(signature, text)


class NoteSigner(_Signer):
    """Signs note texts with Ed25519 (type 0x01): the log's checkpoint key."""

    TYPE: ClassVar[int] = SIG_TYPE_ED25519
    __slots__ = ()

    def sign(self, text: bytes) -> bytes:
        """The Ed25519 signature over the note ``text`` (without key ID)."""
        return self._private_key.sign(text)

    def verifier(self) -> NoteVerifier:
        """The matching verifier."""
        return NoteVerifier(self.name, self._private_key.public_key())


def _cosigned_message(body: bytes, timestamp: int) -> bytes:
    return _COSIGNATURE_HEADER + str(timestamp).encode() + b"\n" + body


class CosignatureVerifier(_Verifier):
    """Verifies a witness's timestamped Ed25519 ``cosignature/v1`` (type 0x04)."""

    TYPE: ClassVar[int] = SIG_TYPE_COSIGNATURE_V1
    __slots__ = ()

    def verify(self, body: bytes, signature: bytes) -> int | None:
        """The cosignature's timestamp if ``signature`` (without key ID) verifies over
        ``body`` (the checkpoint text), else None."""
        if len(signature) != _TIMESTAMP_SIZE + _ED25519_SIG_SIZE:
            return None
        timestamp = int.from_bytes(signature[:_TIMESTAMP_SIZE], "big")
        if timestamp > _MAX_TIMESTAMP:
            return None
        message = _cosigned_message(body, timestamp)
        if not self._ed25519_ok(signature[_TIMESTAMP_SIZE:], message):
            return None
        return timestamp


class CosignatureSigner(_Signer):
    """A witness's key: signs timestamped Ed25519 ``cosignature/v1`` (type 0x04)."""

    TYPE: ClassVar[int] = SIG_TYPE_COSIGNATURE_V1
    __slots__ = ()

    def sign(self, body: bytes, timestamp: int) -> bytes:
        """``timestamp || signature`` over ``body`` (the checkpoint text), without key ID.

        ``timestamp`` is POSIX seconds; the caller owns the clock.
        """
        if not 0 <= timestamp <= _MAX_TIMESTAMP:
            raise LocalError(f"cosignature timestamp {timestamp} outside 0..2^63-1")
        signature = self._private_key.sign(_cosigned_message(body, timestamp))
        return timestamp.to_bytes(_TIMESTAMP_SIZE, "big") + signature

    def verifier(self) -> CosignatureVerifier:
        """The matching verifier."""
        return CosignatureVerifier(self.name, self._private_key.public_key())


# --- signing and opening checkpoints ------------------------------------------------------


def sign_note(text: bytes, signer: NoteSigner) -> bytes:
    """A signed note of ``text`` (which must end in a newline) with one Ed25519 signature."""
    if not text.endswith(b"\n"):
        raise LocalError("a note text must end with a newline")
    signature = NoteSignature(signer.name, signer.key_hash, signer.sign(text))
    return Note(text, (signature,)).encode()


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner) -> bytes:
    """The whole signed note of ``checkpoint``, signed by the log's key."""
    return sign_note(checkpoint.body(), signer)


def open_checkpoint(
    note: bytes, log_verifier: NoteVerifier, *, origin: str | None = None
) -> Checkpoint:
    """Verify the log's signature on a checkpoint note and parse its body.

    Signatures by other keys (witnesses, a rotated log key) are ignored, as the spec
    requires; use :func:`verify_cosignatures` for witnesses.  The checkpoint's origin must
    be ``origin``, by default the log key's name.
    """
    parsed = parse_note(note)
    signed = False
    for sig in parsed.signatures:
        if log_verifier._matches(sig):
            if not log_verifier.verify(parsed.text, sig.signature):
                raise RemoteError(
                    "checkpoint_signature_invalid",
                    f"the signature by {sig.name} does not verify",
                )
            signed = True
    if not signed:
        raise RemoteError(
            "checkpoint_signature_invalid",
            f"the checkpoint carries no signature by {log_verifier.name}+"
            f"{log_verifier.key_hash.hex()}",
        )
    checkpoint = Checkpoint.parse_body(parsed.text)
    expected = log_verifier.name if origin is None else origin
    if checkpoint.origin != expected:
        raise _malformed(f"checkpoint origin {checkpoint.origin!r} is not {expected!r}")
    return checkpoint


def add_cosignature(note: bytes, cosigner: CosignatureSigner, timestamp: int) -> bytes:
    """``note`` with ``cosigner``'s cosignature at ``timestamp`` added (or replaced).

    Only formats: a witness must first have verified the log's signature and consistency
    with the last checkpoint it cosigned.
    """
    parsed = parse_note(note)
    Checkpoint.parse_body(parsed.text)
    signature = NoteSignature(
        cosigner.name, cosigner.key_hash, cosigner.sign(parsed.text, timestamp)
    )
    kept = tuple(
        sig
        for sig in parsed.signatures
        if not (sig.name == cosigner.name and sig.key_hash == cosigner.key_hash)
    )
    if len(kept) >= MAX_SIGNATURES:
        raise _malformed(f"note already has {MAX_SIGNATURES} signatures")
    return Note(parsed.text, (*kept, signature)).encode()


def verify_cosignatures(
    note: bytes, verifiers: Sequence[CosignatureVerifier], threshold: int
) -> list[str]:
    """Names of the known witnesses whose cosignature verifies; at least ``threshold``.

    Cosignatures by unknown keys are ignored.  A known witness's cosignature that does not
    verify rejects the note, as does having fewer than ``threshold`` valid ones.  This does
    not check the log's own signature: call :func:`open_checkpoint` too.
    """
    known = {(v.name, v.key_hash): v for v in verifiers}
    if len(known) != len(verifiers):
        raise LocalError("two witnesses share a key name and ID")
    if not 0 <= threshold <= len(verifiers):
        raise LocalError(f"threshold {threshold} outside 0..{len(verifiers)}")
    parsed = parse_note(note)
    Checkpoint.parse_body(parsed.text)
    valid: list[str] = []
    for sig in parsed.signatures:
        verifier = known.get((sig.name, sig.key_hash))
        if verifier is None:
            continue
        if verifier.verify(parsed.text, sig.signature) is None:
            raise RemoteError(
                "cosignature_invalid", f"the cosignature by witness {sig.name} does not verify"
            )
        if sig.name not in valid:
            valid.append(sig.name)
    if len(valid) < threshold:
        raise RemoteError(
            "cosignature_invalid",
            f"{len(valid)} valid witness cosignatures, {threshold} of {len(verifiers)} required",
        )
    return valid


def check_consistent(old: Checkpoint, new: Checkpoint, proof: Sequence[bytes]) -> None:
    """Check that ``new`` extends ``old`` (both already verified) using a consistency proof.

    Anything else -- another origin, a smaller tree, the same size with another root, a
    proof that does not verify -- is ``checkpoint_inconsistent``: given two checkpoints the
    log signed, the log must always be able to prove the newer one extends the older.
    """
    if old.origin != new.origin:
        raise RemoteError(
            "checkpoint_inconsistent",
            f"checkpoints of different logs: {old.origin!r} and {new.origin!r}",
        )
    if new.size < old.size:
        raise RemoteError(
            "checkpoint_inconsistent", f"tree shrank from {old.size} to {new.size} leaves"
        )
    try:
        verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof)
    except RemoteError as exc:
        raise RemoteError(
            "checkpoint_inconsistent",
            f"no proof that tree {new.size} extends tree {old.size}: {exc.detail}",
        ) from exc
