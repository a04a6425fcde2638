"""``lienthong-audit``: verify the hub's delivery log without trusting the hub.

Every command takes ``--home DIR`` (or ``LIENTHONG_AUDIT_HOME``) and ``--json``.  Commands
that talk to the hub need the keystore passphrase (``LIENTHONG_PASSPHRASE``,
``--passphrase-file``, or a prompt); ``verify``, ``report --offline``, ``overdue
--offline`` and ``status`` work from the home folder alone.

Exit status: 0 all verified; 1 an error (the hub unreachable, a bad argument ...); 2 a
usage error; **3 an alarm**: the hub, its log or its database is not what it claims (a
fork, an entry changed or removed, a forged receipt, a swapped key).  An alarm prints
``ALARM: <code>: <detail>`` on standard error and, for a fork, both checkpoints; with
``--json`` the same as ``{"alarm": {...}}`` on standard output.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from protocol.checkpoint import parse_note
from protocol.errors import RemoteError
from protocol.keys import SigningPublicKey, fingerprint
from protocol.policy import VN_TZ
from protocol.report import OrganRow

from . import i18n
from .audithome import AUDIT_HOME_ENV, AuditConfig, AuditHome
from .auditor import AUDIT_CODES, AuditAlarm, Auditor, cosigners, verify_file
from .auditstore import AuditStore
from .client import Enrolled, HubClient, enrol_new_keys
from .cliopts import (
    FAILURES,
    check_fingerprint,
    failure,
    home_option,
    json_option,
    passphrase_option,
)
from .errors import NodeError
from .home import read_passphrase
from .keystore import Keystore

T = TypeVar("T")
EXIT_ERROR = 1
EXIT_ALARM = 3

_HEADERS_VI = {
    "organ": "Cơ quan",
    "sent": "Đã gửi",
    "addressed": "Được gửi đến",
    "received": "Đã nhận",
    "registered": "Vào sổ",
    "completed": "Hoàn thành",
    "rejected": "Từ chối",
    "on_time": "Đúng hạn",
    "late": "Trễ hạn",
    "overdue": "Quá hạn",
    "pending": "Trong hạn",
    "recalled": "Thu hồi",
}


class Out:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.vi = i18n.language() == i18n.VI

    def say(self, text: str, style: str = "") -> None:
        if not self.as_json:
            self.err.print(Text(text, style=style))

    def result(self, doc: Any, render: Callable[[], None] | None = None) -> None:
        if self.as_json:
            print(json.dumps(doc, ensure_ascii=False, indent=2, default=str), flush=True)
        elif render is not None:
            render()


def _fail(out: Out, code: str, detail: str) -> NoReturn:
    if out.as_json:
        print(json.dumps({"error": {"code": code, "detail": detail}}, ensure_ascii=False))
    meaning = AUDIT_CODES.get(code)
    text = detail if detail or meaning is None else meaning
    click.echo(f"error: {code}: {i18n.explain(code, text)}", err=True)
    sys.exit(EXIT_ERROR)


def _alarm(out: Out, alarm: AuditAlarm) -> NoReturn:
    doc = alarm.as_dict()
    if out.as_json:
        print(json.dumps({"alarm": doc}, ensure_ascii=False, indent=2))
    click.echo(f"ALARM: {alarm.code}: {alarm.detail}", err=True)
    for name, title in (("previous", "checkpoint seen before"), ("current", "checkpoint now")):
        if name in alarm.evidence:
            click.echo(f"--- {title} ---\n{alarm.evidence[name]}", err=True)
    sys.exit(EXIT_ALARM)


@contextmanager
def _errors(out: Out) -> Iterator[None]:
    try:
        yield
    except AuditAlarm as exc:
        _alarm(out, exc)
    except FAILURES as exc:
        _fail(out, *failure(exc))


def _exit_on_alarms(out: Out, doc: dict[str, Any]) -> None:
    alarms = doc.get("alarms") or []
    for item in alarms:
        click.echo(f"ALARM: {item['code']}: {item['detail']}", err=True)
    if alarms:
        sys.exit(EXIT_ALARM)


def _prompt(confirm: bool) -> str:
    if not sys.stdin.isatty():
        raise NodeError("passphrase_missing", "set LIENTHONG_PASSPHRASE or give --passphrase-file")
    value: str = click.prompt(
        "Keystore passphrase",
        hide_input=True,
        confirmation_prompt="Repeat the passphrase" if confirm else False,
        err=True,
    )
    return value


def _with_auditor(
    home: Path, passphrase_file: Path | None, work: Callable[[Auditor], Awaitable[T]]
) -> T:
    h = AuditHome(home)
    config = h.load_config()
    keystore = h.open_keystore(read_passphrase(passphrase_file, prompt=_prompt))
    store = AuditStore.open(h.db_path)

    async def go() -> T:
        async with Auditor(h, config, store, keystore) as auditor:
            return await work(auditor)

    try:
        return asyncio.run(go())
    finally:
        store.close()


def _offline_auditor(home: Path) -> tuple[Auditor, AuditStore]:
    h = AuditHome(home)
    config = h.load_config()
    keys = h.public_keys()
    store = AuditStore.open(h.db_path)
    auditor = Auditor(
        h,
        config,
        store,
        None,
        hub_key=_key_of(keys.get("hub_key")),
        authority=_key_of(keys.get("authority")),
    )
    return auditor, store


def _key_of(doc: Any) -> SigningPublicKey:
    if not isinstance(doc, dict):
        raise NodeError("keystore_damaged", "the keystore has no pinned key")
    return SigningPublicKey.from_raw(str(doc["alg"]), base64.b64decode(str(doc["pub"])))


_home = home_option(AUDIT_HOME_ENV, "The auditor's home folder")
_json = json_option
_passphrase = passphrase_option


def _when(iso_text: str | None) -> str:
    if not iso_text:
        return ""
    return datetime.fromisoformat(iso_text).astimezone(VN_TZ).strftime("%d/%m/%Y %H:%M")


# --- the group ---------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Lienthong auditor: verify the hub's delivery log without trusting the hub.

    \b
    Quick start (the admin runs `lienthong-hub enroll UBKT.TU --name ... --role auditor`):
      lienthong-audit init --home ./kiem-tra --hub https://hub.example.vn \\
          --code UBKT.TU --token <token>
      lienthong-audit checkpoint --home ./kiem-tra
      lienthong-audit trace --home ./kiem-tra 0197...
      lienthong-audit report --home ./kiem-tra --from 2025-07-01 --to 2025-09-30
      lienthong-audit monitor --home ./kiem-tra
    Exit status 3 means an alarm: the hub's log or database is not what it claims.
    """


