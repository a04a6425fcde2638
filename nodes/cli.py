"""``lienthong-node``: the office's command line and daemon.

Every command takes ``--home DIR`` (or ``LIENTHONG_HOME``) and ``--json``.  Commands that
sign or talk to the hub need the keystore passphrase: ``LIENTHONG_PASSPHRASE``,
``--passphrase-file``, or a prompt.  ``inbox``, ``show`` and ``registers export`` read
only the local store and need none.

Errors print ``error: <code>: <one line>`` (``lỗi: ...`` in Vietnamese) on standard
error and exit with status 1 (2 for usage errors, as click does); with ``--json`` the
same code and detail are also printed as ``{"error": {...}}`` on standard output.
Human-readable progress goes to standard error; the result (a packet id, a table, JSON)
to standard output.  ``LANG=vi_VN.UTF-8`` picks Vietnamese messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from protocol.errors import LienthongError
from protocol.keys import fingerprint
from protocol.packet import parse_envelope
from protocol.policy import VN_TZ, Secrecy, Urgency
from protocol.receipts import STATUS

from . import i18n, registers, witness
from .agent import Agent, RoundReport
from .client import Enrolled, HubClient, enrol_new_keys
from .client import Progress as ProgressFn
from .cliopts import (
    FAILURES,
    check_fingerprint,
    failure,
    home_option,
    json_option,
    passphrase_option,
)
from .email_transport import init_extra, init_options, make_agent
from .errors import HubError, HubUnavailable, NodeError
from .home import HOME_ENV, Home, NodeConfig, read_passphrase
from .keystore import Keystore
from .requests import SendRequest, secrecy, split_codes
from .requests import urgency as urgency_code
from .store import Store

T = TypeVar("T")
URGENCY_NAMES = [u.cli_name for u in Urgency]
SECRECY_NAMES = [s.cli_name for s in Secrecy]


# --- output --------------------------------------------------------------------------------


class Ui:
    """Prints what the agent reports: plain lines (or JSON lines) and progress bars."""

    def __init__(self, as_json: bool, *, log: bool = False) -> None:
        self.as_json = as_json
        self.log = log
        # Tables piped to a file or another program get room for Vietnamese subjects.
        self.out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.lang = i18n.language()

    def say(self, text: str, style: str | None = None) -> None:
        if not self.as_json:
            self.err.print(Text(text, style=style or ""))

    def event(self, key: str, **values: Any) -> None:
        if self.as_json:
            if self.log:
                doc = {"at": datetime.now(VN_TZ).isoformat(timespec="seconds"), "event": key}
                doc.update({k: v for k, v in values.items() if _jsonable(v)})
                print(json.dumps(doc, ensure_ascii=False), file=sys.stderr, flush=True)
            return
        text = i18n.t(key, self.lang, **values)
        if self.log:
            text = f"[{datetime.now(VN_TZ).strftime('%H:%M:%S')}] {text}"
        style = "red" if key.endswith(("failed", "refused", "invalid", "bad")) else None
        self.err.print(Text(text, style=style or ""))

    @contextlib.contextmanager
    def transfer(self, label: str, total: int) -> Iterator[ProgressFn | None]:
        if self.as_json or not (self.err.is_terminal or os.environ.get("LIENTHONG_PROGRESS")):
            yield None
            return
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.err,
            transient=True,
        ) as bar:
            task = bar.add_task(label, total=total)

            def update(done: int, whole: int) -> None:
                bar.update(task, completed=done, total=whole)

            yield update

    def result(self, doc: Any, render: Callable[[], None] | None = None) -> None:
        if self.as_json:
            print(json.dumps(doc, ensure_ascii=False, indent=2, default=str))
        elif render is not None:
            render()


def _jsonable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | type(None) | list | dict)


def _fail(ui: Ui, code: str, detail: str) -> NoReturn:
    prefix = i18n.t("error.prefix", ui.lang)
    if ui.as_json:
        print(json.dumps({"error": {"code": code, "detail": detail}}, ensure_ascii=False))
    click.echo(f"{prefix}: {code}: {i18n.explain(code, detail, ui.lang)}", err=True)
    sys.exit(1)


@contextlib.contextmanager
def _errors(ui: Ui) -> Iterator[None]:
    try:
        yield
    except FAILURES as exc:
        _fail(ui, *failure(exc))


# --- common options ------------------------------------------------------------------------


_home_option = home_option(HOME_ENV, "The office's home folder")
_json_option = json_option
_passphrase_option = passphrase_option


def common(f: Callable[..., Any]) -> Callable[..., Any]:
    return _home_option(_json_option(f))


def _prompt(lang: str) -> Callable[[bool], str]:
    def ask(confirm: bool) -> str:
        if not sys.stdin.isatty():
            raise NodeError(
                "passphrase_missing", "set LIENTHONG_PASSPHRASE or give --passphrase-file"
            )
        value: str = click.prompt(
            i18n.t("passphrase.prompt", lang),
            hide_input=True,
            confirmation_prompt=i18n.t("passphrase.confirm", lang) if confirm else False,
            err=True,
        )
        return value

    return ask


def _open_keystore(home: Home, passphrase_file: Path | None, ui: Ui) -> Keystore:
    home.load_config()  # a clear "not initialised" before any passphrase prompt
    passphrase = read_passphrase(passphrase_file, prompt=_prompt(ui.lang))
    return home.open_keystore(passphrase)


def _with_agent(
    home: Home,
    passphrase_file: Path | None,
    ui: Ui,
    work: Callable[[Agent], Awaitable[T]],
) -> T:
    config = home.load_config()
    keystore = _open_keystore(home, passphrase_file, ui)
    store = Store.open(home.db_path)

    async def go() -> T:
        async with make_agent(home, config, store, keystore, ui) as agent:
            return await work(agent)

    try:
        return asyncio.run(go())
    finally:
        store.close()


def _with_store(home: Home, work: Callable[[Store, NodeConfig], T]) -> T:
    config = home.load_config()
    store = Store.open(home.db_path)
    try:
        return work(store, config)
    finally:
        store.close()


def _when(ts: Any) -> str:
    if ts is None:
        return ""
    if isinstance(ts, str):
        try:
            return datetime.fromisoformat(ts).astimezone(VN_TZ).strftime("%d/%m/%Y %H:%M")
        except ValueError:
            return ts
    return datetime.fromtimestamp(int(ts), VN_TZ).strftime("%d/%m/%Y %H:%M")


def _short(pid: str) -> str:
    return pid[:13]


# --- the group -----------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Lienthong node agent: send and receive sealed documents through the hub.

    \b
    Quick start:
      lienthong-node init --home ./vp-tinh-uy --hub http://127.0.0.1:8080 \\
          --code 000.00.00.H41 --token <token from lienthong-hub enroll>
      lienthong-node send --home ./vp-tinh-uy --to 000.00.12.H41 --type KH \\
          --subject "Kế hoạch tổng kết năm 2025" "Kế hoạch.pdf"
      lienthong-node run --home ./vp-tinh-uy
    """


