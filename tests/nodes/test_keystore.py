"""The office keystore: Argon2id + AES-256-GCM, mode 0600, the public part bound."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodes.keystore import Keystore, KeystoreError
from protocol.keys import EncryptionPrivateKey, SigningPrivateKey

PASSPHRASE = "mật khẩu của văn thư".encode()


def make(hybrid: bool = False) -> Keystore:
    return Keystore(
        organ="000.00.12.H41",
        hub_url="https://hub.example.vn",
        authority=SigningPrivateKey.generate().public_key(),
        signing_keys=[SigningPrivateKey.generate(hybrid=hybrid)],
        encryption_keys=[EncryptionPrivateKey.generate(hybrid=hybrid)],
        hub_key=SigningPrivateKey.generate().public_key(),
    )


@pytest.mark.parametrize("hybrid", [False, True])
def test_round_trip(tmp_path: Path, hybrid: bool) -> None:
    ks = make(hybrid)
    path = tmp_path / "keystore.json"
    ks.save(path, PASSPHRASE)
    assert path.stat().st_mode & 0o777 == 0o600
    back = Keystore.load(path, PASSPHRASE)
    assert back.organ == ks.organ
    assert back.signing_key.kid == ks.signing_key.kid
    assert back.encryption_key.kid == ks.encryption_key.kid
    assert back.authority.raw == ks.authority.raw
    assert back.hub_key is not None
    assert ks.hub_key is not None
    assert back.hub_key.raw == ks.hub_key.raw
    assert back.encryption_key_for(ks.encryption_key.kid) is not None
    assert PASSPHRASE not in path.read_bytes()
    assert ks.signing_key.private_bytes().hex() not in path.read_text()


def test_wrong_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    make().save(path, PASSPHRASE)
    with pytest.raises(KeystoreError) as err:
        Keystore.load(path, b"sai")
    assert err.value.code == "passphrase_wrong"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "keystore.json"
    make().save(path, PASSPHRASE)
    path.chmod(mode)
    with pytest.raises(KeystoreError) as err:
        Keystore.load(path, PASSPHRASE)
    assert err.value.code == "keystore_permissions"


def test_missing_and_damaged(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    with pytest.raises(KeystoreError) as err:
        Keystore.load(path, PASSPHRASE)
    assert err.value.code == "keystore_missing"
    path.write_text("{not json", encoding="utf-8")
    path.chmod(0o600)
    with pytest.raises(KeystoreError) as err:
        Keystore.load(path, PASSPHRASE)
    assert err.value.code == "keystore_damaged"


def test_the_public_part_cannot_be_swapped(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    make().save(path, PASSPHRASE)
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["hub_url"] = "https://evil.example"  # an attacker repoints the office
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(KeystoreError) as err:
        Keystore.load(path, PASSPHRASE)
    assert err.value.code == "passphrase_wrong"
