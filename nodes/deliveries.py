"""The clerk's statuses and the status views: what happened to each delivery.

A received packet is registered (03, with the next incoming number of the year), assigned
(04), handled (05, 06), rejected (02), or its recall accepted (15, which also removes
it from the inbox folder) or refused (16).  Each status is checked against the delivery
state machine (:class:`protocol.receipts.Delivery`) before it is signed, queued in the
store and posted to the hub in batches.  ``status`` shows every recipient's history of a
sent packet with each receipt's signature verified here, from the hub when it answers
and from the receipts collected so far when it does not.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from typing import Any

from protocol.codec import nfc
from protocol.errors import RemoteError
from protocol.packet import (
    Envelope,
    parse_envelope,
)
from protocol.receipts import (
    INCOMING_NUMBER,
    STATUS,
    TRANSITIONS,
    OfficeReceipt,
    parse_office_receipt,
    verify_hub_receipt,
    verify_office_receipt,
)

from . import registers
from .client import unb64
from .core import (
    AgentCore,
    RoundReport,
    iso_time,
    pid_str,
    replay,
    status_label,
    timeline_order,
    unix_now,
)
from .errors import HubError, HubUnavailable, NodeError
from .store import ACCEPTED


class Deliveries(AgentCore):
    """Statuses of deliveries, ours and our recipients'."""

    async def post_receipts(self, report: RoundReport | None = None) -> RoundReport:
        """Post our queued receipts in batches; refusals are recorded with their code."""
        report = report or RoundReport()
        while True:
            rows = self.store.queued_receipts(limit=500)
            if not rows:
                return report
            results = await self.client.post_receipts([bytes(r["raw"]) for r in rows])
            progressed = False
            for row, result in zip(rows, results, strict=True):
                status = int(result.get("status") or 500)
                if status == 200:
                    self.store.mark_receipt(bytes(row["digest"]), "posted")
                    report.receipts_out += 1
                    progressed = True
                    if row["organ"] != self.organ:  # our 13 about a recipient's delivery
                        self._update_delivery(row["packet_id"], row["organ"])
                elif status >= 500:
                    continue
                else:
                    code = str(result.get("code") or "http_error")
                    detail = str(result.get("detail") or code)
                    self.store.mark_receipt(bytes(row["digest"]), "failed", code, detail)
                    self._undo_own(row)
                    report.errors.append(
                        {"packet_id": row["packet_id"], "code": code, "detail": detail}
                    )
                    progressed = True
            if not progressed:
                raise HubUnavailable("the hub could not store the receipts")

    def _undo_own(self, row: Any) -> None:
        """The hub refused one of our statuses: the delivery's local state forgets it."""
        if row["organ"] != self.organ or row["signer"] != self.organ:
            self._update_delivery(row["packet_id"], row["organ"])  # our 13 to a recipient
            return
        inbox = self.store.get_inbox(row["packet_id"])
        if inbox is None:
            return
        history = [
            step
            for step in json.loads(inbox["history"])
            if not (step[0] == row["status"] and int(step[1]) == int(row["at"]))
        ]
        fields: dict[str, Any] = {"history": json.dumps(history), "state": replay(history).state}
        if row["status"] == "03":
            self.store.release_number("in", row["packet_id"])
            fields.update(incoming_number=None, incoming_year=None, registered_at=None)
        self.store.update_inbox(row["packet_id"], **fields)

    def _inbox_row(self, pid: str) -> Any:
        row = self.store.get_inbox(pid)
        if row is None:
            raise NodeError("packet_not_found", f"no received packet {pid}")
        if row["envelope"] is None:
            raise NodeError("packet_refused", f"{pid} failed verification: {row['error_code']}")
        return row

    def mark(
        self,
        pid: str,
        status: str,
        *,
        reason: str | None = None,
        details: Mapping[str, str] | None = None,
    ) -> OfficeReceipt:
        """Sign and queue one of our statuses (02-06, 15, 16) about a received packet."""
        row = self._inbox_row(pid)
        if status in ("03", "04", "05", "06") and not row["verified"]:
            raise NodeError("packet_refused", f"{pid} failed verification: {row['error_code']}")
        env = parse_envelope(bytes(row["envelope"]))
        if status == "03":
            return self.register(pid)
        receipt = self._queue_own_receipt(pid, env, status, reason=reason, details=details)
        if status == "04" and details:
            self.store.update_inbox(pid, assignee=details.get("assignee"))
        if status == "15":
            folder = row["folder"]
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
            self.store.update_inbox(pid, folder=None)
            self.report.event("recall.accepted", packet=pid)
        self.report.event("receipt.queued", status=status, label=STATUS[status].vi, packet=pid)
        return receipt

    def register(self, pid: str, *, assignee: str | None = None) -> OfficeReceipt:
        """Vào sổ: the next incoming number of the year, and receipt 03 carrying it."""
        row = self._inbox_row(pid)
        if not row["verified"]:
            raise NodeError("packet_refused", f"{pid} failed verification: {row['error_code']}")
        env = parse_envelope(bytes(row["envelope"]))
        delivery = replay(json.loads(row["history"]))
        if "03" not in TRANSITIONS.get(delivery.state, {}):
            raise NodeError(
                "transition_invalid", f"{pid} is in state {delivery.state}: it cannot be registered"
            )
        day = registers.vn_date()
        with self.store.transaction():  # the number, the receipt and the state, or none
            number = self.store.allocate_number(
                "in", registers.incoming_period(day), "", pid, year=day.year, day=day.isoformat()
            )
            details = {INCOMING_NUMBER: str(number)}
            if assignee:
                details["assignee"] = nfc(assignee)
            receipt = self._queue_own_receipt(pid, env, "03", details=details)
            self.store.update_inbox(
                pid,
                incoming_number=number,
                incoming_year=day.year,
                registered_at=unix_now(),
                assignee=nfc(assignee) if assignee else None,
            )
        self.report.event("register.done", packet=pid, number=number, year=day.year)
        return receipt

    async def status(self, pid: str, *, online: bool = True) -> dict[str, Any]:
        """Every recipient's state and history, each receipt's signature verified here."""
        sent = self.store.get_sent(pid)
        if sent is None:
            inbox = self.store.get_inbox(pid)
            if inbox is None:
                raise NodeError("packet_not_found", f"no packet {pid} in this office's store")
            return self._inbox_status(inbox)
        env = parse_envelope(bytes(sent["envelope"]))
        doc: dict[str, Any] | None = None
        if online and sent["state"] == ACCEPTED:
            try:
                doc = await self.client.packet_status(env.packet_id)
            except HubUnavailable:
                doc = None
        recipients: list[dict[str, Any]] = []
        all_ok = True
        if doc is not None:
            signers = {
                h.get("signer")
                for r in doc.get("recipients") or []
                for h in r.get("history") or []
                if h.get("source") == "office"
            }
            entries = await self.directory.fetch([s for s in signers if isinstance(s, str)])
            for rec in doc.get("recipients") or []:
                organ = str(rec.get("organ"))
                history = []
                for h in rec.get("history") or []:
                    step, ok = self._verify_step(env, h, entries)
                    all_ok = all_ok and ok
                    history.append(step)
                recipients.append(
                    {
                        "organ": organ,
                        "name": self.directory.name(organ),
                        "state": rec.get("state"),
                        "fetched_at": iso_time(rec.get("fetched_at")),
                        "history": timeline_order(history),
                    }
                )
                if rec.get("fetched_at"):
                    self.store.set_delivery(
                        pid, organ, str(rec.get("state")), fetched_at=rec.get("fetched_at")
                    )
            accepted = doc.get("receipt")
            if isinstance(accepted, str) and sent["hub_receipt"] is None:
                fields: dict[str, Any] = {}
                self._check_accepted(pid, bytes(sent["envelope"]), unb64(accepted), fields)
                self.store.update_sent(pid, **fields)
                sent = self.store.get_sent(pid)
                assert sent is not None
        else:
            by_organ: dict[str, list[dict[str, Any]]] = {}
            for row in self.store.receipts_for(pid):
                by_organ.setdefault(row["organ"], []).append(
                    {
                        "source": row["source"],
                        "status": row["status"],
                        "label": status_label(row["status"]),
                        "at": iso_time(int(row["at"])),
                        "signer": row["signer"],
                        "verified": row["state"] in ("verified", "posted", "queued"),
                        "error": row["error_code"],
                    }
                )
            for d in self.store.deliveries(pid):
                history = by_organ.get(d["organ"], [])
                all_ok = all_ok and all(h["verified"] for h in history)
                recipients.append(
                    {
                        "organ": d["organ"],
                        "name": self.directory.name(d["organ"]),
                        "state": d["state"],
                        "fetched_at": iso_time(d["fetched_at"]),
                        "history": timeline_order(history),
                    }
                )
        accepted_ok = None
        if sent["hub_receipt"] is not None:
            try:
                verify_hub_receipt(
                    bytes(sent["hub_receipt"]), self.hub_key, envelope=env, kind="accepted"
                )
                accepted_ok = True
            except RemoteError:
                accepted_ok = False
                all_ok = False
        return {
            "packet_id": pid,
            "direction": "out",
            "source": "hub" if doc is not None else "local",
            "subject": sent["subject"],
            "reference": registers.reference(sent["number"], sent["notation"]),
            "state": sent["state"],
            "error": sent["error_code"],
            "accepted_at": iso_time(sent["accepted_at"]),
            "log_index": sent["log_index"],
            "accepted_receipt_verified": accepted_ok,
            "recipients": recipients,
            "all_verified": all_ok,
        }

    def _verify_step(
        self, env: Envelope, h: Mapping[str, Any], entries: Mapping[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        status = str(h.get("status"))
        step: dict[str, Any] = {
            "source": h.get("source"),
            "status": status,
            "label": status_label(status),
            "at": iso_time(h.get("at") if isinstance(h.get("at"), int) else None),
            "signer": h.get("signer"),
        }
        try:
            raw = unb64(h.get("receipt"), "receipt")
            if h.get("source") == "hub":
                verify_hub_receipt(raw, self.hub_key, envelope=env, kind="fetched")
            else:
                parsed = parse_office_receipt(raw)
                signer = entries.get(parsed.receipt.signer)
                if signer is None:
                    raise RemoteError("organ_unknown", f"{parsed.receipt.signer} has no entry")
                r = verify_office_receipt(parsed, signer, envelope=env)
                step["reason"] = r.reason
                step["details"] = dict(r.details)
                if not self.store.has_receipt(parsed.digest):
                    self.store.add_receipt(
                        {
                            "digest": parsed.digest,
                            "packet_id": pid_str(env.packet_id),
                            "organ": r.organ,
                            "signer": r.signer,
                            "status": r.status,
                            "at": r.at,
                            "reason": r.reason,
                            "details": dict(r.details),
                            "raw": raw,
                            "source": "office",
                            "direction": "in",
                            "state": "verified",
                        }
                    )
            step["verified"] = True
            return step, True
        except (RemoteError, HubError) as exc:
            step["verified"] = False
            step["error"] = exc.code
            return step, False

    def _inbox_status(self, row: Any) -> dict[str, Any]:
        history = []
        for r in self.store.receipts_for(row["packet_id"]):
            history.append(
                {
                    "source": r["source"],
                    "status": r["status"],
                    "label": status_label(r["status"]),
                    "at": iso_time(int(r["at"])),
                    "signer": r["signer"],
                    "verified": r["state"] in ("verified", "posted", "queued"),
                    "posted": r["state"] == "posted" if r["direction"] == "out" else None,
                    "error": r["error_code"],
                }
            )
        return {
            "packet_id": row["packet_id"],
            "direction": "in",
            "source": "local",
            "subject": row["subject"],
            "reference": registers.reference(row["number"], row["notation"]),
            "sender": row["sender"],
            "state": row["state"],
            "verified": bool(row["verified"]),
            "error": row["error_code"],
            "recipients": [
                {
                    "organ": self.organ,
                    "name": self.config.name or self.organ,
                    "state": row["state"],
                    "history": timeline_order(history),
                }
            ],
            "all_verified": all(h["verified"] for h in history),
        }
