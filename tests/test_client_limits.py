"""Client keys with names and limits (``server.api_keys`` tables), on one
process: requests per minute, tokens per minute, requests at once and the
models a key may use, each refused in the caller's protocol with
``Retry-After``; usage per key in ``/metrics`` and ``GET /admin/clients``.
The same limits across replicas are in ``test_cluster.py``.
"""

from __future__ import annotations

import threading

import httpx
import pytest

import support
from support import GATEWAY_KEY, PeerProc

ADMIN = "adm-limits"
RPM_KEY = "sk-rpm-team"
TPM_KEY = "sk-tpm-team"
ONE_KEY = "sk-one-at-a-time"
DEMO_ONLY = "sk-demo-only"


def config(tmp, peer_url: str) -> str:
    text = support.gateway_config(tmp, peer_url, api_keys=[])
    keys = (
        f'api_keys = [{support.toml_str(GATEWAY_KEY)}, '
        f'{{ key = "{RPM_KEY}", name = "rpm-team", rpm = 3 }}, '
        f'{{ key = "{TPM_KEY}", name = "tpm-team", tpm = 10 }}, '
        f'{{ key = "{ONE_KEY}", name = "one", max_concurrency = 1 }}, '
        f'{{ key = "{DEMO_ONLY}", name = "demo-only", models = ["demo"] }}]\n'
        f"admin_key = {support.toml_str(ADMIN)}"
    )
    return text.replace("api_keys = []", keys)


@pytest.fixture(scope="module")
def gw(peer: PeerProc, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("limits")
    with support.running(lambda: support.start_gateway(tmp, config(tmp, peer.url))) as g:
        yield g


def chat(gw, key: str, model: str = "demo", **kw) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hello there"}], **kw}
    return httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"},
                      timeout=30, trust_env=False)


def message(gw, key: str, model: str = "demo") -> httpx.Response:
    body = {"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": "hello"}]}
    return httpx.post(f"{gw.url}/v1/messages", json=body, headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
                      timeout=30, trust_env=False)


def admin_clients(gw) -> dict:
    r = httpx.get(f"{gw.url}/admin/clients", headers={"authorization": f"Bearer {ADMIN}"}, timeout=5, trust_env=False)
    r.raise_for_status()
    return {c["name"]: c for c in r.json()["clients"]}


