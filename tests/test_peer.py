"""The fake OpenAI peer itself, checked with the official SDK and the spec.

If the peer drifts from the real protocol, the gateway tests that use it
prove nothing; these tests keep it honest. They need no gateway binary.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from schema import assert_valid
from support import PEER_KEYS, PEER_PREFIX, collect_sdk_stream, make_client, stream_raw, words

TOOLS = [
    {"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {}}}},
    {"type": "function", "function": {"name": "fetch", "parameters": {"type": "object", "properties": {}}}},
]


@pytest.fixture
def sdk(clean_peer):
    return make_client(clean_peer.url + "/v1", api_key=PEER_KEYS[0])


@pytest.fixture
def raw(clean_peer):
    with httpx.Client(
        base_url=clean_peer.url, headers={"Authorization": f"Bearer {PEER_KEYS[1]}"}, timeout=20, trust_env=False
    ) as c:
        yield c


def msg(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_text_non_stream_and_stream(sdk, raw):
    r = sdk.chat.completions.create(model="gpt-4o-mini", messages=msg("hello  there"))
    assert r.choices[0].message.content == PEER_PREFIX + "hello  there"
    assert r.usage.completion_tokens == len(words(PEER_PREFIX + "hello  there"))
    body = {"model": "gpt-4o-mini", "messages": msg("hello  there")}
    b = raw.post("/v1/chat/completions", json=body).json()
    assert_valid("CreateChatCompletionResponse", b)

    s = collect_sdk_stream(
        sdk.chat.completions.create(
            model="gpt-4o-mini", messages=msg("hello  there"), stream=True, stream_options={"include_usage": True}
        )
    )
    assert s["text"] == PEER_PREFIX + "hello  there"
    assert s["text_parts"] == words(s["text"])
    assert s["roles"] == ["assistant"] and s["finish"] == ["stop"]
    assert len(s["usage_chunks"]) == 1 and s["chunks"][-1].choices == []
    res = stream_raw(raw, "/v1/chat/completions", dict(body, stream=True, stream_options={"include_usage": True}))
    assert res.done and res.lines[-2:] == ["data: [DONE]", ""]
    for c in res.chunks():
        assert_valid("CreateChatCompletionStreamResponse", c)
    assert len({(c["id"], c["created"], c["model"]) for c in res.chunks()}) == 1


def test_max_tokens(sdk):
    r = sdk.chat.completions.create(model="gpt-4o-mini", messages=msg("a b c d"), max_tokens=2)
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].message.content == "peer reply "
    s = collect_sdk_stream(
        sdk.chat.completions.create(model="gpt-4o-mini", messages=msg("a b c d"), max_completion_tokens=3, stream=True)
    )
    assert s["finish"] == ["length"] and s["text"] == "peer reply to: "


def test_tools_and_tool_results(sdk, raw):
    text = "call a tool in parallel"
    r = sdk.chat.completions.create(model="gpt-4o-mini", messages=msg(text), tools=TOOLS)
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls"
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("call_peer_0", "search", {"q": text}),
        ("call_peer_1", "fetch", {"q": text}),
    ]
    s = collect_sdk_stream(sdk.chat.completions.create(model="gpt-4o-mini", messages=msg(text), tools=TOOLS, stream=True))
    assert s["finish"] == ["tool_calls"]
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for c in s["calls"]] == [
        ("call_peer_0", "search", {"q": text}),
        ("call_peer_1", "fetch", {"q": text}),
    ]
    assert all(n >= 3 for n in s["arg_fragments"].values()), s["arg_fragments"]
    res = stream_raw(raw, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": msg(text), "tools": TOOLS, "stream": True})
    for c in res.chunks():
        assert_valid("CreateChatCompletionStreamResponse", c)

    follow = msg(text) + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
                for c in calls
            ],
        },
        {"role": "tool", "tool_call_id": "call_peer_0", "content": "r0"},
        {"role": "tool", "tool_call_id": "call_peer_1", "content": [{"type": "text", "text": "r1"}]},
    ]
    r2 = sdk.chat.completions.create(model="gpt-4o-mini", messages=follow, tools=TOOLS)
    assert r2.choices[0].message.content == "peer saw tool result: r1"
    # Like the real API: a tool message needs a matching earlier tool call.
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(
            model="gpt-4o-mini", messages=msg("x") + [{"role": "tool", "tool_call_id": "nope", "content": "r"}]
        )


def test_auth_models_and_errors(clean_peer, sdk):
    with pytest.raises(openai.AuthenticationError) as e:
        make_client(clean_peer.url + "/v1", api_key="sk-wrong").chat.completions.create(
            model="gpt-4o-mini", messages=msg("x")
        )
    assert e.value.code == "invalid_api_key"
    with httpx.Client(base_url=clean_peer.url, trust_env=False) as c:
        r = c.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": msg("x")})
        assert r.status_code == 401
        assert_valid("ErrorResponse", r.json())
    models = sdk.models.list()
    assert_valid("ListModelsResponse", models.model_dump())
    assert "gpt-4o-mini" in [m.id for m in models]
    with pytest.raises(openai.NotFoundError) as e:
        sdk.chat.completions.create(model="no-such-model", messages=msg("x"))
    assert e.value.code == "model_not_found"
    # Every chat request is logged with the key it used, even refused ones.
    assert [q["key"] for q in clean_peer.requests()] == ["sk-wrong", None, PEER_KEYS[0]]


@pytest.mark.parametrize(
    "mode, status, code",
    [("429", 429, "rate_limit_exceeded"), ("500", 500, None), ("400", 400, "bad_peer_request")],
)
def test_error_faults(clean_peer, raw, mode, status, code):
    clean_peer.fault(mode, count=1, key=PEER_KEYS[1], retry_after=3)
    r = raw.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": msg("x")})
    assert r.status_code == status
    assert_valid("ErrorResponse", r.json())
    assert r.json()["error"]["code"] == code
    if mode == "429":
        assert r.headers["retry-after"] == "3"
    assert raw.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": msg("x")}).status_code == 200


def test_fault_restricted_to_key(clean_peer, sdk, raw):
    clean_peer.fault("500", count=1, key=PEER_KEYS[1])
    assert sdk.chat.completions.create(model="gpt-4o-mini", messages=msg("x")).choices[0].message.content
    assert raw.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": msg("x")}).status_code == 500
    assert [q["fault"] for q in clean_peer.requests()] == [None, "500"]


def test_drop_and_quirky_and_no_usage(clean_peer, raw):
    body = {"model": "gpt-4o-mini", "messages": msg("one two three four"), "stream": True}
    clean_peer.fault("drop", count=1)
    res = stream_raw(raw, "/v1/chat/completions", body)
    assert res.transport_error and not res.done
    assert len(res.chunks()) == 3 and all(ch["finish_reason"] is None for c in res.chunks() for ch in c["choices"])

    clean_peer.fault("quirky", count=1)
    res = stream_raw(raw, "/v1/chat/completions", dict(body, stream_options={"include_usage": True}))
    assert res.done
    assert any(line.startswith(":") for line in res.lines)
    assert any(line.startswith("event:") for line in res.lines)
    assert any(line.startswith("data:{") for line in res.lines)
    text = "".join(ch["delta"].get("content") or "" for c in res.chunks() for ch in c["choices"])
    assert text == PEER_PREFIX + "one two three four"
    with httpx.Client(base_url=clean_peer.url, headers=raw.headers, trust_env=False) as c:
        clean_peer.fault("quirky", count=1)
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            assert b"\r\n" in r.read()

    clean_peer.fault("no_usage", count=2)
    res = stream_raw(raw, "/v1/chat/completions", dict(body, stream_options={"include_usage": True}))
    assert res.done and not any(c.get("usage") for c in res.chunks())
    r = raw.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": msg("x")})
    assert "usage" not in r.json()
    assert [q["outcome"] for q in clean_peer.requests()] == ["dropped", "completed", "completed", "completed", "status 200"]


def test_hang(clean_peer, raw):
    clean_peer.fault("hang", count=1, seconds=2)
    with pytest.raises(httpx.ReadTimeout):
        raw.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": msg("x")}, timeout=0.5)
    r = raw.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": msg("x")})
    assert r.status_code == 200
