"""Same protocol in and out is lossless; across protocols, what is lost is named.

* An OpenAI client on an ``openai`` pool, and an Anthropic client on an
  ``anthropic`` pool, get their own request body to the upstream as they
  wrote it: only ``model`` (the pool's upstream name), ``stream`` (always
  true), OpenAI's ``stream_options.include_usage`` (true, other options
  kept) and ``thread_id`` (removed), top-level ``null`` members (removed)
  and Anthropic's ``max_tokens`` (4096 when missing) change.
* Across protocols (and to the text-only demo), the response head carries
  ``x-troupe-dropped: a,b,c`` naming the client's top-level fields the
  upstream could not take (plus ``cache_control`` for an Anthropic client
  whose marks could not travel); no header when nothing was dropped.

The gateways and peers are the ones the other suites use: the session
gateway of ``conftest.py`` (OpenAI peer, models ``gpt-4o-mini`` and
``peer-alias=gpt-4o-mini``) and the module gateway of
``test_anthropic_sdk.py`` (pools ``demo``, ``gpt-4o-mini`` on the OpenAI
peer and ``claude-peer`` / ``claude-alias=claude-peer`` on the Anthropic
peer). Every comparison is on parsed JSON values of what the peer received.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import anthropic
import httpx
import pytest

import support
from support import GATEWAY_KEY, PEER_PREFIX, collect_sdk_stream

# The module-scoped gateway with both peers, reused as it is.
from test_anthropic_sdk import (  # noqa: F401  (fixtures are used by name)
    A_PREFIX,
    VERSION,
    a_peer,
    ac,
    gw,
    last_body,
    o_peer,
    oc,
    peers,
    raw,
    raw_stream,
    text_of,
    user,
)

DROPPED = "x-troupe-dropped"
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="

# What each route is known to carry across (the client's own names).
OPENAI_TO_ANTHROPIC_KEPT = {
    "model", "messages", "stream", "stream_options", "n", "tools", "tool_choice", "user", "thread_id",
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "parallel_tool_calls", "reasoning_effort",
}
ANTHROPIC_TO_OPENAI_KEPT = {
    "model", "messages", "system", "stream", "tools", "tool_choice", "metadata", "max_tokens", "temperature",
    "top_p", "stop_sequences", "thinking",
}
DEMO_KEPT = {
    "model", "messages", "system", "stream", "tools", "tool_choice", "user", "metadata", "thread_id", "n",
    "stream_options", "max_tokens", "max_completion_tokens", "stop", "stop_sequences",
}

# OpenAI fields an Anthropic pool cannot take, with values the real API accepts.
OPENAI_ONLY_FIELDS: dict[str, Any] = {
    "logprobs": True,
    "top_logprobs": 2,
    "logit_bias": {"50256": -100, "1734": 5},
    "prompt_cache_key": "faithful-cache-key-1",
    "service_tier": "priority",
    "prediction": {"type": "content", "content": "peer reply to: predicted"},
    "verbosity": "low",
    "store": True,
    "metadata": {"purpose": "faithful-test", "run": "1"},
    "modalities": ["text"],
    "web_search_options": {"search_context_size": "low", "user_location": {"type": "approximate", "approximate": {"country": "GB", "city": "London"}}},
    "safety_identifier": "hashed-user-7f3a",
}

OPENAI_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        "strict": False,
    },
}
ANTHROPIC_TOOLS = [
    {
        "name": "search",
        "description": "Search the web",
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    },
    {
        "name": "fetch",
        "description": "Fetch a page",
        "input_schema": {"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]},
        "cache_control": {"type": "ephemeral"},
    },
]
SYSTEM_BLOCKS = [
    {"type": "text", "text": "You are a careful assistant."},
    {"type": "text", "text": "Here is a long, cacheable preamble.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
    {"type": "text", "text": "Answer briefly."},
]


# --------------------------------------------------------------------------
# helpers


def dropped_of(headers: httpx.Headers | Any) -> set[str] | None:
    """The names in ``x-troupe-dropped``, or None when the header is absent."""
    value = headers.get(DROPPED)
    if value is None:
        return None
    names = [part.strip() for part in value.split(",") if part.strip()]
    assert len(names) == len(set(names)), f"{DROPPED} names a field more than once: {value!r}"
    return set(names)


def expected_openai_upstream(client_body: dict, upstream_model: str) -> dict:
    """What an OpenAI upstream must receive for an OpenAI client's body."""
    out = {k: copy.deepcopy(v) for k, v in client_body.items() if v is not None and k != "thread_id"}
    out["model"] = upstream_model
    out["stream"] = True
    options = dict(client_body.get("stream_options") or {})
    options["include_usage"] = True
    out["stream_options"] = options
    return out


