"""Audit-log entries: what the hub records of every event, as deterministic CBOR.

An entry holds ids, digests, organ codes, status codes and times -- never document content
or subjects.  Entries are the leaves of the RFC 6962 Merkle tree (:mod:`protocol.merkle`);
an auditor who holds an entry, an inclusion proof and a signed checkpoint can check it
without trusting the hub.  Where an event rests on a signed object (an office receipt, a
directory entry, a hub receipt), the entry carries the signed bytes themselves, so the
auditor verifies the office's own signature, not the hub's word.

Kinds and their fields (all entries also have ``v``, ``kind`` and ``at``):

``packet_accepted``  packet_id, envelope_digest, sender, recipients (list of organ codes),
                     packet_kind (document/recall/update/replace), urgency, secrecy, due?,
                     created, body_size, body_sha256, transport, target?
``body_fetched``     packet_id, envelope_digest, organ
``receipt``          packet_id, envelope_digest, organ, status, receipt (signed bytes)
``directory``        organ, action (enrol/update/rotate/revoke/merge), entry (signed bytes)
``policy_refused``   sender, code, packet_id?, envelope_digest?
``email``            packet_id, organ, direction (out/in), state (sent/deferred/failed/
                     received), attempt, code? (why an attempt was deferred or failed)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from .codec import Fields, decode, encode, omit_none
from .errors import LocalError, RemoteError

VERSION: Final = 1
ENTRY_MAX: Final = 256 * 1024
KINDS: Final = (
    "packet_accepted",
    "body_fetched",
    "receipt",
    "directory",
    "policy_refused",
    "email",
)

_SCHEMA: Final[dict[str, dict[str, str]]] = {
    "packet_accepted": {
        "packet_id": "id",
        "envelope_digest": "digest",
        "sender": "text",
        "recipients": "texts",
        # Not "kind": that key names the entry's own kind.
        "packet_kind": "text",
        "urgency": "int",
        "secrecy": "int",
        "due": "text?",
        "created": "int",
        "body_size": "int",
        "body_sha256": "digest",
        "transport": "text",
        "target": "id?",
    },
    "body_fetched": {"packet_id": "id", "envelope_digest": "digest", "organ": "text"},
    "receipt": {
        "packet_id": "id",
        "envelope_digest": "digest",
        "organ": "text",
        "status": "text",
        "receipt": "blob",
    },
    "directory": {"organ": "text", "action": "text", "entry": "blob"},
    "policy_refused": {
        "sender": "text",
        "code": "text",
        "packet_id": "id?",
        "envelope_digest": "digest?",
    },
    "email": {
        "packet_id": "id",
        "organ": "text",
        "direction": "text",
        "state": "text",
        "attempt": "int",
        "code": "text?",
    },
}


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    at: int
    fields: dict[str, Any]
    raw: bytes


def encode_event(kind: str, at: int, /, **fields: Any) -> bytes:
    """Encode one entry; refuses fields the kind does not define (a local bug)."""
    schema = _SCHEMA.get(kind)
    if schema is None:
        raise LocalError(f"unknown audit event kind {kind!r}")
    extra = set(fields) - set(schema)
    if extra:
        raise LocalError(f"{kind} has no field {sorted(extra)[0]}")
    body = {"v": VERSION, "kind": kind, "at": at, **omit_none(fields)}
    return encode(body)


def parse_event(data: bytes) -> Event:
    """Strictly parse an entry (auditors run this on bytes the hub served)."""
    f = Fields(decode(data, max_size=ENTRY_MAX, max_depth=3), "event")
    if f.integer("v") != VERSION:
        raise RemoteError("version_unsupported", "audit event version")
    kind = f.choice("kind", KINDS)
    at = f.integer("at")
    out: dict[str, Any] = {}
    for name, typ in _SCHEMA[kind].items():
        optional = typ.endswith("?")
        base = typ.rstrip("?")
        if optional and f.opt_raw(name) is None:
            continue
        if base == "id":
            out[name] = f.blob(name, size=16)
        elif base == "digest":
            out[name] = f.blob(name, size=32)
        elif base == "text":
            out[name] = f.text(name, max_len=256)
        elif base == "int":
            out[name] = f.integer(name)
        elif base == "blob":
            out[name] = f.blob(name, max_size=ENTRY_MAX)
        else:  # texts
            items = f.array(name, max_items=5000)
            if not all(isinstance(i, str) and len(i) <= 64 for i in items):
                raise RemoteError("field_invalid", f"event.{name} must be organ codes")
            out[name] = list(items)
    f.done()
    return Event(kind, at, out, bytes(data))
