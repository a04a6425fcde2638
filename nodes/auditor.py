"""The auditor: verify the hub's delivery log without trusting the hub (DESIGN.md §5).

Trust anchors, pinned at ``init``: the directory authority key and the hub's key (whose
Ed25519 part signs the log's checkpoints).  Everything else the hub says is checked.

* :meth:`Auditor.checkpoint` -- the newest checkpoint: the log's signature, the witnesses'
  cosignatures (k of n, from their *logged* directory keys), and a consistency proof from
  the last checkpoint this auditor accepted.  A checkpoint that is not consistent with it
  is a fork: :class:`AuditAlarm` ``checkpoint_inconsistent`` with both notes.
* :meth:`Auditor.follow` -- the mirror: every entry up to the accepted checkpoint is
  downloaded, hashed into a Merkle frontier, and each page proven to be a prefix of the
  signed tree (a consistency proof from the page's end to the checkpoint; the last page's
  root must equal the signed root).  An entry the hub changed or removed after logging it
  cannot pass: the page fails and a binary search over consistency proofs names the first
  entry that differs.  As they are mirrored, ``directory`` entries are verified with the
  authority key (the directory as the log tells it), directory changes recorded, and every
  office receipt verified against its signer's logged entry of the time.
* :meth:`Auditor.trace` -- one packet: its bundle at the accepted checkpoint, every
  inclusion proof and receipt signature checked locally, the envelope against the digest
  the log names, completeness against the mirror (the hub cannot leave an event out),
  the entries the hub serves for the parties against the logged ones (a key swapped in
  the hub's database shows here), the hub's own status answer against the log; the whole
  saved as an audit proof (:mod:`protocol.evidence`) that ``verify`` re-checks offline.
* :meth:`Auditor.replay` -- a full audit: every entry again from 0 into a scratch mirror,
  every root recomputed and compared with every checkpoint accepted so far, and every
  entry compared with the mirror's copy.
* :meth:`Auditor.monitor_round` -- checkpoint, follow, directory changes, and the served
  directory against the logged one.
* :func:`delivery_report` / :func:`overdue_now` -- :mod:`protocol.report` over the mirror.

Alarms (the hub or its database is not what it claims) raise :class:`AuditAlarm` or are
returned in a result's ``alarms``; each is also kept in the store.  The command line exits
3 on an alarm, 1 on an ordinary error.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Final

from protocol.audit import Event, parse_event
from protocol.bundle import (
    BundleEvent,
    OpenedBundle,
    log_origin,
    log_verifier,
    open_bundle,
    witness_name,
    witness_signer,
    witness_verifier,
)
from protocol.checkpoint import (
    Checkpoint,
    CosignatureVerifier,
    NoteVerifier,
    add_cosignature,
    check_consistent,
    open_checkpoint,
    parse_note,
    verify_cosignatures,
)
from protocol.codec import decode
from protocol.directory import DirectoryEntry, SignedEntry, verify_entry
from protocol.errors import LienthongError, RemoteError
from protocol.evidence import (
    AuditProof,
    EntryAt,
    VerifiedProof,
    check_cosignatures,
    encode_proof,
    verify_proof,
)
from protocol.keys import SigningPublicKey, fingerprint
from protocol.merkle import Frontier, leaf_hash, verify_consistency, verify_inclusion
from protocol.packet import Envelope, parse_envelope
from protocol.receipts import STATUS, parse_office_receipt, verify_office_receipt
from protocol.report import (
    DeliveryRecord,
    LogDeliveries,
    iso,
    organ_report,
    overdue,
    totals,
    vn_day_bounds,
)
from protocol.transparency import diff_entries

from .audithome import AuditConfig, AuditHome
from .auditstore import AuditStore, StoredCheckpoint
from .client import HubClient, packet_text
from .errors import HubError, HubUnavailable, NodeError
from .keystore import Keystore

#: Codes of the auditor's own alarms and errors, with their meaning.
AUDIT_CODES: Final[dict[str, str]] = {
    "log_entry_mismatch": "An entry the hub serves is not the one its signed checkpoint covers.",
    "log_entry_unavailable": "The hub cannot serve an entry of a tree it signed.",
    "log_root_mismatch": "The entries recomputed give another root than a signed checkpoint.",
    "entry_malformed": "A logged entry is not a valid audit event.",
    "directory_entry_invalid": "A directory entry is not signed by the pinned authority.",
    "directory_entry_not_logged": "The hub serves a directory entry that its log does not hold.",
    "directory_rollback": "A directory entry's serial went backwards.",
    "receipt_invalid": "A logged receipt does not verify against its signer's logged keys.",
    "bundle_incomplete": "The hub's bundle leaves out events of the packet that its log holds.",
    "status_mismatch": "The hub's status answer disagrees with its log.",
    "origin_mismatch": "The log's origin is not the one pinned at init.",
}

#: A receipt the hub took less than this before signing a checkpoint may not be in it yet.
SEQUENCING_GRACE: Final = 10


class AuditAlarm(NodeError):
    """The hub, its log or its database is not what it claims: with the evidence."""

    def __init__(self, code: str, detail: str, evidence: dict[str, Any] | None = None) -> None:
        super().__init__(code, detail)
        self.evidence = evidence or {}

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "detail": self.detail, **self.evidence}


def _note_text(note: bytes) -> str:
    return note.decode("utf-8", "replace")


def _checkpoint_time(checkpoint: Checkpoint) -> int | None:
    for line in checkpoint.extensions:
        if line.startswith("time ") and line[5:].isdigit():
            return int(line[5:])
    return None


def _pid(text: str) -> bytes:
    cleaned = text.strip().lower()
    try:
        return uuid.UUID(cleaned).bytes
    except ValueError:
        raise NodeError("packet_not_found", f"{text!r} is not a packet id (a UUID)") from None


@dataclass
class Issues:
    """Alarms found while doing something that goes on (mirroring, replaying)."""

    items: list[dict[str, Any]] = field(default_factory=list)

    def add(self, code: str, detail: str, **evidence: Any) -> None:
        self.items.append({"code": code, "detail": detail, **evidence})


class Ingest:
    """Adds mirrored entries to a store: indexes them, checks directory entries and receipts."""

    def __init__(self, store: AuditStore, authority: SigningPublicKey) -> None:
        self.store = store
        self.authority = authority
        self._verified: dict[bytes, DirectoryEntry] = {}

    def entry(self, raw: bytes, organ: str | None = None) -> DirectoryEntry:
        digest = hashlib.sha256(raw).digest()
        found = self._verified.get(digest)
        if found is None:
            found = verify_entry(raw, self.authority, organ=organ).entry
            self._verified[digest] = found
        return found

    def logged_entry(self, organ: str, below: int) -> DirectoryEntry | None:
        row = self.store.directory_before(organ, below)
        return None if row is None else self.entry(bytes(row["entry"]), organ)

    def add(self, idx: int, data: bytes, issues: Issues) -> None:
        try:
            event = parse_event(data)
        except RemoteError as exc:
            self.store.add_entry(idx, data, "?", 0, None, None)
            issues.add("entry_malformed", f"entry {idx} is not a valid audit event: {exc.detail}")
            return
        f = event.fields
        organ = f.get("organ") or f.get("sender")
        self.store.add_entry(idx, data, event.kind, event.at, f.get("packet_id"), organ)
        if event.kind == "directory":
            self._directory(idx, event, issues)
        elif event.kind == "receipt":
            error = self.check_receipt(idx, event)
            self.store.mark_receipt(idx, error)
            if error is not None:
                issues.add(
                    "receipt_invalid",
                    f"entry {idx}: the receipt {f['status']} of {f['organ']} for packet "
                    f"{packet_text(f['packet_id'])} does not verify against the logged "
                    f"directory: {error}",
                    index=idx,
                )

    def _directory(self, idx: int, event: Event, issues: Issues) -> None:
        organ = event.fields["organ"]
        raw = event.fields["entry"]
        try:
            new = self.entry(raw, organ)
        except RemoteError as exc:
            issues.add(
                "directory_entry_invalid",
                f"entry {idx}: the directory entry logged for {organ} is not signed by the "
                f"pinned authority: {exc.detail}",
                index=idx,
            )
            return
        previous = self.store.directory_before(organ, idx)
        old = None if previous is None else self.entry(bytes(previous["entry"]), organ)
        if old is not None and new.serial <= old.serial:
            issues.add(
                "directory_rollback",
                f"entry {idx}: {organ}'s entry has serial {new.serial} after serial {old.serial}",
                index=idx,
            )
        changes = [c.as_dict() for c in diff_entries(old, new)]
        self.store.add_directory(
            idx, organ, new.serial, event.fields["action"], hashlib.sha256(raw).digest(), raw
        )
        self.store.add_change(
            idx,
            organ,
            {
                "organ": organ,
                "name": new.name,
                "action": event.fields["action"],
                "serial": new.serial,
                "at": iso(event.at),
                "changes": changes,
            },
        )

    def check_receipt(self, idx: int, event: Event) -> str | None:
        """None when the receipt verifies against its signer's logged entry, else why not."""
        f = event.fields
        try:
            parsed = parse_office_receipt(f["receipt"])
            signer = parsed.receipt.signer
            entry = self.logged_entry(signer, idx)
            if entry is None:
                return f"no directory entry of {signer} was logged before it"
            verify_office_receipt(
                parsed,
                entry,
                packet_id=f["packet_id"],
                envelope_digest=f["envelope_digest"],
                sender=self.store.sender_of(f["packet_id"]),
                received_at=event.at,
            )
            if (parsed.receipt.status, parsed.receipt.organ) != (f["status"], f["organ"]):
                return "the entry names another status or organ than the signed receipt"
        except LienthongError as exc:
            return f"{getattr(exc, 'code', 'error')}: {getattr(exc, 'detail', exc)}"
        return None


