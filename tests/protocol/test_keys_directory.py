"""Tests of protocol.keys, protocol.signed and protocol.directory.

Keys: private-bytes round trips, key ids, HPKE wrap/unwrap, public-key decoding, the
signature map (classic and hybrid) and domain separation between signature contexts.
Directory: signed entries with Vietnamese names, tampering, the pinned authority, key and
organ validity windows, organ codes.
"""

from __future__ import annotations

import unicodedata
from dataclasses import replace
from typing import Any

import pytest

from protocol import signed
from protocol.codec import decode, encode
from protocol.directory import (
    FOREVER,
    ORGAN_CODE_MAX,
    DirectoryEntry,
    KeyRecord,
    check_organ_code,
    sign_entry,
    verify_entry,
)
from protocol.errors import LocalError, RemoteError
from protocol.keys import (
    ENC_HYBRID,
    ENC_X25519,
    KID_SIZE,
    SIG_ED25519,
    SIG_HYBRID,
    WRAPPED_SIZE,
    EncryptionPrivateKey,
    EncryptionPublicKey,
    SigningPrivateKey,
    SigningPublicKey,
    fingerprint,
    key_id,
)

CONTEXTS = [
    signed.CTX_ENVELOPE,
    signed.CTX_DIRECTORY,
    signed.CTX_RECEIPT,
    signed.CTX_HUB_RECEIPT,
    signed.CTX_SESSION,
]
MESSAGE = "Kế hoạch tổ chức Hội nghị tổng kết công tác văn phòng cấp ủy năm 2025".encode()


