#!/usr/bin/env python3
"""A real LangGraph Agent Server for black-box tests of troupe's
``langgraph`` kind, behind a thin fault-injecting proxy.

Run::

    python tests/peers/langgraph_peer.py --port 0 --keys lg-key-1

It copies ``tests/peers/langgraph_app`` to a temporary directory (the
in-memory server writes its state next to the app), starts ``langgraph dev``
there on a free loopback port (no browser, no reload, telemetry and tracing
off), waits until it answers ``GET /ok``, and then prints exactly one line
``listening on http://127.0.0.1:PORT`` for the proxy. The app's graph
answers ``langgraph reply #N to: <last user text>`` where N counts the user
messages in the thread, streamed token by token by langchain-core's fake
chat model, so tests can tell a continued thread from a new one. Messages
with a ``troupe-say`` directive get the scripted answer of
``_common.scripted_answer`` (the graph loads ``_common.py`` from the path
in ``TROUPE_PEER_COMMON``, which this script sets for the server).

The proxy forwards everything to the server as it arrives (SSE included),
checks ``x-api-key`` when ``--keys`` is given (401 otherwise), and adds:

* ``POST /_peer/faults`` ``{"mode", "count"?, "retry_after"?}``: the next
  ``count`` run requests (``.../runs/stream``) get ``401``, ``429`` (with
  ``Retry-After``), ``500``, or ``drop`` (the run starts, three ``messages``
  events are relayed, then the connection is cut).
* ``POST /_peer/reset`` clears faults and the request log (threads stay:
  every test uses new ones).
* ``GET /_peer/requests``: every proxied request, oldest first:
  ``{"method", "path", "key", "body", "thread", "status", "outcome"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

try:  # imported as peers.<name> by tests, or run as a script
    from ._common import arguments, run, serve, take_fault
except ImportError:
    from _common import arguments, run, serve, take_fault

APP_DIR = Path(__file__).resolve().parent / "langgraph_app"
FAULT_MODES = ("401", "429", "500", "drop")
START_TIMEOUT = 60.0
THREAD_RE = re.compile(r"^/threads/([^/]+)")
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def error(status: int, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"detail": message}, status=status, headers=headers)


class Proxy:
    def __init__(self, upstream: str, keys: list[str]):
        self.upstream = upstream
        self.keys = keys
        self.faults: list[dict] = []
        self.requests: list[dict] = []
        self.session: aiohttp.ClientSession | None = None

    async def post_faults(self, request: web.Request) -> web.Response:
        body = await request.json()
        mode = str(body.get("mode", ""))
        if mode not in FAULT_MODES:
            return error(400, f"unknown fault mode {mode!r}; one of {FAULT_MODES}")
        self.faults.append({"mode": mode, "count": int(body.get("count", 1)), "retry_after": body.get("retry_after", 1)})
        return web.json_response({"ok": True, "faults": self.faults})

    async def post_reset(self, request: web.Request) -> web.Response:
        self.faults.clear()
        self.requests.clear()
        return web.json_response({"ok": True})

    async def get_requests(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.requests})

    def take_fault(self) -> dict | None:
        return take_fault(self.faults)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        key = request.headers.get("x-api-key")
        m = THREAD_RE.match(request.path)
        entry = {
            "method": request.method,
            "path": request.path,
            "key": key,
            "body": body,
            "thread": m.group(1) if m else None,
            "status": None,
            "outcome": "pending",
            "time": time.time(),
        }
        self.requests.append(entry)
        if self.keys and key not in self.keys:
            entry["status"], entry["outcome"] = 401, "status 401"
            return error(401, "Invalid API key")
        fault = self.take_fault() if request.path.endswith("/runs/stream") else None
        mode = fault["mode"] if fault else None
        if mode in ("401", "429", "500"):
            status = int(mode)
            entry["status"], entry["outcome"] = status, f"status {status}"
            headers = {"Retry-After": str(fault["retry_after"])} if mode == "429" else None
            return error(status, f"injected {mode}", headers)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        assert self.session is not None
        async with self.session.request(
            request.method, self.upstream + request.path_qs, data=raw or None, headers=headers
        ) as up:
            entry["status"] = up.status
            out_headers = {k: v for k, v in up.headers.items() if k.lower() not in HOP_HEADERS}
            resp = web.StreamResponse(status=up.status, headers=out_headers)
            await resp.prepare(request)
            messages = 0
            # Line by line, so a drop can cut the stream between events.
            while True:
                line = await up.content.readline()
                if not line:
                    break
                if mode == "drop" and line.startswith(b"event: messages"):
                    messages += 1
                    if messages > 3:
                        entry["outcome"] = "dropped"
                        if request.transport is not None:
                            request.transport.abort()
                        return resp
                await resp.write(line)
            entry["outcome"] = "completed"
            await resp.write_eof()
            return resp


async def wait_ok(url: str, child: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if child.returncode is not None:
                raise RuntimeError(f"langgraph dev exited with {child.returncode}")
            try:
                async with s.get(url + "/ok", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"langgraph dev did not answer /ok within {START_TIMEOUT:.0f}s")


def stop_child(child: asyncio.subprocess.Process | None) -> None:
    if child is None or child.returncode is not None:
        return
    try:
        os.killpg(child.pid, signal.SIGTERM)
    except ProcessLookupError:
        return


def interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


async def amain(args: argparse.Namespace) -> None:
    # Until the proxy takes over signal handling, a SIGTERM still runs the
    # cleanup below, so the server is never left behind.
    signal.signal(signal.SIGTERM, interrupted)
    workdir = Path(tempfile.mkdtemp(prefix="troupe-langgraph-"))
    app_dir = workdir / "app"
    shutil.copytree(APP_DIR, app_dir, ignore=shutil.ignore_patterns(".langgraph_api", "__pycache__"))
    port = free_port()
    env = dict(os.environ)
    env.update(
        LANGGRAPH_CLI_NO_ANALYTICS="1",
        LANGSMITH_TRACING="false",
        LANGCHAIN_TRACING_V2="false",
        LANGSMITH_API_KEY="",
        PYTHONDONTWRITEBYTECODE="1",
        # The graph answers scripted prompts with the peers' shared model.
        TROUPE_PEER_COMMON=str(Path(__file__).resolve().parent / "_common.py"),
    )
    exe = Path(sys.executable).parent / "langgraph"
    log = open(workdir / "langgraph-dev.log", "wb")
    child = await asyncio.create_subprocess_exec(
        str(exe), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1", "--port", str(port),
        cwd=str(app_dir), env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
        start_new_session=True,
    )
    try:
        upstream = f"http://127.0.0.1:{port}"
        await wait_ok(upstream, child)
        proxy = Proxy(upstream, [k for k in args.keys.split(",") if k])
        proxy.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/_peer/faults", proxy.post_faults)
        app.router.add_post("/_peer/reset", proxy.post_reset)
        app.router.add_get("/_peer/requests", proxy.get_requests)
        app.router.add_route("*", "/{tail:.*}", proxy.forward)
        await serve(app, args.host, args.port)
    finally:
        stop_child(child)
        try:
            await asyncio.wait_for(child.wait(), timeout=5)
        except asyncio.TimeoutError:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    ap = arguments(__doc__)
    ap.add_argument("--keys", default="", help="comma-separated x-api-key values accepted (empty: no auth)")
    run(amain, ap, quiet=(KeyboardInterrupt, web.GracefulExit))


if __name__ == "__main__":
    main()
