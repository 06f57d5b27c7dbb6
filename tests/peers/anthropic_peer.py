#!/usr/bin/env python3
"""A fake Anthropic Messages upstream for black-box tests of troupe.

Run::

    python tests/peers/anthropic_peer.py --port 0 --keys ak-peer-1,ak-peer-2

Once bound it prints exactly one line ``listening on http://127.0.0.1:PORT``
to stdout. It speaks the Messages API the way api.anthropic.com does
(``x-api-key`` and ``anthropic-version`` headers, bodies, named SSE events in
their order, error envelopes), and validates requests as strictly as the real
service where a gateway's translation can go wrong:

* unknown top-level fields, block fields or message fields are refused
  (``<path>: Extra inputs are not permitted``); roles other than ``user`` and
  ``assistant`` are refused (``system`` belongs in the top-level ``system``);
* ``max_tokens`` is required;
* text blocks must be non-empty (and not only whitespace), and every message
  but a final assistant one must have content;
* every ``tool_use`` must be answered by a ``tool_result`` in the very next
  (user) message, tool results first, and every ``tool_result`` must answer a
  ``tool_use`` of the message before it;
* an assistant ``thinking`` block must carry the ``signature`` this peer
  issued (``sig-peer-1``);
* ``thinking.budget_tokens`` must be >= 1024 and below ``max_tokens``.

Answers are deterministic:

* text: ``"anthropic peer reply to: " + <text of the last user message>``,
  streamed one word (plus its trailing whitespace) per ``text_delta``;
  ``max_tokens`` below the word count cuts it (``stop_reason: "max_tokens"``);
  a stop sequence found in the reply cuts it before the sequence
  (``stop_reason: "stop_sequence"``).
* tools: when tools are offered (and ``tool_choice`` is not ``none``) and the
  last user text contains the word "tool", the answer is a ``tool_use`` of the
  first tool (or the one ``tool_choice`` names) with input
  ``{"q": <last user text>}`` and id ``toolu_peer_0``; if the text also
  contains "parallel" (and parallel use is not disabled) a second one (the
  second tool, or the first again; id ``toolu_peer_1``). If the text contains
  "explain", a text block ``"Let me use a tool."`` comes first. Tool input
  streams as ``input_json_delta`` fragments (an empty one, then at least
  three). ``stop_reason`` is ``tool_use``.
* after tool results (the last user message holds ``tool_result`` blocks):
  ``"anthropic peer saw tool result: " + <text of the last tool result>``.
* thinking: when the request has ``thinking: {"type": "enabled"}`` or the last
  user text contains "think", a thinking block comes first
  (``"peer thinking about: " + text``, streamed as ``thinking_delta``s, then a
  ``signature_delta`` with ``sig-peer-1``).
* usage: ``input_tokens`` counted by words (see ``input_tokens``),
  ``cache_read_input_tokens`` = 3, ``cache_creation_input_tokens`` = 0,
  ``output_tokens`` the words produced. In a stream ``message_start`` carries
  the input usage (and ``output_tokens: 1``, as the real service does) and
  ``message_delta`` the cumulative ``output_tokens``.

Test control endpoints (no auth):

* ``POST /_peer/faults`` ``{"mode", "count", "key"?, "retry_after"?, "seconds"?}``
  gives the next ``count`` message requests (with that key, if given) a fault:

  - ``429``: ``rate_limit_error`` with ``retry-after: retry_after`` (default 1);
  - ``529``: ``overloaded_error``;
  - ``500``: ``api_error``;
  - ``400``: ``invalid_request_error`` "anthropic peer rejects this";
  - ``drop``: stream: ``message_start``, a text block start, ``ping`` and two
    text deltas, then the connection is cut; non-stream: cut without a response;
  - ``stream_error``: the same start, then ``event: error`` with an
    ``overloaded_error`` and the end of the stream (what the real service does
    when it is overloaded mid-answer);
  - ``hang``: send nothing for ``seconds`` (default 30), then answer.
* ``POST /_peer/reset`` clears faults and the request log.
* ``GET /_peer/requests`` lists every message request received, oldest first:
  ``{"key", "auth", "version", "beta", "body", "path", "stream", "time",
  "end", "fault", "outcome"}`` (``auth`` says whether the key came as
  ``x-api-key`` or as a bearer token, which newer SDKs send); ``outcome`` is ``pending``, ``completed``,
  ``status N``, ``dropped``, ``stream_error`` or ``client_disconnected``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import time
import uuid
from typing import Any

from aiohttp import web

try:  # imported as peers.<name> by tests, or run as a script
    from ._common import arguments, body_json, peer_app, recorded, run, serve, split_list, take_fault
except ImportError:
    from _common import arguments, body_json, peer_app, recorded, run, serve, split_list, take_fault

FAULT_MODES = ("429", "529", "500", "400", "drop", "stream_error", "hang")
SIGNATURE = "sig-peer-1"
CACHE_READ = 3
CACHE_CREATION = 0
WORD_RE = re.compile(r"\S+\s*")
ID_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
MODEL_CREATED_AT = "2025-05-14T00:00:00Z"

TOP_LEVEL_FIELDS = {
    "model",
    "messages",
    "max_tokens",
    "metadata",
    "stop_sequences",
    "stream",
    "system",
    "temperature",
    "thinking",
    "tool_choice",
    "tools",
    "top_k",
    "top_p",
    "service_tier",
    "container",
    "mcp_servers",
    "context_management",
    "cache_control",  # top-level automatic prompt caching (the SDK's ``cache_control`` parameter)
}
BLOCK_FIELDS = {
    "text": {"type", "text", "cache_control", "citations"},
    "image": {"type", "source", "cache_control"},
    "document": {"type", "source", "title", "context", "citations", "cache_control"},
    "tool_use": {"type", "id", "name", "input", "cache_control"},
    "tool_result": {"type", "tool_use_id", "content", "is_error", "cache_control"},
    "thinking": {"type", "thinking", "signature"},
    "redacted_thinking": {"type", "data"},
}
USER_BLOCKS = ("text", "image", "document", "tool_result")
ASSISTANT_BLOCKS = ("text", "tool_use", "thinking", "redacted_thinking")
TOOL_FIELDS = {
    "type",
    "name",
    "description",
    "input_schema",
    "cache_control",
    "strict",
    "input_examples",
    "defer_loading",
    "eager_input_streaming",
}


# --------------------------------------------------------------------------
# helpers


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def error_body(type_: str, message: str) -> dict:
    return {"type": "error", "error": {"type": type_, "message": message}, "request_id": new_request_id()}


def json_response(status: int, body: Any, headers: dict | None = None) -> web.Response:
    h = {"request-id": new_request_id(), "anthropic-organization-id": "org-peer"}
    if headers:
        h.update(headers)
    return web.Response(status=status, text=json.dumps(body), content_type="application/json", headers=h)


def text_of(content: Any) -> str:
    """Text of a message ``content`` or a tool result's ``content``."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
                parts.append(block["text"])
        return " ".join(parts)
    return str(content)


