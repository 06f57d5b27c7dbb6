"""The `cli` kind: command-line chat programs as upstreams.

The fake CLIs under ``peers/cli`` take the real programs' options and print
their JSON lines; markers in the prompt make them slow, crash, fail, write to
stderr or ignore SIGTERM (see ``peers/cli/fakecli.py``). Every process they
start notes its pid in the state directory, so a test can prove that none
survives. The last test runs the real Claude Code (from npm) as a `cli`
upstream against a second gateway serving the demo pool.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

import anthropic
import httpx
import openai
import pytest

import support
from support import DEMO_PREFIX, Gateway, restarts

PEERS = support.TESTS_DIR / "peers" / "cli"
ADMIN_KEY = "adm-cli-test-key"
PRESETS = ("claude", "codex", "gemini")
FAST_SUPERVISOR = """
  [pools.supervisor]
  backoff_initial = "100ms"
  backoff_multiplier = 2.0
  backoff_max = "1s"
  max_restarts = 3
  restart_window = "60s"
"""


def toml(s: str) -> str:
    return json.dumps(s)


def env_table(env: dict[str, str]) -> str:
    return "{ " + ", ".join(f"{toml(k)} = {toml(v)}" for k, v in env.items()) + " }"


def server_section(tmp: Path, request_timeout: str = "60s") -> str:
    return support.server_toml(tmp, ADMIN_KEY, first_token_timeout="20s", request_timeout=request_timeout)


def cli_pool(name: str, preset: str, models: list[str], state: Path, extra: str = "", binary: str | None = None) -> str:
    env = {"FAKE_CLI_STATE": str(state), "FAKE_CLI_DELAY": "0.2", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    lines = [
        "",
        "[[pools]]",
        f"name = {toml(name)}",
        'kind = "cli"',
        f"preset = {toml(preset)}",
        f"models = [{', '.join(toml(m) for m in models)}]",
        "max_concurrency = 4",
        f"env = {env_table(env)}",
    ]
    if preset != "custom":
        lines.append(f"binary = {toml(binary or str(PEERS / ('fake_' + preset)))}")
    return "\n".join(lines) + "\n" + extra


def start(tmp: Path, text: str) -> Gateway:
    return support.started(lambda: support.start_gateway(tmp, text))


def wait_until(check: Callable[[], object], what: str, timeout: float = 15.0) -> object:
    return support.wait_for(what, check, timeout)


def sessions(gw: Gateway) -> dict[str, dict]:
    return {s["pool"]: s for s in support.session_list(gw, ADMIN_KEY)}


def calls(state: Path) -> list[list[str]]:
    f = state / "calls.jsonl"
    if not f.exists():
        return []
    return [json.loads(line)["argv"] for line in f.read_text().splitlines() if line.strip()]


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie waiting to be reaped does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


# --------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-state")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, state: Path) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("cli-gw")
    text = server_section(tmp)
    text += cli_pool("claude", "claude", ["claude", "fake-opus=claude-opus-fake"], state)
    text += cli_pool("codex", "codex", ["codex", "fake-gpt=gpt-fake"], state)
    text += cli_pool("gemini", "gemini", ["gemini", "fake-gem=gemini-2.5-fake"], state)
    text += cli_pool("custom", "custom", ["echo"], state, extra='command = ["/bin/sh", "-c", "echo \\"custom[$1]: $2\\"", "sh", "{model}", "{prompt}"]\n')
    g = start(tmp, text)
    wait_until(lambda: all(s["state"] == "ready" for s in sessions(g).values()) and len(sessions(g)) == 4, "cli sessions ready")
    yield g
    g.cleanup()


@pytest.fixture(scope="module")
def oai(gw: Gateway) -> openai.OpenAI:
    return support.make_client(gw.v1, timeout=60)


@pytest.fixture(scope="module")
def ant(gw: Gateway) -> anthropic.Anthropic:
    return support.make_anthropic_client(gw.url, timeout=60)


def ask_openai(client: openai.OpenAI, model: str, messages: list[dict], stream: bool) -> str:
    if not stream:
        r = client.chat.completions.create(model=model, messages=messages)
        assert r.choices[0].finish_reason == "stop"
        return r.choices[0].message.content or ""
    out = []
    with client.chat.completions.create(model=model, messages=messages, stream=True) as s:
        for chunk in s:
            for ch in chunk.choices:
                out.append(ch.delta.content or "")
    return "".join(out)


def ask_anthropic(client: anthropic.Anthropic, model: str, messages: list[dict], stream: bool, system: str | None = None) -> str:
    kw = {"system": system} if system else {}
    if not stream:
        r = client.messages.create(model=model, max_tokens=256, messages=messages, **kw)
        assert r.stop_reason == "end_turn"
        assert r.usage.output_tokens > 0
        return "".join(b.text for b in r.content if b.type == "text")
    with client.messages.stream(model=model, max_tokens=256, messages=messages, **kw) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert final.stop_reason == "end_turn"
    return text


# --------------------------------------------------------------------------
# answers through both frontends


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_answers_through_the_openai_sdk(oai, preset, stream):
    text = ask_openai(oai, preset, [{"role": "user", "content": f"hello {preset} {stream}"}], stream)
    assert text.startswith(f"Hello from fake {preset}. turn=1 session="), text
    # The backend name means the CLI's own default: no --model.
    assert "model=default." in text, text
    assert text.endswith(f"You said: hello {preset} {stream}"), text


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_answers_through_the_anthropic_sdk(ant, preset, stream):
    text = ask_anthropic(ant, preset, [{"role": "user", "content": f"hi {preset} {stream}"}], stream)
    assert text.startswith(f"Hello from fake {preset}. "), text
    assert text.endswith(f"You said: hi {preset} {stream}"), text


def test_usage_comes_from_the_cli(oai):
    r = oai.chat.completions.create(model="claude", messages=[{"role": "user", "content": "count me"}])
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (11, 7)


def test_other_models_are_passed_and_backend_names_never(oai, state):
    for public, upstream in (("fake-opus", "claude-opus-fake"), ("fake-gpt", "gpt-fake"), ("fake-gem", "gemini-2.5-fake")):
        text = ask_openai(oai, public, [{"role": "user", "content": "which model"}], False)
        assert f"model={upstream}." in text, text
    for argv in calls(state):
        for a, b in zip(argv, argv[1:]):
            if a == "--model":
                assert b not in PRESETS, argv


def test_the_system_prompt_goes_to_claude_as_an_option(ant, state):
    text = ask_anthropic(ant, "claude", [{"role": "user", "content": "with a system prompt"}], False, system="Be terse.")
    assert "(system: Be terse.)" in text, text
    argv = calls(state)[-1]
    assert argv[argv.index("--system-prompt") + 1] == "Be terse."
    assert argv[-1] == "with a system prompt"


def test_a_custom_command_fills_its_placeholders(oai):
    for stream in (False, True):
        text = ask_openai(oai, "echo", [{"role": "user", "content": "plain text please"}], stream)
        assert text == "custom[echo]: plain text please\n", repr(text)


# --------------------------------------------------------------------------
# conversations resume the CLI's own session


@pytest.mark.parametrize("preset", PRESETS)
def test_a_second_turn_resumes_the_cli_session(oai, ant, state, preset):
    first = f"first turn for {preset}"
    a1 = ask_openai(oai, preset, [{"role": "user", "content": first}], True)
    sid = a1.split("session=")[1].split()[0]
    history = [
        {"role": "user", "content": first},
        {"role": "assistant", "content": a1},
        {"role": "user", "content": "second turn"},
    ]
    a2 = ask_openai(oai, preset, history, False)
    assert f"turn=2 session={sid} " in a2, (a1, a2)
    history += [{"role": "assistant", "content": a2}, {"role": "user", "content": "third turn"}]
    a3 = ask_anthropic(ant, preset, history, True)
    assert f"turn=3 session={sid} " in a3, a3
    # The CLI's transcript: the whole first prompt, then only the newest turns.
    transcript = json.loads((state / f"{sid}.json").read_text())
    assert transcript == [first, "second turn", "third turn"], transcript


def test_a_forgotten_cli_session_starts_anew(oai, state):
    a1 = ask_openai(oai, "claude", [{"role": "user", "content": "remember me"}], False)
    sid = a1.split("session=")[1].split()[0]
    (state / f"{sid}.json").unlink()
    history = [
        {"role": "user", "content": "remember me"},
        {"role": "assistant", "content": a1},
        {"role": "user", "content": "still there?"},
    ]
    a2 = ask_openai(oai, "claude", history, False)
    assert "turn=1 " in a2 and f"session={sid}" not in a2, a2
    # A new session gets the whole conversation.
    assert "remember me" in calls(state)[-1][-1]


# --------------------------------------------------------------------------
# errors, stderr, limits


def test_stderr_stays_out_of_the_answer(oai):
    for stream in (False, True):
        text = ask_openai(oai, "claude", [{"role": "user", "content": "[stderr] quiet please"}], stream)
        assert "noise" not in text and text.endswith("You said: [stderr] quiet please"), text


@pytest.mark.parametrize("preset,message", [("claude", "Invalid API key"), ("codex", "stream disconnected"), ("gemini", "Quota exceeded")])
def test_an_error_line_fails_the_request_with_its_message(oai, preset, message):
    with pytest.raises(openai.APIError) as e:
        oai.chat.completions.create(model=preset, messages=[{"role": "user", "content": "[error] now"}])
    assert message in str(e.value), e.value


def test_a_line_over_the_cap_is_an_error(oai):
    with pytest.raises(openai.APIError) as e:
        oai.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "[long] line"}])
    assert "max_line" in str(e.value), e.value


def test_a_client_leaving_kills_the_whole_process_group(gw, state):
    pids_dir = state / "pids"
    before = set(os.listdir(pids_dir)) if pids_dir.exists() else set()
    body = {"model": "claude", "stream": True, "messages": [{"role": "user", "content": "[stubborn] keep going"}]}
    got = []
    with gw.http() as c:
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if "tick" in line:
                    got.append(line)
                if len(got) >= 2:
                    break
    # The CLI and the grandchild it started, both ignoring SIGTERM.
    new = wait_until(lambda: [int(p) for p in set(os.listdir(pids_dir)) - before] if len(set(os.listdir(pids_dir)) - before) >= 2 else None, "two new pids")
    wait_until(lambda: not any(alive(p) for p in new), f"processes {new} to die", timeout=10)


def test_a_request_timeout_kills_the_process_group(tmp_path):
    state = tmp_path / "state"
    text = server_section(tmp_path / "gw", request_timeout="1s") + cli_pool("claude", "claude", ["claude"], state)
    g = start(tmp_path / "gw", text)
    try:
        wait_until(lambda: sessions(g).get("claude", {}).get("state") == "ready", "ready")
        with gw_client(g) as c:
            r = c.post("/v1/chat/completions", json={"model": "claude", "messages": [{"role": "user", "content": "[stubborn] too slow"}]})
            assert r.status_code >= 400, r.text
        pids = wait_until(lambda: [int(p) for p in os.listdir(state / "pids")] if len(os.listdir(state / "pids")) >= 2 else None, "pids")
        wait_until(lambda: not any(alive(p) for p in pids), f"processes {pids} to die", timeout=10)
    finally:
        g.cleanup()


def gw_client(g: Gateway) -> httpx.Client:
    return g.http(timeout=30)


# --------------------------------------------------------------------------
# supervision


def test_a_crashing_cli_restarts_the_session_which_heals(tmp_path):
    state = tmp_path / "state"
    text = server_section(tmp_path / "gw") + cli_pool("codex", "codex", ["codex"], state, FAST_SUPERVISOR)
    g = start(tmp_path / "gw", text)
    try:
        wait_until(lambda: sessions(g).get("codex", {}).get("state") == "ready", "ready")
        with gw_client(g) as c:
            r = c.post("/v1/chat/completions", json={"model": "codex", "messages": [{"role": "user", "content": "[crash] boom"}]})
            assert r.status_code >= 500, r.text
            # The answer never carries the CLI's stderr as content.
            assert "choices" not in r.json()
        events = wait_until(lambda: [e for e in restarts(g) if e["pool"] == "codex" and "simulated crash" in e["reason"]], "a restart naming the crash")
        assert events[0]["event"] == "restart", events
        wait_until(lambda: sessions(g)["codex"]["state"] == "ready", "the session back")
        with gw_client(g) as c:
            r = c.post("/v1/chat/completions", json={"model": "codex", "messages": [{"role": "user", "content": "after"}]})
            assert r.status_code == 200, r.text
            assert "You said: after" in r.json()["choices"][0]["message"]["content"]
    finally:
        g.cleanup()


@pytest.mark.parametrize("case", ["missing", "broken"])
def test_a_cli_that_cannot_start_fails_its_session_with_the_reason(tmp_path, case):
    state = tmp_path / "state"
    if case == "missing":
        pool = cli_pool("claude", "claude", ["claude"], state, FAST_SUPERVISOR, binary=str(tmp_path / "no-such-claude"))
        expected = "not found"
    else:
        pool = cli_pool("claude", "claude", ["claude"], state, FAST_SUPERVISOR).replace('"FAKE_CLI_DELAY"', '"FAKE_CLI_VERSION_FAIL" = "1", "FAKE_CLI_DELAY"')
        expected = "simulated broken installation"
    g = start(tmp_path / "gw", server_section(tmp_path / "gw") + pool)
    try:
        s = wait_until(lambda: (lambda x: x if x.get("state") == "failed" else None)(sessions(g).get("claude", {})), "the session to fail")
        assert expected in s["reason"], s
        events = restarts(g)
        assert any(e["event"] == "restart" and expected in e["reason"] for e in events), events
        assert events[-1]["event"] == "give_up" and expected in events[-1]["reason"], events[-1]
    finally:
        g.cleanup()


# --------------------------------------------------------------------------
# the real Claude Code as a cli upstream


def test_real_claude_code_as_a_cli_upstream(tmp_path):
    sys.path.insert(0, str(support.TESTS_DIR))
    import test_claude_code as cc

    claude = cc.find_claude()
    if claude is None:
        pytest.skip("Claude Code is not installed in .cache/npm (run tests/test_claude_code.py to install it)")
    demo_text = f"""
