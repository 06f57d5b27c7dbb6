"""The ``langgraph`` upstream kind against a real LangGraph Agent Server
(``langgraph dev`` serving ``tests/peers/langgraph_app``, behind the
fault-injecting proxy ``tests/peers/langgraph_peer.py``), through both
frontends.

The graph counts the user messages its thread holds and says so
(``langgraph reply #N to: ...``), which is how these tests prove a
conversation continued its own thread and never someone else's.
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

PEER_SCRIPT = support.TESTS_DIR / "peers" / "langgraph_peer.py"
LG_KEYS = ("lg-key-1", "lg-key-2")
OTHER_KEY = "sk-test-other"
ADMIN_KEY = "admin-lg"


class LangGraphPeer(PeerProc):
    def runs(self) -> list[dict]:
        return [r for r in self.requests() if r["path"].endswith("/runs/stream")]


def config_text(tmp, peer_url: str) -> str:
    q = support.toml_str
    return support.server_toml(tmp, ADMIN_KEY, api_keys=(GATEWAY_KEY, OTHER_KEY), first_token_timeout="10s") + f"""
[[pools]]
name = "langgraph"
kind = "langgraph"
base_url = {q(peer_url)}
models = ["agent-model", "writer-model", "broken-model"]
assistant_id = "agent"
assistants = {{ "writer-model" = "agent", "broken-model" = "no-such-graph" }}
max_concurrency = 4
  [pools.supervisor]
  cooldown_initial = "200ms"
  cooldown_max = "500ms"
{support.accounts_toml([("lg1", LG_KEYS[0]), ("lg2", LG_KEYS[1])])}
[[pools]]
name = "langgraph-local"
kind = "langgraph"
base_url = {q(peer_url)}
models = ["local-agent"]
"""


def start_peer() -> LangGraphPeer:
    return support.script_peer(LangGraphPeer, "langgraph-peer", PEER_SCRIPT, timeout=90)


@pytest.fixture(scope="module")
def peer() -> Iterator[LangGraphPeer]:
    with support.running(start_peer) as proc:
        yield proc


@pytest.fixture(scope="module")
def gw(peer: LangGraphPeer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("langgraph-gw")
    with support.running_gateway(tmp, config_text(tmp, peer.url)) as gateway:
        yield gateway


def admin_sessions(gw: Gateway) -> list[dict] | None:
    return support.admin_sessions(gw, ADMIN_KEY)


@pytest.fixture
def lg(peer: LangGraphPeer, gw: Gateway) -> LangGraphPeer:
    support.wait_sessions_usable(gw, ADMIN_KEY)
    peer.reset()
    return peer


def ask(oc: openai.OpenAI, messages: list[dict], model: str = "agent-model", **kw: Any) -> str:
    r = oc.chat.completions.create(model=model, messages=messages, **kw)
    return r.choices[0].message.content or ""


def threads(lg: LangGraphPeer) -> set[str]:
    return {r["thread"] for r in lg.runs()}


# --------------------------------------------------------------------------
# one turn, both frontends, streamed and not


def test_openai_non_stream(oc, lg):
    r = oc.chat.completions.create(model="agent-model", messages=user("hello there"))
    assert r.choices[0].message.content == "langgraph reply #1 to: hello there"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.completion_tokens > 0, "usage is counted locally"
    reqs = lg.requests()
    assert [q["path"] for q in reqs][0] == "/threads"
    (run,) = lg.runs()
    assert run["key"] in LG_KEYS
    assert run["body"] == {
        "assistant_id": "agent",
        "input": {"messages": [{"type": "human", "content": "hello there"}]},
        "stream_mode": "messages-tuple",
    }


def test_openai_stream_is_real_streaming(oc, lg):
    s = collect_sdk_stream(
        oc.chat.completions.create(model="agent-model", messages=user("stream me"), stream=True, stream_options={"include_usage": True})
    )
    assert s["text"] == "langgraph reply #1 to: stream me"
    # The fake model streams one token per event; troupe relays them as they come.
    assert len(s["text_parts"]) >= 5
    assert s["finish"] == ["stop"]
    assert s["usage_chunks"] and s["usage_chunks"][-1].usage.completion_tokens > 0


def test_anthropic_non_stream_and_stream(ac, lg):
    m = ac.messages.create(model="agent-model", max_tokens=100, messages=user("hi anthropic"))
    assert m.content[0].text == "langgraph reply #1 to: hi anthropic"
    assert m.stop_reason == "end_turn"
    with ac.messages.stream(model="agent-model", max_tokens=100, messages=user("streamed anthropic")) as s:
        final = s.get_final_message()
    assert final.content[0].text == "langgraph reply #1 to: streamed anthropic"


def test_system_prompt_and_history_start_a_thread(oc, lg):
    history = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": "an answer from elsewhere"},
        {"role": "user", "content": "now"},
    ]
    # Unknown to troupe (no stored turn): a new thread gets the whole conversation.
    assert ask(oc, history) == "langgraph reply #2 to: now"
    (run,) = lg.runs()
    assert run["body"]["input"]["messages"] == [
        {"type": "system", "content": "Be kind."},
        {"type": "human", "content": "earlier"},
        {"type": "ai", "content": "an answer from elsewhere"},
        {"type": "human", "content": "now"},
    ]


# --------------------------------------------------------------------------
# conversations and threads


def test_implicit_conversation_continues_the_same_thread(oc, lg):
    history = user("first question")
    a1 = ask(oc, history)
    assert a1 == "langgraph reply #1 to: first question"
    history += [{"role": "assistant", "content": a1}, {"role": "user", "content": "second question"}]
    a2 = ask(oc, history)
    assert a2 == "langgraph reply #2 to: second question"
    history += [{"role": "assistant", "content": a2}, {"role": "user", "content": "third"}]
    s = collect_sdk_stream(oc.chat.completions.create(model="agent-model", messages=history, stream=True))
    assert s["text"] == "langgraph reply #3 to: third"
    runs = lg.runs()
    assert len(threads(lg)) == 1
    # Continued turns send only the newest user message.
    assert runs[2]["body"]["input"]["messages"] == [{"type": "human", "content": "third"}]


def test_implicit_conversation_through_anthropic(ac, lg):
    m1 = ac.messages.create(model="agent-model", max_tokens=100, messages=user("a-one"))
    history = user("a-one") + [{"role": "assistant", "content": m1.content[0].text}, {"role": "user", "content": "a-two"}]
    with ac.messages.stream(model="agent-model", max_tokens=100, messages=history) as s:
        final = s.get_final_message()
    assert final.content[0].text == "langgraph reply #2 to: a-two"
    assert len(threads(lg)) == 1


def test_explicit_conversation_header_and_user(oc, ac, lg):
    h = {"x-troupe-conversation": "lg-conv-1"}
    assert ask(oc, user("one"), extra_headers=h) == "langgraph reply #1 to: one"
    assert ask(oc, user("two"), extra_headers=h) == "langgraph reply #2 to: two"
    assert ask(oc, user("u1"), user="carol") == "langgraph reply #1 to: u1"
    assert ask(oc, user("u2"), user="carol") == "langgraph reply #2 to: u2"
    m = ac.messages.create(model="agent-model", max_tokens=50, messages=user("m1"), metadata={"user_id": "dave"})
    assert m.content[0].text == "langgraph reply #1 to: m1"
    m = ac.messages.create(model="agent-model", max_tokens=50, messages=user("m2"), metadata={"user_id": "dave"})
    assert m.content[0].text == "langgraph reply #2 to: m2"
    assert len(threads(lg)) == 3


def test_two_conversations_never_share_a_thread(oc, lg):
    for turn in (1, 2):
        for conv in ("conv-a", "conv-b"):
            text = ask(oc, user(f"{conv} turn {turn}"), extra_headers={"x-troupe-conversation": conv})
            assert text == f"langgraph reply #{turn} to: {conv} turn {turn}"
    by_thread: dict[str, set[str]] = {}
    for run in lg.runs():
        text = run["body"]["input"]["messages"][-1]["content"]
        by_thread.setdefault(run["thread"], set()).add(text.split(" turn")[0])
    assert len(by_thread) == 2
    assert all(len(v) == 1 for v in by_thread.values()), by_thread


def test_another_gateway_key_never_shares_a_thread(gw, oc, lg):
    h = {"x-troupe-conversation": "shared-name"}
    assert ask(oc, user("mine"), extra_headers=h) == "langgraph reply #1 to: mine"
    other = support.make_client(gw.v1, api_key=OTHER_KEY)
    assert ask(other, user("theirs"), extra_headers=h) == "langgraph reply #1 to: theirs"
    history = user("mine") + [{"role": "assistant", "content": "langgraph reply #1 to: mine"}, {"role": "user", "content": "next"}]
    # The same history under another key is a new thread too (whole history sent: two user turns).
    assert ask(other, history) == "langgraph reply #2 to: next"
    assert ask(oc, user("again"), extra_headers=h) == "langgraph reply #2 to: again"
    assert len(threads(lg)) == 3


# --------------------------------------------------------------------------
# assistants, keys, sessions


def test_assistants_map_and_upstream_errors_pass_through(oc, lg):
    assert ask(oc, user("write"), model="writer-model") == "langgraph reply #1 to: write"
    assert lg.runs()[-1]["body"]["assistant_id"] == "agent"
    with pytest.raises(openai.APIStatusError) as e:
        oc.chat.completions.create(model="broken-model", messages=user("x"))
    assert 400 <= e.value.status_code < 500
    assert "no-such-graph" in str(e.value)
    assert lg.runs()[-1]["body"]["assistant_id"] == "no-such-graph"


def test_a_pool_without_accounts_runs_one_keyless_session(gw, oc, lg):
    assert ask(oc, user("local"), model="local-agent") == "langgraph reply #1 to: local"
    assert lg.runs()[-1]["key"] is None, "no x-api-key without an api_key"
    sessions = [s for s in admin_sessions(gw) or [] if s.get("pool") == "langgraph-local"]
    assert len(sessions) == 1, sessions


# --------------------------------------------------------------------------
# errors


def test_unknown_model_is_404(oc, ac, lg):
    with pytest.raises(openai.NotFoundError):
        oc.chat.completions.create(model="no-such-model", messages=user("x"))
    with pytest.raises(anthropic.NotFoundError):
        ac.messages.create(model="no-such-model", max_tokens=10, messages=user("x"))


def test_drop_mid_stream_ends_with_an_error_chunk(gw, lg):
    lg.fault("drop")
    with gw.http() as c:
        res = support.stream_raw(c, "/v1/chat/completions", {"model": "agent-model", "stream": True, "messages": user("one two three four")})
    assert res.status == 200
    assert not res.done, "no [DONE] after a broken stream"
    chunks = res.chunks()
    assert "error" in chunks[-1], chunks[-1]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert text and "langgraph reply #1 to: one two three four".startswith(text)


def test_drop_mid_stream_anthropic_error_event(gw, lg):
    lg.fault("drop")
    headers = {"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01"}
    body = {"model": "agent-model", "max_tokens": 50, "stream": True, "messages": user("one two three four")}
    with httpx.Client(base_url=gw.url, headers=headers, timeout=30, trust_env=False) as c:
        with c.stream("POST", "/v1/messages", json=body) as r:
            assert r.status_code == 200
            events = [line[len("event: "):] for line in r.iter_lines() if line.startswith("event: ")]
    assert events[-1] == "error", events
    assert "message_stop" not in events


def test_failures_before_the_first_byte_are_retried(oc, lg):
    lg.fault("500")
    assert ask(oc, user("after a 500")) == "langgraph reply #1 to: after a 500"
    lg.fault("429", retry_after=1)
    assert ask(oc, user("after a 429")) == "langgraph reply #1 to: after a 429"
    outcomes = [r["outcome"] for r in lg.runs()]
    assert outcomes == ["status 500", "completed", "status 429", "completed"]


def test_a_forgotten_thread_is_replaced(oc, lg):
    h = {"x-troupe-conversation": "forgotten-1"}
    assert ask(oc, user("before"), extra_headers=h) == "langgraph reply #1 to: before"
    (thread,) = threads(lg)
    with httpx.Client(base_url=lg.url, timeout=10, trust_env=False) as c:
        assert c.delete(f"/threads/{thread}").status_code in (200, 204)
    assert ask(oc, user("after"), extra_headers=h) == "langgraph reply #1 to: after"
    assert ask(oc, user("later"), extra_headers=h) == "langgraph reply #2 to: later"
    runs = lg.runs()
    assert [r["status"] for r in runs] == [200, 404, 200, 200]
    assert len(threads(lg)) == 2


# --------------------------------------------------------------------------
# the Responses API on a stateful kind


def test_responses_previous_response_id_continues_the_thread(oc, lg):
    r1 = oc.responses.create(model="agent-model", input="resp first")
    assert r1.output_text == "langgraph reply #1 to: resp first"
    r2 = oc.responses.create(model="agent-model", input="resp second", previous_response_id=r1.id)
    assert r2.output_text == "langgraph reply #2 to: resp second"
    with oc.responses.stream(model="agent-model", input="resp third", previous_response_id=r2.id) as s:
        for _ in s:
            pass
        r3 = s.get_final_response()
    assert r3.output_text == "langgraph reply #3 to: resp third"
    assert len(threads(lg)) == 1
    # Continued turns send only the newest user message to the thread.
    assert lg.runs()[2]["body"]["input"]["messages"] == [{"type": "human", "content": "resp third"}]


def test_responses_drop_mid_stream_ends_with_response_failed(gw, lg):
    from schema import assert_valid

    lg.fault("drop")
    events = []
    with gw.http() as c:
        with c.stream("POST", "/v1/responses", json={"model": "agent-model", "stream": True, "input": "one two three four"}) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[len("data: "):]))
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    last = events[-1]
    assert last["type"] == "response.failed", [e["type"] for e in events]
    assert_valid("ResponseFailedEvent", last)
    assert last["response"]["status"] == "failed"
    assert last["response"]["error"]["message"]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text and "langgraph reply #1 to: one two three four".startswith(text)
    # The item that was open is closed with what arrived.
    assert last["response"]["output"][0]["content"][0]["text"] == text
