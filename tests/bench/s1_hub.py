"""Scenario 1, the Lienthong side only: hub CPU and database round trips per packet.

``python -m tests.bench.s1_hub [--count N] [--no-profile]`` runs
:func:`tests.bench.s1_small.lienthong` (real hub processes on PostgreSQL, client processes
doing the full cycle) without the bare baseline and the e-mail peers, at a count large
enough for steady figures, and prints what matters when working on the hub's small-packet
path: rate, hub CPU ms per packet, round trips per packet by route, the top of the profile.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from .common import loadavg, raise_fd_limit
from .run import QUICK
from .s1_small import lienthong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--out", help="write the whole result here (JSON)")
    parser.add_argument("--work", help="keep the working folder (raw py-spy stacks) here")
    args = parser.parse_args()
    raise_fd_limit()
    cfg = {**QUICK, "count": args.count, "deadline": 120}
    before = loadavg()
    if args.work:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        res = lienthong(work, cfg, not args.no_profile)
    else:
        with tempfile.TemporaryDirectory(prefix="lt-s1-") as tmp:
            res = lienthong(Path(tmp), cfg, not args.no_profile)
    res["loadavg_before_run"] = before
    res["loadavg_after_run"] = loadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1, ensure_ascii=False))
    cpu = res["cpu_seconds"]
    summary = {
        "completed": res["completed"],
        "errors": res["error_count"],
        "per_s": res["per_s"],
        "hub_ms_per_packet": cpu["ms_per_doc"].get("hub"),
        "postgres_ms_per_packet": cpu["ms_per_doc"].get("postgres"),
        "clients_ms_per_packet": cpu["ms_per_doc"].get("clients"),
        "fetched_receipts_verified": res["fetched_receipts_verified"],
        "load": [before, res["loadavg_after_run"]],
    }
    json.dump(summary, sys.stdout, indent=1)
    print()
    if "round_trips_per_packet" in res:
        json.dump(res["round_trips_per_packet"], sys.stdout, indent=1)
        print()
    prof = res.get("profile")
    if prof:
        for name in ("own_pct", "total_pct"):
            print(name)
            for fn, pct in prof[name][:25]:
                print(f"  {pct:5.1f}  {fn}")
    if res["errors"] or res.get("hub_errors"):
        print("errors:", res["errors"], res.get("hub_errors"))


if __name__ == "__main__":
    main()
