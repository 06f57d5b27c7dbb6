"""The gateway against hostile or careless clients and web pages.

Covers: the JSON-only Content-Type of the POST routes (415); keyless mode
kept safe from web pages (foreign `Origin` refused, `Host` checked against
DNS rebinding, `cors_origins`/`allowed_hosts` opening them, `troupe check`
refusing keyless on a non-loopback address); bounded bodies and
connections (`body_timeout`, a declared 32 MiB body that never comes,
`Expect: 100-continue` past `body_limit`, `max_connections`,
`idle_timeout`); token counting of pathological texts (a million spaces,
8 MB of letters) that neither panics nor stalls other traffic; echoes of
huge client strings and field errors; the modes of `data_dir` and its
files; and the admin live feed taking its key as a WebSocket subprotocol
or a header, never in the URL.

Everything talks to 127.0.0.1; raw sockets are used where httpx would hide
what is under test (Expect, slow or missing bodies, keep-alive).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import socket
import stat
import string
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

import support
from schema import assert_valid
from support import DEMO_PREFIX, GATEWAY_KEY, Gateway, gateway_config, run_troupe, stream_raw, write_config

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
COUNT = "/v1/messages/count_tokens"
ANTHROPIC_VERSION = "2023-06-01"
ADMIN_KEY = "hostile-admin-key"
SPACES = " " * 1_000_000


def chat_body(text: str = "hello there", model: str = "demo", **extra: Any) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def messages_body(text: str = "hello there", model: str = "demo", **extra: Any) -> dict:
    return {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": text}], **extra}


def random_letters(n: int, seed: int = 20240601) -> str:
    rng = random.Random(seed)
    return "".join(rng.choices(string.ascii_lowercase, k=n))


# --------------------------------------------------------------------------
# error envelopes


def openai_error(resp: httpx.Response, status: int) -> dict:
    """Assert an OpenAI error envelope with ``status``; return the error object."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text[:500]}"
    return openai_error_body(resp.content, resp.headers.get("content-type", ""))


def openai_error_body(raw: bytes, ctype: str) -> dict:
    assert ctype.startswith("application/json"), f"error content-type {ctype!r}: {raw[:300]!r}"
    body = json.loads(raw)
    assert_valid("ErrorResponse", body)
    err = body["error"]
    assert err["message"], f"empty error message: {body}"
    return err


def anthropic_error(resp: httpx.Response, status: int) -> dict:
    """Assert an Anthropic error envelope with ``status``; return the error object."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text[:500]}"
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers.get("content-type")
    body = resp.json()
    assert body.get("type") == "error", f"not Anthropic's error envelope: {body}"
    err = body.get("error")
    assert isinstance(err, dict) and isinstance(err.get("type"), str) and err.get("message"), body
    return err


def names(err: dict, field_name: str) -> bool:
    return field_name in (err.get("param") or "") or field_name in err["message"]


# --------------------------------------------------------------------------
# gateways


@pytest.fixture(scope="module")
def gw(tmp_path_factory) -> Iterator[Gateway]:
    """A keyed, demo-only gateway with the default limits."""
    tmp = tmp_path_factory.mktemp("hostile")
    with support.running(lambda: support.start_gateway(tmp, gateway_config(tmp, None))) as g:
        assert g.wait_ready(10), "the demo gateway never became ready"
        yield g


@pytest.fixture(scope="module")
def open_gw(tmp_path_factory) -> Iterator[Gateway]:
    """A keyless (`api_keys = []`), demo-only gateway with the defaults."""
    tmp = tmp_path_factory.mktemp("hostile-open")
    with support.running(lambda: support.start_gateway(tmp, gateway_config(tmp, None, api_keys=[]))) as g:
        assert g.wait_ready(10), "the keyless gateway never became ready"
        yield g


def anthropic_client(g: Gateway, key: str | None = GATEWAY_KEY, **kw: Any) -> httpx.Client:
    headers = {"anthropic-version": ANTHROPIC_VERSION}
    if key:
        headers["x-api-key"] = key
    headers.update(kw.pop("headers", {}))
    return httpx.Client(base_url=g.url, headers=headers, timeout=kw.pop("timeout", 30), trust_env=False, **kw)


def port_of(g: Gateway) -> int:
    return int(g.addr.rsplit(":", 1)[1])


# --------------------------------------------------------------------------
# raw HTTP/1.1


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes = b""
    head: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


class ConnectionClosed(Exception):
    pass


@dataclass
class Raw:
    """One raw HTTP/1.1 connection to a gateway, for what httpx hides
    (Expect, slow or missing bodies, keep-alive, connection limits)."""

    gw: Gateway
    timeout: float = 10.0
    sock: socket.socket = field(init=False)
    buf: bytes = field(init=False, default=b"")

    def __post_init__(self) -> None:
        host, port = self.gw.addr.rsplit(":", 1)
        assert host == "127.0.0.1", self.gw.addr
        self.sock = socket.create_connection((host, int(port)), timeout=self.timeout)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def head(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        content_length: int | None = None,
    ) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.gw.addr}"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        if content_length is not None:
            lines.append(f"Content-Length: {content_length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def request(self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None) -> None:
        self.send(self.head(method, path, headers, None if body is None else len(body)) + (body or b""))

    def _fill(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no data before the deadline")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no data before the deadline") from None
        except (ConnectionResetError, BrokenPipeError) as e:
            raise ConnectionClosed(f"connection reset: {e}") from None
        if not data:
            raise ConnectionClosed("connection closed by the gateway")
        self.buf += data

    def _take(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            self._fill(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _take_line(self, deadline: float) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill(deadline)
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def read_response(self, timeout: float | None = None) -> RawResponse:
        """The next response (a 1xx one too), body read by Content-Length,
        chunked encoding, or to the end of the connection."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\r\n\r\n" not in self.buf:
            self._fill(deadline)
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        assert len(parts) >= 2 and parts[0].startswith("HTTP/1."), f"not an HTTP status line: {lines[0]!r}"
        status = int(parts[1])
        reason = parts[2] if len(parts) > 2 else ""
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        resp = RawResponse(status, reason, headers, head=head)
        if 100 <= status < 200:
            return resp
        if "content-length" in headers:
            resp.body = self._take(int(headers["content-length"]), deadline)
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = b""
            while True:
                size = int(self._take_line(deadline).split(b";")[0].strip(), 16)
                if size == 0:
                    while self._take_line(deadline):
                        pass
                    break
                body += self._take(size, deadline)
                self._take_line(deadline)
            resp.body = body
        else:
            try:
                while True:
                    self._fill(deadline)
            except ConnectionClosed:
                pass
            resp.body, self.buf = self.buf, b""
        return resp

    def wait_closed(self, timeout: float) -> float | None:
        """Seconds until the gateway closed the connection, or None if it
        was still open after ``timeout``. Any bytes that arrive are kept."""
        start = time.monotonic()
        deadline = start + timeout
        try:
            while True:
                self._fill(deadline)
        except ConnectionClosed:
            return time.monotonic() - start
        except TimeoutError:
            return None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}
