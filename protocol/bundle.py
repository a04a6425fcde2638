"""Proof bundles: one packet's audit-log events with inclusion proofs, verified offline.

An auditor asks the hub for a packet's bundle (``GET /v1/log/packets/{id}/bundle``), keeps
the bytes, and verifies them later with no hub and no network: the checkpoint's signature
by the log's key, each entry's inclusion proof against that checkpoint, and each entry's
format.  What the bundle proves is that *these* events are in the log the hub signed; it
cannot prove there are no others (the hub could leave one out) -- following the whole log
(``monitor``/``replay``) is what catches omissions.

The bundle is deterministic CBOR (RFC 8949 §4.2), documented in ``docs/audit-bundle.md``::

    {
      "v": 1,                      ; format version
      "packet_id": bstr(16),       ; the packet every event names
      "checkpoint": bstr,          ; the signed note (C2SP tlog-checkpoint), UTF-8 bytes,
                                   ; the log's signature first, witness cosignatures after
      "events": [                  ; at least one, indexes strictly increasing
        {"index": uint,            ; the entry's leaf index in the log
         "entry": bstr,            ; the entry bytes as logged (protocol.audit format)
         "proof": [bstr(32), ...]} ; RFC 6962 inclusion proof at the checkpoint's size
      ]
    }

Every failure is a :class:`~protocol.errors.RemoteError`: ``cbor_*``/``field_*`` for a
malformed bundle, ``checkpoint_malformed``/``checkpoint_signature_invalid`` for the
checkpoint, ``cosignature_invalid`` when witnesses are required and missing or wrong, ``tree_size_invalid`` for an index outside the checkpoint's tree,
``proof_invalid`` for an entry (or proof) that is not in the signed tree, and the codes of
:func:`protocol.audit.parse_event` for an entry that is in the tree but not a valid event.

The log's key and the witnesses' keys
-------------------------------------
C2SP notes are signed with Ed25519.  The log signs with the Ed25519 part of the hub's
signing key (for a hybrid hub key, its Ed25519 half), named after the log's origin
``lienthong.hub/<hub name>``; :func:`log_verifier` derives the verifier from the hub's
public key, which auditors already pin.  Offices witness with the Ed25519 part of their own
directory signing key under the name ``lienthong.witness/<organ code>``
(:func:`witness_signer` / :func:`witness_verifier`), so a witness key is authenticated,
rotated and revoked by the directory like every other office key.  Reusing those keys is
safe because every message is domain-separated: note texts start with the origin
(``lienthong.hub/...``), cosigned messages with ``cosignature/v1``, and Lienthong's own
signatures with ``lienthong/v1 <context>\\x00`` -- no message of one kind is a message of
another.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .audit import ENTRY_MAX, Event, parse_event
from .checkpoint import (
    MAX_NOTE_SIZE,
    Checkpoint,
    CosignatureSigner,
    CosignatureVerifier,
    NoteSigner,
    NoteVerifier,
    open_checkpoint,
    valid_key_name,
    verify_cosignatures,
)
from .codec import Fields, decode, encode
from .errors import LocalError, RemoteError
from .keys import SigningPrivateKey, SigningPublicKey
from .merkle import HASH_SIZE, leaf_hash, verify_inclusion

__all__ = [
    "BUNDLE_MAX",
    "BUNDLE_VERSION",
    "MAX_EVENTS",
    "BundleEvent",
    "OpenedBundle",
    "encode_bundle",
    "log_origin",
    "log_signer",
    "log_verifier",
    "open_bundle",
    "verify_bundle",
    "witness_name",
    "witness_signer",
    "witness_verifier",
]

BUNDLE_VERSION: Final = 1
#: Largest bundle accepted: a directive to thousands of offices with hybrid receipts fits.
BUNDLE_MAX: Final = 64 * 1024 * 1024
#: Most events in one bundle.
MAX_EVENTS: Final = 100_000
#: An inclusion proof in a uint64-sized tree has at most 64 hashes.
_MAX_PROOF: Final = 64
_ED25519_SEED: Final = 32
_ED25519_PUB: Final = 32

#: Called with each receipt event (its ``fields["receipt"]`` holds the office's signed
#: receipt bytes); raises a RemoteError if the receipt's signature does not verify.
ReceiptCheck = Callable[[Event], None]


# --- keys ---------------------------------------------------------------------------------


def log_origin(hub_name: str) -> str:
    """The log's origin line and key name for a hub: ``lienthong.hub/<hub name>``."""
    return f"lienthong.hub/{hub_name}"


def witness_name(organ: str) -> str:
    """The cosigning key name of an office acting as a witness."""
    return f"lienthong.witness/{organ}"


def _ed25519_private(key: SigningPrivateKey) -> Ed25519PrivateKey:
    # private_bytes() is the Ed25519 seed, then (hybrid keys) the ML-DSA-65 seed.
    return Ed25519PrivateKey.from_private_bytes(key.private_bytes()[:_ED25519_SEED])


def _ed25519_public(key: SigningPublicKey) -> Ed25519PublicKey:
    # The raw public key is the Ed25519 key, then (hybrid keys) the ML-DSA-65 key.
    return Ed25519PublicKey.from_public_bytes(key.raw[:_ED25519_PUB])


def log_signer(key: SigningPrivateKey, origin: str) -> NoteSigner:
    """The log's checkpoint signer: the Ed25519 part of the hub's signing key."""
    return NoteSigner(origin, _ed25519_private(key))


def log_verifier(key: SigningPublicKey, origin: str) -> NoteVerifier:
    """The log's checkpoint verifier, from the hub's public signing key.

    ``origin`` may come from what a peer sent (a proof, a note): one that cannot be a key
    name is a remote error.
    """
    if not valid_key_name(origin):
        raise RemoteError("field_invalid", "the log's origin is not a valid key name")
    return NoteVerifier(origin, _ed25519_public(key))