@main.command()
@_home
@_json
@_passphrase
@click.option("--hub", "hub_url", required=True, help="The hub's URL.")
@click.option(
    "--code", required=True, help="The auditor's organ code (enrolled with role auditor)."
)
@click.option("--token", required=True, help="The one-time token from `lienthong-hub enroll`.")
@click.option("--authority", "authority_fpr", help="Expected directory authority fingerprint.")
@click.option("--hub-key", "hub_key_fpr", help="Expected hub key fingerprint.")
@click.option("--witness", "witnesses", multiple=True, help="A witness organ (repeat).")
@click.option("--threshold", type=int, default=0, show_default=True, help="Witnesses required.")
@click.option("--ca-file", type=click.Path(path_type=Path, dir_okay=False))
def init(
    home: Path,
    as_json: bool,
    passphrase_file: Path | None,
    hub_url: str,
    code: str,
    token: str,
    authority_fpr: str | None,
    hub_key_fpr: str | None,
    witnesses: tuple[str, ...],
    threshold: int,
    ca_file: Path | None,
) -> None:
    """Generate the auditor's keys, enrol them, pin the hub's keys and first checkpoint."""
    out = Out(as_json)
    with _errors(out):
        h = AuditHome(home)
        if h.initialised or h.keystore_path.exists():
            raise NodeError("already_initialised", f"{h.root} already holds an auditor")
        config = AuditConfig(
            organ=code,
            hub_url=hub_url.rstrip("/"),
            witnesses=list(witnesses),
            threshold=threshold,
            ca_file=str(ca_file.absolute()) if ca_file else "",
        ).check()
        passphrase = read_passphrase(passphrase_file, prompt=_prompt, confirm=True)

        def check_pins(authority: SigningPublicKey, hub_key: SigningPublicKey) -> None:
            for wanted, key, what in (
                (authority_fpr, authority, "directory authority"),
                (hub_key_fpr, hub_key, "hub key"),
            ):
                if wanted:
                    check_fingerprint(wanted, key.kid, what)

        async def enrol() -> tuple[Keystore, Enrolled, bytes]:
            async with HubClient(config.hub_url, organ=code, ca_file=config.ca_file or None) as c:
                if authority_fpr or hub_key_fpr:
                    # Before the one-time token is spent: a wrong hub must not consume it.
                    authority, hub_key = await c.identity()
                    check_pins(authority, hub_key)
                    c.authority = authority  # enrol() refuses an answer naming another
                keystore, enrolled = await enrol_new_keys(c, token)
                note = await c.checkpoint()
            check_pins(enrolled.authority, enrolled.hub_key)
            if enrolled.entry.entry.role != "auditor":
                raise NodeError(
                    "role_forbidden",
                    f"{code} is enrolled as {enrolled.entry.entry.role}, not auditor: ask the "
                    "admin for `lienthong-hub enroll ... --role auditor`",
                )
            return keystore, enrolled, note

        keystore, enrolled, note = asyncio.run(enrol())
        origin = parse_note(note).text.decode().split("\n", 1)[0]
        if not origin.startswith("lienthong.hub/"):
            raise NodeError("checkpoint_malformed", f"unexpected log origin {origin!r}")
        config.origin = origin
        config.name = enrolled.entry.entry.name
        h.ensure_dirs()
        keystore.save(h.keystore_path, passphrase)
        h.save_config(config)
        store = AuditStore.open(h.db_path)
        try:
            auditor = Auditor(
                h, config, store, None, hub_key=keystore.hub_key, authority=keystore.authority
            )
            first = auditor.open_note(note)
            with store.transaction():
                store.add_checkpoint(first.size, first.root_hash, note)
        finally:
            store.close()
        doc = {
            "organ": code,
            "name": config.name,
            "hub": config.hub_url,
            "home": str(h.root),
            "origin": origin,
            "authority": fingerprint(enrolled.authority.kid),
            "hub_key": fingerprint(enrolled.hub_key.kid),
            "signing_key": fingerprint(keystore.signing_key.kid),
            "checkpoint": {"size": first.size, "root_hash": first.root_hash.hex()},
        }

        def render() -> None:
            out.out.print(f"Auditor {code} ({config.name}) enrolled at {config.hub_url}.")
            out.out.print(f"Pinned directory authority: {doc['authority']}")
            out.out.print(f"Pinned hub key:             {doc['hub_key']}")
            out.out.print(f"First checkpoint: size {first.size}, root {first.root_hash.hex()}")

        out.result(doc, render)