# --- init ----------------------------------------------------------------------------------


@main.command()
@common
@_passphrase_option
@click.option("--hub", "hub_url", required=True, help="The hub's URL, e.g. https://hub.example.vn")
@click.option("--code", required=True, help="This office's organ code, e.g. 000.00.00.H41")
@click.option("--token", required=True, help="The one-time token from `lienthong-hub enroll`.")
@click.option(
    "--hybrid",
    is_flag=True,
    help="Hybrid post-quantum keys (chosen anyway if the hub requires them).",
)
@click.option(
    "--authority",
    "authority_fpr",
    help="Expected directory authority fingerprint (from `lienthong-hub init`).",
)
@click.option(
    "--numbering",
    type=click.Choice(["year", "term"]),
    default="year",
    show_default=True,
    help="Outgoing numbers per calendar year or per committee term.",
)
@click.option(
    "--term-start",
    type=int,
    default=2025,
    show_default=True,
    help="First year of a committee term.",
)
@click.option(
    "--term-years", type=int, default=5, show_default=True, help="Length of a committee term."
)
@click.option("--abbrev", default="", help="Issuing body abbreviation in notations (05-NQ/TU: TU).")
@click.option(
    "--ca-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="CA bundle for the hub's TLS certificate.",
)
@init_options
def init(
    home: Path,
    as_json: bool,
    passphrase_file: Path | None,
    hub_url: str,
    code: str,
    token: str,
    hybrid: bool,
    authority_fpr: str | None,
    numbering: str,
    term_start: int,
    term_years: int,
    abbrev: str,
    ca_file: Path | None,
) -> None:
    """Generate the office's keys locally, enrol them with a one-time token, pin the hub.

    \b
    Example:
      LIENTHONG_PASSPHRASE=... lienthong-node init --home ./xa-yen-lac \\
          --hub http://127.0.0.1:8080 --code 000.00.12.H41 --token 3Jk...
    """
    ui = Ui(as_json)
    with _errors(ui):
        h = Home(home)
        if h.initialised or h.keystore_path.exists():
            raise NodeError("already_initialised", f"{h.root} already holds an office")
        config = NodeConfig(
            organ=code,
            hub_url=hub_url.rstrip("/"),
            numbering=numbering,
            term_start=term_start,
            term_years=term_years,
            abbrev=abbrev,
            ca_file=str(ca_file.absolute()) if ca_file else "",
        ).check()
        config.extra.update(init_extra())  # --transport email|fallback, --smtp, --imap ...
        passphrase = read_passphrase(passphrase_file, prompt=_prompt(ui.lang), confirm=True)

        async def enrol() -> tuple[Keystore, Enrolled]:
            async with HubClient(
                config.hub_url, organ=code, ca_file=config.ca_file or None
            ) as client:
                if authority_fpr:
                    # Before the one-time token is spent: a wrong hub must not consume it.
                    authority, _hub_key = await client.identity()
                    check_fingerprint(authority_fpr, authority.kid, "directory authority")
                    client.authority = authority  # enrol() refuses an answer naming another
                return await enrol_new_keys(
                    client,
                    token,
                    hybrid=hybrid,
                    on_hybrid_retry=lambda: ui.event("init.hybrid_retry"),
                )

        keystore, enrolled = asyncio.run(enrol())
        h.ensure_dirs()
        keystore.save(h.keystore_path, passphrase)
        entry = enrolled.entry.entry
        config.name = entry.name
        h.save_config(config)
        store = Store.open(h.db_path)
        try:
            store.put_entry(
                entry.organ,
                entry.serial,
                enrolled.entry.raw,
                parent=entry.parent,
                name=entry.name,
                role=entry.role,
            )
            # Cache the neighbourhood's entries now: sealing works offline from then on.
            with contextlib.suppress(LienthongError):
                asyncio.run(_warm_directory(h, config, store, keystore))
        finally:
            store.close()
        doc = {
            "organ": code,
            "name": entry.name,
            "hub": config.hub_url,
            "home": str(h.root),
            "signing_key": {
                "alg": keystore.signing_key.alg,
                "fingerprint": fingerprint(keystore.signing_key.kid),
            },
            "encryption_key": {
                "alg": keystore.encryption_key.alg,
                "fingerprint": fingerprint(keystore.encryption_key.kid),
            },
            "authority": fingerprint(enrolled.authority.kid),
            "hub_key": fingerprint(enrolled.hub_key.kid),
            "serial": entry.serial,
        }

        def render() -> None:
            ui.out.print(
                i18n.t("init.done", ui.lang, organ=f"{code} ({entry.name})", hub=config.hub_url)
            )
            ui.out.print(
                i18n.t(
                    "init.keys",
                    ui.lang,
                    sign=keystore.signing_key.alg,
                    enc=keystore.encryption_key.alg,
                )
            )
            ui.out.print(i18n.t("init.authority", ui.lang, fingerprint=doc["authority"]))

        ui.result(doc, render)


