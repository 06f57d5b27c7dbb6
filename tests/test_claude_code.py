"""The real Claude Code CLI as a client of the gateway's Anthropic frontend.

Claude Code is installed from npm into ``.cache/npm`` on first use (a few
seconds; skipped with the reason when the registry cannot be reached) and run
in print mode with a throw-away ``HOME``. Between it and the gateway sits a
small recording proxy, so every request Claude Code makes (path, beta
headers, body) and every answer status is known: a failing run shows the
exact exchange that went wrong.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import httpx
import pytest

import support
from support import DEMO_PREFIX, GATEWAY_KEY, PEER_PREFIX, Gateway, PeerProc

NPM_PREFIX = support.REPO_ROOT / ".cache" / "npm"
PACKAGE = "@anthropic-ai/claude-code"
CANDIDATES = (
    # The install script was skipped: the self-contained binary.
    NPM_PREFIX / "node_modules" / "@anthropic-ai" / "claude-code-linux-x64" / "claude",
    NPM_PREFIX / "node_modules" / ".bin" / "claude",
)
RUN_TIMEOUT = 120
INSTALL_TIMEOUT = 300
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "NO_PROXY", "no_proxy")
A_KEYS = ("ak-peer-1", "ak-peer-2")


# --------------------------------------------------------------------------
# installing Claude Code


def find_claude() -> Path | None:
    for path in CANDIDATES:
        if path.exists() and os.access(path, os.X_OK):
            try:
                r = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if r.returncode == 0 and "Claude Code" in r.stdout:
                return path
    return None


@pytest.fixture(scope="session")
def claude_bin() -> Path:
    found = find_claude()
    if found is not None:
        return found
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: cannot install Claude Code")
    NPM_PREFIX.mkdir(parents=True, exist_ok=True)
    errors = []
    for attempt in range(2):  # one retry for a flaky network
        try:
            r = subprocess.run(
                [npm, "install", "--prefix", str(NPM_PREFIX), "--no-audit", "--no-fund", PACKAGE],
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            errors.append(f"attempt {attempt + 1}: npm install timed out after {INSTALL_TIMEOUT}s")
            continue
        found = find_claude()
        if found is not None:
            return found
        errors.append(f"attempt {attempt + 1}: exit {r.returncode}: {(r.stderr or r.stdout)[-1500:]}")
    text = "\n".join(errors)
    unreachable = any(
        s in text for s in ("ENOTFOUND", "ECONNREFUSED", "ETIMEDOUT", "EAI_AGAIN", "ECONNRESET", "network", "timed out")
    )
    if unreachable:
        pytest.skip(f"the npm registry is unreachable, cannot install {PACKAGE}:\n{text}")
    pytest.fail(f"npm install {PACKAGE} did not produce a working claude binary:\n{text}", pytrace=False)


# --------------------------------------------------------------------------
# a recording proxy in front of the gateway


class Recorder:
    def __init__(self, upstream: str):
        self.upstream = upstream
        self.exchanges: list[dict] = []
        self.lock = threading.Lock()

    def clear(self) -> None:
        with self.lock:
            self.exchanges.clear()

    def snapshot(self) -> list[dict]:
        with self.lock:
            return list(self.exchanges)


HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "te", "upgrade", "proxy-connection"}


def make_handler(rec: Recorder):
    client = httpx.Client(base_url=rec.upstream, timeout=httpx.Timeout(120, connect=10), trust_env=False)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _proxy(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
            entry = {
                "method": self.command,
                "path": self.path,
                "beta": self.headers.get("anthropic-beta"),
                "version": self.headers.get("anthropic-version"),
                "request": body.decode("utf-8", "replace"),
                "status": None,
                "response": "",
            }
            with rec.lock:
                rec.exchanges.append(entry)
            try:
                with client.stream(self.command, self.path, content=body, headers=headers) as resp:
                    entry["status"] = resp.status_code
                    self.send_response(resp.status_code)
                    for k, v in resp.headers.items():
                        if k.lower() not in HOP_HEADERS:
                            self.send_header(k, v)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    kept = []
                    for chunk in resp.iter_raw():
                        if not chunk:
                            continue
                        if sum(len(c) for c in kept) < 20000:
                            kept.append(chunk)
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                    entry["response"] = b"".join(kept).decode("utf-8", "replace")
            except (httpx.HTTPError, OSError) as e:
                entry["response"] += f"\n[proxy: {type(e).__name__}: {e}]"
                self.close_connection = True

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _proxy

    return Handler, client


@pytest.fixture(scope="module")
def proxy(cc_gateway: Gateway) -> Iterator[tuple[str, Recorder]]:
    rec = Recorder(cc_gateway.url)
    handler, client = make_handler(rec)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="cc-proxy", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", rec
    server.shutdown()
    server.server_close()
    client.close()


# --------------------------------------------------------------------------
# gateway and peers


@pytest.fixture(scope="module")
def cc_openai_peer() -> Iterator[PeerProc]:
    with support.running(support.start_peer) as proc:
        yield proc


@pytest.fixture(scope="module")
def cc_anthropic_peer() -> Iterator[PeerProc]:
    with support.running(lambda: support.start_anthropic_peer(A_KEYS)) as proc:
        yield proc


@pytest.fixture(scope="module")
def cc_gateway(
    claude_bin: Path, cc_openai_peer: PeerProc, cc_anthropic_peer: PeerProc, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("claude-code-gw")
    q = support.toml_str
    text = support.gateway_config(tmp, cc_openai_peer.url) + f"""
