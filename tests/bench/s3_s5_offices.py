"""Scenarios 3 (fan-out to 1,000 offices) and 5 (2,000 offices long-polling at once).

One classic hub serves both: a province organ with, below it, the offices that poll
(``BENCH.F0000`` ...) and a few that send (``BENCH.X00`` ...), all enrolled through the
hub's own code path (:func:`tests.bench.hubs.enrol_offices`).  A second, hybrid hub
(``lienthong-hub init --hybrid``: Ed25519 + ML-DSA-65 and ML-KEM-768 + X25519 for every
office, the hub and the directory authority) serves the hybrid fan-out.

Fan-out: every addressed office holds a long-poll (client processes with many
:class:`nodes.client.HubClient` each) before the province's node fetches and verifies the
1,000 directory entries, seals the directive, and submits it.  Measured: sealing time,
envelope size, time until the hub's answer (accepted, with its signed receipt), time
until all the hub's mailboxes hold it (seen from a database connection of the harness:
the mailbox rows are written with the delivery rows, in the transaction that accepts the
packet), time until every long-poll has answered with the envelope.

Connections: all offices long-poll (``wait=30``) while senders submit single packets at
a fixed rate to random offices; latency is from the submission to the recipient's
long-poll answering.  Hub resident memory is sampled throughout.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

from .common import (
    CpuMeter,
    Sampler,
    Worker,
    asyncpg_dsn,
    database,
    loadavg,
    pct,
    pids_matching,
    rss_mib,
    summary_ms,
)
from .hubs import HubCluster, enrol_offices, write_offices
from .profiling import Profiler

PROVINCE = "BENCH.TU"


class _RssSampler(Sampler):
    def __init__(self, pids: list[int]) -> None:
        super().__init__()
        self.pids = pids
        self.peak = dict.fromkeys(pids, 0.0)

    def sample(self) -> None:
        for pid in self.pids:
            self.peak[pid] = max(self.peak[pid], rss_mib(pid))


class _MailboxWatch(Sampler):
    """When the hub's mailboxes hold a fan-out, seen from a database connection of its own.

    The hub writes a recipient's mailbox item and its ``deliveries`` row in one
    transaction; the mailbox item goes when the office acknowledges it, the delivery row
    stays, so committed delivery rows are counted (every 5 ms) until ``expected`` more than
    when the watch began.
    """

    period = 0.005

    def __init__(self, url: str, expected: int) -> None:
        super().__init__()
        self.url, self.expected = url, expected
        self.loop = asyncio.new_event_loop()
        self.at: float | None = None

    def _count(self) -> int:
        n: int = self.loop.run_until_complete(self.conn.fetchval("SELECT count(*) FROM deliveries"))
        return n

    def __enter__(self) -> _MailboxWatch:
        self.conn = self.loop.run_until_complete(asyncpg.connect(asyncpg_dsn(self.url)))
        self.base = self._count()
        return super().__enter__()  # type: ignore[no-any-return]

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()

    def sample(self) -> bool | None:
        if self._count() - self.base < self.expected:
            return None
        self.at = time.time()
        return False


def _split(items: list[str], parts: int) -> list[list[str]]:
    return [items[i::parts] for i in range(parts) if items[i::parts]]


def _setup(
    work: Path,
    name: str,
    url: str,
    cfg: dict[str, Any],
    hybrid: bool,
    polling: int,
    senders: int,
    trace: bool = False,
) -> tuple[HubCluster, Path, list[str], list[str], dict[str, Any]]:
    cluster = HubCluster(
        work / f"{name}-hub",
        url,
        processes=cfg["hub_procs"],
        hybrid=hybrid,
        trace=trace,
        settings=dict(cfg.get("hub_settings", {})),
    )
    cluster.root.mkdir(parents=True, exist_ok=True)
    cluster.init().start()
    targets = [f"BENCH.F{n:04d}" for n in range(polling)]
    sending = [f"BENCH.X{n:02d}" for n in range(senders)]
    offices, identity = asyncio.run(
        enrol_offices(
            cluster,
            [(PROVINCE, "")],
            [(c, PROVINCE) for c in targets + sending],
            concurrency=cfg.get("enrol_concurrency", 32),
        )
    )
    path = work / f"{name}-offices.json"
    write_offices(path, offices, identity)
    return cluster, path, targets, sending, identity


def _pollers(
    cluster: HubCluster, offices: Path, codes: list[str], procs: int, **job: Any
) -> list[Worker]:
    return [
        Worker(
            "pollers",
            {"urls": cluster.urls, "offices_file": str(offices), "codes": part, **job},
        )
        for part in _split(codes, procs)
    ]


def fanout(
    cluster: HubCluster,
    offices: Path,
    targets: list[str],
    cfg: dict[str, Any],
    profile: Path | None,
) -> dict[str, Any]:
    pollers = _pollers(
        cluster, offices, targets, cfg["poll_procs"], wait=30, expect=1, deadline=120
    )
    sender = Worker(
        "fanout_sender",
        {
            "urls": cluster.urls,
            "offices_file": str(offices),
            "sender": PROVINCE,
            "targets": targets,
            "size": 10 * 1024,
        },
    )
    everyone = [*pollers, sender]
    try:
        for w in everyone:
            w.start()
        for w in everyone:
            w.wait_ready(600)
        for w in pollers:
            w.go()
        time.sleep(cfg.get("settle_seconds", 3))  # every long-poll is waiting at the hub
        idle_rss = cluster.rss_mib()
        load = loadavg()
        prof = Profiler(cluster.pids, profile) if profile else None
        if prof:
            prof.__enter__()
        meter = _meter(cluster)
        try:
            watch = _MailboxWatch(cluster.database_url, len(targets))
            with _RssSampler(cluster.pids) as rss, watch:
                meter.start()
                sender.go()
                sent = sender.finish(300)
                polled = [w.finish(300) for w in pollers]
                meter.stop()
        finally:
            if prof:
                prof.__exit__(None, None, None)
    finally:
        for w in everyone:
            w.kill()
    arrivals = [t for r in polled for ts in r["arrivals"].values() for t in ts]
    t0 = sent["submitted"]
    delivered = len(arrivals)
    out = {
        "offices": len(targets),
        "directory_fetch_verify_seconds": sent["directory_seconds"],
        "seal_seconds": sent["seal_seconds"],
        "envelope_bytes": sent["envelope_bytes"],
        "accepted_seconds": round(sent["accepted"] - t0, 3),
        "mailboxes_hold_seconds": None if watch.at is None else round(watch.at - t0, 3),
        "hub_receipt": sent["hub_receipt"],
        "delivered": delivered,
        "all_delivered_seconds": round(max(arrivals) - t0, 3) if arrivals else None,
        "median_delivered_seconds": round(pct(arrivals, 50) - t0, 3) if arrivals else None,
        "envelope_bytes_to_offices": sum(r["bytes"] for r in polled),
        "hub_rss_idle_mib": idle_rss,
        "hub_rss_peak_mib": list(rss.peak.values()),
        "poll_errors": sum(r["error_count"] for r in polled),
        "errors": [e for r in polled for e in r["errors"]][:5],
        "cpu_seconds": {
            **meter.result,
            "clients": round(sum(r.get("cpu_seconds", 0) for r in [*polled, sent]), 2),
        },
        "loadavg_before": load,
    }
    if prof:
        out["profile"] = prof.summary()
    return out


def _meter(cluster: HubCluster) -> CpuMeter:
    db = cluster.database_url.rsplit("/", 1)[-1]
    return CpuMeter({"hub": lambda: cluster.pids, "postgres": lambda: pids_matching(db)})


def connections(
    cluster: HubCluster,
    offices: Path,
    targets: list[str],
    senders: list[str],
    cfg: dict[str, Any],
    profile: Path | None,
) -> dict[str, Any]:
    seconds = cfg["rate_seconds"]
    pollers = _pollers(
        cluster, offices, targets, cfg["poll_procs"], wait=30, deadline=seconds + 120,
        login_concurrency=16,
    )  # fmt: skip
    sender = Worker(
        "steady_senders",
        {
            "urls": cluster.urls,
            "offices_file": str(offices),
            "senders": senders,
            "targets": targets,
            "rate": cfg["rate"],
            "seconds": seconds,
            "size": 10 * 1024,
            "max_inflight": cfg.get("max_inflight", 400),
            "grace": cfg.get("grace", 30),
        },
    )
    everyone = [*pollers, sender]
    try:
        for w in everyone:
            w.start()
        for w in everyone:
            w.wait_ready(900)
        for w in pollers:
            w.go()
        time.sleep(cfg.get("settle_seconds", 3) + len(targets) / 1000)
        # Every office holds a long-poll and nothing arrives: what holding them costs.
        idle = _meter(cluster).start()
        time.sleep(cfg.get("idle_seconds", 10))
        idle_cpu = idle.stop()
        idle_rss = cluster.rss_mib()
        load = loadavg()
        meter = _meter(cluster)
        prof = Profiler(cluster.pids, profile) if profile else None
        if prof:
            prof.__enter__()
        try:
            with _RssSampler(cluster.pids) as rss:
                meter.start()
                sender.go()
                sent = sender.finish(seconds + 300)
                time.sleep(2)  # the last packets' long-polls answer
                meter.stop()
                for w in pollers:
                    w.tell("stop")
                polled = [w.finish(120) for w in pollers]
        finally:
            if prof:
                prof.__exit__(None, None, None)
    finally:
        for w in everyone:
            w.kill()
    arrived: dict[str, float] = {}
    for r in polled:
        for pid, ts in r["arrivals"].items():
            arrived[pid] = min([*ts, arrived.get(pid, float("inf"))])
    submitted: dict[str, float] = sent["submitted"]
    latencies = [arrived[p] - t for p, t in submitted.items() if p in arrived]
    out = {
        "offices_polling": len(targets),
        "rate_target": cfg["rate"],
        "rate_offered": sent["offered_rate"],
        "rate_accepted": sent["accepted_rate"],
        "skipped_overloaded": sent["skipped_overloaded"],
        "max_inflight": cfg.get("max_inflight", 400),
        "seconds": seconds,
        "packets": len(submitted),
        "delivered": len(latencies),
        "latency_ms": summary_ms(latencies),
        "accept_ms": sent["accept_ms"],
        "hub_rss_idle_mib": idle_rss,
        "hub_rss_peak_mib": list(rss.peak.values()),
        "polls": sum(r["polls"] for r in polled),
        "poll_errors": sum(r["error_count"] for r in polled),
        "send_errors": sent["error_count"],
        "errors": ([e for r in polled for e in r["errors"]] + sent["errors"])[:5],
        "clients_cpu_seconds": round(sum(r.get("cpu_seconds", 0) for r in [*polled, sent]), 2),
        "idle_cpu_seconds": idle_cpu,
        "idle_hub_cpu_pct": round(100 * idle_cpu["hub"] / idle_cpu["wall"], 1),
        "cpu_seconds": meter.result,
        "hub_cpu_ms_per_packet": round(1000 * meter.result["hub"] / max(1, len(submitted)), 2),
        "loadavg_before": load,
    }
    if prof:
        out["profile"] = prof.summary()
    return out


def run(work: Path, cfg: dict[str, Any], profile: bool = False) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    fan_n, conn_n = cfg["fanout"], cfg["connections"]
    with database("lt_bench_s35") as url:
        cluster, offices, targets, senders, identity = _setup(
            work, "s35", url, cfg, False, max(fan_n, conn_n), cfg["senders"]
        )
        try:
            out["fanout_classic"] = fanout(
                cluster, offices, targets[:fan_n], cfg, work / "s3-profile" if profile else None
            )
            out["fanout_classic"]["enrol_seconds"] = identity["enrol_seconds"]
            out["connections"] = connections(
                cluster, offices, targets[:conn_n], senders, cfg,
                work / "s5-profile" if profile else None,
            )  # fmt: skip
            out["connections"]["enrolled_offices"] = identity["offices"]
            out["connections"]["enrol_seconds"] = identity["enrol_seconds"]
            out["connections"]["hub_errors"] = cluster.errors()[:5]
        except Exception as exc:
            raise _with_hub_errors(exc, cluster) from exc
        finally:
            cluster.stop()
    with database("lt_bench_s3h") as url:
        cluster, offices, targets, _, identity = _setup(work, "s3h", url, cfg, True, fan_n, 0)
        try:
            out["fanout_hybrid"] = fanout(
                cluster, offices, targets, cfg, work / "s3h-profile" if profile else None
            )
            out["fanout_hybrid"]["enrol_seconds"] = identity["enrol_seconds"]
            out["fanout_hybrid"]["hub_errors"] = cluster.errors()[:5]
        except Exception as exc:
            raise _with_hub_errors(exc, cluster) from exc
        finally:
            cluster.stop()
    return out


Phase = Callable[[HubCluster, Path, list[str], list[str]], dict[str, Any]]


def drive(
    name: str, cfg: dict[str, Any], hybrid: bool, polling: int, senders: int, phase: Phase
) -> None:
    """One phase alone on a throwaway database and hub (the profiling aids ``s3_drive``
    and ``s5_drive``): prints its figures as JSON, then py-spy's summary if it profiled."""
    with tempfile.TemporaryDirectory() as tmp, database(f"lt_bench_{name}d") as url:
        cluster, path, targets, sending, _ = _setup(
            Path(tmp), name, url, cfg, hybrid, polling, senders, trace=cfg.get("trace", False)
        )
        try:
            out = phase(cluster, path, targets, sending)
        finally:
            cluster.stop()
            keep = os.environ.get("LT_BENCH_KEEP_LOGS")
            if keep:  # the hub's logs (request times, errors) outlive the temporary folder
                Path(keep).mkdir(parents=True, exist_ok=True)
                for log_file in cluster.root.glob("hub-*.log"):
                    shutil.copy(log_file, Path(keep) / log_file.name)
        if cfg.get("trace"):
            out["traces"] = cluster.traces()
    summary = out.pop("profile", None)
    print(json.dumps(out, indent=1))
    if summary is not None:
        print(json.dumps(summary, indent=1))


def _with_hub_errors(exc: Exception, cluster: HubCluster) -> RuntimeError:
    """A failed phase, with the hub's error lines (its folder is temporary)."""
    return RuntimeError(f"{type(exc).__name__}: {exc}; hub errors: {cluster.errors()[:3]}")
