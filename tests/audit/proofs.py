"""A small log built with the protocol's own functions, and audit proofs over it: for the
proof tests (``test_evidence.py``) and the fuzz harness (``tests/fuzz/fuzz_audit_proof.py``).

Directory events of the province and a commune, the province's packet to the commune,
and the commune's signed 03 (registered, số đến 125); checkpoints signed by a hub key and
optionally cosigned by witnesses.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.audit import encode_event
from protocol.bundle import BundleEvent, encode_bundle, log_signer, witness_signer
from protocol.checkpoint import Checkpoint, add_cosignature, sign_checkpoint
from protocol.evidence import AuditProof, encode_proof
from protocol.keys import SigningPrivateKey
from protocol.merkle import MemoryHashStore, inclusion_proof, leaf_hash
from protocol.packet import Envelope, Reference, Routing
from protocol.receipts import OfficeReceipt, sign_office_receipt
from tests.protocol.builders import T0, Office, make_envelope, make_office

ORIGIN = "lienthong.hub/lienthong"


@dataclass
class Log:
    authority: SigningPrivateKey
    hub: SigningPrivateKey
    province: Office
    xa: Office
    envelope: Envelope
    entries: list[bytes]
    tree: MemoryHashStore

    def note(self, *witnesses: Office) -> bytes:
        note = sign_checkpoint(
            Checkpoint(ORIGIN, self.tree.size, self.tree.root(), (f"time {T0 + 600}",)),
            log_signer(self.hub, ORIGIN),
        )
        for w in witnesses:
            note = add_cosignature(note, witness_signer(w.code, w.signing), T0 + 700)
        return note

    def events(self, indexes: list[int]) -> list[BundleEvent]:
        return [
            BundleEvent(i, self.entries[i], tuple(inclusion_proof(i, self.tree.size, self.tree)))
            for i in indexes
        ]


def build(*, receipt_key: SigningPrivateKey | None = None) -> Log:
    authority = SigningPrivateKey.generate()
    hub = SigningPrivateKey.generate()
    province = make_office("000.00.00.H41", "Văn phòng Tỉnh ủy", authority)
    xa = make_office("000.00.12.H41", "Đảng ủy xã Yên Lạc", authority, parent=province.code)
    env = make_envelope(
        province,
        [xa],
        routing=Routing(urgency=1, reference=Reference("KH", "05", "KH/TU", "2025-06-16")),
    )
    receipt = OfficeReceipt(
        packet_id=env.packet_id,
        envelope_digest=env.digest,
        organ=xa.code,
        signer=xa.code,
        signer_kid=(receipt_key or xa.signing).kid,
        status="03",
        at=T0 + 300,
        details={"incoming_number": "125"},
    )
    signed = sign_office_receipt(receipt, receipt_key or xa.signing)
    entries = [
        encode_event("directory", T0 - 100, organ=province.code, action="enrol", entry=province.entry_bytes),
        encode_event("directory", T0 - 90, organ=xa.code, action="enrol", entry=xa.entry_bytes),
        encode_event(
            "packet_accepted", T0 + 10, packet_id=env.packet_id, envelope_digest=env.digest,
            sender=province.code, recipients=[xa.code], packet_kind="document", urgency=1,
            secrecy=0, created=T0, body_size=env.body_info.size,
            body_sha256=env.body_info.sha256, transport="http",
        ),
        encode_event(
            "receipt", T0 + 310, packet_id=env.packet_id, envelope_digest=env.digest,
            organ=xa.code, status="03", receipt=signed,
        ),
    ]  # fmt: skip
    return Log(
        authority, hub, province, xa, env, entries, MemoryHashStore(leaf_hash(e) for e in entries)
    )


def proof(log: Log, note: bytes, *, directory: list[int] | None = None) -> bytes:
    bundle = encode_bundle(log.envelope.packet_id, note, log.events([2, 3]))
    return encode_proof(
        AuditProof(
            ORIGIN,
            log.hub.public_key(),
            log.authority.public_key(),
            bundle,
            log.events([0, 1] if directory is None else directory),
            log.envelope.raw,
        )
    )
