"""Sampling profiles of running processes with py-spy, summarised as top-N tables.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;... count``); the
summary gives each function's *own* share of the samples (the leaf frame) and its
*total* share (anywhere on the stack), the two views that say where the time goes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def py_spy() -> str | None:
    found = Path(sys.executable).parent / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy")


class Profiler:
    """``py-spy record`` on some pids for the life of a ``with`` block (or ``seconds``)."""

    def __init__(
        self, pids: list[int], out: Path, seconds: int = 600, rate: int = 200, gil: bool = True
    ) -> None:
        # With ``gil``, only samples of a thread holding the GIL count: Python actually
        # running, not waiting in a system call (on a busy machine a process is often
        # descheduled right in the send() that wakes PostgreSQL, which would otherwise
        # dominate a wall-clock profile).
        self.gil = gil
        self.pids = pids
        self.out = out
        self.seconds = seconds
        self.rate = rate
        self.procs: list[tuple[int, subprocess.Popen[bytes], Path]] = []

    def __enter__(self) -> Profiler:
        exe = py_spy()
        if exe is None:
            return self
        self.out.mkdir(parents=True, exist_ok=True)
        for pid in self.pids:
            path = self.out / f"py-spy-{pid}.txt"
            proc = subprocess.Popen(
                [exe, "record", "--pid", str(pid), "--format", "raw", "--rate", str(self.rate),
                 "--duration", str(self.seconds), "--nonblocking", "--output", str(path),
                 *(["--gil"] if self.gil else [])],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            self.procs.append((pid, proc, path))
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        for _, proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for _, proc, _ in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def summary(self, top: int = 15) -> dict[str, Any]:
        paths = [p for _, _, p in self.procs if p.exists()]
        return summarise(paths, top)


#: Whose functions the "total" view lists: the project's own code paths.
PROJECT = ("hub/", "protocol/", "nodes/")


def _frame_name(frame: str) -> str:
    """``function (pkg/module.py:123)`` -> ``function (pkg/module.py)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rstrip(')').rsplit(':', 1)[0]})" if where else name


def summarise(paths: list[Path], top: int = 15) -> dict[str, Any]:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    idle = 0
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
            frames = [f for f in frames if not f.startswith("thread ")]
            if not frames:
                continue
            samples += count
            leaf = _frame_name(frames[-1])
            if leaf.startswith(("select (", "poll (", "epoll")):
                idle += count
            own[leaf] += count
            for name in {_frame_name(f) for f in frames}:
                if name.split(" (", 1)[-1].startswith(PROJECT):
                    total[name] += count
    if not samples:
        return {"samples": 0}

    def share(c: Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * n / samples, 1)] for name, n in c.most_common(top)]

    return {
        "samples": samples,
        "idle_pct": round(100 * idle / samples, 1),
        "own_pct": share(own),
        "total_pct": share(total),
    }
