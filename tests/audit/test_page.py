"""The audit page over HTTP (SQLite and PostgreSQL): sign-in rules, CSRF, search, a
packet's timeline with its verification state, the report and its CSV."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

import pytest
from sqlalchemy import text

from nodes.auditor import verify_file
from tests.hub.helpers import SUBJECT, HubEnv

from .helpers import entries, history, index_of, rewritten_receipt, sql

pytestmark = pytest.mark.asyncio

CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


async def sign_in(env: HubEnv, token: str, **headers: str) -> Any:
    page = await env.client.get("/audit")
    assert page.status == 401
    csrf = CSRF.search(await page.text())
    assert csrf is not None
    return await env.client.post(
        "/audit/login",
        data={"token": token, "csrf": csrf.group(1)},
        allow_redirects=False,
        headers=headers,
    )


async def test_only_an_auditor_signs_in(hub_env: HubEnv) -> None:
    env = hub_env
    h = await history(env)
    page = await env.client.get("/audit")
    assert page.status == 401
    body = await page.text()
    assert "Đăng nhập kiểm tra viên" in body
    for name in ("Content-Security-Policy", "X-Frame-Options", "Referrer-Policy"):
        assert name in page.headers
    assert "script-src" not in page.headers["Content-Security-Policy"]
    # an office's token, an admin's, nonsense: refused
    for token, message in (
        (h.w.province.token, "không thuộc vai trò kiểm tra"),
        (h.w.admin.token, "không thuộc vai trò kiểm tra"),
        ("not-a-token", "không đúng, đã hết hạn"),
    ):
        resp = await sign_in(env, token)
        assert resp.status == 401
        assert message in await resp.text()
        assert "lienthong_audit=" not in resp.headers.get("Set-Cookie", "")
    # a form posted from another site is refused, even with a good token
    resp = await sign_in(env, h.w.auditor.token, Origin="http://evil.example")
    assert resp.status == 403
    # the auditor's token opens the page, in a strict cookie
    resp = await sign_in(env, h.w.auditor.token)
    assert resp.status == 303
    cookie = resp.headers["Set-Cookie"]
    assert "lienthong_audit=" in cookie
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/audit"):
        assert attribute in cookie
    page = await env.client.get("/audit")
    assert page.status == 200
    assert "Tra cứu gói tin" in await page.text()
    # signing out needs the form token
    resp = await env.client.post("/audit/logout", data={"csrf": "0" * 32}, allow_redirects=False)
    assert resp.status == 403
    csrf = CSRF.search(await page.text())
    assert csrf is not None
    resp = await env.client.post(
        "/audit/logout", data={"csrf": csrf.group(1)}, allow_redirects=False
    )
    assert resp.status == 303
    assert (await env.client.get("/audit")).status == 401
    # a revoked auditor is signed out at once
    await sign_in(env, h.w.auditor.token)
    assert (await env.client.get("/audit")).status == 200
    await env.client.post(
        "/v1/admin/revoke", json={"organ": h.w.auditor.code}, headers=h.w.admin.headers
    )
    assert (await env.client.get("/audit")).status == 401


async def test_search_timeline_and_report(hub_env: HubEnv) -> None:
    env = hub_env
    h = await history(env)
    resp = await sign_in(env, h.w.auditor.token)
    assert resp.status == 303
    short = h.packet[:13]
    for query in (
        f"packet={h.packet}",
        f"packet={h.packet.replace('-', '')[:12]}",
        "ref=KH%2FTU",
        f"sender={h.w.province.code}",
        f"recipient={h.w.tam_hong.code}",
        "status=03",
        "overdue=1",
    ):
        page = await (await env.client.get(f"/audit?{query}")).text()
        assert f"/audit/packets/{h.packet}" in page, query
        assert "Kết quả: 1 gói tin" in page, query
    for query in (f"sender={h.w.yen_lac.code}", "status=06", "ref=99-NQ"):
        page = await (await env.client.get(f"/audit?{query}")).text()
        assert "Kết quả: 0 gói tin" in page, query
    page = await (await env.client.get("/audit?from=2025-13-01")).text()
    assert "Ngày không hợp lệ" in page

    page = await (await env.client.get(f"/audit/packets/{h.packet}")).text()
    assert "Mọi sự kiện đã được xác minh" in page
    assert page.count("✓ Có trong nhật ký") == 4
    assert page.count(f"✓ Chữ ký của {h.w.yen_lac.code} hợp lệ") == 2
    assert "số đến 125" in page
    assert "05-KH/TU" in page
    assert "quá hạn" in page  # the due date was yesterday
    assert SUBJECT not in page  # the hub has no content to show
    assert short in page

    # the bundle behind the page's link verifies offline with the pinned hub key
    resp = await env.client.get(f"/audit/packets/{h.packet}/bundle")
    assert resp.status == 200
    assert resp.content_type == "application/cbor"
    bare = verify_file(
        await resp.read(),
        hub_key=env.keys.hub.public_key(),
        authority=env.keys.authority.public_key(),
    )
    assert bare["verified"] is True
    assert len(bare["events"]) == 4
    assert "receipt signatures need an audit proof" in bare["note"]

    # the database edited behind the hub's back: the page shows which event
    idx = await index_of(env, "receipt", status="03")
    data = dict(await entries(env))[idx]
    await sql(
        env,
        text("UPDATE log_entries SET data = :d WHERE idx = :i"),
        {"d": rewritten_receipt(h.w.yen_lac, data, "06"), "i": idx},
    )
    page = await (await env.client.get(f"/audit/packets/{h.packet}")).text()
    assert "Có sự kiện không xác minh được" in page
    assert f"✗ Không khớp nhật ký (mục {idx})" in page
    assert "Chữ ký không hợp lệ" in page

    report = await (await env.client.get("/audit/report")).text()
    assert "Báo cáo giao nhận theo cơ quan" in report
    assert h.w.province.name in report
    resp = await env.client.get("/audit/report.csv")
    assert resp.status == 200
    assert "attachment" in resp.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO((await resp.text()).lstrip("\ufeff"))))
    assert rows[0][:3] == ["Mã cơ quan", "Tên cơ quan", "Đã gửi"]
    by_code = {r[0]: r for r in rows[1:]}
    assert by_code[h.w.province.code][2] == "1"
    assert by_code[h.w.tam_hong.code][3] == "1"  # addressed
    # the rewritten receipt no longer counts: its signature fails
    assert by_code[h.w.yen_lac.code][7] == "0"  # completed
    assert rows[-1][1] == "Tổng cộng"


async def test_envelope_for_auditors_only(hub_env: HubEnv) -> None:
    env = hub_env
    h = await history(env)
    path = f"/v1/audit/packets/{h.packet}/envelope"
    resp = await env.client.get(path, headers=h.w.auditor.headers)
    assert resp.status == 200
    assert await resp.read() == h.envelope
    for office in (h.w.province, h.w.yen_lac, h.w.admin):
        resp = await env.client.get(path, headers=office.headers)
        assert (resp.status, (await resp.json())["code"]) == (403, "role_forbidden")
    assert (await env.client.get(path)).status == 401