JSON_AUTH = {**AUTH, "Content-Type": "application/json"}


def rss_kib(pid: int) -> int:
    return _proc_status(pid, "VmRSS")


def vmsize_kib(pid: int) -> int:
    return _proc_status(pid, "VmSize")


def _proc_status(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {name} in /proc/{pid}/status")


# ==========================================================================
# 1. Content type


NOT_JSON = [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz", "application/jsonp"]
NOT_JSON_IDS = ["none", "text-plain", "form", "multipart", "jsonp"]


def post_typed(c: httpx.Client, path: str, body: dict, ctype: str | None) -> httpx.Response:
    headers = {"Content-Type": ctype} if ctype is not None else {}
    # httpx adds no Content-Type of its own to raw `content`.
    return c.post(path, content=json.dumps(body).encode(), headers=headers)


@pytest.mark.parametrize("ctype", NOT_JSON, ids=NOT_JSON_IDS)
def test_chat_without_json_content_type_is_415(gw, ctype):
    with gw.http() as c:
        r = post_typed(c, CHAT, chat_body("typed"), ctype)
    err = openai_error(r, 415)
    assert err["type"] == "invalid_request_error", err
    assert err["code"] == "unsupported_media_type", err
    assert err["param"] is None, err
    assert "content-type" in err["message"].lower(), f"the message does not name Content-Type: {err}"


@pytest.mark.parametrize("path", [MESSAGES, COUNT])
@pytest.mark.parametrize("ctype", NOT_JSON, ids=NOT_JSON_IDS)
def test_anthropic_routes_without_json_content_type_are_415(gw, path, ctype):
    with anthropic_client(gw) as c:
        r = post_typed(c, path, messages_body("typed"), ctype)
    err = anthropic_error(r, 415)
    assert err["type"] == "invalid_request_error", err
    assert "content-type" in err["message"].lower(), f"the message does not name Content-Type: {err}"


JSON_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "application/vnd.troupe+json",
    "application/merge-patch+json; charset=UTF-8",
]


@pytest.mark.parametrize("ctype", JSON_TYPES)
def test_json_content_types_are_accepted(gw, ctype):
    with gw.http() as c:
        r = post_typed(c, CHAT, chat_body("typed"), ctype)
        assert r.status_code == 200, f"{ctype}: {r.status_code} {r.text[:300]}"
        assert r.json()["choices"][0]["message"]["content"] == DEMO_PREFIX + "typed"
    with anthropic_client(gw) as c:
        r = post_typed(c, MESSAGES, messages_body("typed"), ctype)
        assert r.status_code == 200, f"{ctype}: {r.status_code} {r.text[:300]}"
        r = post_typed(c, COUNT, messages_body("typed"), ctype)
        assert r.status_code == 200, f"{ctype}: {r.status_code} {r.text[:300]}"
        assert r.json()["input_tokens"] > 0


# ==========================================================================
# 2. Keyless mode and web pages


FOREIGN_ORIGINS = ["https://evil.example", "null", "http://localhost:3000"]


@pytest.mark.parametrize("origin", FOREIGN_ORIGINS)
def test_keyless_refuses_foreign_origin_openai(open_gw, origin):
    with open_gw.http(auth=False) as c:
        answers = (
            c.post(CHAT, json=chat_body("from a page"), headers={"Origin": origin}),
            c.get("/v1/models", headers={"Origin": origin}),
        )
        for r in answers:
            err = openai_error(r, 403)
            assert err["type"] == "invalid_request_error", err
            assert err["code"] == "forbidden", err
            assert "server.cors_origins" in err["message"], f"the message does not name server.cors_origins: {err}"
            assert "access-control-allow-origin" not in r.headers, f"{origin}: {dict(r.headers)}"


@pytest.mark.parametrize("path", [MESSAGES, COUNT])
def test_keyless_refuses_foreign_origin_anthropic(open_gw, path):
    with anthropic_client(open_gw, key=None) as c:
        r = c.post(path, json=messages_body("from a page"), headers={"Origin": "https://evil.example"})
    err = anthropic_error(r, 403)
    assert err["type"] == "permission_error", err
    assert "server.cors_origins" in err["message"], f"the message does not name server.cors_origins: {err}"
    assert "access-control-allow-origin" not in r.headers, dict(r.headers)


def test_keyless_preflight_from_foreign_origin_is_not_allowed(open_gw):
    with open_gw.http(auth=False) as c:
        r = c.request(
            "OPTIONS",
            CHAT,
            headers={
                "Origin": "https://evil.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
    assert "access-control-allow-origin" not in r.headers, f"preflight {r.status_code} let a foreign origin in: {dict(r.headers)}"


def test_keyless_without_origin_works(open_gw):
    with open_gw.http(auth=False) as c:
        r = c.post(CHAT, json=chat_body("no origin"))
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == DEMO_PREFIX + "no origin"
        assert c.get("/v1/models").status_code == 200
    with anthropic_client(open_gw, key=None) as c:
        r = c.post(MESSAGES, json=messages_body("no origin"))
        assert r.status_code == 200, r.text


def test_keyless_listed_origin_works(gateway_factory):
    g = gateway_factory(api_keys=[], server_extra='cors_origins = ["https://chat.example"]')
    with g.http(auth=False) as c:
        r = c.post(CHAT, json=chat_body("listed"), headers={"Origin": "https://chat.example"})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == DEMO_PREFIX + "listed"
        assert r.headers.get("access-control-allow-origin") == "https://chat.example", dict(r.headers)
        pre = c.request(
            "OPTIONS",
            CHAT,
            headers={
                "Origin": "https://chat.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert 200 <= pre.status_code < 300, f"preflight {pre.status_code}: {pre.text[:300]}"
        assert pre.headers.get("access-control-allow-origin") == "https://chat.example", dict(pre.headers)
        # Listing one origin opens no other.
        r = c.post(CHAT, json=chat_body("other"), headers={"Origin": "https://evil.example"})
        err = openai_error(r, 403)
        assert err["code"] == "forbidden", err
        assert "access-control-allow-origin" not in r.headers, dict(r.headers)


BAD_HOSTS = ["evil.example:{port}", "evil.example", "127.0.0.1.nip.io:{port}", "localhost.evil.example:{port}"]
GOOD_HOSTS = ["127.0.0.1:{port}", "127.0.0.1", "localhost:{port}", "app.localhost:{port}", "[::1]:{port}"]


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_keyless_refuses_foreign_host(open_gw, host):
    """DNS rebinding: a page on evil.example whose name now resolves to
    127.0.0.1 reaches the gateway with its own name in Host."""
    h = host.format(port=port_of(open_gw))
    with open_gw.http(auth=False) as c:
        for r in (c.get("/v1/models", headers={"Host": h}), c.post(CHAT, json=chat_body("rebound"), headers={"Host": h})):
            err = openai_error(r, 403)
            assert "server.allowed_hosts" in err["message"], f"Host {h}: the message does not name server.allowed_hosts: {err}"
        # What the rebound page's fetch() really sends: its own origin too,
        # which then looks same-origin.
        r = c.post(CHAT, json=chat_body("rebound"), headers={"Host": h, "Origin": f"http://{h}"})
        err = openai_error(r, 403)
        assert "server.allowed_hosts" in err["message"] or "server.cors_origins" in err["message"], err
        assert "access-control-allow-origin" not in r.headers, dict(r.headers)
    with anthropic_client(open_gw, key=None) as c:
        err = anthropic_error(c.post(MESSAGES, json=messages_body("rebound"), headers={"Host": h}), 403)
        assert err["type"] == "permission_error", err
        assert "server.allowed_hosts" in err["message"], err


@pytest.mark.parametrize("host", GOOD_HOSTS)
def test_keyless_accepts_loopback_hosts(open_gw, host):
    h = host.format(port=port_of(open_gw))
    with open_gw.http(auth=False) as c:
        r = c.get("/v1/models", headers={"Host": h})
        assert r.status_code == 200, f"Host {h}: {r.status_code} {r.text[:300]}"
        r = c.post(CHAT, json=chat_body("local"), headers={"Host": h})
        assert r.status_code == 200, f"Host {h}: {r.status_code} {r.text[:300]}"


def test_keyless_healthz_answers_any_host(open_gw):
    with open_gw.http(auth=False) as c:
        r = c.get("/healthz", headers={"Host": f"evil.example:{port_of(open_gw)}"})
    assert r.status_code == 200, f"health probes must pass whatever their Host: {r.status_code} {r.text[:300]}"


def test_keyless_allowed_hosts(gateway_factory):
    g = gateway_factory(api_keys=[], server_extra='allowed_hosts = ["troupe.internal"]')
    port = port_of(g)
    with g.http(auth=False) as c:
        for h in (f"troupe.internal:{port}", "troupe.internal", f"127.0.0.1:{port}"):
            r = c.get("/v1/models", headers={"Host": h})
            assert r.status_code == 200, f"Host {h}: {r.status_code} {r.text[:300]}"
            r = c.post(CHAT, json=chat_body("internal"), headers={"Host": h})
            assert r.status_code == 200, f"Host {h}: {r.status_code} {r.text[:300]}"
        err = openai_error(c.get("/v1/models", headers={"Host": f"evil.example:{port}"}), 403)
        assert "server.allowed_hosts" in err["message"], err


def test_keyed_gateway_keeps_cors_open_and_any_host(gw):
    origin = "https://frontend.example"
    with gw.http() as c:
        r = c.post(CHAT, json=chat_body("keyed page"), headers={"Origin": origin})
        assert r.status_code == 200, r.text
        assert r.headers.get("access-control-allow-origin") in (origin, "*"), dict(r.headers)
        pre = c.request("OPTIONS", CHAT, headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
        assert pre.headers.get("access-control-allow-origin") in (origin, "*"), dict(pre.headers)
        r = c.get("/v1/models", headers={"Host": f"gateway.example:{port_of(gw)}"})
        assert r.status_code == 200, f"a keyed gateway must accept any Host: {r.status_code} {r.text[:300]}"
        r = c.post(CHAT, json=chat_body("any host"), headers={"Host": "gateway.example"})
        assert r.status_code == 200, r.text


def test_keyed_gateway_with_cors_origins_allows_only_those(gateway_factory):
    g = gateway_factory(server_extra='cors_origins = ["https://chat.example"]')
    with g.http() as c:
        r = c.post(CHAT, json=chat_body("listed"), headers={"Origin": "https://chat.example"})
        assert r.status_code == 200, r.text
        assert r.headers.get("access-control-allow-origin") == "https://chat.example", dict(r.headers)
        r = c.post(CHAT, json=chat_body("unlisted"), headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers, f"{r.status_code}: {dict(r.headers)}"
        pre = c.request("OPTIONS", CHAT, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in pre.headers, f"{pre.status_code}: {dict(pre.headers)}"


def _check(tmp_path: Path, text: str) -> Any:
    path = write_config(tmp_path, text)
    return run_troupe(["check", "--config", str(path)])


@pytest.mark.parametrize("listen", ["0.0.0.0:8317", "[::]:8317", "192.0.2.10:8317"])
def test_check_refuses_keyless_remote_listen(tmp_path, listen):
    text = gateway_config(tmp_path, None, api_keys=[]).replace('listen = "127.0.0.1:0"', f"listen = {json.dumps(listen)}")
    assert listen in text
    r = _check(tmp_path, text)
    out = r.stdout + r.stderr
    assert r.returncode != 0, f"keyless on {listen} passed `troupe check`:\n{out}"
    assert "server.allow_keyless_remote" in out, f"the refusal does not name server.allow_keyless_remote:\n{out}"


def test_check_allows_keyless_remote_when_asked(tmp_path):
    text = gateway_config(tmp_path, None, api_keys=[], server_extra="allow_keyless_remote = true")
    text = text.replace('listen = "127.0.0.1:0"', 'listen = "0.0.0.0:8317"')
    r = _check(tmp_path, text)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"


@pytest.mark.parametrize(
    "keys, listen",
    [([GATEWAY_KEY], "0.0.0.0:8317"), ([], "127.0.0.1:8317"), ([], "[::1]:8317")],
    ids=["keyed-remote", "keyless-v4-loopback", "keyless-v6-loopback"],
)
def test_check_passes_keyed_remote_and_keyless_loopback(tmp_path, keys, listen):
    text = gateway_config(tmp_path, None, api_keys=keys).replace('listen = "127.0.0.1:0"', f"listen = {json.dumps(listen)}")
    r = _check(tmp_path, text)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"


# ==========================================================================
# 3. Bodies and connections bounded


def test_body_timeout_408(gateway_factory):
    g = gateway_factory(server_extra='body_timeout = "1s"')
    raw = Raw(g)
    try:
        raw.send(raw.head("POST", CHAT, JSON_AUTH, content_length=1000) + b'{"model":"')
        sent = time.monotonic()
        try:
            resp = raw.read_response(timeout=6)
        except TimeoutError:
            pytest.fail(f"no answer {time.monotonic() - sent:.1f}s after a body that stopped (body_timeout = 1s)")
        except ConnectionClosed:
            pytest.fail(f"connection closed after {time.monotonic() - sent:.1f}s without a 408 status line")
        waited = time.monotonic() - sent
    finally:
        raw.close()
    assert resp.status == 408, f"expected 408, got {resp.status} {resp.reason} after {waited:.1f}s: {resp.body[:300]!r}"
    assert 0.8 <= waited <= 6, f"408 after {waited:.2f}s with body_timeout = 1s"
    err = openai_error_body(resp.body, resp.headers.get("content-type", ""))
    assert err["code"] == "request_timeout", err


def test_body_timeout_spares_a_slow_but_complete_body(gateway_factory):
    g = gateway_factory(server_extra='body_timeout = "1s"')
    body = json.dumps(chat_body("slowly")).encode()
    third = len(body) // 3
    raw = Raw(g)
    try:
        raw.send(raw.head("POST", CHAT, JSON_AUTH, content_length=len(body)))
        for piece in (body[:third], body[third : 2 * third], body[2 * third :]):
            raw.send(piece)
            time.sleep(0.2)
        resp = raw.read_response(timeout=30)
    finally:
        raw.close()
    assert resp.status == 200, f"{resp.status}: {resp.body[:300]!r}"
    assert resp.json()["choices"][0]["message"]["content"] == DEMO_PREFIX + "slowly"


def test_declared_huge_bodies_do_not_reserve_memory(gateway_factory):
    """200 connections each declaring a 32 MiB body (the default limit) and
    sending one byte must not make the gateway hold 200 x 32 MiB."""
    g = gateway_factory()
    assert g.wait_ready(10)
    pid = g.popen.pid
    with g.http() as c:  # warm up the allocator and the workers
        for i in range(5):
            assert c.post(CHAT, json=chat_body(f"warm {i}")).status_code == 200
    time.sleep(0.3)
    rss0, vm0 = rss_kib(pid), vmsize_kib(pid)
    conns: list[Raw] = []
    try:
        for _ in range(200):
            raw = Raw(g)
            raw.send(raw.head("POST", CHAT, JSON_AUTH, content_length=32 * 1024 * 1024) + b"{")
            conns.append(raw)
        peak_rss, peak_vm = rss0, vm0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            peak_rss = max(peak_rss, rss_kib(pid))
            peak_vm = max(peak_vm, vmsize_kib(pid))
            time.sleep(0.1)
        with g.http(timeout=10) as c:
            assert c.get("/healthz").status_code == 200, "the gateway stopped answering"
        peak_rss = max(peak_rss, rss_kib(pid))
        peak_vm = max(peak_vm, vmsize_kib(pid))
    finally:
        for raw in conns:
            raw.close()
    assert g.alive(), g.stderr_text()
    grew = (peak_rss - rss0) / 1024
    assert grew < 40, f"RSS grew by {grew:.1f} MiB with 200 pending 32 MiB bodies ({rss0 // 1024} -> {peak_rss // 1024} MiB)"
    # A buffer sized from the declared length costs 6.4 GB of address space
    # even while untouched: with strict overcommit it is a refusal.
    vgrew = (peak_vm - vm0) / 1024
    assert vgrew < 2048, f"virtual memory grew by {vgrew:.0f} MiB: buffers are sized from the declared Content-Length"


@pytest.mark.parametrize("path,anthropic", [(CHAT, False), ("/v1/messages", True)])
def test_expect_continue_over_limit_is_413_before_any_body(gateway_factory, path, anthropic):
    """The 413 is decided from the declared length: it comes instead of
    `100 Continue`, without the client sending a byte of the body, in the
    caller's envelope, and the connection is closed so the body is never
    read."""
    g = gateway_factory(server_extra='body_limit = "1KiB"')
    raw = Raw(g)
    try:
        raw.send(raw.head("POST", path, {**JSON_AUTH, "Expect": "100-continue"}, content_length=4096))
        try:
            first = raw.read_response(timeout=10)
        except (TimeoutError, ConnectionClosed) as e:
            pytest.fail(f"no answer to an oversized Expect: 100-continue request: {e}")
        assert first.status == 413, f"expected 413 (and no 100), got {first.status} {first.reason}: {first.body[:300]!r}"
        assert first.headers.get("connection", "").lower() == "close", first.headers
        if anthropic:
            err = json.loads(first.body)
            assert err["type"] == "error" and err["error"]["type"] == "request_too_large", err
        else:
            openai_error_body(first.body, first.headers.get("content-type", ""))
    finally:
        raw.close()


def test_expect_continue_small_body_gets_100_then_answer(gateway_factory):
    g = gateway_factory(server_extra='body_limit = "1KiB"')
    body = json.dumps(chat_body("continued")).encode()
    raw = Raw(g)
    try:
        raw.send(raw.head("POST", CHAT, {**JSON_AUTH, "Expect": "100-continue"}, content_length=len(body)))
        first = raw.read_response(timeout=10)
        assert first.status == 100, f"expected `100 Continue`, got {first.status} {first.reason}: {first.body[:300]!r}"
        raw.send(body)
        resp = raw.read_response(timeout=30)
    finally:
        raw.close()
    assert resp.status == 200, f"{resp.status}: {resp.body[:300]!r}"
    assert resp.json()["choices"][0]["message"]["content"] == DEMO_PREFIX + "continued"


def _get_models(raw: Raw, timeout: float = 15) -> RawResponse:
    raw.request("GET", "/v1/models", AUTH)
    return raw.read_response(timeout=timeout)


def test_max_connections(gateway_factory):
    g = gateway_factory(server_extra="max_connections = 4")
    held: list[Raw] = []
    try:
        for i in range(4):
            raw = Raw(g)
            held.append(raw)
            r = _get_models(raw)
            assert r.status == 200, f"connection {i + 1} of 4: {r.status} {r.body[:300]!r}"
            assert r.headers.get("connection", "").lower() != "close", f"connection {i + 1} not kept alive: {r.headers}"
        fifth = Raw(g)
        try:
            try:
                fifth.request("GET", "/v1/models", AUTH)
            except OSError:
                pass  # the gateway may answer before reading the request
            try:
                r = fifth.read_response(timeout=10)
            except TimeoutError:
                pytest.fail("the 5th connection got no answer within 10s (left waiting instead of refused)")
            except ConnectionClosed as e:
                pytest.fail(f"the 5th connection was closed without a 503: {e}")
        finally:
            fifth.close()
        assert r.status == 503, f"5th connection: expected 503, got {r.status}: {r.body[:300]!r}"
        assert r.headers.get("connection", "").lower() == "close", f"no `Connection: close`: {r.headers}"
        assert r.headers.get("retry-after", "").strip(), f"no Retry-After: {r.headers}"
        openai_error_body(r.body, r.headers.get("content-type", ""))
        # The held connections still work.
        r = _get_models(held[0])
        assert r.status == 200, f"a held connection stopped working: {r.status}"
    finally:
        for raw in held:
            raw.close()
    # Once they are gone, a new connection is served again.
    deadline = time.monotonic() + 10
    last = None
    while time.monotonic() < deadline:
        raw = Raw(g)
        try:
            last = _get_models(raw, timeout=5)
            if last.status == 200:
                break
        except (TimeoutError, ConnectionClosed, OSError) as e:
            last = e
        finally:
            raw.close()
        time.sleep(0.1)
    assert isinstance(last, RawResponse) and last.status == 200, f"no connection served after the 4 closed: {last}"


def test_idle_keepalive_connection_closed(gateway_factory):
    g = gateway_factory(server_extra='idle_timeout = "1s"')
    raw = Raw(g)
    try:
        for i in range(2):  # two requests: the connection is kept alive
            raw.request("GET", "/v1/models", AUTH)
            r = raw.read_response(timeout=15)
            assert r.status == 200, f"request {i + 1}: {r.status} {r.body[:300]!r}"
        closed_after = raw.wait_closed(timeout=3.5)
    finally:
        raw.close()
    assert closed_after is not None, "an idle keep-alive connection was still open 3.5s later (idle_timeout = 1s)"


def test_requests_across_the_pools_compaction(gateway_factory):
    """Every 30 s (first 25 s after start) each worker replaces the finished
    requests actix keeps for reuse by header-less ones (src/app/pools.rs). A
    stream open across that and requests after it, which reuse the new
    objects, must be whole: their headers (the key) read, their text intact."""
    g = gateway_factory()
    with g.http(timeout=120) as c:
        # Finished requests with headers, some at once, for the pools to hold.
        with ThreadPoolExecutor(16) as ex:
            statuses = list(ex.map(lambda i: c.post(CHAT, json=chat_body(f"warm {i}")).status_code, range(64)))
        assert statuses == [200] * 64
        # 2 ms a word: over 30 s, across the first compaction.
        said = " ".join(f"w{i}" for i in range(15_000))
        started = time.monotonic()
        r = stream_raw(c, CHAT, chat_body(said, stream=True))
        took = time.monotonic() - started
        assert r.status == 200 and r.transport_error is None and r.done, (r.status, r.transport_error)
        text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in r.chunks() if ch.get("choices"))
        assert text == DEMO_PREFIX + said
        assert took > 26, f"the stream took {took:.1f} s: it did not span the first compaction"
        with ThreadPoolExecutor(16) as ex:
            answers = list(ex.map(lambda i: c.post(CHAT, json=chat_body(f"after {i}")), range(64)))
        for i, a in enumerate(answers):
            assert a.status_code == 200, a.text[:300]
            assert a.json()["choices"][0]["message"]["content"] == f"{DEMO_PREFIX}after {i}"
    # Without the key, still refused: the compacted requests hold no stale headers.
    with g.http(auth=False) as c:
        assert c.post(CHAT, json=chat_body()).status_code == 401


# ==========================================================================
# 4. Token counting that cannot hurt anyone


def test_count_tokens_million_spaces(gw):
    with anthropic_client(gw, timeout=120) as c:
        r = c.post(COUNT, json=messages_body(SPACES))
    assert r.status_code == 200, f"{r.status_code}: {r.text[:500]}"
    n = r.json()["input_tokens"]
    assert isinstance(n, int) and 1e6 / 256 <= n <= 1e6 / 32, f"implausible count for 1,000,000 spaces: {n}"
    assert gw.alive(), gw.stderr_text()


def test_count_tokens_eight_mb_of_letters(gw):
    text = random_letters(8_000_000)
    with anthropic_client(gw, timeout=120) as c:
        r = c.post(COUNT, json=messages_body(text))
    assert r.status_code == 200, f"{r.status_code}: {r.text[:500]}"
    n = r.json()["input_tokens"]
    assert isinstance(n, int) and 8e6 / 6 <= n <= 8e6 / 1.2, f"implausible count for 8 MB of letters: {n}"


def test_chat_stream_with_million_spaces(gw):
    with gw.http(timeout=120) as c:
        res = stream_raw(c, CHAT, chat_body(SPACES, stream=True, stream_options={"include_usage": True}))
    assert res.status == 200, res.body[:500]
    assert res.transport_error is None, res.transport_error
    assert res.done, f"stream did not end with [DONE]: {res.lines[-5:]}"
    chunks = res.chunks()
    assert not [c for c in chunks if "error" in c], [c for c in chunks if "error" in c]
    text = "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])
    assert text.startswith(DEMO_PREFIX), text[:200]
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch.get("finish_reason")]
    assert finishes == ["stop"], finishes
    usage = chunks[-1].get("usage")
    assert usage, f"no usage chunk last: {chunks[-1]}"
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0, usage
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], usage


def anthropic_events(c: httpx.Client, body: dict) -> tuple[int, list[tuple[str | None, dict]], bytes, str | None]:
    """POST a streamed /v1/messages; (status, [(event, data)], error body, transport error)."""
    with c.stream("POST", MESSAGES, json=body) as resp:
        if resp.status_code != 200:
            return resp.status_code, [], resp.read(), None
        events, error = support.read_named_events(resp)
        return 200, events, b"", error


def test_messages_stream_with_million_spaces(gw):
    with anthropic_client(gw, timeout=120) as c:
        status, events, body, broken = anthropic_events(c, messages_body(SPACES, max_tokens=100, stream=True))
    assert status == 200, body[:500]
    assert broken is None, broken
    kinds = [d.get("type") for _, d in events if d.get("type") != "ping"]
    assert "error" not in kinds, [d for _, d in events if d.get("type") == "error"]
    assert kinds and kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
    start = events[0][1]["message"]
    assert start["usage"]["input_tokens"] > 0, start["usage"]
    deltas = [d for _, d in events if d.get("type") == "message_delta"]
    assert deltas and deltas[-1]["usage"]["output_tokens"] > 0, deltas
    text = "".join(d["delta"].get("text", "") for _, d in events if d.get("type") == "content_block_delta")
    assert text.startswith(DEMO_PREFIX), text[:200]


def paced_demo_config(tmp: Path) -> str:
    text = gateway_config(tmp, None, demo=False)
    return text + "\n".join(
        [
            "",
            "[[pools]]",
            'name = "demo"',
            'kind = "demo"',
            'models = ["demo"]',
            "sessions = 4",
            "max_concurrency = 8",
            'chunk_delay = "20ms"',
            "",
        ]
    )


HEALTH_PROBE = r"""
import http.client, json, os, sys, time
host, port = sys.argv[1].rsplit(":", 1)
stop_file = sys.argv[2]
latencies, errors = [], []
conn = http.client.HTTPConnection(host, int(port), timeout=5)
deadline = time.monotonic() + 150
while not os.path.exists(stop_file) and time.monotonic() < deadline:
    at, t0 = time.time(), time.perf_counter()
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            errors.append(f"/healthz {resp.status}")
    except (OSError, http.client.HTTPException) as e:
        errors.append(f"{type(e).__name__}: {e}")
        conn.close()
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
    latencies.append([at, time.perf_counter() - t0])
    time.sleep(0.05)
print(json.dumps({"latencies": latencies, "errors": errors}))
"""


def test_counting_does_not_stall_other_traffic(gateway_factory, tmp_path):
    """Two 8 MB counts at once while /healthz is polled and 20 paced demo
    streams run: the probes stay fast and no stream stutters."""
    g = gateway_factory(config_text=paced_demo_config(tmp_path / "paced"))
    assert g.wait_ready(10), "the paced demo gateway never became ready"
    big = json.dumps(messages_body(random_letters(8_000_000))).encode()
    prompts = [" ".join(f"w{i}x{j}" for j in range(100)) for i in range(20)]
    with g.http() as c:  # one warm stream: sessions up, code paths touched
        warm = stream_raw(c, CHAT, chat_body("warm up", stream=True))
        assert warm.status == 200 and warm.done, warm.body[:300]

    count_windows: list[tuple[float, float]] = []

    def count() -> tuple[int, Any]:
        with anthropic_client(g, timeout=120, headers={"content-type": "application/json"}) as c:
            start = time.time()
            r = c.post(COUNT, content=big)
            count_windows.append((start, time.time()))
            return r.status_code, (r.json() if r.status_code == 200 else r.text[:300])

    def paced_stream(prompt: str) -> dict:
        out: dict[str, Any] = {"times": [], "text": "", "done": False, "status": None, "error": None}
        with g.http(timeout=120) as c:
            with c.stream("POST", CHAT, json=chat_body(prompt, stream=True)) as resp:
                out["status"] = resp.status_code
                if resp.status_code != 200:
                    out["error"] = resp.read()[:300]
                    return out
                try:
                    for line in resp.iter_lines():
                        if not line.startswith("data: "):
                            continue
                        out["times"].append(time.perf_counter())
                        payload = line[6:]
                        if payload == "[DONE]":
                            out["done"] = True
                            continue
                        for ch in json.loads(payload)["choices"]:
                            out["text"] += ch["delta"].get("content") or ""
                except httpx.HTTPError as e:
                    out["error"] = f"{type(e).__name__}: {e}"
        return out

    # The probes run in their own process: this one is busy with the
    # streams, and its GIL would add latency that is not the gateway's.
    stop_file = tmp_path / "stop-probing"
    poller = subprocess.Popen(
        [sys.executable, "-c", HEALTH_PROBE, g.addr, str(stop_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        with ThreadPoolExecutor(max_workers=22) as pool:
            counts = [pool.submit(count) for _ in range(2)]
            time.sleep(0.05)
            streams = [pool.submit(paced_stream, p) for p in prompts]
            count_results = [f.result(timeout=180) for f in counts]
            stream_results = [f.result(timeout=180) for f in streams]
    finally:
        stop_file.touch()
        try:
            out, err = poller.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            poller.kill()
            out, err = poller.communicate()
    assert poller.returncode == 0, f"the health prober failed: {err[-2000:]}"
    report = json.loads(out)
    timed, probe_errors = report["latencies"], report["errors"]
    probes = [lat for _, lat in timed]
    origin = min([at for at, _ in timed] + [s for s, _ in count_windows])

    def timeline(threshold: float) -> str:
        counts_at = ", ".join(f"{s - origin:.2f}-{e - origin:.2f}s" for s, e in count_windows)
        slow = ", ".join(f"{lat * 1000:.0f} ms at {at - origin:.2f}s" for at, lat in timed if lat > threshold)
        return f"slow probes: {slow}; the counts ran {counts_at}"

    for status, body in count_results:
        assert status == 200, f"count_tokens: {status} {body}"
        assert 8e6 / 6 <= body["input_tokens"] <= 8e6 / 1.2, body
    worst = 0.0
    for prompt, res in zip(prompts, stream_results):
        assert res["status"] == 200 and res["error"] is None, res
        assert res["done"], f"stream did not finish: {res['text'][-100:]!r}"
        assert res["text"] == DEMO_PREFIX + prompt, res["text"][:200]
        gaps = [b - a for a, b in zip(res["times"], res["times"][1:])]
        worst = max([worst, *gaps])
    assert worst < 0.5, f"a paced stream stalled {worst * 1000:.0f} ms between two chunks during the counts"
    assert not probe_errors, probe_errors
    assert len(probes) >= 10, f"only {len(probes)} health probes ran"
    slow = [p for p in probes if p > 0.1]
    assert len(slow) <= 1, f"{len(slow)} of {len(probes)} /healthz probes took over 100 ms ({timeline(0.1)})"
    assert max(probes) < 0.5, f"a /healthz probe took {max(probes) * 1000:.0f} ms ({timeline(0.5)})"


# ==========================================================================
# 5. Echoes and field errors


def test_huge_model_name_is_not_echoed_whole(gw):
    name = "m" * 1_000_000
    with gw.http(timeout=60) as c:
        r = c.post(CHAT, json=chat_body("hi", model=name))
    err = openai_error(r, 404)
    assert err["code"] == "model_not_found", err
    assert len(r.content) < 4096, f"the 404 body is {len(r.content)} bytes: the model name was echoed whole"
    with anthropic_client(gw, timeout=60) as c:
        for path in (MESSAGES, COUNT):
            r = c.post(path, json=messages_body("hi", model=name))
            anthropic_error(r, 404)
            assert len(r.content) < 4096, f"{path}: the 404 body is {len(r.content)} bytes"


def test_wrong_role_type_names_the_field(gw):
    body = {"model": "demo", "messages": [{"role": 5, "content": "hi"}]}
    with gw.http() as c:
        err = openai_error(c.post(CHAT, json=body), 400)
    assert err["type"] == "invalid_request_error", err
    assert names(err, "messages[0].role"), f"the error does not name messages[0].role: {err}"
    assert not err["message"].startswith("invalid JSON body"), f"valid JSON reported as invalid: {err}"


# ==========================================================================
# 6. Files


def test_data_dir_and_files_are_private(gateway_factory, clean_peer):
    """With a permissive umask, data_dir is still 0700 and every file in it
    0600, also after the restart log has been appended to."""
    old = os.umask(0)
    try:
        g = gateway_factory(peer_url=clean_peer.url)
    finally:
        os.umask(old)
    data_dir = g.config_path.parent / "data"
    assert g.wait_ready(10)
    # A refused key makes its session restart: the restart log gets a line.
    clean_peer.fault("401", count=1000, key=support.PEER_KEYS[0])
    log = data_dir / "restarts.jsonl"
    deadline = time.monotonic() + 15
    with g.http() as c:
        while time.monotonic() < deadline:
            r = c.post(CHAT, json=chat_body("restart please", model="gpt-4o-mini"))
            assert r.status_code == 200, r.text
            if log.exists() and '"restart"' in log.read_text(encoding="utf-8"):
                break
            time.sleep(0.2)
    assert log.exists() and '"restart"' in log.read_text(encoding="utf-8"), f"no restart logged in {log}"
    mode = stat.S_IMODE(data_dir.stat().st_mode)
    assert mode == 0o700, f"data_dir {data_dir} has mode {mode:o}, expected 700"
    wrong = []
    for path in sorted(data_dir.rglob("*")):
        m = stat.S_IMODE(path.stat().st_mode)
        want = 0o700 if path.is_dir() else 0o600
        if m != want:
            wrong.append(f"{path.relative_to(data_dir)}: {m:o} (expected {want:o})")
    assert not wrong, "files in data_dir readable by others:\n  " + "\n  ".join(wrong)


# ==========================================================================
# 7. Admin live events: the key never in the URL


@dataclass
class WsOutcome:
    status: int  # 101 when upgraded
    protocol: str | None = None
    first: Any = None


def ws_open(g: Gateway, query: str = "", protocols: tuple[str, ...] = (), headers: dict | None = None) -> WsOutcome:
    import aiohttp

    url = f"ws://{g.addr}/admin/events{query}"

    async def go() -> WsOutcome:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
            try:
                async with s.ws_connect(url, protocols=protocols, headers=headers or {}, autoping=True) as ws:
                    msg = await ws.receive(timeout=10)
                    first = json.loads(msg.data) if msg.type == aiohttp.WSMsgType.TEXT else msg.type
                    return WsOutcome(101, ws.protocol, first)
            except aiohttp.WSServerHandshakeError as e:
                return WsOutcome(e.status)

    return asyncio.run(go())


@pytest.fixture
def admin_gw(gateway_factory) -> Gateway:
    g = gateway_factory(server_extra=f'admin_key = "{ADMIN_KEY}"')
    assert g.wait_ready(10)
    return g


def test_admin_events_refuse_key_in_url(admin_gw):
    out = ws_open(admin_gw, query=f"?key={ADMIN_KEY}")
    assert out.status == 401, f"`?key=<admin_key>` opened the live feed (status {out.status}): keys in URLs end up in logs"
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    with httpx.Client(base_url=admin_gw.url, trust_env=False, timeout=10) as c:
        r = c.get(f"/admin/events?key={ADMIN_KEY}", headers=upgrade)
        assert r.status_code == 401, f"{r.status_code}: {r.text[:300]}"
        assert ADMIN_KEY not in r.text


def test_admin_events_key_as_subprotocol(admin_gw):
    out = ws_open(admin_gw, protocols=("troupe.admin", f"troupe.key.{ADMIN_KEY}"))
    assert out.status == 101, f"the subprotocol key was refused: {out.status}"
    assert out.protocol == "troupe.admin", f"the server selected {out.protocol!r}, expected 'troupe.admin'"
    assert isinstance(out.first, dict) and out.first.get("type") in ("sessions", "event"), out.first


@pytest.mark.parametrize(
    "protocols",
    [("troupe.admin", "troupe.key.wrong-key"), ("troupe.admin",), (f"troupe.key.{ADMIN_KEY}x",)],
    ids=["wrong-key", "no-key", "longer-key"],
)
def test_admin_events_refuse_bad_subprotocol_key(admin_gw, protocols):
    out = ws_open(admin_gw, protocols=protocols)
    assert out.status == 401, f"{protocols}: expected 401, got {out.status}"


def test_admin_events_key_as_bearer(admin_gw):
    out = ws_open(admin_gw, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert out.status == 101, f"Bearer admin key refused: {out.status}"
    assert isinstance(out.first, dict) and out.first.get("type") in ("sessions", "event"), out.first
    assert ws_open(admin_gw, headers={"Authorization": "Bearer wrong"}).status == 401


def test_a_slow_client_holds_back_its_own_upstream_and_loses_nothing(tmp_path):
    """A client that stops reading fills its socket, then its mailbox: the
    upstream call waits for room (its session still counts it in flight)
    instead of running ahead or dropping words, and when the client reads
    again every word arrives, once and in order, and the stream ends."""
    admin = "admin-slow-client"
    cfg = support.server_toml(tmp_path, admin) + "\n".join(
        [
            "",
            "[[pools]]",
            'name = "demo"',
            'kind = "demo"',
            'models = ["demo"]',
            "sessions = 1",
            'chunk_delay = "0ms"',
            "",
        ]
    )
    # About 10 MB of answer with no delay between words: far more than the
    # socket buffers, actix's write buffer and the mailbox hold together.
    text = " ".join(f"w{i}" for i in range(60_000))
    body = json.dumps(chat_body(text, stream=True)).encode()
    with support.running(lambda: support.start_gateway(tmp_path, cfg)) as g:
        assert g.wait_ready(10), "the gateway never became ready"
        host, port = g.url.removeprefix("http://").rsplit(":", 1)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(60)
            sock.connect((host, int(port)))
            head = (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Authorization: Bearer {GATEWAY_KEY}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            sock.sendall(head.encode() + body)
            # Not reading: the upstream must be held back, not finished.
            time.sleep(1.5)
            held = [s["in_flight"] for s in support.session_list(g, admin)]
            assert held == [1], f"in flight while the client does not read: {held}"
            data = bytearray()
            while chunk := sock.recv(1 << 20):
                data += chunk
    # Each body chunk is whole SSE events, so chunked framing never splits one.
    deltas = re.findall(rb'"content":("(?:[^"\\]|\\.)*")', bytes(data))
    answer = "".join(json.loads(d) for d in deltas)
    assert answer == DEMO_PREFIX + text, f"{len(answer)} characters, ending {answer[-80:]!r}"
    assert bytes(data).endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"), bytes(data[-60:])
