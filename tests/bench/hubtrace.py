"""``lienthong-hub serve`` with a count of database round trips per API route (diagnostics).

``python -m tests.bench.hubtrace OUT.json serve --data ... --port 0`` runs the hub's own
CLI unchanged, with two wrappers installed first (nothing in ``hub/`` is modified):

* around the hub's request middleware: a context variable holding the request's route
  pattern, and a count of requests per route;
* around the asyncpg calls SQLAlchemy makes (statement execution, ``executemany``,
  ``BEGIN``, ``COMMIT``, ``ROLLBACK``; savepoints are statements): each one is a round trip to
  PostgreSQL, counted against the route of the request that awaited it ("background"
  for the sequencer, the receipt signer, group-commit runs and other tasks), and by
  statement (its first words).

On exit the counts go to OUT.json; :mod:`tests.bench.s1_small` divides them by the
packets that went through: round trips per packet, by route.
"""

from __future__ import annotations

import atexit
import contextvars
import functools
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

ROUTE: contextvars.ContextVar[str] = contextvars.ContextVar("route", default="background")
TRIPS: Counter[str] = Counter()
#: Of those, BEGIN / COMMIT / ROLLBACK.
TX: Counter[str] = Counter()
REQUESTS: Counter[str] = Counter()
#: Round trips by route and statement (its first words): which statements to work on.
STATEMENTS: Counter[str] = Counter()


def _statement(sql: Any) -> str:
    words = " ".join(str(sql).split())
    return words[:90]


def _count(fn: Any, tx: bool = False) -> Any:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        route = ROUTE.get()
        TRIPS[route] += 1
        if tx:
            TX[route] += 1
            STATEMENTS[f"{route} | {fn.__name__.upper()}"] += 1
        elif len(args) > 1:
            STATEMENTS[f"{route} | {_statement(args[1])}"] += 1
        return await fn(*args, **kwargs)

    return wrapper


def install(out: Path) -> None:
    import asyncpg.transaction
    from aiohttp import web
    from sqlalchemy.dialects.postgresql import asyncpg as sa_asyncpg

    import hub.app

    cursor = sa_asyncpg.AsyncAdapt_asyncpg_cursor
    cursor._prepare_and_execute = _count(cursor._prepare_and_execute)  # type: ignore[method-assign]
    cursor._executemany = _count(cursor._executemany)  # type: ignore[method-assign]
    tx = asyncpg.transaction.Transaction
    for name in ("start", "commit", "rollback"):
        setattr(tx, name, _count(getattr(tx, name), tx=True))

    original = hub.app.problem_middleware

    @web.middleware
    async def traced(request: web.Request, handler: Any) -> web.StreamResponse:
        resource = request.match_info.route.resource
        pattern = resource.canonical if resource is not None else "unmatched"
        name = f"{request.method} {pattern}"
        REQUESTS[name] += 1
        token = ROUTE.set(name)
        try:
            return await original(request, handler)
        finally:
            ROUTE.reset(token)

    hub.app.problem_middleware = traced  # type: ignore[assignment]

    def dump() -> None:
        doc = {
            "round_trips": TRIPS,
            "transaction_control": TX,
            "requests": REQUESTS,
            "statements": STATEMENTS,
        }
        out.write_text(json.dumps(doc, indent=1))

    atexit.register(dump)


def main() -> None:
    out = Path(sys.argv[1])
    install(out)
    from hub.cli import main as hub_main

    sys.argv = ["lienthong-hub", *sys.argv[2:]]
    hub_main()


if __name__ == "__main__":
    main()
