"""Options shared by the office's (``lienthong-node``) and the auditor's (``lienthong-audit``) CLIs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

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
