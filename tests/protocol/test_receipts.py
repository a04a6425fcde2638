"""Tests of protocol.receipts: office and hub receipts, and the delivery state machine."""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import signed
from protocol.codec import decode, encode
from protocol.errors import LocalError, RemoteError
from protocol.keys import SigningPrivateKey
from protocol.packet import Envelope
from protocol.receipts import (
    PENDING,
    RECALLED,
    STATES,
    STATUS,
    TRANSITIONS,
    Delivery,
    HubReceipt,
    OfficeReceipt,
    Step,
    parse_hub_receipt,
    parse_office_receipt,
    sign_hub_receipt,
    sign_office_receipt,
    verify_hub_receipt,
    verify_office_receipt,
)
from tests.protocol.builders import T0, Office, make_envelope, make_office, sign_raw

AUTHORITY = SigningPrivateKey.generate()
HUB_KEY = SigningPrivateKey.generate()

TINH_UY = make_office("000.00.00.H41", "Văn phòng Tỉnh ủy", AUTHORITY)
YEN_LAC = make_office("000.00.15.H41", "Đảng ủy xã Yên Lạc", AUTHORITY, parent=TINH_UY.code)
TAM_HONG = make_office(
    "000.15.03.H41", "Chi bộ Trường THCS Tam Hồng", AUTHORITY, parent=YEN_LAC.code
)
OUTSIDER = make_office("000.00.16.H41", "Đảng ủy xã Tam Hồng", AUTHORITY, parent=TINH_UY.code)

ENVELOPE = make_envelope(TINH_UY, [YEN_LAC, TAM_HONG])
AT = T0 + 600

REASON_REJECT = "Văn bản gửi sai thẩm quyền giải quyết"
REASON_RECALL = "Văn bản ban hành sai thể thức, đề nghị thu hồi"
REASON_REFUSE = "Văn bản đã được triển khai thực hiện"


def receipt_for(
    office: Office,
    status: str = "01",
    *,
    envelope: Envelope = ENVELOPE,
    organ: str | None = None,
    at: int = AT,
    reason: str | None = None,
    details: dict[str, str] | None = None,
) -> OfficeReceipt:
    """A receipt signed by ``office`` about ``organ`` (by default, about itself)."""
    if details is None:
        details = {"incoming_number": "125"} if status == "03" else {}
    if reason is None and STATUS[status].reason_required:
        reason = {"02": REASON_REJECT, "13": REASON_RECALL, "16": REASON_REFUSE}[status]
    return OfficeReceipt(
        packet_id=envelope.packet_id,
        envelope_digest=envelope.digest,
        organ=organ or office.code,
        signer=office.code,
        signer_kid=office.signing.kid,
        status=status,
        at=at,
        reason=reason,
        details=details,
    )


def code_of(excinfo: pytest.ExceptionInfo[RemoteError]) -> str:
    return excinfo.value.code


# --- office receipts: the happy paths ------------------------------------------------


@pytest.mark.parametrize("status", ["01", "02", "03", "04", "05", "06", "15", "16"])
def test_recipient_receipt_round_trip(status: str) -> None:
    receipt = receipt_for(YEN_LAC, status)
    data = sign_office_receipt(receipt, YEN_LAC.signing)
    parsed = parse_office_receipt(data)
    assert parsed.receipt == receipt
    assert parsed.digest == hashlib.sha256(parsed.container.body).digest()
    assert verify_office_receipt(data, YEN_LAC.entry, envelope=ENVELOPE) == receipt


def test_registered_receipt_carries_the_incoming_number() -> None:
    receipt = receipt_for(
        YEN_LAC,
        "03",
        details={"incoming_number": "125", "assignee": "Đồng chí Nguyễn Thị Hồng Nhung"},
    )
    got = verify_office_receipt(
        sign_office_receipt(receipt, YEN_LAC.signing), YEN_LAC.entry, envelope=ENVELOPE
    )
    assert got.details["incoming_number"] == "125"
    assert got.label == "đã tiếp nhận"


