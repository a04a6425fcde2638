"""The office as a witness of the hub's log, and as the watcher of its own directory entry.

On every sync (and in the daemon's housekeeping) :func:`witness_round`:

1. **Checks the log** -- the newest checkpoint's signature with the pinned hub key and a
   consistency proof from the last checkpoint this office saw
   (:meth:`nodes.agent.Agent.check_checkpoint`).  A failure is an *alarm*: the log forked
   or went back.  Both notes are kept as evidence and the office cosigns nothing more.
2. **Cosigns** the checkpoint it just verified: a C2SP ``cosignature/v1`` with the
   Ed25519 part of its directory signing key under ``lienthong.witness/<organ>``
   (:func:`protocol.bundle.witness_signer`), posted to ``/v1/log/cosignatures``; the hub
   publishes it with the checkpoint.  An auditor who requires k of n witnesses then knows
   that k offices saw this very tree and found it consistent with their history: a hub
   that shows different logs to different parties cannot gather cosignatures for both.
3. **Watches its own entry** (key transparency): the ``directory`` events of its organ in
   the log, each with an inclusion proof against the checkpoint just verified, and the
   entry the hub serves now.  A key listed under its organ that the office never generated
   (its keystore holds every key it made), a revocation of one of its keys, or a served
   entry the log does not hold, is an alarm: its keys changed without its own request.

Alarms are kept in the local store until a clerk acknowledges them
(``lienthong-node status --acknowledge``); while one is active ``sync`` and ``status``
exit with status 3, the daemon logs it on every housekeeping round, and ``status`` shows
it.  A hub the office cannot reach is not an alarm: nothing was seen.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from typing import TYPE_CHECKING, Any, Final

from protocol import checkpoint as cp
from protocol.audit import parse_event
from protocol.bundle import log_verifier, witness_signer
from protocol.directory import DirectoryEntry, verify_entry
from protocol.errors import LienthongError, RemoteError
from protocol.keys import fingerprint
from protocol.merkle import leaf_hash, verify_inclusion
from protocol.transparency import foreign_keys

from .core import META_CHECKPOINT, META_ORIGIN, RoundReport
from .errors import HubError, HubUnavailable

if TYPE_CHECKING:
    from .agent import Agent

META_ALARMS: Final = "alarms"
META_COSIGNED: Final = "witness_cosigned_size"
META_KEYWATCH: Final = "keywatch_index"
#: An entry issued this close to the checkpoint's time may not be logged in it yet.
GRACE: Final = 10
#: Exit status of ``sync`` and ``status`` while an alarm is active.
EXIT_ALARM: Final = 3

#: Alarm codes a node raises, with their meaning.
ALARM_CODES: Final[dict[str, str]] = {
    "checkpoint_inconsistent": "The hub's log is not consistent with what this office saw.",
    "key_changed": "The directory lists a key for this office that it never generated.",
    "key_revoked": "One of this office's keys was revoked without its request.",
    "directory_entry_not_logged": "The hub serves an entry for this office its log does not hold.",
    "directory_entry_invalid": "The hub serves or logs an entry not signed by the authority.",
}


def alarms(agent: Agent) -> list[dict[str, Any]]:
    """The active (unacknowledged) alarms."""
    raw = agent.store.get_meta(META_ALARMS)
    return list(json.loads(raw)) if raw else []


def acknowledge(agent: Agent) -> list[dict[str, Any]]:
    """Clear the active alarms (a clerk has looked at them); returns them."""
    found = alarms(agent)
    agent.store.set_meta(META_ALARMS, b"[]")
    return found


def _raise(agent: Agent, report: RoundReport, code: str, detail: str, **evidence: Any) -> None:
    active = alarms(agent)
    if not any(a["code"] == code and a["detail"] == detail for a in active):
        active.append({"code": code, "detail": detail, "at": int(time.time()), **evidence})
        agent.store.set_meta(META_ALARMS, json.dumps(active, ensure_ascii=False).encode())
    report.errors.append({"code": code, "detail": detail, "alarm": "true"})
    agent.report.event("alarm.raised", code=code, detail=detail)


async def witness_round(agent: Agent, report: RoundReport) -> None:
    """Check the log, cosign, watch our own entry (see the module docstring)."""
    previous = agent.store.get_meta(META_CHECKPOINT)
    try:
        report.checkpoint = await agent.check_checkpoint()
    except RemoteError as exc:
        if exc.code == "checkpoint_inconsistent":
            current = b""
            with contextlib.suppress(HubError, HubUnavailable):
                current = await agent.client.checkpoint()
            _raise(
                agent,
                report,
                exc.code,
                f"the hub's log is not consistent with the checkpoint this office saw: {exc.detail}",
                previous=(previous or b"").decode("utf-8", "replace"),
                current=current.decode("utf-8", "replace"),
            )
        else:
            report.errors.append({"code": exc.code, "detail": exc.detail})
            agent.report.event("sync.checkpoint_bad", code=exc.code, detail=exc.detail)
        return
    if report.checkpoint is None:
        return  # the hub is away: nothing seen, nothing to cosign
    note = agent.store.get_meta(META_CHECKPOINT)
    if note is None:
        return
    if any(a["code"] == "checkpoint_inconsistent" for a in alarms(agent)):
        return  # a fork stays unresolved: cosign nothing until a person has looked
    await _cosign(agent, note)
    try:
        await _watch_keys(agent, note, report)
    except (HubError, HubUnavailable):
        return


async def _cosign(agent: Agent, note: bytes) -> None:
    checkpoint = cp.Checkpoint.parse_body(cp.parse_note(note).text)
    done = agent.store.get_meta(META_COSIGNED)
    if done is not None and int(done) >= checkpoint.size and checkpoint.size != 0:
        return
    signer = witness_signer(agent.organ, agent.keystore.signing_key)
    try:
        await agent.client.cosign(cp.add_cosignature(note, signer, int(time.time())))
    except (HubError, HubUnavailable, RemoteError) as exc:
        agent.report.event(
            "sync.checkpoint_bad", code=getattr(exc, "code", "error"), detail=f"cosigning: {exc}"
        )
        return
    agent.store.set_meta(META_COSIGNED, str(checkpoint.size).encode())


def _own_kids(agent: Agent) -> set[bytes]:
    ks = agent.keystore
    return {k.kid for k in ks.signing_keys} | {k.kid for k in ks.encryption_keys}


def _check_entry(
    agent: Agent, report: RoundReport, entry: DirectoryEntry, where: str, *, revocations: bool
) -> None:
    for usage, rec in foreign_keys(entry, _own_kids(agent)):
        _raise(
            agent,
            report,
            "key_changed",
            f"{where} lists a {usage} key {fingerprint(rec.kid)} ({rec.alg}) for "
            f"{entry.organ} that this office never generated (entry serial {entry.serial})",
        )
    if not revocations:
        return
    for records, usage in ((entry.signing_keys, "sign"), (entry.encryption_keys, "enc")):
        for rec in records:
            if rec.revoked_at is not None and rec.kid in _own_kids(agent):
                _raise(
                    agent,
                    report,
                    "key_revoked",
                    f"{where} revokes this office's {usage} key {fingerprint(rec.kid)} "
                    f"(entry serial {entry.serial})",
                )


async def _watch_keys(agent: Agent, note: bytes, report: RoundReport) -> None:
    origin_raw = agent.store.get_meta(META_ORIGIN)
    origin = origin_raw.decode() if origin_raw else None
    checkpoint = cp.open_checkpoint(note, log_verifier(agent.hub_key, origin or _origin(note)))
    authority = agent.keystore.authority
    seen = int(agent.store.get_meta(META_KEYWATCH) or b"-1")
    newest: tuple[int, bytes] | None = None
    for index, data, proof in await agent.client.directory_log(agent.organ, checkpoint.size):
        try:
            verify_inclusion(leaf_hash(data), index, checkpoint.size, proof, checkpoint.root_hash)
            event = parse_event(data)
            if event.kind != "directory" or event.fields["organ"] != agent.organ:
                raise RemoteError("field_invalid", "not a directory event of this office")
            raw = event.fields["entry"]
            entry = verify_entry(raw, authority, organ=agent.organ).entry
        except LienthongError as exc:
            _raise(
                agent,
                report,
                "directory_entry_invalid",
                f"the hub's log of this office's entry does not verify at index {index}: {exc}",
            )
            continue
        if newest is None or index > newest[0]:
            newest = (index, hashlib.sha256(raw).digest())
        if index > seen:
            _check_entry(
                agent,
                report,
                entry,
                f"the log (entry {index}, {event.fields['action']})",
                revocations=True,
            )
    if newest is not None:
        agent.store.set_meta(META_KEYWATCH, str(max(seen, newest[0])).encode())
    try:
        served, _unknown = await agent.client.entries([agent.organ])
    except RemoteError as exc:
        _raise(
            agent,
            report,
            "directory_entry_invalid",
            f"the hub serves an entry for this office not signed by the authority: {exc.detail}",
        )
        return
    own = served.get(agent.organ)
    if own is None:
        return
    _check_entry(agent, report, own.entry, "the entry the hub serves", revocations=False)
    signed_at = _time(checkpoint) or int(time.time())
    logged = newest is not None and newest[1] == hashlib.sha256(own.raw).digest()
    if not logged and own.entry.issued_at < signed_at - GRACE:
        _raise(
            agent,
            report,
            "directory_entry_not_logged",
            f"the hub serves this office's entry serial {own.entry.serial}, which its log "
            "does not hold: it was changed behind the log's back",
        )


def _origin(note: bytes) -> str:
    return cp.parse_note(note).text.decode("utf-8", "replace").split("\n", 1)[0]


def _time(checkpoint: cp.Checkpoint) -> int | None:
    for line in checkpoint.extensions:
        if line.startswith("time ") and line[5:].isdigit():
            return int(line[5:])
    return None


def node_status(agent: Agent) -> dict[str, Any]:
    """This office's watch: its keys, the last checkpoint seen and cosigned, the alarms."""
    note = agent.store.get_meta(META_CHECKPOINT)
    size = None
    if note is not None:
        try:
            size = cp.Checkpoint.parse_body(cp.parse_note(note).text).size
        except RemoteError:
            size = None
    ks = agent.keystore
    cosigned = agent.store.get_meta(META_COSIGNED)
    return {
        "organ": agent.organ,
        "signing_keys": [fingerprint(k.kid) for k in ks.signing_keys],
        "encryption_keys": [fingerprint(k.kid) for k in ks.encryption_keys],
        "checkpoint": {"size": size, "note": None if note is None else note.decode()},
        "witness_cosigned_size": None if cosigned is None else int(cosigned),
        "keywatch_index": int(agent.store.get_meta(META_KEYWATCH) or b"-1"),
        "alarms": alarms(agent),
    }
