"""Tests of protocol.codec: deterministic encoding, strict decoding, the Fields reader.

Every refusal is checked with its exact error code: the hub turns these codes into
problem responses and the fuzz harnesses rely on nothing but RemoteError escaping.
"""

from __future__ import annotations

import enum
import unicodedata
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import codec
from protocol.codec import (
    DEFAULT_MAX_DEPTH,
    Fields,
    check_text,
    decode,
    encode,
    nfc,
    omit_none,
)
from protocol.errors import LocalError, RemoteError


def _code(data: bytes, **kwargs: Any) -> str:
    with pytest.raises(RemoteError) as info:
        decode(data, **kwargs)
    return info.value.code


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def _nested_list(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


# --- deterministic encoding ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # RFC 8949 Appendix A, and every boundary of the integer argument forms.
        (0, "00"),
        (1, "01"),
        (23, "17"),
        (24, "18 18"),
        (255, "18 ff"),
        (256, "19 0100"),
        (65535, "19 ffff"),
        (65536, "1a 00010000"),
        (2**32 - 1, "1a ffffffff"),
        (2**32, "1b 0000000100000000"),
        (2**64 - 1, "1b ffffffffffffffff"),
        (-1, "20"),
        (-24, "37"),
        (-25, "38 18"),
        (-256, "38 ff"),
        (-257, "39 0100"),
        (-(2**64), "3b ffffffffffffffff"),
        (False, "f4"),
        (True, "f5"),
        (None, "f6"),
        (b"", "40"),
        (b"\x01\x02\x03\x04", "44 01020304"),
        ("", "60"),
        ("IETF", "64 49455446"),
        ("ư", "62 c6b0"),
        ([], "80"),
        ([1, [2, 3]], "82 01 82 02 03"),
        ((1, 2), "82 01 02"),
        ({}, "a0"),
        (list(range(1, 26)), "98 19" + "".join(f"{i:02x}" for i in range(1, 24)) + "1818 1819"),
        (b"x" * 24, "58 18" + "78" * 24),
        ("x" * 256, "79 0100" + "78" * 256),
    ],
)
def test_encode_uses_shortest_forms(value: Any, expected: str) -> None:
    assert encode(value) == h(expected)
    assert decode(encode(value)) == (list(value) if isinstance(value, tuple) else value)


def test_encode_sorts_map_keys_by_encoded_bytes() -> None:
    value = {"route": 1, "b": 2, "a": 3, "aa": 4, "v": 5}
    assert encode(value) == h("a5 6161 03 6162 02 6176 05 626161 04 65726f757465 01")
    # Insertion order never matters: one value, one encoding.
    assert encode(dict(reversed(list(value.items())))) == encode(value)
    assert encode({10: "x", 1: "y", -1: "z"}) == h("a3 01 6179 0a 6178 20 617a")


def test_encode_nested_maps_are_sorted_too() -> None:
    inner_a = {"z": 1, "a": 2}
    inner_b = {"a": 2, "z": 1}
    assert encode({"m": [inner_a]}) == encode({"m": [inner_b]})


@pytest.mark.parametrize(
    "value",
    [
        1.5,
        2**64,
        -(2**64) - 1,
        {True: 1},
        {b"k": 1},
        {(1,): 1},
        {1, 2},
        bytearray(b"x"),
        object(),
        _nested_list(40),
    ],
)
def test_encode_refuses_values_outside_the_protocol(value: Any) -> None:
    with pytest.raises(LocalError):
        encode(value)


def test_omit_none_drops_absent_fields_only() -> None:
    assert omit_none({"a": None, "b": 0, "c": b"", "d": False}) == {"b": 0, "c": b"", "d": False}


# --- strict decoding: each refusal with its own code -----------------------------------


def test_decode_accepts_canonical_values() -> None:
    assert decode(h("a2 6161 01 6162 82 40 f6")) == {"a": 1, "b": [b"", None]}
    assert decode(h("a2 6161 01 626161 02")) == {"a": 1, "aa": 2}
    assert decode(bytearray(h("01"))) == 1  # type: ignore[arg-type]
    assert decode(memoryview(h("01"))) == 1  # type: ignore[arg-type]


def test_decode_takes_bytes_only() -> None:
    with pytest.raises(LocalError):
        decode("a2")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data",
    [
        "a2 6161 01 6161 02",  # {"a": 1, "a": 2}
        "a2 01 01 01 02",  # {1: 1, 1: 2}
        "81 a2 6178 00 6178 00",  # nested
    ],
)
def test_duplicate_keys(data: str) -> None:
    assert _code(h(data)) == "cbor_duplicate_key"


