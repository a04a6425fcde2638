"""Reading the audit log back: checkpoints, entries, proofs and per-packet bundles.

Everything here takes an ``AsyncConnection`` and reads; only :func:`store_cosignature`
writes.  Stored hashes are immutable once committed and always committed together with the
checkpoint that covers them, so no read needs more isolation than READ COMMITTED: any
checkpoint a query sees has all its entries and hashes visible to the next query.

Proofs from the database in one round trip
------------------------------------------
:mod:`protocol.merkle` is sans-IO: its :class:`~protocol.merkle.HashReader` is synchronous.
The coordinates a root or proof needs depend only on tree sizes and indexes, never on hash
values, so :func:`with_hashes` runs the protocol function twice: once against a recorder
that notes every ``(level, index)`` asked for (and answers with zeros), then -- after one
batched ``SELECT`` of exactly those rows -- against the fetched hashes.  Any number of
proofs can share one fetch (a bundle's proofs do).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final, TypeVar

from sqlalchemy import Select, bindparam, func, insert, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from protocol.audit import parse_event
from protocol.bundle import BundleEvent, encode_bundle
from protocol.checkpoint import (
    MAX_SIGNATURES,
    Checkpoint,
    CosignatureVerifier,
    parse_note,
)
from protocol.errors import LocalError, RemoteError
from protocol.merkle import HASH_SIZE, HashReader, consistency_proof, inclusion_proof

from ..db import run
from .models import LogCheckpoint, LogCosignature, LogEntry, LogHash

T = TypeVar("T")

#: Most entries one ``entries`` call returns.
MAX_ENTRIES: Final = 1000
#: Most bytes of entry data one ``entries`` call returns (it stops early past this).
MAX_ENTRIES_BYTES: Final = 4 * 1024 * 1024
#: Most events one packet's bundle holds (a directive to every office of a province, each
#: fetching and answering with several receipts, stays well below).
MAX_BUNDLE_EVENTS: Final = 50_000
#: Pairs per batched hash SELECT (keeps bind parameters well under every driver's limit).
_HASH_CHUNK: Final = 4000

_ZERO: Final = bytes(HASH_SIZE)


class LogIntegrityError(LocalError):
    """The log's own tables contradict themselves (a stored hash missing or wrong).

    Never caused by a client's request: it means the database was damaged or edited, and
    the sequencer refuses to sign anything on top of it.
    """


@asynccontextmanager
async def reading(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for this module's reads.

    On PostgreSQL it runs without a transaction (autocommit): every read here is correct
    at READ COMMITTED statement by statement (see the module docstring), and BEGIN and
    ROLLBACK would be two more round trips per request.  SQLite keeps the hub's own
    transaction handling (``hub.db``).
    """
    async with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


# --- stored hashes ------------------------------------------------------------------------


class _Recorder:
    """A HashReader that records what is asked and answers with zeros."""

    __slots__ = ("wanted",)

    def __init__(self) -> None:
        self.wanted: list[tuple[int, int]] = []

    def read_hashes(self, indexes: Sequence[tuple[int, int]]) -> list[bytes]:
        self.wanted.extend(indexes)
        return [_ZERO] * len(indexes)


class DictHashReader:
    """A HashReader over hashes already fetched (a missing one is a damaged log)."""

    __slots__ = ("_hashes",)

    def __init__(self, hashes: Mapping[tuple[int, int], bytes]) -> None:
        self._hashes = hashes

    def read_hashes(self, indexes: Sequence[tuple[int, int]]) -> list[bytes]:
        try:
            return [self._hashes[coord] for coord in indexes]
        except KeyError as exc:
            raise LogIntegrityError(f"stored hash {exc.args[0]} is missing") from None


#: PostgreSQL: one constant statement whatever the number of pairs, so asyncpg prepares it
#: once per connection and the planner sees two arrays rather than a long row-value list.
_PG_READ_HASHES: Final = (
    "SELECT h.level, h.idx, h.hash FROM log_hashes AS h"
    " JOIN unnest($1::smallint[], $2::bigint[]) AS w(level, idx)"
    " ON h.level = w.level AND h.idx = w.idx"
)


