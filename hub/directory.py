"""The directory as the hub keeps it: organs, their keys, and entries signed by the authority.

Every change -- an organ created or edited, keys enrolled or rotated, a key revoked, an
organ merged into its successor -- signs a new entry (serial + 1) with the directory
authority key, keeps it in ``directory_history`` and appends a ``directory`` audit event
holding the signed bytes, all in the caller's transaction.  An organ created by the admin
has no entry until its office enrols keys: there is nothing to publish before that.

The hub never trusts its own rows for keys when it verifies a peer: it verifies the stored
signed entry against the authority key (:class:`EntryCache`), so an edited database row
cannot make the hub accept a forged envelope or receipt either.

Functions raise :class:`RemoteError` for bad input (the API turns it into a 4xx answer,
the CLI prints its code); the session is the caller's and is not committed here.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, cast

from sqlalchemy import (
    CTE,
    Integer,
    Table,
    bindparam,
    delete,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from protocol import signed
from protocol.codec import check_text, nfc
from protocol.directory import (
    ROLES,
    TRANSPORTS,
    DirectoryEntry,
    KeyRecord,
    check_organ_code,
    sign_entry,
    verify_entry,
)
from protocol.errors import RemoteError
from protocol.keys import (
    ENC_HYBRID,
    SIG_HYBRID,
    EncryptionPublicKey,
    SigningPublicKey,
)

from .auditlog import append_event
from .db import in_list, in_subquery, run
from .hubkeys import HubKeys
from .models import DirectoryHistory, EnrolmentToken, Organ, OrganKey, SessionToken

LEVELS: Final = ("province", "district", "commune", "grassroots", "central", "other")
#: Keys of one usage kept in an entry (the format allows 16): the newest ones, revoked
#: and expired included, so old signatures still verify and revocations stay visible.
KEYS_PER_ENTRY: Final = 8
TREE_DEPTH_MAX: Final = 64


def enrol_message(token: str, organ: str) -> bytes:
    """What the new signing key signs at enrolment (under ``CTX_ENROL``)."""
    return token.encode("ascii") + b"\x00" + organ.encode("ascii")


def session_message(challenge: bytes, organ: str) -> bytes:
    """What an office signs to open a session (under ``CTX_SESSION``)."""
    return challenge + organ.encode("ascii")


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def new_token() -> str:
    """A bearer or enrolment token: 32 random bytes, base64url without padding."""
    return secrets.token_urlsafe(32)


class EntryCache:
    """Signed entries verified against the authority key, remembered by their digest."""

    def __init__(self, authority: SigningPublicKey, size: int = 10_000) -> None:
        self.authority = authority
        self._size = size
        self._entries: OrderedDict[bytes, DirectoryEntry] = OrderedDict()

    def verify(self, raw: bytes) -> DirectoryEntry:
        digest = hashlib.sha256(raw).digest()
        found = self._entries.get(digest)
        if found is not None:
            self._entries.move_to_end(digest)
            return found
        entry = verify_entry(raw, self.authority).entry
        self._entries[digest] = entry
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return entry


# --- reading ---------------------------------------------------------------------------


async def require_organ(session: AsyncSession, code: str) -> Organ:
    check_organ_code(code)
    organ = await session.get(Organ, code)
    if organ is None:
        raise RemoteError("organ_unknown", f"no organ {code} in the directory")
    return organ


async def signed_entries(session: AsyncSession, codes: Iterable[str]) -> dict[str, bytes]:
    """The current signed entry of each enrolled organ among ``codes``."""
    wanted = sorted(set(codes))
    out: dict[str, bytes] = {}
    for start in range(0, len(wanted), 1000):
        rows = await session.execute(
            select(Organ.code, Organ.entry).where(
                Organ.code.in_(wanted[start : start + 1000]), Organ.entry.is_not(None)
            )
        )
        for code, entry in rows:
            if entry is not None:
                out[code] = bytes(entry)
    return out


async def verified_entries(
    session: AsyncSession, cache: EntryCache, codes: Iterable[str]
) -> dict[str, DirectoryEntry]:
    return {code: cache.verify(raw) for code, raw in (await signed_entries(session, codes)).items()}


class Tree:
    """The organ tree around some organs (a :class:`protocol.policy.OrganTree`)."""

    def __init__(self, parents: dict[str, str | None]) -> None:
        self._parents = parents

    def parent_of(self, code: str) -> str | None:
        return self._parents.get(code)


def _up() -> CTE:
    """``codes`` and their ancestors, at most ``depth`` levels up (a recursive CTE; the
    codes are one list parameter, :func:`hub.db.in_list`)."""
    organs = cast(Table, Organ.__table__)
    start = (
        select(organs.c.code, organs.c.parent, literal_column("0", Integer).label("depth"))
        .where(in_list(organs.c.code, "codes"))
        .cte("up", recursive=True)
    )
    above = organs.alias("o")
    return start.union(
        select(above.c.code, above.c.parent, start.c.depth + literal_column("1", Integer))
        .select_from(above.join(start, above.c.code == start.c.parent))
        .where(start.c.depth < bindparam("depth"))
    )


_UP: Final = _up()
_ANCESTORS: Final = select(_UP.c.code, _UP.c.parent).distinct()


async def tree_around(session: AsyncSession, codes: Iterable[str]) -> Tree:
    """``codes`` and all their ancestors: what a route policy looks at, in one query."""
    parents: dict[str, str | None] = {}
    wanted = sorted(set(codes))
    for start in range(0, len(wanted), 1000):
        rows = await run(
            session, _ANCESTORS, {"codes": wanted[start : start + 1000], "depth": TREE_DEPTH_MAX}
        )
        for code, parent in rows:
            parents[code] = parent
    return Tree(parents)


_ORGANS: Final = cast(Table, Organ.__table__)
_AROUND: Final = select(_ORGANS.c.code, _ORGANS.c.parent, _ORGANS.c.entry).where(
    in_subquery(_ORGANS.c.code, select(_UP.c.code))
)


async def lookup(
    session: AsyncSession, cache: EntryCache, codes: Iterable[str]
) -> tuple[dict[str, DirectoryEntry], Tree]:
    """:func:`verified_entries` and :func:`tree_around` of ``codes`` in one query.

    What a submission needs of the directory: the signed entries of its sender and
    recipients (verified, through ``cache``) and the tree above them.
    """
    wanted = sorted(set(codes))
    parents: dict[str, str | None] = {}
    entries: dict[str, DirectoryEntry] = {}
    for start in range(0, len(wanted), 1000):
        chunk = wanted[start : start + 1000]
        asked = set(chunk)
        rows = await run(session, _AROUND, {"codes": chunk, "depth": TREE_DEPTH_MAX})
        for code, parent, entry in rows:
            parents[code] = parent
            if entry is not None and code in asked:
                entries[code] = cache.verify(bytes(entry))
    return entries, Tree(parents)


_DESCENDANTS = text(
    """
    WITH RECURSIVE down(code, depth) AS (
        SELECT code, 1 FROM organs WHERE parent = :root
        UNION
        SELECT o.code, down.depth + 1
        FROM organs o JOIN down ON o.parent = down.code
        WHERE down.depth < :depth
    )
    SELECT DISTINCT code FROM down
    """
)


async def descendants(session: AsyncSession, root: str, depth: int) -> list[str]:
    """Codes of the organs up to ``depth`` levels below ``root`` (1: its children)."""
    rows = await session.execute(_DESCENDANTS, {"root": root, "depth": depth})
    return sorted(code for (code,) in rows)


# --- changing ---------------------------------------------------------------------------


def _check_name(name: str) -> str:
    name = nfc(name).strip()
    if not name:
        raise RemoteError("field_invalid", "an organ needs a name")
    return check_text(name, name="organ name", max_len=512)


def _check_level(level: str) -> str:
    if level not in LEVELS:
        raise RemoteError("field_invalid", f"level must be one of {', '.join(LEVELS)}")
    return level


def _check_transports(transports: Sequence[str], email: str | None) -> str:
    if not transports or any(t not in TRANSPORTS for t in transports):
        raise RemoteError("field_invalid", "transports must be http and/or email")
    if "email" in transports and not email:
        raise RemoteError("field_invalid", "the e-mail transport needs an e-mail address")
    return ",".join(t for t in TRANSPORTS if t in transports)


async def publish(
    session: AsyncSession, keys: HubKeys, organ: Organ, action: str, now: int
) -> bytes:
    """Sign the organ's current state as a new entry, keep it and log it."""
    rows = (
        await session.scalars(
            select(OrganKey)
            .where(OrganKey.organ == organ.code)
            .order_by(OrganKey.not_before.desc(), OrganKey.kid)
        )
    ).all()

    def records(usage: str) -> tuple[KeyRecord, ...]:
        chosen = [k for k in rows if k.usage == usage][:KEYS_PER_ENTRY]
        return tuple(
            KeyRecord(k.alg, bytes(k.pub), k.not_before, k.not_after, k.revoked_at)
            for k in reversed(chosen)
        )

    serial = organ.serial + 1
    entry = DirectoryEntry(
        organ=organ.code,
        name=organ.name,
        role=organ.role,
        level=organ.level,
        parent=organ.parent,
        signing_keys=records("sign"),
        encryption_keys=records("enc"),
        email=organ.email,
        transports=tuple(organ.transports.split(",")),
        valid_from=organ.valid_from,
        valid_until=organ.valid_until,
        successor=organ.successor,
        serial=serial,
        issued_at=now,
        authority_kid=keys.authority.kid,
    )
    raw = sign_entry(entry, keys.authority)
    organ.serial = serial
    organ.entry = raw
    organ.updated_at = now
    session.add(
        DirectoryHistory(organ=organ.code, serial=serial, action=action, entry=raw, issued_at=now)
    )
    await append_event(session, "directory", now, organ=organ.code, action=action, entry=raw)
    return raw


