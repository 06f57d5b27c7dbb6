"""HTTP hygiene of the gateway, seen from outside.

Covers: `HEAD` wherever `GET` is served (same status and content type, no
body); a wrong method on a known route is 405 with an `Allow` header, in
the caller's error envelope (an unknown path stays 404); request bodies
compressed with `Content-Encoding` gzip, deflate, br or zstd are decoded,
an unknown coding is 415, and `server.body_limit` bounds the *decoded* size
(a decompression bomb is 413 without the gateway's memory growing); a JSON
body that starts with a UTF-8 byte order mark is accepted; HTTP/2 cleartext
with prior knowledge (h2c) is served; and `/metrics` counts session
restarts by pool and by a closed set of reasons.

Everything talks to 127.0.0.1; raw sockets are used where httpx would hide
what is under test (a body after a HEAD answer, HTTP/2 frames).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import socket
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import httpx
import pytest

import support
from schema import assert_valid
from support import DEMO_PREFIX, GATEWAY_KEY, Gateway, gateway_config

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
COUNT = "/v1/messages/count_tokens"
ANTHROPIC_VERSION = "2023-06-01"
AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}
ANTHROPIC_HEADERS = {"x-api-key": GATEWAY_KEY, "anthropic-version": ANTHROPIC_VERSION}
BOM = b"\xef\xbb\xbf"
MIB = 1024 * 1024


def chat_body(text: str = "hello there", model: str = "demo", **extra: Any) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def messages_body(text: str = "hello there", model: str = "demo", **extra: Any) -> dict:
    return {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": text}], **extra}


# --------------------------------------------------------------------------
# error envelopes


def openai_error(resp: httpx.Response, status: int) -> dict:
    """Assert an OpenAI error envelope with ``status``; return the error object."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text[:500]}"
    ctype = resp.headers.get("content-type", "")
    assert ctype.startswith("application/json"), f"error content-type {ctype!r}: {resp.text[:300]}"
    body = resp.json()
    assert_valid("ErrorResponse", body)
    err = body["error"]
    assert isinstance(err.get("type"), str) and err["type"], body
    assert err["message"], f"empty error message: {body}"
    return err