async def read_hashes(
    conn: AsyncConnection, coords: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], bytes]:
    """Fetch the stored hashes at ``coords`` in one round trip (chunked past a few thousand)."""
    wanted = sorted(set(coords))
    out: dict[tuple[int, int], bytes] = {}
    postgres = conn.dialect.name == "postgresql"
    for start in range(0, len(wanted), _HASH_CHUNK):
        chunk = wanted[start : start + _HASH_CHUNK]
        if postgres:
            # Straight to asyncpg on the same connection (and transaction): SQLAlchemy's
            # expanding IN would render, and asyncpg prepare, a new statement per size.
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            rows = await driver.fetch(_PG_READ_HASHES, [c[0] for c in chunk], [c[1] for c in chunk])
            for level, idx, h in rows:
                out[level, idx] = bytes(h)
            continue
        result = await conn.execute(
            select(LogHash.level, LogHash.idx, LogHash.hash).where(
                tuple_(LogHash.level, LogHash.idx).in_(chunk)
            )
        )
        for level, idx, h in result:
            out[level, idx] = bytes(h)
    return out


async def with_hashes(conn: AsyncConnection, compute: Callable[[HashReader], T]) -> T:
    """Run ``compute`` (which reads stored hashes) with one batched fetch; see the docstring."""
    recorder = _Recorder()
    compute(recorder)
    if not recorder.wanted:
        return compute(DictHashReader({}))
    return compute(DictHashReader(await read_hashes(conn, recorder.wanted)))


# --- checkpoints --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    size: int
    root: bytes
    note: str
    created_at: int


_CHECKPOINT_COLUMNS = (
    LogCheckpoint.size,
    LogCheckpoint.root,
    LogCheckpoint.note,
    LogCheckpoint.created_at,
)


# The hot queries are built once: SQLAlchemy then skips building and compiling them.
_LATEST = select(*_CHECKPOINT_COLUMNS).order_by(LogCheckpoint.size.desc()).limit(1)
_TREE_SIZE = select(func.max(LogCheckpoint.size))


def _published(chosen: Select[int, bytes, str, int]) -> Select[int, bytes, str, int, str]:
    cp = chosen.subquery()
    return (
        select(cp.c.size, cp.c.root, cp.c.note, cp.c.created_at, LogCosignature.line)
        .select_from(cp.outerjoin(LogCosignature, LogCosignature.size == cp.c.size))
        .order_by(LogCosignature.witness, LogCosignature.key_hash)
        .limit(MAX_SIGNATURES - 1)
    )


_PUBLISHED_LATEST = _published(_LATEST)
_PUBLISHED_AT = _published(
    select(*_CHECKPOINT_COLUMNS).where(LogCheckpoint.size == bindparam("size"))
)
_PACKET_ENTRIES = (
    select(LogEntry.idx, LogEntry.data)
    .where(LogEntry.packet_id == bindparam("packet_id"), LogEntry.idx < bindparam("size"))
    .order_by(LogEntry.idx)
    .limit(MAX_BUNDLE_EVENTS)
)


async def latest_checkpoint(conn: AsyncConnection) -> StoredCheckpoint | None:
    """The newest checkpoint the log signed, or None before the first."""
    row = (await run(conn, _LATEST)).first()
    if row is None:
        return None
    return StoredCheckpoint(row[0], bytes(row[1]), row[2], row[3])


async def get_checkpoint(conn: AsyncConnection, size: int) -> StoredCheckpoint | None:
    """The checkpoint the log signed at exactly ``size`` leaves, if any."""
    row = (
        await conn.execute(select(*_CHECKPOINT_COLUMNS).where(LogCheckpoint.size == size))
    ).first()
    if row is None:
        return None
    return StoredCheckpoint(row[0], bytes(row[1]), row[2], row[3])


async def latest_cosigned_checkpoint(
    conn: AsyncConnection, min_cosignatures: int
) -> StoredCheckpoint | None:
    """The newest checkpoint with at least ``min_cosignatures`` witness cosignatures."""
    sizes = (
        select(LogCosignature.size)
        .group_by(LogCosignature.size)
        .having(func.count() >= min_cosignatures)
        .order_by(LogCosignature.size.desc())
        .limit(1)
        .scalar_subquery()
    )
    row = (
        await conn.execute(select(*_CHECKPOINT_COLUMNS).where(LogCheckpoint.size == sizes))
    ).first()
    if row is None:
        return None
    return StoredCheckpoint(row[0], bytes(row[1]), row[2], row[3])


async def tree_size(conn: AsyncConnection) -> int:
    """Leaves covered by the newest checkpoint (0 before the first)."""
    size = await conn.scalar(_TREE_SIZE)
    return int(size or 0)


