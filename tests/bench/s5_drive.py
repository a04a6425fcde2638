"""Scenario 5 alone, at a chosen rate and length (a profiling aid, not part of ``make bench``).

Run: ``.venv/bin/python -m tests.bench.s5_drive RATE SECONDS OFFICES [PROFILE_DIR]
[SETTING=VALUE ...]`` (for example ``150 15 300``, or ``100 30 2000 receipt_wait=0``: a
setting goes to the hub processes as ``LIENTHONG_<SETTING>``).  Two ``lienthong-hub
serve`` processes on a throwaway PostgreSQL database, OFFICES offices long-polling,
single-packet submissions at RATE per second for SECONDS; prints the figures of
:func:`tests.bench.s3_s5_offices.connections` as JSON and, with PROFILE_DIR, py-spy's
summary of the hub (raw stacks kept there).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from . import s3_s5_offices as s35
from .run import QUICK


def main(argv: list[str]) -> None:
    settings = dict(a.split("=", 1) for a in argv[3:] if "=" in a)
    argv = [a for a in argv if "=" not in a]
    rate, seconds, offices = float(argv[0]), int(argv[1]), int(argv[2])
    profile = Path(argv[3]) if len(argv) > 3 else None
    cfg = {
        **QUICK,
        "rate": rate,
        "rate_seconds": seconds,
        "connections": offices,
        "max_inflight": 400,
        "hub_settings": settings,
        "trace": os.environ.get("LT_BENCH_TRACE") == "1",
    }
    s35.drive(
        "s5",
        cfg,
        False,
        offices,
        cfg["senders"],
        lambda cluster, path, targets, senders: s35.connections(
            cluster, path, targets, senders, cfg, profile
        ),
    )


if __name__ == "__main__":
    main(sys.argv[1:])
