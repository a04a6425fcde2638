"""The side-by-side benchmark of issue 5: ``make bench`` (full) and ``make bench-quick``.

``python -m tests.bench.run [--quick] [--only s1,s2,...] [--profile] [--update-doc]``

Runs the scenarios in one go on this machine -- Lienthong and what offices would use
instead, in the same run -- writes ``bench-results/bench-<mode>-<time>.json`` and prints
a markdown table with every figure, its target and the ratios.  ``--update-doc``
rewrites the results section of ``docs/PERFORMANCE.md`` with that table.  ``--profile``
samples the hub processes with py-spy during scenarios 1, 3 and 5 and adds the top
functions to the results.

Scenarios: s1 small documents (:mod:`.s1_small`), s2 a large document (:mod:`.s2_large`),
s3 fan-out and s5 connections (:mod:`.s3_s5_offices`), s4 the audit log
(:mod:`.bench_auditlog`, in its own process), s6 AS2 (:mod:`.s6_as2`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .common import ROOT, clean_env, loadavg, machine, raise_fd_limit

QUICK: dict[str, Any] = {
    "mode": "quick",
    "hub_procs": 2,
    # s1 (the bare baseline runs longer: at its rate 600 documents take a second)
    "procs": 2, "pairs": 4, "count": 300, "bare_count": 3000, "smime_count": 300, "batch": 25,
    "size": 10 * 1024, "deadline": 60,
    # s2
    "large_mib": 256,
    # s3, s5
    "fanout": 300, "connections": 300, "senders": 20, "poll_procs": 2,
    "rate": 200, "rate_seconds": 3, "idle_seconds": 2, "settle_seconds": 2,
    "max_inflight": 200, "grace": 8,
    # s4
    "log_entries": 100_000, "log_samples": 500,
    # s6
    "as2_rounds_small": 20, "as2_rounds_large": 2,
}  # fmt: skip
FULL: dict[str, Any] = {
    **QUICK,
    "mode": "full",
    "count": 5000, "bare_count": 20000, "smime_count": 5000, "deadline": 300,
    "large_mib": 1024,
    "fanout": 1000, "connections": 2000, "senders": 50, "poll_procs": 4,
    "rate_seconds": 60, "idle_seconds": 10, "settle_seconds": 3, "max_inflight": 400, "grace": 30,
    "log_entries": 1_000_000, "log_samples": 2000,
    "as2_rounds_small": 200, "as2_rounds_large": 5,
}  # fmt: skip
SCENARIOS = ("s1", "s2", "s3s5", "s4", "s6")


def _s1(work: Path, cfg: dict[str, Any], profile: bool) -> dict[str, Any]:
    from . import s1_small

    return s1_small.run(work, cfg, profile)


def _s2(work: Path, cfg: dict[str, Any], profile: bool) -> dict[str, Any]:
    from . import s2_large

    return s2_large.run(work, cfg, profile)


def _s3s5(work: Path, cfg: dict[str, Any], profile: bool) -> dict[str, Any]:
    from . import s3_s5_offices

    return s3_s5_offices.run(work, cfg, profile)


def _s4(work: Path, cfg: dict[str, Any], profile: bool) -> dict[str, Any]:
    env = clean_env(
        LIENTHONG_BENCH_LOG_ENTRIES=str(cfg["log_entries"]),
        LIENTHONG_BENCH_SAMPLES=str(cfg["log_samples"]),
    )
    for name in ("LIENTHONG_TEST_DATABASE_URL",):
        if name in os.environ:
            env[name] = os.environ[name]
    proc = subprocess.run(
        [sys.executable, "-m", "tests.bench.bench_auditlog"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=3600,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"bench_auditlog failed: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _s6(work: Path, cfg: dict[str, Any], profile: bool) -> dict[str, Any]:
    from . import s6_as2

    return s6_as2.run(cfg)


RUNNERS: dict[str, Callable[[Path, dict[str, Any], bool], dict[str, Any]]] = {
    "s1": _s1, "s2": _s2, "s3s5": _s3s5, "s4": _s4, "s6": _s6,
}  # fmt: skip


# --- the table -----------------------------------------------------------------------------


def _get(doc: dict[str, Any], path: str) -> Any:
    cur: Any = doc
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        text = f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    elif isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, list):
        text = " / ".join(_fmt(v) for v in value)
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def _verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("met" if ok else "**not met**")


def rows(res: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(scenario, figure, measured, target, verdict) for the markdown table."""
    out: list[tuple[str, str, str, str, str]] = []

    def add(scn: str, label: str, value: Any, unit: str = "", target: str = "",
            ok: bool | None = None) -> None:  # fmt: skip
        out.append((scn, label, _fmt(value, unit), target, _verdict(ok) if target else ""))

    s1 = res.get("s1")
    if isinstance(s1, dict) and "lienthong" in s1:
        lt = _get(s1, "lienthong.per_s")
        bare = _get(s1, "bare.per_s")
        plain = _get(s1, "plain.per_s")
        smime = _get(s1, "smime.per_s")
        add("1 small docs", "Lienthong full cycle", lt, "packets/s", "≥ 1,000/s",
            lt is not None and lt >= 1000)  # fmt: skip
        add("1 small docs", "bare baseline (HTTP + PostgreSQL row)", bare, "docs/s")
        add("1 small docs", "plain e-mail (Postfix → IMAP)", plain, "msgs/s")
        add("1 small docs", "S/MIME e-mail (openssl cms)", smime, "msgs/s")
        r = s1.get("ratios", {})
        add("1 small docs", "Lienthong / bare", r.get("lienthong_over_bare"), "×", "≥ 0.5×",
            (r.get("lienthong_over_bare") or 0) >= 0.5)  # fmt: skip
        add("1 small docs", "Lienthong / plain e-mail", r.get("lienthong_over_plain_email"), "×",
            "≥ 3×", (r.get("lienthong_over_plain_email") or 0) >= 3)  # fmt: skip
        add("1 small docs", "Lienthong / S/MIME e-mail", r.get("lienthong_over_smime_email"), "×")
        hub_ms = _get(s1, "lienthong.cpu_seconds.ms_per_doc.hub")
        bare_ms = _get(s1, "bare.cpu_seconds.ms_per_doc.server")
        add("1 small docs", "server CPU per document: hub / bare server",
            [hub_ms, bare_ms], "ms")  # fmt: skip
        trips = _get(s1, "lienthong.round_trips_per_packet.round_trips")
        if trips is not None:
            add("1 small docs", "database round trips per packet (bare: 2 per document)",
                trips)  # fmt: skip
    s2 = res.get("s2")
    if isinstance(s2, dict) and "lienthong" in s2:
        lt = s2["lienthong"]
        size = lt.get("size_mib")
        add("2 large doc", f"Lienthong {size} MiB file → verified inbox", lt.get("mb_s"), "MB/s",
            "≥ 300 MB/s", (lt.get("mb_s") or 0) >= 300)  # fmt: skip
        add(
            "2 large doc", "  of which per-byte rate (minus 1 KiB send)", lt.get("net_mb_s"), "MB/s"
        )
        add("2 large doc", "age encrypt + 2 copies + decrypt", _get(s2, "age.mb_s"), "MB/s")
        ratio = _get(s2, "ratios.lienthong_time_over_age")
        add("2 large doc", "Lienthong time / age time", ratio, "×", "≤ 2×",
            ratio is not None and ratio <= 2)  # fmt: skip
        hubs = lt.get("hub_peak_rss_mib", [])
        nodes = [lt.get("send_transfer_peak_rss_mib"), lt.get("daemon_transfer_peak_rss_mib")]
        peaks = [p for p in [*hubs, *nodes] if p is not None]
        at_size = size is not None and size >= 1024
        add("2 large doc", "peak RSS: hub, hub / send, daemon during the transfer",
            [*hubs, *nodes], "MiB", "< 100 MiB at 1 GiB",
            (max(peaks) < 100) if at_size and peaks else None)  # fmt: skip
        add("2 large doc", "  node peaks with the keystore unlock (Argon2id: 64 MiB by design)",
            [lt.get("send_peak_rss_mib"), lt.get("daemon_peak_rss_mib")], "MiB")  # fmt: skip
    s35 = res.get("s3s5")
    if isinstance(s35, dict):
        for key, label in (("fanout_classic", "classic"), ("fanout_hybrid", "hybrid")):
            f = s35.get(key)
            if not isinstance(f, dict) or "seal_seconds" not in f:
                continue
            n = f.get("offices")
            seal_ok = f["seal_seconds"] < 0.5 if label == "hybrid" else None
            add("3 fan-out", f"{label}: sealing for {n} offices", f["seal_seconds"], "s",
                "< 0.5 s" if label == "hybrid" else "", seal_ok)  # fmt: skip
            add("3 fan-out", f"{label}: envelope size", f.get("envelope_bytes"), "bytes")
            add("3 fan-out", f"{label}: until the hub accepted it", f.get("accepted_seconds"), "s")
            hold = f.get("mailboxes_hold_seconds")
            add("3 fan-out", f"{label}: until all {n} mailboxes hold it", hold, "s", "< 2 s",
                hold is not None and hold < 2)  # fmt: skip
            all_s = f.get("all_delivered_seconds")
            add(
                "3 fan-out",
                f"{label}: until all {f.get('delivered')} offices' long-polls answered with it",
                all_s,
                "s",
                "< 2 s (stricter reading)",
                all_s is not None and all_s < 2 and f.get("delivered") == n,
            )
            add("3 fan-out", f"{label}: hub peak RSS during the fan-out",
                f.get("hub_rss_peak_mib"), "MiB")  # fmt: skip
        c = s35.get("connections")
        if isinstance(c, dict) and "latency_ms" in c:
            peak = max(c.get("hub_rss_peak_mib") or [0])
            add("5 connections", f"{c['offices_polling']} offices long-polling: hub RSS (peak)",
                c.get("hub_rss_peak_mib"), "MiB", "< 300 MiB", peak < 300)  # fmt: skip
            rates = (
                f"{_fmt(c.get('rate_offered'))} / {_fmt(c.get('rate_accepted'))} "
                f"(target {_fmt(c.get('rate_target'))})"
            )
            add("5 connections", "rate offered / accepted", rates, "packets/s")
            add("5 connections", "hub CPU with every office polling, nothing arriving",
                c.get("idle_hub_cpu_pct"), "% of a CPU")  # fmt: skip
            lat = c["latency_ms"]
            add("5 connections", "delivery latency p50", lat.get("p50"), "ms")
            add("5 connections", "delivery latency p99", lat.get("p99"), "ms", "< 100 ms",
                lat.get("p99") is not None and lat["p99"] < 100
                and c.get("delivered") == c.get("packets"))  # fmt: skip
            done = f"{c.get('delivered')} / {c.get('packets')}"
            skipped = c.get("skipped_overloaded")
            if skipped:
                done += f" ({skipped} not sent: the hub was {c.get('max_inflight')} behind)"
            add("5 connections", "delivered / submitted", done)
    s4 = res.get("s4")
    if isinstance(s4, dict) and "inclusion_ms" in s4:
        n = s4.get("log_entries")
        inc, con, bun = s4["inclusion_ms"], s4["consistency_ms"], s4["bundle_ms"]
        add("4 audit log", f"inclusion proof p50 / p99 at {n:,} entries (HTTP)",
            [inc["p50"], inc["p99"]], "ms", "p99 < 5 ms", inc["p99"] < 5)  # fmt: skip
        add("4 audit log", "consistency proof p50 / p99 (HTTP)", [con["p50"], con["p99"]], "ms",
            "p99 < 5 ms", con["p99"] < 5)  # fmt: skip
        add("4 audit log", "packet trace (bundle) p95 (HTTP)", bun["p95"], "ms", "< 20 ms",
            bun["p95"] < 20)  # fmt: skip
        add("4 audit log", "sequencer", s4.get("sequencer_entries_per_s"), "entries/s",
            "> 5,000/s", (s4.get("sequencer_entries_per_s") or 0) > 5000)  # fmt: skip
    s6 = res.get("s6")
    if isinstance(s6, dict):
        for size in ("10KiB", "10MiB"):
            d = s6.get(size)
            if isinstance(d, dict):
                add("6 AS2", f"{size}: pyas2lib / Lienthong per document",
                    f"{_fmt(d['pyas2lib_ms'])} / {_fmt(d['lienthong_ms'])} ms")  # fmt: skip
                add("6 AS2", f"{size}: Lienthong speed-up", d["speedup"], "×", "≥ 10×",
                    d["speedup"] >= 10)  # fmt: skip
    for name, doc in res.items():
        if isinstance(doc, dict) and "error" in doc:
            add(name, "FAILED", doc["error"].splitlines()[-1][:120])
    loads = [
        f"{name} {_fmt(doc['loadavg_before'][0])} → {_fmt(doc['loadavg_after'][0])}"
        for name, doc in res.items()
        if isinstance(doc, dict) and "loadavg_before" in doc and "loadavg_after" in doc
    ]
    if loads:
        add("all", "load average (1 min) before → after each scenario", "; ".join(loads))
    return out


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"Run `{result['mode']}` of {result['started']} on {m['nproc']} × {m['cpu_model']}, "
        f"{m['mem_total_mib']:,} MiB, Python {m['python']}; load average before "
        f"{' / '.join(str(x) for x in m['loadavg'])}, after "
        f"{' / '.join(str(x) for x in result['loadavg_after'])}; {result['seconds']:.0f} s.",
        "",
        "| Scenario | Figure | Measured | Target | Verdict |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows(result["results"])]
    return "\n".join(lines)


