"""The gateway's HTTP surface with raw httpx, validated against OpenAI's spec."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from schema import assert_valid
from support import DEMO_PREFIX, GATEWAY_KEY, PEER_PREFIX, stream_raw

CHAT = "/v1/chat/completions"
MODELS = ["demo", "gpt-4o-mini"]
TOOLS = [
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


def chat_body(model: str, text: str = "hello there", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def expect_error(resp: httpx.Response, status: int) -> dict:
    """Assert an OpenAI error envelope with ``status``; return the error object."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text[:500]}"
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers.get("content-type")
    body = resp.json()
    assert_valid("ErrorResponse", body)
    err = body["error"]
    assert err["message"], "empty error message"
    return err


def names(err: dict, field: str) -> bool:
    return field in (err.get("param") or "") or field in err["message"]


# --------------------------------------------------------------------------
# schema validation of successful answers


@pytest.mark.parametrize("model", MODELS)
def test_non_stream_body_matches_spec(http, model):
    r = http.post(CHAT, json=chat_body(model))
    assert r.status_code == 200, r.text
    assert r.headers.get("content-type", "").startswith("application/json")
    body = r.json()
    assert_valid("CreateChatCompletionResponse", body)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == (DEMO_PREFIX if model == "demo" else PEER_PREFIX) + "hello there"
    assert "usage" in body and body["usage"]["total_tokens"] > 0


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_chunks_match_spec(http, model, include_usage):
    extra = {"stream": True}
    if include_usage:
        extra["stream_options"] = {"include_usage": True}
    res = stream_raw(http, CHAT, chat_body(model, **extra))
    assert res.status == 200, res.body[:500]
    assert res.transport_error is None, res.transport_error
    assert res.headers.get("content-type", "").startswith("text/event-stream")
    assert res.done, "stream did not end with data: [DONE]"
    assert res.data[-1] == "[DONE]"
    assert res.after_done == []
    chunks = res.chunks()
    assert chunks
    for c in chunks:
        assert_valid("CreateChatCompletionStreamResponse", c)
        assert c["object"] == "chat.completion.chunk"
        assert "error" not in c
    assert len({(c["id"], c["created"], c["model"]) for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch.get("finish_reason")]
    assert finishes == ["stop"]
    text = "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])
    assert text == (DEMO_PREFIX if model == "demo" else PEER_PREFIX) + "hello there"
    usage_chunks = [c for c in chunks if c.get("usage")]
    if include_usage:
        assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1]
        assert chunks[-1]["choices"] == []
        u = chunks[-1]["usage"]
        assert u["prompt_tokens"] > 0 and u["completion_tokens"] > 0
        assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    else:
        assert usage_chunks == []


def test_stream_framing_is_plain_data_lines(http):
    """Every line is `data: ...`, a blank separator, or an SSE comment."""
    res = stream_raw(http, CHAT, chat_body("demo", stream=True))
    assert res.status == 200
    for line in res.lines:
        assert line == "" or line.startswith("data: ") or line.startswith(":"), repr(line)


@pytest.mark.parametrize("model", MODELS)
def test_tool_call_bodies_match_spec(http, clean_peer, model):
    text = "use a tool: search" if model == "demo" else "use a tool please"
    r = http.post(CHAT, json=chat_body(model, text, tools=TOOLS))
    assert r.status_code == 200, r.text
    body = r.json()
    assert_valid("CreateChatCompletionResponse", body)
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    calls = body["choices"][0]["message"]["tool_calls"]
    assert calls[0]["function"]["name"] == "search"
    json.loads(calls[0]["function"]["arguments"])

    res = stream_raw(http, CHAT, chat_body(model, text, tools=TOOLS, stream=True))
    assert res.status == 200 and res.done
    chunks = res.chunks()
    for c in chunks:
        assert_valid("CreateChatCompletionStreamResponse", c)
    deltas = [tc for c in chunks for ch in c["choices"] for tc in ch["delta"].get("tool_calls") or []]
    assert deltas and all("index" in d for d in deltas)
    first = deltas[0]
    assert first.get("id") and first.get("type") == "function" and first["function"].get("name") == "search"
    args = "".join(d.get("function", {}).get("arguments") or "" for d in deltas if d["index"] == 0)
    assert json.loads(args) == json.loads(calls[0]["function"]["arguments"])


