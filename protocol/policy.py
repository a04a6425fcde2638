"""Deployment policy the hub applies to a packet before accepting or forwarding it.

* :class:`Urgency` and :class:`Secrecy`: the national codes for độ khẩn (0-4) and độ mật
  (0-3), with their Vietnamese labels and the names the CLI accepts.
* :class:`SecrecyPolicy`: which declared secrecy levels this deployment carries.  State
  secrets may not travel over internet-connected systems except under the cipher agency's
  rules, and Tối mật / Tuyệt mật go by that agency's own channel only, so those two are
  refused whatever a deployment lists; nothing classified ever goes by e-mail.
* :class:`RoutePolicy`: who may send to whom along the organ tree.
* :class:`SizeLimits`: envelope size, body size and recipient count.
* :func:`check_packet`: all of the above on one envelope, in a fixed order.
* :func:`handling_deadline`: when an incoming document should have been handled, by its
  urgency; the auditors' lateness reports use it.

Every refusal of a peer's packet is a :class:`RemoteError` with a stable code; a
misconfigured policy (our own fault) is a :class:`LocalError`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from enum import IntEnum
from typing import Final, Protocol

from .directory import check_organ_code
from .errors import LocalError, RemoteError
from .packet import ENVELOPE_MAX, MAX_RECIPIENTS, Envelope

__all__ = [
    "DEFAULT_ROUTE_RULES",
    "ROUTE_RULES",
    "TRANSPORTS",
    "TREE_DEPTH_MAX",
    "URGENT_WINDOW",
    "VN_TZ",
    "WORKDAY_END",
    "OrganTree",
    "RoutePolicy",
    "Secrecy",
    "SecrecyPolicy",
    "SizeLimits",
    "Urgency",
    "check_packet",
    "handling_deadline",
]

TRANSPORTS: Final = ("http", "email")


# --- urgency and secrecy -------------------------------------------------------------


class Urgency(IntEnum):
    """Độ khẩn, coded as in the national exchange format."""

    THUONG = 0
    KHAN = 1
    THUONG_KHAN = 2
    HOA_TOC = 3
    HOA_TOC_HEN_GIO = 4

    @property
    def cli_name(self) -> str:
        return _URGENCY_NAMES[self][0]

    @property
    def label(self) -> str:
        """The Vietnamese label, as printed on the document."""
        return _URGENCY_NAMES[self][1]

    @classmethod
    def from_name(cls, name: str) -> Urgency:
        """Parse a CLI name (``thuong``, ``khan``, ``thuong-khan``, ``hoa-toc``, ``hoa-toc-hen-gio``)."""
        for member, (cli, _label) in _URGENCY_NAMES.items():
            if name == cli:
                return member
        raise LocalError(
            f"urgency {name!r}: use one of {', '.join(n for n, _ in _URGENCY_NAMES.values())}"
        )


_URGENCY_NAMES: Final = {
    Urgency.THUONG: ("thuong", "thường"),
    Urgency.KHAN: ("khan", "khẩn"),
    Urgency.THUONG_KHAN: ("thuong-khan", "thượng khẩn"),
    Urgency.HOA_TOC: ("hoa-toc", "hỏa tốc"),
    Urgency.HOA_TOC_HEN_GIO: ("hoa-toc-hen-gio", "hỏa tốc hẹn giờ"),
}


class Secrecy(IntEnum):
    """Độ mật, coded 0-3 as in the envelope's routing fields."""

    NONE = 0
    MAT = 1
    TOI_MAT = 2
    TUYET_MAT = 3

    @property
    def cli_name(self) -> str:
        return _SECRECY_NAMES[self][0]

    @property
    def label(self) -> str:
        return _SECRECY_NAMES[self][1]

    @classmethod
    def from_name(cls, name: str) -> Secrecy:
        """Parse a CLI name (``none``, ``mat``, ``toi-mat``, ``tuyet-mat``)."""
        for member, (cli, _label) in _SECRECY_NAMES.items():
            if name == cli:
                return member
        raise LocalError(
            f"secrecy {name!r}: use one of {', '.join(n for n, _ in _SECRECY_NAMES.values())}"
        )


