"""Waking long-polling mailboxes when something arrives for them.

In one process: an :class:`asyncio.Event` per waiting request, by organ.  Across processes
(several hubs on one PostgreSQL): ``pg_notify`` on a channel of this hub, sent *inside the
transaction* that creates the mailbox items, so PostgreSQL delivers it exactly when they
become visible; each process keeps one dedicated asyncpg connection LISTENing and wakes its
own waiters.  On SQLite there is one process by design, so in-process events suffice.

Notifications are a hint, never the truth: a woken request reads its mailbox from the
database, and waiters re-read it every few seconds anyway, so a notification lost while
the listener reconnects costs latency, not mail.

On PostgreSQL the notification is *the* wake-up, in the committing process too: its
code's :meth:`MailboxNotifier.wake` after the commit does nothing while the listener is up
(PostgreSQL delivers the notification to this process as well, a millisecond later), and
wakes this process's waiters itself while it is down.  One wake-up per change, always
after the change is visible -- which is what lets a long-poll skip a read:

The notifier remembers, per organ, the item ids of the last answer that held *everything*
in the mailbox (:meth:`reading`, :meth:`read`).  A wake-up of the organ forgets it, and so
does a wake-up of all (the listener reconnecting).  A request that acknowledges all of
those ids (or, with an empty mailbox remembered, none) then knows the mailbox is empty
without asking: :meth:`known_empty`, checked after it started listening, so anything
arriving from then on wakes it as usual.  Nothing is known while the listener is down on
PostgreSQL.  (Had the committing process also woken its own waiters at once, the read so
woken would often begin before the notification arrived, which then made it forget an
answer that held the change: half the skips were lost so in tests/bench scenario 5.)

A second channel (the first's name + ``_sessions``) says "sessions changed": a key was
revoked or superseded, so every hub process drops the bearer tokens it remembers
(:class:`hub.sessions.TokenCache`).  It is sent the same way, in the transaction that
makes the change (:func:`sessions_changed`; the CLI sends it too), and a listener that
reconnects drops them as well, since it may have missed one; while it is away the
remembered tokens are not used (:meth:`MailboxNotifier.hears_sessions`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any, Final

import asyncpg
from sqlalchemy import String, bindparam, func, select, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from .db import run
from .logs import get_logger

#: PostgreSQL refuses payloads of 8000 bytes or more.
_PAYLOAD_MAX: Final = 7000
_NOTIFY: Final = select(
    func.pg_notify(bindparam("channel", type_=String), bindparam("payload", type_=String))
)
_WAKE_ALL: Final = "*"
#: Most organs whose last answer is remembered (all forgotten past it: a few bytes each).
_SEEN_MAX: Final = 100_000
_SESSIONS: Final = "_sessions"
log = get_logger("hub.notify")


def channel_for(hub_kid: bytes) -> str:
    """The mailbox channel of the hub with this signing key id (one per hub database)."""
    return f"lienthong_{hub_kid.hex()[:16]}"


async def sessions_changed(session: AsyncSession, channel: str) -> None:
    """Queue "sessions changed" in ``session``'s transaction (PostgreSQL only).

    For code outside a running hub (the CLI); handlers use
    :meth:`MailboxNotifier.sessions_changed` and, after the commit,
    :meth:`MailboxNotifier.sessions_dropped`, which clear their own process too.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    await session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": channel + _SESSIONS})


