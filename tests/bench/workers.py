"""Entry point of every benchmark client process: ``python -m tests.bench.workers ROLE``.

Protocol with :class:`tests.bench.common.Worker`: one JSON line (the job) on standard
input; the worker sets itself up and prints ``ready``; it starts on a ``go`` line and
prints one JSON line with its result.  Roles that run until told (pollers) stop on the
next line.  Standard output carries nothing else (logs go to standard error).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from .common import raise_fd_limit

Role = Callable[[dict[str, Any], Callable[[], Awaitable[None]]], Awaitable[dict[str, Any]]]


def _roles() -> dict[str, Role]:
    from . import bare, lt_clients, mailbench

    return {
        "small_cycle": lt_clients.small_cycle,
        "pollers": lt_clients.pollers,
        "steady_senders": lt_clients.steady_senders,
        "fanout_sender": lt_clients.fanout_sender,
        "bare_client": bare.client,
        "mail_client": mailbench.client,
    }


async def _main(role: str) -> None:
    job = json.loads(sys.stdin.readline())
    raise_fd_limit()
    loop = asyncio.get_running_loop()
    cpu0 = [0.0]

    def cpu() -> float:
        """This process's CPU time and that of its finished children (openssl ...)."""
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + kids.ru_utime + kids.ru_stime

    async def go() -> None:
        print("ready", flush=True)
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if line.strip() != "go":
            raise SystemExit(f"expected go, got {line!r}")
        cpu0[0] = cpu()

    result = await _roles()[role](job, go)
    result["cpu_seconds"] = round(cpu() - cpu0[0], 2)
    print(json.dumps(result), flush=True)


def main() -> None:
    role = sys.argv[1]
    try:
        asyncio.run(_main(role))
    except Exception:
        traceback.print_exc()
        print(json.dumps({"failed": traceback.format_exc(limit=5)}), flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
