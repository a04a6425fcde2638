"""Deterministic CBOR for everything Lienthong signs, and a strict decoder for what it reads.

Encoding follows RFC 8949 §4.2.1 (core deterministic encoding): shortest integer and length
forms, definite lengths, map keys sorted by their encoded bytes.  ``cbor2`` with
``canonical=True`` produces exactly that; we pass it only the types below.

Decoding untrusted bytes is where attacks live, so :func:`decode` is strict:

* size bound on the whole input before anything is parsed;
* no indefinite lengths, no duplicate map keys, bounded depth (cbor2 enforces these);
* no tags, floats, ``undefined`` or simple values: the protocol never uses them;
* the result re-encodes to the *same bytes* -- so non-shortest integers, unsorted keys and
  every other non-deterministic form are refused, and one value has one encoding;
* trailing bytes are refused.

Every failure is a :class:`~protocol.errors.RemoteError`; nothing else escapes.

The small ``Fields`` reader gives typed access to decoded maps with the protocol's error
codes (``field_missing``, ``field_invalid``, ``field_unknown``), so format modules stay short.
"""

from __future__ import annotations

import io
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final, TypeAlias

import cbor2

from .errors import LocalError, RemoteError

#: The CBOR values the protocol uses.
Value: TypeAlias = (
    "int | bytes | str | bool | list[Value] | dict[str, Value] | dict[int, Value] | None"
)

DEFAULT_MAX_SIZE: Final = 4 * 1024 * 1024
DEFAULT_MAX_DEPTH: Final = 8


def encode(value: Any) -> bytes:
    """Deterministic CBOR encoding of ``value`` (RFC 8949 §4.2.1)."""
    _check_encodable(value, 0)
    # cbor2's canonical mode sorts every map's keys on every call, which costs more than
    # the rest of the encoding; the plain encoding of the value with each map's keys put
    # in canonical order (orders remembered per key sequence) is the same bytes.
    ordered = _in_key_order(value)
    if ordered is _UNORDERED:
        return cbor2.dumps(value, canonical=True)
    return cbor2.dumps(ordered)


#: :func:`_in_key_order` found something it does not reorder (a subclass of a protocol
#: type, a key order it could not settle): encode with cbor2's canonical mode.
_UNORDERED: Final = object()
#: Key sequence -> the same keys in canonical order; bounded like the decoder's set.
_KEY_ORDER_OF: Final[dict[tuple[Any, ...], tuple[Any, ...]]] = {}


def _in_key_order(value: Any) -> Any:
    """``value`` with each map's keys in canonical order (the same object if they are)."""
    kind = type(value)
    if kind in _LEAVES or kind is int:
        return value
    if kind is dict:
        keys = tuple(value)
        order = keys if len(keys) < 2 else _KEY_ORDER_OF.get(keys) or _key_order(keys)
        if order is None:
            return _UNORDERED
        out = {}
        same = order == keys
        for key in order:
            item = value[key]
            new = item if type(item) in _LEAVES else _in_key_order(item)
            if new is _UNORDERED:
                return _UNORDERED
            same = same and new is item
            out[key] = new
        return value if same else out
    if kind is list or kind is tuple:
        items = []
        same = True
        for item in value:
            new = item if type(item) in _LEAVES else _in_key_order(item)
            if new is _UNORDERED:
                return _UNORDERED
            same = same and new is item
            items.append(new)
        return value if same else items
    return _UNORDERED


