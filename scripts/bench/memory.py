#!/usr/bin/env python3
"""troupe's start-up time and memory, printed as figures (never a test).

Run by scripts/bench/run.sh (`scripts/bench/run.sh memory` runs only this
part), with the Python of the repo's .venv (it needs aiohttp). On loopback
only, against troupe's built-in `demo` pool (no network):

  start-up   `troupe serve` spawned STARTS times, each with a fresh data_dir:
             time to the "listening on http://..." line on its stdout, to the
             first 200 from GET /healthz and from GET /readyz; VmRSS 2 s after
             it is ready (before any request), 2 s after one streamed
             request, and 2 s after one count_tokens (the first count loads
             the tokenizer: RSS with token counting ready; its latency too).
             Medians.
  streams    for each N in STREAMS, a fresh troupe serving a demo pool that
             answers one word every CHUNK_DELAY for about STREAM_SECONDS;
             N concurrent streamed /v1/chat/completions are opened from
             CLIENTS client processes (default one; asyncio + aiohttp, no
             connection limit). VmRSS idle before, while all N streams are
             open and receiving (median of samples taken every 0.5 s while
             every stream is open), per stream, the gaps between chunks each
             stream saw (p50, p99, worst), and VmRSS AFTER seconds after the
             streams end.

Every wait is bounded in time; the run ends by itself.
"""

import argparse
import asyncio
import gc
import http.client
import json
import math
import multiprocessing as mp
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from array import array

HZ = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


# --- the gateway -----------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid, key):
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM), in KiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss(pid):
    return proc_status(pid, "VmRSS")


def rss_parts(pid):
    """What RSS holds: anonymous memory (the heap, stacks), file pages (the
    binary's code and data, read back from the file if dropped), and the
    part of anonymous memory freed lazily (MADV_FREE: counted until the
    kernel takes it back), in KiB."""
    lazy = None
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("LazyFree:"):
                    lazy = int(line.split()[1])
    except OSError:
        pass
    return {"anon": proc_status(pid, "RssAnon"), "file": proc_status(pid, "RssFile"),
            "lazy": lazy}


def cpu_seconds(pid):
    """User + system CPU time of a process (all threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / HZ
    except OSError:
        return None


def toml_str(s):
    return json.dumps(str(s))


def write_config(path, port, data_dir, *, sessions, max_concurrency, chunk_delay_ms,
                 max_queue=1024, request_timeout_s=300, max_connections=None, workers=None):
    server = [
        "[server]",
        f"listen = {toml_str(f'127.0.0.1:{port}')}",
        f"data_dir = {toml_str(data_dir)}",
        f"max_queue = {max_queue}",
        'queue_timeout = "120s"',
        f'request_timeout = "{request_timeout_s}s"',
    ]
    if max_connections is not None:
        server.append(f"max_connections = {max_connections}")
    if workers:
        server.append(f"workers = {workers}")
    pool = [
        "[[pools]]",
        'name = "demo"',
        'kind = "demo"',
        'models = ["demo"]',
        f"sessions = {sessions}",
        f"max_concurrency = {max_concurrency}",
        f'chunk_delay = "{chunk_delay_ms}ms"',
    ]
    with open(path, "w") as f:
        f.write("\n".join(server) + "\n\n" + "\n".join(pool) + "\n")


class ConfigRejected(Exception):
    pass


class Gateway:
    """One `troupe serve`, its start-up timed from the moment it is spawned."""

    def __init__(self, binary, config, port, log):
        self.port = port
        self.t_listen = None
        self.listen_addr = None
        self._log = open(log, "w+")
        self._log_path = log
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [binary, "serve", "--config", config],
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

    def _read_stdout(self):
        for line in self.proc.stdout:
            if self.t_listen is None and line.startswith(b"listening on "):
                self.t_listen = time.monotonic() - self.t0
                self.listen_addr = line.split()[-1].decode()

    def stderr(self):
        self._log.flush()
        with open(self._log_path) as f:
            return f.read()

    def _get(self, path, timeout=1.0):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request("GET", path)
            return c.getresponse().status
        finally:
            c.close()

    def wait_ready(self, timeout=30.0, poll=0.001):
        """(listening line, first 200 on /healthz, first 200 on /readyz), in
        seconds from the spawn."""
        deadline = self.t0 + timeout
        t_health = t_ready = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.stderr()
                raise ConfigRejected(f"troupe exited with {self.proc.returncode}:\n{err}")
            try:
                if t_health is None:
                    if self._get("/healthz") == 200:
                        t_health = time.monotonic() - self.t0
                if t_health is not None and self._get("/readyz") == 200:
                    t_ready = time.monotonic() - self.t0
                    break
            except OSError:
                pass
            time.sleep(poll)
        else:
            self.stop()
            raise RuntimeError(f"troupe was not ready within {timeout:.0f} s:\n{self.stderr()}")
        # The stdout line is read by another thread: give it a moment.
        for _ in range(200):
            if self.t_listen is not None:
                break
            time.sleep(0.005)
        return self.t_listen, t_health, t_ready

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


def chat_body(words, stream=True):
    text = " ".join(["lorem"] * words)
    return json.dumps(
        {"model": "demo", "stream": stream, "messages": [{"role": "user", "content": text}]}
    ).encode()


def one_request(port):
    """One streamed chat completion, read to its end."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("POST", "/v1/chat/completions", body=chat_body(3),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        body = r.read()
        if r.status != 200 or b"[DONE]" not in body:
            raise RuntimeError(f"request failed: {r.status} {body[:300]!r}")
    finally:
        c.close()


