"""The Anthropic Messages frontend and the ``anthropic`` upstream kind.

One gateway serves three pools: the built-in ``demo``, an ``openai`` pool on
the fake OpenAI peer and an ``anthropic`` pool on the fake Anthropic peer
(``tests/peers/anthropic_peer.py``). Clients are the official ``anthropic``
SDK (against all three) and the official ``openai`` SDK (against the
Anthropic pool), so every request crosses the translation both ways.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import anthropic
import httpx
import openai
import pytest

import support
from peers import anthropic_peer
from support import DEMO_PREFIX, GATEWAY_KEY, PEER_PREFIX, Gateway, PeerProc, ac, collect_sdk_stream, oc, user, words  # noqa: F401  (fixtures)

A_KEYS = ("ak-peer-1", "ak-peer-2")
A_PREFIX = "anthropic peer reply to: "
ADMIN_KEY = "admin-test-key"
VERSION = "2023-06-01"

MODELS = ["demo", "gpt-4o-mini", "claude-peer"]
PEER_MODELS = ["gpt-4o-mini", "claude-peer"]
PREFIX = {"demo": DEMO_PREFIX, "gpt-4o-mini": PEER_PREFIX, "claude-peer": A_PREFIX}
TOOL_RESULT_PREFIX = {
    "demo": "The tool returned: ",
    "gpt-4o-mini": "peer saw tool result: ",
    "claude-peer": "anthropic peer saw tool result: ",
}
FIRST_CALL_ID = {"gpt-4o-mini": "call_peer_0", "claude-peer": "toolu_peer_0"}
SECOND_CALL_ID = {"gpt-4o-mini": "call_peer_1", "claude-peer": "toolu_peer_1"}
ID_RE = re.compile(r"^[a-zA-Z0-9_-]+$")

TOOLS = [
    {
        "name": "search",
        "description": "Search the web",
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    },
    {
        "name": "fetch",
        "description": "Fetch a page",
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    },
]
OPENAI_TOOLS = [
    {"type": "function", "function": {"name": t["name"], "description": t["description"], "parameters": t["input_schema"]}}
    for t in TOOLS
]
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


# --------------------------------------------------------------------------
# fixtures: one gateway and two peers for the whole module


def config_text(tmp: Path, openai_url: str, anthropic_url: str) -> str:
    q = support.toml_str
    return support.server_toml(tmp, ADMIN_KEY) + f"""
[[pools]]
name = "demo"
kind = "demo"
models = ["demo"]
sessions = 2
max_concurrency = 4
chunk_delay = "2ms"

[[pools]]
name = "openai-peer"
kind = "openai"
base_url = {q(openai_url.rstrip("/") + "/v1")}
models = ["gpt-4o-mini"]
max_concurrency = 4
{support.accounts_toml([("k1", support.PEER_KEYS[0]), ("k2", support.PEER_KEYS[1])])}
[[pools]]
name = "anthropic-peer"
kind = "anthropic"
base_url = {q(anthropic_url.rstrip("/"))}
models = ["claude-peer", "claude-alias=claude-peer"]
max_concurrency = 4
  [pools.supervisor]
  cooldown_initial = "200ms"
  cooldown_max = "500ms"
{support.accounts_toml([("a1", A_KEYS[0]), ("a2", A_KEYS[1])])}"""


@pytest.fixture(scope="module")
def a_peer() -> Iterator[PeerProc]:
    with support.running(lambda: support.start_anthropic_peer(A_KEYS)) as proc:
        yield proc


@pytest.fixture(scope="module")
def o_peer() -> Iterator[PeerProc]:
    with support.running(support.start_peer) as proc:
        yield proc


@pytest.fixture(scope="module")
def gw(a_peer: PeerProc, o_peer: PeerProc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("anthropic-gw")
    with support.running_gateway(tmp, config_text(tmp, o_peer.url, a_peer.url)) as gateway:
        yield gateway


@pytest.fixture
def peers(a_peer: PeerProc, o_peer: PeerProc, gw: Gateway) -> tuple[PeerProc, PeerProc]:
    """Both peers without faults and with empty request logs."""
    support.wait_sessions_usable(gw, ADMIN_KEY)
    a_peer.reset()
    o_peer.reset()
    return a_peer, o_peer


@pytest.fixture
def raw(gw: Gateway) -> Iterator[httpx.Client]:
    headers = {"x-api-key": GATEWAY_KEY, "anthropic-version": VERSION}
    with httpx.Client(base_url=gw.url, headers=headers, timeout=30, trust_env=False) as c:
        yield c


# --------------------------------------------------------------------------
# helpers


def expected(model: str, text: str) -> str:
    return PREFIX[model] + text


def text_of(content) -> str:
    return "".join(b.text for b in content if b.type == "text")


def last_body(peer: PeerProc) -> dict:
    reqs = peer.requests()
    assert reqs, "the peer received no request"
    return reqs[-1]["body"]


def check_event_order(events: list[dict]) -> dict:
    """Assert Anthropic's stream grammar on parsed events and rebuild the
    message: message_start first, then blocks with increasing indexes, each
    start -> deltas of its kind -> stop, never interleaved, then
    message_delta with a stop reason and output usage, message_stop last.
    ``ping`` may appear anywhere."""
    evs = [e for e in events if e.get("type") != "ping"]
    kinds = [e.get("type") for e in evs]
    assert evs, "no events"
    assert kinds[0] == "message_start", f"first event is {kinds[0]}: {kinds}"
    msg = evs[0]["message"]
    assert msg["type"] == "message" and msg["role"] == "assistant", msg
    assert msg["id"].startswith("msg_"), msg["id"]
    assert msg.get("content") == [], msg
    assert msg["usage"]["input_tokens"] > 0, f"message_start has no input usage: {msg['usage']}"
    allowed = {
        "text": {"text_delta"},
        "tool_use": {"input_json_delta"},
        "thinking": {"thinking_delta", "signature_delta"},
    }
    blocks: list[dict] = []
    i = 1
    while i < len(evs) and kinds[i] == "content_block_start":
        start = evs[i]
        assert start["index"] == len(blocks), f"block index {start['index']}, expected {len(blocks)}: {kinds}"
        block = dict(start["content_block"])
        kind = block["type"]
        assert kind in allowed, f"unexpected block type {kind}"
        partial = ""
        deltas = 0
        i += 1
        while i < len(evs) and kinds[i] == "content_block_delta":
            d = evs[i]
            assert d["index"] == start["index"], f"delta for block {d['index']} inside block {start['index']}"
            dt = d["delta"]["type"]
            assert dt in allowed[kind], f"{dt} inside a {kind} block"
            if dt == "text_delta":
                block["text"] = block.get("text", "") + d["delta"]["text"]
            elif dt == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + d["delta"]["thinking"]
            elif dt == "signature_delta":
                block["signature"] = d["delta"]["signature"]
            else:
                partial += d["delta"]["partial_json"]
            deltas += 1
            i += 1
        assert i < len(evs), f"stream ended inside block {start['index']}: {kinds}"
        assert kinds[i] == "content_block_stop", f"block {start['index']} not closed, got {kinds[i]}: {kinds}"
        assert evs[i]["index"] == start["index"]
        i += 1
        if kind == "tool_use":
            block["input"] = json.loads(partial) if partial else {}
            block["_fragments"] = deltas
        else:
            block["_deltas"] = deltas
        blocks.append(block)
    assert i < len(evs) and kinds[i] == "message_delta", f"expected message_delta after the blocks: {kinds}"
    md = evs[i]
    assert md["delta"].get("stop_reason"), f"message_delta without stop_reason: {md}"
    assert md["usage"]["output_tokens"] > 0, f"message_delta without output usage: {md}"
    assert kinds[i + 1 :] == ["message_stop"], f"expected only message_stop after message_delta: {kinds}"
    return {"start": msg, "blocks": blocks, "delta": md, "kinds": kinds}


def sdk_raw_events(stream) -> list[dict]:
    return [ev.to_dict(mode="json") for ev in stream]


class SSE:
    """A raw Anthropic SSE answer: status, headers, (event name, data) pairs."""

    def __init__(self, status: int, headers: httpx.Headers):
        self.status = status
        self.headers = headers
        self.events: list[tuple[str | None, Any]] = []
        self.body = b""
        self.transport_error: str | None = None

    def data(self) -> list[dict]:
        return [d for _, d in self.events]

    def names(self) -> list[str | None]:
        return [n for n, _ in self.events]


def raw_stream(client: httpx.Client, path: str, body: dict, **kw: Any) -> SSE:
    with client.stream("POST", path, json=body, **kw) as resp:
        out = SSE(resp.status_code, resp.headers)
        if resp.status_code != 200 or not resp.headers.get("content-type", "").startswith("text/event-stream"):
            out.body = resp.read()
            return out
        out.events, out.transport_error = support.read_named_events(resp)
        return out


def expect_error(resp: httpx.Response, status: int, type_: str) -> str:
    """Assert Anthropic's error envelope; return the message."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text[:500]}"
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers.get("content-type")
    body = resp.json()
    assert body.get("type") == "error", body
    assert isinstance(body.get("error"), dict), body
    assert body["error"].get("type") == type_, body
    assert isinstance(body["error"].get("message"), str) and body["error"]["message"], body
    return body["error"]["message"]


