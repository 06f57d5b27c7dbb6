"""The fake OpenAI peer's Responses API (``POST /v1/responses``), checked
over raw HTTP (and once with the official SDK) against the OpenAPI
description, with no gateway.

Gateway tests use this endpoint as a "Responses-only" upstream; if the peer
drifts from the real protocol, or its rules drift from the chat endpoint's,
those tests prove nothing. These keep it honest.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest

from schema import assert_valid, assert_valid_stream_event
from support import PEER_KEYS, PEER_PREFIX, make_client, read_named_events, words

PATH = "/v1/responses"
MODEL = "gpt-4o-mini"
TERMINAL = ("response.completed", "response.incomplete", "response.failed")
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TIME = dict(WEATHER, name="get_time", description="Time in a city")


@pytest.fixture
def raw(clean_peer):
    with httpx.Client(
        base_url=clean_peer.url, headers={"Authorization": f"Bearer {PEER_KEYS[0]}"}, timeout=20, trust_env=False
    ) as c:
        yield c


def body(input_: str | list, **extra) -> dict:
    return {"model": MODEL, "input": input_, **extra}


def user(text: str) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def post(raw: httpx.Client, b: dict) -> dict:
    r = raw.post(PATH, json=b)
    assert r.status_code == 200, r.text
    out = r.json()
    assert_valid("Response", out)
    return out


def stream(raw: httpx.Client, b: dict) -> tuple[list[dict], str | None]:
    """The events of a streamed answer, each checked against its schema and
    its ``event:`` name; and the transport error if the body broke off."""
    with raw.stream("POST", PATH, json=dict(b, stream=True)) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        named, error = read_named_events(r)
    events = []
    for name, data in named:
        assert name == data["type"], (name, data)
        assert_valid_stream_event(data)
        events.append(data)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events, error


def check_grammar(events: list[dict]) -> dict:
    """Asserts the event grammar clients rely on (one item open at a time,
    ``added`` before its deltas, ``done`` carrying the item the deltas
    built, exactly one terminal event, last); returns the final response."""
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    rid = events[0]["response"]["id"]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    open_item, done_items, built = None, [], ""
    for e in events[2:-1]:
        t = e["type"]
        assert t not in TERMINAL, t
        if t == "response.output_item.added":
            assert open_item is None, "items overlap"
            assert e["output_index"] == len(done_items)
            open_item, built = e["item"], ""
            continue
        assert open_item is not None, f"{t} without an open item"
        if "item_id" in e:
            assert e["item_id"] == open_item["id"] and e["output_index"] == len(done_items)
        if t.endswith(".delta"):
            built += e["delta"]
        if t == "response.output_item.done":
            item = e["item"]
            assert item["id"] == open_item["id"] and item["type"] == open_item["type"]
            whole = {
                "message": lambda: "".join(p["text"] for p in item["content"]),
                "function_call": lambda: item["arguments"],
                "custom_tool_call": lambda: item["input"],
                "reasoning": lambda: "".join(p["text"] for p in item["summary"]),
            }[item["type"]]()
            assert built == whole, (built, whole)
            done_items.append(item)
            open_item = None
    assert open_item is None
    last = events[-1]
    assert last["type"] in TERMINAL
    final = last["response"]
    assert final["id"] == rid and final["output"] == done_items
    return final


def texts(events: list[dict], kind: str) -> list[str]:
    return [e["delta"] for e in events if e["type"] == kind]


def error_of(r: httpx.Response, status: int = 400) -> dict:
    assert r.status_code == status, r.text
    assert_valid("ErrorResponse", r.json())
    return r.json()["error"]


# --------------------------------------------------------------------------


def test_text_non_stream_and_stream(raw, clean_peer):
    text = "hello  there, peer"
    answer = PEER_PREFIX + text
    out = post(raw, body(text, instructions="Be brief.", store=False, prompt_cache_key="k1"))
    assert re.fullmatch(r"resp_peer_\d+", out["id"]) and out["object"] == "response"
    assert out["status"] == "completed" and out["incomplete_details"] is None and out["error"] is None
    [msg] = out["output"]
    assert re.fullmatch(r"msg_peer_\d+", msg["id"])
    assert (msg["type"], msg["role"], msg["status"]) == ("message", "assistant", "completed")
    assert msg["content"] == [{"type": "output_text", "text": answer, "annotations": [], "logprobs": []}]
    # Words like the chat endpoint: 3 per message (instructions count as one) plus its words.
    assert out["usage"] == {
        "input_tokens": (3 + 2) + (3 + 3),
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": len(words(answer)),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 11 + len(words(answer)),
    }
    assert (out["instructions"], out["store"], out["prompt_cache_key"]) == ("Be brief.", False, "k1")

    # The same conversation as items, streamed: one word (with its trailing space) per delta.
    events, error = stream(raw, body([user(text)]))
    assert error is None
    final = check_grammar(events)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len(words(answer)),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert texts(events, "response.output_text.delta") == words(answer)
    assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == answer
    assert final["usage"]["input_tokens"] == 3 + 3 and final["usage"]["output_tokens"] == len(words(answer))
    assert final["id"] != out["id"] and final["output"][0]["id"] != msg["id"]

    # The official SDK reads the same stream.
    sdk = make_client(clean_peer.url + "/v1", api_key=PEER_KEYS[1])
    with sdk.responses.stream(model=MODEL, input=text) as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        assert s.get_final_response().output_text == answer
    assert deltas == words(answer)

    log = clean_peer.requests()
    assert [(q["path"], q["stream"], q["outcome"], q["key"]) for q in log] == [
        (PATH, False, "status 200", PEER_KEYS[0]),
        (PATH, True, "completed", PEER_KEYS[0]),
        (PATH, True, "completed", PEER_KEYS[1]),
    ]
    assert log[1]["body"] == body([user(text)], stream=True)


def test_auth_and_structured_output(raw, clean_peer):
    no_key = httpx.post(clean_peer.url + PATH, json=body("hi"), trust_env=False)
    assert error_of(no_key, 401)["code"] is None
    bad_key = httpx.post(clean_peer.url + PATH, json=body("hi"), headers={"Authorization": "Bearer sk-nope-1234"}, trust_env=False)
    assert error_of(bad_key, 401)["code"] == "invalid_api_key"

    fmt = {"type": "json_schema", "name": "city", "schema": {"type": "object"}, "strict": True}
    out = post(raw, body('Answer in JSON.\ntroupe-json: {"city": "Paris"}', text={"format": fmt}))
    assert out["output"][0]["content"][0]["text"] == '{"city": "Paris"}'
    assert out["text"]["format"] == fmt
    # Chat's nested shape is not the Responses shape.
    chat_fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": {"type": "object"}}}
    assert error_of(raw.post(PATH, json=body("x", text={"format": chat_fmt})))["param"] == "text.format.name"


def test_tool_call_and_output_round_trip(raw):
    directive = (
        'troupe-calls: [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
        '{"name": "get_time", "arguments": {"city": "Oslo"}, "fragments": 2}]'
    )
    first = [user("Weather and time, please.\n" + directive)]
    events, error = stream(raw, body(first, tools=[WEATHER, TIME]))
    assert error is None
    final = check_grammar(events)
    calls = final["output"]
    assert [(c["type"], c["call_id"], c["name"], json.loads(c["arguments"]), c["status"]) for c in calls] == [
        ("function_call", "call_peer_0", "get_weather", {"city": "Paris"}, "completed"),
        ("function_call", "call_peer_1", "get_time", {"city": "Oslo"}, "completed"),
    ]
    assert all(re.fullmatch(r"fc_peer_\d+", c["id"]) for c in calls)
    per_item = {c["id"]: [e["delta"] for e in events if e.get("item_id") == c["id"] and e["type"].endswith(".delta")] for c in calls}
    assert [len(per_item[c["id"]]) for c in calls] == [4, 2]
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    assert [(a["arguments"], a["status"]) for a in added] == [("", "in_progress")] * 2
    args_done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [(d["name"], d["arguments"]) for d in args_done] == [(c["name"], c["arguments"]) for c in calls]

    # The calls go back with their outputs: the answer reads the last output.
    outputs = [
        {"type": "function_call_output", "call_id": "call_peer_0", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_peer_1", "output": [{"type": "input_text", "text": "noon"}]},
    ]
    second = first + calls + outputs
    out = post(raw, body(second, tools=[WEATHER, TIME]))
    assert out["output"][0]["content"][0]["text"] == "peer saw tool result: noon"

    # The "tool" keyword rule, as in chat: the first tool with {"q": text}.
    out = post(raw, body("use a tool", tools=[WEATHER, TIME]))
    assert [(c["call_id"], c["name"], json.loads(c["arguments"])) for c in out["output"]] == [
        ("call_peer_0", "get_weather", {"q": "use a tool"})
    ]
    assert post(raw, body("use a tool", tools=[WEATHER], tool_choice="none"))["output"][0]["type"] == "message"

    # An output whose call is not in the input, or a call without its output, is refused.
    orphan = first + [dict(outputs[0], call_id="call_gateway_7")]
    err = error_of(raw.post(PATH, json=body(orphan, tools=[WEATHER, TIME])))
    assert err["message"] == "No tool call found for function call output with call_id call_gateway_7."
    assert err["param"] == "input"
    err = error_of(raw.post(PATH, json=body(first + calls + outputs[:1], tools=[WEATHER, TIME])))
    assert err["message"] == "No tool output found for function call call_peer_1."
    # Arguments are a JSON string, not an object.
    as_object = first + [dict(calls[0], arguments={"city": "Paris"})] + outputs[:1]
    assert error_of(raw.post(PATH, json=body(as_object, tools=[WEATHER])))["code"] == "invalid_type"


def test_custom_tool_call(raw):
    patch = {"type": "custom", "name": "apply_patch", "description": "Apply a patch"}
    first = [user('troupe-calls: [{"name": "apply_patch", "arguments": "*** Begin Patch\\n*** End Patch"}]')]
    events, error = stream(raw, body(first, tools=[patch]))
    assert error is None
    [item] = check_grammar(events)["output"]
    assert (item["type"], item["name"], item["call_id"]) == ("custom_tool_call", "apply_patch", "call_peer_0")
    assert item["input"] == "*** Begin Patch\n*** End Patch"
    assert len(texts(events, "response.custom_tool_call_input.delta")) == 4
    back = first + [item, {"type": "custom_tool_call_output", "call_id": "call_peer_0", "output": "Done!"}]
    assert post(raw, body(back, tools=[patch]))["output"][0]["content"][0]["text"] == "peer saw tool result: Done!"


def test_reasoning_encrypted_content_round_trip(raw):
    text = "think about the weather, then use a tool"
    b = body([user(text)], tools=[WEATHER], reasoning={"effort": "low", "summary": "auto"}, include=["reasoning.encrypted_content"])
    events, error = stream(raw, b)
    assert error is None
    final = check_grammar(events)
    rs, fc = final["output"]
    summary = "peer thinking about: " + text
    m = re.fullmatch(r"rs_peer_(\d+)", rs["id"])
    assert m and rs["type"] == "reasoning"
    assert rs["summary"] == [{"type": "summary_text", "text": summary}]
    assert rs["encrypted_content"] == f"enc-peer-{m.group(1)}"
    assert [e["type"] for e in events[2:9]] == [
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
    ]
    assert texts(events, "response.reasoning_summary_text.delta") == words(summary)
    assert fc["type"] == "function_call" and json.loads(fc["arguments"]) == {"q": text}
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == len(words(summary))
    assert final["usage"]["output_tokens"] == len(words(summary)) + len(words(fc["arguments"])) + 3

    # Sent back (as Codex does, the whole item), the reasoning item is accepted.
    result = {"type": "function_call_output", "call_id": fc["call_id"], "output": "rainy"}
    turn2 = dict(b, input=[user(text), rs, fc, result])
    out = post(raw, turn2)
    assert out["output"][-1]["content"][0]["text"] == "peer saw tool result: rainy"
    # Without the include, a reasoning item still comes ("think"), but with no encrypted_content.
    plain = post(raw, body("I think so"))
    assert plain["output"][0]["type"] == "reasoning" and plain["output"][0]["encrypted_content"] is None
    assert plain["output"][1]["content"][0]["text"] == PEER_PREFIX + "I think so"

    # A forged or missing encrypted_content is refused.
    for bad in (dict(rs, encrypted_content="enc-peer-999999"), dict(rs, encrypted_content="gAAAA-forged")):
        err = error_of(raw.post(PATH, json=dict(turn2, input=[user(text), bad, fc, result])))
        assert err["code"] == "invalid_encrypted_content" and err["param"] == "input[1].encrypted_content"
        assert rs["id"] in err["message"]
    missing = {k: v for k, v in rs.items() if k != "encrypted_content"}
    err = error_of(raw.post(PATH, json=dict(turn2, input=[user(text), missing, fc, result])))
    assert err["code"] == "invalid_encrypted_content"


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"max_tokens": 50}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "messages"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"reasoning": {"effort": "low", "budget_tokens": 100}}, "reasoning.budget_tokens"),
        ({"input": [{"role": "user", "content": [{"type": "input_text", "text": "hi", "cache_control": {}}]}]},
         "input[0].content[0].cache_control"),
        ({"input": [{"role": "assistant", "content": "x", "tool_calls": []}]}, "input[0].tool_calls"),
    ],
    ids=["max_tokens", "messages", "response_format", "reasoning", "part", "item"],
)
def test_unknown_parameter(raw, extra, param):
    err = error_of(raw.post(PATH, json=dict(body("hi"), **extra)))
    assert err == {
        "message": f"Unknown parameter: '{param}'.",
        "type": "invalid_request_error",
        "param": param,
        "code": "unknown_parameter",
    }


def test_shapes_from_chat_are_refused(raw):
    chat_tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    assert error_of(raw.post(PATH, json=body("hi", tools=[chat_tool])))["param"] == "tools[0].name"
    wrong_part = [{"role": "assistant", "content": [{"type": "input_text", "text": "hi"}]}]
    err = error_of(raw.post(PATH, json=body(wrong_part)))
    assert (err["param"], err["code"]) == ("input[0].content[0]", "invalid_value")
    chat_part = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert error_of(raw.post(PATH, json=body(chat_part)))["code"] == "invalid_value"
    assert error_of(raw.post(PATH, json=body([{"role": "tool", "content": "x"}])))["param"] == "input[0].role"
    err = error_of(raw.post(PATH, json={"model": "gpt-nope", "input": "hi"}))
    assert (err["param"], err["code"]) == ("model", "model_not_found")


def test_previous_response_id_is_not_found(raw, clean_peer):
    # Not even an id this peer gave out: it stores nothing.
    rid = post(raw, body("hi", store=True))["id"]
    for prev in (rid, "resp_troupe_0001"):
        err = error_of(raw.post(PATH, json=body("again", previous_response_id=prev)))
        assert err == {
            "message": f"Previous response with id '{prev}' not found.",
            "type": "invalid_request_error",
            "param": "previous_response_id",
            "code": "previous_response_not_found",
        }
    assert [q["outcome"] for q in clean_peer.requests()] == ["status 200", "status 400", "status 400"]


def test_max_output_tokens_makes_an_incomplete_response(raw):
    text = " ".join(f"w{i}" for i in range(20))
    answer = words(PEER_PREFIX + text)
    out = post(raw, body(text, max_output_tokens=16))
    assert out["status"] == "incomplete" and out["incomplete_details"] == {"reason": "max_output_tokens"}
    assert out["completed_at"] is None and out["max_output_tokens"] == 16
    assert out["output"][0]["status"] == "incomplete"
    assert out["output"][0]["content"][0]["text"] == "".join(answer[:16])
    assert out["usage"]["output_tokens"] == 16

    events, error = stream(raw, body(text, max_output_tokens=16))
    assert error is None
    final = check_grammar(events)
    assert events[-1]["type"] == "response.incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert texts(events, "response.output_text.delta") == answer[:16]
    # Enough room: complete.
    assert post(raw, body(text, max_output_tokens=64))["status"] == "completed"
    # Below the API's minimum of 16: refused, as api.openai.com does.
    err = error_of(raw.post(PATH, json=body(text, max_output_tokens=5)))
    assert (err["param"], err["code"]) == ("max_output_tokens", "integer_below_min_value")


def test_429_fault_with_retry_after(raw, clean_peer):
    clean_peer.fault("429", count=1, retry_after=7)
    r = raw.post(PATH, json=body("hi"))
    assert error_of(r, 429)["code"] == "rate_limit_exceeded"
    assert r.headers["retry-after"] == "7"
    assert post(raw, body("hi"))["output"][0]["content"][0]["text"] == PEER_PREFIX + "hi"
    log = clean_peer.requests()
    assert [(q["path"], q["fault"], q["outcome"]) for q in log] == [
        (PATH, "429", "status 429"),
        (PATH, None, "status 200"),
    ]


def test_drop_fault_cuts_the_stream(raw, clean_peer):
    clean_peer.fault("drop", count=1)
    events, error = stream(raw, body("a b c d e f g h"))
    assert error is not None, "the stream should break off"
    assert len(events) == 6 and not any(e["type"] in TERMINAL for e in events)
    assert [e["type"] for e in events[2:]] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
    ]
    # Not streamed, a drop is a connection cut without any answer.
    clean_peer.fault("drop", count=1)
    with pytest.raises(httpx.TransportError):
        raw.post(PATH, json=body("hi"))
    assert [q["outcome"] for q in clean_peer.requests()] == ["dropped", "dropped"]
