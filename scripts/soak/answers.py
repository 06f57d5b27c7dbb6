"""One soak request and the verdict on its answer.

The peers and the demo model answer deterministic text (a fixed prefix plus
the prompt, one word per chunk), so every answer can be checked exactly: a
completed answer must be the expected text, nothing duplicated and nothing
missing; a failed one must end the way its protocol ends failures (an error
envelope, or one in-stream error event after a prefix of the text). What is
neither is a finding.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

# Verdicts on the answer alone; whether an error was excusable (a fault was
# active) is decided later, against the fault windows.
OK = "ok"
ERROR = "error"  # a clean, protocol-correct error
DUPLICATED = "duplicated"
CUT = "cut"
WRONG = "wrong"  # any other protocol violation

# What the Anthropic peer streams before its `drop` / `stream_error` faults:
# passed through faithfully once the first byte is out, so it is a legitimate
# start of a failed stream.
ANTHROPIC_FAULT_TEXT = "partial answer "

WORD_RE = re.compile(r"\S+\s*")


@dataclass(frozen=True)
class Target:
    """A model the soak asks for, and how its upstream answers."""

    pool: str
    model: str
    reply_prefix: str
    # Texts a failed stream may legitimately have started with, besides a
    # prefix of the right answer.
    fault_texts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Frontend:
    """A client protocol of the gateway."""

    name: str
    path: str
    stop_reason: str  # the normal end of a completed answer in this protocol


CHAT = Frontend("chat", "/v1/chat/completions", "stop")
MESSAGES = Frontend("messages", "/v1/messages", "end_turn")
FRONTENDS = (CHAT, MESSAGES)


@dataclass
class Answer:
    """What one request got, and the verdict."""

    i: int
    frontend: str
    pool: str
    stream: bool
    t0: float  # monotonic
    t1: float = 0.0
    status: int | None = None
    verdict: str = ""
    detail: str = ""  # why, for anything but ok
    error_kind: str = ""  # for errors: "http 503", "in-stream", ...
    error_message: str = ""


@dataclass
class SSE:
    """The events of one SSE answer, as (event name, data) pairs."""

    events: list[tuple[str, str]] = field(default_factory=list)
    broken: str | None = None  # the connection broke before the body ended


def prompt_of(i: int) -> str:
    # No "tool", "think", "explain" or "parallel": those words change what
    # the peers answer.
    return f"soak request {i} alpha bravo charlie delta echo"


def request_body(frontend: Frontend, target: Target, i: int, stream: bool) -> dict:
    body: dict[str, Any] = {"model": target.model, "messages": [{"role": "user", "content": prompt_of(i)}]}
    if stream:
        body["stream"] = True
    if frontend is MESSAGES:
        body["max_tokens"] = 256  # required by the protocol
    elif i % 4 == 1:
        body["max_tokens"] = 256  # some with, some without: both paths
    if frontend is CHAT and stream and i % 3 == 0:
        body["stream_options"] = {"include_usage": True}
    return body


def headers_for(frontend: Frontend, key: str) -> dict[str, str]:
    # Each protocol's SDKs authenticate their own way; the gateway must take
    # both. POST bodies always carry their content type.
    if frontend is MESSAGES:
        return {"x-api-key": key, "anthropic-version": "2023-06-01", "content-type": "application/json"}
    return {"authorization": f"Bearer {key}", "content-type": "application/json"}


async def read_sse(resp: httpx.Response) -> SSE:
    """Collects the events of an SSE body; records a broken connection."""
    out = SSE()
    name, data = "", []

    def dispatch() -> None:
        nonlocal name
        if data:
            out.events.append((name or "message", "\n".join(data)))
        name = ""
        data.clear()

    try:
        async for raw in resp.aiter_lines():
            line = raw.rstrip("\r\n")
            if line == "":
                dispatch()
                continue
            if line.startswith(":"):
                continue  # keep-alive comment
            key, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
    except httpx.HTTPError as e:
        out.broken = f"{type(e).__name__}: {e}".strip()
    # An event not followed by a blank line was never completed: leave it
    # out, the stream did not end properly anyway.
    return out


async def send(client: httpx.AsyncClient, key: str, frontend: Frontend, target: Target, i: int, stream: bool) -> Answer:
    """Sends request `i` and judges the answer."""
    ans = Answer(i=i, frontend=frontend.name, pool=target.pool, stream=stream, t0=time.monotonic())
    body = json.dumps(request_body(frontend, target, i, stream)).encode()
    expected = target.reply_prefix + prompt_of(i)
    try:
        async with client.stream("POST", frontend.path, content=body, headers=headers_for(frontend, key)) as resp:
            ans.status = resp.status_code
            ctype = resp.headers.get("content-type", "")
            if resp.status_code == 200 and stream and ctype.startswith("text/event-stream"):
                sse = await read_sse(resp)
                judge_stream = judge_chat_stream if frontend is CHAT else judge_messages_stream
                judged(ans, judge_stream, sse, expected, target)
            else:
                try:
                    raw = await resp.aread()
                except httpx.HTTPError as e:
                    ans.verdict, ans.detail = CUT, f"status {resp.status_code}, body cut: {type(e).__name__}: {e}"
                else:
                    if resp.status_code == 200 and stream:
                        judge_wrong(ans, f"200 stream with content-type {ctype!r}: {raw[:200]!r}")
                    else:
                        judged(ans, judge_body, frontend, resp.status_code, ctype, raw, expected)
    except httpx.HTTPError as e:
        if not ans.verdict:
            ans.verdict, ans.detail = CUT, f"no answer: {type(e).__name__}: {e}"
    ans.t1 = time.monotonic()
    return ans


def judged(ans: Answer, judge: Any, *args: Any) -> None:
    """Runs a verdict; an answer shaped so oddly that judging it fails is a
    protocol violation, not a crash of the soak."""
    try:
        judge(ans, *args)
    except Exception as e:  # noqa: BLE001 - any shape of malformed answer
        judge_wrong(ans, f"malformed answer ({type(e).__name__}: {e})")


# --------------------------------------------------------------------------
# verdicts


def judge_wrong(ans: Answer, detail: str) -> None:
    ans.verdict, ans.detail = WRONG, detail


def judge_error(ans: Answer, kind: str, message: str) -> None:
    ans.verdict, ans.error_kind, ans.error_message = ERROR, kind, message
    ans.detail = f"{kind}: {message}"


def mismatch(ans: Answer, text: str, expected: str, how: str) -> None:
    """A text that is neither the answer nor a prefix of it: pieces repeated
    (duplicated), pieces missing from the middle (cut), or something else."""
    pieces, want = WORD_RE.findall(text), WORD_RE.findall(expected)
    have = Counter(want)
    repeated = any(n > have[w] and w in have for w, n in Counter(pieces).items())
    rest = iter(want)
    subsequence = all(p in rest for p in pieces)  # consumes `rest` in order
    if len(text) > len(expected) or repeated:
        ans.verdict = DUPLICATED
    elif subsequence:
        ans.verdict = CUT
    else:
        ans.verdict = WRONG
    ans.detail = f"{how}: got {text!r}, expected {expected!r}"


def judge_completed_text(ans: Answer, text: str, expected: str, stop: Any, want_stop: str, how: str) -> None:
    """The verdict on an answer that ended normally."""
    if text == expected:
        if stop == want_stop:
            ans.verdict = OK
        else:
            judge_wrong(ans, f"{how}: right text but stop reason {stop!r}, expected {want_stop!r}")
    elif expected.startswith(text):
        ans.verdict, ans.detail = CUT, f"{how}: ended normally after {text!r} of {expected!r}"
    else:
        mismatch(ans, text, expected, how)


def allowed_partial(text: str, expected: str, target: Target) -> bool:
    """Whether a failed stream's text is a legitimate beginning. The whole
    answer is one too: an upstream cut after its last word but before its
    end leaves the gateway no way to know the answer was complete."""
    return any(good.startswith(text) for good in (expected, *target.fault_texts))


def error_message_of(obj: Any) -> str | None:
    """The message of an error envelope (`{"error": {"message": ...}}`, both
    protocols), or None if `obj` is not one."""
    if not isinstance(obj, dict):
        return None
    err = obj.get("error")
    if not isinstance(err, dict) or not isinstance(err.get("message"), str) or not err["message"]:
        return None
    return err["message"]


def judge_body(ans: Answer, frontend: Frontend, status: int, ctype: str, raw: bytes, expected: str) -> None:
    """A whole (non-SSE) body: a completion or an error envelope."""
    try:
        obj = json.loads(raw)
    except ValueError:
        judge_wrong(ans, f"status {status}, content-type {ctype!r}, body is not JSON: {raw[:200]!r}")
        return
    if status != 200:
        message = error_message_of(obj)
        if message is None or not ctype.startswith("application/json"):
            judge_wrong(ans, f"status {status} without a proper error envelope ({ctype!r}): {raw[:200]!r}")
        elif frontend is MESSAGES and obj.get("type") != "error":
            judge_wrong(ans, f"status {status}: Anthropic error without type=error: {raw[:200]!r}")
        else:
            judge_error(ans, f"http {status}", message)
        return
    try:
        if frontend is CHAT:
            choice = obj["choices"][0]
            text, stop = choice["message"]["content"] or "", choice["finish_reason"]
        else:
            text = "".join(b["text"] for b in obj["content"] if b.get("type") == "text")
            stop = obj["stop_reason"]
    except (KeyError, IndexError, TypeError) as e:
        judge_wrong(ans, f"200 without a completion ({type(e).__name__} {e}): {raw[:200]!r}")
        return
    judge_completed_text(ans, text, expected, stop, frontend.stop_reason, "json")


def judge_chat_stream(ans: Answer, sse: SSE, expected: str, target: Target) -> None:
    """Chat Completions SSE: `[DONE]` last, or one error chunk last."""
    if sse.broken:
        ans.verdict, ans.detail = CUT, f"stream broke: {sse.broken}; last events {sse.events[-3:]}"
        return
    payloads = [d for _, d in sse.events]
    done_at = next((k for k, d in enumerate(payloads) if d.strip() == "[DONE]"), None)
    body = payloads if done_at is None else payloads[:done_at]
    try:
        chunks = [json.loads(d) for d in body]
    except ValueError as e:
        judge_wrong(ans, f"unparseable data: {e}")
        return
    errors = [c for c in chunks if isinstance(c, dict) and "error" in c]
    text = "".join(
        (ch.get("delta") or {}).get("content") or "" for c in chunks for ch in (c.get("choices") or [])
    )
    finishes = [ch["finish_reason"] for c in chunks for ch in (c.get("choices") or []) if ch.get("finish_reason")]
    if done_at is not None:
        if done_at != len(payloads) - 1:
            judge_wrong(ans, f"data after [DONE]: {payloads[done_at + 1:][:3]}")
        elif errors:
            judge_wrong(ans, f"an error chunk and [DONE] in one stream: {errors[:2]}")
        elif len(finishes) > 1:
            judge_wrong(ans, f"several finish_reasons {finishes}")
        else:
            judge_completed_text(ans, text, expected, finishes[0] if finishes else None, "stop", "stream")
        return
    if not chunks or "error" not in chunks[-1]:
        ans.verdict, ans.detail = CUT, f"stream ended without [DONE] or an error chunk after {text!r}"
        return
    message = error_message_of(chunks[-1])
    if len(errors) != 1 or message is None:
        judge_wrong(ans, f"malformed in-stream error: {errors[:2]}")
    elif finishes:
        judge_wrong(ans, f"error chunk after finish_reason {finishes}")
    elif not allowed_partial(text, expected, target):
        mismatch(ans, text, expected, "failed stream")
    else:
        judge_error(ans, "in-stream", message)


def judge_messages_stream(ans: Answer, sse: SSE, expected: str, target: Target) -> None:
    """Messages SSE: `message_stop` last, or one `error` event last."""
    if sse.broken:
        ans.verdict, ans.detail = CUT, f"stream broke: {sse.broken}; last events {sse.events[-3:]}"
        return
    try:
        events = [(name, json.loads(d)) for name, d in sse.events]
    except ValueError as e:
        judge_wrong(ans, f"unparseable data: {e}")
        return
    names = [n for n, _ in events]
    text = "".join(
        d["delta"].get("text", "")
        for n, d in events
        if n == "content_block_delta" and isinstance(d.get("delta"), dict) and d["delta"].get("type") == "text_delta"
    )
    stops = [d["delta"].get("stop_reason") for n, d in events if n == "message_delta" and isinstance(d.get("delta"), dict)]
    if "message_stop" in names:
        if names[-1] != "message_stop" or names.count("message_stop") > 1:
            judge_wrong(ans, f"events after message_stop: {names[-4:]}")
        elif "error" in names:
            judge_wrong(ans, "an error event and message_stop in one stream")
        elif len(stops) != 1:
            judge_wrong(ans, f"{len(stops)} message_delta events")
        else:
            judge_completed_text(ans, text, expected, stops[0], "end_turn", "stream")
        return
    if not names or names[-1] != "error":
        ans.verdict, ans.detail = CUT, f"stream ended without message_stop or an error event after {text!r} ({names[-3:]})"
        return
    message = error_message_of(events[-1][1])
    if names.count("error") != 1 or message is None or events[-1][1].get("type") != "error":
        judge_wrong(ans, f"malformed error event: {events[-1][1]}")
    elif stops:
        judge_wrong(ans, f"error event after message_delta {stops}")
    elif not allowed_partial(text, expected, target):
        mismatch(ans, text, expected, "failed stream")
    else:
        judge_error(ans, "in-stream", message)