async def _warm_directory(home: Home, config: NodeConfig, store: Store, keystore: Keystore) -> None:
    async with Agent(home, config, store, keystore) as agent:
        await agent.refresh_directory(every=0)


# --- send ----------------------------------------------------------------------------------


@main.command()
@common
@_passphrase_option
@click.option(
    "--to", "to", multiple=True, help="Recipient organ codes, comma-separated (repeatable)."
)
@click.option("--to-children", multiple=True, help="Every office directly below this organ.")
@click.option("--to-descendants", multiple=True, help="Every office anywhere below this organ.")
@click.option(
    "--type",
    "doc_type",
    default="CV",
    show_default=True,
    help="Document type: NQ, CT, KH, BC, CV ...",
)
@click.option(
    "--number", type=click.IntRange(1), help="Number (default: the next in the outgoing register)."
)
@click.option("--notation", help="Notation, e.g. NQ/TU (default: TYPE/abbrev).")
@click.option("--subject", required=True, help="Trích yếu: the subject line.")
@click.option("--signer", help='Người ký, e.g. "T/M Ban Thường vụ, Bí thư Nguyễn Văn A".')
@click.option("--urgency", type=click.Choice(URGENCY_NAMES), default="thuong", show_default=True)
@click.option(
    "--secrecy", "secrecy_name", type=click.Choice(SECRECY_NAMES), default="none", show_default=True
)
@click.option("--due", help="Hạn xử lý: YYYY-MM-DD.")
@click.option("--issued", help="Ngày ban hành: YYYY-MM-DD (default today).")
@click.option("--in-reply-to", help="Packet id this answers.")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
def send(
    home: Path,
    as_json: bool,
    passphrase_file: Path | None,
    to: tuple[str, ...],
    to_children: tuple[str, ...],
    to_descendants: tuple[str, ...],
    doc_type: str,
    number: int | None,
    notation: str | None,
    subject: str,
    signer: str | None,
    urgency: str,
    secrecy_name: str,
    due: str | None,
    issued: str | None,
    in_reply_to: str | None,
    files: tuple[Path, ...],
) -> None:
    """Seal FILES for every recipient and send them (queued if the hub is away).

    \b
    Examples:
      lienthong-node send --to-descendants 000.00.00.H41 --type CT --subject "Chỉ thị ..." a.pdf
      lienthong-node send --to 000.00.00.H41 --type BC --urgency khan \\
          --subject "Báo cáo quý III" "Báo cáo quý III.pdf"
    Prints the packet id.
    """
    ui = Ui(as_json)
    with _errors(ui):
        req = SendRequest(
            subject=subject,
            files=list(files),
            to=split_codes(list(to)),
            to_children=split_codes(list(to_children)),
            to_descendants=split_codes(list(to_descendants)),
            doc_type=doc_type,
            number=number,
            notation=notation,
            signer=signer,
            urgency=urgency_code(urgency),
            secrecy=secrecy(secrecy_name),
            due=due,
            issued=issued,
            in_reply_to=in_reply_to,
        ).check()

        async def work(agent: Agent) -> dict[str, Any]:
            pid = await agent.send(req)
            state = "queued"
            try:
                async with agent.home.lock("outbox").hold(wait=10) as got:
                    if got:
                        await agent.submit_outbox(only=pid)
            except HubUnavailable:
                ui.event("send.waiting", packet=pid)
            row = agent.store.get_sent(pid)
            assert row is not None
            state = row["state"]
            if state == "failed":
                raise HubError(row["error_code"], 422, row["error_detail"] or row["error_code"])
            return {
                "packet_id": pid,
                "state": state,
                "reference": registers.reference(row["number"], row["notation"]),
                "recipients": json.loads(row["recipients"]),
                "log_index": row["log_index"],
            }

        doc = _with_agent(Home(home), passphrase_file, ui, work)
        ui.say(i18n.t("send.number", ui.lang, reference=doc["reference"]))
        ui.result(doc, lambda: ui.out.print(doc["packet_id"]))


