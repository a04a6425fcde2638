"""Scenario 3 alone, one key kind and size (a profiling aid, not part of ``make bench``).

Run: ``.venv/bin/python -m tests.bench.s3_drive classic|hybrid OFFICES [PROFILE_DIR]``
(for example ``hybrid 1000``).  Two ``lienthong-hub serve`` processes on a throwaway
PostgreSQL database, OFFICES offices long-polling, one directive to all of them; prints the
figures of :func:`tests.bench.s3_s5_offices.fanout` as JSON and, with PROFILE_DIR,
py-spy's summary of the hub (raw stacks kept there).
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import s3_s5_offices as s35
from .run import FULL


def main(argv: list[str]) -> None:
    kind, offices = argv[0], int(argv[1])
    if kind not in ("classic", "hybrid"):
        raise SystemExit("the key kind is classic or hybrid")
    profile = Path(argv[2]) if len(argv) > 2 else None
    cfg = {**FULL, "fanout": offices}
    s35.drive(
        "s3",
        cfg,
        kind == "hybrid",
        offices,
        0,
        lambda cluster, path, targets, _: s35.fanout(cluster, path, targets, cfg, profile),
    )


if __name__ == "__main__":
    main(sys.argv[1:])
