"""Generate ``packet-v1.json``: test vectors for the Lienthong packet format, version 1.

Run ``python tests/vectors/generate.py`` (``--out PATH`` to write elsewhere).  Every input
is fixed: key seeds, packet ids, content keys (CEKs), creation times, files and metadata.
Only two things are randomised by the algorithms themselves -- the HPKE key wraps and the
ML-DSA-65 signatures -- so the generator stores the envelope and body it produced, and a
reader checks them rather than reproduces them byte for byte.  With the fixed CEK the body
ciphertext, the derived keys, the commitment and the encrypted metadata *are*
reproducible, and so is the whole signed envelope apart from the ``wrap`` fields.

The derived keys are computed here from the documented key schedule (HKDF-SHA256) and
cross-checked against ``protocol.packet._derive`` before anything is written, so the file
states the schedule another implementation must follow, not just what this one did.

The keys below are test keys, published on purpose.  Never use them for anything else.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import unicodedata
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol import signed
from protocol.codec import decode, encode
from protocol.keys import (
    ENC_HYBRID,
    ENC_X25519,
    SIG_ED25519,
    SIG_HYBRID,
    EncryptionPrivateKey,
    SigningPrivateKey,
)
from protocol.packet import (
    SUITE,
    TAG,
    DocumentMetadata,
    Recipient,
    Reference,
    Routing,
    _derive,
    parse_envelope,
    seal_packet,
    wrap_info,
)

HERE = Path(__file__).resolve().parent
OUT = HERE / "packet-v1.json"

#: HKDF parameters of the key schedule (protocol/packet.py, ``_derive``).
HKDF_SALT_LABEL = b"lienthong/v1 packet\x00"
HKDF_INFO = b"body|meta|commit"
META_NONCE = bytes(12)

SEED_SIZES = {SIG_ED25519: 32, SIG_HYBRID: 64, ENC_X25519: 32, ENC_HYBRID: 96}


def fixed(label: str, size: int) -> bytes:
    """Deterministic test bytes: SHAKE-256 of a label."""
    return hashlib.shake_256(b"lienthong test vector\x00" + label.encode()).digest(size)


def packet_id(label: str, created_at: int) -> bytes:
    """A UUIDv7 with the creation time in milliseconds and fixed 'random' bits."""
    value = bytearray((created_at * 1000).to_bytes(6, "big") + fixed("packet id " + label, 10))
    value[6] = 0x70 | (value[6] & 0x0F)
    value[8] = 0x80 | (value[8] & 0x3F)
    return bytes(value)


def key_schedule(cek: bytes, pid: bytes) -> dict[str, bytes]:
    okm = HKDF(
        algorithm=hashes.SHA256(), length=96, salt=HKDF_SALT_LABEL + pid, info=HKDF_INFO
    ).derive(cek)
    return {"body_key": okm[:32], "metadata_key": okm[32:64], "cek_commitment": okm[64:]}


def stream_nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _check_schedule(cek: bytes, pid: bytes, ks: dict[str, bytes]) -> None:
    """The independently derived keys must be the ones protocol.packet uses."""
    ours = _derive(cek, pid)
    probe = b"key schedule probe"
    assert ours.commitment == ks["cek_commitment"]
    assert ours.body.encrypt(stream_nonce(0, True), probe, None) == AESGCM(ks["body_key"]).encrypt(
        stream_nonce(0, True), probe, None
    )
    assert ours.meta.encrypt(META_NONCE, probe, pid) == AESGCM(ks["metadata_key"]).encrypt(
        META_NONCE, probe, pid
    )


def _nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


# --- the vectors -------------------------------------------------------------------------

CREATED = 1_759_190_400  # 2025-09-30T00:00:00Z

SPECS: list[dict[str, Any]] = [
    {
        "name": "classic",
        "description": (
            "Ed25519 sender, one X25519 recipient, one small file. The subject and the file "
            "name are given in NFD and must come out NFC. Urgent (hỏa tốc) with a clear "
            "document reference."
        ),
        "sender": ("000.00.00.H41", SIG_ED25519),  # Văn phòng Tỉnh ủy
        "recipients": [("CB-THCS-TAMHONG", ENC_X25519)],  # Chi bộ Trường THCS Tam Hồng
        "chunk_size": 64 * 1024,
        "kind": "document",
        "routing": {
            "urgency": 3,
            "secrecy": 0,
            "due": "2025-10-15",
            "reference": {"type": "KH", "number": "123", "notation": "KH/TU", "date": "2025-09-30"},
        },
        "metadata": {
            "subject": _nfd(
                "Kế hoạch tổ chức Hội nghị tổng kết công tác văn phòng cấp ủy năm 2025"
            ),
            "type": "KH",
            "number": "123",
            "notation": "KH/TU",
            "signer": "T/M Ban Thường vụ, Phó Bí thư Thường trực",
            "issued": "2025-09-30",
            "place": "Hà Nội",
        },
        "files": [(_nfd("Báo cáo quý III.pdf"), "application/pdf", 1000)],
    },
    {
        "name": "hybrid",
        "description": (
            "Ed25519 + ML-DSA-65 sender; recipients with an ML-KEM-768+X25519 key and an "
            "X25519 key (mixed). In reply to the classic vector's packet."
        ),
        "sender": ("TU-HN", SIG_HYBRID),
        "recipients": [
            ("DU-XYL", ENC_HYBRID),  # Đảng ủy xã Yên Lạc
            ("000.00.00.H41", ENC_X25519),
        ],
        "chunk_size": 64 * 1024,
        "kind": "document",
        "routing": {"urgency": 1, "secrecy": 0, "in_reply_to": "classic"},
        "metadata": {
            "subject": "Báo cáo kết quả thực hiện Nghị quyết số 05-NQ/TU quý III",
            "type": "BC",
            "notes": "Gửi kèm phụ lục.\nĐề nghị Văn phòng Tỉnh ủy tổng hợp.",
        },
        "files": [("Báo cáo.pdf", "application/pdf", 2000)],
    },
    {
        "name": "multi-file",
        "description": (
            "Three files: an empty one, one of exactly 64 KiB (one full chunk) and a small "
            "one, so the body is two STREAM chunks: a full one and a last one of 300 bytes "
            "of plaintext. Two recipients, one of each KEM."
        ),
        "sender": ("000.00.00.H41", SIG_ED25519),
        "recipients": [("CB-THCS-TAMHONG", ENC_X25519), ("DU-XYL", ENC_HYBRID)],
        "chunk_size": 64 * 1024,
        "kind": "document",
        "routing": {"urgency": 0, "secrecy": 0},
        "metadata": {"subject": "Công văn về việc triển khai Chỉ thị số 12-CT/TW", "type": "CV"},
        "files": [
            ("Danh sách trống.txt", "text/plain", 0),
            ("Phụ lục 64 KiB.bin", "application/octet-stream", 64 * 1024),
            ("Ghi chú.txt", "text/plain", 300),
        ],
    },
]


def signing_key(organ: str, alg: str) -> tuple[bytes, SigningPrivateKey]:
    seed = fixed(f"signing {organ} {alg}", SEED_SIZES[alg])
    return seed, SigningPrivateKey.from_private_bytes(alg, seed)


def encryption_key(organ: str, alg: str) -> tuple[bytes, EncryptionPrivateKey]:
    seed = fixed(f"encryption {organ} {alg}", SEED_SIZES[alg])
    return seed, EncryptionPrivateKey.from_private_bytes(alg, seed)


def routing_from_json(value: dict[str, Any]) -> Routing:
    ref = value.get("reference")
    return Routing(
        urgency=value["urgency"],
        secrecy=value["secrecy"],
        due=value.get("due"),
        reference=None
        if ref is None
        else Reference(ref["type"], ref.get("number"), ref.get("notation"), ref.get("date")),
        in_reply_to=bytes.fromhex(value["in_reply_to"]) if value.get("in_reply_to") else None,
        target=bytes.fromhex(value["target"]) if value.get("target") else None,
    )


def metadata_from_json(value: dict[str, Any]) -> DocumentMetadata:
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


def build(spec: dict[str, Any], ids: dict[str, str]) -> dict[str, Any]:
    name = spec["name"]
    pid = packet_id(name, CREATED)
    cek = fixed("cek " + name, 32)
    organ, alg = spec["sender"]
    sign_seed, sk = signing_key(organ, alg)
    recipients = []
    for r_organ, r_alg in spec["recipients"]:
        seed, ek = encryption_key(r_organ, r_alg)
        recipients.append((r_organ, r_alg, seed, ek))
    routing_json = dict(spec["routing"])
    if "in_reply_to" in routing_json:
        routing_json["in_reply_to"] = ids[routing_json["in_reply_to"]]
    files = [
        (fname, media, fixed(f"file {name} {i}", size))
        for i, (fname, media, size) in enumerate(spec["files"])
    ]
    env, body = seal_packet(
        sender=organ,
        signing_key=sk,
        recipients=[Recipient(o, ek.public_key()) for o, _, _, ek in recipients],
        metadata=metadata_from_json(spec["metadata"]),
        files=files,
        routing=routing_from_json(routing_json),
        kind=spec["kind"],
        chunk_size=spec["chunk_size"],
        packet_id=pid,
        cek=cek,
        created_at=CREATED,
    )
    ks = key_schedule(cek, pid)
    _check_schedule(cek, pid, ks)
    parsed = parse_envelope(env)
    assert parsed.commitment == ks["cek_commitment"]
    meta_cbor = AESGCM(ks["metadata_key"]).decrypt(META_NONCE, parsed.meta_ct, pid)
    chunk = spec["chunk_size"]
    n_chunks = parsed.body_info.chunks

    def h(b: bytes) -> str:
        return b.hex()

    return {
        "name": name,
        "description": spec["description"],
        "inputs": {
            "sender": {
                "organ": organ,
                "signing": {
                    "alg": alg,
                    "seed": h(sign_seed),
                    "public": h(sk.public_key().raw),
                    "kid": h(sk.kid),
                },
            },
            "recipients": [
                {
                    "organ": o,
                    "encryption": {
                        "alg": a,
                        "seed": h(seed),
                        "public": h(ek.public_key().raw),
                        "kid": h(ek.kid),
                    },
                }
                for o, a, seed, ek in recipients
            ],
            "packet_id": h(pid),
            "created_at": CREATED,
            "cek": h(cek),
            "chunk_size": chunk,
            "kind": spec["kind"],
            "routing": routing_json,
            "metadata": spec["metadata"],
            "files": [
                {"name": fname, "media_type": media, "plaintext": h(data)}
                for fname, media, data in files
            ],
        },
        "expected": {
            "envelope": h(env),
            "body": h(body),
            "envelope_digest": h(parsed.digest),
            "body_size": len(body),
            "body_sha256": h(hashlib.sha256(body).digest()),
            "suite": SUITE,
            "chunks": n_chunks,
            "hkdf_salt": h(HKDF_SALT_LABEL + pid),
            "hkdf_info": HKDF_INFO.decode(),
            "body_key": h(ks["body_key"]),
            "metadata_key": h(ks["metadata_key"]),
            "cek_commitment": h(ks["cek_commitment"]),
            "stream_nonces": [h(stream_nonce(i, i == n_chunks - 1)) for i in range(n_chunks)],
            "metadata_cbor": h(meta_cbor),
            "wrap_info": {o: h(wrap_info(pid, o, ek.kid)) for o, _, _, ek in recipients},
            "files": [
                {
                    "name": unicodedata.normalize("NFC", fname),
                    "media_type": media,
                    "size": len(data),
                    "sha256": h(hashlib.sha256(data).digest()),
                }
                for fname, media, data in files
            ],
            "signed_body_without_wraps": h(_without_wraps(parsed.body)),
        },
    }


def _without_wraps(signed_body: bytes) -> bytes:
    """The signed envelope body with every stanza's ``wrap`` removed: reproducible bytes."""
    value = decode(signed_body)
    for stanza in value["to"]:
        del stanza["wrap"]
    return encode(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    ids: dict[str, str] = {}
    vectors = []
    for spec in SPECS:
        vector = build(spec, ids)
        ids[spec["name"]] = vector["inputs"]["packet_id"]
        vectors.append(vector)
    doc = {
        "format": "lienthong packet test vectors",
        "version": 1,
        "comment": (
            "Generated by tests/vectors/generate.py; see tests/vectors/README.md. "
            "The keys are test keys, published on purpose."
        ),
        "signature_context": signed.CTX_ENVELOPE.decode(),
        "tag_size": TAG,
        "vectors": vectors,
    }
    text = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(text.encode()) // 1024} KiB, {len(vectors)} vectors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
