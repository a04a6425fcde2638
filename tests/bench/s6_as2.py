"""Scenario 6: AS2 (pyas2lib) against Lienthong, per document, in one process.

AS2 side, as an integrator would configure it: RSA-2048 keys and certificates for both
parties, the message signed (SHA-256) and encrypted (AES-256-CBC), a synchronous signed
MDN (SHA-256).  One round: the sender builds the message; the receiver parses it
(decrypt, verify, extract) and builds the signed MDN; the sender parses the MDN
(verify, match the message).

Lienthong side, the same round trip of work: the sender seals the document (Ed25519,
X25519 HPKE, AES-256-GCM STREAM); the recipient parses the envelope, verifies the
sender's signature against its directory entry, opens and checks the body, signs
receipt 01; the sender verifies the receipt.

Both measured as the median of several rounds, at 10 KiB and 10 MiB.

pyas2lib needs oscrypto, whose release on PyPI (1.3.0) cannot parse OpenSSL version
strings with a two-digit patch number such as "3.0.19" (wbond/oscrypto#75, fixed on its
main branch but not released).  :func:`import_pyas2lib` applies the same one-character
fix (``\\d`` -> ``\\d+``) while oscrypto is imported, in this process only.
"""

from __future__ import annotations

import datetime
import os
import re
import statistics
import time
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from protocol.directory import DirectoryEntry, KeyRecord, sign_entry, verify_entry
from protocol.keys import EncryptionPrivateKey, SigningPrivateKey
from protocol.packet import DocumentMetadata, Recipient, open_packet, parse_envelope, seal_packet
from protocol.receipts import OfficeReceipt, sign_office_receipt, verify_office_receipt

from .common import KIB, MIB, SUBJECT

_OLD = "\\b(\\d\\.\\d\\.\\d[a-z]*)\\b"
_NEW = "\\b(\\d+\\.\\d+\\.\\d+[a-z]*)\\b"


def import_pyas2lib() -> Any:
    real = re.search

    def search(pattern: Any, string: Any, flags: int = 0) -> Any:
        return real(_NEW if pattern == _OLD else pattern, string, flags)

    re.search = search  # type: ignore[assignment]
    try:
        import pyas2lib
    finally:
        re.search = real
    return pyas2lib