def _code(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(RemoteError) as info:
        call(*args, **kwargs)
    return info.value.code


@pytest.fixture(scope="module", params=[False, True], ids=["ed25519", "hybrid"])
def signer(request: pytest.FixtureRequest) -> SigningPrivateKey:
    return SigningPrivateKey.generate(hybrid=request.param)


@pytest.fixture(scope="module")
def classic_signer() -> SigningPrivateKey:
    return SigningPrivateKey.generate()


@pytest.fixture(scope="module")
def hybrid_signer() -> SigningPrivateKey:
    return SigningPrivateKey.generate(hybrid=True)


@pytest.fixture(scope="module", params=[False, True], ids=["x25519", "mlkem768x25519"])
def decrypter(request: pytest.FixtureRequest) -> EncryptionPrivateKey:
    return EncryptionPrivateKey.generate(hybrid=request.param)


# --- signing keys ----------------------------------------------------------------------


def test_signing_key_algorithms_and_sizes(
    classic_signer: SigningPrivateKey, hybrid_signer: SigningPrivateKey
) -> None:
    assert classic_signer.alg == SIG_ED25519
    assert len(classic_signer.public_key().raw) == 32
    assert set(classic_signer.sign(signed.CTX_ENVELOPE, b"m")) == {"ed25519"}
    assert hybrid_signer.alg == SIG_HYBRID
    assert len(hybrid_signer.public_key().raw) == 32 + 1952
    assert set(hybrid_signer.sign(signed.CTX_ENVELOPE, b"m")) == {"ed25519", "mldsa65"}


def test_signing_private_bytes_round_trip(signer: SigningPrivateKey) -> None:
    again = SigningPrivateKey.from_private_bytes(signer.alg, signer.private_bytes())
    assert again.alg == signer.alg
    assert again.private_bytes() == signer.private_bytes()
    assert again.public_key().raw == signer.public_key().raw
    assert again.kid == signer.kid
    # The reloaded key signs for the original public key, and vice versa.
    signer.public_key().verify(signed.CTX_RECEIPT, MESSAGE, again.sign(signed.CTX_RECEIPT, MESSAGE))
    again.public_key().verify(signed.CTX_RECEIPT, MESSAGE, signer.sign(signed.CTX_RECEIPT, MESSAGE))


@pytest.mark.parametrize(
    ("alg", "size"),
    [(SIG_ED25519, 31), (SIG_ED25519, 64), (SIG_HYBRID, 32), (SIG_HYBRID, 65), ("ed448", 57)],
)
def test_signing_from_private_bytes_refuses_wrong_sizes(alg: str, size: int) -> None:
    with pytest.raises(LocalError):
        SigningPrivateKey.from_private_bytes(alg, b"\x01" * size)


def test_kid_is_stable(signer: SigningPrivateKey) -> None:
    pub = signer.public_key()
    assert len(pub.kid) == KID_SIZE
    assert pub.kid == signer.kid == key_id(signer.alg, pub.raw)
    assert SigningPublicKey.from_raw(pub.alg, pub.raw).kid == pub.kid
    assert fingerprint(pub.kid) == fingerprint(pub.kid)
    assert len(fingerprint(pub.kid).split(":")) == 8


def test_kid_is_distinct_per_algorithm_and_key(hybrid_signer: SigningPrivateKey) -> None:
    raw = hybrid_signer.public_key().raw
    kids = {key_id(alg, raw) for alg in (SIG_ED25519, SIG_HYBRID, ENC_X25519, ENC_HYBRID)}
    assert len(kids) == 4
    # The Ed25519 half of a hybrid key, presented alone, is another key with another id:
    # a hybrid key can never be downgraded to a classic one under the same kid.
    ed_half = SigningPublicKey.from_raw(SIG_ED25519, raw[:32])
    assert ed_half.kid != hybrid_signer.kid
    other = SigningPrivateKey.generate()
    assert other.kid != SigningPrivateKey.generate().kid


def test_signing_public_key_from_raw_errors(hybrid_signer: SigningPrivateKey) -> None:
    raw = hybrid_signer.public_key().raw
    assert _code(SigningPublicKey.from_raw, "ed448", b"\x00" * 57) == "algorithm_unsupported"
    assert _code(SigningPublicKey.from_raw, "ED25519", raw[:32]) == "algorithm_unsupported"
    assert _code(SigningPublicKey.from_raw, "rsa", b"") == "algorithm_unsupported"
    assert _code(SigningPublicKey.from_raw, SIG_ED25519, raw[:31]) == "key_invalid"
    assert _code(SigningPublicKey.from_raw, SIG_ED25519, raw) == "key_invalid"
    assert _code(SigningPublicKey.from_raw, SIG_HYBRID, raw[:32]) == "key_invalid"
    assert _code(SigningPublicKey.from_raw, SIG_HYBRID, raw[:-1]) == "key_invalid"
    assert _code(SigningPublicKey.from_raw, SIG_HYBRID, b"") == "key_invalid"


# --- the signature map -----------------------------------------------------------------


def test_sign_and_verify(signer: SigningPrivateKey) -> None:
    pub = signer.public_key()
    for ctx in CONTEXTS:
        pub.verify(ctx, MESSAGE, signer.sign(ctx, MESSAGE))
    pub.verify(signed.CTX_ENVELOPE, b"", signer.sign(signed.CTX_ENVELOPE, b""))


def test_signature_over_another_message_fails(signer: SigningPrivateKey) -> None:
    sigs = signer.sign(signed.CTX_ENVELOPE, MESSAGE)
    assert _code(signer.public_key().verify, signed.CTX_ENVELOPE, MESSAGE + b"x", sigs) == (
        "signature_invalid"
    )


def test_signature_by_another_key_fails(signer: SigningPrivateKey) -> None:
    other = SigningPrivateKey.generate(hybrid=signer.alg == SIG_HYBRID)
    sigs = other.sign(signed.CTX_ENVELOPE, MESSAGE)
    assert _code(signer.public_key().verify, signed.CTX_ENVELOPE, MESSAGE, sigs) == (
        "signature_invalid"
    )


@pytest.mark.parametrize("signed_under", CONTEXTS)
def test_domain_separation(signer: SigningPrivateKey, signed_under: bytes) -> None:
    """A signature made under one context never verifies under another."""
    sigs = signer.sign(signed_under, MESSAGE)
    for ctx in CONTEXTS:
        if ctx == signed_under:
            signer.public_key().verify(ctx, MESSAGE, sigs)
        else:
            assert _code(signer.public_key().verify, ctx, MESSAGE, sigs) == "signature_invalid"


def test_context_and_message_are_separated(classic_signer: SigningPrivateKey) -> None:
    """Moving bytes between the context and the message changes what is signed."""
    sigs = classic_signer.sign(b"lienthong/v1 receipt", b"x")
    pub = classic_signer.public_key()
    assert _code(pub.verify, b"lienthong/v1 receip", b"tx", sigs) == "signature_invalid"
    assert _code(pub.verify, b"lienthong/v1 receipt\x00", b"x", sigs) == "signature_invalid"


@pytest.mark.parametrize("which", ["ed25519", "mldsa65"])
def test_flipped_signature_byte(hybrid_signer: SigningPrivateKey, which: str) -> None:
    sigs = hybrid_signer.sign(signed.CTX_ENVELOPE, MESSAGE)
    bad = bytearray(sigs[which])
    bad[len(bad) // 2] ^= 0x01
    sigs[which] = bytes(bad)
    assert _code(hybrid_signer.public_key().verify, signed.CTX_ENVELOPE, MESSAGE, sigs) == (
        "signature_invalid"
    )


def test_classic_signature_map_errors(classic_signer: SigningPrivateKey) -> None:
    pub = classic_signer.public_key()
    good = classic_signer.sign(signed.CTX_ENVELOPE, MESSAGE)
    ml = SigningPrivateKey.generate(hybrid=True).sign(signed.CTX_ENVELOPE, MESSAGE)["mldsa65"]

    def code(sigs: Any) -> str:
        return _code(pub.verify, signed.CTX_ENVELOPE, MESSAGE, sigs)

    assert code({}) == "signature_invalid"
    assert code({"ed25519": good["ed25519"][:63]}) == "signature_invalid"
    assert code({"ed25519": good["ed25519"] + b"\x00"}) == "signature_invalid"
    assert code({"ed25519": good["ed25519"].hex()}) == "signature_invalid"
    assert code({"ed25519": None}) == "signature_invalid"
    # A classic key produces no ML-DSA signature: one that is present is refused, not ignored.
    assert code({**good, "mldsa65": ml}) == "signature_unexpected"
    assert code({**good, "rsa": b"x"}) == "signature_unexpected"
    assert code({"mldsa65": ml}) == "signature_unexpected"
    assert code([good["ed25519"]]) == "field_invalid"
    assert code(good["ed25519"]) == "field_invalid"


def test_hybrid_signature_map_errors(hybrid_signer: SigningPrivateKey) -> None:
    pub = hybrid_signer.public_key()
    good = hybrid_signer.sign(signed.CTX_ENVELOPE, MESSAGE)

    def code(sigs: Any) -> str:
        return _code(pub.verify, signed.CTX_ENVELOPE, MESSAGE, sigs)

    assert code({"ed25519": good["ed25519"]}) == "hybrid_signature_missing"
    assert code({"mldsa65": good["mldsa65"]}) == "hybrid_signature_missing"
    assert code({}) == "hybrid_signature_missing"
    assert code({**good, "extra": b""}) == "signature_unexpected"
    assert code({**good, "mldsa65": good["mldsa65"][:-1]}) == "signature_invalid"
    assert code({**good, "mldsa65": b""}) == "signature_invalid"
    assert code({**good, "mldsa65": b"\x00" * 9000}) == "signature_invalid"
    assert code({**good, "mldsa65": "x"}) == "signature_invalid"
    # Each half must verify: the Ed25519 signature of another hybrid key's message fails.
    other = hybrid_signer.sign(signed.CTX_ENVELOPE, b"other")
    assert code({"ed25519": other["ed25519"], "mldsa65": good["mldsa65"]}) == "signature_invalid"
    assert code({"ed25519": good["ed25519"], "mldsa65": other["mldsa65"]}) == "signature_invalid"


# --- the signed container ---------------------------------------------------------------


def test_signed_container_round_trip(signer: SigningPrivateKey) -> None:
    body = encode({"subject": "Báo cáo quý III"})
    data = signed.sign(signer, signed.CTX_RECEIPT, body)
    parsed = signed.parse(data, max_size=1 << 16, where="receipt")
    assert parsed.body == body
    assert parsed.raw == data
    assert set(parsed.signatures) == set(signer.sign(signed.CTX_RECEIPT, body))
    parsed.verify(signer.public_key(), signed.CTX_RECEIPT)
    assert _code(parsed.verify, signer.public_key(), signed.CTX_ENVELOPE) == "signature_invalid"


def test_signed_container_parse_errors(classic_signer: SigningPrivateKey) -> None:
    sig = classic_signer.sign(signed.CTX_RECEIPT, b"x")

    def code(value: Any, max_size: int = 1 << 16) -> str:
        return _code(signed.parse, encode(value), max_size=max_size, where="receipt")

    assert code({"sig": sig}) == "field_missing"
    assert code({"body": b"x"}) == "field_missing"
    assert code({"body": "x", "sig": sig}) == "field_invalid"
    assert code({"body": b"x", "sig": [1]}) == "field_invalid"
    assert code({"body": b"x", "sig": {"ed25519": "x"}}) == "field_invalid"
    assert code({"body": b"x", "sig": {"ed25519": b"\x00" * 9000}}) == "field_invalid"
    assert code({"body": b"x", "sig": sig, "kid": b""}) == "field_unknown"
    assert code({"body": b"x", "sig": {**sig, "rsa": b""}}) == "field_unknown"
    assert code({"body": b"x" * 100, "sig": sig}, max_size=64) == "cbor_too_large"
    assert code([b"x", sig]) == "field_invalid"
    assert _code(signed.parse, b"\xa2", max_size=64, where="receipt") == "cbor_malformed"


# --- encryption keys -------------------------------------------------------------------


def test_encryption_private_bytes_round_trip(decrypter: EncryptionPrivateKey) -> None:
    again = EncryptionPrivateKey.from_private_bytes(decrypter.alg, decrypter.private_bytes())
    assert again.alg == decrypter.alg
    assert again.public_key().raw == decrypter.public_key().raw
    assert again.kid == decrypter.kid
    info = b"lienthong/v1 wrap\x00test"
    wrapped = decrypter.public_key().wrap(b"k" * 32, info)
    assert again.unwrap(wrapped, info) == b"k" * 32


def test_encryption_key_sizes(decrypter: EncryptionPrivateKey) -> None:
    pub = decrypter.public_key()
    if decrypter.alg == ENC_X25519:
        assert len(pub.raw) == 32
        assert len(decrypter.private_bytes()) == 32
    else:
        assert decrypter.alg == ENC_HYBRID
        assert len(pub.raw) == 1184 + 32
        assert len(decrypter.private_bytes()) == 64 + 32
    assert pub.kid == key_id(pub.alg, pub.raw) == decrypter.kid
    assert EncryptionPublicKey.from_raw(pub.alg, pub.raw).kid == pub.kid
    assert pub.to_cbor() == {"alg": pub.alg, "pub": pub.raw}


@pytest.mark.parametrize(
    ("alg", "size"), [(ENC_X25519, 31), (ENC_X25519, 96), (ENC_HYBRID, 32), ("x448", 56)]
)
def test_encryption_from_private_bytes_refuses_wrong_sizes(alg: str, size: int) -> None:
    with pytest.raises(LocalError):
        EncryptionPrivateKey.from_private_bytes(alg, b"\x01" * size)


def test_wrap_unwrap(decrypter: EncryptionPrivateKey) -> None:
    pub = decrypter.public_key()
    info = b"lienthong/v1 wrap\x00packet"
    secret = bytes(range(32))
    wrapped = pub.wrap(secret, info)
    assert len(wrapped) == WRAPPED_SIZE[pub.alg]
    assert decrypter.unwrap(wrapped, info) == secret
    # HPKE is randomised: two wraps of one secret differ, both open.
    again = pub.wrap(secret, info)
    assert again != wrapped
    assert decrypter.unwrap(again, info) == secret


def test_unwrap_failures(decrypter: EncryptionPrivateKey) -> None:
    info = b"lienthong/v1 wrap\x00packet"
    wrapped = decrypter.public_key().wrap(b"s" * 32, info)
    flipped = bytearray(wrapped)
    flipped[-1] ^= 0x01
    enc_flipped = bytearray(wrapped)
    enc_flipped[0] ^= 0x01
    other = EncryptionPrivateKey.generate(hybrid=decrypter.alg == ENC_HYBRID)
    for bad_wrapped, bad_info, key in [
        (wrapped, info + b"x", decrypter),  # another packet or recipient
        (bytes(flipped), info, decrypter),  # ciphertext tampered
        (bytes(enc_flipped), info, decrypter),  # encapsulated key tampered
        (wrapped[:-1], info, decrypter),
        (wrapped[:10], info, decrypter),
        (b"", info, decrypter),
        (wrapped + b"\x00", info, decrypter),
        (wrapped, info, other),  # another recipient's key
    ]:
        assert _code(key.unwrap, bad_wrapped, bad_info) == "key_unwrap_failed"


def test_wrap_to_a_low_order_x25519_point_is_a_key_error() -> None:
    """A published X25519 key that is a low-order point parses, but cannot be sealed to."""
    pub = EncryptionPublicKey.from_raw(ENC_X25519, b"\x00" * 32)
    assert _code(pub.wrap, b"s" * 32, b"info") == "key_invalid"
    one = EncryptionPublicKey.from_raw(ENC_X25519, b"\x01" + b"\x00" * 31)
    assert _code(one.wrap, b"s" * 32, b"info") == "key_invalid"


def test_encryption_public_key_from_raw_errors() -> None:
    hybrid = EncryptionPrivateKey.generate(hybrid=True).public_key().raw
    assert _code(EncryptionPublicKey.from_raw, "x448", b"\x00" * 56) == "algorithm_unsupported"
    assert _code(EncryptionPublicKey.from_raw, "mlkem1024", b"") == "algorithm_unsupported"
    assert _code(EncryptionPublicKey.from_raw, ENC_X25519, b"\x00" * 31) == "key_invalid"
    assert _code(EncryptionPublicKey.from_raw, ENC_X25519, hybrid) == "key_invalid"
    assert _code(EncryptionPublicKey.from_raw, ENC_HYBRID, hybrid[:-1]) == "key_invalid"
    assert _code(EncryptionPublicKey.from_raw, ENC_HYBRID, hybrid[-32:]) == "key_invalid"
    # ML-KEM-768 encapsulation keys have coefficients below q: 0xff... is not one.
    assert _code(EncryptionPublicKey.from_raw, ENC_HYBRID, b"\xff" * 1216) == "key_invalid"


# --- directory entries -------------------------------------------------------------------

T0 = 1_735_689_600  # 2025-01-01T00:00:00Z
YEAR = 365 * 24 * 3600

NAMES = {
    "000.00.00.H41": ("Văn phòng Tỉnh ủy", "province", None),
    "DU-XYL": ("Đảng ủy xã Yên Lạc", "commune", "000.00.00.H41"),
    "CB/THCS-TAMHONG": ("Chi bộ Trường THCS Tam Hồng", "grassroots", "DU-XYL"),
}


@pytest.fixture(scope="module")
def authority() -> SigningPrivateKey:
    return SigningPrivateKey.generate()


@pytest.fixture(scope="module")
def office_keys() -> tuple[SigningPrivateKey, EncryptionPrivateKey]:
    return SigningPrivateKey.generate(hybrid=True), EncryptionPrivateKey.generate(hybrid=True)


def _record(pub: Any, **kwargs: Any) -> KeyRecord:
    fields: dict[str, Any] = {"not_before": T0, "not_after": T0 + YEAR, **kwargs}
    return KeyRecord(pub.alg, pub.raw, **fields)


def make_entry(
    authority: SigningPrivateKey,
    organ: str,
    signing: SigningPrivateKey,
    enc: EncryptionPrivateKey,
    **kwargs: Any,
) -> DirectoryEntry:
    name, level, parent = NAMES.get(organ, ("Văn phòng Tỉnh ủy", "province", None))
    fields: dict[str, Any] = {
        "organ": organ,
        "name": name,
        "role": "office",
        "level": level,
        "parent": parent,
        "signing_keys": (_record(signing.public_key()),),
        "encryption_keys": (_record(enc.public_key()),),
        "valid_from": T0,
        "serial": 1,
        "issued_at": T0,
        "authority_kid": authority.kid,
        **kwargs,
    }
    return DirectoryEntry(**fields)


@pytest.mark.parametrize("organ", list(NAMES))
def test_entry_sign_verify_round_trip(
    authority: SigningPrivateKey,
    office_keys: tuple[SigningPrivateKey, EncryptionPrivateKey],
    organ: str,
) -> None:
    sk, ek = office_keys
    entry = make_entry(
        authority,
        organ,
        sk,
        ek,
        email="vanthu@tinhuy.example.vn",
        transports=("http", "email"),
        valid_until=T0 + 10 * YEAR,
        successor=None if organ != "DU-XYL" else "DU-XYL-MOI",
    )
    data = sign_entry(entry, authority)
    got = verify_entry(data, authority.public_key(), organ=organ)
    assert got.entry == entry
    assert got.entry.name == NAMES[organ][0]
    assert got.raw == data
    assert got.digest == signed.parse(data, max_size=1 << 16, where="e").digest
    assert DirectoryEntry.from_cbor(decode(encode(entry.to_cbor()))) == entry
    # Without an organ to check, any verified entry is returned.
    assert verify_entry(data, authority.public_key()).entry == entry
    # The keys come back out, checked, for the verifier.
    assert got.entry.signing_key(sk.kid, T0).raw == sk.public_key().raw
    assert got.entry.encryption_key(ek.kid, T0).raw == ek.public_key().raw


def test_entry_with_hybrid_authority(
    office_keys: tuple[SigningPrivateKey, EncryptionPrivateKey],
) -> None:
    hybrid_authority = SigningPrivateKey.generate(hybrid=True)
    entry = make_entry(hybrid_authority, "000.00.00.H41", *office_keys)
    data = sign_entry(entry, hybrid_authority)
    assert verify_entry(data, hybrid_authority.public_key()).entry == entry
    # The ML-DSA-65 signature stripped: the entry no longer verifies.
    container = signed.parse(data, max_size=1 << 16, where="e")
    stripped = encode({"body": container.body, "sig": {"ed25519": container.signatures["ed25519"]}})
    assert _code(verify_entry, stripped, hybrid_authority.public_key()) == (
        "directory_signature_invalid"
    )


def test_key_swapped_in_entry_bytes(
    authority: SigningPrivateKey, office_keys: tuple[SigningPrivateKey, EncryptionPrivateKey]
) -> None:
    """A hub database edit that swaps an office's key in the stored entry is caught."""
    sk, ek = office_keys
    data = sign_entry(make_entry(authority, "DU-XYL", sk, ek), authority)
    attacker_sign = SigningPrivateKey.generate(hybrid=True).public_key().raw
    attacker_enc = EncryptionPrivateKey.generate(hybrid=True).public_key().raw
    for honest, rogue in [
        (sk.public_key().raw, attacker_sign),
        (ek.public_key().raw, attacker_enc),
    ]:
        assert data.count(honest) == 1
        swapped = data.replace(honest, rogue)
        assert len(swapped) == len(data)
        # The tampered container still parses; only the signature catches it.
        assert (
            signed.parse(swapped, max_size=1 << 16, where="e").body
            != signed.parse(data, max_size=1 << 16, where="e").body
        )
        assert _code(verify_entry, swapped, authority.public_key()) == (
            "directory_signature_invalid"
        )


def test_entry_signed_by_another_authority(
    authority: SigningPrivateKey, office_keys: tuple[SigningPrivateKey, EncryptionPrivateKey]
) -> None:
    rogue = SigningPrivateKey.generate()
    # An entry that names the rogue authority and is signed by it.
    own = sign_entry(make_entry(rogue, "000.00.00.H41", *office_keys), rogue)
    assert _code(verify_entry, own, authority.public_key()) == "directory_signature_invalid"
    # An entry that names the pinned authority but is signed by the rogue key.
    body = encode(make_entry(authority, "000.00.00.H41", *office_keys).to_cbor())
    forged = signed.sign(rogue, signed.CTX_DIRECTORY, body)
    assert _code(verify_entry, forged, authority.public_key()) == "directory_signature_invalid"
    # The pinned authority's signature under another context (a receipt, say).
    replayed = signed.sign(authority, signed.CTX_RECEIPT, body)
    assert _code(verify_entry, replayed, authority.public_key()) == "directory_signature_invalid"


def test_sign_entry_refuses_another_authority_key(
    authority: SigningPrivateKey, office_keys: tuple[SigningPrivateKey, EncryptionPrivateKey]
) -> None:
    entry = make_entry(authority, "000.00.00.H41", *office_keys)
    with pytest.raises(LocalError):
        sign_entry(entry, SigningPrivateKey.generate())


@pytest.mark.parametrize(
    "change",
    [
        {"name": unicodedata.normalize("NFD", "Đảng ủy xã Yên Lạc")},
        {"name": "Văn phòng\nTỉnh ủy"},
        {"level": "Tỉnh"},
        {"transports": ()},
        {"transports": ("http", "http")},
        {"transports": ("fax",)},
        {"email": "x" * 255},
    ],
)
def test_sign_entry_refuses_what_no_node_could_verify(
    authority: SigningPrivateKey,
    office_keys: tuple[SigningPrivateKey, EncryptionPrivateKey],
    change: dict[str, Any],
) -> None:
    entry = make_entry(authority, "DU-XYL", *office_keys, **change)
    with pytest.raises(LocalError):
        sign_entry(entry, authority)


def test_entry_for_another_organ(
    authority: SigningPrivateKey, office_keys: tuple[SigningPrivateKey, EncryptionPrivateKey]
) -> None:
    data = sign_entry(make_entry(authority, "DU-XYL", *office_keys), authority)
    assert _code(verify_entry, data, authority.public_key(), organ="CB/THCS-TAMHONG") == (
        "organ_mismatch"
    )


def _signed_body(authority: SigningPrivateKey, body: dict[str, Any]) -> bytes:
    return signed.sign(authority, signed.CTX_DIRECTORY, encode(body))


def test_entry_body_errors(
    authority: SigningPrivateKey, office_keys: tuple[SigningPrivateKey, EncryptionPrivateKey]
) -> None:
    """Validly signed entries that break the format: the parser refuses each one."""
    good = make_entry(authority, "DU-XYL", *office_keys).to_cbor()
    pub = authority.public_key()

    def code(**changes: Any) -> str:
        body = {k: v for k, v in {**good, **changes}.items() if v is not None}
        return _code(verify_entry, _signed_body(authority, body), pub)

    assert code(v=2) == "version_unsupported"
    assert code(organ="Đảng ủy") == "organ_code_invalid"
    assert code(parent="a b") == "organ_code_invalid"
    assert code(successor="TU/HN:1") == "organ_code_invalid"
    # Over-long codes meet the text length bound first.
    assert code(successor="x" * 65) == "field_invalid"
    assert code(role="root") == "field_invalid"
    assert code(serial=-1) == "field_invalid"
    assert code(authority=b"\x00" * 31) == "field_invalid"
    assert code(sign=[{**good["sign"][0], "alg": "rsa"}]) == "field_invalid"
    assert code(enc=[{**good["enc"][0], "alg": SIG_ED25519}]) == "field_invalid"
    assert code(sign=[{**good["sign"][0], "kid": b""}]) == "field_unknown"
    assert code(note="x") == "field_unknown"
    assert code(name=None) == "field_missing"
    assert code(name=unicodedata.normalize("NFD", "Đảng ủy xã Yên Lạc")) == "text_invalid"
    assert _code(verify_entry, b"\xa1", pub) == "cbor_malformed"
    assert _code(verify_entry, b"\x00", pub) == "field_invalid"
    assert _code(verify_entry, signed.sign(authority, signed.CTX_DIRECTORY, b"\xff"), pub) == (
        "cbor_malformed"
    )


# --- key and organ validity ------------------------------------------------------------


def test_key_validity_windows(
    authority: SigningPrivateKey, office_keys: tuple[SigningPrivateKey, EncryptionPrivateKey]
) -> None:
    sk, ek = office_keys
    revoked_sk = SigningPrivateKey.generate()
    entry = make_entry(
        authority,
        "000.00.00.H41",
        sk,
        ek,
        signing_keys=(
            _record(sk.public_key()),
            _record(revoked_sk.public_key(), revoked_at=T0 + 100),
        ),
    )
    # Round trip through the signed form, so the checks run on what a node verifies.
    entry = verify_entry(sign_entry(entry, authority), authority.public_key()).entry
    assert entry.signing_key(sk.kid, T0).kid == sk.kid
    assert entry.signing_key(sk.kid, T0 + YEAR - 1).kid == sk.kid
    assert _code(entry.signing_key, sk.kid, T0 - 1) == "key_not_yet_valid"
    assert _code(entry.signing_key, sk.kid, T0 + YEAR) == "key_expired"
    assert _code(entry.encryption_key, ek.kid, T0 - 1) == "key_not_yet_valid"
    assert _code(entry.encryption_key, ek.kid, T0 + YEAR) == "key_expired"
    assert entry.signing_key(revoked_sk.kid, T0 + 99).kid == revoked_sk.kid
    assert _code(entry.signing_key, revoked_sk.kid, T0 + 100) == "key_revoked"
    assert _code(entry.signing_key, revoked_sk.kid, T0 + 10 * YEAR) == "key_revoked"
    # An unknown key id, and a key of the right organ used for the wrong purpose.
    assert _code(entry.signing_key, b"\x00" * 32, T0) == "key_unknown"
    assert _code(entry.signing_key, ek.kid, T0) == "key_unknown"
    assert _code(entry.encryption_key, sk.kid, T0) == "key_unknown"


def test_key_record_check_valid_order() -> None:
    """Revocation wins over every other reason, so a revoked key is reported as such."""
    rec = KeyRecord(SIG_ED25519, b"\x00" * 32, not_before=10, not_after=20, revoked_at=5)
    assert _code(rec.check_valid, 4) == "key_not_yet_valid"
    assert _code(rec.check_valid, 5) == "key_revoked"
    assert _code(rec.check_valid, 30) == "key_revoked"
    rec2 = KeyRecord(SIG_ED25519, b"\x00" * 32, not_before=10, not_after=20)
    rec2.check_valid(10)
    rec2.check_valid(19)
    assert KeyRecord.from_cbor(rec.to_cbor(), "k", (SIG_ED25519,)) == rec
    assert KeyRecord.from_cbor(rec2.to_cbor(), "k", (SIG_ED25519,)) == rec2
    assert "revoked" not in rec2.to_cbor()


def test_current_keys(
    authority: SigningPrivateKey, office_keys: tuple[SigningPrivateKey, EncryptionPrivateKey]
) -> None:
    sk, ek = office_keys
    newer = EncryptionPrivateKey.generate()
    entry = make_entry(
        authority,
        "000.00.00.H41",
        sk,
        ek,
        encryption_keys=(
            _record(ek.public_key()),
            _record(newer.public_key(), not_before=T0 + 10, not_after=FOREVER),
        ),
    )
    assert entry.current_encryption_key(T0).kid == ek.kid
    assert entry.current_encryption_key(T0 + 10).kid == newer.kid
    assert entry.current_encryption_key(T0 + 2 * YEAR).kid == newer.kid
    assert entry.current_signing_key(T0).kid == sk.kid
    assert _code(entry.current_encryption_key, T0 - 1) == "key_expired"
    assert _code(entry.current_signing_key, T0 + YEAR) == "key_expired"


def test_organ_validity(
    authority: SigningPrivateKey, office_keys: tuple[SigningPrivateKey, EncryptionPrivateKey]
) -> None:
    entry = make_entry(
        authority, "DU-XYL", *office_keys, valid_until=T0 + 100, successor="DU-XYL-MOI"
    )
    entry.check_valid(T0)
    entry.check_valid(T0 + 99)
    assert _code(entry.check_valid, T0 - 1) == "organ_not_valid"
    assert _code(entry.check_valid, T0 + 100) == "organ_not_valid"
    open_ended = replace(entry, valid_until=None)
    open_ended.check_valid(FOREVER)


# --- organ codes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        "000.00.00.H41",  # Văn phòng Tỉnh ủy, national identifier
        "000.00.00.G22",
        "H41.25.01.M02",
        "TU-HN",  # Party notations
        "HU_DongAnh",
        "DU-XYL",
        "CB/THCS-TAMHONG",
        "VPTW",
        "a",
        "9" * ORGAN_CODE_MAX,
    ],
)
def test_valid_organ_codes(code: str) -> None:
    assert check_organ_code(code) == code


@pytest.mark.parametrize(
    "code",
    [
        "",
        "x" * (ORGAN_CODE_MAX + 1),
        "TU HN",  # space
        "ĐU-YL",  # Đ is not ASCII
        "Tỉnh ủy",
        "TU-HN\n",
        "\nTU-HN",
        "TU:HN",
        "TU\\HN",
        "TU\x00HN",
        "TU-HN\u200b",  # zero-width space
        "ＴＵ",  # fullwidth letters
        "٣",  # a non-ASCII digit
        None,
        41,
        b"TU-HN",
    ],
)
def test_invalid_organ_codes(code: Any) -> None:
    assert _code(check_organ_code, code) == "organ_code_invalid"