@main.command()
@_home
@_json
@_passphrase
def token(home: Path, as_json: bool, passphrase_file: Path | None) -> None:
    """Open a session and print its bearer token (to sign in to the hub's /audit page)."""
    out = Out(as_json)
    with _errors(out):

        async def work(auditor: Auditor) -> str:
            return await auditor.client.login()

        value = _with_auditor(home, passphrase_file, work)
        out.result({"token": value}, lambda: out.out.print(value))


@main.command()
@_home
@_json
@_passphrase
@click.option("--witness", "witnesses", multiple=True, help="Witness organs (default: audit.json).")
@click.option("--threshold", type=int, help="Witness cosignatures required (default: audit.json).")
@click.option("--no-cosign", is_flag=True, help="Do not add this auditor's own cosignature.")
@click.option(
    "--compare",
    "compare",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Another party's checkpoint note (file) to check against ours: a fork shows.",
)
def checkpoint(
    home: Path,
    as_json: bool,
    passphrase_file: Path | None,
    witnesses: tuple[str, ...],
    threshold: int | None,
    no_cosign: bool,
    compare: tuple[Path, ...],
) -> None:
    """Verify the newest checkpoint: signature, k-of-n witnesses, consistency; store it."""
    out = Out(as_json)
    with _errors(out):

        async def work(auditor: Auditor) -> dict[str, Any]:
            doc = await auditor.checkpoint(
                witnesses=list(witnesses) or None,
                threshold=threshold,
                cosign=False if no_cosign else None,
            )
            if compare:
                doc["compared"] = (await auditor.compare([p.read_bytes() for p in compare]))[
                    "compared"
                ]
            return doc

        doc = _with_auditor(home, passphrase_file, work)

        def render() -> None:
            out.out.print(
                f"Checkpoint {doc['size']} verified (signed {_when(doc['signed_at'])}), "
                f"consistent with {doc['previous_size']}."
            )
            out.out.print(f"Root: {doc['root_hash']}")
            if doc["witnesses"]:
                out.out.print(f"Witnesses: {', '.join(doc['witnesses'])} (need {doc['threshold']})")
            for item in doc.get("compared", []):
                out.out.print(f"Consistent with the other checkpoint of size {item['size']}.")

        out.result(doc, render)


