"""Organs, their keys, and directory entries signed by the directory authority.

An **organ** is an office, named by a code: the national identifier (``000.00.00.H41``) or a
Party notation, treated as an opaque validated string.  The organ tree has any depth;
levels are labels, not a schema.  Organs merge and split: an entry may end and name its
successor.

A **directory entry** lists an organ's signing and encryption keys with their validity and
revocation times, its role, e-mail address and transports.  The hub's database is not
trusted for keys: nodes pin the directory authority key at enrolment and verify every
entry they use with :func:`verify_entry`, so an edited database row cannot swap a key.

Times are integer Unix seconds, UTC.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from . import signed
from .codec import Fields, decode, encode, omit_none
from .errors import LocalError, RemoteError
from .keys import (
    ENCRYPTION_ALGS,
    KID_SIZE,
    SIGNING_ALGS,
    EncryptionPublicKey,
    SigningPrivateKey,
    SigningPublicKey,
)

VERSION: Final = 1
ORGAN_CODE_MAX: Final = 64
_ORGAN_RE: Final = re.compile(r"[0-9A-Za-z.\-_/]{1,64}")
_LEVEL_RE: Final = re.compile(r"[a-z][a-z0-9-]{0,31}")
ROLES: Final = ("office", "auditor", "admin")
TRANSPORTS: Final = ("http", "email")
ENTRY_MAX: Final = 64 * 1024
FOREVER: Final = 2**62

_PublicKey = TypeVar("_PublicKey", SigningPublicKey, EncryptionPublicKey)


def check_organ_code(code: Any) -> str:
    """Validate an organ code: ``[0-9A-Za-z.-_/]``, 1 to 64 characters."""
    if not isinstance(code, str) or _ORGAN_RE.fullmatch(code) is None:
        raise RemoteError("organ_code_invalid", f"organ code {str(code)[:80]!r}")
    return code


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One key of an organ with its validity window and, once revoked, the time of it."""

    alg: str
    pub: bytes
    not_before: int
    not_after: int
    revoked_at: int | None = None

    @property
    def kid(self) -> bytes:
        from .keys import key_id

        return key_id(self.alg, self.pub)

    def check_valid(self, at: int) -> None:
        """Raise ``key_not_yet_valid``, ``key_expired`` or ``key_revoked`` unless valid at ``at``."""
        if self.revoked_at is not None and at >= self.revoked_at:
            raise RemoteError("key_revoked", f"key revoked at {self.revoked_at}")
        if at < self.not_before:
            raise RemoteError("key_not_yet_valid", f"key valid from {self.not_before}")
        if at >= self.not_after:
            raise RemoteError("key_expired", f"key expired at {self.not_after}")

    def to_cbor(self) -> dict[str, Any]:
        return omit_none(
            {
                "alg": self.alg,
                "pub": self.pub,
                "from": self.not_before,
                "until": self.not_after,
                "revoked": self.revoked_at,
            }
        )

    @classmethod
    def from_cbor(cls, value: Any, where: str, algs: Iterable[str]) -> KeyRecord:
        f = Fields(value, where)
        rec = cls(
            alg=f.choice("alg", algs),
            pub=f.blob("pub", max_size=4096),
            not_before=f.integer("from"),
            not_after=f.integer("until"),
            revoked_at=f.opt_integer("revoked"),
        )
        f.done()
        return rec


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """What the directory says of one organ, at one serial number."""

    organ: str
    name: str
    role: str
    level: str
    signing_keys: tuple[KeyRecord, ...]
    encryption_keys: tuple[KeyRecord, ...]
    valid_from: int
    serial: int
    issued_at: int
    authority_kid: bytes
    parent: str | None = None
    email: str | None = None
    transports: tuple[str, ...] = ("http",)
    valid_until: int | None = None
    successor: str | None = None

    def to_cbor(self) -> dict[str, Any]:
        return omit_none(
            {
                "v": VERSION,
                "organ": self.organ,
                "name": self.name,
                "role": self.role,
                "level": self.level,
                "parent": self.parent,
                "sign": [k.to_cbor() for k in self.signing_keys],
                "enc": [k.to_cbor() for k in self.encryption_keys],
                "email": self.email,
                "transports": list(self.transports),
                "from": self.valid_from,
                "until": self.valid_until,
                "successor": self.successor,
                "serial": self.serial,
                "issued": self.issued_at,
                "authority": self.authority_kid,
            }
        )

    @classmethod
    def from_cbor(cls, value: Any) -> DirectoryEntry:
        f = Fields(value, "entry")
        if f.integer("v") != VERSION:
            raise RemoteError("version_unsupported", "directory entry version")
        organ = check_organ_code(f.text("organ", max_len=ORGAN_CODE_MAX))
        name = f.text("name", max_len=512)
        role = f.choice("role", ROLES)
        level = f.text("level", max_len=32)
        if _LEVEL_RE.fullmatch(level) is None:
            raise RemoteError("field_invalid", "entry.level must be a lowercase label")
        parent_raw = f.opt_text("parent", max_len=ORGAN_CODE_MAX)
        parent = check_organ_code(parent_raw) if parent_raw is not None else None
        sign = tuple(
            KeyRecord.from_cbor(v, "entry.sign[]", SIGNING_ALGS)
            for v in f.array("sign", max_items=16)
        )
        enc = tuple(
            KeyRecord.from_cbor(v, "entry.enc[]", ENCRYPTION_ALGS)
            for v in f.array("enc", max_items=16)
        )
        email = f.opt_text("email", max_len=254)
        transports = tuple(f.array("transports", max_items=2))
        if (
            not transports
            or any(t not in TRANSPORTS for t in transports)
            or len(set(transports)) != len(transports)
        ):
            raise RemoteError(
                "field_invalid", "entry.transports must name http and/or email once each"
            )
        valid_from = f.integer("from")
        valid_until = f.opt_integer("until")
        successor_raw = f.opt_text("successor", max_len=ORGAN_CODE_MAX)
        successor = check_organ_code(successor_raw) if successor_raw is not None else None
        entry = cls(
            organ=organ,
            name=name,
            role=role,
            level=level,
            parent=parent,
            signing_keys=sign,
            encryption_keys=enc,
            email=email,
            transports=transports,
            valid_from=valid_from,
            valid_until=valid_until,
            successor=successor,
            serial=f.integer("serial"),
            issued_at=f.integer("issued"),
            authority_kid=f.blob("authority", size=KID_SIZE),
        )
        f.done()
        return entry

    # -- questions a verifier asks ----------------------------------------------------

    def check_valid(self, at: int) -> None:
        if at < self.valid_from or (self.valid_until is not None and at >= self.valid_until):
            raise RemoteError("organ_not_valid", f"{self.organ} is not valid at {at}")

    def signing_key(self, kid: bytes, at: int) -> SigningPublicKey:
        """The signing key ``kid``, checked valid at ``at``."""
        return SigningPublicKey.from_raw(*self._find(self.signing_keys, kid, at))

    def encryption_key(self, kid: bytes, at: int) -> EncryptionPublicKey:
        return EncryptionPublicKey.from_raw(*self._find(self.encryption_keys, kid, at))

    def current_encryption_key(self, at: int) -> EncryptionPublicKey:
        """The newest encryption key valid at ``at`` (what a sender seals to)."""
        return self._current(self.encryption_keys, at, EncryptionPublicKey.from_raw)

    def current_signing_key(self, at: int) -> SigningPublicKey:
        return self._current(self.signing_keys, at, SigningPublicKey.from_raw)

    def _find(self, records: tuple[KeyRecord, ...], kid: bytes, at: int) -> tuple[str, bytes]:
        for rec in records:
            if rec.kid == kid:
                rec.check_valid(at)
                return rec.alg, rec.pub
        raise RemoteError("key_unknown", f"key {kid.hex()[:16]} is not a key of {self.organ}")

    def _current(
        self,
        records: tuple[KeyRecord, ...],
        at: int,
        load: Callable[[str, bytes], _PublicKey],
    ) -> _PublicKey:
        usable = []
        for rec in records:
            try:
                rec.check_valid(at)
            except RemoteError:
                continue
            usable.append(rec)
        if not usable:
            raise RemoteError("key_expired", f"{self.organ} has no key valid at {at}")
        best = max(usable, key=lambda r: r.not_before)
        return load(best.alg, best.pub)


