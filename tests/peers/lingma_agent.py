#!/usr/bin/env python3
"""A Lingma-protocol agent process for tests.

Started by the gateway (one process per session) in its work directory. It
serves a WebSocket on 127.0.0.1 (port 0) speaking JSON-RPC 2.0 with LSP
framing (``Content-Length: N\\r\\n\\r\\n{json}``) inside WebSocket messages, and
writes ``{"port": P, "pid": PID}`` to its info file in the work directory.

Protocol, as the real agent behaves:
- ``chat/ask`` is a notification. One with an ``id`` is answered with an
  error finish, since the real agent never replies to it.
- The answer streams as ``chat/answer`` notifications (``text`` deltas, with
  ``requestId``/``sessionId``) and ends with ``chat/finish``.
- Before answering, the agent sends one request of its own (with an ``id``)
  and fails the turn if it is not answered within 5 s.

Deterministic replies: ``lingma reply #N (isReply=BOOL) to: TEXT`` where N
counts the turns of the ``sessionId``, so reuse of an agent session shows.
Every ``chat/ask`` is appended to ``asks.jsonl`` in the work directory.

Markers in the text: ``[[tool]]`` makes the agent report a tool event
(``tool/invoke`` with name and parameters); ``[[crash]]`` exits non-zero
mid-answer; ``[[stall]]`` stops answering mid-answer. A prompt with a
``troupe-say`` directive gets the scripted answer of
``_common.scripted_answer`` (one ``chat/answer`` per piece of the
directive's size). Otherwise a prompt carrying the gateway's tool
instructions (``<function_call nonce="N">``) gets a call of the first
listed tool, with that nonce; one carrying a ``<function_result ...>`` gets
an answer quoting it. Answers are split across WebSocket messages at odd
points, and several LSP messages share a WebSocket message, as real agents
do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from pathlib import Path

from aiohttp import web, WSMsgType

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import instruction_nonce, pieces as split_pieces, scripted_answer  # noqa: E402

LIFETIME = 600  # seconds: a backstop so a leaked agent cannot live forever


def frame(obj: dict) -> bytes:
    body = json.dumps(obj).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


class Decoder:
    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[dict]:
        self.buf += data
        out = []
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return out
            m = re.search(rb"Content-Length:\s*(\d+)", self.buf[:end], re.I)
            if not m:
                raise ValueError(f"bad header {self.buf[:end]!r}")
            n = int(m.group(1))
            if len(self.buf) < end + 4 + n:
                return out
            out.append(json.loads(self.buf[end + 4 : end + 4 + n]))
            self.buf = self.buf[end + 4 + n :]


class Agent:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.turns: dict[str, int] = {}
        self.pending: dict[int, asyncio.Future] = {}
        self.next_id = 1000
        # One LSP message is written whole before the next starts, even when
        # it goes out in two WebSocket messages (turns answer concurrently).
        self.write_lock = asyncio.Lock()

    def log(self, entry: dict) -> None:
        with open(self.workdir / "asks.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        dec = Decoder()
        tasks = set()
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                data = msg.data.encode()
            elif msg.type == WSMsgType.BINARY:
                data = msg.data
            else:
                break
            for m in dec.feed(data):
                if "method" not in m:
                    fut = self.pending.pop(m.get("id"), None)
                    if fut is not None and not fut.done():
                        fut.set_result(m)
                    continue
                if m["method"] == "chat/ask":
                    t = asyncio.create_task(self.ask(ws, m))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
        return ws

    async def send(self, ws, *msgs: dict, split: bool = False) -> None:
        data = b"".join(frame(m) for m in msgs)
        async with self.write_lock:
            if split and len(data) > 10:
                # One LSP message across two WebSocket messages.
                cut = len(data) // 2 + 3
                await ws.send_bytes(data[:cut])
                await asyncio.sleep(0.01)
                await ws.send_bytes(data[cut:])
            else:
                await ws.send_str(data.decode())

    async def ask(self, ws, m: dict) -> None:
        p = m.get("params") or {}
        sid, rid = p.get("sessionId"), p.get("requestId")
        text = p.get("text") or p.get("content") or ""
        ids = {"sessionId": sid, "requestId": rid}

        async def finish(**extra) -> None:
            await self.send(ws, {"jsonrpc": "2.0", "method": "chat/finish", "params": {**ids, **extra}})

        if "id" in m:
            self.log({**p, "had_id": True})
            await finish(reason="error", statusCode=400, error="chat/ask must be a notification")
            return
        # A request of our own: the client must answer it.
        self.next_id += 1
        req_id = self.next_id
        fut = asyncio.get_running_loop().create_future()
        self.pending[req_id] = fut
        await self.send(ws, {"jsonrpc": "2.0", "id": req_id, "method": "workspace/configuration", "params": {**ids, "items": [{"section": "lingma"}]}})
        try:
            answer = await asyncio.wait_for(fut, 5)
        except asyncio.TimeoutError:
            self.log({**p, "answered": False})
            await finish(reason="error", statusCode=500, error=f"request {req_id} was not answered")
            return
        self.turns[sid] = self.turns.get(sid, 0) + 1
        n = self.turns[sid]
        self.log({**p, "answered": "result" in answer, "turn": n})
        is_reply = bool(p.get("isReply"))
        scripted = scripted_answer(text)
        chunk = 7
        if scripted is not None:
            reply, chunk = scripted
        elif re.search(r"<function_result[^>]*><tool>", text):
            res = re.findall(r"<result>(.*?)</result>", text, re.S)
            reply = f"lingma reply #{n} (isReply={str(is_reply).lower()}) saw result: {res[-1] if res else '?'}"
        elif '<function_call nonce="' in text and "Tools:" in text:
            tool = re.search(r"^- ([A-Za-z0-9_]+)", text, re.M)
            name = tool.group(1) if tool else "unknown"
            nonce = instruction_nonce(text) or ""
            reply = f'Let me check. <function_call nonce="{nonce}"><tool>{name}</tool><args>{{"city": "Paris"}}</args></function_call>'
        else:
            reply = f"lingma reply #{n} (isReply={str(is_reply).lower()}) to: {text}"
        pieces = split_pieces(reply, chunk)
        answer_msgs = [{"jsonrpc": "2.0", "method": "chat/answer", "params": {**ids, "text": piece}} for piece in pieces]
        if "[[tool]]" in text:
            self.next_id += 1
            await self.send(ws, {"jsonrpc": "2.0", "id": self.next_id, "method": "tool/invoke", "params": {**ids, "toolCallId": "tc-1", "name": "read_file", "parameters": {"path": "README.md"}}})
            await self.send(ws, {"jsonrpc": "2.0", "method": "tool/invokeResult", "params": {**ids, "toolCallId": "tc-1", "name": "read_file", "result": "ok"}})
        for i in range(0, len(answer_msgs), 2):
            if i >= 2 and "[[crash]]" in text:
                print("lingma agent: crashing on purpose", file=sys.stderr, flush=True)
                os._exit(3)
            if i >= 2 and "[[stall]]" in text:
                await asyncio.sleep(LIFETIME)
            await self.send(ws, *answer_msgs[i : i + 2], split=(i // 2) % 2 == 1)
            await asyncio.sleep(0.005)
        await finish(reason="success", statusCode=200)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default=".")
    ap.add_argument("--info-file", default=".info")
    ap.add_argument("--path", default="/")
    ap.add_argument("--require-file")
    ap.add_argument("--info-format", choices=["json", "lines"], default="json")
    args = ap.parse_args()
    workdir = Path(args.workdir).resolve()
    if args.require_file:
        req = workdir / args.require_file
        if not req.is_file():
            print(f"lingma agent: not logged in: {args.require_file} is missing", file=sys.stderr, flush=True)
            sys.exit(2)
    agent = Agent(workdir)
    app = web.Application()
    app.router.add_get(args.path, agent.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    info = workdir / args.info_file
    tmp = info.with_name(info.name + ".tmp")
    if args.info_format == "json":
        tmp.write_text(json.dumps({"port": port, "pid": os.getpid()}))
    else:
        tmp.write_text(f"pid={os.getpid()}\nport={port}\n")
    tmp.rename(info)
    await asyncio.sleep(LIFETIME)


if __name__ == "__main__":
    asyncio.run(main())