@main.command()
@_home
@_json
@_passphrase
@click.option("--out", "out_path", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--no-follow", is_flag=True, help="Do not mirror the log first (completeness unchecked)."
)
@click.argument("packet")
def trace(
    home: Path,
    as_json: bool,
    passphrase_file: Path | None,
    out_path: Path | None,
    no_follow: bool,
    packet: str,
) -> None:
    """A packet's whole history, every proof and signature verified here; saves a proof."""
    out = Out(as_json)
    with _errors(out):
        doc = _with_auditor(
            home,
            passphrase_file,
            lambda a: a.trace(packet, out=out_path, follow=not no_follow),
        )
        out.result(doc, lambda: _render_trace(out, doc))
        _exit_on_alarms(out, doc)


def _render_trace(out: Out, doc: dict[str, Any]) -> None:
    env = doc.get("envelope") or {}
    ref = env.get("reference") or {}
    title = f"Packet {doc['packet_id']}"
    if ref:
        title += f"  {ref.get('number') or ''}-{ref.get('notation') or ''}".rstrip("-")
    out.out.print(Text(title, style="bold"))
    cp = doc["checkpoint"]
    out.out.print(
        f"Checkpoint {cp['size']} ({_when(cp['signed_at'])}), root {cp['root_hash'][:16]}…"
    )
    table = Table(title="Timeline (every entry's inclusion proof verified)")
    for col in ("#", "time", "event", "organ", "signature"):
        table.add_column(col, overflow="fold")
    for e in doc["events"]:
        what = e["kind"]
        if e["kind"] == "receipt":
            what = f"{e['status']} {e['label']}"
            if (e.get("details") or {}).get("incoming_number"):
                what += f" (số đến {e['details']['incoming_number']})"
        table.add_row(
            str(e["index"]),
            _when(e["at"]),
            what,
            e.get("organ") or e.get("sender") or "",
            e.get("signature", ""),
        )
    out.out.print(table)
    d = Table(title="Deliveries")
    for col in ("recipient", "state", "registered", "deadline", "outcome"):
        d.add_column(col)
    for r in doc["deliveries"]:
        d.add_row(
            r["recipient"],
            r["state"],
            _when(r["registered_at"]),
            _when(r["deadline"]),
            r["outcome"] + (" (overdue)" if r["overdue"] else ""),
        )
    out.out.print(d)
    complete = doc.get("complete")
    out.out.print(
        "Complete: the bundle holds every logged event of the packet."
        if complete
        else ("Completeness not checked (--no-follow)." if complete is None else "INCOMPLETE")
    )
    out.out.print(f"Proof saved: {doc['proof_file']}")


@main.command()
@click.option("--home", type=click.Path(path_type=Path, file_okay=False), envvar=AUDIT_HOME_ENV)
@_json
@click.option("--hub-key", "hub_key_fpr", help="Fingerprint the proof's hub key must have.")
@click.option("--authority", "authority_fpr", help="Fingerprint the proof's authority must have.")
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False, exists=True))
def verify(
    home: Path | None,
    as_json: bool,
    hub_key_fpr: str | None,
    authority_fpr: str | None,
    bundle: Path,
) -> None:
    """Verify a saved proof (or a hub bundle) offline: no hub, no network.

    The keys come from --home (pinned at init); without a home, the proof's own keys are
    used only if they have the fingerprints given with --hub-key and --authority.
    """
    out = Out(as_json)
    with _errors(out):
        data = bundle.read_bytes()
        hub_key = authority = None
        witness_entries: list[Any] = []
        if home is not None:
            auditor, store = _offline_auditor(home)
            try:
                hub_key, authority = auditor.hub_key, auditor.authority
                witness_entries = auditor.logged_entries(cosigners(data))
            finally:
                store.close()
        elif not (hub_key_fpr and authority_fpr):
            raise NodeError(
                "key_missing", "give --home, or both --hub-key and --authority fingerprints"
            )
        try:
            doc = verify_file(
                data, hub_key=hub_key, authority=authority, witness_entries=witness_entries
            )
        except RemoteError as exc:
            raise AuditAlarm(exc.code, f"{bundle.name} does not verify: {exc.detail}") from None
        for name, wanted in (("hub_key", hub_key_fpr), ("authority", authority_fpr)):
            got = str(doc.get(name) or "").replace(":", "")
            if wanted and not got.startswith(wanted.replace(":", "").lower()):
                raise AuditAlarm(
                    "key_unknown", f"the proof's {name} is {doc.get(name)}, not {wanted}"
                )
        out.result(doc, lambda: _render_trace(out, {**doc, "proof_file": str(bundle)}))