def anthropic_error(resp: httpx.Response, status: int) -> dict:
    """Assert an Anthropic error envelope with ``status``; return the error object."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text[:500]}"
    ctype = resp.headers.get("content-type", "")
    assert ctype.startswith("application/json"), f"error content-type {ctype!r}: {resp.text[:300]}"
    body = resp.json()
    assert body.get("type") == "error", f"not Anthropic's error envelope: {body}"
    err = body.get("error")
    assert isinstance(err, dict) and isinstance(err.get("type"), str) and err["type"] and err.get("message"), body
    return err


def envelope_error(resp: httpx.Response, status: int, anthropic: bool) -> dict:
    return anthropic_error(resp, status) if anthropic else openai_error(resp, status)


def assert_chat_answer(resp: httpx.Response, text: str) -> None:
    assert resp.status_code == 200, f"{resp.status_code}: {resp.text[:500]}"
    body = resp.json()
    assert body["object"] == "chat.completion", body
    assert body["choices"][0]["message"]["content"] == DEMO_PREFIX + text, body


def assert_messages_answer(resp: httpx.Response, text: str) -> None:
    assert resp.status_code == 200, f"{resp.status_code}: {resp.text[:500]}"
    body = resp.json()
    assert body["type"] == "message" and body["role"] == "assistant", body
    got = "".join(b.get("text", "") for b in body["content"] if b.get("type") == "text")
    assert got == DEMO_PREFIX + text, body


# --------------------------------------------------------------------------
# gateways


def _start(tmp, text: str) -> Gateway:
    try:
        g = support.start_gateway(tmp, text)
    except support.StartError as e:
        pytest.fail(str(e), pytrace=False)
    if not g.wait_ready(10):
        g.cleanup()
        pytest.fail("the gateway never became ready", pytrace=False)
    return g


@pytest.fixture(scope="module")
def gw(tmp_path_factory) -> Iterator[Gateway]:
    """A keyed, demo-only gateway with the default limits."""
    tmp = tmp_path_factory.mktemp("hygiene")
    g = _start(tmp, gateway_config(tmp, None))
    yield g
    g.cleanup()


@pytest.fixture(scope="module")
def small_gw(tmp_path_factory) -> Iterator[Gateway]:
    """A keyed, demo-only gateway with `body_limit = "1MiB"`."""
    tmp = tmp_path_factory.mktemp("hygiene-1mib")
    g = _start(tmp, gateway_config(tmp, None, server_extra='body_limit = "1MiB"'))
    yield g
    g.cleanup()


def anthropic_client(g: Gateway, **kw: Any) -> httpx.Client:
    headers = dict(ANTHROPIC_HEADERS)
    headers.update(kw.pop("headers", {}))
    return httpx.Client(base_url=g.url, headers=headers, timeout=kw.pop("timeout", 30), trust_env=False, **kw)


def client_for(g: Gateway, anthropic: bool, **kw: Any) -> httpx.Client:
    return anthropic_client(g, **kw) if anthropic else g.http(**kw)


# --------------------------------------------------------------------------
# raw HTTP/1.1: what follows a HEAD answer on the same connection


@dataclass
class RawHead:
    status: int
    headers: dict[str, str]  # lower-case names
    trailing: bytes  # bytes between this answer's header block and the next status line


def head_then_get(g: Gateway, path: str, headers: dict[str, str], timeout: float = 10.0) -> RawHead:
    """Sends `HEAD path`, reads its header block, then sends `GET /healthz`
    on the same connection and returns what came in between: a HEAD answer
    that carries a body shows it there, before the GET's status line."""
    host, port = g.addr.rsplit(":", 1)
    assert host == "127.0.0.1", g.addr
    deadline = time.monotonic() + timeout
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    buf = b""

    def fill() -> None:
        nonlocal buf
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"HEAD {path}: no complete answer within {timeout}s; got {buf[:300]!r}")
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            raise AssertionError(f"HEAD {path}: no complete answer within {timeout}s; got {buf[:300]!r}") from None
        if not data:
            raise AssertionError(f"HEAD {path}: the connection closed; got {buf[:300]!r}")
        buf += data

    try:
        lines = [f"HEAD {path} HTTP/1.1", f"Host: {g.addr}", *(f"{k}: {v}" for k, v in headers.items())]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in buf:
            fill()
        head, _, buf = buf.partition(b"\r\n\r\n")
        text = head.decode("latin-1").split("\r\n")
        status = int(text[0].split(" ", 2)[1])
        hdrs: dict[str, str] = {}
        for line in text[1:]:
            name, _, value = line.partition(":")
            hdrs[name.strip().lower()] = value.strip()
        if hdrs.get("connection", "").lower() == "close":
            # Nothing more may follow; whatever came is the (wrong) body.
            try:
                while True:
                    fill()
            except AssertionError:
                pass
            return RawHead(status, hdrs, buf)
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {g.addr}\r\n\r\n".encode())
        while b"HTTP/1.1 " not in buf:
            fill()
        trailing = buf[: buf.index(b"HTTP/1.1 ")]
        return RawHead(status, hdrs, trailing)
    finally:
        sock.close()


# ==========================================================================
# 1. HEAD wherever GET is served


HEAD_PATHS = [
    "/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/models",
    "/v1/models/demo",
    "/v1/models/no-such-model",
    "/openai/v1/models",
    "/openai/v1/models/demo",
    "/anthropic/v1/models",
    "/anthropic/v1/models/demo",
]


@pytest.mark.parametrize("path", HEAD_PATHS)
def test_head_answers_like_get_without_a_body(gw, path):
    with gw.http() as c:
        got = c.get(path)
    expected_status = 404 if "no-such-model" in path else 200
    assert got.status_code == expected_status, f"GET {path}: {got.status_code} {got.text[:300]}"
    head = head_then_get(gw, path, AUTH)
    assert head.status == got.status_code, f"HEAD {path}: {head.status}, but GET answers {got.status_code}"
    assert head.headers.get("content-type") == got.headers.get("content-type"), (
        f"HEAD {path}: content-type {head.headers.get('content-type')!r}, GET has {got.headers.get('content-type')!r}"
    )
    assert head.trailing == b"", f"HEAD {path} sent a body: {head.trailing[:300]!r}"