BEGIN = "<!-- bench:results:begin -->"
END = "<!-- bench:results:end -->"


def update_doc(table: str) -> None:
    path = ROOT / "docs" / "PERFORMANCE.md"
    text = path.read_text(encoding="utf-8") if path.exists() else f"{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (< 3 minutes)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--profile", action="store_true", help="py-spy the hub in s1, s3, s5")
    parser.add_argument("--update-doc", action="store_true", help="rewrite docs/PERFORMANCE.md")
    parser.add_argument("--work", help="working folder (default: a temporary one)")
    args = parser.parse_args()
    cfg = dict(QUICK if args.quick else FULL)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(wanted) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    raise_fd_limit()  # the hub processes and long-polling clients inherit it
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "mode": cfg["mode"],
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "config": cfg,
        "results": {},
    }
    with tempfile.TemporaryDirectory(prefix="lt-bench-", dir=args.work) as tmp:
        work = Path(tmp)
        for name in wanted:
            t = time.perf_counter()
            before = loadavg()
            print(f"[bench] {name} … (load {before})", file=sys.stderr, flush=True)
            try:
                res = RUNNERS[name](work, cfg, args.profile)
            except Exception as exc:
                traceback.print_exc()
                res = {"error": f"{type(exc).__name__}: {exc}"}
            res["seconds"] = round(time.perf_counter() - t, 1)
            res["loadavg_before"] = before
            res["loadavg_after"] = loadavg()
            result["results"][name] = res
            print(f"[bench] {name} done in {res['seconds']} s", file=sys.stderr, flush=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["loadavg_after"] = loadavg()
    out_dir = ROOT / "bench-results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"bench-{cfg['mode']}-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    table = markdown(result)
    print(table)
    print(f"\nresults: {path.relative_to(ROOT)}", file=sys.stderr)
    if args.update_doc:
        update_doc(table)


if __name__ == "__main__":
    main()
