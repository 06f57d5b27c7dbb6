#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/corpus/<target>/.

The seeds are real wire formats: the translation fixtures
(tests/fixtures/translation/), the shapes the test peers send
(tests/peers/*.py, tests/peers/cli/), the shipped configuration files
(config/), and the quirks the decoders' own tests name. What an input means
to each target (the leading byte of the streamed ones, the packet separator
of socketio_packets) is documented in src/fuzzing.rs.

    python3 fuzz/seeds.py          # adds seed-* files (existing ones are kept)

Seeds only start the corpora: `cargo fuzz cmin` then keeps the inputs that
add coverage, named by their hash. Brotli seeds need the `brotli` module;
zstd seeds need the `zstd` program; without them those seeds are skipped.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
FIXTURES = ROOT / "tests" / "fixtures" / "translation"


def put(target: str, name: str, data: bytes | str) -> None:
    if isinstance(data, str):
        data = data.encode()
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data)


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def dumps(v) -> str:
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def sse(events: list[tuple[str | None, str]], crlf: bool = False) -> str:
    nl = "\r\n" if crlf else "\n"
    out = []
    for name, data in events:
        if name:
            out.append(f"event: {name}{nl}")
        for line in data.split("\n"):
            out.append(f"data: {line}{nl}")
        out.append(nl)
    return "".join(out)


def frame(v) -> bytes:
    body = dumps(v).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


# ---- client requests ----

OPENAI_REQUESTS = {
    "text": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]},
    "stream": {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 64,
        "stop": ["END", "\n\n"],
        "seed": 7,
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
        "user": "u1",
    },
    "parts": {
        "model": "m",
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "and kind"}]},
            {"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA==", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ]},
        ],
        "max_completion_tokens": 7,
        "stop": "END",
        "some_future_field": {"ignored": True},
    },
    "tools": {
        "model": "m",
        "messages": [
            {"role": "user", "content": "weather in Paris and Rome? use the tool"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "rain"}]},
        ],
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "description": "Weather of a city", "strict": True,
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        }}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": True,
        "response_format": {"type": "json_object"},
        "reasoning_effort": "low",
    },
    "tool_choice_required": {
        "model": "m", "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required",
    },
    "reasoning_history": {
        "model": "m",
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a", "reasoning_content": "thought", "name": "bot"},
            {"role": "user", "content": "again"},
        ],
        "n": 1,
        "logprobs": False,
    },
    "bad_n": {"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2},
    "bad_role": {"model": "m", "messages": [{"role": "wizard", "content": "x"}]},
    "bad_temperature": {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3},
}

ANTHROPIC_REQUESTS = {
    "text": {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": [{"role": "user", "content": "Hello"}]},
    "system_blocks": {
        "model": "m", "max_tokens": 16,
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "Answer briefly."}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Describe"}, {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}}]},
        ],
        "stream": True, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "stop_sequences": ["END"],
        "metadata": {"user_id": "u1"},
    },
    "thinking_tools": {
        "model": "m", "max_tokens": 2048,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [
            {"role": "user", "content": "zoom and crop"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Look first.", "signature": "sig-abc"},
                {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va"},
                {"type": "tool_use", "id": "toolu_a", "name": "zoom", "input": {"factor": 2}},
                {"type": "tool_use", "id": "toolu_b", "name": "crop", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_a", "content": [{"type": "text", "text": "zoomed"}]},
                {"type": "tool_result", "tool_use_id": "toolu_b", "content": "cropped", "is_error": True},
                {"type": "text", "text": "now?"},
            ]},
        ],
        "tools": [
            {"name": "zoom", "description": "Zoom", "input_schema": {"type": "object", "properties": {"factor": {"type": "number"}}}},
            {"name": "crop", "input_schema": {"type": "object"}},
        ],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    },
    "documents": {
        "model": "m", "max_tokens": 8,
        "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "a doc"}, "title": "t"},
            {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "inner"}]}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/map.png"}},
            {"type": "text", "text": "summarise"},
        ]}],
        "tool_choice": {"type": "tool", "name": "f"},
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
    },
    "system_message": {
        "model": "m", "max_tokens": 8,
        "messages": [{"role": "system", "content": "inline system"}, {"role": "user", "content": "x"}],
    },
    "bad_block": {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "audio"}]}]},
    "server_tool": {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}],
                    "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
}


def requests() -> None:
    for name, body in OPENAI_REQUESTS.items():
        put("openai_request", name, json.dumps(body, indent=1 if name == "parts" else None))
    put("openai_request", "fixture_parallel_tools",
        json.dumps(fixture("openai_request_parallel_tools_to_anthropic_upstream")["input"]))
    put("openai_request", "bom_and_junk", b"\xef\xbb\xbf{\"model\":\"m\"} x")
    for name, body in ANTHROPIC_REQUESTS.items():
        put("anthropic_request", name, json.dumps(body))
    for f in ("anthropic_request_claude_code_to_openai_upstream", "anthropic_request_thinking_to_anthropic_upstream"):
        put("anthropic_request", f"fixture_{f.split('_request_')[1]}", json.dumps(fixture(f)["input"]))

    # Content-Encoding: first byte = coding (0 gzip, 1 deflate, 2 br, 3 zstd) | 4 for the 64-byte limit.
    body = json.dumps(OPENAI_REQUESTS["stream"]).encode()
    put("request_body", "gzip", bytes([0]) + gzip.compress(body))
    put("request_body", "gzip_small_limit", bytes([4]) + gzip.compress(body))
    put("request_body", "gzip_multi_member", bytes([0]) + gzip.compress(b"{\"a\":") + gzip.compress(b"1}"))
    put("request_body", "deflate_zlib", bytes([1]) + zlib.compress(body))
    raw = zlib.compressobj(wbits=-15)
    put("request_body", "deflate_raw", bytes([1]) + raw.compress(body) + raw.flush())
    try:
        import brotli  # type: ignore

        put("request_body", "br", bytes([2]) + brotli.compress(body))
        put("request_body", "br_bomb_small_limit", bytes([6]) + brotli.compress(b" " * 100000))
    except ImportError:
        print("brotli module missing: no br seeds", file=sys.stderr)
    if shutil.which("zstd"):
        z = subprocess.run(["zstd", "-q", "-c"], input=body, capture_output=True, check=True).stdout
        put("request_body", "zstd", bytes([3]) + z)
        z = subprocess.run(["zstd", "-q", "-c"], input=b"0" * 100000, capture_output=True, check=True).stdout
        put("request_body", "zstd_bomb_small_limit", bytes([7]) + z)
    else:
        print("zstd program missing: no zstd seeds", file=sys.stderr)


# ---- upstream streams ----

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1741570283, "model": "gpt-4o", "system_fingerprint": "fp_1"}


def chunk(delta, finish=None, **extra) -> str:
    return dumps({**HEAD, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra})


def openai_streams() -> dict[str, str]:
    fx = [dumps(c) for c in fixture("openai_stream_parallel_tools_to_anthropic")["input"]]
    text = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "peer "}),
        chunk({"content": "reply \"quoted\" caf\u00e9 \\ / \U0001F600 \b\f\r\t\n"}),
        json.dumps({**HEAD, "choices": [{"index": 0, "delta": {"content": "escaped \u4e2d \U0001F600 \x01"}, "logprobs": None, "finish_reason": None}]}),
        chunk({"content": "to: hi"}),
        chunk({}, "stop"),
        dumps({**HEAD, "choices": [], "usage": {"prompt_tokens": 1200, "completion_tokens": 80, "total_tokens": 1280,
                                                "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
                                                "completion_tokens_details": {"reasoning_tokens": 64}}}),
    ]
    reasoning = [
        chunk({"content": None, "reasoning_content": "think"}),
        chunk({"content": None, "reasoning_content": "ing more"}),
        chunk({"reasoning": "other name", "content": "x"}),
        chunk(None, "length"),
        dumps({**HEAD, "choices": [], "usage": None}),
    ]
    tools = [
        chunk({"role": "assistant", "content": None, "tool_calls": [{"index": 0, "id": "call_peer_0", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"ci"}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_peer_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "ty\":\"Paris\"}"}}]}),
        chunk({}, "tool_calls"),
    ]
    odd = [
        dumps({"choices": [{"index": 1, "delta": {"content": "other choice"}}]}),
        dumps({"choices": [{"index": 0, "delta": {"content": "a"}}, {"index": 1, "delta": {"content": "b"}}]}),
        ' { "id" : "x", "extra" : {"a":[1,{"b":"}]"}],"c":-1.5e3,"d":true}, "choices" : [ { "delta" : { "content" : "spaced" } , "index" : 0 } ] , "usage":null } ',
        dumps({"choices": [{"index": 0, "delta": {"content": "no head", "x": "\"}"}}], "obfuscation": "a\\b"}),
        dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 0, "prompt_tokens_details": {"cached_tokens": None}}}),
        dumps({"choices": [], "usage": {"prompt_tokens": 5000000000, "completion_tokens": 8}}),
        r'{"choices":[{"index":0,"delta":{"content":"\ud83d"}}]}',
        r'{"choices":[{"index":0,"delta":{"content":"\x"}}]}',
        r'{"choices":[{"index":"0","delta":{"content":5}}]}',
        '{"choices":[{"index":0,"delta":{"content":"a","content":"b"}}]}',
        '{"choices":[{"index":0,"delta":{"content":"cut',
        "[]",
    ]
    error = [chunk({"content": "partial"}), dumps({"error": {"message": "overloaded", "type": "server_error", "param": None, "code": 529}})]
    return {
        "fixture_parallel_tools": sse([(None, d) for d in fx] + [(None, "[DONE]")]),
        "text": sse([(None, d) for d in text] + [(None, "[DONE]")]),
        "reasoning": sse([(None, d) for d in reasoning] + [(None, "[DONE]")]),
        "tools": sse([(None, d) for d in tools] + [(None, "[DONE]")]),
        "odd_chunks": sse([(None, d) for d in odd]),
        "error": sse([(None, d) for d in error]),
        "quirky": ": keep-alive\r\n\r\nevent: message\r\ndata:" + text[1] + "\r\n\r\ndata:" + text[4] + "\r\n\r\ndata:[DONE]",
    }


def anthropic_stream() -> list[tuple[str | None, str]]:
    return [(e["event"], dumps(e["data"])) for e in fixture("anthropic_stream_thinking_tools_to_openai")["input"]]


ANTHROPIC_MESSAGE = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
    "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "redacted_thinking", "data": "xyz"},
        {"type": "text", "text": "Hi"},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
        {"type": "server_tool_use", "id": "srv", "name": "web_search", "input": {}},
    ],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 10, "output_tokens": 3, "cache_read_input_tokens": 4, "cache_creation_input_tokens": 2},
}


def streams() -> None:
    for name, s in openai_streams().items():
        put("openai_stream", name, s)
        put("sse", f"openai_{name}", b"\x00" + s.encode())
    put("sse", "quirky_cut", b"\x03\x05\x01\x00" + openai_streams()["quirky"].encode())
    put("sse", "multiline_data_cut", b"\x02\x07\x03" + b"event: x\ndata: a\ndata: b\n\n: comment\nretry: 5\nid: 1\ndata\n\nevent: y\n\ndata: \xe4\xb8\xad\xff\n\n")
    put("sse", "no_final_blank_line", b"\x01\x04data: one\n\ndata: two\r")

    a = anthropic_stream()
    put("anthropic_stream", "fixture_thinking_tools", b"\x00" + sse(a).encode())
    put("anthropic_stream", "fixture_thinking_tools_cut", b"\x02\x0b\x02" + sse(a, crlf=True).encode())
    put("sse", "anthropic_fixture", b"\x00" + sse(a).encode())
    put("anthropic_stream", "message_body", b"\x00" + dumps(ANTHROPIC_MESSAGE).encode())
    put("anthropic_stream", "error_body", b"\x00" + dumps({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}).encode())
    put("anthropic_stream", "error_event", b"\x00" + sse([
        ("message_start", dumps({"type": "message_start", "message": {**ANTHROPIC_MESSAGE, "content": [ANTHROPIC_MESSAGE["content"][2]], "usage": {"input_tokens": 5, "output_tokens": 1}}})),
        ("content_block_delta", dumps({"type": "content_block_delta", "index": 9, "delta": {"type": "input_json_delta", "partial_json": "{\"a\""}})),
        ("content_block_delta", dumps({"type": "content_block_delta", "index": 0, "delta": {"type": "citations_delta", "citation": {}}})),
        ("error", dumps({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})),
    ]).encode())

    od = [
        dumps({"eventType": "reasoning", "sessionId": "s", "messageId": "m", "answer": "let me think", "status": "processing"}),
        dumps({"eventType": "fulfillment", "sessionId": "s", "messageId": "m", "answer": "ondemand ", "status": "processing"}),
        dumps({"eventType": "fulfillment", "sessionId": "s", "messageId": "m", "answer": "reply #1 to: hi", "status": "processing"}),
        dumps({"eventType": "metricsLog", "publicMetrics": {"inputTokens": 5, "outputTokens": 2}}),
    ]
    body = "".join(f"data:{d}\n\n" for d in od)
    put("ondemand_stream", "stream", b"\x00" + (body + "data:[DONE]\n\n").encode())
    put("ondemand_stream", "stream_cut", b"\x01\x09" + (body + "data:[DONE]\n\n").encode())
    put("ondemand_stream", "error", b"\x00" + (body + "data:[ERROR]: upstream model failed\n\n").encode())
    put("ondemand_stream", "thinking_fields", b"\x00" + sse([(None, dumps({"eventType": "thinkingLog", "thinking": "t"})), (None, dumps({"eventType": "ReasoningStep", "content": "c"})), (None, "{not json")]).encode())
    put("ondemand_stream", "sync_body", b"\x00" + dumps({"message": "Chat query submitted successfully", "data": {"sessionId": "s", "messageId": "m", "answer": "hi there", "status": "completed", "metrics": {"inputTokens": 2, "outputTokens": 2}}}).encode())

    def lg_msg(kind, id_, content):
        return dumps([{"content": content, "additional_kwargs": {}, "response_metadata": {}, "type": kind, "name": None, "id": id_,
                       "example": False, "tool_calls": [], "invalid_tool_calls": [], "usage_metadata": None, "tool_call_chunks": []},
                      {"langgraph_step": 1, "langgraph_node": "agent", "langgraph_triggers": ["start:agent"], "thread_id": "t1", "run_id": "r1"}])

    lg = [
        ("metadata", dumps({"run_id": "1f0-r1", "attempt": 1})),
        ("messages", lg_msg("human", "h1", "question")),
        ("messages", lg_msg("AIMessageChunk", "run-a1", "langgraph ")),
        ("messages", lg_msg("AIMessageChunk", "run-a1", "reply #1")),
        ("messages", lg_msg("tool", "t1", "tool output")),
        ("messages", lg_msg("AIMessageChunk", "run-a2", [{"type": "thinking", "thinking": "hmm"}, {"type": "reasoning", "reasoning": "r"}, {"type": "text", "text": " to: hi"}, "raw"])),
        ("messages", lg_msg("ai", "run-a1", "langgraph reply #1")),
        ("messages/complete", dumps([{"type": "ai", "id": "run-a3", "content": "whole"}])),
        ("values", dumps({"messages": []})),
        ("end", "null"),
    ]
    put("langgraph_stream", "run", b"\x00" + sse(lg).encode())
    put("langgraph_stream", "run_cut", b"\x03\x11\x00\x05" + sse(lg, crlf=True).encode())
    put("langgraph_stream", "error", b"\x00" + sse(lg[:3] + [("error", dumps({"error": "ValueError", "message": "boom"}))]).encode())
    put("langgraph_stream", "bad_messages", b"\x00" + sse([("messages", "{not json"), ("messages", "[1,2,3]")]).encode())


# ---- CLI output ----

def run_cli(name: str, args: list[str], prompt: str) -> bytes:
    env = {"PATH": "/usr/bin:/bin", "FAKE_CLI_DELAY": "0", "FAKE_CLI_STATE": "/tmp/troupe-fuzz-seeds-cli"}
    exe = ROOT / "tests" / "peers" / "cli" / f"fake_{name}"
    r = subprocess.run([sys.executable, str(exe), *args, prompt], capture_output=True, env=env, timeout=30)
    return r.stdout


def cli() -> None:
    args = {
        "claude": ["--print", "--output-format", "stream-json", "--verbose", "--model", "sonnet", "--system-prompt", "be brief"],
        "codex": ["exec", "--json", "--model", "o4"],
        "gemini": ["--output-format", "stream-json", "--model", "flash"],
    }
    prompts = {
        "hello": "hello there",
        "slow": "[slow] tell me more",
        "error": "[error] fail please",
        "scripted": "troupe-say[3]: line one\\nline two <function_call nonce=\"N\"><tool>t</tool></function_call>",
    }
    for name, a in args.items():
        for pname, prompt in prompts.items():
            out = run_cli(name, a, prompt)
            if pname == "slow":
                # One line per piece: a dozen show the shape; more only
                # slow every execution down.
                lines = out.splitlines(keepends=True)
                out = b"".join(lines[:10] + lines[-2:])
            if out:
                put(f"cli_{name}", pname, b"\x0f" + out)
    # Shapes the fakes do not print: streamed deltas and tool use
    # (claude), banners among the JSON, CRLF, a line past a small cap.
    lines = [
        {"type": "system", "subtype": "init", "session_id": "s1"},
        {"type": "stream_event", "event": {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}}},
        {"type": "stream_event", "event": {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hel"}}},
        {"type": "stream_event", "event": {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "lo"}}},
        {"type": "assistant", "message": {"content": [{"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": "Hello"},
                                                      {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "a"}},
                                                      {"type": "tool_use", "name": "Bash"}]}, "session_id": "s1"},
        {"type": "result", "subtype": "success", "is_error": False, "result": "Hello", "usage": {"input_tokens": 3, "output_tokens": 2, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 99999999999}},
    ]
    text = "Warning: a banner\r\n" + "\r\n".join(dumps(l) for l in lines) + "\r\n"
    put("cli_claude", "stream_events_tools", b"\x05" + text.encode())
    put("cli_claude", "error_subtype", b"\x80" + (dumps({"type": "result", "subtype": "error_max_turns", "session_id": ""}) + "\n").encode())
    put("cli_codex", "reasoning_usage", b"\x07" + "\n".join(dumps(l) for l in [
        {"type": "thread.started", "thread_id": "t1"},
        {"type": "item.completed", "item": {"id": "i0", "type": "reasoning", "text": "**think**"}},
        {"type": "item.completed", "item": {"id": "i1", "type": "command_execution", "command": "ls"}},
        {"type": "item.completed", "item": {"id": "i2", "type": "agent_message", "text": "done"}},
        {"type": "turn.completed", "usage": {"input_tokens": 10, "cached_input_tokens": 40, "output_tokens": 5}},
    ]).encode())
    put("cli_gemini", "tools_and_warning", b"\x86" + "\n".join(dumps(l) for l in [
        {"type": "init", "session_id": "g1", "model": "flash"},
        {"type": "tool_use", "tool_id": "", "tool_name": "read_file", "parameters": {"path": "a"}},
        {"type": "error", "severity": "warning", "message": "slow"},
        {"type": "message", "role": "assistant", "content": "ok", "delta": True},
        {"type": "result", "status": "success", "usage": {"prompt_tokens": 4, "candidates_tokens": 2}},
        {"type": "result", "status": "error", "error": {"message": "quota"}},
    ]).encode())


# ---- sockets and agents ----

def socketio() -> None:
    open_ = '0{"sid":"s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}'

    def ev(name, payload, ack=""):
        return "42" + ack + dumps([name, payload])

    packets = [
        open_, '40{"sid":"x"}', "2",
        ev("execution:chunk", {"executionId": "job-other-1", "status": "in_progress", "finish_reason": None, "content": "NOISE"}),
        ev("execution:chunk", {"executionId": "job-1", "status": "in_progress", "finish_reason": None, "content": "Hel"}),
        ev("execution:chunk", {"executionId": "job-1", "status": "in_progress", "finish_reason": None, "content": "Hello"}),
        ev("execution:chunk", {"executionId": "job-1", "status": "in_progress", "finish_reason": None, "content": "Hel"}),
        ev("execution:chunk", {"executionId": "job-1", "status": "completed", "finish_reason": "stop", "content": "Hello"}),
        ev("completion_finished", {"executionId": "job-1"}),
        ev("execution:chunk", {"execution_id": 7, "status": "completed", "content": "n"}, ack="12"),
        ev("completion_finished", {"job_id": "j"}), ev("other", {"run_id": "r"}),
        '42["execution:chunk"]', "42{}", "3", "6", '44{"message":"bad token"}', "41", "1",
    ]
    put("socketio_packets", "session", "\x1e".join(packets))
    put("socketio_packets", "many_orphans", "\x1e".join(ev("completion_finished", {"executionId": str(i)}) for i in range(300)))

    ids = {"sessionId": "s1", "requestId": "r1"}
    msgs = [
        {"jsonrpc": "2.0", "id": 5, "method": "workspace/configuration", "params": {**ids, "items": [{"section": "lingma"}]}},
        {"jsonrpc": "2.0", "method": "chat/answer", "params": {**ids, "text": "lingma reply #1 "}},
        {"jsonrpc": "2.0", "method": "chat/answer", "params": {**ids, "text": "(isReply=false) to: h\u00e9llo"}},
        {"jsonrpc": "2.0", "id": 6, "method": "tool/invoke", "params": {**ids, "toolCallId": "tc-1", "name": "read_file", "parameters": {"path": "README.md"}}},
        {"jsonrpc": "2.0", "method": "tool/invokeResult", "params": {**ids, "toolCallId": "tc-1", "name": "read_file", "result": "ok"}},
        {"jsonrpc": "2.0", "method": "tool/call/sync", "params": {"sessionId": 12, "toolCall": {"toolName": "x", "arguments": "{\"a\":1}", "callId": 3}}},
        {"jsonrpc": "2.0", "method": "chat/finish", "params": {**ids, "reason": "success", "statusCode": 200, "fullAnswer": "all"}},
        {"jsonrpc": "2.0", "method": "chat/finish", "params": {**ids, "reason": "error", "statusCode": 400, "error": {"message": "chat/ask must be a notification"}}},
        {"jsonrpc": "2.0", "id": 1, "result": None},
    ]
    stream = b"".join(frame(m) for m in msgs)
    put("lingma_rpc", "session", b"\x00" + stream)
    put("lingma_rpc", "session_cut", b"\x03\x09\x30\x01" + stream)
    put("lingma_rpc", "bare_json_and_batch", b"\x00" + b" " + dumps(msgs[1]).encode() + b"\n" + dumps(msgs[5:7]).encode() + frame(msgs[0]) + b"content-length:2\r\nContent-Type: x\r\n\r\n{}")
    put("lingma_rpc", "not_json_body", b"\x00" + b"Content-Length: 5\r\n\r\nhello" + frame(msgs[6]))
    put("lingma_rpc", "info_json", b"\x00" + b'{"port": "12345", "pid": 678}')
    put("lingma_rpc", "info_lines", b"\x00" + b"pid=678\nPort: \"41234\"\n")


# ---- configuration ----

def config() -> None:
    put("config_toml", "troupe", (ROOT / "config" / "troupe.toml").read_bytes())
    for p in sorted((ROOT / "config" / "examples").glob("*.toml")):
        put("config_toml", f"example_{p.stem}", p.read_bytes())
    put("config_toml", "everything", """
[server]
listen = "0.0.0.0:8317"
api_keys = ["sk-1", "sk-2"]
admin_key = "adm"
cors_origins = ["https://example.com"]
body_limit = "1MiB"
request_timeout = "5m"
log_format = "json"

[supervisor]
backoff_initial = "100ms"
backoff_max = "1s"
backoff_multiplier = 1.5
max_restarts = 3

[[pools]]
name = "o"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
models = ["gpt-4o-mini", "fast=gpt-4o-mini"]
priority = 2
headers = { "x-extra" = "1" }
connect_timeout = "2s"
accounts = [{ name = "a", api_key = "sk-a" }, { name = "b", api_key = "sk-b" }]
supervisor = { max_restarts = 9 }

[[pools]]
name = "c"
kind = "cli"
preset = "custom"
binary = "echo"
args = ["{prompt}"]
output_format = "text"
models = ["echo"]

[[pools]]
name = "s"
kind = "socketio"
preset = "langfast"
base_url = "http://127.0.0.1:9"
models = ["lf"]
""")
    put("config_toml", "errors", """
[server]
listen = "nowhere"
[[pools]]
name = ""
kind = "wizard"
models = []
unknown_key = 1
""")


def main() -> None:
    requests()
    streams()
    cli()
    socketio()
    config()
    for d in sorted(CORPUS.iterdir()):
        print(f"{d.name}: {len(list(d.iterdir()))} files")


if __name__ == "__main__":
    main()