def test_recall_request_is_signed_by_the_sender() -> None:
    receipt = receipt_for(TINH_UY, "13", organ=YEN_LAC.code)
    data = sign_office_receipt(receipt, TINH_UY.signing)
    assert verify_office_receipt(data, TINH_UY.entry, envelope=ENVELOPE) == receipt
    # Without the envelope the verifier names the sender itself.
    got = verify_office_receipt(
        data,
        TINH_UY.entry,
        packet_id=ENVELOPE.packet_id,
        envelope_digest=ENVELOPE.digest,
        sender=TINH_UY.code,
    )
    assert got == receipt


def test_verify_without_envelope_uses_packet_id_and_digest() -> None:
    data = sign_office_receipt(receipt_for(YEN_LAC, "05"), YEN_LAC.signing)
    got = verify_office_receipt(
        parse_office_receipt(data),
        YEN_LAC.entry,
        packet_id=ENVELOPE.packet_id,
        envelope_digest=ENVELOPE.digest,
    )
    assert got.status == "05"


def test_verify_needs_something_to_bind_to() -> None:
    data = sign_office_receipt(receipt_for(YEN_LAC), YEN_LAC.signing)
    with pytest.raises(LocalError):
        verify_office_receipt(data, YEN_LAC.entry)
    with pytest.raises(LocalError):
        verify_office_receipt(data, YEN_LAC.entry, packet_id=ENVELOPE.packet_id)


def test_recall_without_envelope_needs_the_sender() -> None:
    data = sign_office_receipt(receipt_for(TINH_UY, "13", organ=YEN_LAC.code), TINH_UY.signing)
    with pytest.raises(LocalError):
        verify_office_receipt(
            data, TINH_UY.entry, packet_id=ENVELOPE.packet_id, envelope_digest=ENVELOPE.digest
        )


def test_hybrid_receipt_round_trip() -> None:
    office = make_office("000.00.17.H41", "Đảng ủy phường Hồng Hà", AUTHORITY, hybrid=True)
    envelope = make_envelope(TINH_UY, [office])
    data = sign_office_receipt(receipt_for(office, "01", envelope=envelope), office.signing)
    assert verify_office_receipt(data, office.entry, envelope=envelope).status == "01"


def test_signing_normalises_to_nfc() -> None:
    nfd_reason = unicodedata.normalize("NFD", REASON_REJECT)
    nfd_assignee = unicodedata.normalize("NFD", "Phòng Tổng hợp")
    receipt = receipt_for(YEN_LAC, "02", reason=nfd_reason, details={"assignee": nfd_assignee})
    got = parse_office_receipt(sign_office_receipt(receipt, YEN_LAC.signing)).receipt
    assert got.reason == REASON_REJECT
    assert got.details == {"assignee": "Phòng Tổng hợp"}


def test_signing_refuses_a_receipt_it_could_not_read() -> None:
    with pytest.raises(LocalError):
        sign_office_receipt(replace(receipt_for(YEN_LAC, "02"), reason=None), YEN_LAC.signing)
    with pytest.raises(LocalError):
        sign_office_receipt(replace(receipt_for(YEN_LAC), status="07"), YEN_LAC.signing)
    with pytest.raises(LocalError):
        sign_office_receipt(receipt_for(YEN_LAC), TAM_HONG.signing)


# --- office receipts: one refusal per check -------------------------------------------


def test_receipt_for_another_envelope_of_the_same_packet() -> None:
    # Same packet id, different envelope bytes: a receipt cannot move between versions.
    other = make_envelope(
        TINH_UY, [YEN_LAC, TAM_HONG], packet_id=ENVELOPE.packet_id, subject="Báo cáo quý III"
    )
    assert other.packet_id == ENVELOPE.packet_id
    assert other.digest != ENVELOPE.digest
    data = sign_office_receipt(receipt_for(YEN_LAC, envelope=other), YEN_LAC.signing)
    with pytest.raises(RemoteError) as excinfo:
        verify_office_receipt(data, YEN_LAC.entry, envelope=ENVELOPE)
    assert code_of(excinfo) == "receipt_envelope_mismatch"


def test_receipt_for_another_packet_id() -> None:
    receipt = replace(receipt_for(YEN_LAC), packet_id=make_envelope(TINH_UY, [YEN_LAC]).packet_id)
    data = sign_office_receipt(receipt, YEN_LAC.signing)
    with pytest.raises(RemoteError) as excinfo:
        verify_office_receipt(data, YEN_LAC.entry, envelope=ENVELOPE)
    assert code_of(excinfo) == "receipt_envelope_mismatch"


