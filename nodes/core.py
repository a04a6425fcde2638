"""The agent's shared core: its state, the office's own receipts, and small helpers.

:class:`AgentCore` holds what every part of the agent uses -- the home folder, the
configuration, the local store, the decrypted keystore, the hub client and the verified
directory view -- and the two things both directions need: signing one of the office's
own statuses about a received packet (:meth:`AgentCore._queue_own_receipt`), and
recomputing a sent packet's delivery state from its verified receipts
(:meth:`AgentCore._update_delivery`).  The parts are mixed in by :class:`nodes.agent.Agent`:
:mod:`nodes.outbox` (sending), :mod:`nodes.mailbox` (receiving), :mod:`nodes.deliveries`
(the clerk's statuses, receipts and status views).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol, Self, TypeVar

from protocol.errors import LocalError, RemoteError
from protocol.keys import SigningPublicKey, fingerprint
from protocol.packet import (
    Envelope,
    parse_envelope,
)
from protocol.policy import VN_TZ
from protocol.receipts import (
    STATUS,
    Delivery,
    OfficeReceipt,
    parse_office_receipt,
    sign_office_receipt,
    verify_hub_receipt,
)

from . import registers
from .client import HubClient, Progress, packet_text
from .directory import DESCENDANTS_DEPTH, DirectoryView
from .errors import NodeError
from .home import Home, NodeConfig
from .keystore import Keystore
from .store import Store

#: Transfers from this size on get a progress bar.
PROGRESS_FROM: Final = 4 * 1024 * 1024
META_CHECKPOINT: Final = "checkpoint"
META_ORIGIN: Final = "log_origin"
META_DIRECTORY_AT: Final = "directory_refreshed_at"

T = TypeVar("T")


class Reporter(Protocol):
    """Where the agent tells what happens: the CLI prints, the daemon logs."""

    def event(self, key: str, **values: Any) -> None: ...

    def transfer(
        self, label: str, total: int
    ) -> contextlib.AbstractContextManager[Progress | None]: ...


class QuietReporter:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def event(self, key: str, **values: Any) -> None:
        self.events.append((key, values))

    @contextlib.contextmanager
    def transfer(self, label: str, total: int) -> Iterator[Progress | None]:
        yield None


@dataclass
class RoundReport:
    """What one round did (the CLI's ``sync --json`` prints it)."""

    sent: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    received: list[str] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)
    receipts_in: int = 0
    receipts_out: int = 0
    watch: list[dict[str, str]] = field(default_factory=list)
    queued: int = 0
    checkpoint: int | None = None
    errors: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "failed": self.failed,
            "received": self.received,
            "refused": self.refused,
            "receipts_in": self.receipts_in,
            "receipts_out": self.receipts_out,
            "watch": self.watch,
            "queued": self.queued,
            "checkpoint": self.checkpoint,
            "errors": self.errors,
        }


class Backoff:
    """Exponential back-off with jitter, capped.

    The n-th wait is drawn uniformly from [base/2, min(cap, base * 2^n)]: many offices
    cut off by the same outage do not all come back in the same second.
    """

    def __init__(self, base: float = 1.0, cap: float = 60.0) -> None:
        self.cap = cap
        self.base = min(base, cap)
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        ceiling = min(self.cap, self.base * 2 ** min(self.failures, 20))
        return random.uniform(self.base / 2, ceiling)  # noqa: S311 - jitter, not crypto

    def reset(self) -> None:
        self.failures = 0


def unix_now() -> int:
    return int(time.time())


def iso_time(ts: int | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, VN_TZ).isoformat()


