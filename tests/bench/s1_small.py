"""Scenario 1: small documents (10 KiB, one recipient), the full cycle, four ways.

1. **Lienthong**: ``lienthong-hub serve`` processes on PostgreSQL; client processes with
   :class:`nodes.client.HubClient` (:func:`tests.bench.lt_clients.small_cycle`): seal,
   batch submission, long-poll delivery, body download, open and verify, receipt 01 back,
   verified by the sender.
2. **Bare baseline** (:mod:`tests.bench.bare`): the same bytes POSTed in the same batches
   to a minimal aiohttp + asyncpg server (same number of processes) inserting rows, and
   read back one by one by GET, with the same client processes and concurrency.
3. **Plain e-mail** (:mod:`tests.bench.mailbench`): Postfix (SMTP in, Maildir out) and
   Dovecot (IMAP), private instances; the same number of messages and client processes.
4. **S/MIME e-mail**: the same with ``openssl cms`` sign+encrypt and decrypt+verify.

Each system gets the same number of client processes (``procs``) and, per process, the
same number of sender/recipient pairs (``pairs``).  Rates are documents fully handled per
second, from the moment every client process is released to the last document's end.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import bare, mailpeers
from .common import (
    ROOT,
    CpuMeter,
    Worker,
    asyncpg_dsn,
    clean_env,
    database,
    free_port,
    loadavg,
    peak_rss_mib,
    pids_matching,
    run_workers,
    stop,
)
from .hubs import HubCluster, enrol_offices, write_offices
from .profiling import Profiler

PROVINCE = "BENCH.TU"


def _rate(results: list[dict[str, Any]]) -> dict[str, Any]:
    completed = sum(int(r.get("completed", 0)) for r in results)
    start = min(r["start"] for r in results)
    end = max(r["end"] for r in results)
    seconds = max(end - start, 1e-9)
    errors = [e for r in results for e in r.get("errors", [])]
    lat = [r["latency_ms"] for r in results if r.get("latency_ms", {}).get("n")]
    client_cpu = sum(float(r.get("cpu_seconds", 0)) for r in results)
    return {
        "completed": completed,
        "client_cpu_seconds": round(client_cpu, 2),
        "seconds": round(seconds, 2),
        "per_s": round(completed / seconds, 1),
        # the median of the per-process medians, and the worst per-process p99
        "latency_p50_ms": sorted(x["p50"] for x in lat)[len(lat) // 2] if lat else None,
        "latency_p99_ms": max(x["p99"] for x in lat) if lat else None,
        "error_count": sum(int(r.get("error_count", 0)) for r in results),
        "errors": errors[:5],
    }


def _cpu(measured: dict[str, float], rate: dict[str, Any]) -> dict[str, Any]:
    """CPU seconds by party, with the clients' own, and CPU milliseconds per document."""
    out: dict[str, Any] = dict(measured)
    out["clients"] = rate["client_cpu_seconds"]
    out["others"] = round(out["others"] - out["clients"], 2)
    n = max(1, rate["completed"])
    out["ms_per_doc"] = {
        k: round(1000 * v / n, 2)
        for k, v in out.items()
        if k not in ("wall", "machine_busy", "others") and isinstance(v, float | int)
    }
    return out