# --------------------------------------------------------------------------
# text


@pytest.mark.parametrize("model", MODELS)
def test_non_stream_text(ac, peers, model):
    r = ac.messages.create(model=model, max_tokens=200, messages=user("hello brave new world"))
    assert r.type == "message"
    assert r.role == "assistant"
    assert r.id.startswith("msg_")
    assert r.model == model
    assert [b.type for b in r.content] == ["text"]
    assert r.content[0].text == expected(model, "hello brave new world")
    assert r.stop_reason == "end_turn"
    assert r.stop_sequence is None
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_stream_helper_accumulates(ac, peers, model):
    with ac.messages.stream(model=model, max_tokens=200, messages=user("stream this answer")) as s:
        pieces = list(s.text_stream)
        final = s.get_final_message()
    assert "".join(pieces) == expected(model, "stream this answer")
    assert len(pieces) > 1, "the whole answer arrived in one delta"
    assert [b.type for b in final.content] == ["text"]
    assert final.content[0].text == expected(model, "stream this answer")
    assert final.stop_reason == "end_turn"
    assert final.model == model
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_raw_stream_event_order(ac, peers, model):
    events = sdk_raw_events(ac.messages.create(model=model, max_tokens=200, messages=user("order of events"), stream=True))
    got = check_event_order(events)
    assert [b["type"] for b in got["blocks"]] == ["text"]
    assert got["blocks"][0]["text"] == expected(model, "order of events")
    assert got["delta"]["delta"]["stop_reason"] == "end_turn"
    if model == "demo":
        assert got["blocks"][0]["_deltas"] == len(words(expected(model, "order of events"))), "demo: one word per delta"


@pytest.mark.parametrize("model", MODELS)
def test_raw_sse_framing(raw, peers, model):
    res = raw_stream(raw, "/v1/messages", {"model": model, "max_tokens": 100, "stream": True, "messages": user("wire")})
    assert res.status == 200, res.body[:500]
    assert res.transport_error is None, res.transport_error
    assert res.headers.get("content-type", "").startswith("text/event-stream")
    assert "no-cache" in res.headers.get("cache-control", "")
    for name, data in res.events:
        assert name == data.get("type"), f"event name {name!r} does not match data type {data.get('type')!r}"
    got = check_event_order(res.data())
    assert got["blocks"][0]["text"] == expected(model, "wire")


def test_anthropic_prefix_route_and_alias(gw, peers):
    a_peer, _ = peers
    client = support.make_anthropic_client(gw.url + "/anthropic")
    r = client.messages.create(model="demo", max_tokens=100, messages=user("prefixed"))
    assert text_of(r.content) == DEMO_PREFIX + "prefixed"
    r = client.messages.create(model="claude-alias", max_tokens=100, messages=user("aliased"))
    assert text_of(r.content) == A_PREFIX + "aliased"
    assert last_body(a_peer)["model"] == "claude-peer", "the upstream name must be sent upstream"


# --------------------------------------------------------------------------
# usage and cache tokens


def peer_usage(a_peer: PeerProc) -> tuple[int, int]:
    """Input and output tokens the Anthropic peer reported for its last request."""
    body = last_body(a_peer)
    answer = anthropic_peer.plan(body)
    return anthropic_peer.input_tokens(body), anthropic_peer.output_tokens(answer["blocks"])