def _key_order(keys: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The canonical order of these keys as cbor2 sorts them (checked), or None."""
    if not all(type(k) is str or type(k) is int for k in keys):
        return None
    encoded = {k: cbor2.dumps(k) for k in keys}
    order = tuple(sorted(keys, key=lambda k: (len(encoded[k]), encoded[k])))
    if cbor2.dumps(dict.fromkeys(order)) != cbor2.dumps(dict.fromkeys(keys), canonical=True):
        return None
    if (
        len(_KEY_ORDER_OF) < _KEY_ORDERS_MAX
        and len(keys) <= _KEY_ORDER_KEYS_MAX
        and all(type(k) is int or len(k) <= _KEY_ORDER_KEY_LEN_MAX for k in keys)
    ):
        _KEY_ORDER_OF[keys] = order
    return order


#: Leaf types, compared exactly (``type(x) in``: a bool is not taken for an int, and the
#: walks below skip a call per leaf -- they run on every packet and receipt).
_LEAVES: Final = frozenset({bool, type(None), bytes, str})
_KEYS: Final = frozenset({str, int})


def _check_encodable(value: Any, depth: int) -> None:
    if depth > 32:
        raise LocalError("value nested too deeply to encode")
    kind = type(value)
    if kind in _LEAVES:
        return
    if kind is int:
        if not -(2**64) <= value < 2**64:
            raise LocalError("integer out of CBOR major type 0/1 range")
        return
    if kind is list or kind is tuple:
        for item in value:
            if type(item) not in _LEAVES or depth >= 32:
                _check_encodable(item, depth + 1)
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) not in _KEYS and (not isinstance(key, str | int) or isinstance(key, bool)):
                raise LocalError(f"map key of type {type(key).__name__} is not allowed")
            if type(item) not in _LEAVES or depth >= 32:
                _check_encodable(item, depth + 1)
        return
    _check_encodable_subclass(value, depth)


def _check_encodable_subclass(value: Any, depth: int) -> None:
    """Instances of subclasses of the protocol's types (an ``IntEnum``, say)."""
    if isinstance(value, bool | bytes | str):
        return
    if isinstance(value, int):
        if not -(2**64) <= value < 2**64:
            raise LocalError("integer out of CBOR major type 0/1 range")
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_encodable(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str | int) or isinstance(key, bool):
                raise LocalError(f"map key of type {type(key).__name__} is not allowed")
            _check_encodable(item, depth + 1)
        return
    raise LocalError(f"type {type(value).__name__} is not part of the protocol's CBOR")


def _refuse_tag(_decoder: Any, tag: Any) -> Any:
    raise RemoteError("cbor_type_unsupported", f"CBOR tag {tag.tag} is not allowed")


def _refuse_semantic(_decoder: Any, *_args: Any) -> Any:
    raise RemoteError("cbor_type_unsupported", "CBOR tags are not allowed")


class _NoSemanticTags(Mapping[int, Any]):
    """A ``semantic_decoders`` map that claims every tag number, refusing each one.

    ``tag_hook`` alone is not enough: cbor2 decodes the tags it knows (bignums, datetimes,
    shared and string references ...) itself and never calls the hook for them, so a
    bignum (tag 2) would decode to an int the canonical re-encoding reproduces exactly.
    Claiming every tag refuses all of them as soon as the tag header is read.
    """

    def __getitem__(self, tag: int) -> Any:
        return _refuse_semantic

    def __contains__(self, tag: object) -> bool:
        return True

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0


_NO_SEMANTIC_TAGS: Final = _NoSemanticTags()


def decode(
    data: bytes, *, max_size: int = DEFAULT_MAX_SIZE, max_depth: int = DEFAULT_MAX_DEPTH
) -> Any:
    """Decode untrusted deterministic CBOR strictly; see the module docstring."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise LocalError("decode takes bytes")
    data = bytes(data)
    if len(data) > max_size:
        raise RemoteError("cbor_too_large", f"{len(data)} bytes exceed the bound of {max_size}")
    if not data:
        raise RemoteError("cbor_malformed", "empty input")
    stream = io.BytesIO(data)
    try:
        decoder = cbor2.CBORDecoder(
            stream,
            tag_hook=_refuse_tag,
            semantic_decoders=_NO_SEMANTIC_TAGS,
            max_depth=max_depth + 1,
            allow_indefinite=False,
            allow_duplicate_keys=False,
        )
        value = decoder.decode()
    except RemoteError:
        raise
    except cbor2.CBORDecodeError as exc:
        if isinstance(exc.__cause__, RemoteError):  # our refusal, wrapped by cbor2
            raise exc.__cause__ from None
        raise _classify(exc) from None
    except (ValueError, TypeError, OverflowError, MemoryError, RecursionError, UnicodeError) as exc:
        # cbor2 lets a few of these through on hostile input (huge declared lengths,
        # unhashable map keys); they are malformed input all the same.
        raise RemoteError("cbor_malformed", type(exc).__name__) from None
    if stream.tell() != len(data):
        raise RemoteError("cbor_malformed", f"{len(data) - stream.tell()} trailing bytes")
    key_orders: list[tuple[Any, ...]] = []
    _check_decoded(value, 0, max_depth, key_orders)
    # The canonical re-encoding in two parts (cbor2's canonical mode sorts every map's
    # keys, which costs more than the rest of the decoding): each map's keys must be in
    # canonical order -- decoded maps keep the order of the input -- and the plain
    # encoding, which keeps that order, must give back the same bytes.
    for keys in key_orders:
        _check_key_order(keys)
    if cbor2.dumps(value) != data:
        raise RemoteError("cbor_not_canonical")
    return value


#: Key sequences of maps already found in canonical order (the protocol's maps have a few
#: fixed sets of keys).  Bounded, and only short sequences of short keys are remembered:
#: input that fills it only makes later maps take the slower check.
_CANONICAL_KEY_ORDERS: Final[set[tuple[Any, ...]]] = set()
_KEY_ORDERS_MAX: Final = 1024
_KEY_ORDER_KEYS_MAX: Final = 32
_KEY_ORDER_KEY_LEN_MAX: Final = 64


def _check_key_order(keys: tuple[Any, ...]) -> None:
    if keys in _CANONICAL_KEY_ORDERS:
        return
    # cbor2 decides the order: its canonical encoding of a map with these keys (in this
    # order) is the plain encoding exactly when the keys are already sorted.
    probe = dict.fromkeys(keys)
    if cbor2.dumps(probe, canonical=True) != cbor2.dumps(probe):
        raise RemoteError("cbor_not_canonical", "map keys are not in canonical order")
    if (
        len(_CANONICAL_KEY_ORDERS) < _KEY_ORDERS_MAX
        and len(keys) <= _KEY_ORDER_KEYS_MAX
        and all(type(k) is int or len(k) <= _KEY_ORDER_KEY_LEN_MAX for k in keys)
    ):
        _CANONICAL_KEY_ORDERS.add(keys)


def _classify(exc: cbor2.CBORDecodeError) -> RemoteError:
    text = str(exc)
    lowered = text.lower()
    if "depth" in lowered:
        return RemoteError("cbor_too_deep", text)
    if "duplicate" in lowered:
        return RemoteError("cbor_duplicate_key", text)
    if "indefinite" in lowered:
        return RemoteError("cbor_not_canonical", text)
    return RemoteError("cbor_malformed", text[:200])


def _check_decoded(
    value: Any, depth: int, max_depth: int, key_orders: list[tuple[Any, ...]]
) -> None:
    """Check the types and the depth; collect the key sequence of each map of 2+ keys."""
    if depth > max_depth:
        raise RemoteError("cbor_too_deep")
    kind = type(value)
    if kind in _LEAVES or kind is int:
        return
    if kind is list:
        for item in value:
            t = type(item)
            if (t in _LEAVES or t is int) and depth < max_depth:
                continue
            _check_decoded(item, depth + 1, max_depth, key_orders)
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) not in _KEYS:
                raise RemoteError("cbor_type_unsupported", "map keys must be text or integers")
            t = type(item)
            if (t in _LEAVES or t is int) and depth < max_depth:
                continue
            _check_decoded(item, depth + 1, max_depth, key_orders)
        if len(value) > 1:
            key_orders.append(tuple(value))
        return
    raise RemoteError("cbor_type_unsupported", f"{type(value).__name__} values are not allowed")


#: Unicode category Cc is exactly these code points (C0, DEL and C1 controls).
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROL_NOT_MULTILINE: Final = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def check_text(value: str, *, name: str, max_len: int, multiline: bool = False) -> str:
    """Accept only NFC text without control characters (tabs/newlines if ``multiline``)."""
    if len(value) > max_len:
        raise RemoteError("field_invalid", f"{name} is longer than {max_len} characters")
    if not unicodedata.is_normalized("NFC", value):
        raise RemoteError("text_invalid", f"{name} is not NFC-normalised")
    if (_CONTROL_NOT_MULTILINE if multiline else _CONTROL).search(value):
        raise RemoteError("text_invalid", f"{name} holds a control character")
    return value


def nfc(value: str) -> str:
    """NFC-normalise text before it is sealed: Vietnamese arrives in NFC and NFD alike."""
    return unicodedata.normalize("NFC", value)


class Fields:
    """Typed, strict access to one decoded CBOR map of a known format."""

    __slots__ = ("_map", "_seen", "where")

    def __init__(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise RemoteError("field_invalid", f"{where} must be a map")
        self._map: Mapping[Any, Any] = value
        self._seen: set[Any] = set()
        self.where = where

    def _get(self, key: str, optional: bool) -> Any:
        self._seen.add(key)
        if key not in self._map:
            if optional:
                return None
            raise RemoteError("field_missing", f"{self.where}.{key} is missing")
        return self._map[key]

    def _bad(self, key: str, what: str) -> RemoteError:
        return RemoteError("field_invalid", f"{self.where}.{key} must be {what}")

    def integer(self, key: str, *, lo: int = 0, hi: int = 2**63 - 1) -> int:
        value = self._get(key, False)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self._bad(key, f"an integer from {lo} to {hi}")
        return value

    def opt_integer(self, key: str, *, lo: int = 0, hi: int = 2**63 - 1) -> int | None:
        if key not in self._map:
            self._seen.add(key)
            return None
        return self.integer(key, lo=lo, hi=hi)

    def blob(self, key: str, *, size: int | None = None, max_size: int = 1 << 20) -> bytes:
        value = self._get(key, False)
        if not isinstance(value, bytes):
            raise self._bad(key, "a byte string")
        if size is not None and len(value) != size:
            raise self._bad(key, f"{size} bytes long")
        if len(value) > max_size:
            raise self._bad(key, f"at most {max_size} bytes long")
        return value

    def opt_blob(self, key: str, *, size: int | None = None) -> bytes | None:
        if key not in self._map:
            self._seen.add(key)
            return None
        return self.blob(key, size=size)

    def text(self, key: str, *, max_len: int = 1024, multiline: bool = False) -> str:
        value = self._get(key, False)
        if not isinstance(value, str):
            raise self._bad(key, "text")
        return check_text(value, name=f"{self.where}.{key}", max_len=max_len, multiline=multiline)

    def opt_text(self, key: str, *, max_len: int = 1024, multiline: bool = False) -> str | None:
        if key not in self._map:
            self._seen.add(key)
            return None
        return self.text(key, max_len=max_len, multiline=multiline)

    def choice(self, key: str, options: Iterable[str]) -> str:
        value = self.text(key, max_len=64)
        allowed = tuple(options)
        if value not in allowed:
            raise self._bad(key, "one of " + ", ".join(allowed))
        return value

    def array(self, key: str, *, max_items: int, optional: bool = False) -> list[Any]:
        value = self._get(key, optional)
        if value is None and optional:
            return []
        if not isinstance(value, list):
            raise self._bad(key, "an array")
        if len(value) > max_items:
            raise self._bad(key, f"an array of at most {max_items} items")
        return value

    def opt_map(self, key: str) -> Fields | None:
        value = self._get(key, True)
        if value is None:
            return None
        return Fields(value, f"{self.where}.{key}")

    def map(self, key: str) -> Fields:
        value = self._get(key, False)
        return Fields(value, f"{self.where}.{key}")

    def raw(self, key: str) -> Any:
        return self._get(key, False)

    def opt_raw(self, key: str) -> Any:
        return self._get(key, True)

    def done(self) -> None:
        """Refuse fields the format does not define (no silent extension points)."""
        extra = [k for k in self._map if k not in self._seen]
        if extra:
            raise RemoteError("field_unknown", f"{self.where} has unknown field {extra[0]!r}")


def omit_none(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Drop absent optional fields: an absent field has exactly one encoding, no key."""
    return {k: v for k, v in fields.items() if v is not None}