# --- sync and run ----------------------------------------------------------------------------


@main.command()
@common
@_passphrase_option
def sync(home: Path, as_json: bool, passphrase_file: Path | None) -> None:
    """One round: send the outbox, fetch and verify the mailbox, post receipts.

    \b
    Example:
      lienthong-node sync --home ./xa-yen-lac
    Exits 1 with hub_unreachable when the hub cannot be reached (the outbox keeps waiting).
    """
    ui = Ui(as_json)
    with _errors(ui):
        report = _with_agent(Home(home), passphrase_file, ui, lambda agent: agent.sync())
        _print_round(ui, report)
        if any(err.get("alarm") for err in report.errors):
            sys.exit(witness.EXIT_ALARM)


def _print_round(ui: Ui, report: RoundReport) -> None:
    def render() -> None:
        ui.out.print(
            i18n.t(
                "sync.summary",
                ui.lang,
                sent=len(report.sent),
                queued=report.queued,
                received=len(report.received),
                refused=len(report.refused),
                receipts=report.receipts_in + report.receipts_out,
            )
        )
        for err in report.errors:
            ui.err.print(Text(f"  {err.get('code')}: {err.get('detail')}", style="yellow"))

    ui.result(report.as_dict(), render)


@main.command()
@common
@_passphrase_option
@click.option(
    "--backoff-max",
    type=click.FloatRange(0.1, 3600),
    default=30.0,
    show_default=True,
    help="Longest wait between attempts while the hub is unreachable (seconds).",
)
def run(home: Path, as_json: bool, passphrase_file: Path | None, backoff_max: float) -> None:
    """The daemon: long-poll the hub, receive, send the outbox and watch folders.

    \b
    Example:
      lienthong-node run --home /var/lib/lienthong/vp-tinh-uy
    Stops cleanly on SIGTERM or Ctrl-C (transfers resume on the next start).
    """
    ui = Ui(as_json, log=True)
    with _errors(ui):

        async def work(agent: Agent) -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await agent.run(stop, backoff_cap=backoff_max)

        _with_agent(Home(home), passphrase_file, ui, work)


# --- inbox, show, status ---------------------------------------------------------------------


def _state_text(row: Any) -> str:
    if not row["verified"]:
        return f"refused: {row['error_code']}"
    state = str(row["state"])
    if state in STATUS:
        return f"{state} {STATUS[state].vi}"
    return {"recalled": "đã thu hồi", "pending": "chờ"}.get(state, state)


def _inbox_doc(row: Any) -> dict[str, Any]:
    return {
        "packet_id": row["packet_id"],
        "received_at": _iso(row["received_at"]),
        "sender": row["sender"],
        "sender_name": row["sender_name"],
        "subject": row["subject"],
        "doc_type": row["doc_type"],
        "reference": registers.reference(row["number"], row["notation"]),
        "urgency": row["urgency"],
        "secrecy": row["secrecy"],
        "due": row["due"],
        "state": row["state"],
        "verified": bool(row["verified"]),
        "error_code": row["error_code"],
        "error_detail": row["error_detail"],
        "incoming_number": row["incoming_number"],
        "incoming_year": row["incoming_year"],
        "folder": row["folder"],
        "files": json.loads(row["files"] or "[]"),
        "recall_reason": row["recall_reason"],
        "assignee": row["assignee"],
    }