def test_cache_tokens_for_anthropic_clients(ac, peers):
    a_peer, _ = peers
    r = ac.messages.create(model="claude-peer", max_tokens=200, messages=user("cache me if you can"))
    inp, out = peer_usage(a_peer)
    assert r.usage.cache_read_input_tokens == anthropic_peer.CACHE_READ
    assert r.usage.cache_creation_input_tokens in (0, None)
    assert (r.usage.input_tokens, r.usage.output_tokens) == (inp, out), "usage must pass through unchanged"

    events = sdk_raw_events(
        ac.messages.create(model="claude-peer", max_tokens=200, messages=user("cache me if you can"), stream=True)
    )
    got = check_event_order(events)
    start_usage = got["start"]["usage"]
    assert start_usage["input_tokens"] == inp, start_usage
    assert start_usage.get("cache_read_input_tokens") == anthropic_peer.CACHE_READ, start_usage
    assert got["delta"]["usage"]["output_tokens"] == out, "message_delta output_tokens is cumulative, not summed"

    with ac.messages.stream(model="claude-peer", max_tokens=200, messages=user("cache me if you can")) as s:
        final = s.get_final_message()
    assert final.usage.cache_read_input_tokens == anthropic_peer.CACHE_READ
    assert (final.usage.input_tokens, final.usage.output_tokens) == (inp, out)


def test_cache_tokens_for_openai_clients(oc, peers):
    a_peer, _ = peers
    r = oc.chat.completions.create(model="claude-peer", messages=user("cache me too"))
    inp, out = peer_usage(a_peer)
    u = r.usage
    assert u.prompt_tokens_details is not None and u.prompt_tokens_details.cached_tokens == anthropic_peer.CACHE_READ
    assert u.prompt_tokens == inp + anthropic_peer.CACHE_READ, "cached tokens are counted once, inside prompt_tokens"
    assert u.completion_tokens == out
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens

    s = collect_sdk_stream(
        oc.chat.completions.create(
            model="claude-peer", messages=user("cache me too"), stream=True, stream_options={"include_usage": True}
        )
    )
    assert len(s["usage_chunks"]) == 1
    su = s["usage_chunks"][0].usage
    assert (su.prompt_tokens, su.completion_tokens, su.total_tokens) == (u.prompt_tokens, u.completion_tokens, u.total_tokens)
    assert su.prompt_tokens_details.cached_tokens == anthropic_peer.CACHE_READ


# --------------------------------------------------------------------------
# stop reasons


@pytest.mark.parametrize("model", MODELS)
def test_max_tokens_stop_reason(ac, peers, model):
    text = "please answer with many words here"
    want = "".join(words(expected(model, text))[:3]).strip()
    r = ac.messages.create(model=model, max_tokens=3, messages=user(text))
    assert r.stop_reason == "max_tokens"
    assert text_of(r.content).strip() == want
    events = sdk_raw_events(ac.messages.create(model=model, max_tokens=3, messages=user(text), stream=True))
    got = check_event_order(events)
    assert got["delta"]["delta"]["stop_reason"] == "max_tokens"
    assert got["blocks"][0]["text"].strip() == want


@pytest.mark.parametrize("model,seq", [("demo", "said:"), ("claude-peer", "to:")])
def test_stop_sequence_names_the_sequence(ac, model, seq):
    """`stop_reason: stop_sequence` comes with the sequence that matched,
    whole and streamed."""
    stops = ["NEVER-SEEN", seq]
    r = ac.messages.create(model=model, max_tokens=100, stop_sequences=stops, messages=user("cut here"))
    assert (r.stop_reason, r.stop_sequence) == ("stop_sequence", seq)
    assert seq not in text_of(r.content)
    with ac.messages.stream(model=model, max_tokens=100, stop_sequences=stops, messages=user("cut here")) as s:
        final = s.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", seq)


def test_stop_sequence_stop_reason(ac, peers):
    r = ac.messages.create(model="claude-peer", max_tokens=100, stop_sequences=["to:"], messages=user("cut here"))
    assert r.stop_reason == "stop_sequence"
    assert text_of(r.content).strip() == "anthropic peer reply"
    assert last_body(peers[0])["stop_sequences"] == ["to:"]


# --------------------------------------------------------------------------
# tools


# The demo calls the tool the text names; the peers call a tool when the
# text says "tool".
TOOL_TEXT = "use the search tool now"


def expected_input(model: str, text: str) -> dict:
    return {"q": "demo"} if model == "demo" else {"q": text}


def tool_uses(blocks) -> list:
    return [b for b in blocks if b.type == "tool_use"]


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
@pytest.mark.parametrize("model", MODELS)
def test_tool_round_trip(ac, peers, model, stream):
    a_peer, o_peer = peers
    text = TOOL_TEXT
    msgs = user(text)

    def ask(messages):
        if stream:
            with ac.messages.stream(model=model, max_tokens=300, tools=TOOLS, messages=messages) as s:
                return s.get_final_message()
        return ac.messages.create(model=model, max_tokens=300, tools=TOOLS, messages=messages)

    r = ask(msgs)
    assert r.stop_reason == "tool_use"
    calls = tool_uses(r.content)
    assert len(calls) == 1, r.content
    call = calls[0]
    assert call.name == "search"
    assert call.input == expected_input(model, text)
    assert ID_RE.match(call.id), call.id
    if model in FIRST_CALL_ID:
        assert call.id == FIRST_CALL_ID[model], "the upstream's tool call id must be preserved"

    msgs2 = msgs + [
        {"role": "assistant", "content": r.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "found it"}]},
    ]
    r2 = ask(msgs2)
    assert r2.stop_reason == "end_turn"
    assert text_of(r2.content) == TOOL_RESULT_PREFIX[model] + "found it"
    if model == "gpt-4o-mini":
        fwd = last_body(o_peer)["messages"]
        assert [m["role"] for m in fwd] == ["user", "assistant", "tool"], fwd
        assert fwd[1]["tool_calls"][0]["id"] == call.id
        assert json.loads(fwd[1]["tool_calls"][0]["function"]["arguments"]) == call.input
        assert fwd[2]["tool_call_id"] == call.id
    if model == "claude-peer":
        fwd = last_body(a_peer)["messages"]
        assert [m["role"] for m in fwd] == ["user", "assistant", "user"], fwd
        uses = [b for b in fwd[1]["content"] if b["type"] == "tool_use"]
        assert [(b["id"], b["name"], b["input"]) for b in uses] == [(call.id, "search", call.input)]


