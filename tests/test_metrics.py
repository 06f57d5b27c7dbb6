"""`/metrics`, the `x-troupe-overhead-ms` and `x-request-id` headers and the
per-request log line, checked after real traffic."""

from __future__ import annotations

import re

import httpx
import pytest

import support

METRICS_KEY = "metrics-secret"
LINE = re.compile(r'^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$')


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    out: dict[tuple[str, frozenset], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        assert m, f"not Prometheus text format: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group("labels") or ""))
        out[(m.group("name"), labels)] = float(m.group("value"))
    return out


def value(metrics: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and want <= set(ls))


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metrics")
    text = support.gateway_config(tmp, None, server_extra=f'metrics_key = "{METRICS_KEY}"')
    g = support.start_gateway(tmp, text)
    assert g.wait_ready(10)
    yield g
    g.cleanup()


def scrape(gw) -> dict:
    with httpx.Client(base_url=gw.url, trust_env=False, timeout=10) as c:
        r = c.get("/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        return parse(r.text)


def test_metrics_need_their_key(gw):
    with httpx.Client(base_url=gw.url, trust_env=False, timeout=10) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_traffic_shows_up_in_metrics_and_headers(gw):
    before = scrape(gw)
    body = {"model": "demo", "messages": [{"role": "user", "content": "count me"}]}
    with gw.http() as c:
        r = c.post("/v1/chat/completions", json=body, headers={"x-request-id": "req-42"})
        assert r.status_code == 200
        assert r.headers["x-request-id"] == "req-42"
        assert float(r.headers["x-troupe-overhead-ms"]) >= 0
        generated = r.headers.get("x-request-id")
        r = c.post("/v1/chat/completions", json=body)
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]), r.headers
        assert r.headers["x-request-id"] != generated
        with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
            assert float(s.headers["x-troupe-overhead-ms"]) >= 0
            assert s.read().endswith(b"data: [DONE]\n\n")
        r = c.post("/v1/messages", json={"model": "demo", "max_tokens": 50, "messages": body["messages"]})
        assert r.status_code == 200
        assert c.post("/v1/chat/completions", json={**body, "model": "no-such"}).status_code == 404
    after = scrape(gw)
    d = lambda name, **l: value(after, name, **l) - value(before, name, **l)  # noqa: E731
    assert d("troupe_requests_total", frontend="openai", model="demo", pool="demo", status="200") == 3
    assert d("troupe_requests_total", frontend="anthropic", model="demo", status="200") == 1
    # An unknown model is counted without letting the client's string become a label.
    assert d("troupe_requests_total", frontend="openai", model="-", status="404") == 1
    assert not any("no-such" in str(k) for k in after)
    assert d("troupe_tokens_total", direction="in", model="demo") > 0
    assert d("troupe_tokens_total", direction="out", model="demo") > 0
    assert d("troupe_request_duration_seconds_count", frontend="openai") == 4
    assert d("troupe_time_to_first_token_seconds_count", frontend="openai") == 3
    assert d("troupe_overhead_seconds_count", frontend="openai") == 4
    assert value(after, "troupe_sessions", pool="demo", state="ready") == 2
    assert value(after, "troupe_queue_depth") == 0
    log = gw.stderr_text(200_000)
    assert "req-42" in log and "troupe::request" in log
    assert "count me" not in log, "message content leaked into the logs"
