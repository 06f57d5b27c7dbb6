#!/usr/bin/env python3
"""A fake langfast upstream for black-box tests of troupe's ``socketio`` kind.

Run::

    python tests/peers/langfast_peer.py --port 0 --anon-key anon-test

Once bound it prints exactly one line ``listening on http://127.0.0.1:PORT``
to stdout. One aiohttp app serves, on the same port, what langfast's
backend serves:

* ``POST /auth/v1/signup`` (headers ``apikey: <anon key>`` and
  ``Authorization: Bearer <anon key>``, body ``{}``): an anonymous account,
  ``{access_token, token_type, expires_in, expires_at, refresh_token,
  user: {id, ...}}``.
* ``POST /auth/v1/token?grant_type=refresh_token`` ``{refresh_token}``: a new
  access token for the same user.
* ``POST /functions/v1/initiate-prompt-run`` (``apikey`` and
  ``Authorization: Bearer <access_token>``), body ``{run_id, prompt_id,
  prompt_meta: {model, messages, response_format: "text", stream: true},
  test_cases: [], created_by}``: answers ``{run_id, jobs: [{job_id}]}`` (or
  only ``{run_id}`` with the ``no_jobs`` fault, and then events use the run
  id), then emits the answer to every socket of that user.
* a real socket.io server (python-socketio, Engine.IO v4) at ``/socket.io/``.
  A CONNECT must carry ``auth = {token: <access token issued here>}``, else
  it is refused (``connect_error``).

Every run emits, on ``execution:chunk``, first an event for another
execution id (which a client must ignore), then ``{executionId, status:
"in_progress", finish_reason: null, content}`` where ``content`` is the
**whole text so far**, one more word per event, then the same with ``status:
"completed"`` and ``finish_reason: "stop"``. Every other run also emits
``completion_finished`` ``{executionId}``. The answer is
``"langfast reply to: " + <text of the last user message>``, unless the
messages hold a ``troupe-say`` directive: then it is the scripted answer
(``_common.scripted_answer`` over every message's text, in order), one
piece of the directive's size more per event.

Like the real service, sampling parameters are refused: a ``prompt_meta``
with ``temperature``, ``top_p``, ``max_tokens`` and the like gets 400
``Unsupported parameter: 'temperature'``.

Test control endpoints (no auth):

* ``POST /_peer/faults`` ``{"mode", "count"}``: the next ``count`` matching
  operations get a fault. Modes: ``signup_fail`` (sign-up answers 500),
  ``disconnect`` (a run sends two chunks, then the server disconnects the
  user's sockets), ``no_jobs`` (the initiate reply has no ``jobs``).
* ``POST /_peer/disconnect_all``: disconnects every socket now.
* ``POST /_peer/reset``: clears faults and the request log (accounts stay).
* ``GET /_peer/requests``: every HTTP request to the backend routes, oldest
  first: ``{path, apikey, bearer, body, status}``.
* ``GET /_peer/stats``: ``{signups, refreshes, runs, connects,
  refused_connects, open_sockets}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
import uuid
from typing import Any

import socketio
from aiohttp import web

try:  # imported as peers.<name> by tests, or run as a script
    from ._common import arguments, pieces, run, scripted_answer, serve
except ImportError:
    from _common import arguments, pieces, run, scripted_answer, serve

PREFIX = "langfast reply to: "
SAMPLING = ("temperature", "top_p", "top_k", "max_tokens", "frequency_penalty", "presence_penalty", "seed", "stop")
FAULT_MODES = ("signup_fail", "disconnect", "no_jobs")


def words(text: str) -> list[str]:
    """A word and the spaces after it per piece; the pieces join to ``text``."""
    return re.findall(r"\S+\s*|\s+", text)


async def read_json(request: web.Request) -> Any:
    try:
        return json.loads(await request.text() or "null")
    except json.JSONDecodeError:
        return None


class Peer:
    def __init__(self, anon_key: str, expires_in: int, chunk_delay: float) -> None:
        self.anon_key = anon_key
        self.expires_in = expires_in
        self.chunk_delay = chunk_delay
        self.tokens: dict[str, tuple[str, float]] = {}  # access token -> (user id, expires at)
        self.refresh_tokens: dict[str, str] = {}  # refresh token -> user id
        self.user_sids: dict[str, set[str]] = {}
        self.sid_user: dict[str, str] = {}
        self.faults: dict[str, int] = {}
        self.log: list[dict] = []
        self.stats = {"signups": 0, "refreshes": 0, "runs": 0, "connects": 0, "refused_connects": 0}
        self.run_counter = 0
        self.tasks: set[asyncio.Task] = set()
        self.sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*", logger=False, engineio_logger=False)
        self.sio.on("connect", self.on_connect)
        self.sio.on("disconnect", self.on_disconnect)

    # ---------------------------------------------------------------- helpers

    def take_fault(self, mode: str) -> bool:
        n = self.faults.get(mode, 0)
        if n <= 0:
            return False
        self.faults[mode] = n - 1
        return True

    def record(self, request: web.Request, body: Any, status: int) -> None:
        auth = request.headers.get("Authorization", "")
        self.log.append(
            {
                "path": request.path_qs,
                "apikey": request.headers.get("apikey"),
                "bearer": auth[7:] if auth.startswith("Bearer ") else None,
                "body": body,
                "status": status,
                "time": time.time(),
            }
        )

    def anon_ok(self, request: web.Request) -> bool:
        return request.headers.get("apikey") == self.anon_key

    def issue(self, user_id: str) -> dict:
        token = "lf-at-" + uuid.uuid4().hex
        refresh = "lf-rt-" + uuid.uuid4().hex
        expires_at = int(time.time()) + self.expires_in
        self.tokens[token] = (user_id, expires_at)
        self.refresh_tokens[refresh] = user_id
        return {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "expires_at": expires_at,
            "refresh_token": refresh,
            "user": {"id": user_id, "aud": "authenticated", "role": "authenticated", "is_anonymous": True},
        }

    def user_of(self, token: str | None) -> str | None:
        if not token:
            return None
        found = self.tokens.get(token)
        if found is None or found[1] < time.time():
            return None
        return found[0]

    # ---------------------------------------------------------------- socket.io

    async def on_connect(self, sid: str, environ: dict, auth: Any = None) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        user = self.user_of(token)
        if user is None:
            self.stats["refused_connects"] += 1
            raise socketio.exceptions.ConnectionRefusedError("invalid token")
        self.stats["connects"] += 1
        self.sid_user[sid] = user
        self.user_sids.setdefault(user, set()).add(sid)

    async def on_disconnect(self, sid: str, *args: Any) -> None:
        user = self.sid_user.pop(sid, None)
        if user is not None:
            sids = self.user_sids.get(user, set())
            sids.discard(sid)
            if not sids:
                self.user_sids.pop(user, None)

    async def emit_user(self, user: str, event: str, payload: dict) -> None:
        for sid in list(self.user_sids.get(user, ())):
            await self.sio.emit(event, payload, to=sid)

    async def disconnect_user(self, user: str) -> None:
        for sid in list(self.user_sids.get(user, ())):
            await self.sio.disconnect(sid)

    # ---------------------------------------------------------------- HTTP

    async def signup(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        auth = request.headers.get("Authorization", "")
        if not self.anon_ok(request) or auth != f"Bearer {self.anon_key}":
            self.record(request, body, 401)
            return web.json_response({"message": "Invalid API key"}, status=401)
        if self.take_fault("signup_fail"):
            self.record(request, body, 500)
            return web.json_response({"code": 500, "msg": "sign-up failed (injected)"}, status=500)
        self.stats["signups"] += 1
        self.record(request, body, 200)
        return web.json_response(self.issue(str(uuid.uuid4())))

    async def token(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        if not self.anon_ok(request) or request.query.get("grant_type") != "refresh_token":
            self.record(request, body, 400)
            return web.json_response({"error": "invalid_grant"}, status=400)
        user = self.refresh_tokens.pop((body or {}).get("refresh_token", ""), None)
        if user is None:
            self.record(request, body, 400)
            return web.json_response({"error": "invalid_grant", "error_description": "Invalid Refresh Token"}, status=400)
        self.stats["refreshes"] += 1
        self.record(request, body, 200)
        return web.json_response(self.issue(user))

    async def initiate(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            self.record(request, None, 400)
            return web.json_response({"error": "body must be JSON"}, status=400)
        auth = request.headers.get("Authorization", "")
        user = self.user_of(auth[7:] if auth.startswith("Bearer ") else None)
        if not self.anon_ok(request) or user is None:
            self.record(request, body, 401)
            return web.json_response({"error": "Invalid JWT"}, status=401)
        meta = body.get("prompt_meta") if isinstance(body, dict) else None
        problem = None
        if not isinstance(meta, dict):
            problem = "prompt_meta is required"
        else:
            for k in SAMPLING:
                if k in meta or k in body:
                    problem = f"Unsupported parameter: '{k}'"
                    break
            if problem is None and (
                not isinstance(meta.get("model"), str)
                or not isinstance(meta.get("messages"), list)
                or meta.get("response_format") != "text"
                or meta.get("stream") is not True
            ):
                problem = "prompt_meta needs model, messages, response_format 'text' and stream true"
        if problem is None and (
            not body.get("run_id") or not body.get("prompt_id") or body.get("test_cases") != []
        ):
            problem = "run_id, prompt_id and test_cases [] are required"
        if problem is None and body.get("created_by") != user:
            problem = "created_by must be the signed-in user"
        if problem is not None:
            self.record(request, body, 400)
            return web.json_response({"error": problem}, status=400)
        self.stats["runs"] += 1
        self.run_counter += 1
        run_id = body["run_id"]
        if self.take_fault("no_jobs"):
            exec_id, reply = run_id, {"run_id": run_id}
        else:
            exec_id = "job-" + uuid.uuid4().hex
            reply = {"run_id": run_id, "jobs": [{"job_id": exec_id, "status": "queued"}]}
        last_user = ""
        for m in meta["messages"]:
            if isinstance(m, dict) and m.get("role") == "user":
                last_user = m.get("content") if isinstance(m.get("content"), str) else ""
        prompt = "\n\n".join(
            m["content"] for m in meta["messages"] if isinstance(m, dict) and isinstance(m.get("content"), str)
        )
        scripted = scripted_answer(prompt)
        parts = pieces(*scripted) if scripted is not None else words(PREFIX + last_user)
        drop = self.take_fault("disconnect")
        finished_event = self.run_counter % 2 == 0
        self.record(request, body, 200)
        task = asyncio.create_task(self.run(user, exec_id, parts, drop, finished_event))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return web.json_response(reply)

    async def run(self, user: str, exec_id: str, parts: list[str], drop: bool, finished_event: bool) -> None:
        # Another run's event: a client must not mix it into this answer.
        await self.emit_user(
            user,
            "execution:chunk",
            {"executionId": "job-other-" + uuid.uuid4().hex, "status": "in_progress", "finish_reason": None, "content": "NOISE"},
        )
        content = ""
        for i, w in enumerate(parts):
            await asyncio.sleep(self.chunk_delay)
            content += w
            await self.emit_user(
                user,
                "execution:chunk",
                {"executionId": exec_id, "status": "in_progress", "finish_reason": None, "content": content},
            )
            if drop and i == 1:
                await asyncio.sleep(0.05)
                await self.disconnect_user(user)
                return
        await asyncio.sleep(self.chunk_delay)
        await self.emit_user(
            user,
            "execution:chunk",
            {"executionId": exec_id, "status": "completed", "finish_reason": "stop", "content": content},
        )
        if finished_event:
            await self.emit_user(user, "completion_finished", {"executionId": exec_id})

    # ---------------------------------------------------------------- control

    async def post_faults(self, request: web.Request) -> web.Response:
        body = await request.json()
        mode = body.get("mode")
        if mode not in FAULT_MODES:
            return web.json_response({"error": f"mode must be one of {FAULT_MODES}"}, status=400)
        self.faults[mode] = self.faults.get(mode, 0) + int(body.get("count", 1))
        return web.json_response({"faults": self.faults})

    async def post_disconnect_all(self, request: web.Request) -> web.Response:
        sids = list(self.sid_user)
        for sid in sids:
            await self.sio.disconnect(sid)
        return web.json_response({"disconnected": len(sids)})

    async def post_reset(self, request: web.Request) -> web.Response:
        self.faults.clear()
        self.log.clear()
        return web.json_response({"ok": True})

    async def get_requests(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.log})

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response({**self.stats, "open_sockets": len(self.sid_user)})


def build_app(peer: Peer) -> web.Application:
    app = web.Application()
    peer.sio.attach(app, socketio_path="socket.io")
    app.router.add_post("/auth/v1/signup", peer.signup)
    app.router.add_post("/auth/v1/token", peer.token)
    app.router.add_post("/functions/v1/initiate-prompt-run", peer.initiate)
    app.router.add_post("/_peer/faults", peer.post_faults)
    app.router.add_post("/_peer/disconnect_all", peer.post_disconnect_all)
    app.router.add_post("/_peer/reset", peer.post_reset)
    app.router.add_get("/_peer/requests", peer.get_requests)
    app.router.add_get("/_peer/stats", peer.get_stats)
    return app


async def amain(args: argparse.Namespace) -> None:
    peer = Peer(args.anon_key, args.expires_in, args.chunk_delay)
    app = build_app(peer)
    await serve(app, args.host, args.port)


def main() -> None:
    ap = arguments(__doc__)
    ap.add_argument("--anon-key", default="anon-test")
    ap.add_argument("--expires-in", type=int, default=3600, help="access token lifetime, seconds")
    ap.add_argument("--chunk-delay", type=float, default=0.02, help="seconds between chunk events")
    run(amain, ap)


if __name__ == "__main__":
    main()
