"""The Responses API (``POST /v1/responses``) through the official ``openai``
Python SDK and raw HTTP, over the demo pool, an OpenAI-compatible pool and
an Anthropic pool (the module gateway of ``test_anthropic_sdk.py``).

Every body is validated against ``Response`` and every stream event against
``ResponseStreamEvent`` of the OpenAPI description; streams are checked for
the event grammar Codex and the SDKs rely on: numbered events, an item
``added`` before any of its deltas, ``done`` with the whole item, items
never overlapping, exactly one terminal event.
"""

from __future__ import annotations

import json
import httpx
import openai
import pydantic
import pytest

import support
from schema import assert_valid, assert_valid_stream_event
from support import DEMO_PREFIX, GATEWAY_KEY, PEER_PREFIX

from test_anthropic_sdk import (  # noqa: F401  (fixtures are used by name)
    A_PREFIX,
    a_peer,
    gw,
    last_body,
    o_peer,
    peers,
)

MODELS = ["demo", "gpt-4o-mini", "claude-peer"]
PREFIX = {"demo": DEMO_PREFIX, "gpt-4o-mini": PEER_PREFIX, "claude-peer": A_PREFIX}
TERMINAL = {"response.completed", "response.incomplete", "response.failed"}
DROPPED = "x-troupe-dropped"

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TIME = {
    "type": "function",
    "name": "get_time",
    "description": "Time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
def rc(gw) -> openai.OpenAI:
    return support.make_client(gw.v1)


@pytest.fixture
def http(gw):
    headers = {"authorization": f"Bearer {GATEWAY_KEY}"}
    with httpx.Client(base_url=gw.url, headers=headers, timeout=30, trust_env=False) as c:
        yield c


def stream_events(http: httpx.Client, body: dict, path: str = "/v1/responses") -> tuple[httpx.Response, list[dict]]:
    """POSTs a streamed request; returns the response and its events (each
    checked: the SSE `event:` name equals the data's `type`)."""
    events: list[dict] = []
    with http.stream("POST", path, json={**body, "stream": True}) as r:
        if r.status_code != 200:
            r.read()
            return r, events
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                ev = json.loads(line[len("data: "):])
                assert ev["type"] == name, f"SSE event name {name!r} differs from its type {ev['type']!r}"
                events.append(ev)
                name = None
    return r, events


def check_stream(events: list[dict]) -> dict:
    """Checks the grammar of a Responses stream and returns its final
    response object (from the terminal event)."""
    assert events, "empty stream"
    for ev in events:
        assert_valid_stream_event(ev)
    assert [e["sequence_number"] for e in events] == list(range(len(events))), "sequence numbers are not 0, 1, 2..."
    assert events[0]["type"] == "response.created"
    assert events[1]["type"] == "response.in_progress"
    terminal = [e for e in events if e["type"] in TERMINAL]
    assert len(terminal) == 1 and events[-1] is terminal[0], "not exactly one terminal event, last"
    resp_id = events[0]["response"]["id"]
    assert terminal[0]["response"]["id"] == resp_id
    open_item: dict | None = None
    added: dict[int, dict] = {}
    done: dict[int, dict] = {}
    text: dict[str, str] = {}
    args: dict[str, str] = {}
    for ev in events[2:-1]:
        t = ev["type"]
        if t == "response.output_item.added":
            assert open_item is None, f"item {ev['item']['id']} added while {open_item and open_item['id']} is open"
            assert ev["output_index"] == len(added), "output_index does not count up"
            open_item = ev["item"]
            added[ev["output_index"]] = ev["item"]
        elif t == "response.output_item.done":
            assert open_item is not None and ev["item"]["id"] == open_item["id"], "done for an item that is not open"
            done[ev["output_index"]] = ev["item"]
            open_item = None
        else:
            assert open_item is not None, f"{t} outside an item"
            assert ev["item_id"] == open_item["id"], f"{t} for another item than the open one"
            if t in ("response.output_text.delta", "response.reasoning_summary_text.delta"):
                text[ev["item_id"]] = text.get(ev["item_id"], "") + ev["delta"]
            elif t in ("response.function_call_arguments.delta", "response.custom_tool_call_input.delta"):
                args[ev["item_id"]] = args.get(ev["item_id"], "") + ev["delta"]
            elif t == "response.output_text.done" or t == "response.reasoning_summary_text.done":
                assert ev["text"] == text.get(ev["item_id"], ""), "done text differs from its deltas"
            elif t == "response.function_call_arguments.done":
                assert ev["arguments"] == args.get(ev["item_id"], ""), "done arguments differ from their deltas"
            elif t == "response.custom_tool_call_input.done":
                assert ev["input"] == args.get(ev["item_id"], ""), "done input differs from its deltas"
    assert open_item is None, "an item was never done"
    final = terminal[0]["response"]
    assert_valid("Response", final)
    assert final["output"] == [done[i] for i in range(len(done))], "the final output differs from the items done"
    return final


def output_text(resp: dict) -> str:
    return "".join(
        part["text"]
        for item in resp["output"]
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )


def calls(resp: dict) -> list[dict]:
    return [i for i in resp["output"] if i["type"] in ("function_call", "custom_tool_call")]


# --------------------------------------------------------------------------
# text


@pytest.mark.parametrize("model", MODELS)
def test_create_text(rc, peers, model):
    r = rc.responses.create(model=model, input="hello brave new world")
    assert r.object == "response"
    assert r.status == "completed"
    assert r.model == model
    assert r.output_text == PREFIX[model] + "hello brave new world"
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.id.startswith("resp_")


@pytest.mark.parametrize("model", MODELS)
def test_body_matches_schema(http, peers, model):
    r = http.post("/v1/responses", json={"model": model, "input": "schema check", "instructions": "be brief"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert_valid("Response", body)
    assert output_text(body) == PREFIX[model] + "schema check"
    assert body["instructions"] == "be brief"


@pytest.mark.parametrize("model", MODELS)
def test_stream_grammar_and_text(http, peers, model):
    r, events = stream_events(http, {"model": model, "input": "stream me a reply please"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    final = check_stream(events)
    assert final["status"] == "completed"
    assert output_text(final) == PREFIX[model] + "stream me a reply please"
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert len(deltas) > 1, "the answer was not streamed"
    assert final["usage"]["output_tokens"] > 0
    assert "cached_tokens" in final["usage"]["input_tokens_details"]
    assert "reasoning_tokens" in final["usage"]["output_tokens_details"]


@pytest.mark.parametrize("model", MODELS)
def test_sdk_stream_helper(rc, peers, model):
    with rc.responses.stream(model=model, input="helper stream") as s:
        text = "".join(ev.delta for ev in s if ev.type == "response.output_text.delta")
        final = s.get_final_response()
    assert text == PREFIX[model] + "helper stream"
    assert final.output_text == text
    assert final.status == "completed"


def test_instructions_and_developer_messages_become_the_system_prompt(rc, peers):
    _, o_peer = peers
    rc.responses.create(
        model="gpt-4o-mini",
        instructions="You are terse.",
        input=[
            {"role": "developer", "content": "Answer in English."},
            {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        ],
    )
    body = last_body(o_peer)
    system = [m for m in body["messages"] if m["role"] in ("system", "developer")]
    assert len(system) == 1
    assert "You are terse." in str(system[0]["content"]) and "Answer in English." in str(system[0]["content"])
    assert body["messages"][-1]["role"] == "user"


def test_max_output_tokens_ends_incomplete(http, peers):
    body = {"model": "gpt-4o-mini", "input": "one two three four five six seven", "max_output_tokens": 3}
    r = http.post("/v1/responses", json=body)
    assert r.status_code == 200
    whole = r.json()
    assert_valid("Response", whole)
    assert whole["status"] == "incomplete"
    assert whole["incomplete_details"] == {"reason": "max_output_tokens"}
    _, events = stream_events(http, body)
    final = check_stream(events)
    assert events[-1]["type"] == "response.incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}


# --------------------------------------------------------------------------
# tools


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-peer"])
def test_function_call_and_its_output(rc, peers, model):
    r = rc.responses.create(model=model, input="use a tool please", tools=[WEATHER])
    fc = [i for i in r.output if i.type == "function_call"]
    assert len(fc) == 1
    assert fc[0].name == "get_weather"
    assert json.loads(fc[0].arguments) == {"q": "use a tool please"}
    assert fc[0].call_id
    # The next turn sends the call and its output back.
    r2 = rc.responses.create(
        model=model,
        tools=[WEATHER],
        input=[
            {"role": "user", "content": "use a tool please"},
            {"type": "function_call", "call_id": fc[0].call_id, "name": "get_weather", "arguments": fc[0].arguments},
            {"type": "function_call_output", "call_id": fc[0].call_id, "output": "sunny, 21 C"},
        ],
    )
    assert r2.output_text.endswith("saw tool result: sunny, 21 C")


def test_interleaved_parallel_calls_stream_as_whole_items(http, peers):
    directive = 'troupe-calls[interleave]: [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {"city": "Tokyo"}}]'
    _, events = stream_events(http, {"model": "gpt-4o-mini", "input": directive, "tools": [WEATHER, TIME]})
    final = check_stream(events)
    got = calls(final)
    assert [(c["name"], json.loads(c["arguments"])) for c in got] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"city": "Tokyo"}),
    ]
    assert [c["call_id"] for c in got] == ["call_peer_0", "call_peer_1"]


def test_custom_tool_round_trip(http, peers):
    """A free-form tool (Codex's apply_patch) goes to a chat upstream as a
    function taking one string, and comes back as a custom_tool_call."""
    _, o_peer = peers
    patch = "*** Begin Patch\n*** Add File: a.txt\n+hello\n*** End Patch"
    tool = {"type": "custom", "name": "apply_patch", "description": "Apply a patch",
            "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}}
    directive = "troupe-calls: " + json.dumps([{"name": "apply_patch", "arguments": {"input": patch}}])
    r = http.post("/v1/responses", json={"model": "gpt-4o-mini", "input": directive, "tools": [tool]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert_valid("Response", body)
    sent = last_body(o_peer)["tools"]
    assert sent[0]["function"]["name"] == "apply_patch"
    assert sent[0]["function"]["parameters"]["properties"]["input"]["type"] == "string"
    assert "start: /.+/" in sent[0]["function"]["description"]
    [call] = calls(body)
    assert call["type"] == "custom_tool_call"
    assert call["input"] == patch
    _, events = stream_events(http, {"model": "gpt-4o-mini", "input": directive, "tools": [tool]})
    final = check_stream(events)
    [call] = calls(final)
    assert call["type"] == "custom_tool_call" and call["input"] == patch
    assert any(e["type"] == "response.custom_tool_call_input.done" for e in events)
    # Its output goes back as a tool result.
    r2 = http.post("/v1/responses", json={"model": "gpt-4o-mini", "tools": [tool], "input": [
        {"role": "user", "content": "patch it"},
        {"type": "custom_tool_call", "call_id": call["call_id"], "name": "apply_patch", "input": patch},
        {"type": "custom_tool_call_output", "call_id": call["call_id"], "output": "Done!"},
    ]})
    assert r2.status_code == 200, r2.text
    assert output_text(r2.json()) == "peer saw tool result: Done!"
    msgs = last_body(o_peer)["messages"]
    assert json.loads(msgs[-2]["tool_calls"][0]["function"]["arguments"]) == {"input": patch}


def test_built_in_tools_are_left_out_and_named(http, peers):
    _, o_peer = peers
    body = {
        "model": "gpt-4o-mini",
        "input": "hello",
        "tools": [{"type": "web_search", "external_web_access": False}, WEATHER],
    }
    r = http.post("/v1/responses", json=body)
    assert r.status_code == 200, r.text
    assert "web_search tool" in r.headers[DROPPED].split(",")
    sent = last_body(o_peer)["tools"]
    assert [t["function"]["name"] for t in sent] == ["get_weather"]
    # Forcing it is an error naming the field.
    r = http.post("/v1/responses", json={**body, "tool_choice": {"type": "web_search"}})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "tool_choice.type"
    assert "web_search" in err["message"]


# --------------------------------------------------------------------------
# structured output


class Weather(pydantic.BaseModel):
    city: str
    degrees: int


def test_parse_sends_the_schema_upstream(rc, peers):
    _, o_peer = peers
    directive = 'troupe-json: {"city": "Paris", "degrees": 21}'
    r = rc.responses.parse(model="gpt-4o-mini", input=directive, text_format=Weather)
    fmt = last_body(o_peer)["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "Weather"
    assert fmt["json_schema"]["strict"] is True
    assert set(fmt["json_schema"]["schema"]["properties"]) == {"city", "degrees"}
    assert r.output_parsed == Weather(city="Paris", degrees=21)


# --------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "body,param",
    [
        ({"input": "x"}, "model"),
        ({"model": "demo"}, "input"),
        ({"model": "demo", "input": [{"type": "bogus"}]}, "input[0].type"),
        ({"model": "demo", "input": [{"role": "user", "content": "a"}, {"type": "function_call", "name": "f"}]}, "input[1].call_id"),
        ({"model": "demo", "input": [{"role": "robot", "content": "a"}]}, "input[0].role"),
        ({"model": "demo", "input": [{"role": "user", "content": [{"type": "input_video"}]}]}, "input[0].content[0].type"),
        ({"model": "demo", "input": 5}, "input"),
        ({"model": "demo", "input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"model": "demo", "input": "x", "temperature": 3}, "temperature"),
        ({"model": "demo", "input": "x", "text": {"format": {"type": "json_schema"}}}, "text.format.schema"),
        ({"model": "demo", "input": "x", "background": True}, "background"),
        ({"model": "demo", "input": [{"role": "user", "content": "a"}, {"type": "item_reference", "id": "msg_1"}]},
         "input[1].type"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(http, body, param):
    r = http.post("/v1/responses", json=body)
    assert r.status_code == 400, r.text
    assert_valid("ErrorResponse", r.json())
    err = r.json()["error"]
    assert err["param"] == param, err
    assert err["type"] == "invalid_request_error"


def test_unknown_model_is_a_404_in_the_openai_envelope(http):
    r = http.post("/v1/responses", json={"model": "nope", "input": "x"})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"


def test_openai_prefix_route(http, peers):
    r = http.post("/openai/v1/responses", json={"model": "demo", "input": "prefixed"})
    assert r.status_code == 200
    assert output_text(r.json()) == DEMO_PREFIX + "prefixed"


def test_wrong_method_is_405(http):
    r = http.put("/v1/responses", json={})
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"


# --------------------------------------------------------------------------
# stored responses


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-peer"])
@pytest.mark.parametrize("streamed", [False, True])
def test_previous_response_id_continues_the_conversation(rc, peers, model, streamed):
    a_peer, o_peer = peers
    if streamed:
        with rc.responses.stream(model=model, input="remember kiwi", instructions="be kind") as s:
            for _ in s:
                pass
            first = s.get_final_response()
    else:
        first = rc.responses.create(model=model, input="remember kiwi", instructions="be kind")
    second = rc.responses.create(model=model, previous_response_id=first.id, input="what fruit?")
    assert second.output_text == PREFIX[model] + "what fruit?"
    assert second.previous_response_id == first.id
    body = last_body(o_peer if model == "gpt-4o-mini" else a_peer)
    texts = [(m["role"], m["content"] if isinstance(m["content"], str) else "".join(p.get("text", "") for p in m["content"]))
             for m in body["messages"] if m["role"] != "system"]
    assert texts == [
        ("user", "remember kiwi"),
        ("assistant", PREFIX[model] + "remember kiwi"),
        ("user", "what fruit?"),
    ]
    # Instructions are not carried over from the earlier response.
    if model == "gpt-4o-mini":
        assert not [m for m in body["messages"] if m["role"] == "system"]
    else:
        assert "system" not in body


def test_a_continued_tool_call_round_trip(rc, peers):
    first = rc.responses.create(model="gpt-4o-mini", input="use a tool please", tools=[WEATHER])
    [fc] = [i for i in first.output if i.type == "function_call"]
    second = rc.responses.create(
        model="gpt-4o-mini",
        tools=[WEATHER],
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": fc.call_id, "output": "rain"}],
    )
    assert second.output_text == "peer saw tool result: rain"


def test_get_input_items_and_delete(http, peers):
    r = http.post("/v1/responses", json={"model": "demo", "input": [
        {"role": "user", "content": "first words"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "second words"}]},
    ], "metadata": {"topic": "fruit"}})
    assert r.status_code == 200
    created = r.json()
    got = http.get(f"/v1/responses/{created['id']}")
    assert got.status_code == 200
    assert got.json() == created
    assert_valid("Response", got.json())
    assert got.json()["metadata"] == {"topic": "fruit"}
    items = http.get(f"/v1/responses/{created['id']}/input_items")
    assert items.status_code == 200
    listing = items.json()
    assert_valid("ResponseItemList", listing)
    assert [i["content"][0]["text"] for i in listing["data"]] == ["second words", "first words"]
    asc = http.get(f"/v1/responses/{created['id']}/input_items", params={"order": "asc", "limit": 1}).json()
    assert [i["content"][0]["text"] for i in asc["data"]] == ["first words"]
    assert asc["has_more"] is True
    assert http.head(f"/v1/responses/{created['id']}").status_code == 200
    d = http.delete(f"/v1/responses/{created['id']}")
    assert d.status_code == 200
    assert d.json() == {"id": created["id"], "object": "response", "deleted": True}
    for path in (f"/v1/responses/{created['id']}", f"/v1/responses/{created['id']}/input_items"):
        gone = http.get(path)
        assert gone.status_code == 404
        assert_valid("ErrorResponse", gone.json())
    assert http.delete(f"/v1/responses/{created['id']}").status_code == 404
    assert http.post(f"/v1/responses/{created['id']}").status_code == 405


def test_unknown_previous_response_is_a_404_naming_the_field(http, peers):
    r = http.post("/v1/responses", json={"model": "demo", "input": "x", "previous_response_id": "resp_nope"})
    assert r.status_code == 404
    assert r.json()["error"]["param"] == "previous_response_id"


def test_store_false_keeps_nothing(http, peers):
    r = http.post("/v1/responses", json={"model": "demo", "input": "forget me", "store": False})
    assert r.status_code == 200
    assert r.json()["store"] is False
    assert http.get(f"/v1/responses/{r.json()['id']}").status_code == 404
    r = http.post("/v1/responses", json={"model": "demo", "input": "x", "previous_response_id": r.json()["id"]})
    assert r.status_code == 404


def test_stored_responses_belong_to_their_api_key(gateway_factory, tmp_path):
    gw2 = gateway_factory(
        support.server_toml(tmp_path / "keys", None, api_keys=(GATEWAY_KEY, "sk-other"))
        + '\n[[pools]]\nname = "demo"\nkind = "demo"\nmodels = ["demo"]\n'
    )
    mine = httpx.Client(base_url=gw2.url, headers={"authorization": f"Bearer {GATEWAY_KEY}"}, trust_env=False)
    theirs = httpx.Client(base_url=gw2.url, headers={"authorization": "Bearer sk-other"}, trust_env=False)
    with mine, theirs:
        r = mine.post("/v1/responses", json={"model": "demo", "input": "private"})
        rid = r.json()["id"]
        assert mine.get(f"/v1/responses/{rid}").status_code == 200
        assert theirs.get(f"/v1/responses/{rid}").status_code == 404
        assert theirs.get(f"/v1/responses/{rid}/input_items").status_code == 404
        assert theirs.delete(f"/v1/responses/{rid}").status_code == 404
        cont = theirs.post("/v1/responses", json={"model": "demo", "input": "x", "previous_response_id": rid})
        assert cont.status_code == 404
        assert mine.get(f"/v1/responses/{rid}").status_code == 200


def test_namespaced_and_additional_tools_as_codex_sends_them(http, peers):
    """Codex groups tools in `namespace` tools (and sends some models their
    tools as an `additional_tools` input item); a call of a namespaced tool
    must come back with its `namespace` and bare name."""
    _, o_peer = peers
    ns = {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents", "tools": [
        {"type": "function", "name": "close_agent", "description": "Close one", "strict": False,
         "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}},
    ]}
    extra = {"type": "additional_tools", "id": "at_1", "role": "developer", "tools": [
        {"type": "namespace", "name": "functions", "description": "", "tools": [
            {"type": "function", "name": "wait", "parameters": {"type": "object", "properties": {}}}]},
    ]}
    directive = 'troupe-calls: [{"name": "multi_agent_v1__close_agent", "arguments": {"id": "a1"}}]'
    body = {"model": "gpt-4o-mini", "tools": [ns, WEATHER], "input": [extra, {"role": "user", "content": directive}]}
    r = http.post("/v1/responses", json=body)
    assert r.status_code == 200, r.text
    sent = [t["function"]["name"] for t in last_body(o_peer)["tools"]]
    assert sent == ["multi_agent_v1__close_agent", "get_weather", "functions__wait"]
    [call] = calls(r.json())
    assert (call["name"], call["namespace"]) == ("close_agent", "multi_agent_v1")
    assert_valid("Response", r.json())
    _, events = stream_events(http, body)
    [call] = calls(check_stream(events))
    assert (call["name"], call["namespace"]) == ("close_agent", "multi_agent_v1")
    # Sent back with its namespace, it is the same call upstream.
    back = {"model": "gpt-4o-mini", "tools": [ns], "input": [
        {"role": "user", "content": "close it"},
        {"type": "function_call", "call_id": "call_x", "name": "close_agent", "namespace": "multi_agent_v1", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_x", "output": "closed"},
    ]}
    r = http.post("/v1/responses", json=back)
    assert r.status_code == 200, r.text
    assert last_body(o_peer)["messages"][-2]["tool_calls"][0]["function"]["name"] == "multi_agent_v1__close_agent"


# --------------------------------------------------------------------------
# items beyond text


def test_input_image_reaches_an_openai_upstream_as_an_image_part(rc, peers):
    _, o_peer = peers
    pixel = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    r = rc.responses.create(model="gpt-4o-mini", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "what is in this picture?"},
        {"type": "input_image", "image_url": pixel},
    ]}])
    assert r.status == "completed"
    sent = last_body(o_peer)["messages"][-1]["content"]
    assert {"type": "text", "text": "what is in this picture?"} in sent, sent
    assert {"type": "image_url", "image_url": {"url": pixel}} in sent, sent


def test_an_input_image_by_file_id_is_named_as_dropped(http, peers):
    r = http.post("/v1/responses", json={"model": "gpt-4o-mini", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "and this one?"},
        {"type": "input_image", "file_id": "file-abc"},
    ]}]})
    assert r.status_code == 200, r.text
    assert "input_image file_id parts" in r.headers.get(DROPPED, ""), r.headers


def test_a_local_shell_call_and_its_output_go_upstream_as_a_tool_round(http, peers):
    _, o_peer = peers
    action = {"type": "exec", "command": ["ls", "-la"], "env": {}}
    r = http.post("/v1/responses", json={"model": "gpt-4o-mini", "input": [
        {"role": "user", "content": "list the files"},
        {"type": "local_shell_call", "id": "lsh_1", "call_id": "call_sh1", "status": "completed", "action": action},
        {"type": "local_shell_call_output", "call_id": "call_sh1", "output": "a.txt b.txt"},
    ]})
    assert r.status_code == 200, r.text
    messages = last_body(o_peer)["messages"]
    call = next(m for m in messages if m["role"] == "assistant")
    assert call["tool_calls"][0]["id"] == "call_sh1"
    assert call["tool_calls"][0]["function"]["name"] == "local_shell"
    assert json.loads(call["tool_calls"][0]["function"]["arguments"]) == action
    result = next(m for m in messages if m["role"] == "tool")
    assert result["tool_call_id"] == "call_sh1" and "a.txt b.txt" in json.dumps(result["content"])
    assert output_text(r.json()).endswith("saw tool result: a.txt b.txt")


def test_input_items_pages_with_after(http, peers):
    r = http.post("/v1/responses", json={"model": "demo", "input": [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
        {"role": "user", "content": "three"},
    ]})
    rid = r.json()["id"]
    page = http.get(f"/v1/responses/{rid}/input_items", params={"order": "asc", "limit": 1}).json()
    assert [i["content"][0]["text"] for i in page["data"]] == ["one"] and page["has_more"] is True
    nxt = http.get(f"/v1/responses/{rid}/input_items",
                   params={"order": "asc", "limit": 1, "after": page["last_id"]}).json()
    assert [i["content"][0]["text"] for i in nxt["data"]] == ["two"]
    assert_valid("ResponseItemList", nxt)
    rest = http.get(f"/v1/responses/{rid}/input_items", params={"order": "asc", "after": nxt["last_id"]}).json()
    assert [i["content"][0]["text"] for i in rest["data"]] == ["three"] and rest["has_more"] is False