class Auditor:
    """One auditor's tools over its home.  ``async with`` opens the hub client (if any)."""

    def __init__(
        self,
        home: AuditHome,
        config: AuditConfig,
        store: AuditStore,
        keystore: Keystore | None,
        *,
        hub_key: SigningPublicKey | None = None,
        authority: SigningPublicKey | None = None,
        client: HubClient | None = None,
        alarm_store: AuditStore | None = None,
    ) -> None:
        self.home = home
        self.config = config
        self.store = store
        self.keystore = keystore
        pinned_hub = hub_key or (keystore.hub_key if keystore else None)
        pinned_authority = authority or (keystore.authority if keystore else None)
        if pinned_hub is None or pinned_authority is None:
            raise NodeError("keystore_damaged", "the keystore has no pinned hub or authority key")
        self.hub_key: SigningPublicKey = pinned_hub
        self.authority: SigningPublicKey = pinned_authority
        self.origin = config.origin or log_origin("lienthong")
        self.verifier: NoteVerifier = log_verifier(self.hub_key, self.origin)
        self.ingest = Ingest(store, self.authority)
        #: Where alarms are kept (a replay's scratch mirror reports to the real store).
        self.alarm_store = alarm_store or store
        self._client: HubClient | None = client
        if keystore is not None and client is None:
            self._client = HubClient(
                config.hub_url,
                organ=config.organ,
                signing_key=keystore.signing_key,
                authority=self.authority,
                ca_file=config.ca_file or None,
            )

    async def __aenter__(self) -> Auditor:
        if self._client is not None:
            await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.__aexit__(*exc)

    @property
    def client(self) -> HubClient:
        if self._client is None:
            raise NodeError("local", "this command needs the keystore to talk to the hub")
        return self._client

    def accepted(self) -> tuple[StoredCheckpoint, Checkpoint]:
        """The newest checkpoint accepted, stored and opened."""
        stored = self.store.latest_checkpoint()
        if stored is None:
            raise NodeError("no_checkpoint", "run `lienthong-audit checkpoint` first")
        return stored, self.open_note(stored.note)

    def _alarm(self, code: str, detail: str, **evidence: Any) -> AuditAlarm:
        with self.alarm_store.transaction():
            self.alarm_store.add_alarm(code, detail, evidence)
        return AuditAlarm(code, detail, evidence)

    def _record(self, issues: Issues) -> None:
        if issues.items:
            with self.store.transaction():
                for item in issues.items:
                    extra = {k: v for k, v in item.items() if k not in ("code", "detail")}
                    self.store.add_alarm(item["code"], item["detail"], extra)

    # --- checkpoints ----------------------------------------------------------------------

    def open_note(self, note: bytes) -> Checkpoint:
        try:
            return open_checkpoint(note, self.verifier)
        except RemoteError as exc:
            if exc.code == "checkpoint_malformed" and "origin" in exc.detail:
                raise AuditAlarm("origin_mismatch", exc.detail) from None
            raise

    async def witness_verifiers(self, organs: Iterable[str]) -> list[CosignatureVerifier]:
        """Cosignature keys of ``organs``: their logged entries' keys (else served ones)."""
        wanted = sorted(set(organs))
        entries: dict[str, DirectoryEntry] = {}
        for organ in wanted:
            logged = self.ingest.logged_entry(organ, self.store.mirror_size())
            if logged is not None:
                entries[organ] = logged
        missing = [o for o in wanted if o not in entries]
        if missing and self._client is not None:
            served, _unknown = await self.client.entries(missing)
            entries.update({code: s.entry for code, s in served.items()})
        out: list[CosignatureVerifier] = []
        for organ, entry in sorted(entries.items()):
            for rec in entry.signing_keys:
                if rec.revoked_at is None:
                    try:
                        key = SigningPublicKey.from_raw(rec.alg, rec.pub)
                        out.append(witness_verifier(organ, key))
                    except RemoteError:
                        continue
        return out

    async def checkpoint(
        self,
        *,
        witnesses: Sequence[str] | None = None,
        threshold: int | None = None,
        cosign: bool | None = None,
    ) -> dict[str, Any]:
        """Fetch, verify and store the newest checkpoint (see the module docstring)."""
        witnesses = list(self.config.witnesses if witnesses is None else witnesses)
        k = self.config.threshold if threshold is None else threshold
        if not 0 <= k <= len(witnesses):
            raise NodeError("config_invalid", f"threshold {k} of {len(witnesses)} witnesses")
        note = await self._fetch_note(k)
        new = self.open_note(note)
        valid: list[str] = []
        if witnesses:
            verifiers = await self.witness_verifiers(witnesses)
            try:
                valid = verify_cosignatures(note, verifiers, 0)
            except RemoteError as exc:
                raise self._alarm(
                    "cosignature_invalid", exc.detail, checkpoint=_note_text(note)
                ) from None
            if len(valid) < k:
                raise NodeError(
                    "witnesses_insufficient",
                    f"checkpoint {new.size} carries {len(valid)} valid cosignatures of the "
                    f"{len(witnesses)} witnesses ({', '.join(witnesses)}); {k} required",
                )
        previous = self.store.latest_checkpoint()
        await self._check_against(previous, new, note)
        with self.store.transaction():
            self.store.add_checkpoint(new.size, new.root_hash, note)
        cosigned = False
        if (self.config.cosign if cosign is None else cosign) and self.keystore is not None:
            cosigned = await self._cosign(note)
        return {
            "origin": new.origin,
            "size": new.size,
            "root_hash": new.root_hash.hex(),
            "signed_at": iso(_checkpoint_time(new)),
            "previous_size": None if previous is None else previous.size,
            "consistent": True,
            "witnesses": valid,
            "threshold": k,
            "cosigned": cosigned,
            "note": _note_text(note),
        }

    async def _fetch_note(self, k: int) -> bytes:
        if k:
            try:
                return await self.client.checkpoint(min_cosignatures=k)
            except HubError as exc:
                if exc.code != "tree_size_invalid":
                    raise
                # No checkpoint has k cosignatures yet: take the newest, which then fails
                # the threshold with a clear message.
        try:
            return await self.client.checkpoint()
        except HubUnavailable as exc:
            raise HubUnavailable(f"no checkpoint: {exc.detail}") from None

    async def _check_against(
        self, previous: StoredCheckpoint | None, new: Checkpoint, note: bytes
    ) -> None:
        """``new`` must be consistent with the newest checkpoint accepted so far."""
        if previous is None:
            return
        old = self.open_note(previous.note)
        detail = await self._inconsistency(old, new)
        if detail is not None:
            raise self._alarm(
                "checkpoint_inconsistent",
                f"the log's checkpoint {new.size} is not consistent with checkpoint "
                f"{old.size} seen on {iso(previous.seen_at)}: {detail}",
                previous=_note_text(previous.note),
                current=_note_text(note),
            )

    async def _inconsistency(self, a: Checkpoint, b: Checkpoint) -> str | None:
        """Why two checkpoints of the log are not consistent (the proof asked of the hub,
        checked here), or None if they are."""
        first, second = (a, b) if b.size >= a.size else (b, a)
        try:
            proof: list[bytes] = []
            if 0 < first.size < second.size:
                proof = await self.client.consistency(first.size, second.size)
            check_consistent(first, second, proof)
        except (RemoteError, HubError) as exc:
            return exc.detail
        return None

    async def _cosign(self, note: bytes) -> bool:
        assert self.keystore is not None
        signer = witness_signer(self.config.organ, self.keystore.signing_key)
        try:
            await self.client.cosign(add_cosignature(note, signer, int(time.time())))
        except (HubError, HubUnavailable, RemoteError):
            return False
        return True

    async def compare(self, notes: Sequence[bytes]) -> dict[str, Any]:
        """Meet other parties' checkpoints (another auditor's, a witness's): any two
        checkpoints the log signed must be consistent, or the log forked."""
        mine = self.store.latest_checkpoint()
        if mine is None:
            raise NodeError("no_checkpoint", "run `lienthong-audit checkpoint` first")
        own = self.open_note(mine.note)
        results = []
        for note in notes:
            other = self.open_note(note)
            detail = await self._inconsistency(own, other)
            if detail is not None:
                raise self._alarm(
                    "checkpoint_inconsistent",
                    f"the log signed two inconsistent checkpoints (sizes {own.size} and "
                    f"{other.size}): a fork. {detail}",
                    previous=_note_text(mine.note),
                    current=_note_text(note),
                )
            try:
                names = [s.name for s in parse_note(note).signatures][1:]
            except RemoteError:
                names = []
            results.append({"size": other.size, "consistent": True, "signatures": names})
        return {"size": own.size, "compared": results}

    # --- the mirror -----------------------------------------------------------------------

    async def follow(self, target: Checkpoint | None = None) -> dict[str, Any]:
        """Mirror the log up to ``target`` (default: the newest accepted checkpoint)."""
        if target is None:
            target = self.accepted()[1]
        issues = Issues()
        async with self.home.lock("mirror").hold():
            start = self.store.mirror_size()
            frontier = self.store.frontier()
            if target.size < start:
                return {"mirrored": 0, "size": start, "alarms": []}
            added = await self._mirror(frontier, target, issues)
        self._record(issues)
        return {"mirrored": added, "size": target.size, "alarms": issues.items}

    async def _mirror(self, frontier: Frontier, target: Checkpoint, issues: Issues) -> int:
        start = frontier.size
        position = start
        while position < target.size:
            page = await self._page(position, target.size)
            staged = frontier.copy()
            roots: list[bytes] = []
            for data in page:
                staged.append(leaf_hash(data))
                roots.append(staged.root())
            end = position + len(page)
            if not await self._prefix_ok(end, staged.root(), target):
                bad = await self._first_bad(position, roots, target)
                raise self._alarm(
                    "log_entry_mismatch",
                    f"entry {bad}, as the hub serves it now, is not the entry covered by its "
                    f"signed checkpoint {target.size}: it was changed, removed or inserted "
                    "after it was logged",
                    index=bad,
                    checkpoint=target.size,
                )
            for stored in self.store.checkpoints_between(position, end):
                if roots[stored.size - position - 1] != stored.root:
                    raise self._alarm(
                        "log_root_mismatch",
                        f"the first {stored.size} entries give another root than the "
                        f"checkpoint {stored.size} accepted on {iso(stored.seen_at)}",
                        checkpoint=_note_text(stored.note),
                    )
            with self.store.transaction():
                for offset, data in enumerate(page):
                    self.ingest.add(position + offset, data, issues)
                self.store.save_frontier(staged)
            frontier = staged
            position = end
        return position - start

    async def _page(self, start: int, size: int) -> list[bytes]:
        try:
            page = await self.client.log_entries(start, size)
        except HubError as exc:
            missing = await self._first_unservable(start, min(size, start + 1000))
            raise self._alarm(
                "log_entry_unavailable",
                f"the hub cannot serve entry {missing} of the tree of {size} it signed "
                f"({exc.code}: {exc.detail}): the entry was removed or damaged",
                index=missing,
            ) from None
        if not page:
            raise self._alarm(
                "log_entry_unavailable", f"the hub serves no entry {start} of its tree of {size}"
            )
        return page[: size - start]

    async def _first_unservable(self, start: int, end: int) -> int:
        """The first index in ``[start, end)`` the hub fails to serve: a binary search."""
        good, bad = start, end
        while bad - good > 1:
            middle = (good + bad) // 2
            try:
                served = await self.client.log_entries(start, middle)
            except HubError:
                served = []
            # A gap at the end of a range is a short answer, not an error.
            if len(served) == middle - start:
                good = middle
            else:
                bad = middle
        return bad - 1

    async def _prefix_ok(self, size: int, root: bytes, target: Checkpoint) -> bool:
        """Whether the first ``size`` entries (root ``root``) are a prefix of ``target``."""
        if size == target.size:
            return root == target.root_hash
        try:
            proof = await self.client.consistency(size, target.size)
            verify_consistency(size, target.size, root, target.root_hash, proof)
        except (RemoteError, HubError):
            return False
        return True

    async def _first_bad(self, start: int, roots: Sequence[bytes], target: Checkpoint) -> int:
        """The first index of the page whose prefix is not in ``target``: a binary search."""
        good, bad = start, start + len(roots)
        while bad - good > 1:
            middle = (good + bad) // 2
            if await self._prefix_ok(middle, roots[middle - start - 1], target):
                good = middle
            else:
                bad = middle
        return bad - 1

    # --- one packet -----------------------------------------------------------------------

    async def trace(
        self, packet: str, *, out: Path | None = None, follow: bool = True
    ) -> dict[str, Any]:
        """A packet's history, everything verified here, saved as an audit proof."""
        pid = _pid(packet)
        checked = await self.checkpoint(cosign=False, witnesses=(), threshold=0)
        _stored, target = self.accepted()
        alarms = Issues()
        mirrored = False
        if follow:
            alarms.items.extend((await self.follow(target))["alarms"])
            mirrored = True
        try:
            verified, proof_bytes, events = await self._prove(pid, target, mirrored)
        except RemoteError as exc:  # anything the hub served that does not hold up
            raise self._alarm(
                exc.code, f"packet {packet_text(pid)}: {exc.detail}", packet_id=packet_text(pid)
            ) from None
        found = Issues()
        complete: bool | None = None
        if mirrored:
            logged = {int(r["idx"]) for r in self.store.packet_events([pid], target.size)}
            missing = sorted(logged - set(verified.bundle.indexes))
            complete = not missing
            if missing:
                found.add(
                    "bundle_incomplete",
                    f"the hub's bundle of packet {packet_text(pid)} leaves out log entries "
                    f"{', '.join(map(str, missing))}",
                    missing=missing,
                )
        signers, sender = _parties(events)
        parties = signers | ({sender} if sender else set()) | _recipients(events)
        await self._check_served(sorted(parties), found, target)
        await self._check_status(pid, events, target, found)
        self._record(found)
        alarms.items.extend(found.items)
        path = out or self.home.proofs / f"{packet_text(pid)}.proof"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(proof_bytes)
        summary = describe_proof(verified, holidays=self.config.holiday_dates())
        summary.update(
            {
                "proof_file": str(path),
                "complete": complete,
                "checkpoint_note": checked["note"],
                "alarms": alarms.items,
            }
        )
        return summary

    async def _prove(
        self, pid: bytes, target: Checkpoint, mirrored: bool
    ) -> tuple[VerifiedProof, bytes, list[tuple[int, Event]]]:
        """The packet's audit proof at ``target``, built from what the hub serves and
        verified exactly as ``verify`` will verify it offline."""
        try:
            data = await self.client.bundle(pid, target.size)
        except HubError as exc:
            if (
                exc.code == "packet_unknown"
                and mirrored
                and self.store.packet_events([pid], target.size)
            ):
                raise self._alarm(
                    "bundle_incomplete",
                    f"the hub says packet {packet_text(pid)} is unknown, yet its log holds "
                    "its events",
                ) from None
            raise
        events = self._bundle_events(data, pid, target)
        signers, sender = _parties(events)
        witnesses = cosigners(data)
        organs = signers | ({sender} if sender else set()) | witnesses
        directory = await self._directory_events(organs, events, target.size, mirrored, witnesses)
        try:
            envelope: bytes | None = await self.client.envelope(pid)
        except (HubError, HubUnavailable):
            envelope = None
        proof_bytes = encode_proof(
            AuditProof(self.origin, self.hub_key, self.authority, data, directory, envelope)
        )
        verified = verify_proof(proof_bytes, hub_key=self.hub_key, authority=self.authority)
        return verified, proof_bytes, events

    def _bundle_events(
        self, data: bytes, pid: bytes, target: Checkpoint
    ) -> list[tuple[int, Event]]:
        """The bundle's events, each one's inclusion checked on its own for a clear alarm."""
        try:
            doc = decode(data, max_size=64 * 1024 * 1024, max_depth=4)
            note = doc["checkpoint"]
            items = doc["events"]
        except (RemoteError, KeyError, TypeError) as exc:
            raise self._alarm("field_invalid", f"the hub's bundle is malformed: {exc}") from None
        bundle_cp = self.open_note(note)
        if (bundle_cp.size, bundle_cp.root_hash) != (target.size, target.root_hash):
            raise self._alarm(
                "checkpoint_inconsistent",
                f"the bundle is proven against another checkpoint than the accepted {target.size}",
                previous=_note_text(self.accepted()[0].note),
                current=_note_text(note),
            )
        out: list[tuple[int, Event]] = []
        for item in items:
            try:
                index, entry, path = int(item["index"]), bytes(item["entry"]), list(item["proof"])
                verify_inclusion(leaf_hash(entry), index, target.size, path, target.root_hash)
            except (RemoteError, KeyError, TypeError, ValueError) as exc:
                what = _describe_entry(item)
                raise self._alarm(
                    "proof_invalid",
                    f"{what} of packet {packet_text(pid)} is not in the signed log of size "
                    f"{target.size}: its entry differs from what was logged ("
                    f"{getattr(exc, 'detail', exc)})",
                    index=item.get("index") if isinstance(item, dict) else None,
                ) from None
            out.append((index, parse_event(entry)))
        return out

    async def _directory_events(
        self,
        organs: Iterable[str],
        events: Sequence[tuple[int, Event]],
        size: int,
        mirrored: bool,
        witnesses: Iterable[str] = (),
    ) -> list[BundleEvent]:
        """The directory events that verify the packet's receipts, its envelope and the
        checkpoint's cosignatures, each with its inclusion proof."""
        needed: dict[int, bytes] = {}
        if mirrored:
            for organ in witnesses:
                row = self.store.directory_before(organ, size)
                if row is not None:
                    needed[int(row["idx"])] = bytes(self.store.entry(int(row["idx"])) or b"")
            for index, event in events:
                if event.kind == "receipt":
                    signer = parse_office_receipt(event.fields["receipt"]).receipt.signer
                    row = self.store.directory_before(signer, index)
                elif event.kind == "packet_accepted":
                    row = self.store.directory_before(event.fields["sender"], index)
                else:
                    continue
                if row is not None:
                    needed[int(row["idx"])] = bytes(self.store.entry(int(row["idx"])) or b"")
            out = []
            for index, entry in sorted(needed.items()):
                out.append(
                    BundleEvent(index, entry, tuple(await self.client.inclusion(index, size)))
                )
            return out
        # Without a mirror: the hub's own list of the organs' directory events, each with
        # an inclusion proof (a left-out event is what following the log would catch).
        result: list[BundleEvent] = []
        for organ in sorted(set(organs)):
            for index, entry, proof in await self.client.directory_log(organ, size):
                result.append(BundleEvent(index, entry, tuple(proof)))
        result.sort(key=lambda e: e.index)
        deduped: dict[int, BundleEvent] = {e.index: e for e in result}
        return [deduped[i] for i in sorted(deduped)]

    async def _check_served(
        self, organs: Sequence[str], issues: Issues, target: Checkpoint
    ) -> None:
        """The entries the hub serves now must be the newest the log holds."""
        if not organs:
            return
        signed_at = _checkpoint_time(target) or int(time.time())
        mirror = self.store.mirror_size()
        try:
            served, _unknown = await self.client.entries(list(organs))
        except RemoteError as exc:
            issues.add(
                "directory_entry_invalid",
                f"the hub serves a directory entry not signed by the pinned authority: {exc.detail}",
            )
            return
        for organ, signed in sorted(served.items()):
            self._compare_served(organ, signed, mirror, signed_at, issues)

    def _compare_served(
        self, organ: str, signed: SignedEntry, mirror: int, signed_at: int, issues: Issues
    ) -> None:
        row = self.store.directory_before(organ, mirror)
        if row is not None and bytes(row["digest"]) == hashlib.sha256(signed.raw).digest():
            return
        entry = signed.entry
        if entry.issued_at >= signed_at - SEQUENCING_GRACE:
            return  # issued after the checkpoint we hold: not in our copy of the log yet
        keys = ", ".join(fingerprint(k.kid) for k in entry.signing_keys)
        if row is None:
            issues.add(
                "directory_entry_not_logged",
                f"the hub serves an entry for {organ} (serial {entry.serial}, signing keys "
                f"{keys}) that its log never recorded: a key swapped behind the log's back",
                organ=organ,
            )
        elif entry.serial > int(row["serial"]):
            issues.add(
                "directory_entry_not_logged",
                f"the hub serves {organ}'s entry serial {entry.serial} (signing keys {keys}), "
                f"its log's newest is serial {row['serial']}: a key swapped behind the log's back",
                organ=organ,
            )
        else:
            issues.add(
                "directory_rollback",
                f"the hub serves {organ}'s entry serial {entry.serial}, older than the logged "
                f"serial {row['serial']}",
                organ=organ,
            )

    async def _check_status(
        self, pid: bytes, events: Sequence[tuple[int, Event]], target: Checkpoint, issues: Issues
    ) -> None:
        """The hub's status answer (its word) must show exactly the logged receipts."""
        try:
            doc = await self.client.packet_status(pid)
        except HubError:
            return
        signed_at = _checkpoint_time(target) or int(time.time())
        logged = {
            parse_office_receipt(e.fields["receipt"]).digest
            for _, e in events
            if e.kind == "receipt"
        }
        shown: set[bytes] = set()
        for rec in doc.get("recipients") or []:
            for step in rec.get("history") or []:
                if step.get("source") != "office" or not isinstance(step.get("receipt"), str):
                    continue
                try:
                    raw = base64.b64decode(step["receipt"], validate=True)
                    digest = parse_office_receipt(raw).digest
                except (ValueError, RemoteError):
                    issues.add(
                        "status_mismatch",
                        f"the hub's status shows an unreadable receipt of {rec.get('organ')}",
                    )
                    continue
                shown.add(digest)
                received = step.get("received_at")
                if (
                    digest not in logged
                    and isinstance(received, int)
                    and received < signed_at - SEQUENCING_GRACE
                ):
                    issues.add(
                        "status_mismatch",
                        f"the hub's status shows a receipt {step.get('status')} of "
                        f"{rec.get('organ')} that its log does not hold",
                        organ=rec.get("organ"),
                    )
        for index, event in events:
            if event.kind == "receipt":
                digest = parse_office_receipt(event.fields["receipt"]).digest
                if digest not in shown:
                    issues.add(
                        "status_mismatch",
                        f"the log holds a receipt {event.fields['status']} of "
                        f"{event.fields['organ']} (entry {index}) that the hub's status hides",
                        index=index,
                    )

    # --- full audit -------------------------------------------------------------------------

    async def replay(self) -> dict[str, Any]:
        """Every entry from 0 again: roots recomputed, compared with every checkpoint."""
        checked = await self.checkpoint(cosign=False, witnesses=(), threshold=0)
        _stored, target = self.accepted()
        scratch = AuditStore.open(":memory:")
        issues = Issues()
        started = time.monotonic()
        try:
            replayer = Auditor(
                self.home,
                self.config,
                scratch,
                None,
                hub_key=self.hub_key,
                authority=self.authority,
                client=self.client,
                alarm_store=self.store,
            )
            for stored in self._all_checkpoints(target.size):
                scratch.add_checkpoint(stored.size, stored.root, stored.note)
            await replayer._mirror(Frontier(), target, issues)
            differing = []
            mirror = self.store.mirror_size()
            for start in range(0, min(mirror, target.size), 5000):
                mine = dict(self.store.entries_from(start, start + 5000))
                for idx, data in scratch.entries_from(start, start + 5000):
                    if idx in mine and mine[idx] != data:
                        differing.append(idx)
            if differing:
                issues.add(
                    "log_entry_mismatch",
                    f"entries {', '.join(map(str, differing[:20]))} differ from the copies "
                    "mirrored earlier",
                    indexes=differing[:100],
                )
            counts = scratch.kind_counts()
            receipts_failed = len(scratch.failed_receipts())
            directory = scratch.directory_count()
        finally:
            scratch.close()
        self._record(issues)
        return {
            "size": target.size,
            "root_hash": target.root_hash.hex(),
            "entries": sum(counts.values()),
            "kinds": counts,
            "checkpoints_compared": len(self._all_checkpoints(target.size)),
            "directory_entries": directory,
            "receipts_failed": receipts_failed,
            "seconds": round(time.monotonic() - started, 3),
            "checkpoint_note": checked["note"],
            "alarms": issues.items,
        }

    def _all_checkpoints(self, up_to: int) -> list[StoredCheckpoint]:
        return self.store.checkpoints_between(-1, up_to)

    # --- following the log ----------------------------------------------------------------

    async def monitor_round(self) -> dict[str, Any]:
        """One round of ``monitor``: checkpoint, mirror, directory changes and served entries."""
        checked = await self.checkpoint()
        _stored, target = self.accepted()
        followed = await self.follow(target)
        with self.store.transaction():
            changes = self.store.unreported_changes()
        issues = Issues()
        organs = self.store.directory_organs()
        for start in range(0, len(organs), 500):
            await self._check_served(organs[start : start + 500], issues, target)
        self._record(issues)
        return {
            "size": target.size,
            "root_hash": target.root_hash.hex(),
            "witnesses": checked["witnesses"],
            "mirrored": followed["mirrored"],
            "directory_changes": changes,
            "alarms": [*followed["alarms"], *issues.items],
        }

    # --- reports ----------------------------------------------------------------------------

    def deliveries(self, packet_ids: Sequence[bytes]) -> LogDeliveries:
        folded = LogDeliveries()
        for row in self.store.packet_events(packet_ids):
            event = parse_event(bytes(row["data"]))
            folded.add(int(row["idx"]), event, receipt_ok=row["receipt_ok"] != 0)
        return folded

    def report(self, first: date, last: date, organ: str | None, now: int) -> dict[str, Any]:
        start, end = vn_day_bounds(first, last)
        folded = self.deliveries(self.store.accepted_between(start, end))
        holidays = self.config.holiday_dates()
        rows = organ_report(
            folded.records(), now=now, start=start, end=end, organ=organ, holidays=holidays
        )
        doc: dict[str, Any] = {
            "from": first.isoformat(),
            "to": last.isoformat(),
            "organ": organ,
            "log_size": self.store.mirror_size(),
            "rows": [r.as_dict() for r in rows],
            "total": totals(rows).as_dict(),
            "unverified_receipts": sum(len(r.unverified) for r in folded.records()),
        }
        if organ is not None:
            doc["deliveries"] = [
                r.as_dict(now, holidays)
                for r in folded.records()
                if organ in (r.recipient, r.sender) and start <= r.accepted_at < end
            ]
        return doc

    def logged_entries(self, organs: Iterable[str]) -> list[EntryAt]:
        """The newest logged entry of each organ in the mirror (for offline checks)."""
        size = self.store.mirror_size()
        out = []
        for organ in sorted(set(organs)):
            row = self.store.directory_before(organ, size)
            if row is not None:
                out.append(EntryAt(int(row["idx"]), self.ingest.entry(bytes(row["entry"]), organ)))
        return out

    def overdue(self, now: int, organ: str | None = None) -> list[DeliveryRecord]:
        folded = self.deliveries(self.store.accepted_between(0, now + 1))
        return overdue(folded.records(), now=now, organ=organ, holidays=self.config.holiday_dates())