def _body_sha256(envelope: bytes) -> str:
    return parse_envelope(envelope).body_info.sha256.hex()


def _iso(ts: Any) -> str | None:
    return None if ts is None else datetime.fromtimestamp(int(ts), VN_TZ).isoformat()


@main.command()
@common
def inbox(home: Path, as_json: bool) -> None:
    """The received documents (and refused packets), newest first."""
    ui = Ui(as_json)
    with _errors(ui):
        rows, config = _with_store(Home(home), lambda s, c: (s.list_inbox(), c))
        docs = [_inbox_doc(r) for r in rows]

        def render() -> None:
            if not rows:
                ui.out.print(i18n.t("inbox.empty", ui.lang))
                return
            table = Table(title=i18n.t("inbox.title", ui.lang, organ=config.name or config.organ))
            for key in (
                "col.packet",
                "col.received",
                "col.from",
                "col.reference",
                "col.subject",
                "col.urgency",
                "col.state",
                "col.incoming",
            ):
                table.add_column(i18n.t(key, ui.lang), overflow="fold")
            for r in rows:
                style = None if r["verified"] else "red"
                number = (
                    f"{r['incoming_number']}/{r['incoming_year']}" if r["incoming_number"] else ""
                )
                table.add_row(
                    _short(r["packet_id"]),
                    _when(r["received_at"]),
                    r["sender_name"] or r["sender"],
                    registers.reference(r["number"], r["notation"]),
                    r["subject"] or "",
                    Urgency(r["urgency"]).label if r["urgency"] is not None else "",
                    _state_text(r),
                    number,
                    style=style,
                )
            ui.out.print(table)

        ui.result(docs, render)


@main.command()
@common
@click.argument("packet")
def show(home: Path, as_json: bool, packet: str) -> None:
    """One packet: metadata, files and where they are (received or sent)."""
    ui = Ui(as_json)
    with _errors(ui):

        def work(store: Store, config: NodeConfig) -> dict[str, Any]:
            pid = store.resolve_id(packet)
            row = store.get_inbox(pid)
            if row is not None:
                return {"direction": "in", **_inbox_doc(row)}
            sent = store.get_sent(pid)
            assert sent is not None
            return {
                "direction": "out",
                "packet_id": pid,
                "created_at": _iso(sent["created_at"]),
                "subject": sent["subject"],
                "doc_type": sent["doc_type"],
                "reference": registers.reference(sent["number"], sent["notation"]),
                "signer": sent["signer"],
                "recipients": json.loads(sent["recipients"]),
                "state": sent["state"],
                "error_code": sent["error_code"],
                "error_detail": sent["error_detail"],
                "accepted_at": _iso(sent["accepted_at"]),
                "log_index": sent["log_index"],
                "files": json.loads(sent["files"]),
                "archive": sent["archive"],
                "envelope_sha256": bytes(sent["envelope_digest"]).hex(),
                "body_sha256": _body_sha256(bytes(sent["envelope"])),
                "deliveries": [
                    {"organ": d["organ"], "state": d["state"], "fetched_at": _iso(d["fetched_at"])}
                    for d in store.deliveries(pid)
                ],
            }

        doc = _with_store(Home(home), work)

        def render() -> None:
            table = Table(show_header=False, title=doc["packet_id"])
            table.add_column(style="bold")
            table.add_column(overflow="fold")
            for key, value in doc.items():
                if key in ("files", "deliveries"):
                    continue
                if value not in (None, "", []):
                    table.add_row(key, str(value))
            for f in doc.get("files") or []:
                table.add_row("file", f"{f['name']}  ({f['size']} B)")
            for d in doc.get("deliveries") or []:
                table.add_row("delivery", f"{d['organ']}: {d['state']}")
            ui.out.print(table)

        ui.result(doc, render)