def test_receipt_for_another_digest_without_envelope() -> None:
    data = sign_office_receipt(receipt_for(YEN_LAC), YEN_LAC.signing)
    with pytest.raises(RemoteError) as excinfo:
        verify_office_receipt(
            data,
            YEN_LAC.entry,
            packet_id=ENVELOPE.packet_id,
            envelope_digest=hashlib.sha256("khác".encode()).digest(),
        )
    assert code_of(excinfo) == "receipt_envelope_mismatch"


def test_receipt_about_an_organ_not_addressed() -> None:
    data = sign_office_receipt(receipt_for(OUTSIDER), OUTSIDER.signing)
    with pytest.raises(RemoteError) as excinfo:
        verify_office_receipt(data, OUTSIDER.entry, envelope=ENVELOPE)
    assert code_of(excinfo) == "recipient_not_addressed"


def test_receipt_signed_by_another_organ() -> None:
    # Tam Hồng speaks for Yên Lạc: its own valid key, but not its delivery.
    data = sign_office_receipt(receipt_for(TAM_HONG, "03", organ=YEN_LAC.code), TAM_HONG.signing)
    with pytest.raises(RemoteError) as excinfo:
        verify_office_receipt(data, TAM_HONG.entry, envelope=ENVELOPE)
    assert code_of(excinfo) == "receipt_signer_mismatch"


def test_recall_request_signed_by_the_recipient() -> None:
    data = sign_office_receipt(receipt_for(YEN_LAC, "13"), YEN_LAC.signing)
    with pytest.raises(RemoteError) as excinfo:
        verify_office_receipt(data, YEN_LAC.entry, envelope=ENVELOPE)
    assert code_of(excinfo) == "receipt_signer_mismatch"


def test_recall_answer_signed_by_the_sender() -> None:
    data = sign_office_receipt(receipt_for(TINH_UY, "15", organ=YEN_LAC.code), TINH_UY.signing)
    with pytest.raises(RemoteError) as excinfo:
        verify_office_receipt(data, TINH_UY.entry, envelope=ENVELOPE)
    assert code_of(excinfo) == "receipt_signer_mismatch"


def test_entry_of_another_organ() -> None:
    data = sign_office_receipt(receipt_for(YEN_LAC), YEN_LAC.signing)
    with pytest.raises(RemoteError) as excinfo:
        verify_office_receipt(data, TAM_HONG.entry, envelope=ENVELOPE)
    assert code_of(excinfo) == "organ_mismatch"


def test_organ_not_valid_at_receipt_time() -> None:
    office = make_office(
        "000.00.18.H41", "Đảng ủy xã Yên Lạc (mới)", AUTHORITY, valid_from=T0 + 3600
    )
    envelope = make_envelope(TINH_UY, [office])
    data = sign_office_receipt(receipt_for(office, envelope=envelope), office.signing)
    with pytest.raises(RemoteError) as excinfo:
        verify_office_receipt(data, office.entry, envelope=envelope)
    assert code_of(excinfo) == "organ_not_valid"


def _office_with_key(**window: Any) -> tuple[Office, Envelope]:
    office = make_office("000.00.19.H41", "Đảng ủy xã Đồng Tâm", AUTHORITY, **window)
    return office, make_envelope(TINH_UY, [office])


@pytest.mark.parametrize(
    ("window", "code"),
    [
        ({"key_until": AT}, "key_expired"),
        ({"key_from": AT + 1}, "key_not_yet_valid"),
        ({"revoked_at": AT - 60}, "key_revoked"),
    ],
    ids=["expired", "not-yet-valid", "revoked"],
)
def test_signer_key_not_valid_at_receipt_time(window: dict[str, int], code: str) -> None:
    office, envelope = _office_with_key(**window)
    data = sign_office_receipt(receipt_for(office, envelope=envelope), office.signing)
    with pytest.raises(RemoteError) as excinfo:
        verify_office_receipt(data, office.entry, envelope=envelope)
    assert code_of(excinfo) == code