@pytest.mark.parametrize(
    "data",
    [
        "9f 01 ff",  # indefinite array
        "bf 6161 01 ff",  # indefinite map
        "5f 41 01 ff",  # indefinite byte string
        "7f 61 61 ff",  # indefinite text string
        "82 9f ff 01",  # nested
    ],
)
def test_indefinite_lengths(data: str) -> None:
    assert _code(h(data)) == "cbor_not_canonical"


@pytest.mark.parametrize(
    "data",
    [
        "18 01",  # 1 in two bytes
        "18 17",  # 23 in two bytes
        "19 00ff",  # 255 in three bytes
        "1a 0000ffff",
        "1b 00000000ffffffff",
        "38 00",  # -1 in two bytes
        "58 01 00",  # a 1-byte string with a one-byte length argument
        "98 01 00",  # a 1-item array likewise
        "b8 01 6161 01",  # a 1-pair map likewise
        "79 0001 61",  # a 1-character text with a two-byte length
        "82 18 05 01",  # inside an array
    ],
)
def test_non_shortest_forms(data: str) -> None:
    assert _code(h(data)) == "cbor_not_canonical"


@pytest.mark.parametrize(
    "data",
    [
        "a2 6162 01 6161 02",  # {"b": 1, "a": 2}
        "a2 626161 01 6162 02",  # the longer key first
        "a2 02 00 01 00",  # {2: 0, 1: 0}
        "a2 20 00 01 00",  # {-1: 0, 1: 0}
        "81 a2 6179 00 6178 00",  # nested
    ],
)
def test_unsorted_map_keys(data: str) -> None:
    assert _code(h(data)) == "cbor_not_canonical"


def test_key_order_checked_after_the_same_keys_were_seen_sorted() -> None:
    """The remembered canonical key sequences never admit another order of the same keys."""
    sorted_map = {"a": 1, "b": 2, "cc": 3}
    assert decode(encode(sorted_map)) == sorted_map
    assert ("a", "b", "cc") in codec._CANONICAL_KEY_ORDERS
    for order in (("b", "a", "cc"), ("cc", "a", "b"), ("a", "cc", "b")):
        data = cbor2.dumps({k: sorted_map[k] for k in order})
        assert _code(data) == "cbor_not_canonical"
        assert _code(cbor2.dumps([{k: sorted_map[k] for k in order}])) == "cbor_not_canonical"
    # Mixed keys: integers first (non-negative, then negative), then text, as cbor2 sorts.
    assert decode(h("a3 01 00 20 00 6161 00")) == {1: 0, -1: 0, "a": 0}
    assert _code(h("a3 20 00 01 00 6161 00")) == "cbor_not_canonical"
    assert _code(h("a3 6161 00 01 00 20 00")) == "cbor_not_canonical"


def test_encode_puts_keys_in_canonical_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Maps built in any key order encode as cbor2's canonical mode does, also once the
    order of their keys is remembered, and the caller's value is left as it was."""
    monkeypatch.setattr(codec, "_KEY_ORDER_OF", {})
    value = {
        "sig": {"mldsa65": b"m", "ed25519": b"e"},
        "body": [{"zz": 1, "a": 2}, ({"b": 3, 1000: 4, -1: 5, 2: 6},)],
        "": None,
    }
    snapshot = repr(value)
    for _ in range(2):
        assert encode(value) == cbor2.dumps(value, canonical=True)
        assert repr(value) == snapshot
    assert ("sig", "body", "") in codec._KEY_ORDER_OF
    # Already in order: the same bytes as the plain encoding.
    assert encode({"a": 1, "bb": 2}) == cbor2.dumps({"a": 1, "bb": 2})

    class Key(enum.IntEnum):
        ONE = 1

    class Map(dict[str, int]):
        pass

    for odd in ({Key.ONE: 0, 0: 1}, [Map(b=1, a=2)], {"x": Key.ONE, "a": 0}):
        assert encode(odd) == cbor2.dumps(odd, canonical=True)
    for i in range(codec._KEY_ORDERS_MAX + 10):
        assert encode({f"x{i}": 2, "a": 1}) == cbor2.dumps({"a": 1, f"x{i}": 2})
    assert len(codec._KEY_ORDER_OF) == codec._KEY_ORDERS_MAX
    many = {f"k{i:03d}": i for i in reversed(range(40))}
    assert encode(many) == cbor2.dumps(many, canonical=True)


