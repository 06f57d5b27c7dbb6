"""LiteLLM (PyPI ``litellm``) as a real client of both frontends.

``litellm.completion(model="openai/<model>", api_base=<gateway>/v1)`` speaks
Chat Completions to ``/v1/chat/completions``; ``model="anthropic/<model>"``
speaks the Messages API, and LiteLLM appends ``/v1/messages`` to its
``api_base`` (unless the base already ends with it), so that one gets the
gateway's root URL. Answers come from the built-in ``demo`` pool and the
fake OpenAI peer (``tests/peers/openai_peer.py``), both deterministic.

The key scenario: the peer streams two parallel tool calls whose argument
fragments interleave (call 0, call 1, call 0, ...), as real OpenAI-compatible
servers do. LiteLLM on either route, and the official ``anthropic`` and
``openai`` SDKs, must get both calls with exactly the peer's arguments,
streamed and not, and the peer must get both calls back with the results.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

# No download of the model cost map at import (the tests run offline).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import anthropic  # noqa: E402
import litellm  # noqa: E402
import pytest  # noqa: E402

import support  # noqa: E402
from peers import openai_peer  # noqa: E402
from support import DEMO_PREFIX, GATEWAY_KEY, PEER_PREFIX, Gateway, PeerProc  # noqa: E402

litellm.suppress_debug_info = True
litellm.telemetry = False

# LiteLLM's pydantic models warn about ReadOnly TypedDict items on first use.
pytestmark = pytest.mark.filterwarnings("ignore:.*ReadOnly.*:UserWarning")

ROUTES = ["openai", "anthropic"]
STREAMS = [pytest.param(False, id="complete"), pytest.param(True, id="stream")]
TIMEOUT = 30

SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    },
}
WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The current weather in a city", "parameters": WEATHER_PARAMS},
}
PARIS = {"city": "Paris", "unit": "celsius"}
TOKYO = {"city": "Tokyo", "unit": "fahrenheit"}
# Uneven fragment counts: the calls interleave, then call 1 goes on alone.
INTERLEAVED = [
    {"name": "get_weather", "arguments": PARIS, "fragments": 3},
    {"name": "get_weather", "arguments": TOKYO, "fragments": 5},
]
INTERLEAVED_PROMPT = "What is the weather in Paris and Tokyo?\ntroupe-calls[interleave]: " + json.dumps(INTERLEAVED)
EXPECTED_CALLS = [("call_peer_0", "get_weather", PARIS), ("call_peer_1", "get_weather", TOKYO)]


# --------------------------------------------------------------------------
# one peer and one gateway for the module


@pytest.fixture(scope="module")
def peer() -> Iterator[PeerProc]:
    try:
        proc = support.start_peer()
    except support.StartError as e:
        pytest.fail(str(e), pytrace=False)
    yield proc
    proc.cleanup()


@pytest.fixture(scope="module")
def gw(peer: PeerProc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("litellm-gw")
    try:
        gateway = support.start_gateway(tmp, support.gateway_config(tmp, peer.url))
    except support.StartError as e:
        pytest.fail(str(e), pytrace=False)
    gateway.wait_ready(timeout=10)
    yield gateway
    gateway.cleanup()


@pytest.fixture
def fresh(peer: PeerProc) -> PeerProc:
    """The peer with no faults and an empty request log."""
    peer.reset()
    return peer


def served(peer: PeerProc) -> list[dict]:
    return [q for q in peer.requests() if q["outcome"] in ("completed", "status 200")]


def forwarded_calls(message: dict) -> list[tuple]:
    """(id, name, parsed arguments) of an assistant message the peer got."""
    return [(tc["id"], tc["function"]["name"], json.loads(tc["function"]["arguments"])) for tc in message["tool_calls"]]


# --------------------------------------------------------------------------
# calling LiteLLM


def route_args(gw: Gateway, route: str, model: str) -> dict:
    # The anthropic provider appends /v1/messages to api_base itself.
    base = gw.v1 if route == "openai" else gw.url
    return {"model": f"{route}/{model}", "api_base": base, "api_key": GATEWAY_KEY}


def complete(gw: Gateway, route: str, model: str, messages: list[dict], stream: bool, **kw: Any) -> dict:
    """One ``litellm.completion``; what the caller sees, folded: text, tool
    calls as (id, name, arguments string), finish reason, usage."""
    args = dict(route_args(gw, route, model), messages=messages, max_tokens=300, timeout=TIMEOUT, num_retries=0, **kw)
    if not stream:
        r = litellm.completion(**args)
        choice = r.choices[0]
        msg = choice.message
        calls = [(tc.id, tc.function.name, tc.function.arguments) for tc in msg.tool_calls or []]
        return {
            "text": msg.content or "",
            "calls": calls,
            "finish": choice.finish_reason,
            "usage": r.usage,
            "content_chunks": None,
        }
    chunks = list(litellm.completion(**args, stream=True, stream_options={"include_usage": True}))
    text, content_chunks, finish, usage = "", 0, [], None
    slots: dict[int, dict] = {}
    for ch in chunks:
        if getattr(ch, "usage", None) is not None:
            usage = ch.usage
        for choice in ch.choices:
            d = choice.delta
            if d.content:
                text += d.content
                content_chunks += 1
            for tc in d.tool_calls or []:
                slot = slots.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
                if tc.id:
                    slot["id"] = tc.id
                if tc.function is not None:
                    if tc.function.name:
                        slot["name"] = tc.function.name
                    if tc.function.arguments:
                        slot["arguments"] += tc.function.arguments
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    assert len(finish) == 1, f"finish reasons in the stream: {finish}"
    calls = [(s["id"], s["name"], s["arguments"]) for _, s in sorted(slots.items())]
    return {"text": text, "calls": calls, "finish": finish[0], "usage": usage, "content_chunks": content_chunks}


def parsed(calls: list[tuple]) -> list[tuple]:
    """Tool calls with their arguments parsed; a clear failure if they are
    not JSON (the arguments arrived garbled)."""
    out = []
    for cid, name, args in calls:
        try:
            out.append((cid, name, json.loads(args)))
        except ValueError as e:
            pytest.fail(f"tool call {cid} ({name}) arrived with arguments that are not JSON ({e}): {args!r}\n"
                        f"all calls: {calls}", pytrace=False)
    return out


def assistant_turn(calls: list[tuple]) -> dict:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": cid, "type": "function", "function": {"name": name, "arguments": args}} for cid, name, args in calls
        ],
    }


# --------------------------------------------------------------------------
# text


@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("model", ["demo", "gpt-4o-mini"])
@pytest.mark.parametrize("route", ROUTES)
def test_text(gw, fresh, route, model, stream):
    prompt = "hello from litellm"
    got = complete(gw, route, model, [{"role": "user", "content": prompt}], stream)
    answer = (DEMO_PREFIX if model == "demo" else PEER_PREFIX) + prompt
    assert got["text"] == answer
    assert got["finish"] == "stop"
    assert got["calls"] == []
    if stream:
        assert got["content_chunks"] >= len(support.words(answer)) // 2, got["content_chunks"]
    usage = got["usage"]
    assert usage is not None, "no usage reached LiteLLM"
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0, usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, usage
    if model == "gpt-4o-mini":
        # The peer's own usage reaches LiteLLM unchanged.
        (q,) = served(fresh)
        assert usage.completion_tokens == len(support.words(answer)), usage
        assert usage.prompt_tokens == openai_peer.prompt_tokens(q["body"]["messages"], q["body"].get("tools")), usage


@pytest.mark.parametrize("route", ROUTES)
def test_system_prompt_reaches_the_peer(gw, fresh, route):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    got = complete(gw, route, "gpt-4o-mini", messages, False)
    assert got["text"] == PEER_PREFIX + "hi there"
    (q,) = served(fresh)
    fwd = q["body"]["messages"]
    got_roles = [(m["role"], openai_peer.text_of(m["content"])) for m in fwd]
    assert got_roles == [("system", "be brief"), ("user", "hi there")]


# --------------------------------------------------------------------------
# tools


@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("route", ROUTES)
def test_tool_round_trip(gw, fresh, route, stream):
    prompt = "use the search tool now"
    messages = [{"role": "user", "content": prompt}]
    got = complete(gw, route, "gpt-4o-mini", messages, stream, tools=[SEARCH_TOOL])
    assert got["finish"] == "tool_calls"
    assert parsed(got["calls"]) == [("call_peer_0", "search", {"q": prompt})]
    assert got["text"] == ""

    messages += [
        assistant_turn(got["calls"]),
        {"role": "tool", "tool_call_id": "call_peer_0", "content": "found it"},
    ]
    got2 = complete(gw, route, "gpt-4o-mini", messages, stream, tools=[SEARCH_TOOL])
    assert got2["text"] == "peer saw tool result: found it"
    assert got2["finish"] == "stop"
    assert got2["calls"] == []

    reqs = served(fresh)
    assert len(reqs) == 2, [q["outcome"] for q in fresh.requests()]
    fwd = reqs[1]["body"]["messages"]
    assert [m["role"] for m in fwd] == ["user", "assistant", "tool"], fwd
    (tc,) = fwd[1]["tool_calls"]
    assert (tc["id"], tc["function"]["name"], json.loads(tc["function"]["arguments"])) == (
        "call_peer_0",
        "search",
        {"q": prompt},
    )
    assert (fwd[2]["tool_call_id"], openai_peer.text_of(fwd[2]["content"])) == ("call_peer_0", "found it")


@pytest.mark.parametrize("stream", STREAMS)
def test_demo_tool_round_trip_on_the_anthropic_route(gw, fresh, stream):
    """The demo model calls a tool it is asked for by name, with arguments
    from the tool's schema (the first enum value, else "demo")."""
    messages = [{"role": "user", "content": "call get_weather please"}]
    got = complete(gw, "anthropic", "demo", messages, stream, tools=[WEATHER_TOOL])
    assert got["finish"] == "tool_calls"
    ((cid, name, args),) = parsed(got["calls"])
    assert (name, args) == ("get_weather", {"city": "demo", "unit": "celsius"})
    messages += [assistant_turn(got["calls"]), {"role": "tool", "tool_call_id": cid, "content": "12 degrees"}]
    got2 = complete(gw, "anthropic", "demo", messages, stream, tools=[WEATHER_TOOL])
    assert got2["text"] == "The tool returned: 12 degrees"
    assert got2["finish"] == "stop"