def test_head_without_a_key_is_401_like_get(gw):
    with gw.http(auth=False) as c:
        got = c.get("/v1/models")
    openai_error(got, 401)
    for path in ("/v1/models", "/v1/models/demo"):
        head = head_then_get(gw, path, {})
        assert head.status == 401, f"HEAD {path} without a key: {head.status} (GET is 401)"
        assert head.headers.get("content-type") == got.headers.get("content-type"), head.headers
        assert head.trailing == b"", f"HEAD {path} sent a body: {head.trailing[:300]!r}"
    head = head_then_get(gw, "/v1/models", {"Authorization": "Bearer sk-wrong"})
    assert head.status == 401, f"HEAD /v1/models with a wrong key: {head.status}"


# ==========================================================================
# 2. A wrong method is 405 with Allow; an unknown path is 404


def allow_set(resp: httpx.Response) -> set[str]:
    raw = resp.headers.get("allow")
    assert raw is not None, f"{resp.request.method} {resp.request.url.path}: 405 without an Allow header: {dict(resp.headers)}"
    return {m.strip().upper() for m in raw.split(",") if m.strip()}


WRONG_METHODS = [
    # method, path, methods Allow must list, envelope: "openai" | "anthropic" | None
    ("GET", CHAT, {"POST"}, "openai"),
    ("PUT", CHAT, {"POST"}, "openai"),
    ("DELETE", "/openai/v1/chat/completions", {"POST"}, "openai"),
    ("POST", "/v1/models", {"GET", "HEAD"}, "openai"),
    ("DELETE", "/v1/models/demo", {"GET", "HEAD"}, "openai"),
    ("DELETE", MESSAGES, {"POST"}, "anthropic"),
    ("GET", MESSAGES, {"POST"}, "anthropic"),
    ("GET", COUNT, {"POST"}, "anthropic"),
    ("PATCH", "/anthropic/v1/messages", {"POST"}, "anthropic"),
    ("POST", "/healthz", {"GET", "HEAD"}, None),
    ("PUT", "/readyz", {"GET", "HEAD"}, None),
]


@pytest.mark.parametrize(
    "method, path, allowed, envelope",
    WRONG_METHODS,
    ids=[f"{m}-{p}" for m, p, _, _ in WRONG_METHODS],
)
def test_wrong_method_is_405_with_allow(gw, method, path, allowed, envelope):
    anthropic = envelope == "anthropic"
    with client_for(gw, anthropic) as c:
        kw: dict[str, Any] = {}
        if method in ("POST", "PUT", "PATCH"):
            kw["json"] = messages_body("wrong method") if anthropic else chat_body("wrong method")
        r = c.request(method, path, **kw)
    assert r.status_code == 405, f"{method} {path}: expected 405, got {r.status_code}: {r.text[:300]}"
    allow = allow_set(r)
    assert allowed <= allow, f"{method} {path}: Allow is {r.headers.get('allow')!r}, should list {sorted(allowed)}"
    assert method not in allow, f"{method} {path}: refused with 405 yet Allow lists it: {r.headers.get('allow')!r}"
    if envelope is not None:
        envelope_error(r, 405, anthropic)


UNKNOWN_PATHS = [
    ("GET", "/v1/nope", "openai"),
    ("POST", "/v1/chat/nope", "openai"),
    ("DELETE", "/no/such/thing", "openai"),
    ("GET", "/healthz/extra", "openai"),
    ("GET", "/anthropic/v1/nope", "anthropic"),
]


@pytest.mark.parametrize("method, path, envelope", UNKNOWN_PATHS, ids=[f"{m}-{p}" for m, p, _ in UNKNOWN_PATHS])
def test_unknown_path_stays_404(gw, method, path, envelope):
    anthropic = envelope == "anthropic"
    with client_for(gw, anthropic) as c:
        r = c.request(method, path)
    envelope_error(r, 404, anthropic)


# ==========================================================================
# 3. Compressed request bodies


