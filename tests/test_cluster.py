"""Several replicas sharing state through a real Redis (``[cluster]``).

Each test module run starts its own ``redis-server`` on a free loopback port
(never the machine's own Redis) and two troupe replicas pointed at it, in
front of the fake OpenAI peer, which records what each replica sent
upstream.

Shared so far: stored responses. A response created on one replica
continues (``previous_response_id``), reads and deletes on the other; with
Redis stopped, every request still succeeds on the replica's own state, and
``/readyz`` and ``/metrics`` say so until Redis returns.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

import support
from support import GATEWAY_KEY, PEER_PREFIX, PeerProc

HEADERS = {"authorization": f"Bearer {GATEWAY_KEY}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A throwaway redis-server: no persistence, loopback only."""

    def __init__(self, tmp: Path):
        self.port = free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is missing (scripts/test.sh installs it)"
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        support.wait_for("redis-server answers PING", lambda: ping(self.port), timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    r = RedisServer(tmp_path_factory.mktemp("redis"))
    yield r
    r.stop()


ADMIN = "adm-cluster"
TEAM_KEY = "sk-cluster-team"
TEAM_RPM = 5


OD_SCRIPT = support.TESTS_DIR / "peers" / "ondemand_peer.py"
OD_KEYS = ("od-key-1", "od-key-2")


class OnDemandPeer(PeerProc):
    """The fake OnDemand API: it numbers the queries each upstream session
    has seen in its answers (``ondemand reply #N to: ...``)."""

    def queries(self) -> list[dict]:
        return [r for r in self.requests() if r["path"].endswith("/query")]


@pytest.fixture(scope="module")
def ondemand() -> Iterator[OnDemandPeer]:
    with support.running(lambda: support.script_peer(OnDemandPeer, "ondemand-peer", OD_SCRIPT,
                                                     "--keys", ",".join(OD_KEYS))) as proc:
        yield proc


def ondemand_pool(url: str) -> str:
    return f"""
[[pools]]
name = "ondemand"
kind = "ondemand"
base_url = {support.toml_str(url.rstrip("/") + "/chat/v1")}
models = ["gpt-4o"]
max_concurrency = 4
{support.accounts_toml([("od1", OD_KEYS[0]), ("od2", OD_KEYS[1])])}"""


def cluster_config(tmp: Path, peer_url: str, redis_url: str, replica: str, ondemand_url: str | None = None) -> str:
    keys = (f"api_keys = [{support.toml_str(GATEWAY_KEY)}, "
            f'{{ key = "{TEAM_KEY}", name = "team", rpm = {TEAM_RPM} }}]\n'
            f"admin_key = {support.toml_str(ADMIN)}")
    text = support.gateway_config(tmp, peer_url).replace(f"api_keys = [{support.toml_str(GATEWAY_KEY)}]", keys)
    if ondemand_url:
        text += ondemand_pool(ondemand_url)
    return text + (
        "\n[cluster]\n"
        f"redis_url = {support.toml_str(redis_url)}\n"
        f"replica = {support.toml_str(replica)}\n"
        'key_prefix = "t:"\n'
    )


@pytest.fixture(scope="module")
def replicas(peer: PeerProc, ondemand: OnDemandPeer, redis_server: RedisServer,
             tmp_path_factory: pytest.TempPathFactory):
    started = []
    for name in ("a", "b", "c"):
        tmp = tmp_path_factory.mktemp(f"replica-{name}")
        text = cluster_config(tmp, peer.url, redis_server.url, name, ondemand.url)
        gw = support.started(lambda: support.start_gateway(tmp, text))
        started.append(gw)
    for gw in started:
        support.wait_for(f"{gw.url} reaches Redis", lambda: cluster_state(gw).get("redis") == "up", timeout=15)
    yield started
    for gw in started:
        gw.cleanup()


def cluster_state(gw) -> dict:
    r = httpx.get(f"{gw.url}/readyz", timeout=5, trust_env=False)
    return r.json().get("cluster", {})


def post(gw, body: dict) -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/responses", json=body, headers=HEADERS, timeout=30, trust_env=False)


def metric(gw, name: str) -> float:
    text = httpx.get(f"{gw.url}/metrics", timeout=5, trust_env=False).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def upstream_texts(peer: PeerProc) -> list[tuple[str, str]]:
    body = peer.requests()[-1]["body"]
    return [(m["role"], m["content"] if isinstance(m["content"], str) else "".join(p.get("text", "") for p in m["content"]))
            for m in body["messages"] if m["role"] != "system"]


def test_readyz_names_the_replica_and_redis(replicas):
    a, b, c = replicas
    assert cluster_state(a) == {"replica": "a", "redis": "up"}
    assert cluster_state(b) == {"replica": "b", "redis": "up"}
    assert cluster_state(c) == {"replica": "c", "redis": "up"}
    assert metric(a, "troupe_cluster_redis_up") == 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_response_stored_on_one_replica_continues_on_another(replicas, clean_peer, stream):
    a, b, c = replicas
    if stream:
        with httpx.stream("POST", f"{a.url}/v1/responses", headers=HEADERS, timeout=30, trust_env=False,
                          json={"model": "gpt-4o-mini", "input": "remember kiwi", "stream": True}) as r:
            assert r.status_code == 200
            first_id = None
            for line in r.iter_lines():
                if line.startswith("data: ") and '"response.completed"' in line:
                    import json
                    first_id = json.loads(line[6:])["response"]["id"]
        assert first_id
    else:
        r = post(a, {"model": "gpt-4o-mini", "input": "remember kiwi"})
        assert r.status_code == 200, r.text
        first_id = r.json()["id"]
    # The write to Redis is on its way as the answer ends: B may ask at once.
    second = support.wait_for(
        "B continues A's response",
        lambda: (lambda r: r if r.status_code == 200 else None)(
            post(b, {"model": "gpt-4o-mini", "input": "what fruit?", "previous_response_id": first_id})),
        timeout=5,
    )
    assert second.json()["previous_response_id"] == first_id
    assert upstream_texts(clean_peer) == [
        ("user", "remember kiwi"),
        ("assistant", PEER_PREFIX + "remember kiwi"),
        ("user", "what fruit?"),
    ]


def test_reads_and_deletes_reach_every_replica(replicas):
    a, b, c = replicas
    r = post(a, {"model": "demo", "input": "keep me"})
    rid = r.json()["id"]
    got = support.wait_for("B reads A's response",
                           lambda: (lambda g: g if g.status_code == 200 else None)(
                               httpx.get(f"{b.url}/v1/responses/{rid}", headers=HEADERS, timeout=5, trust_env=False)),
                           timeout=5)
    assert got.json()["id"] == rid
    items = httpx.get(f"{b.url}/v1/responses/{rid}/input_items", headers=HEADERS, timeout=5, trust_env=False)
    assert items.status_code == 200
    assert items.json()["data"][0]["content"][0]["text"] == "keep me"
    # Another key sees nothing, on either replica.
    other = {"authorization": "Bearer not-a-key-of-this-gateway"}
    assert httpx.get(f"{b.url}/v1/responses/{rid}", headers=other, timeout=5, trust_env=False).status_code == 401
    # Deleted on B: gone on A too, although A still holds its own copy.
    d = httpx.delete(f"{b.url}/v1/responses/{rid}", headers=HEADERS, timeout=5, trust_env=False)
    assert d.status_code == 200 and d.json()["deleted"] is True
    for gw in (a, b):
        g = httpx.get(f"{gw.url}/v1/responses/{rid}", headers=HEADERS, timeout=5, trust_env=False)
        assert g.status_code == 404, (gw.url, g.text)


def test_requests_never_fail_while_redis_is_down(replicas, redis_server):
    import threading

    a, b, c = replicas
    fallbacks = metric(a, "troupe_cluster_fallbacks_total")
    # Clients keep asking every replica, through the stop and the start.
    stop = threading.Event()
    codes: list[int] = []
    finished: list[float] = []

    def load() -> None:
        i = 0
        while not stop.is_set() and i < 2000:
            gw = replicas[i % 3]
            body = {"model": "gpt-4o-mini" if i % 2 else "demo", "messages": [{"role": "user", "content": f"n{i}"}]}
            try:
                r = httpx.post(f"{gw.url}/v1/chat/completions", headers=HEADERS, json=body, timeout=30,
                               trust_env=False)
                codes.append(r.status_code)
            except httpx.HTTPError:
                codes.append(-1)
            finished.append(time.monotonic())
            i += 1

    # Warm: a replica's first counted answer loads the tokenizer (most of
    # a second in a debug build), which is not what this test is about.
    for gw in replicas:
        httpx.post(f"{gw.url}/v1/chat/completions", headers=HEADERS, timeout=30, trust_env=False,
                   json={"model": "demo", "messages": [{"role": "user", "content": "warm"}]})
    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    time.sleep(0.3)
    redis_server.stop()
    stopped = time.monotonic()
    try:
        support.wait_for("A notices Redis is down", lambda: cluster_state(a).get("redis", "").startswith("down"), timeout=10)
        assert metric(a, "troupe_cluster_redis_up") == 0
        # Served on A's own state: stored there, continued there.
        started = time.monotonic()
        first = post(a, {"model": "demo", "input": "alone"})
        assert first.status_code == 200, first.text
        second = post(a, {"model": "demo", "input": "still here", "previous_response_id": first.json()["id"]})
        assert second.status_code == 200, second.text
        assert time.monotonic() - started < 5
        assert metric(a, "troupe_cluster_fallbacks_total") > fallbacks
        assert "Redis unreachable" in a.stderr_text(200_000)
        # Ready all along: a replica without Redis still serves.
        assert httpx.get(f"{a.url}/readyz", timeout=5, trust_env=False).status_code == 200
        # Down long enough for the clients' requests to run into it.
        time.sleep(max(0.0, stopped + 2.0 - time.monotonic()))
    finally:
        restarted = time.monotonic()
        redis_server.start()
    support.wait_for("A sees Redis again", lambda: cluster_state(a).get("redis") == "up", timeout=15)
    time.sleep(0.3)
    stop.set()
    loader.join(timeout=60)
    assert set(codes) == {200}, sorted(set(codes))
    assert any(stopped < t < restarted for t in finished), (
        "some of the load ran while Redis was down",
        round(restarted - stopped, 3), [round(t - stopped, 3) for t in finished])
    assert metric(a, "troupe_cluster_redis_up") == 1
    assert "Redis is back" in a.stderr_text(200_000)
    # Shared again.
    r = post(a, {"model": "demo", "input": "together again"})
    rid = r.json()["id"]
    support.wait_for("B reads it", lambda: httpx.get(f"{b.url}/v1/responses/{rid}", headers=HEADERS, timeout=5,
                                                     trust_env=False).status_code == 200, timeout=5)


def concurrency(peer: PeerProc) -> dict:
    return httpx.get(f"{peer.url}/_peer/concurrency", timeout=5, trust_env=False).json()


def test_an_accounts_concurrency_holds_across_replicas(replicas, clean_peer):
    """Each account has max_concurrency = 4. 24 slow streams at once, a
    third on each replica: the peer never sees more than 4 at once on a key
    (without sharing, each replica would allow 4: 12), and every request is
    answered."""
    import concurrent.futures

    a, b, c = replicas
    clean_peer.fault("slow", count=24, seconds=0.05)

    def one(i: int) -> int:
        gw = (a, b, c)[i % 3]
        with httpx.stream("POST", f"{gw.url}/v1/chat/completions", headers=HEADERS, timeout=60, trust_env=False,
                          json={"model": "gpt-4o-mini", "stream": True,
                                "messages": [{"role": "user", "content": f"hold {i}"}]}) as r:
            body = "".join(r.iter_text())
            return r.status_code if "[DONE]" in body else -r.status_code

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        codes = list(pool.map(one, range(24)))
    assert codes == [200] * 24
    peaks = concurrency(clean_peer)["max"]
    assert peaks and max(peaks.values()) <= 4, peaks
    # They did run side by side: the limit was reached, not merely obeyed.
    assert max(peaks.values()) == 4, peaks
    # Every hold was given back: Redis lists none.
    assert all(n == 0 for n in concurrency(clean_peer)["now"].values())


def test_a_killed_replicas_holds_free_within_their_ttl(replicas, clean_peer, redis_server, gateway_factory, tmp_path):
    """A replica (lease_ttl 2s) runs every slot of both accounts, then is
    killed with SIGKILL: its holds stay in Redis, but expire, and the other
    replicas serve again within the ttl."""
    import threading

    a, _, _ = replicas
    text = cluster_config(tmp_path / "d", clean_peer.url, redis_server.url, "doomed") + 'lease_ttl = "2s"\n'
    c = gateway_factory(config_text=text)
    support.wait_for("the doomed replica reaches Redis", lambda: cluster_state(c).get("redis") == "up", timeout=15)
    clean_peer.fault("slow", count=8, seconds=1)

    def hold(i: int) -> None:
        try:
            with httpx.stream("POST", f"{c.url}/v1/chat/completions", headers=HEADERS, timeout=60, trust_env=False,
                              json={"model": "gpt-4o-mini", "stream": True,
                                    "messages": [{"role": "user", "content": f"long {i}"}]}) as r:
                for _ in r.iter_bytes():
                    pass
        except httpx.HTTPError:
            pass  # the replica dies under it

    for i in range(8):
        threading.Thread(target=hold, args=(i,), daemon=True).start()
    support.wait_for("C runs all 8 slots", lambda: sum(concurrency(clean_peer)["now"].values()) == 8, timeout=10)
    c.popen.kill()
    c.popen.wait(timeout=5)
    killed = time.monotonic()
    r = httpx.post(f"{a.url}/v1/chat/completions", headers=HEADERS, timeout=30, trust_env=False,
                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "after"}]})
    took = time.monotonic() - killed
    assert r.status_code == 200, r.text
    assert took < 6, f"served {took:.1f} s after the kill (holds live 2 s)"


