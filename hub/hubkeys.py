"""The hub's two private keys, kept in ``<data dir>/keys`` with mode 0600.

* the **hub key** signs hub receipts (``accepted``, ``fetched``);
* the **directory authority key** signs directory entries; nodes pin its public half at
  enrolment, so a database edit cannot swap an office's key.

Both are :class:`protocol.keys.SigningPrivateKey`: Ed25519, or Ed25519 + ML-DSA-65 for a
hybrid hub.  They are stored unencrypted (the service starts unattended); the file mode,
the data dir's permissions and the host are their protection.  The audit log's checkpoint
key belongs to :mod:`hub.auditlog`.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from protocol.errors import LocalError
from protocol.keys import SIG_HYBRID, SigningPrivateKey, fingerprint

KEYS_DIR: Final = "keys"
HUB_KEY_FILE: Final = "hub-signing.key"
AUTHORITY_KEY_FILE: Final = "directory-authority.key"


@dataclass(frozen=True, slots=True)
class HubKeys:
    hub: SigningPrivateKey
    authority: SigningPrivateKey

    @property
    def hybrid(self) -> bool:
        return self.hub.alg == SIG_HYBRID

    def fingerprints(self) -> dict[str, str]:
        return {
            "hub": fingerprint(self.hub.kid),
            "authority": fingerprint(self.authority.kid),
        }


def _write_key(path: Path, key: SigningPrivateKey) -> None:
    doc = {
        "type": "lienthong hub private key",
        "alg": key.alg,
        "private": base64.b64encode(key.private_bytes()).decode(),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def _read_key(path: Path) -> SigningPrivateKey:
    try:
        mode = path.stat().st_mode
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LocalError(f"{path} is missing: run `lienthong-hub init` first") from None
    except OSError as exc:
        raise LocalError(f"cannot read {path}: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise LocalError(f"{path} is readable by others: chmod 600 it")
    try:
        doc = json.loads(raw)
        return SigningPrivateKey.from_private_bytes(doc["alg"], base64.b64decode(doc["private"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise LocalError(f"{path} is not a hub key file: {exc}") from None


def create_keys(data_dir: Path, *, hybrid: bool) -> HubKeys:
    """Generate both keys into ``data_dir/keys``; refuses to overwrite existing ones."""
    folder = data_dir / KEYS_DIR
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = HubKeys(
        hub=SigningPrivateKey.generate(hybrid=hybrid),
        authority=SigningPrivateKey.generate(hybrid=hybrid),
    )
    for name in (HUB_KEY_FILE, AUTHORITY_KEY_FILE):
        if (folder / name).exists():
            raise LocalError(f"{folder / name} exists: this data dir is already initialised")
    _write_key(folder / HUB_KEY_FILE, keys.hub)
    _write_key(folder / AUTHORITY_KEY_FILE, keys.authority)
    return keys


def load_keys(data_dir: Path) -> HubKeys:
    folder = data_dir / KEYS_DIR
    keys = HubKeys(
        hub=_read_key(folder / HUB_KEY_FILE),
        authority=_read_key(folder / AUTHORITY_KEY_FILE),
    )
    if keys.hub.alg != keys.authority.alg:
        raise LocalError("the hub key and the authority key must both be hybrid or both classic")
    return keys
