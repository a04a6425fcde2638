"""Options shared by the office's (``lienthong-node``) and the auditor's (``lienthong-audit``) CLIs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from protocol.errors import LienthongError, LocalError, RemoteError
from protocol.keys import fingerprint

from .errors import HubError, HubUnavailable, NodeError, error_code, error_detail

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def home_option(envvar: str, what: str) -> Decorator:
    """``--home DIR`` (required; from ``envvar`` when not given)."""
    return click.option(
        "--home",
        "home",
        type=click.Path(path_type=Path, file_okay=False),
        envvar=envvar,
        required=True,
        help=f"{what}. Env: {envvar}.",
    )


json_option: Decorator = click.option("--json", "as_json", is_flag=True, help="Print JSON.")

passphrase_option: Decorator = click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Read the keystore passphrase from this file (else LIENTHONG_PASSPHRASE or a prompt).",
)


#: What a command's failure may be, besides its own alarms: each becomes a code and a
#: detail for ``{"error": {...}}`` and the message, and exit status 1.
FAILURES: tuple[type[BaseException], ...] = (
    HubUnavailable,
    NodeError,
    HubError,
    RemoteError,
    LocalError,
    LienthongError,
    OSError,
    KeyboardInterrupt,
)


def failure(exc: BaseException) -> tuple[str, str]:
    """``(code, detail)`` of one of :data:`FAILURES`."""
    if isinstance(exc, HubUnavailable | NodeError | HubError | RemoteError):
        return exc.code, exc.detail
    if isinstance(exc, LocalError):
        return "local", str(exc)
    if isinstance(exc, LienthongError):
        return error_code(exc), error_detail(exc)
    if isinstance(exc, OSError):
        return "os", f"{exc.filename or ''} {exc.strerror or exc}".strip()
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", "stopped by the user"
    raise TypeError(f"{type(exc).__name__} is not a command failure")


def check_fingerprint(given: str, kid: bytes, what: str) -> None:
    """A pinned fingerprint (``--authority``, ``--hub-key``: at least 8 hex digits of the
    key id, colons allowed) must name this key: else ``hub_key_mismatch``."""
    cleaned = given.replace(":", "").lower()
    if len(cleaned) < 8 or not kid.hex().startswith(cleaned):
        raise NodeError("hub_key_mismatch", f"the hub's {what} is {fingerprint(kid)}, not {given}")
