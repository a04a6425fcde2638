"""Receipts and delivery status: what offices and the hub sign about a packet.

Two layers (DESIGN.md §4), both signed and both logged:

* **Office receipts** (:class:`OfficeReceipt`), signed under :data:`signed.CTX_RECEIPT` by
  the organ a status belongs to: the *recipient* for 01-06, 15 and 16, the packet's
  *sender* for 13 (recall requested).  They name the packet id and the envelope digest
  (SHA-256 of the envelope body bytes, :attr:`Envelope.digest`), so a receipt can never be
  moved to another packet, nor to another version of the same packet id.
* **Hub receipts** (:class:`HubReceipt`), signed under :data:`signed.CTX_HUB_RECEIPT` by the
  hub's key: ``accepted`` (the sender's upload is stored and logged) and ``fetched`` (a
  recipient downloaded the body), each with the audit-log index of the event.

Per (packet, recipient) a :class:`Delivery` runs the status state machine over an
append-only history; see :data:`TRANSITIONS`.

Wire format: deterministic CBOR bodies inside the :mod:`protocol.signed` container, parsed
strictly (bounded size, no unknown fields, NFC text).  Times are integer Unix seconds, UTC.
"""

from __future__ import annotations

import bisect
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, NamedTuple

from . import signed
from .codec import Fields, check_text, decode, encode, nfc, omit_none
from .directory import ORGAN_CODE_MAX, DirectoryEntry, check_organ_code
from .errors import LocalError, RemoteError
from .keys import KID_SIZE, SigningPrivateKey, SigningPublicKey
from .packet import Envelope, check_packet_id

__all__ = [
    "DETAILS_MAX_ITEMS",
    "DETAIL_VALUE_MAX",
    "HISTORY_MAX",
    "HUB_KINDS",
    "INCOMING_NUMBER",
    "MAX_CLOCK_SKEW",
    "PENDING",
    "PREVIOUS",
    "REASON_MAX",
    "RECALLED",
    "RECEIPT_MAX",
    "STATES",
    "STATUS",
    "TERMINAL",
    "TRANSITIONS",
    "Delivery",
    "HubReceipt",
    "OfficeReceipt",
    "ParsedHubReceipt",
    "ParsedReceipt",
    "Status",
    "Step",
    "parse_hub_receipt",
    "parse_office_receipt",
    "sign_hub_receipt",
    "sign_office_receipt",
    "verify_hub_receipt",
    "verify_office_receipt",
]

VERSION: Final = 1

#: Largest receipt container accepted.  A receipt is a few hundred bytes; a hybrid
#: signature adds ~3.3 KiB; the details and reason bounds keep it far below this.
RECEIPT_MAX: Final = 64 * 1024
REASON_MAX: Final = 2000
DETAILS_MAX_ITEMS: Final = 16
DETAIL_VALUE_MAX: Final = 512
_DETAIL_KEY_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")

#: How far a receipt's own time may run ahead of the verifier's clock (``received_at``).
MAX_CLOCK_SKEW: Final = 300


# --- status codes --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Status:
    """One status code of the national exchange format, as Lienthong uses it."""

    code: str
    vi: str
    en: str
    by_sender: bool = False
    reason_required: bool = False


#: The status codes (QCVN 102:2016 numbering).  Only 13 is signed by the packet's sender;
#: every other code by the recipient organ the delivery is about.
STATUS: Final[Mapping[str, Status]] = {
    s.code: s
    for s in (
        Status("01", "đã đến", "received"),
        Status("02", "từ chối tiếp nhận", "rejected", reason_required=True),
        Status("03", "đã tiếp nhận", "registered"),
        Status("04", "phân công", "assigned"),
        Status("05", "đang xử lý", "in progress"),
        Status("06", "hoàn thành", "completed"),
        Status("13", "yêu cầu thu hồi", "recall requested", by_sender=True, reason_required=True),
        Status("15", "đồng ý thu hồi", "recall accepted"),
        Status("16", "từ chối thu hồi", "recall refused", reason_required=True),
    )
}

