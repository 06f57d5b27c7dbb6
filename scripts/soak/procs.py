"""The processes of a soak run: the two fake upstreams from tests/peers and
one gateway, all on 127.0.0.1, each announcing `listening on http://ADDR`
on stdout once bound; the gateway's configuration; what /proc says about the
gateway.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PEERS = REPO / "tests" / "peers"
LISTENING_RE = re.compile(rb"listening on http://(\S+)")
START_TIMEOUT = 30.0


class SetupError(RuntimeError):
    """The soak could not start (not a finding about the gateway)."""


class Proc:
    """A child process that prints `listening on http://ADDR` once ready.

    stderr goes to a file (the gateway's is searched for panics at the end);
    stdout is drained so the child never blocks on a full pipe.
    """

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None):
        self.name, self.argv, self.log, self.env = name, argv, log, env
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.port = 0
        self._drain: asyncio.Task | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, argv: list[str] | None = None) -> None:
        argv = argv or self.argv
        env = {k: v for k, v in os.environ.items() if not k.startswith("TROUPE__")}
        env.update(NO_COLOR="1", **(self.env or {}))
        with open(self.log, "ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=err, env=env, cwd=REPO
            )
        assert self.proc.stdout is not None
        try:
            addr = await asyncio.wait_for(self._wait_listening(), START_TIMEOUT)
        except asyncio.TimeoutError:
            await self.stop()
            raise SetupError(f"{self.name} did not say 'listening on' within {START_TIMEOUT:.0f}s; see {self.log}")
        if addr is None:
            await self.stop()
            raise SetupError(f"{self.name} exited before listening; see {self.log}:\n{tail(self.log)}")
        self.url = f"http://{addr}"
        self.port = int(addr.rsplit(":", 1)[1])
        self._drain = asyncio.create_task(self._drain_stdout())

    async def _wait_listening(self) -> str | None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            m = LISTENING_RE.search(line)
            if m:
                return m.group(1).decode().rstrip("/")
        return None

    async def _drain_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for _ in self.proc.stdout:
            pass

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(self.proc.wait(), grace)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
            except ProcessLookupError:
                pass
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None


class Peer(Proc):
    """A fake upstream from tests/peers, started with the flags the tests use."""

    def __init__(self, name: str, script: str, keys: list[str], log: Path, extra: list[str] | None = None):
        self.script = PEERS / script
        self.keys = keys
        self.extra = extra or []
        super().__init__(name, self.argv_for(0), log)

    def argv_for(self, port: int) -> list[str]:
        return [sys.executable, str(self.script), "--port", str(port), "--keys", ",".join(self.keys), *self.extra]

    async def restart_same_port(self, attempts: int = 20) -> None:
        """Back on the port it had, after an outage: the gateway's pool still
        points there. The port was just freed, so another process taking it
        in between is unlikely but possible; retry briefly."""
        port = self.port
        for _ in range(attempts):
            try:
                await self.start(self.argv_for(port))
                return
            except SetupError:
                await asyncio.sleep(0.25)
        raise SetupError(f"{self.name} could not bind 127.0.0.1:{port} again")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------
# the gateway's configuration


@dataclass(frozen=True)
class Timings:
    """The gateway timings the fault episodes are sized against."""

    first_token_timeout: float = 2.0
    request_timeout: float = 60.0
    queue_timeout: float = 10.0


OPENAI_ACCOUNTS = ["o1", "o2", "o3"]
ANTHROPIC_ACCOUNTS = ["a1", "a2"]


def toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml(x) for x in v) + "]"
    return json.dumps(str(v))  # JSON escapes are valid TOML basic-string escapes


def gateway_config(
    *,
    data_dir: Path,
    api_key: str,
    admin_key: str,
    openai_url: str,
    openai_keys: dict[str, str],
    anthropic_url: str,
    anthropic_keys: dict[str, str],
    timings: Timings,
) -> str:
    server = {
        "listen": "127.0.0.1:0",
        "api_keys": [api_key],
        "admin_key": admin_key,
        "data_dir": str(data_dir),
        "first_token_timeout": f"{timings.first_token_timeout:g}s",
        "request_timeout": f"{timings.request_timeout:g}s",
        "queue_timeout": f"{timings.queue_timeout:g}s",
        # Slow streams get pings within the run, so the client's parser sees them.
        "keepalive": "1s",
        "drain_timeout": "2s",
        # Never rotate during a soak: the restart log is read as one file.
        "restart_log_max_bytes": "1GiB",
    }
    # Short timings, as in tests/test_chaos.py, so sessions restart, cool
    # down and come back many times within a run.
    supervisor = {
        "backoff_initial": "50ms",
        "backoff_max": "1s",
        "backoff_multiplier": 2.0,
        "max_restarts": 1000,
        "restart_window": "60s",
        "retry_budget": 2,
        "cooldown_initial": "200ms",
        "cooldown_max": "2s",
        "circuit_threshold": 3,
    }
    out = ["[server]"] + [f"{k} = {toml(v)}" for k, v in server.items()]
    out += ["", "[supervisor]"] + [f"{k} = {toml(v)}" for k, v in supervisor.items()]
    out += [
        "",
        "[[pools]]",
        'name = "openai"',
        'kind = "openai"',
        f"base_url = {toml(openai_url + '/v1')}",
        'models = ["gpt-4o-mini"]',
        "max_concurrency = 4",
    ]
    for name, key in openai_keys.items():
        out += ["  [[pools.accounts]]", f"  name = {toml(name)}", f"  api_key = {toml(key)}"]
    out += [
        "",
        "[[pools]]",
        'name = "anthropic"',
        'kind = "anthropic"',
        f"base_url = {toml(anthropic_url)}",  # the SDK's convention: no /v1
        'models = ["claude-peer"]',
        "max_concurrency = 4",
    ]
    for name, key in anthropic_keys.items():
        out += ["  [[pools.accounts]]", f"  name = {toml(name)}", f"  api_key = {toml(key)}"]
    out += [
        "",
        "[[pools]]",
        'name = "demo"',
        'kind = "demo"',
        'models = ["demo"]',
        "sessions = 2",
        "max_concurrency = 8",
        'chunk_delay = "5ms"',
    ]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------
# /proc


@dataclass(frozen=True)
class ProcStats:
    rss_kib: int
    threads: int
    fds: int


def proc_stats(pid: int) -> ProcStats | None:
    """VmRSS, Threads and the number of open fds of `pid`; None once gone."""
    try:
        fields = {}
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                fields[key] = value.split()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return ProcStats(rss_kib=int(fields["VmRSS"][0]), threads=int(fields["Threads"][0]), fds=fds)
    except (OSError, KeyError, IndexError, ValueError):
        return None
