"""Upstream faults injected into the fake OpenAI peer.

Each test starts its own gateway so that cool-downs and circuit state from one
fault do not leak into the next test.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from schema import assert_valid
from support import PEER_KEYS, PEER_PREFIX, gateway_config, stream_raw

CHAT = "/v1/chat/completions"


def body(text: str, stream: bool = False, **extra) -> dict:
    b = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}
    if stream:
        b["stream"] = True
    return b


@pytest.fixture
def fresh(gateway_factory, clean_peer):
    """A gateway with only the peer pool, new for this test."""
    gw = gateway_factory(peer_url=clean_peer.url, demo=False, first_token_timeout="2s")
    return gw


def answer_text(resp_or_result, stream: bool) -> str:
    if stream:
        chunks = resp_or_result.chunks()
        for c in chunks:
            assert "error" not in c, f"error in stream: {c}"
            assert_valid("CreateChatCompletionStreamResponse", c)
        return "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])
    assert resp_or_result.status_code == 200, resp_or_result.text
    b = resp_or_result.json()
    assert_valid("CreateChatCompletionResponse", b)
    return b["choices"][0]["message"]["content"]


def send(gw, text: str, stream: bool, **extra):
    with gw.http() as c:
        if stream:
            res = stream_raw(c, CHAT, body(text, True, **extra))
            assert res.status == 200, f"status {res.status}: {res.body[:500]!r}"
            assert res.transport_error is None, res.transport_error
            assert res.done, "no [DONE]"
            return res
        return c.post(CHAT, json=body(text, **extra))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("mode", ["429", "500"])
def test_retryable_fault_fails_over_to_other_key(fresh, clean_peer, mode, stream):
    clean_peer.fault(mode, count=1, retry_after=1)
    res = send(fresh, f"failover after {mode}", stream)
    assert answer_text(res, stream) == PEER_PREFIX + f"failover after {mode}"
    log = clean_peer.requests()
    assert len(log) == 2, f"expected the faulted try plus one retry, upstream saw {[r['key'] for r in log]}"
    assert log[0]["key"] != log[1]["key"], "retry went to the same key"
    assert {log[0]["key"], log[1]["key"]} == set(PEER_KEYS)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_all_keys_rate_limited_gives_clean_answer(fresh, clean_peer, stream):
    clean_peer.fault("429", count=2, retry_after=1)
    with fresh.http() as c:
        res = stream_raw(c, CHAT, body("everyone is busy", stream))
    assert res.transport_error is None, res.transport_error
    if res.status == 200:
        # The gateway waited out the short Retry-After and tried again.
        if stream:
            assert res.done
            assert answer_text(res, True) == PEER_PREFIX + "everyone is busy"
        else:
            assert json.loads(res.body)["choices"][0]["message"]["content"] == PEER_PREFIX + "everyone is busy"
    else:
        # Nothing was sent yet: one clean error, not an SSE stream.
        assert res.status in (429, 503), f"got {res.status}: {res.body[:300]!r}"
        assert res.headers.get("content-type", "").startswith("application/json")
        assert_valid("ErrorResponse", json.loads(res.body))


def proxy_env(proxy: str, no_proxy: str) -> dict:
    return {"HTTP_PROXY": proxy, "http_proxy": proxy, "ALL_PROXY": "", "all_proxy": "", "NO_PROXY": no_proxy, "no_proxy": no_proxy}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_proxy_environment_applies_to_the_openai_kind(gateway_factory, clean_peer, stream):
    # Its chat calls skip reqwest for speed, but not the proxy settings every
    # other kind honours: with a proxy that is not there, nothing reaches
    # the upstream; with the upstream exempted by NO_PROXY, all is well.
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    proxy = f"http://127.0.0.1:{dead.getsockname()[1]}"  # bound, never listening
    try:
        gw = gateway_factory(peer_url=clean_peer.url, demo=False, env=proxy_env(proxy, ""))
        with gw.http() as c:
            r = c.post(CHAT, json=body("via the proxy", stream))
        assert r.status_code == 502, f"expected a bad-gateway error, got {r.status_code}: {r.text[:300]}"
        assert_valid("ErrorResponse", r.json())
        assert clean_peer.requests() == [], "the request went around the proxy"
        gw = gateway_factory(peer_url=clean_peer.url, demo=False, env=proxy_env(proxy, "127.0.0.1"))
        assert answer_text(send(gw, "exempt", stream), stream)
    finally:
        dead.close()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_upstream_redirect_is_not_followed(fresh, clean_peer, stream):
    # Following it would resend the request (and the key) to wherever it points.
    clean_peer.fault("redirect", count=10)
    with fresh.http() as c:
        r = c.post(CHAT, json=body("go elsewhere", stream))
    assert r.status_code == 502, f"expected a bad-gateway error, got {r.status_code}: {r.text[:300]}"
    err = r.json()
    assert_valid("ErrorResponse", err)
    assert "redirect" in err["error"]["message"], err
    log = clean_peer.requests()
    # One try and at most two retries (the default retry budget); a client
    # following redirects would have resent each try up to ten times.
    assert 2 <= len(log) <= 3, [(x["key"], x["fault"]) for x in log]
    assert {x["key"] for x in log} == set(PEER_KEYS), "the retry went to the other key"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_400_is_passed_through_not_retried(fresh, clean_peer, stream):
    clean_peer.fault("400", count=1)
    b = body("this will be rejected", stream)
    with fresh.http() as c:
        r = c.post(CHAT, json=b)
    assert r.status_code == 400, f"expected the peer's 400, got {r.status_code}: {r.text[:300]}"
    assert r.headers.get("content-type", "").startswith("application/json")
    err = r.json()
    assert_valid("ErrorResponse", err)
    assert "peer rejects this" in err["error"]["message"]
    assert len(clean_peer.requests()) == 1, "a 400 from upstream must not be retried on another key"


def test_drop_mid_stream_is_reported_in_stream(fresh, clean_peer):
    clean_peer.fault("drop", count=1)
    text = "this stream will be cut off midway"
    with fresh.http() as c:
        res = stream_raw(c, CHAT, body(text, True))
    expected = PEER_PREFIX + text
    if res.status != 200:
        # A clean error before any data.
        assert_valid("ErrorResponse", json.loads(res.body))
        return
    assert res.transport_error is None, (
        f"gateway cut the HTTP stream instead of sending an error chunk: {res.transport_error}; lines={res.lines}"
    )
    assert not res.done, "a broken upstream stream must not end with [DONE]"
    chunks = res.chunks()
    errors = [c for c in chunks if "error" in c]
    assert errors, f"no error chunk in the stream: {res.lines}"
    assert chunks[-1] is errors[-1], "error chunk must be the last event"
    err = errors[-1]["error"]
    assert isinstance(err, dict) and err.get("message"), errors[-1]
    got = "".join(ch["delta"].get("content") or "" for c in chunks if "choices" in c for ch in c["choices"])
    assert expected.startswith(got), f"text was duplicated or altered: {got!r}"
    assert got != expected
    finishes = [ch.get("finish_reason") for c in chunks if "choices" in c for ch in c["choices"] if ch.get("finish_reason")]
    assert finishes == [], f"a cut stream must not claim finish_reason {finishes}"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_an_upstream_that_breaks_after_its_finish_still_gives_a_whole_answer(fresh, clean_peer, stream):
    """The upstream sent every finish_reason, then its connection broke
    before the usage chunk and [DONE]: the client has the whole answer, so it
    gets the protocol's normal end (usage counted locally), not an error, and
    the request is not sent again."""
    clean_peer.fault("drop_after_finish", count=1)
    text = "a whole answer whose line breaks at the end"
    res = send(fresh, text, stream, stream_options={"include_usage": True})
    assert answer_text(res, stream) == PEER_PREFIX + text
    if stream:
        chunks = res.chunks()
        finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch.get("finish_reason")]
        assert finishes == ["stop"], finishes
        usage = chunks[-1].get("usage")
    else:
        assert res.json()["choices"][0]["finish_reason"] == "stop"
        usage = res.json().get("usage")
    assert usage and usage["completion_tokens"] > 0, usage
    sent = [q for q in clean_peer.requests() if q.get("outcome") in ("dropped", "completed")]
    assert [q["outcome"] for q in sent] == ["dropped"], sent


def test_drop_before_first_byte_is_retried(fresh, clean_peer):
    # Non-stream: the peer closes the connection without a response; nothing
    # reached the client yet, so the gateway retries on the other key.
    clean_peer.fault("drop", count=1)
    with fresh.http() as c:
        r = c.post(CHAT, json=body("dropped then retried"))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == PEER_PREFIX + "dropped then retried"
    keys = [q["key"] for q in clean_peer.requests()]
    assert len(keys) == 2 and keys[0] != keys[1], keys


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_quirky_sse_is_parsed(fresh, clean_peer, stream):
    # Only streamed upstream answers have SSE quirks; the gateway may stream
    # from upstream even for a non-stream client.
    clean_peer.fault("quirky", count=1)
    text = "quirky framing should not matter at all"
    extra = {"stream_options": {"include_usage": True}} if stream else {}
    res = send(fresh, text, stream, **extra)
    assert answer_text(res, stream) == PEER_PREFIX + text
    if stream:
        chunks = res.chunks()
        assert chunks[-1].get("usage") and chunks[-1]["choices"] == []
        finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch.get("finish_reason")]
        assert finishes == ["stop"]
    assert len(clean_peer.requests()) == 1, "a parseable upstream answer was retried"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_no_usage_upstream_is_counted(fresh, clean_peer, stream):
    clean_peer.fault("no_usage", count=1)
    text = "count these words for me"
    extra = {"stream_options": {"include_usage": True}} if stream else {}
    res = send(fresh, text, stream, **extra)
    assert answer_text(res, stream) == PEER_PREFIX + text
    if stream:
        usage = res.chunks()[-1].get("usage")
    else:
        usage = res.json().get("usage")
    assert usage, "no usage reported when the upstream sent none"
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_hang_hits_first_token_timeout_and_fails_over(fresh, clean_peer, stream):
    # first_token_timeout is 2s in this gateway; the peer would hang for 10s.
    clean_peer.fault("hang", count=1, seconds=10)
    t0 = time.monotonic()
    with fresh.http(timeout=20) as c:
        res = stream_raw(c, CHAT, body("slow upstream", stream))
    elapsed = time.monotonic() - t0
    assert elapsed < 9, f"the first-token timeout did not fire ({elapsed:.1f}s)"
    assert res.transport_error is None, res.transport_error
    if res.status == 200:
        if stream:
            assert res.done
            assert answer_text(res, True) == PEER_PREFIX + "slow upstream"
        else:
            assert json.loads(res.body)["choices"][0]["message"]["content"] == PEER_PREFIX + "slow upstream"
        keys = [q["key"] for q in clean_peer.requests()]
        assert len(keys) == 2 and keys[0] != keys[1], keys
    else:
        assert res.status in (502, 503, 504), f"got {res.status}: {res.body[:300]!r}"
        assert_valid("ErrorResponse", json.loads(res.body))


def test_client_disconnect_cancels_upstream(fresh, clean_peer):
    # A slow upstream stream (0.3 s a chunk, ~3 s in all); the client reads
    # two chunks and hangs up. The upstream call must be cancelled at once.
    clean_peer.fault("slow", count=1, seconds=0.3)
    text = "a long answer " + " ".join(f"w{i}" for i in range(8))
    with fresh.http() as c:
        with c.stream("POST", CHAT, json=body(text, True)) as r:
            assert r.status_code == 200
            seen = 0
            for line in r.iter_lines():
                if line.startswith("data:"):
                    seen += 1
                    if seen >= 2:
                        break
    t0 = time.monotonic()
    outcome = None
    while time.monotonic() - t0 < 2.5:
        log = clean_peer.requests()
        assert len(log) == 1, [q["outcome"] for q in log]
        outcome = log[0]["outcome"]
        if outcome != "pending":
            break
        time.sleep(0.1)
    assert outcome == "client_disconnected", f"upstream stream was not cancelled (outcome {outcome!r})"
    # The slot is free again: a new request is served right away.
    with fresh.http(timeout=10) as c:
        r = c.post(CHAT, json=body("after disconnect"))
    assert r.status_code == 200, r.text


def test_upstream_connections_are_kept_and_reused(fresh, clean_peer):
    # Requests one after another: each account's requests all arrive on one
    # kept-alive connection instead of a new one each.
    for i in range(6):
        res = send(fresh, f"reuse {i}", stream=i % 2 == 1)
        assert answer_text(res, i % 2 == 1) == PEER_PREFIX + f"reuse {i}"
    log = clean_peer.requests()
    assert len(log) == 6, [(q["key"], q["outcome"]) for q in log]
    by_key: dict = {}
    for q in log:
        assert q["conn"], q
        by_key.setdefault(q["key"], []).append(q["conn"])
    assert max(len(conns) for conns in by_key.values()) >= 2, by_key
    for key, conns in by_key.items():
        assert len(set(conns)) == 1, f"{key}'s requests came on {len(set(conns))} connections: {conns}"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_connection_the_upstream_closes_is_not_reused(gateway_factory, clean_peer, tmp_path, stream):
    # One account, so a request sent on a dead connection would have no
    # other session to fail over to. The peer closes the connection after
    # its second answer; the next requests go on a new one and succeed.
    cfg = gateway_config(tmp_path / "one", clean_peer.url, demo=False)
    cfg = cfg[: cfg.index("  [[pools.accounts]]\n  name = \"k2\"")]
    assert cfg.count("[[pools.accounts]]") == 1, cfg
    gw = gateway_factory(config_text=cfg)
    send(gw, "before", stream)
    clean_peer.fault("close", count=1)
    for i in range(3):
        res = send(gw, f"around close {i}", stream)
        assert answer_text(res, stream) == PEER_PREFIX + f"around close {i}"
    log = clean_peer.requests()
    assert [q["fault"] for q in log] == [None, "close", None, None], [(q["fault"], q["outcome"]) for q in log]
    assert log[0]["conn"] == log[1]["conn"], "the first connection was not reused"
    closed = log[1]["conn"]
    assert log[2]["conn"] != closed and log[3]["conn"] == log[2]["conn"], [q["conn"] for q in log]


def test_a_connection_whose_body_ends_after_done_is_kept(gateway_factory, clean_peer, tmp_path):
    # The peer ends each body 30 ms after its [DONE]. The gateway reads on to
    # the body's end before letting the connection go, so one account's
    # requests keep using one connection.
    cfg = gateway_config(tmp_path / "one", clean_peer.url, demo=False)
    cfg = cfg[: cfg.index("  [[pools.accounts]]\n  name = \"k2\"")]
    gw = gateway_factory(config_text=cfg)
    clean_peer.fault("late_end", count=4, seconds=0.03)
    for i in range(4):
        res = send(gw, f"late end {i}", stream=i % 2 == 1)
        assert answer_text(res, i % 2 == 1) == PEER_PREFIX + f"late end {i}"
    log = clean_peer.requests()
    assert [q["fault"] for q in log] == ["late_end"] * 4, [(q["fault"], q["outcome"]) for q in log]
    assert len({q["conn"] for q in log}) == 1, [q["conn"] for q in log]


def test_rejected_credentials_fail_over(gateway_factory, clean_peer, tmp_path):
    # Account k1 has a key the peer does not accept: the peer's 401 makes the
    # gateway use k2, and every answer still succeeds.
    cfg = gateway_config(tmp_path / "badkey", clean_peer.url, demo=False).replace(
        f'api_key = "{PEER_KEYS[0]}"', 'api_key = "sk-revoked"'
    )
    assert "sk-revoked" in cfg
    gw = gateway_factory(config_text=cfg)
    with gw.http() as c:
        for i in range(4):
            r = c.post(CHAT, json=body(f"attempt {i}"))
            assert r.status_code == 200, f"request {i}: {r.status_code} {r.text[:300]}"
            assert r.json()["choices"][0]["message"]["content"] == PEER_PREFIX + f"attempt {i}"
    ok_keys = [q["key"] for q in clean_peer.requests() if q["outcome"] in ("status 200", "completed")]
    assert ok_keys == [PEER_KEYS[1]] * 4, [(q["key"], q["outcome"]) for q in clean_peer.requests()]


def test_retry_after_cools_the_key_down(fresh, clean_peer):
    # The key that answered 429 with Retry-After: 2 must get no request for
    # 2 s; the other key serves meanwhile (cooldown_max caps it at 300 s).
    retry_after = 2
    clean_peer.fault("429", count=1, retry_after=retry_after)
    with fresh.http() as c:
        for i in range(5):
            r = c.post(CHAT, json=body(f"during cool-down {i}"))
            assert r.status_code == 200, f"request {i}: {r.status_code} {r.text[:300]}"
            time.sleep(0.1)
    log = clean_peer.requests()
    limited = [q for q in log if q["fault"] == "429"]
    assert len(limited) == 1, [(q["key"], q["fault"]) for q in log]
    cooled_key, t429 = limited[0]["key"], limited[0]["time"]
    early = [
        (round(q["time"] - t429, 3), q["outcome"])
        for q in log
        if q["key"] == cooled_key and t429 < q["time"] < t429 + retry_after - 0.1
    ]
    assert early == [], (
        f"{cooled_key} answered 429 with Retry-After: {retry_after} but got requests "
        f"{[e[0] for e in early]} s later"
    )


def test_keepalive_comments_during_silence(gateway_factory, clean_peer):
    # The upstream pauses 0.7 s between chunks; with keepalive = 200ms the
    # gateway fills the silence with SSE comments.
    gw = gateway_factory(peer_url=clean_peer.url, demo=False, server_extra='keepalive = "200ms"')
    clean_peer.fault("slow", count=1, seconds=0.7)
    with gw.http() as c:
        res = stream_raw(c, CHAT, body("keep me alive", True, max_tokens=2))
    assert res.status == 200 and res.done, res.lines
    assert answer_text(res, True).split() == ["peer", "reply"]
    comments = [line for line in res.lines if line.startswith(":")]
    assert comments, f"no keep-alive comment in {len(res.lines)} lines over ~2 s of upstream silence"


def test_max_concurrency_is_enforced_and_excess_queues(gateway_factory, clean_peer, tmp_path):
    # One request at a time per account, two accounts: six concurrent slow
    # streams must all succeed, and no account ever serves two at once.
    from concurrent.futures import ThreadPoolExecutor

    cfg = gateway_config(tmp_path / "conc", clean_peer.url, demo=False).replace(
        "max_concurrency = 4", "max_concurrency = 1"
    )
    assert "max_concurrency = 1" in cfg
    gw = gateway_factory(config_text=cfg)
    clean_peer.fault("slow", count=6, seconds=0.1)

    def one(i: int) -> str:
        with gw.http(timeout=30) as c:
            res = stream_raw(c, CHAT, body(f"queued {i}", True))
            assert res.status == 200 and res.done, (res.status, res.body[:300])
            return answer_text(res, True)

    with ThreadPoolExecutor(max_workers=6) as pool:
        got = list(pool.map(one, range(6), timeout=60))
    assert got == [PEER_PREFIX + f"queued {i}" for i in range(6)]
    log = clean_peer.requests()
    assert len(log) == 6, [(q["key"], q["outcome"]) for q in log]
    for key in PEER_KEYS:
        spans = sorted((q["time"], q["end"]) for q in log if q["key"] == key)
        for (s1, e1), (s2, _e2) in zip(spans, spans[1:]):
            assert s2 >= e1 - 0.05, f"{key} served two requests at once: {spans}"


def test_readyz_503_when_a_model_has_no_ready_session(gateway_factory, clean_peer, tmp_path):
    # Both peer accounts have revoked keys and may restart only once: after a
    # few requests every session of gpt-4o-mini has failed, so /readyz must
    # say 503 while the demo model keeps working.
    cfg = gateway_config(tmp_path / "revoked", clean_peer.url)
    for k in PEER_KEYS:
        cfg = cfg.replace(f'"{k}"', f'"{k}-revoked"')
    cfg = cfg.replace(
        "\n[[pools]]",
        '\n[supervisor]\nmax_restarts = 1\nrestart_window = "60s"\nbackoff_initial = "10ms"\n\n[[pools]]',
        1,
    )
    gw = gateway_factory(config_text=cfg)
    with gw.http() as c:
        assert c.get("/readyz").status_code == 200, "ready before any upstream answered"
        ready = 200
        deadline = time.monotonic() + 10
        for _ in range(20):
            r = c.post(CHAT, json=body("knock knock"))
            assert r.status_code != 200, "a revoked key served a request"
            assert_valid("ErrorResponse", r.json())
            ready = c.get("/readyz").status_code
            if ready == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert ready == 503, "/readyz stayed 200 although gpt-4o-mini has no working session"
        r = c.post(CHAT, json=body("still failing"))
        assert r.status_code in (502, 503), r.text
        assert_valid("ErrorResponse", r.json())
        r = c.post(CHAT, json={"model": "demo", "messages": [{"role": "user", "content": "demo still up"}]})
        assert r.status_code == 200, r.text
        assert c.get("/healthz").status_code == 200
