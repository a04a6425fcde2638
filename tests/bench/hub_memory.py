"""Peak resident memory of a hub process while a large body streams through it (a figure).

Run: .venv/bin/python -m tests.bench.hub_memory [MiB]   (default 1024)
Seals a body of that size into a temp file (streaming, bounded memory), starts a real
``lienthong-hub serve`` on SQLite, uploads the body and downloads it back, and prints the
hub's VmHWM (peak RSS) from /proc before and after, as one JSON object.

The hub alone on its embedded default (SQLite); scenario 2 (:mod:`tests.bench.s2_large`)
measures the same on PostgreSQL with real node processes at both ends.  Written by the
hub's engineer as ``tests/hub/bench_memory.py``; moved here with the other benchmarks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

from protocol.packet import DocumentMetadata, Sealer
from tests.hub.helpers import PROVINCE, YEN_LAC, submit
from tests.hub.processes import HubProcess, init, office_via_cli, remote

BLOCK = 1024 * 1024


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


async def main(mib: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "hub"
        await init(data)
        hub = HubProcess(data)
        await hub.start()
        api = remote(hub.url, data)
        try:
            province = await office_via_cli(api, data, PROVINCE, "Văn phòng Tỉnh ủy")
            commune = await office_via_cli(
                api, data, YEN_LAC, "Đảng ủy xã Yên Lạc", "--parent", PROVINCE
            )
            sealer = Sealer(
                sender=province.code,
                signing_key=province.signing,
                recipients=[commune.recipient()],
                metadata=DocumentMetadata(subject="Hồ sơ lưu trữ", doc_type="HS"),
                chunk_size=BLOCK,
            )
            sealer.add_file("Hồ sơ.bin", "application/octet-stream")
            body_path = Path(tmp) / "body"
            block = bytes(range(256)) * (BLOCK // 256)
            with body_path.open("wb") as fh:
                for _ in range(mib):
                    for chunk in sealer.feed(block):
                        fh.write(chunk)
                last, envelope = sealer.finish()
                fh.write(last)
            status, doc = await submit(api, province, envelope)
            assert status == 202, doc
            before = _peak_rss_mib(hub.pid)
            started = time.perf_counter()
            with body_path.open("rb") as fh:
                resp = await api.client.put(
                    f"/v1/packets/{doc['packet_id']}/body",
                    data=fh,
                    headers={**province.headers, "Content-Type": "application/octet-stream"},
                )
                answer = await resp.json()
            upload_s = time.perf_counter() - started
            assert resp.status == 200, answer
            after_upload = _peak_rss_mib(hub.pid)
            items = (await (await api.client.get("/v1/mailbox", headers=commune.headers)).json())[
                "items"
            ]
            started = time.perf_counter()
            digest = hashlib.sha256()
            resp = await api.client.get(items[0]["body"]["url"], headers=commune.headers)
            async for chunk in resp.content.iter_chunked(BLOCK):
                digest.update(chunk)
            download_s = time.perf_counter() - started
            assert digest.hexdigest() == items[0]["body"]["sha256"]
            after_download = _peak_rss_mib(hub.pid)
        finally:
            await api.client.close()
            await hub.stop()
    size = float(mib)
    return {
        "body_mib": size,
        "hub_peak_rss_mib_before": round(before, 1),
        "hub_peak_rss_mib_after_upload": round(after_upload, 1),
        "hub_peak_rss_mib_after_download": round(after_download, 1),
        "upload_mib_per_s": round(size / upload_s, 1),
        "download_mib_per_s": round(size / download_s, 1),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1024))))