def test_a_429_on_one_replica_cools_the_account_down_on_the_others(replicas, clean_peer):
    """A 429 with Retry-After for one key, seen by A: B and C stop sending
    that key the model within 100 ms, and send it again once the wait is
    over."""
    a, b, c = replicas
    clean_peer.fault("429", count=1, key=support.PEER_KEYS[0], retry_after=2)
    ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    # A meets the 429 on the first key (and answers from the second).
    for _ in range(4):
        r = httpx.post(f"{a.url}/v1/chat/completions", headers=HEADERS, json=ask, timeout=30, trust_env=False)
        assert r.status_code == 200, r.text
        if any(q.get("outcome") == "status 429" for q in clean_peer.requests()):
            break
    limited = [q for q in clean_peer.requests() if q.get("outcome") == "status 429"]
    assert limited and limited[0]["key"] == support.PEER_KEYS[0]
    seen = time.time()
    time.sleep(0.1)
    before = len(clean_peer.requests())
    for i in range(6):
        gw = (b, c)[i % 2]
        r = httpx.post(f"{gw.url}/v1/chat/completions", headers=HEADERS, json=ask, timeout=30, trust_env=False)
        assert r.status_code == 200, r.text
    during = clean_peer.requests()[before:]
    assert len(during) == 6 and {q["key"] for q in during} == {support.PEER_KEYS[1]}, [q["key"] for q in during]
    # Over: B and C take turns with the first key again.
    time.sleep(max(0.0, seen + 2.2 - time.time()))
    for gw in (b, c):
        before = len(clean_peer.requests())
        for _ in range(4):
            r = httpx.post(f"{gw.url}/v1/chat/completions", headers=HEADERS, json=ask, timeout=30, trust_env=False)
            assert r.status_code == 200, r.text
        assert support.PEER_KEYS[0] in {q["key"] for q in clean_peer.requests()[before:]}, gw.url


