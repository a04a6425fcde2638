"""A 200 MiB document through the command line in bounded memory.

The node's memory is sampled from ``/proc`` while the body is sealed and uploaded, then
downloaded and opened.  The peak (``VmHWM``) covers the whole command from its start:
unlocking the keystore (Argon2id, 19 MiB) included, the body never held in memory.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import OfficeFactory
from .harness import NODE_EXE, Node

SIZE = 200 * 1024 * 1024
#: Working set allowed during the transfer, on top of nothing (absolute VmHWM).
PEAK_MAX = 100 * 1024 * 1024

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]


def big_file(path: Path) -> str:
    digest = hashlib.sha256()
    block = os.urandom(1024 * 1024)
    with path.open("wb") as fh:
        for i in range(SIZE // len(block)):
            piece = block[:-8] + i.to_bytes(8, "big")
            digest.update(piece)
            fh.write(piece)
    return digest.hexdigest()


def peak_during(node: Node, args: list[str], started: Callable[[], bool]) -> tuple[int, str]:
    """Run a node command; its peak RSS from when ``started()`` holds until it exits."""
    proc = subprocess.Popen(
        [NODE_EXE, *args, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=node.env(),
        text=True,
    )
    peak = 0
    reset = False

    def sample() -> None:
        nonlocal peak, reset
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                if not reset and started():
                    Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
                    reset = True
                if reset:
                    for line in status.read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            peak = max(peak, int(line.split()[1]) * 1024)
            except OSError:
                pass
            time.sleep(0.02)

    watcher = threading.Thread(target=sample)
    watcher.start()
    out, err = proc.communicate(timeout=300)
    watcher.join()
    assert proc.returncode == 0, err
    assert reset, "the transfer was never seen starting"
    return peak, out


def test_200_mib_in_bounded_memory(office: OfficeFactory, tmp_path: Path) -> None:
    province = office("TU", "Văn phòng Tỉnh ủy", level="province")
    xa = office("DU", "Đảng ủy xã Yên Lạc", parent=province, level="commune")
    doc = tmp_path / "Tài liệu hội nghị.pdf"
    want = big_file(doc)

    send_peak, _ = peak_during(
        province,
        ["send", "--to", xa.code, "--subject", "Tài liệu hội nghị tổng kết", str(doc)],
        lambda: True,
    )
    recv_peak, _ = peak_during(xa, ["sync"], lambda: True)
    got = hashlib.sha256()
    [folder] = list((xa.home / "inbox").iterdir())
    with (folder / doc.name).open("rb") as fh:
        while block := fh.read(1024 * 1024):
            got.update(block)
    assert got.hexdigest() == want
    print(f"peaks: send {send_peak / 2**20:.0f} MiB, sync {recv_peak / 2**20:.0f} MiB")
    assert send_peak < PEAK_MAX, f"send peaked at {send_peak / 2**20:.0f} MiB"
    assert recv_peak < PEAK_MAX, f"sync peaked at {recv_peak / 2**20:.0f} MiB"