def count_words(text: str) -> int:
    return len(text.split())


def input_tokens(body: dict) -> int:
    """Deterministic stand-in for a tokenizer: words of the system prompt and
    every text, tool use and tool result, a small per-message overhead, and
    the words of the tool definitions. Cached tokens are not included, as
    in Anthropic's ``input_tokens``."""
    n = count_words(text_of(body.get("system")))
    for m in body.get("messages") or []:
        if not isinstance(m, dict):
            continue
        n += 3
        content = m.get("content")
        if isinstance(content, str):
            n += count_words(content)
            continue
        for block in content or []:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text":
                n += count_words(str(block.get("text", "")))
            elif kind == "tool_use":
                n += 3 + count_words(json.dumps(block.get("input", {})))
            elif kind == "tool_result":
                n += 3 + count_words(text_of(block.get("content")))
            elif kind == "thinking":
                n += count_words(str(block.get("thinking", "")))
            elif kind == "image":
                n += 85
    if body.get("tools"):
        n += count_words(json.dumps(body["tools"]))
    return max(n, 1)


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


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.status, self.type = message, status, type_


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def extra_fields(obj: dict, allowed: set, path: str) -> None:
    for k in obj:
        if k not in allowed:
            raise BadRequest(f"{path}.{k}: Extra inputs are not permitted" if path else f"{k}: Extra inputs are not permitted")


# --------------------------------------------------------------------------
# validation


def validate_text_block(block: dict, path: str) -> None:
    text = block.get("text")
    if text is None:
        raise BadRequest(f"{path}.text: Field required")
    if not isinstance(text, str):
        raise BadRequest(f"{path}.text: Input should be a valid string")
    if text == "":
        raise BadRequest("messages: text content blocks must be non-empty")
    if not text.strip():
        raise BadRequest("messages: text content blocks must contain non-whitespace text")