@main.command()
@common
@_passphrase_option
@click.option(
    "--offline", is_flag=True, help="Only what this office has collected; do not ask the hub."
)
@click.option(
    "--acknowledge", is_flag=True, help="Clear the active alarms (after looking at them)."
)
@click.argument("packet", required=False)
def status(
    home: Path,
    as_json: bool,
    passphrase_file: Path | None,
    offline: bool,
    acknowledge: bool,
    packet: str | None,
) -> None:
    """A packet's recipients and history, each receipt verified; without PACKET, this
    office's watch over the hub: its keys, the log it witnessed, and any alarm.

    Exits 3 while an alarm is active (a fork of the log, a key of this office changed
    without its request): see `lienthong-node status`, then `--acknowledge`.
    """
    ui = Ui(as_json)
    with _errors(ui):
        h = Home(home)
        if packet is None:
            watch = _with_agent(
                h, passphrase_file, ui, lambda agent: _watch_status(agent, acknowledge)
            )
            ui.result(watch, lambda: _render_watch(ui, watch))
            if watch["alarms"] and not acknowledge:
                sys.exit(witness.EXIT_ALARM)
            return
        pid = _with_store(h, lambda s, _c: s.resolve_id(packet))

        async def packet_status(agent: Agent) -> dict[str, Any]:
            found = await agent.status(pid, online=not offline)
            found["alarms"] = witness.alarms(agent)
            return found

        doc = _with_agent(h, passphrase_file, ui, packet_status)

        def render() -> None:
            if doc["source"] == "local" and doc["direction"] == "out":
                ui.say(i18n.t("status.offline", ui.lang), "yellow")
            title = i18n.t("status.title", ui.lang, packet=pid)
            table = Table(title=f"{title}\n{doc.get('reference') or ''} {doc.get('subject') or ''}")
            for key in ("col.recipient", "col.state", "col.history", "col.verified"):
                table.add_column(i18n.t(key, ui.lang), overflow="fold")
            for rec in doc["recipients"]:
                lines = []
                ok = True
                for h_ in rec["history"]:
                    mark = "✓" if h_.get("verified") else "✗"
                    ok = ok and bool(h_.get("verified"))
                    extra = ""
                    details = h_.get("details") or {}
                    if details.get("incoming_number"):
                        extra = f" số đến {details['incoming_number']}"
                    if h_.get("reason"):
                        extra += f" ({h_['reason']})"
                    lines.append(
                        f"{mark} {_when(h_.get('at'))}  {h_['status']} {h_.get('label', '')}{extra}"
                    )
                table.add_row(
                    f"{rec.get('name') or rec['organ']}\n{rec['organ']}",
                    str(rec["state"]),
                    "\n".join(lines),
                    Text(
                        i18n.t("verified.ok" if ok else "verified.bad", ui.lang),
                        style="green" if ok else "red bold",
                    ),
                )
            ui.out.print(table)

        ui.result(doc, render)
        for alarm in doc["alarms"]:
            ui.err.print(Text(f"ALARM: {alarm['code']}: {alarm['detail']}", style="red bold"))
        if doc["alarms"]:
            sys.exit(witness.EXIT_ALARM)
        if not doc["all_verified"]:
            sys.exit(1)


async def _watch_status(agent: Agent, acknowledge: bool) -> dict[str, Any]:
    doc = witness.node_status(agent)
    if acknowledge:
        doc["acknowledged"] = witness.acknowledge(agent)
    return doc


def _render_watch(ui: Ui, doc: dict[str, Any]) -> None:
    ui.out.print(f"{doc['organ']}: signing keys {', '.join(doc['signing_keys'])}")
    ui.out.print(
        f"Log checkpoint seen: {doc['checkpoint']['size']}, "
        f"cosigned as witness: {doc['witness_cosigned_size']}"
    )
    for alarm in doc["alarms"]:
        ui.out.print(Text(f"ALARM: {alarm['code']}: {alarm['detail']}", style="red bold"))
    if not doc["alarms"]:
        ui.out.print("No alarm.")


# --- the clerk's receipts ----------------------------------------------------------------------


def _receipt_command(
    home: Path,
    as_json: bool,
    passphrase_file: Path | None,
    packet: str,
    apply: Callable[[Agent, str], Any],
) -> None:
    ui = Ui(as_json)
    with _errors(ui):
        h = Home(home)
        pid = _with_store(h, lambda s, _c: s.resolve_id(packet))

        async def work(agent: Agent) -> dict[str, Any]:
            result = apply(agent, pid)
            posted = False
            try:
                async with agent.home.lock("receipts").hold(wait=10) as got:
                    if got:
                        report = await agent.post_receipts()
                        posted = True
                        for err in report.errors:
                            if err.get("packet_id") == pid:
                                raise HubError(err["code"], 409, err["detail"])
            except HubUnavailable:
                ui.event("receipt.waiting")
            doc: dict[str, Any] = {"packet_id": pid, "posted": posted}
            if isinstance(result, dict):
                doc.update(result)
            return doc

        doc = _with_agent(h, passphrase_file, ui, work)
        ui.result(
            doc, lambda: ui.out.print(i18n.t("receipt.posted", ui.lang)) if doc["posted"] else None
        )


def _receipt_doc(receipt: Any) -> dict[str, Any]:
    return {
        "status": receipt.status,
        "label": STATUS[receipt.status].vi,
        "at": _iso(receipt.at),
        "details": dict(receipt.details),
        "reason": receipt.reason,
    }


