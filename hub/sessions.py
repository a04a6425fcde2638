"""Sessions: an office proves possession of its signing key and gets a bearer token.

1. ``challenge`` stores 32 random bytes for the organ, valid ``challenge_lifetime`` s.
2. The office signs ``challenge || organ code`` under ``CTX_SESSION`` with a signing key of
   its entry.  :func:`open_session` *deletes* the challenge first -- one use, whatever
   the outcome, so a replayed or guessed answer finds nothing -- then checks the key
   (valid now, not revoked) and the signature, and stores the SHA-256 of a new random
   token bound to organ, key id, role and expiry.
3. :func:`authenticate` runs on every request: the token must exist, be unexpired, and
   its key still be valid and unrevoked *now* -- a revocation takes effect at once.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from protocol import signed
from protocol.directory import check_organ_code
from protocol.errors import RemoteError

from .directory import EntryCache, new_token, require_organ, session_message, token_hash
from .models import OrganKey, SessionChallenge, SessionToken

CHALLENGE_SIZE: Final = 32
#: Outstanding challenges one organ may hold; older ones are dropped past this.
CHALLENGES_PER_ORGAN: Final = 16


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


async def authenticate(session: AsyncSession, token: str, now: int) -> Caller:
    row = (
        await session.execute(
            select(
                SessionToken.organ,
                SessionToken.kid,
                SessionToken.role,
                SessionToken.expires_at,
                OrganKey.revoked_at,
                OrganKey.not_after,
            )
            .join(OrganKey, OrganKey.kid == SessionToken.kid)
            .where(SessionToken.token_hash == token_hash(token))
        )
    ).first()
    if row is None:
        raise RemoteError("token_invalid", "the bearer token is unknown")
    organ, kid, role, expires_at, revoked_at, not_after = row
    if expires_at <= now:
        raise RemoteError("token_invalid", "the bearer token has expired")
    if revoked_at is not None and revoked_at <= now:
        raise RemoteError("token_invalid", "the key of this session was revoked")
    if not_after <= now:
        raise RemoteError("token_invalid", "the key of this session has expired")
    return Caller(organ=organ, kid=bytes(kid), role=role)


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