def expected_anthropic_upstream(client_body: dict, upstream_model: str) -> dict:
    """What an Anthropic upstream must receive for an Anthropic client's body."""
    out = {k: copy.deepcopy(v) for k, v in client_body.items() if v is not None}
    out["model"] = upstream_model
    out["stream"] = True
    out.setdefault("max_tokens", 4096)
    return out


def diff(got: dict, want: dict) -> str:
    """A readable account of how two bodies differ (for assertion messages)."""
    lines = []
    for k in sorted(set(got) | set(want)):
        if k not in got:
            lines.append(f"  missing at the peer: {k} = {json.dumps(want[k])[:300]}")
        elif k not in want:
            lines.append(f"  unexpected at the peer: {k} = {json.dumps(got[k])[:300]}")
        elif got[k] != want[k]:
            lines.append(f"  {k}: sent {json.dumps(want[k])[:300]}, peer got {json.dumps(got[k])[:300]}")
    return "\n".join(lines) or "  (no difference)"


def openai_sdk_call(client, stream: bool, **kw) -> tuple[httpx.Headers, str]:
    """One call through the OpenAI SDK's raw-response API: (response head, text)."""
    resp = client.chat.completions.with_raw_response.create(stream=stream, **kw)
    headers = resp.headers
    parsed = resp.parse()
    if stream:
        return headers, collect_sdk_stream(parsed)["text"]
    return headers, parsed.choices[0].message.content or ""


def anthropic_sdk_call(client: anthropic.Anthropic, stream: bool, **kw) -> tuple[httpx.Headers, str]:
    """One call through the Anthropic SDK's raw-response API: (response head, text)."""
    resp = client.messages.with_raw_response.create(stream=stream, **kw)
    headers = resp.headers
    parsed = resp.parse()
    if not stream:
        return headers, text_of(parsed.content)
    text = []
    for ev in parsed:
        if ev.type == "content_block_delta" and ev.delta.type == "text_delta":
            text.append(ev.delta.text)
    return headers, "".join(text)


@pytest.fixture
def oai_peer(clean_peer):
    """The session gateway's OpenAI peer, clean."""
    return clean_peer


@pytest.fixture
def anthropic_http(gw) -> httpx.Client:
    headers = {"x-api-key": GATEWAY_KEY, "anthropic-version": VERSION}
    with httpx.Client(base_url=gw.url, headers=headers, timeout=30, trust_env=False) as c:
        yield c


def openai_http(gateway_url: str) -> httpx.Client:
    return httpx.Client(
        base_url=gateway_url, headers={"Authorization": f"Bearer {GATEWAY_KEY}"}, timeout=30, trust_env=False
    )


STREAM = pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])


# --------------------------------------------------------------------------
# 1. OpenAI client -> OpenAI pool: the body arrives as it was written


@STREAM
@pytest.mark.parametrize("field", sorted(OPENAI_ONLY_FIELDS))
def test_openai_field_reaches_openai_peer_unchanged(client, oai_peer, field, stream):
    value = OPENAI_ONLY_FIELDS[field]
    kw = {field: copy.deepcopy(value)}
    if field == "top_logprobs":
        kw["logprobs"] = True  # the real API wants both
    headers, text = openai_sdk_call(client, stream, model="peer-alias", messages=user(f"carry {field}"), **kw)
    assert text == PEER_PREFIX + f"carry {field}"
    sent = last_body(oai_peer)
    assert field in sent, f"{field} did not reach the OpenAI peer; it got {sorted(sent)}"
    assert sent[field] == value, f"{field}: sent {value!r}, peer got {sent[field]!r}"
    assert sent["model"] == "gpt-4o-mini", "the alias was not replaced by the upstream model"
    assert sent["stream"] is True
    assert DROPPED not in headers, f"same protocol, yet {DROPPED}: {headers[DROPPED]}"