_SECRECY_NAMES: Final = {
    Secrecy.NONE: ("none", "không mật"),
    Secrecy.MAT: ("mat", "Mật"),
    Secrecy.TOI_MAT: ("toi-mat", "Tối mật"),
    Secrecy.TUYET_MAT: ("tuyet-mat", "Tuyệt mật"),
}

#: Levels that go by the cipher agency's own channel only, never through this system.
_NEVER: Final = frozenset({Secrecy.TOI_MAT, Secrecy.TUYET_MAT})


def _secrecy(level: int) -> Secrecy:
    try:
        return Secrecy(level)
    except ValueError:
        raise RemoteError("field_invalid", f"secrecy level {level} is not 0-3") from None


@dataclass(frozen=True, slots=True)
class SecrecyPolicy:
    """Which declared secrecy levels this deployment accepts; unclassified only by default.

    A deployment may add Mật (under the cipher agency's rules); listing Tối mật or
    Tuyệt mật is a configuration error, refused at construction.
    """

    allowed: frozenset[Secrecy] = frozenset({Secrecy.NONE})

    def __post_init__(self) -> None:
        try:
            levels = frozenset(Secrecy(level) for level in self.allowed)
        except ValueError as exc:
            raise LocalError(f"secrecy policy: {exc}") from None
        never = levels & _NEVER
        if never:
            names = ", ".join(s.label for s in sorted(never))
            raise LocalError(
                f"secrecy policy: {names} documents go by the cipher agency's channel only"
            )
        object.__setattr__(self, "allowed", levels)

    def check(self, level: int, transport: str = "http") -> Secrecy:
        """Refuse a level this deployment does not carry over ``transport``.

        Order: Tối mật / Tuyệt mật (``secrecy_refused``, always), a level this deployment
        does not list (``secrecy_refused``), then anything classified by e-mail
        (``secrecy_not_by_email``) -- so the refusal names the reason that sending it by
        HTTP instead would not cure first.
        """
        if transport not in TRANSPORTS:
            raise LocalError(f"transport {transport!r}")
        secrecy = _secrecy(level)
        if secrecy in _NEVER:
            raise RemoteError(
                "secrecy_refused",
                f"{secrecy.label} documents go by the cipher agency's channel, not through this hub",
            )
        if secrecy not in self.allowed:
            raise RemoteError(
                "secrecy_refused", f"this deployment does not carry {secrecy.label} documents"
            )
        if transport == "email" and secrecy != Secrecy.NONE:
            raise RemoteError(
                "secrecy_not_by_email", f"{secrecy.label} documents never travel by e-mail"
            )
        return secrecy


# --- routes --------------------------------------------------------------------------


class OrganTree(Protocol):
    """The organ tree as the route policy sees it: each organ's parent, if any."""

    def parent_of(self, code: str) -> str | None: ...


#: The rules a route policy may combine.  ``parent``/``children`` are one level up/down,
#: ``ancestors``/``descendants`` any number of levels, ``siblings`` share a parent,
#: ``any`` allows every pair of distinct organs.
ROUTE_RULES: Final = frozenset(
    {"parent", "children", "siblings", "ancestors", "descendants", "any"}
)
#: Every line of the tree up and down, and neighbours under one parent; not "cousins".
DEFAULT_ROUTE_RULES: Final = frozenset(
    {"parent", "children", "siblings", "ancestors", "descendants"}
)
#: Longest parent chain followed.  The tree has any depth, but real ones have a handful
#: of levels; the bound and a visited set keep a corrupt (cyclic) tree from hanging us.
TREE_DEPTH_MAX: Final = 64


