"""Receiving: the mailbox's envelopes and relayed receipts.

For each envelope: parse it strictly, check that it is addressed to this office, verify
the sender's signature against its verified directory entry, unwrap the content key and
check its commitment, download the body (resumable; a small body comes inline in the
mailbox item and is checked the same way) and open it chunk by chunk as it arrives into
a private work folder -- one pass over the body, checked against the envelope's size
and SHA-256 and every chunk tag -- and only when every check passed publish
``inbox/<packet-id>/`` with its ``metadata.json`` and queue receipt 01
(:mod:`nodes.transfer`).  A packet that fails any check is never written to the inbox: it is recorded with the error code and, when the envelope names
this office, answered with receipt 02 and the reason.

Relayed receipts are verified before they count: a recipient's receipt about a packet we
sent (against its signer's entry and our envelope), the sender's recall request (13)
about one we received, the hub's ``fetched`` (against the pinned hub key).  Items are
acknowledged only once stored, so a crash in between loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from protocol.errors import RemoteError
from protocol.keys import fingerprint
from protocol.packet import (
    DocumentMetadata,
    Envelope,
    Opener,
    parse_envelope,
)
from protocol.policy import Secrecy, Urgency
from protocol.receipts import (
    STATUS,
    parse_hub_receipt,
    parse_office_receipt,
    verify_hub_receipt,
    verify_office_receipt,
)

from . import registers, transfer
from .client import HubClient, inline_body, unb64
from .core import (
    AgentCore,
    RoundReport,
    iso_time,
    pid_str,
    replay,
    unix_now,
    until_stopped,
)
from .errors import HubError, HubUnavailable, NodeError

T = TypeVar("T")
#: Bytes of a download gathered before they are opened in one worker-thread call.
FEED_BATCH: Final = 1024 * 1024


class Mailbox(AgentCore):
    """The receiving half of the agent."""

    async def fetch_mailbox(
        self, *, wait: int = 0, report: RoundReport | None = None, stop: asyncio.Event | None = None
    ) -> RoundReport:
        """Fetch and handle one mailbox answer; acknowledge what is safely stored."""
        report = report or RoundReport()
        items = await self.client.mailbox(wait=wait, limit=50)
        await self.handle_items(items, report, stop)
        return report

    async def drain_mailbox(self, report: RoundReport, rounds: int = 20) -> None:
        for _ in range(rounds):
            items = await self.client.mailbox(wait=0, limit=50)
            if not items:
                return
            await self.handle_items(items, report)

    async def handle_items(
        self,
        items: Sequence[Mapping[str, Any]],
        report: RoundReport,
        stop: asyncio.Event | None = None,
        *,
        acknowledge: bool = True,
    ) -> list[int]:
        """Handle an answer's items; the ids of those safely stored, acknowledged here
        unless ``acknowledge`` is false (the caller sends them with its next long-poll;
        if handling fails part way, what was stored is acknowledged here all the same)."""
        done: list[int] = []
        failed = True
        try:
            # One directory request for every organ these items need.
            organs: set[str] = set()
            for item in items:
                organs.update(_organs_of(item))
            if organs:
                await self.directory.fetch(organs)
            for item in items:
                if stop is not None and stop.is_set():
                    break
                kind = item.get("kind")
                if kind == "envelope":
                    ok = await self._receive(item, report)
                elif kind == "receipt":
                    ok = await self._receipt_in(item, report)
                elif kind == "hub_receipt":
                    ok = await self._hub_receipt_in(item, report)
                else:
                    ok = True  # a kind this node does not know: nothing to keep
                if ok and isinstance(item.get("id"), int):
                    done.append(item["id"])
            failed = False
        finally:
            if done and (acknowledge or failed):
                with contextlib.suppress(HubUnavailable, HubError):
                    await self.client.ack(done)
        return [] if acknowledge else done

    async def _receive(self, item: Mapping[str, Any], report: RoundReport) -> bool:
        """Handle one envelope; True when it may be acknowledged."""
        pid = str(item.get("packet_id") or "")
        known = self.store.get_inbox(pid) if pid else None
        if known is not None:
            return True  # delivered twice (at least once): we already have it
        try:
            raw = unb64(item.get("envelope"), "envelope")
            env = parse_envelope(raw)
            if pid and pid_str(env.packet_id) != pid:
                raise RemoteError("packet_id_invalid", "the mailbox item names another packet")
        except (RemoteError, HubError) as exc:
            self._refuse(pid or f"mailbox-item-{item.get('id')}", None, exc, report)
            return True
        pid = pid_str(env.packet_id)
        part = self.home.tmp / f"{pid}.body"
        sender_name = self.directory.name(env.sender)
        try:
            stanza = env.stanza(self.organ)
            sender = await self.directory.entry(env.sender)
            env.verify_sender(sender)
            key = self.keystore.encryption_key_for(stanza.kid)
            if key is None:
                raise RemoteError(
                    "recipient_not_addressed", "sealed to a key this office does not hold"
                )
            opener = Opener(env, organ=self.organ, key=key)
            sender_name = sender.name
            received_at = unix_now()
            meta = opener.metadata

            def metadata(files: list[dict[str, Any]]) -> dict[str, Any]:
                return self._metadata_doc(env, sender.name, meta, files, received_at)

            inline = inline_body(item, env.body_info)
            listing = await self._fetch_body(opener, part, pid, metadata, inline)
        except RemoteError as exc:
            part.unlink(missing_ok=True)
            self._refuse(pid, env, exc, report, sender_name=sender_name)
            return True
        except HubError as exc:
            if exc.transient:
                raise HubUnavailable(exc.detail) from None
            part.unlink(missing_ok=True)
            self._refuse(pid, env, exc, report, sender_name=sender_name)
            return True
        part.unlink(missing_ok=True)
        record = self._inbox_record(env, sender_name, received_at)
        record.update(
            {
                "subject": meta.subject,
                "doc_type": meta.doc_type,
                "number": meta.number,
                "notation": meta.notation,
                "signer": meta.signer,
                "issued": meta.issued,
                "place": meta.place,
                "notes": meta.notes,
                "files": json.dumps(listing, ensure_ascii=False),
                "folder": str(self.home.inbox / pid),
                "state": "pending",
                "verified": 1,
            }
        )
        self.store.insert_inbox(record)
        self._queue_own_receipt(pid, env, "01")
        report.received.append(pid)
        self.report.event("sync.received", packet=pid, sender=sender_name, subject=meta.subject)
        return True

    async def _fetch_body(
        self,
        opener: Opener,
        part: Path,
        pid: str,
        metadata: Callable[[list[dict[str, Any]]], Mapping[str, Any]],
        inline: bytes | None = None,
    ) -> list[dict[str, Any]]:
        """Download the body into ``part`` while opening it; publish ``inbox/<pid>``.

        One pass over the body (:class:`transfer.BodyReceiver`): the download resumes
        from what ``part`` holds, the plaintext waits in a private work folder until every
        check passed.  A refused body leaves nothing (:class:`RemoteError`); a broken
        connection keeps ``part`` for the next attempt.  A body the mailbox item carried
        (``inline``, already checked by :func:`nodes.client.inline_body`) is fed to the
        same receiver instead of being downloaded.
        """
        info = opener.envelope.body_info
        receiver = transfer.BodyReceiver(opener, part, self.home.tmp / f"{pid}.open")
        try:
            if inline is not None:
                await _in_thread(_take_inline, receiver, inline)
            else:
                with self._progress("download", info.size) as progress:
                    await until_stopped(download_into(self.client, receiver, progress), self._stop)
            return await _in_thread(receiver.finish, self.home.inbox / pid, metadata)
        except RemoteError:
            await _in_thread(receiver.discard)
            raise
        except BaseException:
            await _in_thread(receiver.suspend)
            raise

    def _inbox_record(self, env: Envelope, sender_name: str, at: int) -> dict[str, Any]:
        r = env.routing
        return {
            "packet_id": pid_str(env.packet_id),
            "received_at": at,
            "sender": env.sender,
            "sender_name": sender_name,
            "kind": env.kind,
            "urgency": r.urgency,
            "secrecy": r.secrecy,
            "due": r.due,
            "in_reply_to": pid_str(r.in_reply_to) if r.in_reply_to else None,
            "envelope": env.raw,
            "envelope_digest": env.digest,
        }

    def _metadata_doc(
        self,
        env: Envelope,
        sender_name: str,
        meta: DocumentMetadata,
        files: list[dict[str, Any]],
        received_at: int,
    ) -> dict[str, Any]:
        r = env.routing
        urgency = Urgency(r.urgency)
        secrecy = Secrecy(r.secrecy)
        return {
            "packet_id": pid_str(env.packet_id),
            "kind": env.kind,
            "sender": {"organ": env.sender, "name": sender_name},
            "recipient": self.organ,
            "created_at": iso_time(env.created_at),
            "received_at": iso_time(received_at),
            "subject": meta.subject,
            "doc_type": meta.doc_type,
            "doc_type_name": registers.type_name(meta.doc_type),
            "number": meta.number,
            "notation": meta.notation,
            "reference": registers.reference(meta.number, meta.notation),
            "signer": meta.signer,
            "issued": meta.issued,
            "place": meta.place,
            "notes": meta.notes,
            "urgency": {"code": int(urgency), "name": urgency.cli_name, "label": urgency.label},
            "secrecy": {"code": int(secrecy), "name": secrecy.cli_name, "label": secrecy.label},
            "due": r.due,
            "in_reply_to": pid_str(r.in_reply_to) if r.in_reply_to else None,
            "envelope_sha256": env.digest.hex(),
            "body_sha256": env.body_info.sha256.hex(),
            "sender_key": fingerprint(env.sender_kid),
            "verified": {
                "sender_signature": True,
                "cek_commitment": True,
                "body_sha256": True,
                "chunk_tags": True,
                "file_sha256": True,
            },
            "files": files,
        }

    def _refuse(
        self,
        pid: str,
        env: Envelope | None,
        exc: RemoteError | HubError,
        report: RoundReport,
        *,
        sender_name: str | None = None,
    ) -> None:
        """Record a packet that failed verification; answer 02 when the envelope allows."""
        code, detail = exc.code, exc.detail
        record: dict[str, Any] = {
            "packet_id": pid,
            "received_at": unix_now(),
            "sender": env.sender if env is not None else "",
            "sender_name": sender_name,
            "state": "pending",
            "verified": 0,
            "error_code": code,
            "error_detail": detail,
        }
        if env is not None:
            record.update(self._inbox_record(env, sender_name or env.sender, record["received_at"]))
        self.store.insert_inbox(record)
        report.refused.append({"packet_id": pid, "code": code, "detail": detail})
        self.report.event(
            "sync.refused",
            packet=pid,
            sender=sender_name or (env.sender if env else "?"),
            code=code,
            detail=detail,
        )
        if env is not None and self.organ in {s.organ for s in env.recipients}:
            text = f"{code}: {detail}"
            reason = "".join(ch for ch in text if ch.isprintable())[:2000]
            with contextlib.suppress(RemoteError, NodeError):
                self._queue_own_receipt(pid, env, "02", reason=reason)

    async def _receipt_in(self, item: Mapping[str, Any], report: RoundReport) -> bool:
        try:
            raw = unb64(item.get("receipt"), "receipt")
            parsed = parse_office_receipt(raw)
        except (RemoteError, HubError) as exc:
            report.errors.append({"code": exc.code, "detail": exc.detail})
            return True
        if self.store.has_receipt(parsed.digest):
            return True
        r = parsed.receipt
        pid = pid_str(r.packet_id)
        sent = self.store.get_sent(pid)
        inbox = self.store.get_inbox(pid)
        record: dict[str, Any] = {
            "digest": parsed.digest,
            "packet_id": pid,
            "organ": r.organ,
            "signer": r.signer,
            "status": r.status,
            "at": r.at,
            "reason": r.reason,
            "details": dict(r.details),
            "raw": raw,
            "source": "office",
            "direction": "in",
        }
        try:
            if sent is not None and r.signer != self.organ:
                env = parse_envelope(bytes(sent["envelope"]))
                signer = await self.directory.entry(r.signer)
                verify_office_receipt(parsed, signer, envelope=env)
                self.store.add_receipt({**record, "state": "verified"})
                self._update_delivery(pid, r.organ)
                report.receipts_in += 1
                self.report.event(
                    "sync.receipt",
                    status=r.status,
                    label=STATUS[r.status].vi,
                    organ=self.directory.name(r.organ),
                    packet=pid,
                )
            elif inbox is not None and inbox["envelope"] is not None and r.organ == self.organ:
                env = parse_envelope(bytes(inbox["envelope"]))
                signer = await self.directory.entry(r.signer)
                verify_office_receipt(parsed, signer, envelope=env)
                self.store.add_receipt({**record, "state": "verified"})
                history = json.loads(inbox["history"])
                history.append([r.status, r.at])
                state = replay(history).state
                fields: dict[str, Any] = {"state": state, "history": json.dumps(history)}
                if r.status == "13":
                    fields["recall_reason"] = r.reason
                    self.report.event(
                        "sync.recall",
                        sender=self.directory.name(r.signer),
                        packet=pid,
                        reason=r.reason or "",
                    )
                self.store.update_inbox(pid, **fields)
                report.receipts_in += 1
            else:
                raise RemoteError("packet_unknown", f"no packet {pid} in this office's store")
        except RemoteError as exc:
            self.store.add_receipt(
                {**record, "state": "invalid", "error_code": exc.code, "error_detail": exc.detail}
            )
            report.errors.append({"packet_id": pid, "code": exc.code, "detail": exc.detail})
            self.report.event("sync.receipt_invalid", packet=pid, organ=r.signer, code=exc.code)
        return True

    async def _hub_receipt_in(self, item: Mapping[str, Any], report: RoundReport) -> bool:
        try:
            raw = unb64(item.get("receipt"), "receipt")
            parsed = parse_hub_receipt(raw)
        except (RemoteError, HubError) as exc:
            report.errors.append({"code": exc.code, "detail": exc.detail})
            return True
        if self.store.has_receipt(parsed.digest):
            return True
        r = parsed.receipt
        pid = pid_str(r.packet_id)
        record: dict[str, Any] = {
            "digest": parsed.digest,
            "packet_id": pid,
            "organ": r.organ,
            "signer": "hub",
            "status": r.kind,
            "at": r.at,
            "raw": raw,
            "source": "hub",
            "direction": "in",
        }
        sent = self.store.get_sent(pid)
        try:
            if sent is None:
                raise RemoteError("packet_unknown", f"no packet {pid} sent by this office")
            env = parse_envelope(bytes(sent["envelope"]))
            verify_hub_receipt(parsed, self.hub_key, envelope=env)
        except RemoteError as exc:
            self.store.add_receipt(
                {**record, "state": "invalid", "error_code": exc.code, "error_detail": exc.detail}
            )
            report.errors.append({"packet_id": pid, "code": exc.code, "detail": exc.detail})
            return True
        self.store.add_receipt({**record, "state": "verified"})
        if r.kind == "fetched":
            self._update_delivery(pid, r.organ, fetched_at=r.at)
        report.receipts_in += 1
        return True


async def download_into(
    client: HubClient, receiver: transfer.BodyReceiver, progress: transfer.Progress | None = None
) -> None:
    """Start ``receiver`` (resuming what it holds) and feed it the rest of the body.

    The pieces are gathered into batches of about :data:`FEED_BATCH` bytes; one batch is
    written and opened in a worker thread while the next one arrives.  When this returns
    or raises, no worker-thread call on the receiver is running.
    """
    info = receiver.info
    have = await _in_thread(receiver.start)
    if have >= info.size:
        return
    async with client.body_stream(info.sha256, have) as stream:
        skip = have - stream.start  # the hub ignored the range: bytes we hold already
        done = have
        batch: list[bytes] = []
        size = 0
        feeding: asyncio.Future[None] | None = None
        try:
            async for chunk, _ in stream.content.iter_chunks():  # as received: no joining
                if skip:
                    drop = min(skip, len(chunk))
                    chunk, skip = chunk[drop:], skip - drop
                batch.append(chunk)
                size += len(chunk)
                if size >= FEED_BATCH:
                    if feeding is not None:
                        await asyncio.shield(feeding)
                    feeding = _start_thread(receiver.feed, batch)
                    done += size
                    batch, size = [], 0
                    if progress is not None:
                        progress(done, info.size)
            if feeding is not None:
                await asyncio.shield(feeding)
            feeding = _start_thread(receiver.feed, batch)
            done += size
            batch, size = [], 0
            await asyncio.shield(feeding)
        except BaseException as exc:
            fed = feeding is None or await _settle(feeding)
            if batch and fed and not isinstance(exc, RemoteError):
                # The connection broke: what arrived is kept for the resumption.
                await _in_thread(receiver.keep, batch)
            raise
        if progress is not None:
            progress(done, info.size)


def _take_inline(receiver: transfer.BodyReceiver, data: bytes) -> None:
    """The whole body at once: whatever an earlier download left in ``part`` is dropped."""
    receiver.part.unlink(missing_ok=True)
    receiver.start()
    receiver.feed([data])


def _start_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    return asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn`` in a worker thread; if cancelled meanwhile, only once it has ended.

    The body receiver's methods must never overlap: a cancelled wait would otherwise let
    the clean-up start while the thread still writes.
    """
    future = _start_thread(fn, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await _settle(future)
        raise


async def _settle(future: asyncio.Future[Any]) -> bool:
    """Wait for a worker thread's call to end, whatever it or the caller raises.

    Returns whether it succeeded.  ``future`` must not have been cancelled (await it
    through :func:`asyncio.shield`): a cancelled one would not say when the thread ends.
    """
    while not future.done():
        with contextlib.suppress(BaseException):
            await asyncio.wait([future])
    # Retrieved either way: the caller's own error supersedes this one.
    return not future.cancelled() and future.exception() is None


def _organs_of(item: Mapping[str, Any]) -> set[str]:
    out: set[str] = set()
    signer = item.get("signer")
    if isinstance(signer, str) and signer != "hub":
        out.add(signer)
    if item.get("kind") == "envelope":
        with contextlib.suppress(RemoteError, HubError):
            out.add(parse_envelope(unb64(item.get("envelope"), "envelope")).sender)
    return {o for o in out if o}
