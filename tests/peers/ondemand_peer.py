#!/usr/bin/env python3
"""A fake OnDemand chat API for black-box tests of troupe's ``ondemand`` kind.

Run::

    python tests/peers/ondemand_peer.py --port 0 --keys od-key-1,od-key-2

Once bound it prints exactly one line ``listening on http://127.0.0.1:PORT``
to stdout. It speaks OnDemand's chat REST API under ``/chat/v1``:

* ``POST /chat/v1/sessions`` (header ``apikey``) with ``{"externalUserId"}``
  answers ``201 {"message", "data": {"id", "externalUserId", ...}}``.
  Sessions live server-side and belong to the key that created them.
* ``POST /chat/v1/sessions/{id}/query`` with ``{query, endpointId,
  pluginIds, responseMode}``. Each session remembers every query it got; the
  answer is ``"ondemand reply #N to: <query>"`` where N counts the queries
  the session has seen, so tests can tell a continued session from a new
  one. ``responseMode: "sync"`` answers ``{"message", "data": {"sessionId",
  "messageId", "answer", "status": "completed", ...}}``; ``"stream"``
  answers SSE ``data:{json}`` lines, one ``eventType: "fulfillment"`` event
  per word (``answer`` holds the word), a ``metricsLog`` event, then
  ``data:[DONE]``. For endpoints whose id contains ``deepseek-r1`` a few
  ``eventType: "reasoning"`` events (``answer`` holds the reasoning text,
  ``"pondering: <query>"``) come before the first fulfillment.
* Tools (emulated by the gateway in the query text): when the query holds
  the gateway's tool instruction (``<function_call nonce="N">``) and its
  text asks to ``use the tool``, the answer is ``"Calling it now. "``
  followed by a ``<function_call nonce="N"><tool>FIRST_TOOL</tool><args>
  {"q": "troupe"}</args></function_call>`` block with the instruction's
  nonce (streamed in small pieces, so the block is split across events).
  When the query holds a ``<function_result ...>`` block the answer is
  ``"ondemand reply #N: saw tool result: <result>"``.
* A query with a ``troupe-say`` directive gets the scripted answer instead
  (``_common.scripted_answer``), in pieces of the directive's size.
* Errors use OnDemand's shape ``{"message", "errorCode"}``: a wrong key is
  401, an unknown session or an unknown ``endpointId`` is 404.

Test control endpoints (no auth):

* ``POST /_peer/faults`` ``{"mode", "count"?, "retry_after"?}`` gives the
  next ``count`` query requests a fault: ``401``, ``429`` (with
  ``Retry-After``), ``500``, ``drop`` (stream: three fulfillment events, then
  the connection is cut with no ``[DONE]``), ``error`` (stream: two events
  then ``data:[ERROR]:...``).
* ``POST /_peer/reset`` clears faults, sessions and the request log.
* ``GET /_peer/requests`` lists every API request, oldest first:
  ``{"path", "key", "body", "session", "outcome"}``.
* ``GET /_peer/sessions`` lists sessions: ``{"id", "key", "queries"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
import uuid
from typing import Any

from aiohttp import web

try:  # imported as peers.<name> by tests, or run as a script
    from ._common import arguments, instruction_nonce, peer_app, pieces, run, scripted_answer, serve, split_list, take_fault
except ImportError:
    from _common import arguments, instruction_nonce, peer_app, pieces, run, scripted_answer, serve, split_list, take_fault

FAULT_MODES = ("401", "429", "500", "drop", "error")
DEFAULT_ENDPOINTS = (
    "predefined-openai-gpt4o",
    "predefined-claude-4-sonnet",
    "predefined-deepseek-r1",
    "predefined-peer-echo",
)
WORD_RE = re.compile(r"\S+\s*")
RESULT_RE = re.compile(r"<function_result[^>]*>.*?<result>(.*?)</result>", re.S)
TOOL_LINE_RE = re.compile(r"^- ([A-Za-z0-9_.-]+)", re.M)


def error(status: int, message: str, code: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"message": message, "errorCode": code}, status=status, headers=headers)


class Peer:
    def __init__(self, keys: list[str], endpoints: list[str], chunk_delay: float):
        self.keys = keys
        self.endpoints = endpoints
        self.chunk_delay = chunk_delay
        self.sessions: dict[str, dict] = {}
        self.faults: list[dict] = []
        self.requests: list[dict] = []

    # ---- control -------------------------------------------------------

    async def post_faults(self, request: web.Request) -> web.Response:
        body = await request.json()
        mode = str(body.get("mode", ""))
        if mode not in FAULT_MODES:
            return error(400, f"unknown fault mode {mode!r}; one of {FAULT_MODES}", "bad_fault")
        self.faults.append(
            {"mode": mode, "count": int(body.get("count", 1)), "retry_after": body.get("retry_after", 1)}
        )
        return web.json_response({"ok": True, "faults": self.faults})

    async def post_reset(self, request: web.Request) -> web.Response:
        self.faults.clear()
        self.sessions.clear()
        self.requests.clear()
        return web.json_response({"ok": True})

    async def get_requests(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.requests})

    async def get_sessions(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"sessions": [{"id": k, "key": v["key"], "queries": v["queries"]} for k, v in self.sessions.items()]}
        )

    def take_fault(self) -> dict | None:
        return take_fault(self.faults)

    # ---- API -----------------------------------------------------------

    def auth(self, request: web.Request) -> tuple[str, web.Response | None]:
        key = request.headers.get("apikey", "")
        if key not in self.keys:
            return key, error(401, "Unauthorized: invalid apikey", "unauthorized")
        return key, None

    async def received(self, request: web.Request, session: str | None) -> tuple[Any, dict, web.Response | None]:
        """The request's JSON body (None if it has none), its entry in the
        request log, and its answer if the key is refused."""
        key, err = self.auth(request)
        try:
            body = await request.json()
        except Exception:
            body = None
        entry = {"path": request.path, "key": key, "body": body, "session": session, "outcome": "pending"}
        self.requests.append(entry)
        if err:
            entry["outcome"] = "status 401"
        return body, entry, err

    async def create_session(self, request: web.Request) -> web.Response:
        body, entry, err = await self.received(request, None)
        if err:
            return err
        key = entry["key"]
        if not isinstance(body, dict) or not isinstance(body.get("externalUserId"), str):
            entry["outcome"] = "status 400"
            return error(400, "externalUserId is required", "bad_request")
        sid = uuid.uuid4().hex[:24]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.sessions[sid] = {"key": key, "external": body["externalUserId"], "queries": []}
        entry["session"] = sid
        entry["outcome"] = "status 201"
        return web.json_response(
            {
                "message": "Chat session created successfully",
                "data": {
                    "id": sid,
                    "companyId": "company-peer",
                    "externalUserId": body["externalUserId"],
                    "pluginIds": [],
                    "title": "",
                    "createdAt": now,
                    "updatedAt": now,
                },
            },
            status=201,
        )

    def answer_for(self, query: str, n: int) -> tuple[str, int | None]:
        """The answer and the size of its stream pieces (``None``: the
        peer's own split)."""
        scripted = scripted_answer(query)
        if scripted is not None:
            return scripted
        results = RESULT_RE.findall(query)
        if results:
            return f"ondemand reply #{n}: saw tool result: {results[-1].strip()}", None
        if '<function_call nonce="' in query and "use the tool" in query:
            tools = TOOL_LINE_RE.findall(query.split("Tools:", 1)[-1])
            name = tools[0] if tools else "unknown"
            nonce = instruction_nonce(query) or ""
            return (
                f'Calling it now. <function_call nonce="{nonce}"><tool>{name}</tool>'
                '<args>{"q": "troupe"}</args></function_call>'
            ), 7
        return f"ondemand reply #{n} to: {query}", None

    async def query(self, request: web.Request) -> web.StreamResponse:
        sid = request.match_info["sid"]
        body, entry, err = await self.received(request, sid)
        if err:
            return err
        key = entry["key"]
        fault = self.take_fault()
        mode = fault["mode"] if fault else None
        if mode == "401":
            entry["outcome"] = "status 401"
            return error(401, "Unauthorized: invalid apikey", "unauthorized")
        if mode == "429":
            entry["outcome"] = "status 429"
            return error(429, "Rate limit exceeded", "rate_limited", {"Retry-After": str(fault["retry_after"])})
        if mode == "500":
            entry["outcome"] = "status 500"
            return error(500, "Internal server error", "internal_error")
        session = self.sessions.get(sid)
        if session is None or session["key"] != key:
            entry["outcome"] = "status 404"
            return error(404, f"session {sid} not found", "session_not_found")
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            entry["outcome"] = "status 400"
            return error(400, "query is required", "bad_request")
        endpoint = body.get("endpointId")
        if endpoint not in self.endpoints:
            entry["outcome"] = "status 404"
            return error(404, f"endpoint {endpoint!r} not found", "endpoint_not_found")
        if not isinstance(body.get("pluginIds"), list):
            entry["outcome"] = "status 400"
            return error(400, "pluginIds must be a list", "bad_request")
        session["queries"].append(body["query"])
        n = len(session["queries"])
        answer, chunk = self.answer_for(body["query"], n)
        reasoning = f"pondering: {body['query']}" if "deepseek-r1" in endpoint else ""
        message_id = uuid.uuid4().hex[:24]
        if body.get("responseMode") == "sync":
            entry["outcome"] = "completed"
            data: dict[str, Any] = {
                "sessionId": sid,
                "messageId": message_id,
                "answer": answer,
                "metrics": {"inputTokens": len(body["query"].split()), "outputTokens": len(answer.split())},
                "status": "completed",
            }
            return web.json_response({"message": "Chat query submitted successfully", "data": data})
        if body.get("responseMode") != "stream":
            entry["outcome"] = "status 400"
            return error(400, "responseMode must be sync or stream", "bad_request")
        return await self.stream(request, entry, sid, message_id, answer, chunk, reasoning, mode)

    async def stream(
        self,
        request: web.Request,
        entry: dict,
        sid: str,
        message_id: str,
        answer: str,
        chunk: int | None,
        reasoning: str,
        mode: str | None,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def send(payload: str) -> None:
            await resp.write(f"data:{payload}\n\n".encode())
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)

        def event(event_type: str, text: str) -> str:
            return json.dumps(
                {"eventType": event_type, "sessionId": sid, "messageId": message_id, "answer": text, "status": "processing"}
            )

        for piece in WORD_RE.findall(reasoning):
            await send(event("reasoning", piece))
        # A tool block comes in small pieces, so it arrives split across events.
        parts = pieces(answer, chunk) if chunk is not None else WORD_RE.findall(answer)
        for step, piece in enumerate(parts):
            if mode == "drop" and step >= 3:
                entry["outcome"] = "dropped"
                if request.transport is not None:
                    request.transport.abort()
                return resp
            if mode == "error" and step >= 2:
                await send("[ERROR]: upstream model failed")
                await resp.write_eof()
                entry["outcome"] = "error"
                return resp
            await send(event("fulfillment", piece))
        await send(json.dumps({"eventType": "metricsLog", "publicMetrics": {"inputTokens": 5, "outputTokens": len(parts)}}))
        # Complete once [DONE] is out: a client may hang up right after it.
        entry["outcome"] = "completed"
        await resp.write(b"data:[DONE]\n\n")
        await resp.write_eof()
        return resp


async def on_not_found(request: web.Request) -> web.Response:
    return error(404, f"Cannot {request.method} {request.path}", "not_found")


def build_app(peer: Peer) -> web.Application:
    routes = [
        web.post("/chat/v1/sessions", peer.create_session),
        web.post("/chat/v1/sessions/{sid}/query", peer.query),
        web.get("/_peer/sessions", peer.get_sessions),
    ]
    return peer_app(peer, routes, on_not_found)


async def amain(args: argparse.Namespace) -> None:
    keys = split_list(args.keys)
    endpoints = split_list(args.endpoints)
    app = build_app(Peer(keys, endpoints, args.chunk_delay))
    await serve(app, args.host, args.port)


def main() -> None:
    ap = arguments(__doc__)
    ap.add_argument("--keys", default="od-key-1,od-key-2", help="comma-separated accepted API keys")
    ap.add_argument("--endpoints", default=",".join(DEFAULT_ENDPOINTS), help="comma-separated endpoint ids")
    ap.add_argument("--chunk-delay", type=float, default=0.002, help="seconds between stream events")
    run(amain, ap)


if __name__ == "__main__":
    main()