def test_a_client_keys_limit_holds_across_replicas(replicas):
    """The `team` key may send 5 requests a minute: spread over the three
    replicas, the sixth is a 429 with Retry-After on whichever replica it
    lands, in that replica's caller's protocol; the plain key is not
    limited."""
    team = {"authorization": f"Bearer {TEAM_KEY}"}
    ask = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
    for i in range(TEAM_RPM):
        gw = replicas[i % 3]
        r = httpx.post(f"{gw.url}/v1/chat/completions", headers=team, json=ask, timeout=30, trust_env=False)
        assert r.status_code == 200, (gw.url, r.text)
    for gw in replicas:
        r = httpx.post(f"{gw.url}/v1/chat/completions", headers=team, json=ask, timeout=30, trust_env=False)
        assert r.status_code == 429, (gw.url, r.text)
        assert 1 <= int(r.headers["retry-after"]) <= 60 // TEAM_RPM
        assert "team" in r.json()["error"]["message"]
    a = httpx.post(f"{replicas[1].url}/v1/messages", headers={"x-api-key": TEAM_KEY, "anthropic-version": "2023-06-01"},
                   json={**ask, "max_tokens": 20}, timeout=30, trust_env=False)
    assert a.status_code == 429 and a.json()["error"]["type"] == "rate_limit_error"
    for gw in replicas:
        assert httpx.post(f"{gw.url}/v1/chat/completions", headers=HEADERS, json=ask, timeout=30,
                          trust_env=False).status_code == 200
    # Each replica counts what it refused.
    assert all(metric(gw, 'troupe_client_refused_total{client="team",limit="rpm"}') >= 1 for gw in replicas)