def one_count(port):
    """One /v1/messages/count_tokens (the first loads the tokenizer): seconds."""
    body = json.dumps({"model": "demo", "messages": [{"role": "user", "content": "hello world"}]})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        t0 = time.monotonic()
        c.request("POST", "/v1/messages/count_tokens", body=body.encode(),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        out = r.read()
        took = time.monotonic() - t0
        if r.status != 200 or b"input_tokens" not in out:
            raise RuntimeError(f"count failed: {r.status} {out[:300]!r}")
        return took
    finally:
        c.close()


# --- start-up ----------------------------------------------------------------


def bench_startup(args, tmp):
    rows = []
    for i in range(args.starts):
        d = os.path.join(tmp, f"start{i}")
        os.makedirs(d)
        port = free_port()
        cfg = os.path.join(d, "troupe.toml")
        # The shipped config's demo pool: two sessions, 16 each, 20 ms chunks.
        write_config(cfg, port, os.path.join(d, "data"), sessions=2, max_concurrency=16,
                     chunk_delay_ms=20, workers=args.workers)
        gw = Gateway(args.bin, cfg, port, os.path.join(d, "err"))
        try:
            t_listen, t_health, t_ready = gw.wait_ready()
            time.sleep(2)
            idle = rss(gw.pid)
            one_request(port)
            time.sleep(2)
            after = rss(gw.pid)
            first_count = one_count(port)
            time.sleep(2)
            counting = rss(gw.pid)
        finally:
            gw.stop()
        rows.append((t_listen, t_health, t_ready, idle, after, counting, first_count))
        print(f"  start {i + 1}: listening {ms(t_listen)} ms, /healthz {ms(t_health)} ms, "
              f"/readyz {ms(t_ready)} ms; RSS idle {idle} KiB, after one request {after} KiB, "
              f"with the tokenizer loaded {counting} KiB (first count {ms(first_count)} ms)",
              flush=True)
    return rows


def ms(s):
    return "?" if s is None else f"{s * 1000:.1f}"


# --- open streams ------------------------------------------------------------


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            soft, hard = need, need
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def client_worker(wid, n, url, body, open_concurrency, deadline_s, events):
    """One client process: n concurrent streams. Reports ("open", wid, t,
    failed) once each of its streams has its first chunk (or failed), and
    ("done", wid, result) at the end. Times are time.monotonic(), which is
    one clock for every process of the machine."""
    import aiohttp

    async def run():
        gaps = array("d")
        gap_ends = array("d")  # when each gap ended
        lags = array("d")  # how late the client's event loop woke, ms
        first_end = [None]
        errors = {}
        opened = [0]
        all_open = asyncio.Event()
        ok = [0]
        chunks = [0]
        t_first_chunk = array("d")  # request sent -> first chunk, seconds
        gate = asyncio.Semaphore(open_concurrency)

        def settled():
            opened[0] += 1
            if opened[0] == n:
                all_open.set()

        def fail(kind):
            errors[kind] = errors.get(kind, 0) + 1

        async def one(session):
            # The gate is released once the connection is made (see
            # connected below), or at the latest when this stream ends.
            released = [False]
            first = [False]

            def release():
                if not released[0]:
                    released[0] = True
                    gate.release()

            await gate.acquire()
            try:
                t_sent = time.monotonic()
                async with session.post(url, data=body, trace_request_ctx=release,
                                        headers={"Content-Type": "application/json"}) as r:
                    if r.status != 200:
                        fail(f"HTTP {r.status}")
                        await r.read()
                        return
                    last = None
                    done = False
                    async for line in r.content:
                        if not line.startswith(b"data:"):
                            continue
                        now = time.monotonic()
                        chunks[0] += 1
                        if last is None:
                            t_first_chunk.append(now - t_sent)
                            first[0] = True
                            settled()
                        else:
                            gaps.append((now - last) * 1000.0)
                            gap_ends.append(now)
                        last = now
                        if line.startswith(b"data: [DONE]"):
                            done = True
                    if done:
                        ok[0] += 1
                    else:
                        fail("ended without [DONE]")
            except Exception as e:  # counted, not raised: one stream's failure is a figure
                fail(type(e).__name__ + (f": {e}" if str(e) else ""))
            finally:
                release()
                if not first[0]:
                    settled()
                elif first_end[0] is None:
                    # The first stream that was open to end, for any reason.
                    first_end[0] = time.monotonic()

        async def loop_lag():
            # A 10 ms ticker: how late it wakes is how long the client was
            # too busy to read the streams (a client-made gap).
            while True:
                t = time.monotonic()
                await asyncio.sleep(0.01)
                lags.append((time.monotonic() - t - 0.01) * 1000.0)

        async def report_open():
            await all_open.wait()
            events.put(("open", wid, time.monotonic(), sum(errors.values())))

        # troupe sends the response head with the first chunk, a
        # chunk_delay after the request: so the gate counts streams still
        # connecting, and lets the next one in once a connection is made.
        async def connected(session, ctx, params):
            ctx.trace_request_ctx()

        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(connected)
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        timeout = aiohttp.ClientTimeout(total=deadline_s, sock_connect=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                         trace_configs=[trace]) as session:
            reporter = asyncio.ensure_future(report_open())
            ticker = asyncio.ensure_future(loop_lag())
            await asyncio.wait_for(
                asyncio.gather(*(one(session) for _ in range(n))), deadline_s + 30)
            await reporter
            ticker.cancel()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "gaps": gaps.tobytes(),
            "gap_ends": gap_ends.tobytes(),
            "lag_max": max(lags, default=0.0),
            "first_chunk": t_first_chunk.tobytes(),
            "first_end": first_end[0],
            "ok": ok[0],
            "chunks": chunks[0],
            "errors": errors,
            "cpu": ru.ru_utime + ru.ru_stime,
        }

    raise_nofile(n + 256)
    # The cyclic collector, walking the objects of thousands of streams,
    # stopped this loop for up to a second at a time (client-made gaps and,
    # with connections left unread, 408s from troupe). The run is bounded:
    # what cycles it leaves go with the process.
    gc.disable()
    try:
        result = asyncio.run(run())
    except Exception as e:
        result = {"gaps": b"", "gap_ends": b"", "lag_max": None, "first_chunk": b"", "first_end": None, "ok": 0, "chunks": 0,
                  "errors": {"client: " + type(e).__name__ + f": {e}": n}, "cpu": 0.0}
    events.put(("done", wid, result))


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def start_stream_gateway(args, n, d):
    """A troupe that can hold n streams at once: enough sessions x
    max_concurrency, a queue as big, and server.max_connections = n + 100
    when the build knows that key."""
    sessions = 8
    per_session = math.ceil((n + 100) / sessions)
    port = free_port()
    cfg = os.path.join(d, "troupe.toml")
    for max_conn in (n + 100, None):
        data = os.path.join(d, "data" if max_conn else "data2")
        write_config(cfg, port, data, sessions=sessions, max_concurrency=per_session,
                     chunk_delay_ms=args.chunk_delay_ms, max_queue=2 * n + 1024,
                     request_timeout_s=int(2 * args.stream_seconds + 120),
                     max_connections=max_conn, workers=args.workers)
        gw = Gateway(args.bin, cfg, port, os.path.join(d, "err"))
        try:
            gw.wait_ready()
            return gw, max_conn
        except ConfigRejected as e:
            gw.stop()
            if max_conn is not None and "max_connections" in str(e):
                continue
            raise
    raise AssertionError("unreachable")