def timeline_order(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Steps in the order they happened: by time, the hub's ``fetched`` before the 01."""
    return sorted(history, key=lambda h: (h.get("at") or "", h.get("source") != "hub"))


def pid_str(packet_id: bytes) -> str:
    return packet_text(packet_id)


def pid_bytes(text: str) -> bytes:
    return uuid.UUID(text).bytes


def replay(history: Sequence[Sequence[Any]]) -> Delivery:
    """The delivery state machine over a stored history; tolerant of a bad stored step."""
    delivery = Delivery()
    for status, at in history:
        with contextlib.suppress(RemoteError):
            delivery.apply(str(status), STATUS[str(status)].by_sender, int(at))
    return delivery


def status_label(status: str) -> str:
    if status in STATUS:
        return STATUS[status].vi
    return {"fetched": "đã tải về", "accepted": "hub đã nhận"}.get(status, status)


class Stopped(Exception):
    """The daemon was asked to stop while waiting on the network."""


async def until_stopped(work: Awaitable[T], stop: asyncio.Event | None) -> T:
    """Await ``work``, abandoning it (``Stopped``) if ``stop`` is set first."""
    if stop is None:
        return await work
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise Stopped
    return task.result()


class AgentCore:
    """State shared by the parts of the agent.  ``async with`` opens the hub client."""

    def __init__(
        self,
        home: Home,
        config: NodeConfig,
        store: Store,
        keystore: Keystore,
        reporter: Reporter | None = None,
    ) -> None:
        self.home = home
        self.config = config
        self.store = store
        self.keystore = keystore
        self.organ = keystore.organ
        self.report: Reporter = reporter or QuietReporter()
        self.client = HubClient(
            config.hub_url,
            organ=self.organ,
            signing_key=keystore.signing_key,
            authority=keystore.authority,
            ca_file=config.ca_file or None,
        )
        self.directory = DirectoryView(store, keystore.authority, self.client)
        self.numbering = registers.Numbering(config.numbering, config.term_start, config.term_years)
        self._identity_checked = False
        #: Set by the daemon: transfers in flight are abandoned when it is set.
        self._stop: asyncio.Event | None = None

    async def __aenter__(self) -> Self:
        await self.client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.__aexit__(*exc)

    @property
    def hub_key(self) -> SigningPublicKey:
        if self.keystore.hub_key is None:
            raise NodeError("keystore_damaged", "the keystore has no pinned hub key")
        return self.keystore.hub_key

    @contextlib.contextmanager
    def _progress(self, label: str, total: int) -> Iterator[Progress | None]:
        if total < PROGRESS_FROM:
            yield None
            return
        with self.report.transfer(label, total) as progress:
            yield progress

    async def check_identity(self) -> None:
        """The hub must still announce the keys pinned at enrolment.

        A round asks this first, before logging in (the keys are public): another hub at
        the configured address is named as such, ``hub_key_mismatch``, rather than
        refusing an organ it does not know.
        """
        if self._identity_checked:
            return
        authority, hub_key = await self.client.identity()
        if authority.raw != self.keystore.authority.raw:
            raise NodeError(
                "hub_key_mismatch",
                f"the hub's directory authority is {fingerprint(authority.kid)}, "
                f"pinned {fingerprint(self.keystore.authority.kid)}",
            )
        if self.keystore.hub_key is not None and hub_key.raw != self.keystore.hub_key.raw:
            raise NodeError(
                "hub_key_mismatch",
                f"the hub's key is {fingerprint(hub_key.kid)}, "
                f"pinned {fingerprint(self.keystore.hub_key.kid)}",
            )
        self._identity_checked = True

    async def refresh_directory(self, *, every: int = 3600) -> bool:
        """Keep the entries of the organs we may exchange with cached (see DirectoryView).

        Ancestors, descendants and siblings: the routes the hub allows by default.  With
        them cached, a clerk can seal a document while the hub is unreachable.  Runs at
        most every ``every`` seconds; returns True when it ran.
        """
        last = self.store.get_meta(META_DIRECTORY_AT)
        if last is not None and unix_now() - int(last) < every:
            return False
        own = await self.directory.entry(self.organ)
        parents: list[str] = []
        parent = own.parent
        while parent is not None and parent not in parents and len(parents) < DESCENDANTS_DEPTH:
            parents.append(parent)
            entry = (await self.directory.fetch([parent])).get(parent)
            parent = entry.parent if entry is not None else None
        await self.directory.below(self.organ, DESCENDANTS_DEPTH)
        if own.parent is not None:
            await self.directory.below(own.parent, 1)
        self.store.set_meta(META_DIRECTORY_AT, str(unix_now()).encode())
        return True

    def _check_accepted(
        self, pid: str, envelope: bytes, raw: bytes, fields: dict[str, Any]
    ) -> int | None:
        try:
            env = parse_envelope(envelope)
            r = verify_hub_receipt(raw, self.hub_key, envelope=env, kind="accepted")
        except RemoteError as exc:
            fields["error_code"] = exc.code
            fields["error_detail"] = f"the hub's accepted receipt does not verify: {exc.detail}"
            return None
        fields["hub_receipt"] = raw
        fields["log_index"] = r.log_index
        fields["accepted_at"] = r.at
        return r.log_index

    def _queue_own_receipt(
        self,
        pid: str,
        env: Envelope,
        status: str,
        *,
        reason: str | None = None,
        details: Mapping[str, str] | None = None,
    ) -> OfficeReceipt:
        """Sign a status about our own delivery, apply it locally, queue it for the hub."""
        row = self.store.get_inbox(pid)
        history = json.loads(row["history"]) if row is not None else []
        at = max(unix_now(), max((int(s[1]) for s in history), default=0))
        delivery = replay(history)
        try:
            state = delivery.apply(status, False, at)
        except RemoteError as exc:
            raise NodeError(exc.code, exc.detail) from None
        receipt = OfficeReceipt(
            packet_id=env.packet_id,
            envelope_digest=env.digest,
            organ=self.organ,
            signer=self.organ,
            signer_kid=self.keystore.signing_key.kid,
            status=status,
            at=at,
            reason=reason,
            details=dict(details or {}),
        )
        try:
            raw = sign_office_receipt(receipt, self.keystore.signing_key)
        except LocalError as exc:
            raise NodeError("request_invalid", str(exc)) from None
        parsed = parse_office_receipt(raw)
        history.append([status, at])
        with self.store.transaction():  # the receipt and the state it leads to, together
            self.store.add_receipt(
                {
                    "digest": parsed.digest,
                    "packet_id": pid,
                    "organ": self.organ,
                    "signer": self.organ,
                    "status": status,
                    "at": at,
                    "reason": parsed.receipt.reason,
                    "details": dict(parsed.receipt.details),
                    "raw": raw,
                    "source": "office",
                    "direction": "out",
                    "state": "queued",
                }
            )
            self.store.update_inbox(pid, state=state, history=json.dumps(history))
        return parsed.receipt

    def _update_delivery(self, pid: str, organ: str, *, fetched_at: int | None = None) -> str:
        """Recompute a sent packet's delivery state from the verified office receipts."""
        steps = [
            [row["status"], int(row["at"])]
            for row in self.store.receipts_for(pid)
            if row["organ"] == organ
            and row["source"] == "office"
            and (
                row["state"] == "verified"
                or (row["direction"] == "out" and row["state"] != "failed")
            )
        ]
        state = replay(steps).state
        self.store.set_delivery(pid, organ, state, fetched_at=fetched_at)
        return state