def test_key_orders_remembered_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "_CANONICAL_KEY_ORDERS", set())
    many = {f"k{i:03d}": i for i in range(40)}  # more keys than are remembered
    assert decode(encode(many)) == many
    long_key = {"a": 1, "b" * 100: 2}
    assert decode(encode(long_key)) == long_key
    assert not codec._CANONICAL_KEY_ORDERS
    shuffled = dict(reversed(list(many.items())))
    assert _code(cbor2.dumps(shuffled)) == "cbor_not_canonical"
    for i in range(codec._KEY_ORDERS_MAX + 10):
        decode(encode({"a": 1, f"x{i}": 2}))
    assert len(codec._CANONICAL_KEY_ORDERS) == codec._KEY_ORDERS_MAX
    assert _code(h("a2 6162 01 6161 02")) == "cbor_not_canonical"  # still checked when full


@pytest.mark.parametrize(
    "data",
    [
        "c1 1a 514b67b0",  # tag 1: epoch date-time
        "c0 74 323031332d30332d32315432303a30343a30305a",  # tag 0: date-time string
        "c2 49 010000000000000000",  # tag 2: bignum 2**64, one beyond the integer range
        "c2 41 01",  # tag 2: bignum 1
        "c3 49 010000000000000000",  # tag 3: negative bignum
        "d8 1c 01",  # tag 28: shareable
        "d8 1d 00",  # tag 29: shared reference
        "d8 25 50 00000000000000000000000000000000",  # tag 37: UUID
        "d9 0102 81 01",  # tag 258: set
        "d9 d9f7 01",  # tag 55799: self-described CBOR
        "d9 03e8 01",  # tag 1000: unknown to the decoder
        "db 0000000100000000 01",  # a tag number beyond 32 bits
        "82 01 c2 41 01",  # nested in an array
        "a1 6161 d9 03e8 01",  # nested in a map
    ],
)
def test_tags(data: str) -> None:
    assert _code(h(data)) == "cbor_type_unsupported"


@pytest.mark.parametrize(
    "data",
    [
        "f9 3c00",  # half float 1.0
        "fa 47c35000",  # single float
        "fb 3ff199999999999a",  # double float
        "f9 7e00",  # NaN
        "f7",  # undefined
        "f0",  # simple(16)
        "f8 ff",  # simple(255)
        "82 01 f7",  # nested
        "a1 6161 fb 0000000000000000",
    ],
)
def test_floats_undefined_and_simple_values(data: str) -> None:
    assert _code(h(data)) == "cbor_type_unsupported"


@pytest.mark.parametrize(
    "data",
    [
        "a1 41 01 01",  # byte-string map key
        "a1 f5 01",  # boolean map key
        "a1 f6 01",  # null map key
        "a1 80 01",  # array map key
    ],
)
def test_map_keys_other_than_text_or_integers(data: str) -> None:
    assert _code(h(data)) == "cbor_type_unsupported"


def test_oversize_input() -> None:
    big = encode(b"x" * 100)
    assert decode(big, max_size=len(big)) == b"x" * 100
    assert _code(big, max_size=len(big) - 1) == "cbor_too_large"
    # The default bound refuses before anything is parsed, whatever the bytes.
    assert _code(b"\x00" * (4 * 1024 * 1024 + 1)) == "cbor_too_large"


@pytest.mark.parametrize("container", ["81", "a1 6161"])
def test_nesting_depth(container: str) -> None:
    def nested(levels: int) -> bytes:
        return h(container) * levels + b"\x01"

    assert decode(nested(DEFAULT_MAX_DEPTH)) is not None
    assert _code(nested(DEFAULT_MAX_DEPTH + 1)) == "cbor_too_deep"
    assert _code(nested(1000)) == "cbor_too_deep"
    assert _code(nested(100_000)) == "cbor_too_deep"
    assert decode(nested(2), max_depth=2) is not None
    assert _code(nested(3), max_depth=2) == "cbor_too_deep"


@pytest.mark.parametrize(
    "data",
    [
        "01 00",  # trailing byte
        "a0 a0",  # two items
        "6161 ff",
    ],
)
def test_trailing_bytes(data: str) -> None:
    assert _code(h(data)) == "cbor_malformed"