def _ancestors(tree: OrganTree, code: str) -> list[str]:
    """The chain of parents of ``code``, nearest first; stops at a cycle or the bound."""
    out: list[str] = []
    seen = {code}
    current = tree.parent_of(code)
    while current is not None and current not in seen and len(out) < TREE_DEPTH_MAX:
        out.append(current)
        seen.add(current)
        current = tree.parent_of(current)
    return out


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """Who may send to whom, as a set of :data:`ROUTE_RULES`; allowed if any rule matches.

    Sending to oneself is always refused (``route_not_allowed``), even under ``any``: it is
    not an exchange (an office files its own copy locally), and it would make the packet's
    sender and recipient one organ, so a recall request (signed by the sender) could not be
    told from the recipient's own receipts.
    """

    rules: frozenset[str] = DEFAULT_ROUTE_RULES

    def __post_init__(self) -> None:
        rules = frozenset(self.rules)
        unknown = rules - ROUTE_RULES
        if unknown:
            raise LocalError(f"route rules {sorted(unknown)}: use {', '.join(sorted(ROUTE_RULES))}")
        object.__setattr__(self, "rules", rules)

    def allows(self, sender: str, recipient: str, tree: OrganTree) -> bool:
        if sender == recipient:
            return False
        if "any" in self.rules:
            return True
        sender_parent = tree.parent_of(sender)
        recipient_parent = tree.parent_of(recipient)
        if "parent" in self.rules and sender_parent == recipient:
            return True
        if "children" in self.rules and recipient_parent == sender:
            return True
        if (
            "siblings" in self.rules
            and sender_parent is not None
            and sender_parent == recipient_parent
        ):
            return True
        if "ancestors" in self.rules and recipient in _ancestors(tree, sender):
            return True
        return "descendants" in self.rules and sender in _ancestors(tree, recipient)

    def check(self, sender: str, recipient: str, tree: OrganTree) -> None:
        """Raise ``route_not_allowed`` naming both organs unless a rule allows the route."""
        check_organ_code(sender)
        check_organ_code(recipient)
        if sender == recipient:
            raise RemoteError("route_not_allowed", f"{sender} cannot send a packet to itself")
        if not self.allows(sender, recipient, tree):
            rules = ", ".join(sorted(self.rules)) or "none"
            raise RemoteError(
                "route_not_allowed",
                f"{sender} may not send to {recipient} (allowed routes: {rules})",
            )


