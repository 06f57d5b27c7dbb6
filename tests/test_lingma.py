"""The ``lingma`` upstream kind: one local agent process per session
(``tests/peers/lingma_agent.py``), spoken to over a WebSocket with
LSP-framed JSON-RPC, through both frontends.

The agent counts the turns of each of its sessions and says whether the
turn continued one (``lingma reply #N (isReply=...) to: ...``), and logs
every ``chat/ask`` it got to ``asks.jsonl`` in its work directory: that is
how these tests see which agent session a turn used.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import anthropic
import httpx
import pytest

import support
from support import Gateway, collect_sdk_stream, restarts

AGENT = support.TESTS_DIR / "peers" / "lingma_agent.py"
ADMIN_KEY = "admin-lingma"
BUNDLE_FILE = "cache/user.json"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def bundle(entries: list[tuple[str, Any]]) -> str:
    """base64 of a tar.gz; an entry is (name, bytes) or (name, ("symlink", target))."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=9) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):
                info.type = tarfile.SYMTYPE
                info.linkname = data[1]
                tar.addfile(info)
            else:
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(raw.getvalue()).decode()


def good_bundle() -> str:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        d = tarfile.TarInfo("cache")
        d.type = tarfile.DIRTYPE
        d.mode = 0o755
        tar.addfile(d)
        data = b'{"uid": "u-1", "token": "secret"}'
        f = tarfile.TarInfo(BUNDLE_FILE)
        f.size = len(data)
        f.mode = 0o644
        tar.addfile(f, io.BytesIO(data))
    return base64.b64encode(raw.getvalue()).decode()


def pool_text(name: str, models: list[str], *, sessions: int = 1, bundle_b64: str | None = None, require: bool = True, extra: str = "") -> str:
    q = support.toml_str
    args = [str(AGENT), "--workdir", "{work_dir}"]
    if require:
        args += ["--require-file", BUNDLE_FILE]
    lines = [
        "[[pools]]",
        f"name = {q(name)}",
        'kind = "lingma"',
        f"models = [{', '.join(q(m) for m in models)}]",
        f"sessions = {sessions}",
        f"agent_binary = {q(sys.executable)}",
        f"agent_args = [{', '.join(q(a) for a in args)}]",
        'startup_timeout = "20s"',
    ]
    if bundle_b64 is not None:
        lines.append(f"session_bundle = {q(bundle_b64)}")
    return "\n".join(lines) + "\n" + extra + "\n"


def server_text(tmp: Path) -> str:
    return support.server_toml(tmp, ADMIN_KEY, first_token_timeout="10s", request_timeout="20s") + """
[supervisor]
backoff_initial = "100ms"
backoff_max = "300ms"
max_restarts = 20
"""


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    return support.wait_for(what, check, timeout)


def sessions(gw: Gateway) -> list[dict]:
    return support.session_list(gw, ADMIN_KEY)


def ready(gw: Gateway, pool: str, n: int) -> bool:
    s = [x for x in sessions(gw) if x["pool"] == pool]
    return len(s) == n and all(x["state"] == "ready" for x in s)


def work_dirs(gw: Gateway, pool: str) -> list[Path]:
    base = gw.config_path.parent / "data" / "lingma" / pool
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def asks(gw: Gateway, pool: str) -> list[dict]:
    out = []
    for d in work_dirs(gw, pool):
        f = d / "asks.jsonl"
        if f.is_file():
            out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


def agent_pids(gw: Gateway, pool: str) -> list[int]:
    pids = []
    for d in work_dirs(gw, pool):
        info = d / ".info"
        if info.is_file():
            pids.append(json.loads(info.read_text())["pid"])
    return pids


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state


def start(tmp: Path, pools: str) -> Gateway:
    return support.started(lambda: support.start_gateway(tmp, server_text(tmp) + pools))