@STREAM
def test_openai_all_fields_at_once_arrive_exactly(client, oai_peer, stream):
    """Every OpenAI-only field, an unknown future one, unknown keys inside a
    message and inside a content part: the peer's body is the client's with
    only model/stream/stream_options changed."""
    fields = copy.deepcopy(OPENAI_ONLY_FIELDS)
    messages = [
        {"role": "developer", "content": "Be terse.", "x_future_message_key": {"level": 1}},
        {
            "role": "user",
            "name": "alice",
            "content": [
                {"type": "text", "text": "first part", "x_future_part_key": {"keep": [1, 2, 3]}},
                {"type": "text", "text": "all at once"},
            ],
            "x_future_message_key": ["kept", {"deep": True}],
        },
    ]
    future = {"future_field": {"nested": [1, "two", {"three": 3.5}], "flag": False}}
    kw: dict[str, Any] = dict(
        model="peer-alias",
        messages=messages,
        max_completion_tokens=64,
        temperature=0.25,
        extra_body=future,
        **fields,
    )
    if stream:
        kw["stream_options"] = {"include_obfuscation": False}
    headers, text = openai_sdk_call(client, stream, **copy.deepcopy(kw))
    assert text == PEER_PREFIX + "first part all at once"
    sent = last_body(oai_peer)

    client_body = {k: v for k, v in kw.items() if k != "extra_body"}
    client_body.update(future)
    if stream:
        client_body["stream"] = True
    want = expected_openai_upstream(client_body, "gpt-4o-mini")
    assert sent == want, "the OpenAI peer's body differs from the client's:\n" + diff(sent, want)
    # Spelled out, for the record:
    assert "max_tokens" not in sent, "max_completion_tokens must not be rewritten or doubled as max_tokens"
    assert sent["max_completion_tokens"] == 64
    assert sent["messages"][1]["content"][0]["x_future_part_key"] == {"keep": [1, 2, 3]}
    assert sent["messages"][1]["x_future_message_key"] == ["kept", {"deep": True}]
    assert sent["messages"][0]["role"] == "developer"
    if stream:
        assert sent["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert DROPPED not in headers, f"same protocol, yet {DROPPED}: {headers[DROPPED]}"


@STREAM
def test_openai_unknown_fields_arrive_unchanged(client, oai_peer, stream):
    """Fields this gateway does not know (top level, in a message, in a
    content part) are carried, not dropped and not refused."""
    extra = {"some_future_field": {"x": 1, "y": [True, None, "z"]}, "another_unknown": 42}
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "unknown stuff", "x_part_extra": "p"}],
            "x_message_extra": {"m": 1},
        }
    ]
    headers, text = openai_sdk_call(client, stream, model="gpt-4o-mini", messages=messages, extra_body=extra)
    assert text == PEER_PREFIX + "unknown stuff"
    sent = last_body(oai_peer)
    assert sent.get("some_future_field") == extra["some_future_field"], sent
    assert sent.get("another_unknown") == 42, sent
    assert sent["messages"] == messages, f"messages changed on the way: {sent['messages']}"
    assert DROPPED not in headers


@STREAM
def test_openai_raw_body_transformation_is_exact(gateway, oai_peer, stream):
    """Over raw HTTP: top-level nulls and ``thread_id`` are removed,
    ``stream`` becomes true, ``stream_options.include_usage`` true with
    the other options kept, ``model`` the upstream's, and everything else
    (number spellings included) is as sent."""
    body: dict[str, Any] = {
        "model": "peer-alias",
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "exact body", "x_extra": None},
        ],
        "thread_id": "thread-faithful-1",
        "seed": None,
        "temperature": 0.1,
        "top_p": 1e-3,
        "logit_bias": {"100": 100, "200": -100},
        "frequency_penalty": -2,
        "presence_penalty": 0.30000000000000004,
        "future_big_int": 18446744073709551615,
        "future_unicode": "h\u00e9llo \u2603 \U0001F600 \"q\" \\ /",
        "future_null_inside": {"a": None, "b": [None]},
        "user": "u-1",
        "n": 1,
        "stream_options": {"include_usage": False, "include_obfuscation": False} if stream else None,
    }
    if stream:
        body["stream"] = True
    with openai_http(gateway.url) as c:
        if stream:
            res = support.stream_raw(c, "/v1/chat/completions", body)
            assert res.status == 200, res.body[:500]
            resp_headers = res.headers
            text = "".join(
                (ch["choices"][0]["delta"].get("content") or "") for ch in res.chunks() if ch.get("choices")
            )
            assert not any(ch.get("usage") for ch in res.chunks()), "usage sent to a client that asked for none"
        else:
            r = c.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text[:500]
            resp_headers = r.headers
            text = r.json()["choices"][0]["message"]["content"]
    assert text == PEER_PREFIX + "exact body"
    sent = last_body(oai_peer)
    want = expected_openai_upstream(body, "gpt-4o-mini")
    assert sent == want, "the OpenAI peer's body differs:\n" + diff(sent, want)
    assert "thread_id" not in sent and "seed" not in sent
    assert sent["messages"][1] == {"role": "user", "content": "exact body", "x_extra": None}, "nested null removed"
    assert type(sent["future_big_int"]) is int and sent["future_big_int"] == 18446744073709551615
    assert DROPPED not in resp_headers