def _identity(name: str) -> tuple[bytes, bytes]:
    """(PEM key + certificate, PEM certificate) of a self-signed RSA-2048 identity."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem + cert_pem, cert_pem


class As2Round:
    def __init__(self) -> None:
        as2 = import_pyas2lib()
        self.as2 = as2
        sender_key, sender_cert = _identity("vp-tinh-uy")
        receiver_key, receiver_cert = _identity("dang-uy-xa")
        common = {"sign": True, "encrypt": True, "enc_alg": "aes_256_cbc", "digest_alg": "sha256",
                  "mdn_mode": "SYNC", "mdn_digest_alg": "sha256", "validate_certs": False,
                  "canonicalize_as_binary": True}  # fmt: skip
        self.sender_org = as2.Organization(
            as2_name="vp-tinh-uy", sign_key=sender_key, decrypt_key=sender_key
        )
        self.receiver_org = as2.Organization(
            as2_name="dang-uy-xa", sign_key=receiver_key, decrypt_key=receiver_key
        )
        self.receiver_as_partner = as2.Partner(
            as2_name="dang-uy-xa", verify_cert=receiver_cert, encrypt_cert=receiver_cert, **common
        )
        self.sender_as_partner = as2.Partner(
            as2_name="vp-tinh-uy", verify_cert=sender_cert, encrypt_cert=sender_cert, **common
        )

    def once(self, data: bytes) -> None:
        as2 = self.as2
        out = as2.Message(sender=self.sender_org, receiver=self.receiver_as_partner)
        # binary transfer encoding: with any other type pyas2lib turns LF into CRLF
        out.build(data, filename="cong-van.pdf", content_type="application/octet-stream")
        raw = out.headers_str + b"\r\n" + out.content
        received = as2.Message()
        status, exc, mdn = received.parse(
            raw,
            find_org_cb=lambda _name: self.receiver_org,
            find_partner_cb=lambda _name: self.sender_as_partner,
        )
        if status != "processed" or received.content != data:
            raise RuntimeError(f"AS2 message not processed: {status} {exc}")
        back = as2.Mdn()
        mdn_status, detail = back.parse(
            mdn.headers_str + b"\r\n" + mdn.content, find_message_cb=lambda _id, _rcpt: out
        )
        if mdn_status != "processed":
            raise RuntimeError(f"AS2 MDN not processed: {mdn_status} {detail}")


class LienthongRound:
    def __init__(self) -> None:
        authority = SigningPrivateKey.generate()
        self.sender_sign = SigningPrivateKey.generate()
        self.recipient_sign = SigningPrivateKey.generate()
        self.recipient_enc = EncryptionPrivateKey.generate()
        self.sender_entry = self._entry(authority, "000.00.00.H41", self.sender_sign)
        self.recipient_entry = self._entry(authority, "000.00.12.H41", self.recipient_sign)

    @staticmethod
    def _entry(authority: SigningPrivateKey, code: str, key: SigningPrivateKey) -> DirectoryEntry:
        now = int(time.time())
        enc = EncryptionPrivateKey.generate()
        entry = DirectoryEntry(
            organ=code, name=code, role="office", level="other",
            signing_keys=(KeyRecord(key.alg, key.public_key().raw, now - 60, now + 86400),),
            encryption_keys=(KeyRecord(enc.alg, enc.public_key().raw, now - 60, now + 86400),),
            valid_from=now - 60, serial=1, issued_at=now, authority_kid=authority.kid,
        )  # fmt: skip
        return verify_entry(sign_entry(entry, authority), authority.public_key()).entry

    def once(self, data: bytes) -> None:
        env_raw, body = seal_packet(
            sender="000.00.00.H41",
            signing_key=self.sender_sign,
            recipients=[Recipient("000.00.12.H41", self.recipient_enc.public_key())],
            metadata=DocumentMetadata(subject=SUBJECT),
            files=[("cong-van.pdf", "application/pdf", data)],
        )
        env = parse_envelope(env_raw)
        env.verify_sender(self.sender_entry)
        _, files = open_packet(env, body, organ="000.00.12.H41", key=self.recipient_enc)
        if files[0] != data:
            raise RuntimeError("Lienthong round trip differs")
        receipt = sign_office_receipt(
            OfficeReceipt(
                packet_id=env.packet_id,
                envelope_digest=env.digest,
                organ="000.00.12.H41",
                signer="000.00.12.H41",
                signer_kid=self.recipient_sign.kid,
                status="01",
                at=int(time.time()),
            ),
            self.recipient_sign,
        )
        verify_office_receipt(receipt, self.recipient_entry, envelope=env)


def _median_seconds(fn: Any, data: bytes, rounds: int) -> float:
    fn(data)  # warm up
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn(data)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    try:
        as2 = As2Round()
    except ImportError as exc:
        return {"skipped": f"pyas2lib is not installed ({exc}): pip install -e '.[bench]'"}
    lt = LienthongRound()
    out: dict[str, Any] = {}
    for label, size, rounds in (("10KiB", 10 * KIB, cfg["as2_rounds_small"]),
                                ("10MiB", 10 * MIB, cfg["as2_rounds_large"])):  # fmt: skip
        data = os.urandom(size)
        a = _median_seconds(as2.once, data, rounds)
        b = _median_seconds(lt.once, data, max(rounds, 5))
        out[label] = {
            "pyas2lib_ms": round(a * 1000, 2),
            "lienthong_ms": round(b * 1000, 3),
            "speedup": round(a / b, 1),
            "rounds": rounds,
        }
    return out
