"""``make demo``: the whole system on one machine, with real processes, in under a minute.

1. a hub on the embedded default (SQLite and a blob folder in a temporary directory),
   started as ``lienthong-hub serve`` on a free port;
2. four organs enrolled with ``lienthong-hub enroll``: the province office, two
   lower-level Party committees and a grassroots cell, each set up with
   ``lienthong-node init`` (keys generated locally) and running ``lienthong-node run``;
3. the province sends a directive with a PDF-sized attachment to every office below it;
   the grassroots cell sends a report up; the recipients register (03) and complete (06);
   a notice is recalled (13) and the recall accepted (15);
4. the timeline of each packet, every receipt's signature verified by the sender's node
   (``lienthong-node status --json``);
5. the audit log's proof bundle of the directive, verified offline: the checkpoint's
   signature with the hub key the province pinned at enrolment, each event's inclusion
   proof, and each office receipt's signature against directory entries verified with
   the pinned directory authority key -- no hub involved;
6. everything it started is stopped, even on failure.

Exit status 0 when every step and every check passed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocol.bundle import log_origin, log_verifier, verify_bundle  # noqa: E402
from protocol.directory import verify_entry  # noqa: E402
from protocol.keys import SigningPublicKey, fingerprint  # noqa: E402
from protocol.receipts import STATUS, parse_office_receipt, verify_office_receipt  # noqa: E402

BIN = Path(sys.executable).parent
HUB = str(BIN / "lienthong-hub")
NODE = str(BIN / "lienthong-node")
PASSPHRASE = "demo: mật khẩu kho khóa"  # noqa: S105 - a throwaway demo keystore
console = Console(highlight=False)


OFFICES = [
    # key, code, name, parent, level, abbreviation
    ("tinh", "000.00.00.H41", "Văn phòng Tỉnh ủy", None, "province", "TU"),
    ("yenlac", "000.00.12.H41", "Đảng ủy xã Yên Lạc", "000.00.00.H41", "commune", "ĐU"),
    ("tamhong", "000.00.13.H41", "Đảng ủy phường Tam Hồng", "000.00.00.H41", "commune", "ĐU"),
    ("chibo", "000.13.05.H41", "Chi bộ Trường THCS Tam Hồng", "000.00.13.H41", "grassroots", "CB"),
]


class DemoError(Exception):
    pass


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIENTHONG_")}
    env.update(PYTHONUNBUFFERED="1", LANG="C.UTF-8", LIENTHONG_PASSPHRASE=PASSPHRASE)
    env.pop("LC_ALL", None)
    env.update(extra)
    return env


class Processes:
    """Everything the demo starts, each in its own process group, stopped at the end."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[Any]] = []

    def start(self, args: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(args, start_new_session=True, env=clean_env(), **kwargs)  # noqa: S603
        self.running.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.running):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in reversed(self.running):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.running.clear()


def run(args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, env=clean_env(), timeout=120)  # noqa: S603
    if check and proc.returncode != 0:
        raise DemoError(f"{' '.join(args[:3])} failed:\n{proc.stderr.strip() or proc.stdout}")
    return proc


def node(home: Path, *args: str) -> Any:
    """A ``lienthong-node`` command with --json; its parsed output."""
    out = run([NODE, *args, "--home", str(home), "--json"]).stdout
    return json.loads(out)


def parallel(jobs: list[Callable[[], Any]]) -> list[Any]:
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def work(i: int, job: Callable[[], Any]) -> None:
        try:
            results[i] = job()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, j)) for i, j in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoError(f"timed out waiting for {what}")
        time.sleep(0.3)


@contextlib.contextmanager
def step(text: str) -> Iterator[None]:
    started = time.monotonic()
    with console.status(text):
        yield
    console.print(f"[green]✓[/green] {text} [dim]({time.monotonic() - started:.1f} s)[/dim]")


def when(iso: str | None) -> str:
    if not iso:
        return ""
    from datetime import datetime, timedelta, timezone

    return datetime.fromisoformat(iso).astimezone(timezone(timedelta(hours=7))).strftime("%H:%M:%S")


