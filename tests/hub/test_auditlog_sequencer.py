"""The audit log's sequencer on SQLite and PostgreSQL: gap-free indexes, consistent
checkpoints, proofs that verify, crash consistency, and one sequencer at a time."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from hub.auditlog import store
from hub.auditlog.models import LogCheckpoint, LogEntry, LogHash, LogPending
from hub.auditlog.sequencer import Sequencer, run_sequencer
from hub.auditlog.store import LogIntegrityError
from protocol.bundle import log_signer, log_verifier
from protocol.checkpoint import Checkpoint, NoteSigner, check_consistent, open_checkpoint
from protocol.errors import LocalError, RemoteError
from protocol.keys import SigningPrivateKey
from protocol.merkle import EMPTY_ROOT, MemoryHashStore, leaf_hash, verify_inclusion

from .test_auditlog_support import (
    BACKENDS,
    append_fetched,
    empty_log,
    log_engine,
    module_database,
)

pytestmark = pytest.mark.asyncio

ORIGIN = "lienthong.hub/test"
KEY = SigningPrivateKey.generate()
VERIFIER = log_verifier(KEY.public_key(), ORIGIN)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    yield from module_database()


@pytest_asyncio.fixture
async def url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    pg = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    async with empty_log(backend, tmp_path, pg) as value:
        yield value


@pytest_asyncio.fixture
async def engine(url: str) -> AsyncIterator[AsyncEngine]:
    async with log_engine(url) as value:
        yield value


def sequencer(engine: AsyncEngine, **options: Any) -> Sequencer:
    return Sequencer(engine, KEY, ORIGIN, **options)


async def entries(engine: AsyncEngine) -> list[tuple[int, bytes]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(LogEntry.idx, LogEntry.data).order_by(LogEntry.idx))
        return [(i, bytes(d)) for i, d in rows]


async def count(engine: AsyncEngine, table: type[object]) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table)) or 0)


async def checkpoints(engine: AsyncEngine) -> list[Checkpoint]:
    async with engine.connect() as conn:
        notes = await conn.scalars(select(LogCheckpoint.note).order_by(LogCheckpoint.size))
        return [open_checkpoint(n.encode(), VERIFIER) for n in notes]


async def assert_log_sound(engine: AsyncEngine) -> None:
    """Gap-free entries, every checkpoint consistent with the next, proofs verify."""
    got = await entries(engine)
    assert [i for i, _ in got] == list(range(len(got)))
    cps = await checkpoints(engine)
    assert cps, "no checkpoint signed"
    assert cps[-1].size == len(got)
    memory = MemoryHashStore(leaf_hash(d) for _, d in got)
    assert memory.root() == cps[-1].root_hash
    async with engine.connect() as conn:
        for old, new in itertools.pairwise(cps):
            check_consistent(old, new, await store.consistency(conn, old.size, new.size))
        last = cps[-1]
        for index in {0, 1, last.size // 2, last.size - 1} if last.size else set():
            proof = await store.inclusion(conn, index, last.size)
            verify_inclusion(leaf_hash(got[index][1]), index, last.size, proof, last.root_hash)


# --- sequencing ---------------------------------------------------------------------------


async def test_first_batch_signs_the_empty_tree(engine: AsyncEngine) -> None:
    seq = sequencer(engine)
    assert await seq.sequence_once() == 0
    assert await seq.sequence_once() == 0
    cps = await checkpoints(engine)
    assert [(c.size, c.root_hash) for c in cps] == [(0, EMPTY_ROOT)]
    assert cps[0].origin == ORIGIN


async def test_batches_are_gap_free_in_pending_order(engine: AsyncEngine) -> None:
    for n in (700, 1100, 700):
        await append_fetched(engine, n)
    async with engine.connect() as conn:
        pending = [
            bytes(d) for d in await conn.scalars(select(LogPending.data).order_by(LogPending.id))
        ]
    seq = sequencer(engine, batch_size=1000)
    assert [await seq.sequence_once() for _ in range(4)] == [1000, 1000, 500, 0]
    got = await entries(engine)
    assert [d for _, d in got] == pending
    assert await count(engine, LogPending) == 0
    assert [c.size for c in await checkpoints(engine)] == [1000, 2000, 2500]
    await assert_log_sound(engine)


async def test_every_checkpoint_consistent_with_every_other(engine: AsyncEngine) -> None:
    seq = sequencer(engine)
    await seq.sequence_once()
    for n in (1, 1, 2, 3, 7, 8, 1, 63, 64, 65, 100):
        await append_fetched(engine, n)
        assert await seq.sequence_once() == n
    cps = await checkpoints(engine)
    assert len(cps) == 12
    got = await entries(engine)
    async with engine.connect() as conn:
        for old, new in itertools.combinations(cps, 2):
            check_consistent(old, new, await store.consistency(conn, old.size, new.size))
        last = cps[-1]
        for index in range(last.size):
            proof = await store.inclusion(conn, index, last.size)
            verify_inclusion(leaf_hash(got[index][1]), index, last.size, proof, last.root_hash)
        # and against an older checkpoint
        old = cps[5]
        for index in range(old.size):
            proof = await store.inclusion(conn, index, old.size)
            verify_inclusion(leaf_hash(got[index][1]), index, old.size, proof, old.root_hash)
    await assert_log_sound(engine)


async def test_entries_keep_packet_id_and_leaf_hash(engine: AsyncEngine) -> None:
    pid = os.urandom(16)
    await append_fetched(engine, 5, packets=[pid])
    await sequencer(engine).sequence_once()
    async with engine.connect() as conn:
        rows = (
            await conn.execute(select(LogEntry.data, LogEntry.leaf_hash, LogEntry.packet_id))
        ).all()
    assert len(rows) == 5
    for data, lh, p in rows:
        assert bytes(lh) == leaf_hash(bytes(data))
        assert p is not None
        assert bytes(p) == pid


async def test_hybrid_hub_key_signs_with_its_ed25519_part(engine: AsyncEngine) -> None:
    key = SigningPrivateKey.generate(hybrid=True)
    await append_fetched(engine, 3)
    await Sequencer(engine, key, ORIGIN).sequence_once()
    async with engine.connect() as conn:
        latest = await store.latest_checkpoint(conn)
    assert latest is not None
    cp = open_checkpoint(latest.note.encode(), log_verifier(key.public_key(), ORIGIN))
    assert cp.size == 3
    with pytest.raises(RemoteError) as err:
        open_checkpoint(latest.note.encode(), VERIFIER)
    assert err.value.code == "checkpoint_signature_invalid"


async def test_note_signer_and_options_checked(engine: AsyncEngine) -> None:
    signer = log_signer(KEY, ORIGIN)
    assert Sequencer(engine, signer).origin == ORIGIN
    with pytest.raises(LocalError):
        Sequencer(engine, signer, "lienthong.hub/other")
    with pytest.raises(LocalError):
        Sequencer(engine, KEY)
    with pytest.raises(LocalError):
        Sequencer(engine, KEY, ORIGIN, batch_size=0)
    no_time = Sequencer(engine, NoteSigner.generate(ORIGIN), time_extension=False)
    await no_time.sequence_once()
    async with engine.connect() as conn:
        latest = await store.latest_checkpoint(conn)
    assert latest is not None
    assert latest.note.startswith(Checkpoint(ORIGIN, 0, EMPTY_ROOT).body().decode() + "\n")


async def test_run_signs_within_the_interval(engine: AsyncEngine) -> None:
    seq = sequencer(engine, interval=0.05)
    task = asyncio.create_task(seq.run())
    try:
        await append_fetched(engine, 10)
        deadline = time.monotonic() + 5
        while await count(engine, LogEntry) < 10:
            assert time.monotonic() < deadline, "not sequenced in time"
            await asyncio.sleep(0.02)
        await append_fetched(engine, 5)
        seq.notify()
        while await count(engine, LogEntry) < 15:
            assert time.monotonic() < deadline, "not sequenced in time"
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await assert_log_sound(engine)


async def test_run_sequencer_helper_and_backlog(engine: AsyncEngine) -> None:
    await append_fetched(engine, 2500)
    task = asyncio.create_task(run_sequencer(engine, KEY, ORIGIN, batch_size=1000, interval=10))
    try:
        deadline = time.monotonic() + 10
        # a full batch is followed at once by the next: no 10 s wait between them
        while await count(engine, LogEntry) < 2500:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await assert_log_sound(engine)


# --- crash consistency --------------------------------------------------------------------


class Boom(Exception):
    pass


@pytest.mark.parametrize("point", ["locked", "entries", "hashes", "checkpoint"])
@pytest.mark.parametrize("restart", ["same", "fresh"])
async def test_fault_mid_batch_leaves_no_partial_batch(
    engine: AsyncEngine, point: str, restart: str
) -> None:
    seq = sequencer(engine)
    await append_fetched(engine, 10)
    assert await seq.sequence_once() == 10
    before = await checkpoints(engine)
    hashes_before = await count(engine, LogHash)
    await append_fetched(engine, 21)

    def fault(at: str) -> None:
        if at == point:
            raise Boom(at)

    faulty = seq if restart == "same" else sequencer(engine)
    faulty._fault = fault
    with pytest.raises(Boom):
        await faulty.sequence_once()
    assert await count(engine, LogEntry) == 10
    assert await count(engine, LogHash) == hashes_before
    assert await count(engine, LogPending) == 21
    assert [c.size for c in await checkpoints(engine)] == [10]

    again = faulty if restart == "same" else sequencer(engine)
    again._fault = None
    assert await again.sequence_once() == 21
    after = await checkpoints(engine)
    assert [c.size for c in after] == [10, 31]
    async with engine.connect() as conn:
        check_consistent(before[-1], after[-1], await store.consistency(conn, 10, 31))
    await assert_log_sound(engine)


async def test_cancel_mid_batch_rolls_back(engine: AsyncEngine) -> None:
    seq = sequencer(engine)
    await append_fetched(engine, 4)
    await seq.sequence_once()
    await append_fetched(engine, 9)
    reached = asyncio.Event()

    async def hang(at: str) -> None:
        if at == "hashes":
            reached.set()
            await asyncio.Event().wait()

    seq._fault = hang
    task = asyncio.create_task(seq.sequence_once())
    await asyncio.wait_for(reached.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await count(engine, LogEntry) == 4
    assert await count(engine, LogPending) == 9
    seq._fault = None
    assert await seq.sequence_once() == 9
    await assert_log_sound(engine)


# --- never sign on top of a damaged log ---------------------------------------------------


async def test_refuses_to_extend_when_stored_hashes_changed(engine: AsyncEngine) -> None:
    await append_fetched(engine, 10)  # frontier of 10 = subtrees (3, 0) and (1, 4)
    await sequencer(engine).sequence_once()
    async with engine.begin() as conn:
        await conn.execute(
            update(LogHash).where(LogHash.level == 1, LogHash.idx == 4).values(hash=bytes(32))
        )
    await append_fetched(engine, 3)
    with pytest.raises(LogIntegrityError):
        await sequencer(engine).sequence_once()
    assert [c.size for c in await checkpoints(engine)] == [10]
    assert await count(engine, LogPending) == 3


async def test_refuses_entries_without_checkpoint(engine: AsyncEngine) -> None:
    await append_fetched(engine, 2)
    await sequencer(engine).sequence_once()
    async with engine.begin() as conn:
        await conn.execute(delete(LogCheckpoint))
    await append_fetched(engine, 1)
    with pytest.raises(LogIntegrityError):
        await sequencer(engine).sequence_once()


async def test_cached_frontier_dropped_when_another_sequenced(engine: AsyncEngine) -> None:
    a, b = sequencer(engine), sequencer(engine)
    for _ in range(3):
        await append_fetched(engine, 5)
        assert await a.sequence_once() == 5
        await append_fetched(engine, 3)
        assert await b.sequence_once() == 3
    await assert_log_sound(engine)


# --- one sequencer at a time --------------------------------------------------------------


async def test_two_sequencers_one_batch_at_a_time(url: str, backend: str) -> None:
    async with log_engine(url) as engine_a, log_engine(url) as engine_b:
        await append_fetched(engine_a, 50)
        paused, resume = asyncio.Event(), asyncio.Event()

        async def hold(at: str) -> None:
            if at == "entries":
                paused.set()
                await resume.wait()

        a = Sequencer(engine_a, KEY, ORIGIN, fault=hold)
        b = Sequencer(engine_b, KEY, ORIGIN)
        task_a = asyncio.create_task(a.sequence_once())
        await asyncio.wait_for(paused.wait(), 10)
        if backend == "postgresql":
            # the advisory lock is held by A's open transaction: B does nothing at all
            assert await b.sequence_once() is None
            resume.set()
            assert await task_a == 50
        else:
            # SQLite: B's BEGIN IMMEDIATE waits for A's write lock, then continues A's tree
            task_b = asyncio.create_task(b.sequence_once())
            await asyncio.sleep(0.2)
            assert not task_b.done()
            resume.set()
            assert await task_a == 50
            assert await task_b == 0
        await append_fetched(engine_b, 7)
        assert await b.sequence_once() == 7
        a._fault = None
        await append_fetched(engine_a, 2)
        assert await a.sequence_once() == 2
        await assert_log_sound(engine_a)


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_two_running_sequencers_under_load(url: str) -> None:
    async with log_engine(url) as engine_a, log_engine(url) as engine_b:
        seqs = [
            Sequencer(e, KEY, ORIGIN, batch_size=97, interval=0.01) for e in (engine_a, engine_b)
        ]
        tasks = [asyncio.create_task(s.run()) for s in seqs]
        try:
            for i in range(30):
                await append_fetched(engine_a if i % 2 else engine_b, 100)
            deadline = time.monotonic() + 30
            while await count(engine_a, LogEntry) < 3000:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert await count(engine_a, LogPending) == 0
        got = await entries(engine_a)
        assert len({d for _, d in got}) == 3000  # each event exactly once
        await assert_log_sound(engine_a)


_CHILD = """
import asyncio, sys
from hub.auditlog.sequencer import run_sequencer
from hub.db import make_engine
from protocol.keys import SigningPrivateKey

