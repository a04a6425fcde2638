"""Audit proofs: a packet's bundle plus everything needed to check it offline.

The hub's proof bundle (:mod:`protocol.bundle`) proves that a packet's events are in the
signed log, but checking the *receipts* in it needs each signer's directory entry, and
trusting an entry the hub serves today is trusting the hub.  ``lienthong-audit trace``
therefore saves an **audit proof**: the bundle verbatim, the ``directory`` events of the
log that held each signer's keys -- with their own inclusion proofs against the same
checkpoint -- and, when the auditor fetched it, the sender's signed envelope (whose digest
the log names).  :func:`verify_proof` checks all of it with no network and nothing but two
public keys: the log's (the hub's) and the directory authority's.

Format (deterministic CBOR, RFC 8949 §4.2)::

    {
      "v": 1,
      "type": "lienthong-audit-proof",
      "origin": tstr,               ; the log's origin, lienthong.hub/<hub name>
      "hub_key": {"alg": tstr, "pub": bstr},
      "authority": {"alg": tstr, "pub": bstr},
      "bundle": bstr,               ; the hub's bundle, byte for byte
      "directory": [                ; directory events, strictly increasing index
        {"index": uint, "entry": bstr, "proof": [bstr(32), ...]}
      ],
      ? "envelope": bstr            ; the sender's signed envelope container
    }

The two keys travel in the file for convenience only: a verifier compares them with the
keys it pinned (:func:`verify_proof` ``hub_key=`` / ``authority=``); a file that names
other keys is refused.

Which entry verifies a receipt: the signer's newest ``directory`` event *before* the
receipt's own index -- the directory as it stood when the hub logged the receipt -- and
the key must be valid at the receipt's signed time and at the time the hub logged it, as
the hub itself checked.  Every witness cosignature on the checkpoint must verify too, with
a signing key of the witness's entry in the proof: a line the proof cannot check is
refused, so that no byte of an audit proof goes unverified.  Every failure is a
:class:`~protocol.errors.RemoteError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from .audit import Event, parse_event
from .bundle import (
    BUNDLE_MAX,
    BundleEvent,
    OpenedBundle,
    log_verifier,
    open_bundle,
    parse_indexed_entries,
    witness_name,
    witness_verifier,
)
from .checkpoint import CosignatureVerifier, NoteVerifier, parse_note
from .codec import Fields, decode, encode
from .directory import DirectoryEntry, verify_entry
from .errors import RemoteError
from .keys import SIGNING_ALGS, SigningPublicKey
from .merkle import leaf_hash, verify_inclusion
from .packet import ENVELOPE_MAX, Envelope, parse_envelope
from .receipts import parse_office_receipt, verify_office_receipt

__all__ = [
    "PROOF_TYPE",
    "PROOF_VERSION",
    "AuditProof",
    "EntryAt",
    "VerifiedProof",
    "check_cosignatures",
    "encode_proof",
    "entry_before",
    "verify_proof",
]

PROOF_VERSION: Final = 1
PROOF_TYPE: Final = "lienthong-audit-proof"
_MAX_DIRECTORY: Final = 10_000
_WITNESS_PREFIX: Final = witness_name("")


@dataclass(frozen=True, slots=True)
class EntryAt:
    """A verified directory entry and the log index of the event that published it."""

    index: int
    entry: DirectoryEntry


@dataclass(frozen=True, slots=True)
class AuditProof:
    """What :func:`encode_proof` writes."""

    origin: str
    hub_key: SigningPublicKey
    authority: SigningPublicKey
    bundle: bytes
    directory: Sequence[BundleEvent]
    envelope: bytes | None = None


@dataclass(frozen=True, slots=True)
class VerifiedProof:
    """A verified audit proof: the opened bundle, the entries used, the envelope."""

    origin: str
    hub_key: SigningPublicKey
    authority: SigningPublicKey
    bundle: OpenedBundle
    directory: tuple[EntryAt, ...]
    envelope: Envelope | None
    #: Receipts checked: log index -> the organ whose entry verified it.
    receipts: dict[int, str]
    #: Witnesses whose cosignature on the checkpoint verified, with its timestamp.
    witnesses: dict[str, int]


def _key_doc(key: SigningPublicKey) -> dict[str, Any]:
    return {"alg": key.alg, "pub": key.raw}


def encode_proof(proof: AuditProof) -> bytes:
    """The proof's deterministic CBOR (directory events sorted by index)."""
    doc: dict[str, Any] = {
        "v": PROOF_VERSION,
        "type": PROOF_TYPE,
        "origin": proof.origin,
        "hub_key": _key_doc(proof.hub_key),
        "authority": _key_doc(proof.authority),
        "bundle": proof.bundle,
        "directory": [
            {"index": e.index, "entry": e.entry, "proof": list(e.proof)}
            for e in sorted(proof.directory, key=lambda e: e.index)
        ],
    }
    if proof.envelope is not None:
        doc["envelope"] = proof.envelope
    return encode(doc)


