"""Write the seed corpora in ``tests/fuzz/corpus/<harness>/``: a few small valid inputs each.

Run ``python tests/fuzz/make_corpus.py``.  The seeds come from the harnesses' own fixed
keys, so every envelope and entry verifies in its harness.  HPKE wraps and ML-DSA-65
signatures are randomised, so envelopes differ from run to run; bodies and entries signed
with Ed25519 alone do not.  Existing seed files of the same names are overwritten; inputs
libFuzzer adds go to ``tests/fuzz/corpus-work/`` (see run_all.sh), never here.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protocol import signed
from protocol.codec import encode
from protocol.packet import DocumentMetadata, FileInfo
from tests.fuzz import fuzz_body, fuzz_directory_entry, fuzz_envelope

CORPUS = Path(__file__).resolve().parent / "corpus"


def _metadata() -> list[tuple[str, bytes]]:
    full = DocumentMetadata(
        subject="Kế hoạch tổ chức Hội nghị tổng kết công tác văn phòng cấp ủy năm 2025",
        doc_type="KH",
        number="123",
        notation="KH/TU",
        signer="T/M Ban Thường vụ, Phó Bí thư Thường trực",
        issued="2025-09-30",
        place="Hà Nội",
        notes="Gửi kèm phụ lục.\nĐề nghị các đồng chí nghiên cứu trước.",
        files=(
            FileInfo("Báo cáo quý III.pdf", "application/pdf", 1000, bytes(range(32))),
            FileInfo("Danh sách trống.txt", "text/plain", 0, bytes(32)),
        ),
    )
    return [
        ("full", encode(full.to_cbor())),
        ("minimal", encode(DocumentMetadata(subject="Tờ trình").to_cbor())),
    ]


def seeds() -> dict[str, list[tuple[str, bytes]]]:
    envelopes = fuzz_envelope.sample_envelopes()
    entries = fuzz_directory_entry.sample_entries()
    metadata = _metadata()
    body = fuzz_body.VALID_BODY
    return {
        "fuzz_cbor": [
            ("empty-map", encode({})),
            ("values", encode([0, -1, 24, 2**64 - 1, b"", "Tỉnh ủy", True, None, {1: [2]}])),
            ("metadata", metadata[0][1]),
            ("envelope-body", signed.parse(envelopes[0][1], max_size=1 << 20, where="e").body),
            ("entry", entries[1][1]),
        ],
        "fuzz_envelope": envelopes,
        "fuzz_directory_entry": entries,
        "fuzz_body": [
            ("whole", fuzz_body.split_header([]) + body),
            ("pieces", fuzz_body.split_header([1, 17, 200]) + body),
            ("truncated", fuzz_body.split_header([64]) + body[:-1]),
        ],
        "fuzz_metadata": metadata,
    }


def main() -> int:
    for harness, items in seeds().items():
        folder = CORPUS / harness
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in items:
            (folder / name).write_bytes(data)
        print(f"{folder}: {len(items)} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