[server]
listen = "127.0.0.1:0"
api_keys = ["sk-inner"]
data_dir = {toml(str(tmp_path / "inner-data"))}

[[pools]]
name = "demo"
kind = "demo"
models = ["demo", "claude-demo=demo"]
sessions = 2
max_concurrency = 8
"""
    inner = start(tmp_path / "inner", demo_text)
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    env = {
        "ANTHROPIC_BASE_URL": inner.url,
        "ANTHROPIC_API_KEY": "sk-inner",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "HOME": str(home),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }
    outer_text = server_section(tmp_path) + f"""
[[pools]]
name = "claude-code"
kind = "cli"
preset = "claude"
binary = {toml(str(claude))}
cwd = {toml(str(work))}
models = ["cc=claude-demo"]
max_concurrency = 2
env = {env_table(env)}
"""
    outer = start(tmp_path / "outer", outer_text)
    try:
        wait_until(lambda: sessions(outer).get("claude-code", {}).get("state") == "ready", "claude code ready", timeout=60)
        client = support.make_client(outer.v1, timeout=120)
        r = client.chat.completions.create(model="cc", messages=[{"role": "user", "content": "say hello to the gateway"}])
        text = r.choices[0].message.content or ""
        assert DEMO_PREFIX in text, text
        text = ask_openai(client, "cc", [{"role": "user", "content": "stream it"}], True)
        assert DEMO_PREFIX in text, text
        # A second turn resumes Claude Code's own session: its transcript
        # (one JSON-lines file per session under HOME) holds both prompts.
        history = [
            {"role": "user", "content": "stream it"},
            {"role": "assistant", "content": text},
            {"role": "user", "content": "and once more"},
        ]
        again = ask_openai(client, "cc", history, False)
        assert DEMO_PREFIX in again, again
        sessions_files = [f for f in (home / ".claude" / "projects").rglob("*.jsonl") if "and once more" in f.read_text()]
        assert len(sessions_files) == 1, sessions_files
        assert "stream it" in sessions_files[0].read_text()
        # Resumed, not started anew: two conversations, two session files,
        # and the second turn's prompt was the newest message alone.
        all_files = sorted((home / ".claude" / "projects").rglob("*.jsonl"))
        assert len(all_files) == 2, all_files
        assert "Conversation so far" not in sessions_files[0].read_text()
    finally:
        outer.cleanup()
        inner.cleanup()