def _describe_entry(item: Any) -> str:
    if not isinstance(item, dict):
        return "an entry"
    index = item.get("index")
    try:
        event = parse_event(bytes(item["entry"]))
    except (RemoteError, KeyError, TypeError):
        return f"entry {index}"
    what = event.kind
    if event.kind == "receipt":
        what = f"the receipt {event.fields['status']} of {event.fields['organ']}"
    elif "organ" in event.fields:
        what = f"the {event.kind} event of {event.fields['organ']}"
    return f"entry {index} ({what})"


def _parties(events: Sequence[tuple[int, Event]]) -> tuple[set[str], str | None]:
    signers: set[str] = set()
    sender = None
    for _, event in events:
        if event.kind == "packet_accepted":
            sender = event.fields["sender"]
        elif event.kind == "receipt":
            try:
                signers.add(parse_office_receipt(event.fields["receipt"]).receipt.signer)
            except RemoteError:
                continue
    return signers, sender


def cosigners(bundle: bytes) -> set[str]:
    """Organs whose witness cosignature the bundle's checkpoint carries."""
    prefix = witness_name("")
    try:
        note = decode(bundle, max_size=64 * 1024 * 1024, max_depth=4)["checkpoint"]
        names = [sig.name for sig in parse_note(note).signatures]
    except (RemoteError, KeyError, TypeError):
        return set()
    return {n[len(prefix) :] for n in names if n.startswith(prefix)}