def test_openai_stream_usage_not_leaked_to_client(client, oai_peer):
    """The upstream is asked for usage; a client that did not ask gets none."""
    s = collect_sdk_stream(client.chat.completions.create(model="gpt-4o-mini", messages=user("no usage"), stream=True))
    assert s["text"] == PEER_PREFIX + "no usage"
    assert last_body(oai_peer)["stream_options"]["include_usage"] is True
    assert s["usage_chunks"] == [], "usage chunk sent to a client that did not ask for it"


# --------------------------------------------------------------------------
# 2. Anthropic client -> Anthropic pool: blocks, cache marks and sampling kept


def cached_conversation() -> list[dict]:
    """A tool round trip with cache_control on a text, an image, a
    tool_use and a tool_result block."""
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look this up with a tool", "cache_control": {"type": "ephemeral"}},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64},
                    "cache_control": {"type": "ephemeral"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me use a tool."},
                {
                    "type": "tool_use",
                    "id": "toolu_peer_0",
                    "name": "search",
                    "input": {"q": "look this up"},
                    "cache_control": {"type": "ephemeral"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_peer_0",
                    "content": [{"type": "text", "text": "sunny and mild"}],
                    "cache_control": {"type": "ephemeral", "ttl": "5m"},
                },
            ],
        },
    ]


@STREAM
def test_anthropic_cache_control_and_system_blocks_kept(ac, peers, stream):
    a_peer, _ = peers
    messages = cached_conversation()
    headers, text = anthropic_sdk_call(
        ac,
        stream,
        model="claude-alias",
        max_tokens=300,
        system=copy.deepcopy(SYSTEM_BLOCKS),
        tools=copy.deepcopy(ANTHROPIC_TOOLS),
        messages=copy.deepcopy(messages),
    )
    assert text == "anthropic peer saw tool result: sunny and mild"
    sent = last_body(a_peer)
    assert sent["model"] == "claude-peer", "the alias was not replaced by the upstream model"
    assert sent["stream"] is True
    assert sent["system"] == SYSTEM_BLOCKS, f"system blocks changed: {sent.get('system')!r}"
    assert [b.get("cache_control") for b in sent["system"]] == [None, {"type": "ephemeral", "ttl": "1h"}, None]
    assert sent["tools"] == ANTHROPIC_TOOLS, f"tools changed: {sent.get('tools')!r}"
    assert sent["tools"][1]["cache_control"] == {"type": "ephemeral"}
    assert sent["messages"] == messages, "messages changed:\n" + json.dumps(sent["messages"])[:1500]
    assert DROPPED not in headers, f"same protocol, yet {DROPPED}: {headers[DROPPED]}"


@STREAM
def test_anthropic_sampling_fields_kept(ac, peers, stream):
    a_peer, _ = peers
    stops = ["STOP-NEVER", "\n\nHuman:"]
    metadata = {"user_id": "user-faithful-42"}
    headers, text = anthropic_sdk_call(
        ac,
        stream,
        model="claude-peer",
        max_tokens=123,
        metadata=metadata,
        stop_sequences=stops,
        messages=user("sampling fields"),
        extra_body={"top_k": 7, "temperature": 0.3, "top_p": 0.85},
    )
    assert text == A_PREFIX + "sampling fields"
    sent = last_body(a_peer)
    assert sent.get("top_k") == 7 and type(sent.get("top_k")) is int, sent
    assert sent.get("metadata") == metadata, sent
    assert sent.get("stop_sequences") == stops, sent
    assert sent.get("temperature") == 0.3 and sent.get("top_p") == 0.85, sent
    assert sent.get("max_tokens") == 123, sent
    assert DROPPED not in headers, f"same protocol, yet {DROPPED}: {headers[DROPPED]}"


@STREAM
def test_anthropic_thinking_kept(ac, peers, stream):
    a_peer, _ = peers
    thinking = {"type": "enabled", "budget_tokens": 1024}
    headers, text = anthropic_sdk_call(
        ac, stream, model="claude-peer", max_tokens=2048, thinking=thinking, messages=user("with thinking")
    )
    assert text == A_PREFIX + "with thinking"
    sent = last_body(a_peer)
    assert sent.get("thinking") == thinking, sent
    assert sent.get("max_tokens") == 2048
    assert DROPPED not in headers