[[pools]]
name = "anthropic-peer"
kind = "anthropic"
base_url = {q(cc_anthropic_peer.url)}
models = ["claude-peer"]
  [[pools.accounts]]
  name = "a1"
  api_key = {q(A_KEYS[0])}
"""
    with support.running_gateway(tmp, text) as gw:
        yield gw


# --------------------------------------------------------------------------
# running Claude Code


def run_claude(claude_bin: Path, base_url: str, args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS and not k.startswith(("ANTHROPIC_", "CLAUDE_"))}
    env.update(
        {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "ANTHROPIC_BASE_URL": base_url,
            "ANTHROPIC_API_KEY": GATEWAY_KEY,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            "NO_COLOR": "1",
        }
    )
    home.mkdir(parents=True, exist_ok=True)
    work = home / "work"
    work.mkdir(exist_ok=True)
    try:
        r = subprocess.run(
            [str(claude_bin), *args],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            env=env,
            cwd=str(work),
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"claude {' '.join(args)} did not finish within {RUN_TIMEOUT}s; stderr: {e.stderr!r}", pytrace=False)
    return r


def describe(r: subprocess.CompletedProcess, rec: Recorder, gw: Gateway) -> str:
    lines = [f"exit {r.returncode}", "stdout:", r.stdout[-4000:], "stderr:", r.stderr[-3000:], "requests:"]
    for x in rec.snapshot():
        lines.append(
            f"  {x['method']} {x['path']} -> {x['status']} beta={x['beta']!r}\n"
            f"    request: {x['request'][:1500]}\n    response: {x['response'][:1500]}"
        )
    lines += ["gateway stderr:", gw.stderr_text(3000)]
    return "\n".join(lines)


def assistant_blocks(lines: list[dict], kind: str) -> list[dict]:
    """The content blocks of type ``kind`` in stream-json assistant lines."""
    return [
        b
        for x in lines
        if x.get("type") == "assistant"
        for b in (x.get("message") or {}).get("content", [])
        if b.get("type") == kind
    ]


def message_requests(rec: Recorder) -> list[dict]:
    return [x for x in rec.snapshot() if x["method"] == "POST" and x["path"].split("?")[0].endswith("/v1/messages")]


def refused(x: dict, model: str) -> bool:
    """Whether the gateway refused or failed a request it should have served."""
    # Claude Code also probes `HEAD /` for connectivity; any answer will do.
    if not x["path"].startswith("/v1/"):
        return False
    if x["status"] is None:
        return True
    if x["status"] == 404:
        # A side request for a model this gateway does not serve is rightly
        # refused; the model under test must be served.
        try:
            asked = json.loads(x["request"]).get("model")
        except ValueError:
            asked = None
        return asked == model
    return x["status"] >= 400


def assert_no_client_errors(rec: Recorder, r: subprocess.CompletedProcess, gw: Gateway, model: str) -> None:
    """Every request Claude Code made to a route the gateway serves was
    accepted: its beta headers, system blocks, tools and metadata must not
    cause a 4xx."""
    bad = [x for x in rec.snapshot() if refused(x, model)]
    assert not bad, "gateway refused a Claude Code request:\n" + describe(r, rec, gw)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_print_json_against_demo(claude_bin, proxy, cc_gateway, home):
    url, rec = proxy
    rec.clear()
    r = run_claude(claude_bin, url, ["-p", "say hello", "--model", "demo", "--output-format", "json"], home)
    assert r.returncode == 0, describe(r, rec, cc_gateway)
    out = json.loads(r.stdout)
    assert out["type"] == "result", out
    assert out["is_error"] is False, describe(r, rec, cc_gateway)
    assert out["result"].startswith(DEMO_PREFIX), out["result"][:500]
    assert out["result"].rstrip().endswith("say hello"), "the demo echoes the last user text, which ends with the prompt"
    assert out["usage"]["input_tokens"] > 0 and out["usage"]["output_tokens"] > 0, out["usage"]
    sent = message_requests(rec)
    assert sent, "Claude Code made no /v1/messages request through the proxy:\n" + describe(r, rec, cc_gateway)
    body = json.loads(sent[-1]["request"])
    assert body["model"] == "demo"
    assert body.get("tools"), "Claude Code sends its tool list with every request"
    assert_no_client_errors(rec, r, cc_gateway, "demo")


def test_print_stream_json_against_demo(claude_bin, proxy, cc_gateway, home):
    url, rec = proxy
    rec.clear()
    r = run_claude(
        claude_bin, url, ["-p", "say hello", "--model", "demo", "--output-format", "stream-json", "--verbose"], home
    )
    assert r.returncode == 0, describe(r, rec, cc_gateway)
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    types = [x.get("type") for x in lines]
    assert types[0] == "system" and lines[0].get("session_id"), types
    assert "assistant" in types, types
    assert types[-1] == "result", types
    result = lines[-1]
    assert result["is_error"] is False, describe(r, rec, cc_gateway)
    assert result["result"].startswith(DEMO_PREFIX), result["result"][:500]
    texts = [b.get("text", "") for b in assistant_blocks(lines, "text")]
    assert any(t.startswith(DEMO_PREFIX) for t in texts), texts
    assert_no_client_errors(rec, r, cc_gateway, "demo")


def test_print_json_against_openai_pool(claude_bin, proxy, cc_gateway, cc_openai_peer, home):
    url, rec = proxy
    rec.clear()
    cc_openai_peer.reset()
    r = run_claude(claude_bin, url, ["-p", "say hello", "--model", "gpt-4o-mini", "--output-format", "json"], home)
    assert r.returncode == 0, describe(r, rec, cc_gateway)
    out = json.loads(r.stdout)
    assert out["is_error"] is False, describe(r, rec, cc_gateway)
    assert out["result"].startswith(PEER_PREFIX), out["result"][:500]
    assert out["result"].rstrip().endswith("say hello")
    served = [q for q in cc_openai_peer.requests() if q["outcome"] == "completed"]
    assert served, f"the OpenAI peer answered nothing: {cc_openai_peer.requests()}"
    fwd = served[-1]["body"]
    assert fwd["model"] == "gpt-4o-mini"
    assert fwd.get("tools"), "Claude Code's tools must reach the OpenAI upstream"
    assert fwd["messages"][0]["role"] in ("system", "developer"), "Claude Code's system blocks become a system message"
    assert_no_client_errors(rec, r, cc_gateway, "gpt-4o-mini")


def test_print_json_against_anthropic_pool(claude_bin, proxy, cc_gateway, cc_anthropic_peer, home):
    # Claude Code's full request (system blocks with cache_control, many
    # tools, metadata.user_id, thinking settings) translated for a strict
    # Anthropic upstream that refuses anything the real API would.
    url, rec = proxy
    rec.clear()
    cc_anthropic_peer.reset()
    r = run_claude(claude_bin, url, ["-p", "say hello", "--model", "claude-peer", "--output-format", "json"], home)
    assert r.returncode == 0, describe(r, rec, cc_gateway)
    out = json.loads(r.stdout)
    peer_log = cc_anthropic_peer.requests()
    assert out["is_error"] is False, describe(r, rec, cc_gateway) + f"\npeer requests: {json.dumps(peer_log)[:3000]}"
    assert "anthropic peer reply to:" in out["result"], out["result"][:500]
    assert out["result"].rstrip().endswith("say hello")
    served = [q for q in peer_log if q["outcome"] == "completed"]
    assert served, f"the Anthropic peer answered nothing: {json.dumps(peer_log)[:3000]}"
    assert served[-1]["body"].get("tools"), "Claude Code's tools must reach the Anthropic upstream"
    assert_no_client_errors(rec, r, cc_gateway, "claude-peer")



def test_tool_loop_against_demo(claude_bin, proxy, cc_gateway, home):
    # The demo calls the tool the prompt names (arguments from its schema);
    # Claude Code runs it (here: a Read the tool itself refuses, so nothing is
    # touched) and sends the tool_result back, which the demo echoes.
    url, rec = proxy
    rec.clear()
    r = run_claude(
        claude_bin, url, ["-p", "please use Read", "--model", "demo", "--output-format", "stream-json", "--verbose"], home
    )
    assert r.returncode == 0, describe(r, rec, cc_gateway)
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    result = lines[-1]
    assert result["type"] == "result" and result["is_error"] is False, describe(r, rec, cc_gateway)
    assert result["result"].startswith("The tool returned: "), result["result"][:500]
    uses = assistant_blocks(lines, "tool_use")
    assert [u["name"] for u in uses] == ["Read"], uses
    sent = message_requests(rec)
    assert len(sent) >= 2, describe(r, rec, cc_gateway)
    last = json.loads(sent[-1]["request"])["messages"]
    results = [
        b for m in last if isinstance(m.get("content"), list) for b in m["content"] if b.get("type") == "tool_result"
    ]
    assert [b["tool_use_id"] for b in results] == [uses[0]["id"]], results
    assert_no_client_errors(rec, r, cc_gateway, "demo")
