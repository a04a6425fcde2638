"""The daemon's back-off while the hub is unreachable."""

from __future__ import annotations

from nodes.core import Backoff


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    b = Backoff(base=1.0, cap=8.0)
    waits = [b.next() for _ in range(12)]
    assert all(0.5 <= w <= 8.0 for w in waits)
    assert max(waits[:1]) <= 2.0
    assert b.failures == 12
    b.reset()
    assert b.failures == 0
    assert 0.5 <= b.next() <= 2.0


def test_a_tiny_cap_is_respected() -> None:
    b = Backoff(cap=0.2)
    assert all(0.1 <= b.next() <= 0.2 for _ in range(10))