@STREAM
def test_anthropic_raw_body_transformation_is_exact(anthropic_http, peers, stream):
    """Over raw HTTP: top-level nulls removed, ``max_tokens`` added when
    missing, ``stream`` true, ``model`` the upstream's; the rest as sent."""
    a_peer, _ = peers
    body: dict[str, Any] = {
        "model": "claude-alias",
        "system": copy.deepcopy(SYSTEM_BLOCKS),
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "raw exact", "cache_control": {"type": "ephemeral"}}]}
        ],
        "tools": copy.deepcopy(ANTHROPIC_TOOLS),
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "metadata": {"user_id": "u-raw"},
        "top_k": 3,
        "temperature": 0.7,
        "top_p": None,
        "stop_sequences": ["NEVER-SEEN"],
    }
    if stream:
        body["stream"] = True
        res = raw_stream(anthropic_http, "/v1/messages", body)
        assert res.status == 200, res.body[:500]
        resp_headers = res.headers
        text = "".join(d["delta"].get("text", "") for n, d in res.events if n == "content_block_delta")
    else:
        r = anthropic_http.post("/v1/messages", json=body)
        assert r.status_code == 200, r.text[:500]
        resp_headers = r.headers
        text = "".join(b.get("text", "") for b in r.json()["content"])
    assert text == A_PREFIX + "raw exact"
    sent = last_body(a_peer)
    want = expected_anthropic_upstream(body, "claude-peer")
    assert sent == want, "the Anthropic peer's body differs:\n" + diff(sent, want)
    assert sent["max_tokens"] == 4096 and "top_p" not in sent
    assert DROPPED not in resp_headers


# --------------------------------------------------------------------------
# 3. Across protocols: the dropped fields are named on the response head


@STREAM
def test_openai_client_to_anthropic_pool_names_dropped(oc, peers, stream):
    a_peer, _ = peers
    kw = dict(
        model="claude-peer",
        messages=user("cross with extras"),
        logprobs=True,
        logit_bias={"50256": -100},
        seed=7,
        temperature=0.5,
        max_tokens=80,
        user="u-cross",
    )
    headers, text = openai_sdk_call(oc, stream, **kw)
    assert text == A_PREFIX + "cross with extras"
    sent_keys = set(kw) | ({"stream"} if stream else set())
    want = sent_keys - OPENAI_TO_ANTHROPIC_KEPT
    assert want == {"logprobs", "logit_bias", "seed"}  # the test's own premise
    assert dropped_of(headers) == want, f"{DROPPED}: {headers.get(DROPPED)!r}, expected {sorted(want)}"
    body = last_body(a_peer)
    assert not want & set(body), f"dropped fields reached the Anthropic peer: {sorted(want & set(body))}"
    assert body["temperature"] == 0.5 and body["max_tokens"] == 80


@STREAM
def test_openai_client_to_anthropic_pool_names_every_openai_only_field(oc, peers, stream):
    a_peer, _ = peers
    extra = {"some_future_field": {"x": 1}}
    kw: dict[str, Any] = dict(
        model="claude-peer",
        messages=user("cross with everything"),
        frequency_penalty=0.5,
        presence_penalty=0.25,
        seed=11,
        response_format={"type": "text"},
        max_completion_tokens=90,
        stop=["NEVER-SEEN"],
        top_p=0.9,
        parallel_tool_calls=True,
        tools=[OPENAI_TOOL],
        tool_choice="auto",
        reasoning_effort="low",
        extra_body=extra,
        **copy.deepcopy(OPENAI_ONLY_FIELDS),
    )
    if stream:
        kw["stream_options"] = {"include_usage": True}
    headers, text = openai_sdk_call(oc, stream, **kw)
    assert text == A_PREFIX + "cross with everything"
    sent_keys = (set(kw) - {"extra_body"}) | set(extra) | ({"stream"} if stream else set())
    want = sent_keys - OPENAI_TO_ANTHROPIC_KEPT
    assert set(OPENAI_ONLY_FIELDS) | {"seed", "frequency_penalty", "presence_penalty", "response_format"} <= want
    assert dropped_of(headers) == want, (
        f"{DROPPED}: {headers.get(DROPPED)!r}\n  missing: {sorted(want - (dropped_of(headers) or set()))}"
        f"\n  extra: {sorted((dropped_of(headers) or set()) - want)}"
    )
    body = last_body(a_peer)
    assert body["max_tokens"] == 90 and body["stop_sequences"] == ["NEVER-SEEN"], body


@STREAM
def test_anthropic_client_to_openai_pool_names_dropped(ac, peers, stream):
    _, o_peer = peers
    headers, text = anthropic_sdk_call(
        ac,
        stream,
        model="gpt-4o-mini",
        max_tokens=100,
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "cross back", "cache_control": {"type": "ephemeral"}}]}
        ],
        extra_body={"top_k": 5, "some_future_field": {"x": 1}},
    )
    assert text == PEER_PREFIX + "cross back"
    want = {"top_k", "some_future_field", "cache_control"}
    assert dropped_of(headers) == want, f"{DROPPED}: {headers.get(DROPPED)!r}, expected {sorted(want)}"
    body = last_body(o_peer)
    assert "top_k" not in body and "some_future_field" not in body, sorted(body)
    assert "cache_control" not in json.dumps(body), "a cache_control mark reached the OpenAI peer"


