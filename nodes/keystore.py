"""The office's private keys, encrypted at rest.

Private keys never leave the office.  The keystore is one file, mode 0600, holding the
organ code, the pinned directory authority key and the office's signing and encryption
keys (current and retired: a packet sealed to last year's encryption key must still open).
The secret part is AES-256-GCM under a key derived from the passphrase with Argon2id
(RFC 9106; memory-hard, so a stolen file does not fall to a GPU farm), the cleartext part
bound as associated data so it cannot be swapped.

The passphrase comes from ``LIENTHONG_PASSPHRASE``, a passphrase file, or a prompt — the
caller decides; this module takes it as bytes.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from protocol.codec import Fields, decode, encode
from protocol.errors import LienthongError
from protocol.keys import EncryptionPrivateKey, SigningPrivateKey, SigningPublicKey

FORMAT: Final = "lienthong-keystore-v1"
#: Argon2id parameters: OWASP's m=19 MiB, t=2, p=1 profile. RFC 9106's 64 MiB option would put
#: every node command over its 100 MiB memory budget; a keystore records its own
#: parameters, so older keystores still open.
KDF_PARAMS: Final = {"iterations": 2, "lanes": 1, "memory_cost": 19 * 1024}


class KeystoreError(Exception):
    """The keystore cannot be opened: wrong passphrase, damaged or foreign file."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def _kdf(salt: bytes, params: dict[str, int]) -> Argon2id:
    return Argon2id(
        salt=salt,
        length=32,
        iterations=params["iterations"],
        lanes=params["lanes"],
        memory_cost=params["memory_cost"],
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


@dataclass
class Keystore:
    """Decrypted keystore contents."""

    organ: str
    hub_url: str
    authority: SigningPublicKey
    signing_keys: list[SigningPrivateKey]
    encryption_keys: list[EncryptionPrivateKey]
    hub_key: SigningPublicKey | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def signing_key(self) -> SigningPrivateKey:
        """The current signing key: the last one added."""
        return self.signing_keys[-1]

    @property
    def encryption_key(self) -> EncryptionPrivateKey:
        return self.encryption_keys[-1]

    def encryption_key_for(self, kid: bytes) -> EncryptionPrivateKey | None:
        for key in self.encryption_keys:
            if key.kid == kid:
                return key
        return None

    # -- persistence ------------------------------------------------------------------

    def _public_part(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT,
            "organ": self.organ,
            "hub_url": self.hub_url,
            "authority": {"alg": self.authority.alg, "pub": _b64(self.authority.raw)},
            "extra": self.extra,
        }
        if self.hub_key is not None:
            out["hub_key"] = {"alg": self.hub_key.alg, "pub": _b64(self.hub_key.raw)}
        return out

    def _secret_part(self) -> bytes:
        return encode(
            {
                "sign": [{"alg": k.alg, "priv": k.private_bytes()} for k in self.signing_keys],
                "enc": [{"alg": k.alg, "priv": k.private_bytes()} for k in self.encryption_keys],
            }
        )

    def save(self, path: Path, passphrase: bytes) -> None:
        """Encrypt and write atomically with mode 0600."""
        salt = os.urandom(16)
        nonce = os.urandom(12)
        public = self._public_part()
        aad = json.dumps(public, sort_keys=True, ensure_ascii=False).encode()
        key = _kdf(salt, KDF_PARAMS).derive(passphrase)
        doc = {
            **public,
            "kdf": {"name": "argon2id", "salt": _b64(salt), **KDF_PARAMS},
            "nonce": _b64(nonce),
            "secret": _b64(AESGCM(key).encrypt(nonce, self._secret_part(), aad)),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".keystore-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, ensure_ascii=False, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path, passphrase: bytes) -> Keystore:
        """Decrypt the keystore at ``path``; refuses a file others can read."""
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise KeystoreError("keystore_missing", f"no keystore at {path}") from None
        if mode & 0o077:
            raise KeystoreError(
                "keystore_permissions", f"{path} must be readable by its owner only (chmod 600)"
            )
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeError):
            raise KeystoreError("keystore_damaged", "the keystore is not valid JSON") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise KeystoreError("keystore_damaged", "not a Lienthong keystore")
        try:
            public = {k: doc[k] for k in ("format", "organ", "hub_url", "authority", "extra")}
            if "hub_key" in doc:
                public["hub_key"] = doc["hub_key"]
            aad = json.dumps(public, sort_keys=True, ensure_ascii=False).encode()
            kdf = doc["kdf"]
            if kdf["name"] != "argon2id":
                raise KeystoreError("keystore_damaged", f"unknown KDF {kdf['name']!r}")
            params = {k: int(kdf[k]) for k in ("iterations", "lanes", "memory_cost")}
            if not (1 <= params["iterations"] <= 16 and 1 <= params["lanes"] <= 16):
                raise KeystoreError("keystore_damaged", "implausible KDF parameters")
            if not 8 * 1024 <= params["memory_cost"] <= 4 * 1024 * 1024:
                raise KeystoreError("keystore_damaged", "implausible KDF memory cost")
            key = _kdf(_unb64(kdf["salt"]), params).derive(passphrase)
            secret = AESGCM(key).decrypt(_unb64(doc["nonce"]), _unb64(doc["secret"]), aad)
        except InvalidTag:
            raise KeystoreError(
                "passphrase_wrong", "wrong passphrase, or the keystore was altered"
            ) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise KeystoreError("keystore_damaged", f"keystore field: {exc}") from None
        try:
            f = Fields(decode(secret), "keystore")
            signing = [
                SigningPrivateKey.from_private_bytes(k["alg"], k["priv"])
                for k in f.array("sign", max_items=64)
            ]
            enc = [
                EncryptionPrivateKey.from_private_bytes(k["alg"], k["priv"])
                for k in f.array("enc", max_items=64)
            ]
            hub_key = None
            if "hub_key" in doc:
                hub_key = SigningPublicKey.from_raw(
                    doc["hub_key"]["alg"], _unb64(doc["hub_key"]["pub"])
                )
            store = cls(
                organ=doc["organ"],
                hub_url=doc["hub_url"],
                authority=SigningPublicKey.from_raw(
                    doc["authority"]["alg"], _unb64(doc["authority"]["pub"])
                ),
                signing_keys=signing,
                encryption_keys=enc,
                hub_key=hub_key,
                extra=dict(doc.get("extra", {})),
            )
        except (LienthongError, KeyError, TypeError, ValueError) as exc:
            raise KeystoreError("keystore_damaged", f"keystore contents: {exc}") from None
        if not store.signing_keys or not store.encryption_keys:
            raise KeystoreError("keystore_damaged", "the keystore holds no keys")
        return store
