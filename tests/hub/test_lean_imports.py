"""What a serving hub process loads: optional parts only when they are on (memory)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import hub.app, hub.cli
loaded = sorted(m for m in ("rich", "pygments", "aiosmtpd", "aiosmtplib") if m in sys.modules)
print(",".join(loaded))
import rich.table  # still importable for the CLI's tables
from hub.logs import configure_logging, get_logger
configure_logging()
get_logger("probe").info("ready", n=1)
"""


def test_serving_loads_neither_rich_nor_the_mail_gateway() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == ""
    assert '"event": "ready"' in proc.stderr
