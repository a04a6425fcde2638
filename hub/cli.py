"""``lienthong-hub``: set up, run and administer a hub.

Every command takes ``--data DIR`` (or ``LIENTHONG_DATA_DIR``): the folder ``init``
created, holding the keys, ``hub.toml`` and, by default, the SQLite database and blobs.
Errors print ``error: <code>: <one line>`` on standard error and exit with status 1
(2 for usage errors, as click does).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from protocol.errors import LienthongError, LocalError, RemoteError
from protocol.keys import fingerprint

from . import directory
from .clock import now, vn_midnight
from .db import make_engine, make_sessionmaker
from .hubkeys import create_keys, load_keys
from .models import Organ, OrganKey
from .notify import channel_for, sessions_changed
from .settings import CONFIG_FILE, HubSettings, load_settings

T = TypeVar("T")
DATA_HELP = "The hub's data folder (made by init). Env: LIENTHONG_DATA_DIR."


def _fail(code: str, detail: str) -> NoReturn:
    click.echo(f"error: {code}: {detail}", err=True)
    sys.exit(1)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except RemoteError as exc:
        _fail(exc.code, exc.detail)
    except LocalError as exc:
        _fail("local", str(exc))
    except LienthongError as exc:
        _fail("error", str(exc))
    except OSError as exc:
        _fail("os", str(exc))


def _settings(data: Path, **overrides: Any) -> HubSettings:
    if not data.is_dir():
        raise LocalError(f"{data} is not a folder: run `lienthong-hub init --data {data}` first")
    return load_settings(data, **overrides)


def _with_db(settings: HubSettings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` in one transaction on the hub's (migrated) database."""

    async def run() -> T:
        engine = make_engine(settings.database_url)
        try:
            from .migrate import upgrade  # Alembic is loaded only where it runs

            await upgrade(engine)
            async with make_sessionmaker(engine).begin() as session:
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(run())