def chat(gw, messages: list[dict], stream: bool = False, **headers: str) -> str:
    body = {"model": "gpt-4o", "messages": messages, "stream": stream}
    if not stream:
        r = httpx.post(f"{gw.url}/v1/chat/completions", headers={**HEADERS, **headers}, json=body, timeout=30,
                       trust_env=False)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]
    text = ""
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", headers={**HEADERS, **headers}, json=body,
                      timeout=30, trust_env=False) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                import json
                for choice in json.loads(line[6:]).get("choices", []):
                    text += choice.get("delta", {}).get("content") or ""
    return text


def test_a_stateful_conversation_continues_one_upstream_session_across_replicas(replicas, ondemand):
    """Turns of one conversation go to A, B, C, A in turn: each continues
    the same OnDemand session on the same account (the peer numbers the
    queries a session has seen), with only the newest turn sent."""
    ondemand.reset()
    history = [{"role": "user", "content": "turn one"}]
    for i, gw in enumerate([*replicas, replicas[0]]):
        said = history[-1]["content"]
        answer = chat(gw, history, stream=i % 2 == 1)
        assert answer == f"ondemand reply #{i + 1} to: {said}", (gw.url, answer)
        history += [{"role": "assistant", "content": answer}, {"role": "user", "content": f"turn {i + 2}"}]
    queries = ondemand.queries()
    assert len({q["session"] for q in queries}) == 1, queries
    # A conversation named by the client continues the same way.
    named = {"x-troupe-conversation": "cluster-named-1"}
    for i, gw in enumerate(replicas):
        assert chat(gw, [{"role": "user", "content": f"named {i}"}], **named) == f"ondemand reply #{i + 1} to: named {i}"
    assert len({q["session"] for q in ondemand.queries()}) == 2


