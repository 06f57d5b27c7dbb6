"""Codex CLI (npm ``@openai/codex``, pinned in ``tests/clients/codex``) as a
real client of ``/v1/responses``.

Each test runs ``codex exec --json`` with a throw-away ``CODEX_HOME`` whose
``config.toml`` names troupe as the model provider, exactly as the README's
Codex section says (``wire_api = "responses"``, the key in an environment
variable), with nothing but loopback to talk to. The final answer is the
last ``agent_message`` of the JSON lines Codex prints.

The tool round trip: the OpenAI-compatible test upstream is told (by a
``troupe-calls:`` line in the prompt) to call Codex's shell tool
``exec_command``; Codex runs the command, sends its output back as a
``function_call_output``, and the upstream's final answer quotes it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

import support
from support import DEMO_PREFIX, GATEWAY_KEY, Gateway, PeerProc

CODEX_DIR = support.TESTS_DIR / "clients" / "codex"
CODEX_BIN = CODEX_DIR / "node_modules" / ".bin" / "codex"
INSTALL_TIMEOUT = 600
RUN_TIMEOUT = 120
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def pinned_version() -> str:
    return json.loads((CODEX_DIR / "package.json").read_text(encoding="utf-8"))["dependencies"]["@openai/codex"]


def installed() -> bool:
    try:
        meta = json.loads((CODEX_DIR / "node_modules" / "@openai" / "codex" / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return meta.get("version") == pinned_version() and CODEX_BIN.exists()


@pytest.fixture(scope="session")
def codex() -> str:
    """The pinned Codex CLI (installed by scripts/test.sh; here if missing)."""
    if not installed():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: cannot install Codex CLI (tests/clients/codex)")
        r = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=str(CODEX_DIR),
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        if r.returncode != 0 or not installed():
            pytest.fail(f"npm ci in {CODEX_DIR} failed:\n{(r.stderr or r.stdout)[-2000:]}", pytrace=False)
    return str(CODEX_BIN)


@pytest.fixture(scope="module")
def peer() -> Iterator[PeerProc]:
    with support.running(support.start_peer) as proc:
        yield proc


@pytest.fixture(scope="module")
def gw(peer: PeerProc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("codex-gw")
    with support.running_gateway(tmp, support.gateway_config(tmp, peer.url)) as gateway:
        yield gateway


def codex_home(tmp: Path, gw: Gateway, model: str) -> Path:
    """A CODEX_HOME with troupe as the provider, as in the README."""
    home = tmp / "codex-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f"""model = "{model}"
model_provider = "troupe"
check_for_update_on_startup = false

[analytics]
enabled = false

[features]
plugins = false

[model_providers.troupe]
name = "troupe"
base_url = "{gw.v1}"
env_key = "TROUPE_API_KEY"
wire_api = "responses"
""",
        encoding="utf-8",
    )
    return home


def run_codex(codex: str, home: Path, workdir: Path, prompt: str, *extra: str) -> tuple[list[dict], subprocess.CompletedProcess]:
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS and not k.startswith("OPENAI_")}
    env.update({"CODEX_HOME": str(home), "TROUPE_API_KEY": GATEWAY_KEY, "NO_COLOR": "1"})
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(
            [codex, "exec", "--json", "--skip-git-repo-check", *extra, prompt],
            cwd=str(workdir),
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"codex exec did not finish within {RUN_TIMEOUT}s: {str(e.stderr or '')[-3000:]}", pytrace=False)
    events = []
    for line in r.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
    return events, r


def final_message(events: list[dict]) -> str | None:
    msgs = [
        e["item"]["text"]
        for e in events
        if e.get("type") == "item.completed" and e.get("item", {}).get("type") == "agent_message"
    ]
    return msgs[-1] if msgs else None


def explain(events: list[dict], r: subprocess.CompletedProcess) -> str:
    return f"exit {r.returncode}\nevents: {json.dumps(events)[-3000:]}\nstderr: {r.stderr[-3000:]}"


def test_codex_answers_from_the_demo_pool(codex, gw, tmp_path):
    home = codex_home(tmp_path, gw, "demo")
    events, r = run_codex(codex, home, tmp_path / "work", "hello from codex")
    assert r.returncode == 0, explain(events, r)
    assert final_message(events) == DEMO_PREFIX + "hello from codex", explain(events, r)
    assert [e["type"] for e in events if e["type"].startswith("turn.")] == ["turn.started", "turn.completed"]
    usage = [e for e in events if e["type"] == "turn.completed"][0]["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0


def test_codex_answers_from_an_openai_pool(codex, gw, peer, tmp_path):
    peer.reset()
    home = codex_home(tmp_path, gw, "gpt-4o-mini")
    events, r = run_codex(codex, home, tmp_path / "work", "plain question")
    assert r.returncode == 0, explain(events, r)
    assert final_message(events) == "peer reply to: plain question", explain(events, r)
    # Codex's developer instructions arrived as the system prompt, its
    # tools as functions (its web_search tool left out).
    body = [q for q in peer.requests() if q["path"].endswith("/chat/completions")][-1]["body"]
    assert body["messages"][0]["role"] == "system"
    names = {t["function"]["name"] for t in body.get("tools", [])}
    assert "exec_command" in names and "web_search" not in names


def test_codex_runs_a_command_the_model_asks_for(codex, gw, peer, tmp_path):
    """The model (the test upstream) calls exec_command; Codex runs it and
    sends the output back; the final answer is built on that output."""
    peer.reset()
    home = codex_home(tmp_path, gw, "gpt-4o-mini")
    work = tmp_path / "work"
    work.mkdir()
    (work / "marker.txt").write_text("marker-7f3a", encoding="utf-8")
    call = [{"name": "exec_command", "arguments": {"cmd": "cat marker.txt && echo ran-in-codex"}}]
    prompt = "show me the marker\ntroupe-calls: " + json.dumps(call)
    events, r = run_codex(codex, home, work, prompt, "--dangerously-bypass-approvals-and-sandbox")
    assert r.returncode == 0, explain(events, r)
    commands = [
        e["item"] for e in events
        if e.get("type") == "item.completed" and e.get("item", {}).get("type") == "command_execution"
    ]
    assert commands, explain(events, r)
    assert "marker-7f3a" in commands[0]["aggregated_output"] and commands[0]["exit_code"] == 0
    answer = final_message(events)
    assert answer is not None and answer.startswith("peer saw tool result:"), explain(events, r)
    assert "marker-7f3a" in answer and "ran-in-codex" in answer
    # The second request carried the call and its output back.
    bodies = [q["body"] for q in peer.requests() if q["path"].endswith("/chat/completions")]
    assert len(bodies) == 2
    last = bodies[-1]["messages"]
    assert last[-2]["tool_calls"][0]["function"]["name"] == "exec_command"
    assert last[-1]["role"] == "tool" and "ran-in-codex" in last[-1]["content"]
