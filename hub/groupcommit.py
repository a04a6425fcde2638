"""Group commit: concurrent requests of one process share one transaction.

A request that finds no run of its key going on starts one at once; those that arrive
while it runs wait and then share the next run.  Alone, a request waits for nobody;
under load, many small requests cost one transaction, one round of queries and one
commit together instead of each their own -- the work per request falls as the load
rises, which is what lets a single process keep up.

If a shared run fails, each request of it runs again alone, so that an unexpected
failure reaches only the request that caused it.  A request cancelled before its run
starts is left out; one cancelled while its run is going on is carried out anyway (the
client's retry finds it done: every grouped operation is idempotent by packet or item
id).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from .logs import get_logger

T = TypeVar("T")
R = TypeVar("R")
log = get_logger("hub.groupcommit")

#: A run of some items; one request's part of a run's outcome.
Run = Callable[[Sequence[T]], Awaitable[R]]
Split = Callable[[R, Sequence[T]], R]  # generic in (R, T): written Split[R, T]


class GroupCommit(Generic[T, R]):
    """Requests of items ``T`` whose runs give an outcome ``R``, grouped by key."""

    def __init__(self, max_items: int = 500) -> None:
        self.max_items = max_items
        self._waiting: dict[str, list[tuple[list[T], asyncio.Future[R]]]] = {}
        self._leaders: dict[str, asyncio.Task[None]] = {}
        #: Runs made and requests served (a figure for tests and metrics).
        self.runs = 0
        self.requests = 0

    async def submit(self, key: str, items: Sequence[T], run: Run[T, R], split: Split[R, T]) -> R:
        """``run(items)`` -- shared with other requests of ``key`` -- and this request's part.

        ``split(outcome, items)`` gives one request's part of a shared run's outcome.
        """
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append((list(items), future))
        if key not in self._leaders:
            # Not in the starting request's context: the run serves many requests.
            self._leaders[key] = asyncio.get_running_loop().create_task(
                self._lead(key, run, split), context=contextvars.Context()
            )
        return await future

    def _take(
        self, queue: list[tuple[list[T], asyncio.Future[R]]]
    ) -> list[tuple[list[T], asyncio.Future[R]]]:
        taken: list[tuple[list[T], asyncio.Future[R]]] = []
        count = 0
        while queue and (not taken or count + len(queue[0][0]) <= self.max_items):
            items, future = queue.pop(0)
            if not future.done():  # cancelled before its run: left out
                taken.append((items, future))
                count += len(items)
        return taken

    async def _lead(self, key: str, run: Run[T, R], split: Split[R, T]) -> None:
        taken: list[tuple[list[T], asyncio.Future[R]]] = []
        try:
            while queue := self._waiting.get(key):
                taken = self._take(queue)
                if taken:
                    await self._run(taken, run, split)
        finally:
            del self._leaders[key]
            left = [*taken, *self._waiting.pop(key, [])]
            for _, future in left:  # only when the leader itself was cancelled
                if not future.done():
                    future.cancel()

    async def _run(
        self, taken: list[tuple[list[T], asyncio.Future[R]]], run: Run[T, R], split: Split[R, T]
    ) -> None:
        self.runs += 1
        self.requests += len(taken)
        try:
            outcome = await run([item for items, _ in taken for item in items])
        except Exception as exc:
            if len(taken) == 1:
                _settle(taken[0][1], exc)
                return
            log.warning("a shared run failed; each request runs alone", error=type(exc).__name__)
            for items, future in taken:
                try:
                    alone = await run(items)
                except Exception as own:
                    _settle(future, own)
                else:
                    _settle(future, alone)
            return
        for items, future in taken:
            _settle(future, split(outcome, items) if len(taken) > 1 else outcome)


def _settle(future: asyncio.Future[R], outcome: R | Exception) -> None:
    if future.done():
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