async def main() -> None:
    engine = make_engine(sys.argv[1])
    key = SigningPrivateKey.from_private_bytes("ed25519", bytes.fromhex(sys.argv[2]))
    print("ready", flush=True)
    await run_sequencer(engine, key, sys.argv[3], batch_size=50, interval=0.01)

asyncio.run(main())
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql"])
async def test_two_processes_one_killed_mid_sequencing(url: str) -> None:
    """Two hub processes sequence one PostgreSQL log; one is SIGKILLed while busy."""
    async with log_engine(url) as engine:
        await append_fetched(engine, 2000)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _CHILD,
                url,
                KEY.private_bytes().hex(),
                ORIGIN,
                stdout=asyncio.subprocess.PIPE,
                env=env,
                cwd=REPO,
            )
            for _ in range(2)
        ]
        try:
            for p in procs:
                assert p.stdout is not None
                line = await asyncio.wait_for(p.stdout.readline(), 30)
                assert line.strip() == b"ready"
            deadline = time.monotonic() + 30
            while await count(engine, LogEntry) < 300:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.005)
            procs[0].send_signal(signal.SIGKILL)
            await procs[0].wait()
            await append_fetched(engine, 1000)
            while await count(engine, LogEntry) < 3000:
                assert time.monotonic() < deadline, "the surviving process did not take over"
                await asyncio.sleep(0.05)
        finally:
            for p in procs:
                if p.returncode is None:
                    p.send_signal(signal.SIGTERM)
                await p.wait()
        got = await entries(engine)
        assert len({d for _, d in got}) == 3000
        await assert_log_sound(engine)


