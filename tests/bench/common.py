"""Shared pieces of the side-by-side benchmarks: machine facts, statistics, processes.

Nothing here measures anything by itself; the scenarios (``tests/bench/s*.py``) and the
runner (:mod:`tests.bench.run`) use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from tests import databases

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HUB_EXE = str(BIN / "lienthong-hub")
KIB = 1024
MIB = 1024 * 1024
SUBJECT = "Kế hoạch tổ chức Hội nghị tổng kết công tác văn phòng cấp ủy năm 2025"


# --- the machine -------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "mem_total_mib": _meminfo("MemTotal") // 1024,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "loadavg": loadavg(),
    }


def _meminfo(name: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise this process's open-file limit (soft up to the hard limit); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --- statistics --------------------------------------------------------------------------


def pct(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50": round(pct(ms, 50), 2),
        "p95": round(pct(ms, 95), 2),
        "p99": round(pct(ms, 99), 2),
        "max": round(max(ms), 2) if ms else float("nan"),
        "mean": round(statistics.fmean(ms), 2) if ms else float("nan"),
    }


# --- processes ---------------------------------------------------------------------------


def status_kib(pid: int, name: str) -> int:
    """A ``VmHWM``/``VmRSS`` style line of /proc/<pid>/status, in KiB (0 if gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def peak_rss_mib(pid: int) -> float:
    return round(status_kib(pid, "VmHWM") / 1024, 1)


def rss_mib(pid: int) -> float:
    return round(status_kib(pid, "VmRSS") / 1024, 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIENTHONG_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def stop(proc: subprocess.Popen[Any] | None, timeout: float = 20) -> None:
    """SIGTERM the process (its group if it leads one), SIGKILL after ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)


@dataclass
class Worker:
    """A benchmark client process: ``python -m tests.bench.workers <role>``, JSON in and out.

    The job description goes to its standard input; it prints ``ready`` once set up (logged
    in, connected), waits for ``go`` on standard input, then prints one JSON result line.
    """

    role: str
    job: dict[str, Any]
    proc: subprocess.Popen[str] | None = None
    result: dict[str, Any] = field(default_factory=dict)

    def start(self) -> Worker:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.workers", self.role],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=clean_env(),
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(self.job) + "\n")
        self.proc.stdin.flush()
        return self

    def wait_ready(self, timeout: float = 300) -> None:
        line = self._line(timeout)
        if line.strip() != "ready":
            raise RuntimeError(f"worker {self.role} did not get ready: {line!r}")

    def go(self) -> None:
        self.tell("go")

    def tell(self, line: str) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 600) -> dict[str, Any]:
        line = self._line(timeout)
        try:
            self.result = json.loads(line)
        except ValueError:
            raise RuntimeError(f"worker {self.role} failed: {line!r}") from None
        assert self.proc is not None
        self.proc.wait(30)
        return self.result

    def _line(self, timeout: float) -> str:
        assert self.proc is not None
        assert self.proc.stdout is not None
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise TimeoutError(f"worker {self.role} took longer than {timeout} s")
            if sel.select(min(left, 1.0)):
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"worker {self.role} exited ({self.proc.wait()})")
                return line

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def run_workers(
    workers: Sequence[Worker],
    timeout: float = 600,
    ready_timeout: float = 300,
    meter: CpuMeter | None = None,
) -> tuple[list[dict[str, Any]], float]:
    """Start every worker, wait until all are ready, release them together.

    Returns their results and the wall time from ``go`` to the last result; ``meter``
    (if given) runs over the same span.
    """
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.wait_ready(ready_timeout)
        if meter is not None:
            meter.start()
        started = time.perf_counter()
        for w in workers:
            w.go()
        results = [w.finish(timeout) for w in workers]
        if meter is not None:
            meter.stop()
        return results, time.perf_counter() - started
    finally:
        for w in workers:
            w.kill()


# --- databases ---------------------------------------------------------------------------


async def create_database(prefix: str) -> tuple[str, str]:
    """A fresh database on the test server: (name, SQLAlchemy URL)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    return name, await databases.create_database(name)


async def drop_database(name: str) -> None:
    await databases.drop_database(name)


@contextlib.contextmanager
def database(prefix: str) -> Iterator[str]:
    name, url = asyncio.run(create_database(prefix))
    try:
        yield url
    finally:
        asyncio.run(drop_database(name))


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


# --- files -------------------------------------------------------------------------------


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def fill_file(path: Path, size: int, block: int = 4 * MIB) -> None:
    """A file of ``size`` pseudo-random bytes (incompressible, fast to make)."""
    seed = os.urandom(block)
    with path.open("wb") as fh:
        left = size
        n = 0
        while left > 0:
            piece = seed if n % 2 == 0 else seed[::-1]
            fh.write(piece[: min(left, block)])
            left -= block
            n += 1


# --- CPU accounting ----------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def pids_matching(*needles: str) -> list[int]:
    """Processes whose command line contains one of ``needles``."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if any(n in cmd for n in needles):
                    out.append(int(proc.name))
    return out


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    return (total - idle) / _TICK, total / _TICK


class CpuMeter:
    """CPU seconds spent by groups of processes between ``start()`` and ``stop()``.

    ``groups`` maps a name to a function listing the group's pids (called at both ends,
    so processes that come and go are counted from what is visible then).  ``machine``
    is the busy CPU time of the whole machine meanwhile: the difference is what other
    work on the machine took.
    """

    def __init__(self, groups: dict[str, Any]) -> None:
        self.groups = groups
        self._start: dict[str, dict[int, float]] = {}
        self._busy0 = (0.0, 0.0)
        self._t0 = 0.0
        self.result: dict[str, float] = {}

    def _sample(self) -> dict[str, dict[int, float]]:
        return {name: {p: cpu_seconds(p) for p in fn()} for name, fn in self.groups.items()}

    def start(self) -> CpuMeter:
        self._start = self._sample()
        self._busy0 = _machine_busy()
        self._t0 = time.perf_counter()
        return self

    def stop(self) -> dict[str, float]:
        end = self._sample()
        busy1 = _machine_busy()
        out = {}
        for name, pids in end.items():
            before = self._start.get(name, {})
            out[name] = round(sum(t - before.get(p, 0.0) for p, t in pids.items()), 2)
        out["machine_busy"] = round(busy1[0] - self._busy0[0], 2)
        out["wall"] = round(time.perf_counter() - self._t0, 2)
        out["others"] = round(
            out["machine_busy"]
            - sum(v for k, v in out.items() if k not in ("machine_busy", "wall")),
            2,
        )
        self.result = out
        return out


class Sampler:
    """A daemon thread calling :meth:`sample` every :attr:`period` seconds inside a
    ``with`` block (until ``sample`` returns False)."""

    period = 0.1

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Any:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set() and self.sample() is not False:
            self._stop.wait(self.period)

    def sample(self) -> bool | None:
        raise NotImplementedError
