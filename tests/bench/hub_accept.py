"""Small packets accepted per second on PostgreSQL, single and batched (a figure, not a test).

Run: .venv/bin/python -m tests.bench.hub_accept [COUNT]
Starts the hub in-process on a fresh PostgreSQL database (LIENTHONG_TEST_DATABASE_URL's
server), enrols offices through the API, then times COUNT single submissions (envelope +
body, two requests each) and COUNT packets in batches of 100.

Acceptance only -- no delivery, download or receipt -- with the hub in the benchmark's
own process: a decomposition of scenario 1 (:mod:`tests.bench.s1_small`), which runs the
full cycle against ``lienthong-hub serve`` processes.  Written by the hub's engineer as
``tests/hub/bench_small_packets.py``; moved here with the other benchmarks.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

from protocol.codec import encode
from tests.hub.conftest import create_pg, drop_pg, running_hub
from tests.hub.helpers import CBOR, PROVINCE, YEN_LAC, make_office, seal, send

#: Batches in flight at once (several offices submitting together).
CONCURRENCY = 4


async def main(count: int) -> dict[str, float]:
    name = f"lt_bench_{uuid.uuid4().hex[:10]}"
    url = await create_pg(name)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            async with running_hub(url, Path(tmp) / "hub", receipt_wait=5.0) as env:
                province = await make_office(env, PROVINCE, "Văn phòng Tỉnh ủy")
                commune = await make_office(env, YEN_LAC, "Đảng ủy xã Yên Lạc", parent=PROVINCE)
                sealed = [
                    seal(province, [commune], data=f"Công văn số {i}/VP".encode() * 50)
                    for i in range(2 * count)
                ]
                started = time.perf_counter()
                for envelope, body in sealed[:count]:
                    status, _ = await _single(env, province, envelope, body)
                    assert status == 200
                single = count / (time.perf_counter() - started)
                started = time.perf_counter()
                rest = sealed[count:]
                batches = [rest[i : i + 100] for i in range(0, len(rest), 100)]

                async def post(batch: list[tuple[bytes, bytes]]) -> None:
                    resp = await env.client.post(
                        "/v1/packets/batch",
                        data=encode([list(p) for p in batch]),
                        headers={**province.headers, "Content-Type": CBOR},
                    )
                    results = (await resp.json())["results"]
                    assert all(r["status"] == 200 for r in results), results[:3]

                for i in range(0, len(batches), CONCURRENCY):
                    await asyncio.gather(*(post(b) for b in batches[i : i + CONCURRENCY]))
                batched = count / (time.perf_counter() - started)
                await send(env, province, [commune])
    finally:
        await drop_pg(name)
    return {
        "count": count,
        "single_per_s": round(single, 1),
        "batched_per_s": round(batched, 1),
        "batch_size": 100,
        "batches_in_flight": CONCURRENCY,
    }


async def _single(env, office, envelope, body):  # type: ignore[no-untyped-def]
    from tests.hub.helpers import submit, upload

    status, doc = await submit(env, office, envelope)
    assert status == 202, doc
    return await upload(env, office, doc["packet_id"], body)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200))))
