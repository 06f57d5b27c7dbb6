"""The ``ondemand`` upstream kind against the fake OnDemand API
(``tests/peers/ondemand_peer.py``), through both frontends.

The peer counts the queries each upstream session has seen and says so in
its answer (``ondemand reply #N to: ...``), which is how these tests prove a
conversation continued its own upstream session and never someone else's.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import anthropic
import httpx
import openai
import pytest

import support
from support import GATEWAY_KEY, Gateway, PeerProc, ac, collect_sdk_stream, oc, user  # noqa: F401  (fixtures)

PEER_SCRIPT = support.TESTS_DIR / "peers" / "ondemand_peer.py"
OD_KEYS = ("od-key-1", "od-key-2")
OTHER_KEY = "sk-test-other"
ADMIN_KEY = "admin-od"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the web",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        },
    }
]


class OnDemandPeer(PeerProc):
    def sessions(self) -> list[dict]:
        with self._control() as c:
            r = c.get("/_peer/sessions")
            r.raise_for_status()
            return r.json()["sessions"]

    def queries(self) -> list[dict]:
        return [r for r in self.requests() if r["path"].endswith("/query")]


def config_text(tmp, peer_url: str) -> str:
    q = support.toml_str
    base = q(peer_url.rstrip("/") + "/chat/v1")
    accounts = support.accounts_toml([(f"od{i + 1}", k) for i, k in enumerate(OD_KEYS)])
    return support.server_toml(tmp, ADMIN_KEY, api_keys=(GATEWAY_KEY, OTHER_KEY)) + f"""
[[pools]]
name = "ondemand"
kind = "ondemand"
base_url = {base}
models = ["gpt-4o", "deepseek-r1", "echo", "ghost"]
endpoints = {{ "echo" = "predefined-peer-echo", "ghost" = "predefined-not-on-peer" }}
max_concurrency = 4
  [pools.supervisor]
  cooldown_initial = "200ms"
  cooldown_max = "500ms"
{accounts}

