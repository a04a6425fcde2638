"""The hub's clock: integer Unix seconds, UTC, as every stored time and signed object uses.

Dates typed by operators (``merge --from 2025-07-01``) are Vietnam dates: they start at
midnight UTC+7.
"""

from __future__ import annotations

import time
from datetime import date, datetime

from protocol.errors import LocalError
from protocol.policy import VN_TZ


def now() -> int:
    return int(time.time())


def vn_midnight(day: str) -> int:
    """Unix seconds of 00:00 (UTC+7) on ``day`` (YYYY-MM-DD)."""
    try:
        parsed = date.fromisoformat(day)
    except ValueError:
        raise LocalError(f"{day!r} is not a date YYYY-MM-DD") from None
    return int(datetime(parsed.year, parsed.month, parsed.day, tzinfo=VN_TZ).timestamp())