@pytest.fixture(scope="module")
def gw(tmp_path_factory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("lingma")
    g = start(tmp, pool_text("lingma", ["lingma-chat", "qwen=qwen3-coder"], sessions=2, bundle_b64=good_bundle()))
    try:
        wait_for("two ready agents", lambda: ready(g, "lingma", 2))
        yield g
    finally:
        g.stop()


def oai(gw: Gateway):
    return support.make_client(gw.v1)


def ant(gw: Gateway) -> anthropic.Anthropic:
    return support.make_anthropic_client(gw.url)


def ask_of(gw: Gateway, needle: str) -> list[dict]:
    return [a for a in asks(gw, "lingma") if needle in (a.get("text") or "")]


# --------------------------------------------------------------------------


def test_openai_streamed_and_not(gw):
    c = oai(gw)
    r = c.chat.completions.create(model="lingma-chat", messages=[{"role": "user", "content": "hello plain"}])
    assert r.choices[0].message.content == "lingma reply #1 (isReply=false) to: hello plain"
    assert r.choices[0].finish_reason == "stop"
    s = collect_sdk_stream(
        c.chat.completions.create(model="qwen", messages=[{"role": "user", "content": "hello stream"}], stream=True)
    )
    assert s["text"] == "lingma reply #1 (isReply=false) to: hello stream"
    assert s["finish"] == ["stop"]
    assert len(s["text_parts"]) > 3, "the answer was not streamed"
    [a] = ask_of(gw, "hello stream")
    # The ask is a notification with the documented fields.
    assert a["modelKey"] == "qwen3-coder"
    assert a["sessionType"] == "chat" and a["stream"] is True and a["source"] == 1
    assert a["isReply"] is False and a["content"] == "hello stream"
    assert a["answered"] is True, "the agent's own request was not answered"
    assert "had_id" not in a


def test_anthropic_streamed_and_not(gw):
    c = ant(gw)
    m = c.messages.create(model="lingma-chat", max_tokens=100, messages=[{"role": "user", "content": "hi anthropic"}])
    assert m.content[0].text == "lingma reply #1 (isReply=false) to: hi anthropic"
    assert m.stop_reason == "end_turn"
    with c.messages.stream(model="lingma-chat", max_tokens=100, messages=[{"role": "user", "content": "hi anthropic stream"}]) as s:
        deltas = list(s.text_stream)
        final = s.get_final_message()
    assert "".join(deltas) == "lingma reply #1 (isReply=false) to: hi anthropic stream"
    assert len(deltas) > 3
    assert final.stop_reason == "end_turn"


def test_multi_turn_reuses_the_agent_session(gw):
    c = oai(gw)
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first A"}]
    r1 = c.chat.completions.create(model="lingma-chat", messages=msgs).choices[0].message.content
    assert r1.startswith("lingma reply #1 (isReply=false) to: System: be brief")
    msgs += [{"role": "assistant", "content": r1}, {"role": "user", "content": "second A"}]
    s = collect_sdk_stream(c.chat.completions.create(model="lingma-chat", messages=msgs, stream=True))
    assert s["text"] == "lingma reply #2 (isReply=true) to: second A"
    msgs += [{"role": "assistant", "content": s["text"]}, {"role": "user", "content": "third A"}]
    r3 = c.chat.completions.create(model="lingma-chat", messages=msgs).choices[0].message.content
    assert r3 == "lingma reply #3 (isReply=true) to: third A"
    # Another conversation: its own agent session.
    other = c.chat.completions.create(model="lingma-chat", messages=[{"role": "user", "content": "first B"}])
    assert other.choices[0].message.content == "lingma reply #1 (isReply=false) to: first B"
    a1 = ask_of(gw, "first A")[0]
    a2 = ask_of(gw, "second A")
    a3 = ask_of(gw, "third A")
    b1 = ask_of(gw, "first B")[0]
    assert [a["sessionId"] for a in a2 + a3] == [a1["sessionId"]] * 2
    assert a2[0]["isReply"] is True and a2[0]["content"] == "second A"
    assert b1["sessionId"] != a1["sessionId"]
    assert len({a["requestId"] for a in [a1, *a2, *a3]}) == 3


def test_a_cancelled_turn_is_never_continued(gw):
    c = oai(gw)
    msgs = [{"role": "user", "content": "cancel A"}]
    r1 = c.chat.completions.create(model="lingma-chat", messages=msgs).choices[0].message.content
    msgs += [{"role": "assistant", "content": r1}]
    body = {"model": "lingma-chat", "stream": True, "messages": msgs + [{"role": "user", "content": "[[stall]] cancel A2"}]}
    with gw.http(timeout=15) as h, h.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if '"content"' in line:
                break  # leave mid-answer
    # The agent session now holds half a turn: the same history starts afresh.
    time.sleep(0.3)
    again = c.chat.completions.create(model="lingma-chat", messages=msgs + [{"role": "user", "content": "retry A2"}])
    text = again.choices[0].message.content
    assert text.startswith("lingma reply #1 (isReply=false) to: User: cancel A"), text
    [first] = ask_of(gw, "cancel A")[:1]
    [retry] = ask_of(gw, "retry A2")
    assert retry["sessionId"] != first["sessionId"]


def test_anthropic_multi_turn_reuse(gw):
    c = ant(gw)
    msgs = [{"role": "user", "content": "ant first"}]
    r1 = c.messages.create(model="lingma-chat", max_tokens=50, messages=msgs).content[0].text
    msgs += [{"role": "assistant", "content": r1}, {"role": "user", "content": "ant second"}]
    r2 = c.messages.create(model="lingma-chat", max_tokens=50, messages=msgs).content[0].text
    assert r2 == "lingma reply #2 (isReply=true) to: ant second"


def test_agent_tool_events_become_tool_calls(gw):
    c = oai(gw)
    s = collect_sdk_stream(
        c.chat.completions.create(model="lingma-chat", messages=[{"role": "user", "content": "look [[tool]]"}], stream=True)
    )
    # tool/invoke and tool/invokeResult of one call: one tool call.
    assert [(x["name"], json.loads(x["arguments"])) for x in s["calls"]] == [("read_file", {"path": "README.md"})]
    assert s["finish"] == ["tool_calls"]
    m = ant(gw).messages.create(model="lingma-chat", max_tokens=50, messages=[{"role": "user", "content": "look again [[tool]]"}])
    uses = [b for b in m.content if b.type == "tool_use"]
    assert [(u.name, u.input) for u in uses] == [("read_file", {"path": "README.md"})]
    assert m.stop_reason == "tool_use"


def test_client_tools_round_trip_without_reuse(gw):
    c = oai(gw)
    msgs = [{"role": "user", "content": "weather in Paris?"}]
    for stream in (False, True):
        if stream:
            s = collect_sdk_stream(c.chat.completions.create(model="lingma-chat", messages=msgs, tools=[WEATHER_TOOL], stream=True))
            calls, text, finish = s["calls"], s["text"], s["finish"][0]
        else:
            r = c.chat.completions.create(model="lingma-chat", messages=msgs, tools=[WEATHER_TOOL])
            ch = r.choices[0]
            calls = [{"name": t.function.name, "arguments": t.function.arguments, "id": t.id} for t in ch.message.tool_calls or []]
            text, finish = ch.message.content or "", ch.finish_reason
        assert [(x["name"], json.loads(x["arguments"])) for x in calls] == [("get_weather", {"city": "Paris"})]
        assert "<function_call>" not in text and text.strip() == "Let me check."
        assert finish == "tool_calls"
    call_id = calls[0]["id"] or "call_1"
    follow = msgs + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "sunny, 21C"},
    ]
    r = c.chat.completions.create(model="lingma-chat", messages=follow, tools=[WEATHER_TOOL])
    assert r.choices[0].message.content == "lingma reply #1 (isReply=false) saw result: sunny, 21C"
    tool_asks = [a for a in asks(gw, "lingma") if "get_weather" in (a.get("text") or "")]
    assert len(tool_asks) == 3
    # Tools present: never a reused agent session.
    assert all(a["isReply"] is False for a in tool_asks)
    assert len({a["sessionId"] for a in tool_asks}) == 3