@main.command()
@common
@_passphrase_option
@click.option("--assignee", help="Đơn vị/người nhận to write in the register.")
@click.argument("packet")
def register(
    home: Path, as_json: bool, passphrase_file: Path | None, assignee: str | None, packet: str
) -> None:
    """Vào sổ: give a received document its incoming number (receipt 03)."""

    def apply(agent: Agent, pid: str) -> dict[str, Any]:
        receipt = agent.register(pid, assignee=assignee)
        row = agent.store.get_inbox(pid)
        assert row is not None
        return {
            **_receipt_doc(receipt),
            "incoming_number": row["incoming_number"],
            "incoming_year": row["incoming_year"],
        }

    _receipt_command(home, as_json, passphrase_file, packet, apply)


@main.command()
@common
@_passphrase_option
@click.option("--to", "assignee", required=True, help="The unit or person assigned.")
@click.argument("packet")
def assign(
    home: Path, as_json: bool, passphrase_file: Path | None, assignee: str, packet: str
) -> None:
    """Phân công: assign a received document to a handler (receipt 04)."""
    _receipt_command(
        home,
        as_json,
        passphrase_file,
        packet,
        lambda a, pid: _receipt_doc(a.mark(pid, "04", details={"assignee": assignee})),
    )


@main.command()
@common
@_passphrase_option
@click.option("--note", help="A short note on the progress.")
@click.argument("packet")
def processing(
    home: Path, as_json: bool, passphrase_file: Path | None, note: str | None, packet: str
) -> None:
    """Đang xử lý: handling has started (receipt 05)."""
    details = {"note": note} if note else None
    _receipt_command(
        home,
        as_json,
        passphrase_file,
        packet,
        lambda a, pid: _receipt_doc(a.mark(pid, "05", details=details)),
    )


@main.command()
@common
@_passphrase_option
@click.option("--note", help="A short note on the outcome.")
@click.argument("packet")
def complete(
    home: Path, as_json: bool, passphrase_file: Path | None, note: str | None, packet: str
) -> None:
    """Hoàn thành: handling is complete (receipt 06)."""
    details = {"note": note} if note else None
    _receipt_command(
        home,
        as_json,
        passphrase_file,
        packet,
        lambda a, pid: _receipt_doc(a.mark(pid, "06", details=details)),
    )


@main.command()
@common
@_passphrase_option
@click.option("--reason", required=True, help="Why the document is refused.")
@click.argument("packet")
def reject(
    home: Path, as_json: bool, passphrase_file: Path | None, reason: str, packet: str
) -> None:
    """Từ chối tiếp nhận: refuse a received document, with the reason (receipt 02)."""
    _receipt_command(
        home,
        as_json,
        passphrase_file,
        packet,
        lambda a, pid: _receipt_doc(a.mark(pid, "02", reason=reason)),
    )


@main.command()
@common
@_passphrase_option
@click.option("--reason", required=True, help="Why the document is recalled.")
@click.argument("packet")
def recall(
    home: Path, as_json: bool, passphrase_file: Path | None, reason: str, packet: str
) -> None:
    """Thu hồi: ask every recipient of a sent document to recall it (receipt 13)."""

    def apply(agent: Agent, pid: str) -> dict[str, Any]:
        return {"status": "13", "recipients": agent.recall(pid, reason)}

    _receipt_command(home, as_json, passphrase_file, packet, apply)


@main.command("recall-accept")
@common
@_passphrase_option
@click.argument("packet")
def recall_accept(home: Path, as_json: bool, passphrase_file: Path | None, packet: str) -> None:
    """Agree to a recall: the document leaves the inbox folder (receipt 15)."""

    _receipt_command(
        home, as_json, passphrase_file, packet, lambda a, pid: _receipt_doc(a.mark(pid, "15"))
    )


@main.command("recall-refuse")
@common
@_passphrase_option
@click.option("--reason", required=True, help="Why the recall is refused.")
@click.argument("packet")
def recall_refuse(
    home: Path, as_json: bool, passphrase_file: Path | None, reason: str, packet: str
) -> None:
    """Refuse a recall, with the reason (receipt 16)."""
    _receipt_command(
        home,
        as_json,
        passphrase_file,
        packet,
        lambda a, pid: _receipt_doc(a.mark(pid, "16", reason=reason)),
    )


# --- proofs ------------------------------------------------------------------------------------