def metric(gw, name: str, **labels: str) -> float:
    text = httpx.get(f"{gw.url}/metrics", timeout=5, trust_env=False).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = line[len(name) + 1:line.index("}")]
        if all(f'{k}="{v}"' in got.split(",") for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_requests_per_minute_then_429_with_retry_after_in_both_protocols(gw):
    for _ in range(3):
        assert chat(gw, RPM_KEY).status_code == 200
    r = chat(gw, RPM_KEY)
    assert r.status_code == 429, r.text
    wait = int(r.headers["retry-after"])
    # One request's share of the minute is 20 s.
    assert 1 <= wait <= 20, wait
    err = r.json()["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded"
    assert "rpm-team" in err["message"] and "3 requests per minute" in err["message"]
    assert RPM_KEY not in r.text
    a = message(gw, RPM_KEY)
    assert a.status_code == 429
    assert a.json()["type"] == "error" and a.json()["error"]["type"] == "rate_limit_error"
    assert int(a.headers["retry-after"]) >= 1
    # The plain key has no limit and is not slowed by its neighbour's.
    for _ in range(6):
        assert chat(gw, GATEWAY_KEY).status_code == 200
    assert metric(gw, "troupe_client_refused_total", client="rpm-team", limit="rpm") >= 2


def test_tokens_per_minute_are_charged_after_the_answer(gw):
    # Nothing is owed yet: the first answer goes through and its tokens
    # (well over 10) are charged when it ends.
    first = chat(gw, TPM_KEY)
    assert first.status_code == 200
    used = first.json()["usage"]["total_tokens"]
    assert used > 10, used
    r = chat(gw, TPM_KEY)
    assert r.status_code == 429, r.text
    assert "10 tokens per minute" in r.json()["error"]["message"]
    # Owed: (used / 10) minutes, less the one minute allowed.
    wait = int(r.headers["retry-after"])
    assert wait >= 1 and wait <= used / 10 * 60, (wait, used)


def test_requests_at_once(gw, clean_peer: PeerProc):
    clean_peer.fault("slow", count=1, seconds=0.3)
    first: dict = {}

    def slow() -> None:
        first["r"] = chat(gw, ONE_KEY, model="gpt-4o-mini", stream=True)

    t = threading.Thread(target=slow)
    t.start()
    support.wait_for("the slow stream is upstream", lambda: clean_peer.requests(), timeout=10)
    r = chat(gw, ONE_KEY, model="gpt-4o-mini")
    t.join(timeout=30)
    assert r.status_code == 429, r.text
    assert "1 requests at once" in r.json()["error"]["message"]
    assert r.headers["retry-after"] == "1"
    assert first["r"].status_code == 200
    # The slot is back once the first answer ended.
    assert chat(gw, ONE_KEY).status_code == 200


def test_a_key_only_reaches_its_models(gw):
    assert chat(gw, DEMO_ONLY, model="demo").status_code == 200
    r = chat(gw, DEMO_ONLY, model="gpt-4o-mini")
    assert r.status_code == 403
    assert "demo-only" in r.json()["error"]["message"] and "gpt-4o-mini" in r.json()["error"]["message"]
    a = message(gw, DEMO_ONLY, model="gpt-4o-mini")
    assert a.status_code == 403 and a.json()["error"]["type"] == "permission_error"
    # An unknown model stays a 404, whoever asks.
    assert chat(gw, DEMO_ONLY, model="nope").status_code == 404


def test_usage_per_key_in_metrics_and_admin(gw):
    before = admin_clients(gw)
    r = chat(gw, DEMO_ONLY)
    assert r.status_code == 200
    usage = r.json()["usage"]
    after = admin_clients(gw)
    d = after["demo-only"]
    assert d["requests"] == before["demo-only"]["requests"] + 1
    assert d["tokens_in"] == before["demo-only"]["tokens_in"] + usage["prompt_tokens"]
    assert d["tokens_out"] == before["demo-only"]["tokens_out"] + usage["completion_tokens"]
    assert d["limits"]["models"] == ["demo"]
    assert after["rpm-team"]["limits"]["rpm"] == 3
    assert after["rpm-team"]["refused"].get("rpm", 0) >= 1
    # The plain key is listed by position, and no key is ever shown.
    assert "key-1" in after
    assert not any(k in str(after) for k in (GATEWAY_KEY, RPM_KEY, TPM_KEY, ONE_KEY, DEMO_ONLY))
    assert metric(gw, "troupe_client_tokens_total", client="demo-only", direction="out") >= usage["completion_tokens"]
    assert metric(gw, "troupe_client_requests_total", client="demo-only", status="200") >= 2


def test_an_unknown_limit_key_names_the_field(tmp_path, peer: PeerProc):
    text = config(tmp_path, peer.url).replace("rpm = 3", "rpm = 0")
    path = support.write_config(tmp_path, text)
    out = support.run_troupe(["check", "--config", str(path)])
    assert out.returncode != 0
    assert "server.api_keys[1].rpm" in out.stdout + out.stderr
    text = config(tmp_path, peer.url).replace('name = "one"', 'name = "rpm-team"')
    path = support.write_config(tmp_path, text)
    out = support.run_troupe(["check", "--config", str(path)])
    assert out.returncode != 0
    assert "server.api_keys[3].name" in out.stdout + out.stderr


def test_keys_as_tables(tmp_path, peer: PeerProc):
    """``[[server.api_keys]]`` tables work as well as inline ones."""
    text = support.gateway_config(tmp_path, None, api_keys=[]).replace("api_keys = []\n", "")
    text += f'\n[[server.api_keys]]\nkey = "{RPM_KEY}"\nname = "t"\nrpm = 1\n'
    with support.running(lambda: support.start_gateway(tmp_path, text)) as g:
        assert chat(g, RPM_KEY).status_code == 200
        r = chat(g, RPM_KEY)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 55
        assert chat(g, GATEWAY_KEY).status_code == 401
