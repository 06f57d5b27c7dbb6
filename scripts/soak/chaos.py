"""Fault episodes, one at a time with calm gaps between them.

An episode injects faults through a peer's control API (or stops a peer, or
resets a session through the gateway's admin API), waits until the faults
were served and their requests ended, clears what is left, then waits until
every session is healthy again. The time from before the injection to that
recovery is a *fault window* for the pools the episode touched: a request to
such a pool that failed while a window was open is excused; one that failed
with no window open is *lost* (some session was healthy and nothing was
wrong with it).

Some episodes are benign: protocol quirks real servers produce, a hang
shorter than the first-token timeout, an operator reset of a healthy
session. They open no window, so any failure they cause counts as lost.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import httpx

from procs import OPENAI_ACCOUNTS, Peer, SetupError, Timings

CALM_SECONDS = (2.0, 6.0)  # the gap between episodes: failures here are lost
CONSUME_LIMIT = 30.0  # the longest an episode waits for its faults to be served
RECOVERY_LIMIT = 60.0  # the longest it waits for every session to be healthy
HEALTHY = ("ready", "busy")  # "busy" is ready at full capacity
KILL = "openai 401 kill"


@dataclass
class Window:
    label: str
    pools: frozenset[str]
    start: float  # monotonic
    end: float | None = None  # None while open
    benign: bool = False


class Windows:
    """Every fault and benign window of the run, in start order."""

    # Longest a request may last (client timeout); older windows cannot overlap.
    LOOKBACK = 120.0

    def __init__(self) -> None:
        self.all: list[Window] = []

    def open(self, label: str, pools: frozenset[str], benign: bool) -> Window:
        w = Window(label, pools, time.monotonic(), benign=benign)
        self.all.append(w)
        return w

    def coverage(self, pool: str, t0: float, t1: float) -> float:
        """The share of [t0, t1] that fault windows covered for `pool`:
        the rest is the time in which any failure counts as lost."""
        covered = 0.0
        for w in self.all:
            if pool in w.pools and not w.benign:
                covered += max(0.0, min(w.end or t1, t1) - max(w.start, t0))
        return covered / (t1 - t0) if t1 > t0 else 0.0

    def during(self, pool: str, t0: float, t1: float) -> tuple[Window | None, Window | None]:
        """The fault window and the benign window that overlapped [t0, t1]
        for `pool`, if any (the most recent of each)."""
        fault = benign = None
        for w in reversed(self.all):
            if w.end is not None and w.end < t0 - self.LOOKBACK:
                break
            if pool not in w.pools or w.start > t1 or (w.end is not None and w.end < t0):
                continue
            if w.benign:
                benign = benign or w
            else:
                fault = fault or w
            if fault and benign:
                break
        return fault, benign


@dataclass
class Episode:
    name: str
    weight: int
    pools: frozenset[str]
    run: Callable[[], Awaitable[None]]
    benign: bool = False


@dataclass
class Chaos:
    """Runs episodes until the deadline; keeps the figures about them."""

    openai_peer: Peer
    anthropic_peer: Peer
    openai_keys: dict[str, str]
    admin: httpx.AsyncClient
    windows: Windows
    rng: random.Random
    timings: Timings
    deadline: float
    stop: asyncio.Event
    note: Callable[[str], None]  # prints a finding or a notable event
    episodes_run: Counter = field(default_factory=Counter)
    not_consumed: Counter = field(default_factory=Counter)
    not_recovered: list[str] = field(default_factory=list)
    unhealthy_after_benign: list[str] = field(default_factory=list)
    sessions_reset_failed: int = 0
    recovery_seconds: list[float] = field(default_factory=list)

    def over(self) -> bool:
        return self.stop.is_set() or time.monotonic() >= self.deadline

    async def sleep(self, seconds: float) -> None:
        """Sleeps, but not past the deadline or a stop."""
        seconds = min(seconds, self.deadline - time.monotonic())
        if seconds > 0:
            try:
                await asyncio.wait_for(self.stop.wait(), seconds)
            except asyncio.TimeoutError:
                pass

    # ---- the loop ------------------------------------------------------

    async def run(self) -> None:
        catalogue = self.catalogue()
        weights = [e.weight for e in catalogue]
        # Every kind once first, in random order, so that even a short run
        # covers them; a session kill leads, so that it sees a restart.
        first_pass = self.rng.sample(catalogue, len(catalogue))
        first_pass.sort(key=lambda e: e.name != KILL)
        while not self.over():
            await self.sleep(self.rng.uniform(*CALM_SECONDS))
            if self.over():
                break
            episode = first_pass.pop(0) if first_pass else self.rng.choices(catalogue, weights)[0]
            await self.play(episode)

    async def play(self, ep: Episode) -> None:
        self.episodes_run[ep.name] += 1
        window = self.windows.open(ep.name, ep.pools, ep.benign)
        try:
            # Fresh request logs: how an episode sees its faults being
            # served, and the peers' memory stays bounded over a long run.
            for peer in (self.openai_peer, self.anthropic_peer):
                if peer.alive():
                    await self.peer_post(peer, "/_peer/reset")
            await ep.run()
        except (httpx.HTTPError, ValueError, KeyError) as e:
            # A control call failed (a peer restarting, say): note it, leave
            # no fault behind, and go on.
            self.note(f"episode '{ep.name}' could not run: {type(e).__name__}: {e}")
            await self.clear_all()
        finally:
            if ep.benign:
                window.end = time.monotonic()
                healthy, states = await self.healthy()
                if not healthy:
                    finding = f"after benign episode '{ep.name}' sessions were not healthy: {states}"
                    self.unhealthy_after_benign.append(finding)
                    self.note(finding)
                    await self.recover(ep.name)
            else:
                await self.recover(ep.name)
                window.end = time.monotonic()

    async def recover(self, label: str) -> None:
        """Waits (bounded) until every session is healthy; resets failed ones."""
        t0 = time.monotonic()
        limit = t0 + RECOVERY_LIMIT
        states: dict[str, str] = {}
        while time.monotonic() < limit and not self.stop.is_set():
            healthy, states = await self.healthy(reset_failed=True)
            if healthy:
                self.recovery_seconds.append(time.monotonic() - t0)
                return
            await asyncio.sleep(0.2)
        if not self.stop.is_set():
            self.not_recovered.append(f"{label}: {states}")
            self.note(f"sessions not healthy {RECOVERY_LIMIT:.0f}s after '{label}': {states}")

    async def healthy(self, reset_failed: bool = False) -> tuple[bool, dict[str, str]]:
        """Whether every session is ready with no model cooling down, and
        the states of those that are not."""
        try:
            sessions = (await self.admin.get("/admin/sessions")).json()["sessions"]
            bad = {}
            for s in sessions:
                if s["state"] not in HEALTHY or s.get("model_cooldowns"):
                    reason = f" ({s['reason']})" if s.get("reason") else ""
                    bad[f"{s['pool']}/{s['session']}"] = s["state"] + reason
                if reset_failed and s["state"] == "failed":
                    # Given up on: only an operator brings it back.
                    self.sessions_reset_failed += 1
                    await self.admin.post(f"/admin/sessions/{s['pool']}/{s['session']}/reset")
        except (httpx.HTTPError, ValueError, KeyError) as e:
            return False, {"admin API": f"{type(e).__name__}: {e}"}
        return not bad, bad

    # ---- peers ---------------------------------------------------------

    async def peer_post(self, peer: Peer, path: str, body: dict | None = None) -> None:
        async with httpx.AsyncClient(base_url=peer.url, timeout=10, trust_env=False) as c:
            r = await c.post(path, json=body) if body is not None else await c.post(path)
            r.raise_for_status()

    async def peer_requests(self, peer: Peer) -> list[dict]:
        async with httpx.AsyncClient(base_url=peer.url, timeout=10, trust_env=False) as c:
            r = await c.get("/_peer/requests")
            r.raise_for_status()
            return r.json()["requests"]

    async def clear(self, peer: Peer) -> None:
        """Removes the peer's faults (the Anthropic peer can only reset)."""
        async with httpx.AsyncClient(base_url=peer.url, timeout=10, trust_env=False) as c:
            if peer is self.openai_peer:
                (await c.delete("/_peer/faults")).raise_for_status()
            else:
                (await c.post("/_peer/reset")).raise_for_status()

    async def served(self, peer: Peer, mode: str, count: int | None, key: str | None) -> bool:
        """Whether `count` requests got the fault (any number if None) and all
        of them have ended, so nothing of the fault is left in flight."""
        try:
            hits = [
                q
                for q in await self.peer_requests(peer)
                if q.get("fault") == mode and (key is None or q.get("key") == key)
            ]
        except (httpx.HTTPError, ValueError, KeyError):
            return False
        return (count is None or len(hits) >= count) and all("end" in q for q in hits)

    async def counted(self, peer: Peer, mode: str, count: int, key: str | None = None, **extra: Any) -> None:
        """The next `count` requests (with `key`) get `mode`."""
        body = {"mode": mode, "count": count, **extra}
        if key is not None:
            body["key"] = key
        await self.peer_post(peer, "/_peer/faults", body)
        limit = time.monotonic() + CONSUME_LIMIT
        while not self.over() and time.monotonic() < limit:
            if await self.served(peer, mode, count, key):
                return
            await asyncio.sleep(0.25)
        if not self.over():
            self.not_consumed[f"{peer.name} {mode}"] += 1
        if peer is self.openai_peer:
            await self.clear(peer)
            await self.wait_ended(peer, mode)
        else:
            # Clearing this one also empties its request log, which is how
            # the requests still running the fault are seen: wait first.
            await self.wait_ended(peer, mode)
            await self.clear(peer)

    async def wait_ended(self, peer: Peer, mode: str) -> None:
        limit = time.monotonic() + CONSUME_LIMIT
        while time.monotonic() < limit and not await self.served(peer, mode, None, None):
            await asyncio.sleep(0.25)

    async def storm(self, seconds: float) -> None:
        """Several rate faults on the OpenAI peer at once, as in
        tests/test_chaos.py, for a while."""
        hang = self.timings.first_token_timeout + 1.0
        rates = [
            {"mode": "500", "rate": 0.05},
            {"mode": "429", "rate": 0.03, "retry_after": 1},
            {"mode": "reset", "rate": 0.03},
            {"mode": "drop", "rate": 0.03},
            {"mode": "hang", "rate": 0.02, "seconds": hang},
            {"mode": "503", "rate": 0.02},
        ]
        for body in rates:
            await self.peer_post(self.openai_peer, "/_peer/faults", body)
        await self.sleep(seconds)
        await self.clear(self.openai_peer)
        for body in rates:
            await self.wait_ended(self.openai_peer, body["mode"])

    async def outage(self, peer: Peer) -> None:
        """The upstream goes away for a few seconds and comes back on the
        same port: every pooled connection to it is dead."""
        await peer.stop(grace=3.0)
        await self.sleep(self.rng.uniform(2.0, 5.0))
        try:
            await peer.restart_same_port()
        except SetupError as e:
            self.note(f"cannot go on: {e}")
            self.stop.set()

    async def admin_reset(self) -> None:
        """An operator resets a session that is healthy."""
        r = await self.admin.get("/admin/sessions")
        s = self.rng.choice(r.json()["sessions"])
        await self.admin.post(f"/admin/sessions/{s['pool']}/{s['session']}/reset")

    # ---- the catalogue -------------------------------------------------

    def catalogue(self) -> list[Episode]:
        o, a = self.openai_peer, self.anthropic_peer
        rng = self.rng
        ftt = self.timings.first_token_timeout
        short_hang, long_hang = ftt / 2, ftt + 2.0
        OPENAI, ANTHROPIC = frozenset({"openai"}), frozenset({"anthropic"})

        def n(lo: int, hi: int) -> int:
            return rng.randint(lo, hi)

        def kill() -> Awaitable[None]:
            # Refused credentials are fatal to a session: it stops and its
            # supervisor restarts it (a logged restart).
            key = self.openai_keys[rng.choice(OPENAI_ACCOUNTS)]
            return self.counted(o, "401", n(1, 2), key=key)

        faults = [
            Episode("openai 500", 3, OPENAI, lambda: self.counted(o, "500", n(1, 3))),
            Episode("openai 503", 2, OPENAI, lambda: self.counted(o, "503", n(1, 3))),
            Episode("openai 429", 3, OPENAI, lambda: self.counted(o, "429", n(1, 2), retry_after=1)),
            Episode("openai reset", 2, OPENAI, lambda: self.counted(o, "reset", n(1, 2))),
            Episode("openai drop", 3, OPENAI, lambda: self.counted(o, "drop", n(1, 3))),
            Episode("openai hang>ftt", 2, OPENAI, lambda: self.counted(o, "hang", n(1, 2), seconds=long_hang)),
            Episode(KILL, 4, OPENAI, kill),
            Episode("openai 400", 1, OPENAI, lambda: self.counted(o, "400", 1)),
            Episode("openai redirect", 1, OPENAI, lambda: self.counted(o, "redirect", 1)),
            Episode("openai storm", 2, OPENAI, lambda: self.storm(rng.uniform(8, 15))),
            Episode("openai outage", 1, OPENAI, lambda: self.outage(o)),
            Episode("anthropic 500", 2, ANTHROPIC, lambda: self.counted(a, "500", n(1, 3))),
            Episode("anthropic 529", 2, ANTHROPIC, lambda: self.counted(a, "529", n(1, 3))),
            Episode("anthropic 429", 2, ANTHROPIC, lambda: self.counted(a, "429", n(1, 2), retry_after=1)),
            Episode("anthropic drop", 3, ANTHROPIC, lambda: self.counted(a, "drop", n(1, 3))),
            Episode("anthropic stream_error", 3, ANTHROPIC, lambda: self.counted(a, "stream_error", n(1, 3))),
            Episode("anthropic hang>ftt", 2, ANTHROPIC, lambda: self.counted(a, "hang", n(1, 2), seconds=long_hang)),
            Episode("anthropic 400", 1, ANTHROPIC, lambda: self.counted(a, "400", 1)),
            Episode("anthropic outage", 2, ANTHROPIC, lambda: self.outage(a)),
        ]
        benign = [
            Episode("openai hang<ftt", 2, OPENAI, lambda: self.counted(o, "hang", n(1, 3), seconds=short_hang)),
            Episode("anthropic hang<ftt", 2, ANTHROPIC, lambda: self.counted(a, "hang", n(1, 3), seconds=short_hang)),
            # Longer than the keep-alive, so the client sees `: ping` comments.
            Episode("openai slow", 1, OPENAI, lambda: self.counted(o, "slow", 1, seconds=1.3)),
            Episode("openai quirky", 1, OPENAI, lambda: self.counted(o, "quirky", n(2, 4))),
            Episode("openai close", 1, OPENAI, lambda: self.counted(o, "close", n(2, 4))),
            Episode("openai late_end", 1, OPENAI, lambda: self.counted(o, "late_end", n(1, 2), seconds=0.5)),
            Episode("openai no_usage", 1, OPENAI, lambda: self.counted(o, "no_usage", n(1, 3))),
            Episode("admin reset", 2, frozenset({"openai", "anthropic", "demo"}), self.admin_reset),
        ]
        for e in benign:
            e.benign = True
        return faults + benign

    async def clear_all(self) -> None:
        """At the end: no fault left behind, every peer up."""
        for peer in (self.openai_peer, self.anthropic_peer):
            if not peer.alive():
                try:
                    await peer.restart_same_port()
                except SetupError as e:
                    self.note(str(e))
                    continue
            try:
                await self.clear(peer)
            except httpx.HTTPError:
                pass

