"""Scenario 1's bare baseline: the same bytes through HTTP into PostgreSQL and back.

A minimal aiohttp server (``python -m tests.bench.bare --port P --dsn DSN``) with an
asyncpg pool: ``POST /docs`` takes a CBOR array of documents and inserts them as rows in
one statement (the same batching as Lienthong's batch endpoint), answering their ids;
``GET /docs/{id}`` reads one back.  No crypto, no log, no authentication, no receipts.

The client (:func:`client`, role ``bare_client``) mirrors Lienthong's: per pair a sender
posting batches of ``size``-byte documents and a reader fetching each document with up to
8 requests in flight, checking the bytes.  Ids go from sender to reader in-process (the
bare baseline's "mailbox" costs nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from protocol.codec import decode, encode

from .common import summary_ms

SCHEMA = "CREATE TABLE IF NOT EXISTS docs (id bigserial PRIMARY KEY, body bytea NOT NULL)"


def make_app(dsn: str) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    pool_key = web.AppKey("pool", asyncpg.Pool)

    async def pool_ctx(app: web.Application) -> Any:
        app[pool_key] = await asyncpg.create_pool(dsn, min_size=2, max_size=10)
        yield
        await app[pool_key].close()

    async def post(request: web.Request) -> web.Response:
        docs = decode(await request.read(), max_size=64 * 1024 * 1024, max_depth=2)
        rows = await request.app[pool_key].fetch(
            "INSERT INTO docs (body) SELECT unnest($1::bytea[]) RETURNING id", docs
        )
        return web.json_response({"ids": [r["id"] for r in rows]})

    async def get(request: web.Request) -> web.Response:
        body = await request.app[pool_key].fetchval(
            "SELECT body FROM docs WHERE id = $1", int(request.match_info["id"])
        )
        if body is None:
            raise web.HTTPNotFound()
        return web.Response(body=body, content_type="application/octet-stream")

    app.cleanup_ctx.append(pool_ctx)
    app.router.add_post("/docs", post)
    app.router.add_get("/docs/{id}", get)
    return app


async def create_schema(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SCHEMA)
    finally:
        await conn.close()


async def serve(port: int, dsn: str) -> None:
    runner = web.AppRunner(make_app(dsn), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    print(json.dumps({"event": "listening", "port": port, "pid": os.getpid()}), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


async def client(job: dict[str, Any], go: Callable[[], Awaitable[None]]) -> dict[str, Any]:
    urls: list[str] = job["urls"]
    pairs: int = job["pairs"]
    count: int = job["count"]
    batch: int = job["batch"]
    size: int = job["size"]
    done_at: list[float] = []
    latencies: list[float] = []
    errors: list[str] = []
    sessions = [
        aiohttp.ClientSession(urls[n % len(urls)], connector=aiohttp.TCPConnector(limit=8))
        for n in range(2 * pairs)
    ]
    try:
        for s in sessions:  # open the connections before the clock starts
            async with s.get("/docs/0") as resp:
                await resp.read()
        await go()
        started = time.time()
        deadline = started + float(job["deadline"])

        async def sender(http: aiohttp.ClientSession, queue: asyncio.Queue[Any]) -> None:
            for first in range(0, count, batch):
                if time.time() > deadline:
                    break
                t = time.time()
                docs = [os.urandom(size) for _ in range(min(batch, count - first))]
                async with http.post("/docs", data=encode(docs)) as resp:
                    ids = (await resp.json())["ids"]
                for i, doc in zip(ids, docs, strict=True):
                    queue.put_nowait((i, hashlib.sha256(doc).digest(), t))
            queue.put_nowait(None)

        async def reader(http: aiohttp.ClientSession, queue: asyncio.Queue[Any]) -> None:
            gate = asyncio.Semaphore(8)

            async def one(i: int, digest: bytes, t: float) -> None:
                async with gate, http.get(f"/docs/{i}") as resp:
                    body = await resp.read()
                if hashlib.sha256(body).digest() != digest:
                    errors.append(f"doc {i} differs")
                now = time.time()
                done_at.append(now)
                latencies.append(now - t)

            tasks = []
            while (item := await queue.get()) is not None:
                await gate.acquire()  # bound the reader's backlog of tasks
                gate.release()
                tasks.append(asyncio.create_task(one(*item)))
            await asyncio.gather(*tasks)

        work = []
        for n in range(pairs):
            queue: asyncio.Queue[Any] = asyncio.Queue()
            work += [sender(sessions[2 * n], queue), reader(sessions[2 * n + 1], queue)]
        outcome = await asyncio.gather(*work, return_exceptions=True)
        errors += [f"{type(x).__name__}: {x}" for x in outcome if isinstance(x, BaseException)]
    finally:
        for s in sessions:
            await s.close()
    return {
        "start": started,
        "end": max(done_at) if done_at else time.time(),
        "completed": len(done_at),
        "latency_ms": summary_ms(latencies),
        "errors": errors[:20],
        "error_count": len(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dsn", required=True)
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port, args.dsn))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
