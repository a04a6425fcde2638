"""Tests of protocol.policy: urgency and secrecy codes, secrecy, routes, sizes, deadlines."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import LocalError, RemoteError
from protocol.keys import SigningPrivateKey
from protocol.packet import Routing
from protocol.policy import (
    DEFAULT_ROUTE_RULES,
    ROUTE_RULES,
    TREE_DEPTH_MAX,
    VN_TZ,
    RoutePolicy,
    Secrecy,
    SecrecyPolicy,
    SizeLimits,
    Urgency,
    check_packet,
    handling_deadline,
)
from tests.protocol.builders import DictTree, make_envelope, make_office

# --- the organ tree -------------------------------------------------------------------
#
#   Văn phòng Tỉnh ủy
#   ├── Đảng ủy xã Yên Lạc
#   │   └── Chi bộ Trường THCS Tam Hồng
#   └── Đảng ủy xã Tam Hồng
#       └── Chi bộ thôn Đông Hải

TINH_UY = "000.00.00.H41"
YEN_LAC = "000.00.15.H41"
TAM_HONG = "000.00.16.H41"
CHI_BO = "000.15.03.H41"
DONG_HAI = "000.16.01.H41"

NAMES = {
    TINH_UY: "Văn phòng Tỉnh ủy",
    YEN_LAC: "Đảng ủy xã Yên Lạc",
    TAM_HONG: "Đảng ủy xã Tam Hồng",
    CHI_BO: "Chi bộ Trường THCS Tam Hồng",
    DONG_HAI: "Chi bộ thôn Đông Hải",
}
TREE = DictTree(
    {TINH_UY: None, YEN_LAC: TINH_UY, TAM_HONG: TINH_UY, CHI_BO: YEN_LAC, DONG_HAI: TAM_HONG}
)


def route_code(policy: RoutePolicy, sender: str, recipient: str, tree: DictTree = TREE) -> str:
    with pytest.raises(RemoteError) as excinfo:
        policy.check(sender, recipient, tree)
    return excinfo.value.code


# --- urgency and secrecy codes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("urgency", "cli", "label"),
    [
        (Urgency.THUONG, "thuong", "thường"),
        (Urgency.KHAN, "khan", "khẩn"),
        (Urgency.THUONG_KHAN, "thuong-khan", "thượng khẩn"),
        (Urgency.HOA_TOC, "hoa-toc", "hỏa tốc"),
        (Urgency.HOA_TOC_HEN_GIO, "hoa-toc-hen-gio", "hỏa tốc hẹn giờ"),
    ],
)
def test_urgency_names(urgency: Urgency, cli: str, label: str) -> None:
    assert urgency.cli_name == cli
    assert urgency.label == label
    assert Urgency.from_name(cli) is urgency


@pytest.mark.parametrize(
    ("secrecy", "cli", "label"),
    [
        (Secrecy.NONE, "none", "không mật"),
        (Secrecy.MAT, "mat", "Mật"),
        (Secrecy.TOI_MAT, "toi-mat", "Tối mật"),
        (Secrecy.TUYET_MAT, "tuyet-mat", "Tuyệt mật"),
    ],
)
def test_secrecy_names(secrecy: Secrecy, cli: str, label: str) -> None:
    assert secrecy.cli_name == cli
    assert secrecy.label == label
    assert Secrecy.from_name(cli) is secrecy


def test_codes_match_the_national_format() -> None:
    assert [int(u) for u in Urgency] == [0, 1, 2, 3, 4]
    assert [int(s) for s in Secrecy] == [0, 1, 2, 3]


@pytest.mark.parametrize("name", ["khẩn", "KHAN", "hoa_toc", ""])
def test_unknown_urgency_name(name: str) -> None:
    with pytest.raises(LocalError):
        Urgency.from_name(name)


def test_unknown_secrecy_name() -> None:
    with pytest.raises(LocalError):
        Secrecy.from_name("mật")


# --- secrecy policy -------------------------------------------------------------------

DEFAULT = SecrecyPolicy()
WITH_MAT = SecrecyPolicy(frozenset({Secrecy.NONE, Secrecy.MAT}))


@pytest.mark.parametrize(
    ("policy", "level", "transport", "expected"),
    [
        (DEFAULT, Secrecy.NONE, "http", None),
        (DEFAULT, Secrecy.NONE, "email", None),
        (DEFAULT, Secrecy.MAT, "http", "secrecy_refused"),
        (DEFAULT, Secrecy.MAT, "email", "secrecy_refused"),
        (DEFAULT, Secrecy.TOI_MAT, "http", "secrecy_refused"),
        (DEFAULT, Secrecy.TOI_MAT, "email", "secrecy_refused"),
        (DEFAULT, Secrecy.TUYET_MAT, "http", "secrecy_refused"),
        (DEFAULT, Secrecy.TUYET_MAT, "email", "secrecy_refused"),
        (WITH_MAT, Secrecy.NONE, "http", None),
        (WITH_MAT, Secrecy.NONE, "email", None),
        (WITH_MAT, Secrecy.MAT, "http", None),
        (WITH_MAT, Secrecy.MAT, "email", "secrecy_not_by_email"),
        (WITH_MAT, Secrecy.TOI_MAT, "http", "secrecy_refused"),
        (WITH_MAT, Secrecy.TOI_MAT, "email", "secrecy_refused"),
        (WITH_MAT, Secrecy.TUYET_MAT, "http", "secrecy_refused"),
        (WITH_MAT, Secrecy.TUYET_MAT, "email", "secrecy_refused"),
    ],
    ids=lambda v: v.cli_name if isinstance(v, Secrecy) else str(v),
)
def test_secrecy_matrix(
    policy: SecrecyPolicy, level: Secrecy, transport: str, expected: str | None
) -> None:
    if expected is None:
        assert policy.check(int(level), transport) is level
    else:
        with pytest.raises(RemoteError) as excinfo:
            policy.check(int(level), transport)
        assert excinfo.value.code == expected
        assert level.label in excinfo.value.detail


@pytest.mark.parametrize("level", [Secrecy.TOI_MAT, Secrecy.TUYET_MAT])
def test_top_levels_cannot_be_allowed(level: Secrecy) -> None:
    with pytest.raises(LocalError):
        SecrecyPolicy(frozenset({Secrecy.NONE, level}))


def test_secrecy_policy_checks_its_inputs() -> None:
    with pytest.raises(LocalError):
        SecrecyPolicy(frozenset({7}))  # type: ignore[arg-type]
    with pytest.raises(LocalError):
        DEFAULT.check(0, "fax")
    with pytest.raises(RemoteError) as excinfo:
        DEFAULT.check(4)
    assert excinfo.value.code == "field_invalid"
    assert SecrecyPolicy(frozenset({0, 1})) == WITH_MAT  # type: ignore[arg-type]


# --- route policy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "sender", "recipient", "allowed"),
    [
        ("parent", CHI_BO, YEN_LAC, True),
        ("parent", CHI_BO, TINH_UY, False),
        ("parent", YEN_LAC, CHI_BO, False),
        ("children", YEN_LAC, CHI_BO, True),
        ("children", TINH_UY, CHI_BO, False),
        ("children", CHI_BO, YEN_LAC, False),
        ("siblings", YEN_LAC, TAM_HONG, True),
        ("siblings", CHI_BO, TAM_HONG, False),
        ("siblings", CHI_BO, DONG_HAI, False),
        ("ancestors", CHI_BO, TINH_UY, True),
        ("ancestors", CHI_BO, YEN_LAC, True),
        ("ancestors", TINH_UY, CHI_BO, False),
        ("descendants", TINH_UY, CHI_BO, True),
        ("descendants", YEN_LAC, CHI_BO, True),
        ("descendants", CHI_BO, TINH_UY, False),
        ("any", CHI_BO, DONG_HAI, True),
        ("any", DONG_HAI, TINH_UY, True),
    ],
    ids=lambda v: NAMES.get(v, str(v)) if isinstance(v, str) else str(v),
)
def test_route_rule(rule: str, sender: str, recipient: str, allowed: bool) -> None:
    policy = RoutePolicy(frozenset({rule}))
    assert policy.allows(sender, recipient, TREE) is allowed
    if allowed:
        policy.check(sender, recipient, TREE)
    else:
        assert route_code(policy, sender, recipient) == "route_not_allowed"


@pytest.mark.parametrize(
    ("sender", "recipient", "allowed"),
    [
        (TINH_UY, YEN_LAC, True),
        (TINH_UY, CHI_BO, True),
        (CHI_BO, TINH_UY, True),
        (CHI_BO, YEN_LAC, True),
        (YEN_LAC, TAM_HONG, True),
        (CHI_BO, DONG_HAI, False),  # cousins under different communes
        (YEN_LAC, DONG_HAI, False),  # a commune and another commune's chi bộ
    ],
    ids=lambda v: NAMES.get(v, str(v)) if isinstance(v, str) else str(v),
)
def test_default_routes(sender: str, recipient: str, allowed: bool) -> None:
    policy = RoutePolicy()
    assert policy.rules == DEFAULT_ROUTE_RULES
    assert policy.allows(sender, recipient, TREE) is allowed


def test_refusal_names_both_organs() -> None:
    with pytest.raises(RemoteError) as excinfo:
        RoutePolicy().check(CHI_BO, DONG_HAI, TREE)
    assert excinfo.value.code == "route_not_allowed"
    assert CHI_BO in excinfo.value.detail
    assert DONG_HAI in excinfo.value.detail


@pytest.mark.parametrize(
    "rules", [DEFAULT_ROUTE_RULES, ROUTE_RULES, frozenset({"any"})], ids=["default", "all", "any"]
)
def test_sending_to_oneself_is_refused(rules: frozenset[str]) -> None:
    assert route_code(RoutePolicy(rules), YEN_LAC, YEN_LAC) == "route_not_allowed"


def test_no_rules_refuse_everything() -> None:
    assert route_code(RoutePolicy(frozenset()), CHI_BO, YEN_LAC) == "route_not_allowed"


def test_roots_are_not_siblings() -> None:
    tree = DictTree({"H41": None, "H42": None})
    assert (
        route_code(RoutePolicy(frozenset({"siblings"})), "H41", "H42", tree) == "route_not_allowed"
    )


def test_cyclic_tree_terminates() -> None:
    tree = DictTree({"A": "B", "B": "C", "C": "A", "D": None})
    policy = RoutePolicy(frozenset({"ancestors", "descendants"}))
    policy.check("A", "C", tree)  # C is reached walking up from A before the cycle closes
    assert route_code(policy, "A", "D", tree) == "route_not_allowed"


def test_walk_is_bounded() -> None:
    chain = {f"N{i}": f"N{i - 1}" for i in range(1, 200)} | {"N0": None}
    tree = DictTree(chain)
    policy = RoutePolicy(frozenset({"ancestors"}))
    policy.check(f"N{TREE_DEPTH_MAX}", "N0", tree)
    assert route_code(policy, f"N{TREE_DEPTH_MAX + 1}", "N0", tree) == "route_not_allowed"


def test_route_policy_checks_its_inputs() -> None:
    with pytest.raises(LocalError):
        RoutePolicy(frozenset({"cousins"}))
    assert route_code(RoutePolicy(), "Đảng ủy", YEN_LAC) == "organ_code_invalid"


# --- packets: sizes and the whole check ------------------------------------------------

AUTHORITY = SigningPrivateKey.generate()
OFFICES = {code: make_office(code, name, AUTHORITY) for code, name in NAMES.items()}
ENVELOPE = make_envelope(OFFICES[TINH_UY], [OFFICES[YEN_LAC], OFFICES[CHI_BO]])


def test_size_limits_at_the_bounds() -> None:
    exact = SizeLimits(len(ENVELOPE.raw), ENVELOPE.body_info.size, len(ENVELOPE.recipients))
    exact.check_envelope(ENVELOPE)
    SizeLimits().check_envelope(ENVELOPE)


@pytest.mark.parametrize("which", ["envelope_max", "body_max", "recipients_max"])
def test_size_limit_exceeded(which: str) -> None:
    bounds = {
        "envelope_max": len(ENVELOPE.raw),
        "body_max": ENVELOPE.body_info.size,
        "recipients_max": len(ENVELOPE.recipients),
    }
    bounds[which] -= 1
    with pytest.raises(RemoteError) as excinfo:
        SizeLimits(**bounds).check_envelope(ENVELOPE)
    assert excinfo.value.code == "size_limit_exceeded"


@pytest.mark.parametrize("bad", [0, -1, True])
def test_size_limits_must_be_positive(bad: int) -> None:
    with pytest.raises(LocalError):
        SizeLimits(body_max=bad)


def test_check_packet_accepts_a_good_packet() -> None:
    check_packet(ENVELOPE, TREE, DEFAULT, RoutePolicy())
    check_packet(ENVELOPE, TREE, DEFAULT, RoutePolicy(), "email")


def test_check_packet_refuses_a_route() -> None:
    envelope = make_envelope(OFFICES[CHI_BO], [OFFICES[YEN_LAC], OFFICES[DONG_HAI]])
    with pytest.raises(RemoteError) as excinfo:
        check_packet(envelope, TREE, DEFAULT, RoutePolicy())
    assert excinfo.value.code == "route_not_allowed"
    assert DONG_HAI in excinfo.value.detail


def test_check_packet_order() -> None:
    # A Mật packet to a cousin, too large: the size is reported first, then the secrecy.
    envelope = make_envelope(
        OFFICES[CHI_BO], [OFFICES[DONG_HAI]], routing=Routing(secrecy=Secrecy.MAT)
    )
    small = SizeLimits(envelope_max=100)
    with pytest.raises(RemoteError) as excinfo:
        check_packet(envelope, TREE, DEFAULT, RoutePolicy(), limits=small)
    assert excinfo.value.code == "size_limit_exceeded"
    with pytest.raises(RemoteError) as excinfo:
        check_packet(envelope, TREE, DEFAULT, RoutePolicy())
    assert excinfo.value.code == "secrecy_refused"
    with pytest.raises(RemoteError) as excinfo:
        check_packet(envelope, TREE, WITH_MAT, RoutePolicy(), "email")
    assert excinfo.value.code == "secrecy_not_by_email"
    with pytest.raises(RemoteError) as excinfo:
        check_packet(envelope, TREE, WITH_MAT, RoutePolicy())
    assert excinfo.value.code == "route_not_allowed"
    check_packet(envelope, TREE, WITH_MAT, RoutePolicy(frozenset({"any"})))


# --- handling deadlines ---------------------------------------------------------------


def vn(day: int, hour: int, minute: int = 0, month: int = 6) -> datetime:
    """A time in June 2025, Vietnam time: 16 June is a Monday."""
    return datetime(2025, month, day, hour, minute, tzinfo=VN_TZ)


@pytest.mark.parametrize(
    ("received", "urgency", "due", "deadline"),
    [
        # thường: the end of the next working day after the day of arrival.
        (vn(16, 10), Urgency.THUONG, None, vn(17, 17)),
        (vn(16, 18, 30), Urgency.THUONG, None, vn(17, 17)),
        (vn(20, 10), Urgency.THUONG, None, vn(23, 17)),  # Friday -> Monday
        (vn(21, 9), Urgency.THUONG, None, vn(23, 17)),  # Saturday -> Monday
        (vn(22, 9), Urgency.THUONG, None, vn(23, 17)),  # Sunday -> Monday
        # khẩn, thượng khẩn: the same working day, never less than two hours.
        (vn(16, 10), Urgency.KHAN, None, vn(16, 17)),
        (vn(16, 10), Urgency.THUONG_KHAN, None, vn(16, 17)),
        (vn(16, 16), Urgency.THUONG_KHAN, None, vn(16, 18)),
        (vn(16, 17), Urgency.KHAN, None, vn(17, 17)),  # at closing time: the next day
        (vn(16, 18, 30), Urgency.KHAN, None, vn(17, 17)),
        (vn(20, 20), Urgency.KHAN, None, vn(23, 17)),  # Friday evening -> Monday
        (vn(21, 9), Urgency.THUONG_KHAN, None, vn(23, 17)),  # Saturday -> Monday
        # hỏa tốc: two hours, whatever the hour or the day.
        (vn(16, 10), Urgency.HOA_TOC, None, vn(16, 12)),
        (vn(21, 9), Urgency.HOA_TOC, None, vn(21, 11)),
        (vn(16, 23, 30), Urgency.HOA_TOC_HEN_GIO, None, vn(17, 1, 30)),
        # hạn xử lý overrides when earlier, even when already past.
        (vn(16, 10), Urgency.THUONG, date(2025, 6, 16), vn(16, 17)),
        (vn(16, 10), Urgency.THUONG, date(2025, 6, 30), vn(17, 17)),
        (vn(16, 10), Urgency.THUONG, date(2025, 6, 13), vn(13, 17)),
        (vn(16, 10), Urgency.HOA_TOC, date(2025, 6, 16), vn(16, 12)),
    ],
)
def test_handling_deadline(
    received: datetime, urgency: Urgency, due: date | None, deadline: datetime
) -> None:
    got = handling_deadline(received, urgency, due)
    assert got == deadline
    assert got.utcoffset() == timedelta(hours=7)


def test_deadline_skips_holidays() -> None:
    # Quốc khánh 2025: Monday 1 and Tuesday 2 September.
    holidays = {date(2025, 9, 1), date(2025, 9, 2)}
    received = vn(29, 10, month=8)  # Friday
    assert handling_deadline(received, Urgency.THUONG, holidays=holidays) == vn(3, 17, month=9)
    assert handling_deadline(received, Urgency.THUONG) == vn(1, 17, month=9)


def test_deadline_from_utc() -> None:
    received = datetime(2025, 6, 16, 3, 0, tzinfo=UTC)  # 10:00 in Hà Nội
    assert handling_deadline(received, Urgency.KHAN, None) == datetime(
        2025, 6, 16, 10, 0, tzinfo=UTC
    )


def test_deadline_inputs() -> None:
    with pytest.raises(LocalError):
        handling_deadline(datetime(2025, 6, 16, 10, 0), Urgency.KHAN, None)
    with pytest.raises(LocalError):
        handling_deadline(vn(16, 10), 5, None)
    every_day = {date(2025, 6, 16) + timedelta(days=i) for i in range(400)}
    with pytest.raises(LocalError):
        handling_deadline(vn(16, 10), Urgency.THUONG, holidays=every_day)


@given(
    st.datetimes(
        min_value=datetime(2024, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
    ),
    st.none() | st.dates(min_value=date(2024, 1, 1), max_value=date(2028, 1, 31)),
)
def test_more_urgent_is_never_later(received: datetime, due: date | None) -> None:
    deadlines = [handling_deadline(received, u, due) for u in Urgency]
    assert all(later >= sooner for later, sooner in itertools.pairwise(deadlines))
    if due is None:
        assert all(d > received for d in deadlines)