def test_signer_key_unknown() -> None:
    stranger = SigningPrivateKey.generate()
    receipt = replace(receipt_for(YEN_LAC), signer_kid=stranger.kid)
    data = sign_office_receipt(receipt, stranger)
    with pytest.raises(RemoteError) as excinfo:
        verify_office_receipt(data, YEN_LAC.entry, envelope=ENVELOPE)
    assert code_of(excinfo) == "key_unknown"


def test_backdated_receipt_from_a_revoked_key() -> None:
    # Signed "before" the revocation but submitted after it: the hub's clock decides.
    office, envelope = _office_with_key(revoked_at=AT + 60)
    data = sign_office_receipt(receipt_for(office, envelope=envelope), office.signing)
    assert verify_office_receipt(data, office.entry, envelope=envelope).at == AT
    with pytest.raises(RemoteError) as excinfo:
        verify_office_receipt(data, office.entry, envelope=envelope, received_at=AT + 120)
    assert code_of(excinfo) == "key_revoked"


def test_receipt_from_the_future() -> None:
    data = sign_office_receipt(receipt_for(YEN_LAC, at=AT + 3600), YEN_LAC.signing)
    with pytest.raises(RemoteError) as excinfo:
        verify_office_receipt(data, YEN_LAC.entry, envelope=ENVELOPE, received_at=AT)
    assert code_of(excinfo) == "field_invalid"


def test_hybrid_key_without_mldsa_signature() -> None:
    office = make_office("000.00.20.H41", "Đảng ủy phường Bắc Hồng", AUTHORITY, hybrid=True)
    envelope = make_envelope(TINH_UY, [office])
    container = decode(sign_office_receipt(receipt_for(office, envelope=envelope), office.signing))
    del container["sig"]["mldsa65"]
    with pytest.raises(RemoteError) as excinfo:
        verify_office_receipt(encode(container), office.entry, envelope=envelope)
    assert code_of(excinfo) == "hybrid_signature_missing"


def test_body_byte_flipped() -> None:
    receipt = receipt_for(YEN_LAC, "03", details={"incoming_number": "125"})
    container = decode(sign_office_receipt(receipt, YEN_LAC.signing))
    body = bytearray(container["body"])
    pos = body.index(b"125")
    body[pos + 2] ^= 0x03  # "125" -> "126": still a well-formed receipt
    container["body"] = bytes(body)
    tampered = encode(container)
    assert parse_office_receipt(tampered).receipt.details["incoming_number"] == "126"
    with pytest.raises(RemoteError) as excinfo:
        verify_office_receipt(tampered, YEN_LAC.entry, envelope=ENVELOPE)
    assert code_of(excinfo) == "signature_invalid"


def test_hub_signature_is_not_an_office_signature() -> None:
    # Same body, signed under the hub-receipt context: the contexts keep them apart.
    body = receipt_for(YEN_LAC).to_cbor()
    data = sign_raw(body, YEN_LAC.signing, signed.CTX_HUB_RECEIPT)
    with pytest.raises(RemoteError) as excinfo:
        verify_office_receipt(data, YEN_LAC.entry, envelope=ENVELOPE)
    assert code_of(excinfo) == "signature_invalid"


# --- office receipts: the parser ------------------------------------------------------


def raw_receipt(office: Office = YEN_LAC, status: str = "01", **changes: Any) -> bytes:
    """Sign a receipt body with ``changes`` applied (``None`` drops a field), unchecked."""
    body = receipt_for(office, status if status in STATUS else "01").to_cbor()
    body["status"] = status
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return sign_raw(body, office.signing)


def parse_code(data: bytes) -> str:
    with pytest.raises(RemoteError) as excinfo:
        parse_office_receipt(data)
    return code_of(excinfo)


@pytest.mark.parametrize("status", ["02", "13", "16"])
def test_reason_missing(status: str) -> None:
    office = TINH_UY if status == "13" else YEN_LAC
    assert parse_code(raw_receipt(office, status, reason=None)) == "reason_required"


@pytest.mark.parametrize("status", ["02", "13", "16"])
def test_reason_blank(status: str) -> None:
    office = TINH_UY if status == "13" else YEN_LAC
    assert parse_code(raw_receipt(office, status, reason=" \n ")) == "reason_required"


@pytest.mark.parametrize("status", ["00", "07", "14", "1", "", "đã đến"])
def test_unknown_status(status: str) -> None:
    assert parse_code(raw_receipt(status=status)) == "status_code_unknown"


