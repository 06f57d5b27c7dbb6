"""SIGTERM stops a gateway cleanly with pools of every upstream kind.

One gateway serves one pool (or two) of each kind: demo, openai, anthropic,
socketio (the langfast peer), langgraph, ondemand, cli (the claude, codex
and gemini presets on the fake CLIs, and a custom command) and lingma with
two agent sessions. Every pool answers at least one request, and both lingma
sessions serve a turn (stopping with more than one used lingma session used
to abort: a connection's ``Drop`` spawned a task after the runtime was
gone). Then SIGTERM: the gateway must exit with status 0, log no panic, no
abort and no ERROR line, and leave no child process behind.

The pool configurations are the ones the kind's own test module uses (their
``[server]`` sections cut off), so this test follows them when they change.

A client still holding an idle keep-alive connection when the gateway is
told to stop is the ordinary case (every HTTP client pools its
connections), so the test keeps exactly one open across the SIGTERM.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import anthropic
import httpx
import pytest

import support
import test_anthropic_sdk as anth
import test_cli as cli
import test_langfast as langfast
import test_langgraph as langgraph
import test_lingma as lingma
import test_ondemand as ondemand
from support import DEMO_PREFIX, GATEWAY_KEY, PEER_PREFIX, Gateway, Proc

STOP_TIMEOUT = 30.0
CUSTOM_MODEL = "custom-echo"  # "echo" is an ondemand model here
LINGMA_POOL = "lingma"
LINGMA_MODEL = "lingma-chat"
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
ERROR_LINE_RE = re.compile(r"^\S+\s+ERROR\s")
FATAL_MARKERS = (
    "panicked",
    "there is no reactor running",
    "SIGABRT",
    "Aborted",
    "aborting",
    "core dumped",
    "fatal runtime error",
)


def pools_of(config_text: str) -> str:
    """The ``[[pools]]`` part of a module's whole configuration."""
    i = config_text.index("[[pools]]")
    return config_text[i:].rstrip() + "\n\n"


def start_peers() -> dict[str, Proc]:
    """Every fake upstream, started at once (each start waits for its
    ``listening on`` line)."""
    starters: dict[str, Callable[[], Proc]] = {
        "openai": support.start_peer,
        "anthropic": lambda: support.start_anthropic_peer(anth.A_KEYS),
        "langfast": langfast.start_peer,
        "langgraph": langgraph.start_peer,
        "ondemand": ondemand.start_peer,
    }
    peers: dict[str, Proc] = {}
    errors: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(len(starters)) as ex:
        futures = {name: ex.submit(fn) for name, fn in starters.items()}
        for name, fut in futures.items():
            try:
                peers[name] = fut.result(timeout=120)
            except Exception as e:  # StartError, or anything else
                errors.append(f"{name}: {e}")
    if errors:
        for p in peers.values():
            p.cleanup()
        pytest.fail("a peer did not start:\n" + "\n".join(errors), pytrace=False)
    return peers


def config(tmp: Path, peers: dict[str, Proc], cli_state: Path) -> str:
    text = lingma.server_text(tmp)  # api key, admin key, data_dir = tmp/data
    # demo, openai ("openai-peer") and anthropic ("anthropic-peer")
    text += "\n" + pools_of(anth.config_text(tmp, peers["openai"].url, peers["anthropic"].url))
    text += pools_of(langfast.config(tmp, peers["langfast"].url))
    text += pools_of(langgraph.config_text(tmp, peers["langgraph"].url))  # "langgraph", "langgraph-local"
    text += pools_of(ondemand.config_text(tmp, peers["ondemand"].url))  # "ondemand", "ondemand-sync"
    for preset in cli.PRESETS:
        text += cli.cli_pool(f"cli-{preset}", preset, [preset], cli_state) + "\n"
    text += cli.cli_pool(
        "cli-custom",
        "custom",
        [CUSTOM_MODEL],
        cli_state,
        extra='command = ["/bin/sh", "-c", "echo \\"custom[$1]: $2\\"", "sh", "{model}", "{prompt}"]\n',
    )
    text += "\n" + lingma.pool_text(LINGMA_POOL, [LINGMA_MODEL], sessions=2, bundle_b64=lingma.good_bundle())
    return text


# --------------------------------------------------------------------------
# processes


