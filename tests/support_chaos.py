"""Helpers for the supervision and chaos tests: a peer with chosen keys,
gateway configs with a supervisor policy and an admin key, the admin API,
the restart log, bounded polling.

Everything runs on 127.0.0.1; every wait here is bounded in time.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

import httpx

import support
from support import GATEWAY_KEY, PEER_SCRIPT, Gateway, PeerProc

CHAT = "/v1/chat/completions"
MODEL = "gpt-4o-mini"


def secret(prefix: str) -> str:
    """A unique secret-looking string, easy to grep for."""
    return f"{prefix}-{uuid.uuid4().hex}"


# --------------------------------------------------------------------------
# processes


def start_peer_with(
    keys: Iterable[str], *, seed: int | None = None, chunk_delay: float | None = None, models: str | None = None
) -> PeerProc:
    """The fake OpenAI peer accepting exactly ``keys``."""
    argv = [sys.executable, str(PEER_SCRIPT), "--port", "0", "--keys", ",".join(keys)]
    if seed is not None:
        argv += ["--seed", str(seed)]
    if chunk_delay is not None:
        argv += ["--chunk-delay", str(chunk_delay)]
    if models is not None:
        argv += ["--models", models]
    return PeerProc("openai-peer", argv)


def start_gateway_env(tmpdir: Path, config_text: str, env: dict | None = None) -> Gateway:
    """Like ``support.start_gateway``, with extra environment (e.g. RUST_LOG)."""
    return support.start_gateway(tmpdir, config_text, env=env)


def full_stderr(proc: support.Proc) -> str:
    """Everything the process wrote to stderr so far."""
    return proc.stderr_text(limit=1 << 30)


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


# --------------------------------------------------------------------------
# config


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def peer_pool_config(
    tmpdir: Path,
    peer_url: str,
    accounts: list[dict],
    *,
    admin_key: str | None,
    supervisor: dict | None = None,
    server: dict | None = None,
    pool: str = "peer",
    models: list[str] | None = None,
    max_concurrency: int = 4,
    api_keys: list[str] | None = None,
    data_dir: Path | None = None,
) -> str:
    """A gateway config with one openai pool on the peer.

    ``accounts`` are dicts with ``name`` and either ``api_key`` or
    ``api_key_file``.
    """
    data_dir = data_dir if data_dir is not None else Path(tmpdir) / "data"
    srv: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "api_keys": api_keys if api_keys is not None else [GATEWAY_KEY],
        "data_dir": str(data_dir),
        "first_token_timeout": "5s",
    }
    if admin_key is not None:
        srv["admin_key"] = admin_key
    srv.update(server or {})
    out = ["[server]"] + [f"{k} = {toml_value(v)}" for k, v in srv.items()]
    if supervisor:
        out += ["", "[supervisor]"] + [f"{k} = {toml_value(v)}" for k, v in supervisor.items()]
    out += [
        "",
        "[[pools]]",
        f"name = {toml_value(pool)}",
        'kind = "openai"',
        f"base_url = {toml_value(peer_url.rstrip('/') + '/v1')}",
        f"models = {toml_value(models or [MODEL])}",
        f"max_concurrency = {max_concurrency}",
    ]
    for acct in accounts:
        out.append("  [[pools.accounts]]")
        for k, v in acct.items():
            out.append(f"  {k} = {toml_value(v)}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------
# peer control beyond support.PeerProc


def peer_control(peer: PeerProc) -> httpx.Client:
    return httpx.Client(base_url=peer.url, timeout=10, trust_env=False)


def rate_fault(peer: PeerProc, mode: str, rate: float, key: str | None = None, **extra: Any) -> None:
    body: dict[str, Any] = {"mode": mode, "rate": rate, **extra}
    if key is not None:
        body["key"] = key
    with peer_control(peer) as c:
        c.post("/_peer/faults", json=body).raise_for_status()


def clear_faults(peer: PeerProc) -> None:
    """Removes every fault but keeps the request log."""
    with peer_control(peer) as c:
        c.delete("/_peer/faults").raise_for_status()


def active_faults(peer: PeerProc) -> dict:
    with peer_control(peer) as c:
        r = c.get("/_peer/faults")
        r.raise_for_status()
        return r.json()


# --------------------------------------------------------------------------
# admin API


class Admin:
    """The gateway's admin API with the admin key."""

    def __init__(self, gw: Gateway, key: str):
        self.gw = gw
        self.key = key
        # Every admin body seen, for the no-secrets check.
        self.seen: list[str] = []

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.gw.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=10, trust_env=False
        )

    def _get(self, path: str, **params: Any) -> Any:
        with self.client() as c:
            r = c.get(path, params={k: v for k, v in params.items() if v is not None})
        self.seen.append(r.text)
        assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text[:300]}"
        return r.json()

    def sessions(self) -> list[dict]:
        return self._get("/admin/sessions")["sessions"]

    def session(self, pool: str, name: str) -> dict:
        for s in self.sessions():
            if s["pool"] == pool and s["session"] == name:
                return s
        raise AssertionError(f"no session {pool}/{name} in /admin/sessions")

    def restarts(self, pool: str | None = None, session: str | None = None, since: str | None = None) -> list[dict]:
        return self._get("/admin/restarts", pool=pool, session=session, since=since)["events"]

    def reset(self, pool: str, name: str) -> httpx.Response:
        with self.client() as c:
            r = c.post(f"/admin/sessions/{pool}/{name}/reset")
        self.seen.append(r.text)
        return r

    def wait_state(self, pool: str, name: str, states: Iterable[str], timeout: float) -> dict:
        """Polls until the session is in one of ``states``; returns it."""
        wanted = set(states)
        last: dict = {}
        deadline = time.monotonic() + timeout
        while True:
            last = self.session(pool, name)
            if last["state"] in wanted:
                return last
            if time.monotonic() > deadline:
                raise AssertionError(f"{pool}/{name} not in {sorted(wanted)} after {timeout}s: {last}")
            time.sleep(0.05)


# --------------------------------------------------------------------------
# restart log


def read_restart_log(data_dir: Path) -> list[dict]:
    """Every line of ``data_dir/restarts.jsonl`` (parsed)."""
    path = Path(data_dir) / "restarts.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def event_time(ev: dict) -> float:
    """Unix seconds of a restart-log event (RFC 3339, UTC)."""
    from datetime import datetime

    t = ev["time"].replace("Z", "+00:00")
    return datetime.fromisoformat(t).timestamp()


# --------------------------------------------------------------------------
# misc


def wait_until(fn: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Calls ``fn`` until it returns something truthy (bounded); returns the
    last value."""
    deadline = time.monotonic() + timeout
    value = fn()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = fn()
    return value


def chat_body(prompt: str, stream: bool = False, model: str = MODEL, **extra: Any) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}
    if stream:
        body["stream"] = True
    return body