def test_status_not_text() -> None:
    body = receipt_for(YEN_LAC).to_cbor()
    body["status"] = 1
    assert parse_code(sign_raw(body, YEN_LAC.signing)) == "field_invalid"


def test_extra_field() -> None:
    assert parse_code(raw_receipt(note="Ghi chú thêm")) == "field_unknown"


def test_extra_signer_field() -> None:
    signer = {"organ": YEN_LAC.code, "kid": YEN_LAC.signing.kid, "name": "Văn thư"}
    assert parse_code(raw_receipt(signer=signer)) == "field_unknown"


def test_reason_not_nfc() -> None:
    nfd = unicodedata.normalize("NFD", REASON_REJECT)
    assert nfd != REASON_REJECT
    assert parse_code(raw_receipt(status="02", reason=nfd)) == "text_invalid"


def test_detail_not_nfc() -> None:
    nfd = unicodedata.normalize("NFD", "Phòng Tổng hợp")
    assert parse_code(raw_receipt(details={"assignee": nfd})) == "text_invalid"


def test_registration_without_incoming_number() -> None:
    assert parse_code(raw_receipt(status="03", details={"assignee": "Văn thư"})) == "field_missing"


@pytest.mark.parametrize(
    "details",
    [
        {},
        {"Assignee": "Văn thư"},
        {"assignee": 5},
        {f"k{i}": "x" for i in range(17)},
        {"note": "x" * 513},
        {"note": "dòng 1\ndòng 2"},
        ["incoming_number", "125"],
    ],
    ids=["empty", "key-case", "value-type", "too-many", "too-long", "control", "not-a-map"],
)
def test_bad_details(details: Any) -> None:
    assert parse_code(raw_receipt(details=details)) in {"field_invalid", "text_invalid"}


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("v", 2, "version_unsupported"),
        ("packet", bytes(16), "packet_id_invalid"),
        ("envelope", bytes(31), "field_invalid"),
        ("organ", "Đảng ủy xã", "organ_code_invalid"),
        ("at", -1, "field_invalid"),
        ("reason", "", "field_invalid"),
        ("organ", None, "field_missing"),
    ],
)
def test_malformed_fields(field: str, value: Any, code: str) -> None:
    assert parse_code(raw_receipt(**{field: value})) == code


def test_oversized_receipt() -> None:
    assert parse_code(b"\x00" * (64 * 1024 + 1)) == "cbor_too_large"


def test_garbage() -> None:
    assert parse_code(b"\xa1") == "cbor_malformed"


# --- hypothesis: sign, parse, verify --------------------------------------------------

_texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"))
    | st.sampled_from(list("ăâđêôơưáàảãạếềểễệ")),
    min_size=1,
    max_size=60,
)
_vietnamese = st.sampled_from(
    [REASON_REJECT, REASON_RECALL, REASON_REFUSE, "Báo cáo quý III", "Đề nghị bổ sung hồ sơ"]
).flatmap(lambda s: st.sampled_from([s, unicodedata.normalize("NFD", s)]))
_reasons = (_vietnamese | _texts).filter(lambda s: unicodedata.normalize("NFC", s).strip() != "")
# At most 15: a 03 adds its incoming number to reach the bound of 16.
_details = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True), _texts, max_size=15
)


@settings(max_examples=60, deadline=None)
@given(
    status=st.sampled_from(sorted(STATUS)),
    at=st.integers(min_value=T0 - 3600, max_value=T0 + 3600),
    reason=st.none() | _reasons,
    details=_details,
)
def test_receipt_round_trip_property(
    status: str, at: int, reason: str | None, details: dict[str, str]
) -> None:
    if STATUS[status].reason_required and reason is None:
        reason = REASON_REJECT
    if status == "03":
        details = {**details, "incoming_number": "1"}
    office = TINH_UY if STATUS[status].by_sender else YEN_LAC
    receipt = receipt_for(office, status, organ=YEN_LAC.code, at=at, reason=reason, details=details)
    data = sign_office_receipt(receipt, office.signing)
    got = verify_office_receipt(data, office.entry, envelope=ENVELOPE)
    assert got == receipt.normalised()
    assert got.reason == (None if reason is None else unicodedata.normalize("NFC", reason))
    assert all(unicodedata.is_normalized("NFC", v) for v in got.details.values())
    # One value, one encoding: re-signing what was read gives the same body.
    assert parse_office_receipt(sign_office_receipt(got, office.signing)).container.body == (
        parse_office_receipt(data).container.body
    )


