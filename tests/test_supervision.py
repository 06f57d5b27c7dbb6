"""Session supervision seen from outside: restarts with backoff, giving up,
the restart log and its command, the admin API, credential refresh from a
key file, the circuit breaker, per-model rate-limit cool-downs, the drain on
SIGTERM, and that no secret leaks into any of it.

Every test starts its own small gateway (with an admin key) against one
fake OpenAI peer owned by this module, whose keys no other module uses.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

import support
from schema import assert_valid
from support import GATEWAY_KEY, PEER_PREFIX, Gateway, PeerProc, SSEResult, parse_sse_lines, run_troupe, stream_raw
from support_chaos import (
    CHAT,
    MODEL,
    Admin,
    chat_body,
    clear_faults,
    event_time,
    full_stderr,
    peer_pool_config,
    read_restart_log,
    secret,
    start_peer_with,
    wait_until,
)

KEY_A = secret("sk-sup-a")
KEY_B = secret("sk-sup-b")
POOL = "peer"

# Small, fast policy: restarts after ~100 ms, doubling; give up after 3.
FAST_SUPERVISOR = {
    "backoff_initial": "100ms",
    "backoff_multiplier": 2.0,
    "backoff_max": "5s",
    "max_restarts": 3,
    "restart_window": "60s",
    "retry_budget": 2,
}


# --------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def sup_peer() -> Iterator[PeerProc]:
    with support.running(lambda: start_peer_with([KEY_A, KEY_B])) as proc:
        yield proc


@pytest.fixture
def peer(sup_peer: PeerProc) -> Iterator[PeerProc]:
    sup_peer.reset()
    yield sup_peer
    sup_peer.reset()


@pytest.fixture
def start_gw(gateway_factory: Callable[..., Gateway]) -> Callable[..., Gateway]:
    """Starts gateways from config text; all are stopped after the test."""
    return lambda config_text, env=None: gateway_factory(config_text, env=env)


def two_accounts(**over: Any) -> list[dict]:
    a = {"name": "a", "api_key": KEY_A}
    b = {"name": "b", "api_key": KEY_B}
    a.update(over.get("a", {}))
    b.update(over.get("b", {}))
    return [a, b]


def ask(gw: Gateway, prompt: str, stream: bool = False, model: str = MODEL, key: str = GATEWAY_KEY) -> tuple[int, str]:
    """One request; (status, answer text) or (status, error body)."""
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=gw.url, headers=headers, timeout=30, trust_env=False) as c:
        if stream:
            res = stream_raw(c, CHAT, chat_body(prompt, True, model))
            if res.status != 200:
                return res.status, res.body.decode(errors="replace")
            assert res.transport_error is None, res.transport_error
            chunks = res.chunks()
            errors = [ch for ch in chunks if "error" in ch]
            assert not errors, f"error in stream: {errors}"
            assert res.done and not res.after_done, res.lines[-5:]
            return 200, "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])
        r = c.post(CHAT, json=chat_body(prompt, False, model))
        if r.status_code != 200:
            return r.status_code, r.text
        return 200, r.json()["choices"][0]["message"]["content"]


def ask_together(gw: Gateway, prompts: list[str], stream: bool = False, model: str = MODEL) -> list[tuple[int, str]]:
    """Requests sent at once, so that every free session gets one (sessions
    here take one request at a time)."""
    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        return list(pool.map(lambda p: ask(gw, p, stream, model), prompts, timeout=60))


def assert_all_answered(results: list[tuple[int, str]], prompts: list[str]) -> None:
    for (status, text), prompt in zip(results, prompts):
        assert status == 200, f"{prompt!r}: {status} {text[:300]}"
        assert text == PEER_PREFIX + prompt, f"{prompt!r}: got {text!r}"


def peer_outcomes(peer: PeerProc, key: str) -> list[dict]:
    return [q for q in peer.requests() if q["key"] == key]


def drive_to_give_up(gw: Gateway, admin: Admin, peer: PeerProc, session: str = "a", key: str = KEY_A) -> int:
    """Makes the peer refuse ``key`` and sends pairs of requests until the
    session has given up. Every request must still be answered (by the other
    account). Returns the number of requests sent."""
    peer.fault("401", count=10_000, key=key)
    sent = 0
    deadline = time.monotonic() + 30
    state = None
    for i in range(80):
        prompts = [f"give up round {i} left", f"give up round {i} right"]
        assert_all_answered(ask_together(gw, prompts), prompts)
        sent += 2
        state = admin.session(POOL, session)["state"]
        if state == "failed" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert state == "failed", f"{POOL}/{session} never gave up: {admin.session(POOL, session)}"
    return sent


def wait_events(data_dir: Path, pred: Callable[[list[dict]], bool], timeout: float = 5) -> list[dict]:
    """The restart log once ``pred`` holds for it (the log is written
    asynchronously)."""
    events = wait_until(lambda: (lambda evs: evs if pred(evs) else None)(read_restart_log(data_dir)), timeout)
    return events or read_restart_log(data_dir)


# --------------------------------------------------------------------------
# admin API access


def test_admin_api_needs_the_admin_key(start_gw, peer, tmp_path):
    admin_key = secret("adm")
    gw = start_gw(peer_pool_config(tmp_path / "on", peer.url, two_accounts(), admin_key=admin_key))
    paths = [("GET", "/admin/sessions"), ("GET", "/admin/restarts"), ("POST", f"/admin/sessions/{POOL}/a/reset")]
    with httpx.Client(base_url=gw.url, timeout=10, trust_env=False) as c:
        for method, path in paths:
            for headers in ({}, {"Authorization": "Bearer wrong-admin-key"}, {"Authorization": f"Bearer {GATEWAY_KEY}"}):
                r = c.request(method, path, headers=headers)
                assert r.status_code == 401, f"{method} {path} with {headers}: {r.status_code} {r.text[:200]}"
                assert r.json()["error"]["message"]
                assert admin_key not in r.text
        r = c.get("/admin/sessions", headers={"x-api-key": admin_key})
        assert r.status_code == 200, r.text
        r = c.get("/admin/restarts", params={"since": "yesterday-ish"}, headers={"Authorization": f"Bearer {admin_key}"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "since", r.text
        r = c.post(f"/admin/sessions/{POOL}/no-such/reset", headers={"Authorization": f"Bearer {admin_key}"})
        assert r.status_code == 404, r.text

    off = start_gw(peer_pool_config(tmp_path / "off", peer.url, two_accounts(), admin_key=None))
    with httpx.Client(base_url=off.url, timeout=10, trust_env=False) as c:
        for method, path in paths:
            for headers in ({}, {"Authorization": f"Bearer {admin_key}"}):
                r = c.request(method, path, headers=headers)
                assert r.status_code == 403, f"{method} {path} without admin_key: {r.status_code} {r.text[:200]}"
                assert "admin_key" in r.json()["error"]["message"]


# --------------------------------------------------------------------------
# restarts, give-up, the restart log


def test_refused_credentials_restart_with_backoff_then_give_up(start_gw, peer, tmp_path):
    admin_key = secret("adm")
    data_dir = tmp_path / "giveup" / "data"
    gw = start_gw(
        peer_pool_config(
            tmp_path / "giveup", peer.url, two_accounts(), admin_key=admin_key, supervisor=FAST_SUPERVISOR, max_concurrency=1
        )
    )
    admin = Admin(gw, admin_key)
    assert gw.wait_ready(10)
    t0 = time.time()
    drive_to_give_up(gw, admin, peer)

    # The admin API: `a` failed with the peer's reason, `b` serves.
    sessions = {s["session"]: s for s in admin.sessions()}
    a, b = sessions["a"], sessions["b"]
    assert a["state"] == "failed", a
    assert "Incorrect API key" in (a.get("reason") or ""), a
    assert "Incorrect API key" in (a.get("last_error") or ""), a
    assert a["restarts"] == FAST_SUPERVISOR["max_restarts"], a
    assert a["models"] == [MODEL] and a["max_concurrency"] == 1 and a["in_flight"] == 0, a
    assert b["state"] in ("ready", "busy") and b["restarts"] == 0, b
    assert_all_answered(ask_together(gw, ["after give up 1", "after give up 2"]), ["after give up 1", "after give up 2"])

    # The restart log: three restarts of `a`, then one give-up.
    events = wait_events(data_dir, lambda evs: any(e["event"] == "give_up" for e in evs))
    mine = [e for e in events if e["session"] == "a" and e["event"] in ("restart", "give_up")]
    assert [e["event"] for e in mine] == ["restart"] * 3 + ["give_up"], mine
    for e in mine:
        assert e["pool"] == POOL and "Incorrect API key" in e["reason"], e
        assert event_time(e) >= t0 - 1, e
    restarts = mine[:3]
    assert all(isinstance(e.get("backoff_ms"), int) and e["backoff_ms"] > 0 for e in restarts), restarts
    assert [e for e in events if e["session"] == "b" and e["event"] in ("restart", "give_up")] == []
    # Each refused request was first retried with a re-read key (none here).
    assert not any(e["event"] == "refresh" and "refresh failed" in e["reason"] for e in events), events

    # /admin/restarts shows the same events, with working filters.
    assert admin.restarts() == events
    assert admin.restarts(pool=POOL, session="a") == [e for e in events if e["session"] == "a"]
    assert admin.restarts(session="b") == [e for e in events if e["session"] == "b"]
    assert admin.restarts(pool="no-such-pool") == []
    assert admin.restarts(since="1h") == events

    # `troupe sessions` shows the live states.
    out = run_troupe(["sessions", "--url", gw.url, "--admin-key", admin_key])
    assert out.returncode == 0, out.stderr
    rows = {line.split()[1]: line.split() for line in out.stdout.splitlines()[1:] if line.strip()}
    assert out.stdout.splitlines()[0].split()[:4] == ["POOL", "SESSION", "STATE", "LOAD"], out.stdout
    assert rows["a"][0] == POOL and rows["a"][2] == "failed" and rows["a"][4] == "3", out.stdout
    assert rows["b"][2] in ("ready", "busy"), out.stdout
    assert "Incorrect API key" in out.stdout
    out = run_troupe(["sessions", "--url", gw.url, "--admin-key", admin_key, "--json"])
    assert out.returncode == 0, out.stderr
    listed = {s["session"]: s for s in map(json.loads, out.stdout.splitlines())}
    assert listed["a"]["state"] == "failed" and listed["b"]["state"] in ("ready", "busy"), listed
    bad = run_troupe(["sessions", "--url", gw.url, "--admin-key", "not-the-key"])
    assert bad.returncode != 0 and "401" in (bad.stderr + bad.stdout), (bad.returncode, bad.stdout, bad.stderr)

    # Last: the backoff grows with each consecutive restart (initial 100 ms,
    # x2, +-20 % jitter), which the attempt numbers must show too.
    assert [e["attempt"] for e in restarts] == [1, 2, 3], (
        f"consecutive restarts of a session whose every request is refused should count up; got "
        f"{[(e['attempt'], e['backoff_ms']) for e in restarts]}"
    )
    backoffs = [e["backoff_ms"] for e in restarts]
    for n, ms in enumerate(backoffs, start=1):
        nominal = 100 * 2 ** (n - 1)
        assert 0.8 * nominal - 1 <= ms <= 1.2 * nominal + 1, f"restart {n}: backoff {ms} ms, expected ~{nominal} ms: {backoffs}"


def test_restarts_command(start_gw, peer, tmp_path):
    admin_key = secret("adm")
    data_dir = tmp_path / "cmd" / "data"
    gw = start_gw(
        peer_pool_config(
            tmp_path / "cmd", peer.url, two_accounts(), admin_key=admin_key, supervisor=FAST_SUPERVISOR, max_concurrency=1
        )
    )
    admin = Admin(gw, admin_key)
    assert gw.wait_ready(10)
    drive_to_give_up(gw, admin, peer)
    events = wait_events(data_dir, lambda evs: any(e["event"] == "give_up" for e in evs))
    assert len(events) >= 4

    # Table: a header and one row per event, in order.
    out = run_troupe(["restarts", "--data-dir", str(data_dir)])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["TIME", "POOL", "SESSION", "EVENT", "ATTEMPT", "BACKOFF", "REASON"], lines[0]
    rows = lines[1:]
    assert len(rows) == len(events), out.stdout
    for row, e in zip(rows, events):
        cols = row.split()
        assert cols[:4] == [e["time"], e["pool"], e["session"], e["event"]], (row, e)
        assert cols[4] == str(e["attempt"]), (row, e)
        assert e["reason"] in row, (row, e)
    assert sum(1 for r in rows if r.split()[3] == "restart") == 3
    assert sum(1 for r in rows if r.split()[3] == "give_up") == 1

    # JSON lines: exactly the file's events.
    out = run_troupe(["restarts", "--data-dir", str(data_dir), "--json"])
    assert out.returncode == 0, out.stderr
    assert [json.loads(line) for line in out.stdout.splitlines()] == events

    def as_json(*args: str) -> list[dict]:
        res = run_troupe(["restarts", "--data-dir", str(data_dir), "--json", *args])
        assert res.returncode == 0, res.stderr
        return [json.loads(line) for line in res.stdout.splitlines()]

    assert as_json("--pool", POOL) == events
    assert as_json("--pool", "other") == []
    assert as_json("--session", "a") == [e for e in events if e["session"] == "a"]
    assert as_json("--pool", POOL, "--session", "b") == [e for e in events if e["session"] == "b"]
    assert as_json("--since", "1h") == events

    # --since leaves out older events: a copy of the log with one from 2020.
    old_dir = tmp_path / "old-log"
    old_dir.mkdir()
    old = dict(events[0], time="2020-01-02T03:04:05.678Z", reason="an old restart")
    lines = [json.dumps(old)] + (data_dir / "restarts.jsonl").read_text().splitlines()
    (old_dir / "restarts.jsonl").write_text("\n".join(lines) + "\n")
    res = run_troupe(["restarts", "--data-dir", str(old_dir), "--json"])
    assert [json.loads(x) for x in res.stdout.splitlines()] == [old] + events
    res = run_troupe(["restarts", "--data-dir", str(old_dir), "--json", "--since", "1h"])
    assert [json.loads(x) for x in res.stdout.splitlines()] == events
    res = run_troupe(["restarts", "--data-dir", str(old_dir), "--since", "1h"])
    assert "an old restart" not in res.stdout and len(res.stdout.splitlines()) == len(events) + 1

    # A data dir without a log is an error, not an empty table.
    res = run_troupe(["restarts", "--data-dir", str(tmp_path / "nowhere")])
    assert res.returncode != 0 and "restarts.jsonl" in res.stderr, (res.returncode, res.stderr)

    # --follow prints what was there, then new events as they happen.
    follow = subprocess.Popen(
        [str(support.troupe_bin()), "restarts", "--data-dir", str(data_dir), "--follow", "--json", "--session", "a"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    got: list[str] = []

    def read() -> None:
        assert follow.stdout is not None
        for line in follow.stdout:
            got.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        before = [e for e in events if e["session"] == "a"]
        assert wait_until(lambda: len(got) >= len(before), 10), f"--follow printed {got}"
        assert [json.loads(x) for x in got[: len(before)]] == before
        t_reset = time.time()
        clear_faults(peer)
        r = admin.reset(POOL, "a")
        assert r.status_code == 200, r.text
        assert wait_until(lambda: any(json.loads(x)["event"] == "reset" for x in got[len(before):]), 10), (
            f"--follow did not print the reset event; printed {got[len(before):]}"
        )
        new = [json.loads(x) for x in got[len(before):]]
        reset_ev = [e for e in new if e["event"] == "reset"][0]
        assert reset_ev["session"] == "a" and event_time(reset_ev) >= t_reset - 1, reset_ev
        assert all(e["session"] == "a" for e in new), new
        assert follow.poll() is None, "--follow exited on its own"
    finally:
        follow.kill()
        follow.wait(timeout=5)
        reader.join(timeout=5)


def test_reset_returns_a_failed_session_to_ready(start_gw, peer, tmp_path):
    admin_key = secret("adm")
    data_dir = tmp_path / "reset" / "data"
    gw = start_gw(
        peer_pool_config(
            tmp_path / "reset", peer.url, two_accounts(), admin_key=admin_key, supervisor=FAST_SUPERVISOR, max_concurrency=1
        )
    )
    admin = Admin(gw, admin_key)
    assert gw.wait_ready(10)
    drive_to_give_up(gw, admin, peer)

    # A failed session stays failed while nobody resets it.
    time.sleep(1.0)
    assert admin.session(POOL, "a")["state"] == "failed"

    clear_faults(peer)
    r = admin.reset(POOL, "a")
    assert r.status_code == 200 and r.json() == {"reset": True, "pool": POOL, "session": "a"}, r.text
    a = admin.wait_state(POOL, "a", ["ready"], timeout=5)
    assert not a.get("last_error") and "reason" not in a, a

    # It serves again: pairs of requests reach both keys.
    n_before = len(peer_outcomes(peer, KEY_A))
    for i in range(10):
        prompts = [f"after reset {i} x", f"after reset {i} y"]
        assert_all_answered(ask_together(gw, prompts), prompts)
        if len(peer_outcomes(peer, KEY_A)) > n_before:
            break
    served = [q for q in peer_outcomes(peer, KEY_A)[n_before:] if q["outcome"] in ("completed", "status 200")]
    assert served, "the reset session never served a request"
    events = wait_events(data_dir, lambda evs: any(e["event"] == "reset" for e in evs))
    resets = [e for e in events if e["event"] == "reset"]
    assert len(resets) == 1 and resets[0]["session"] == "a", resets
    # The give-up came before the reset, nothing failed after it.
    kinds = [e["event"] for e in events if e["session"] == "a"]
    assert kinds.index("give_up") < kinds.index("reset") and kinds[kinds.index("reset") + 1 :].count("restart") == 0, kinds

    # Last: the session's restart counter starts over with the reset, as
    # the admin API documents ("restarts since the session was created or
    # reset").
    a = admin.session(POOL, "a")
    assert a["restarts"] == 0, f"restarts not cleared by the reset: {a}"


def test_a_failed_session_comes_back_by_itself_when_its_upstream_does(start_gw, peer, tmp_path):
    """A single-account pool whose key the upstream refused for a while: the
    session gives up, then is tried again by itself (no operator), with a
    longer wait after each try that fails, and serves once the key works."""
    admin_key = secret("adm")
    data_dir = tmp_path / "revive" / "data"
    supervisor = dict(FAST_SUPERVISOR, failed_retry="1s", failed_retry_max="30s")
    gw = start_gw(
        peer_pool_config(
            tmp_path / "revive",
            peer.url,
            [{"name": "a", "api_key": KEY_A}],
            admin_key=admin_key,
            supervisor=supervisor,
            max_concurrency=1,
        )
    )
    admin = Admin(gw, admin_key)
    assert gw.wait_ready(10)
    peer.fault("401", count=10_000, key=KEY_A)

    def fail_until(state: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while admin.session(POOL, "a")["state"] != state:
            assert time.monotonic() < deadline, f"never {state}: {admin.session(POOL, 'a')}"
            status, _ = ask(gw, "refused")
            assert status != 200
            time.sleep(0.05)

    fail_until("failed", 30)
    # The upstream still refuses: the session revives by itself and, failing
    # again, gives up with a longer wait.
    events = wait_events(data_dir, lambda evs: any(e["event"] == "revive" for e in evs), timeout=10)
    assert any(e["event"] == "revive" for e in events), events
    admin.wait_state(POOL, "a", ["ready", "starting", "failed"], timeout=5)
    fail_until("failed", 30)
    events = wait_events(data_dir, lambda evs: sum(e["event"] == "give_up" for e in evs) >= 2)
    waits = [e["backoff_ms"] for e in events if e["event"] == "give_up"]
    assert len(waits) >= 2 and 800 <= waits[0] <= 1200 and 1600 <= waits[1] <= 2400, waits

    # The upstream takes the key again: nobody resets anything, and the
    # session serves within the (doubled) wait.
    clear_faults(peer)
    admin.wait_state(POOL, "a", ["ready"], timeout=10)
    status, text = ask(gw, "welcome back")
    assert (status, text) == (200, PEER_PREFIX + "welcome back")
    events = read_restart_log(data_dir)
    assert not any(e["event"] == "reset" for e in events), events
    revived = [e for e in events if e["event"] == "revive"]
    assert len(revived) >= 2 and all(e["reason"] for e in revived), revived


def test_restart_log_survives_a_gateway_restart(start_gw, peer, tmp_path):
    admin_key = secret("adm")
    data_dir = tmp_path / "shared-data"
    cfg = peer_pool_config(
        tmp_path / "first",
        peer.url,
        two_accounts(),
        admin_key=admin_key,
        supervisor=FAST_SUPERVISOR,
        max_concurrency=1,
        data_dir=data_dir,
    )
    gw = start_gw(cfg)
    admin = Admin(gw, admin_key)
    assert gw.wait_ready(10)
    drive_to_give_up(gw, admin, peer)
    events = wait_events(data_dir, lambda evs: any(e["event"] == "give_up" for e in evs))
    assert admin.restarts() == events
    gw.stop()
    assert gw.popen.returncode == 0, f"gateway exited {gw.popen.returncode}"
    after_stop = read_restart_log(data_dir)
    assert after_stop[: len(events)] == events

    clear_faults(peer)
    gw2 = start_gw(cfg)
    admin2 = Admin(gw2, admin_key)
    assert gw2.wait_ready(10)
    old = admin2.restarts()
    assert old[: len(after_stop)] == after_stop, "the restarted gateway lost the old restart log"
    assert admin2.restarts(session="a", since="1h")[:4] == [e for e in after_stop if e["session"] == "a"][:4]
    # A fresh process starts its sessions fresh; the history stays.
    assert admin2.session(POOL, "a")["state"] in ("ready", "busy")
    assert read_restart_log(data_dir)[: len(after_stop)] == after_stop


# --------------------------------------------------------------------------
# credential refresh


def test_refused_key_is_re_read_from_its_file(start_gw, peer, tmp_path):
    admin_key = secret("adm")
    data_dir = tmp_path / "refresh" / "data"
    key_file = tmp_path / "refresh" / "key-a.txt"
    key_file.parent.mkdir(parents=True)
    wrong = secret("sk-sup-revoked")
    key_file.write_text(wrong + "\n")
    gw = start_gw(
        peer_pool_config(
            tmp_path / "refresh",
            peer.url,
            [{"name": "a", "api_key_file": str(key_file)}],
            admin_key=admin_key,
            supervisor=FAST_SUPERVISOR,
        )
    )
    admin = Admin(gw, admin_key)
    assert gw.wait_ready(10)
    # The key is rotated on disk; the gateway still holds the old one.
    key_file.write_text(KEY_A + "\n")
    status, text = ask(gw, "after rotation")
    assert status == 200, text
    assert text == PEER_PREFIX + "after rotation"
    log = peer.requests()
    assert [(q["key"], q["outcome"]) for q in log] == [(wrong, "status 401"), (KEY_A, "completed")], [
        (q["key"], q["outcome"]) for q in log
    ]
    events = wait_events(data_dir, lambda evs: any(e["event"] == "refresh" for e in evs))
    refreshes = [e for e in events if e["event"] == "refresh"]
    assert len(refreshes) == 1 and refreshes[0]["session"] == "a" and refreshes[0]["pool"] == POOL, events
    assert not [e for e in events if e["event"] in ("restart", "give_up")], events
    a = admin.session(POOL, "a")
    assert a["state"] == "ready" and a["restarts"] == 0, a
    # The new key stays in use: no more refusals.
    status, text = ask(gw, "streamed after rotation", stream=True)
    assert status == 200 and text == PEER_PREFIX + "streamed after rotation", text
    assert [q["key"] for q in peer.requests()[2:]] == [KEY_A]


# --------------------------------------------------------------------------
# circuit breaker


def test_repeated_5xx_open_the_circuit_and_a_trial_closes_it(start_gw, peer, tmp_path):
    admin_key = secret("adm")
    data_dir = tmp_path / "circuit" / "data"
    supervisor = dict(FAST_SUPERVISOR, circuit_threshold=2, cooldown_initial="1s", cooldown_max="10s")
    gw = start_gw(
        peer_pool_config(
            tmp_path / "circuit", peer.url, two_accounts(), admin_key=admin_key, supervisor=supervisor, max_concurrency=1
        )
    )
    admin = Admin(gw, admin_key)
    assert gw.wait_ready(10)
    peer.fault("500", count=10_000, key=KEY_A)

    # Every request succeeds (retried on b) while a's circuit opens.
    seen_cooling = None
    deadline = time.monotonic() + 20
    for i in range(60):
        prompts = [f"circuit {i} x", f"circuit {i} y"]
        assert_all_answered(ask_together(gw, prompts), prompts)
        a = admin.session(POOL, "a")
        if a["state"] == "cooling_down":
            seen_cooling = a
            break
        if time.monotonic() > deadline:
            break
    assert seen_cooling is not None, f"a never cooled down: {admin.session(POOL, 'a')}"
    assert "circuit open" in seen_cooling.get("reason", ""), seen_cooling
    assert 0 < seen_cooling["cooldown_seconds_left"] <= 1.2 + 0.05, seen_cooling
    assert admin.session(POOL, "b")["state"] in ("ready", "busy")
    failed_a = [q for q in peer_outcomes(peer, KEY_A) if q["outcome"] == "status 500"]
    assert len(failed_a) == 2, f"circuit_threshold is 2 but a took {len(failed_a)} failures before opening"

    # Keep the traffic going through a trial or two that fail again.
    t_end = time.monotonic() + 3.5
    i = 0
    while time.monotonic() < t_end and i < 200:
        prompts = [f"open {i} x", f"open {i} y"]
        assert_all_answered(ask_together(gw, prompts), prompts)
        i += 1
        time.sleep(0.05)

    clear_faults(peer)
    # Without traffic the cool-down ends in `trial`...
    a = admin.wait_state(POOL, "a", ["trial", "ready"], timeout=12)
    # ...and the trial request brings it back to ready.
    deadline = time.monotonic() + 15
    i = 0
    while a["state"] != "ready" and time.monotonic() < deadline and i < 200:
        prompts = [f"trial {i} x", f"trial {i} y"]
        assert_all_answered(ask_together(gw, prompts), prompts)
        a = admin.session(POOL, "a")
        i += 1
    assert a["state"] == "ready", a

    events = wait_events(data_dir, lambda evs: any(e["event"] == "cooldown_end" for e in evs))
    cooldowns = [e for e in events if e["session"] == "a" and e["event"] == "cooldown"]
    assert cooldowns and all("circuit open" in e["reason"] for e in cooldowns), cooldowns
    # Consecutive openings double the cool-down (+-20 %).
    for n, e in enumerate(cooldowns, start=1):
        nominal = 1000 * 2 ** (n - 1)
        assert 0.8 * nominal - 1 <= e["backoff_ms"] <= 1.2 * nominal + 1, (n, cooldowns)
    ends = [e for e in events if e["session"] == "a" and e["event"] == "cooldown_end"]
    assert ends and event_time(ends[-1]) >= event_time(cooldowns[-1]), events
    assert not [e for e in events if e["event"] in ("restart", "give_up")], events
    assert not [e for e in events if e["session"] == "b"], events

    # While cooling down, a got no request at all.
    log = peer_outcomes(peer, KEY_A)
    for e in cooldowns:
        start = event_time(e)
        end = start + e["backoff_ms"] / 1000.0
        early = [round(q["time"] - start, 3) for q in log if start + 0.05 < q["time"] < end - 0.05]
        assert early == [], f"a got requests {early} s into a {e['backoff_ms']} ms cool-down"


# --------------------------------------------------------------------------
# rate limits


def test_retry_after_cools_only_that_model_on_that_key(start_gw, peer, tmp_path):
    admin_key = secret("adm")
    data_dir = tmp_path / "ratelimit" / "data"
    gw = start_gw(
        peer_pool_config(
            tmp_path / "ratelimit",
            peer.url,
            two_accounts(),
            admin_key=admin_key,
            supervisor=FAST_SUPERVISOR,
            models=[MODEL, "gpt-4o", f"mini-alias={MODEL}"],
            max_concurrency=1,
        )
    )
    admin = Admin(gw, admin_key)
    assert gw.wait_ready(10)
    retry_after = 4
    peer.fault("429", count=1, key=KEY_A, retry_after=retry_after)
    for i in range(20):
        prompts = [f"limited {i} x", f"limited {i} y"]
        assert_all_answered(ask_together(gw, prompts), prompts)
        if any(q["fault"] == "429" for q in peer.requests()):
            break
    limited = [q for q in peer.requests() if q["fault"] == "429"]
    assert len(limited) == 1 and limited[0]["key"] == KEY_A, limited
    t429 = limited[0]["time"]

    sessions = {s["session"]: s for s in admin.sessions()}
    a, b = sessions["a"], sessions["b"]
    assert a["state"] in ("ready", "busy"), f"a 429 on one model must not cool the whole account: {a}"
    cooled = {c["model"]: c["seconds_left"] for c in a.get("model_cooldowns", [])}
    assert set(cooled) == {MODEL, "mini-alias"}, a
    assert all(0 < s <= retry_after for s in cooled.values()), a
    assert not b.get("model_cooldowns"), b

    # gpt-4o still goes to a; gpt-4o-mini does not, until Retry-After passed.
    n_before = len(peer.requests())
    for i in range(10):
        prompts = [f"other model {i} x", f"other model {i} y"]
        assert_all_answered(ask_together(gw, prompts, model="gpt-4o"), prompts)
        prompts = [f"same model {i} x", f"same model {i} y"]
        assert_all_answered(ask_together(gw, prompts, model=MODEL), prompts)
        if time.time() > t429 + retry_after - 1.5:
            break
    window = [q for q in peer.requests()[n_before:] if q["time"] < t429 + retry_after - 0.1]
    assert any(q["key"] == KEY_A and q["body"]["model"] == "gpt-4o" for q in window), [
        (q["key"], q["body"]["model"]) for q in window
    ]
    early = [round(q["time"] - t429, 2) for q in window if q["key"] == KEY_A and q["body"]["model"] == MODEL]
    assert early == [], f"a got {MODEL} requests {early} s after a 429 with Retry-After: {retry_after}"

    events = wait_events(data_dir, lambda evs: any(e["event"] == "cooldown" for e in evs))
    cds = [e for e in events if e["event"] == "cooldown"]
    assert len(cds) == 1 and cds[0]["session"] == "a", events
    assert cds[0]["backoff_ms"] == retry_after * 1000 and MODEL in cds[0]["reason"], cds

    # The cool-down ends on its own.
    assert wait_until(lambda: not admin.session(POOL, "a").get("model_cooldowns"), retry_after + 2)


# --------------------------------------------------------------------------
# drain on SIGTERM


class StreamInThread:
    """A streaming request read in a thread; ``content`` is set at the first
    text delta."""

    def __init__(self, gw: Gateway, prompt: str):
        self.result: SSEResult | None = None
        self.error: str | None = None
        self.content = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(gw.url, prompt), daemon=True)
        self.thread.start()

    def _tap(self, lines: Iterator[str]) -> Iterator[str]:
        for line in lines:
            if line.startswith("data:") and '"content":"' in line and '"content":""' not in line:
                self.content.set()
            yield line

    def _run(self, url: str, prompt: str) -> None:
        headers = {"Authorization": f"Bearer {GATEWAY_KEY}"}
        try:
            with httpx.Client(base_url=url, headers=headers, timeout=60, trust_env=False) as c:
                with c.stream("POST", CHAT, json=chat_body(prompt, True)) as resp:
                    res = SSEResult(status=resp.status_code, headers=resp.headers)
                    self.result = res
                    try:
                        if resp.status_code == 200:
                            parse_sse_lines(self._tap(resp.iter_lines()), res)
                        else:
                            res.body = resp.read()
                    except httpx.HTTPError as e:
                        res.transport_error = f"{type(e).__name__}: {e}"
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.content.set()

    def join(self, timeout: float) -> SSEResult:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the stream did not end"
        assert self.error is None, self.error
        assert self.result is not None
        return self.result


def post_in_thread(gw: Gateway, prompt: str) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run() -> None:
        try:
            with gw.http(timeout=60) as c:
                r = c.post(CHAT, json=chat_body(prompt))
                out["status"], out["body"], out["ctype"] = r.status_code, r.text, r.headers.get("content-type", "")
        except Exception as e:  # noqa: BLE001
            out["error"] = f"{type(e).__name__}: {e}"

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def refused_soon(gw: Gateway, timeout: float = 3) -> bool:
    """True once a new connection to the gateway is refused (bounded)."""

    def refused() -> bool:
        try:
            with httpx.Client(base_url=gw.url, timeout=1, trust_env=False) as c:
                c.get("/healthz")
        except httpx.ConnectError:
            return True
        except httpx.HTTPError:
            return False
        return False

    return bool(wait_until(refused, timeout))


def stream_text(res: SSEResult) -> str:
    return "".join(ch["delta"].get("content") or "" for c in res.chunks() if "choices" in c for ch in c["choices"])


def sigterm_with_two_in_flight(
    start_gw: Callable[..., Gateway], peer: PeerProc, tmp: Path, drain_timeout: str, slow: float, stem: str, n: int
) -> tuple[Gateway, str, SSEResult, dict, int, float]:
    """A gateway with ``drain_timeout``, and on a slow peer a stream (of
    ``stem`` and ``n`` words) and a plain request in flight, then SIGTERM:
    (gateway, the stream's prompt, the stream, the plain request, the exit
    code, the seconds from SIGTERM to the exit)."""
    gw = start_gw(peer_pool_config(tmp, peer.url, two_accounts(), admin_key=secret("adm"), server={"drain_timeout": drain_timeout}))
    assert gw.wait_ready(10)
    peer.fault("slow", count=2, seconds=slow)
    prompt = stem + " " + " ".join(f"w{i}" for i in range(n))
    stream = StreamInThread(gw, prompt)
    assert stream.content.wait(10), "the stream never started"
    t_post, posted = post_in_thread(gw, stem + " too " + " ".join(f"v{i}" for i in range(n)))
    assert wait_until(lambda: len(peer.requests()) >= 2, 5), "the second request never reached the peer"
    t_term = time.monotonic()
    gw.popen.send_signal(signal.SIGTERM)
    assert refused_soon(gw), "new connections are still accepted after SIGTERM"
    res = stream.join(20)
    t_post.join(20)
    code = gw.popen.wait(timeout=20)
    return gw, prompt, res, posted, code, time.monotonic() - t_term


def test_sigterm_lets_in_flight_answers_finish_within_the_drain_timeout(start_gw, peer, tmp_path):
    gw, prompt, res, posted, code, elapsed = sigterm_with_two_in_flight(
        start_gw, peer, tmp_path / "drain-long", "15s", 0.25, "drain me", 8
    )
    assert res.status == 200 and res.transport_error is None, (res.status, res.transport_error)
    assert res.done and not res.after_done and res.data[-1] == "[DONE]", res.lines[-6:]
    assert not [c for c in res.chunks() if "error" in c], res.lines
    assert stream_text(res) == PEER_PREFIX + prompt
    assert posted.get("status") == 200, posted
    assert json.loads(posted["body"])["choices"][0]["message"]["content"].startswith(PEER_PREFIX + "drain me too")
    assert code == 0, f"exit code {code}"
    assert elapsed < 15, f"the gateway took {elapsed:.1f}s to stop with nothing left to drain"
    # A clean stop logs no error (the listener closing under the accept
    # thread used to log two).
    stopping = gw.stderr_text(limit=10**7).split("stopping: no new connections", 1)
    assert len(stopping) == 2, "no stopping line"
    errors = [line for line in stopping[1].splitlines() if "ERROR" in line]
    assert not errors, errors


def test_sigterm_ends_streams_still_open_at_the_drain_deadline_with_an_error(start_gw, peer, tmp_path):
    _, prompt, res, posted, code, elapsed = sigterm_with_two_in_flight(
        start_gw, peer, tmp_path / "drain-short", "1s", 0.5, "cut me off", 12
    )
    assert code == 0, f"exit code {code}"
    assert elapsed < 1 + 2 + 3, f"stopping took {elapsed:.1f}s with drain_timeout 1s"

    assert res.status == 200
    assert res.transport_error is None, f"the stream was cut instead of ending with an error chunk: {res.transport_error}"
    assert not res.done, "a stream cut by the drain deadline must not end with [DONE]"
    chunks = res.chunks()
    errors = [c for c in chunks if "error" in c]
    assert len(errors) == 1 and chunks[-1] is errors[0], res.lines[-6:]
    assert errors[0]["error"].get("message"), errors
    got = stream_text(res)
    assert got and (PEER_PREFIX + prompt).startswith(got) and got != PEER_PREFIX + prompt, got
    assert not [ch for c in chunks if "choices" in c for ch in c["choices"] if ch.get("finish_reason")]

    # The non-streaming answer in flight gets one clean error.
    assert "error" not in posted, f"non-stream request broke instead of a clean error: {posted}"
    assert posted["status"] >= 500 and posted["ctype"].startswith("application/json"), posted
    assert_valid("ErrorResponse", json.loads(posted["body"]))


# --------------------------------------------------------------------------
# secrets


def test_no_secret_in_admin_answers_restart_log_commands_or_stderr(start_gw, peer, tmp_path):
    admin_key = secret("adm")
    client_key = secret("sk-client")
    wrong = secret("sk-sup-stale")
    key_file = tmp_path / "secrets" / "key-b.txt"
    key_file.parent.mkdir(parents=True)
    key_file.write_text(wrong + "\n")
    data_dir = tmp_path / "secrets" / "data"
    cfg = peer_pool_config(
        tmp_path / "secrets",
        peer.url,
        [{"name": "a", "api_key": KEY_A}, {"name": "b", "api_key_file": str(key_file)}],
        admin_key=admin_key,
        supervisor=dict(FAST_SUPERVISOR, max_restarts=2, circuit_threshold=2, cooldown_initial="300ms"),
        api_keys=[client_key],
        max_concurrency=1,
    )
    gw = start_gw(cfg, env={"RUST_LOG": "debug"})
    admin = Admin(gw, admin_key)
    assert gw.wait_ready(10)

    def pair(tag: str, i: int) -> None:
        prompts = [f"{tag} {i} x", f"{tag} {i} y"]
        with ThreadPoolExecutor(max_workers=2) as pool:
            res = list(pool.map(lambda p: ask(gw, p, key=client_key), prompts))
        assert_all_answered(res, prompts)

    # A refresh (b's file gets the right key), a 429 and 5xx on a, then a's
    # key refused until it gives up.
    key_file.write_text(KEY_B + "\n")
    for i in range(10):
        pair("refresh", i)
        if any(q["key"] == KEY_B for q in peer.requests()):
            break
    peer.fault("429", count=1, key=KEY_A, retry_after=1)
    peer.fault("500", count=2, key=KEY_A)
    for i in range(6):
        pair("faults", i)
    time.sleep(1.2)
    peer.fault("401", count=10_000, key=KEY_A)
    for i in range(40):
        pair("refused", i)
        if admin.session(POOL, "a")["state"] == "failed":
            break
    assert admin.session(POOL, "a")["state"] == "failed"
    clear_faults(peer)
    assert admin.reset(POOL, "a").status_code == 200
    admin.wait_state(POOL, "a", ["ready"], timeout=5)
    events = wait_events(
        data_dir, lambda evs: {"refresh", "cooldown", "restart", "give_up", "reset"} <= {e["event"] for e in evs}
    )
    assert {"refresh", "cooldown", "restart", "give_up", "reset"} <= {e["event"] for e in events}, events

    texts: dict[str, str] = {}
    admin.sessions()
    admin.restarts()
    admin.restarts(session="a", since="1h")
    texts["admin answers"] = "\n".join(admin.seen)
    with httpx.Client(base_url=gw.url, timeout=10, trust_env=False) as c:
        texts["admin refusals"] = "\n".join(
            c.get("/admin/sessions", headers=h).text
            for h in ({}, {"Authorization": f"Bearer {client_key}"}, {"Authorization": "Bearer x"})
        )
        texts["readyz"] = c.get("/readyz").text
        texts["metrics"] = c.get("/metrics").text
    texts["restarts.jsonl"] = (data_dir / "restarts.jsonl").read_text()
    for args in ([], ["--json"], ["--session", "a"], ["--since", "1h", "--json"]):
        out = run_troupe(["restarts", "--data-dir", str(data_dir), *args])
        assert out.returncode == 0, out.stderr
        texts[f"troupe restarts {' '.join(args)}"] = out.stdout + out.stderr
    for args in ([], ["--json"]):
        out = run_troupe(["sessions", "--url", gw.url, "--admin-key", admin_key, *args])
        assert out.returncode == 0, out.stderr
        texts[f"troupe sessions {' '.join(args)}"] = out.stdout + out.stderr
    out = run_troupe(["check", "--config", str(gw.config_path)])
    texts["troupe check"] = out.stdout + out.stderr
    gw.stop()
    texts["gateway stderr"] = full_stderr(gw)
    texts["gateway stdout"] = "\n".join(gw.stdout_lines)
    assert "session event" in texts["gateway stderr"] or "restart" in texts["gateway stderr"], "stderr was not captured"

    leaks = []
    for name, secret_value in {
        "peer key a": KEY_A,
        "peer key b": KEY_B,
        "stale key in b's file": wrong,
        "admin key": admin_key,
        "client api key": client_key,
    }.items():
        for where, text in texts.items():
            if secret_value in text:
                i = text.index(secret_value)
                leaks.append(f"{name} in {where}: ...{text[max(0, i - 120): i + len(secret_value) + 40]!r}")
    assert not leaks, "secrets leaked:\n" + "\n".join(leaks)
