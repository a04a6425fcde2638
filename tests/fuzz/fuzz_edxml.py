"""Fuzz the edXML (QCVN 102:2016) importers: documents and status packets.

An office's document system hands Lienthong any bytes it likes, so both importers must
parse or raise a RemoteError -- never another exception, never a hang or a blow-up.  No
file is written: ``import_document_from_bytes`` only decodes and hashes the attachments.
Random bytes are rarely XML, so each input is also spliced into valid documents made at
start-up (the hand-written national sample, one exported by Lienthong with its ``lt:``
extension, and a status packet); the first two bytes pick the offset.

Run: ``python tests/fuzz/fuzz_edxml.py -atheris_runs=5000``.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nodes.edxml import (
    OrganInfo,
    ResponseFor,
    export_document,
    export_status,
    import_document_from_bytes,
    import_status,
)
from protocol.packet import DocumentMetadata, FileInfo, Reference, Routing, new_packet_id
from tests.fuzz._harness import guarded, run

_SAMPLE = Path(__file__).resolve().parents[1] / "nodes" / "data" / "nghi-quyet-05-NQ-TU.edxml"
_T0 = 1_759_215_912


def _seeds() -> list[bytes]:
    data = "Báo cáo quý III".encode() * 10
    info = FileInfo(
        "Báo cáo quý III.pdf", "application/pdf", len(data), hashlib.sha256(data).digest()
    )
    meta = DocumentMetadata(
        subject="Kế hoạch tổ chức Hội nghị tổng kết công tác văn phòng cấp ủy năm 2025",
        doc_type="KH",
        number="125",
        notation="KH/TU",
        signer="Nguyễn Văn Hùng",
        issued="2025-09-30",
        place="Vĩnh Phúc",
        notes="Ghi chú",
    )
    packet_id = new_packet_id(_T0 * 1000)
    exported = export_document(
        meta,
        Routing(urgency=2, due="2025-10-15", reference=Reference("KH", "125", "KH/TU")),
        OrganInfo("000.00.01.H62", "Văn phòng Tỉnh ủy"),
        [OrganInfo("000.00.12.H62", "Đảng ủy xã Yên Lạc")],
        [(info, data)],
        packet_id,
        created_at=_T0,
    )
    status = export_status(
        status="02",
        response_for=ResponseFor("000.00.01.H62", "125-KH/TU", "2025-09-30", "x"),
        sender=OrganInfo("000.00.12.H62", "Đảng ủy xã Yên Lạc"),
        at=_T0,
        description="Gửi nhầm đơn vị",
        packet_id=packet_id,
    )
    return [_SAMPLE.read_bytes(), exported, status]


_SEEDS = _seeds()


def _splice(seed: bytes, data: bytes) -> bytes:
    pos = int.from_bytes(data[:2], "big") % len(seed)
    patch = data[2:]
    return seed[:pos] + patch + seed[pos + len(patch) :]


def target(data: bytes) -> None:
    guarded(import_document_from_bytes, data)
    guarded(import_status, data)
    if len(data) > 2:
        for seed in _SEEDS:
            spliced = _splice(seed, data)
            guarded(import_document_from_bytes, spliced)
            guarded(import_status, spliced)


if __name__ == "__main__":
    run(target)