def test_without_redis_a_conversation_stays_whole_on_its_replica(replicas, ondemand, redis_server):
    """Redis down: a conversation still continues on the replica that holds
    it (its own memory), and one that moves starts a new upstream session
    with the whole conversation, never a wrong one."""
    a, b, _ = replicas
    ondemand.reset()
    redis_server.stop()
    try:
        support.wait_for("A notices", lambda: cluster_state(a).get("redis", "").startswith("down"), timeout=10)
        history = [{"role": "user", "content": "alone one"}]
        first = chat(a, history)
        assert first == "ondemand reply #1 to: alone one"
        history += [{"role": "assistant", "content": first}, {"role": "user", "content": "alone two"}]
        assert chat(a, history) == "ondemand reply #2 to: alone two"
        # On B, which cannot know: a new session that gets every turn.
        moved = chat(b, history)
        assert moved.startswith("ondemand reply #1 to: "), moved
        assert "alone one" in moved and moved.endswith("alone two"), moved
    finally:
        restarted = time.monotonic()
        redis_server.start()
    support.wait_for("A sees Redis again", lambda: cluster_state(a).get("redis") == "up", timeout=15)


def admin(gw, path: str) -> dict:
    r = httpx.get(f"{gw.url}{path}", headers={"authorization": f"Bearer {ADMIN}"}, timeout=10, trust_env=False)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_admin_api_of_any_replica_lists_every_replicas_sessions(replicas):
    def full(gw) -> dict | None:
        body = admin(gw, "/admin/sessions")
        return body if body.get("replicas") == ["a", "b", "c"] else None

    for gw in replicas:
        body = support.wait_for(f"{gw.url} sees the three replicas", lambda: full(gw), timeout=10)
        by_replica: dict[str, set[str]] = {}
        for s in body["sessions"]:
            by_replica.setdefault(s["replica"], set()).add(f"{s['pool']}/{s['session']}")
        # Every replica runs the same configuration: the same sessions, thrice.
        assert set(by_replica) == {"a", "b", "c"}
        assert len({frozenset(v) for v in by_replica.values()}) == 1, by_replica
        assert {"peer/k1", "peer/k2", "ondemand/od1"} <= by_replica["a"]
        assert body["cluster"] == {"replica": body["cluster"]["replica"], "redis": "up"}
    # `troupe sessions` shows the replica column.
    out = support.run_troupe(["sessions", "--url", replicas[0].url, "--admin-key", ADMIN])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["REPLICA", "POOL", "SESSION"]
    assert {line.split()[0] for line in lines[1:]} == {"a", "b", "c"}