@STREAM
def test_anthropic_client_to_openai_pool_cache_control_on_system_and_tools(ac, peers, stream):
    """cache_control marks anywhere (system block, tool) are named, with
    only the top-level fields the OpenAI route cannot take."""
    headers, text = anthropic_sdk_call(
        ac,
        stream,
        model="gpt-4o-mini",
        max_tokens=100,
        system=copy.deepcopy(SYSTEM_BLOCKS),
        tools=copy.deepcopy(ANTHROPIC_TOOLS),
        metadata={"user_id": "u-1"},
        stop_sequences=["NEVER-SEEN"],
        messages=user("cached system"),
    )
    assert text == PEER_PREFIX + "cached system"
    assert dropped_of(headers) == {"cache_control"}, f"{DROPPED}: {headers.get(DROPPED)!r}"


@STREAM
@pytest.mark.parametrize("direction", ["openai->anthropic", "anthropic->openai"])
def test_cross_protocol_with_only_kept_fields_has_no_header(oc, ac, peers, direction, stream):
    if direction == "openai->anthropic":
        headers, text = openai_sdk_call(
            oc,
            stream,
            model="claude-peer",
            messages=[{"role": "system", "content": "Be brief."}, *user("plain across")],
            temperature=0.5,
            top_p=0.9,
            max_completion_tokens=60,
            stop=["NEVER-SEEN"],
            user="u-plain",
            n=1,
            tools=[OPENAI_TOOL],
            tool_choice="auto",
            parallel_tool_calls=False,
            reasoning_effort="low",
            **({"stream_options": {"include_usage": True}} if stream else {}),
        )
        assert text == A_PREFIX + "plain across"
    else:
        headers, text = anthropic_sdk_call(
            ac,
            stream,
            model="gpt-4o-mini",
            max_tokens=60,
            system="Be brief.",
            metadata={"user_id": "u-plain"},
            stop_sequences=["NEVER-SEEN"],
            tools=[{k: v for k, v in t.items() if k != "cache_control"} for t in ANTHROPIC_TOOLS],
            tool_choice={"type": "auto"},
            messages=user("plain across"),
            extra_body={"temperature": 0.5, "top_p": 0.9},
        )
        assert text == PEER_PREFIX + "plain across"
    assert DROPPED not in headers, f"nothing was dropped, yet {DROPPED}: {headers[DROPPED]}"


@STREAM
def test_raw_stream_head_carries_dropped_header(gw, anthropic_http, peers, stream):
    """Raw HTTP in both directions: the header is on the response head,
    stream or not, and lists exactly the dropped fields."""
    o_body: dict[str, Any] = {
        "model": "claude-peer",
        "messages": user("raw across"),
        "logprobs": True,
        "top_logprobs": 1,
        "seed": 3,
        "max_tokens": 50,
    }
    a_body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "raw across", "cache_control": {"type": "ephemeral"}}]}],
        "top_k": 2,
        "future_knob": "on",
    }
    if stream:
        o_body["stream"] = a_body["stream"] = True
    with openai_http(gw.url) as c:
        with c.stream("POST", "/v1/chat/completions", json=o_body) as r:
            assert r.status_code == 200, r.read()[:500]
            o_dropped = dropped_of(r.headers)
            r.read()
    with anthropic_http.stream("POST", "/v1/messages", json=a_body) as r:
        assert r.status_code == 200, r.read()[:500]
        a_dropped = dropped_of(r.headers)
        r.read()
    assert o_dropped == {"logprobs", "top_logprobs", "seed"}, o_dropped
    assert a_dropped == {"top_k", "future_knob", "cache_control"}, a_dropped


