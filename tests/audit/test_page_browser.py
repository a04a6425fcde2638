"""The audit page in a real browser: Debian's headless Chromium driven by Playwright.

An auditor signs in with a bearer token, searches by document reference, opens the
packet's timeline and the page is saved as a screenshot (``LIENTHONG_SCREENSHOTS=<dir>``
keeps a copy).  Chromium is installed by the test command (``scripts/ensure-chromium.sh``);
Playwright only drives it through its executable path -- ``playwright install`` is never
run.  Without ``/usr/bin/chromium`` the test is skipped, saying so.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from tests.hub.helpers import SUBJECT, HubEnv

from .helpers import history

pytestmark = pytest.mark.asyncio

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_sign_in_search_and_timeline_in_chromium(hub_env: HubEnv, tmp_path: Path) -> None:
    if not await asyncio.to_thread(CHROMIUM.exists):
        pytest.skip(
            f"{CHROMIUM} is missing: run scripts/ensure-chromium.sh (apt-get install chromium)"
        )
    from playwright.async_api import async_playwright

    env = hub_env
    h = await history(env)
    base = str(env.client.make_url("")).rstrip("/")
    shot = tmp_path / "audit-timeline.png"
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            context = await browser.new_context(
                locale="vi-VN", viewport={"width": 1280, "height": 900}
            )
            page = await context.new_page()
            await page.goto(f"{base}/audit")
            assert "Đăng nhập kiểm tra viên" in await page.content()

            # an office's token is refused
            await page.fill("#token", h.w.province.token)
            async with page.expect_navigation():
                await page.click("button[type=submit]")
            html = await page.content()
            assert "không thuộc vai trò kiểm tra" in html, html

            await page.fill("#token", h.w.auditor.token)
            async with page.expect_navigation():
                await page.click("button[type=submit]")
            await page.wait_for_selector("form.search")
            cookies = {c["name"]: c for c in await context.cookies()}
            session = cookies["lienthong_audit"]
            assert session["httpOnly"] is True
            assert session["sameSite"] == "Strict"
            assert "lienthong_audit" not in await page.evaluate("document.cookie")

            await page.fill("input[name=ref]", "KH/TU")
            await page.check("input[name=overdue]")
            async with page.expect_navigation():
                await page.click("form.search button[type=submit]")
            link = page.locator(f"a[href='/audit/packets/{h.packet}']")
            await link.wait_for()
            assert "Kết quả: 1 gói tin" in await page.content()
            async with page.expect_navigation():
                await link.click()
            await page.wait_for_selector("ol.timeline")
            html = await page.content()
            assert "Mọi sự kiện đã được xác minh" in html
            assert html.count("✓ Có trong nhật ký") == 4
            assert "Biên nhận 03 — đã tiếp nhận" in html
            assert SUBJECT not in html
            await page.screenshot(path=str(shot), full_page=True)

            async with page.expect_navigation():
                await page.click("text=Báo cáo theo cơ quan")
            await page.wait_for_selector("table.results")
            assert h.w.yen_lac.name in await page.content()
            await context.close()
        finally:
            await browser.close()
    assert (await asyncio.to_thread(shot.stat)).st_size > 10_000
    keep = os.environ.get("LIENTHONG_SCREENSHOTS")
    if keep:
        await asyncio.to_thread(Path(keep).mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(shutil.copy, shot, Path(keep) / shot.name)
