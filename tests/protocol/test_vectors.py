"""Check tests/vectors/packet-v1.json against the implementation.

The vectors pin the wire format: deterministic CBOR, signatures, the HKDF key schedule,
the STREAM nonces, HPKE ``info`` and the metadata encryption.  These tests recompute each
piece independently where they can (HKDF, AES-GCM per chunk), so a change to the format
fails here even if sealer and opener change in step.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import unicodedata
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol import signed
from protocol.codec import decode, encode
from protocol.directory import DirectoryEntry, KeyRecord
from protocol.keys import EncryptionPrivateKey, SigningPrivateKey
from protocol.packet import (
    TAG,
    DocumentMetadata,
    Opener,
    Recipient,
    Reference,
    Routing,
    _derive,
    parse_envelope,
    seal_packet,
    wrap_info,
)

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "packet-v1.json"


@cache
def document() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS.read_text(encoding="utf-8"))
    return data


def _vectors() -> list[dict[str, Any]]:
    return list(document()["vectors"])


def x(value: str) -> bytes:
    return bytes.fromhex(value)


def sender_key(v: dict[str, Any]) -> SigningPrivateKey:
    s = v["inputs"]["sender"]["signing"]
    return SigningPrivateKey.from_private_bytes(s["alg"], x(s["seed"]))


def recipient_keys(v: dict[str, Any]) -> list[tuple[str, EncryptionPrivateKey]]:
    out = []
    for r in v["inputs"]["recipients"]:
        e = r["encryption"]
        out.append((r["organ"], EncryptionPrivateKey.from_private_bytes(e["alg"], x(e["seed"]))))
    return out


def sender_entry(v: dict[str, Any]) -> DirectoryEntry:
    pub = sender_key(v).public_key()
    created = v["inputs"]["created_at"]
    return DirectoryEntry(
        organ=v["inputs"]["sender"]["organ"],
        name="Văn phòng Tỉnh ủy",
        role="office",
        level="province",
        signing_keys=(KeyRecord(pub.alg, pub.raw, created - 86_400, created + 86_400),),
        encryption_keys=(),
        valid_from=created - 86_400,
        serial=1,
        issued_at=created,
        authority_kid=bytes(32),
    )


def routing(value: dict[str, Any]) -> Routing:
    ref = value.get("reference")
    return Routing(
        urgency=value["urgency"],
        secrecy=value["secrecy"],
        due=value.get("due"),
        reference=None
        if ref is None
        else Reference(ref["type"], ref.get("number"), ref.get("notation"), ref.get("date")),
        in_reply_to=x(value["in_reply_to"]) if value.get("in_reply_to") else None,
        target=x(value["target"]) if value.get("target") else None,
    )


def metadata(value: dict[str, Any]) -> DocumentMetadata:
    return DocumentMetadata(
        subject=value["subject"],
        doc_type=value.get("type", "CV"),
        number=value.get("number"),
        notation=value.get("notation"),
        signer=value.get("signer"),
        issued=value.get("issued"),
        place=value.get("place"),
        notes=value.get("notes"),
    )


def without_wraps(signed_body: bytes) -> dict[str, Any]:
    value: dict[str, Any] = decode(signed_body)
    for stanza in value["to"]:
        del stanza["wrap"]
    return value


@pytest.fixture(params=_vectors(), ids=[vec["name"] for vec in _vectors()])
def v(request: pytest.FixtureRequest) -> dict[str, Any]:
    vector: dict[str, Any] = request.param
    return vector


def test_the_file_covers_what_it_promises() -> None:
    names = {vec["name"] for vec in _vectors()}
    assert {"classic", "hybrid", "multi-file"} <= names
    assert VECTORS.stat().st_size < 400 * 1024
    algs = {vec["inputs"]["sender"]["signing"]["alg"] for vec in _vectors()}
    assert algs == {"ed25519", "ed25519+mldsa65"}
    sizes = {len(f["plaintext"]) // 2 for vec in _vectors() for f in vec["inputs"]["files"]}
    assert {0, 64 * 1024} <= sizes


def test_fixed_keys_match(v: dict[str, Any]) -> None:
    s = v["inputs"]["sender"]["signing"]
    key = sender_key(v)
    assert key.public_key().raw.hex() == s["public"]
    assert key.kid.hex() == s["kid"]
    assert key.private_bytes().hex() == s["seed"]
    for (_organ, ek), r in zip(recipient_keys(v), v["inputs"]["recipients"], strict=True):
        assert ek.public_key().raw.hex() == r["encryption"]["public"]
        assert ek.kid.hex() == r["encryption"]["kid"]


def test_envelope_parses_and_verifies(v: dict[str, Any]) -> None:
    inp, exp = v["inputs"], v["expected"]
    env = parse_envelope(x(exp["envelope"]))
    env.verify_sender(sender_entry(v))
    assert env.digest.hex() == exp["envelope_digest"]
    assert hashlib.sha256(env.body).hexdigest() == exp["envelope_digest"]
    assert env.packet_id.hex() == inp["packet_id"]
    assert env.created_at == inp["created_at"]
    assert env.kind == inp["kind"]
    assert env.sender == inp["sender"]["organ"]
    assert env.sender_kid.hex() == inp["sender"]["signing"]["kid"]
    assert env.routing == routing(inp["routing"])
    assert [s.organ for s in env.recipients] == sorted(r["organ"] for r in inp["recipients"])
    for r in inp["recipients"]:
        assert env.stanza(r["organ"]).kid.hex() == r["encryption"]["kid"]
    info = env.body_info
    assert (info.size, info.chunk, info.suite) == (
        exp["body_size"],
        inp["chunk_size"],
        exp["suite"],
    )
    assert info.sha256.hex() == exp["body_sha256"]
    assert info.chunks == exp["chunks"]
    assert env.commitment.hex() == exp["cek_commitment"]
    # The wire bytes are deterministic CBOR: they decode strictly and re-encode the same.
    assert encode(decode(x(exp["envelope"]))) == x(exp["envelope"])
    assert encode(decode(env.body)) == env.body
    # The signature is over the exact signed body, under the envelope context.
    assert document()["signature_context"] == signed.CTX_ENVELOPE.decode()
    sender_key(v).public_key().verify(signed.CTX_ENVELOPE, env.body, env.signatures)


def test_body_digest(v: dict[str, Any]) -> None:
    body = x(v["expected"]["body"])
    assert len(body) == v["expected"]["body_size"]
    assert hashlib.sha256(body).hexdigest() == v["expected"]["body_sha256"]


def test_every_recipient_opens_the_expected_files(v: dict[str, Any]) -> None:
    inp, exp = v["inputs"], v["expected"]
    env = parse_envelope(x(exp["envelope"]))
    body = x(exp["body"])
    for organ, key in recipient_keys(v):
        opener = Opener(env, organ=organ, key=key)
        files = [bytearray() for _ in opener.metadata.files]
        for idx, piece in opener.feed(body) + opener.finish():
            files[idx] += piece
        assert [bytes(f).hex() for f in files] == [f["plaintext"] for f in inp["files"]]
        meta = opener.metadata
        assert meta.subject == unicodedata.normalize("NFC", inp["metadata"]["subject"])
        assert [
            {"name": f.name, "media_type": f.media_type, "size": f.size, "sha256": f.sha256.hex()}
            for f in meta.files
        ] == exp["files"]
        assert encode(meta.to_cbor()).hex() == exp["metadata_cbor"]
        for f in exp["files"]:
            assert f["name"] == unicodedata.normalize("NFC", f["name"])


def test_key_schedule(v: dict[str, Any]) -> None:
    """HKDF-SHA256 over the CEK, salt = label || packet id: body key, metadata key, commitment."""
    inp, exp = v["inputs"], v["expected"]
    cek, pid = x(inp["cek"]), x(inp["packet_id"])
    salt = b"lienthong/v1 packet\x00" + pid
    assert salt.hex() == exp["hkdf_salt"]
    okm = HKDF(
        algorithm=hashes.SHA256(), length=96, salt=salt, info=exp["hkdf_info"].encode()
    ).derive(cek)
    assert okm[:32].hex() == exp["body_key"]
    assert okm[32:64].hex() == exp["metadata_key"]
    assert okm[64:].hex() == exp["cek_commitment"]
    ours = _derive(cek, pid)
    assert ours.commitment.hex() == exp["cek_commitment"]
    nonce = bytes(12)
    assert ours.body.encrypt(nonce, b"p", None) == AESGCM(okm[:32]).encrypt(nonce, b"p", None)
    assert ours.meta.encrypt(nonce, b"p", pid) == AESGCM(okm[32:64]).encrypt(nonce, b"p", pid)


def test_stream_and_metadata_by_hand(v: dict[str, Any]) -> None:
    """Open the body and metadata with nothing but AES-GCM and the documented nonces."""
    inp, exp = v["inputs"], v["expected"]
    pid = x(inp["packet_id"])
    body = x(exp["body"])
    full = inp["chunk_size"] + TAG
    chunks = [body[i : i + full] for i in range(0, len(body), full)] or [b""]
    assert len(chunks) == exp["chunks"] == len(exp["stream_nonces"])
    aead = AESGCM(x(exp["body_key"]))
    plaintext = b""
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        nonce = i.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
        assert nonce.hex() == exp["stream_nonces"][i]
        plaintext += aead.decrypt(nonce, chunk, None)
    assert plaintext == b"".join(x(f["plaintext"]) for f in inp["files"])
    env = parse_envelope(x(exp["envelope"]))
    meta = AESGCM(x(exp["metadata_key"])).decrypt(bytes(12), env.meta_ct, pid)
    assert meta.hex() == exp["metadata_cbor"]
    assert DocumentMetadata.from_cbor(decode(meta)).subject == unicodedata.normalize(
        "NFC", inp["metadata"]["subject"]
    )


def test_hpke_wraps_open_to_the_cek(v: dict[str, Any]) -> None:
    inp, exp = v["inputs"], v["expected"]
    pid = x(inp["packet_id"])
    env = parse_envelope(x(exp["envelope"]))
    for organ, key in recipient_keys(v):
        stanza = env.stanza(organ)
        info = wrap_info(pid, organ, key.kid)
        assert info == b"lienthong/v1 wrap\x00" + pid + organ.encode() + b"\x00" + key.kid
        assert info.hex() == exp["wrap_info"][organ]
        assert key.unwrap(stanza.wrapped, info).hex() == inp["cek"]


def test_resealing_reproduces_body_and_envelope_but_the_wraps(v: dict[str, Any]) -> None:
    inp, exp = v["inputs"], v["expected"]
    env_bytes, body = seal_packet(
        sender=inp["sender"]["organ"],
        signing_key=sender_key(v),
        recipients=[Recipient(o, k.public_key()) for o, k in recipient_keys(v)],
        metadata=metadata(inp["metadata"]),
        files=[(f["name"], f["media_type"], x(f["plaintext"])) for f in inp["files"]],
        routing=routing(inp["routing"]),
        kind=inp["kind"],
        chunk_size=inp["chunk_size"],
        packet_id=x(inp["packet_id"]),
        cek=x(inp["cek"]),
        created_at=inp["created_at"],
    )
    assert body.hex() == exp["body"]
    new = parse_envelope(env_bytes)
    old = parse_envelope(x(exp["envelope"]))
    assert without_wraps(new.body) == without_wraps(old.body)
    assert encode(without_wraps(new.body)).hex() == exp["signed_body_without_wraps"]
    assert new.meta_ct == old.meta_ct
    assert [s.wrapped for s in new.recipients] != [s.wrapped for s in old.recipients]
    new.verify_sender(sender_entry(v))


def test_generator_reproduces_the_file(tmp_path: Path) -> None:
    """Running generate.py again changes only what HPKE and ML-DSA randomise."""
    out = tmp_path / "packet-v1.json"
    script = VECTORS.parent / "generate.py"
    subprocess.run([sys.executable, str(script), "--out", str(out)], check=True, timeout=120)
    fresh = json.loads(out.read_text(encoding="utf-8"))
    randomised = {"envelope", "envelope_digest"}
    assert [v["name"] for v in fresh["vectors"]] == [v["name"] for v in _vectors()]
    for new, old in zip(fresh["vectors"], _vectors(), strict=True):
        assert new["inputs"] == old["inputs"]
        assert {k: v for k, v in new["expected"].items() if k not in randomised} == {
            k: v for k, v in old["expected"].items() if k not in randomised
        }
    assert {k: v for k, v in fresh.items() if k != "vectors"} == {
        k: v for k, v in document().items() if k != "vectors"
    }
