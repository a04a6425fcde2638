"""The audit log's sequencer: pending events become indexed entries under a signed checkpoint.

Each batch is ONE database transaction that

1. takes the sequencer lock (PostgreSQL: ``pg_try_advisory_xact_lock``; see below),
2. deletes the oldest pending rows (by id, up to ``batch_size`` of them and
   ``batch_bytes`` of data) from ``log_pending``, ``RETURNING`` them,
3. re-reads the newest checkpoint -- the tree size and root -- from the database,
4. gives the rows the next indexes, appends their leaf hashes to the Merkle frontier and
   inserts the entries and every new stored hash,
5. checks, from the hashes now in the database, that the new tree's root is what the
   frontier computed and that a consistency proof from the newest checkpoint verifies,
6. signs the new checkpoint and inserts it,

and commits.  A crash (or an exception) anywhere before the commit rolls all of it back:
the pending rows are still pending, no index was used, nothing was signed.  So the log has
no gap and no partial batch whatever happens, and the next batch -- in this process or
another -- simply starts again from the newest checkpoint in the database.

One sequencer at a time
-----------------------
On PostgreSQL the batch transaction starts with ``pg_try_advisory_xact_lock``.  A
transaction-level lock (rather than a session-level one held by a "leader" connection) was
chosen because the lock and the writes it protects are then the same transaction: the lock
is released exactly when the batch commits or rolls back, there is no long-lived connection
whose silent death could leave a process believing it still leads while another takes
over, and a standby needs no failover logic -- every hub process runs a sequencer, each tick
one of them gets the lock and the others' attempt costs one cheap statement.  Because each
batch re-reads the tree size and checks its cached frontier against the newest checkpoint
(rebuilding it from the stored hashes when another process sequenced meanwhile), whichever
process holds the lock continues the same tree.  The primary keys on entry index and
checkpoint size are a second line: two writers could never both commit the same index.

On SQLite (the embedded single-process default) every transaction of the hub starts with
``BEGIN IMMEDIATE`` (:mod:`hub.db`), which takes the database's write lock at once, so even
two processes on one file would sequence one after the other; the batch's first statement
is the ``DELETE`` all the same, so the write lock is held before anything is read.

Never two inconsistent checkpoints
----------------------------------
The frontier used to extend the tree must reproduce the root of the newest signed
checkpoint (step 3), and the hashes written must reproduce the new root with a verifying
consistency proof (step 5); otherwise the batch fails with :class:`LogIntegrityError` and
nothing is signed -- the sequencer stops extending a log whose stored state no longer
matches what it signed (a damaged or edited database) and logs the error every interval.
Only one checkpoint is ever signed per tree size (the primary key), and sizes only grow:
each sequencer also remembers the newest checkpoint it has seen and refuses to continue
from a database that went back behind it (restored from an old backup, rows deleted), which
would otherwise sign a second, different checkpoint for a size already published.  Across
a restart that memory is gone; witnesses' cosignatures are what catch such a fork then.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from sqlalchemy import BigInteger, bindparam, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from protocol.bundle import log_signer
from protocol.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from protocol.errors import LocalError
from protocol.keys import SigningPrivateKey
from protocol.merkle import Frontier, consistency_proof, leaf_hash, tree_hash, verify_consistency

from ..db import run
from ..logs import get_logger
from .models import LogCheckpoint, LogEntry, LogHash, LogPending
from .store import LogIntegrityError, StoredCheckpoint, latest_checkpoint, with_hashes

log = get_logger("hub.auditlog")

#: The advisory lock key every hub process of one database agrees on (a signed bigint).
LOCK_KEY: Final = int.from_bytes(
    hashlib.sha256(b"lienthong/v1 audit log sequencer").digest()[:8], "big", signed=True
)
DEFAULT_BATCH_SIZE: Final = 5000
#: Most entry bytes one batch holds in memory (entries may be up to 256 KiB each).
DEFAULT_BATCH_BYTES: Final = 16 * 1024 * 1024
DEFAULT_INTERVAL: Final = 1.0
#: Shortest time between two batches brought forward by :meth:`Sequencer.notify`.
DEFAULT_MIN_INTERVAL: Final = 0.05
#: Longest wait after a failed batch (the wait doubles from ``interval`` up to this).
MAX_BACKOFF: Final = 30.0

# The batch's statements, built once (:func:`hub.db.run` runs them on asyncpg directly).
_TRY_LOCK = select(func.pg_try_advisory_xact_lock(bindparam("key", type_=BigInteger)))
_TAKE_PENDING = (
    delete(LogPending)
    .where(LogPending.id <= bindparam("end"))
    .returning(LogPending.id, LogPending.data, LogPending.packet_id)
)
_INSERT_ENTRIES = insert(LogEntry)
_INSERT_HASHES = insert(LogHash)
_INSERT_CHECKPOINT = insert(LogCheckpoint)

#: A test hook called at named points inside the batch transaction; raising aborts it.
Fault = Callable[[str], Awaitable[None] | None]


class Sequencer:
    """Assigns indexes to pending events in batches and signs a checkpoint per batch.

    ``key`` is the hub's signing key (its Ed25519 part signs; C2SP notes are Ed25519) with
    ``origin`` (``lienthong.hub/<hub name>``), or a ready :class:`NoteSigner` whose name is
    the origin.  Run :meth:`run` as a background task, or call :meth:`sequence_once`.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        key: SigningPrivateKey | NoteSigner,
        origin: str | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        interval: float = DEFAULT_INTERVAL,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        clock: Callable[[], float] = time.time,
        lock_key: int = LOCK_KEY,
        time_extension: bool = True,
        fault: Fault | None = None,
    ) -> None:
        if isinstance(key, NoteSigner):
            if origin is not None and origin != key.name:
                raise LocalError("the note signer's name is the log's origin")
            self._signer = key
        else:
            if origin is None:
                raise LocalError("a log origin is needed with a hub signing key")
            self._signer = log_signer(key, origin)
        if batch_size < 1 or batch_bytes < 1 or interval <= 0 or min_interval < 0:
            raise LocalError("need batch_size, batch_bytes >= 1, interval > 0, min_interval >= 0")
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self.interval = interval
        self.min_interval = min(min_interval, interval)
        self._clock = clock
        self._lock_key = lock_key
        self._time_extension = time_extension
        self._fault = fault
        self._frontier: Frontier | None = None
        self.more = False
        """Whether the last batch stopped at a bound (more may be pending at once)."""
        # The last id of the next batch: pending rows in id order, at most batch_size of
        # them and no more than batch_bytes of entry data (but always at least one row).
        size = func.length(LogPending.data)
        ranked = (
            select(
                LogPending.id,
                size.label("size"),
                func.sum(size).over(order_by=LogPending.id).label("total"),
            )
            .order_by(LogPending.id)
            .limit(batch_size)
            .subquery()
        )
        self._batch_end = select(func.max(ranked.c.id)).where(
            ranked.c.total - ranked.c.size < batch_bytes
        )
        #: The newest (size, root) this process has seen signed: the database must never
        #: go back behind it (a restored or edited database would fork the log).
        self._seen: tuple[int, bytes] | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    @property
    def origin(self) -> str:
        return self._signer.name

    @property
    def signer(self) -> NoteSigner:
        return self._signer

    def notify(self) -> None:
        """Ask for a batch now rather than at the next tick (e.g. after many appends)."""
        self._wake.set()

    async def _hook(self, point: str) -> None:
        if self._fault is not None:
            result = self._fault(point)
            if inspect.isawaitable(result):
                await result

    async def sequence_once(self) -> int | None:
        """Run one batch.  The number of entries sequenced, or None if another holds the lock.

        Signs the empty tree's checkpoint when the log has none yet.
        """
        async with self._lock:
            try:
                staged, count = await self._batch()
            except BaseException:
                # The transaction rolled back (or may not have committed): rebuild from the
                # database next time rather than trust the cached frontier.
                self._frontier = None
                raise
            if staged is not None:
                self._frontier = staged
                self._seen = (staged.size, staged.root())
            return count

    async def _batch(self) -> tuple[Frontier | None, int | None]:
        async with self._engine.connect() as conn, conn.begin():
            if self._postgres:
                locked = (await run(conn, _TRY_LOCK, {"key": self._lock_key})).scalar()
                if not locked:
                    return None, None
            await self._hook("locked")
            # Two statements, each a plain index range scan whatever the planner believes
            # about log_pending (it is often analysed while empty): a DELETE ... IN
            # (subquery) can become a nested loop that rescans the subquery per row.  Rows
            # below the end that committed in between are deleted -- and sequenced -- too.
            end = (await run(conn, self._batch_end)).scalar()
            rows = []
            if end is not None:
                rows = list(await run(conn, _TAKE_PENDING, {"end": end}))
            last = await latest_checkpoint(conn)
            self._check_not_behind(last)
            self.more = len(rows) == self.batch_size or (
                sum(len(row[1]) for row in rows) >= self.batch_bytes
            )
            if not rows and last is not None:
                return None, 0
            rows.sort(key=lambda row: row[0])
            frontier = await self._current_frontier(conn, last)
            staged = frontier.copy()
            now = int(self._clock())
            entries: list[dict[str, Any]] = []
            hashes: list[dict[str, Any]] = []
            for _, data, packet_id in rows:
                data = bytes(data)
                lh = leaf_hash(data)
                index = staged.size
                for level, idx, h in staged.append(lh):
                    hashes.append({"level": level, "idx": idx, "hash": h})
                entries.append(
                    {
                        "idx": index,
                        "data": data,
                        "leaf_hash": lh,
                        "packet_id": None if packet_id is None else bytes(packet_id),
                        "created_at": now,
                    }
                )
            if entries:
                await run(conn, _INSERT_ENTRIES, entries)
                await self._hook("entries")
                await run(conn, _INSERT_HASHES, hashes)
                await self._hook("hashes")
                await self._check_extends(conn, frontier, staged)
            root = staged.root()
            extensions = (f"time {now}",) if self._time_extension else ()
            note = sign_checkpoint(
                Checkpoint(self.origin, staged.size, root, extensions), self._signer
            )
            await run(
                conn,
                _INSERT_CHECKPOINT,
                {"size": staged.size, "root": root, "note": note.decode(), "created_at": now},
            )
            await self._hook("checkpoint")
        if entries:
            log.info(
                "audit log sequenced", entries=len(entries), tree_size=staged.size, root=root.hex()
            )
        return staged, len(entries)

    def _check_not_behind(self, last: StoredCheckpoint | None) -> None:
        """The newest checkpoint in the database is not older than one already seen."""
        seen = self._seen
        if last is not None and (seen is None or last.size > seen[0]):
            self._seen = (last.size, last.root)
            return
        if seen is None:
            return
        if last is None or last.size < seen[0]:
            raise LogIntegrityError(
                f"the log went back from size {seen[0]} to {0 if last is None else last.size}: "
                "refusing to sign a checkpoint that would fork it"
            )
        if last.root != seen[1]:
            raise LogIntegrityError(f"the signed root at size {last.size} has changed")

    async def _current_frontier(
        self, conn: AsyncConnection, last: StoredCheckpoint | None
    ) -> Frontier:
        """The frontier of the newest checkpoint's tree, proven to reproduce its root."""
        if last is None:
            if await conn.scalar(select(func.count()).select_from(LogEntry)):
                raise LogIntegrityError("log entries exist but no checkpoint covers them")
            return Frontier()
        cached = self._frontier
        if cached is not None and cached.size == last.size and cached.root() == last.root:
            return cached
        size = last.size
        frontier = await with_hashes(conn, lambda r: Frontier.from_reader(size, r))
        if frontier.root() != last.root:
            raise LogIntegrityError(
                f"the stored hashes do not reproduce the signed root at size {size}: "
                "refusing to extend the log"
            )
        return frontier

    async def _check_extends(self, conn: AsyncConnection, old: Frontier, new: Frontier) -> None:
        """Before signing: the hashes now stored give the new root and prove it extends the old."""
        old_size, new_size = old.size, new.size
        stored_root, proof = await with_hashes(
            conn,
            lambda r: (tree_hash(new_size, r), consistency_proof(old_size, new_size, r)),
        )
        if stored_root != new.root():
            raise LogIntegrityError(f"the stored hashes do not give the new root at {new_size}")
        try:
            verify_consistency(old_size, new_size, old.root(), stored_root, proof)
        except Exception as exc:
            raise LogIntegrityError(
                f"tree {new_size} would not extend the signed tree {old_size}: {exc}"
            ) from exc

    async def run(self) -> None:
        """Sequence forever: a batch at least every ``interval`` while events arrive.

        A full batch is followed at once by the next (a backlog drains at full speed);
        :meth:`notify` brings the next batch forward, but never closer than
        ``min_interval`` to the previous one (so a burst of pokes still groups its events
        into few batches and checkpoints).  An error is logged and retried with a growing
        wait.  Cancel the task to stop.
        """
        backoff = self.interval
        while True:
            # Cleared before the batch: a poke that arrives during it brings the next one.
            self._wake.clear()
            started = time.monotonic()
            try:
                count = await self.sequence_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("audit log sequencing failed", retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            backoff = self.interval
            if count and self.more:
                await asyncio.sleep(0)
                continue
            remaining = started + self.interval - time.monotonic()
            if remaining > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), remaining)
            gap = started + self.min_interval - time.monotonic()
            if gap > 0:
                await asyncio.sleep(gap)


async def run_sequencer(
    engine: AsyncEngine,
    key: SigningPrivateKey | NoteSigner,
    origin: str | None = None,
    **options: Any,
) -> None:
    """Build a :class:`Sequencer` and run it until cancelled."""
    await Sequencer(engine, key, origin, **options).run()
