"""How long the auditor's work takes on a log of realistic shape (a figure, not a test).

Run: .venv/bin/python -m tests.audit.bench_audit [PACKETS] [sqlite|postgresql]

Starts the hub in-process (SQLite file by default, or a fresh PostgreSQL database on
LIENTHONG_TEST_DATABASE_URL's server), sends PACKETS small documents from the province to
two communes through the batch endpoint, has one commune answer 01 and 03 to each, then
times: the first ``follow`` (mirror every entry, verify every receipt), ``trace`` of one
packet, ``replay`` (everything again from 0), ``report`` over the mirror, and the hub
page's report and search.  Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from hub.auditpage import data as page
from hub.db import make_engine
from hub.migrate import upgrade
from protocol.codec import encode
from protocol.packet import parse_envelope
from protocol.policy import VN_TZ
from tests.hub.conftest import create_pg, drop_pg, running_hub
from tests.hub.helpers import CBOR, log_kinds, office_receipt, post_receipts, seal, world

from .helpers import Auditors


async def run(count: int, backend: str) -> dict[str, Any]:
    name = f"lt_bench_audit_{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if backend == "postgresql":
            url = await create_pg(name)
        else:
            url = f"sqlite+aiosqlite:///{root / 'hub.sqlite3'}"
            engine = make_engine(url)
            await upgrade(engine)
            await engine.dispose()
        try:
            async with running_hub(url, root / "hub") as env:
                return await measure(env, root, count, backend)
        finally:
            if backend == "postgresql":
                await drop_pg(name)


async def measure(env: Any, root: Path, count: int, backend: str) -> dict[str, Any]:
    w = await world(env)
    sealed = [
        seal(w.province, [w.yen_lac, w.tam_hong], data=f"Công văn số {i}/VP".encode() * 20)
        for i in range(count)
    ]
    for start in range(0, count, 200):
        part = sealed[start : start + 200]
        resp = await env.client.post(
            "/v1/packets/batch",
            data=encode([list(p) for p in part]),
            headers={**w.province.headers, "Content-Type": CBOR},
        )
        assert all(r["status"] == 200 for r in (await resp.json())["results"])
    receipts = []
    for n, (envelope, _body) in enumerate(sealed):
        receipts.append(office_receipt(w.yen_lac, envelope, "01"))
        receipts.append(
            office_receipt(w.yen_lac, envelope, "03", details={"incoming_number": str(n + 1)})
        )
    for start in range(0, len(receipts), 500):
        status, doc = await post_receipts(env, w.yen_lac, receipts[start : start + 500])
        assert status == 200, doc
    kinds = await log_kinds(env)
    auditors = Auditors(env, root)
    out: dict[str, Any] = {"backend": backend, "packets": count, "log_entries": len(kinds)}
    try:
        auditor = auditors.make(w.auditor)
        async with auditor:
            await auditor.checkpoint(cosign=False)
            started = time.perf_counter()
            followed = await auditor.follow()
            out["follow_s"] = round(time.perf_counter() - started, 3)
            out["follow_entries_per_s"] = round(followed["mirrored"] / out["follow_s"])
            assert followed["alarms"] == []
            packet = str(uuid.UUID(bytes=parse_envelope(sealed[count // 2][0]).packet_id))
            started = time.perf_counter()
            traced = await auditor.trace(packet)
            out["trace_s"] = round(time.perf_counter() - started, 3)
            assert traced["alarms"] == []
            assert traced["complete"]
            started = time.perf_counter()
            replayed = await auditor.replay()
            out["replay_s"] = round(time.perf_counter() - started, 3)
            assert replayed["alarms"] == []
            today = datetime.now(VN_TZ).date()
            started = time.perf_counter()
            report = auditor.report(today.replace(day=1), today, None, int(time.time()))
            out["report_s"] = round(time.perf_counter() - started, 3)
            assert report["total"]["addressed"] == 2 * count
        started = time.perf_counter()
        page_report = await page.delivery_report(
            env.hub, today.replace(day=1), today, None, int(time.time())
        )
        out["page_report_s"] = round(time.perf_counter() - started, 3)
        assert page_report.total.addressed == 2 * count
        started = time.perf_counter()
        await page.delivery_report(env.hub, today.replace(day=1), today, None, int(time.time()))
        out["page_report_again_s"] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()
        rows, _ = await page.search(
            env.hub, page.Criteria(sender=w.province.code, overdue=True), int(time.time())
        )
        out["page_search_overdue_s"] = round(time.perf_counter() - started, 3)
        out["page_search_rows"] = len(rows)
    finally:
        auditors.close()
    proof = (root / "auditor" / "proofs" / f"{packet}.proof").stat().st_size
    out["proof_bytes"] = proof
    return out


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    backend = sys.argv[2] if len(sys.argv) > 2 else "sqlite"
    print(json.dumps(asyncio.run(run(count, backend)), indent=2))


if __name__ == "__main__":
    main()
