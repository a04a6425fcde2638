"""The signed container every Lienthong object travels in.

``{"body": <bytes>, "sig": {"ed25519": ..., "mldsa65": ...}}`` in deterministic CBOR.  The
signature is over the *exact* body bytes (never a re-serialised object): the hub stores and
forwards those bytes verbatim, and their SHA-256 is the object's digest (the envelope
digest receipts name).  The signer's key id is inside the body, so it is signed too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .codec import Fields, decode, encode
from .errors import RemoteError
from .keys import SigningPrivateKey, SigningPublicKey

#: Signature contexts: one per object type, so no signature can be replayed as another's.
CTX_ENVELOPE = b"lienthong/v1 envelope"
CTX_DIRECTORY = b"lienthong/v1 directory entry"
CTX_RECEIPT = b"lienthong/v1 receipt"
CTX_HUB_RECEIPT = b"lienthong/v1 hub receipt"
CTX_SESSION = b"lienthong/v1 session challenge"
CTX_ENROL = b"lienthong/v1 enrolment"

_SIG_MAX = 8 * 1024


@dataclass(frozen=True, slots=True)
class Signed:
    """A parsed container: the body bytes as received and the signature map."""

    body: bytes
    signatures: dict[str, bytes]
    raw: bytes

    @property
    def digest(self) -> bytes:
        """SHA-256 of the body bytes: the object's identity in receipts and the log."""
        return hashlib.sha256(self.body).digest()

    def verify(self, key: SigningPublicKey, context: bytes) -> None:
        key.verify(context, self.body, self.signatures)


def sign(key: SigningPrivateKey, context: bytes, body: bytes) -> bytes:
    """Sign ``body`` and wrap both in the container."""
    return encode({"body": body, "sig": key.sign(context, body)})


def parse(data: bytes, *, max_size: int, where: str) -> Signed:
    """Strictly parse a container (no verification yet: the signer is named inside)."""
    f = Fields(decode(data, max_size=max_size, max_depth=3), where)
    body = f.blob("body", max_size=max_size)
    sig_fields = f.map("sig")
    sigs: dict[str, bytes] = {}
    for name in ("ed25519", "mldsa65"):
        value = sig_fields.opt_blob(name)
        if value is not None:
            if len(value) > _SIG_MAX:
                raise RemoteError("field_invalid", f"{where}: {name} signature too large")
            sigs[name] = value
    sig_fields.done()
    f.done()
    return Signed(body, sigs, bytes(data))