def test_tool_stream_event_order_and_fragments(ac, peers):
    events = sdk_raw_events(
        ac.messages.create(model="claude-peer", max_tokens=300, tools=TOOLS, messages=user("a tool please"), stream=True)
    )
    got = check_event_order(events)
    assert got["delta"]["delta"]["stop_reason"] == "tool_use"
    (block,) = got["blocks"]
    assert block["type"] == "tool_use" and block["id"] == "toolu_peer_0" and block["name"] == "search"
    assert block["input"] == {"q": "a tool please"}
    assert block["_fragments"] >= 3, f"tool input arrived in {block['_fragments']} fragments"


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
@pytest.mark.parametrize("model", PEER_MODELS)
def test_parallel_tool_calls_round_trip(ac, peers, model, stream):
    a_peer, o_peer = peers
    text = "use tools in parallel"
    msgs = user(text)
    if stream:
        events = sdk_raw_events(ac.messages.create(model=model, max_tokens=300, tools=TOOLS, messages=msgs, stream=True))
        got = check_event_order(events)
        assert got["delta"]["delta"]["stop_reason"] == "tool_use"
        calls = [(b["id"], b["name"], b["input"]) for b in got["blocks"] if b["type"] == "tool_use"]
        assistant_content = [
            {"type": "tool_use", "id": b["id"], "name": b["name"], "input": b["input"]}
            for b in got["blocks"]
            if b["type"] == "tool_use"
        ]
    else:
        r = ac.messages.create(model=model, max_tokens=300, tools=TOOLS, messages=msgs)
        assert r.stop_reason == "tool_use"
        calls = [(b.id, b.name, b.input) for b in tool_uses(r.content)]
        assistant_content = r.content
    assert calls == [
        (FIRST_CALL_ID[model], "search", {"q": text}),
        (SECOND_CALL_ID[model], "fetch", {"q": text}),
    ]
    msgs2 = msgs + [
        {"role": "assistant", "content": assistant_content},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": FIRST_CALL_ID[model], "content": "first result"},
                {"type": "tool_result", "tool_use_id": SECOND_CALL_ID[model], "content": "second result"},
            ],
        },
    ]
    r2 = ac.messages.create(model=model, max_tokens=300, tools=TOOLS, messages=msgs2)
    assert text_of(r2.content) == TOOL_RESULT_PREFIX[model] + "second result"
    if model == "gpt-4o-mini":
        fwd = last_body(o_peer)["messages"]
        assert [m["role"] for m in fwd] == ["user", "assistant", "tool", "tool"], fwd
        assert [tc["id"] for tc in fwd[1]["tool_calls"]] == ["call_peer_0", "call_peer_1"]
        assert [m["tool_call_id"] for m in fwd[2:]] == ["call_peer_0", "call_peer_1"]
    else:
        fwd = last_body(a_peer)["messages"]
        assert [b["tool_use_id"] for b in fwd[2]["content"] if b["type"] == "tool_result"] == [
            "toolu_peer_0",
            "toolu_peer_1",
        ]


@pytest.mark.parametrize("model", PEER_MODELS)
def test_tool_result_as_blocks(ac, peers, model):
    a_peer, _ = peers
    call_id = FIRST_CALL_ID[model]
    msgs = user("use a tool") + [
        {"role": "assistant", "content": [{"type": "tool_use", "id": call_id, "name": "search", "input": {"q": "x"}}]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call_id, "content": [{"type": "text", "text": "block result"}]}
            ],
        },
    ]
    r = ac.messages.create(model=model, max_tokens=100, tools=TOOLS, messages=msgs)
    assert text_of(r.content) == TOOL_RESULT_PREFIX[model] + "block result"


def test_tool_result_is_error_reaches_anthropic_peer(ac, peers):
    a_peer, _ = peers
    msgs = user("use a tool") + [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_x1", "name": "search", "input": {"q": "x"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x1", "content": "boom", "is_error": True}]},
    ]
    r = ac.messages.create(model="claude-peer", max_tokens=100, tools=TOOLS, messages=msgs)
    assert text_of(r.content) == "anthropic peer saw tool result: boom"
    result = last_body(a_peer)["messages"][2]["content"][0]
    assert result["type"] == "tool_result" and result.get("is_error") is True, result


def test_tool_choice_translation(ac, peers):
    a_peer, o_peer = peers
    r = ac.messages.create(
        model="claude-peer",
        max_tokens=100,
        tools=TOOLS,
        tool_choice={"type": "tool", "name": "fetch", "disable_parallel_tool_use": True},
        messages=user("no hint here"),
    )
    assert [(b.name, b.input) for b in tool_uses(r.content)] == [("fetch", {"q": "no hint here"})]
    tc = last_body(a_peer)["tool_choice"]
    assert tc["type"] == "tool" and tc["name"] == "fetch", tc

    ac.messages.create(model="gpt-4o-mini", max_tokens=100, tools=TOOLS, tool_choice={"type": "any"}, messages=user("x"))
    assert last_body(o_peer)["tool_choice"] == "required"
    ac.messages.create(
        model="gpt-4o-mini", max_tokens=100, tools=TOOLS, tool_choice={"type": "tool", "name": "fetch"}, messages=user("x")
    )
    assert last_body(o_peer)["tool_choice"] == {"type": "function", "function": {"name": "fetch"}}
    ac.messages.create(
        model="gpt-4o-mini",
        max_tokens=100,
        tools=TOOLS,
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        messages=user("x"),
    )
    assert last_body(o_peer).get("parallel_tool_calls") is False


def test_text_before_tool_use(ac, oc, peers):
    text = "explain then use a tool"
    r = ac.messages.create(model="claude-peer", max_tokens=200, tools=TOOLS, messages=user(text))
    assert [b.type for b in r.content] == ["text", "tool_use"]
    assert r.content[0].text == "Let me use a tool."
    o = oc.chat.completions.create(model="claude-peer", messages=user(text), tools=OPENAI_TOOLS)
    m = o.choices[0].message
    assert o.choices[0].finish_reason == "tool_calls"
    assert m.content == "Let me use a tool."
    assert [(c.id, c.function.name) for c in m.tool_calls] == [("toolu_peer_0", "search")]


# --------------------------------------------------------------------------
# system prompts and roles

SYSTEM_BLOCKS = [
    {"type": "text", "text": "Part one.", "cache_control": {"type": "ephemeral"}},
    {"type": "text", "text": "Part two."},
]