def witness_signer(organ: str, key: SigningPrivateKey) -> CosignatureSigner:
    """An office's cosigning key: the Ed25519 part of its directory signing key."""
    return CosignatureSigner(witness_name(organ), _ed25519_private(key))


def witness_verifier(organ: str, key: SigningPublicKey) -> CosignatureVerifier:
    """An office's cosignature verifier, from its directory signing key."""
    return CosignatureVerifier(witness_name(organ), _ed25519_public(key))


# --- the bundle ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BundleEvent:
    """One entry of a bundle: its index, its bytes and its inclusion proof."""

    index: int
    entry: bytes
    proof: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class OpenedBundle:
    """A verified bundle: the checkpoint and the packet's events with their indexes."""

    packet_id: bytes
    note: bytes
    checkpoint: Checkpoint
    indexes: tuple[int, ...]
    events: tuple[Event, ...]


def encode_bundle(packet_id: bytes, note: bytes, events: Sequence[BundleEvent]) -> bytes:
    """The bundle's deterministic CBOR (the hub builds it; events sorted by index)."""
    if len(packet_id) != 16:
        raise LocalError("a packet id is 16 bytes")
    ordered = sorted(events, key=lambda e: e.index)
    if any(a.index == b.index for a, b in itertools.pairwise(ordered)):
        raise LocalError("a bundle cannot hold one index twice")
    return encode(
        {
            "v": BUNDLE_VERSION,
            "packet_id": packet_id,
            "checkpoint": note,
            "events": [
                {"index": e.index, "entry": e.entry, "proof": list(e.proof)} for e in ordered
            ],
        }
    )


def _parse(data: bytes) -> tuple[bytes, bytes, list[BundleEvent]]:
    f = Fields(decode(data, max_size=BUNDLE_MAX, max_depth=4), "bundle")
    if f.integer("v") != BUNDLE_VERSION:
        raise RemoteError("version_unsupported", "bundle version")
    packet_id = f.blob("packet_id", size=16)
    note = f.blob("checkpoint", max_size=MAX_NOTE_SIZE)
    items = f.array("events", max_items=MAX_EVENTS)
    f.done()
    if not items:
        raise RemoteError("field_invalid", "bundle.events is empty")
    events = parse_indexed_entries(items, "bundle.events")
    return packet_id, note, events


def parse_indexed_entries(items: list[Any], where: str) -> list[BundleEvent]:
    """``[{index, entry, proof}]``: log entries with their inclusion paths, indexes rising."""
    events: list[BundleEvent] = []
    previous = -1
    for n, item in enumerate(items):
        e = Fields(item, f"{where}[{n}]")
        index = e.integer("index")
        entry = e.blob("entry", max_size=ENTRY_MAX)
        proof = e.array("proof", max_items=_MAX_PROOF)
        e.done()
        if not all(isinstance(h, bytes) and len(h) == HASH_SIZE for h in proof):
            raise RemoteError("field_invalid", f"{where}[{n}].proof must be 32-byte hashes")
        if index <= previous:
            raise RemoteError("field_invalid", f"{where} indexes must strictly increase")
        previous = index
        events.append(BundleEvent(index, entry, tuple(proof)))
    return events


def open_bundle(
    data: bytes,
    log_verifier: NoteVerifier,
    *,
    origin: str | None = None,
    check_receipt: ReceiptCheck | None = None,
    witnesses: Sequence[CosignatureVerifier] = (),
    threshold: int = 0,
) -> OpenedBundle:
    """Verify a bundle completely and return its checkpoint and events.

    ``origin`` defaults to the log key's name.  ``check_receipt`` is called with every
    receipt event once its inclusion is proven (receipt signatures need directory entries,
    which the caller holds).  With ``witnesses``, the checkpoint must also carry valid
    cosignatures of at least ``threshold`` of them (``cosignature_invalid``); cosignatures
    by keys not in ``witnesses`` are ignored, as C2SP requires.
    """
    packet_id, note, items = _parse(data)
    checkpoint = open_checkpoint(note, log_verifier, origin=origin)
    if witnesses or threshold:
        verify_cosignatures(note, witnesses, threshold)
    for item in items:
        if item.index >= checkpoint.size:
            raise RemoteError(
                "tree_size_invalid",
                f"entry {item.index} is not in the checkpoint's tree of {checkpoint.size}",
            )
        verify_inclusion(
            leaf_hash(item.entry), item.index, checkpoint.size, item.proof, checkpoint.root_hash
        )
    events: list[Event] = []
    for item in items:
        event = parse_event(item.entry)
        if event.fields.get("packet_id") != packet_id:
            raise RemoteError(
                "field_invalid", f"entry {item.index} is not an event of the bundle's packet"
            )
        if check_receipt is not None and event.kind == "receipt":
            check_receipt(event)
        events.append(event)
    return OpenedBundle(packet_id, note, checkpoint, tuple(i.index for i in items), tuple(events))


def verify_bundle(
    bundle_bytes: bytes,
    log_verifier: NoteVerifier,
    *,
    origin: str | None = None,
    check_receipt: ReceiptCheck | None = None,
    witnesses: Sequence[CosignatureVerifier] = (),
    threshold: int = 0,
) -> list[Event]:
    """Verify a bundle offline and return its events in log order (see :func:`open_bundle`)."""
    opened = open_bundle(
        bundle_bytes,
        log_verifier,
        origin=origin,
        check_receipt=check_receipt,
        witnesses=witnesses,
        threshold=threshold,
    )
    return list(opened.events)