def validate_image_block(block: dict, path: str) -> None:
    source = block.get("source")
    if not isinstance(source, dict):
        raise BadRequest(f"{path}.source: Field required")
    kind = source.get("type")
    if kind == "base64":
        extra_fields(source, {"type", "media_type", "data"}, f"{path}.source.base64")
        if source.get("media_type") not in MEDIA_TYPES:
            raise BadRequest(
                f"{path}.source.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or "
                "'image/webp'"
            )
        if not isinstance(source.get("data"), str) or not source["data"]:
            raise BadRequest(f"{path}.source.base64.data: Field required")
    elif kind == "url":
        extra_fields(source, {"type", "url"}, f"{path}.source.url")
        if not isinstance(source.get("url"), str):
            raise BadRequest(f"{path}.source.url.url: Field required")
    else:
        raise BadRequest(f"{path}.source: Input tag '{kind}' found using 'type' does not match any of the expected tags")


def validate_block(block: Any, role: str, path: str, issued_signatures: set[str]) -> None:
    if not isinstance(block, dict):
        raise BadRequest(f"{path}: Input should be a valid dictionary or object to extract fields from")
    kind = block.get("type")
    allowed_here = USER_BLOCKS if role == "user" else ASSISTANT_BLOCKS
    if kind not in BLOCK_FIELDS:
        raise BadRequest(f"{path}: Input tag '{kind}' found using 'type' does not match any of the expected tags")
    if kind not in allowed_here:
        raise BadRequest(f"{path}: `{kind}` blocks are not allowed in `{role}` messages")
    bpath = f"{path}.{kind}"
    extra_fields(block, BLOCK_FIELDS[kind], bpath)
    if kind == "text":
        validate_text_block(block, bpath)
    elif kind == "image":
        validate_image_block(block, bpath)
    elif kind == "tool_use":
        if not isinstance(block.get("id"), str):
            raise BadRequest(f"{bpath}.id: Field required")
        if not ID_RE.match(block["id"]):
            raise BadRequest(f"{bpath}.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
        if not isinstance(block.get("name"), str) or not block["name"]:
            raise BadRequest(f"{bpath}.name: Field required")
        if not isinstance(block.get("input"), dict):
            raise BadRequest(f"{bpath}.input: Input should be a valid dictionary")
    elif kind == "tool_result":
        tid = block.get("tool_use_id")
        if not isinstance(tid, str):
            raise BadRequest(f"{bpath}.tool_use_id: Field required")
        if not ID_RE.match(tid):
            raise BadRequest(f"{bpath}.tool_use_id: String should match pattern '^[a-zA-Z0-9_-]+$'")
        content = block.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise BadRequest(f"{bpath}.content: Input should be a valid string or list")
        if isinstance(content, list):
            for k, inner in enumerate(content):
                ipath = f"{bpath}.content.{k}"
                if not isinstance(inner, dict) or inner.get("type") not in ("text", "image", "document"):
                    raise BadRequest(f"{ipath}: Input tag found using 'type' does not match any of the expected tags")
                extra_fields(inner, BLOCK_FIELDS[inner["type"]], f"{ipath}.{inner['type']}")
                if inner["type"] == "text":
                    validate_text_block(inner, f"{ipath}.text")
                elif inner["type"] == "image":
                    validate_image_block(inner, f"{ipath}.image")
        if "is_error" in block and not isinstance(block["is_error"], bool):
            raise BadRequest(f"{bpath}.is_error: Input should be a valid boolean")
    elif kind == "thinking":
        if not isinstance(block.get("thinking"), str):
            raise BadRequest(f"{bpath}.thinking: Field required")
        sig = block.get("signature")
        if sig is None:
            raise BadRequest(f"{bpath}.signature: Field required")
        if not isinstance(sig, str):
            raise BadRequest(f"{bpath}.signature: Input should be a valid string")
        if sig not in issued_signatures:
            raise BadRequest(f"{path}: Invalid `signature` in `thinking` block")
    elif kind == "redacted_thinking":
        if not isinstance(block.get("data"), str):
            raise BadRequest(f"{bpath}.data: Field required")


def validate(body: Any, models: list[str]) -> None:
    if not isinstance(body, dict):
        raise BadRequest("Input should be a valid dictionary or object to extract fields from")
    for k in body:
        if k not in TOP_LEVEL_FIELDS:
            raise BadRequest(f"{k}: Extra inputs are not permitted")
    model = body.get("model")
    if model is None:
        raise BadRequest("model: Field required")
    if not isinstance(model, str):
        raise BadRequest("model: Input should be a valid string")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise BadRequest("max_tokens: Field required")
    if not is_int(max_tokens):
        raise BadRequest("max_tokens: Input should be a valid integer")
    if max_tokens < 1:
        raise BadRequest("max_tokens: Input should be greater than or equal to 1")
    messages = body.get("messages")
    if messages is None:
        raise BadRequest("messages: Field required")
    if not isinstance(messages, list):
        raise BadRequest("messages: Input should be a valid list")
    if not messages:
        raise BadRequest("messages: at least one message is required")
    for name in ("stream",):
        if name in body and not isinstance(body[name], bool):
            raise BadRequest(f"{name}: Input should be a valid boolean")
    system = body.get("system")
    if system is not None:
        if isinstance(system, list):
            for j, block in enumerate(system):
                path = f"system.{j}"
                if not isinstance(block, dict) or block.get("type") != "text":
                    raise BadRequest(f"{path}.type: Input should be 'text'")
                extra_fields(block, BLOCK_FIELDS["text"], path)
                validate_text_block(block, path)
        elif not isinstance(system, str):
            raise BadRequest("system: Input should be a valid string or list")
    temperature = body.get("temperature")
    if temperature is not None and (not is_number(temperature) or not 0 <= temperature <= 1):
        raise BadRequest("temperature: Input should be less than or equal to 1")
    top_p = body.get("top_p")
    if top_p is not None and (not is_number(top_p) or not 0 <= top_p <= 1):
        raise BadRequest("top_p: Input should be less than or equal to 1")
    top_k = body.get("top_k")
    if top_k is not None and (not is_int(top_k) or top_k < 0):
        raise BadRequest("top_k: Input should be greater than or equal to 0")
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)):
        raise BadRequest("stop_sequences: Input should be a valid list of strings")
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise BadRequest("metadata: Input should be a valid dictionary")
        extra_fields(metadata, {"user_id"}, "metadata")
        uid = metadata.get("user_id")
        if uid is not None and (not isinstance(uid, str) or len(uid) > 256):
            raise BadRequest("metadata.user_id: String should have at most 256 characters")
    thinking = body.get("thinking")
    thinking_on = False
    if thinking is not None:
        if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled", "adaptive"):
            raise BadRequest("thinking: Input tag found using 'type' does not match any of the expected tags")
        if thinking["type"] == "enabled":
            thinking_on = True
            extra_fields(thinking, {"type", "budget_tokens"}, "thinking.enabled")
            budget = thinking.get("budget_tokens")
            if not is_int(budget):
                raise BadRequest("thinking.enabled.budget_tokens: Field required")
            if budget < 1024:
                raise BadRequest("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
            if max_tokens <= budget:
                raise BadRequest("`max_tokens` must be greater than `thinking.budget_tokens`")
    if thinking_on and temperature is not None and temperature != 1:
        raise BadRequest(
            "`temperature` may only be set to 1 when thinking is enabled. Please consult our documentation at "
            "https://docs.claude.com/en/docs/build-with-claude/extended-thinking#important-considerations-when-"
            "using-extended-thinking"
        )
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise BadRequest("tools: Input should be a valid list")
        for i, tool in enumerate(tools):
            path = f"tools.{i}"
            if not isinstance(tool, dict):
                raise BadRequest(f"{path}: Input should be a valid dictionary")
            kind = tool.get("type", "custom")
            if kind not in (None, "custom"):
                continue  # a server tool; its fields are its own
            path = f"{path}.custom"
            extra_fields(tool, TOOL_FIELDS, path)
            name = tool.get("name")
            if not isinstance(name, str):
                raise BadRequest(f"{path}.name: Field required")
            if not TOOL_NAME_RE.match(name):
                raise BadRequest(f"{path}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
            schema = tool.get("input_schema")
            if not isinstance(schema, dict):
                raise BadRequest(f"{path}.input_schema: Field required")
            if schema.get("type") != "object":
                raise BadRequest(f"{path}.input_schema.type: Input should be 'object'")
            if "description" in tool and not isinstance(tool["description"], str):
                raise BadRequest(f"{path}.description: Input should be a valid string")
    tool_choice = body.get("tool_choice")
    if tool_choice is not None:
        if not isinstance(tool_choice, dict) or tool_choice.get("type") not in ("auto", "any", "tool", "none"):
            raise BadRequest("tool_choice: Input tag found using 'type' does not match any of the expected tags")
        kind = tool_choice["type"]
        allowed = {"type", "disable_parallel_tool_use"} | ({"name"} if kind == "tool" else set())
        if kind == "none":
            allowed = {"type"}
        extra_fields(tool_choice, allowed, f"tool_choice.{kind}")
        if kind == "tool" and not isinstance(tool_choice.get("name"), str):
            raise BadRequest("tool_choice.tool.name: Field required")
        if kind != "none" and not tools:
            raise BadRequest("tool_choice: `tool_choice` may only be specified while providing tools")

    issued = {SIGNATURE}
    for i, m in enumerate(messages):
        path = f"messages.{i}"
        if not isinstance(m, dict):
            raise BadRequest(f"{path}: Input should be a valid dictionary")
        extra_fields(m, {"role", "content"}, path)
        role = m.get("role")
        if role not in ("user", "assistant"):
            raise BadRequest(f"{path}.role: Input should be 'user' or 'assistant'")
        if "content" not in m:
            raise BadRequest(f"{path}.content: Field required")
        content = m["content"]
        final_assistant = role == "assistant" and i == len(messages) - 1
        if isinstance(content, str):
            if content == "" and not final_assistant:
                raise BadRequest(
                    f"{path}: all messages must have non-empty content except for the optional final assistant message"
                )
            continue
        if not isinstance(content, list):
            raise BadRequest(f"{path}.content: Input should be a valid string or list")
        if not content and not final_assistant:
            raise BadRequest(
                f"{path}: all messages must have non-empty content except for the optional final assistant message"
            )
        for j, block in enumerate(content):
            validate_block(block, role, f"{path}.content.{j}", issued)

    # tool_use / tool_result pairing, the way the real service checks it.
    for i, m in enumerate(messages):
        blocks = m["content"] if isinstance(m["content"], list) else []
        if m["role"] == "assistant":
            uses = [b["id"] for b in blocks if b.get("type") == "tool_use"]
            if not uses:
                continue
            nxt = messages[i + 1] if i + 1 < len(messages) else None
            nblocks = nxt["content"] if nxt is not None and isinstance(nxt.get("content"), list) else []
            # Tool results must come first in the next user message.
            leading: list[str] = []
            for b in nblocks:
                if b.get("type") != "tool_result":
                    break
                leading.append(b["tool_use_id"])
            missing = [u for u in uses if u not in leading]
            if nxt is None or nxt.get("role") != "user" or missing:
                raise BadRequest(
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                    f"{', '.join(missing or uses)}. Each `tool_use` block must have a corresponding `tool_result` "
                    "block in the next message."
                )
        else:
            prev = messages[i - 1] if i > 0 else None
            prev_blocks = prev["content"] if prev is not None and isinstance(prev.get("content"), list) else []
            prev_uses = {b["id"] for b in prev_blocks if prev["role"] == "assistant" and b.get("type") == "tool_use"}
            for j, b in enumerate(blocks):
                if b.get("type") == "tool_result" and b["tool_use_id"] not in prev_uses:
                    raise BadRequest(
                        f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                        f"{b['tool_use_id']}. Each `tool_result` block must have a corresponding `tool_use` block "
                        "in the previous message."
                    )
    if model not in models:
        raise BadRequest(f"model: {model}", status=404, type_="not_found_error")


# --------------------------------------------------------------------------
# answers


def last_user_text(messages: list) -> str:
    for m in reversed(messages):
        if m.get("role") != "user":
            continue
        content = m.get("content")
        if isinstance(content, str):
            return content
        texts = [b["text"] for b in content if isinstance(b, dict) and b.get("type") == "text"]
        return " ".join(texts)
    return ""


def last_tool_result(messages: list) -> str | None:
    last = messages[-1]
    if last.get("role") != "user" or not isinstance(last.get("content"), list):
        return None
    results = [b for b in last["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]
    if not results:
        return None
    return text_of(results[-1].get("content"))


def plan(body: dict) -> dict:
    """Decide the answer: a list of blocks (dicts with their full content)
    and the stop reason, from the request alone."""
    messages = body["messages"]
    tools = [t for t in (body.get("tools") or []) if t.get("type", "custom") == "custom"]
    tool_choice = body.get("tool_choice") or {}
    max_tokens = body["max_tokens"]
    user_text = last_user_text(messages)
    blocks: list[dict] = []
    thinking = body.get("thinking") or {}
    result = last_tool_result(messages)
    if thinking.get("type") == "enabled" or (result is None and re.search(r"think", user_text, re.IGNORECASE)):
        blocks.append({"type": "thinking", "thinking": "peer thinking about: " + user_text, "signature": SIGNATURE})
    if result is not None:
        text = "anthropic peer saw tool result: " + result
    else:
        text = "anthropic peer reply to: " + user_text
        wants_tool = (
            tools
            and tool_choice.get("type") != "none"
            and (re.search(r"\btools?\b", user_text, re.IGNORECASE) is not None or tool_choice.get("type") in ("any", "tool"))
        )
        if wants_tool:
            names = [t["name"] for t in tools]
            first = names[0]
            if tool_choice.get("type") == "tool" and tool_choice.get("name") in names:
                first = tool_choice["name"]
            if re.search(r"\bexplain\b", user_text, re.IGNORECASE):
                blocks.append({"type": "text", "text": "Let me use a tool."})
            blocks.append({"type": "tool_use", "id": "toolu_peer_0", "name": first, "input": {"q": user_text}})
            parallel_ok = not tool_choice.get("disable_parallel_tool_use", False)
            if parallel_ok and re.search(r"parallel", user_text, re.IGNORECASE):
                second = names[1] if len(names) > 1 else names[0]
                blocks.append({"type": "tool_use", "id": "toolu_peer_1", "name": second, "input": {"q": user_text}})
            return {"blocks": blocks, "stop_reason": "tool_use", "stop_sequence": None}
    words = WORD_RE.findall(text)
    stop_reason, stop_sequence = "end_turn", None
    for seq in body.get("stop_sequences") or []:
        pos = text.find(seq) if seq else -1
        if pos >= 0:
            cut = WORD_RE.findall(text[:pos])
            if len(cut) <= len(words):
                words, stop_reason, stop_sequence = cut, "stop_sequence", seq
    if len(words) > max_tokens:
        words, stop_reason, stop_sequence = words[:max_tokens], "max_tokens", None
    if any(str(t.get("type", "")).startswith("web_search") for t in body.get("tools") or []):
        # A server tool runs here, as at Anthropic: its use and its result
        # are blocks of the answer, before the text.
        blocks.append({"type": "server_tool_use", "id": "srvtoolu_peer_0", "name": "web_search", "input": {"query": user_text}})
        blocks.append({
            "type": "web_search_tool_result",
            "tool_use_id": "srvtoolu_peer_0",
            "content": [{"type": "web_search_result", "url": "https://example.com/", "title": "Example",
                         "encrypted_content": "enc-peer", "page_age": None}],
        })
    if words:
        text_block = {"type": "text", "text": "".join(words)}
        if blocks and blocks[-1]["type"] == "web_search_tool_result":
            # The text cites what the search found.
            text_block["citations"] = [{"type": "web_search_result_location", "url": "https://example.com/",
                                        "title": "Example", "encrypted_index": "enc-index-peer",
                                        "cited_text": "Example text"}]
        blocks.append(text_block)
    return {"blocks": blocks, "stop_reason": stop_reason, "stop_sequence": stop_sequence}


def output_tokens(blocks: list[dict]) -> int:
    n = 0
    for b in blocks:
        if b["type"] == "text":
            n += len(WORD_RE.findall(b["text"]))
        elif b["type"] == "thinking":
            n += len(WORD_RE.findall(b["thinking"]))
        elif b["type"] == "tool_use":
            n += 3 + count_words(json.dumps(b["input"]))
    return max(n, 1)


def usage(inp: int, out: int) -> dict:
    return {
        "input_tokens": inp,
        "cache_creation_input_tokens": CACHE_CREATION,
        "cache_read_input_tokens": CACHE_READ,
        "output_tokens": out,
        "service_tier": "standard",
    }


# --------------------------------------------------------------------------
# the peer


class Peer:
    def __init__(self, keys: list[str], models: list[str], chunk_delay: float):
        self.keys = keys
        self.models = models
        self.chunk_delay = chunk_delay
        self.faults: list[dict] = []
        self.requests: list[dict] = []

    # ---- control -------------------------------------------------------

    async def post_faults(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except Exception:
            return json_response(400, error_body("invalid_request_error", "fault body must be JSON"))
        mode = str(body.get("mode", ""))
        if mode not in FAULT_MODES:
            return json_response(
                400, error_body("invalid_request_error", f"unknown fault mode {mode!r}; one of {FAULT_MODES}")
            )
        fault = {
            "mode": mode,
            "count": int(body.get("count", 1)),
            "key": body.get("key"),
            "retry_after": body.get("retry_after", 1),
            "seconds": float(body.get("seconds", 30)),
        }
        self.faults.append(fault)
        return json_response(200, {"ok": True, "faults": self.faults})

    async def post_reset(self, request: web.Request) -> web.Response:
        self.faults.clear()
        self.requests.clear()
        return json_response(200, {"ok": True})

    async def get_requests(self, request: web.Request) -> web.Response:
        return json_response(200, {"requests": self.requests})

    def take_fault(self, key: str) -> dict | None:
        return take_fault(self.faults, key)

    # ---- auth ----------------------------------------------------------

    def auth(self, request: web.Request) -> tuple[str | None, web.Response | None]:
        key = request.headers.get("x-api-key")
        if not key:
            # Newer SDKs send the key as a bearer token, which the service
            # accepts too.
            m = re.match(r"^Bearer\s+(\S+)\s*$", request.headers.get("authorization", ""))
            key = m.group(1) if m else None
        if not key:
            return None, json_response(401, error_body("authentication_error", "x-api-key header is required"))
        if key not in self.keys:
            return key, json_response(401, error_body("authentication_error", "invalid x-api-key"))
        if not request.headers.get("anthropic-version"):
            return key, json_response(400, error_body("invalid_request_error", "anthropic-version: header is required"))
        return key, None

    # ---- models --------------------------------------------------------

    def model_obj(self, mid: str) -> dict:
        return {"type": "model", "id": mid, "display_name": mid, "created_at": MODEL_CREATED_AT}

    async def list_models(self, request: web.Request) -> web.Response:
        _, err = self.auth(request)
        if err:
            return err
        data = [self.model_obj(m) for m in self.models]
        return json_response(
            200,
            {
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            },
        )

    async def get_model(self, request: web.Request) -> web.Response:
        _, err = self.auth(request)
        if err:
            return err
        mid = request.match_info["model"]
        if mid not in self.models:
            return json_response(404, error_body("not_found_error", f"model: {mid}"))
        return json_response(200, self.model_obj(mid))

    async def count_tokens(self, request: web.Request) -> web.Response:
        _, err = self.auth(request)
        if err:
            return err
        try:
            body = json.loads(await request.read())
        except Exception:
            return json_response(400, error_body("invalid_request_error", "invalid JSON body"))
        if isinstance(body, dict):
            body = dict(body, max_tokens=body.get("max_tokens", 1024))
        try:
            validate(body, self.models)
        except BadRequest as e:
            return json_response(e.status, error_body(e.type, e.message))
        return json_response(200, {"input_tokens": input_tokens(body)})

    # ---- messages ------------------------------------------------------

    async def messages(self, request: web.Request) -> web.StreamResponse:
        key, err = self.auth(request)
        body = await body_json(request)
        stream = bool(isinstance(body, dict) and body.get("stream"))
        entry = {
            "key": key,
            "auth": "x-api-key" if request.headers.get("x-api-key") else "bearer",
            "version": request.headers.get("anthropic-version"),
            "beta": request.headers.get("anthropic-beta"),
            "body": body,
            "path": request.path,
            "stream": stream,
            "outcome": "pending",
            "fault": None,
            "time": time.time(),
        }
        self.requests.append(entry)
        return await recorded(entry, self.messages_inner(request, key, err, body, stream, entry))

    async def messages_inner(
        self, request: web.Request, key: str | None, err: web.Response | None, body: Any, stream: bool, entry: dict
    ) -> web.StreamResponse:
        if err:
            return err
        if body is None:
            return json_response(
                400, error_body("invalid_request_error", "There was an issue with your request body: invalid JSON")
            )
        fault = self.take_fault(key or "")
        mode = fault["mode"] if fault else None
        entry["fault"] = mode
        if mode == "429":
            ra = fault["retry_after"]
            return json_response(
                429,
                error_body(
                    "rate_limit_error",
                    "This request would exceed the rate limit for your organization (org-peer) of 5 requests per "
                    "minute. For details, refer to: https://docs.claude.com/en/api/rate-limits.",
                ),
                headers={
                    "retry-after": str(ra),
                    "anthropic-ratelimit-requests-limit": "5",
                    "anthropic-ratelimit-requests-remaining": "0",
                },
            )
        if mode == "529":
            return json_response(529, error_body("overloaded_error", "Overloaded"))
        if mode == "500":
            return json_response(500, error_body("api_error", "Internal server error"))
        if mode == "400":
            return json_response(400, error_body("invalid_request_error", "anthropic peer rejects this"))
        if mode == "hang":
            await asyncio.sleep(fault["seconds"])
            if request.transport is None or request.transport.is_closing():
                entry["outcome"] = "client_disconnected"
                return web.Response(status=499)
        try:
            validate(body, self.models)
        except BadRequest as e:
            return json_response(e.status, error_body(e.type, e.message))
        answer = plan(body)
        inp = input_tokens(body)
        if mode == "drop" and not stream:
            entry["outcome"] = "dropped"
            transport = request.transport
            if transport is not None:
                transport.abort()
            return web.Response(status=500)
        if stream:
            return await self.stream(request, body, answer, inp, mode, entry)
        msg = {
            "id": "msg_" + uuid.uuid4().hex[:24],
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": answer["blocks"],
            "stop_reason": answer["stop_reason"],
            "stop_sequence": answer["stop_sequence"],
            "usage": usage(inp, output_tokens(answer["blocks"])),
        }
        return json_response(200, msg)

    async def stream(
        self, request: web.Request, body: dict, answer: dict, inp: int, mode: str | None, entry: dict
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "request-id": new_request_id(),
                "anthropic-organization-id": "org-peer",
            },
        )
        await resp.prepare(request)

        async def send(name: str, data: dict) -> None:
            await resp.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode("utf-8"))
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)

        start_usage = usage(inp, 1)
        start_usage.pop("service_tier", None)
        await send(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_" + uuid.uuid4().hex[:24],
                    "type": "message",
                    "role": "assistant",
                    "model": body["model"],
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                },
            },
        )
        if mode in ("drop", "stream_error"):
            await send("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
            await send("ping", {"type": "ping"})
            for w in ("partial ", "answer "):
                await send(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}},
                )
            await asyncio.sleep(0.05)
            if mode == "drop":
                entry["outcome"] = "dropped"
                if request.transport is not None:
                    request.transport.abort()
                return resp
            await send("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
            await resp.write_eof()
            entry["outcome"] = "stream_error"
            return resp

        pinged = False
        for index, block in enumerate(answer["blocks"]):
            kind = block["type"]
            if kind == "text":
                head = {"type": "text", "text": ""}
            elif kind == "thinking":
                head = {"type": "thinking", "thinking": "", "signature": ""}
            elif kind == "server_tool_use":
                head = {"type": "server_tool_use", "id": block["id"], "name": block["name"], "input": {}}
            elif kind == "web_search_tool_result":
                head = block
            else:
                head = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            await send("content_block_start", {"type": "content_block_start", "index": index, "content_block": head})
            if not pinged:
                await send("ping", {"type": "ping"})
                pinged = True
            deltas: list[dict] = []
            if kind == "text":
                deltas = [{"type": "citations_delta", "citation": c} for c in block.get("citations", [])]
                deltas += [{"type": "text_delta", "text": w} for w in WORD_RE.findall(block["text"])]
            elif kind == "thinking":
                deltas = [{"type": "thinking_delta", "thinking": w} for w in WORD_RE.findall(block["thinking"])]
                deltas.append({"type": "signature_delta", "signature": block["signature"]})
            elif kind == "web_search_tool_result":
                deltas = []
            else:
                args = json.dumps(block["input"])
                deltas = [{"type": "input_json_delta", "partial_json": ""}]
                deltas += [{"type": "input_json_delta", "partial_json": f} for f in split_fragments(args, 4)]
            for d in deltas:
                await send("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
            await send("content_block_stop", {"type": "content_block_stop", "index": index})
        if not pinged:
            await send("ping", {"type": "ping"})
        await send(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": answer["stop_reason"], "stop_sequence": answer["stop_sequence"]},
                "usage": {"output_tokens": output_tokens(answer["blocks"])},
            },
        )
        await resp.write(b'event: message_stop\ndata: {"type": "message_stop"}\n\n')
        # The answer is complete once message_stop is out; a client may close
        # the connection right away.
        entry["outcome"] = "completed"
        try:
            await resp.write_eof()
        except ConnectionResetError:
            pass
        return resp


async def on_not_found(request: web.Request) -> web.Response:
    return json_response(404, error_body("not_found_error", "Not found"))


def build_app(peer: Peer) -> web.Application:
    routes = [
        web.post("/v1/messages", peer.messages),
        web.post("/v1/messages/count_tokens", peer.count_tokens),
        web.get("/v1/models", peer.list_models),
        web.get("/v1/models/{model}", peer.get_model),
    ]
    return peer_app(peer, routes, on_not_found)


async def amain(args: argparse.Namespace) -> None:
    keys = split_list(args.keys)
    models = split_list(args.models)
    peer = Peer(keys, models, args.chunk_delay)
    app = build_app(peer)
    await serve(app, args.host, args.port)


def main() -> None:
    ap = arguments(__doc__)
    ap.add_argument("--keys", default="ak-peer-1,ak-peer-2", help="comma-separated accepted API keys")
    ap.add_argument("--models", default="claude-peer,claude-peer-2", help="comma-separated models served")
    ap.add_argument("--chunk-delay", type=float, default=0.002, help="seconds between stream events")
    run(amain, ap)


if __name__ == "__main__":
    main()
