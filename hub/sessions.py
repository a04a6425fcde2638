"""Sessions: an office proves possession of its signing key and gets a bearer token.

1. ``challenge`` stores 32 random bytes for the organ, valid ``challenge_lifetime`` s.
2. The office signs ``challenge || organ code`` under ``CTX_SESSION`` with a signing key of
   its entry.  :func:`open_session` *deletes* the challenge first -- one use, whatever
   the outcome, so a replayed or guessed answer finds nothing -- then checks the key
   (valid now, not revoked) and the signature, and stores the SHA-256 of a new random
   token bound to organ, key id, role and expiry.
3. :func:`authenticate` runs on every request: the token must exist, be unexpired, and
   its key still be valid and unrevoked *now* -- a revocation takes effect at once.

The API's bearer check (:func:`hub.api.common.require`) keeps the rows it looked up in a
per-process :class:`TokenCache` for :data:`TOKEN_CACHE_TTL` seconds, and checks expiry
and revocation times against *now* on every request.  What changes those rows -- a key
revoked (``revoke``, by the API or the CLI), a key superseded by a new enrolment --
clears the cache of every hub process: in-process at once, in the others through a
PostgreSQL NOTIFY sent in the same transaction (:mod:`hub.notify`).  The cache is used
only while that notification can arrive: on PostgreSQL, while the process's listening
connection is up (:meth:`hub.notify.MailboxNotifier.hears_sessions`; a reconnected
listener clears it, as it may have missed one).  The TTL bounds what is left: a
connection lost but not yet noticed when a revocation commits.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from protocol import signed
from protocol.directory import check_organ_code
from protocol.errors import RemoteError

from .db import run
from .directory import EntryCache, new_token, require_organ, session_message, token_hash
from .models import OrganKey, SessionChallenge, SessionToken

CHALLENGE_SIZE: Final = 32
#: Outstanding challenges one organ may hold; older ones are dropped past this.
CHALLENGES_PER_ORGAN: Final = 16
#: Seconds a looked-up bearer token is trusted without asking the database again.  A
#: long-poll waits up to 60 s, and the acknowledgement that follows its answer used to
#: find the token expired from a 2 s cache: a database lookup per delivery (tests/bench,
#: scenarios 3 and 5).  Changes reach the cache by notification, not by this expiry.
TOKEN_CACHE_TTL: Final = 60.0
#: Tokens one process remembers at most (the oldest lookups dropped first).
TOKEN_CACHE_SIZE: Final = 50_000


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the organ, the key that opened the session, its role."""

    organ: str
    kid: bytes
    role: str


async def new_challenge(
    session: AsyncSession, organ: str, lifetime: int, now: int
) -> tuple[bytes, int]:
    row = await require_organ(session, organ)
    if row.entry is None:
        raise RemoteError("organ_unknown", f"{organ} has not enrolled keys yet")
    await session.execute(
        delete(SessionChallenge).where(
            SessionChallenge.organ == organ, SessionChallenge.expires_at <= now
        )
    )
    count = await session.scalar(
        select(func.count()).select_from(SessionChallenge).where(SessionChallenge.organ == organ)
    )
    if (count or 0) >= CHALLENGES_PER_ORGAN:
        oldest = (
            select(SessionChallenge.challenge)
            .where(SessionChallenge.organ == organ)
            .order_by(SessionChallenge.expires_at)
            .limit((count or 0) - CHALLENGES_PER_ORGAN + 1)
        )
        await session.execute(
            delete(SessionChallenge).where(SessionChallenge.challenge.in_(oldest.scalar_subquery()))
        )
    challenge = secrets.token_bytes(CHALLENGE_SIZE)
    expires = now + lifetime
    session.add(SessionChallenge(challenge=challenge, organ=organ, expires_at=expires))
    return challenge, expires


