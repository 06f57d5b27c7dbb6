"""A request task that fails (panics) still answers its client in the
client's protocol, frees its session slot, and is logged and counted.

The debug build carries a fault injector (`src/canonical/fault.rs`), armed
by `TROUPE_TEST_FAULTS=1`: a prompt with `troupe-test:panic-<place>` panics
in the handler, in the stream writer after the first bytes went out, or in
the session's upstream call.
"""

from __future__ import annotations

import json

import httpx
import pytest

import support
from support import GATEWAY_KEY, stream_raw
from support_chaos import full_stderr, start_gateway_env
from test_metrics import parse, value

CONFIG = """
[server]
listen = "127.0.0.1:0"
api_keys = [{key}]
data_dir = {data}
queue_timeout = "3s"

[[pools]]
name = "demo"
kind = "demo"
models = ["demo"]
# One slot: a slot a failed task kept would stall every later request.
sessions = 1
max_concurrency = 1
chunk_delay = "5ms"
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("panics")
    text = CONFIG.format(key=json.dumps(GATEWAY_KEY), data=json.dumps(str(tmp / "data")))
    with support.running(lambda: start_gateway_env(tmp, text, {"TROUPE_TEST_FAULTS": "1"})) as g:
        assert g.wait_ready(10)
        yield g


def client(gw) -> httpx.Client:
    return gw.http(timeout=30)


def openai_body(prompt: str, stream: bool) -> dict:
    return {"model": "demo", "stream": stream, "messages": [{"role": "user", "content": prompt}]}


def anthropic_body(prompt: str, stream: bool) -> dict:
    return {"model": "demo", "max_tokens": 64, "stream": stream, "messages": [{"role": "user", "content": prompt}]}


def test_a_panic_in_the_handler_is_an_error_in_the_callers_protocol(gw):
    with client(gw) as c:
        r = c.post("/v1/chat/completions", json=openai_body("troupe-test:panic-handler", False))
        assert r.status_code == 500, r.text
        assert r.json()["error"]["type"] == "server_error" and r.json()["error"]["code"] == "internal_error", r.text
        r = c.post(
            "/v1/messages",
            json=anthropic_body("troupe-test:panic-handler", False),
            headers={"anthropic-version": "2023-06-01"},
        )
        assert r.status_code == 500, r.text
        assert r.json()["type"] == "error" and r.json()["error"]["type"] == "api_error", r.text


def test_a_panic_mid_stream_ends_the_stream_with_the_protocols_error(gw):
    with client(gw) as c:
        res = stream_raw(c, "/v1/chat/completions", openai_body("troupe-test:panic-stream", True))
        assert res.status == 200 and res.transport_error is None, res.lines[-5:]
        chunks = res.chunks()
        assert any("choices" in ch for ch in chunks), "the first bytes should have gone out before the panic"
        assert "error" in chunks[-1] and chunks[-1]["error"]["type"] == "server_error", res.lines[-5:]
        assert not res.done, "an errored stream must not end with [DONE]"

        with c.stream(
            "POST",
            "/v1/messages",
            json=anthropic_body("troupe-test:panic-stream", True),
            headers={"anthropic-version": "2023-06-01"},
        ) as r:
            assert r.status_code == 200
            events = [line[len("event: ") :] for line in r.iter_lines() if line.startswith("event: ")]
        assert events[0] == "message_start" and events[-1] == "error", events
        assert "message_stop" not in events, events


def test_a_panic_in_the_upstream_call_is_retried_then_reported(gw):
    with client(gw) as c:
        r = c.post("/v1/chat/completions", json=openai_body("troupe-test:panic-session", False))
        assert r.status_code in (502, 503), r.text
        assert r.json()["error"]["type"] == "server_error", r.text


def test_failed_tasks_free_their_slot_and_are_logged_and_counted(gw):
    test_a_panic_in_the_handler_is_an_error_in_the_callers_protocol(gw)
    test_a_panic_mid_stream_ends_the_stream_with_the_protocols_error(gw)
    test_a_panic_in_the_upstream_call_is_retried_then_reported(gw)
    # The one slot is free again: requests after the failures are answered
    # (a kept slot would make each wait out the 3 s queue timeout and fail).
    with client(gw) as c:
        for i in range(3):
            r = c.post("/v1/chat/completions", json=openai_body(f"after {i}", False))
            assert r.status_code == 200, r.text
        m = parse(c.get("/metrics").text)
    for place in ("handler", "stream", "session"):
        assert value(m, "troupe_task_failures_total", where=place) >= 1, place
    assert "a request task panicked" in full_stderr(gw)