def forwarded_system(model: str, peers) -> str:
    a_peer, o_peer = peers
    if model == "claude-peer":
        body = last_body(a_peer)
        return anthropic_peer.text_of(body.get("system"))
    msgs = last_body(o_peer)["messages"]
    return " ".join(
        anthropic_peer.text_of(m["content"]) if isinstance(m["content"], list) else m["content"]
        for m in msgs
        if m["role"] in ("system", "developer")
    )


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("system", ["You are terse.", SYSTEM_BLOCKS], ids=["string", "blocks"])
def test_system_string_and_blocks(ac, peers, model, system):
    r = ac.messages.create(model=model, max_tokens=100, system=system, messages=user("with a system prompt"))
    assert text_of(r.content) == expected(model, "with a system prompt")
    if model != "demo":
        sent = forwarded_system(model, peers)
        wanted = ["You are terse."] if isinstance(system, str) else ["Part one.", "Part two."]
        for w in wanted:
            assert w in sent, f"system text {w!r} not forwarded: {sent!r}"
    if model == "gpt-4o-mini":
        assert last_body(peers[1])["messages"][0]["role"] in ("system", "developer")


@pytest.mark.parametrize("model", MODELS)
def test_system_role_inside_messages(raw, peers, model):
    body = {
        "model": model,
        "max_tokens": 100,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}],
    }
    r = raw.post("/v1/messages", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["content"][0]["text"] == expected(model, "hi there")
    if model != "demo":
        assert "Be brief." in forwarded_system(model, peers)


# --------------------------------------------------------------------------
# images


def image_message(text: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": text},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
            ],
        }
    ]


def test_image_reaches_openai_peer_as_image_url(ac, peers):
    _, o_peer = peers
    r = ac.messages.create(model="gpt-4o-mini", max_tokens=100, messages=image_message("what is this"))
    assert text_of(r.content) == PEER_PREFIX + "what is this"
    last = last_body(o_peer)["messages"][-1]
    parts = last["content"] if isinstance(last["content"], list) else []
    images = [p for p in parts if isinstance(p, dict) and p.get("type") == "image_url"]
    assert images, f"no image_url part forwarded: {last}"
    assert images[0]["image_url"]["url"] == "data:image/png;base64," + PNG_B64


def test_image_reaches_anthropic_peer_unchanged(ac, peers):
    a_peer, _ = peers
    r = ac.messages.create(model="claude-peer", max_tokens=100, messages=image_message("and this"))
    assert text_of(r.content) == A_PREFIX + "and this"
    blocks = last_body(a_peer)["messages"][-1]["content"]
    images = [b for b in blocks if b["type"] == "image"]
    assert images and images[0]["source"] == {"type": "base64", "media_type": "image/png", "data": PNG_B64}


# --------------------------------------------------------------------------
# thinking

THINKING = {"type": "enabled", "budget_tokens": 1024}


def test_thinking_signature_round_trip_non_stream(ac, peers):
    a_peer, _ = peers
    msgs = user("ponder this")
    r = ac.messages.create(model="claude-peer", max_tokens=2048, thinking=THINKING, messages=msgs)
    assert [b.type for b in r.content] == ["thinking", "text"]
    assert r.content[0].thinking == "peer thinking about: ponder this"
    assert r.content[0].signature == anthropic_peer.SIGNATURE
    assert r.content[1].text == A_PREFIX + "ponder this"
    assert last_body(a_peer)["thinking"] == THINKING, "thinking config must be forwarded"

    msgs2 = msgs + [{"role": "assistant", "content": r.content}, {"role": "user", "content": "and then?"}]
    r2 = ac.messages.create(model="claude-peer", max_tokens=2048, thinking=THINKING, messages=msgs2)
    assert text_of(r2.content) == A_PREFIX + "and then?"
    sent = last_body(a_peer)["messages"][1]["content"]
    thinking = [b for b in sent if b["type"] == "thinking"]
    assert thinking == [
        {"type": "thinking", "thinking": "peer thinking about: ponder this", "signature": anthropic_peer.SIGNATURE}
    ], sent


def test_thinking_stream_with_tool_use_round_trip(ac, peers):
    a_peer, _ = peers
    text = "think, then use a tool"
    msgs = user(text)
    events = sdk_raw_events(
        ac.messages.create(
            model="claude-peer", max_tokens=2048, thinking=THINKING, tools=TOOLS, messages=msgs, stream=True
        )
    )
    got = check_event_order(events)
    assert [b["type"] for b in got["blocks"]] == ["thinking", "tool_use"]
    assert got["blocks"][0]["thinking"] == "peer thinking about: " + text
    assert got["blocks"][0].get("signature") == anthropic_peer.SIGNATURE, got["blocks"][0]
    assert got["delta"]["delta"]["stop_reason"] == "tool_use"

    with ac.messages.stream(model="claude-peer", max_tokens=2048, thinking=THINKING, tools=TOOLS, messages=msgs) as s:
        final = s.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "tool_use"]
    assert final.content[0].signature == anthropic_peer.SIGNATURE

    msgs2 = msgs + [
        {"role": "assistant", "content": final.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_peer_0", "content": "tool output"}]},
    ]
    with ac.messages.stream(model="claude-peer", max_tokens=2048, thinking=THINKING, tools=TOOLS, messages=msgs2) as s:
        final2 = s.get_final_message()
    assert text_of(final2.content) == "anthropic peer saw tool result: tool output"
    sent = last_body(a_peer)["messages"][1]["content"]
    assert [b["type"] for b in sent] == ["thinking", "tool_use"], sent
    assert sent[0]["signature"] == anthropic_peer.SIGNATURE
    assert sent[0]["thinking"] == "peer thinking about: " + text


def test_thinking_does_not_leak_into_openai_content(oc, peers):
    r = oc.chat.completions.create(model="claude-peer", messages=user("please think hard"))
    assert r.choices[0].message.content == A_PREFIX + "please think hard"
    s = collect_sdk_stream(oc.chat.completions.create(model="claude-peer", messages=user("please think hard"), stream=True))
    assert s["text"] == A_PREFIX + "please think hard"


# --------------------------------------------------------------------------
# count_tokens


@pytest.mark.parametrize("model", MODELS)
def test_count_tokens_grows_with_input(ac, model):
    small = ac.messages.count_tokens(model=model, messages=user("hi"))
    big = ac.messages.count_tokens(model=model, messages=user("hi " + "many more words in this message " * 20))
    assert small.input_tokens > 0
    assert big.input_tokens > small.input_tokens
    with_tools = ac.messages.count_tokens(model=model, messages=user("hi"), system="A long system prompt " * 5, tools=TOOLS)
    assert with_tools.input_tokens > small.input_tokens


def test_count_tokens_unknown_model(ac, raw):
    with pytest.raises(anthropic.NotFoundError) as e:
        ac.messages.count_tokens(model="no-such-model", messages=user("hi"))
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "not_found_error"
    r = raw.post("/v1/messages/count_tokens", json={"model": "no-such-model", "messages": user("hi")})
    expect_error(r, 404, "not_found_error")


def test_count_tokens_with_claude_code_shaped_body(raw):
    body = {
        "model": "claude-peer",
        "system": SYSTEM_BLOCKS,
        "tools": TOOLS,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello", "cache_control": {"type": "ephemeral"}}]}],
        "thinking": THINKING,
    }
    r = raw.post("/v1/messages/count_tokens", json=body, headers={"anthropic-beta": "token-counting-2024-11-01"})
    assert r.status_code == 200, r.text
    assert r.json()["input_tokens"] > 0


# --------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    "body, field",
    [
        ({"model": "demo", "max_tokens": 10}, "messages"),
        ({"model": "demo", "max_tokens": 10, "messages": "hi"}, "messages"),
        ({"model": "demo", "max_tokens": "lots", "messages": user("hi")}, "max_tokens"),
        ({"model": "demo", "max_tokens": 10, "messages": [{"role": "user", "content": 42}]}, "content"),
        ({"model": "demo", "max_tokens": 10, "messages": [{"role": "robot", "content": "hi"}]}, "role"),
        ({"model": 7, "max_tokens": 10, "messages": user("hi")}, "model"),
    ],
    ids=["no-messages", "messages-not-list", "max-tokens-string", "content-number", "bad-role", "model-number"],
)
def test_bad_input_is_400_naming_the_field(raw, body, field):
    r = raw.post("/v1/messages", json=body)
    msg = expect_error(r, 400, "invalid_request_error")
    assert field in msg, f"the message does not name {field!r}: {msg!r}"