class MailboxNotifier:
    def __init__(self, channel: str) -> None:
        self.channel = channel
        self._waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._conn: Any = None
        self._postgres = False
        self._on_sessions: list[Callable[[], None]] = []
        #: Organ -> the ids of its last complete answer, or the token of a read running.
        self._seen: dict[str, frozenset[int] | object] = {}
        self.closing = False

    # -- in-process ---------------------------------------------------------------------

    @contextlib.contextmanager
    def listen(self, organ: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self._waiters[organ].add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(organ)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[organ]

    @property
    def hears_itself(self) -> bool:
        """Whether this process's changes wake it through PostgreSQL (the listener is up)."""
        return self._postgres and self._conn is not None

    def wake(self, organs: Iterable[str]) -> None:
        """Something for ``organs`` was committed by this process (and notified in its
        transaction, on PostgreSQL): wake their waiters, unless the notification will."""
        if not self.hears_itself:
            self.wake_here(organs)

    def wake_here(self, organs: Iterable[str]) -> None:
        """Wake the organs' waiters and forget what their mailboxes held, now."""
        for organ in organs:
            if organ == _WAKE_ALL:
                self.wake_all()
                return
            self._seen.pop(organ, None)
            for event in self._waiters.get(organ, ()):
                event.set()

    def wake_all(self) -> None:
        self._seen.clear()
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()

    # -- what a mailbox held --------------------------------------------------------------

    def reading(self, organ: str) -> object:
        """A read of ``organ``'s mailbox starts: the token to give :meth:`read`."""
        if len(self._seen) >= _SEEN_MAX:
            self._seen.clear()
        token = object()
        self._seen[organ] = token
        return token

    def read(self, organ: str, token: object, ids: Collection[int] | None) -> None:
        """The read of ``token`` found the whole mailbox to be ``ids`` (None: only part of
        it).  Remembered unless the organ was woken meanwhile (or another read began)."""
        if self._seen.get(organ) is not token:
            return
        if ids is None:
            del self._seen[organ]
        else:
            self._seen[organ] = frozenset(ids)

    def known_empty(self, organ: str, acknowledged: Collection[int]) -> bool:
        """Whether ``organ``'s mailbox is empty for sure: its last complete answer was
        ``acknowledged`` whole (this request's acknowledgement is done) and nothing woke
        it since.  Ask only while listening for ``organ``: later arrivals wake the waiter."""
        if self._postgres and not self.hears_itself:
            return False
        seen = self._seen.get(organ)
        return isinstance(seen, frozenset) and seen.issubset(acknowledged)

    # -- across processes ---------------------------------------------------------------

    async def publish(self, session: AsyncSession | AsyncConnection, organs: Iterable[str]) -> None:
        """Queue a notification in ``session``'s transaction (PostgreSQL only)."""
        if not self._postgres:
            return
        batch: list[str] = []
        size = 0
        for organ in sorted(set(organs)):
            if batch and size + len(organ) + 1 > _PAYLOAD_MAX:
                await self._notify(session, batch)
                batch, size = [], 0
            batch.append(organ)
            size += len(organ) + 1
        if batch:
            await self._notify(session, batch)

    async def _notify(self, session: AsyncSession | AsyncConnection, organs: list[str]) -> None:
        await run(session, _NOTIFY, {"channel": self.channel, "payload": ",".join(organs)})

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        if isinstance(payload, str):
            self.wake_here(payload.split(","))

    # -- sessions changed -----------------------------------------------------------------

    def on_sessions_changed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever sessions may have changed (here or in another process)."""
        self._on_sessions.append(callback)

    def hears_sessions(self) -> bool:
        """Whether a change of sessions in another process reaches this one now: always on
        SQLite (one process), on PostgreSQL while the listening connection is up."""
        return not self._postgres or self._conn is not None

    def sessions_dropped(self) -> None:
        for callback in self._on_sessions:
            callback()

    async def sessions_changed(self, session: AsyncSession) -> None:
        """Sessions change in ``session``'s transaction: tell the other hub processes.

        They hear it when PostgreSQL delivers the notification at commit.  Call
        :meth:`sessions_dropped` after the commit for this process (a lookup that ran
        before the commit may have remembered the old rows).
        """
        self.sessions_dropped()
        if self._postgres:
            await sessions_changed(session, self.channel)

    def _on_sessions_notify(self, _conn: Any, _pid: int, _channel: str, _payload: object) -> None:
        self.sessions_dropped()
        log.info("sessions changed: remembered bearer tokens dropped")

    async def start(self, url: URL) -> None:
        """On PostgreSQL, LISTEN on a dedicated connection (reconnecting when it drops)."""
        if url.get_backend_name() != "postgresql":
            return
        self._postgres = True
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._listen_loop(dsn, ready), name="mailbox-listen")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), timeout=10)

    async def _listen_loop(self, dsn: str, ready: asyncio.Event) -> None:
        backoff = 0.5
        while not self.closing:
            lost = asyncio.Event()
            conn = None
            try:
                conn = await asyncpg.connect(dsn)
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(self.channel, self._on_notify)
                await conn.add_listener(self.channel + _SESSIONS, self._on_sessions_notify)
                self._conn = conn
                ready.set()
                backoff = 0.5
                self.wake_all()  # whatever was sent while we were away
                self.sessions_dropped()
                await lost.wait()
                log.warning("mailbox listener connection lost")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("mailbox listener cannot connect", error=type(exc).__name__)
            finally:
                self._conn = None
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            if not self.closing:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def close(self) -> None:
        """Wake every waiter (they answer empty) and stop listening."""
        self.closing = True
        self.wake_all()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