def _recipients(events: Sequence[tuple[int, Event]]) -> set[str]:
    out: set[str] = set()
    for _, event in events:
        if event.kind == "packet_accepted":
            out.update(event.fields["recipients"])
    return out


def describe(
    opened: OpenedBundle,
    *,
    origin: str,
    hub_key: SigningPublicKey,
    authority: SigningPublicKey | None,
    receipts: dict[int, str],
    directory: Sequence[EntryAt] = (),
    envelope: Envelope | None = None,
    witnesses: dict[str, int] | None = None,
    holidays: frozenset[date] = frozenset(),
    now: int | None = None,
) -> dict[str, Any]:
    """Verified facts as JSON-ready data: the packet, its timeline, its deliveries.

    ``receipts`` are the indexes of the receipt events whose signatures were verified;
    deliveries count only those.
    """
    now = int(time.time()) if now is None else now
    timeline = []
    folded = LogDeliveries()
    for index, event in zip(opened.indexes, opened.events, strict=True):
        item: dict[str, Any] = {"index": index, "kind": event.kind, "at": iso(event.at)}
        for name in ("organ", "status", "sender", "direction", "state"):
            if name in event.fields:
                item[name] = event.fields[name]
        if event.kind == "receipt":
            r = parse_office_receipt(event.fields["receipt"]).receipt
            item.update(
                {
                    "label": STATUS[r.status].vi,
                    "signer": r.signer,
                    "signed_at": iso(r.at),
                    "signature": "verified" if index in receipts else "not checked",
                }
            )
            if r.reason:
                item["reason"] = r.reason
            if r.details:
                item["details"] = dict(r.details)
        if event.kind == "packet_accepted":
            item["recipients"] = list(event.fields["recipients"])
            item["urgency"] = event.fields["urgency"]
            if "due" in event.fields:
                item["due"] = event.fields["due"]
        item["inclusion"] = "verified"
        timeline.append(item)
        folded.add(index, event, receipt_ok=event.kind != "receipt" or index in receipts)
    doc: dict[str, Any] = {
        "packet_id": packet_text(opened.packet_id),
        "origin": origin,
        "checkpoint": {
            "size": opened.checkpoint.size,
            "root_hash": opened.checkpoint.root_hash.hex(),
            "signed_at": iso(_checkpoint_time(opened.checkpoint)),
        },
        "hub_key": fingerprint(hub_key.kid),
        "authority": None if authority is None else fingerprint(authority.kid),
        "events": timeline,
        "deliveries": [r.as_dict(now, holidays) for r in folded.packet(opened.packet_id)],
        "receipts_verified": len(receipts),
        "witnesses": {organ: iso(at) for organ, at in sorted((witnesses or {}).items())},
        "directory_entries": [
            {"index": e.index, "organ": e.entry.organ, "serial": e.entry.serial} for e in directory
        ],
        "verified": True,
    }
    if envelope is not None:
        ref = envelope.routing.reference
        doc["envelope"] = {
            "digest": envelope.digest.hex(),
            "sender": envelope.sender,
            "sender_signature": "verified",
            "kind": envelope.kind,
            "urgency": envelope.routing.urgency,
            "secrecy": envelope.routing.secrecy,
            "due": envelope.routing.due,
            "reference": None
            if ref is None
            else {
                "type": ref.doc_type,
                "number": ref.number,
                "notation": ref.notation,
                "date": ref.date,
            },
            "recipients": [st.organ for st in envelope.recipients],
        }
    return doc