def _key(f: Fields, name: str) -> SigningPublicKey:
    k = f.map(name)
    alg = k.choice("alg", SIGNING_ALGS)
    pub = k.blob("pub", max_size=4096)
    k.done()
    return SigningPublicKey.from_raw(alg, pub)


def _parse(data: bytes) -> AuditProof:
    f = Fields(decode(data, max_size=BUNDLE_MAX + ENVELOPE_MAX + (1 << 20), max_depth=4), "proof")
    if f.integer("v") != PROOF_VERSION:
        raise RemoteError("version_unsupported", "audit proof version")
    if f.text("type", max_len=64) != PROOF_TYPE:
        raise RemoteError("field_invalid", f"proof.type must be {PROOF_TYPE}")
    origin = f.text("origin", max_len=256)
    hub_key = _key(f, "hub_key")
    authority = _key(f, "authority")
    bundle = f.blob("bundle", max_size=BUNDLE_MAX)
    items = f.array("directory", max_items=_MAX_DIRECTORY)
    envelope = f.opt_raw("envelope")
    if envelope is not None and (not isinstance(envelope, bytes) or len(envelope) > ENVELOPE_MAX):
        raise RemoteError("field_invalid", "proof.envelope must be envelope bytes")
    f.done()
    events = parse_indexed_entries(items, "proof.directory")
    return AuditProof(origin, hub_key, authority, bundle, tuple(events), envelope)


def entry_before(entries: Sequence[EntryAt], organ: str, index: int) -> DirectoryEntry | None:
    """The newest entry of ``organ`` published at a log index below ``index``."""
    best: EntryAt | None = None
    for item in entries:
        if (
            item.entry.organ == organ
            and item.index < index
            and (best is None or item.index > best.index)
        ):
            best = item
    return None if best is None else best.entry