def lienthong(work: Path, cfg: dict[str, Any], profile: bool) -> dict[str, Any]:
    procs, pairs, count = cfg["procs"], cfg["pairs"], cfg["count"]
    per_sender = max(1, count // (procs * pairs))
    with database("lt_bench_s1") as url:
        cluster = HubCluster(work / "s1-hub", url, processes=cfg["hub_procs"], trace=profile)
        cluster.root.mkdir(parents=True, exist_ok=True)
        cluster.init().start()
        try:
            codes = [(f"BENCH.S{n:03d}", f"BENCH.R{n:03d}") for n in range(procs * pairs)]
            offices, identity = asyncio.run(
                enrol_offices(
                    cluster,
                    [(PROVINCE, "")],
                    [(c, PROVINCE) for pair in codes for c in pair],
                )
            )
            offices_file = work / "s1-offices.json"
            write_offices(offices_file, offices, identity)
            spool = Path("/dev/shm") if Path("/dev/shm").is_dir() else work
            workers = [
                Worker(
                    "small_cycle",
                    {
                        "urls": cluster.urls,
                        "offices_file": str(offices_file),
                        "pairs": [list(p) for p in codes[w * pairs : (w + 1) * pairs]],
                        "count": per_sender,
                        "batch": cfg["batch"],
                        "size": cfg["size"],
                        "deadline": cfg["deadline"],
                        "spool": str(spool / f"lt-bench-{work.name}"),
                    },
                )
                for w in range(procs)
            ]
            load = loadavg()
            db = url.rsplit("/", 1)[-1]
            meter = CpuMeter({"hub": lambda: cluster.pids, "postgres": lambda: pids_matching(db)})
            prof = Profiler(cluster.pids, work / "s1-profile") if profile else None
            if prof:
                prof.__enter__()
            try:
                results, _ = run_workers(workers, timeout=cfg["deadline"] + 120, meter=meter)
            finally:
                if prof:
                    prof.__exit__(None, None, None)
            out = _rate(results)
            out["cpu_seconds"] = _cpu(meter.result, out)
            out.update(
                {
                    "sealed": sum(r["sealed"] for r in results),
                    "no_hub_receipt": sum(r["no_hub_receipt"] for r in results),
                    "fetched_receipts_verified": sum(r["fetched_verified"] for r in results),
                    "hub_processes": cluster.processes,
                    "hub_peak_rss_mib": cluster.peak_rss_mib(),
                    "hub_errors": cluster.errors()[:5],
                    "enrol_seconds": identity["enrol_seconds"],
                    "loadavg_before": load,
                }
            )
            if prof:
                out["profile"] = prof.summary()
        finally:
            cluster.stop()
        if profile:
            out["round_trips_per_packet"] = _per_packet(cluster.traces(), out["completed"])
        return out


def _per_packet(traces: dict[str, dict[str, int]], packets: int) -> dict[str, Any]:
    """Database round trips and requests per packet, by route (enrolment left out)."""
    n = max(1, packets)
    skip = ("/v1/admin", "/v1/enrol", "/v1/sessions", "/v1/directory")

    def keep(counts: dict[str, int]) -> dict[str, int]:
        return {k: v for k, v in counts.items() if not k.split(" ")[-1].startswith(skip)}

    trips, reqs = keep(traces["round_trips"]), keep(traces["requests"])
    tx = keep(traces.get("transaction_control", {}))
    return {
        "round_trips": round(sum(trips.values()) / n, 1),
        "of_which_begin_commit_rollback": round(sum(tx.values()) / n, 1),
        "requests": round(sum(reqs.values()) / n, 2),
        "by_route": {
            k: {
                "round_trips": round(v / n, 2),
                "begin_commit_rollback": round(tx.get(k, 0) / n, 2),
                "requests": round(reqs.get(k, 0) / n, 3),
            }
            for k, v in sorted(trips.items(), key=lambda kv: -kv[1])
        },
    }


def baseline(work: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    procs, pairs, count = cfg["procs"], cfg["pairs"], cfg.get("bare_count", cfg["count"])
    per_sender = max(1, count // (procs * pairs))
    with database("lt_bench_bare") as url:
        dsn = asyncpg_dsn(url)
        asyncio.run(bare.create_schema(dsn))
        servers: list[subprocess.Popen[bytes]] = []
        ports = [free_port() for _ in range(cfg["hub_procs"])]
        try:
            for port in ports:
                cmd = [sys.executable, "-m", "tests.bench.bare", "--port", str(port), "--dsn", dsn]
                servers.append(
                    subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=ROOT, env=clean_env())
                )
            for proc in servers:
                assert proc.stdout is not None
                if b"listening" not in proc.stdout.readline():
                    raise RuntimeError("the bare baseline server did not start")
            workers = [
                Worker(
                    "bare_client",
                    {
                        "urls": [f"http://127.0.0.1:{p}" for p in ports],
                        "pairs": pairs,
                        "count": per_sender,
                        "batch": cfg["batch"],
                        "size": cfg["size"],
                        "deadline": cfg["deadline"],
                    },
                )
                for _ in range(procs)
            ]
            load = loadavg()
            db = url.rsplit("/", 1)[-1]
            meter = CpuMeter(
                {"server": lambda: [p.pid for p in servers], "postgres": lambda: pids_matching(db)}
            )
            results, _ = run_workers(workers, timeout=cfg["deadline"] + 120, meter=meter)
            out = _rate(results)
            out["cpu_seconds"] = _cpu(meter.result, out)
            out["server_peak_rss_mib"] = [peak_rss_mib(p.pid) for p in servers]
            out["loadavg_before"] = load
            return out
        finally:
            for proc in servers:
                stop(proc)


def email(work: Path, cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Plain and S/MIME e-mail through one pair of private Postfix/Dovecot instances."""
    missing = mailpeers.available()
    if missing:
        return {"plain": {"skipped": f"not installed: {missing}"},
                "smime": {"skipped": f"not installed: {missing}"}}  # fmt: skip
    procs, pairs = cfg["procs"], cfg["pairs"]
    n = procs * pairs
    certs = work / "s1-certs"
    users = [f"office{i:02d}" for i in range(3 * n)]
    # Plain: office(2i) -> office(2i+1).  S/MIME: office(2i) -> office(2n+i), fresh mailboxes.
    for i in range(n):
        mailpeers.make_smime_identity(certs, users[2 * i])
        mailpeers.make_smime_identity(certs, users[2 * n + i])
    out: dict[str, dict[str, Any]] = {}
    with mailpeers.running(work / "s1-mail") as peers:
        for name, smime, count in (
            ("plain", False, cfg["count"]),
            ("smime", True, cfg["smime_count"]),
        ):
            per_sender = max(1, count // n)
            workers = []
            for w in range(procs):
                pair_list = []
                for p in range(pairs):
                    i = w * pairs + p
                    r = users[2 * n + i] if smime else users[2 * i + 1]
                    pair_list.append([users[2 * i], r])
                workers.append(
                    Worker(
                        "mail_client",
                        {
                            "smtp_port": peers.smtp_port,
                            "imap_port": peers.imap_port,
                            "pairs": pair_list,
                            "count": per_sender,
                            "size": cfg["size"],
                            "smime": smime,
                            "certs": str(certs),
                            "tag": name,
                            "deadline": cfg["deadline"],
                        },
                    )
                )
            load = loadavg()
            meter = CpuMeter({"postfix_dovecot": peers.pids})
            results, _ = run_workers(workers, timeout=cfg["deadline"] + 120, meter=meter)
            res = _rate(results)
            res["cpu_seconds"] = _cpu(meter.result, res)
            res["sent"] = sum(r["sent"] for r in results)
            res["loadavg_before"] = load
            res["peers_processes"] = len(peers.pids())
            out[name] = res
    return out


def run(work: Path, cfg: dict[str, Any], profile: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = {"config": cfg}
    result["lienthong"] = lienthong(work, cfg, profile)
    result["bare"] = baseline(work, cfg)
    result.update(email(work, cfg))
    lt = result["lienthong"]["per_s"]
    bare_rate = result["bare"]["per_s"]
    plain = result["plain"].get("per_s")
    smime = result["smime"].get("per_s")
    result["ratios"] = {
        "lienthong_over_bare": round(lt / bare_rate, 3) if bare_rate else None,
        "lienthong_over_plain_email": round(lt / plain, 2) if plain else None,
        "lienthong_over_smime_email": round(lt / smime, 2) if smime else None,
    }
    return result