@pytest.mark.parametrize(
    "data",
    [
        "",  # nothing at all
        "18",  # integer argument missing
        "1a 0000",  # integer argument cut short
        "45 0102",  # byte string cut short
        "63 6161",  # text string cut short
        "82 01",  # array missing an item
        "a2 6161 01 6162",  # map missing a value
        "5b ffffffffffffffff",  # a byte string claiming 2**64 - 1 bytes
        "9b ffffffffffffffff",  # an array claiming 2**64 - 1 items
        "bb ffffffffffffffff",  # a map claiming 2**64 - 1 pairs
        "ff",  # a lone break
        "1c",  # reserved additional information
        "f8 18",  # simple value in the two-byte form below 32: not well-formed
        "62 c328",  # invalid UTF-8
        "62 eda0",  # a surrogate in UTF-8
    ],
)
def test_truncated_and_malformed_items(data: str) -> None:
    assert _code(h(data)) == "cbor_malformed"


# --- round trip of random protocol values ----------------------------------------------

_leaves = (
    st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.binary(max_size=64)
    | st.text(max_size=32)
    | st.booleans()
    | st.none()
)
_keys = st.text(max_size=12) | st.integers(min_value=-(2**64), max_value=2**64 - 1)
values = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(values)
def test_round_trip(value: Any) -> None:
    data = encode(value)
    assert decode(data, max_depth=64) == value
    assert encode(decode(data, max_depth=64)) == data
    # cbor2 and our encoder agree on the deterministic form.
    assert cbor2.dumps(value, canonical=True) == data


@settings(max_examples=200, deadline=None)
@given(values, st.data())
def test_any_single_byte_change_is_refused_or_still_canonical(
    value: Any, data: st.DataObject
) -> None:
    """A mutated encoding either fails with a RemoteError or is itself canonical."""
    encoded = bytearray(encode(value))
    pos = data.draw(st.integers(0, len(encoded) - 1))
    encoded[pos] ^= data.draw(st.integers(1, 255))
    try:
        decoded = decode(bytes(encoded), max_depth=64)
    except RemoteError:
        return
    assert encode(decoded) == bytes(encoded)


# --- Fields ----------------------------------------------------------------------------


def _f(**fields: Any) -> Fields:
    return Fields(fields, "meta")


def _field_code(call: Any) -> str:
    with pytest.raises(RemoteError) as info:
        call()
    return info.value.code


def test_fields_typed_access() -> None:
    f = Fields(
        {"n": 5, "b": b"\x00" * 4, "t": "Trích yếu", "c": "office", "a": [1, 2], "m": {"x": 1}},
        "entry",
    )
    assert f.integer("n", lo=1, hi=5) == 5
    assert f.blob("b", size=4) == b"\x00" * 4
    assert f.text("t") == "Trích yếu"
    assert f.choice("c", ("office", "admin")) == "office"
    assert f.array("a", max_items=2) == [1, 2]
    inner = f.map("m")
    assert inner.integer("x") == 1
    inner.done()
    assert f.opt_integer("absent") is None
    assert f.opt_blob("absent2") is None
    assert f.opt_text("absent3") is None
    assert f.opt_map("absent4") is None
    assert f.opt_raw("absent5") is None
    assert f.array("absent6", max_items=1, optional=True) == []
    f.done()


@pytest.mark.parametrize(
    "call",
    [
        lambda: _f().integer("n"),
        lambda: _f().blob("b"),
        lambda: _f().text("t"),
        lambda: _f().choice("c", ("a",)),
        lambda: _f().array("a", max_items=1),
        lambda: _f().map("m"),
        lambda: _f().raw("r"),
    ],
)
def test_fields_missing(call: Any) -> None:
    assert _field_code(call) == "field_missing"


@pytest.mark.parametrize(
    "call",
    [
        lambda: _f(n="5").integer("n"),
        lambda: _f(n=True).integer("n"),  # a boolean is not an integer
        lambda: _f(n=-1).integer("n"),
        lambda: _f(n=6).integer("n", hi=5),
        lambda: _f(n=6).opt_integer("n", hi=5),
        lambda: _f(b="x").blob("b"),
        lambda: _f(b=b"xx").blob("b", size=3),
        lambda: _f(b=b"xx").opt_blob("b", size=3),
        lambda: _f(b=b"xxx").blob("b", max_size=2),
        lambda: _f(t=b"x").text("t"),
        lambda: _f(t="x" * 11).text("t", max_len=10),
        lambda: _f(t=1).opt_text("t"),
        lambda: _f(c="other").choice("c", ("office", "admin")),
        lambda: _f(a={"x": 1}).array("a", max_items=1),
        lambda: _f(a=[1, 2]).array("a", max_items=1),
        lambda: _f(m=[1]).map("m"),
        lambda: _f(m="x").opt_map("m"),
        lambda: Fields([1], "meta"),
        lambda: Fields(None, "meta"),
    ],
)
def test_fields_invalid(call: Any) -> None:
    assert _field_code(call) == "field_invalid"