@dataclass(frozen=True, slots=True)
class OrganFields:
    """What an admin says of an organ (``enroll`` and ``POST /v1/admin/enrolments``)."""

    code: str
    name: str
    parent: str | None = None
    level: str = "other"
    role: str = "office"
    email: str | None = None
    transports: tuple[str, ...] = ("http",)


async def upsert_organ(
    session: AsyncSession, keys: HubKeys, fields: OrganFields, now: int
) -> tuple[Organ, bool]:
    """Create or update an organ; returns it and whether it was created."""
    code = check_organ_code(fields.code)
    name = _check_name(fields.name)
    level = _check_level(fields.level)
    if fields.role not in ROLES:
        raise RemoteError("field_invalid", f"role must be one of {', '.join(ROLES)}")
    email = check_text(fields.email, name="email", max_len=254) if fields.email else None
    transports = _check_transports(fields.transports, email)
    if fields.parent is not None:
        check_organ_code(fields.parent)
        if fields.parent == code:
            raise RemoteError("field_invalid", "an organ cannot be its own parent")
        if await session.get(Organ, fields.parent) is None:
            raise RemoteError("organ_unknown", f"parent {fields.parent} is not in the directory")
        tree = await tree_around(session, [fields.parent])
        chain, current = set(), tree.parent_of(fields.parent)
        while current is not None and current not in chain:
            if current == code:
                raise RemoteError("field_invalid", f"{fields.parent} is below {code}: a cycle")
            chain.add(current)
            current = tree.parent_of(current)
    organ = await session.get(Organ, code, with_for_update=True)
    created = organ is None
    if organ is None:
        organ = Organ(code=code, serial=0, valid_from=now, updated_at=now)
        session.add(organ)
    before = _organ_state(organ)
    organ.name = name
    organ.parent = fields.parent
    organ.level = level
    organ.role = fields.role
    organ.email = email
    organ.transports = transports
    organ.updated_at = now
    if not created and organ.entry is not None and before != _organ_state(organ):
        await session.flush()
        await publish(session, keys, organ, "update", now)
    return organ, created


