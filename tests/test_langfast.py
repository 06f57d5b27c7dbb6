"""The ``socketio`` kind with the ``langfast`` preset, seen from outside:
anonymous sign-ups, one socket.io connection per session, cumulative chunk
events turned into deltas, runs sharing a socket, supervision of sign-ups
and sockets, and no leaked sockets or threads across reconnects.

Each test that changes the peer's or the gateway's state starts its own
langfast peer (tests/peers/langfast_peer.py) and gateway.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import time
from pathlib import Path
from typing import Callable, Iterator

import anthropic
import httpx
import pytest

import support
from support import GATEWAY_KEY, Gateway, Proc, restarts, wait_for

PEER_SCRIPT = support.TESTS_DIR / "peers" / "langfast_peer.py"
ANON_KEY = "anon-test-key"
ADMIN_KEY = "admin-test-key"
PROMPT_ID = "prompt-test-1"
MODEL = "lf-model"
PREFIX = "langfast reply to: "


class LangfastPeer(Proc):
    def control(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, trust_env=False)

    def fault(self, mode: str, count: int = 1) -> None:
        with self.control() as c:
            c.post("/_peer/faults", json={"mode": mode, "count": count}).raise_for_status()

    def stats(self) -> dict:
        with self.control() as c:
            return c.get("/_peer/stats").raise_for_status().json()

    def requests(self) -> list[dict]:
        with self.control() as c:
            return c.get("/_peer/requests").raise_for_status().json()["requests"]

    def disconnect_all(self) -> int:
        with self.control() as c:
            return c.post("/_peer/disconnect_all").raise_for_status().json()["disconnected"]


def start_peer(expires_in: int = 3600, chunk_delay: float = 0.01) -> LangfastPeer:
    args = ("--anon-key", ANON_KEY, "--chunk-delay", str(chunk_delay), "--expires-in", str(expires_in))
    return support.script_peer(LangfastPeer, "langfast-peer", PEER_SCRIPT, *args)


def config(tmp: Path, peer_url: str, accounts: int = 2, concurrency: int = 4) -> str:
    return support.server_toml(tmp, ADMIN_KEY) + f"""
[[pools]]
name = "langfast"
kind = "socketio"
preset = "langfast"
supabase_url = {json.dumps(peer_url)}
socket_url = {json.dumps(peer_url)}
anon_key = {json.dumps(ANON_KEY)}
prompt_id = {json.dumps(PROMPT_ID)}
models = [{json.dumps(MODEL)}]
max_accounts = {accounts}
max_concurrency = {concurrency}
  [pools.supervisor]
  backoff_initial = "50ms"
  backoff_max = "200ms"
  max_restarts = 1000
  restart_window = "60s"
