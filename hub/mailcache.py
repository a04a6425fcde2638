"""What mailbox answers repeat: a packet's envelope and small body, encoded once.

A packet sent to 1,000 offices is read by 1,000 long-polls, woken within the same second:
without a cache each reads the (up to ~1.2 MB) envelope from the database and encodes it
in base64 again.  :class:`ItemCache` keeps the encoded bytes by packet id for
:data:`TTL` seconds within :data:`MAX_BYTES`, and loads a missing packet once however many
requests want it at the same moment (the others wait for that load).

An accepted packet's envelope and body never change, so an entry cannot go stale; the
TTL and the bound only limit memory.  Whether a body may still be served (retention
deletes bodies) is decided by the caller from the database on each read.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any, Final

#: Seconds an encoded packet stays (a fan-out's long-polls all come within a few).
TTL: Final = 30.0
#: Base64 characters kept at most, all packets together: least recently used dropped
#: first, so a packet many offices are reading stays while the one-recipient packets of
#: steady traffic pass through (at 200 small packets a second, 16 MiB is ~4 s of them).
MAX_BYTES: Final = 16 * 1024 * 1024
#: A packet larger than this share of the bound is not kept (a hybrid envelope for
#: 1,000 offices is ~1.7 MB in base64).
ITEM_MAX: Final = MAX_BYTES // 4


class B64(bytes):
    """Base64 as ASCII bytes (only ``A-Za-z0-9+/=``): goes between JSON quotes as it is."""

    __slots__ = ()

    @classmethod
    def of(cls, data: bytes) -> B64:
        return cls(base64.b64encode(data))


_dumps: Final = json.JSONEncoder().encode
#: Answers are written in pieces of about this size (small parts gathered, large sliced).
CHUNK: Final = 256 * 1024


def to_json(value: Any) -> list[bytes]:
    """``json.dumps(value)`` as UTF-8 parts, :class:`B64` values copied by reference.

    A mailbox answer is mostly base64 (envelopes, small bodies).  The standard encoder
    scans every character of it for escapes, which was most of the answer's cost, and
    joining one string per answer copied a fan-out's ~1.7 MB envelope once per office
    (twice with the encoding to bytes): the parts keep the cached base64 as it is and
    :func:`chunks` writes it out in slices.
    """
    out: list[bytes] = []
    _to_json(value, out)
    return out


def _to_json(value: Any, out: list[bytes]) -> None:
    kind = type(value)
    if kind is B64:
        out += (b'"', value, b'"')
    elif kind is dict:
        out.append(b"{")
        sep = b""
        for key, item in value.items():
            out += (sep, _dumps(key).encode(), b": ")
            _to_json(item, out)
            sep = b", "
        out.append(b"}")
    elif kind is list:
        out.append(b"[")
        sep = b""
        for item in value:
            out.append(sep)
            _to_json(item, out)
            sep = b", "
        out.append(b"]")
    else:
        out.append(_dumps(value).encode())


def chunks(parts: list[bytes], size: int = CHUNK) -> Iterator[bytes | memoryview]:
    """The parts' bytes in order, in pieces of about ``size``: small parts gathered into
    one, a large one sliced (a view, no copy)."""
    pending: list[bytes] = []
    held = 0
    for part in parts:
        if not part:
            continue
        if len(part) < size:
            pending.append(part)
            held += len(part)
            if held >= size:
                yield b"".join(pending)
                pending, held = [], 0
            continue
        if pending:
            yield b"".join(pending)
            pending, held = [], 0
        view = memoryview(part)
        for start in range(0, len(part), size):
            yield view[start : start + size]
    if pending:
        yield b"".join(pending)


@dataclass(frozen=True, slots=True)
class Encoded:
    """A packet as mailbox answers carry it."""

    #: The envelope, base64.
    envelope: B64
    #: The envelope's size in bytes (what the answer's byte budget counts).
    envelope_size: int
    #: The body, base64, when it is small enough to travel inline and was readable.
    body: B64 | None

    @property
    def cost(self) -> int:
        return len(self.envelope) + len(self.body or "")


Loader = Callable[[list[bytes]], Awaitable[dict[bytes, Encoded]]]


class ItemCache:
    def __init__(self, ttl: float = TTL, max_bytes: int = MAX_BYTES) -> None:
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._items: OrderedDict[bytes, tuple[float, Encoded]] = OrderedDict()
        self._bytes = 0
        self._loading: dict[bytes, asyncio.Future[Encoded | None]] = {}
        #: Packets loaded from the database (for tests and diagnostics).
        self.loads = 0

    def _get(self, packet_id: bytes, at: float) -> Encoded | None:
        found = self._items.get(packet_id)
        if found is None:
            return None
        if at - found[0] >= self.ttl:
            self._drop(packet_id)
            return None
        self._items.move_to_end(packet_id)
        return found[1]

    def _drop(self, packet_id: bytes) -> None:
        _, item = self._items.pop(packet_id)
        self._bytes -= item.cost

    def _put(self, packet_id: bytes, item: Encoded, at: float) -> None:
        if self.ttl <= 0 or item.cost > min(ITEM_MAX, self.max_bytes):
            return
        if packet_id in self._items:
            self._drop(packet_id)
        self._items[packet_id] = (at, item)
        self._bytes += item.cost
        while self._bytes > self.max_bytes:
            oldest = next(iter(self._items))
            self._drop(oldest)

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0

    async def get_many(self, packet_ids: Collection[bytes], load: Loader) -> dict[bytes, Encoded]:
        """The encoded packets; ``load`` reads those neither cached nor being loaded.

        A packet ``load`` does not return is missing from the answer (and not cached).
        """
        at = time.monotonic()
        found: dict[bytes, Encoded] = {}
        waiting: dict[bytes, asyncio.Future[Encoded | None]] = {}
        missing: list[bytes] = []
        for pid in packet_ids:
            hit = self._get(pid, at)
            if hit is not None:
                found[pid] = hit
            elif pid in self._loading:
                waiting[pid] = self._loading[pid]
            else:
                missing.append(pid)
        if missing:
            found.update(await self._load(missing, load))
        if waiting:
            await asyncio.wait(waiting.values())
            again: list[bytes] = []
            for pid, fut in waiting.items():
                item = None if fut.cancelled() else fut.result()
                if item is None:
                    again.append(pid)  # that load failed or found nothing: ask ourselves
                else:
                    found[pid] = item
            if again:
                self.loads += len(again)
                found.update(await load(again))
        return found

    async def _load(self, missing: list[bytes], load: Loader) -> dict[bytes, Encoded]:
        loop = asyncio.get_running_loop()
        futures = {pid: loop.create_future() for pid in missing}
        self._loading.update(futures)
        loaded: dict[bytes, Encoded] = {}
        try:
            self.loads += len(missing)
            loaded = await load(missing)
            at = time.monotonic()
            for pid, item in loaded.items():
                self._put(pid, item, at)
        finally:
            for pid, fut in futures.items():
                if self._loading.get(pid) is fut:
                    del self._loading[pid]
                if not fut.done():
                    got = loaded.get(pid)
                    if got is None:
                        fut.cancel()  # waiters load it themselves
                    else:
                        fut.set_result(got)
        return loaded