@main.command()
@_home
@_json
@_passphrase
@click.option("--interval", type=click.FloatRange(0.5, 86400), default=60.0, show_default=True)
@click.option("--once", is_flag=True, help="One round, then exit.")
@click.option("--rounds", type=int, default=0, help="Stop after this many rounds (0: never).")
def monitor(
    home: Path,
    as_json: bool,
    passphrase_file: Path | None,
    interval: float,
    once: bool,
    rounds: int,
) -> None:
    """Follow the log: every checkpoint's consistency, every entry, directory changes."""
    out = Out(as_json)
    with _errors(out):

        async def work(auditor: Auditor) -> int:
            done = 0
            alarms = 0
            while True:
                doc = await auditor.monitor_round()
                done += 1
                if as_json:
                    print(json.dumps(doc, ensure_ascii=False, default=str), flush=True)
                else:
                    stamp = datetime.now(VN_TZ).strftime("%H:%M:%S")
                    out.err.print(
                        f"[{stamp}] checkpoint {doc['size']} consistent; "
                        f"{doc['mirrored']} new entries verified"
                    )
                    for change in doc["directory_changes"]:
                        for c in change["changes"] or [{"detail": change["action"]}]:
                            out.err.print(f"  directory: {change['organ']}: {c['detail']}")
                for item in doc["alarms"]:
                    alarms += 1
                    click.echo(f"ALARM: {item['code']}: {item['detail']}", err=True)
                if once or (rounds and done >= rounds) or alarms:
                    return alarms
                await asyncio.sleep(interval)

        found = _with_auditor(home, passphrase_file, work)
        if found:
            sys.exit(EXIT_ALARM)


@main.command()
@_home
@_json
@_passphrase
def replay(home: Path, as_json: bool, passphrase_file: Path | None) -> None:
    """A full audit: download every entry, recompute the tree, compare every root."""
    out = Out(as_json)
    with _errors(out):
        doc = _with_auditor(home, passphrase_file, lambda a: a.replay())

        def render() -> None:
            out.out.print(
                f"Replayed {doc['entries']} entries in {doc['seconds']} s: root "
                f"{doc['root_hash'][:16]}… matches checkpoint {doc['size']} and "
                f"{doc['checkpoints_compared']} earlier checkpoint(s)."
            )
            out.out.print(", ".join(f"{k}: {v}" for k, v in sorted(doc["kinds"].items())))

        out.result(doc, render)
        _exit_on_alarms(out, doc)


def _sync_mirror(home: Path, passphrase_file: Path | None) -> None:
    async def work(auditor: Auditor) -> None:
        await auditor.checkpoint(cosign=False, witnesses=(), threshold=0)
        doc = await auditor.follow()
        if doc["alarms"]:
            first = doc["alarms"][0]
            raise AuditAlarm(first["code"], first["detail"])

    _with_auditor(home, passphrase_file, work)