[[pools]]
name = "ondemand-sync"
kind = "ondemand"
base_url = {base}
response_mode = "sync"
models = ["od-sync=predefined-openai-gpt4o"]
{accounts}
"""


def start_peer() -> OnDemandPeer:
    return support.script_peer(OnDemandPeer, "ondemand-peer", PEER_SCRIPT, "--keys", ",".join(OD_KEYS))


@pytest.fixture(scope="module")
def peer() -> Iterator[OnDemandPeer]:
    with support.running(start_peer) as proc:
        yield proc


@pytest.fixture(scope="module")
def gw(peer: OnDemandPeer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("ondemand-gw")
    with support.running_gateway(tmp, config_text(tmp, peer.url)) as gateway:
        yield gateway


@pytest.fixture
def od(peer: OnDemandPeer, gw: Gateway) -> OnDemandPeer:
    support.wait_sessions_usable(gw, ADMIN_KEY)
    peer.reset()
    return peer


def ask(oc: openai.OpenAI, messages: list[dict], model: str = "gpt-4o", **kw: Any) -> str:
    r = oc.chat.completions.create(model=model, messages=messages, **kw)
    return r.choices[0].message.content or ""


# --------------------------------------------------------------------------
# one turn, both frontends, streamed and not


def test_openai_non_stream(oc, od):
    r = oc.chat.completions.create(model="gpt-4o", messages=user("hello there"))
    assert r.choices[0].message.content == "ondemand reply #1 to: hello there"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.completion_tokens > 0, "usage is counted locally"
    (q,) = od.queries()
    assert q["key"] in OD_KEYS
    assert q["body"] == {
        "query": "hello there",
        "endpointId": "predefined-openai-gpt4o",
        "pluginIds": [],
        "responseMode": "stream",
    }


def test_openai_stream(oc, od):
    s = collect_sdk_stream(
        oc.chat.completions.create(model="gpt-4o", messages=user("stream me"), stream=True, stream_options={"include_usage": True})
    )
    assert s["text"] == "ondemand reply #1 to: stream me"
    assert len(s["text_parts"]) > 1, "streamed for real, not one chunk"
    assert s["finish"] == ["stop"]
    assert s["usage_chunks"] and s["usage_chunks"][-1].usage.completion_tokens > 0


def test_anthropic_non_stream_and_stream(ac, od):
    m = ac.messages.create(model="gpt-4o", max_tokens=100, messages=user("hi anthropic"))
    assert [b.type for b in m.content] == ["text"]
    assert m.content[0].text == "ondemand reply #1 to: hi anthropic"
    assert m.stop_reason == "end_turn"
    with ac.messages.stream(model="gpt-4o", max_tokens=100, messages=user("streamed anthropic")) as s:
        final = s.get_final_message()
    assert final.content[0].text == "ondemand reply #1 to: streamed anthropic"
    assert final.usage.output_tokens > 0


def test_system_prompt_goes_into_the_first_query(oc, od):
    text = ask(oc, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "why"}])
    assert text.startswith("ondemand reply #1 to: Be brief.")
    assert od.queries()[0]["body"]["query"] == "Be brief.\n\nwhy"


def test_sync_response_mode(oc, ac, od):
    assert ask(oc, user("sync please"), model="od-sync") == "ondemand reply #1 to: sync please"
    s = collect_sdk_stream(oc.chat.completions.create(model="od-sync", messages=user("sync stream"), stream=True))
    assert s["text"] == "ondemand reply #1 to: sync stream"
    assert s["finish"] == ["stop"]
    assert {q["body"]["responseMode"] for q in od.queries()} == {"sync"}


def test_endpoints_table_maps_models(oc, od):
    assert ask(oc, user("mapped")) .endswith("mapped")
    ask(oc, user("mapped"), model="echo")
    assert od.queries()[-1]["body"]["endpointId"] == "predefined-peer-echo"


# --------------------------------------------------------------------------
# conversations and upstream sessions


def test_implicit_conversation_continues_the_same_upstream_session(oc, od):
    history = user("first question")
    a1 = ask(oc, history)
    assert a1 == "ondemand reply #1 to: first question"
    history += [{"role": "assistant", "content": a1}, {"role": "user", "content": "second question"}]
    a2 = ask(oc, history)
    assert a2 == "ondemand reply #2 to: second question", "only the newest turn is sent to the same session"
    history += [{"role": "assistant", "content": a2}, {"role": "user", "content": "third"}]
    s = collect_sdk_stream(oc.chat.completions.create(model="gpt-4o", messages=history, stream=True))
    assert s["text"] == "ondemand reply #3 to: third"
    sessions = {q["session"] for q in od.queries()}
    assert len(sessions) == 1
    assert len(od.sessions()) == 1


def test_implicit_conversation_through_anthropic(ac, od):
    m1 = ac.messages.create(model="gpt-4o", max_tokens=100, messages=user("a-one"))
    t1 = m1.content[0].text
    history = user("a-one") + [{"role": "assistant", "content": t1}, {"role": "user", "content": "a-two"}]
    with ac.messages.stream(model="gpt-4o", max_tokens=100, messages=history) as s:
        final = s.get_final_message()
    assert final.content[0].text == "ondemand reply #2 to: a-two"
    assert len(od.sessions()) == 1


def test_explicit_conversation_header(oc, od):
    h = {"x-troupe-conversation": "conv-header-1"}
    assert ask(oc, user("one"), extra_headers=h) == "ondemand reply #1 to: one"
    # The client does not resend history: the header names the conversation.
    assert ask(oc, user("two"), extra_headers=h) == "ondemand reply #2 to: two"
    s = collect_sdk_stream(oc.chat.completions.create(model="gpt-4o", messages=user("three"), stream=True, extra_headers=h))
    assert s["text"] == "ondemand reply #3 to: three"
    assert len(od.sessions()) == 1


def test_explicit_conversation_by_user_field_and_metadata(oc, ac, od):
    assert ask(oc, user("u1"), user="alice") == "ondemand reply #1 to: u1"
    assert ask(oc, user("u2"), user="alice") == "ondemand reply #2 to: u2"
    m = ac.messages.create(model="gpt-4o", max_tokens=50, messages=user("m1"), metadata={"user_id": "bob"})
    assert m.content[0].text == "ondemand reply #1 to: m1"
    m = ac.messages.create(model="gpt-4o", max_tokens=50, messages=user("m2"), metadata={"user_id": "bob"})
    assert m.content[0].text == "ondemand reply #2 to: m2"
    assert len(od.sessions()) == 2


def test_two_conversations_never_share_an_upstream_session(oc, od):
    for turn in (1, 2):
        for conv in ("conv-a", "conv-b"):
            text = ask(oc, user(f"{conv} turn {turn}"), extra_headers={"x-troupe-conversation": conv})
            assert text == f"ondemand reply #{turn} to: {conv} turn {turn}"
    sessions = od.sessions()
    assert len(sessions) == 2
    assert sorted(len(s["queries"]) for s in sessions) == [2, 2]
    for s in sessions:
        assert len({q.split(" turn")[0] for q in s["queries"]}) == 1, s


def test_another_gateway_key_never_shares_an_upstream_session(gw, oc, od):
    h = {"x-troupe-conversation": "shared-name"}
    assert ask(oc, user("mine"), extra_headers=h) == "ondemand reply #1 to: mine"
    other = support.make_client(gw.v1, api_key=OTHER_KEY)
    assert ask(other, user("theirs"), extra_headers=h) == "ondemand reply #1 to: theirs"
    # Same history too: the implicit key is scoped by the API key as well.
    history = user("mine") + [{"role": "assistant", "content": "ondemand reply #1 to: mine"}, {"role": "user", "content": "next"}]
    assert ask(other, history).startswith("ondemand reply #1 to: ")
    assert ask(oc, user("again"), extra_headers=h) == "ondemand reply #2 to: again"
    assert len(od.sessions()) == 3


# --------------------------------------------------------------------------
# reasoning and tools


def test_reasoning_is_reasoning_content_not_text(oc, od):
    r = oc.chat.completions.create(model="deepseek-r1", messages=user("think hard"))
    msg = r.choices[0].message
    assert msg.content == "ondemand reply #1 to: think hard"
    assert getattr(msg, "reasoning_content", None) == "pondering: think hard"
    s = oc.chat.completions.create(model="deepseek-r1", messages=user("think again"), stream=True)
    reasoning, text = [], []
    for ch in s:
        for c in ch.choices:
            if getattr(c.delta, "reasoning_content", None):
                reasoning.append(c.delta.reasoning_content)
            if c.delta.content:
                text.append(c.delta.content)
    assert "".join(reasoning) == "pondering: think again"
    assert "".join(text) == "ondemand reply #1 to: think again"


def test_reasoning_is_a_thinking_block_for_anthropic(ac, od):
    m = ac.messages.create(model="deepseek-r1", max_tokens=100, messages=user("deep"))
    assert [b.type for b in m.content] == ["thinking", "text"]
    assert m.content[0].thinking == "pondering: deep"
    assert m.content[1].text == "ondemand reply #1 to: deep"
    with ac.messages.stream(model="deepseek-r1", max_tokens=100, messages=user("deeper")) as s:
        final = s.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert "pondering" not in final.content[1].text


def test_tool_emulation_round_trip_openai(oc, od):
    h = {"x-troupe-conversation": "tools-1"}
    history = user("please use the tool")
    r = oc.chat.completions.create(model="gpt-4o", messages=history, tools=TOOLS, extra_headers=h)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert "<function_call" not in (choice.message.content or "")
    (call,) = choice.message.tool_calls
    assert call.function.name == "search"
    assert json.loads(call.function.arguments) == {"q": "troupe"}
    assert "You can call tools" in od.queries()[0]["body"]["query"]
    history += [
        {"role": "assistant", "content": choice.message.content, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny and warm"},
    ]
    s = collect_sdk_stream(oc.chat.completions.create(model="gpt-4o", messages=history, tools=TOOLS, stream=True, extra_headers=h))
    assert s["text"] == "ondemand reply #2: saw tool result: sunny and warm"
    assert s["finish"] == ["stop"]
    last = od.queries()[-1]["body"]["query"]
    # The result names its tool and its call.
    assert f'<function_result call_id="{call.id}"><tool>search</tool><result>sunny and warm</result></function_result>' in last
    assert len(od.sessions()) == 1


def test_tool_emulation_streamed_through_anthropic(ac, od):
    tools = [{"name": t["function"]["name"], "description": t["function"]["description"], "input_schema": t["function"]["parameters"]} for t in TOOLS]
    with ac.messages.stream(model="gpt-4o", max_tokens=200, tools=tools, messages=user("use the tool now")) as s:
        final = s.get_final_message()
    assert final.stop_reason == "tool_use"
    kinds = [b.type for b in final.content]
    assert kinds == ["text", "tool_use"], kinds
    assert "<function" not in final.content[0].text
    use = final.content[1]
    assert use.name == "search" and use.input == {"q": "troupe"}
    history = user("use the tool now") + [
        {"role": "assistant", "content": [b.model_dump() for b in final.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "42"}]},
    ]
    m = ac.messages.create(model="gpt-4o", max_tokens=200, tools=tools, messages=history)
    assert m.content[0].text.endswith("saw tool result: 42")


# --------------------------------------------------------------------------
# errors


def test_unknown_model_is_404(oc, ac, od):
    with pytest.raises(openai.NotFoundError) as e:
        oc.chat.completions.create(model="no-such-model", messages=user("x"))
    assert e.value.status_code == 404
    with pytest.raises(anthropic.NotFoundError):
        ac.messages.create(model="no-such-model", max_tokens=10, messages=user("x"))


def test_unknown_endpoint_is_passed_through_as_404(oc, od):
    with pytest.raises(openai.NotFoundError) as e:
        oc.chat.completions.create(model="ghost", messages=user("x"))
    assert "predefined-not-on-peer" in str(e.value)


def test_drop_mid_stream_ends_with_an_error_chunk(gw, od):
    od.fault("drop")
    with gw.http() as c:
        res = support.stream_raw(c, "/v1/chat/completions", {"model": "gpt-4o", "stream": True, "messages": user("one two three four five six")})
    assert res.status == 200
    chunks = res.chunks()
    assert not res.done, "no [DONE] after a broken stream"
    assert "error" in chunks[-1], chunks[-1]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert text and "ondemand reply #1 to: one two three four five six".startswith(text)


def test_drop_mid_stream_anthropic_error_event(gw, od):
    od.fault("drop")
    headers = {"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01"}
    body = {"model": "gpt-4o", "max_tokens": 50, "stream": True, "messages": user("one two three four five")}
    with httpx.Client(base_url=gw.url, headers=headers, timeout=30, trust_env=False) as c:
        with c.stream("POST", "/v1/messages", json=body) as r:
            assert r.status_code == 200
            events = [line[len("event: "):] for line in r.iter_lines() if line.startswith("event: ")]
    assert events[-1] == "error", events
    assert "message_stop" not in events


def test_upstream_error_event_mid_stream(gw, od):
    od.fault("error")
    with gw.http() as c:
        res = support.stream_raw(c, "/v1/chat/completions", {"model": "gpt-4o", "stream": True, "messages": user("a b c d e")})
    assert not res.done
    assert "upstream model failed" in json.dumps(res.chunks()[-1])


def test_failures_before_the_first_byte_are_retried(oc, od):
    od.fault("500")
    assert ask(oc, user("after a 500")) == "ondemand reply #1 to: after a 500"
    od.fault("429", retry_after=1)
    assert ask(oc, user("after a 429")) == "ondemand reply #1 to: after a 429"
    outcomes = [q["outcome"] for q in od.queries()]
    assert outcomes == ["status 500", "completed", "status 429", "completed"]


def test_a_forgotten_upstream_session_is_replaced(oc, od):
    h = {"x-troupe-conversation": "forgotten-1"}
    assert ask(oc, user("before"), extra_headers=h) == "ondemand reply #1 to: before"
    od.reset()  # the upstream loses every session
    assert ask(oc, user("after"), extra_headers=h) == "ondemand reply #1 to: after"
    assert [q["outcome"] for q in od.queries()] == ["status 404", "completed"]
    assert ask(oc, user("later"), extra_headers=h) == "ondemand reply #2 to: later"


def test_check_rejects_a_model_without_endpoint_id(tmp_path):
    text = """
[[pools]]
name = "od"
kind = "ondemand"
models = ["gpt-4o", "mystery-model"]
  [[pools.accounts]]
  name = "k"
  api_key = "x"
"""
    path = support.write_config(tmp_path, text)
    r = support.run_troupe(["check", "--config", str(path)])
    assert r.returncode == 2, r
    assert "pools[0].models[1]" in r.stderr and "mystery-model" in r.stderr, r.stderr
    path.write_text(text.replace('models = ["gpt-4o", "mystery-model"]', 'models = ["gpt-4o"]\nresponse_mode = "sometimes"'), encoding="utf-8")
    r = support.run_troupe(["check", "--config", str(path)])
    assert r.returncode == 2 and "pools[0].response_mode" in r.stderr, r.stderr
