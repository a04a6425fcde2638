"""Sending: seal documents for their recipients, queue them, submit them to the hub.

``send`` resolves the recipients (``--to``, ``--to-children``, ``--to-descendants``, merged
organs to their successors) from verified directory entries, copies the files into the
archive (bản lưu), takes the next number of the outgoing register, seals the files for
every recipient's current encryption key into the spool, and queues the packet -- no
connection needed when the entries are cached.  ``submit_outbox`` submits what is queued:
the envelope, then the body streamed from its file (small packets together through the
batch endpoint); an envelope the hub already holds answers idempotently, so a retry after
a lost answer delivers once.  A packet the hub refuses because it waited too long
(``clock_skew``) or a recipient's key changed meanwhile is sealed again under the same
packet id; any other refusal is recorded with its code.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from protocol.codec import nfc
from protocol.errors import LocalError
from protocol.packet import (
    DEFAULT_CHUNK,
    DocumentMetadata,
    Recipient,
    Reference,
    Routing,
    Sealer,
    new_packet_id,
    parse_envelope,
)
from protocol.policy import Secrecy
from protocol.receipts import (
    TERMINAL,
    OfficeReceipt,
    parse_office_receipt,
    sign_office_receipt,
)

from . import registers, transfer
from .client import unb64
from .core import (
    AgentCore,
    RoundReport,
    pid_bytes,
    pid_str,
    unix_now,
    until_stopped,
)
from .directory import DESCENDANTS_DEPTH, Resolved
from .errors import HubError, HubUnavailable, NodeError
from .requests import SendRequest
from .store import ACCEPTED, AWAITING_BODY, FAILED, QUEUED

#: Bodies up to this size go through the batch endpoint (the hub's default limit is 1 MiB).
BATCH_BODY_MAX: Final = 512 * 1024
BATCH_ITEMS: Final = 100
#: Bytes of bodies one batch request carries at most (they are held in memory).
BATCH_BYTES: Final = 8 * 1024 * 1024
#: Bodies from this size on are sealed in 1 MiB chunks (fewer tags, same bounded memory).
BIG_BODY: Final = 16 * 1024 * 1024
#: A refused submission is sealed again (fresh time and keys) this many times at most.
RESEAL_MAX: Final = 3
#: Hub refusals cured by sealing again: the envelope is too old, or a recipient's key
#: changed while the packet waited in the outbox.
RESEAL_CODES: Final = frozenset({"clock_skew", "key_expired", "key_revoked", "key_unknown"})
#: Per-packet retry delays after a failed attempt the hub answered (seconds, capped).
RETRY_CAP: Final = 300


class Outbox(AgentCore):
    """The sending half of the agent."""

    async def recipients_for(self, req: SendRequest) -> list[str]:
        codes = list(req.to)
        for organ in req.to_children:
            codes.extend(await self.directory.below(organ, 1))
        for organ in req.to_descendants:
            codes.extend(await self.directory.below(organ, DESCENDANTS_DEPTH))
        return list(dict.fromkeys(codes))

    async def send(self, req: SendRequest) -> str:
        """Seal ``req`` for every recipient's current key and queue it; returns the id.

        Call :meth:`submit_outbox` afterwards (the CLI does at once, the daemon every
        second): sealing needs no connection when the recipients' entries are cached.
        """
        req.check()
        files = transfer.source_files(req.files)
        codes = await self.recipients_for(req)
        resolved = await self.directory.resolve(self.organ, codes)
        if not resolved:
            raise NodeError(
                "recipients_missing", "no recipient left (an office never sends to itself)"
            )
        packet_id = new_packet_id()
        pid = pid_str(packet_id)
        archive = self.home.archive / pid
        day = registers.vn_date()
        number = self.store.allocate_number(
            "out",
            self.numbering.period(day),
            req.doc_type,
            pid,
            year=day.year,
            day=day.isoformat(),
            number=req.number,
        )
        try:
            return await self._seal_new(req, packet_id, number, archive, files, resolved)
        except BaseException:
            # Nothing was queued: the number goes back to the register, the copy away.
            self.store.release_number("out", pid)
            await asyncio.to_thread(shutil.rmtree, archive, True)
            raise

    async def _seal_new(
        self,
        req: SendRequest,
        packet_id: bytes,
        number: int,
        archive: Path,
        files: list[transfer.SourceFile],
        resolved: list[Resolved],
    ) -> str:
        pid = pid_str(packet_id)
        archived = await asyncio.to_thread(transfer.copy_archive, files, archive)
        notation = req.notation or registers.default_notation(req.doc_type, self.config.abbrev)
        issued = req.issued or registers.vn_date().isoformat()
        request: dict[str, Any] = {
            "recipients": [r.organ for r in resolved],
            "metadata": {
                "subject": req.subject,
                "doc_type": req.doc_type,
                "number": registers.format_number(number),
                "notation": notation,
                "signer": req.signer,
                "issued": issued,
                "place": req.place,
                "notes": req.notes,
            },
            "routing": {
                "urgency": req.urgency,
                "secrecy": req.secrecy,
                "due": req.due,
                "in_reply_to": req.in_reply_to,
            },
            "files": [
                {"name": f.name, "path": str(f.path), "media_type": f.media_type, "size": f.size}
                for f in archived
            ],
        }
        envelope, body_path, body_size = await self._seal(
            packet_id, request, resolved_entries={r.organ: r.entry for r in resolved}
        )
        env = parse_envelope(envelope)
        meta = request["metadata"]
        self.store.insert_sent(
            {
                "packet_id": pid,
                "created_at": env.created_at,
                "kind": env.kind,
                "recipients": json.dumps(request["recipients"]),
                "subject": meta["subject"],
                "doc_type": meta["doc_type"],
                "number": meta["number"],
                "notation": meta["notation"],
                "signer": meta["signer"],
                "issued": meta["issued"],
                "urgency": req.urgency,
                "secrecy": req.secrecy,
                "due": req.due,
                "in_reply_to": req.in_reply_to,
                "files": json.dumps(
                    [{k: f[k] for k in ("name", "media_type", "size")} for f in request["files"]],
                    ensure_ascii=False,
                ),
                "archive": str(archive),
                "envelope": envelope,
                "envelope_digest": env.digest,
                "body_path": str(body_path),
                "body_size": body_size,
                "state": QUEUED,
                "source": req.source,
                "request": json.dumps(request, ensure_ascii=False),
            }
        )
        self.store.init_deliveries(pid, request["recipients"], unix_now())
        self.report.event(
            "send.queued",
            packet=pid,
            count=len(resolved),
            reference=registers.reference(meta["number"], notation),
        )
        return pid

    async def _seal(
        self,
        packet_id: bytes,
        request: Mapping[str, Any],
        *,
        resolved_entries: Mapping[str, Any] | None = None,
    ) -> tuple[bytes, Path, int]:
        """Seal the archived files of ``request``; returns (envelope, body file, size)."""
        now = unix_now()
        organs: list[str] = list(request["recipients"])
        entries = dict(resolved_entries or {})
        missing = [o for o in organs if o not in entries]
        if missing:
            entries.update(await self.directory.fetch(missing))
        recipients = []
        for organ in organs:
            entry = entries.get(organ)
            if entry is None:
                raise NodeError("recipient_unknown", f"{organ} is not in the directory")
            recipients.append(Recipient(organ, entry.current_encryption_key(now)))
        meta = request["metadata"]
        routing = request["routing"]
        metadata = DocumentMetadata(
            subject=meta["subject"],
            doc_type=meta["doc_type"],
            number=meta["number"],
            notation=meta["notation"],
            signer=meta["signer"],
            issued=meta["issued"],
            place=meta["place"],
            notes=meta["notes"],
        )
        reference = None
        if routing["secrecy"] == Secrecy.NONE:
            reference = Reference(
                meta["doc_type"], meta["number"], meta["notation"], meta["issued"]
            )
        route = Routing(
            urgency=routing["urgency"],
            secrecy=routing["secrecy"],
            due=routing["due"],
            reference=reference,
            in_reply_to=pid_bytes(routing["in_reply_to"]) if routing["in_reply_to"] else None,
        )
        files = [
            transfer.SourceFile(Path(f["path"]), f["name"], f["media_type"], f["size"])
            for f in request["files"]
        ]
        total = sum(f.size for f in files)
        try:
            sealer = Sealer(
                sender=self.organ,
                signing_key=self.keystore.signing_key,
                recipients=recipients,
                metadata=metadata,
                routing=route,
                chunk_size=1024 * 1024 if total >= BIG_BODY else DEFAULT_CHUNK,
                packet_id=packet_id,
                created_at=now,
            )
        except LocalError as exc:
            raise NodeError("request_invalid", str(exc)) from None
        dest = self.home.spool / f"{pid_str(packet_id)}.body"
        with self._progress("seal", total) as progress:
            envelope, size = await asyncio.to_thread(
                transfer.seal_to_file, sealer, files, dest, progress
            )
        return envelope, dest, size

    async def _reseal(self, row: Mapping[str, Any]) -> None:
        """Seal a refused, never-stored packet again: same id, fresh time and keys."""
        pid = row["packet_id"]
        request = json.loads(row["request"])
        envelope, body_path, size = await self._seal(pid_bytes(pid), request)
        env = parse_envelope(envelope)
        self.store.update_sent(
            pid,
            envelope=envelope,
            envelope_digest=env.digest,
            created_at=env.created_at,
            body_path=str(body_path),
            body_size=size,
            state=QUEUED,
            reseals=int(row["reseals"]) + 1,
        )

    async def submit_outbox(
        self, *, only: str | None = None, everything: bool = False
    ) -> RoundReport:
        """Submit what is due in the outbox; HubUnavailable stops the pass (and is raised)."""
        report = RoundReport()
        rows = self.store.outbox_due(all_due=everything or only is not None)
        if only is not None:
            rows = [r for r in rows if r["packet_id"] == only]
        small = [r for r in rows if r["state"] == QUEUED and r["body_size"] <= BATCH_BODY_MAX]
        large = [r for r in rows if r not in small]
        batch: list[Any] = []
        for row in small:
            if batch and (
                len(batch) >= BATCH_ITEMS
                or sum(r["body_size"] for r in batch) + row["body_size"] > BATCH_BYTES
            ):
                await self._submit_batch(batch, report)
                batch = []
            batch.append(row)
        if batch:
            await self._submit_batch(batch, report)
        for row in large:
            await self._submit_one(row, report)
        report.queued = self.store.outbox_count()
        return report

    async def _submit_batch(self, rows: Sequence[Any], report: RoundReport) -> None:
        if len(rows) == 1:
            await self._submit_one(rows[0], report)
            return
        items = await asyncio.to_thread(
            lambda: [(bytes(r["envelope"]), Path(r["body_path"]).read_bytes()) for r in rows]
        )
        try:
            results = await self.client.submit_batch(items)
        except HubError as exc:
            if exc.transient:
                raise HubUnavailable(exc.detail) from None
            # The batch as a whole was refused (size, format): one at a time instead.
            for row in rows:
                await self._submit_one(row, report)
            return
        for row, result in zip(rows, results, strict=True):
            status = result.get("status")
            if status == 200:
                await self._accepted(row, result, report)
                continue
            code = str(result.get("code") or "http_error")
            refusal = HubError(code, int(status or 500), str(result.get("detail") or code))
            if refusal.transient or code == "size_limit_exceeded":
                await self._submit_one(row, report)
            else:
                await self._refused(row, refusal, report)

    async def _submit_one(self, row: Any, report: RoundReport) -> None:
        pid = row["packet_id"]
        packet_id = pid_bytes(pid)
        try:
            doc = await self.client.submit_envelope(bytes(row["envelope"]))
            if doc.get("state") != ACCEPTED:
                self.store.update_sent(pid, state=AWAITING_BODY)
                path = Path(row["body_path"])
                with self._progress("upload", int(row["body_size"])) as progress:
                    try:
                        doc = await until_stopped(
                            self.client.upload_body(
                                packet_id, path, int(row["body_size"]), progress
                            ),
                            self._stop,
                        )
                    except HubError as exc:
                        if exc.code != "body_not_expected":
                            raise
                        # Stored meanwhile (another process, or a lost answer): ask again.
                        doc = await self.client.submit_envelope(bytes(row["envelope"]))
        except HubUnavailable:
            self.store.update_sent(pid, attempts=int(row["attempts"]) + 1)
            raise
        except HubError as exc:
            if exc.transient:
                attempts = int(row["attempts"]) + 1
                delay = min(RETRY_CAP, 2**attempts)
                self.store.update_sent(
                    pid,
                    attempts=attempts,
                    next_attempt=unix_now() + delay,
                    error_code=exc.code,
                    error_detail=exc.detail,
                )
                report.errors.append({"packet_id": pid, "code": exc.code, "detail": exc.detail})
                return
            await self._refused(row, exc, report)
            return
        await self._accepted(row, doc, report)

    async def _refused(self, row: Any, exc: HubError, report: RoundReport) -> None:
        pid = row["packet_id"]
        if exc.code in RESEAL_CODES and int(row["reseals"]) < RESEAL_MAX:
            await self._reseal(row)
            fresh = self.store.get_sent(pid)
            assert fresh is not None
            await self._submit_one(fresh, report)
            return
        self.store.update_sent(
            pid, state=FAILED, error_code=exc.code, error_detail=exc.detail, next_attempt=0
        )
        report.failed.append({"packet_id": pid, "code": exc.code, "detail": exc.detail})
        self.report.event("send.failed", packet=pid, code=exc.code, detail=exc.detail)

    async def _accepted(self, row: Any, doc: Mapping[str, Any], report: RoundReport) -> None:
        pid = row["packet_id"]
        fields: dict[str, Any] = {
            "state": ACCEPTED,
            "accepted_at": doc.get("accepted_at")
            if isinstance(doc.get("accepted_at"), int)
            else unix_now(),
            "error_code": None,
            "error_detail": None,
        }
        receipt = doc.get("receipt")
        index = None
        if isinstance(receipt, str):
            index = self._check_accepted(
                pid, bytes(row["envelope"]), unb64(receipt, "receipt"), fields
            )
        self.store.update_sent(pid, **fields)
        body = row["body_path"]
        if body:
            await asyncio.to_thread(Path(body).unlink, True)
            self.store.update_sent(pid, body_path=None)
        report.sent.append(pid)
        if index is not None:
            self.report.event("send.accepted", packet=pid, index=index)
        else:
            self.report.event("send.accepted_noreceipt", packet=pid)

    async def refresh_accepted_receipts(self, limit: int = 20) -> None:
        """Fetch the hub's accepted receipt of packets answered before it was signed."""
        for row in self.store.accepted_without_receipt(limit):
            doc = await self.client.packet_status(pid_bytes(row["packet_id"]))
            raw = doc.get("receipt")
            if isinstance(raw, str):
                fields: dict[str, Any] = {}
                self._check_accepted(row["packet_id"], bytes(row["envelope"]), unb64(raw), fields)
                self.store.update_sent(row["packet_id"], **fields)

    def recall(self, pid: str, reason: str) -> list[str]:
        """Sign 13 (recall requested) for every recipient whose delivery is still open."""
        sent = self.store.get_sent(pid)
        if sent is None:
            raise NodeError("packet_not_found", f"no sent packet {pid}")
        if sent["state"] != ACCEPTED:
            raise NodeError(
                "packet_not_accepted", f"{pid} has not reached the hub yet ({sent['state']})"
            )
        reason = nfc(reason).strip()
        if not reason:
            raise NodeError("reason_required", "a recall needs a reason")
        env = parse_envelope(bytes(sent["envelope"]))
        asked = []
        at = unix_now()
        for organ in json.loads(sent["recipients"]):
            state = self._update_delivery(pid, organ)
            if state in TERMINAL or state == "13":
                continue
            receipt = OfficeReceipt(
                packet_id=env.packet_id,
                envelope_digest=env.digest,
                organ=organ,
                signer=self.organ,
                signer_kid=self.keystore.signing_key.kid,
                status="13",
                at=at,
                reason=reason,
            )
            raw = sign_office_receipt(receipt, self.keystore.signing_key)
            parsed = parse_office_receipt(raw)
            self.store.add_receipt(
                {
                    "digest": parsed.digest,
                    "packet_id": pid,
                    "organ": organ,
                    "signer": self.organ,
                    "status": "13",
                    "at": at,
                    "reason": reason,
                    "raw": raw,
                    "source": "office",
                    "direction": "out",
                    "state": "queued",
                }
            )
            self._update_delivery(pid, organ)
            asked.append(organ)
        if not asked:
            raise NodeError("transition_invalid", f"no delivery of {pid} can be recalled now")
        self.report.event("recall.sent", packet=pid, count=len(asked))
        return asked
