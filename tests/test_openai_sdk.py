"""The gateway through the official ``openai`` Python SDK."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

import support
from support import DEMO_PREFIX, PEER_PREFIX, collect_sdk_stream, words

MODELS = ["demo", "gpt-4o-mini"]


def expected_text(model: str, user_text: str) -> str:
    return (DEMO_PREFIX if model.startswith("demo") else PEER_PREFIX) + user_text


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def assert_same_identity(chunks) -> None:
    ids = {c.id for c in chunks}
    created = {c.created for c in chunks}
    models = {c.model for c in chunks}
    assert len(ids) == 1, f"chunks carry different ids: {ids}"
    assert len(created) == 1, f"chunks carry different created: {created}"
    assert len(models) == 1, f"chunks carry different models: {models}"
    assert all(c.object == "chat.completion.chunk" for c in chunks)


# --------------------------------------------------------------------------
# text


@pytest.mark.parametrize("model", MODELS)
def test_non_stream_text(client, clean_peer, model):
    r = client.chat.completions.create(model=model, messages=user("hello brave new world"))
    assert r.object == "chat.completion"
    assert r.model == model
    assert len(r.choices) == 1
    choice = r.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == expected_text(model, "hello brave new world")
    assert choice.finish_reason == "stop"
    assert r.usage is not None, "non-stream body has no usage"
    assert r.usage.prompt_tokens > 0
    assert r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


@pytest.mark.parametrize("model", MODELS)
def test_stream_text_matches_non_stream(client, clean_peer, model):
    msgs = user("stream me a reply please")
    whole = client.chat.completions.create(model=model, messages=msgs)
    s = collect_sdk_stream(client.chat.completions.create(model=model, messages=msgs, stream=True))
    chunks = s["chunks"]
    assert chunks, "empty stream"
    assert_same_identity(chunks)
    assert chunks[0].choices and chunks[0].choices[0].delta.role == "assistant", "first chunk has no delta.role"
    assert s["roles"] == ["assistant"], f"role sent {len(s['roles'])} times"
    assert s["text"] == whole.choices[0].message.content == expected_text(model, "stream me a reply please")
    assert s["finish"] == ["stop"]
    # finish_reason is on the last chunk that has choices.
    last_with_choices = [c for c in chunks if c.choices][-1]
    assert last_with_choices.choices[0].finish_reason == "stop"
    # No usage unless asked for.
    assert s["usage_chunks"] == [], "usage sent without stream_options.include_usage"
    # Really streamed: the text came in several pieces.
    assert len(s["text_parts"]) > 1, "whole answer arrived in one chunk"
    if model == "demo":
        assert s["text_parts"] == words(s["text"]), "demo streams one word (plus its space) per chunk"


@pytest.mark.parametrize("model", MODELS)
def test_stream_include_usage(client, clean_peer, model):
    msgs = user("count my tokens")
    s = collect_sdk_stream(
        client.chat.completions.create(
            model=model, messages=msgs, stream=True, stream_options={"include_usage": True}
        )
    )
    chunks = s["chunks"]
    assert_same_identity(chunks)
    assert len(s["usage_chunks"]) == 1, f"expected exactly one usage chunk, got {len(s['usage_chunks'])}"
    final = chunks[-1]
    assert final.usage is not None, "usage chunk is not the last chunk"
    assert final.choices == [], "usage chunk must have empty choices"
    u = final.usage
    assert u.prompt_tokens > 0 and u.completion_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert s["text"] == expected_text(model, "count my tokens")
    # Same request without streaming reports the same usage.
    whole = client.chat.completions.create(model=model, messages=msgs)
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (u.prompt_tokens, u.completion_tokens)


def test_peer_usage_passed_through(client, clean_peer):
    """Usage reported by an OpenAI upstream reaches the client unchanged."""
    from peers import openai_peer

    r = client.chat.completions.create(model="gpt-4o-mini", messages=user("one two three"))
    sent = clean_peer.requests()
    assert len(sent) == 1
    body = sent[0]["body"]
    want_prompt = openai_peer.prompt_tokens(body["messages"], body.get("tools"))
    want_completion = len(words(r.choices[0].message.content))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (want_prompt, want_completion)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_gives_length(client, clean_peer, model, param):
    text = "please answer with many words here"
    full = words(expected_text(model, text))
    n = 3
    assert n < len(full)
    r = client.chat.completions.create(model=model, messages=user(text), **{param: n})
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].message.content.split() == [w.strip() for w in full[:n]]
    s = collect_sdk_stream(client.chat.completions.create(model=model, messages=user(text), stream=True, **{param: n}))
    assert s["finish"] == ["length"]
    assert s["text"].split() == [w.strip() for w in full[:n]]


def test_max_tokens_larger_than_answer_is_stop(client):
    r = client.chat.completions.create(model="demo", messages=user("hi"), max_tokens=500)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == DEMO_PREFIX + "hi"


def test_concurrent_streams_do_not_mix(client):
    texts = [f"request number {i} says {'x' * (i + 1)}" for i in range(8)]

    def run(t: str) -> str:
        return collect_sdk_stream(client.chat.completions.create(model="demo", messages=user(t), stream=True))["text"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(run, texts, timeout=60))
    assert got == [DEMO_PREFIX + t for t in texts]


# --------------------------------------------------------------------------
# models and aliases


def test_models_list_and_retrieve(client):
    ids = {m.id for m in client.models.list()}
    assert {"demo", "demo-alias", "gpt-4o-mini", "peer-alias"} <= ids, ids
    m = client.models.retrieve("gpt-4o-mini")
    assert m.id == "gpt-4o-mini"
    assert m.object == "model"
    assert client.models.retrieve("demo").id == "demo"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_peer_alias_reaches_upstream_name(client, clean_peer):
    r = client.chat.completions.create(model="peer-alias", messages=user("via alias"))
    assert r.choices[0].message.content == PEER_PREFIX + "via alias"
    sent = clean_peer.requests()
    assert len(sent) == 1, sent
    assert sent[0]["body"]["model"] == "gpt-4o-mini"
    assert sent[0]["key"] in support.PEER_KEYS


def test_demo_alias(client):
    r = client.chat.completions.create(model="demo-alias", messages=user("aliased"))
    assert r.choices[0].message.content == DEMO_PREFIX + "aliased"


def test_unknown_model(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=user("hi"))
    assert e.value.code == "model_not_found"


def test_wrong_api_key(gateway):
    bad = support.make_client(gateway.v1, api_key="sk-wrong")
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="demo", messages=user("hi"))


# --------------------------------------------------------------------------
# roles and content parts

IMAGE_URL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def conversation_with_all_roles() -> list[dict]:
    return [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
        {"role": "user", "content": "first question"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_abc", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": "lookup result"},
        {"role": "assistant", "content": "an earlier answer"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "describe this picture"},
                {"type": "image_url", "image_url": {"url": IMAGE_URL, "detail": "low"}},
            ],
        },
    ]


TOOLS_LOOKUP = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look something up",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        },
    }
]


@pytest.mark.parametrize("model", MODELS)
def test_all_roles_and_content_parts(client, clean_peer, model):
    r = client.chat.completions.create(model=model, messages=conversation_with_all_roles(), tools=TOOLS_LOOKUP)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == expected_text(model, "describe this picture")
    if model == "gpt-4o-mini":
        sent = clean_peer.requests()
        assert len(sent) == 1
        forwarded = sent[0]["body"]["messages"]
        roles = [m["role"] for m in forwarded]
        # system/developer may be merged or mapped, but the turns survive.
        assert roles[-5:] == ["user", "assistant", "tool", "assistant", "user"], roles
        last = forwarded[-1]
        parts = last["content"] if isinstance(last["content"], list) else []
        images = [p for p in parts if isinstance(p, dict) and p.get("type") == "image_url"]
        assert images and images[0]["image_url"]["url"] == IMAGE_URL, f"image part not forwarded: {last}"
        tool_msg = forwarded[-3]
        assert tool_msg["tool_call_id"] == "call_abc"
        assert forwarded[-4]["tool_calls"][0]["id"] == "call_abc"


def test_all_roles_stream(client):
    s = collect_sdk_stream(
        client.chat.completions.create(model="demo", messages=conversation_with_all_roles(), stream=True)
    )
    assert s["text"] == DEMO_PREFIX + "describe this picture"


# --------------------------------------------------------------------------
# tools: demo

WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "metric": {"type": "boolean"},
                },
                "required": ["city", "days", "metric"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "lookup_stock",
            "description": "Stock price",
            "parameters": {
                "type": "object",
                "properties": {"symbol": {"type": "string"}, "price": {"type": "number"}},
                "required": ["symbol", "price"],
            },
        },
    },
]
WEATHER_ARGS = {"city": "demo", "days": 1, "metric": True}
STOCK_ARGS = {"symbol": "demo", "price": 1}


def assistant_turn(message) -> dict:
    """The assistant message as a client would send it back."""
    out = {"role": "assistant", "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": tc.id, "type": "function", "function": {"name": tc.function.name, "arguments": tc.function.arguments}}
            for tc in message.tool_calls
        ]
    return out


def test_demo_tool_call_non_stream_round_trip(client):
    msgs = user("what is the weather? use get_weather")
    r = client.chat.completions.create(model="demo", messages=msgs, tools=WEATHER_TOOLS)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls and len(calls) == 1
    assert calls[0].type == "function"
    assert calls[0].id
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == WEATHER_ARGS
    assert not choice.message.content

    msgs2 = msgs + [assistant_turn(choice.message), {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny"}]
    r2 = client.chat.completions.create(model="demo", messages=msgs2, tools=WEATHER_TOOLS)
    assert r2.choices[0].finish_reason == "stop"
    assert r2.choices[0].message.content == "The tool returned: sunny"


def test_demo_tool_call_picks_mentioned_tool(client):
    r = client.chat.completions.create(
        model="demo", messages=user("price please, call lookup_stock"), tools=WEATHER_TOOLS
    )
    calls = r.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "lookup_stock"
    assert json.loads(calls[0].function.arguments) == STOCK_ARGS


def test_demo_tool_choice_required_and_named(client):
    r = client.chat.completions.create(
        model="demo", messages=user("no names mentioned"), tools=WEATHER_TOOLS, tool_choice="required"
    )
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls"
    assert calls and calls[0].function.name == "get_weather"
    r = client.chat.completions.create(
        model="demo",
        messages=user("no names mentioned"),
        tools=WEATHER_TOOLS,
        tool_choice={"type": "function", "function": {"name": "lookup_stock"}},
    )
    calls = r.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "lookup_stock"
    # Tools offered but none mentioned and no tool_choice: plain text.
    r = client.chat.completions.create(model="demo", messages=user("no names mentioned"), tools=WEATHER_TOOLS)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == DEMO_PREFIX + "no names mentioned"


def test_demo_tool_call_stream_round_trip(client):
    msgs = user("use get_weather now")
    s = collect_sdk_stream(client.chat.completions.create(model="demo", messages=msgs, tools=WEATHER_TOOLS, stream=True))
    assert_same_identity(s["chunks"])
    assert s["finish"] == ["tool_calls"]
    assert len(s["calls"]) == 1
    call = s["calls"][0]
    assert call["id"] and call["type"] == "function" and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == WEATHER_ARGS
    msgs2 = msgs + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}
            ],
        },
        {"role": "tool", "tool_call_id": call["id"], "content": [{"type": "text", "text": "rainy"}]},
    ]
    s2 = collect_sdk_stream(client.chat.completions.create(model="demo", messages=msgs2, tools=WEATHER_TOOLS, stream=True))
    assert s2["text"] == "The tool returned: rainy"
    assert s2["finish"] == ["stop"]


# --------------------------------------------------------------------------
# tools: peer (OpenAI upstream)

PEER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "fetch",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        },
    },
]


def test_peer_tool_call_non_stream_round_trip(client, clean_peer):
    text = "please use a tool for this"
    msgs = user(text)
    r = client.chat.completions.create(model="gpt-4o-mini", messages=msgs, tools=PEER_TOOLS)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert [(c.id, c.function.name) for c in calls] == [("call_peer_0", "search")]
    assert json.loads(calls[0].function.arguments) == {"q": text}
    forwarded = clean_peer.requests()[-1]["body"]
    assert [t["function"]["name"] for t in forwarded.get("tools", [])] == ["search", "fetch"]

    msgs2 = msgs + [assistant_turn(choice.message), {"role": "tool", "tool_call_id": "call_peer_0", "content": "found it"}]
    r2 = client.chat.completions.create(model="gpt-4o-mini", messages=msgs2, tools=PEER_TOOLS)
    assert r2.choices[0].finish_reason == "stop"
    assert r2.choices[0].message.content == "peer saw tool result: found it"


def test_peer_parallel_tool_calls_non_stream(client, clean_peer):
    text = "use tools in parallel"
    r = client.chat.completions.create(model="gpt-4o-mini", messages=user(text), tools=PEER_TOOLS)
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls"
    assert [(c.id, c.function.name) for c in calls] == [("call_peer_0", "search"), ("call_peer_1", "fetch")]
    assert [json.loads(c.function.arguments) for c in calls] == [{"q": text}, {"q": text}]


def test_peer_parallel_tool_calls_stream_round_trip(client, clean_peer):
    text = "use tools in parallel please"
    msgs = user(text)
    s = collect_sdk_stream(
        client.chat.completions.create(model="gpt-4o-mini", messages=msgs, tools=PEER_TOOLS, stream=True)
    )
    assert_same_identity(s["chunks"])
    assert s["finish"] == ["tool_calls"]
    assert [(c["id"], c["type"], c["name"]) for c in s["calls"]] == [
        ("call_peer_0", "function", "search"),
        ("call_peer_1", "function", "fetch"),
    ]
    for c in s["calls"]:
        assert json.loads(c["arguments"]) == {"q": text}, c["arguments"]
    # The arguments really streamed as fragments, not one blob.
    assert s["arg_fragments"].get(0, 0) >= 2, f"argument fragments per call: {s['arg_fragments']}"

    msgs2 = msgs + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in s["calls"]
            ],
        },
        {"role": "tool", "tool_call_id": "call_peer_0", "content": "first result"},
        {"role": "tool", "tool_call_id": "call_peer_1", "content": "second result"},
    ]
    s2 = collect_sdk_stream(
        client.chat.completions.create(model="gpt-4o-mini", messages=msgs2, tools=PEER_TOOLS, stream=True)
    )
    assert s2["text"] == "peer saw tool result: second result"
    assert s2["finish"] == ["stop"]
    forwarded = clean_peer.requests()[-1]["body"]["messages"]
    assert [m["role"] for m in forwarded] == ["user", "assistant", "tool", "tool"]
    assert [tc["id"] for tc in forwarded[1]["tool_calls"]] == ["call_peer_0", "call_peer_1"]
    assert [json.loads(tc["function"]["arguments"]) for tc in forwarded[1]["tool_calls"]] == [{"q": text}] * 2


def test_peer_single_tool_call_stream(client, clean_peer):
    text = "one tool only"
    s = collect_sdk_stream(
        client.chat.completions.create(model="gpt-4o-mini", messages=user(text), tools=PEER_TOOLS, stream=True)
    )
    assert s["finish"] == ["tool_calls"]
    assert [(c["id"], c["name"]) for c in s["calls"]] == [("call_peer_0", "search")]
    assert json.loads(s["calls"][0]["arguments"]) == {"q": text}
    assert s["text"] == ""