def test_fields_unknown() -> None:
    f = _f(subject="x", extra=1)
    f.text("subject")
    assert _field_code(f.done) == "field_unknown"
    # Optional fields that were asked for are known, present or not.
    g = _f(subject="x", number="05")
    g.text("subject")
    g.opt_text("number")
    g.opt_text("notation")
    g.done()


def test_fields_error_names_the_place() -> None:
    with pytest.raises(RemoteError) as info:
        Fields({}, "envelope.body").integer("size")
    assert "envelope.body.size" in info.value.detail


# --- text -------------------------------------------------------------------------------

SUBJECT = "Kế hoạch tổ chức Hội nghị tổng kết công tác văn phòng cấp ủy năm 2025"


def test_check_text_accepts_nfc_vietnamese() -> None:
    assert check_text(SUBJECT, name="subject", max_len=4000) == SUBJECT
    assert check_text("Đảng ủy xã Yên Lạc", name="name", max_len=100) == "Đảng ủy xã Yên Lạc"
    assert check_text("", name="x", max_len=0) == ""


@pytest.mark.parametrize(
    "text", [SUBJECT, "Báo cáo quý III.pdf", "Chi bộ Trường THCS Tam Hồng", "Tỉnh ủy"]
)
def test_check_text_refuses_nfd(text: str) -> None:
    decomposed = unicodedata.normalize("NFD", text)
    assert decomposed != text
    with pytest.raises(RemoteError) as info:
        check_text(decomposed, name="subject", max_len=4000)
    assert info.value.code == "text_invalid"
    assert nfc(decomposed) == text


@pytest.mark.parametrize("ch", ["\x00", "\x07", "\x1b", "\r", "\x7f", "\x85", "\x9f"])
def test_check_text_refuses_control_characters(ch: str) -> None:
    for multiline in (False, True):
        with pytest.raises(RemoteError) as info:
            check_text(f"Công văn{ch}số 5", name="x", max_len=100, multiline=multiline)
        assert info.value.code == "text_invalid"


@pytest.mark.parametrize("ch", ["\n", "\t"])
def test_check_text_newlines_and_tabs_only_when_multiline(ch: str) -> None:
    text = f"Dòng một{ch}Dòng hai"
    assert check_text(text, name="notes", max_len=100, multiline=True) == text
    with pytest.raises(RemoteError) as info:
        check_text(text, name="subject", max_len=100)
    assert info.value.code == "text_invalid"


def test_check_text_length_bound_counts_characters() -> None:
    assert check_text("ư" * 10, name="x", max_len=10) == "ư" * 10
    with pytest.raises(RemoteError) as info:
        check_text("ư" * 11, name="x", max_len=10)
    assert info.value.code == "field_invalid"


def test_fields_text_refuses_nfd() -> None:
    with pytest.raises(RemoteError) as info:
        _f(subject=unicodedata.normalize("NFD", SUBJECT)).text("subject", max_len=4000)
    assert info.value.code == "text_invalid"


def test_control_character_set_is_unicode_category_cc() -> None:
    """check_text's pattern matches exactly the Cc code points (all below U+00A0)."""
    for cp in range(0x110000):
        ch = chr(cp)
        if 0xD800 <= cp <= 0xDFFF:
            continue
        is_cc = unicodedata.category(ch) == "Cc"
        try:
            check_text(f"a{ch}b", name="x", max_len=10)
            refused = False
        except RemoteError as exc:
            refused = exc.code == "text_invalid" and unicodedata.is_normalized("NFC", f"a{ch}b")
        if is_cc:
            assert refused, hex(cp)
        elif unicodedata.is_normalized("NFC", f"a{ch}b"):
            assert not refused, hex(cp)


def test_encode_depth_bound_counts_leaves() -> None:
    def nested(levels: int, leaf: Any) -> Any:
        value = leaf
        for _ in range(levels):
            value = [value]
        return value

    encode(nested(32, 1))
    encode(nested(32, "chữ"))
    for leaf in (1, "chữ", b"x", None, True):
        with pytest.raises(LocalError):
            encode(nested(33, leaf))


def test_encode_accepts_subclasses_of_the_protocol_types() -> None:
    class Status(enum.IntEnum):
        REGISTERED = 3

    class Kind(enum.StrEnum):
        DOCUMENT = "document"

    assert encode({Kind.DOCUMENT: Status.REGISTERED}) == encode({"document": 3})
    assert encode((1, [2])) == encode([1, [2]])
    with pytest.raises(LocalError):
        encode({Status.REGISTERED: 1.5})