def describe_proof(
    verified: VerifiedProof, *, holidays: frozenset[date] = frozenset(), now: int | None = None
) -> dict[str, Any]:
    return describe(
        verified.bundle,
        origin=verified.origin,
        hub_key=verified.hub_key,
        authority=verified.authority,
        receipts=verified.receipts,
        directory=verified.directory,
        envelope=verified.envelope,
        witnesses=verified.witnesses,
        holidays=holidays,
        now=now,
    )


def verify_file(
    data: bytes,
    *,
    hub_key: SigningPublicKey | None,
    authority: SigningPublicKey | None,
    witness_entries: Sequence[EntryAt] = (),
) -> dict[str, Any]:
    """Verify a saved audit proof (or a bare hub bundle) offline.

    A bare bundle carries no directory entries: its checkpoint's witness cosignatures are
    checked with ``witness_entries`` (the auditor's mirror), and one that cannot be
    checked is refused -- no byte goes unverified.
    """
    if _looks_like_bundle(data):
        if hub_key is None:
            raise NodeError(
                "key_missing", "verifying a bare bundle needs the pinned hub key (--home)"
            )
        origin = _bundle_origin(data)
        verifier = log_verifier(hub_key, origin)
        opened = open_bundle(data, verifier)
        witnesses = check_cosignatures(opened, verifier, witness_entries)
        doc = describe(
            opened,
            origin=origin,
            hub_key=hub_key,
            authority=authority,
            receipts={},
            witnesses=witnesses,
        )
        doc["note"] = (
            "a bare bundle: its entries are in the signed log; receipt signatures need an "
            "audit proof (lienthong-audit trace)"
        )
        return doc
    return describe_proof(verify_proof(data, hub_key=hub_key, authority=authority))


def _looks_like_bundle(data: bytes) -> bool:
    try:
        doc = decode(data, max_size=64 * 1024 * 1024, max_depth=4)
    except RemoteError:
        return False
    return isinstance(doc, dict) and "type" not in doc and "packet_id" in doc


def _bundle_origin(data: bytes) -> str:
    try:
        doc = decode(data, max_size=64 * 1024 * 1024, max_depth=4)
        return str(parse_note(doc["checkpoint"]).text.decode().split("\n", 1)[0])
    except (RemoteError, KeyError, TypeError, UnicodeDecodeError):
        raise RemoteError("checkpoint_malformed", "the bundle's checkpoint has no origin") from None


def envelope_reference(raw: bytes) -> str | None:
    """``05-NQ/TU`` from an envelope's clear reference, if any."""
    env = parse_envelope(raw)
    ref = env.routing.reference
    if ref is None:
        return None
    if ref.number and ref.notation:
        return f"{ref.number}-{ref.notation}"
    return ref.notation or ref.number or ref.doc_type