def bench_streams(args, n, tmp):
    d = os.path.join(tmp, f"streams{n}")
    os.makedirs(d)
    nofile = raise_nofile(n + 1024)
    if nofile < n + 256:
        return {"n": n, "skipped": f"open files limit {nofile} < {n + 256} (ulimit -n)"}
    gw, max_conn = start_stream_gateway(args, n, d)
    words = max(1, round(args.stream_seconds * 1000 / args.chunk_delay_ms) - 8)
    try:
        time.sleep(2)
        idle = rss(gw.pid)
        idle_parts = rss_parts(gw.pid)
        clients = max(1, min(args.clients, n))
        ctx = mp.get_context("spawn")
        events = ctx.Queue()
        deadline_s = 2 * args.stream_seconds + 120
        url = f"http://127.0.0.1:{gw.port}/v1/chat/completions"
        body = chat_body(words)
        procs = []
        t_start = time.monotonic()
        for w in range(clients):
            share = n // clients + (1 if w < n % clients else 0)
            p = ctx.Process(target=client_worker, daemon=True,
                            args=(w, share, url, body, max(1, args.open_concurrency // clients),
                                  deadline_s, events))
            p.start()
            procs.append(p)
        # Sample the gateway's RSS and CPU time while the clients run.
        samples = []  # (t, rss KiB, troupe cpu s)
        opened, results = {}, {}
        hard_deadline = t_start + deadline_s + 90
        next_sample = time.monotonic()
        while len(results) < clients and time.monotonic() < hard_deadline:
            now = time.monotonic()
            if now >= next_sample:
                samples.append((now, rss(gw.pid), cpu_seconds(gw.pid)))
                next_sample += 0.5
            try:
                ev = events.get(timeout=max(0.01, next_sample - time.monotonic()))
            except Exception:
                continue
            if ev[0] == "open":
                opened[ev[1]] = (ev[2], ev[3])
                if len(opened) == clients:
                    print(f"  {n} streams: all open {ev[2] - t_start:.1f} s after the first "
                          f"was started", flush=True)
            else:
                results[ev[1]] = ev[2]
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        t_end = time.monotonic()
        rss_end = rss(gw.pid)
        if len(results) < clients:
            print(f"  {n} streams: {clients - len(results)} client process(es) did not report "
                  f"before the deadline", flush=True)
        # RSS while every stream is open: samples after the last stream got
        # its first chunk and before the first one ended.
        t_open = max((v[0] for v in opened.values()), default=None) if len(opened) == clients else None
        ends = [r["first_end"] for r in results.values() if r["first_end"] is not None]
        t_first_end = min(ends) if ends else None
        window = [s for s in samples
                  if t_open is not None and t_first_end is not None and t_open <= s[0] <= t_first_end]
        rss_open = statistics.median(s[1] for s in window) if window else None
        troupe_cpu = None
        if len(window) >= 2:
            troupe_cpu = 100 * (window[-1][2] - window[0][2]) / (window[-1][0] - window[0][0])
        # The chunk gaps of every stream.
        gaps = array("d")
        steady = []  # gaps that ended while every stream was open
        first_chunk = array("d")
        lag_max = None
        errors = {}
        ok = chunks = 0
        client_cpu = 0.0
        for r in results.values():
            g = array("d")
            g.frombytes(r["gaps"])
            gaps.extend(g)
            e = array("d")
            e.frombytes(r["gap_ends"])
            if window:
                steady.extend(v for v, t in zip(g, e) if window[0][0] <= t <= window[-1][0])
            if r["lag_max"] is not None:
                lag_max = max(lag_max or 0.0, r["lag_max"])
            f = array("d")
            f.frombytes(r["first_chunk"])
            first_chunk.extend(f)
            ok += r["ok"]
            chunks += r["chunks"]
            client_cpu += r["cpu"]
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        gaps = sorted(gaps)
        steady.sort()
        first_chunk = sorted(first_chunk)
        print(f"  {n} streams: all ended {t_end - t_start:.1f} s after the start; "
              f"waiting {args.after:.0f} s", flush=True)
        # Bounded wait; RSS a minute (AFTER s) after the streams end.
        time.sleep(args.after)
        rss_after = rss(gw.pid)
        after_parts = rss_parts(gw.pid)
        hwm = proc_status(gw.pid, "VmHWM")
    finally:
        gw.stop()
    return {
        "n": n,
        "clients": clients,
        "max_connections": max_conn,
        "words": words + 8,
        "idle": idle,
        "open": rss_open,
        "open_samples": len(window),
        "end": rss_end,
        "after": rss_after,
        "idle_parts": idle_parts,
        "after_parts": after_parts,
        "hwm": hwm,
        "ramp": (t_open - t_start) if t_open is not None else None,
        "first_chunk_p50": percentile(first_chunk, 50),
        "first_chunk_p99": percentile(first_chunk, 99),
        "gap_p50": percentile(gaps, 50),
        "gap_p99": percentile(gaps, 99),
        "gap_max": gaps[-1] if gaps else None,
        "gaps": len(gaps),
        "steady_p50": percentile(steady, 50),
        "steady_p99": percentile(steady, 99),
        "steady_max": steady[-1] if steady else None,
        "lag_max": lag_max,
        "ok": ok,
        "chunks": chunks,
        "errors": errors,
        "troupe_cpu": troupe_cpu,
        "client_cpu": 100 * client_cpu / max(1e-9, t_end - t_start),
    }


# --- output ------------------------------------------------------------------


def fmt(v, spec="{:,.0f}", unit=""):
    return "n/a" if v is None else spec.format(v) + unit


def print_table(headers, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda cells: "  " + "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))
    print(line(headers))
    print("  " + "  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--starts", type=int, default=5)
    ap.add_argument("--streams", default="1000,10000",
                    help="comma-separated counts of concurrent streams; 0 or empty: none")
    ap.add_argument("--chunk-delay-ms", type=int, default=1000)
    ap.add_argument("--stream-seconds", type=float, default=60)
    ap.add_argument("--after", type=float, default=60, help="seconds to wait after the streams end")
    ap.add_argument("--clients", type=int, default=1, help="client processes")
    ap.add_argument("--open-concurrency", type=int, default=256,
                    help="streams connecting at once")
    ap.add_argument("--workers", type=int, default=0, help="troupe's server.workers (0: default)")
    args = ap.parse_args()
    counts = [int(x) for x in args.streams.replace(" ", "").split(",") if x and int(x) > 0]

    tmp = tempfile.mkdtemp(prefix="troupe-bench-mem-")
    try:
        print(f"troupe start-up and memory: {os.cpu_count()} cores, {args.bin}, "
              f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}", flush=True)
        starts = bench_startup(args, tmp) if args.starts > 0 else []
        streams = []
        for n in counts:
            streams.append(bench_streams(args, n, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(i):
        vals = [r[i] for r in starts if r[i] is not None]
        return statistics.median(vals) if vals else None

    print()
    if starts:
        print(f"start-up, median of {len(starts)} starts (demo pool of 2 sessions, fresh data_dir; "
              f"/healthz polled every 1 ms; from the spawn of `troupe serve` to...):")
        print_table(
            ["listening line", "first /healthz 200", "first /readyz 200",
             "RSS idle (2 s after ready)", "RSS after one request",
             "RSS with token counting ready", "first count (loads it)"],
            [[fmt(med(0) and med(0) * 1000, "{:.1f}", " ms"),
              fmt(med(1) and med(1) * 1000, "{:.1f}", " ms"),
              fmt(med(2) and med(2) * 1000, "{:.1f}", " ms"),
              fmt(med(3), unit=" KiB"), fmt(med(4), unit=" KiB"), fmt(med(5), unit=" KiB"),
              fmt(med(6) and med(6) * 1000, "{:.0f}", " ms")]],
        )
        lo_hi = lambda i: (f"{min(r[i] for r in starts) * 1000:.1f} to "
                           f"{max(r[i] for r in starts) * 1000:.1f} ms")
        if all(r[1] is not None for r in starts):
            print(f"  range over the starts: /healthz {lo_hi(1)}")
    if streams:
        print()
        print(f"open streams (demo pool, one chunk every {args.chunk_delay_ms} ms, answers of "
              f"about {args.stream_seconds:.0f} s; streamed /v1/chat/completions over loopback):")
        rows = []
        notes = []
        for s in streams:
            if "skipped" in s:
                rows.append([f"{s['n']:,}"] + ["skipped"] + [""] * 10)
                notes.append(f"{s['n']:,}: {s['skipped']}")
                continue
            per = (s["open"] - s["idle"]) / s["n"] if s["open"] is not None else None
            above = 100 * (s["after"] - s["idle"]) / s["idle"] if s["after"] else None
            failed = sum(s["errors"].values())
            rows.append([
                f"{s['n']:,}",
                fmt(s["ramp"], "{:.1f}", " s"),
                fmt(s["idle"], unit=" KiB"),
                fmt(s["open"], unit=" KiB"),
                fmt(per, "{:.1f}", " KiB"),
                fmt(s["gap_p50"], "{:.0f}", " ms"),
                fmt(s["gap_p99"], "{:.0f}", " ms"),
                fmt(s["gap_max"], "{:.0f}", " ms"),
                fmt(s["after"], unit=" KiB"),
                fmt(above, "{:+.0f}", " %"),
                f"{s['ok']:,}",
                f"{failed:,}",
            ])
        print_table(
            ["streams", "all open in", "RSS idle", "RSS all open", "per stream",
             "gap p50", "gap p99", "worst gap", f"RSS {args.after:.0f} s after", "above idle",
             "ok", "failed"],
            rows,
        )
        for s in streams:
            if "skipped" in s:
                continue
            mc = (f"server.max_connections = {s['max_connections']}" if s["max_connections"]
                  else "server.max_connections unknown to this build: not set")
            print(f"  {s['n']:,}: {s['clients']} client process(es); {mc}; "
                  f"{s['words']} words (chunks) per answer; RSS median of {s['open_samples']} samples "
                  f"while all were open, peak (VmHWM) {fmt(s['hwm'], unit=' KiB')}; "
                  f"first chunk p50 {fmt(s['first_chunk_p50'] and s['first_chunk_p50'] * 1000, '{:.1f}', ' ms')}, "
                  f"p99 {fmt(s['first_chunk_p99'] and s['first_chunk_p99'] * 1000, '{:.1f}', ' ms')}; "
                  f"troupe CPU {fmt(s['troupe_cpu'], '{:.0f}', ' %')} while all were open, "
                  f"client CPU {fmt(s['client_cpu'], '{:.0f}', ' %')} over the run")
            print(f"      chunk gaps while all {s['n']:,} were open: p50 "
                  f"{fmt(s['steady_p50'], '{:.0f}', ' ms')}, p99 {fmt(s['steady_p99'], '{:.0f}', ' ms')}, "
                  f"worst {fmt(s['steady_max'], '{:.0f}', ' ms')}; the client's event loop was at "
                  f"worst {fmt(s['lag_max'], '{:.0f}', ' ms')} late (its share of any gap)")
            ip, ap_ = s["idle_parts"], s["after_parts"]
            print(f"      RSS idle / {args.after:.0f} s after: anonymous {fmt(ip['anon'], unit=' KiB')} / "
                  f"{fmt(ap_['anon'], unit=' KiB')}, file-backed (code) {fmt(ip['file'], unit=' KiB')} / "
                  f"{fmt(ap_['file'], unit=' KiB')}, freed lazily {fmt(ip['lazy'], unit=' KiB')} / "
                  f"{fmt(ap_['lazy'], unit=' KiB')}")
            if s["open"] is None:
                print("      no RSS with all open: no sample fell between the last stream's first "
                      "chunk and the first stream's end (raise STREAM_SECONDS)")
            for k, v in sorted(s["errors"].items(), key=lambda kv: -kv[1])[:5]:
                print(f"      failed: {v:,} x {k[:200]}")
        for note in notes:
            print(f"  {note}")
        print(f"  gap: time between two chunks of one stream as the client saw it (one every "
              f"{args.chunk_delay_ms} ms is on time); the client shares the cores with troupe.")


if __name__ == "__main__":
    main()
