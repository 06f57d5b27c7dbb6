"""The soak driver behind scripts/soak.sh: starts the peers and a gateway,
drives mixed load while fault episodes come and go, checks every answer,
and prints figures every interval and a summary at the end.

It never judges the run: the figures are for a person to read. It exits
non-zero only when it could not set up (or was interrupted twice).

    .venv/bin/python scripts/soak/driver.py --duration 600 --bin target/debug/troupe
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

import answers
from answers import CUT, DUPLICATED, ERROR, FRONTENDS, OK, WRONG, Answer, Target
from chaos import Chaos, Window, Windows
from procs import (
    ANTHROPIC_ACCOUNTS,
    OPENAI_ACCOUNTS,
    Peer,
    Proc,
    ProcStats,
    SetupError,
    Timings,
    gateway_config,
    proc_stats,
)

TARGETS = (
    Target("openai", "gpt-4o-mini", "peer reply to: "),
    Target("anthropic", "claude-peer", "anthropic peer reply to: ", fault_texts=(answers.ANTHROPIC_FAULT_TEXT,)),
    Target("demo", "demo", "This is the troupe demo model. You said: "),
)
# Outcomes as counted and printed, in this order.
OUTCOMES = ("ok", "clean_error", "lost", DUPLICATED, CUT, WRONG)
EXAMPLES_KEPT = 8  # per outcome, for the summary
MESSAGES_KEPT = 200  # distinct error messages counted
FLAT_TOLERANCE = 0.20  # memory is "flat" when the end is within this of the first interval
# Restart-log events that stand for a session being restarted or given up on.
RESTART_EVENTS = ("restart", "give_up", "respawn")

# Loopback traffic never goes through a proxy from the environment.
os.environ["NO_PROXY"] = ",".join(x for x in (os.environ.get("NO_PROXY", ""), "127.0.0.1", "localhost") if x)


def say(line: str = "") -> None:
    print(line, flush=True)


def note(line: str) -> None:
    say(f"  ! {line}")


def hms(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


# --------------------------------------------------------------------------
# figures


@dataclass
class Tally:
    """Outcomes of every request, and a few examples of the bad ones."""

    windows: Windows
    t_start: float
    counts: Counter = field(default_factory=Counter)
    by_route: dict[str, Counter] = field(default_factory=dict)
    error_kinds: Counter = field(default_factory=Counter)
    error_messages: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, ans: Answer) -> str:
        fault, benign = self.windows.during(ans.pool, ans.t0, ans.t1)
        outcome = ans.verdict
        if outcome == OK:
            outcome = "ok"
        elif outcome == ERROR:
            outcome = "clean_error" if fault else "lost"
            self.error_kinds[f"{ans.pool}: {ans.error_kind}"] += 1
            message = ans.error_message[:90]
            # Bounded over hours, should messages carry changing details.
            if message in self.error_messages or len(self.error_messages) < MESSAGES_KEPT:
                self.error_messages[message] += 1
            else:
                self.error_messages["(other messages)"] += 1
        self.counts[outcome] += 1
        route = f"{ans.frontend:<8} {ans.pool:<9} {'stream' if ans.stream else 'json':<6}"
        self.by_route.setdefault(route, Counter())[outcome] += 1
        if outcome not in ("ok", "clean_error"):
            kept = self.examples.setdefault(outcome, [])
            if len(kept) < EXAMPLES_KEPT:
                kept.append(self.describe(ans, fault, benign))
        return outcome

    def describe(self, ans: Answer, fault: Window | None, benign: Window | None) -> str:
        what = f"#{ans.i} {ans.frontend} {ans.pool} {'stream' if ans.stream else 'json'}"
        when = f"{ans.t0 - self.t_start:.1f}s-{ans.t1 - self.t_start:.1f}s"
        context = []
        if fault:
            context.append(f"during fault '{fault.label}'")
        if benign:
            context.append(f"during benign '{benign.label}'")
        if not fault and not benign:
            context.append("no fault active")
        return f"{what} at {when}, status {ans.status}, {'; '.join(context)}: {ans.detail}"

    def total(self) -> int:
        return sum(self.counts.values())

    def line(self) -> str:
        return " ".join(f"{o} {self.counts.get(o, 0)}" for o in OUTCOMES)


class RestartLogTail:
    """Reads `data_dir/restarts.jsonl` as it grows (never rotated in a soak:
    the config sets a large rotation size)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.partial = b""
        self.lines = 0
        self.kinds: Counter = Counter()
        self.without_reason: Counter = Counter()  # by event kind
        self.without_reason_examples: list[dict] = []
        self.unparseable = 0

    def read(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        *complete, self.partial = (self.partial + data).split(b"\n")
        for raw in complete:
            if not raw.strip():
                continue
            self.lines += 1
            try:
                ev = json.loads(raw)
            except ValueError:
                self.unparseable += 1
                continue
            self.kinds[ev.get("event", "?")] += 1
            if not str(ev.get("reason") or "").strip():
                self.without_reason[ev.get("event", "?")] += 1
                if len(self.without_reason_examples) < 5:
                    self.without_reason_examples.append(ev)

    @property
    def restarts(self) -> int:
        return self.kinds.get("restart", 0)


@dataclass
class Samples:
    """Gateway resource readings: at start, after the first interval, peak, last."""

    start: ProcStats | None = None
    first: ProcStats | None = None
    last: ProcStats | None = None
    peak_rss: int = 0
    peak_fds: int = 0
    peak_threads: int = 0

    def take(self, s: ProcStats) -> None:
        self.last = s
        self.peak_rss = max(self.peak_rss, s.rss_kib)
        self.peak_fds = max(self.peak_fds, s.fds)
        self.peak_threads = max(self.peak_threads, s.threads)


# --------------------------------------------------------------------------
# the run


class Soak:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        # soak.sh makes (and removes) the work dir, so that it goes even if
        # this process is killed; run alone, the driver makes its own.
        self.tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="troupe-soak-"))
        self.data_dir = self.tmp / "data"
        token = secrets.token_hex(8)
        self.api_key = f"sk-soak-{token}"
        self.admin_key = f"adm-soak-{token}"
        self.openai_keys = {n: f"sk-peer-{n}-{token}" for n in OPENAI_ACCOUNTS}
        self.anthropic_keys = {n: f"ak-peer-{n}-{token}" for n in ANTHROPIC_ACCOUNTS}
        self.timings = Timings(first_token_timeout=3.0)
        self.openai_peer = Peer(
            "openai-peer",
            "openai_peer.py",
            list(self.openai_keys.values()),
            self.tmp / "openai-peer.log",
            extra=["--seed", str(args.seed)],
        )
        self.anthropic_peer = Peer(
            "anthropic-peer", "anthropic_peer.py", list(self.anthropic_keys.values()), self.tmp / "anthropic-peer.log"
        )
        self.gateway: Proc | None = None
        self.stop = asyncio.Event()
        self.windows = Windows()
        self.samples = Samples()
        self.restart_log = RestartLogTail(self.data_dir / "restarts.jsonl")
        self.gateway_died: str | None = None

    # ---- setup ---------------------------------------------------------

    async def start(self) -> None:
        await self.openai_peer.start()
        await self.anthropic_peer.start()
        config = self.tmp / "troupe.toml"
        config.write_text(
            gateway_config(
                data_dir=self.data_dir,
                api_key=self.api_key,
                admin_key=self.admin_key,
                openai_url=self.openai_peer.url,
                openai_keys=self.openai_keys,
                anthropic_url=self.anthropic_peer.url,
                anthropic_keys=self.anthropic_keys,
                timings=self.timings,
            )
        )
        self.gateway = Proc(
            "troupe",
            [self.args.bin, "serve", "--config", str(config)],
            self.tmp / "troupe.log",
            env={"RUST_LOG": os.environ.get("SOAK_RUST_LOG", "warn")},
        )
        await self.gateway.start()
        async with httpx.AsyncClient(base_url=self.gateway.url, timeout=2, trust_env=False) as c:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if (await c.get("/readyz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SetupError(f"the gateway was not ready within 30s; see {self.gateway.log}")
                await asyncio.sleep(0.1)

    async def cleanup(self) -> None:
        for p in (self.gateway, self.openai_peer, self.anthropic_peer):
            if p is not None:
                await p.stop()
        if self.args.keep:
            say(f"kept {self.tmp} (config, data_dir, logs of the gateway and peers)")
        elif not self.args.workdir:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- load, sampling ------------------------------------------------

    def over(self, deadline: float) -> bool:
        return self.stop.is_set() or time.monotonic() >= deadline

    async def worker(self, client: httpx.AsyncClient, seq: itertools.count, tally: Tally, deadline: float) -> None:
        while not self.over(deadline):
            i = next(seq)
            # Twelve combinations, evenly: frontend x model x streamed or not.
            frontend = FRONTENDS[i % 2]
            target = TARGETS[(i // 2) % 3]
            stream = (i // 6) % 2 == 0
            ans = await answers.send(client, self.api_key, frontend, target, i, stream)
            outcome = tally.add(ans)
            if outcome not in ("ok", "clean_error") and tally.counts[outcome] <= 3:
                note(f"{outcome}: {tally.examples[outcome][-1]}")

    async def monitor(self, tally: Tally, chaos: Chaos, t_start: float, deadline: float) -> None:
        """Samples the gateway every second, prints a line every interval."""
        next_line = t_start + self.args.interval
        while not self.over(deadline):
            await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            self.sample()
            if self.gateway_died:
                self.stop.set()
                return
            if time.monotonic() >= next_line:
                next_line += self.args.interval
                self.print_line(tally, chaos, t_start)
                if self.samples.first is None:
                    self.samples.first = self.samples.last

    def sample(self) -> None:
        assert self.gateway is not None
        s = proc_stats(self.gateway.pid)
        if s is None or not self.gateway.alive():
            code = self.gateway.proc.returncode if self.gateway.proc else None
            self.gateway_died = self.gateway_died or f"the gateway exited (code {code})"
            return
        self.samples.take(s)
        self.restart_log.read()

    def print_line(self, tally: Tally, chaos: Chaos, t_start: float, tag: str = "") -> None:
        s = self.samples.last
        res = f"rss {mib(s.rss_kib):>9}  fds {s.fds:>4}  threads {s.threads:>3}" if s else "gateway gone"
        say(
            f"[{tag + hms(time.monotonic() - t_start):>8}] {res} | requests {tally.total()}: {tally.line()}"
            f" | restarts {self.restart_log.restarts} (log {self.restart_log.lines} lines)"
            f" | episodes {sum(chaos.episodes_run.values())}"
        )

    # ---- the end -------------------------------------------------------

    async def settle(self, admin: httpx.AsyncClient, chaos: Chaos) -> dict[str, str]:
        """After the load: no faults, and (bounded) every session usable.
        Without traffic a session may wait in `trial` for its deciding
        request, which the after-check then sends."""
        await chaos.clear_all()
        states: dict[str, str] = {}
        limit = time.monotonic() + 30
        while time.monotonic() < limit:
            try:
                sessions = (await admin.get("/admin/sessions")).json()["sessions"]
            except (httpx.HTTPError, ValueError, KeyError):
                break
            states = {f"{s['pool']}/{s['session']}": s["state"] for s in sessions}
            if all(v in ("ready", "busy", "trial") for v in states.values()):
                break
            for s in sessions:
                if s["state"] == "failed":
                    await admin.post(f"/admin/sessions/{s['pool']}/{s['session']}/reset")
            await asyncio.sleep(0.2)
        return states

    async def after_check(self, client: httpx.AsyncClient) -> list[Answer]:
        """One request per frontend, model and mode, once the faults stopped."""
        out = []
        for k, (frontend, target, stream) in enumerate(itertools.product(FRONTENDS, TARGETS, (True, False))):
            out.append(await answers.send(client, self.api_key, frontend, target, 10_000_000 + k, stream))
        return out

    def summary(self, tally: Tally, chaos: Chaos, wall: float, after: list[Answer], states: dict[str, str]) -> None:
        a, log = self.samples, self.restart_log
        log.read()

        def row(label: str, text: str) -> None:
            say(f"{label:<16}{text}")

        total = tally.total()
        say()
        say(f"==== soak summary: {hms(wall)} of load, concurrency {self.args.concurrency}, seed {self.args.seed} ====")
        if self.gateway_died:
            row("GATEWAY DIED", self.gateway_died)
        first_rss = a.first.rss_kib if a.first else None
        end_rss = a.last.rss_kib if a.last else None
        flat = "n/a (the run was shorter than one interval)"
        if first_rss and end_rss:
            change = (end_rss - first_rss) / first_rss
            flat = f"{'yes' if abs(change) <= FLAT_TOLERANCE else 'NO'} (end {change:+.1%} from the first interval)"
        row(
            "gateway RSS",
            f"start {mib(a.start.rss_kib if a.start else None)}, after the first interval {mib(first_rss)}, "
            f"peak {mib(a.peak_rss or None)}, end {mib(end_rss)}; flat: {flat}",
        )
        for label, get, peak in (("gateway fds", "fds", a.peak_fds), ("gateway threads", "threads", a.peak_threads)):
            vals = [getattr(x, get) if x else "n/a" for x in (a.start, a.first, a.last)]
            row(label, f"start {vals[0]}, after the first interval {vals[1]}, peak {peak}, end {vals[2]}")
        row("requests", f"{total} ({total / wall:.1f}/s): {tally.line()}")
        widths = [max(len(o), 6) for o in OUTCOMES]
        row("by route", " " * 25 + "".join(f"  {o:>{w}}" for o, w in zip(OUTCOMES, widths)))
        for route in sorted(tally.by_route):
            c = tally.by_route[route]
            row("", route + "".join(f"  {c.get(o, 0):>{w}}" for o, w in zip(OUTCOMES, widths)))
        if tally.error_kinds:
            row("errors", ", ".join(f"{k} x{n}" for k, n in tally.error_kinds.most_common()))
            for msg, n in tally.error_messages.most_common(6):
                row("", f"x{n:<5} {msg}")
        for outcome in ("lost", DUPLICATED, CUT, WRONG):
            for ex in tally.examples.get(outcome, []):
                row(f"  {outcome}", ex)
        row("episodes", ", ".join(f"{k} x{n}" for k, n in sorted(chaos.episodes_run.items())) or "none")
        t_end = tally.t_start + wall
        shares = ", ".join(
            f"{t.pool} {self.windows.coverage(t.pool, tally.t_start, t_end):.0%}" for t in TARGETS
        )
        row("fault windows", f"covered {shares} of the run (outside them every error counts as lost)")
        if chaos.recovery_seconds:
            rs = sorted(chaos.recovery_seconds)
            row("recovery", f"median {rs[len(rs) // 2]:.1f}s, max {rs[-1]:.1f}s from a fault episode's end to all healthy")
        for label, items in (
            ("faults not served in time", [f"{k} x{n}" for k, n in chaos.not_consumed.items()]),
            ("not recovered", chaos.not_recovered),
            ("unhealthy after a benign episode", chaos.unhealthy_after_benign),
        ):
            if items:
                row("", f"{label}: " + "; ".join(items[:5]))
        if chaos.sessions_reset_failed:
            row("", f"failed sessions reset through the admin API: {chaos.sessions_reset_failed}")
        row(
            "restart log",
            f"{log.lines} lines: "
            + (", ".join(f"{k} {n}" for k, n in sorted(log.kinds.items())) or "empty")
            + (f", {log.unparseable} unparseable" if log.unparseable else ""),
        )
        for ev in log.without_reason_examples:
            row("", f"without a reason: {ev}")
        after_ok = sum(1 for x in after if x.verdict == OK)
        shown = f"all {len(states)} ready" if states and set(states.values()) == {"ready"} else str(states or "unknown")
        row("after the run", f"{after_ok}/{len(after)} clean requests ok; sessions: {shown}")
        for x in after:
            if x.verdict != OK:
                row("", f"#{x.i} {x.frontend} {x.pool} {'stream' if x.stream else 'json'}: {x.verdict} {x.detail}")
        panics, errors, warns = self.gateway_log_counts()
        row("gateway log", f"{panics} panics, {errors} ERROR lines, {warns} WARN lines")

        restarts = sum(log.kinds.get(k, 0) for k in RESTART_EVENTS)
        unexplained = sum(log.without_reason.get(k, 0) for k in RESTART_EVENTS)
        if not restarts:
            reasons = "no restarts in the log"
        elif unexplained:
            reasons = f"{unexplained} of {restarts} restarts WITHOUT a reason"
        else:
            reasons = f"every restart had a reason ({restarts})"
        say(
            f"VERDICT: lost {tally.counts.get('lost', 0)}, duplicated {tally.counts.get(DUPLICATED, 0)}, "
            f"cut {tally.counts.get(CUT, 0)}, other protocol violations {tally.counts.get(WRONG, 0)}; {reasons}"
            + (f"; after the run {after_ok}/{len(after)} ok" if after else "")
            + ("; THE GATEWAY DIED" if self.gateway_died else "")
        )

    def gateway_log_counts(self) -> tuple[int, int, int]:
        assert self.gateway is not None
        panics = errors = warns = 0
        try:
            with open(self.gateway.log, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    panics += "panicked" in line
                    errors += " ERROR " in line or '"level":"ERROR"' in line
                    warns += " WARN " in line or '"level":"WARN"' in line
        except OSError:
            pass
        return panics, errors, warns

    # ---- main ----------------------------------------------------------

    async def run(self) -> None:
        args = self.args
        say(f"soak: {hms(args.duration)} of load, concurrency {args.concurrency}, a line every {args.interval:g}s")
        await self.start()
        assert self.gateway is not None
        say(
            f"gateway {self.gateway.url} (pid {self.gateway.pid}, {args.bin}); "
            f"openai peer {self.openai_peer.url}; anthropic peer {self.anthropic_peer.url}"
        )
        self.sample()
        self.samples.start = self.samples.last
        t_start = time.monotonic()
        deadline = t_start + args.duration
        tally = Tally(self.windows, t_start)
        limits = httpx.Limits(max_connections=args.concurrency * 2, max_keepalive_connections=args.concurrency * 2)
        # Longer than any answer the gateway may take (its request timeout),
        # so only a gateway that never answers trips it.
        timeout = httpx.Timeout(self.timings.request_timeout + 30, connect=10)
        async with httpx.AsyncClient(
            base_url=self.gateway.url, timeout=timeout, limits=limits, trust_env=False
        ) as client, httpx.AsyncClient(
            base_url=self.gateway.url,
            headers={"authorization": f"Bearer {self.admin_key}"},
            timeout=10,
            trust_env=False,
        ) as admin:
            chaos = Chaos(
                openai_peer=self.openai_peer,
                anthropic_peer=self.anthropic_peer,
                openai_keys=self.openai_keys,
                admin=admin,
                windows=self.windows,
                rng=random.Random(args.seed),
                timings=self.timings,
                deadline=deadline,
                stop=self.stop,
                note=note,
            )
            seq = itertools.count()
            tasks = [asyncio.create_task(self.worker(client, seq, tally, deadline)) for _ in range(args.concurrency)]
            side = [
                asyncio.create_task(chaos.run()),
                asyncio.create_task(self.monitor(tally, chaos, t_start, deadline)),
            ]
            await asyncio.gather(*tasks, *side)
            wall = time.monotonic() - t_start
            self.sample()
            if self.gateway_died:
                note(self.gateway_died)
            self.print_line(tally, chaos, t_start, tag="end ")
            after: list[Answer] = []
            states: dict[str, str] = {}
            if not self.gateway_died:
                states = await self.settle(admin, chaos)
                after = await self.after_check(client)
            self.sample()
            self.summary(tally, chaos, wall, after, states)


def main() -> int:
    ap = argparse.ArgumentParser(description="troupe soak driver (see scripts/soak.sh)")
    ap.add_argument("--duration", type=float, required=True, help="seconds of load")
    ap.add_argument("--bin", required=True, help="the troupe binary")
    ap.add_argument("--concurrency", type=int, default=int(os.environ.get("CONCURRENCY", "16")))
    ap.add_argument("--interval", type=float, default=float(os.environ.get("SOAK_INTERVAL", "60")))
    ap.add_argument("--seed", type=int, default=int(os.environ.get("SOAK_SEED", "0")) or random.randrange(1, 1 << 30))
    ap.add_argument("--workdir", help="an empty directory for the config, data and logs (default: a new temp dir)")
    ap.add_argument("--keep", action="store_true", default=bool(os.environ.get("SOAK_KEEP")), help="keep the work dir")
    args = ap.parse_args()
    if args.duration <= 0 or args.concurrency < 1 or args.interval <= 0:
        ap.error("duration, concurrency and interval must be positive")
    soak = Soak(args)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        main_task = asyncio.current_task()
        assert main_task is not None

        def interrupted() -> None:
            # The first signal ends the load early and still prints the
            # summary; a second one gives up at once.
            if soak.stop.is_set():
                main_task.cancel()
            else:
                note("interrupted: stopping the load, the summary follows (again to quit at once)")
                soak.stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, interrupted)
        try:
            await soak.run()
        finally:
            await soak.cleanup()

    try:
        asyncio.run(run())
    except SetupError as e:
        print(f"soak: setup failed: {e}", file=sys.stderr)
        return 2
    except asyncio.CancelledError:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