def test_malformed_json_is_400(raw):
    r = raw.post("/v1/messages", content=b"{not json", headers={"content-type": "application/json"})
    expect_error(r, 400, "invalid_request_error")


def test_bad_key_is_401(gw, raw):
    bad = support.make_anthropic_client(gw.url, api_key="sk-wrong")
    with pytest.raises(anthropic.AuthenticationError) as e:
        bad.messages.create(model="demo", max_tokens=10, messages=user("hi"))
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "authentication_error"
    with httpx.Client(base_url=gw.url, timeout=10, trust_env=False) as c:
        r = c.post("/v1/messages", json={"model": "demo", "max_tokens": 10, "messages": user("hi")}, headers={"anthropic-version": VERSION})
    expect_error(r, 401, "authentication_error")


def test_unknown_model_is_404(ac, raw):
    with pytest.raises(anthropic.NotFoundError) as e:
        ac.messages.create(model="no-such-model", max_tokens=10, messages=user("hi"))
    assert e.value.body["error"]["type"] == "not_found_error"
    r = raw.post("/v1/messages", json={"model": "no-such-model", "max_tokens": 10, "stream": True, "messages": user("hi")})
    expect_error(r, 404, "not_found_error")


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_upstream_400_is_passed_through(ac, peers, stream):
    a_peer, _ = peers
    a_peer.fault("400")
    with pytest.raises(anthropic.BadRequestError) as e:
        if stream:
            with ac.messages.stream(model="claude-peer", max_tokens=10, messages=user("hi")) as s:
                s.get_final_message()
        else:
            ac.messages.create(model="claude-peer", max_tokens=10, messages=user("hi"))
    body = e.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
    assert "anthropic peer rejects this" in body["error"]["message"], body
    assert len(a_peer.requests()) == 1, "a client error must not be retried"


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
@pytest.mark.parametrize("mode", ["429", "529", "500"])
def test_failover_before_first_byte(ac, peers, mode, stream):
    a_peer, _ = peers
    a_peer.fault(mode, retry_after=1)
    if stream:
        with ac.messages.stream(model="claude-peer", max_tokens=100, messages=user("fail over")) as s:
            final = s.get_final_message()
    else:
        final = ac.messages.create(model="claude-peer", max_tokens=100, messages=user("fail over"))
    assert text_of(final.content) == A_PREFIX + "fail over"
    reqs = a_peer.requests()
    assert [r["fault"] for r in reqs] == [mode, None], reqs
    assert reqs[0]["outcome"] == f"status {mode}"
    assert reqs[1]["outcome"] == "completed"
    assert reqs[0]["key"] != reqs[1]["key"], "the retry must go to the other account"
    assert {r["key"] for r in reqs} == set(A_KEYS)


def test_non_stream_drop_is_retried(ac, peers):
    a_peer, _ = peers
    a_peer.fault("drop")
    r = ac.messages.create(model="claude-peer", max_tokens=100, messages=user("dropped once"))
    assert text_of(r.content) == A_PREFIX + "dropped once"
    reqs = a_peer.requests()
    assert [x["outcome"] for x in reqs] == ["dropped", "completed"], reqs
    assert reqs[0]["key"] != reqs[1]["key"]


@pytest.mark.parametrize("mode", ["drop", "stream_error"])
def test_mid_stream_failure_ends_with_error_event(raw, peers, mode):
    a_peer, _ = peers
    a_peer.fault(mode)
    res = raw_stream(raw, "/v1/messages", {"model": "claude-peer", "max_tokens": 100, "stream": True, "messages": user("x")})
    assert res.status == 200, res.body[:500]
    names = res.names()
    assert names, "no events"
    assert names[0] == "message_start"
    assert names[-1] == "error", f"stream did not end with an error event: {names}"
    assert "message_stop" not in names, names
    err = res.events[-1][1]
    assert err["type"] == "error" and isinstance(err.get("error"), dict), err
    assert err["error"].get("type") and err["error"].get("message"), err
    text = "".join(
        d["delta"].get("text", "") for n, d in res.events if n == "content_block_delta"
    )
    assert text == "partial answer ", f"text before the failure: {text!r}"
    if mode == "stream_error":
        assert err["error"]["type"] == "overloaded_error", err
    assert len(a_peer.requests()) == 1, "a stream that already sent text must not be retried"


def test_sdk_stream_raises_on_mid_stream_failure(ac, peers):
    a_peer, _ = peers
    a_peer.fault("drop")
    with pytest.raises(anthropic.APIError):
        with ac.messages.stream(model="claude-peer", max_tokens=100, messages=user("x")) as s:
            s.get_final_message()


