"""Credential refresh ahead of expiry and the credential cache, seen from
outside: the demo kind with ``credential_ttl`` logs in with a token that
expires, like the web-chat accounts it stands in for."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import support


def demo_config(tmp: Path, ttl: str) -> str:
    return f"""
[server]
listen = "127.0.0.1:0"
api_keys = ["{support.GATEWAY_KEY}"]
data_dir = {support.toml_str(str(tmp / "data"))}
admin_key = "adm-secret"

[[pools]]
name = "demo"
kind = "demo"
models = ["demo"]
sessions = 1
chunk_delay = "1ms"
credential_ttl = "{ttl}"
"""


def cred_file(tmp: Path) -> Path:
    return tmp / "data" / "credentials" / "demo" / "demo-1.json"


def read_token(tmp: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return json.loads(cred_file(tmp).read_text())["token"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.05)
    raise AssertionError(f"no credential cache at {cred_file(tmp)}")


def ask(gw: support.Gateway, text: str) -> str:
    with gw.http() as c:
        r = c.post("/v1/chat/completions", json={"model": "demo", "messages": [{"role": "user", "content": text}]})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]


def test_credentials_refresh_before_expiry_and_keep_serving(tmp_path):
    gw = support.start_gateway(tmp_path, demo_config(tmp_path, "2s"))
    try:
        assert gw.wait_ready(10)
        first = read_token(tmp_path)
        mode = stat.S_IMODE(cred_file(tmp_path).stat().st_mode)
        assert mode == 0o600, oct(mode)
        # Refreshes happen ahead of expiry; requests keep working across them.
        deadline = time.monotonic() + 10
        refreshes: list[dict] = []
        while time.monotonic() < deadline and len(refreshes) < 2:
            assert ask(gw, "still there?") == support.DEMO_PREFIX + "still there?"
            with gw.http(headers={"Authorization": "Bearer adm-secret"}) as c:
                events = c.get("/admin/restarts", params={"pool": "demo"}).json()["events"]
            refreshes = [e for e in events if e["event"] == "refresh"]
            time.sleep(0.2)
        assert len(refreshes) >= 2, refreshes
        assert read_token(tmp_path) != first, "the cache was not rewritten after a refresh"
        assert first not in json.dumps(events), "a token leaked into the restart log"
        assert first not in gw.stderr_text(100_000)
    finally:
        gw.cleanup()


def test_cached_credentials_are_reused_after_a_process_restart(tmp_path):
    gw = support.start_gateway(tmp_path, demo_config(tmp_path, "1h"))
    try:
        assert gw.wait_ready(10)
        token = read_token(tmp_path)
    finally:
        gw.cleanup()
    gw = support.start_gateway(tmp_path, demo_config(tmp_path, "1h"))
    try:
        assert gw.wait_ready(10)
        assert ask(gw, "hello again") == support.DEMO_PREFIX + "hello again"
        assert read_token(tmp_path) == token, "logged in again instead of reusing the cached token"
    finally:
        gw.cleanup()