def _parse_date(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date YYYY-MM-DD", param_hint=name) from None


@main.command()
@_home
@_json
@_passphrase
@click.option("--from", "first", required=True, help="First day (YYYY-MM-DD, Vietnam time).")
@click.option("--to", "last", required=True, help="Last day, inclusive.")
@click.option("--organ", help="Only this organ (and its deliveries, listed).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
@click.option("--offline", is_flag=True, help="Use the mirror as it is; do not ask the hub.")
def report(
    home: Path,
    as_json: bool,
    passphrase_file: Path | None,
    first: str,
    last: str,
    organ: str | None,
    fmt: str,
    offline: bool,
) -> None:
    """Deliveries per organ: sent, received, registered, completed, rejected, on time, late."""
    out = Out(as_json or fmt == "json")
    start, end = _parse_date(first, "--from"), _parse_date(last, "--to")
    with _errors(out):
        if not offline:
            _sync_mirror(home, passphrase_file)
        auditor, store = _offline_auditor(home)
        try:
            doc = auditor.report(start, end, organ, int(time.time()))
        finally:
            store.close()
        if fmt == "csv" and not as_json:
            sys.stdout.write(_report_csv(doc))
            return

        def render() -> None:
            table = Table(title=f"Giao nhận văn bản {start:%d/%m/%Y} – {end:%d/%m/%Y}")
            columns = OrganRow.COLUMNS
            for col in columns:
                table.add_column(
                    _HEADERS_VI[col] if out.vi else col,
                    justify="right" if col != "organ" else "left",
                )
            for row in [*doc["rows"], {**doc["total"], "organ": "Tổng" if out.vi else "total"}]:
                table.add_row(*[str(row[c]) for c in columns])
            out.out.print(table)
            if doc["unverified_receipts"]:
                out.say(
                    f"{doc['unverified_receipts']} receipts did not verify and are not counted",
                    "red",
                )

        out.result(doc, render)


def _report_csv(doc: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(OrganRow.COLUMNS)
    for row in [*doc["rows"], {**doc["total"], "organ": "*"}]:
        writer.writerow([row[c] for c in OrganRow.COLUMNS])
    return buffer.getvalue()


@main.command()
@_home
@_json
@_passphrase
@click.option("--organ", help="Only deliveries to or from this organ.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
@click.option("--offline", is_flag=True, help="Use the mirror as it is; do not ask the hub.")
def overdue(
    home: Path,
    as_json: bool,
    passphrase_file: Path | None,
    organ: str | None,
    fmt: str,
    offline: bool,
) -> None:
    """What is late now: deliveries not registered (or completed) by their deadline."""
    out = Out(as_json or fmt == "json")
    with _errors(out):
        if not offline:
            _sync_mirror(home, passphrase_file)
        auditor, store = _offline_auditor(home)
        now = int(time.time())
        try:
            records = auditor.overdue(now, organ)
            holidays = auditor.config.holiday_dates()
        finally:
            store.close()
        docs = [r.as_dict(now, holidays) for r in records]
        if fmt == "csv" and not as_json:
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            cols = (
                "packet_id",
                "sender",
                "recipient",
                "urgency",
                "due",
                "accepted_at",
                "deadline",
                "due_deadline",
                "state",
            )
            writer.writerow(cols)
            for d in docs:
                writer.writerow([d[c] if d[c] is not None else "" for c in cols])
            sys.stdout.write(buffer.getvalue())
            return

        def render() -> None:
            table = Table(title=f"Quá hạn: {len(docs)}" if out.vi else f"Overdue: {len(docs)}")
            for col in ("packet", "sender", "recipient", "accepted", "deadline", "due", "state"):
                table.add_column(col, overflow="fold")
            for d in docs:
                table.add_row(
                    d["packet_id"][:13],
                    d["sender"],
                    d["recipient"],
                    _when(d["accepted_at"]),
                    _when(d["deadline"]),
                    d["due"] or "",
                    d["state"],
                )
            out.out.print(table)

        out.result({"overdue": docs, "count": len(docs)}, render)


@main.command()
@_home
@_json
@click.option("--acknowledge", is_flag=True, help="Mark the alarms shown as seen.")
def status(home: Path, as_json: bool, acknowledge: bool) -> None:
    """This auditor: pinned keys, the newest checkpoint accepted, the mirror, alarms.

    Exits 3 while an alarm is not acknowledged.
    """
    out = Out(as_json)
    with _errors(out):
        auditor, store = _offline_auditor(home)
        try:
            latest = store.latest_checkpoint()
            alarms = store.alarms()
            if acknowledge:
                with store.transaction():
                    store.acknowledge_alarms()
            doc = {
                "organ": auditor.config.organ,
                "hub": auditor.config.hub_url,
                "origin": auditor.origin,
                "hub_key": fingerprint(auditor.hub_key.kid),
                "authority": fingerprint(auditor.authority.kid),
                "witnesses": auditor.config.witnesses,
                "threshold": auditor.config.threshold,
                "checkpoint": None
                if latest is None
                else {
                    "size": latest.size,
                    "root_hash": latest.root.hex(),
                    "note": latest.note.decode(),
                },
                "mirror_size": store.mirror_size(),
                "alarms": alarms,
                "acknowledged": acknowledge,
            }
        finally:
            store.close()

        def render() -> None:
            out.out.print_json(data=doc)

        out.result(doc, render)
        if doc["alarms"] and not acknowledge:
            sys.exit(EXIT_ALARM)


if __name__ == "__main__":
    main()