@pytest.mark.parametrize("model", ["demo", "gpt-4o-mini"])
def test_unknown_fields_and_beta_headers_are_accepted(ac, model):
    """Pools of other protocols take what they can and name the rest."""
    r = ac.messages.with_raw_response.create(
        model=model,
        max_tokens=100,
        system=SYSTEM_BLOCKS,
        metadata={"user_id": "user_abc123"},
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "tolerate this", "cache_control": {"type": "ephemeral"}}]}
        ],
        extra_headers={"anthropic-beta": "prompt-caching-2024-07-31,fine-grained-tool-streaming-2025-05-14"},
        extra_body={"top_k": 5, "some_future_field": {"x": 1}, "another_unknown": True},
    )
    assert text_of(r.parse().content) == expected(model, "tolerate this")
    dropped = set(r.headers["x-troupe-dropped"].split(","))
    assert {"some_future_field", "another_unknown", "top_k", "cache_control"} <= dropped, dropped
    assert "metadata" not in dropped and "system" not in dropped


def test_unknown_fields_reach_an_anthropic_pool_unchanged(ac, peers):
    """Same protocol in and out: the body arrives as the client wrote it,
    and the upstream (which, like Anthropic, refuses fields it does not
    know) answers for itself."""
    a_peer, _ = peers
    with pytest.raises(anthropic.BadRequestError) as err:
        ac.messages.create(
            model="claude-peer",
            max_tokens=100,
            system=SYSTEM_BLOCKS,
            metadata={"user_id": "user_abc123"},
            messages=[
                {"role": "user", "content": [{"type": "text", "text": "tolerate this", "cache_control": {"type": "ephemeral"}}]}
            ],
            extra_body={"top_k": 5, "some_future_field": {"x": 1}, "another_unknown": True},
        )
    assert "some_future_field" in str(err.value)
    body = last_body(a_peer)
    assert body["some_future_field"] == {"x": 1} and body["another_unknown"] is True
    assert body["top_k"] == 5
    assert body["system"] == SYSTEM_BLOCKS
    assert body["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert body.get("metadata") == {"user_id": "user_abc123"}


def test_models_list_in_anthropic_shape(ac, raw, gw):
    page = ac.models.list()
    ids = [m.id for m in page.data]
    assert {"demo", "gpt-4o-mini", "claude-peer", "claude-alias"} <= set(ids), ids
    for m in page.data:
        assert m.type == "model"
        assert m.display_name
        assert m.created_at is not None
    r = raw.get("/v1/models")
    body = r.json()
    assert r.status_code == 200
    assert body["has_more"] is False
    assert body["first_id"] == body["data"][0]["id"] and body["last_id"] == body["data"][-1]["id"]
    assert "object" not in body, "Anthropic shape has no `object`"
    one = raw.get("/v1/models/claude-peer")
    assert one.status_code == 200 and one.json()["type"] == "model" and one.json()["id"] == "claude-peer"
    # Without anthropic-version: OpenAI's shape.
    with gw.http() as c:
        o = c.get("/v1/models").json()
    assert o["object"] == "list"


# --------------------------------------------------------------------------
# the OpenAI SDK against the Anthropic pool


def test_openai_client_text(oc, peers):
    a_peer, _ = peers
    r = oc.chat.completions.create(model="claude-peer", messages=user("hello from openai"))
    assert r.choices[0].message.content == A_PREFIX + "hello from openai"
    assert r.choices[0].finish_reason == "stop"
    assert r.model == "claude-peer"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    sent = last_body(a_peer)
    assert isinstance(sent["max_tokens"], int) and sent["max_tokens"] > 0, "Anthropic requires max_tokens"

    s = collect_sdk_stream(oc.chat.completions.create(model="claude-peer", messages=user("hello from openai"), stream=True))
    assert s["text"] == A_PREFIX + "hello from openai"
    assert s["finish"] == ["stop"]
    assert s["roles"] == ["assistant"]
    assert len(s["text_parts"]) > 1
    assert len({c.id for c in s["chunks"]}) == 1


def test_openai_client_system_and_sampling(oc, peers):
    a_peer, _ = peers
    r = oc.chat.completions.create(
        model="claude-peer",
        messages=[{"role": "system", "content": "Be helpful."}, *user("sampled")],
        temperature=0.5,
        top_p=0.9,
        max_tokens=50,
        stop=["never-appears"],
        user="u-42",
    )
    assert r.choices[0].message.content == A_PREFIX + "sampled"
    sent = last_body(a_peer)
    assert anthropic_peer.text_of(sent.get("system")) == "Be helpful."
    assert [m["role"] for m in sent["messages"]] == ["user"]
    assert sent["temperature"] == 0.5 and sent["top_p"] == 0.9 and sent["max_tokens"] == 50
    assert sent["stop_sequences"] == ["never-appears"]


def test_openai_client_length(oc, peers):
    r = oc.chat.completions.create(model="claude-peer", messages=user("cut me short please"), max_tokens=3)
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].message.content.split() == ["anthropic", "peer", "reply"]


def test_openai_client_tool_calls(oc, peers):
    a_peer, _ = peers
    text = "use a tool for this"
    r = oc.chat.completions.create(model="claude-peer", messages=user(text), tools=OPENAI_TOOLS)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert [(c.id, c.type, c.function.name) for c in calls] == [("toolu_peer_0", "function", "search")]
    assert isinstance(calls[0].function.arguments, str)
    assert json.loads(calls[0].function.arguments) == {"q": text}
    sent_tools = last_body(a_peer)["tools"]
    assert [(t["name"], t["input_schema"]) for t in sent_tools] == [(t["name"], t["input_schema"]) for t in TOOLS]

    s = collect_sdk_stream(oc.chat.completions.create(model="claude-peer", messages=user(text), tools=OPENAI_TOOLS, stream=True))
    assert s["finish"] == ["tool_calls"]
    assert [(c["id"], c["name"]) for c in s["calls"]] == [("toolu_peer_0", "search")]
    assert json.loads(s["calls"][0]["arguments"]) == {"q": text}
    assert s["arg_fragments"].get(0, 0) >= 2, s["arg_fragments"]


