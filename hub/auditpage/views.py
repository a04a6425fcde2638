"""The audit page's handlers: sign-in, search, a packet's timeline, the delivery report.

=====================================  ====================================================
``GET  /audit``                        sign-in form, or the search form and its results
``POST /audit/login``                  sign in with an auditor's bearer token
``POST /audit/logout``                 sign out
``GET  /audit/packets/{id}``           a packet's timeline, each event's verification
``GET  /audit/packets/{id}/bundle``    the packet's proof bundle (for ``lienthong-audit
                                       verify``)
``GET  /audit/report``                 deliveries per organ over a date range
``GET  /audit/report.csv``             the same as CSV
``GET  /audit/static/audit.css``       the style sheet
``GET  /v1/audit/packets/{id}/envelope``  an accepted packet's signed envelope (auditor
                                       bearer token): routing data and sealed metadata,
                                       never a body
=====================================  ====================================================

Pages are rendered on the server with Jinja2 (autoescaping on) in Vietnamese; no page runs
a script, and the Content-Security-Policy says so.  Every page but the sign-in form needs
the auditor's cookie (:mod:`hub.auditpage.auth`); without it a GET shows the sign-in
form with status 401.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from pathlib import Path
from typing import Any, Final

import jinja2
from aiohttp import web

from hub.api.common import packet_id_from, require
from hub.auditlog import store
from hub.clock import now
from hub.context import hub_of
from hub.models import Packet
from hub.packets import ACCEPTED
from protocol.directory import check_organ_code
from protocol.errors import LienthongError, RemoteError
from protocol.policy import VN_TZ

from . import auth, data

HERE: Final = Path(__file__).parent
CSS: Final = (HERE / "static" / "audit.css").read_bytes()
#: Longest range one report covers (a year and a bit: annual reports fit).
REPORT_DAYS_MAX: Final = 400

SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on
    # our own form posts, and the origin check could not tell them from a forged one.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

routes = web.RouteTableDef()
TEMPLATES: Final = web.AppKey("lienthong_audit_templates", jinja2.Environment)


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["vn_time"] = data.vn_time
    env.filters["vn_date"] = data.vn_date
    env.globals["outcome_labels"] = data.OUTCOME_LABELS
    env.globals["state_labels"] = data.STATE_LABELS
    env.globals["search_states"] = data.SEARCH_STATES
    return env


def origin_of(request: web.Request) -> str:
    return f"lienthong.hub/{hub_of(request).settings.hub_name}"


def render(request: web.Request, name: str, status: int = 200, **context: Any) -> web.Response:
    env = request.app[TEMPLATES]
    html = env.get_template(name).render(**context)
    response = web.Response(text=html, content_type="text/html", charset="utf-8", status=status)
    response.headers.update(SECURITY_HEADERS)
    return response


def _login_page(request: web.Request, error: str | None = None, status: int = 401) -> web.Response:
    csrf, fresh = auth.login_csrf(request)
    response = render(request, "login.html", status=status, error=error, csrf=csrf)
    if fresh:
        auth.set_login_csrf(response, request, csrf)
    return response


def _error(
    request: web.Request, status: int, title: str, message: str, **context: Any
) -> web.Response:
    return render(request, "error.html", status=status, title=title, message=message, **context)


async def _signed_in(request: web.Request) -> tuple[Any, str] | web.Response:
    found = await auth.auditor(request)
    if found is None:
        response = _login_page(request)
        if request.cookies.get(auth.COOKIE):
            auth.forget(response)  # an expired or revoked session: drop the cookie
        return response
    return found


def _context(caller: Any, token: str, **values: Any) -> dict[str, Any]:
    return {"auditor": caller.organ, "csrf": auth.csrf_for(token), **values}


@routes.get("/audit")
async def home(request: web.Request) -> web.Response:
    found = await _signed_in(request)
    if isinstance(found, web.Response):
        return found
    caller, token = found
    criteria = data.Criteria.parse(request.query)
    rows: list[data.SearchRow] = []
    truncated = False
    searched = not criteria.empty and not criteria.errors
    if searched:
        rows, truncated = await data.search(hub_of(request), criteria, now())
    return render(
        request,
        "search.html",
        **_context(
            caller,
            token,
            criteria=criteria,
            rows=rows,
            truncated=truncated,
            searched=searched,
            limit=data.SEARCH_LIMIT,
        ),
    )


@routes.post("/audit/login")
async def login(request: web.Request) -> web.Response:
    form = await request.post()
    submitted = str(form.get(auth.CSRF_FIELD, ""))
    expected = request.cookies.get(auth.LOGIN_COOKIE, "")
    if not auth.check_csrf(request, submitted, expected):
        return _login_page(request, "Phiên đăng nhập không hợp lệ, vui lòng thử lại.", 403)
    result = await auth.sign_in(request, str(form.get("token", "")))
    if isinstance(result, str):
        return _login_page(request, result, 401)
    _caller, expires = result
    response = web.HTTPSeeOther("/audit")
    auth.remember(response, request, str(form.get("token", "")).strip(), expires)
    response.headers.update(SECURITY_HEADERS)
    raise response


@routes.post("/audit/logout")
async def logout(request: web.Request) -> web.Response:
    form = await request.post()
    token = request.cookies.get(auth.COOKIE, "")
    if not auth.check_csrf(request, str(form.get(auth.CSRF_FIELD, "")), auth.csrf_for(token)):
        return _error(request, 403, "Yêu cầu bị từ chối", "Mã biểu mẫu không hợp lệ.")
    response = web.HTTPSeeOther("/audit")
    auth.forget(response)
    response.headers.update(SECURITY_HEADERS)
    raise response


def _packet_id(request: web.Request) -> bytes | None:
    text = request.match_info["packet_id"].lower()
    try:
        return uuid.UUID(text).bytes
    except ValueError:
        return None


@routes.get("/audit/packets/{packet_id}")
async def packet(request: web.Request) -> web.Response:
    found = await _signed_in(request)
    if isinstance(found, web.Response):
        return found
    caller, token = found
    pid = _packet_id(request)
    view = None
    error = None
    if pid is not None:
        try:
            view = await data.packet_view(hub_of(request), origin_of(request), pid, now())
        except LienthongError as exc:
            error = f"Không đọc được nhật ký của gói tin: {exc}"
    if view is None:
        return _error(
            request,
            404,
            "Không tìm thấy gói tin",
            error or "Không có gói tin đã được hub tiếp nhận với mã này.",
            **_context(caller, token),
        )
    return render(request, "packet.html", **_context(caller, token, p=view))


@routes.get("/audit/packets/{packet_id}/bundle")
async def bundle(request: web.Request) -> web.Response:
    found = await _signed_in(request)
    if isinstance(found, web.Response):
        return found
    pid = _packet_id(request)
    made = None
    if pid is not None:
        async with store.reading(hub_of(request).engine) as conn:
            made = await store.packet_bundle(conn, pid)
    if pid is None or made is None:
        return _error(
            request, 404, "Không tìm thấy gói tin", "Không có sự kiện nào của gói tin này."
        )
    response = web.Response(body=made.data, content_type="application/cbor")
    response.headers.update(SECURITY_HEADERS)
    response.headers["Content-Disposition"] = f'attachment; filename="{pid.hex()}.bundle"'
    return response


def _report_range(query: Any) -> tuple[date, date, str | None, list[str]]:
    errors: list[str] = []
    today = now_vn_date()
    first, last = today.replace(day=1), today
    for name in ("from", "to"):
        raw = str(query.get(name, "")).strip()[:10]
        if not raw:
            continue
        try:
            value = date.fromisoformat(raw)
        except ValueError:
            errors.append(f"Ngày không hợp lệ: {raw} (dạng YYYY-MM-DD)")
            continue
        if name == "from":
            first = value
        else:
            last = value
    if last < first:
        errors.append("Ngày kết thúc trước ngày bắt đầu.")
    elif (last - first).days > REPORT_DAYS_MAX:
        errors.append(f"Một báo cáo tối đa {REPORT_DAYS_MAX} ngày.")
    organ = str(query.get("organ", "")).strip()[:64] or None
    if organ is not None:
        try:
            check_organ_code(organ)
        except RemoteError:
            errors.append("Mã cơ quan không hợp lệ.")
            organ = None
    return first, last, organ, errors


def now_vn_date() -> date:
    return datetime.fromtimestamp(now(), VN_TZ).date()


@routes.get("/audit/report")
async def report(request: web.Request) -> web.Response:
    found = await _signed_in(request)
    if isinstance(found, web.Response):
        return found
    caller, token = found
    first, last, organ, errors = _report_range(request.query)
    result = None
    if not errors:
        result = await data.delivery_report(hub_of(request), first, last, organ, now())
    return render(
        request,
        "report.html",
        **_context(
            caller,
            token,
            first=first,
            last=last,
            organ=organ or "",
            errors=errors,
            report=result,
            csv_query=f"from={first.isoformat()}&to={last.isoformat()}"
            + (f"&organ={organ}" if organ else ""),
        ),
    )


@routes.get("/audit/report.csv")
async def report_csv(request: web.Request) -> web.Response:
    found = await _signed_in(request)
    if isinstance(found, web.Response):
        return found
    first, last, organ, errors = _report_range(request.query)
    if errors:
        return _error(request, 400, "Báo cáo không lập được", "; ".join(errors))
    result = await data.delivery_report(hub_of(request), first, last, organ, now())
    body = "\ufeff" + data.report_csv(result)  # a BOM: spreadsheet programs read UTF-8 then
    response = web.Response(text=body, content_type="text/csv", charset="utf-8")
    response.headers.update(SECURITY_HEADERS)
    name = f"bao-cao-giao-nhan-{first.isoformat()}-{last.isoformat()}.csv"
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@routes.get("/audit/static/audit.css")
async def stylesheet(request: web.Request) -> web.Response:
    response = web.Response(body=CSS, content_type="text/css", charset="utf-8")
    response.headers["Cache-Control"] = "max-age=3600"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@routes.get("/v1/audit/packets/{packet_id}/envelope", allow_head=False)
async def envelope(request: web.Request) -> web.Response:
    """An accepted packet's signed envelope, for auditors: its digest is in the log."""
    await require(request, "auditor")
    pid = packet_id_from(request.match_info["packet_id"])
    hub = hub_of(request)
    async with hub.sessions() as session:
        row = await session.get(Packet, pid)
    if row is None or row.state != ACCEPTED:
        raise RemoteError("packet_unknown")
    return web.Response(body=bytes(row.envelope), content_type="application/octet-stream")