@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("route", ROUTES)
def test_interleaved_parallel_tool_calls(gw, fresh, route, stream):
    """The peer streams two parallel calls with interleaved argument
    fragments; LiteLLM must get both with exactly the peer's arguments, and
    the peer both calls and both results back."""
    messages = [{"role": "user", "content": INTERLEAVED_PROMPT}]
    got = complete(gw, route, "gpt-4o-mini", messages, stream, tools=[WEATHER_TOOL])
    assert parsed(got["calls"]) == EXPECTED_CALLS, f"tool calls garbled through the gateway: {got['calls']}"
    assert got["finish"] == "tool_calls"

    messages += [
        assistant_turn(got["calls"]),
        {"role": "tool", "tool_call_id": "call_peer_0", "content": "Paris: sunny"},
        {"role": "tool", "tool_call_id": "call_peer_1", "content": "Tokyo: rain"},
    ]
    got2 = complete(gw, route, "gpt-4o-mini", messages, stream, tools=[WEATHER_TOOL])
    assert got2["text"] == "peer saw tool result: Tokyo: rain"
    assert got2["finish"] == "stop"

    reqs = served(fresh)
    assert len(reqs) == 2, [q["outcome"] for q in fresh.requests()]
    fwd = reqs[1]["body"]["messages"]
    assert [m["role"] for m in fwd] == ["user", "assistant", "tool", "tool"], fwd
    assert forwarded_calls(fwd[1]) == EXPECTED_CALLS
    assert [(m["tool_call_id"], openai_peer.text_of(m["content"])) for m in fwd[2:]] == [
        ("call_peer_0", "Paris: sunny"),
        ("call_peer_1", "Tokyo: rain"),
    ]


