"""An `openai` pool with `api = "responses"`: the upstream is called at
`/v1/responses` (the test peer speaks the Responses API there, strictly:
unknown parameters, forged reasoning and `previous_response_id` are 400s),
and clients of all three protocols reach its models.
"""

from __future__ import annotations

import json
from typing import Iterator

import httpx
import pytest

import support
from schema import assert_valid
from support import GATEWAY_KEY, PEER_PREFIX, Gateway, PeerProc
from test_responses import calls, check_stream, output_text, stream_events

ADMIN_KEY = "admin-resp"
MODEL = "resp-4o"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CHAT_WEATHER = {"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}
LONG = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty"


def config_text(tmp, peer_url: str) -> str:
    q = support.toml_str
    return support.server_toml(tmp, ADMIN_KEY) + f"""
[[pools]]
name = "responses-peer"
kind = "openai"
api = "responses"
base_url = {q(peer_url.rstrip("/") + "/v1")}
models = ["{MODEL}=gpt-4o"]
max_concurrency = 4
{support.accounts_toml([("r1", support.PEER_KEYS[0]), ("r2", support.PEER_KEYS[1])])}"""


@pytest.fixture(scope="module")
def peer() -> Iterator[PeerProc]:
    with support.running(support.start_peer) as proc:
        yield proc


@pytest.fixture(scope="module")
def gw(peer: PeerProc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("responses-upstream-gw")
    with support.running_gateway(tmp, config_text(tmp, peer.url)) as gateway:
        yield gateway


@pytest.fixture
def up(peer: PeerProc, gw: Gateway) -> PeerProc:
    support.wait_sessions_usable(gw, ADMIN_KEY)
    peer.reset()
    return peer


@pytest.fixture
def http(gw: Gateway):
    with gw.http() as c:
        yield c


def bodies(peer: PeerProc) -> list[dict]:
    return [r["body"] for r in peer.requests() if r["path"].endswith("/responses")]


# --------------------------------------------------------------------------
# a Responses client: its own body, as it came


def test_a_responses_client_body_goes_as_it_came(http, up):
    body = {
        "model": MODEL,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "hello there"}]}],
        "instructions": "be brief",
        "prompt_cache_key": "k-1",
        "metadata": {"a": "b"},
        "max_output_tokens": 100,
    }
    r = http.post("/v1/responses", json=body)
    assert r.status_code == 200, r.text
    assert DROPPED not in r.headers
    assert output_text(r.json()) == PEER_PREFIX + "hello there"
    [sent] = bodies(up)
    assert sent == {**body, "model": "gpt-4o", "stream": True}


def test_encrypted_reasoning_goes_back_to_the_upstream(http, up):
    first = http.post("/v1/responses", json={
        "model": MODEL, "input": "think about it", "include": ["reasoning.encrypted_content"],
    }).json()
    assert_valid("Response", first)
    [reasoning] = [i for i in first["output"] if i["type"] == "reasoning"]
    assert reasoning["encrypted_content"].startswith("enc-peer-")
    assert reasoning["summary"][0]["text"] == "peer thinking about: think about it"
    # Handed back, the peer accepts it (a forged one would be a 400).
    second = http.post("/v1/responses", json={
        "model": MODEL, "include": ["reasoning.encrypted_content"],
        "input": [{"role": "user", "content": "think about it"}, *first["output"],
                  {"role": "user", "content": "and then"}],
    })
    assert second.status_code == 200, second.text
    assert output_text(second.json()).endswith("and then")


def test_streamed_reasoning_text_and_calls(http, up):
    directive = 'think first\ntroupe-calls: [{"name": "get_weather", "arguments": {"city": "Oslo"}}]'
    _, events = stream_events(http, {"model": MODEL, "input": directive, "tools": [WEATHER],
                                     "include": ["reasoning.encrypted_content"]})
    final = check_stream(events)
    [call] = calls(final)
    assert (call["name"], json.loads(call["arguments"])) == ("get_weather", {"city": "Oslo"})
    assert [i["type"] for i in final["output"]][0] == "reasoning"


