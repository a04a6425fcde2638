"""Audit proofs, offline by construction: a small log built here with the protocol's own
functions, a proof of one packet, verified with two public keys -- and refused when any
one of its bytes is changed, or when it leaves a receipt's or a witness's key unproven."""

from __future__ import annotations

import time

import pytest

from nodes.auditor import verify_file
from nodes.errors import NodeError
from protocol.bundle import encode_bundle
from protocol.errors import RemoteError
from protocol.evidence import EntryAt, verify_proof
from protocol.keys import SigningPrivateKey
from protocol.packet import Reference
from tests.protocol.builders import T0, make_office

from .proofs import build, proof


def test_a_proof_verifies_with_two_public_keys() -> None:
    log = build()
    data = proof(log, log.note(log.province))
    verified = verify_proof(
        data, hub_key=log.hub.public_key(), authority=log.authority.public_key()
    )
    assert verified.receipts == {3: log.xa.code}
    assert verified.witnesses == {log.province.code: T0 + 700}
    assert verified.envelope is not None
    assert verified.envelope.routing.reference == Reference("KH", "05", "KH/TU", "2025-06-16")
    # other pinned keys: refused, whatever the file says
    with pytest.raises(RemoteError) as caught:
        verify_proof(data, hub_key=SigningPrivateKey.generate().public_key())
    assert caught.value.code == "key_unknown"


def test_any_byte_changed_is_refused() -> None:
    log = build()
    data = proof(log, log.note(log.province))
    started = time.monotonic()
    accepted = []
    for position in range(len(data)):
        for flip in (0x01, 0x80):
            bad = bytearray(data)
            bad[position] ^= flip
            try:
                verify_proof(bytes(bad))
            except RemoteError:
                continue
            accepted.append((position, flip))
    assert accepted == [], f"changed bytes accepted at {accepted[:10]}"
    assert time.monotonic() - started < 110


def test_what_a_proof_must_hold() -> None:
    log = build()
    # the receipt's signer has no logged entry in the proof
    with pytest.raises(RemoteError) as caught:
        verify_proof(proof(log, log.note(), directory=[0]))
    assert caught.value.code == "organ_unknown"
    # a witness cosignature the proof cannot check
    tam_hong = make_office("000.00.13.H41", "Đảng ủy xã Tam Hồng", log.authority)
    with pytest.raises(RemoteError) as caught:
        verify_proof(proof(log, log.note(tam_hong)))
    assert caught.value.code == "cosignature_invalid"
    # a receipt signed by a key not in the signer's logged entry (a swapped key)
    forged = build(receipt_key=SigningPrivateKey.generate())
    with pytest.raises(RemoteError) as caught:
        verify_proof(proof(forged, forged.note()))
    assert caught.value.code == "key_unknown"


def test_a_bare_bundle_with_any_byte_changed_is_refused() -> None:
    """The hub's own bundle (the page's download, ``lienthong-node proof``) checked
    offline with the pinned hub key and the auditor's logged witness entries."""
    log = build()
    bundle = encode_bundle(log.envelope.packet_id, log.note(log.province), log.events([2, 3]))
    witnesses = [EntryAt(0, log.province.entry)]
    keys = {"hub_key": log.hub.public_key(), "authority": log.authority.public_key()}
    doc = verify_file(bundle, witness_entries=witnesses, **keys)
    assert doc["verified"] is True
    assert list(doc["witnesses"]) == [log.province.code]
    with pytest.raises(RemoteError) as caught:
        verify_file(bundle, **keys)  # a cosignature nothing here can check
    assert caught.value.code == "cosignature_invalid"
    accepted = []
    for position in range(len(bundle)):
        for flip in (0x01, 0x80):
            bad = bytearray(bundle)
            bad[position] ^= flip
            try:
                verify_file(bytes(bad), witness_entries=witnesses, **keys)
            except (RemoteError, NodeError):
                continue
            accepted.append((position, flip))
    assert accepted == [], f"changed bytes accepted at {accepted[:10]}"


@pytest.mark.parametrize("origin", ["lient+ong.hub/lienthong", "lienthong.hub/tên có dấu cách", ""])
def test_an_origin_that_cannot_name_a_key_is_refused(origin: str) -> None:
    """Found by fuzz_audit_proof: such an origin raised a LocalError, not a RemoteError."""
    from protocol.codec import decode, encode

    log = build()
    doc = decode(proof(log, log.note(log.province)), max_size=1 << 24, max_depth=4)
    doc["origin"] = origin
    with pytest.raises(RemoteError) as info:
        verify_proof(encode(doc))
    assert info.value.code in ("field_invalid", "text_invalid")
