"""Fuzz the e-mail message parser (protocol.mail.parse_message).

Each input is parsed as a whole message, and also spliced into valid messages made at
start-up -- a packet, an office receipt, a hub receipt, with Vietnamese headers and RFC
2231 file names (the first two bytes pick the offset) -- which takes the fuzzer into the
MIME structure, the base64 parts and the signed objects inside.  The rule: parse, or
raise a RemoteError, nothing else.

Run: ``python tests/fuzz/fuzz_mail.py -atheris_runs=5000``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protocol import mail
from protocol.keys import EncryptionPrivateKey, SigningPrivateKey
from protocol.packet import (
    DocumentMetadata,
    Recipient,
    Reference,
    Routing,
    new_packet_id,
    parse_envelope,
    seal_packet,
)
from protocol.receipts import (
    HubReceipt,
    OfficeReceipt,
    parse_hub_receipt,
    parse_office_receipt,
    sign_hub_receipt,
    sign_office_receipt,
)
from tests.fuzz._harness import guarded, run

_T0 = 1_750_032_000
_KEY = SigningPrivateKey.generate()
_ENC = EncryptionPrivateKey.generate()
_SENDER = "000.00.00.H41"
_ORGAN = "000.00.12.H41"
_HUB = ("lienthong@hub.tinhuy.vn", "Lienthong — Văn phòng Tỉnh ủy")
_OFFICE = ("vanthu@yenlac.vn", "Đảng ủy xã Yên Lạc")
_MAX = 1 << 20


def _seeds() -> list[bytes]:
    envelope, body = seal_packet(
        sender=_SENDER,
        signing_key=_KEY,
        recipients=[Recipient(_ORGAN, _ENC.public_key())],
        metadata=DocumentMetadata(subject="Kế hoạch tổng kết năm 2025", doc_type="KH"),
        files=[("Báo cáo quý III.pdf", "application/pdf", b"%PDF-1.7 " * 20)],
        routing=Routing(urgency=3, reference=Reference("KH", "05", "KH/TU", "2025-11-20")),
        packet_id=new_packet_id(_T0 * 1000),
        created_at=_T0,
    )
    env = parse_envelope(envelope)
    office = sign_office_receipt(
        OfficeReceipt(env.packet_id, env.digest, _ORGAN, _ORGAN, _KEY.kid, "01", _T0), _KEY
    )
    hub = sign_hub_receipt(HubReceipt("accepted", env.packet_id, env.digest, _SENDER, _T0, 7), _KEY)
    messages = [
        mail.packet_message(
            env, body, sender=_HUB, recipient=_OFFICE, domain="hub.tinhuy.vn", at=_T0
        ),
        mail.receipt_message(
            parse_office_receipt(office),
            sender=_OFFICE,
            recipient=_HUB,
            domain="yenlac.vn",
            at=_T0,
        ),
        mail.hub_receipt_message(
            parse_hub_receipt(hub), sender=_HUB, recipient=_OFFICE, domain="hub.tinhuy.vn", at=_T0
        ),
    ]
    return [mail.to_bytes(m) for m in messages]


_SEEDS = _seeds()


def _parse(data: bytes) -> None:
    mail.parse_message(data, max_size=_MAX)


def _splice(seed: bytes, data: bytes) -> bytes:
    pos = int.from_bytes(data[:2], "big") % len(seed)
    patch = data[2:]
    return seed[:pos] + patch + seed[pos + len(patch) :]


def target(data: bytes) -> None:
    guarded(_parse, data)
    if len(data) > 2:
        for seed in _SEEDS:
            guarded(_parse, _splice(seed, data))


if __name__ == "__main__":
    run(target)