@main.command()
@common
@_passphrase_option
@click.option(
    "--out", type=click.Path(path_type=Path, dir_okay=False), help="Save the bundle here."
)
@click.argument("packet")
def proof(
    home: Path, as_json: bool, passphrase_file: Path | None, out: Path | None, packet: str
) -> None:
    """Fetch a packet's audit-log proof bundle and verify it (checkpoint, inclusion, receipts)."""
    ui = Ui(as_json)
    with _errors(ui):
        h = Home(home)
        pid = _with_store(h, lambda s, _c: s.resolve_id(packet))
        data, doc = _with_agent(h, passphrase_file, ui, lambda agent: agent.proof(pid))
        if out is not None:
            out.write_bytes(data)
            doc["saved_to"] = str(out)

        def render() -> None:
            ui.out.print(
                f"checkpoint {doc['origin']} size {doc['tree_size']} root {doc['root_hash'][:16]}…"
            )
            for e in doc["events"]:
                extra = " ".join(str(e[k]) for k in ("sender", "organ", "status") if k in e)
                ui.out.print(f"  #{e['index']:<6} {e['kind']:<16} {_when(e['at'])}  {extra}")

        ui.result(doc, render)


# --- registers -------------------------------------------------------------------------------


@main.group("registers")
def registers_group() -> None:
    """The incoming and outgoing registers (sổ văn bản đến / đi)."""


@registers_group.command("export")
@common
@click.option("--kind", type=click.Choice(["in", "out"]), required=True)
@click.option(
    "--year", type=int, default=lambda: registers.vn_date().year, show_default="this year"
)
@click.option("--format", "fmt", type=click.Choice(["csv"]), default="csv", show_default=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write to this file (default: standard output).",
)
def registers_export(
    home: Path, as_json: bool, kind: str, year: int, fmt: str, out: Path | None
) -> None:
    """Export a register of one year as CSV, with the columns of the national practice."""
    ui = Ui(as_json)
    with _errors(ui):

        def work(store: Store, config: NodeConfig) -> list[dict[str, Any]]:
            return _register_entries(store, config, kind, year)

        entries = _with_store(Home(home), work)
        if out is not None:
            # A file gets a BOM so that Excel reads the Vietnamese text as UTF-8.
            out.write_text(registers.to_csv(kind, entries), encoding="utf-8", newline="")
        text = registers.to_csv(kind, entries, bom=False)
        if as_json:
            ui.result(
                {
                    "kind": kind,
                    "year": year,
                    "rows": len(entries),
                    "entries": entries,
                    "saved_to": str(out) if out else None,
                }
            )
        elif out is None:
            sys.stdout.write(text)


def _register_entries(
    store: Store, config: NodeConfig, kind: str, year: int
) -> list[dict[str, Any]]:
    out = []
    for row in store.register_entries(kind, year):
        base = {
            "number": row["reg_number"],
            "period": row["period"],
            "day": row["day"],
            "packet_id": row["packet_id"],
            "doc_number": row["number"],
            "notation": row["notation"],
            "doc_type": row["doc_type"],
            "subject": row["subject"],
            "issued": row["issued"],
            "note": row["packet_id"],
        }
        if kind == "in":
            base.update(
                {
                    "received_at": row["received_at"],
                    "registered_at": row["registered_at"],
                    "sender": row["sender"],
                    "sender_name": row["sender_name"],
                    "assignee": row["assignee"],
                    "due": row["due"],
                }
            )
            if row["state"] == "recalled":
                base["note"] = f"{row['packet_id']} (đã thu hồi)"
        else:
            recipients = json.loads(row["recipients"])
            base.update(
                {
                    "signer": row["signer"],
                    "recipients": recipients,
                    "recipient_names": [store.organ_name(r) or r for r in recipients],
                    "drafter": config.name,
                    "accepted_at": row["accepted_at"],
                    "state": row["state"],
                }
            )
            if row["state"] != "accepted":
                base["note"] = f"{row['packet_id']} ({row['state']})"
        out.append(base)
    return out


# --- helpers for scripts ----------------------------------------------------------------------------


@main.command()
@common
def info(home: Path, as_json: bool) -> None:
    """This office: organ, hub, outbox and inbox counts (no passphrase needed)."""
    ui = Ui(as_json)
    with _errors(ui):
        h = Home(home)

        def work(store: Store, config: NodeConfig) -> dict[str, Any]:
            keystore = json.loads(h.keystore_path.read_text(encoding="utf-8"))
            return {
                "organ": config.organ,
                "name": config.name,
                "hub": config.hub_url,
                "home": str(h.root),
                "numbering": config.numbering,
                "outbox": store.outbox_count(),
                "inbox": len(store.list_inbox()),
                "hub_key": keystore.get("hub_key"),
                "authority": keystore.get("authority"),
                "schema": store.schema_version,
                "checked_at": int(time.time()),
            }

        doc = _with_store(h, work)
        ui.result(doc, lambda: ui.out.print_json(data=doc))


if __name__ == "__main__":
    main()