def _organ_state(organ: Organ) -> tuple[Any, ...]:
    return (organ.name, organ.parent, organ.level, organ.role, organ.email, organ.transports)


async def issue_enrolment_token(
    session: AsyncSession, code: str, lifetime: int, now: int
) -> tuple[str, int]:
    """A one-time token with which the office of ``code`` enrols its keys."""
    await require_organ(session, code)
    token = new_token()
    expires = now + lifetime
    session.add(
        EnrolmentToken(token_hash=token_hash(token), organ=code, created_at=now, expires_at=expires)
    )
    return token, expires


@dataclass(frozen=True, slots=True)
class Enrolment:
    token: str
    organ: str
    signing_key: SigningPublicKey
    encryption_key: EncryptionPublicKey
    proof: dict[str, bytes]


async def enrol(
    session: AsyncSession, keys: HubKeys, request: Enrolment, key_lifetime: int, now: int
) -> bytes:
    """Check the token and the proof of possession, add the keys, sign the new entry."""
    code = check_organ_code(request.organ)
    row = await session.get(EnrolmentToken, token_hash(request.token), with_for_update=True)
    if row is None or row.organ != code or row.used_at is not None or row.expires_at <= now:
        raise RemoteError("enrolment_token_invalid")
    if keys.hybrid and (
        request.signing_key.alg != SIG_HYBRID or request.encryption_key.alg != ENC_HYBRID
    ):
        raise RemoteError(
            "algorithm_unsupported",
            f"this hub is hybrid: enrol {SIG_HYBRID} and {ENC_HYBRID} keys",
        )
    request.signing_key.verify(signed.CTX_ENROL, enrol_message(request.token, code), request.proof)
    organ = await require_organ(session, code)
    claimed = await session.execute(
        update(EnrolmentToken)
        .where(EnrolmentToken.token_hash == row.token_hash, EnrolmentToken.used_at.is_(None))
        .values(used_at=now)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        raise RemoteError("enrolment_token_invalid", "the enrolment token was used concurrently")
    had_keys = False
    for usage, key in (("sign", request.signing_key), ("enc", request.encryption_key)):
        existing = await session.get(OrganKey, key.kid)
        if existing is not None and existing.organ != code:
            raise RemoteError("key_invalid", "this public key is enrolled for another organ")
        current = (
            await session.scalars(
                select(OrganKey).where(
                    OrganKey.organ == code,
                    OrganKey.usage == usage,
                    OrganKey.revoked_at.is_(None),
                    OrganKey.not_after > now,
                    OrganKey.kid != key.kid,
                )
            )
        ).all()
        for old in current:
            had_keys = True
            old.not_after = now  # superseded: old signatures stay verifiable by time
        if existing is None:
            session.add(
                OrganKey(
                    kid=key.kid,
                    organ=code,
                    usage=usage,
                    alg=key.alg,
                    pub=key.raw,
                    not_before=now,
                    not_after=now + key_lifetime,
                )
            )
        elif existing.revoked_at is not None or existing.not_after <= now:
            raise RemoteError("key_revoked", "this key was revoked or retired: enrol a new one")
    await session.flush()
    return await publish(session, keys, organ, "rotate" if had_keys else "enrol", now)


def match_kid(candidates: Iterable[bytes], wanted: str) -> list[bytes]:
    """Key ids matching ``wanted``: hex (a prefix of 8+ digits) or a fingerprint."""
    cleaned = wanted.replace(":", "").lower()
    if len(cleaned) < 8 or any(c not in "0123456789abcdef" for c in cleaned):
        raise RemoteError("field_invalid", "a key id is 8 or more hex digits (or a fingerprint)")
    return [kid for kid in candidates if kid.hex().startswith(cleaned)]


async def revoke(
    session: AsyncSession, keys: HubKeys, code: str, kid: str | None, now: int
) -> bytes:
    """Revoke one key of the organ, or all its unrevoked keys; effective at once."""
    organ = await require_organ(session, code)
    rows = (
        await session.scalars(
            select(OrganKey).where(OrganKey.organ == code, OrganKey.revoked_at.is_(None))
        )
    ).all()
    if kid is not None:
        chosen = set(match_kid((k.kid for k in rows), kid))
        if len(chosen) != 1:
            raise RemoteError("key_unknown", f"{len(chosen)} unrevoked keys of {code} match {kid}")
        rows = [k for k in rows if k.kid in chosen]
    if not rows:
        raise RemoteError("key_unknown", f"{code} has no unrevoked key")
    for key in rows:
        key.revoked_at = now
    await session.execute(delete(SessionToken).where(SessionToken.kid.in_([k.kid for k in rows])))
    await session.flush()
    return await publish(session, keys, organ, "revoke", now)


async def merge(
    session: AsyncSession, keys: HubKeys, old: str, new: str, at: int, now: int
) -> Organ:
    """From ``at`` on, ``old`` is no longer valid and names ``new`` as its successor."""
    if old == new:
        raise RemoteError("field_invalid", "an organ cannot merge into itself")
    organ = await require_organ(session, old)
    successor = await require_organ(session, new)
    seen = {old}
    current: Organ | None = successor
    while current is not None and current.successor is not None:
        if current.successor in seen:
            raise RemoteError("field_invalid", f"{new} already merges (back) into {old}")
        seen.add(current.successor)
        current = await session.get(Organ, current.successor)
    if at < organ.valid_from:
        since = datetime.fromtimestamp(organ.valid_from, UTC).date().isoformat()
        raise RemoteError("field_invalid", f"{old} is in the directory only since {since}")
    organ.valid_until = at
    organ.successor = new
    organ.updated_at = now
    if organ.entry is not None:
        await session.flush()
        await publish(session, keys, organ, "merge", now)
    return organ


async def key_status(session: AsyncSession) -> dict[str, list[OrganKey]]:
    """Every organ's keys, for ``lienthong-hub organs``."""
    out: dict[str, list[OrganKey]] = {}
    for key in (await session.scalars(select(OrganKey).order_by(OrganKey.not_before))).all():
        out.setdefault(key.organ, []).append(key)
    return out