def test_openai_client_parallel_tool_round_trip(oc, peers):
    a_peer, _ = peers
    text = "use tools in parallel please"
    msgs = user(text)
    s = collect_sdk_stream(
        oc.chat.completions.create(
            model="claude-peer", messages=msgs, tools=OPENAI_TOOLS, stream=True, stream_options={"include_usage": True}
        )
    )
    assert s["finish"] == ["tool_calls"]
    assert [(c["id"], c["name"]) for c in s["calls"]] == [("toolu_peer_0", "search"), ("toolu_peer_1", "fetch")]
    for c in s["calls"]:
        assert json.loads(c["arguments"]) == {"q": text}
    assert len(s["usage_chunks"]) == 1 and s["usage_chunks"][0].usage.completion_tokens > 0
    msgs2 = msgs + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in s["calls"]
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_peer_0", "content": "first result"},
        {"role": "tool", "tool_call_id": "toolu_peer_1", "content": "second result"},
    ]
    r2 = oc.chat.completions.create(model="claude-peer", messages=msgs2, tools=OPENAI_TOOLS)
    assert r2.choices[0].message.content == "anthropic peer saw tool result: second result"
    sent = last_body(a_peer)["messages"]
    # Anthropic needs both results in the one user message after the calls.
    assert [m["role"] for m in sent] == ["user", "assistant", "user"], sent
    assert [b["id"] for b in sent[1]["content"] if b["type"] == "tool_use"] == ["toolu_peer_0", "toolu_peer_1"]
    assert [b["tool_use_id"] for b in sent[2]["content"] if b["type"] == "tool_result"] == ["toolu_peer_0", "toolu_peer_1"]


def test_openai_client_image_reaches_anthropic_peer(oc, peers):
    a_peer, _ = peers
    r = oc.chat.completions.create(
        model="claude-peer",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG_B64}},
                ],
            }
        ],
    )
    assert r.choices[0].message.content == A_PREFIX + "look"
    blocks = last_body(a_peer)["messages"][-1]["content"]
    images = [b for b in blocks if b["type"] == "image"]
    assert images and images[0]["source"] == {"type": "base64", "media_type": "image/png", "data": PNG_B64}


def test_openai_client_upstream_errors(oc, peers):
    a_peer, _ = peers
    a_peer.fault("400")
    with pytest.raises(openai.BadRequestError) as e:
        oc.chat.completions.create(model="claude-peer", messages=user("x"))
    assert "anthropic peer rejects this" in str(e.value)
    a_peer.reset()
    a_peer.fault("529")
    r = oc.chat.completions.create(model="claude-peer", messages=user("recovered"))
    assert r.choices[0].message.content == A_PREFIX + "recovered"
    assert [x["fault"] for x in a_peer.requests()] == ["529", None]


def test_empty_assistant_text_is_not_forwarded(oc, peers):
    # OpenAI clients often send `content: ""` next to tool_calls; Anthropic
    # refuses empty text blocks, so the translation must leave it out.
    a_peer, _ = peers
    msgs = user("use a tool") + [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "toolu_peer_0", "type": "function", "function": {"name": "search", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "toolu_peer_0", "content": "done"},
    ]
    r = oc.chat.completions.create(model="claude-peer", messages=msgs, tools=OPENAI_TOOLS)
    assert r.choices[0].message.content == "anthropic peer saw tool result: done"
    sent = last_body(a_peer)["messages"][1]["content"]
    assert [b["type"] for b in sent] == ["tool_use"], sent
    assert sent[0]["input"] == {}


def test_unsigned_thinking_is_not_forwarded(raw, peers):
    # Thinking without a signature (from another provider, or edited) would be
    # refused by Anthropic; the gateway leaves it out.
    a_peer, _ = peers
    body = {
        "model": "claude-peer",
        "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "first"},
            {
                "role": "assistant",
                "content": [{"type": "thinking", "thinking": "unsigned musing"}, {"type": "text", "text": "an answer"}],
            },
            {"role": "user", "content": "second"},
        ],
    }
    r = raw.post("/v1/messages", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["content"][-1]["text"] == A_PREFIX + "second"
    sent = last_body(a_peer)["messages"][1]["content"]
    assert [b["type"] for b in sent] == ["text"], sent


def test_upstream_request_headers(ac, peers):
    a_peer, _ = peers
    ac.messages.create(model="claude-peer", max_tokens=10, messages=user("headers"))
    (req,) = a_peer.requests()
    assert req["version"] == VERSION
    assert req["key"] in A_KEYS
    assert req["auth"] == "x-api-key"
    assert req["path"] == "/v1/messages"


# --------------------------------------------------------------------------
# the Anthropic peer itself, straight from the official SDK: it speaks the
# protocol, and refuses what the real service refuses (so a translation
# mistake in the gateway fails the tests above instead of passing unnoticed).


@pytest.fixture(scope="module")
def direct(a_peer: PeerProc) -> anthropic.Anthropic:
    return support.make_anthropic_client(a_peer.url, api_key=A_KEYS[0])


def test_peer_answers_the_sdk(direct, a_peer):
    a_peer.reset()
    r = direct.messages.create(model="claude-peer", max_tokens=2048, thinking=THINKING, tools=TOOLS, messages=user("a tool"))
    assert [b.type for b in r.content] == ["thinking", "tool_use"]
    assert r.usage.cache_read_input_tokens == anthropic_peer.CACHE_READ
    with direct.messages.stream(model="claude-peer", max_tokens=100, messages=user("streamed")) as s:
        final = s.get_final_message()
    assert text_of(final.content) == A_PREFIX + "streamed"
    assert final.usage.output_tokens == 5 and final.usage.cache_read_input_tokens == anthropic_peer.CACHE_READ
    events = sdk_raw_events(direct.messages.create(model="claude-peer", max_tokens=100, messages=user("x"), stream=True))
    check_event_order(events)


@pytest.mark.parametrize(
    "messages, extra, needle",
    [
        ([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], {}, "role"),
        ([{"role": "user", "content": [{"type": "text", "text": ""}]}], {}, "non-empty"),
        (
            [
                {"role": "user", "content": "u"},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "t"}]},
                {"role": "user", "content": "v"},
            ],
            {},
            "signature",
        ),
        (
            [
                {"role": "user", "content": "u"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "search", "input": {}}]},
                {"role": "user", "content": "no result"},
            ],
            {"tools": TOOLS},
            "tool_result",
        ),
        ([{"role": "user", "content": "u"}], {"stream_options": {"include_usage": True}}, "stream_options"),
    ],
    ids=["system-role", "empty-text", "unsigned-thinking", "unanswered-tool-use", "unknown-field"],
)
def test_peer_refuses_what_anthropic_refuses(a_peer, messages, extra, needle):
    with httpx.Client(base_url=a_peer.url, timeout=10, trust_env=False) as c:
        r = c.post(
            "/v1/messages",
            json={"model": "claude-peer", "max_tokens": 10, "messages": messages, **extra},
            headers={"x-api-key": A_KEYS[0], "anthropic-version": VERSION},
        )
    msg = expect_error(r, 400, "invalid_request_error")
    assert needle in msg, msg