def gzip_bytes(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


def deflate_bytes(data: bytes) -> bytes:
    # HTTP's `deflate` is the zlib format (RFC 1950), not raw deflate.
    c = zlib.compressobj(6, zlib.DEFLATED, 15)
    return c.compress(data) + c.flush()


def br_bytes(data: bytes) -> bytes:
    import brotli

    return brotli.compress(data)


def zstd_bytes(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip_bytes,
    "deflate": deflate_bytes,
    "br": br_bytes,
    "zstd": zstd_bytes,
}


def post_encoded(c: httpx.Client, path: str, raw: bytes, encoding: str | None, timeout: float = 30) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    return c.post(path, content=raw, headers=headers, timeout=timeout)


@pytest.mark.parametrize("encoding", list(ENCODERS))
def test_compressed_chat_body_is_decoded(gw, encoding):
    text = f"squeezed with {encoding}"
    raw = ENCODERS[encoding](json.dumps(chat_body(text)).encode())
    with gw.http() as c:
        r = post_encoded(c, CHAT, raw, encoding)
    assert_chat_answer(r, text)


@pytest.mark.parametrize("encoding", list(ENCODERS))
def test_compressed_messages_body_is_decoded(gw, encoding):
    text = f"squeezed with {encoding}"
    raw = ENCODERS[encoding](json.dumps(messages_body(text)).encode())
    with anthropic_client(gw) as c:
        r = post_encoded(c, MESSAGES, raw, encoding)
    assert_messages_answer(r, text)


@pytest.mark.parametrize("path, anthropic", [(CHAT, False), (MESSAGES, True)], ids=["chat", "messages"])
@pytest.mark.parametrize("encoding", ["compress", "x-unknown"])
def test_unsupported_content_encoding_is_415(gw, path, anthropic, encoding):
    body = messages_body("odd coding") if anthropic else chat_body("odd coding")
    with client_for(gw, anthropic) as c:
        # The bytes are plain JSON: a gateway that ignores the header would answer 200.
        r = post_encoded(c, path, json.dumps(body).encode(), encoding)
    envelope_error(r, 415, anthropic)


def test_compressed_body_under_the_limit_when_decoded_is_served(small_gw):
    """700 KiB of JSON (well under `body_limit = "1MiB"`) sent gzipped."""
    body = chat_body("padded", padding=" " * (700 * 1024))
    raw = json.dumps(body).encode()
    assert 700 * 1024 < len(raw) < MIB
    with small_gw.http() as c:
        r = post_encoded(c, CHAT, gzip_bytes(raw), "gzip")
    assert_chat_answer(r, "padded")


BOMB_DECODED = 200 * MIB


@functools.lru_cache(maxsize=None)
def bomb(encoding: str, anthropic: bool) -> bytes:
    """A JSON body with 200 MiB of spaces inside a string, compressed a
    MiB at a time: neither the test nor the bytes sent hold 200 MiB."""
    body = messages_body("boom") if anthropic else chat_body("boom")
    head = json.dumps(body)[:-1].encode() + b', "padding": "'
    tail = b'"}'
    if encoding in ("gzip", "deflate"):
        c = zlib.compressobj(9, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
        push, finish = c.compress, c.flush
    elif encoding == "br":
        import brotli

        c = brotli.Compressor(quality=5)
        push, finish = c.process, c.finish
    elif encoding == "zstd":
        import zstandard

        c = zstandard.ZstdCompressor(level=3).compressobj()
        push, finish = c.compress, c.flush
    else:
        raise ValueError(encoding)
    parts = [push(head)]
    chunk = b" " * MIB
    for _ in range(BOMB_DECODED // MIB):
        parts.append(push(chunk))
    parts.append(push(tail))
    parts.append(finish())
    out = b"".join(parts)
    assert len(out) < MIB // 2, f"the {encoding} bomb is {len(out)} bytes compressed: not a bomb"
    return out


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


class RssPeak:
    """Samples a process's RSS every 10 ms in a thread; `peak` in KiB."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak = rss_kib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 120
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except (OSError, AssertionError):
                return
            self._stop.wait(0.01)

    def __enter__(self) -> "RssPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.peak = max(self.peak, rss_kib(self.pid))
        except (OSError, AssertionError):
            pass


BOMBS = [("gzip", CHAT, False), ("gzip", MESSAGES, True), ("deflate", CHAT, False), ("br", CHAT, False), ("zstd", CHAT, False)]


@pytest.mark.parametrize("encoding, path, anthropic", BOMBS, ids=[f"{e}-{p.rsplit('/', 1)[1]}" for e, p, _ in BOMBS])
def test_decompression_bomb_is_413_without_memory_growth(small_gw, encoding, path, anthropic):
    raw = bomb(encoding, anthropic)
    pid = small_gw.popen.pid
    with client_for(small_gw, anthropic) as c:  # warm the workers and the allocator
        warm = post_encoded(c, path, json.dumps(messages_body("warm") if anthropic else chat_body("warm")).encode(), None)
        assert warm.status_code == 200, warm.text[:300]
        time.sleep(0.2)
        rss0 = rss_kib(pid)
        with RssPeak(pid) as rss:
            try:
                r = post_encoded(c, path, raw, encoding, timeout=60)
            except httpx.HTTPError as e:
                pytest.fail(f"{encoding} bomb: no answer ({type(e).__name__}: {e})")
    assert small_gw.alive(), small_gw.stderr_text()
    err = envelope_error(r, 413, anthropic)
    if anthropic:
        assert err["type"] == "request_too_large", err
    grew = (rss.peak - rss0) / 1024
    assert grew < 64, f"RSS grew by {grew:.1f} MiB decoding a {len(raw)}-byte {encoding} bomb ({rss0 // 1024} -> {rss.peak // 1024} MiB)"
    with small_gw.http() as c:
        assert c.get("/healthz").status_code == 200


@pytest.mark.parametrize("path, anthropic", [(CHAT, False), (MESSAGES, True)], ids=["chat", "messages"])
def test_compressed_size_over_the_limit_is_413(small_gw, path, anthropic):
    # Random base64 barely compresses: 2 MiB of it stays well over 1 MiB gzipped.
    noise = base64.b64encode(os.urandom(3 * MIB // 2)).decode()
    body = messages_body("noisy", padding=noise) if anthropic else chat_body("noisy", padding=noise)
    raw = gzip_bytes(json.dumps(body).encode())
    assert len(raw) > 1.2 * MIB, len(raw)
    with client_for(small_gw, anthropic) as c:
        try:
            r = post_encoded(c, path, raw, "gzip", timeout=60)
        except httpx.HTTPError as e:
            pytest.fail(f"no answer to a {len(raw)}-byte compressed body: {type(e).__name__}: {e}")
    err = envelope_error(r, 413, anthropic)
    if anthropic:
        assert err["type"] == "request_too_large", err


# ==========================================================================
# 4. A UTF-8 byte order mark before the JSON


def test_bom_prefixed_json_is_accepted(gw):
    with gw.http() as c:
        r = post_encoded(c, CHAT, BOM + json.dumps(chat_body("bom chat")).encode(), None)
    assert_chat_answer(r, "bom chat")
    with anthropic_client(gw) as c:
        r = post_encoded(c, MESSAGES, BOM + json.dumps(messages_body("bom messages")).encode(), None)
    assert_messages_answer(r, "bom messages")


def test_bom_inside_gzip_is_accepted(gw):
    with gw.http() as c:
        r = post_encoded(c, CHAT, gzip_bytes(BOM + json.dumps(chat_body("bom gzip")).encode()), "gzip")
    assert_chat_answer(r, "bom gzip")


# ==========================================================================
# 5. HTTP/2 cleartext with prior knowledge


@dataclass
class H2Result:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None


def h2_request(g: Gateway, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None, timeout: float = 15.0) -> H2Result:
    """One request over a fresh h2c prior-knowledge connection."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions
    import hyperframe.exceptions

    host, port = g.addr.rsplit(":", 1)
    assert host == "127.0.0.1", g.addr
    out = H2Result()
    deadline = time.monotonic() + timeout
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    try:
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        sid = conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", "http"), (":authority", g.addr), (":path", path)]
        hdrs += [(k.lower(), v) for k, v in (headers or {}).items()]
        if body is not None:
            hdrs.append(("content-length", str(len(body))))
        conn.send_headers(sid, hdrs, end_stream=body is None)
        if body is not None:
            assert len(body) < 16_000, "keep h2 bodies within one frame and the initial window"
            conn.send_data(sid, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        ended = False
        while not ended:
            left = deadline - time.monotonic()
            if left <= 0:
                out.error = f"no complete h2 answer within {timeout}s"
                break
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except socket.timeout:
                out.error = f"no complete h2 answer within {timeout}s"
                break
            if not data:
                out.error = "the gateway closed the connection"
                break
            try:
                events = conn.receive_data(data)
            except (h2.exceptions.H2Error, hyperframe.exceptions.HyperframeError) as e:
                out.error = f"not an HTTP/2 answer ({type(e).__name__}: {e}); first bytes {data[:120]!r}"
                break
            for ev in events:
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    out.headers = {k: v for k, v in ev.headers}
                    out.status = int(out.headers[":status"])
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    out.body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    ended = True
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    out.error = f"stream reset with error code {ev.error_code}"
                    ended = True
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    out.error = f"GOAWAY with error code {ev.error_code}"
                    ended = True
            pending = conn.data_to_send()
            if pending:
                sock.sendall(pending)
        if out.error is None:
            try:
                conn.close_connection()
                sock.sendall(conn.data_to_send())
            except OSError:
                pass
    except OSError as e:
        out.error = out.error or f"{type(e).__name__}: {e}"
    finally:
        sock.close()
    return out


def error_lines(g: Gateway) -> list[str]:
    text = g.stderr_text(1_000_000) + "\n" + "\n".join(g.stdout_lines)
    return [line for line in text.splitlines() if re.search(r"\bERROR\b", line)]


def test_h2c_prior_knowledge_is_served(gateway_factory):
    g = gateway_factory()
    assert g.wait_ready(10)
    before = error_lines(g)
    r = h2_request(g, "GET", "/healthz")
    assert r.error is None, f"h2c GET /healthz: {r.error}"
    assert r.status == 200, f"h2c GET /healthz: {r.status} {r.body[:300]!r}"
    assert json.loads(r.body) == {"status": "ok"}, r.body[:300]

    body = json.dumps(chat_body("over h2")).encode()
    r = h2_request(g, "POST", CHAT, {**AUTH, "Content-Type": "application/json"}, body)
    assert r.error is None, f"h2c POST {CHAT}: {r.error}"
    assert r.status == 200, f"h2c POST {CHAT}: {r.status} {r.body[:300]!r}"
    assert json.loads(r.body)["choices"][0]["message"]["content"] == DEMO_PREFIX + "over h2", r.body[:300]
    time.sleep(0.3)  # let the request log line land
    new = error_lines(g)[len(before):]
    assert not new, "the gateway logged errors for h2c requests:\n  " + "\n  ".join(new[:10])


# ==========================================================================
# 6. The restart counter in /metrics

METRIC_LINE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)')


def restart_samples(text: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = METRIC_LINE.match(line)
        if m and m.group("name") == "troupe_session_restarts_total":
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group("labels") or ""))
            out.append((labels, float(m.group("value"))))
    return out


def test_restart_counter_in_metrics(gateway_factory, clean_peer):
    g = gateway_factory(peer_url=clean_peer.url)
    assert g.wait_ready(10)
    # A refused key makes its session restart.
    clean_peer.fault("401", count=1000, key=support.PEER_KEYS[0])
    log = g.config_path.parent / "data" / "restarts.jsonl"
    deadline = time.monotonic() + 15
    with g.http() as c:
        while time.monotonic() < deadline:
            r = c.post(CHAT, json=chat_body("restart please", model="gpt-4o-mini"))
            assert r.status_code == 200, r.text  # the other key answers
            if log.exists() and '"restart"' in log.read_text(encoding="utf-8"):
                break
            time.sleep(0.2)
    assert log.exists() and '"restart"' in log.read_text(encoding="utf-8"), f"no restart logged in {log}"
    with httpx.Client(base_url=g.url, trust_env=False, timeout=10) as c:
        m = c.get("/metrics")
    assert m.status_code == 200, m.text[:300]
    samples = restart_samples(m.text)
    assert samples, "no troupe_session_restarts_total in /metrics after a restart"
    for labels, _ in samples:
        assert "pool" in labels and "reason" in labels, f"troupe_session_restarts_total without pool/reason labels: {labels}"
        assert re.fullmatch(r"[a-z_]+", labels["reason"]), f"reason label {labels['reason']!r} is not from a closed set"
    total = sum(v for labels, v in samples if labels.get("pool") == "peer")
    assert total >= 1, f"troupe_session_restarts_total{{pool=\"peer\"}} is {total} after a restart: {samples}"
    assert "restart please" not in m.text