def verify_proof(
    data: bytes,
    *,
    hub_key: SigningPublicKey | None = None,
    authority: SigningPublicKey | None = None,
    witnesses: Sequence[CosignatureVerifier] = (),
    threshold: int = 0,
) -> VerifiedProof:
    """Verify an audit proof completely, offline.

    ``hub_key`` and ``authority``, when given, must be the keys the file names
    (``key_unknown`` otherwise).  Checks: the bundle (checkpoint signature, optional
    witness cosignatures, every inclusion proof, every event naming the packet); every
    directory event's inclusion in the same checkpoint and its entry's signature by the
    authority; every receipt against its signer's entry (see the module docstring); the
    envelope, if present, against the digest the log names and the sender's entry.
    """
    proof = _parse(data)
    for pinned, named, what in (
        (hub_key, proof.hub_key, "hub"),
        (authority, proof.authority, "directory authority"),
    ):
        if pinned is not None and pinned.raw != named.raw:
            raise RemoteError(
                "key_unknown", f"the proof names another {what} key than the pinned one"
            )
    verifier = log_verifier(proof.hub_key, proof.origin)
    opened = open_bundle(proof.bundle, verifier, witnesses=witnesses, threshold=threshold)
    checkpoint = opened.checkpoint
    entries: list[EntryAt] = []
    for item in proof.directory:
        if item.index >= checkpoint.size:
            raise RemoteError(
                "tree_size_invalid",
                f"directory entry {item.index} is not in the tree of {checkpoint.size}",
            )
        verify_inclusion(
            leaf_hash(item.entry), item.index, checkpoint.size, item.proof, checkpoint.root_hash
        )
        event = parse_event(item.entry)
        if event.kind != "directory":
            raise RemoteError("field_invalid", f"entry {item.index} is not a directory event")
        signed = verify_entry(event.fields["entry"], proof.authority, organ=event.fields["organ"])
        entries.append(EntryAt(item.index, signed.entry))

    sender: str | None = None
    accepted: tuple[int, Event] | None = None
    for index, event in zip(opened.indexes, opened.events, strict=True):
        if event.kind == "packet_accepted" and accepted is None:
            accepted = (index, event)
            sender = event.fields["sender"]
    checked: dict[int, str] = {}
    for index, event in zip(opened.indexes, opened.events, strict=True):
        if event.kind != "receipt":
            continue
        parsed = parse_office_receipt(event.fields["receipt"])
        signer = parsed.receipt.signer
        entry = entry_before(entries, signer, index)
        if entry is None:
            raise RemoteError(
                "organ_unknown", f"no logged directory entry of {signer} before receipt {index}"
            )
        verify_office_receipt(
            parsed,
            entry,
            packet_id=event.fields["packet_id"],
            envelope_digest=event.fields["envelope_digest"],
            sender=sender,
            received_at=event.at,
        )
        if (
            parsed.receipt.status != event.fields["status"]
            or parsed.receipt.organ != event.fields["organ"]
        ):
            raise RemoteError(
                "field_invalid", f"entry {index} names another status or organ than its receipt"
            )
        checked[index] = signer

    envelope: Envelope | None = None
    if proof.envelope is not None:
        if accepted is None:
            raise RemoteError("field_invalid", "an envelope without the packet's accepted event")
        index, event = accepted
        envelope = parse_envelope(proof.envelope)
        if (
            envelope.digest != event.fields["envelope_digest"]
            or envelope.packet_id != opened.packet_id
        ):
            raise RemoteError(
                "receipt_envelope_mismatch", "the envelope is not the one the log names"
            )
        entry = entry_before(entries, envelope.sender, index)
        if entry is None:
            raise RemoteError(
                "organ_unknown", f"no logged directory entry of the sender {envelope.sender}"
            )
        envelope.verify_sender(entry)
    return VerifiedProof(
        origin=proof.origin,
        hub_key=proof.hub_key,
        authority=proof.authority,
        bundle=opened,
        directory=tuple(entries),
        envelope=envelope,
        receipts=checked,
        witnesses=check_cosignatures(opened, verifier, entries),
    )


def check_cosignatures(
    opened: OpenedBundle, log_key: NoteVerifier, entries: Sequence[EntryAt]
) -> dict[str, int]:
    """Every signature line of the checkpoint must verify: the log's, and each witness's
    cosignature with a signing key of the witness's entry in the proof.  A line nothing in
    the proof can check is refused -- so no byte of the proof goes unverified."""
    note = parse_note(opened.note)
    found: dict[str, int] = {}
    for sig in note.signatures:
        if sig.name == log_key.name and sig.key_hash == log_key.key_hash:
            continue  # verified by open_bundle
        if not sig.name.startswith(_WITNESS_PREFIX):
            raise RemoteError(
                "cosignature_invalid", f"the checkpoint carries a signature by {sig.name}"
            )
        organ = sig.name[len(_WITNESS_PREFIX) :]
        entry = entry_before(entries, organ, opened.checkpoint.size)
        if entry is None:
            raise RemoteError(
                "cosignature_invalid", f"the proof holds no directory entry of witness {organ}"
            )
        timestamp = None
        for rec in entry.signing_keys:
            try:
                verifier = witness_verifier(organ, SigningPublicKey.from_raw(rec.alg, rec.pub))
            except RemoteError:
                continue
            if verifier.key_hash != sig.key_hash:
                continue
            timestamp = verifier.verify(note.text, sig.signature)
            if timestamp is not None and rec.revoked_at is not None and timestamp >= rec.revoked_at:
                timestamp = None
            break
        if timestamp is None:
            raise RemoteError(
                "cosignature_invalid", f"the cosignature by {sig.name} does not verify"
            )
        found[organ] = timestamp
    return found