async def consume_challenge(session: AsyncSession, organ: str, challenge: bytes, now: int) -> None:
    """Delete the challenge; ``challenge_invalid`` unless it was there, the organ's, unexpired.

    The caller commits this before checking the signature, so a failed attempt still
    uses the challenge up.
    """
    check_organ_code(organ)
    if len(challenge) != CHALLENGE_SIZE:
        raise RemoteError("challenge_invalid", "a challenge is 32 bytes")
    result = await session.execute(
        delete(SessionChallenge).where(
            SessionChallenge.challenge == challenge,
            SessionChallenge.organ == organ,
            SessionChallenge.expires_at > now,
        )
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise RemoteError("challenge_invalid")


async def open_session(
    session: AsyncSession,
    entries: EntryCache,
    *,
    organ: str,
    kid: bytes,
    challenge: bytes,
    signatures: dict[str, Any],
    lifetime: int,
    now: int,
) -> tuple[str, int, str]:
    """Verify the signed challenge (already consumed); returns (token, expiry, role)."""
    row = await require_organ(session, organ)
    if row.entry is None:
        raise RemoteError("organ_unknown", f"{organ} has not enrolled keys yet")
    entry = entries.verify(row.entry)
    key = entry.signing_key(kid, now)
    key.verify(signed.CTX_SESSION, session_message(challenge, organ), signatures)
    token = new_token()
    expires = now + lifetime
    session.add(
        SessionToken(
            token_hash=token_hash(token),
            organ=organ,
            kid=kid,
            role=entry.role,
            created_at=now,
            expires_at=expires,
        )
    )
    return token, expires, entry.role


@dataclass(frozen=True, slots=True)
class TokenRow:
    """What a bearer token is bound to, as stored (checked against the clock per use)."""

    organ: str
    kid: bytes
    role: str
    expires_at: int
    revoked_at: int | None
    not_after: int

    def caller(self, now: int) -> Caller:
        """The caller, unless the token expired or its key was revoked or retired by now."""
        if self.expires_at <= now:
            raise RemoteError("token_invalid", "the bearer token has expired")
        if self.revoked_at is not None and self.revoked_at <= now:
            raise RemoteError("token_invalid", "the key of this session was revoked")
        if self.not_after <= now:
            raise RemoteError("token_invalid", "the key of this session has expired")
        return Caller(organ=self.organ, kid=self.kid, role=self.role)


class TokenCache:
    """Bearer tokens looked up recently, by token hash, for at most ``ttl`` seconds.

    Only tokens found in the database are remembered (an unknown token always asks).
    :meth:`clear` forgets everything; a lookup that started before a clear is not stored
    afterwards (:attr:`generation`), so a row read just before a revocation committed
    cannot outlive it here.  While ``trusted()`` is false (changes could not reach this
    process) nothing is looked up here nor stored.
    """

    def __init__(
        self,
        ttl: float = TOKEN_CACHE_TTL,
        size: int = TOKEN_CACHE_SIZE,
        trusted: Callable[[], bool] = lambda: True,
    ) -> None:
        self.ttl = ttl
        self.size = size
        self.trusted = trusted
        self.generation = 0
        self._rows: OrderedDict[bytes, tuple[float, TokenRow]] = OrderedDict()

    def get(self, digest: bytes) -> TokenRow | None:
        if not self.trusted():
            return None
        found = self._rows.get(digest)
        if found is None:
            return None
        if time.monotonic() - found[0] >= self.ttl:
            del self._rows[digest]
            return None
        return found[1]

    def put(self, digest: bytes, row: TokenRow, generation: int) -> None:
        if generation != self.generation or self.ttl <= 0 or not self.trusted():
            return
        self._rows[digest] = (time.monotonic(), row)
        self._rows.move_to_end(digest)
        while len(self._rows) > self.size:
            self._rows.popitem(last=False)

    def clear(self) -> None:
        self.generation += 1
        self._rows.clear()

    def __len__(self) -> int:
        return len(self._rows)


_TOKENS = SessionToken.__table__
_KEYS = OrganKey.__table__
_FIND_TOKEN = (
    select(
        _TOKENS.c.organ,
        _TOKENS.c.kid,
        _TOKENS.c.role,
        _TOKENS.c.expires_at,
        _KEYS.c.revoked_at,
        _KEYS.c.not_after,
    )
    .join(_KEYS, _KEYS.c.kid == _TOKENS.c.kid)
    .where(_TOKENS.c.token_hash == bindparam("digest"))
)


async def find_token(db: AsyncSession | AsyncConnection, digest: bytes) -> TokenRow | None:
    """The stored session of a token hash, joined with its key; None if unknown."""
    row = (await run(db, _FIND_TOKEN, {"digest": digest})).first()
    if row is None:
        return None
    organ, kid, role, expires_at, revoked_at, not_after = row
    return TokenRow(organ, bytes(kid), role, expires_at, revoked_at, not_after)


async def authenticate(session: AsyncSession, token: str, now: int) -> Caller:
    row = await find_token(session, token_hash(token))
    if row is None:
        raise RemoteError("token_invalid", "the bearer token is unknown")
    return row.caller(now)


async def purge_expired(session: AsyncSession, now: int) -> int:
    """Drop expired challenges and tokens (the retention task calls this)."""
    n = 0
    for stmt in (
        delete(SessionChallenge).where(SessionChallenge.expires_at <= now),
        delete(SessionToken).where(SessionToken.expires_at <= now),
    ):
        result = await session.execute(stmt)
        n += result.rowcount  # type: ignore[attr-defined]
    return n