# --------------------------------------------------------------------------
# the same scenario with the official SDKs


ANTHROPIC_WEATHER = {
    "name": "get_weather",
    "description": "The current weather in a city",
    "input_schema": WEATHER_PARAMS,
}


def strict_blocks(events: list[dict]) -> list[dict]:
    """Content blocks rebuilt from raw Messages stream events, asserting
    Anthropic's grammar: each block starts, gets deltas of its own index
    only, and stops before the next one starts."""
    blocks: list[dict] = []
    open_index = None
    partial = ""
    kinds = [e["type"] for e in events]
    for e in events:
        t = e["type"]
        if t == "content_block_start":
            assert open_index is None, f"block {e['index']} starts while block {open_index} is open: {kinds}"
            assert e["index"] == len(blocks), f"block index {e['index']}, expected {len(blocks)}"
            open_index, partial = e["index"], ""
            blocks.append(dict(e["content_block"]))
        elif t == "content_block_delta":
            assert e["index"] == open_index, (
                f"a delta for block {e['index']} while block {open_index} is open: {e['delta']}\nall events: {events}"
            )
            if e["delta"]["type"] == "input_json_delta":
                partial += e["delta"]["partial_json"]
            elif e["delta"]["type"] == "text_delta":
                blocks[-1]["text"] = blocks[-1].get("text", "") + e["delta"]["text"]
        elif t == "content_block_stop":
            assert e["index"] == open_index, f"stop for block {e['index']} while block {open_index} is open"
            if blocks[-1]["type"] == "tool_use":
                try:
                    blocks[-1]["input"] = json.loads(partial) if partial else {}
                except ValueError as err:
                    pytest.fail(f"tool_use block {open_index} input is not JSON ({err}): {partial!r}", pytrace=False)
            open_index = None
    assert open_index is None, f"block {open_index} never stopped: {kinds}"
    assert kinds[-2:] == ["message_delta", "message_stop"], kinds
    return blocks


