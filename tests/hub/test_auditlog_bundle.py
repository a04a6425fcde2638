"""Offline verification of proof bundles (protocol.bundle): what passes, and the exact code
for each way of tampering with one.  Pure: no database, no hub."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import cbor2
import pytest

from protocol.audit import Event
from protocol.bundle import (
    BundleEvent,
    encode_bundle,
    log_origin,
    log_signer,
    log_verifier,
    open_bundle,
    verify_bundle,
    witness_name,
    witness_signer,
    witness_verifier,
)
from protocol.checkpoint import (
    Checkpoint,
    NoteSigner,
    add_cosignature,
    open_checkpoint,
    sign_checkpoint,
)
from protocol.codec import encode
from protocol.errors import LocalError, RemoteError
from protocol.keys import SigningPrivateKey
from protocol.merkle import MemoryHashStore, inclusion_proof, leaf_hash
from tests.fuzz import fuzz_bundle
from tests.fuzz.fuzz_bundle import (
    ENTRIES,
    LOG,
    LOG_VERIFIER,
    ORIGIN,
    PACKET,
    PACKET_INDEXES,
    WITNESS,
    WITNESS_VERIFIER,
    sample_bundle,
)

BUNDLE = sample_bundle()


def code_of(fn: Callable[[], object]) -> str:
    with pytest.raises(RemoteError) as err:
        fn()
    return err.value.code


def verify(data: bytes, **options: Any) -> list[Event]:
    return verify_bundle(data, LOG_VERIFIER, **options)


def fields() -> dict[str, Any]:
    value = cbor2.loads(BUNDLE)
    assert isinstance(value, dict)
    return value


def flip(data: bytes, pos: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :]


def flipped_code(pos: int) -> str:
    """The code for the bundle with the byte at ``pos`` changed."""
    return code_of(lambda: verify(flip(BUNDLE, pos)))


# --- what verifies ------------------------------------------------------------------------


def test_genuine_bundle_verifies() -> None:
    events = verify(BUNDLE)
    assert [e.kind for e in events] == ["packet_accepted", "body_fetched", "receipt"]
    assert [e.raw for e in events] == [ENTRIES[i] for i in PACKET_INDEXES]
    opened = open_bundle(BUNDLE, LOG_VERIFIER)
    assert opened.indexes == PACKET_INDEXES
    assert opened.packet_id == PACKET
    assert opened.checkpoint.size == 13
    assert opened.checkpoint.extensions == ("time 1750000100",)


def test_format_is_documented_shape() -> None:
    value = fields()
    assert set(value) == {"v", "packet_id", "checkpoint", "events"}
    assert value["v"] == 1
    assert [set(e) for e in value["events"]] == [{"index", "entry", "proof"}] * 3
    assert encode(value) == BUNDLE  # deterministic CBOR


def test_receipt_callback_sees_receipts_only() -> None:
    seen: list[Event] = []
    verify(BUNDLE, check_receipt=seen.append)
    assert [e.kind for e in seen] == ["receipt"]
    assert seen[0].raw == ENTRIES[11]
    assert seen[0].fields["receipt"] == b"\xa2dbodyAxcsig\xa0"

    def refuse(event: Event) -> None:
        raise RemoteError("signature_invalid", "receipt signature")

    assert code_of(lambda: verify(BUNDLE, check_receipt=refuse)) == "signature_invalid"


def test_witnesses_k_of_n() -> None:
    cosigned = sample_bundle(cosigned=True)
    assert len(verify(cosigned, witnesses=[WITNESS_VERIFIER], threshold=1)) == 3
    # the plain bundle lacks the cosignature
    assert code_of(lambda: verify(BUNDLE, witnesses=[WITNESS_VERIFIER], threshold=1)) == (
        "cosignature_invalid"
    )
    # an unknown witness's cosignature is ignored without a threshold...
    assert len(verify(cosigned)) == 3
    # ...but a known witness's broken cosignature is caught
    note = fields_of(cosigned)["checkpoint"]
    last_line = note.rstrip(b"\n").rsplit(b"\n", 1)[1]
    sig = base64.b64decode(last_line.split(b" ")[-1])
    bad_sig = base64.b64encode(sig[:-1] + bytes([sig[-1] ^ 1]))
    bad_note = note.replace(last_line.split(b" ")[-1], bad_sig)
    bad = replace_field(cosigned, "checkpoint", bad_note)
    assert len(verify(bad)) == 3
    assert code_of(lambda: verify(bad, witnesses=[WITNESS_VERIFIER], threshold=1)) == (
        "cosignature_invalid"
    )


def fields_of(data: bytes) -> dict[str, Any]:
    value = cbor2.loads(data)
    assert isinstance(value, dict)
    return value


def replace_field(data: bytes, name: str, value: Any) -> bytes:
    doc = fields_of(data)
    doc[name] = value
    return encode(doc)


def test_key_helpers() -> None:
    key = SigningPrivateKey.generate(hybrid=True)
    origin = log_origin("tinh-uy")
    assert origin == "lienthong.hub/tinh-uy"
    note = sign_checkpoint(Checkpoint(origin, 0, leaf_hash(b"")), log_signer(key, origin))
    assert open_checkpoint(note, log_verifier(key.public_key(), origin)).size == 0
    cosigned = add_cosignature(note, witness_signer("000.00.01.H41", key), 5)
    verifier = witness_verifier("000.00.01.H41", key.public_key())
    assert verifier.name == witness_name("000.00.01.H41") == "lienthong.witness/000.00.01.H41"
    assert verifier.verify(cosigned.split(b"\n\n")[0] + b"\n", _last_sig(cosigned)) == 5


def _last_sig(note: bytes) -> bytes:
    return base64.b64decode(note.rstrip(b"\n").rsplit(b" ", 1)[1])[4:]


def test_encode_refuses_bad_input() -> None:
    with pytest.raises(LocalError):
        encode_bundle(b"short", b"x", [])
    event = BundleEvent(1, b"x", ())
    with pytest.raises(LocalError):
        encode_bundle(PACKET, b"x", [event, event])


# --- tampering: one code per way ----------------------------------------------------------


def test_every_byte_of_an_entry_is_covered() -> None:
    entry = ENTRIES[7]
    start = BUNDLE.index(entry)
    for pos in range(start, start + len(entry)):
        assert flipped_code(pos) == "proof_invalid", pos


def test_every_byte_of_a_proof_hash_is_covered() -> None:
    store = MemoryHashStore(leaf_hash(e) for e in ENTRIES)
    for index in PACKET_INDEXES:
        for h in inclusion_proof(index, 13, store):
            start = BUNDLE.index(h)
            for pos in range(start, start + len(h)):
                assert flipped_code(pos) == "proof_invalid"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"lienthong.hub/fuzz\n13\n", b"lienthong.hub/fuzz\n12\n"),  # tree size
        (b"\ntime 1750000100\n", b"\ntime 1750000101\n"),  # extension
        (b"lienthong.hub/fuzz\n", b"lienthong.hub/fuz2\n"),  # origin line
    ],
)
def test_checkpoint_text_changed(old: bytes, new: bytes) -> None:
    note = fields()["checkpoint"]
    assert old in note
    bad = replace_field(BUNDLE, "checkpoint", note.replace(old, new, 1))
    assert code_of(lambda: verify(bad)) == "checkpoint_signature_invalid"


def test_every_byte_of_the_checkpoint_is_covered() -> None:
    note = fields()["checkpoint"]
    start = BUNDLE.index(note)
    codes = set()
    for pos in range(start, start + len(note)):
        codes.add(flipped_code(pos))
    assert codes <= {"checkpoint_signature_invalid", "checkpoint_malformed"}
    assert "checkpoint_signature_invalid" in codes


def test_root_hash_changed() -> None:
    note = fields()["checkpoint"]
    root_line = note.split(b"\n")[2]
    root = base64.b64decode(root_line)
    other = base64.b64encode(bytes([root[0] ^ 0x80]) + root[1:])
    bad = replace_field(BUNDLE, "checkpoint", note.replace(root_line, other))
    assert code_of(lambda: verify(bad)) == "checkpoint_signature_invalid"


def test_checkpoint_signed_by_another_key() -> None:
    store = MemoryHashStore(leaf_hash(e) for e in ENTRIES)
    forged = sign_checkpoint(Checkpoint(ORIGIN, 13, store.root()), NoteSigner.generate(ORIGIN))
    bad = replace_field(BUNDLE, "checkpoint", forged)
    assert code_of(lambda: verify(bad)) == "checkpoint_signature_invalid"


def test_checkpoint_of_another_origin() -> None:
    # a genuine signature of the log's key over a checkpoint of another origin
    store = MemoryHashStore(leaf_hash(e) for e in ENTRIES)
    other = sign_checkpoint(Checkpoint("lienthong.hub/other", 13, store.root()), LOG)
    bad = replace_field(BUNDLE, "checkpoint", other)
    assert code_of(lambda: verify(bad)) == "checkpoint_malformed"


def test_every_single_byte_change_is_refused() -> None:
    """Issue 6: a bundle with any byte changed does not verify (and never crashes)."""
    for pos in range(len(BUNDLE)):
        for mask in (0x01, 0x80):
            data = BUNDLE[:pos] + bytes([BUNDLE[pos] ^ mask]) + BUNDLE[pos + 1 :]
            with pytest.raises(RemoteError):
                verify(data)


def test_truncated_and_extended() -> None:
    for n in range(len(BUNDLE)):
        with pytest.raises(RemoteError):
            verify(BUNDLE[:n])
    assert code_of(lambda: verify(BUNDLE + b"\x00")) == "cbor_malformed"


def _event_docs() -> list[dict[str, Any]]:
    events = fields()["events"]
    assert isinstance(events, list)
    return events


def test_index_moved() -> None:
    events = _event_docs()
    events[1]["index"] = 6  # still increasing, but the proof is for leaf 7
    assert code_of(lambda: verify(replace_field(BUNDLE, "events", events))) == "proof_invalid"


def test_index_outside_tree() -> None:
    events = _event_docs()
    events[2]["index"] = 13
    assert code_of(lambda: verify(replace_field(BUNDLE, "events", events))) == ("tree_size_invalid")


def test_indexes_out_of_order_or_repeated() -> None:
    events = _event_docs()
    assert code_of(lambda: verify(replace_field(BUNDLE, "events", events[::-1]))) == (
        "field_invalid"
    )
    twice = [events[0], events[0]]
    assert code_of(lambda: verify(replace_field(BUNDLE, "events", twice))) == "field_invalid"


def test_event_of_another_packet() -> None:
    # a genuine entry with a genuine proof -- but it is not an event of this packet
    bundle = sample_bundle(indexes=(2, 3))
    assert code_of(lambda: verify(bundle)) == "field_invalid"


def test_packet_id_changed() -> None:
    bad = replace_field(BUNDLE, "packet_id", bytes(16))
    assert code_of(lambda: verify(bad)) == "field_invalid"


def test_dropping_an_event_still_verifies_the_rest() -> None:
    # A bundle proves inclusion, not completeness: the hub could leave one out, which only
    # following the whole log catches (documented in docs/audit-bundle.md).
    events = _event_docs()
    assert len(verify(replace_field(BUNDLE, "events", events[:2]))) == 2


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda d: d.update(v=2), "version_unsupported"),
        (lambda d: d.update(extra=1), "field_unknown"),
        (lambda d: d.pop("checkpoint"), "field_missing"),
        (lambda d: d.update(events=[]), "field_invalid"),
        (lambda d: d.update(events={}), "field_invalid"),
        (lambda d: d.update(packet_id=bytes(15)), "field_invalid"),
        (lambda d: d.update(checkpoint="text"), "field_invalid"),
        (lambda d: d["events"][0].update(index=-1), "field_invalid"),
        (lambda d: d["events"][0].update(proof=[b"x"]), "field_invalid"),
        (lambda d: d["events"][0].update(proof=[bytes(32)] * 65), "field_invalid"),
        (lambda d: d["events"][0].update(more=1), "field_unknown"),
        (lambda d: d["events"][0].pop("entry"), "field_missing"),
        (lambda d: d["events"][0].update(proof=d["events"][0]["proof"][:-1]), "proof_invalid"),
        (
            lambda d: d["events"][0].update(proof=[*d["events"][0]["proof"], bytes(32)]),
            "proof_invalid",
        ),
        (lambda d: d.update(checkpoint=b"not a note"), "checkpoint_malformed"),
    ],
)
def test_malformed_fields(change: Callable[[dict[str, Any]], object], code: str) -> None:
    doc = fields()
    change(doc)
    assert code_of(lambda: verify(encode(doc))) == code


def test_not_canonical_cbor() -> None:
    doc = fields()
    unsorted = cbor2.dumps(dict(reversed(list(doc.items()))))
    assert code_of(lambda: verify(unsorted)) == "cbor_not_canonical"
    assert code_of(lambda: verify(b"")) == "cbor_malformed"
    assert code_of(lambda: verify(cbor2.dumps([1, 2]))) == "field_invalid"


def test_entry_in_tree_but_not_an_event() -> None:
    # the log itself holds a malformed entry (a hub bug): its inclusion verifies, its
    # format does not
    entries = list(ENTRIES)
    entries[7] = b"\xa0"
    store = MemoryHashStore(leaf_hash(e) for e in entries)
    note = sign_checkpoint(Checkpoint(ORIGIN, 13, store.root()), LOG)
    bundle = encode_bundle(
        PACKET, note, [BundleEvent(7, entries[7], tuple(inclusion_proof(7, 13, store)))]
    )
    assert code_of(lambda: verify(bundle)) == "field_missing"


def test_fuzz_target_on_mutations() -> None:
    """The fuzz harness's target holds on a deterministic sweep of edits and raw inputs."""
    fuzz_bundle.target(b"")
    fuzz_bundle.target(BUNDLE)
    fuzz_bundle.target(fuzz_bundle.VALID)
    for pos in range(0, len(fuzz_bundle.VALID), 7):
        for op in range(3):
            fuzz_bundle.target(pos.to_bytes(2, "big") + bytes([op, pos & 0xFF]))
    fuzz_bundle.target(b"\x00\x00\x00\x00" * 50)
    assert WITNESS.name.startswith("lienthong.witness/")
