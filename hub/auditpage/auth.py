"""Signing in to the audit page: an auditor's bearer token in a strict cookie, CSRF-safe forms.

* **Sign-in.**  The auditor pastes a bearer token (``lienthong-audit token`` prints one:
  the same session an auditor's key opens over the API).  The hub checks it exactly as
  for the API (:func:`hub.sessions.authenticate`: unknown, expired, revoked key) and
  requires the ``auditor`` role; an office's or an admin's token is refused.  The token
  then lives in the ``lienthong_audit`` cookie: ``HttpOnly`` (no script reads it),
  ``SameSite=Strict`` (no other site's page sends it), ``Path=/audit``, ``Secure`` when
  the page is served over HTTPS (directly or behind a proxy that says so), and no longer
  than the token itself.  Every page re-checks it, so a revoked key signs the auditor out
  at once.
* **CSRF.**  Beyond SameSite, every POST carries a form token and must come from this
  origin (``Origin``, when the browser sends it).  Signed in, the form token is derived
  from the session token (SHA-256 with a label): the attacker cannot read the cookie, so
  cannot compute it, and the hub stores nothing.  Before sign-in (the login form itself,
  against login CSRF) it is a random value in a second strict cookie that the form must
  repeat (double submit).  Searches and reports are GETs that change nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

from aiohttp import web
from sqlalchemy import select

from hub.clock import now
from hub.context import hub_of
from hub.directory import token_hash
from hub.models import SessionToken
from hub.sessions import Caller, authenticate
from protocol.errors import RemoteError

COOKIE: Final = "lienthong_audit"
LOGIN_COOKIE: Final = "lienthong_audit_login"
PATH: Final = "/audit"
CSRF_FIELD: Final = "csrf"
TOKEN_MAX: Final = 256
AUDITOR_KEY: Final = web.RequestKey("audit_caller", Caller)


def is_https(request: web.Request) -> bool:
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def _set(
    response: web.StreamResponse, request: web.Request, name: str, value: str, max_age: int
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max(0, max_age),
        path=PATH,
        httponly=True,
        samesite="Strict",
        secure=is_https(request),
    )


def csrf_for(token: str) -> str:
    """The form token of a signed-in session (derived, never stored)."""
    return hashlib.sha256(b"lienthong/v1 audit page csrf\x00" + token.encode()).hexdigest()[:32]


async def auditor(request: web.Request) -> tuple[Caller, str] | None:
    """The signed-in auditor and their session token, or None."""
    token = request.cookies.get(COOKIE, "")
    if not token or len(token) > TOKEN_MAX:
        return None
    hub = hub_of(request)
    try:
        async with hub.sessions() as session:
            caller = await authenticate(session, token, now())
    except RemoteError:
        return None
    if caller.role != "auditor":
        return None
    request[AUDITOR_KEY] = caller
    return caller, token


async def sign_in(request: web.Request, token: str) -> tuple[Caller, int] | str:
    """Check a pasted token; the caller and its expiry, or why it is refused (Vietnamese)."""
    token = token.strip()
    if not token or len(token) > TOKEN_MAX or not token.isascii():
        return "Mã truy cập không hợp lệ."
    hub = hub_of(request)
    try:
        async with hub.sessions() as session:
            caller = await authenticate(session, token, now())
    except RemoteError:
        return "Mã truy cập không đúng, đã hết hạn hoặc khóa của nó đã bị thu hồi."
    if caller.role != "auditor":
        return "Mã truy cập này không thuộc vai trò kiểm tra (auditor)."
    async with hub.sessions() as session:
        expires = await session.scalar(
            select(SessionToken.expires_at).where(SessionToken.token_hash == token_hash(token))
        )
    return caller, int(expires or now())


def remember(response: web.StreamResponse, request: web.Request, token: str, expires: int) -> None:
    _set(response, request, COOKIE, token, expires - now())
    response.del_cookie(LOGIN_COOKIE, path=PATH)


def forget(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path=PATH)


def login_csrf(request: web.Request) -> tuple[str, bool]:
    """The login form's token: the cookie's, or a new one (True: set it on the answer)."""
    value = request.cookies.get(LOGIN_COOKIE, "")
    if len(value) == 32 and value.isalnum():
        return value, False
    return secrets.token_hex(16), True


def set_login_csrf(response: web.StreamResponse, request: web.Request, value: str) -> None:
    _set(response, request, LOGIN_COOKIE, value, 3600)


def same_origin(request: web.Request) -> bool:
    """A POST from a page of this hub (browsers send Origin on POST)."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None
    scheme = "https" if is_https(request) else "http"
    return origin == f"{scheme}://{request.host}"


def check_csrf(request: web.Request, submitted: str, expected: str) -> bool:
    return (
        same_origin(request)
        and bool(expected)
        and hmac.compare_digest(submitted.encode("utf-8", "replace"), expected.encode())
    )