@pytest.mark.parametrize("stream", STREAMS)
def test_interleaved_parallel_tool_calls_official_anthropic_sdk(gw, fresh, stream):
    ac = anthropic.Anthropic(base_url=gw.url, api_key=GATEWAY_KEY, max_retries=0, timeout=TIMEOUT)
    args = dict(
        model="gpt-4o-mini",
        max_tokens=300,
        tools=[ANTHROPIC_WEATHER],
        messages=[{"role": "user", "content": INTERLEAVED_PROMPT}],
    )
    if stream:
        events = [ev.to_dict(mode="json") for ev in ac.messages.create(**args, stream=True)]
        blocks = strict_blocks(events)
        assert [(b["id"], b["name"], b["input"]) for b in blocks if b["type"] == "tool_use"] == EXPECTED_CALLS, blocks
        stop = [e for e in events if e["type"] == "message_delta"][0]["delta"]["stop_reason"]
        assert stop == "tool_use"
        # The SDK's own accumulation agrees.
        with ac.messages.stream(**args) as s:
            msg = s.get_final_message()
    else:
        msg = ac.messages.create(**args)
    assert msg.stop_reason == "tool_use"
    assert [(b.id, b.name, b.input) for b in msg.content if b.type == "tool_use"] == EXPECTED_CALLS, msg.content


@pytest.mark.parametrize("stream", STREAMS)
def test_interleaved_parallel_tool_calls_official_openai_sdk(gw, fresh, stream):
    oc = support.make_client(gw.v1, timeout=TIMEOUT)
    args = dict(model="gpt-4o-mini", tools=[WEATHER_TOOL], messages=[{"role": "user", "content": INTERLEAVED_PROMPT}])
    if stream:
        got = support.collect_sdk_stream(oc.chat.completions.create(**args, stream=True))
        calls = [(c["id"], c["name"], c["arguments"]) for c in got["calls"]]
        assert got["finish"] == ["tool_calls"]
    else:
        r = oc.chat.completions.create(**args)
        calls = [(tc.id, tc.function.name, tc.function.arguments) for tc in r.choices[0].message.tool_calls or []]
        assert r.choices[0].finish_reason == "tool_calls"
    assert parsed(calls) == EXPECTED_CALLS


# --------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("route", ROUTES)
def test_unknown_model_is_not_found(gw, fresh, route, stream):
    with pytest.raises(litellm.NotFoundError) as info:
        complete(gw, route, "no-such-model", [{"role": "user", "content": "hi"}], stream)
    assert info.value.status_code == 404
    assert "no-such-model" in str(info.value)
    assert fresh.requests() == []


@pytest.mark.parametrize("route", ROUTES)
def test_bad_key_is_an_authentication_error(gw, fresh, route):
    args = dict(route_args(gw, route, "demo"), api_key="sk-wrong")
    with pytest.raises(litellm.AuthenticationError) as info:
        litellm.completion(
            **args, messages=[{"role": "user", "content": "hi"}], max_tokens=50, timeout=TIMEOUT, num_retries=0
        )
    assert info.value.status_code == 401