# --- the scenario ------------------------------------------------------------------------------


def main() -> int:
    started = time.monotonic()
    procs = Processes()
    console.print(
        Panel.fit(
            "[bold]Lienthong[/bold] — trao đổi văn bản điện tử giữa các văn phòng cấp ủy\n"
            "a hub, four offices and their agents as real processes on this machine",
            border_style="cyan",
        )
    )
    with tempfile.TemporaryDirectory(prefix="lienthong-demo-") as tmp:
        root = Path(tmp)
        try:
            scenario(root, procs)
        except DemoError as exc:
            console.print(f"[red bold]✗ {exc}[/red bold]")
            return 1
        finally:
            with console.status("stopping the agents and the hub"):
                procs.stop_all()
    console.print(f"[bold green]Demo complete in {time.monotonic() - started:.0f} s.[/bold green]")
    return 0


def start_hub(root: Path, procs: Processes) -> tuple[Path, str]:
    data = root / "hub"
    run([HUB, "init", "--data", str(data)])
    proc = procs.start(
        [HUB, "serve", "--data", str(data), "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    port: list[int] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            with contextlib.suppress(ValueError):
                line = json.loads(raw)
                if line.get("event") == "listening":
                    port.append(int(line["port"]))
                    ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(60) or not port:
        raise DemoError("the hub did not start")
    return data, f"http://127.0.0.1:{port[0]}"


def scenario(root: Path, procs: Processes) -> None:
    with step("Hub started: lienthong-hub serve (SQLite + blob folder, free port)"):
        data, url = start_hub(root, procs)
    console.print(f"  [dim]{url}, data in {data}[/dim]")

    homes = {key: root / key for key, *_ in OFFICES}
    with step("Organs created: lienthong-hub enroll (one-time tokens)"):
        tokens: dict[str, str] = {}

        def enroll(key: str, code: str, name: str, parent: str | None, level: str) -> None:
            args = [HUB, "enroll", "--data", str(data), code, "--name", name, "--level", level]
            if parent:
                args += ["--parent", parent]
            tokens[key] = run(args).stdout.strip().splitlines()[-1]

        # Parents before children; organs of one level side by side.
        for level_offices in (OFFICES[:1], OFFICES[1:3], OFFICES[3:]):
            parallel(
                [
                    lambda o=o: enroll(o[0], o[1], o[2], o[3], o[4])  # type: ignore[misc]
                    for o in level_offices
                ]
            )

    with step("Agents initialised: lienthong-node init (keys generated locally, hub pinned)"):

        def init(key: str, code: str, abbrev: str) -> Any:
            args = ["--hub", url, "--code", code, "--token", tokens[key], "--abbrev", abbrev]
            return node(homes[key], "init", *args, "--numbering", "term")

        inits = parallel(
            [
                lambda key=key, code=code, abbrev=abbrev: init(key, code, abbrev)
                for key, code, _n, _p, _l, abbrev in OFFICES
            ]
        )
    table = Table(title="Offices", title_justify="left")
    for col in ("organ", "name", "level", "signing key", "keys"):
        table.add_column(col)
    for (_key, code, name, _p, level, _a), doc in zip(OFFICES, inits, strict=True):
        table.add_row(
            code, name, level, doc["signing_key"]["fingerprint"][:19], doc["signing_key"]["alg"]
        )
    console.print(table)

    with step("Agents running: lienthong-node run × 4"):
        for key, *_ in OFFICES:
            log = (root / f"{key}.log").open("w", encoding="utf-8")
            procs.start([NODE, "run", "--home", str(homes[key]), "--backoff-max", "2"],
                        stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
            log.close()

    docs = root / "documents"
    docs.mkdir()
    directive = docs / "Chỉ thị 05-CT-TU về tổng kết công tác năm 2025.pdf"
    directive.write_bytes(b"%PDF-1.7\n" + os.urandom(2 * 1024 * 1024) + b"\n%%EOF\n")
    report = docs / "Báo cáo kết quả quý III năm 2025.pdf"
    report.write_bytes(b"%PDF-1.7\n" + os.urandom(180_000) + b"\n%%EOF\n")
    notice = docs / "Thông báo lịch họp.pdf"
    notice.write_bytes(b"%PDF-1.7\n" + os.urandom(40_000) + b"\n%%EOF\n")

    with step("Province sends a directive (2 MiB PDF) to every office below it"):
        d = node(
            homes["tinh"], "send", "--to-descendants", "000.00.00.H41", "--type", "CT",
            "--subject", "Chỉ thị về tổ chức tổng kết công tác văn phòng cấp ủy năm 2025",
            "--signer", "T/M Ban Thường vụ, Bí thư", "--urgency", "khan", "--due", "2026-12-31",
            str(directive),
        )  # fmt: skip
    console.print(
        f"  [dim]{d['packet_id']}  số {d['reference']} → {len(d['recipients'])} offices[/dim]"
    )

    with step("Grassroots cell sends a report up (ward committee and province)"):
        r = node(
            homes["chibo"], "send", "--to", "000.00.13.H41,000.00.00.H41", "--type", "BC",
            "--subject", "Báo cáo kết quả thực hiện nhiệm vụ quý III năm 2025",
            "--in-reply-to", d["packet_id"], str(report),
        )  # fmt: skip
    console.print(f"  [dim]{r['packet_id']}  số {r['reference']}[/dim]")

    with step("Province sends a notice to Đảng ủy xã Yên Lạc (to be recalled)"):
        n = node(homes["tinh"], "send", "--to", "000.00.12.H41", "--type", "TB",
                 "--subject", "Thông báo lịch họp Ban Thường vụ", str(notice))  # fmt: skip

    def in_inbox(key: str, pid: str) -> dict[str, Any] | None:
        for item in node(homes[key], "inbox"):
            if item["packet_id"] == pid and item["verified"]:
                return dict(item)
        return None

    with step("Agents received, verified and released the documents (receipt 01)"):
        arrivals = [(k, d["packet_id"]) for k in ("yenlac", "tamhong", "chibo")]
        arrivals += [(k, r["packet_id"]) for k in ("tamhong", "tinh")] + [
            ("yenlac", n["packet_id"])
        ]
        for key, pid in arrivals:
            wait_for(f"{pid} at {key}", lambda key=key, pid=pid: in_inbox(key, pid))
        got = (homes["chibo"] / "inbox" / d["packet_id"] / directive.name).read_bytes()
        if got != directive.read_bytes():
            raise DemoError("the directive arrived altered")

    with step("Recipients register (03, số đến) and complete (06)"):
        handled = [(k, d["packet_id"]) for k in ("yenlac", "tamhong", "chibo")]
        handled += [(k, r["packet_id"]) for k in ("tamhong", "tinh")]

        def handle(key: str, pid: str) -> None:
            node(homes[key], "register", pid)
            node(homes[key], "complete", pid, "--note", "Đã triển khai thực hiện")

        parallel([lambda key=key, pid=pid: handle(key, pid) for key, pid in handled])

    with step("Province recalls the notice (13); Yên Lạc accepts (15)"):
        node(homes["tinh"], "recall", n["packet_id"], "--reason", "Thay đổi lịch họp")
        wait_for(
            "the recall request at Yên Lạc",
            lambda: (in_inbox("yenlac", n["packet_id"]) or {}).get("state") == "13",
        )
        node(homes["yenlac"], "recall-accept", n["packet_id"])
        if (homes["yenlac"] / "inbox" / n["packet_id"]).exists():
            raise DemoError("the recalled notice is still in the inbox folder")

    expected = {
        d["packet_id"]: ("tinh", "06", "Directive (chỉ thị)"),
        r["packet_id"]: ("chibo", "06", "Report (báo cáo)"),
        n["packet_id"]: ("tinh", "recalled", "Notice, recalled (thông báo)"),
    }
    statuses = {}
    with step("Senders collected every receipt"):
        for pid, (key, final, _title) in expected.items():

            def done(pid: str = pid, key: str = key, final: str = final) -> Any:
                doc = node(homes[key], "status", pid)
                states = {rec["state"] for rec in doc["recipients"]}
                return doc if states == {final} else None

            statuses[pid] = wait_for(f"the receipts of {pid}", done, timeout=40)

    for pid, (_key, _final, title) in expected.items():
        print_timeline(title, statuses[pid])

    with step("Proof bundle of the directive fetched and verified by the province's node"):
        bundle_path = root / "directive.bundle"
        proof = node(homes["tinh"], "proof", d["packet_id"], "--out", str(bundle_path))
    verify_offline(bundle_path, homes["tinh"], proof, d["packet_id"])


def print_timeline(title: str, doc: dict[str, Any]) -> None:
    table = Table(
        title=f"{title}  {doc['reference']}  [dim]{doc['packet_id']}[/dim]",
        title_justify="left",
    )
    for col in ("recipient", "time", "status", "by", "signature"):
        table.add_column(col)
    for rec in doc["recipients"]:
        first = True
        for h in rec["history"]:
            label = h.get("label", "")
            extra = ""
            details = h.get("details") or {}
            if details.get("incoming_number"):
                extra = f" (số đến {details['incoming_number']})"
            if h.get("reason"):
                extra = f" ({h['reason']})"
            table.add_row(
                rec["name"] if first else "",
                when(h.get("at")),
                f"{h['status']} {label}{extra}",
                "hub" if h["source"] == "hub" else h["signer"],
                "[green]✓ verified[/green]" if h.get("verified") else "[red]✗ INVALID[/red]",
            )
            first = False
        table.add_section()
    console.print(table)
    if not doc["all_verified"]:
        raise DemoError(f"a receipt of {doc['packet_id']} does not verify")


def verify_offline(bundle_path: Path, home: Path, proof: dict[str, Any], packet_id: str) -> None:
    """Check the bundle with nothing but the keys the province pinned at enrolment."""
    keystore = json.loads((home / "keystore.json").read_text(encoding="utf-8"))
    hub_key = SigningPublicKey.from_raw(
        keystore["hub_key"]["alg"], base64.b64decode(keystore["hub_key"]["pub"])
    )
    authority = SigningPublicKey.from_raw(
        keystore["authority"]["alg"], base64.b64decode(keystore["authority"]["pub"])
    )
    db = sqlite3.connect(home / "node.sqlite3")
    entries = {code: bytes(raw) for code, raw in db.execute("SELECT organ, entry FROM directory")}
    db.close()
    checked: list[str] = []

    def check_receipt(event: Any) -> None:
        parsed = parse_office_receipt(event.fields["receipt"])
        signer = parsed.receipt.signer
        entry = verify_entry(entries[signer], authority, organ=signer).entry
        verify_office_receipt(
            parsed,
            entry,
            packet_id=event.fields["packet_id"],
            envelope_digest=event.fields["envelope_digest"],
            sender="000.00.00.H41",
        )
        checked.append(f"{signer} {parsed.receipt.status}")

    origin = log_origin("lienthong")
    events = verify_bundle(
        bundle_path.read_bytes(), log_verifier(hub_key, origin), check_receipt=check_receipt
    )
    table = Table(
        title=f"Audit log proof bundle, verified offline  [dim]{packet_id}[/dim]",
        title_justify="left",
    )
    for col in ("log index", "event", "organ", "status"):
        table.add_column(col)
    for item, event in zip(proof["events"], events, strict=True):
        status = event.fields.get("status", "")
        table.add_row(
            str(item["index"]),
            event.kind,
            str(event.fields.get("organ") or event.fields.get("sender") or ""),
            f"{status} {STATUS[status].vi}" if status in STATUS else "",
        )
    console.print(table)
    console.print(
        f"[green]✓[/green] checkpoint signed by the hub key {fingerprint(hub_key.kid)[:19]} "
        f"(tree size {proof['tree_size']}, root {proof['root_hash'][:16]}…); "
        f"{len(events)} inclusion proofs and {len(checked)} office receipt signatures verified "
        "with the pinned keys only"
    )
    if not checked:
        raise DemoError("the bundle holds no office receipt")


if __name__ == "__main__":
    sys.exit(main())