@dataclass(frozen=True, slots=True)
class SignedEntry:
    """A directory entry with the exact bytes the authority signed."""

    entry: DirectoryEntry
    raw: bytes
    digest: bytes = field(repr=False)


def sign_entry(entry: DirectoryEntry, authority: SigningPrivateKey) -> bytes:
    """Sign an entry with the directory authority key; returns the container bytes."""
    if entry.authority_kid != authority.kid:
        raise LocalError("entry names another authority key")
    body = encode(entry.to_cbor())
    try:
        # Never sign what no node could verify (an NFD name, a bad level label ...).
        DirectoryEntry.from_cbor(decode(body, max_size=ENTRY_MAX))
    except RemoteError as exc:
        raise LocalError(str(exc)) from None
    return signed.sign(authority, signed.CTX_DIRECTORY, body)


def verify_entry(
    data: bytes, authority: SigningPublicKey, *, organ: str | None = None
) -> SignedEntry:
    """Parse and verify a signed entry against the pinned authority key."""
    container = signed.parse(data, max_size=ENTRY_MAX, where="directory entry")
    entry = DirectoryEntry.from_cbor(decode(container.body, max_size=ENTRY_MAX))
    if entry.authority_kid != authority.kid:
        raise RemoteError("directory_signature_invalid", "entry is signed by another authority key")
    try:
        container.verify(authority, signed.CTX_DIRECTORY)
    except RemoteError as exc:
        raise RemoteError("directory_signature_invalid", exc.detail) from None
    if organ is not None and entry.organ != organ:
        raise RemoteError("organ_mismatch", f"entry is for {entry.organ}, not {organ}")
    return SignedEntry(entry, bytes(data), container.digest)
