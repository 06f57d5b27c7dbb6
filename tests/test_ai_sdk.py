"""The Vercel AI SDK (npm ``ai``) as a real client of both frontends.

``tests/clients/ai_sdk/run.mjs`` runs one job with ``@ai-sdk/anthropic``
against the gateway's ``/v1/messages`` or with ``@ai-sdk/openai``'s
``.chat(model)`` against ``/v1/chat/completions`` or its default provider
(``openai(model)``, the Responses API) against ``/v1/responses``, and prints what the SDK
made of the answer (text, parsed tool calls, finish reason, usage, the
steps of a tool round trip, errors). Its pinned packages are installed by
``scripts/test.sh`` (``npm ci`` in that folder); if they are missing, the
first test installs them, and skips when npm or its registry is not there.

The key scenario: an OpenAI-compatible upstream streams two parallel tool
calls whose argument fragments interleave (call 0, call 1, call 0, ...),
as real servers do. Whichever frontend the SDK uses, and streamed or not,
it must get both calls with exactly the arguments the upstream sent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from typing import Any, Iterator

import httpx
import pytest

import support
from peers import openai_peer
from support import DEMO_PREFIX, GATEWAY_KEY, PEER_PREFIX, Gateway, PeerProc

AI_SDK_DIR = support.TESTS_DIR / "clients" / "ai_sdk"
RUN_MJS = AI_SDK_DIR / "run.mjs"
INSTALL_TIMEOUT = 300
RUN_TIMEOUT = 60
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")

PROVIDERS = ["anthropic", "openai", "responses"]
ENDPOINT = {"anthropic": "/v1/messages", "openai": "/v1/chat/completions", "responses": "/v1/responses"}
STREAMS = [pytest.param(False, id="generate"), pytest.param(True, id="stream")]

SEARCH_TOOL = {
    "name": "search",
    "description": "Search the web",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
    },
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
# installing and running the client


def installed() -> bool:
    """Every package pinned in package.json is in node_modules at its version."""
    pinned = json.loads((AI_SDK_DIR / "package.json").read_text(encoding="utf-8"))["dependencies"]
    for name, version in pinned.items():
        try:
            meta = json.loads((AI_SDK_DIR / "node_modules" / name / "package.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        if meta.get("version") != version:
            return False
    return True


@pytest.fixture(scope="session")
def node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: cannot run the AI SDK client")
    r = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    m = re.match(r"v(\d+)\.", r.stdout.strip())
    if not m or int(m.group(1)) < 18:
        pytest.skip(f"the AI SDK needs Node.js 18 or newer, found {r.stdout.strip() or r.stderr.strip()}")
    if installed():
        return node
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: cannot install the AI SDK (tests/clients/ai_sdk)")
    errors = []
    for attempt in range(2):  # one retry for a flaky network
        try:
            r = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=str(AI_SDK_DIR),
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            errors.append(f"attempt {attempt + 1}: npm ci timed out after {INSTALL_TIMEOUT}s")
            continue
        if r.returncode == 0 and installed():
            return node
        errors.append(f"attempt {attempt + 1}: exit {r.returncode}: {(r.stderr or r.stdout)[-1500:]}")
    text = "\n".join(errors)
    unreachable = any(
        s in text for s in ("ENOTFOUND", "ECONNREFUSED", "ETIMEDOUT", "EAI_AGAIN", "ECONNRESET", "network", "timed out")
    )
    if unreachable:
        pytest.skip(f"the npm registry is unreachable, cannot install the AI SDK:\n{text}")
    pytest.fail(f"npm ci in {AI_SDK_DIR} did not install the pinned packages:\n{text}", pytrace=False)


def run_job(node: str, job: dict, timeout: float = RUN_TIMEOUT) -> dict:
    """Runs one job with the AI SDK; its JSON result."""
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    job = {"timeoutMs": int((timeout - 10) * 1000), **job}
    try:
        r = subprocess.run(
            [node, str(RUN_MJS)],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=str(AI_SDK_DIR),
            env=env,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the AI SDK client did not finish within {timeout}s: {(e.stderr or '')[-2000:]}", pytrace=False)
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0 and lines, (
        f"run.mjs exited {r.returncode}\nstdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-3000:]}"
    )
    out = json.loads(lines[-1])
    out["_stderr"] = r.stderr[-2000:]
    return out


def show(out: dict) -> str:
    """The result without the request bodies, for assertion messages."""
    brief = {k: v for k, v in out.items() if k not in ("requests", "usage")}
    brief["requests"] = [(q["method"], q["url"], q["status"]) for q in out.get("requests", [])]
    return json.dumps(brief, indent=1)[:6000]


def job(gw: Gateway, provider: str, model: str, prompt: str, stream: bool, **extra: Any) -> dict:
    return {
        "provider": provider,
        "baseURL": gw.v1,
        "apiKey": GATEWAY_KEY,
        "model": model,
        "prompt": prompt,
        "stream": stream,
        "maxOutputTokens": 300,
        **extra,
    }


def calls_of(step: dict) -> list[tuple]:
    return [(c["toolCallId"], c["toolName"], c["input"]) for c in step["toolCalls"]]


def assert_requests_went_to(out: dict, gw: Gateway, provider: str) -> None:
    urls = [q["url"] for q in out["requests"]]
    assert urls and all(u == gw.url + ENDPOINT[provider] for u in urls), urls
    assert all(q["status"] == 200 for q in out["requests"]), [(q["url"], q["status"]) for q in out["requests"]]


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
    tmp = tmp_path_factory.mktemp("ai-sdk-gw")
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
# control: the peer really interleaves, and the SDK copes with it directly


def test_peer_streams_interleaved_parallel_call_fragments(fresh):
    """The scripted upstream sends what the scenario says: fragments of call
    0 and call 1 alternate, id/type/name only on a call's first fragment."""
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": INTERLEAVED_PROMPT}],
        "tools": [{"type": "function", "function": {k: WEATHER_TOOL[k] for k in ("name", "parameters")}}],
    }
    headers = {"Authorization": f"Bearer {support.PEER_KEYS[0]}"}
    with httpx.Client(base_url=fresh.url, headers=headers, timeout=10, trust_env=False) as c:
        got = support.stream_raw(c, "/v1/chat/completions", body)
    assert got.status == 200 and got.done, got.body
    parts = [tc for ch in got.chunks() for choice in ch["choices"] for tc in choice["delta"].get("tool_calls") or []]
    assert [tc["index"] for tc in parts] == [0, 1, 0, 1, 0, 1, 1, 1], parts
    heads = [tc for tc in parts if "id" in tc]
    assert [(tc["index"], tc["id"], tc["function"]["name"]) for tc in heads] == [
        (0, "call_peer_0", "get_weather"),
        (1, "call_peer_1", "get_weather"),
    ]
    assert all("name" not in tc["function"] for tc in parts if "id" not in tc), parts
    args = ["", ""]
    for tc in parts:
        args[tc["index"]] += tc["function"]["arguments"]
    assert [json.loads(a) for a in args] == [PARIS, TOKYO]
    finishes = [choice["finish_reason"] for ch in got.chunks() for choice in ch["choices"] if choice["finish_reason"]]
    assert finishes == ["tool_calls"]


