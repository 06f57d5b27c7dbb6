#!/usr/bin/env python3
"""A fake OpenAI-compatible upstream for black-box tests of troupe.

Run::

    python tests/peers/openai_peer.py --port 0 --keys sk-peer-1,sk-peer-2

Once bound it prints exactly one line ``listening on http://127.0.0.1:PORT``
to stdout. It speaks the Chat Completions protocol the way api.openai.com
does (bodies, SSE framing, error envelopes, headers), with deterministic
answers:

* text: ``"peer reply to: " + <text of the last user message>``, streamed one
  word (plus its trailing whitespace) per chunk; ``max_tokens`` /
  ``max_completion_tokens`` smaller than the word count cuts the answer with
  ``finish_reason: "length"``.
* structured output: with a ``json_schema`` or ``json_object``
  ``response_format`` and a line ``troupe-json: JSON`` in the last user
  message, the answer is that JSON text, as it is.
* tools: when ``tools`` are offered and the last message is a user message
  containing the word "tool", the answer is a call to the first tool with
  arguments ``{"q": <last user text>}`` (id ``call_peer_0``); if the text also
  contains "parallel", a second call (to the second tool, or the first again;
  id ``call_peer_1``). When the last message is a tool result the answer is
  ``"peer saw tool result: " + <its content>``.
* scripted tool calls: when ``tools`` are offered (and ``tool_choice`` is not
  ``"none"``) and the last message is a user message with a line::

      troupe-calls[MODE]: [{"name": "get_weather", "arguments": {"city": "Paris"}}, ...]

  the answer is exactly those calls (ids ``call_peer_0``, ``call_peer_1``, ...
  unless a call gives ``"id"``; ``"arguments"`` is an object, sent as its
  JSON, or a string, sent as it is), with ``finish_reason: "tool_calls"``.
  The JSON runs to the end of the line. Streamed, each call's arguments go
  out in 4 fragments (``"fragments": N`` in a call changes that); its id,
  type and name only with its first fragment. MODE ``interleave`` sends the
  calls' fragments round-robin (call 0 fragment 1, call 1 fragment 1, call 0
  fragment 2, ...), the way some real servers stream parallel calls;
  ``sequential`` (the default, also with no ``[MODE]``) sends one call after
  the other. A bad directive is a 400 (code ``bad_peer_directive``).

It also speaks the Responses API (``POST /v1/responses``), storing nothing,
with the same rules where they apply:

* answers: the text rules above, with "the last user message" the last
  ``message`` item with role ``user`` (``input`` may be a string: one user
  message); ``max_output_tokens`` (at least 16, as the API wants) cuts the
  text and the answer is ``incomplete`` (``incomplete_details.reason:
  "max_output_tokens"``); after a ``function_call_output`` (or
  ``custom_tool_call_output``) last: ``"peer saw tool result: " + <its
  output text>``. Tools are ``function`` or ``custom``; the "tool" word and
  ``troupe-calls`` rules give ``function_call`` items (``call_id``
  ``call_peer_0``, ...; arguments streamed in fragments), one after the
  other (MODE does not matter), or ``custom_tool_call`` items (the input is
  the user text, or the directive's arguments) for a custom tool's name.
  ``troupe-json`` works with a ``json_schema`` / ``json_object``
  ``text.format``.
* reasoning: with a ``reasoning.effort`` (not ``none``) or the word "think"
  in the last user text, a ``reasoning`` item comes first, summary
  ``"peer thinking about: " + <that text>``; its ``encrypted_content`` is
  ``enc-peer-<n>`` (for item ``rs_peer_<n>``) when ``include`` has
  ``reasoning.encrypted_content``, else null.
* usage: ``input_tokens`` counted like the chat prompt (instructions count as
  a message), ``output_tokens`` the words sent (calls: argument words + 3),
  ``reasoning_tokens`` the summary's words; no cached tokens.
* stream: ``event: TYPE`` + ``data: JSON`` events numbered by
  ``sequence_number``: ``response.created``, ``response.in_progress``, per
  item ``output_item.added``, its parts and deltas (one word per text or
  summary delta), ``output_item.done`` with the whole item, then
  ``response.completed`` (or ``.incomplete``) with the whole response.
* ids: ``resp_peer_<n>``, ``msg_peer_<n>``, ``fc_peer_<n>``,
  ``ctc_peer_<n>``, ``rs_peer_<n>``, numbered per kind for the life of the
  process.
* refused with a 400, as api.openai.com does: a parameter the API does not
  know (``Unknown parameter: 'x'.``, code ``unknown_parameter``, also nested
  ones such as ``input[0].content[0].cache_control``; so ``messages``,
  ``max_tokens``, ``response_format``); Chat Completions shapes (a tool
  without a top-level ``name``, a ``json_schema`` format without ``name``,
  ``text`` parts, input parts in an assistant message); any
  ``previous_response_id`` (code ``previous_response_not_found``) or
  ``conversation``; a ``function_call_output`` with no earlier
  ``function_call`` of its ``call_id`` and a call without its output
  (``No tool call found ...`` / ``No tool output found ...``, param
  ``input``); a ``reasoning`` item without an ``encrypted_content`` this
  peer gave out (code ``invalid_encrypted_content``); an unknown model
  (code ``model_not_found``).

Test control endpoints (no auth):

* ``POST /_peer/faults`` ``{"mode", "count", "key"?, "retry_after"?, "seconds"?}``
  gives the next ``count`` model requests, chat or responses (with that key,
  if given) a fault.
  With ``"rate": R`` (0..1) instead of a count, the fault is a *rate fault*:
  it stays until reset and hits each matching request with probability R.
  Several rate faults may be active at once; for each request one number is
  drawn from a seeded generator (``--seed``) and compared with the
  cumulative rates of the matching rate faults, so each applies with exactly
  its own rate, at most one applies per request, and a run is reproducible
  for the same sequence of requests. Counted faults are served first. Modes:

  - ``429``: rate limited, with ``Retry-After: retry_after`` (default 1);
  - ``500``: server error;
  - ``503``: server overloaded (``service_unavailable``, type ``server_error``);
  - ``401``: the authentication error OpenAI sends for a refused key
    (code ``invalid_api_key``);
  - ``400``: ``peer rejects this`` (param ``messages``, for responses
    ``input``; code ``bad_peer_request``);
  - ``redirect``: ``307`` to the same path, which a follower would resend to;
  - ``reset``: the request is read, then the TCP connection is reset (RST)
    without any response;
  - ``hang``: accept, send nothing for ``seconds`` (default 30), then answer;
  - ``drop``: stream: role chunk and two more chunks, then the connection is
    cut (no finish_reason, no ``[DONE]``); a Responses stream: its first 6
    events, no terminal event; non-stream: cut without a response;
  - ``drop_after_finish``: a stream is cut after every choice finished (or
    every Responses item is done), before usage / ``[DONE]`` / the terminal
    event;
  - ``no_usage``: a normal answer without any usage (a Responses answer
    without ``usage``);
  - ``quirky``: a normal stream with SSE quirks real servers produce
    (``: comment`` lines, CRLF line ends, ``data:`` without a space,
    ``event:`` lines, one event split across two writes);
  - ``slow``: a normal stream with ``seconds`` between chunks;
  - ``close``: a normal answer, after which the peer closes the connection
    (``Connection: close``);
  - ``late_end``: a normal stream whose body ends ``seconds`` after
    ``[DONE]``, as when the last write trails behind.
* ``GET /_peer/faults`` lists the active faults; rate faults carry
  ``hits``, how many requests they were applied to.
* ``DELETE /_peer/faults`` clears the faults but keeps the request log.
* ``POST /_peer/reset`` clears faults, the request log and the peaks below.
* ``GET /_peer/concurrency``: ``{"now": {key: n}, "max": {key: n}}``, the
  model requests each API key has in progress, and the most it had at once.
* ``GET /_peer/requests`` lists every model request received (chat and
  responses), oldest first:
  ``{"key", "body", "path", "stream", "conn", "time", "end", "fault", "outcome"}``
  where ``conn`` names the TCP connection it came on (the client's port),
  ``time`` is when it arrived and ``end`` when its handler finished
  (Unix seconds), and ``outcome`` is
  ``pending``, ``completed`` (a stream ran to ``[DONE]`` or its terminal
  event), ``status N``,
  ``dropped``, ``reset`` or ``client_disconnected``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import socket
import struct
import time
import uuid
from typing import Any

from aiohttp import web

try:  # imported as peers.<name> by tests, or run as a script
    from ._common import arguments, body_json, peer_app, recorded, run, serve, split_list, take_fault
except ImportError:
    from _common import arguments, body_json, peer_app, recorded, run, serve, split_list, take_fault

FAULT_MODES = (
    "429", "500", "503", "401", "400", "redirect", "reset", "hang", "drop", "drop_after_finish",
    "no_usage", "quirky", "slow", "close", "late_end",
)
DEFAULT_SEED = 20240601
RESPONSES_DROP_AFTER = 6  # events a dropped Responses stream sends
KNOWN_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MODEL_CREATED = 1721172741
WORD_RE = re.compile(r"\S+\s*")
CALLS_DIRECTIVE_RE = re.compile(r"troupe-calls(?:\[(\w*)\])?: ?([^\r\n]*)")


# --------------------------------------------------------------------------
# helpers


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def json_response(status: int, body: Any, headers: dict | None = None) -> web.Response:
    h = {"x-request-id": "req_" + uuid.uuid4().hex, "openai-processing-ms": "3"}
    if headers:
        h.update(headers)
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/json",
        headers=h,
    )


def text_of(content: Any) -> str:
    """Text of a message ``content`` (a string or a list of content parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return " ".join(parts)
    return str(content)


def count_words(text: str) -> int:
    return len(text.split())


def prompt_tokens(messages: list, tools: Any) -> int:
    # Deterministic stand-in for a tokenizer: words of every message plus a
    # small per-message overhead, plus the words of the tool definitions.
    n = 0
    for m in messages:
        if not isinstance(m, dict):
            continue
        n += 3 + count_words(text_of(m.get("content")))
        for tc in m.get("tool_calls") or []:
            fn = (tc or {}).get("function") or {}
            n += 3 + count_words(str(fn.get("name", ""))) + count_words(str(fn.get("arguments", "")))
    if tools:
        n += count_words(json.dumps(tools))
    return max(n, 1)


def usage_body(prompt: int, completion: int) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def split_fragments(s: str, parts: int) -> list[str]:
    """Split ``s`` into ``parts`` non-empty pieces (fewer only if too short)."""
    parts = max(1, min(parts, len(s)))
    size, rest = divmod(len(s), parts)
    out, pos = [], 0
    for i in range(parts):
        step = size + (1 if i < rest else 0)
        out.append(s[pos : pos + step])
        pos += step
    return out


def scripted_calls(text: str) -> dict | None:
    """The plan of a ``troupe-calls[MODE]: JSON`` directive in ``text`` (the
    last one wins), or None without one; BadRequest for a malformed one."""
    found = list(CALLS_DIRECTIVE_RE.finditer(text))
    if not found:
        return None
    mode, raw = found[-1].group(1) or "sequential", found[-1].group(2)

    def bad(why: str) -> BadRequest:
        return BadRequest(f"peer: bad troupe-calls directive: {why}", "messages", "bad_peer_directive")

    if mode not in ("interleave", "sequential"):
        raise bad(f"unknown mode {mode!r}")
    try:
        spec = json.loads(raw)
    except ValueError as e:
        raise bad(f"not JSON ({e})") from None
    if not isinstance(spec, list) or not spec:
        raise bad("expected a non-empty JSON array of calls")
    calls = []
    for i, c in enumerate(spec):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c["name"]:
            raise bad(f"call {i} needs a name")
        args = c.get("arguments", {})
        args = args if isinstance(args, str) else json.dumps(args)
        frags = c.get("fragments", 4)
        if not isinstance(frags, int) or isinstance(frags, bool) or frags < 1:
            raise bad(f"call {i}: fragments must be a positive integer")
        calls.append(
            {"id": str(c.get("id") or f"call_peer_{i}"), "name": c["name"], "arguments": args, "fragments": frags}
        )
    return {"tool_calls": calls, "interleave": mode == "interleave"}


def interleaved_call_events(calls: list[dict]) -> list[tuple[dict, str | None]]:
    """Stream deltas for ``calls`` with their argument fragments sent
    round-robin: call 0's first fragment (with its id, type and name), call
    1's first, ..., then call 0's second fragment, and so on."""
    frags = [split_fragments(c["arguments"], c.get("fragments", 4)) if c["arguments"] else [""] for c in calls]
    events: list[tuple[dict, str | None]] = []
    for step in range(max(len(f) for f in frags)):
        for idx, c in enumerate(calls):
            if step >= len(frags[idx]):
                continue
            fn: dict[str, Any] = {"arguments": frags[idx][step]}
            tc: dict[str, Any] = {"index": idx, "function": fn}
            if step == 0:  # a call's first fragment names it
                tc.update(id=c["id"], type="function")
                fn["name"] = c["name"]
            if not events:
                events.append(({"role": "assistant", "content": None, "tool_calls": [tc], "refusal": None}, None))
            else:
                events.append(({"tool_calls": [tc]}, None))
    return events


# --------------------------------------------------------------------------
# Responses API: what a request may carry


# The top-level parameters of ``CreateResponse`` in the OpenAPI description;
# anything else is ``Unknown parameter`` (as ``messages``, ``max_tokens``,
# ``response_format``, ``n``, ``stop`` or ``functions`` from Chat Completions).
RESPONSES_PARAMS = frozenset(
    (
        "background", "context_management", "conversation", "include", "input", "instructions",
        "max_output_tokens", "max_tool_calls", "metadata", "model", "moderation", "parallel_tool_calls",
        "previous_response_id", "prompt", "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention",
        "reasoning", "safety_identifier", "service_tier", "store", "stream", "stream_options", "temperature",
        "text", "tool_choice", "tools", "top_logprobs", "top_p", "truncation", "user",
    )
)
REASONING_PARAMS = ("effort", "summary", "generate_summary", "mode", "context")
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
REASONING_SUMMARIES = ("auto", "concise", "detailed")
TEXT_PARAMS = ("format", "verbosity")
FORMAT_PARAMS = {
    "text": ("type",),
    "json_object": ("type",),
    "json_schema": ("type", "name", "schema", "strict", "description"),
}
INCLUDABLE = (
    "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
    "message.input_image.image_url", "computer_call_output.output.image_url", "code_interpreter_call.outputs",
    "reasoning.encrypted_content", "message.output_text.logprobs",
)
TOOL_PARAMS = {
    "function": ("type", "name", "description", "parameters", "strict", "defer_loading", "allowed_callers", "output_schema"),
    "custom": ("type", "name", "description", "format", "defer_loading", "allowed_callers"),
}
# Input items this peer understands, with the keys each may carry.
ITEM_PARAMS = {
    "message": ("type", "role", "content", "id", "status", "phase"),
    "function_call": ("type", "id", "call_id", "name", "arguments", "status", "namespace", "caller"),
    "function_call_output": ("type", "id", "call_id", "output", "status", "name", "namespace", "caller"),
    "reasoning": ("type", "id", "summary", "encrypted_content", "content", "status"),
    "custom_tool_call": ("type", "id", "call_id", "name", "input", "status", "namespace", "caller"),
    "custom_tool_call_output": ("type", "id", "call_id", "output", "status", "caller"),
}
MESSAGE_ROLES = ("user", "assistant", "system", "developer")
# Content parts of a message, with their keys; user/system/developer
# messages take input parts, assistant messages output parts.
PART_PARAMS = {
    "input_text": ("type", "text", "prompt_cache_breakpoint"),
    "input_image": ("type", "image_url", "file_id", "detail", "prompt_cache_breakpoint"),
    "input_file": ("type", "file_id", "filename", "file_data", "file_url", "detail", "prompt_cache_breakpoint"),
    "output_text": ("type", "text", "annotations", "logprobs"),
    "refusal": ("type", "refusal"),
}
INPUT_PARTS = ("input_text", "input_image", "input_file")
OUTPUT_PARTS = ("output_text", "refusal")
THINK_RE = re.compile(r"\bthink\b", re.IGNORECASE)
ENCRYPTED_RE = re.compile(r"^enc-peer-(\d+)$")


def supported(values: tuple) -> str:
    """``'a', 'b', and 'c'`` the way OpenAI lists supported values."""
    quoted = [f"'{v}'" for v in values]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def type_name(v: Any) -> str:
    """The JSON type of ``v``, as OpenAI names it in its messages."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "decimal"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def item_kind(item: Any) -> str | None:
    """An input item's type; an item with a role and no type is a message."""
    if not isinstance(item, dict):
        return None
    kind = item.get("type")
    if kind is None and "role" in item:
        return "message"
    return kind if isinstance(kind, str) else None


def parts_text(content: Any) -> str:
    """Text of Responses ``content`` / ``output``: a string, or the text of
    its ``input_text`` / ``output_text`` parts joined with spaces."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") in ("input_text", "output_text") and isinstance(p.get("text"), str)
        )
    return str(content)


def responses_input_tokens(instructions: Any, items: list, tools: Any) -> int:
    """The chat endpoint's stand-in tokenizer over Responses input: 3 plus
    the words of each item's text (instructions count as one more message),
    plus the words of the tool definitions."""
    n = 0
    if isinstance(instructions, str):
        n += 3 + count_words(instructions)
    for item in items:
        kind = item_kind(item)
        if kind == "message":
            n += 3 + count_words(parts_text(item.get("content")))
        elif kind == "function_call":
            n += 3 + count_words(str(item.get("name", ""))) + count_words(str(item.get("arguments", "")))
        elif kind == "custom_tool_call":
            n += 3 + count_words(str(item.get("name", ""))) + count_words(str(item.get("input", "")))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            n += 3 + count_words(parts_text(item.get("output")))
        elif kind == "reasoning":
            n += 3 + sum(
                count_words(str(p.get("text", ""))) for p in item.get("summary") or [] if isinstance(p, dict)
            )
    if tools:
        n += count_words(json.dumps(tools))
    return max(n, 1)


def responses_usage(inp: int, out: int, reasoning: int) -> dict:
    return {
        "input_tokens": inp,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": inp + out,
    }


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


# --------------------------------------------------------------------------
# the peer


class Peer:
    def __init__(self, keys: list[str], models: list[str], chunk_delay: float, seed: int = DEFAULT_SEED):
        self.keys = keys
        self.models = models
        self.chunk_delay = chunk_delay
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults: list[dict] = []
        self.rate_faults: list[dict] = []
        self.requests: list[dict] = []
        self.ids: dict[str, int] = {}  # per id kind (resp, msg, fc, ctc, rs): the next number
        self.issued: set[str] = set()  # encrypted_content this peer gave out
        self.inflight: dict[str, int] = {}  # per API key: model requests in progress
        self.max_inflight: dict[str, int] = {}  # per API key: the most at once

    # ---- control -------------------------------------------------------

    async def post_faults(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except Exception:
            return json_response(400, error_body("fault body must be JSON", "invalid_request_error"))
        mode = str(body.get("mode", ""))
        if mode not in FAULT_MODES:
            return json_response(
                400, error_body(f"unknown fault mode {mode!r}; one of {FAULT_MODES}", "invalid_request_error", "mode")
            )
        fault = {
            "mode": mode,
            "key": body.get("key"),
            "retry_after": body.get("retry_after", 1),
            "seconds": float(body.get("seconds", 30)),
        }
        if body.get("rate") is not None and body.get("count") is None:
            try:
                rate = float(body["rate"])
            except (TypeError, ValueError):
                rate = -1.0
            if not 0.0 <= rate <= 1.0:
                return json_response(
                    400, error_body("rate must be a number from 0 to 1", "invalid_request_error", "rate")
                )
            fault.update(rate=rate, hits=0)
            self.rate_faults.append(fault)
        else:
            fault["count"] = int(body.get("count", 1))
            self.faults.append(fault)
        return json_response(200, {"ok": True, "faults": self.faults, "rate_faults": self.rate_faults})

    async def get_faults(self, request: web.Request) -> web.Response:
        return json_response(200, {"faults": self.faults, "rate_faults": self.rate_faults, "seed": self.seed})

    async def delete_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        self.rate_faults.clear()
        return json_response(200, {"ok": True})

    async def post_reset(self, request: web.Request) -> web.Response:
        self.faults.clear()
        self.rate_faults.clear()
        self.requests.clear()
        self.max_inflight = dict(self.inflight)
        # Same faults after a reset, same outcomes: start the draws over.
        self.rng = random.Random(self.seed)
        return json_response(200, {"ok": True})

    async def get_requests(self, request: web.Request) -> web.Response:
        return json_response(200, {"requests": self.requests})

    async def get_concurrency(self, request: web.Request) -> web.Response:
        return json_response(200, {"now": self.inflight, "max": self.max_inflight})

    @staticmethod
    def _matches(fault: dict, key: str) -> bool:
        return fault["key"] in (None, "") or fault["key"] == key

    def take_fault(self, key: str) -> dict | None:
        fault = take_fault(self.faults, key)
        if fault is not None:
            return fault
        if not self.rate_faults:
            return None
        # One draw per request against the cumulative rates of the matching
        # faults: each fires with its own rate, never two at once.
        draw = self.rng.random()
        edge = 0.0
        for fault in self.rate_faults:
            if not self._matches(fault, key):
                continue
            edge += fault["rate"]
            if draw < edge:
                fault["hits"] += 1
                return fault
        return None

    # ---- auth ----------------------------------------------------------

    def auth(self, request: web.Request) -> tuple[str | None, web.Response | None]:
        header = request.headers.get("Authorization", "")
        if not header:
            return None, json_response(
                401,
                error_body(
                    "You didn't provide an API key. You need to provide your API key in an Authorization header "
                    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank "
                    "username) if you're accessing the API from your browser and are prompted for a username and "
                    "password. You can obtain an API key from https://platform.openai.com/account/api-keys.",
                    "invalid_request_error",
                    None,
                    None,
                ),
            )
        m = re.match(r"^Bearer\s+(\S+)\s*$", header)
        key = m.group(1) if m else header
        if not m or key not in self.keys:
            return key, self.refused_key(key)
        return key, None

    @staticmethod
    def refused_key(key: str) -> web.Response:
        """OpenAI's answer to a key it does not accept (the key shown masked)."""
        shown = (key[:3] + "*" * 4 + key[-4:]) if len(key) > 8 else "*" * len(key)
        return json_response(
            401,
            error_body(
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                None,
                "invalid_api_key",
            ),
        )

    # ---- models --------------------------------------------------------

    def model_obj(self, mid: str) -> dict:
        return {"id": mid, "object": "model", "created": MODEL_CREATED, "owned_by": "system"}

    async def list_models(self, request: web.Request) -> web.Response:
        _, err = self.auth(request)
        if err:
            return err
        return json_response(200, {"object": "list", "data": [self.model_obj(m) for m in self.models]})

    async def get_model(self, request: web.Request) -> web.Response:
        _, err = self.auth(request)
        if err:
            return err
        mid = request.match_info["model"]
        if mid not in self.models:
            return json_response(
                404,
                error_body(
                    f"The model '{mid}' does not exist", "invalid_request_error", "model", "model_not_found"
                ),
            )
        return json_response(200, self.model_obj(mid))

    # ---- chat ----------------------------------------------------------

    def validate(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise BadRequest("Invalid type for request body: expected an object.", None, "invalid_type")
        model = body.get("model")
        if model is None:
            raise BadRequest("you must provide a model parameter", None, None)
        if not isinstance(model, str):
            raise BadRequest("Invalid type for 'model': expected a string.", "model", "invalid_type")
        messages = body.get("messages")
        if messages is None:
            raise BadRequest("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
        if not isinstance(messages, list):
            raise BadRequest("Invalid type for 'messages': expected an array.", "messages", "invalid_type")
        if not messages:
            raise BadRequest(
                "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array "
                "instead.",
                "messages",
                "empty_array",
            )
        pending: dict[str, int] = {}
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise BadRequest(f"Invalid type for 'messages[{i}]': expected an object.", f"messages[{i}]", "invalid_type")
            role = m.get("role")
            if role not in KNOWN_ROLES:
                raise BadRequest(
                    f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', "
                    "'tool', and 'developer'.",
                    f"messages[{i}].role",
                    "invalid_value",
                )
            content = m.get("content")
            if content is not None and not isinstance(content, (str, list)):
                raise BadRequest(
                    f"Invalid type for 'messages[{i}].content': expected one of a string or array of objects.",
                    f"messages[{i}].content",
                    "invalid_type",
                )
            if role == "tool":
                tcid = m.get("tool_call_id")
                if tcid not in pending:
                    raise BadRequest(
                        "Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                        "with 'tool_calls'.",
                        f"messages.[{i}].role",
                    )
                del pending[tcid]
            else:
                if pending:
                    raise BadRequest(
                        "An assistant message with 'tool_calls' must be followed by tool messages responding to "
                        "each 'tool_call_id'. The following tool_call_ids did not have response messages: "
                        + ", ".join(sorted(pending)),
                        f"messages.[{min(pending.values())}].role",
                    )
                if role == "assistant":
                    for tc in m.get("tool_calls") or []:
                        if isinstance(tc, dict) and isinstance(tc.get("id"), str):
                            pending[tc["id"]] = i
        if pending:
            raise BadRequest(
                "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
                "'tool_call_id'. The following tool_call_ids did not have response messages: "
                + ", ".join(sorted(pending)),
                f"messages.[{min(pending.values())}].role",
            )
        for name in ("max_tokens", "max_completion_tokens"):
            v = body.get(name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise BadRequest(
                    f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got {v!r} instead.",
                    name,
                    "integer_below_min_value",
                )
        t = body.get("temperature")
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float))):
            raise BadRequest(
                f"Invalid type for 'temperature': expected a decimal, but got {type(t).__name__} instead.",
                "temperature",
                "invalid_type",
            )
        if body.get("stream_options") is not None and not body.get("stream"):
            raise BadRequest(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options",
                None,
            )
        tools = body.get("tools")
        if tools is not None:
            if not isinstance(tools, list):
                raise BadRequest("Invalid type for 'tools': expected an array.", "tools", "invalid_type")
            for i, tool in enumerate(tools):
                fn = (tool or {}).get("function") if isinstance(tool, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise BadRequest(
                        f"Missing required parameter: 'tools[{i}].function'.",
                        f"tools[{i}].function",
                        "missing_required_parameter",
                    )
        if model not in self.models:
            raise BadRequest(
                f"The model `{model}` does not exist or you do not have access to it.",
                None,
                "model_not_found",
                status=404,
            )

    def plan(self, body: dict) -> dict:
        """Decide the answer: {"text": str} or {"tool_calls": [...]}, plus limits."""
        messages = body["messages"]
        last = messages[-1]
        tools = body.get("tools") or []
        tool_choice = body.get("tool_choice")
        limit = body.get("max_completion_tokens")
        if limit is None:
            limit = body.get("max_tokens")
        if last.get("role") == "tool":
            return {"text": "peer saw tool result: " + text_of(last.get("content")), "limit": limit}
        user_text = ""
        for m in reversed(messages):
            if m.get("role") == "user":
                user_text = text_of(m.get("content"))
                break
        if last.get("role") == "user" and tools and tool_choice != "none":
            scripted = scripted_calls(text_of(last.get("content")))
            if scripted is not None:
                scripted["limit"] = limit
                return scripted
        wants_tool = (
            last.get("role") == "user"
            and tools
            and tool_choice != "none"
            and re.search(r"\btools?\b", user_text, re.IGNORECASE) is not None
        )
        if wants_tool:
            names = [t["function"]["name"] for t in tools]
            first = names[0]
            if isinstance(tool_choice, dict):
                forced = (tool_choice.get("function") or {}).get("name")
                if forced in names:
                    first = forced
            args = json.dumps({"q": user_text})
            calls = [{"id": "call_peer_0", "name": first, "arguments": args}]
            parallel_ok = body.get("parallel_tool_calls", True) is not False
            if parallel_ok and re.search(r"parallel", user_text, re.IGNORECASE):
                second = names[1] if len(names) > 1 else names[0]
                calls.append({"id": "call_peer_1", "name": second, "arguments": args})
            return {"tool_calls": calls, "limit": limit}
        fmt = body.get("response_format") or {}
        if fmt.get("type") in ("json_schema", "json_object"):
            # Structured output: the JSON after ``troupe-json:``, as it is.
            m = re.search(r"troupe-json: ?([^\r\n]*)", user_text)
            if m:
                return {"text": m.group(1), "limit": limit}
        return {"text": "peer reply to: " + user_text, "limit": limit}

    async def fault_answer(
        self, request: web.Request, key: str | None, fault: dict | None, body: dict, entry: dict, param: str
    ) -> web.StreamResponse | None:
        """The answer a fault gives before the request is looked at (None:
        answer normally; ``hang`` has waited by then). ``param`` is what the
        ``400`` fault names (``messages`` for chat, ``input`` for responses)."""
        mode = fault["mode"] if fault else None
        if mode == "429":
            ra = fault["retry_after"]
            return json_response(
                429,
                error_body(
                    f"Rate limit reached for {body.get('model') if isinstance(body, dict) else None} in organization org-peer on requests per min (RPM): "
                    f"Limit 3, Used 3, Requested 1. Please try again in {ra}s. Visit "
                    "https://platform.openai.com/account/rate-limits to learn more.",
                    "requests",
                    None,
                    "rate_limit_exceeded",
                ),
                headers={
                    "Retry-After": str(ra),
                    "x-ratelimit-limit-requests": "3",
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": f"{ra}s",
                },
            )
        if mode == "500":
            return json_response(
                500,
                error_body(
                    "The server had an error while processing your request. Sorry about that!", "server_error"
                ),
            )
        if mode == "503":
            return json_response(
                503,
                error_body(
                    "The server is overloaded or not ready yet.", "server_error", None, "service_unavailable"
                ),
            )
        if mode == "401":
            return self.refused_key(key or "")
        if mode == "400":
            return json_response(
                400, error_body("peer rejects this", "invalid_request_error", param, "bad_peer_request")
            )
        if mode == "redirect":
            # To the same path: a client that follows it gets a normal answer.
            return web.Response(status=307, headers={"Location": request.path})
        if mode == "reset":
            entry["outcome"] = "reset"
            return await self.reset_connection(request)
        if mode == "hang":
            await asyncio.sleep(fault["seconds"])
            if request.transport is None or request.transport.is_closing():
                entry["outcome"] = "client_disconnected"
                return web.Response(status=499)
        return None

    async def logged(self, request: web.Request, param: str, inner: Any) -> web.StreamResponse:
        """A model request (chat or responses), logged: auth, the JSON body,
        the next fault (``param`` names the field a ``400`` fault blames),
        then ``inner(request, body, stream, entry, fault)``."""
        key, err = self.auth(request)
        body = await body_json(request)
        stream = bool(isinstance(body, dict) and body.get("stream"))
        entry = {
            "key": key,
            "body": body,
            "path": request.path,
            "stream": stream,
            "conn": (request.transport.get_extra_info("peername") or (None, None))[1] if request.transport else None,
            "outcome": "pending",
            "time": time.time(),
        }
        self.requests.append(entry)
        k = key or ""
        self.inflight[k] = self.inflight.get(k, 0) + 1
        self.max_inflight[k] = max(self.max_inflight.get(k, 0), self.inflight[k])
        try:
            return await recorded(
                entry, self.admitted(request, key, err, body, stream, entry, param, inner), keep_outcome=False
            )
        finally:
            self.inflight[k] -= 1

    async def admitted(
        self, request: web.Request, key: str | None, err: web.Response | None, body: Any, stream: bool,
        entry: dict, param: str, inner: Any,
    ) -> web.StreamResponse:
        if err:
            return err
        if body is None:
            return json_response(
                400,
                error_body(
                    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
                    "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
                    "valid JSON. If you have trouble figuring out how to fix this, please contact us through our "
                    "help center at help.openai.com.)",
                    "invalid_request_error",
                ),
            )
        fault = self.take_fault(key or "")
        mode = fault["mode"] if fault else None
        entry["fault"] = mode
        early = await self.fault_answer(request, key, fault, body, entry, param)
        if early is not None:
            return early
        return await inner(request, body, stream, entry, fault)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self.logged(request, "messages", self.chat_inner)

    async def chat_inner(
        self, request: web.Request, body: Any, stream: bool, entry: dict, fault: dict | None
    ) -> web.StreamResponse:
        mode = fault["mode"] if fault else None
        try:
            self.validate(body)
            plan = self.plan(body)
        except BadRequest as e:
            return json_response(e.status, error_body(e.message, "invalid_request_error", e.param, e.code))
        n = body.get("n") or 1
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            n = 1
        ptoks = prompt_tokens(body["messages"], body.get("tools"))
        if mode == "drop" and not stream:
            entry["outcome"] = "dropped"
            return await self.drop_connection(request)
        if stream:
            return await self.stream(request, body, plan, n, ptoks, mode, entry, fault)
        resp = self.complete(body, plan, n, ptoks, mode)
        if mode == "close":
            resp.force_close()
        return resp

    @staticmethod
    def pieces(plan: dict) -> tuple[list[str], str]:
        words = WORD_RE.findall(plan["text"])
        limit = plan.get("limit")
        if isinstance(limit, int) and not isinstance(limit, bool) and limit < len(words):
            return words[:limit], "length"
        return words, "stop"

    def complete(self, body: dict, plan: dict, n: int, ptoks: int, mode: str | None) -> web.Response:
        choices = []
        ctoks = 0
        for i in range(n):
            if "tool_calls" in plan:
                message = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                        for c in plan["tool_calls"]
                    ],
                    "refusal": None,
                    "annotations": [],
                }
                finish = "tool_calls"
                ctoks += sum(count_words(c["arguments"]) + 3 for c in plan["tool_calls"])
            else:
                words, finish = self.pieces(plan)
                message = {"role": "assistant", "content": "".join(words), "refusal": None, "annotations": []}
                ctoks += len(words)
            choices.append({"index": i, "message": message, "logprobs": None, "finish_reason": finish})
        out = {
            "id": "chatcmpl-" + uuid.uuid4().hex[:29],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": choices,
            "service_tier": "default",
            "system_fingerprint": "fp_peer0001",
        }
        if mode != "no_usage":
            out["usage"] = usage_body(ptoks, ctoks)
        return json_response(200, out)

    def stream_events(self, plan: dict, n: int) -> tuple[list[list[tuple[dict, str | None]]], int]:
        """Per choice, the list of (delta, finish_reason) to send; and completion tokens."""
        per_choice = []
        ctoks = 0
        for _ in range(n):
            events: list[tuple[dict, str | None]] = []
            if "tool_calls" in plan and plan.get("interleave"):
                events.extend(interleaved_call_events(plan["tool_calls"]))
                ctoks += sum(count_words(c["arguments"]) + 3 for c in plan["tool_calls"])
                events.append(({}, "tool_calls"))
            elif "tool_calls" in plan:
                first = True
                for idx, c in enumerate(plan["tool_calls"]):
                    head = {
                        "index": idx,
                        "id": c["id"],
                        "type": "function",
                        "function": {"name": c["name"], "arguments": ""},
                    }
                    if first:
                        events.append(({"role": "assistant", "content": None, "tool_calls": [head], "refusal": None}, None))
                        first = False
                    else:
                        events.append(({"tool_calls": [head]}, None))
                    for frag in split_fragments(c["arguments"], c.get("fragments", 4)):
                        events.append(({"tool_calls": [{"index": idx, "function": {"arguments": frag}}]}, None))
                    ctoks += count_words(c["arguments"]) + 3
                events.append(({}, "tool_calls"))
            else:
                words, finish = self.pieces(plan)
                events.append(({"role": "assistant", "content": "", "refusal": None}, None))
                for w in words:
                    events.append(({"content": w}, None))
                events.append(({}, finish))
                ctoks += len(words)
            per_choice.append(events)
        return per_choice, ctoks

    async def stream(
        self,
        request: web.Request,
        body: dict,
        plan: dict,
        n: int,
        ptoks: int,
        mode: str | None,
        entry: dict,
        fault: dict | None,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "x-request-id": "req_" + uuid.uuid4().hex,
                "openai-processing-ms": "2",
            },
        )
        if mode == "close":
            resp.force_close()
        await resp.prepare(request)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage")) and mode != "no_usage"
        base = {
            "id": "chatcmpl-" + uuid.uuid4().hex[:29],
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body["model"],
            "service_tier": "default",
            "system_fingerprint": "fp_peer0001",
        }
        per_choice, ctoks = self.stream_events(plan, n)
        quirky = mode == "quirky"
        delay = fault["seconds"] if mode == "slow" and fault else self.chunk_delay
        nl = "\r\n" if quirky else "\n"
        sent_chunks = 0

        async def send_raw(text: str) -> None:
            await resp.write(text.encode("utf-8"))

        async def send_chunk(chunk: dict) -> None:
            nonlocal sent_chunks
            data = json.dumps(chunk)
            if quirky:
                sent_chunks += 1
                if sent_chunks % 3 == 1:
                    await send_raw(f": keep-alive comment{nl}")
                if sent_chunks % 2 == 0:
                    await send_raw(f"event: message{nl}")
                prefix = "data:" if sent_chunks % 2 == 1 else "data: "
                frame = f"{prefix}{data}{nl}{nl}"
                if sent_chunks % 4 == 2:
                    # One event split across two writes.
                    half = len(frame) // 2
                    await send_raw(frame[:half])
                    await asyncio.sleep(self.chunk_delay)
                    await send_raw(frame[half:])
                else:
                    await send_raw(frame)
            else:
                await send_raw(f"data: {data}{nl}{nl}")
            if delay:
                await asyncio.sleep(delay)

        steps = max(len(ev) for ev in per_choice)
        obf = 0
        for step in range(steps):
            for idx, events in enumerate(per_choice):
                if step >= len(events):
                    continue
                delta, finish = events[step]
                if mode == "drop" and step >= 3:
                    # role chunk + two text chunks went out: cut the line.
                    await asyncio.sleep(0.05)
                    entry["outcome"] = "dropped"
                    return await self.abort(request, resp)
                choice = {"index": idx, "delta": delta, "logprobs": None, "finish_reason": finish}
                chunk = dict(base, choices=[choice])
                if include_usage:
                    chunk["usage"] = None
                obf += 1
                chunk["obfuscation"] = "x" * (obf % 7)
                await send_chunk(chunk)
        if mode == "drop_after_finish":
            # Every choice finished; the line breaks before usage and [DONE].
            await asyncio.sleep(0.05)
            entry["outcome"] = "dropped"
            return await self.abort(request, resp)
        if include_usage:
            await send_chunk(dict(base, choices=[], usage=usage_body(ptoks, ctoks), obfuscation="pad"))
        if quirky:
            await send_raw(f"data:[DONE]{nl}{nl}")
        else:
            await send_raw("data: [DONE]\n\n")
        if mode == "late_end":
            await asyncio.sleep(fault["seconds"])
        await resp.write_eof()
        entry["outcome"] = "completed"
        return resp

    async def abort(self, request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            transport.abort()
        return resp

    async def reset_connection(self, request: web.Request) -> web.StreamResponse:
        """Resets the TCP connection (RST, not FIN) before any response."""
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                try:
                    # Linger on with a zero timeout: close() sends RST.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            transport.abort()
        return web.Response(status=500)

    async def drop_connection(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            transport.abort()
        # Nothing can be sent any more; aiohttp notices the closed transport.
        return web.Response(status=500)

    # ---- responses -----------------------------------------------------

    def new_id(self, kind: str) -> tuple[str, int]:
        """The next ``<kind>_peer_<n>`` id (numbered per kind, never reused
        while the peer runs, not even across ``/_peer/reset``) and its n."""
        n = self.ids.get(kind, 0)
        self.ids[kind] = n + 1
        return f"{kind}_peer_{n}", n

    async def responses(self, request: web.Request) -> web.StreamResponse:
        return await self.logged(request, "input", self.responses_inner)

    async def responses_inner(
        self, request: web.Request, body: Any, stream: bool, entry: dict, fault: dict | None
    ) -> web.StreamResponse:
        mode = fault["mode"] if fault else None
        try:
            items = self.validate_responses(body)
            plan = self.plan_responses(body, items)
        except BadRequest as e:
            return json_response(e.status, error_body(e.message, "invalid_request_error", e.param, e.code))
        if mode == "drop" and not stream:
            entry["outcome"] = "dropped"
            return await self.drop_connection(request)
        built = self.build_response(body, items, plan, mode)
        if stream:
            return await self.stream_response(request, body, built, mode, entry, fault)
        final = self.response_obj(body, built, built["status"], built["output"], final=True)
        resp = json_response(200, final)
        if mode == "close":
            resp.force_close()
        return resp

    def validate_responses(self, body: Any) -> list:
        """Checks a Responses request where a translating gateway can go
        wrong, with api.openai.com's messages; returns its input items."""

        def bad_type(param: str, value: Any, expected: str) -> BadRequest:
            return BadRequest(
                f"Invalid type for '{param}': expected {expected}, but got {type_name(value)} instead.",
                param,
                "invalid_type",
            )

        def bad_value(param: str, value: Any, allowed: tuple) -> BadRequest:
            return BadRequest(
                f"Invalid value: '{value}'. Supported values are: {supported(allowed)}.", param, "invalid_value"
            )

        def missing(param: str) -> BadRequest:
            return BadRequest(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")

        def unknown_keys(obj: dict, allowed: tuple | frozenset, prefix: str) -> None:
            for k in obj:
                if k not in allowed:
                    name = f"{prefix}.{k}" if prefix else k
                    raise BadRequest(f"Unknown parameter: '{name}'.", name, "unknown_parameter")

        def typed(param: str, value: Any, py: type | tuple, expected: str) -> None:
            if value is None:
                return
            if isinstance(value, bool) and bool not in (py if isinstance(py, tuple) else (py,)):
                raise bad_type(param, value, expected)
            if not isinstance(value, py):
                raise bad_type(param, value, expected)

        if not isinstance(body, dict):
            raise BadRequest("Invalid type for request body: expected an object.", None, "invalid_type")
        unknown_keys(body, RESPONSES_PARAMS, "")
        model = body.get("model")
        if model is None:
            raise missing("model")
        typed("model", model, str, "a string")
        prev = body.get("previous_response_id")
        if prev is not None:
            # This peer stores nothing: whatever id comes, it is not ours.
            raise BadRequest(
                f"Previous response with id '{prev}' not found.", "previous_response_id", "previous_response_not_found"
            )
        conv = body.get("conversation")
        if conv is not None:
            cid = conv.get("id") if isinstance(conv, dict) else conv
            raise BadRequest(f"Conversation with id '{cid}' not found.", "conversation", "conversation_not_found")
        for name, py, expected in (
            ("instructions", str, "a string"),
            ("stream", bool, "a boolean"),
            ("store", bool, "a boolean"),
            ("background", bool, "a boolean"),
            ("parallel_tool_calls", bool, "a boolean"),
            ("prompt_cache_key", str, "a string"),
            ("safety_identifier", str, "a string"),
            ("include", list, "an array"),
            ("tools", list, "an array"),
            ("metadata", dict, "an object"),
            ("reasoning", dict, "an object"),
            ("text", dict, "an object"),
            ("max_output_tokens", int, "an integer"),
            ("temperature", (int, float), "a decimal"),
            ("top_p", (int, float), "a decimal"),
        ):
            typed(name, body.get(name), py, expected)

        # ---- input items
        raw = body.get("input")
        if raw is None:
            raise missing("input")
        if isinstance(raw, str):
            items: list = [{"type": "message", "role": "user", "content": raw}]
        elif isinstance(raw, list):
            items = raw
        else:
            raise bad_type("input", raw, "one of a string or array of input items")
        calls: dict[str, int] = {}  # function call_id -> index, until answered
        custom_calls: dict[str, int] = {}
        seen_calls: set[str] = set()
        seen_custom: set[str] = set()
        for i, item in enumerate(items):
            at = f"input[{i}]"
            if not isinstance(item, dict):
                raise bad_type(at, item, "an object")
            kind = item_kind(item)
            if kind is None:
                raise missing(f"{at}.type")
            if kind not in ITEM_PARAMS:
                raise bad_value(f"{at}.type", kind, tuple(ITEM_PARAMS))
            unknown_keys(item, ITEM_PARAMS[kind], at)
            if kind == "message":
                role = item.get("role")
                if role is None:
                    raise missing(f"{at}.role")
                if role not in MESSAGE_ROLES:
                    raise bad_value(f"{at}.role", role, MESSAGE_ROLES)
                content = item.get("content")
                if content is None:
                    raise missing(f"{at}.content")
                if isinstance(content, list):
                    allowed = OUTPUT_PARTS if role == "assistant" else INPUT_PARTS
                    for j, part in enumerate(content):
                        pat = f"{at}.content[{j}]"
                        if not isinstance(part, dict):
                            raise bad_type(pat, part, "an object")
                        pt = part.get("type")
                        if pt not in allowed:
                            raise bad_value(pat, pt, allowed)
                        unknown_keys(part, PART_PARAMS[pt], pat)
                        if pt in ("input_text", "output_text") and not isinstance(part.get("text"), str):
                            raise missing(f"{pat}.text")
                elif not isinstance(content, str):
                    raise bad_type(f"{at}.content", content, "one of a string or array of objects")
            elif kind in ("function_call", "custom_tool_call"):
                value_key = "arguments" if kind == "function_call" else "input"
                for k in ("call_id", "name", value_key):
                    if item.get(k) is None:
                        raise missing(f"{at}.{k}")
                    typed(f"{at}.{k}", item.get(k), str, "a string")
                (calls if kind == "function_call" else custom_calls)[item["call_id"]] = i
                (seen_calls if kind == "function_call" else seen_custom).add(item["call_id"])
            elif kind in ("function_call_output", "custom_tool_call_output"):
                cid = item.get("call_id")
                if cid is None:
                    raise missing(f"{at}.call_id")
                typed(f"{at}.call_id", cid, str, "a string")
                seen = seen_calls if kind == "function_call_output" else seen_custom
                if cid not in seen:
                    what = "function call" if kind == "function_call_output" else "custom tool call"
                    raise BadRequest(f"No tool call found for {what} output with call_id {cid}.", "input", None)
                (calls if kind == "function_call_output" else custom_calls).pop(cid, None)
                out = item.get("output")
                if out is None:
                    raise missing(f"{at}.output")
                if not isinstance(out, (str, list)):
                    raise bad_type(f"{at}.output", out, "one of a string or array of objects")
            elif kind == "reasoning":
                summary = item.get("summary")
                if summary is None:
                    raise missing(f"{at}.summary")
                typed(f"{at}.summary", summary, list, "an array")
                for j, part in enumerate(summary):
                    if not isinstance(part, dict) or part.get("type") != "summary_text" or not isinstance(
                        part.get("text"), str
                    ):
                        raise bad_value(f"{at}.summary[{j}].type", (part or {}).get("type") if isinstance(part, dict) else part, ("summary_text",))
                enc = item.get("encrypted_content")
                if enc not in self.issued:
                    name = item.get("id") or at
                    raise BadRequest(
                        f"The encrypted content for item {name} could not be verified."
                        if enc is not None
                        else f"Item {name} carries no encrypted_content and this server stores no items; "
                        "send reasoning items back with the encrypted_content they came with.",
                        f"{at}.encrypted_content",
                        "invalid_encrypted_content",
                    )
        if calls or custom_calls:
            cid, _ = min(list(calls.items()) + list(custom_calls.items()), key=lambda kv: kv[1])
            what = "function call" if cid in calls else "custom tool call"
            raise BadRequest(f"No tool output found for {what} {cid}.", "input", None)

        # ---- tools and the rest
        for i, tool in enumerate(body.get("tools") or []):
            at = f"tools[{i}]"
            if not isinstance(tool, dict):
                raise bad_type(at, tool, "an object")
            tt = tool.get("type")
            if tt is None:
                raise missing(f"{at}.type")
            if tt not in TOOL_PARAMS:
                raise bad_value(f"{at}.type", tt, tuple(TOOL_PARAMS))
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                raise missing(f"{at}.name")
            unknown_keys(tool, TOOL_PARAMS[tt], at)
        tc = body.get("tool_choice")
        if isinstance(tc, str):
            if tc not in ("none", "auto", "required"):
                raise bad_value("tool_choice", tc, ("none", "auto", "required"))
        elif isinstance(tc, dict):
            tct = tc.get("type")
            if tct in ("function", "custom"):
                if not isinstance(tc.get("name"), str):
                    raise missing("tool_choice.name")
                unknown_keys(tc, ("type", "name"), "tool_choice")
            elif tct != "allowed_tools":
                raise bad_value("tool_choice.type", tct, ("function", "custom", "allowed_tools"))
        elif tc is not None:
            raise bad_type("tool_choice", tc, "one of a string or object")
        reasoning = body.get("reasoning") or {}
        unknown_keys(reasoning, REASONING_PARAMS, "reasoning")
        if reasoning.get("effort") is not None and reasoning["effort"] not in REASONING_EFFORTS:
            raise bad_value("reasoning.effort", reasoning["effort"], REASONING_EFFORTS)
        if reasoning.get("summary") is not None and reasoning["summary"] not in REASONING_SUMMARIES:
            raise bad_value("reasoning.summary", reasoning["summary"], REASONING_SUMMARIES)
        text = body.get("text") or {}
        unknown_keys(text, TEXT_PARAMS, "text")
        fmt = text.get("format")
        if fmt is not None:
            typed("text.format", fmt, dict, "an object")
            ft = fmt.get("type")
            if ft is None:
                raise missing("text.format.type")
            if ft not in FORMAT_PARAMS:
                raise bad_value("text.format.type", ft, tuple(FORMAT_PARAMS))
            if ft == "json_schema":
                if not isinstance(fmt.get("name"), str):
                    raise missing("text.format.name")
                if not isinstance(fmt.get("schema"), dict):
                    raise missing("text.format.schema")
            unknown_keys(fmt, FORMAT_PARAMS[ft], "text.format")
        if text.get("verbosity") is not None and text["verbosity"] not in ("low", "medium", "high"):
            raise bad_value("text.verbosity", text["verbosity"], ("low", "medium", "high"))
        for i, inc in enumerate(body.get("include") or []):
            if inc not in INCLUDABLE:
                raise bad_value(f"include[{i}]", inc, INCLUDABLE)
        mot = body.get("max_output_tokens")
        if mot is not None and mot < 16:
            raise BadRequest(
                f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, but got {mot} "
                "instead.",
                "max_output_tokens",
                "integer_below_min_value",
            )
        if model not in self.models:
            raise BadRequest(f"The requested model '{model}' does not exist.", "model", "model_not_found")
        return items

    def plan_responses(self, body: dict, items: list) -> dict:
        """Decide the answer, by the chat endpoint's rules: {"reasoning":
        summary text or None, "limit"} plus {"text"} or {"calls": [...]}."""
        tools = body.get("tools") or []
        tool_choice = body.get("tool_choice")
        last = items[-1] if items else None
        last_kind = item_kind(last)
        user_text = ""
        for item in reversed(items):
            if item_kind(item) == "message" and item.get("role") == "user":
                user_text = parts_text(item.get("content"))
                break
        effort = (body.get("reasoning") or {}).get("effort")
        plan: dict[str, Any] = {"limit": body.get("max_output_tokens"), "reasoning": None}
        if (effort is not None and effort != "none") or THINK_RE.search(user_text):
            plan["reasoning"] = "peer thinking about: " + user_text
        if last_kind in ("function_call_output", "custom_tool_call_output"):
            plan["text"] = "peer saw tool result: " + parts_text(last.get("output"))
            return plan
        kinds = {t["name"]: t["type"] for t in tools}

        def call(call_id: str, name: str, value: str, fragments: int = 4) -> dict:
            return {"call_id": call_id, "name": name, "value": value, "fragments": fragments,
                    "custom": kinds.get(name) == "custom"}

        if last_kind == "message" and last.get("role") == "user" and tools and tool_choice != "none":
            try:
                scripted = scripted_calls(user_text)
            except BadRequest as e:
                raise BadRequest(e.message, "input", e.code) from None
            if scripted is not None:
                plan["calls"] = [call(c["id"], c["name"], c["arguments"], c["fragments"]) for c in scripted["tool_calls"]]
                return plan
            if re.search(r"\btools?\b", user_text, re.IGNORECASE):
                names = [t["name"] for t in tools]
                first = names[0]
                if isinstance(tool_choice, dict) and tool_choice.get("name") in names:
                    first = tool_choice["name"]
                args = json.dumps({"q": user_text})

                def value(name: str) -> str:  # a custom tool takes the text itself
                    return user_text if kinds.get(name) == "custom" else args

                calls = [call("call_peer_0", first, value(first))]
                if body.get("parallel_tool_calls") is not False and re.search(r"parallel", user_text, re.IGNORECASE):
                    second = names[1] if len(names) > 1 else names[0]
                    calls.append(call("call_peer_1", second, value(second)))
                plan["calls"] = calls
                return plan
        fmt = (body.get("text") or {}).get("format") or {}
        if fmt.get("type") in ("json_schema", "json_object"):
            m = re.search(r"troupe-json: ?([^\r\n]*)", user_text)
            if m:
                plan["text"] = m.group(1)
                return plan
        plan["text"] = "peer reply to: " + user_text
        return plan

    def build_response(self, body: dict, items: list, plan: dict, mode: str | None) -> dict:
        """The output items of a planned answer and the stream events between
        ``response.in_progress`` and the terminal event (without
        ``sequence_number``); ids are taken here."""
        rid, _ = self.new_id("resp")
        output: list[dict] = []
        events: list[dict] = []
        out_tokens = reasoning_tokens = 0
        status, incomplete = "completed", None
        include_enc = "reasoning.encrypted_content" in (body.get("include") or [])

        def added(item: dict) -> int:
            idx = len(output)
            events.append({"type": "response.output_item.added", "output_index": idx, "item": item})
            return idx

        def done(idx: int, item: dict) -> None:
            events.append({"type": "response.output_item.done", "output_index": idx, "item": item})
            output.append(item)

        if plan.get("reasoning") is not None:
            iid, n = self.new_id("rs")
            summary = plan["reasoning"]
            words = WORD_RE.findall(summary)
            enc = None
            if include_enc:
                enc = f"enc-peer-{n}"
                self.issued.add(enc)
            idx = added({"id": iid, "type": "reasoning", "summary": [], "encrypted_content": None})
            where = {"item_id": iid, "output_index": idx, "summary_index": 0}
            events.append({"type": "response.reasoning_summary_part.added", **where, "part": {"type": "summary_text", "text": ""}})
            for w in words:
                events.append({"type": "response.reasoning_summary_text.delta", **where, "delta": w})
            events.append({"type": "response.reasoning_summary_text.done", **where, "text": summary})
            events.append({"type": "response.reasoning_summary_part.done", **where, "part": {"type": "summary_text", "text": summary}})
            done(idx, {"id": iid, "type": "reasoning", "summary": [{"type": "summary_text", "text": summary}], "encrypted_content": enc})
            reasoning_tokens = len(words)
            out_tokens += len(words)

        if "calls" in plan:
            for c in plan["calls"]:
                value = c["value"]
                frags = split_fragments(value, c["fragments"]) if value else []
                if c["custom"]:
                    iid, _ = self.new_id("ctc")
                    head = {"id": iid, "type": "custom_tool_call", "status": "in_progress", "call_id": c["call_id"], "name": c["name"], "input": ""}
                    idx = added(head)
                    for frag in frags:
                        events.append({"type": "response.custom_tool_call_input.delta", "item_id": iid, "output_index": idx, "delta": frag})
                    events.append({"type": "response.custom_tool_call_input.done", "item_id": iid, "output_index": idx, "input": value})
                    done(idx, dict(head, status="completed", input=value))
                else:
                    iid, _ = self.new_id("fc")
                    head = {"id": iid, "type": "function_call", "status": "in_progress", "arguments": "", "call_id": c["call_id"], "name": c["name"]}
                    idx = added(head)
                    for frag in frags:
                        events.append({"type": "response.function_call_arguments.delta", "item_id": iid, "output_index": idx, "delta": frag})
                    events.append({"type": "response.function_call_arguments.done", "item_id": iid, "output_index": idx, "name": c["name"], "arguments": value})
                    done(idx, dict(head, status="completed", arguments=value))
                out_tokens += count_words(value) + 3
        else:
            words = WORD_RE.findall(plan["text"])
            limit = plan.get("limit")
            if isinstance(limit, int) and not isinstance(limit, bool) and limit < len(words):
                words = words[:limit]
                status, incomplete = "incomplete", {"reason": "max_output_tokens"}
            text = "".join(words)
            iid, _ = self.new_id("msg")
            idx = added({"id": iid, "type": "message", "status": "in_progress", "role": "assistant", "content": []})
            where = {"item_id": iid, "output_index": idx, "content_index": 0}
            events.append({"type": "response.content_part.added", **where, "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}})
            for w in words:
                events.append({"type": "response.output_text.delta", **where, "delta": w, "logprobs": []})
            events.append({"type": "response.output_text.done", **where, "text": text, "logprobs": []})
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            events.append({"type": "response.content_part.done", **where, "part": part})
            done(idx, {"id": iid, "type": "message", "status": status, "role": "assistant", "content": [dict(part)]})
            out_tokens += len(words)

        in_tokens = responses_input_tokens(body.get("instructions"), items, body.get("tools"))
        return {
            "id": rid,
            "created_at": int(time.time()),
            "output": output,
            "events": events,
            "status": status,
            "incomplete_details": incomplete,
            "usage": None if mode == "no_usage" else responses_usage(in_tokens, out_tokens, reasoning_tokens),
        }

    def response_obj(self, body: dict, built: dict, status: str, output: list, final: bool = False) -> dict:
        """The response object: in ``response.created`` / ``.in_progress``
        (status ``in_progress``, no output yet) and, ``final``, in the
        terminal event or the non-stream body (with usage)."""
        reasoning = body.get("reasoning") or {}
        text = body.get("text") or {}
        tools = []
        for t in body.get("tools") or []:
            t = dict(t)
            if t.get("type") == "function":
                t.setdefault("description", None)
                t.setdefault("parameters", None)
                t.setdefault("strict", True)
            tools.append(t)
        obj: dict[str, Any] = {
            "id": built["id"],
            "object": "response",
            "created_at": built["created_at"],
            "status": status,
            "background": bool(body.get("background")),
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": None,
            "incomplete_details": built["incomplete_details"] if final else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": body.get("max_tool_calls"),
            "model": body["model"],
            "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
            "previous_response_id": None,
            "prompt_cache_key": body.get("prompt_cache_key"),
            "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
            "safety_identifier": body.get("safety_identifier"),
            "service_tier": "default",
            "store": body.get("store") is not False,
            "temperature": body["temperature"] if body.get("temperature") is not None else 1.0,
            "text": {"format": text.get("format") or {"type": "text"}, "verbosity": text.get("verbosity") or "medium"},
            "tool_choice": body["tool_choice"] if body.get("tool_choice") is not None else "auto",
            "tools": tools,
            "top_logprobs": body.get("top_logprobs") or 0,
            "top_p": body["top_p"] if body.get("top_p") is not None else 1.0,
            "truncation": body.get("truncation") or "disabled",
            "metadata": body.get("metadata") or {},
        }
        if body.get("user") is not None:
            obj["user"] = body["user"]
        if final and built["usage"] is not None:
            obj["usage"] = built["usage"]
        return obj

    async def stream_response(
        self, request: web.Request, body: dict, built: dict, mode: str | None, entry: dict, fault: dict | None
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "x-request-id": "req_" + uuid.uuid4().hex,
                "openai-processing-ms": "2",
            },
        )
        if mode == "close":
            resp.force_close()
        await resp.prepare(request)
        quirky = mode == "quirky"
        delay = fault["seconds"] if mode == "slow" and fault else self.chunk_delay
        nl = "\r\n" if quirky else "\n"
        seq = 0

        async def send(event: dict) -> None:
            nonlocal seq
            data = json.dumps(dict(event, sequence_number=seq))
            seq += 1
            if quirky:
                if seq % 3 == 1:
                    await resp.write(f": keep-alive comment{nl}".encode())
                prefix = "data:" if seq % 2 == 1 else "data: "
                frame = f"event: {event['type']}{nl}{prefix}{data}{nl}{nl}"
                if seq % 4 == 2:
                    # One event split across two writes.
                    half = len(frame) // 2
                    await resp.write(frame[:half].encode())
                    await asyncio.sleep(self.chunk_delay)
                    await resp.write(frame[half:].encode())
                else:
                    await resp.write(frame.encode())
            else:
                await resp.write(f"event: {event['type']}\ndata: {data}\n\n".encode())
            if delay:
                await asyncio.sleep(delay)

        opening = self.response_obj(body, built, "in_progress", [])
        events = [
            {"type": "response.created", "response": opening},
            {"type": "response.in_progress", "response": opening},
        ] + built["events"]
        for i, event in enumerate(events):
            if mode == "drop" and i >= RESPONSES_DROP_AFTER:
                # Created, in progress and the first item's opening went out.
                await asyncio.sleep(0.05)
                entry["outcome"] = "dropped"
                return await self.abort(request, resp)
            await send(event)
        if mode == "drop_after_finish":
            # Every item is done; the line breaks before the terminal event.
            await asyncio.sleep(0.05)
            entry["outcome"] = "dropped"
            return await self.abort(request, resp)
        status = built["status"]
        final = self.response_obj(body, built, status, built["output"], final=True)
        await send({"type": "response.completed" if status == "completed" else "response.incomplete", "response": final})
        if mode == "late_end":
            await asyncio.sleep(fault["seconds"])
        await resp.write_eof()
        entry["outcome"] = "completed"
        return resp


async def on_not_found(request: web.Request) -> web.Response:
    return json_response(
        404,
        error_body(f"Invalid URL ({request.method} {request.path})", "invalid_request_error"),
    )


def build_app(peer: Peer) -> web.Application:
    routes = [
        web.post("/v1/chat/completions", peer.chat),
        web.post("/v1/responses", peer.responses),
        web.get("/v1/models", peer.list_models),
        web.get("/v1/models/{model}", peer.get_model),
        web.get("/_peer/faults", peer.get_faults),
        web.get("/_peer/concurrency", peer.get_concurrency),
        web.delete("/_peer/faults", peer.delete_faults),
    ]
    return peer_app(peer, routes, on_not_found)


async def amain(args: argparse.Namespace) -> None:
    keys = split_list(args.keys)
    models = split_list(args.models)
    peer = Peer(keys, models, args.chunk_delay, args.seed)
    app = build_app(peer)
    await serve(app, args.host, args.port)


def main() -> None:
    ap = arguments(__doc__)
    ap.add_argument("--keys", default="sk-peer-1,sk-peer-2", help="comma-separated accepted API keys")
    ap.add_argument("--models", default="gpt-4o-mini,gpt-4o", help="comma-separated models served")
    ap.add_argument("--chunk-delay", type=float, default=0.002, help="seconds between stream chunks")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the rate-fault draws")
    run(amain, ap)


if __name__ == "__main__":
    main()
