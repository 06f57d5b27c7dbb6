"""What every test peer shares: reading comma lists from its arguments,
serving an aiohttp app on 127.0.0.1 and announcing the bound address on
stdout the way the gateway does (``listening on http://ADDR``), and the
scripted model every text-only peer answers with (:func:`scripted_answer`).

The scripted model
------------------

The text-only peers (langfast, langgraph, ondemand, lingma and the fake
CLIs) get the whole conversation as text: the gateway's tool instruction
(with this request's nonce) in the system prompt, earlier tool calls as
``<function_call nonce="N">`` blocks and tool results as
``<function_result call_id="ID"><tool>NAME</tool><result>TEXT</result>
</function_result>`` text. A user message can script the answer with
directive lines::

    troupe-say[CHUNK]: TEMPLATE
    troupe-after-result[CHUNK]: TEMPLATE

A directive may start anywhere in a line and runs to the end of it (the
one space after the colon is not part of TEMPLATE); ``[CHUNK]`` is
optional. The peer then answers exactly TEMPLATE, with

* ``\\n`` made a newline, ``\\t`` a tab and ``\\\\`` a backslash (so one
  line can script a multi-line answer, such as a fenced block);
* ``{NONCE}`` replaced by the nonce of the gateway's tool instruction (the
  nonce in its example block ``<function_call nonce="N"><tool>NAME</tool>
  <args>{"param": "value"}</args></function_call>``);
* ``{RESULT}`` replaced by the text of the last ``<result>...</result>`` in
  the prompt.

A placeholder with nothing to fill it (no instruction, no result) stays as
it is. The answer is streamed in pieces of CHUNK characters (``1``: every
character its own piece, which splits a call block at every position);
CHUNK missing or ``0`` sends the answer as one piece.

Which directive applies: the last one in the prompt, except that a
``troupe-after-result`` directive only applies once a ``<function_result call_id=``
follows it in the prompt; until then the last ``troupe-say`` before it
does. So one user message can script a whole tool round trip::

    troupe-say[0]: <function_call nonce="{NONCE}"><tool>search</tool><args>{"q": "x"}</args></function_call>
    troupe-after-result[0]: The tool said: {RESULT}

The first request gets the call; the second, which carries the call and its
result, gets ``The tool said: ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

if TYPE_CHECKING:  # aiohttp is imported where it is used: the fake CLIs
    from aiohttp import web  # import this module without it.

DIRECTIVE_RE = re.compile(r"troupe-(say|after-result)(?:\[(\d+)\])?: ?([^\r\n]*)")
INSTRUCTION_NONCE_RE = re.compile(
    r'<function_call nonce="([a-z2-9]{12})"><tool>NAME</tool><args>\{"param": "value"\}</args></function_call>'
)
RESULT_TEXT_RE = re.compile(r"<result>(.*?)</result>", re.S)
FUNCTION_RESULT = "<function_result call_id="
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def instruction_nonce(prompt: str) -> str | None:
    """The nonce of the gateway's tool instruction in `prompt`, if any."""
    found = INSTRUCTION_NONCE_RE.findall(prompt)
    return found[-1] if found else None


def _unescape(template: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), template)


def scripted_answer(prompt: str) -> tuple[str, int] | None:
    """The scripted model (see the module docs): ``(answer, chunk)`` when
    `prompt` holds a directive, else ``None``. `chunk` 0 means one piece."""
    found = list(DIRECTIVE_RE.finditer(prompt))
    if not found:
        return None
    chosen = None
    for m in reversed(found):
        if m.group(1) == "say":
            chosen = m
            break
        if FUNCTION_RESULT in prompt[m.end():]:
            chosen = m
            break
    if chosen is None:
        return None
    answer = _unescape(chosen.group(3))
    nonce = instruction_nonce(prompt)
    if nonce is not None:
        answer = answer.replace("{NONCE}", nonce)
    results = RESULT_TEXT_RE.findall(prompt)
    if results:
        answer = answer.replace("{RESULT}", results[-1])
    return answer, int(chosen.group(2) or 0)


def pieces(text: str, chunk: int) -> list[str]:
    """`text` in pieces of `chunk` characters (0: one piece); never empty."""
    if chunk <= 0 or not text:
        return [text]
    return [text[i : i + chunk] for i in range(0, len(text), chunk)]


def split_list(text: str) -> list[str]:
    """``"a, b,,c"`` → ``["a", "b", "c"]``."""
    return [part.strip() for part in text.split(",") if part.strip()]


async def serve(app: web.Application, host: str, port: int) -> None:
    """Serves `app` until the process is stopped; port 0 picks a free one."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None, handle_signals=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    sys.stdout.write(f"listening on http://{host}:{bound}\n")
    sys.stdout.flush()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def peer_app(peer, routes: list[web.RouteDef], on_not_found) -> web.Application:
    """An app serving a peer's protocol `routes`, the control routes every
    peer has (`/_peer/faults`, `/_peer/reset`, `/_peer/requests`), and
    `on_not_found` for anything else, in the protocol's own error shape."""
    from aiohttp import web

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.add_routes(routes)
    app.router.add_post("/_peer/faults", peer.post_faults)
    app.router.add_post("/_peer/reset", peer.post_reset)
    app.router.add_get("/_peer/requests", peer.get_requests)
    app.router.add_route("*", "/{tail:.*}", on_not_found)
    return app


def take_fault(faults: list[dict], key: str | None = None) -> dict | None:
    """Spends one use of the first fault in `faults` with uses left (with a
    `key`: one for any key or for that key); a used-up fault leaves the list."""
    for fault in faults:
        if fault["count"] > 0 and (key is None or fault.get("key") in (None, "") or fault.get("key") == key):
            fault["count"] -= 1
            if fault["count"] <= 0:
                faults.remove(fault)
            return fault
    return None


async def body_json(request: web.Request) -> Any:
    """The request body as JSON, or None when it is not JSON."""
    try:
        return json.loads(await request.read())
    except Exception:
        return None


async def recorded(entry: dict, handling: Awaitable[web.StreamResponse], keep_outcome: bool = True) -> web.StreamResponse:
    """Awaits `handling`, then records in `entry` its "end" time and, unless
    the handler set one, its "outcome" (``status N``). A client that went
    away is ``client_disconnected`` (with `keep_outcome`, only over the
    ``pending`` outcome): a cancelled handler is re-raised, a reset
    connection answers 499."""
    from aiohttp import web

    def gone() -> None:
        if not keep_outcome or entry["outcome"] == "pending":
            entry["outcome"] = "client_disconnected"
        entry["end"] = time.time()

    try:
        resp = await handling
    except asyncio.CancelledError:
        gone()
        raise
    except ConnectionResetError:
        gone()
        return web.Response(status=499)
    if entry["outcome"] == "pending":
        entry["outcome"] = f"status {resp.status}"
    entry["end"] = time.time()
    return resp


def arguments(doc: str | None) -> argparse.ArgumentParser:
    """A peer's argument parser (described by the first paragraph of its
    `doc`), with ``--host`` and ``--port``."""
    ap = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    return ap


def run(amain: Callable[[argparse.Namespace], Awaitable[None]], ap: argparse.ArgumentParser, quiet: tuple = (KeyboardInterrupt,)) -> None:
    """Runs `amain` with the parsed arguments until it ends or is interrupted."""
    args = ap.parse_args()
    try:
        asyncio.run(amain(args))
    except quiet:
        pass