def test_previous_response_id_is_resolved_by_troupe(http, up):
    """The peer refuses any previous_response_id: troupe sends the whole
    conversation instead of its own id."""
    first = http.post("/v1/responses", json={"model": MODEL, "input": "remember plums"}).json()
    second = http.post("/v1/responses", json={"model": MODEL, "input": "what fruit?", "previous_response_id": first["id"]})
    assert second.status_code == 200, second.text
    assert output_text(second.json()) == PEER_PREFIX + "what fruit?"
    sent = bodies(up)[-1]
    assert "previous_response_id" not in sent
    texts = [(i.get("role"), i["content"][0]["text"]) for i in sent["input"] if i.get("type") == "message"]
    assert texts == [("user", "remember plums"), ("assistant", PEER_PREFIX + "remember plums"), ("user", "what fruit?")]


# --------------------------------------------------------------------------
# Chat Completions and Messages clients: mapped into Responses


def test_chat_completions_client(gw, up):
    oc = support.make_client(gw.v1)
    r = oc.chat.completions.create(model=MODEL, messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "hi chat"}], max_tokens=50)
    assert r.choices[0].message.content == PEER_PREFIX + "hi chat"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    sent = bodies(up)[-1]
    assert sent["instructions"] == "sys"
    assert sent["max_output_tokens"] == 50 and sent["store"] is False
    s = support.collect_sdk_stream(oc.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "stream chat"}], stream=True))
    assert s["text"] == PEER_PREFIX + "stream chat"
    assert s["finish"] == ["stop"]


def test_chat_completions_tool_round_trip_and_reasoning(gw, up):
    oc = support.make_client(gw.v1)
    msgs = [{"role": "user", "content": "use a tool please"}]
    r = oc.chat.completions.create(model=MODEL, messages=msgs, tools=[CHAT_WEATHER])
    [tc] = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls"
    assert tc.function.name == "get_weather" and json.loads(tc.function.arguments) == {"q": "use a tool please"}
    msgs += [r.choices[0].message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": tc.id, "content": "cloudy"}]
    r2 = oc.chat.completions.create(model=MODEL, messages=msgs, tools=[CHAT_WEATHER])
    assert r2.choices[0].message.content == "peer saw tool result: cloudy"
    r3 = oc.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], reasoning_effort="low")
    assert bodies(up)[-1]["reasoning"] == {"effort": "low"}
    assert r3.choices[0].message.model_extra.get("reasoning_content") == "peer thinking about: x"


def test_anthropic_client(gw, up):
    ac = support.make_anthropic_client(gw.url)
    m = ac.messages.create(model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "hi anthropic"}])
    assert m.content[-1].text == PEER_PREFIX + "hi anthropic"
    with ac.messages.stream(model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "use a tool now"}],
                            tools=[{"name": "get_weather", "description": "w", "input_schema": WEATHER["parameters"]}]) as s:
        final = s.get_final_message()
    [tool_use] = [b for b in final.content if b.type == "tool_use"]
    assert tool_use.input == {"q": "use a tool now"}
    assert final.stop_reason == "tool_use"
    # The tool result goes back as a function_call_output.
    m2 = ac.messages.create(model=MODEL, max_tokens=100, messages=[
        {"role": "user", "content": "use a tool now"},
        {"role": "assistant", "content": [tool_use.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "hail"}]},
    ])
    assert m2.content[-1].text == "peer saw tool result: hail"
    sent = bodies(up)[-1]["input"]
    assert [i["type"] for i in sent] == ["message", "function_call", "function_call_output"]


def test_upstream_length_limit_maps_for_every_client(gw, http, up):
    oc = support.make_client(gw.v1)
    r = oc.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": LONG}], max_tokens=16)
    assert r.choices[0].finish_reason == "length"
    r = http.post("/v1/responses", json={"model": MODEL, "input": LONG, "max_output_tokens": 16})
    assert r.json()["status"] == "incomplete"


DROPPED = "x-troupe-dropped"