#: Details key that a 03 (registered) receipt must carry: the incoming number (số đến).
INCOMING_NUMBER: Final = "incoming_number"


def _status(code: str) -> Status:
    found = STATUS.get(code)
    if found is None:
        raise RemoteError(
            "status_code_unknown", f"status {code[:16]!r} is not one of {', '.join(STATUS)}"
        )
    return found


# --- office receipts -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OfficeReceipt:
    """A status an office signs about one delivery (one packet to one recipient organ).

    ``organ`` is the recipient the delivery is about; ``signer`` is the organ that speaks:
    the same organ, except for 13 (recall requested) which the packet's sender signs.
    ``details`` is a small map of text to text, e.g. ``{"incoming_number": "125",
    "assignee": "Phòng Tổng hợp"}``; a 03 receipt must carry ``incoming_number``.
    """

    packet_id: bytes
    envelope_digest: bytes
    organ: str
    signer: str
    signer_kid: bytes
    status: str
    at: int
    reason: str | None = None
    details: Mapping[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The Vietnamese label of the status (for registers and the CLI)."""
        return _status(self.status).vi

    def normalised(self) -> OfficeReceipt:
        """NFC everywhere: clerks' systems hand us NFC and NFD alike."""
        return replace(
            self,
            reason=None if self.reason is None else nfc(self.reason),
            details={k: nfc(v) for k, v in self.details.items()},
        )

    def to_cbor(self) -> dict[str, Any]:
        return omit_none(
            {
                "v": VERSION,
                "packet": self.packet_id,
                "envelope": self.envelope_digest,
                "organ": self.organ,
                "signer": {"organ": self.signer, "kid": self.signer_kid},
                "status": self.status,
                "at": self.at,
                "reason": self.reason,
                # An empty map is omitted: an absent field has exactly one encoding.
                "details": dict(self.details) if self.details else None,
            }
        )

    @classmethod
    def from_cbor(cls, value: Any) -> OfficeReceipt:
        f = Fields(value, "receipt")
        if f.integer("v") != VERSION:
            raise RemoteError("version_unsupported", "receipt version")
        packet_id = check_packet_id(f.blob("packet", size=16))
        digest = f.blob("envelope", size=32)
        organ = check_organ_code(f.text("organ", max_len=ORGAN_CODE_MAX))
        s = f.map("signer")
        signer = check_organ_code(s.text("organ", max_len=ORGAN_CODE_MAX))
        signer_kid = s.blob("kid", size=KID_SIZE)
        s.done()
        status = _status(f.text("status", max_len=16))
        at = f.integer("at")
        reason = f.opt_text("reason", max_len=REASON_MAX, multiline=True)
        details_f = f.opt_raw("details")
        details = _details(details_f) if details_f is not None else {}
        f.done()
        if reason is not None and not reason.strip():
            if status.reason_required:
                raise RemoteError(
                    "reason_required", f"status {status.code} ({status.en}) needs a reason"
                )
            raise RemoteError("field_invalid", "receipt.reason is blank: omit it instead")
        if status.reason_required and reason is None:
            raise RemoteError(
                "reason_required", f"status {status.code} ({status.en}) needs a reason"
            )
        if status.code == "03" and INCOMING_NUMBER not in details:
            # The incoming number (số đến) is what a registration *is*; auditors match
            # it against the register, so a 03 without it says nothing checkable.
            raise RemoteError(
                "field_missing", "receipt.details.incoming_number is required for status 03"
            )
        return cls(
            packet_id=packet_id,
            envelope_digest=digest,
            organ=organ,
            signer=signer,
            signer_kid=signer_kid,
            status=status.code,
            at=at,
            reason=reason,
            details=details,
        )


def _details(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise RemoteError("field_invalid", "receipt.details must be a map")
    if not value:
        raise RemoteError("field_invalid", "receipt.details is empty: omit it instead")
    if len(value) > DETAILS_MAX_ITEMS:
        raise RemoteError(
            "field_invalid", f"receipt.details holds more than {DETAILS_MAX_ITEMS} items"
        )
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or _DETAIL_KEY_RE.fullmatch(key) is None:
            raise RemoteError("field_invalid", "receipt.details keys must be lowercase names")
        if not isinstance(item, str):
            raise RemoteError("field_invalid", f"receipt.details.{key} must be text")
        out[key] = check_text(item, name=f"receipt.details.{key}", max_len=DETAIL_VALUE_MAX)
    return out


@dataclass(frozen=True, slots=True)
class ParsedReceipt:
    """A parsed, not yet verified office receipt and the container it came in."""

    receipt: OfficeReceipt
    container: signed.Signed

    @property
    def digest(self) -> bytes:
        """SHA-256 of the signed body: the receipt's identity in the audit log."""
        return self.container.digest

    @property
    def raw(self) -> bytes:
        return self.container.raw


def sign_office_receipt(receipt: OfficeReceipt, key: SigningPrivateKey) -> bytes:
    """NFC-normalise, check and sign a receipt; returns the container bytes.

    The body is parsed back before signing, so we never sign what we would refuse to read.
    """
    if receipt.signer_kid != key.kid:
        raise LocalError("the receipt names another signing key than the one given")
    body = encode(receipt.normalised().to_cbor())
    try:
        OfficeReceipt.from_cbor(decode(body, max_size=RECEIPT_MAX, max_depth=2))
    except RemoteError as exc:
        raise LocalError(f"refusing to sign an invalid receipt: {exc}") from None
    return signed.sign(key, signed.CTX_RECEIPT, body)


def parse_office_receipt(data: bytes) -> ParsedReceipt:
    """Strictly parse an office receipt container (no signature check yet)."""
    container = signed.parse(data, max_size=RECEIPT_MAX, where="receipt")
    receipt = OfficeReceipt.from_cbor(decode(container.body, max_size=RECEIPT_MAX, max_depth=2))
    return ParsedReceipt(receipt, container)


def _check_binding(
    packet_id: bytes,
    digest: bytes,
    *,
    envelope: Envelope | None,
    expected_packet_id: bytes | None,
    expected_digest: bytes | None,
) -> None:
    """The receipt must name the packet and the exact envelope the verifier has in mind."""
    if envelope is None and (expected_packet_id is None or expected_digest is None):
        # A receipt not tied to a known envelope proves nothing: refuse to "verify" it.
        raise LocalError("give the envelope, or both the packet id and the envelope digest")
    for want_id in (envelope.packet_id if envelope else None, expected_packet_id):
        if want_id is not None and not hmac.compare_digest(want_id, packet_id):
            raise RemoteError("receipt_envelope_mismatch", "the receipt names another packet id")
    for want_digest in (envelope.digest if envelope else None, expected_digest):
        if want_digest is not None and not hmac.compare_digest(want_digest, digest):
            raise RemoteError(
                "receipt_envelope_mismatch", "the receipt names another envelope digest"
            )


def verify_office_receipt(
    data: bytes | ParsedReceipt,
    signer_entry: DirectoryEntry,
    *,
    envelope: Envelope | None = None,
    packet_id: bytes | None = None,
    envelope_digest: bytes | None = None,
    sender: str | None = None,
    received_at: int | None = None,
) -> OfficeReceipt:
    """Verify an office receipt against the packet it is about and its signer's entry.

    Give the ``envelope`` (the hub and the sender have it), or ``packet_id`` and
    ``envelope_digest`` (an auditor's proof bundle); for a 13 without the envelope, also
    the packet's ``sender``.  ``signer_entry`` must already be verified against the
    directory authority (:func:`protocol.directory.verify_entry`).

    Checks, in order: the receipt names this packet and envelope
    (``receipt_envelope_mismatch``) and, with the envelope, an addressed recipient
    (``recipient_not_addressed``); the signer is the organ the status belongs to
    (``receipt_signer_mismatch``); the entry is the signer's (``organ_mismatch``) and valid
    (``organ_not_valid``); the signing key is the signer's and valid at the receipt's time
    (``key_*``); the signature (``signature_invalid``, ``hybrid_signature_missing``).

    ``received_at`` is the verifier's clock when the receipt arrived (the hub passes it):
    then the key must be valid at that time too -- a revoked key cannot sign a backdated
    receipt -- and the receipt may not claim a time more than :data:`MAX_CLOCK_SKEW`
    seconds in the future.
    """
    parsed = data if isinstance(data, ParsedReceipt) else parse_office_receipt(data)
    r = parsed.receipt
    _check_binding(
        r.packet_id,
        r.envelope_digest,
        envelope=envelope,
        expected_packet_id=packet_id,
        expected_digest=envelope_digest,
    )
    if envelope is not None:
        envelope.stanza(r.organ)
    status = _status(r.status)
    if status.by_sender:
        packet_sender = envelope.sender if envelope is not None else sender
        if packet_sender is None:
            raise LocalError("verifying a recall request needs the envelope or its sender")
        if envelope is not None and sender is not None and sender != envelope.sender:
            raise LocalError("the sender given differs from the envelope's sender")
        if r.signer != packet_sender:
            raise RemoteError(
                "receipt_signer_mismatch",
                f"status {r.status} is signed by the sender {packet_sender}, not by {r.signer}",
            )
    elif r.signer != r.organ:
        raise RemoteError(
            "receipt_signer_mismatch",
            f"status {r.status} about {r.organ} is signed by {r.signer}, not by {r.organ} itself",
        )
    if signer_entry.organ != r.signer:
        raise RemoteError(
            "organ_mismatch", f"entry is for {signer_entry.organ}, the signer is {r.signer}"
        )
    signer_entry.check_valid(r.at)
    key = signer_entry.signing_key(r.signer_kid, r.at)
    if received_at is not None:
        if r.at > received_at + MAX_CLOCK_SKEW:
            raise RemoteError(
                "field_invalid", f"receipt time {r.at} is ahead of the clock ({received_at})"
            )
        signer_entry.signing_key(r.signer_kid, received_at)
    parsed.container.verify(key, signed.CTX_RECEIPT)
    return r


# --- hub receipts --------------------------------------------------------------------

#: ``accepted``: the hub stored and logged the sender's packet; ``fetched``: a recipient
#: downloaded the body.
HUB_KINDS: Final = ("accepted", "fetched")
_HUB_ORGAN_FIELD: Final = {"accepted": "sender", "fetched": "recipient"}


@dataclass(frozen=True, slots=True)
class HubReceipt:
    """What the hub attests about a packet, with the audit-log index of the event.

    ``organ`` is the sender for ``accepted`` and the recipient for ``fetched``; on the wire
    the field is named ``sender`` or ``recipient`` accordingly, so the bytes say which.
    """

    kind: str
    packet_id: bytes
    envelope_digest: bytes
    organ: str
    at: int
    log_index: int

    def to_cbor(self, hub_kid: bytes) -> dict[str, Any]:
        if self.kind not in HUB_KINDS:
            raise LocalError(f"hub receipt kind {self.kind!r}")
        return {
            "v": VERSION,
            "kind": self.kind,
            "packet": self.packet_id,
            "envelope": self.envelope_digest,
            _HUB_ORGAN_FIELD[self.kind]: self.organ,
            "at": self.at,
            "log_index": self.log_index,
            "hub": hub_kid,
        }

    @classmethod
    def from_cbor(cls, value: Any) -> tuple[HubReceipt, bytes]:
        f = Fields(value, "hub receipt")
        if f.integer("v") != VERSION:
            raise RemoteError("version_unsupported", "hub receipt version")
        kind = f.choice("kind", HUB_KINDS)
        receipt = cls(
            kind=kind,
            packet_id=check_packet_id(f.blob("packet", size=16)),
            envelope_digest=f.blob("envelope", size=32),
            organ=check_organ_code(f.text(_HUB_ORGAN_FIELD[kind], max_len=ORGAN_CODE_MAX)),
            at=f.integer("at"),
            log_index=f.integer("log_index"),
        )
        hub_kid = f.blob("hub", size=KID_SIZE)
        f.done()
        return receipt, hub_kid


@dataclass(frozen=True, slots=True)
class ParsedHubReceipt:
    """A parsed, not yet verified hub receipt, the hub key id it names, and its container."""

    receipt: HubReceipt
    hub_kid: bytes
    container: signed.Signed

    @property
    def digest(self) -> bytes:
        return self.container.digest


def sign_hub_receipt(receipt: HubReceipt, key: SigningPrivateKey) -> bytes:
    """Sign a hub receipt with the hub's key (its key id goes in the body)."""
    body = encode(receipt.to_cbor(key.kid))
    try:
        HubReceipt.from_cbor(decode(body, max_size=RECEIPT_MAX, max_depth=1))
    except RemoteError as exc:
        raise LocalError(f"refusing to sign an invalid hub receipt: {exc}") from None
    return signed.sign(key, signed.CTX_HUB_RECEIPT, body)


def parse_hub_receipt(data: bytes) -> ParsedHubReceipt:
    """Strictly parse a hub receipt container (no signature check yet)."""
    container = signed.parse(data, max_size=RECEIPT_MAX, where="hub receipt")
    receipt, hub_kid = HubReceipt.from_cbor(
        decode(container.body, max_size=RECEIPT_MAX, max_depth=1)
    )
    return ParsedHubReceipt(receipt, hub_kid, container)


def verify_hub_receipt(
    data: bytes | ParsedHubReceipt,
    hub_key: SigningPublicKey,
    *,
    envelope: Envelope | None = None,
    packet_id: bytes | None = None,
    envelope_digest: bytes | None = None,
    kind: str | None = None,
) -> HubReceipt:
    """Verify a hub receipt with the pinned hub key, for the packet the verifier means.

    ``key_unknown`` if it names another hub key, ``signature_invalid`` (or
    ``hybrid_signature_missing``) if the signature fails, ``receipt_envelope_mismatch``
    for another packet, envelope or (``accepted``) sender, ``recipient_not_addressed`` for
    a ``fetched`` by an organ the envelope does not address, ``field_invalid`` if ``kind``
    is given and differs.
    """
    if kind is not None and kind not in HUB_KINDS:
        raise LocalError(f"hub receipt kind {kind!r}")
    parsed = data if isinstance(data, ParsedHubReceipt) else parse_hub_receipt(data)
    r = parsed.receipt
    if not hmac.compare_digest(parsed.hub_kid, hub_key.kid):
        raise RemoteError(
            "key_unknown", f"hub receipt names key {parsed.hub_kid.hex()[:16]}, not the hub's key"
        )
    parsed.container.verify(hub_key, signed.CTX_HUB_RECEIPT)
    _check_binding(
        r.packet_id,
        r.envelope_digest,
        envelope=envelope,
        expected_packet_id=packet_id,
        expected_digest=envelope_digest,
    )
    if kind is not None and r.kind != kind:
        raise RemoteError("field_invalid", f"expected a hub receipt of kind {kind}, got {r.kind}")
    if envelope is not None:
        if r.kind == "accepted" and r.organ != envelope.sender:
            raise RemoteError(
                "receipt_envelope_mismatch",
                f"accepted from {r.organ}, the envelope's sender is {envelope.sender}",
            )
        if r.kind == "fetched":
            envelope.stanza(r.organ)
    return r


# --- the delivery state machine ------------------------------------------------------

PENDING: Final = "pending"
RECALLED: Final = "recalled"
#: Target of 16 (recall refused): the state the delivery was in before the 13.
PREVIOUS: Final = "previous"

#: ``TRANSITIONS[state][status]`` is the state after ``status``; a missing pair is
#: ``transition_invalid``.  States are ``pending`` (accepted by the hub, no office
#: receipt yet), the status codes reached so far, ``13`` (a recall is pending) and
#: ``recalled``::
#:
#:     state     | allowed statuses -> new state
#:     ----------+-------------------------------------------------------------
#:     pending   | 01 02 03 04 05 06 13 -> same code
#:     01        | 02 03 04 05 06 13    -> same code
#:     03        | 04 05 06 13          -> same code
#:     04        | 04 05 06 13          -> same code   (04 again: re-assigned)
#:     05        | 05 06 13             -> same code   (05 again: progress update)
#:     06        | 13                   -> 13
#:     13        | 15 -> recalled, 16 -> the state before the 13
#:     02        | (terminal: rejected)
#:     recalled  | (terminal)
#:
#: Why: progress 01 → 03 → 04 → 05 → 06 only moves forward, but any step may be skipped,
#: because a receipt can be lost or a document system may report only some codes.
#: 04 may repeat (the leader re-assigns the handler before work starts; a re-assignment
#: once work is under way is a 05 naming the new assignee in its details).  02 refuses
#: the document, so it is possible only before registration (pending, 01): a registered
#: document is in the register and is handled, not rejected.  13 is the sender's, and is
#: allowed from every non-terminal state *including 06*: a completed document can still be
#: recalled -- a document issued in error or superseded must be withdrawn from the
#: recipient's register and files even after it was handled (the recipient answers 15 and
#: annuls it, or 16 with its reason).  While a recall is pending only the recipient's
#: answer (15 or 16) is accepted; a second 13 is ``transition_invalid``.
TRANSITIONS: Final[Mapping[str, Mapping[str, str]]] = {
    PENDING: {"01": "01", "02": "02", "03": "03", "04": "04", "05": "05", "06": "06", "13": "13"},
    "01": {"02": "02", "03": "03", "04": "04", "05": "05", "06": "06", "13": "13"},
    "03": {"04": "04", "05": "05", "06": "06", "13": "13"},
    "04": {"04": "04", "05": "05", "06": "06", "13": "13"},
    "05": {"05": "05", "06": "06", "13": "13"},
    "06": {"13": "13"},
    "13": {"15": RECALLED, "16": PREVIOUS},
    "02": {},
    RECALLED: {},
}
STATES: Final = tuple(TRANSITIONS)
#: Most statuses one delivery keeps: real ones hold a handful (05 may repeat); the bound
#: keeps a peer from growing one without limit.
HISTORY_MAX: Final = 1000
TERMINAL: Final = frozenset({"02", RECALLED})


class Step(NamedTuple):
    """One entry of a delivery's history: a status and the time the receipt states."""

    status: str
    at: int


def _describe(state: str) -> str:
    if state in STATUS:
        return f"{state} ({STATUS[state].en})"
    return state


def _transition(state: str, before_recall: str | None, status: str) -> tuple[str, str | None]:
    """One step of the machine: (new state, state to restore on 16) or transition_invalid."""
    target = TRANSITIONS[state].get(status)
    if target is None:
        raise RemoteError(
            "transition_invalid", f"cannot go from {_describe(state)} to {_describe(status)}"
        )
    if target == PREVIOUS:
        if before_recall is None:  # the 13 that led here always records it
            raise LocalError("recall pending without a state to return to")
        return before_recall, None
    if target == "13":
        return target, state
    return target, before_recall


class Delivery:
    """The status of one packet at one recipient organ, with its append-only history.

    Starts ``pending`` (accepted by the hub, no office receipt yet).  :meth:`apply` takes
    one status; see :data:`TRANSITIONS` for what may follow what.

    Receipts can arrive out of order (the e-mail fallback, a node that was offline), and
    each states its own time.  A receipt whose time is not earlier than the latest one is
    a plain transition.  An earlier one is a *late arrival*: it is accepted when the
    history ordered by time (ties keep arrival order) still replays through the table --
    a 03 (with its incoming number) that arrives after the 04 is recorded, not lost -- and
    refused with ``transition_invalid`` otherwise.  The state is always that of the
    time-ordered replay; :attr:`history` keeps arrival order and is only appended to.
    Duplicate receipts (the same bytes twice) are the caller's to drop, by receipt digest,
    before they get here.
    """

    __slots__ = ("_before_recall", "_history", "_last_at", "_state", "organ", "packet_id")

    def __init__(self, packet_id: bytes | None = None, organ: str | None = None) -> None:
        self.packet_id = packet_id
        self.organ = organ
        self._state: str = PENDING
        self._before_recall: str | None = None
        self._history: list[Step] = []
        self._last_at: int | None = None

    @classmethod
    def replay(
        cls,
        steps: Iterable[tuple[str, int]],
        *,
        packet_id: bytes | None = None,
        organ: str | None = None,
    ) -> Delivery:
        """Rebuild a delivery from a stored history (arrival order, as :attr:`history`)."""
        delivery = cls(packet_id, organ)
        for status, at in steps:
            delivery.apply(status, STATUS[status].by_sender if status in STATUS else False, at)
        return delivery

    @property
    def state(self) -> str:
        return self._state

    @property
    def history(self) -> tuple[Step, ...]:
        """Every accepted status in arrival order."""
        return tuple(self._history)

    @property
    def timeline(self) -> tuple[Step, ...]:
        """The history ordered by the receipts' own times (ties in arrival order)."""
        return tuple(sorted(self._history, key=lambda s: s.at))

    @property
    def terminal(self) -> bool:
        return self._state in TERMINAL

    @property
    def recall_pending(self) -> bool:
        return self._state == "13"

    def apply(self, status: str, by_sender: bool, at: int) -> str:
        """Apply one status signed by the packet's sender (``by_sender``) or the recipient.

        Returns the new state.  ``status_code_unknown`` for an unknown code,
        ``receipt_signer_mismatch`` if the wrong party speaks (13 is the sender's, every
        other code the recipient's), ``transition_invalid`` if the status cannot follow.
        """
        info = _status(status)
        if by_sender != info.by_sender:
            party = "the sender" if info.by_sender else "the recipient"
            raise RemoteError(
                "receipt_signer_mismatch", f"status {status} ({info.en}) is given by {party} only"
            )
        if len(self._history) >= HISTORY_MAX:
            raise RemoteError(
                "size_limit_exceeded", f"a delivery keeps at most {HISTORY_MAX} statuses"
            )
        step = Step(status, at)
        if self._last_at is None or at >= self._last_at:
            self._state, self._before_recall = _transition(self._state, self._before_recall, status)
            self._last_at = at
        else:
            timeline = self.timeline
            pos = bisect.bisect_right([s.at for s in timeline], at)
            state: str = PENDING
            before: str | None = None
            try:
                for s in (*timeline[:pos], step, *timeline[pos:]):
                    state, before = _transition(state, before, s.status)
            except RemoteError as exc:
                raise RemoteError(
                    "transition_invalid",
                    f"status {status} at {at} arrived after later receipts and does not fit: {exc.detail}",
                ) from None
            self._state, self._before_recall = state, before
        self._history.append(step)
        return self._state

    def apply_receipt(self, receipt: OfficeReceipt) -> str:
        """Apply a *verified* office receipt about this delivery."""
        if self.packet_id is not None and receipt.packet_id != self.packet_id:
            raise RemoteError("receipt_envelope_mismatch", "the receipt is about another packet")
        if self.organ is not None and receipt.organ != self.organ:
            raise RemoteError(
                "organ_mismatch", f"the receipt is about {receipt.organ}, not {self.organ}"
            )
        # Verification already matched the signer to the status; a routing policy refuses
        # packets to oneself, so "signed by someone other than the recipient" is the sender.
        return self.apply(receipt.status, receipt.signer != receipt.organ, receipt.at)
