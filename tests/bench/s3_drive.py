"""Scenario 3 alone, one key kind and size (a profiling aid, not part of ``make bench``).

Run: ``.venv/bin/python -m tests.bench.s3_drive classic|hybrid OFFICES [PROFILE_DIR]``
(for example ``hybrid 1000``).  Two ``lienthong-hub serve`` processes on a throwaway
PostgreSQL database, OFFICES offices long-polling, one directive to all of them; prints the
figures of :func:`tests.bench.s3_s5_offices.fanout` as JSON and, with PROFILE_DIR,
py-spy's summary of the hub (raw stacks kept there).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from . import s3_s5_offices as s35
from .common import database
from .run import FULL


def main(argv: list[str]) -> None:
    kind, offices = argv[0], int(argv[1])
    if kind not in ("classic", "hybrid"):
        raise SystemExit("the key kind is classic or hybrid")
    profile = Path(argv[2]) if len(argv) > 2 else None
    cfg = {**FULL, "fanout": offices}
    with tempfile.TemporaryDirectory() as tmp, database("lt_bench_s3d") as url:
        cluster, path, targets, _, _ = s35._setup(
            Path(tmp), "s3", url, cfg, kind == "hybrid", offices, 0
        )
        try:
            out = s35.fanout(cluster, path, targets, cfg, profile)
        finally:
            cluster.stop()
    summary = out.pop("profile", None)
    print(json.dumps(out, indent=1))
    if summary is not None:
        print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