async def test_refuses_to_sign_after_the_database_went_back(engine: AsyncEngine) -> None:
    """A database restored behind a published checkpoint would fork the log: refused."""
    seq = sequencer(engine)
    await append_fetched(engine, 6)
    await seq.sequence_once()
    await append_fetched(engine, 4)
    await seq.sequence_once()  # checkpoint 10 is published
    async with engine.begin() as conn:  # "restore" the state of size 6
        await conn.execute(delete(LogCheckpoint).where(LogCheckpoint.size == 10))
        await conn.execute(delete(LogEntry).where(LogEntry.idx >= 6))
        for level, first in ((0, 6), (1, 3), (2, 1), (3, 0)):  # what the batch of 4 added
            await conn.execute(delete(LogHash).where(LogHash.level == level, LogHash.idx >= first))
    await append_fetched(engine, 5)
    with pytest.raises(LogIntegrityError):
        await seq.sequence_once()
    assert [c.size for c in await checkpoints(engine)] == [6]
    # A process that never saw checkpoint 10 cannot know: that fork is for witnesses to
    # catch (their cosigned checkpoint 10 and the new 11 are inconsistent).
    assert await sequencer(engine).sequence_once() == 5


async def test_batches_bounded_in_bytes(engine: AsyncEngine) -> None:
    await append_fetched(engine, 10)
    async with engine.connect() as conn:
        sizes = [
            len(d) for d in await conn.scalars(select(LogPending.data).order_by(LogPending.id))
        ]
    seq = sequencer(engine, batch_bytes=2 * sizes[0] + 1)  # two rows reach it; three exceed
    counts = []
    while n := await seq.sequence_once():
        counts.append(n)
        assert seq.more == (sum(counts) < 10 or n == 3)
    assert counts == [3, 3, 3, 1]
    one = sequencer(engine, batch_bytes=1)  # a row larger than the bound still goes alone
    await append_fetched(engine, 2)
    assert [await one.sequence_once(), await one.sequence_once()] == [1, 1]
    await assert_log_sound(engine)


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_batches_stay_fast_with_stale_statistics(engine: AsyncEngine) -> None:
    """log_pending is often analysed while empty; a burst must not make batches quadratic."""
    async with engine.connect() as conn:
        await conn.execute(text("ANALYZE log_pending"))
    await append_fetched(engine, 10_000)
    seq = sequencer(engine)
    started = time.monotonic()
    assert [await seq.sequence_once(), await seq.sequence_once()] == [5000, 5000]
    assert time.monotonic() - started < 8  # a rescan per row took over 20 s here