"""


def sessions(gw: Gateway) -> list[dict]:
    return support.session_list(gw, ADMIN_KEY)


def all_ready(gw: Gateway, n: int) -> bool:
    s = sessions(gw)
    return len(s) == n and all(x["state"] == "ready" for x in s)


@pytest.fixture
def lf(tmp_path: Path) -> Iterator[tuple[LangfastPeer, Callable[..., Gateway]]]:
    """A fresh peer, and a factory of gateways in front of it."""
    peer = support.started(start_peer)
    started: list[Gateway] = []

    def make(accounts: int = 2, concurrency: int = 4, wait: bool = True) -> Gateway:
        d = tmp_path / f"gw{len(started)}"
        gw = support.started(lambda: support.start_gateway(d, config(d, peer.url, accounts, concurrency)))
        started.append(gw)
        if wait:
            wait_for("sessions ready", lambda: all_ready(gw, accounts))
        return gw

    yield peer, make
    for gw in started:
        gw.cleanup()
    peer.cleanup()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LangfastPeer, Gateway]]:
    """One peer and gateway for the tests that only read."""
    tmp = tmp_path_factory.mktemp("langfast")
    peer = start_peer()
    gw = support.start_gateway(tmp, config(tmp, peer.url))
    try:
        wait_for("sessions ready", lambda: all_ready(gw, 2))
        yield peer, gw
    finally:
        gw.cleanup()
        peer.cleanup()


def runs(peer: LangfastPeer) -> list[dict]:
    return [r for r in peer.requests() if r["path"].startswith("/functions/v1/initiate-prompt-run")]


# --------------------------------------------------------------------------
# answers through both frontends


def test_sessions_sign_up_and_connect_at_start(shared):
    peer, _ = shared
    stats = peer.stats()
    assert stats["signups"] == 2 and stats["open_sockets"] == 2, stats
    signups = [r for r in peer.requests() if r["path"] == "/auth/v1/signup"]
    assert len(signups) == 2
    for r in signups:
        assert r["apikey"] == ANON_KEY and r["bearer"] == ANON_KEY and r["body"] == {}


def test_openai_sdk_non_stream_and_stream(shared):
    peer, gw = shared
    client = support.make_client(gw.v1)
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello there"}])
    assert r.choices[0].message.content == PREFIX + "hello there"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.completion_tokens > 0  # counted locally
    text = "a somewhat longer question with several words in it"
    out = support.collect_sdk_stream(
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}], stream=True)
    )
    # Cumulative upstream content must turn into deltas: no repeated text.
    assert out["text"] == PREFIX + text
    assert len(out["text_parts"]) > 3
    assert out["finish"] == ["stop"]
    run = runs(peer)[-1]
    body = run["body"]
    assert run["apikey"] == ANON_KEY and run["bearer"].startswith("lf-at-")
    assert body["prompt_id"] == PROMPT_ID and body["test_cases"] == []
    assert body["prompt_meta"]["model"] == MODEL
    assert body["prompt_meta"]["response_format"] == "text" and body["prompt_meta"]["stream"] is True
    assert body["prompt_meta"]["messages"][-1] == {"role": "user", "content": text}


def test_anthropic_sdk_non_stream_and_stream(shared):
    _, gw = shared
    client = anthropic.Anthropic(base_url=gw.url, api_key=GATEWAY_KEY, max_retries=0, timeout=30)
    msg = client.messages.create(
        model=MODEL, max_tokens=100, system="be brief", messages=[{"role": "user", "content": "hi from claude"}]
    )
    assert [b.text for b in msg.content if b.type == "text"] == [PREFIX + "hi from claude"]
    assert msg.stop_reason == "end_turn"
    with client.messages.stream(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "stream it please"}]
    ) as stream:
        deltas = [t for t in stream.text_stream]
        final = stream.get_final_message()
    assert "".join(deltas) == PREFIX + "stream it please"
    assert final.stop_reason == "end_turn"


def test_sampling_parameters_are_dropped(shared):
    peer, gw = shared
    client = support.make_client(gw.v1)
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "warm"}], temperature=0.2, top_p=0.5, max_tokens=50
    )
    assert r.choices[0].message.content == PREFIX + "warm"
    body = runs(peer)[-1]["body"]
    assert set(body["prompt_meta"]) == {"model", "messages", "response_format", "stream"}
    assert all(r["status"] == 200 for r in runs(peer))


def test_concurrent_runs_share_sockets_without_mixing(shared):
    peer, gw = shared
    before = peer.stats()
    client = support.make_client(gw.v1)
    texts = [f"question number {i} " + "word " * (i % 4) for i in range(12)]

    def ask(text: str) -> str:
        out = support.collect_sdk_stream(
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}], stream=True)
        )
        return out["text"]

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, texts))
    assert answers == [PREFIX + t for t in texts]
    after = peer.stats()
    # Still the same two sockets: runs shared them.
    assert after["connects"] == before["connects"] and after["open_sockets"] == 2


def test_runs_without_jobs_are_matched_by_run_id(lf):
    peer, make = lf
    gw = make(accounts=1)
    peer.fault("no_jobs", 2)
    client = support.make_client(gw.v1)
    for text in ("first", "second"):
        r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}])
        assert r.choices[0].message.content == PREFIX + text


# --------------------------------------------------------------------------
# supervision


def test_a_failing_sign_up_heals_by_restart(lf):
    peer, make = lf
    peer.fault("signup_fail", 3)
    gw = make(accounts=1, wait=False)
    wait_for("the session to become ready", lambda: all_ready(gw, 1))
    events = [e for e in restarts(gw) if e["event"] == "restart"]
    assert len(events) >= 3, events
    assert all("500" in e["reason"] for e in events[:3]), events
    assert sessions(gw)[0]["restarts"] >= 3
    stats = peer.stats()
    assert stats["signups"] == 1 and stats["open_sockets"] == 1, stats
    r = support.make_client(gw.v1).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "ok?"}])
    assert r.choices[0].message.content == PREFIX + "ok?"


def test_a_mid_stream_disconnect_ends_with_an_error_and_the_session_reconnects(lf):
    peer, make = lf
    gw = make(accounts=1)
    peer.fault("disconnect", 1)
    with gw.http() as c:
        res = support.stream_raw(
            c,
            "/v1/chat/completions",
            {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "one two three four five"}]},
        )
    assert res.status == 200
    chunks = res.chunks()
    text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch.get("choices"))
    assert text and (PREFIX + "one two three four five").startswith(text)
    assert "error" in chunks[-1], chunks[-1]
    assert not res.done
    wait_for(
        "a restart for the lost socket",
        lambda: [e for e in restarts(gw) if e["event"] == "restart" and "socket.io connection lost" in e["reason"]],
    )
    wait_for("the socket to come back", lambda: peer.stats()["open_sockets"] == 1 and all_ready(gw, 1))
    assert peer.stats()["signups"] == 1  # the account was still valid: reconnected, not re-signed-up
    r = support.make_client(gw.v1).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "again"}])
    assert r.choices[0].message.content == PREFIX + "again"


def test_an_anthropic_stream_broken_by_a_disconnect_ends_with_an_error_event(lf):
    peer, make = lf
    gw = make(accounts=1)
    peer.fault("disconnect", 1)
    client = anthropic.Anthropic(base_url=gw.url, api_key=GATEWAY_KEY, max_retries=0, timeout=30)
    got: list[str] = []
    with pytest.raises(anthropic.APIError):
        with client.messages.stream(
            model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "one two three four"}]
        ) as stream:
            for t in stream.text_stream:
                got.append(t)
    assert got and (PREFIX + "one two three four").startswith("".join(got))


def test_expiring_accounts_are_refreshed_ahead_of_expiry(tmp_path):
    peer = start_peer(expires_in=8)
    gw = None
    try:
        gw = support.start_gateway(tmp_path, config(tmp_path, peer.url, accounts=1))
        wait_for("the session to become ready", lambda: all_ready(gw, 1))
        # Refreshed about 1.6 s (a fifth of the lifetime) before expiry.
        wait_for("a refresh", lambda: peer.stats()["refreshes"] >= 1, timeout=15)
        wait_for("the refresh in the restart log", lambda: [e for e in restarts(gw) if e["event"] == "refresh"])
        stats = peer.stats()
        # The same user kept its socket: no new account, no reconnect.
        assert stats["signups"] == 1 and stats["connects"] == 1 and stats["open_sockets"] == 1, stats
        time.sleep(1)  # past the first token's expiry
        r = support.make_client(gw.v1).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "fresh"}])
        assert r.choices[0].message.content == PREFIX + "fresh"
        tokens = {x["bearer"] for x in runs(peer)}
        first = [x for x in peer.requests() if x["path"] == "/auth/v1/signup"]
        assert len(first) == 1 and len(tokens) == 1
        cached = json.loads(next((tmp_path / "data" / "credentials").rglob("*.json")).read_text())
        assert cached["access_token"] in tokens, "the credential cache holds the refreshed token"
    finally:
        if gw is not None:
            gw.cleanup()
        peer.cleanup()


# --------------------------------------------------------------------------
# leaks


def proc_counts(pid: int) -> tuple[int, int]:
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    threads = 0
    with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
    return fds, threads


def test_fifty_reconnects_leak_no_sockets_or_threads(lf):
    peer, make = lf
    gw = make(accounts=2)
    pid = gw.popen.pid
    client = support.make_client(gw.v1)

    def cycle() -> None:
        before = peer.stats()["connects"]
        assert peer.disconnect_all() == 2
        wait_for(
            "both sessions to reconnect",
            lambda: peer.stats()["connects"] >= before + 2 and peer.stats()["open_sockets"] == 2 and all_ready(gw, 2),
        )

    # Warm up: the first reconnect and request create lazily made resources.
    cycle()
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "warm"}])
    time.sleep(0.5)
    fds0, threads0 = proc_counts(pid)
    for i in range(50):
        cycle()
        if i % 10 == 0:
            r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"cycle {i}"}])
            assert r.choices[0].message.content == PREFIX + f"cycle {i}"
    stats = peer.stats()
    assert stats["open_sockets"] == 2 and stats["signups"] == 2, stats

    def settled() -> tuple[int, int] | None:
        fds, threads = proc_counts(pid)
        return (fds, threads) if fds <= fds0 + 4 and threads <= threads0 + 2 else None

    try:
        wait_for("fds and threads back to their start level", settled, timeout=10)
    except AssertionError:
        fds, threads = proc_counts(pid)
        raise AssertionError(f"after 50 reconnects: fds {fds0} -> {fds}, threads {threads0} -> {threads}")
    print(f"after 50 reconnects: fds {fds0} -> {proc_counts(pid)[0]}, threads {threads0} -> {proc_counts(pid)[1]}")
    restarts_seen = [e for e in restarts(gw) if e["event"] == "restart"]
    assert len(restarts_seen) >= 100, len(restarts_seen)


def test_retired_sessions_finish_their_streams_then_close_their_sockets(tmp_path):
    # A reload that retires a session mid-answer lets the answer end whole;
    # then the session, which nothing leases any more, must stop and close
    # its socket rather than linger holding an upstream connection.
    peer = support.started(lambda: start_peer(chunk_delay=0.15))
    d = tmp_path / "gw"
    gw = support.started(lambda: support.start_gateway(d, config(d, peer.url, accounts=2, concurrency=1)))
    try:
        wait_for("sessions ready", lambda: all_ready(gw, 2) and peer.stats()["open_sockets"] == 2)
        texts = [f"retire while answering number {i} of two" for i in range(2)]

        def ask(text: str) -> support.SSEResult:
            with gw.http() as c:
                body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": text}]}
                return support.stream_raw(c, "/v1/chat/completions", body)

        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(ask, t) for t in texts]
            # One answer on each session (max_concurrency 1), both running.
            wait_for("both runs to start", lambda: peer.stats()["runs"] >= 2)
            gw.config_path.write_text(config(d, peer.url, accounts=1, concurrency=1))
            with httpx.Client(base_url=gw.url, timeout=10, trust_env=False) as c:
                r = c.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
            assert r.status_code == 200, r.text
            assert not any(f.done() for f in futures), "the answers ended before the reload: nothing was retired mid-answer"
            results = [f.result(timeout=30) for f in futures]
        for text, res in zip(texts, results):
            chunks = res.chunks()
            assert res.status == 200 and res.done and not res.transport_error, res
            assert "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch.get("choices")) == PREFIX + text
        # The new pool's one session, and nothing left of the two retired.
        wait_for("the retired sessions' sockets to close", lambda: peer.stats()["open_sockets"] == 1, timeout=10)
        wait_for("one session ready", lambda: all_ready(gw, 1))
        r = support.make_client(gw.v1).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "after"}])
        assert r.choices[0].message.content == PREFIX + "after"
        time.sleep(1)
        assert peer.stats()["open_sockets"] == 1, peer.stats()
    finally:
        gw.cleanup()
        peer.cleanup()


# --------------------------------------------------------------------------
# configuration


def check(tmp_path: Path, pool: str) -> support.subprocess.CompletedProcess:
    path = support.write_config(tmp_path, f'[[pools]]\nname = "p"\nmodels = ["m"]\n{pool}\n', name="check.toml")
    return support.run_troupe(["check", "--config", str(path)])


def test_check_names_the_key_at_fault(tmp_path):
    good = (
        'kind = "socketio"\npreset = "langfast"\nsupabase_url = "http://127.0.0.1:1"\n'
        'socket_url = "http://127.0.0.1:1"\nanon_key = "secret-anon-value"\nprompt_id = "p"\n'
    )
    r = check(tmp_path, good + "min_accounts = 2\nmax_accounts = 3\n")
    assert r.returncode == 0, r.stderr
    assert "3 session(s)" in r.stdout
    assert "secret-anon-value" not in r.stdout + r.stderr
    cases = [
        (good.replace('anon_key = "secret-anon-value"\n', ""), "pools[0].anon_key"),
        (good.replace('prompt_id = "p"\n', ""), "pools[0].prompt_id"),
        (good.replace('supabase_url = "http://127.0.0.1:1"\n', ""), "pools[0].supabase_url"),
        (good.replace('preset = "langfast"', 'preset = "other"'), "pools[0].preset"),
        (good.replace('preset = "langfast"\n', ""), "pools[0].chunk_event"),
        (good + "min_accounts = 3\nmax_accounts = 2\n", "pools[0].max_accounts"),
        (good + 'base_url = "http://127.0.0.1:1"\n', "pools[0].base_url"),
        ('kind = "demo"\nprompt_id = "p"\n', "pools[0].prompt_id"),
        ('kind = "demo"\nmax_accounts = 2\n', "pools[0].max_accounts"),
    ]
    for pool, key in cases:
        r = check(tmp_path, pool)
        assert r.returncode == 2, (pool, r.stdout, r.stderr)
        assert key in r.stderr, (pool, r.stderr)