class KnownSize:
    """A cached lower bound of the tree size, to skip a query per proof.

    Tree sizes only grow and every size up to a committed checkpoint's has all its stored
    hashes, so a stale value is always safe: a request within it needs no query, one
    beyond it re-reads the size.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    async def at_least(self, conn: AsyncConnection, size: int) -> int:
        """The tree size if it may cover ``size`` (re-read when the cache says it cannot)."""
        if size > self.value:
            self.value = max(self.value, await tree_size(conn))
        return self.value


async def _current_size(conn: AsyncConnection, size: int, known: KnownSize | None) -> int:
    return await tree_size(conn) if known is None else await known.at_least(conn, size)


async def published_checkpoint(
    conn: AsyncConnection, size: int | None = None
) -> tuple[StoredCheckpoint, str] | None:
    """The newest checkpoint (or the one of ``size``) and its published note, in one query.

    The published note is the stored one -- the log's own signature line first -- with
    every stored witness cosignature line appended in witness-name order (at most as many
    as a note may carry).
    """
    if size is None:
        rows = (await conn.execute(_PUBLISHED_LATEST)).all()
    else:
        rows = (await conn.execute(_PUBLISHED_AT, {"size": size})).all()
    if not rows:
        return None
    first = rows[0]
    checkpoint = StoredCheckpoint(first[0], bytes(first[1]), first[2], first[3])
    return checkpoint, checkpoint.note + "".join(row[4] for row in rows if row[4] is not None)


async def store_cosignature(
    conn: AsyncConnection,
    note: bytes,
    organ: str,
    verifiers: Sequence[CosignatureVerifier],
    *,
    max_future: int = 300,
    now: int | None = None,
) -> tuple[int, list[str]]:
    """Verify and store the caller's cosignatures on a checkpoint the log signed.

    ``note`` is the checkpoint as the witness returns it (the log's note with its
    cosignature line added; other lines are ignored).  ``verifiers`` are the caller's own
    witness keys.  Returns the checkpoint size and the witness names stored.  Raises
    ``checkpoint_malformed`` if the note is not one of the log's stored checkpoints and
    ``cosignature_invalid`` if none of the caller's cosignatures is on it or one fails.
    """
    parsed = parse_note(note)
    checkpoint = Checkpoint.parse_body(parsed.text)
    stored = await get_checkpoint(conn, checkpoint.size)
    if stored is None or parse_note(stored.note.encode()).text != parsed.text:
        raise RemoteError(
            "checkpoint_malformed", "the note is not a checkpoint this log has signed"
        )
    by_key = {(v.name, v.key_hash): v for v in verifiers}
    now = int(time.time()) if now is None else now
    found: list[tuple[CosignatureVerifier, int, str]] = []
    for sig in parsed.signatures:
        verifier = by_key.get((sig.name, sig.key_hash))
        if verifier is None:
            continue
        timestamp = verifier.verify(parsed.text, sig.signature)
        if timestamp is None:
            raise RemoteError(
                "cosignature_invalid", f"the cosignature by {sig.name} does not verify"
            )
        if timestamp > now + max_future:
            raise RemoteError(
                "cosignature_invalid", f"the cosignature by {sig.name} is dated in the future"
            )
        found.append((verifier, timestamp, sig.line().decode()))
    if not found:
        raise RemoteError(
            "cosignature_invalid", "the note carries no cosignature by the caller's witness key"
        )
    stored_names: list[str] = []
    for verifier, timestamp, line in found:
        key = (checkpoint.size, verifier.name, verifier.key_hash.hex())
        existing = await conn.scalar(
            select(func.count())
            .select_from(LogCosignature)
            .where(
                LogCosignature.size == key[0],
                LogCosignature.witness == key[1],
                LogCosignature.key_hash == key[2],
            )
        )
        if not existing:
            try:
                async with conn.begin_nested():
                    await conn.execute(
                        insert(LogCosignature).values(
                            size=checkpoint.size,
                            witness=verifier.name,
                            key_hash=verifier.key_hash.hex(),
                            organ=organ,
                            timestamp=timestamp,
                            line=line,
                            created_at=now,
                        )
                    )
            except IntegrityError:
                pass  # the same witness, concurrently: the first cosignature stays
        stored_names.append(verifier.name)
    return checkpoint.size, stored_names


# --- entries and proofs -------------------------------------------------------------------


def _check_index(value: int, what: str) -> None:
    if value < 0 or value >= 1 << 63:
        raise RemoteError("tree_size_invalid", f"{what} {value} is out of range")


async def get_entries(conn: AsyncConnection, start: int, end: int) -> list[bytes]:
    """Entries ``start`` up to ``end`` (exclusive), clamped to the newest checkpoint.

    At most :data:`MAX_ENTRIES` and about :data:`MAX_ENTRIES_BYTES`; a client pages on from
    ``start + len(result)``.  ``start`` must be inside the tree.
    """
    _check_index(start, "start")
    _check_index(end, "end")
    if end <= start:
        raise RemoteError("tree_size_invalid", f"end {end} is not after start {start}")
    size = await tree_size(conn)
    if start >= size:
        raise RemoteError("tree_size_invalid", f"start {start} is not in the tree of {size}")
    end = min(end, size, start + MAX_ENTRIES)
    rows = await conn.execute(
        select(LogEntry.idx, LogEntry.data)
        .where(LogEntry.idx >= start, LogEntry.idx < end)
        .order_by(LogEntry.idx)
    )
    out: list[bytes] = []
    total = 0
    for expected, (idx, data) in enumerate(rows, start):
        if idx != expected:
            raise LogIntegrityError(f"log entry {expected} is missing")
        out.append(bytes(data))
        total += len(data)
        if total >= MAX_ENTRIES_BYTES:
            break
    if not out:
        raise LogIntegrityError(f"log entry {start} is missing")
    return out


async def inclusion(
    conn: AsyncConnection, index: int, size: int, known: KnownSize | None = None
) -> list[bytes]:
    """Inclusion proof of leaf ``index`` in the tree of ``size`` (at most the newest)."""
    _check_index(index, "index")
    _check_index(size, "size")
    current = await _current_size(conn, size, known)
    if size > current:
        raise RemoteError("tree_size_invalid", f"size {size} exceeds the tree of {current}")
    return await with_hashes(conn, lambda r: inclusion_proof(index, size, r))


async def consistency(
    conn: AsyncConnection, old: int, new: int, known: KnownSize | None = None
) -> list[bytes]:
    """Consistency proof from the tree of ``old`` leaves to that of ``new`` (at most the newest)."""
    _check_index(old, "old")
    _check_index(new, "new")
    current = await _current_size(conn, new, known)
    if new > current:
        raise RemoteError("tree_size_invalid", f"size {new} exceeds the tree of {current}")
    return await with_hashes(conn, lambda r: consistency_proof(old, new, r))


async def packet_entries(
    conn: AsyncConnection, packet_id: bytes, size: int
) -> list[tuple[int, bytes]]:
    """``(index, entry)`` of every event naming ``packet_id`` in the tree of ``size``."""
    rows = await conn.execute(_PACKET_ENTRIES, {"packet_id": packet_id, "size": size})
    return [(idx, bytes(data)) for idx, data in rows]


def packet_parties(entries: Iterable[bytes]) -> set[str]:
    """Organs that are parties to a packet by its events: who may see its bundle.

    The sender and the addressed recipients (``packet_accepted``, or the sender of a
    refused packet), and any organ that fetched it, answered it or was mailed it -- the
    successor of a merged recipient receives mail addressed to its predecessor.
    """
    parties: set[str] = set()
    for data in entries:
        event = parse_event(data)
        fields = event.fields
        if event.kind == "packet_accepted":
            parties.add(fields["sender"])
            parties.update(fields["recipients"])
        elif event.kind == "policy_refused":
            parties.add(fields["sender"])
        elif "organ" in fields:
            parties.add(fields["organ"])
    return parties


@dataclass(frozen=True, slots=True)
class Bundle:
    """A packet's bundle as served: its bytes and what the authorisation check needs."""

    data: bytes
    size: int
    parties: frozenset[str]


async def packet_bundle(
    conn: AsyncConnection, packet_id: bytes, size: int | None = None
) -> Bundle | None:
    """The proof bundle of ``packet_id`` against the newest checkpoint (or the one of ``size``).

    None when no event of the packet is in that tree.  All inclusion proofs share one
    batched hash fetch, so a bundle costs three queries whatever its number of events.
    """
    if size is not None:
        _check_index(size, "size")
    published = await published_checkpoint(conn, size)
    if published is None:
        if size is not None:
            raise RemoteError("tree_size_invalid", f"the log signed no checkpoint of size {size}")
        return None
    checkpoint, text = published
    found = await packet_entries(conn, packet_id, checkpoint.size)
    if not found:
        return None
    n = checkpoint.size
    proofs = await with_hashes(conn, lambda r: [inclusion_proof(i, n, r) for i, _ in found])
    note = text.encode()
    data = encode_bundle(
        packet_id,
        note,
        [BundleEvent(i, entry, tuple(p)) for (i, entry), p in zip(found, proofs, strict=True)],
    )
    return Bundle(data, n, frozenset(packet_parties(entry for _, entry in found)))
