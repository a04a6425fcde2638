"""Builders for protocol tests: real keys, signed directory entries, sealed envelopes.

Everything goes through the production code (key generation, ``sign_entry`` /
``verify_entry``, ``seal_packet`` / ``parse_envelope``), so a test never checks a shortcut.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from protocol import signed
from protocol.codec import encode
from protocol.directory import DirectoryEntry, KeyRecord, sign_entry, verify_entry
from protocol.keys import EncryptionPrivateKey, SigningPrivateKey
from protocol.packet import (
    DocumentMetadata,
    Envelope,
    Recipient,
    Routing,
    parse_envelope,
    seal_packet,
)

#: A fixed "now" for tests: Monday 16 June 2025, 00:00 UTC.
T0 = 1_750_032_000
YEAR = 365 * 24 * 3600

SUBJECT = "Kế hoạch tổ chức Hội nghị tổng kết công tác văn phòng cấp ủy năm 2025"


@dataclass(frozen=True)
class Office:
    """An enrolled organ: its private keys and its verified directory entry."""

    code: str
    name: str
    signing: SigningPrivateKey
    encryption: EncryptionPrivateKey
    entry: DirectoryEntry
    entry_bytes: bytes


def make_office(
    code: str,
    name: str,
    authority: SigningPrivateKey,
    *,
    hybrid: bool = False,
    parent: str | None = None,
    signing: SigningPrivateKey | None = None,
    key_from: int = T0 - YEAR,
    key_until: int = T0 + YEAR,
    revoked_at: int | None = None,
    valid_from: int = T0 - YEAR,
) -> Office:
    """Enrol an organ with one signing and one encryption key, signed by ``authority``."""
    sk = signing or SigningPrivateKey.generate(hybrid=hybrid)
    ek = EncryptionPrivateKey.generate()
    entry = DirectoryEntry(
        organ=code,
        name=name,
        role="office",
        level="commune",
        parent=parent,
        signing_keys=(KeyRecord(sk.alg, sk.public_key().raw, key_from, key_until, revoked_at),),
        encryption_keys=(KeyRecord(ek.alg, ek.public_key().raw, key_from, key_until),),
        valid_from=valid_from,
        serial=1,
        issued_at=T0 - YEAR,
        authority_kid=authority.kid,
    )
    data = sign_entry(entry, authority)
    verified = verify_entry(data, authority.public_key(), organ=code)
    return Office(code, name, sk, ek, verified.entry, data)


def make_envelope(
    sender: Office,
    recipients: Sequence[Office],
    *,
    created_at: int = T0,
    routing: Routing | None = None,
    packet_id: bytes | None = None,
    subject: str = SUBJECT,
) -> Envelope:
    """Seal a one-file packet from ``sender`` to ``recipients`` and parse its envelope."""
    env, _body = seal_packet(
        sender=sender.code,
        signing_key=sender.signing,
        recipients=[Recipient(r.code, r.encryption.public_key()) for r in recipients],
        metadata=DocumentMetadata(subject=subject, doc_type="KH"),
        files=[("Kế hoạch hội nghị.pdf", "application/pdf", "Nội dung kế hoạch".encode())],
        routing=routing,
        created_at=created_at,
        packet_id=packet_id,
    )
    return parse_envelope(env)


def sign_raw(
    body: Mapping[str, Any], key: SigningPrivateKey, context: bytes = signed.CTX_RECEIPT
) -> bytes:
    """Sign an arbitrary body map, bypassing every check: for testing parsers' refusals."""
    return signed.sign(key, context, encode(dict(body)))


class DictTree:
    """An :class:`protocol.policy.OrganTree` over a ``{child: parent}`` map."""

    def __init__(self, parents: Mapping[str, str | None]) -> None:
        self._parents = dict(parents)

    def parent_of(self, code: str) -> str | None:
        return self._parents.get(code)