# --------------------------------------------------------------------------
# headers, CORS, prefixes, health


def test_sse_headers(http):
    with http.stream("POST", CHAT, json=chat_body("demo", stream=True)) as r:
        assert r.status_code == 200
        assert r.headers.get("content-type", "").startswith("text/event-stream")
        assert "no-cache" in r.headers.get("cache-control", "").lower()
        assert r.headers.get("x-accel-buffering", "").lower() == "no"
        r.read()


def test_cors_preflight(gateway):
    origin = "http://localhost:3000"
    with gateway.http(auth=False) as c:
        r = c.request(
            "OPTIONS",
            CHAT,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
    assert 200 <= r.status_code < 300, f"preflight got {r.status_code}: {r.text[:300]}"
    assert r.headers.get("access-control-allow-origin") in (origin, "*"), dict(r.headers)
    allowed_methods = r.headers.get("access-control-allow-methods", "").upper()
    assert "POST" in allowed_methods or allowed_methods == "*", dict(r.headers)
    allowed_headers = r.headers.get("access-control-allow-headers", "").lower()
    assert "authorization" in allowed_headers or allowed_headers == "*", dict(r.headers)


def test_cors_on_actual_request(http):
    origin = "http://localhost:3000"
    r = http.post(CHAT, json=chat_body("demo"), headers={"Origin": origin})
    assert r.status_code == 200
    assert r.headers.get("access-control-allow-origin") in (origin, "*"), dict(r.headers)
    # A browser frontend may read the request id, the gateway's overhead and
    # the fields an upstream could not take.
    exposed = {h.strip() for h in r.headers.get("access-control-expose-headers", "").lower().split(",")}
    assert {"x-request-id", "x-troupe-overhead-ms", "x-troupe-dropped", "retry-after"} <= exposed, dict(r.headers)


def test_openai_prefix(http):
    r = http.post("/openai/v1/chat/completions", json=chat_body("demo", "prefixed"))
    assert r.status_code == 200, r.text
    assert_valid("CreateChatCompletionResponse", r.json())
    assert r.json()["choices"][0]["message"]["content"] == DEMO_PREFIX + "prefixed"
    r = http.get("/openai/v1/models")
    assert r.status_code == 200
    assert_valid("ListModelsResponse", r.json())
    r = http.get("/openai/v1/models/demo")
    assert r.status_code == 200
    assert_valid("Model", r.json())
    res = stream_raw(http, "/openai/v1/chat/completions", chat_body("demo", "prefixed", stream=True))
    assert res.status == 200 and res.done


def test_models_match_spec(http):
    r = http.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert_valid("ListModelsResponse", body)
    ids = [m["id"] for m in body["data"]]
    assert {"demo", "demo-alias", "gpt-4o-mini", "peer-alias"} <= set(ids), ids
    assert len(ids) == len(set(ids)), f"duplicate model ids: {ids}"
    for mid in ("demo", "peer-alias"):
        r = http.get(f"/v1/models/{mid}")
        assert r.status_code == 200, r.text
        assert_valid("Model", r.json())
        assert r.json()["id"] == mid
    err = expect_error(http.get("/v1/models/no-such-model"), 404)
    assert err["code"] == "model_not_found"


def test_healthz_and_readyz(gateway):
    with gateway.http(auth=False) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 200, f"/readyz {r.status_code}: {r.text[:300]}"


# --------------------------------------------------------------------------
# auth


def test_auth_missing_and_wrong(gateway):
    with gateway.http(auth=False) as c:
        err = expect_error(c.post(CHAT, json=chat_body("demo")), 401)
        assert err["type"]
        expect_error(c.post(CHAT, json=chat_body("demo"), headers={"Authorization": "Bearer sk-nope"}), 401)
        expect_error(c.post(CHAT, json=chat_body("demo"), headers={"x-api-key": "sk-nope"}), 401)
        expect_error(c.post(CHAT, json=chat_body("demo"), headers={"Authorization": GATEWAY_KEY}), 401)
        # A stream request is refused the same way, before any SSE.
        expect_error(c.post(CHAT, json=chat_body("demo", stream=True)), 401)


def test_auth_x_api_key(gateway):
    with gateway.http(auth=False) as c:
        r = c.post(CHAT, json=chat_body("demo"), headers={"x-api-key": GATEWAY_KEY})
        assert r.status_code == 200, r.text


def test_no_auth_gateway(gateway_factory):
    gw = gateway_factory(api_keys=[])
    with gw.http(auth=False) as c:
        r = c.post(CHAT, json=chat_body("demo", "open door"))
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == DEMO_PREFIX + "open door"


# --------------------------------------------------------------------------
# bad input → 4xx naming the field


def test_unknown_model_404(http):
    err = expect_error(http.post(CHAT, json=chat_body("no-such-model")), 404)
    assert err["code"] == "model_not_found"
    err = expect_error(http.post(CHAT, json=chat_body("no-such-model", stream=True)), 404)
    assert err["code"] == "model_not_found"


def test_malformed_json(http):
    r = http.post(CHAT, content=b'{"model": "demo", "messages": [', headers={"content-type": "application/json"})
    err = expect_error(r, 400)
    assert err["type"] == "invalid_request_error"


def test_temperature_wrong_type(http):
    err = expect_error(http.post(CHAT, json=chat_body("demo", temperature="hot")), 400)
    assert "temperature" in (err["param"] or ""), err


def test_content_wrong_type(http):
    body = {"model": "demo", "messages": [{"role": "user", "content": 42}]}
    err = expect_error(http.post(CHAT, json=body), 400)
    assert names(err, "messages[0].content"), err


def test_n_greater_than_one(http):
    err = expect_error(http.post(CHAT, json=chat_body("demo", n=2)), 400)
    assert err["param"] == "n" or re.search(r"\bn\b", err["message"]), err


@pytest.mark.parametrize(
    "body, field",
    [
        ({"model": "demo"}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "demo", "messages": "hi"}, "messages"),
        ({"model": "demo", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
        ({"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}, "max_tokens"),
        ({"model": "demo", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0]"),
        ({"model": "demo", "messages": [{"role": "user", "content": "hi"}], "temperature": 5}, "temperature"),
        ({"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
        (
            {
                "model": "demo",
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
            "tool_choice",
        ),
    ],
    ids=[
        "no-messages",
        "no-model",
        "messages-string",
        "stream-string",
        "max_tokens-string",
        "bad-role",
        "temperature-range",
        "max_tokens-zero",
        "tool_choice-unknown",
    ],
)
def test_bad_fields_named(http, body, field):
    err = expect_error(http.post(CHAT, json=body), 400)
    assert names(err, field), f"error does not name {field!r}: {err}"


def test_non_object_body(http):
    r = http.post(CHAT, content=b"[1, 2]", headers={"content-type": "application/json"})
    err = expect_error(r, 400)
    assert "JSON object" in err["message"], err


def test_stop_sequence_honoured(http):
    body = chat_body("demo", "alpha beta gamma", stop=["gamma"])
    r = http.post(CHAT, json=body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == DEMO_PREFIX + "alpha beta "
    assert choice["finish_reason"] == "stop"


def test_unknown_fields_are_accepted(http):
    body = chat_body("demo", "extra fields", some_future_field={"x": 1}, metadata={"k": "v"}, user="u-1")
    r = http.post(CHAT, json=body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == DEMO_PREFIX + "extra fields"


def test_body_limit_413(gateway_factory):
    gw = gateway_factory(server_extra='body_limit = "1KiB"')
    with gw.http() as c:
        small = c.post(CHAT, json=chat_body("demo", "small"))
        assert small.status_code == 200, small.text
        big = c.post(CHAT, json=chat_body("demo", "x" * 4096))
        expect_error(big, 413)


def test_base_url_answers_get_and_head(gateway):
    with gateway.http(auth=False) as c:
        r = c.get("/")
        assert r.status_code == 200 and r.json()["name"] == "troupe", r.text
        assert c.head("/").status_code == 200