# --- hub receipts ---------------------------------------------------------------------


def hub_receipt(
    kind: str = "accepted", organ: str | None = None, envelope: Envelope = ENVELOPE
) -> HubReceipt:
    default = envelope.sender if kind == "accepted" else YEN_LAC.code
    return HubReceipt(kind, envelope.packet_id, envelope.digest, organ or default, T0 + 5, 41)


@pytest.mark.parametrize("kind", ["accepted", "fetched"])
def test_hub_receipt_round_trip(kind: str) -> None:
    receipt = hub_receipt(kind)
    data = sign_hub_receipt(receipt, HUB_KEY)
    parsed = parse_hub_receipt(data)
    assert parsed.receipt == receipt
    assert parsed.hub_kid == HUB_KEY.kid
    assert verify_hub_receipt(data, HUB_KEY.public_key(), envelope=ENVELOPE, kind=kind) == receipt
    got = verify_hub_receipt(
        parsed, HUB_KEY.public_key(), packet_id=ENVELOPE.packet_id, envelope_digest=ENVELOPE.digest
    )
    assert got == receipt


def test_hub_receipt_wire_names_the_organ_by_role() -> None:
    body = decode(
        parse_hub_receipt(sign_hub_receipt(hub_receipt("fetched"), HUB_KEY)).container.body
    )
    assert body["recipient"] == YEN_LAC.code
    assert "sender" not in body


def hub_verify_code(data: bytes, **kwargs: Any) -> str:
    kwargs.setdefault("envelope", ENVELOPE)
    with pytest.raises(RemoteError) as excinfo:
        verify_hub_receipt(data, HUB_KEY.public_key(), **kwargs)
    return code_of(excinfo)


def test_hub_receipt_forged_by_another_key() -> None:
    forger = SigningPrivateKey.generate()
    assert hub_verify_code(sign_hub_receipt(hub_receipt(), forger)) == "key_unknown"


def test_hub_receipt_forged_with_the_hub_kid() -> None:
    forger = SigningPrivateKey.generate()
    body = hub_receipt().to_cbor(HUB_KEY.kid)
    assert hub_verify_code(sign_raw(body, forger, signed.CTX_HUB_RECEIPT)) == "signature_invalid"


def test_hub_receipt_tampered() -> None:
    container = decode(sign_hub_receipt(hub_receipt(), HUB_KEY))
    body = decode(container["body"])
    body["log_index"] = 40
    container["body"] = encode(body)
    assert hub_verify_code(encode(container)) == "signature_invalid"


def test_office_signature_is_not_a_hub_signature() -> None:
    body = hub_receipt().to_cbor(HUB_KEY.kid)
    assert hub_verify_code(sign_raw(body, HUB_KEY, signed.CTX_RECEIPT)) == "signature_invalid"


def test_hub_receipt_for_another_envelope() -> None:
    other = make_envelope(TINH_UY, [YEN_LAC])
    data = sign_hub_receipt(hub_receipt(envelope=other), HUB_KEY)
    assert hub_verify_code(data) == "receipt_envelope_mismatch"


def test_hub_accepted_from_another_sender() -> None:
    data = sign_hub_receipt(hub_receipt("accepted", organ=YEN_LAC.code), HUB_KEY)
    assert hub_verify_code(data) == "receipt_envelope_mismatch"


def test_hub_fetched_by_an_organ_not_addressed() -> None:
    data = sign_hub_receipt(hub_receipt("fetched", organ=OUTSIDER.code), HUB_KEY)
    assert hub_verify_code(data) == "recipient_not_addressed"


def test_hub_receipt_of_another_kind() -> None:
    data = sign_hub_receipt(hub_receipt("fetched"), HUB_KEY)
    assert hub_verify_code(data, kind="accepted") == "field_invalid"