def test_anthropic_stream_hides_the_tool_block(gw):
    tool = {"name": "get_weather", "description": "Weather", "input_schema": WEATHER_TOOL["function"]["parameters"]}
    with ant(gw).messages.stream(model="lingma-chat", max_tokens=100, tools=[tool], messages=[{"role": "user", "content": "weather?"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert "function_call" not in text and text.strip() == "Let me check."
    uses = [b for b in final.content if b.type == "tool_use"]
    assert [(u.name, u.input) for u in uses] == [("get_weather", {"city": "Paris"})]
    assert final.stop_reason == "tool_use"


def test_bundle_is_injected_owner_only(gw):
    dirs = work_dirs(gw, "lingma")
    assert len(dirs) == 2
    for d in dirs:
        f = d / BUNDLE_FILE
        assert f.read_bytes() == b'{"uid": "u-1", "token": "secret"}'
        assert f.stat().st_mode & 0o777 == 0o600
        assert (d / "cache").stat().st_mode & 0o777 == 0o700


# --------------------------------------------------------------------------


def test_agent_crash_mid_stream_is_an_error_then_the_session_heals(tmp_path):
    g = start(tmp_path, pool_text("crashy", ["crashy"], require=False))
    try:
        wait_for("a ready agent", lambda: ready(g, "crashy", 1))
        [old_pid] = agent_pids(g, "crashy")
        client = support.make_client(g.v1)
        convo = [{"role": "user", "content": "before crash"}]
        before = client.chat.completions.create(model="crashy", messages=convo).choices[0].message.content
        convo += [{"role": "assistant", "content": before}, {"role": "user", "content": "after crash"}]
        with g.http() as c:
            body = {"model": "crashy", "stream": True, "messages": [{"role": "user", "content": "please [[crash]] now"}]}
            res = support.stream_raw(c, "/v1/chat/completions", body)
        assert res.status == 200
        chunks = res.chunks()
        text = "".join((ch["choices"][0]["delta"].get("content") or "") for ch in chunks if ch.get("choices"))
        assert text.startswith("lingma"), text
        errors = [ch["error"] for ch in chunks if "error" in ch]
        assert errors, f"no error event: {res.data}"
        assert not res.done, "a broken stream must not end with [DONE]"
        ev = wait_for(
            "the restart in the log",
            lambda: [e for e in restarts(g) if e["event"] == "restart" and "lingma agent connection lost" in e["reason"]],
        )
        assert "crashing on purpose" in ev[0]["reason"], ev[0]["reason"]
        wait_for("the session to heal", lambda: ready(g, "crashy", 1))
        r = support.make_client(g.v1).chat.completions.create(model="crashy", messages=[{"role": "user", "content": "after"}])
        assert r.choices[0].message.content == "lingma reply #1 (isReply=false) to: after"
        # The new agent never saw the old conversation: it gets all of it.
        cont = client.chat.completions.create(model="crashy", messages=convo).choices[0].message.content
        assert cont.startswith("lingma reply #1 (isReply=false) to: User: before crash"), cont
        [new_pid] = agent_pids(g, "crashy")
        assert new_pid != old_pid
        assert not pid_alive(old_pid)
    finally:
        g.stop()


def test_a_stalled_agent_times_out_cleanly(tmp_path):
    text = server_text(tmp_path).replace('first_token_timeout = "10s"', 'first_token_timeout = "2s"').replace(
        'request_timeout = "20s"', 'request_timeout = "3s"'
    ) + pool_text("stall", ["stall"], require=False)
    try:
        g = support.start_gateway(tmp_path, text)
    except support.StartError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        wait_for("a ready agent", lambda: ready(g, "stall", 1))
        with g.http(timeout=15) as c:
            body = {"model": "stall", "stream": True, "messages": [{"role": "user", "content": "wait [[stall]]"}]}
            t0 = time.monotonic()
            res = support.stream_raw(c, "/v1/chat/completions", body)
            assert time.monotonic() - t0 < 12
        assert any("error" in ch for ch in res.chunks()), res.data
        assert not res.done
    finally:
        g.stop()


@pytest.mark.parametrize(
    "case,entries,reason",
    [
        ("traversal", [("../../escaped.txt", b"x")], "leaves the work directory"),
        ("symlink", [("cache/link", ("symlink", "/etc/passwd"))], "symbolic link"),
        ("oversize", [("big.bin", b"\0" * (65 * 1024 * 1024))], "larger than"),
    ],
)
def test_malicious_bundles_fail_the_session_with_the_reason(tmp_path, case, entries, reason):
    extra = '  [pools.supervisor]\n  max_restarts = 1\n'
    pools = pool_text("good", ["good"], require=False) + pool_text(case, [case], bundle_b64=bundle(entries), extra=extra)
    g = start(tmp_path, pools)
    try:
        s = wait_for(
            "the session to fail",
            lambda: [x for x in sessions(g) if x["pool"] == case and x["state"] == "failed"],
        )
        why = json.dumps(s[0])
        assert "session bundle refused" in why and reason in why, why
        assert not list(tmp_path.rglob("escaped.txt")), "a traversal entry was written"
        assert not (work_dirs(g, case) and (work_dirs(g, case)[0] / "cache" / "link").exists())
        # The other pool is unaffected.
        r = support.make_client(g.v1).chat.completions.create(model="good", messages=[{"role": "user", "content": "ok?"}])
        assert r.choices[0].message.content.startswith("lingma reply #1")
    finally:
        g.stop()


def test_a_missing_login_file_is_a_clear_failure(tmp_path):
    extra = '  [pools.supervisor]\n  max_restarts = 1\n'
    g = start(tmp_path, pool_text("good", ["good"], require=False) + pool_text("nologin", ["nologin"], extra=extra))
    try:
        s = wait_for("the session to fail", lambda: [x for x in sessions(g) if x["pool"] == "nologin" and x["state"] == "failed"])
        assert "not logged in" in json.dumps(s[0]), s[0]
    finally:
        g.stop()


def test_no_agent_outlives_the_gateway(tmp_path):
    g = start(tmp_path, pool_text("many", ["many"], sessions=3, require=False))
    try:
        wait_for("three ready agents", lambda: ready(g, "many", 3))
        pids = agent_pids(g, "many")
        assert len(pids) == 3 and all(pid_alive(p) for p in pids)
    finally:
        g.stop()
    wait_for("every agent to be gone", lambda: not any(pid_alive(p) for p in pids), timeout=10)


def test_info_file_may_be_key_value_lines(tmp_path):
    pools = pool_text("lines", ["lines"], require=False).replace(
        f'"{{work_dir}}"]', f'"{{work_dir}}", "--info-format", "lines", "--info-file", "agent.port"]'
    ) + 'info_file = "agent.port"\n'
    g = start(tmp_path, pools)
    try:
        wait_for("a ready agent", lambda: ready(g, "lines", 1))
        r = support.make_client(g.v1).chat.completions.create(model="lines", messages=[{"role": "user", "content": "x"}])
        assert r.choices[0].message.content == "lingma reply #1 (isReply=false) to: x"
    finally:
        g.stop()
