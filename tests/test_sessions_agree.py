"""`troupe check` and the running gateway agree on every pool's sessions.

For every file in config/examples/ (its `${VARS}` set to dummies, its URLs
pointed at a closed loopback port so nothing leaves the machine) and for
account-less pools of every kind that may have none, the sessions `troupe
check` prints per pool are the sessions the running gateway lists in
/admin/sessions. Both ask the one place that decides it, so they cannot
drift (they once did: `check` said 2 for an account-less langgraph pool,
the pool started 1).
"""

from __future__ import annotations

import base64
import io
import re
import tarfile
import time
from pathlib import Path

import httpx
import pytest

import support

EXAMPLES = sorted((support.REPO_ROOT / "config" / "examples").glob("*.toml"))
ADMIN = "agree-admin"
POOL_RE = re.compile(r"^pool (\S+) \(kind (\S+), (\d+) session\(s\)", re.M)
# Port 9 (discard) on loopback: nothing listens, connections are refused.
CLOSED = "http://127.0.0.1:9"


def dummy_bundle() -> str:
    """A valid Lingma session bundle holding one cache file."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        data = b'{"uid": "u-1"}'
        info = tarfile.TarInfo("cache/user.json")
        info.size = len(data)
        info.mode = 0o600
        tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(raw.getvalue()).decode()


def localized(text: str, data_dir: Path) -> str:
    """The example with every URL on a closed loopback port and every path
    the gateway writes under `data_dir`."""
    text = re.sub(r'"(https?|wss?)://[^"]*"', f'"{CLOSED}"', text)
    text = re.sub(r'^data_dir\s*=.*$', "", text, flags=re.M)
    return text


def env_for(text: str, data_dir: Path) -> dict[str, str]:
    env = {name: "dummy-value" for name in re.findall(r"\$\{([A-Z0-9_]+)\}", text)}
    if "LINGMA_SESSION_BUNDLE" in env:
        env["LINGMA_SESSION_BUNDLE"] = dummy_bundle()
    env.update(
        {
            "TROUPE__SERVER__LISTEN": "127.0.0.1:0",
            "TROUPE__SERVER__ADMIN_KEY": ADMIN,
            "TROUPE__SERVER__DATA_DIR": str(data_dir),
            # No CLI or agent program of the examples is found: their
            # sessions fail and restart, and are listed all the same.
            "PATH": "/nonexistent",
        }
    )
    return env


def check_sessions(config: Path, env: dict[str, str]) -> dict[str, int]:
    out = support.subprocess.run(
        [str(support.troupe_bin()), "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**env, "NO_COLOR": "1"},
        stdin=support.subprocess.DEVNULL,
    )
    assert out.returncode == 0, f"troupe check failed:\n{out.stdout}\n{out.stderr}"
    found = {name: int(n) for name, _kind, n in POOL_RE.findall(out.stdout)}
    assert found, f"no pools in `troupe check` output:\n{out.stdout}"
    return found


def served_sessions(gw: support.Gateway, pools: set[str]) -> dict[str, int]:
    """Sessions per pool from /admin/sessions, once every pool has
    registered its sessions (bounded wait)."""
    deadline = time.monotonic() + 15
    last: dict[str, int] = {}
    with httpx.Client(base_url=gw.url, timeout=3, trust_env=False) as c:
        while time.monotonic() < deadline:
            r = c.get("/admin/sessions", headers={"Authorization": f"Bearer {ADMIN}"})
            assert r.status_code == 200, r.text
            last = {}
            for s in r.json()["sessions"]:
                last[s["pool"]] = last.get(s["pool"], 0) + 1
            if set(last) >= pools:
                # Registered sessions arrive one by one: wait for a stable count.
                time.sleep(0.5)
                again = c.get("/admin/sessions", headers={"Authorization": f"Bearer {ADMIN}"}).json()
                counted: dict[str, int] = {}
                for s in again["sessions"]:
                    counted[s["pool"]] = counted.get(s["pool"], 0) + 1
                if counted == last:
                    return last
            time.sleep(0.2)
    return last


def agree(tmp_path: Path, text: str) -> dict[str, int]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = env_for(text, data_dir)
    config = tmp_path / "troupe.toml"
    config.write_text(localized(text, data_dir))
    expected = check_sessions(config, env)
    gw = support.Gateway("troupe", [str(support.troupe_bin()), "serve", "--config", str(config)], env=env)
    try:
        served = served_sessions(gw, set(expected))
    finally:
        gw.cleanup()
    assert served == expected, f"`troupe check` says {expected}, the gateway runs {served}"
    return expected


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_check_and_the_gateway_agree_on_every_example(tmp_path, example):
    agree(tmp_path, example.read_text())


ACCOUNTLESS = """
[server]
listen = "127.0.0.1:0"

[[pools]]
name = "demo-pool"
kind = "demo"
models = ["d"]

[[pools]]
name = "graph"
kind = "langgraph"
base_url = "http://127.0.0.1:9"
models = ["g"]

[[pools]]
name = "graph-3"
kind = "langgraph"
base_url = "http://127.0.0.1:9"
models = ["g3"]
sessions = 3

[[pools]]
name = "prog"
kind = "cli"
preset = "custom"
command = ["/nonexistent/llm", "{prompt}"]
models = ["c"]

[[pools]]
name = "agent"
kind = "lingma"
agent_binary = "/nonexistent/Lingma"
models = ["l"]

[[pools]]
name = "anon"
kind = "socketio"
preset = "langfast"
supabase_url = "http://127.0.0.1:9"
socket_url = "http://127.0.0.1:9"
anon_key = "k"
prompt_id = "00000000-0000-4000-8000-000000000000"
models = ["s"]
min_accounts = 3
"""


def test_check_and_the_gateway_agree_on_accountless_pools(tmp_path):
    got = agree(tmp_path, ACCOUNTLESS)
    # The defaults, as documented: demo 2, langgraph/cli/lingma 1 unless
    # told, socketio max_accounts else min_accounts.
    assert got == {"demo-pool": 2, "graph": 1, "graph-3": 3, "prog": 1, "agent": 1, "anon": 3}, got