def test_hub_receipt_parser_refuses_office_receipts_and_extra_fields() -> None:
    office = sign_office_receipt(receipt_for(YEN_LAC), YEN_LAC.signing)
    with pytest.raises(RemoteError) as excinfo:
        parse_hub_receipt(office)
    assert code_of(excinfo) == "cbor_too_deep"  # a hub receipt is one flat map
    body = hub_receipt().to_cbor(HUB_KEY.kid)
    body["recipient"] = YEN_LAC.code  # an accepted receipt names the sender only
    with pytest.raises(RemoteError) as excinfo:
        parse_hub_receipt(sign_raw(body, HUB_KEY, signed.CTX_HUB_RECEIPT))
    assert code_of(excinfo) == "field_unknown"


def test_hub_receipt_bad_kind() -> None:
    body = hub_receipt().to_cbor(HUB_KEY.kid)
    body["kind"] = "delivered"
    with pytest.raises(RemoteError) as excinfo:
        parse_hub_receipt(sign_raw(body, HUB_KEY, signed.CTX_HUB_RECEIPT))
    assert code_of(excinfo) == "field_invalid"
    with pytest.raises(LocalError):
        sign_hub_receipt(replace(hub_receipt(), kind="delivered"), HUB_KEY)


# --- the delivery state machine -------------------------------------------------------

#: The table, written out independently of the module: (state, status) -> new state.
#: "13" is a pending recall; after 16 the delivery is back where the 13 found it.
EXPECTED: dict[tuple[str, str], str] = {
    **{(PENDING, s): s for s in ("01", "02", "03", "04", "05", "06", "13")},
    **{("01", s): s for s in ("02", "03", "04", "05", "06", "13")},
    **{("03", s): s for s in ("04", "05", "06", "13")},
    **{("04", s): s for s in ("04", "05", "06", "13")},
    **{("05", s): s for s in ("05", "06", "13")},
    ("06", "13"): "13",
    ("13", "15"): RECALLED,
    ("13", "16"): "05",  # the path below reaches 13 from 05
}

#: A path from "pending" to each state.
PATHS: dict[str, list[str]] = {
    PENDING: [],
    "01": ["01"],
    "02": ["01", "02"],
    "03": ["01", "03"],
    "04": ["01", "03", "04"],
    "05": ["01", "03", "04", "05"],
    "06": ["01", "03", "04", "05", "06"],
    "13": ["01", "03", "04", "05", "13"],
    RECALLED: ["01", "13", "15"],
}


def delivery_at(state: str) -> Delivery:
    delivery = Delivery(ENVELOPE.packet_id, YEN_LAC.code)
    for i, status in enumerate(PATHS[state]):
        delivery.apply(status, STATUS[status].by_sender, T0 + i)
    assert delivery.state == state
    return delivery


def test_table_matches_the_documented_one() -> None:
    assert set(STATES) == set(PATHS)
    actual = {(state, status) for state, row in TRANSITIONS.items() for status in row}
    assert actual == set(EXPECTED)


@pytest.mark.parametrize(
    ("state", "status"),
    [(state, status) for state in PATHS for status in STATUS],
    ids=lambda v: str(v),
)
def test_every_transition(state: str, status: str) -> None:
    delivery = delivery_at(state)
    expected = EXPECTED.get((state, status))
    if expected is None:
        with pytest.raises(RemoteError) as excinfo:
            delivery.apply(status, STATUS[status].by_sender, T0 + 100)
        assert code_of(excinfo) == "transition_invalid"
        assert f"from {state}" in excinfo.value.detail
        assert f"to {status}" in excinfo.value.detail
        assert delivery.state == state
        assert len(delivery.history) == len(PATHS[state])
    else:
        assert delivery.apply(status, STATUS[status].by_sender, T0 + 100) == expected
        assert delivery.history[-1] == Step(status, T0 + 100)


def test_completed_document_is_not_reopened() -> None:
    delivery = delivery_at("06")
    with pytest.raises(RemoteError) as excinfo:
        delivery.apply("05", False, T0 + 100)
    assert code_of(excinfo) == "transition_invalid"
    assert "06 (completed)" in excinfo.value.detail
    assert "05 (in progress)" in excinfo.value.detail