def ppid_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[-1].split()[1])


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        ppid = ppid_of(pid)
        if ppid is not None:
            children.setdefault(ppid, []).append(pid)
    out: set[int] = set()
    todo = [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def mentioning(needle: str) -> set[int]:
    """Live processes whose command line or environment holds ``needle``
    (the test's temporary directory: every agent and CLI the gateway starts
    gets a path under it), this test process excepted."""
    found: set[int] = set()
    raw = needle.encode()
    for pid in all_pids():
        if pid == os.getpid():
            continue
        for part in ("cmdline", "environ"):
            try:
                data = Path(f"/proc/{pid}/{part}").read_bytes()
            except OSError:
                continue
            if raw in data and cli.alive(pid):
                found.add(pid)
                break
    return found


def describe(pids: set[int]) -> str:
    out = []
    for pid in sorted(pids):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmd = "?"
        out.append(f"{pid}: {cmd[:200]}")
    return "; ".join(out)


# --------------------------------------------------------------------------
# requests


def lingma_asks_per_session(gw: Gateway) -> list[list[dict]]:
    """The answered turns of each lingma agent session (one work directory
    each), from the agent's own log."""
    out = []
    for d in lingma.work_dirs(gw, LINGMA_POOL):
        f = d / "asks.jsonl"
        entries = [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.is_file() else []
        out.append([e for e in entries if e.get("answered") is True])
    return out


def serve_every_pool(gw: Gateway) -> None:
    oc = support.make_client(gw.v1, timeout=30)
    ac = anthropic.Anthropic(base_url=gw.url, api_key=GATEWAY_KEY, max_retries=0, timeout=30)
    try:
        def openai_text(model: str, text: str, stream: bool = False) -> str:
            msgs = [{"role": "user", "content": text}]
            if stream:
                return support.collect_sdk_stream(oc.chat.completions.create(model=model, messages=msgs, stream=True))["text"]
            return oc.chat.completions.create(model=model, messages=msgs).choices[0].message.content or ""

        # The SDKs raise on any status but 200, so every answer below was a 200.
        checks: list[tuple[str, Callable[[], str], Callable[[str], bool]]] = [
            ("demo", lambda: openai_text("demo", "shutdown demo"), lambda t: t == DEMO_PREFIX + "shutdown demo"),
            ("openai", lambda: openai_text("gpt-4o-mini", "shutdown openai", stream=True), lambda t: t == PEER_PREFIX + "shutdown openai"),
            (
                "anthropic",
                lambda: anth.text_of(ac.messages.create(model="claude-peer", max_tokens=100, messages=[{"role": "user", "content": "shutdown anthropic"}]).content),
                lambda t: t == anth.A_PREFIX + "shutdown anthropic",
            ),
            ("socketio", lambda: openai_text(langfast.MODEL, "shutdown langfast", stream=True), lambda t: t == langfast.PREFIX + "shutdown langfast"),
            ("langgraph", lambda: openai_text("agent-model", "shutdown langgraph"), lambda t: t == "langgraph reply #1 to: shutdown langgraph"),
            ("langgraph-local", lambda: openai_text("local-agent", "shutdown local", stream=True), lambda t: t == "langgraph reply #1 to: shutdown local"),
            ("ondemand", lambda: openai_text("gpt-4o", "shutdown ondemand", stream=True), lambda t: t == "ondemand reply #1 to: shutdown ondemand"),
            ("ondemand-sync", lambda: openai_text("od-sync", "shutdown sync"), lambda t: t == "ondemand reply #1 to: shutdown sync"),
            ("cli-custom", lambda: openai_text(CUSTOM_MODEL, "shutdown custom"), lambda t: t == f"custom[{CUSTOM_MODEL}]: shutdown custom\n"),
        ]
        for preset in cli.PRESETS:
            checks.append(
                (
                    f"cli-{preset}",
                    (lambda p: lambda: openai_text(p, f"shutdown {p}", stream=p == "codex"))(preset),
                    (lambda p: lambda t: t.startswith(f"Hello from fake {p}. turn=1 session=") and t.endswith(f"You said: shutdown {p}"))(preset),
                )
            )
        for name, ask, ok in checks:
            text = ask()
            assert ok(text), f"{name}: unexpected answer {text!r}"

        # lingma: rounds of two concurrent new conversations (one streamed),
        # until each of the two agent sessions has answered a turn.
        n = 0
        deadline = time.monotonic() + 20
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            while True:
                prompts = [f"shutdown lingma {n + i}" for i in range(2)]
                futs = [ex.submit(openai_text, LINGMA_MODEL, p, i % 2 == 1) for i, p in enumerate(prompts)]
                for p, f in zip(prompts, futs):
                    text = f.result(timeout=30)
                    assert text == f"lingma reply #1 (isReply=false) to: {p}", text
                n += len(prompts)
                per_session = lingma_asks_per_session(gw)
                if len(per_session) == 2 and all(per_session):
                    break
                assert time.monotonic() < deadline, (
                    f"after {n} lingma requests not both agent sessions served: "
                    f"{[len(s) for s in per_session]} answered turns per work directory"
                )
        assert len({a["sessionId"] for s in per_session for a in s}) >= 2
    finally:
        oc.close()
        ac.close()


# --------------------------------------------------------------------------


def test_sigterm_stops_every_kind_of_pool_cleanly(tmp_path):
    cli_state = tmp_path / "cli-state"
    gw_dir = tmp_path / "gw"
    peers = start_peers()
    gw: Gateway | None = None
    idle: httpx.Client | None = None
    try:
        gw = support.started(lambda: support.start_gateway(gw_dir, config(gw_dir, peers, cli_state)))
        expected_pools = {
            "demo", "openai-peer", "anthropic-peer", "langfast", "langgraph", "langgraph-local",
            "ondemand", "ondemand-sync", "cli-claude", "cli-codex", "cli-gemini", "cli-custom", LINGMA_POOL,
        }  # fmt: skip

        def all_ready():
            s = lingma.sessions(gw)
            pools = {x["pool"] for x in s}
            lingmas = [x for x in s if x["pool"] == LINGMA_POOL]
            return pools == expected_pools and len(lingmas) == 2 and all(x["state"] == "ready" for x in s)

        lingma.wait_for("every session ready", all_ready, timeout=30)

        serve_every_pool(gw)

        agent_pids = set(lingma.agent_pids(gw, LINGMA_POOL))
        assert len(agent_pids) == 2 and all(lingma.pid_alive(p) for p in agent_pids), agent_pids
        children = descendants(gw.popen.pid)
        assert agent_pids <= children, (agent_pids, describe(children))
        # The catch-all below sees the agents by the test's path.
        assert agent_pids <= mentioning(str(tmp_path)), describe(children)

        # A client with an idle keep-alive connection, as clients have.
        idle = gw.http(timeout=5)
        assert idle.get("/healthz").status_code == 200

        t0 = time.monotonic()
        gw.popen.send_signal(signal.SIGTERM)
        try:
            code = gw.popen.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            code = None
        elapsed = time.monotonic() - t0
        time.sleep(0.2)  # the stdout reader takes the last lines

        log = ANSI_RE.sub("", gw.stderr_text(limit=1 << 30) + "\n" + "\n".join(gw.stdout_lines))
        after = log.split("stopping: no new connections", 1)
        problems: list[str] = []
        if code is None:
            problems.append(f"the gateway did not exit within {STOP_TIMEOUT:.0f}s of SIGTERM")
        elif code != 0:
            problems.append(f"exit status {code}" + (f" (signal {signal.Signals(-code).name})" if code < 0 else ""))
        if len(after) != 2:
            problems.append("no 'stopping: no new connections' line: SIGTERM was not handled")
        for marker in FATAL_MARKERS:
            if marker in log:
                i = log.index(marker)
                problems.append(f"{marker!r} in the log: ...{log[max(0, i - 600) : i + 600]}...")
        errors = [line for line in log.splitlines() if ERROR_LINE_RE.match(line)]
        if errors:
            problems.append("ERROR lines:\n  " + "\n  ".join(errors[:20]))

        # No child outlives the gateway: the agents and CLIs seen before,
        # agents written down since, and anything started with a path of
        # this test in its command line or environment.
        def leftovers() -> set[int]:
            seen = children | agent_pids | set(lingma.agent_pids(gw, LINGMA_POOL))
            pid_dir = cli_state / "pids"
            if pid_dir.is_dir():
                seen |= {int(p) for p in os.listdir(pid_dir)}
            return {p for p in seen if cli.alive(p)} | mentioning(str(tmp_path))

        if code is not None:
            deadline = time.monotonic() + 5
            while leftovers() and time.monotonic() < deadline:
                time.sleep(0.1)
            left = leftovers()
            if left:
                problems.append(f"processes outlived the gateway: {describe(left)}")

        tail = after[1] if len(after) == 2 else log
        if len(tail) > 8000:
            tail = tail[:3000] + "\n[...]\n" + tail[-5000:]
        assert not problems, (
            f"stopping took {elapsed:.1f}s; problems:\n- " + "\n- ".join(problems) + "\n\nlog after SIGTERM:\n" + tail
        )
    finally:
        if idle is not None:
            idle.close()
        if gw is not None:
            gw.cleanup()
        for p in peers.values():
            p.cleanup()
        # Never leave a stray agent or CLI behind, whatever failed above.
        for pid in mentioning(str(tmp_path)):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