@pytest.mark.parametrize("stream", STREAMS)
def test_sdk_reads_interleaved_calls_straight_from_the_peer(node, fresh, stream):
    """Without the gateway, @ai-sdk/openai assembles the interleaved calls
    right: a failure through the gateway is the gateway's."""
    out = run_job(
        node,
        {
            "provider": "openai",
            "baseURL": fresh.url + "/v1",
            "apiKey": support.PEER_KEYS[0],
            "model": "gpt-4o-mini",
            "prompt": INTERLEAVED_PROMPT,
            "tools": [WEATHER_TOOL],
            "stream": stream,
        },
    )
    assert out["error"] is None, show(out)
    assert calls_of(out) == EXPECTED_CALLS, show(out)


# --------------------------------------------------------------------------
# text


@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("model", ["demo", "gpt-4o-mini"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_text(node, gw, fresh, provider, model, stream):
    prompt = "hello from the vercel ai sdk"
    out = run_job(node, job(gw, provider, model, prompt, stream))
    assert out["error"] is None, show(out)
    answer = (DEMO_PREFIX if model == "demo" else PEER_PREFIX) + prompt
    assert out["text"] == answer, show(out)
    assert out["finishReason"] == "stop", show(out)
    assert out["toolCalls"] == []
    assert_requests_went_to(out, gw, provider)
    assert out["requests"][0]["body"].get("stream", False) is stream
    if stream:
        assert out["stream"]["textDeltas"] >= len(support.words(answer)) // 2, show(out)
    usage = out["usage"]
    assert usage["inputTokens"] > 0 and usage["outputTokens"] > 0, usage
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"], usage
    if model == "gpt-4o-mini":
        # The upstream's own usage reaches the client unchanged.
        (q,) = served(fresh)
        assert usage["outputTokens"] == len(support.words(answer)), usage
        assert usage["inputTokens"] == openai_peer.prompt_tokens(q["body"]["messages"], q["body"].get("tools")), usage


# --------------------------------------------------------------------------
# tools


@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_round_trip(node, gw, fresh, provider, stream):
    """The SDK gets a call, runs the tool, sends its result back and gets
    the final answer: two steps."""
    prompt = "use the search tool now"
    tool = dict(SEARCH_TOOL, result="found: {q}")
    out = run_job(node, job(gw, provider, "gpt-4o-mini", prompt, stream, tools=[tool], maxSteps=2))
    assert out["error"] is None, show(out)
    assert len(out["steps"]) == 2, show(out)
    first, second = out["steps"]
    assert first["finishReason"] == "tool-calls", show(out)
    assert calls_of(first) == [("call_peer_0", "search", {"q": prompt})], show(out)
    assert [c["invalid"] for c in first["toolCalls"]] == [False]
    assert first["toolResults"] == [{"toolCallId": "call_peer_0", "toolName": "search", "output": "found: " + prompt}]
    assert second["finishReason"] == "stop", show(out)
    assert out["text"] == "peer saw tool result: found: " + prompt, show(out)
    assert_requests_went_to(out, gw, provider)

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
    assert fwd[2]["tool_call_id"] == "call_peer_0"
    assert openai_peer.text_of(fwd[2]["content"]) == "found: " + prompt


@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_interleaved_parallel_tool_calls(node, gw, fresh, provider, stream):
    """The upstream streams two parallel calls with interleaved argument
    fragments (asked without ``stream``, it answers one plain two-call
    message; the gateway decides which it asks for). The SDK must get both
    with exactly the upstream's arguments, run both tools, and the upstream
    must get both calls and both results back unchanged."""
    tool = dict(WEATHER_TOOL, result="{city}: sunny")
    out = run_job(node, job(gw, provider, "gpt-4o-mini", INTERLEAVED_PROMPT, stream, tools=[tool], maxSteps=2))
    assert out["steps"], f"no step finished: {show(out)}"
    first = out["steps"][0]
    assert [c["invalid"] for c in first["toolCalls"]] == [False, False], (
        "the SDK could not parse the tool calls' arguments:\n" + show(out)
    )
    assert calls_of(first) == EXPECTED_CALLS, "tool calls garbled through the gateway:\n" + show(out)
    if stream:
        # What the SDK assembled from the gateway's own deltas.
        deltas = out["stream"]["toolInputDeltas"]
        assert {k: json.loads(v) for k, v in deltas.items()} == {"call_peer_0": PARIS, "call_peer_1": TOKYO}, show(out)
    assert first["finishReason"] == "tool-calls", show(out)
    assert out["error"] is None, show(out)
    assert len(out["steps"]) == 2, show(out)
    assert out["text"] == "peer saw tool result: Tokyo: sunny", show(out)
    assert out["finishReason"] == "stop"
    assert_requests_went_to(out, gw, provider)

    reqs = served(fresh)
    assert len(reqs) == 2, [q["outcome"] for q in fresh.requests()]
    fwd = reqs[1]["body"]["messages"]
    assert [m["role"] for m in fwd] == ["user", "assistant", "tool", "tool"], fwd
    assert forwarded_calls(fwd[1]) == EXPECTED_CALLS
    assert [(m["tool_call_id"], openai_peer.text_of(m["content"])) for m in fwd[2:]] == [
        ("call_peer_0", "Paris: sunny"),
        ("call_peer_1", "Tokyo: sunny"),
    ]


# --------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_unknown_model_is_a_404_for_the_sdk(node, gw, fresh, provider, stream):
    out = run_job(node, job(gw, provider, "no-such-model", "hello", stream))
    err = out["error"]
    assert err is not None and err["name"] == "AI_APICallError", show(out)
    assert err["statusCode"] == 404, show(out)
    assert "no-such-model" in err["message"] + str(err.get("responseBody")), show(out)
    assert fresh.requests() == []


@pytest.mark.parametrize("provider", PROVIDERS)
def test_bad_key_is_a_401_for_the_sdk(node, gw, fresh, provider):
    out = run_job(node, dict(job(gw, provider, "demo", "hello", False), apiKey="sk-wrong"))
    err = out["error"]
    assert err is not None and err["name"] == "AI_APICallError", show(out)
    assert err["statusCode"] == 401, show(out)
    assert out["text"] is None