def test_restarts_of_every_replica_in_one_stream(replicas, clean_peer):
    """A session restart on B shows in A's `/admin/restarts`, marked as B's,
    and each replica keeps its own restart log file as well."""
    a, b, _ = replicas
    clean_peer.fault("401", count=1000, key=support.PEER_KEYS[1])
    ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    try:
        def restarted_on_b() -> list[dict] | None:
            httpx.post(f"{b.url}/v1/chat/completions", headers=HEADERS, json=ask, timeout=30, trust_env=False)
            events = admin(a, "/admin/restarts?pool=peer&session=k2")["events"]
            found = [e for e in events if e.get("replica") == "b" and e["event"] == "restart"]
            return found or None

        found = support.wait_for("B's restart in A's view", restarted_on_b, timeout=20)
        assert found[-1]["cause"] == "auth"
        own = (b.config_path.parent / "data" / "restarts.jsonl").read_text()
        assert '"session":"k2"' in own
    finally:
        clean_peer.reset()
        for gw in replicas:
            admin_post = httpx.post(f"{gw.url}/admin/sessions/peer/k2/reset",
                                    headers={"authorization": f"Bearer {ADMIN}"}, timeout=10, trust_env=False)
            assert admin_post.status_code == 200


def test_the_dashboard_shows_every_replica(replicas):
    import shutil
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is missing (scripts/test.sh installs it)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--no-first-run",
                                          "--disable-background-networking"])
        try:
            page = browser.new_page()
            page.goto(f"{replicas[1].url}/admin#key={ADMIN}")
            for r in ("a", "b", "c"):
                page.wait_for_selector(f"#sessions tr[data-replica='{r}'][data-session='peer/k1']", timeout=10_000)
            assert "3 replica(s): a, b, c" in page.inner_text("#cluster")
            # Only this replica's sessions can be reset from its page.
            assert page.locator("#sessions tr[data-replica='b'] button").count() > 0
            assert page.locator("#sessions tr[data-replica='a'] button").count() == 0
        finally:
            browser.close()


def session_state(gw, replica: str, name: str) -> str:
    for s in admin(gw, "/admin/sessions")["sessions"]:
        if s["replica"] == replica and s["pool"] == "peer" and s["session"] == name:
            return s["state"]
    return "?"


def test_an_open_circuit_on_one_replica_keeps_the_account_out_on_all(replicas, clean_peer):
    """Three upstream failures in a row on key k1 open its circuit on A: B
    and C stop sending it anything (every model) at once, and take it back
    only when A's one trial request has passed."""
    a, b, c = replicas
    k1, k2 = support.PEER_KEYS[0], support.PEER_KEYS[1]
    ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    clean_peer.fault("500", count=3, key=k1)

    def opened() -> bool:
        r = httpx.post(f"{a.url}/v1/chat/completions", headers=HEADERS, json=ask, timeout=30, trust_env=False)
        assert r.status_code == 200, r.text  # retried on k2
        return session_state(a, "a", "k1") == "cooling_down"

    support.wait_for("A's circuit on k1 opens", opened, timeout=20)
    time.sleep(0.1)
    before = len(clean_peer.requests())
    for i in range(6):
        gw = (b, c)[i % 2]
        r = httpx.post(f"{gw.url}/v1/chat/completions", headers=HEADERS, json=ask, timeout=30, trust_env=False)
        assert r.status_code == 200, r.text
    assert {q["key"] for q in clean_peer.requests()[before:]} == {k2}
    # A's cool-down (5 s) ends; its trial request passes; then the others
    # use k1 again.
    def a_trusts_k1_again() -> bool:
        httpx.post(f"{a.url}/v1/chat/completions", headers=HEADERS, json=ask, timeout=30, trust_env=False)
        return session_state(a, "a", "k1") == "ready"

    support.wait_for("A's trial on k1 passes", a_trusts_k1_again, timeout=20)
    time.sleep(0.2)
    for gw in (b, c):
        before = len(clean_peer.requests())
        for _ in range(4):
            assert httpx.post(f"{gw.url}/v1/chat/completions", headers=HEADERS, json=ask, timeout=30,
                              trust_env=False).status_code == 200
        assert k1 in {q["key"] for q in clean_peer.requests()[before:]}, gw.url


