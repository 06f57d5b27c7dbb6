"""The admin dashboard in a real browser (headless Chromium): the page shows
the sessions, and a restart caused by the test appears in its restart log
live, without reloading. A screenshot is saved under target/test-output/."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

import support

ADMIN_KEY = "dash-admin-key"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = support.REPO_ROOT / "target" / "test-output"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (scripts/test.sh installs it with apt-get)")


def browser_args() -> list[str]:
    # No background traffic: this machine has no network but loopback.
    return [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]


def test_dashboard_shows_a_restart_live(gateway_factory, clean_peer, tmp_path: Path):
    from playwright.sync_api import sync_playwright

    gw = gateway_factory(
        peer_url=clean_peer.url,
        server_extra=f'admin_key = "{ADMIN_KEY}"',
    )
    assert gw.wait_ready(10)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=browser_args())
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 800})
            page.goto(f"{gw.url}/admin#key={ADMIN_KEY}")
            page.wait_for_selector("#sessions tr[data-session='peer/k1']", timeout=10_000)
            page.wait_for_selector("#status.live", timeout=10_000)
            assert page.locator("#events li[data-event='restart']").count() == 0
            # Revoke one key: the next request on it is refused, the session
            # restarts, and the event must arrive over the live feed.
            clean_peer.fault("401", count=1000, key=support.PEER_KEYS[0])
            with gw.http() as c:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    r = c.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
                    assert r.status_code == 200, r.text  # the other key answers
                    if page.locator("#events li[data-event='restart']").count():
                        break
                    time.sleep(0.2)
            with gw.http(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
                logged = c.get("/admin/restarts").json()["events"]
            assert page.locator("#events li[data-event='restart']").count(), (logged, page.inner_text("#events"), clean_peer.requests()[-3:])
            text = page.locator("#events li[data-event='restart']").first.inner_text()
            assert "peer/k1" in text, text
            assert ADMIN_KEY not in page.content().replace(f"#key={ADMIN_KEY}", "")
            # The reset button clears the session from the page.
            clean_peer.reset()
            page.locator("#sessions tr[data-session='peer/k1'] button").click()
            page.wait_for_selector("#events li[data-event='reset']", timeout=10_000)
            SHOTS.mkdir(parents=True, exist_ok=True)
            shot = SHOTS / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()


def test_dashboard_feed_needs_the_key(gateway_factory):
    import httpx

    gw = gateway_factory(server_extra=f'admin_key = "{ADMIN_KEY}"')
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    with httpx.Client(base_url=gw.url, trust_env=False, timeout=5) as c:
        assert c.get("/admin/events", headers=headers).status_code == 401
        assert c.get("/admin/events?key=wrong", headers=headers).status_code == 401
        page = c.get("/admin")
        assert page.status_code == 200 and "<title>troupe</title>" in page.text
