"""Keys, key ids and signatures.

Two kinds of key per organ, each classic or hybrid post-quantum:

* **signing**: ``ed25519``, or ``ed25519+mldsa65`` where *both* signatures must verify, so
  the packet stays authentic if either scheme falls;
* **encryption** (HPKE, RFC 9180, base mode): ``x25519`` (DHKEM(X25519, HKDF-SHA256)), or
  ``mlkem768x25519`` (the ML-KEM-768 + X25519 hybrid KEM), both with HKDF-SHA256 and
  AES-256-GCM, as shipped by ``cryptography`` 48+.

A **key id** is SHA-256 over a label, the algorithm name and the raw public key: it names
the key and its algorithm, so a hybrid key can never be presented as a classic one (and a
missing ML-DSA signature is caught rather than ignored).

Signatures are made over ``context || 0x00 || message``: every signed object type has its
own context string, so a signature on a receipt can never be replayed as one on an
envelope.  They travel as a CBOR map ``{"ed25519": sig, "mldsa65": sig}``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519

from .errors import LocalError, RemoteError

SIG_ED25519: Final = "ed25519"
SIG_HYBRID: Final = "ed25519+mldsa65"
ENC_X25519: Final = "x25519"
ENC_HYBRID: Final = "mlkem768x25519"
SIGNING_ALGS: Final = (SIG_ED25519, SIG_HYBRID)
ENCRYPTION_ALGS: Final = (ENC_X25519, ENC_HYBRID)

KID_SIZE: Final = 32
_ED_PUB: Final = 32
_MLDSA_PUB: Final = 1952
_MLKEM_PUB: Final = 1184
_X_PUB: Final = 32
_SEED: Final = 32
_MLKEM_SEED: Final = 64

_SUITES: Final = {
    ENC_X25519: hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
    ENC_HYBRID: hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
}
#: HPKE encapsulated key + AES-256-GCM tag around a 32-byte content key.
WRAPPED_SIZE: Final = {ENC_X25519: 32 + 32 + 16, ENC_HYBRID: 1088 + 32 + 32 + 16}


def key_id(alg: str, raw_public: bytes) -> bytes:
    """SHA-256 over a label, the algorithm and the raw public key."""
    return hashlib.sha256(b"lienthong/v1 key id\x00" + alg.encode() + b"\x00" + raw_public).digest()


def fingerprint(kid: bytes) -> str:
    """Short, human-comparable form of a key id (first 16 bytes, hex in groups of 4)."""
    h = kid[:16].hex()
    return ":".join(h[i : i + 4] for i in range(0, len(h), 4))


def _signed_message(context: bytes, message: bytes) -> bytes:
    return context + b"\x00" + message


# --- signing -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SigningPublicKey:
    """A verifying key: Ed25519, or Ed25519 + ML-DSA-65."""

    alg: str
    raw: bytes
    _ed: ed25519.Ed25519PublicKey
    _ml: mldsa.MLDSA65PublicKey | None

    @classmethod
    def from_raw(cls, alg: str, raw: bytes) -> SigningPublicKey:
        try:
            if alg == SIG_ED25519 and len(raw) == _ED_PUB:
                return cls(alg, raw, ed25519.Ed25519PublicKey.from_public_bytes(raw), None)
            if alg == SIG_HYBRID and len(raw) == _ED_PUB + _MLDSA_PUB:
                return cls(
                    alg,
                    raw,
                    ed25519.Ed25519PublicKey.from_public_bytes(raw[:_ED_PUB]),
                    mldsa.MLDSA65PublicKey.from_public_bytes(raw[_ED_PUB:]),
                )
        except ValueError as exc:
            raise RemoteError("key_invalid", f"{alg} public key: {exc}") from None
        if alg not in SIGNING_ALGS:
            raise RemoteError("algorithm_unsupported", f"signing algorithm {alg!r}")
        raise RemoteError("key_invalid", f"{alg} public key of {len(raw)} bytes")

    @property
    def kid(self) -> bytes:
        return key_id(self.alg, self.raw)

    def verify(self, context: bytes, message: bytes, signatures: Any) -> None:
        """Verify the signature map; every signature the algorithm needs must verify."""
        if not isinstance(signatures, dict):
            raise RemoteError("field_invalid", "signatures must be a map")
        needed = {"ed25519"} if self._ml is None else {"ed25519", "mldsa65"}
        extra = set(signatures) - needed
        if extra:
            raise RemoteError(
                "signature_unexpected", f"unexpected signature {sorted(map(str, extra))[0]}"
            )
        missing = needed - set(signatures)
        if missing:
            code = "hybrid_signature_missing" if self._ml is not None else "signature_invalid"
            raise RemoteError(code, f"the {sorted(missing)[0]} signature is missing")
        data = _signed_message(context, message)
        ed_sig = signatures["ed25519"]
        if not isinstance(ed_sig, bytes) or len(ed_sig) != 64:
            raise RemoteError("signature_invalid", "Ed25519 signature must be 64 bytes")
        try:
            self._ed.verify(ed_sig, data)
        except InvalidSignature:
            raise RemoteError(
                "signature_invalid", "the Ed25519 signature does not verify"
            ) from None
        if self._ml is not None:
            ml_sig = signatures["mldsa65"]
            if not isinstance(ml_sig, bytes):
                raise RemoteError("signature_invalid", "ML-DSA-65 signature must be bytes")
            try:
                self._ml.verify(ml_sig, data)
            except (InvalidSignature, ValueError):
                raise RemoteError(
                    "signature_invalid", "the ML-DSA-65 signature does not verify"
                ) from None

    def to_cbor(self) -> dict[str, Any]:
        return {"alg": self.alg, "pub": self.raw}


@dataclass(frozen=True, slots=True)
class SigningPrivateKey:
    """A signing key held by its owner only."""

    alg: str
    _ed: ed25519.Ed25519PrivateKey
    _ml: mldsa.MLDSA65PrivateKey | None

    @classmethod
    def generate(cls, *, hybrid: bool = False) -> SigningPrivateKey:
        if hybrid:
            return cls(
                SIG_HYBRID, ed25519.Ed25519PrivateKey.generate(), mldsa.MLDSA65PrivateKey.generate()
            )
        return cls(SIG_ED25519, ed25519.Ed25519PrivateKey.generate(), None)

    @classmethod
    def from_private_bytes(cls, alg: str, data: bytes) -> SigningPrivateKey:
        """Load from :meth:`private_bytes`: the Ed25519 seed, then the ML-DSA-65 seed."""
        if alg == SIG_ED25519 and len(data) == _SEED:
            return cls(alg, ed25519.Ed25519PrivateKey.from_private_bytes(data), None)
        if alg == SIG_HYBRID and len(data) == 2 * _SEED:
            return cls(
                alg,
                ed25519.Ed25519PrivateKey.from_private_bytes(data[:_SEED]),
                mldsa.MLDSA65PrivateKey.from_seed_bytes(data[_SEED:]),
            )
        raise LocalError(f"not a {alg} private key")

    def private_bytes(self) -> bytes:
        ed = self._ed.private_bytes_raw()
        return ed if self._ml is None else ed + self._ml.private_bytes_raw()

    def public_key(self) -> SigningPublicKey:
        ed_pub = self._ed.public_key()
        raw = ed_pub.public_bytes_raw()
        ml_pub = None
        if self._ml is not None:
            ml_pub = self._ml.public_key()
            raw += ml_pub.public_bytes_raw()
        return SigningPublicKey(self.alg, raw, ed_pub, ml_pub)

    @property
    def kid(self) -> bytes:
        return self.public_key().kid

    def sign(self, context: bytes, message: bytes) -> dict[str, bytes]:
        data = _signed_message(context, message)
        out = {"ed25519": self._ed.sign(data)}
        if self._ml is not None:
            out["mldsa65"] = self._ml.sign(data)
        return out


# --- encryption (HPKE key wrap) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EncryptionPublicKey:
    """An HPKE recipient key: X25519, or ML-KEM-768 + X25519."""

    alg: str
    raw: bytes
    _key: Any

    @classmethod
    def from_raw(cls, alg: str, raw: bytes) -> EncryptionPublicKey:
        try:
            if alg == ENC_X25519 and len(raw) == _X_PUB:
                return cls(alg, raw, x25519.X25519PublicKey.from_public_bytes(raw))
            if alg == ENC_HYBRID and len(raw) == _MLKEM_PUB + _X_PUB:
                key = hpke.MLKEM768X25519PublicKey(
                    mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM_PUB]),
                    x25519.X25519PublicKey.from_public_bytes(raw[_MLKEM_PUB:]),
                )
                return cls(alg, raw, key)
        except ValueError as exc:
            raise RemoteError("key_invalid", f"{alg} public key: {exc}") from None
        if alg not in ENCRYPTION_ALGS:
            raise RemoteError("algorithm_unsupported", f"encryption algorithm {alg!r}")
        raise RemoteError("key_invalid", f"{alg} public key of {len(raw)} bytes")

    @property
    def kid(self) -> bytes:
        return key_id(self.alg, self.raw)

    def wrap(self, secret: bytes, info: bytes) -> bytes:
        """HPKE single-shot seal of ``secret``: encapsulated key followed by ciphertext."""
        try:
            return bytes(_SUITES[self.alg].encrypt(secret, self._key, info=info))
        except ValueError:
            # A low-order X25519 point parses but gives an all-zero shared secret, which
            # the DH refuses: the recipient's published key is unusable.
            raise RemoteError("key_invalid", f"{self.alg} public key is unusable") from None

    def to_cbor(self) -> dict[str, Any]:
        return {"alg": self.alg, "pub": self.raw}


@dataclass(frozen=True, slots=True)
class EncryptionPrivateKey:
    alg: str
    _seed: bytes
    _key: Any
    _public: EncryptionPublicKey

    @classmethod
    def generate(cls, *, hybrid: bool = False) -> EncryptionPrivateKey:
        if hybrid:
            ml = mlkem.MLKEM768PrivateKey.generate()
            xk = x25519.X25519PrivateKey.generate()
            return cls._hybrid(ml, xk)
        return cls._classic(x25519.X25519PrivateKey.generate())

    @classmethod
    def _classic(cls, xk: x25519.X25519PrivateKey) -> EncryptionPrivateKey:
        pub = xk.public_key().public_bytes_raw()
        return cls(
            ENC_X25519, xk.private_bytes_raw(), xk, EncryptionPublicKey.from_raw(ENC_X25519, pub)
        )

    @classmethod
    def _hybrid(
        cls, ml: mlkem.MLKEM768PrivateKey, xk: x25519.X25519PrivateKey
    ) -> EncryptionPrivateKey:
        raw = ml.public_key().public_bytes_raw() + xk.public_key().public_bytes_raw()
        return cls(
            ENC_HYBRID,
            ml.private_bytes_raw() + xk.private_bytes_raw(),
            hpke.MLKEM768X25519PrivateKey(ml, xk),
            EncryptionPublicKey.from_raw(ENC_HYBRID, raw),
        )

    @classmethod
    def from_private_bytes(cls, alg: str, data: bytes) -> EncryptionPrivateKey:
        if alg == ENC_X25519 and len(data) == _SEED:
            return cls._classic(x25519.X25519PrivateKey.from_private_bytes(data))
        if alg == ENC_HYBRID and len(data) == _MLKEM_SEED + _SEED:
            return cls._hybrid(
                mlkem.MLKEM768PrivateKey.from_seed_bytes(data[:_MLKEM_SEED]),
                x25519.X25519PrivateKey.from_private_bytes(data[_MLKEM_SEED:]),
            )
        raise LocalError(f"not a {alg} private key")

    def private_bytes(self) -> bytes:
        return self._seed

    def public_key(self) -> EncryptionPublicKey:
        return self._public

    @property
    def kid(self) -> bytes:
        return self._public.kid

    def unwrap(self, wrapped: bytes, info: bytes) -> bytes:
        try:
            return bytes(_SUITES[self.alg].decrypt(wrapped, self._key, info=info))
        except Exception:  # any failure of HPKE open is the same remote fault
            raise RemoteError("key_unwrap_failed") from None