data_option = click.option(
    "--data",
    "data",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="LIENTHONG_DATA_DIR",
    required=True,
    help=DATA_HELP,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Lienthong hub: verifies and routes sealed packets between committee offices.

    \b
    Quick start (embedded SQLite, no server needed):
      lienthong-hub init --data /srv/lienthong
      lienthong-hub enroll --data /srv/lienthong 000.00.00.H41 --name "Văn phòng Tỉnh ủy"
      lienthong-hub serve --data /srv/lienthong --port 8443
    """


@main.command()
@data_option
@click.option("--database-url", help="PostgreSQL: postgresql+asyncpg://user@host/db.")
@click.option(
    "--hybrid", is_flag=True, help="Ed25519 + ML-DSA-65 keys; offices must enrol hybrid keys."
)
@click.option("--hub-name", default="lienthong", show_default=True, help="Names the audit log.")
def init(data: Path, database_url: str | None, hybrid: bool, hub_name: str) -> None:
    """Create the data folder, the hub key, the directory authority key and hub.toml.

    \b
    Examples:
      lienthong-hub init --data /srv/lienthong
      lienthong-hub init --data /srv/lienthong --hybrid \\
          --database-url postgresql+asyncpg://lienthong@db/lienthong
    """
    with _errors():
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        config = data / CONFIG_FILE
        if config.exists():
            raise LocalError(f"{config} exists: this data folder is already initialised")
        settings = load_settings(data, database_url=database_url, hub_name=hub_name)
        keys = create_keys(data, hybrid=hybrid)
        lines = [
            "# Lienthong hub configuration, written by `lienthong-hub init`.",
            "# Environment variables LIENTHONG_<NAME> override these values.",
            f"hub_name = {json.dumps(hub_name)}",
            f"host = {json.dumps(settings.host)}",
            f"port = {settings.port}",
            'secrecy_allowed = ["none"]',
            f"retention_days = {settings.retention_days}",
        ]
        if database_url:
            lines.append(f"database_url = {json.dumps(database_url)}")
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        prints = keys.fingerprints()
        click.echo(f"data folder:          {settings.data_dir}")
        click.echo(f"database:             {settings.database_url}")
        click.echo(f"key algorithm:        {keys.hub.alg}")
        click.echo(f"hub key:              {prints['hub']}")
        click.echo(f"directory authority:  {prints['authority']}")


@main.command()
@data_option
@click.option("--host", help="Address to listen on (default from hub.toml, else 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on; 0 picks a free one.")
@click.option("--database-url", help="Overrides hub.toml and LIENTHONG_DATABASE_URL.")
@click.option(
    "--smtp-port",
    type=click.IntRange(0, 65535),
    help="Also run the e-mail gateway's SMTP server on this port (0: a free one); "
    "needs email.address in hub.toml.",
)
def serve(
    data: Path, host: str | None, port: int | None, database_url: str | None, smtp_port: int | None
) -> None:
    """Run the hub (migrations are applied first). Stops cleanly on SIGTERM or Ctrl-C.

    \b
    Examples:
      lienthong-hub serve --data /srv/lienthong
      lienthong-hub serve --data /srv/lienthong --host 0.0.0.0 --port 8443
      lienthong-hub serve --data /srv/lienthong --smtp-port 2525
      LIENTHONG_TLS_CERT=fullchain.pem LIENTHONG_TLS_KEY=privkey.pem \\
          lienthong-hub serve --data /srv/lienthong --host 0.0.0.0 --port 8443
    HTTPS when tls_cert and tls_key are set (hub.toml or LIENTHONG_TLS_CERT/_KEY).
    The listening address is logged as a JSON line {"event": "listening", ...}, the
    e-mail gateway's as {"event": "smtp_listening", ...} (see docs/email.md).
    """
    from .app import create_app
    from .logs import configure_logging, get_logger

    with _errors():
        email = {"smtp_port": smtp_port} if smtp_port is not None else None
        settings = _settings(data, host=host, port=port, database_url=database_url, email=email)
        configure_logging(settings.log_level)
        log = get_logger("hub.serve")
        tls = settings.ssl_context()  # a bad certificate or key stops here, before anything
        if settings.migrate_on_start:
            # Migrations run in a child process: the long-lived server then never loads
            # Alembic and its templates, about 10 MiB of resident memory per process.
            command = [sys.executable, "-c", "from hub.cli import main; main()", "migrate"]
            command += ["--data", str(data)]
            if database_url:
                command += ["--database-url", database_url]
            if subprocess.run(command, check=False).returncode != 0:  # noqa: S603 - our own argv, no shell
                raise LocalError("the database migrations failed; see the lines above")
            settings = settings.model_copy(update={"migrate_on_start": False})

        async def run() -> None:
            app = create_app(settings)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=10)
            await runner.setup()
            site = web.TCPSite(runner, settings.host, settings.port, ssl_context=tls)
            await site.start()
            addresses = runner.addresses
            port_bound = addresses[0][1] if addresses else settings.port
            log.info(
                "listening",
                host=settings.host,
                port=port_bound,
                scheme=settings.scheme,
                pid=os.getpid(),
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            try:
                await stop.wait()
            finally:
                log.info("stopping")
                await runner.cleanup()

        asyncio.run(run())


@main.command()
@data_option
@click.option("--database-url", help="Overrides hub.toml and LIENTHONG_DATABASE_URL.")
def migrate(data: Path, database_url: str | None) -> None:
    """Apply the database migrations (serve does this too on start).

    \b
    Example:
      lienthong-hub migrate --data /srv/lienthong
    """
    from .migrate import current_revision

    with _errors():
        settings = _settings(data, database_url=database_url)

        async def run() -> str | None:
            engine = make_engine(settings.database_url)
            try:
                from .migrate import upgrade

                await upgrade(engine)
                return await current_revision(engine)
            finally:
                await engine.dispose()

        click.echo(f"database at revision {asyncio.run(run())}")


@main.command()
@data_option
@click.argument("code")
@click.option("--name", required=True, help='The organ\'s name, e.g. "Đảng ủy xã Yên Lạc".')
@click.option("--parent", help="Code of the organ above it in the tree.")
@click.option("--level", type=click.Choice(directory.LEVELS), default="other", show_default=True)
@click.option(
    "--role", type=click.Choice(["office", "auditor", "admin"]), default="office", show_default=True
)
@click.option("--email", help="The office's mailbox, for the e-mail transport.")
@click.option(
    "--transport",
    "transports",
    type=click.Choice(["http", "email"]),
    multiple=True,
    help="Allowed transports (repeat); default http.",
)
def enroll(
    data: Path,
    code: str,
    name: str,
    parent: str | None,
    level: str,
    role: str,
    email: str | None,
    transports: tuple[str, ...],
) -> None:
    """Create or update an organ and print a one-time enrolment token (the last line).

    \b
    Examples:
      lienthong-hub enroll --data /srv/lienthong 000.00.00.H41 \\
          --name "Văn phòng Tỉnh ủy" --level province
      lienthong-hub enroll --data /srv/lienthong 000.00.12.H41 \\
          --name "Đảng ủy xã Yên Lạc" --parent 000.00.00.H41 --level commune
      lienthong-hub enroll --data /srv/lienthong KT.TU --name "Ủy ban Kiểm tra" --role auditor
    The office runs `lienthong-node init` with the token before it expires.
    """
    with _errors():
        settings = _settings(data)
        keys = load_keys(settings.data_dir)
        fields = directory.OrganFields(
            code=code,
            name=name,
            parent=parent,
            level=level,
            role=role,
            email=email,
            transports=transports or ("http",),
        )

        async def work(session: AsyncSession) -> tuple[bool, str, int]:
            at = now()
            organ, created = await directory.upsert_organ(session, keys, fields, at)
            token, expires = await directory.issue_enrolment_token(
                session, organ.code, settings.enrolment_token_lifetime, at
            )
            return created, token, expires

        created, token, expires = _with_db(settings, work)
        click.echo(
            f"{'created' if created else 'updated'} {code}; token valid until {_when(expires)}"
        )
        click.echo(token)


@main.command()
@data_option
@click.argument("code")
@click.option("--key", "kid", help="Key id (hex prefix or fingerprint); default: all keys.")
def revoke(data: Path, code: str, kid: str | None) -> None:
    """Revoke an organ's keys at once: its sessions end, new packets are refused.

    \b
    Examples:
      lienthong-hub revoke --data /srv/lienthong 000.00.12.H41
      lienthong-hub revoke --data /srv/lienthong 000.00.12.H41 --key 3f2a:9c01
    """
    with _errors():
        settings = _settings(data)
        keys = load_keys(settings.data_dir)

        async def work(session: AsyncSession) -> int:
            await directory.revoke(session, keys, code, kid, now())
            await sessions_changed(session, channel_for(keys.hub.kid))  # running hubs hear it
            organ = await directory.require_organ(session, code)
            return organ.serial

        serial = _with_db(settings, work)
        click.echo(f"revoked; {code}'s directory entry is now serial {serial}")


@main.command()
@data_option
@click.argument("old")
@click.argument("new")
@click.option("--from", "day", help="Vietnam date YYYY-MM-DD from which OLD routes to NEW.")
def merge(data: Path, old: str, new: str, day: str | None) -> None:
    """Merge organ OLD into NEW: from the date on, OLD is no longer valid and names NEW.

    \b
    Example (the 2025 reform: a district committee merged into a commune):
      lienthong-hub merge --data /srv/lienthong 000.12.00.H41 000.12.05.H41 --from 2025-07-01
    Senders resolve OLD to NEW from OLD's directory entry; the hub refuses packets
    addressed to OLD after the date, naming NEW. Re-parent OLD's children with enroll.
    """
    with _errors():
        settings = _settings(data)
        keys = load_keys(settings.data_dir)
        at = now()
        when = vn_midnight(day) if day else at

        async def work(session: AsyncSession) -> list[str]:
            await directory.merge(session, keys, old, new, when, at)
            return await directory.descendants(session, old, 1)

        children = _with_db(settings, work)
        click.echo(f"{old} merges into {new} from {_when(when)}")
        if children:
            click.echo(f"{old} still has children: {', '.join(children)} (re-parent with enroll)")


@main.command()
@data_option
def organs(data: Path) -> None:
    """Show the organ tree with each organ's keys and their status.

    \b
    Example:
      lienthong-hub organs --data /srv/lienthong
    """
    from rich.console import Console  # imported here: `serve` never needs it
    from rich.table import Table

    with _errors():
        settings = _settings(data)

        async def work(session: AsyncSession) -> tuple[list[Organ], dict[str, list[OrganKey]]]:
            rows = list((await session.scalars(select(Organ).order_by(Organ.code))).all())
            return rows, await directory.key_status(session)

        rows, keys = _with_db(settings, work)
        at = now()
        table = Table(title=f"Organs of {settings.data_dir}")
        for column in ("organ", "name", "role", "level", "keys", "validity"):
            table.add_column(column)
        for depth, organ in _tree(rows):
            table.add_row(
                "  " * depth + organ.code,
                organ.name,
                organ.role,
                organ.level,
                _keys_text(keys.get(organ.code, []), at),
                _validity(organ),
            )
        Console().print(table)


def _tree(rows: list[Organ]) -> list[tuple[int, Organ]]:
    codes = {o.code for o in rows}
    children: dict[str | None, list[Organ]] = {}
    for organ in rows:
        parent = organ.parent if organ.parent in codes else None
        children.setdefault(parent, []).append(organ)
    out: list[tuple[int, Organ]] = []
    seen: set[str] = set()

    def walk(parent: str | None, depth: int) -> None:
        for organ in children.get(parent, []):
            if organ.code in seen:
                continue
            seen.add(organ.code)
            out.append((depth, organ))
            walk(organ.code, depth + 1)

    walk(None, 0)
    out.extend((0, o) for o in rows if o.code not in seen)
    return out


def _keys_text(keys: list[OrganKey], at: int) -> str:
    if not keys:
        return "not enrolled"
    parts = []
    for key in keys:
        if key.revoked_at is not None and key.revoked_at <= at:
            state = "revoked"
        elif key.not_after <= at:
            state = "expired"
        else:
            state = f"valid to {_when(key.not_after)[:10]}"
        parts.append(f"{key.usage} {key.alg} {fingerprint(bytes(key.kid))[:9]} {state}")
    return "\n".join(parts)


def _validity(organ: Organ) -> str:
    if organ.valid_until is None:
        return f"from {_when(organ.valid_from)[:10]}"
    text = f"until {_when(organ.valid_until)[:10]}"
    return text + (f" → {organ.successor}" if organ.successor else "")


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


if __name__ == "__main__":
    main()
