"""Helpers for the black-box tests: processes, configs, SSE parsing.

The gateway binary and the fake upstreams are started as real processes on
127.0.0.1 with port 0; each prints ``listening on http://ADDR`` on stdout once
it is ready, which is how we learn the address.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import anthropic
import httpx
import openai
import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
PEER_SCRIPT = TESTS_DIR / "peers" / "openai_peer.py"
ANTHROPIC_PEER_SCRIPT = TESTS_DIR / "peers" / "anthropic_peer.py"
LISTENING_RE = re.compile(r"listening on http://(\S+)")

GATEWAY_KEY = "sk-test"
PEER_KEYS = ("sk-peer-1", "sk-peer-2")
DEMO_PREFIX = "This is the troupe demo model. You said: "
PEER_PREFIX = "peer reply to: "
START_TIMEOUT = 30.0

# Never send loopback test traffic through a proxy from the environment.
for _var in ("NO_PROXY", "no_proxy"):
    _cur = os.environ.get(_var, "")
    if "127.0.0.1" not in _cur:
        os.environ[_var] = ",".join(x for x in (_cur, "127.0.0.1", "localhost") if x)


def troupe_bin() -> Path:
    """The gateway binary: $TROUPE_BIN, else target/debug/troupe."""
    raw = os.environ.get("TROUPE_BIN") or "target/debug/troupe"
    path = Path(raw)
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


def words(text: str) -> list[str]:
    """Split text the way the demo and peer stream it: a word plus its
    following whitespace per piece."""
    return re.findall(r"\S+\s*", text)


# --------------------------------------------------------------------------
# processes


class StartError(RuntimeError):
    pass


class Proc:
    """A child process that announces ``listening on http://ADDR``."""

    def __init__(self, name: str, argv: list[str], env: dict | None = None, timeout: float = START_TIMEOUT):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.stdout_lines: list[str] = []
        self._stderr = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".stderr", delete=False)
        full_env = dict(os.environ)
        # Environment overrides (TROUPE__SECTION__KEY) would change the config
        # under test: drop them.
        for k in list(full_env):
            if k.startswith("TROUPE__"):
                del full_env[k]
        full_env.setdefault("NO_COLOR", "1")
        if env:
            full_env.update(env)
        self.popen = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=str(REPO_ROOT),
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
        )
        self._ready: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read_stdout, name=f"{name}-stdout", daemon=True)
        self._reader.start()
        try:
            addr = self._ready.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            raise StartError(self._describe(f"did not print 'listening on http://ADDR' within {timeout:.0f}s"))
        if addr is None:
            self.stop()
            raise StartError(self._describe(f"exited with code {self.popen.returncode} before listening"))
        self.addr: str = addr
        self.url = f"http://{addr}"

    def _read_stdout(self) -> None:
        found = False
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.stdout_lines.append(line.rstrip("\n"))
            if len(self.stdout_lines) > 5000:
                del self.stdout_lines[:1000]
            if not found:
                m = LISTENING_RE.search(line)
                if m:
                    found = True
                    self._ready.put(m.group(1).rstrip("/"))
        self.popen.wait()
        if not found:
            self._ready.put(None)

    def stderr_text(self, limit: int = 6000) -> str:
        try:
            with open(self._stderr.name, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
        except OSError:
            return ""
        return text[-limit:]

    def _describe(self, what: str) -> str:
        return (
            f"{self.name} {what}\n"
            f"  command: {' '.join(self.argv)}\n"
            + "  stdout:\n    "
            + "\n    ".join(self.stdout_lines[-40:])
            + "\n  stderr:\n    "
            + "\n    ".join(self.stderr_text().splitlines()[-60:])
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        try:
            self._stderr.close()
        except OSError:
            pass

    def cleanup(self) -> None:
        self.stop()
        try:
            os.unlink(self._stderr.name)
        except OSError:
            pass

    def __enter__(self) -> "Proc":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()


P = TypeVar("P", bound=Proc)


def started(start: Callable[[], P]) -> P:
    """``start()``, with a failed start failing the test (no traceback)."""
    try:
        return start()
    except StartError as e:
        pytest.fail(str(e), pytrace=False)


@contextmanager
def running(start: Callable[[], P]) -> Iterator[P]:
    """For fixtures: a process from ``start()`` (see :func:`started`),
    stopped on the way out."""
    proc = started(start)
    try:
        yield proc
    finally:
        proc.cleanup()


def start_peer(timeout: float = START_TIMEOUT) -> "PeerProc":
    return PeerProc(
        "openai-peer",
        [sys.executable, str(PEER_SCRIPT), "--port", "0", "--keys", ",".join(PEER_KEYS)],
        timeout=timeout,
    )


def start_anthropic_peer(keys: tuple[str, ...] | list[str]) -> "PeerProc":
    """The fake Anthropic upstream accepting exactly ``keys``."""
    return PeerProc("anthropic-peer", [sys.executable, str(ANTHROPIC_PEER_SCRIPT), "--port", "0", "--keys", ",".join(keys)])


def script_peer(cls: type[P], name: str, script: Path, *args: str, timeout: float = START_TIMEOUT) -> P:
    """A peer of class ``cls`` started from ``script --port 0 ARGS...``."""
    return cls(name, [sys.executable, str(script), "--port", "0", *args], timeout=timeout)


class PeerProc(Proc):
    """The fake OpenAI upstream, with its control API."""

    def _control(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, trust_env=False)

    def reset(self) -> None:
        with self._control() as c:
            c.post("/_peer/reset").raise_for_status()

    def fault(self, mode: str, count: int = 1, key: str | None = None, **extra: Any) -> None:
        body: dict[str, Any] = {"mode": mode, "count": count}
        if key is not None:
            body["key"] = key
        body.update(extra)
        with self._control() as c:
            c.post("/_peer/faults", json=body).raise_for_status()

    def requests(self) -> list[dict]:
        with self._control() as c:
            r = c.get("/_peer/requests")
            r.raise_for_status()
            return r.json()["requests"]


# --------------------------------------------------------------------------
# gateway config and process


def toml_str(s: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes for our inputs.
    return json.dumps(s)


def server_toml(tmpdir: Path, admin_key: str | None, *, api_keys: tuple[str, ...] = (GATEWAY_KEY,), first_token_timeout: str = "5s", **extra: str) -> str:
    """A ``[server]`` table on a free loopback port, with ``data_dir`` under
    ``tmpdir`` and the ``extra`` keys (string values)."""
    lines = [
        "",
        "[server]",
        'listen = "127.0.0.1:0"',
        f"api_keys = [{', '.join(toml_str(k) for k in api_keys)}]",
        *([f"admin_key = {toml_str(admin_key)}"] if admin_key is not None else []),
        f"data_dir = {toml_str(str(Path(tmpdir) / 'data'))}",
        f"first_token_timeout = {toml_str(first_token_timeout)}",
    ]
    lines += [f"{k} = {toml_str(v)}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def accounts_toml(accounts: list[tuple[str, str]]) -> str:
    """``[[pools.accounts]]`` tables, one per (name, api_key)."""
    return "".join(f"  [[pools.accounts]]\n  name = {toml_str(n)}\n  api_key = {toml_str(k)}\n" for n, k in accounts)


def gateway_config(
    tmpdir: Path,
    peer_url: str | None,
    *,
    api_keys: list[str] | None = None,
    server_extra: str = "",
    first_token_timeout: str = "5s",
    demo: bool = True,
) -> str:
    keys = (GATEWAY_KEY,) if api_keys is None else tuple(api_keys)
    out = server_toml(tmpdir, None, api_keys=keys, first_token_timeout=first_token_timeout).strip("\n").split("\n")
    if server_extra:
        out.append(server_extra.strip())
    if demo:
        out += [
            "",
            "[[pools]]",
            'name = "demo"',
            'kind = "demo"',
            'models = ["demo", "demo-alias=demo"]',
            "sessions = 2",
            "max_concurrency = 4",
            'chunk_delay = "2ms"',
        ]
    if peer_url:
        out += [
            "",
            "[[pools]]",
            'name = "peer"',
            'kind = "openai"',
            f"base_url = {toml_str(peer_url.rstrip('/') + '/v1')}",
            'models = ["gpt-4o-mini", "peer-alias=gpt-4o-mini"]',
            "max_concurrency = 4",
            *accounts_toml([("k1", PEER_KEYS[0]), ("k2", PEER_KEYS[1])]).rstrip("\n").split("\n"),
        ]
    return "\n".join(out) + "\n"


def write_config(tmpdir: Path, text: str, name: str = "troupe.toml") -> Path:
    tmpdir = Path(tmpdir)
    tmpdir.mkdir(parents=True, exist_ok=True)
    path = tmpdir / name
    path.write_text(text, encoding="utf-8")
    return path


class Gateway(Proc):
    """A running ``troupe serve``."""

    config_path: Path

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def http(self, auth: bool = True, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {GATEWAY_KEY}"} if auth else {}
        headers.update(kw.pop("headers", {}))
        return httpx.Client(base_url=self.url, headers=headers, timeout=kw.pop("timeout", 30), trust_env=False, **kw)

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Poll /readyz until 200 (bounded); True if it became ready."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=2, trust_env=False) as c:
            while time.monotonic() < deadline:
                try:
                    if c.get("/readyz").status_code == 200:
                        return True
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        return False


def start_gateway(
    tmpdir: Path, config_text: str, timeout: float = START_TIMEOUT, env: dict | None = None
) -> Gateway:
    binary = troupe_bin()
    if not binary.exists():
        raise StartError(f"gateway binary {binary} not found: run `cargo build` or set TROUPE_BIN")
    path = write_config(tmpdir, config_text)
    gw = Gateway("troupe", [str(binary), "serve", "--config", str(path)], env=env, timeout=timeout)
    gw.config_path = path
    return gw


@contextmanager
def running_gateway(tmpdir: Path, config_text: str, env: dict | None = None, ready: float = 10) -> Iterator[Gateway]:
    """For fixtures: a gateway from ``config_text`` (see :func:`running`),
    given a bounded wait for /readyz (which is asserted in its own test)."""
    with running(lambda: start_gateway(tmpdir, config_text, env=env)) as gw:
        gw.wait_ready(timeout=ready)
        yield gw


def admin_sessions(gw: Gateway, admin_key: str) -> list[dict] | None:
    """The gateway's /admin/sessions list, or None when it cannot be had."""
    with httpx.Client(base_url=gw.url, timeout=2, trust_env=False) as c:
        try:
            r = c.get("/admin/sessions", headers={"Authorization": f"Bearer {admin_key}"})
            return r.json()["sessions"] if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, KeyError):
            return None


def wait_sessions_usable(gw: Gateway, admin_key: str, timeout: float = 5.0) -> None:
    """Bounded wait until no session of the gateway is cooling down, so a
    fault left by one test does not change which session serves the next."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sessions = admin_sessions(gw, admin_key)
        if sessions is not None and all(
            s.get("state") in ("ready", "trial") and not s.get("model_cooldowns") for s in sessions
        ):
            return
        time.sleep(0.1)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Polls ``check`` until it returns something truthy, and returns that;
    fails naming ``what`` (and the last value) when ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def session_list(gw: Gateway, admin_key: str) -> list[dict]:
    """/admin/sessions (raises on any failure)."""
    with gw.http(headers={"Authorization": f"Bearer {admin_key}"}) as c:
        return c.get("/admin/sessions").raise_for_status().json()["sessions"]


def restarts(gw: Gateway) -> list[dict]:
    """The gateway's restart log, read with ``troupe restarts --json``."""
    r = run_troupe(["restarts", "--data-dir", str(gw.config_path.parent / "data"), "--json"])
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def run_troupe(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    binary = troupe_bin()
    if not binary.exists():
        raise StartError(f"gateway binary {binary} not found: run `cargo build` or set TROUPE_BIN")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TROUPE__")}
    env.setdefault("NO_COLOR", "1")
    return subprocess.run(
        [str(binary), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(REPO_ROOT),
        env=env,
        stdin=subprocess.DEVNULL,
    )


# --------------------------------------------------------------------------
# SSE


@dataclass
class SSEResult:
    """What a raw SSE response carried."""

    status: int
    headers: httpx.Headers
    lines: list[str] = field(default_factory=list)  # every raw line, without EOL
    data: list[str] = field(default_factory=list)  # data payloads, in order
    done: bool = False  # saw `data: [DONE]`
    after_done: list[str] = field(default_factory=list)  # data payloads after [DONE]
    transport_error: str | None = None  # the connection broke mid-stream
    body: bytes = b""  # full body for non-SSE answers

    def chunks(self) -> list[dict]:
        """Parsed JSON of every data payload except [DONE]."""
        return [json.loads(d) for d in self.data if d != "[DONE]"]


def parse_sse_lines(lines: Iterator[str], result: SSEResult) -> None:
    buf: list[str] = []

    def flush() -> None:
        if not buf:
            return
        payload = "\n".join(buf)
        buf.clear()
        if result.done:
            result.after_done.append(payload)
            return
        if payload.strip() == "[DONE]":
            result.done = True
        result.data.append(payload)

    for raw in lines:
        line = raw.rstrip("\r\n")
        result.lines.append(line)
        if line == "":
            flush()
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            buf.append(value)
    flush()


def stream_raw(client: httpx.Client, path: str, body: Any, **kw: Any) -> SSEResult:
    """POST and collect an SSE answer; records (not raises) a broken connection."""
    with client.stream("POST", path, json=body, **kw) as resp:
        result = SSEResult(status=resp.status_code, headers=resp.headers)
        ctype = resp.headers.get("content-type", "")
        try:
            if resp.status_code == 200 and ctype.startswith("text/event-stream"):
                parse_sse_lines(resp.iter_lines(), result)
            else:
                result.body = resp.read()
        except httpx.HTTPError as e:  # RemoteProtocolError, ReadError, ...
            result.transport_error = f"{type(e).__name__}: {e}"
        return result


# --------------------------------------------------------------------------
# OpenAI SDK stream helpers


def collect_sdk_stream(stream: Any) -> dict:
    """Fold an SDK stream into text, tool calls and bookkeeping."""
    chunks = list(stream)
    text_parts: list[str] = []
    calls: dict[int, dict] = {}
    arg_fragments: dict[int, int] = {}
    finish = []
    roles = []
    usage_chunks = []
    for ch in chunks:
        if ch.usage is not None:
            usage_chunks.append(ch)
        for choice in ch.choices:
            d = choice.delta
            if d.role:
                roles.append(d.role)
            if d.content:
                text_parts.append(d.content)
            for tc in d.tool_calls or []:
                slot = calls.setdefault(tc.index, {"id": None, "type": None, "name": None, "arguments": ""})
                if tc.id:
                    slot["id"] = tc.id
                if tc.type:
                    slot["type"] = tc.type
                if tc.function is not None:
                    if tc.function.name:
                        slot["name"] = tc.function.name
                    if tc.function.arguments:
                        slot["arguments"] += tc.function.arguments
                        arg_fragments[tc.index] = arg_fragments.get(tc.index, 0) + 1
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    return {
        "chunks": chunks,
        "text_parts": text_parts,
        "text": "".join(text_parts),
        "calls": [calls[i] for i in sorted(calls)],
        "arg_fragments": arg_fragments,
        "finish": finish,
        "roles": roles,
        "usage_chunks": usage_chunks,
    }


def make_client(base_url: str, api_key: str = GATEWAY_KEY, timeout: float = 30) -> openai.OpenAI:
    """The official SDK pointed at ``base_url`` (no SDK-side retries)."""
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout)


def make_anthropic_client(base_url: str, api_key: str = GATEWAY_KEY, timeout: float = 30) -> anthropic.Anthropic:
    """The official Anthropic SDK pointed at ``base_url`` (no SDK-side retries)."""
    return anthropic.Anthropic(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout)


def user(text: str) -> list[dict]:
    """A conversation of one user message."""
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def oc(gw: Gateway) -> openai.OpenAI:
    """Fixture: the OpenAI SDK on the module's gateway ``gw``."""
    return make_client(gw.v1)


@pytest.fixture(scope="module")
def ac(gw: Gateway) -> anthropic.Anthropic:
    """Fixture: the Anthropic SDK on the module's gateway ``gw``."""
    return make_anthropic_client(gw.url)


def read_named_events(resp: Any) -> tuple[list[tuple[str | None, Any]], str | None]:
    """Reads an SSE body with named events (Anthropic's) from an httpx
    streaming response: ([(event, data)], the transport error if the body
    broke off)."""
    events: list[tuple[str | None, Any]] = []
    error: str | None = None
    name: str | None = None
    buf: list[str] = []
    try:
        for line in resp.iter_lines():
            line = line.rstrip("\r")
            if line == "":
                if buf:
                    events.append((name, json.loads("\n".join(buf))))
                name, buf = None, []
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "event":
                    name = value
                elif field == "data":
                    buf.append(value)
    except httpx.HTTPError as e:
        error = f"{type(e).__name__}: {e}"
    if buf:
        events.append((name, json.loads("\n".join(buf))))
    return events, error