@STREAM
@pytest.mark.parametrize("client_kind", ["openai", "anthropic"])
def test_demo_pool_names_what_a_text_only_upstream_cannot_take(oc, ac, client_kind, stream):
    if client_kind == "openai":
        kw: dict[str, Any] = dict(
            model="demo",
            messages=user("to the demo"),
            temperature=0.5,
            logprobs=True,
            max_tokens=50,
            stop=["NEVER-SEEN"],
            user="u-demo",
        )
        headers, text = openai_sdk_call(oc, stream, **kw)
        sent = set(kw) | ({"stream"} if stream else set())
    else:
        kw = dict(
            model="demo",
            max_tokens=50,
            system="sys",
            metadata={"user_id": "u-demo"},
            stop_sequences=["NEVER-SEEN"],
            messages=user("to the demo"),
            extra_body={"temperature": 0.5, "top_k": 3},
        )
        headers, text = anthropic_sdk_call(ac, stream, **kw)
        sent = (set(kw) - {"extra_body"}) | {"temperature", "top_k"} | ({"stream"} if stream else set())
    assert text.endswith("to the demo"), text
    want = sent - DEMO_KEPT
    assert want == {"temperature", "logprobs"} or want == {"temperature", "top_k"}  # the test's own premise
    assert dropped_of(headers) == want, f"{DROPPED}: {headers.get(DROPPED)!r}, expected {sorted(want)}"


# --------------------------------------------------------------------------
# the edges: top-level cache_control, repaired bodies, what is not a loss


@STREAM
def test_anthropic_top_level_cache_control_kept(ac, peers, stream):
    """The SDK's top-level ``cache_control`` (automatic prompt caching)
    reaches an Anthropic pool as written."""
    a_peer, _ = peers
    headers, text = anthropic_sdk_call(
        ac, stream, model="claude-peer", max_tokens=50, cache_control={"type": "ephemeral"}, messages=user("auto cache")
    )
    assert text == A_PREFIX + "auto cache"
    assert last_body(a_peer).get("cache_control") == {"type": "ephemeral"}
    assert DROPPED not in headers


@STREAM
@pytest.mark.parametrize("model", ["gpt-4o-mini", "demo"])
def test_top_level_cache_control_named_once(ac, peers, model, stream):
    """A top-level ``cache_control`` plus marks on blocks, to a pool that
    takes neither: ``cache_control`` is named, once."""
    headers, text = anthropic_sdk_call(
        ac,
        stream,
        model=model,
        max_tokens=50,
        cache_control={"type": "ephemeral"},
        messages=[{"role": "user", "content": [{"type": "text", "text": "named once", "cache_control": {"type": "ephemeral"}}]}],
    )
    assert text.endswith("named once"), text
    raw_value = headers.get(DROPPED)
    assert raw_value is not None, "cache_control was lost but not named"
    assert [p.strip() for p in raw_value.split(",")] == ["cache_control"], f"{DROPPED}: {raw_value!r}"


@STREAM
def test_cache_control_as_a_schema_property_is_not_a_mark(ac, peers, stream):
    """A tool whose input schema has a property called ``cache_control``
    carries no cache mark: nothing is lost, so nothing is named."""
    _, o_peer = peers
    tool = {
        "name": "configure",
        "description": "Set caching options",
        "input_schema": {
            "type": "object",
            "properties": {"cache_control": {"type": "string", "enum": ["none", "ephemeral"]}},
            "required": ["cache_control"],
        },
    }
    headers, text = anthropic_sdk_call(
        ac, stream, model="gpt-4o-mini", max_tokens=50, tools=[tool], messages=user("schema words")
    )
    assert text == PEER_PREFIX + "schema words"
    sent_tool = last_body(o_peer)["tools"][0]["function"]
    assert sent_tool["parameters"] == tool["input_schema"], "the schema did travel whole"
    assert DROPPED not in headers, f"nothing was dropped, yet {DROPPED}: {headers[DROPPED]}"


@STREAM
@pytest.mark.parametrize("direction", ["openai->anthropic", "anthropic->openai"])
def test_null_fields_across_protocols_are_not_named(gw, anthropic_http, peers, direction, stream):
    """A top-level ``null`` is an unset field (the same-protocol route
    removes it as such): nothing is lost, so nothing is named."""
    if direction == "openai->anthropic":
        body: dict[str, Any] = {
            "model": "claude-peer",
            "messages": user("null across"),
            "seed": None,
            "logprobs": None,
            "response_format": None,
        }
        if stream:
            body["stream"] = True
        with openai_http(gw.url) as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
            r.read()
            status, headers = r.status_code, r.headers
    else:
        body = {"model": "gpt-4o-mini", "max_tokens": 50, "messages": user("null across"), "top_k": None, "future_x": None}
        if stream:
            body["stream"] = True
        with anthropic_http.stream("POST", "/v1/messages", json=body) as r:
            r.read()
            status, headers = r.status_code, r.headers
    assert status == 200
    assert DROPPED not in headers, f"only null fields were sent, yet {DROPPED}: {headers[DROPPED]}"