# --- sizes ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SizeLimits:
    """This deployment's bounds: envelope bytes, body ciphertext bytes, recipients."""

    envelope_max: int = ENVELOPE_MAX
    body_max: int = 1 << 30
    recipients_max: int = MAX_RECIPIENTS

    def __post_init__(self) -> None:
        for name in ("envelope_max", "body_max", "recipients_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LocalError(f"size limit {name} must be a positive integer")

    def check_envelope(self, envelope: Envelope) -> None:
        """Raise ``size_limit_exceeded`` when the envelope passes any bound."""
        if len(envelope.raw) > self.envelope_max:
            raise RemoteError(
                "size_limit_exceeded",
                f"envelope of {len(envelope.raw)} bytes exceeds {self.envelope_max}",
            )
        if envelope.body_info.size > self.body_max:
            raise RemoteError(
                "size_limit_exceeded",
                f"body of {envelope.body_info.size} bytes exceeds {self.body_max}",
            )
        if len(envelope.recipients) > self.recipients_max:
            raise RemoteError(
                "size_limit_exceeded",
                f"{len(envelope.recipients)} recipients exceed {self.recipients_max}",
            )


def check_packet(
    envelope: Envelope,
    tree: OrganTree,
    secrecy_policy: SecrecyPolicy,
    route_policy: RoutePolicy,
    transport: str = "http",
    limits: SizeLimits | None = None,
) -> None:
    """Every policy check on one parsed envelope, cheapest and most general first.

    Order: the routing fields are consistent (``routing_invalid``), the sizes
    (``size_limit_exceeded``), the declared secrecy over ``transport`` (``secrecy_*``),
    then the route to each recipient in envelope order (``route_not_allowed`` for the
    first refused).  Secrecy comes before routes because it is about the document, not
    the addressee: no choice of recipients would make it acceptable.  The sender's
    signature is checked elsewhere (:meth:`Envelope.verify_sender`).
    """
    envelope.routing.check(envelope.kind)
    (limits or SizeLimits()).check_envelope(envelope)
    secrecy_policy.check(envelope.routing.secrecy, transport)
    for stanza in envelope.recipients:
        route_policy.check(envelope.sender, stanza.organ, tree)


# --- handling deadlines --------------------------------------------------------------

#: Vietnam keeps UTC+7 all year (no daylight saving); a fixed offset needs no tz database.
VN_TZ: Final = timezone(timedelta(hours=7), "ICT")
#: End of the office working day: handling "the same day" means by then.
WORKDAY_END: Final = time(17, 0)
#: "Immediately on arrival" for urgent documents, made measurable.
URGENT_WINDOW: Final = timedelta(hours=2)


def _working(day: date, holidays: Collection[date]) -> bool:
    return day.weekday() < 5 and day not in holidays


def _next_working(day: date, holidays: Collection[date]) -> date:
    """The first working day strictly after ``day``."""
    day += timedelta(days=1)
    # Tết can close offices for over a week; a year of holidays bounds the search.
    for _ in range(366):
        if _working(day, holidays):
            return day
        day += timedelta(days=1)
    raise LocalError("no working day within a year: check the holiday list")


def _end_of(day: date) -> datetime:
    return datetime.combine(day, WORKDAY_END, tzinfo=VN_TZ)


def handling_deadline(
    received_at: datetime,
    urgency: int,
    due: date | None = None,
    *,
    holidays: Collection[date] = frozenset(),
) -> datetime:
    """When an incoming document should have been registered and passed on (Vietnam time).

    The rule (Decree 30/2020 and the Party's văn thư guidance: urgent documents are
    registered and passed on immediately on arrival, others the same or the next working
    day), made precise for auditors:

    * hỏa tốc, hỏa tốc hẹn giờ: arrival + 2 hours, at any hour and on any day -- these are
      handled outside office hours too;
    * thượng khẩn, khẩn: the end (17:00) of the working day of arrival -- or of the next
      working day if it arrived after 17:00 or on a day off -- but never sooner than
      arrival + 2 hours, so an urgent document is never held to a tighter deadline than a
      hỏa tốc one arriving at the same moment;
    * thường: the end of the next working day after the day of arrival;
    * a ``due`` date (hạn xử lý) overrides when earlier: 17:00 on that date.  It may lie
      before the arrival: the document arrived already late, and the auditor should see it.

    Working days are Monday to Friday, minus ``holidays`` (public holidays and Tết are set
    by decree each year, so the caller supplies them).  ``received_at`` must carry a time
    zone; the result is in Vietnam time (UTC+7).
    """
    if received_at.tzinfo is None or received_at.utcoffset() is None:
        raise LocalError("received_at needs a time zone")
    try:
        level = Urgency(urgency)
    except ValueError:
        raise LocalError(f"urgency {urgency} is not 0-4") from None
    local = received_at.astimezone(VN_TZ)
    day = local.date()
    if level >= Urgency.HOA_TOC:
        deadline = local + URGENT_WINDOW
    elif level >= Urgency.KHAN:
        if _working(day, holidays) and local.time() < WORKDAY_END:
            working_day = day
        else:
            working_day = _next_working(day, holidays)
        deadline = max(_end_of(working_day), local + URGENT_WINDOW)
    else:
        deadline = _end_of(_next_working(day, holidays))
    if due is not None:
        deadline = min(deadline, _end_of(due))
    return deadline