def test_an_account_logs_in_and_refreshes_once_for_every_replica(redis_server, gateway_factory, tmp_path):
    """Two replicas with one anonymous langfast account whose tokens live
    8 s, and whose refresh tokens are single-use: the account signs up once
    (the second replica takes the first one's login), is refreshed once
    per lifetime (never twice with the same refresh token, which the
    upstream would refuse), and both replicas keep answering with the new
    token."""
    import test_langfast as lf

    peer = support.started(lambda: lf.start_peer(expires_in=8))
    try:
        gws = []
        for name in ("la", "lb"):
            text = lf.config(tmp_path / name, peer.url, accounts=1) + (
                "\n[cluster]\n"
                f"redis_url = {support.toml_str(redis_server.url)}\n"
                f'replica = "{name}"\nkey_prefix = "lf:"\n')
            gws.append(gateway_factory(config_text=text))
        def ready(gw, name: str) -> bool:
            mine = [x for x in lf.sessions(gw) if x.get("replica") == name]
            return len(mine) == 1 and mine[0]["state"] == "ready"

        for gw, name in zip(gws, ("la", "lb")):
            support.wait_for(f"{gw.url} ready", lambda: ready(gw, name), timeout=20)
        assert peer.stats()["signups"] == 1, peer.stats()

        def ask(gw, text: str) -> str:
            return support.make_client(gw.v1).chat.completions.create(
                model=lf.MODEL, messages=[{"role": "user", "content": text}]).choices[0].message.content

        assert ask(gws[0], "one") == lf.PREFIX + "one"
        assert ask(gws[1], "two") == lf.PREFIX + "two"
        # Refreshed about 1.6 s before expiry: once, by one replica.
        support.wait_for("a refresh", lambda: peer.stats()["refreshes"] >= 1, timeout=15)
        time.sleep(2.5)  # past the first token's expiry, and any second refresh
        stats = peer.stats()
        assert stats["refreshes"] == 1, stats
        refused = [r for r in peer.requests() if r["path"].startswith("/auth/v1/token") and r["status"] != 200]
        assert refused == [], refused
        assert stats["signups"] == 1, stats
        assert ask(gws[0], "three") == lf.PREFIX + "three"
        assert ask(gws[1], "four") == lf.PREFIX + "four"
        bearers = [r["bearer"] for r in lf.runs(peer)[-2:]]
        assert bearers[0] == bearers[1], "both replicas use the refreshed token"
    finally:
        peer.cleanup()