@STREAM
def test_repaired_anthropic_body_goes_canonical_and_names_what_did_not_arrive(anthropic_http, peers, stream):
    """A ``system`` message inside ``messages`` and a tool without
    ``input_schema`` are repaired, so the body goes through the canonical
    translation: the peer gets a valid body (system at the top, a schema
    on the tool, top_k kept) and what did not arrive is named."""
    a_peer, _ = peers
    body: dict[str, Any] = {
        "model": "claude-peer",
        "max_tokens": 60,
        "top_k": 4,
        "future_x": {"y": 1},
        "tools": [{"name": "lookup", "description": "Look up"}],
        "messages": [
            {"role": "system", "content": "Be exact."},
            {"role": "user", "content": [{"type": "text", "text": "repaired", "cache_control": {"type": "ephemeral"}}]},
        ],
    }
    if stream:
        body["stream"] = True
    with anthropic_http.stream("POST", "/v1/messages", json=body) as r:
        r.read()
        assert r.status_code == 200, r.text[:500]
        headers = r.headers
    sent = last_body(a_peer)
    assert [m["role"] for m in sent["messages"]] == ["user"], sent["messages"]
    assert "Be exact." in json.dumps(sent.get("system")), sent.get("system")
    assert isinstance(sent["tools"][0].get("input_schema"), dict), sent["tools"]
    assert sent.get("top_k") == 4 and sent["model"] == "claude-peer" and sent["stream"] is True
    lost = {k for k in body if k not in sent}
    if "cache_control" not in json.dumps(sent):
        lost.add("cache_control")
    assert lost == {"future_x", "cache_control"}, f"the canonical route lost {sorted(lost)}"
    assert dropped_of(headers) == lost, f"{DROPPED}: {headers.get(DROPPED)!r}, expected {sorted(lost)}"


# --------------------------------------------------------------------------
# what the canonical model cannot carry at all: carried by the body, named
# for any other upstream


@STREAM
def test_openai_audio_and_file_parts_reach_an_openai_pool_and_are_named_elsewhere(oc, peers, stream):
    a_peer, o_peer = peers
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    file = {"type": "file", "file": {"file_id": "file-abc123"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "hear this"}, audio, file]}]
    openai_sdk_call(oc, stream, model="gpt-4o-mini", messages=messages)
    got = last_body(o_peer)
    assert got["messages"][0]["content"][1:] == [audio, file]
    headers, text = openai_sdk_call(oc, stream, model="claude-peer", messages=messages)
    assert text == A_PREFIX + "hear this"
    assert dropped_of(headers) == {"input_audio parts", "file parts"}
    assert last_body(a_peer)["messages"][0]["content"] in (
        "hear this",
        [{"type": "text", "text": "hear this"}],
    )


@STREAM
def test_anthropic_server_tool_reaches_an_anthropic_pool_and_is_named_elsewhere(ac, peers, stream):
    a_peer, o_peer = peers
    server_tool = {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}
    anthropic_sdk_call(ac, stream, model="claude-peer", max_tokens=100, messages=user("search"), tools=[server_tool])
    assert last_body(a_peer)["tools"] == [server_tool]
    headers, text = anthropic_sdk_call(
        ac, stream, model="gpt-4o-mini", max_tokens=100, messages=user("search"), tools=[server_tool]
    )
    assert text == PEER_PREFIX + "search"
    assert dropped_of(headers) == {"web_search_20250305 tool"}
    assert "tools" not in last_body(o_peer)


@STREAM
def test_anthropic_server_tool_blocks_come_back_as_the_upstream_sent_them(ac, peers, stream):
    """Blocks troupe does not model (a server tool's use and its result)
    reach an Anthropic client whole, in order, before the text."""
    server_tool = {"type": "web_search_20250305", "name": "web_search"}
    kw = dict(model="claude-peer", max_tokens=100, messages=user("search this"), tools=[server_tool])
    if stream:
        with ac.messages.stream(**kw) as s:
            message = s.get_final_message()
    else:
        message = ac.messages.create(**kw)
    blocks = [b.model_dump(exclude_none=True) for b in message.content]
    assert [b["type"] for b in blocks] == ["server_tool_use", "web_search_tool_result", "text"], blocks
    assert blocks[0]["id"] == "srvtoolu_peer_0" and blocks[0]["input"] == {"query": "search this"}
    assert blocks[1]["tool_use_id"] == "srvtoolu_peer_0"
    assert blocks[1]["content"][0]["url"] == "https://example.com/"
    assert blocks[2]["text"] == A_PREFIX + "search this"
    # The text's citations (streamed as citations_delta) come with it.
    assert [c["url"] for c in blocks[2]["citations"]] == ["https://example.com/"]
    assert blocks[2]["citations"][0]["encrypted_index"] == "enc-index-peer"
