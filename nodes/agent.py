"""The node agent: what an office's machine does with the hub, one round or as a daemon.

A **round** (:meth:`Agent.sync`):

1. watch folders: ``outbox/<name>/`` with ``send.json`` and ``.ready`` become packets;
2. the outbox: each queued packet's envelope is submitted and its body streamed (small
   packets together through the batch endpoint); the hub's ``accepted`` receipt is
   verified with the hub key pinned at enrolment;
3. the mailbox: for each envelope -- parse, verify the sender against its verified
   directory entry, unwrap the content key and check its commitment, download the body
   (resumable, checked against the envelope's size and SHA-256), open it chunk by chunk
   into a private work folder, and only once every check passed publish
   ``inbox/<packet-id>/`` with a ``metadata.json`` and queue receipt 01.  A packet that
   fails is never written to the inbox: its code is recorded and, when the envelope is
   addressed to us, answered with receipt 02 and the reason.  Receipts relayed to us are
   verified (a recipient's about a packet we sent; the sender's 13 about one we received;
   the hub's ``fetched``) and applied to the delivery's state machine;
4. receipts we signed go to the hub in batches;
5. the log's checkpoint is verified and checked consistent with the last one seen, then
   cosigned as a witness, and the office's own directory entry is watched in the log
   (:mod:`nodes.witness`): a key it never generated is an alarm.

The **daemon** (:meth:`Agent.run`) does the same continuously: a mailbox loop
long-polling the hub, and an outbox loop every second for watch folders, the outbox and
receipts; exponential back-off with full jitter while the hub is unreachable; transfers
resume where they stopped (a ``.part`` download, an envelope the hub already holds);
SIGTERM/SIGINT stop it between steps, never halfway through publishing a packet.

Everything that can wait for the hub waits in the store, so a clerk's command works the
same with or without a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

from protocol import checkpoint as cp
from protocol.bundle import log_origin, log_verifier, open_bundle
from protocol.errors import LocalError, RemoteError
from protocol.receipts import (
    parse_office_receipt,
    verify_office_receipt,
)

from . import watch
from .core import (
    META_CHECKPOINT,
    META_ORIGIN,
    Backoff,
    QuietReporter,
    Reporter,
    RoundReport,
    Stopped,
    iso_time,
    pid_bytes,
    until_stopped,
)
from .deliveries import Deliveries
from .errors import HubError, HubUnavailable, NodeError, error_code, error_detail, is_transient
from .mailbox import Mailbox
from .outbox import Outbox
from .witness import witness_round

__all__ = ["Agent", "QuietReporter", "Reporter", "RoundReport"]

#: Seconds the daemon gives its loops to finish their step once asked to stop.
STOP_GRACE: Final = 20.0
#: Seconds between the daemon's housekeeping (directory, checkpoint, late hub receipts).
HOUSEKEEPING: Final = 300.0


class Agent(Outbox, Mailbox, Deliveries):
    """An office's agent.  ``async with Agent(...) as agent`` opens the hub client."""

    async def check_checkpoint(self) -> int | None:
        """Verify the log's newest checkpoint and its consistency with the last one seen."""
        try:
            note = await self.client.checkpoint()
        except HubUnavailable:
            return None  # no checkpoint signed yet, or the hub is away: try next round
        origin_raw = self.store.get_meta(META_ORIGIN)
        text = cp.parse_note(note).text.decode("utf-8", "replace")
        origin = origin_raw.decode() if origin_raw else text.split("\n", 1)[0]
        if not origin.startswith(log_origin("")):
            raise RemoteError("checkpoint_malformed", f"unexpected log origin {origin!r}")
        new = cp.open_checkpoint(note, log_verifier(self.hub_key, origin))
        old_note = self.store.get_meta(META_CHECKPOINT)
        if old_note is not None:
            old = cp.open_checkpoint(old_note, log_verifier(self.hub_key, origin))
            if new.size < old.size:
                raise RemoteError(
                    "checkpoint_inconsistent", f"the log shrank from {old.size} to {new.size}"
                )
            if new.size > old.size or new.root_hash != old.root_hash:
                proof = [] if old.size == 0 else await self.client.consistency(old.size, new.size)
                cp.check_consistent(old, new, proof)
        if origin_raw is None:
            self.store.set_meta(META_ORIGIN, origin.encode())
        self.store.set_meta(META_CHECKPOINT, note)
        return new.size

    async def proof(self, pid: str) -> tuple[bytes, dict[str, Any]]:
        """The packet's proof bundle from the hub, verified here; (bytes, summary)."""
        origin_raw = self.store.get_meta(META_ORIGIN)
        data = await self.client.bundle(pid_bytes(pid))
        note_text = _bundle_note_origin(data)
        origin = origin_raw.decode() if origin_raw else note_text
        verifier = log_verifier(self.hub_key, origin)
        opened = open_bundle(data, verifier)  # checkpoint and inclusion first
        signers = set()
        sender = None
        for event in opened.events:
            if event.kind == "packet_accepted":
                sender = event.fields["sender"]
            if event.kind == "receipt":
                signers.add(parse_office_receipt(event.fields["receipt"]).receipt.signer)
        entries = await self.directory.fetch(signers)

        def check_receipt(event: Any) -> None:
            parsed = parse_office_receipt(event.fields["receipt"])
            signer = entries.get(parsed.receipt.signer)
            if signer is None:
                raise RemoteError("organ_unknown", f"{parsed.receipt.signer} has no entry")
            verify_office_receipt(
                parsed,
                signer,
                packet_id=event.fields["packet_id"],
                envelope_digest=event.fields["envelope_digest"],
                sender=sender,
            )

        opened = open_bundle(data, verifier, check_receipt=check_receipt)
        events = []
        for index, event in zip(opened.indexes, opened.events, strict=True):
            item: dict[str, Any] = {"index": index, "kind": event.kind, "at": iso_time(event.at)}
            for name in ("organ", "status", "sender"):
                if name in event.fields:
                    item[name] = event.fields[name]
            events.append(item)
        summary = {
            "packet_id": pid,
            "origin": origin,
            "tree_size": opened.checkpoint.size,
            "root_hash": opened.checkpoint.root_hash.hex(),
            "events": events,
            "verified": True,
        }
        return data, summary

    async def scan_watch(self, report: RoundReport) -> None:
        for folder in watch.ready_folders(self.home):
            try:
                req = watch.read_request(folder)
                pid = await self.send(req)
            except HubUnavailable:
                continue  # recipients not cached and no hub: the folder waits
            except (NodeError, RemoteError, LocalError, OSError) as exc:
                dest = watch.finish(
                    self.home,
                    folder,
                    failed=True,
                    doc={"code": error_code(exc), "detail": error_detail(exc)},
                )
                report.watch.append(
                    {"folder": folder.name, "code": error_code(exc), "moved_to": str(dest)}
                )
                self.report.event(
                    "watch.failed", name=folder.name, code=error_code(exc), detail=error_detail(exc)
                )
                continue
            dest = watch.finish(self.home, folder, failed=False, doc={"packet_id": pid})
            report.watch.append({"folder": folder.name, "packet_id": pid, "moved_to": str(dest)})
            self.report.event("watch.sent", name=folder.name, packet=pid)

    async def outbox_pass(self, report: RoundReport, *, everything: bool = False) -> None:
        async with self.home.lock("outbox").hold():
            await self.scan_watch(report)
            sub = await self.submit_outbox(everything=everything)
            report.sent += sub.sent
            report.failed += sub.failed
            report.errors += sub.errors
            report.queued = sub.queued

    async def receipts_pass(self, report: RoundReport) -> None:
        async with self.home.lock("receipts").hold():
            await self.post_receipts(report)

    async def sync(self) -> RoundReport:
        """One round (see the module docstring).  Raises HubUnavailable if the hub is away,
        after doing what can be done without it (watch folders are still sealed)."""
        report = RoundReport()
        unreachable: HubUnavailable | None = None
        try:
            await self.check_identity()
        except HubUnavailable as exc:
            unreachable = exc
        try:
            await self.outbox_pass(report, everything=True)
        except HubUnavailable as exc:
            unreachable = exc
            report.queued = self.store.outbox_count()
        if unreachable is not None:
            raise unreachable
        await self.receipts_pass(report)
        async with self.home.lock("mailbox").hold():
            await self.drain_mailbox(report)
        with contextlib.suppress(HubError, RemoteError):
            await self.refresh_directory(every=0)
        await self.receipts_pass(report)
        with contextlib.suppress(HubError):
            await self.refresh_accepted_receipts()
        # Check the log, cosign it as a witness, watch our own directory entry.
        await witness_round(self, report)
        return report

    async def run(self, stop: asyncio.Event, *, backoff_cap: float = 30.0) -> None:
        """The daemon: a mailbox loop and an outbox loop until ``stop`` is set.

        On ``stop`` the loops finish the step they are in -- a packet being opened is
        published and recorded, never left half done -- while a long-poll, a download or
        an upload in flight is abandoned (the next start resumes it).
        """
        self.report.event("run.started", organ=self.organ, hub=self.config.hub_url)
        self._stop = stop
        hub_up = asyncio.Event()
        loops = [
            asyncio.create_task(self._mailbox_loop(stop, hub_up, backoff_cap), name="mailbox"),
            asyncio.create_task(self._outbox_loop(stop, hub_up, backoff_cap), name="outbox"),
        ]
        try:
            await stop.wait()
            _done, pending = await asyncio.wait(loops, timeout=STOP_GRACE)
            for task in pending:
                task.cancel()
        finally:
            for task in loops:
                task.cancel()
            for task in loops:
                with contextlib.suppress(asyncio.CancelledError, Stopped):
                    await task
            self.report.event("run.stopped")

    async def _pause(
        self, stop: asyncio.Event, delay: float, wake: asyncio.Event | None = None
    ) -> None:
        waiters = [asyncio.ensure_future(stop.wait())]
        if wake is not None:
            waiters.append(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    def _unreachable(self, backoff: Backoff, exc: BaseException, delay: float) -> None:
        # The first failure, then every fifth: a daemon's log is not a heartbeat.
        if backoff.failures <= 1 or backoff.failures % 5 == 0:
            self.report.event(
                "run.unreachable", detail=f"{error_code(exc)}: {error_detail(exc)}", delay=delay
            )

    async def _mailbox_loop(self, stop: asyncio.Event, hub_up: asyncio.Event, cap: float) -> None:
        backoff = Backoff(cap=cap)
        # Ids of stored items, acknowledged by the next long-poll (POST /v1/mailbox): one
        # request per answer.  Whatever is left when the loop ends is acknowledged on its
        # own; lost (a crash), the items come again and are recognised as already stored.
        stored: list[int] = []
        try:
            while not stop.is_set():
                try:
                    await self.check_identity()
                    items = await until_stopped(
                        self.client.mailbox(wait=self.config.poll_wait, limit=50, ack=stored),
                        stop,
                    )
                    stored = []
                    hub_up.set()
                    backoff.reset()
                    if items:
                        report = RoundReport()
                        async with self.home.lock("mailbox").hold():
                            stored = await self.handle_items(items, report, stop, acknowledge=False)
                        async with self.home.lock("receipts").hold():
                            await self.post_receipts()
                except (asyncio.CancelledError, Stopped):
                    return
                except Exception as exc:
                    if is_transient(exc):
                        hub_up.clear()
                        delay = backoff.next()
                    else:  # a refusal (revoked key, hub key mismatch ...): say it, wait long
                        backoff.failures = 0
                        delay = cap
                        stored = []  # not sent again: they come back, known, if need be
                    self._unreachable(backoff, exc, delay)
                    await self._pause(stop, delay)
        finally:
            if stored:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.client.ack(stored), 10)

    async def _outbox_loop(self, stop: asyncio.Event, hub_up: asyncio.Event, cap: float) -> None:
        backoff = Backoff(cap=cap)
        last_housekeeping = 0.0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            delay = 1.0
            try:
                report = RoundReport()
                await self.outbox_pass(report)
                await self.receipts_pass(report)
                if loop.time() - last_housekeeping > HOUSEKEEPING:
                    last_housekeeping = loop.time()
                    with contextlib.suppress(HubError, RemoteError):
                        await self.refresh_directory()
                    with contextlib.suppress(RemoteError, HubError):
                        await witness_round(self, RoundReport())
                    with contextlib.suppress(HubError):
                        await self.refresh_accepted_receipts()
                backoff.reset()
            except (asyncio.CancelledError, Stopped):
                return
            except Exception as exc:
                if is_transient(exc):
                    hub_up.clear()
                    await self._pause(stop, backoff.next(), hub_up)
                    continue
                self._unreachable(backoff, exc, cap)
                delay = cap
            await self._pause(stop, delay)


def _bundle_note_origin(data: bytes) -> str:
    from protocol.codec import decode

    try:
        doc = decode(data, max_size=64 * 1024 * 1024, max_depth=4)
        note = doc["checkpoint"]
        return str(cp.parse_note(note).text.decode().split("\n", 1)[0])
    except (RemoteError, KeyError, TypeError, UnicodeDecodeError):
        raise RemoteError("checkpoint_malformed", "the bundle's checkpoint has no origin") from None