def test_the_readmes_compose_example_is_a_valid_cluster(tmp_path):
    """The README's docker-compose example: two replicas with distinct
    names pointed at the same Redis, and environments the configuration
    schema accepts (``troupe check`` with each replica's environment)."""
    import re

    import yaml

    readme = (support.REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## Running several replicas"):]
    compose = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
    nginx = re.search(r"```nginx\n(.*?)```", section, re.S).group(1)
    assert "proxy_buffering off" in nginx
    replicas = {n: s for n, s in compose["services"].items() if n.startswith("troupe")}
    assert len(replicas) == 2
    names = {s["environment"]["TROUPE__CLUSTER__REPLICA"] for s in replicas.values()}
    assert names == {"a", "b"}
    urls = {s["environment"]["TROUPE__CLUSTER__REDIS_URL"] for s in replicas.values()}
    assert len(urls) == 1
    for name, service in replicas.items():
        env = {k: str(v).replace("${REDIS_PASSWORD}", "pw") for k, v in service["environment"].items()}
        env["TROUPE__SERVER__API_KEYS"] = "sk-one"
        env["TROUPE__SERVER__DATA_DIR"] = str(tmp_path / name)
        out = subprocess.run([str(support.troupe_bin()), "check", "--config",
                              str(support.REPO_ROOT / "config" / "troupe.toml")],
                             env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, (name, out.stdout, out.stderr)


def redis_cmd(port: int, *args: str):
    """One command over RESP, for looking at what troupe wrote."""
    payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload.encode())
        f = s.makefile("rb")

        def read():
            line = f.readline().rstrip(b"\r\n")
            kind, rest = line[:1], line[1:]
            if kind in (b"+", b"-"):
                return rest.decode()
            if kind == b":":
                return int(rest)
            if kind == b"$":
                n = int(rest)
                return None if n < 0 else f.read(n + 2)[:-2].decode()
            if kind == b"*":
                return [read() for _ in range(int(rest))]
            raise AssertionError(line)

        return read()


def test_a_hold_outlives_its_ttl_while_its_stream_runs(redis_server, clean_peer, gateway_factory, tmp_path):
    """A stream longer than `lease_ttl` (1 s) keeps its hold on the account:
    the replica renews it, so other replicas keep counting it; once the
    stream ends the hold is given back at once."""
    import threading

    text = cluster_config(tmp_path / "r", clean_peer.url, redis_server.url, "renewer") + 'lease_ttl = "1s"\n'
    text = text.replace('key_prefix = "t:"', 'key_prefix = "renew:"')
    gw = gateway_factory(config_text=text)
    support.wait_for("the replica reaches Redis", lambda: cluster_state(gw).get("redis") == "up", timeout=15)
    clean_peer.fault("slow", count=1, seconds=0.6)
    done = threading.Event()

    def stream() -> None:
        with httpx.stream("POST", f"{gw.url}/v1/chat/completions", headers=HEADERS, timeout=60, trust_env=False,
                          json={"model": "gpt-4o-mini", "stream": True,
                                "messages": [{"role": "user", "content": "a long answer please"}]}) as r:
            for _ in r.iter_bytes():
                pass
        done.set()

    t = threading.Thread(target=stream, daemon=True)
    started = time.monotonic()
    t.start()
    support.wait_for("the hold", lambda: redis_cmd(redis_server.port, "KEYS", "renew:conc:peer:*"), timeout=10)
    time.sleep(2.2)
    assert not done.is_set(), "the stream should outlast two lease ttls"
    held = redis_cmd(redis_server.port, "KEYS", "renew:conc:peer:*")
    assert len(held) == 1, held
    members = redis_cmd(redis_server.port, "ZRANGE", held[0], "0", "-1")
    assert len(members) == 1 and members[0].startswith("renewer:"), members
    t.join(timeout=30)
    assert done.is_set() and time.monotonic() - started > 2.2
    support.wait_for("the hold given back", lambda: not redis_cmd(redis_server.port, "KEYS", "renew:conc:peer:*"),
                     timeout=2)


def test_a_cli_conversation_moving_replica_sends_the_whole_conversation(redis_server, gateway_factory, tmp_path):
    """A CLI's session lives on the machine that ran it: a turn that lands
    on another replica never resumes it by id there (the record says whose
    it is), it starts a new CLI session with the whole conversation."""
    import test_cli as cli

    state = tmp_path / "cli-state"
    state.mkdir()
    gws = []
    for name in ("ca", "cb"):
        text = cli.server_section(tmp_path / name) + cli.cli_pool("claude", "claude", ["claude"], state) + (
            "\n[cluster]\n"
            f"redis_url = {support.toml_str(redis_server.url)}\n"
            f'replica = "{name}"\nkey_prefix = "cli:"\n')
        gws.append(gateway_factory(config_text=text))

    def ask(gw, messages: list[dict]) -> str:
        r = httpx.post(f"{gw.url}/v1/chat/completions", headers=HEADERS, timeout=60, trust_env=False,
                       json={"model": "claude", "messages": messages})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    history = [{"role": "user", "content": "cli turn one"}]
    a1 = ask(gws[0], history)
    sid = a1.split("session=")[1].split()[0]
    history += [{"role": "assistant", "content": a1}, {"role": "user", "content": "cli turn two"}]
    # On the same replica it resumes (the CLI's own session, by id).
    same = ask(gws[0], history)
    assert f"turn=2 session={sid} " in same, same
    # On the other replica: a new CLI session, given every turn.
    moved = ask(gws[1], history)
    assert "turn=1 " in moved and f"session={sid}" not in moved, moved
    assert "cli turn one" in cli.calls(state)[-1][-1]