def test_refused_recall_returns_to_the_state_before() -> None:
    delivery = delivery_at("06")
    assert delivery.apply("13", True, T0 + 10) == "13"
    assert delivery.recall_pending
    assert delivery.apply("16", False, T0 + 11) == "06"
    # The sender may ask again; a second request while one is pending is refused.
    assert delivery.apply("13", True, T0 + 12) == "13"
    with pytest.raises(RemoteError) as excinfo:
        delivery.apply("13", True, T0 + 13)
    assert code_of(excinfo) == "transition_invalid"
    assert delivery.apply("15", False, T0 + 14) == RECALLED
    assert delivery.terminal
    assert [s.status for s in delivery.history] == [*PATHS["06"], "13", "16", "13", "15"]


def test_registration_after_a_lost_software_receipt() -> None:
    delivery = Delivery()
    assert delivery.apply("03", False, T0) == "03"
    assert delivery.apply("06", False, T0 + 1) == "06"


@pytest.mark.parametrize(("status", "by_sender"), [("13", False), ("01", True), ("15", True)])
def test_wrong_party(status: str, by_sender: bool) -> None:
    with pytest.raises(RemoteError) as excinfo:
        delivery_at("01").apply(status, by_sender, T0 + 100)
    assert code_of(excinfo) == "receipt_signer_mismatch"


def test_unknown_status_in_the_machine() -> None:
    with pytest.raises(RemoteError) as excinfo:
        Delivery().apply("07", False, T0)
    assert code_of(excinfo) == "status_code_unknown"


def test_late_registration_is_recorded() -> None:
    # 04 arrives first; the 03 with the incoming number, stated earlier, arrives later.
    delivery = Delivery()
    delivery.apply("01", False, T0)
    delivery.apply("04", False, T0 + 20)
    assert delivery.apply("03", False, T0 + 10) == "04"
    assert [s.status for s in delivery.history] == ["01", "04", "03"]
    assert [s.status for s in delivery.timeline] == ["01", "03", "04"]


def test_late_registration_before_a_refused_recall_counts() -> None:
    delivery = Delivery()
    delivery.apply("01", False, T0)
    delivery.apply("13", True, T0 + 20)
    delivery.apply("16", False, T0 + 30)
    assert delivery.state == "01"
    assert delivery.apply("03", False, T0 + 10) == "03"


def test_late_receipt_that_does_not_fit() -> None:
    delivery = Delivery()
    delivery.apply("01", False, T0)
    delivery.apply("03", False, T0 + 20)
    with pytest.raises(RemoteError) as excinfo:
        delivery.apply("02", False, T0 + 10)  # a rejection stated before the registration
    assert code_of(excinfo) == "transition_invalid"
    assert "arrived after later receipts" in excinfo.value.detail
    assert delivery.state == "03"
    assert len(delivery.history) == 2


def test_apply_receipt_checks_the_delivery() -> None:
    delivery = Delivery(ENVELOPE.packet_id, YEN_LAC.code)
    assert delivery.apply_receipt(receipt_for(YEN_LAC, "01")) == "01"
    assert delivery.apply_receipt(receipt_for(TINH_UY, "13", organ=YEN_LAC.code)) == "13"
    with pytest.raises(RemoteError) as excinfo:
        delivery.apply_receipt(receipt_for(TAM_HONG, "15"))
    assert code_of(excinfo) == "organ_mismatch"
    other = make_envelope(TINH_UY, [YEN_LAC])
    with pytest.raises(RemoteError) as excinfo:
        delivery.apply_receipt(receipt_for(YEN_LAC, "15", envelope=other))
    assert code_of(excinfo) == "receipt_envelope_mismatch"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(sorted(STATUS)), st.integers(0, 50)), max_size=30))
def test_replaying_history_gives_the_same_state(steps: list[tuple[str, int]]) -> None:
    delivery = Delivery()
    refused: set[str] = set()
    for status, at in steps:
        try:
            delivery.apply(status, STATUS[status].by_sender, T0 + at)
        except RemoteError as exc:
            refused.add(exc.code)
    assert refused <= {"transition_invalid"}
    again = Delivery.replay(delivery.history)
    assert again.state == delivery.state
    assert again.history == delivery.history
    # The state never depends on arrival order, only on the receipts' own times.
    in_order = Delivery.replay(delivery.timeline)
    assert in_order.state == delivery.state
