"""Fuzz the receipt parsers: office receipts, hub receipts, and what follows a parse.

Each input is parsed as an office receipt and as a hub receipt.  A receipt that parses is
also run through verification (bound to its own packet id and digest, so the signer, entry
and key checks are reached) and through a delivery's state machine.  Random bytes rarely
form a signed container, so each input is also spliced into valid receipts made at start-up
(the first two bytes pick the offset), which takes the fuzzer inside the CBOR bodies.

Run: ``python tests/fuzz/fuzz_receipt.py -atheris_runs=5000``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protocol.directory import DirectoryEntry, KeyRecord
from protocol.keys import SigningPrivateKey
from protocol.packet import new_packet_id
from protocol.receipts import (
    Delivery,
    HubReceipt,
    OfficeReceipt,
    parse_hub_receipt,
    parse_office_receipt,
    sign_hub_receipt,
    sign_office_receipt,
    verify_hub_receipt,
    verify_office_receipt,
)
from tests.fuzz._harness import guarded, run

_T0 = 1_750_032_000
_KEY = SigningPrivateKey.generate()
_ORGAN = "000.00.15.H41"
_SENDER = "000.00.00.H41"
_ENTRY = DirectoryEntry(
    organ=_ORGAN,
    name="Đảng ủy xã Yên Lạc",
    role="office",
    level="commune",
    signing_keys=(KeyRecord(_KEY.alg, _KEY.public_key().raw, _T0 - 10**8, _T0 + 10**8),),
    encryption_keys=(),
    valid_from=0,
    serial=1,
    issued_at=_T0,
    authority_kid=bytes(32),
)
_PACKET = new_packet_id(_T0 * 1000)
_DIGEST = bytes(range(32))


def _seeds() -> list[bytes]:
    office = OfficeReceipt(
        packet_id=_PACKET,
        envelope_digest=_DIGEST,
        organ=_ORGAN,
        signer=_ORGAN,
        signer_kid=_KEY.kid,
        status="03",
        at=_T0,
        reason="Đã vào sổ văn bản đến",
        details={"incoming_number": "125", "assignee": "Phòng Tổng hợp"},
    )
    recall = OfficeReceipt(
        _PACKET, _DIGEST, _ORGAN, _SENDER, _KEY.kid, "13", _T0 + 60, "Văn bản ban hành sai thể thức"
    )
    return [
        sign_office_receipt(office, _KEY),
        sign_office_receipt(recall, _KEY),
        sign_hub_receipt(HubReceipt("accepted", _PACKET, _DIGEST, _SENDER, _T0, 7), _KEY),
        sign_hub_receipt(HubReceipt("fetched", _PACKET, _DIGEST, _ORGAN, _T0 + 5, 8), _KEY),
    ]


_SEEDS = _seeds()


def _office(data: bytes) -> None:
    parsed = parse_office_receipt(data)
    r = parsed.receipt
    verify_office_receipt(
        parsed, _ENTRY, packet_id=r.packet_id, envelope_digest=r.envelope_digest, sender=_SENDER
    )


def _delivery(data: bytes) -> None:
    r = parse_office_receipt(data).receipt
    delivery = Delivery(r.packet_id, r.organ)
    delivery.apply_receipt(r)
    delivery.apply(r.status, r.signer != r.organ, r.at - 1)


def _hub(data: bytes) -> None:
    parsed = parse_hub_receipt(data)
    r = parsed.receipt
    verify_hub_receipt(
        parsed, _KEY.public_key(), packet_id=r.packet_id, envelope_digest=r.envelope_digest
    )


def _splice(seed: bytes, data: bytes) -> bytes:
    pos = int.from_bytes(data[:2], "big") % len(seed)
    patch = data[2:]
    return seed[:pos] + patch + seed[pos + len(patch) :]


_PARSERS = (_office, _delivery, _hub)


def target(data: bytes) -> None:
    for parse in _PARSERS:
        guarded(parse, data)
    if len(data) > 2:
        for seed in _SEEDS:
            spliced = _splice(seed, data)
            for parse in _PARSERS:
                guarded(parse, spliced)


if __name__ == "__main__":
    run(target)
