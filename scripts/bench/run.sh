#!/usr/bin/env bash
# troupe's own cost, printed as figures (never a test; nothing here passes or
# fails). One run measures, on loopback only, against the same fast upstream
# (nginx serving a canned SSE answer):
#
#   direct       the upstream itself
#   nginx hop    a bare nginx proxy_pass in front of it: the physical limit of
#                one proxy hop on this machine (load tool, proxy and upstream
#                share the cores)
#   troupe       an `openai` pool in front of it
#   responses    the same pool, asked through /v1/responses (a Responses
#                client of a Chat Completions upstream: both translations)
#   messages     the same pool, asked through /v1/messages (an Anthropic
#                client: the other translating path, for comparison)
#   cluster      a second troupe, the same pool, with [cluster] pointing at a
#                redis-server of its own on loopback (each request takes and
#                gives back a concurrency hold in Redis): against `troupe`,
#                what sharing state costs
#
# first with one request in flight (added latency p50/p99), then under
# concurrency (requests/s, troupe as a share of the nginx hop, and each
# proxy's CPU time per request).
#
# One request in flight is measured three ways: everything on CPU 0 (the
# proxy's own cost), the proxy alone on CPU 1 (every hand-off wakes the
# other virtual CPU), and unpinned (wherever the scheduler puts them).
#
# troupe runs with its default `workers` (one per core; WORKERS=n sets it).
# A shared VM's host takes CPU time away ("steal") in bursts,
# so the three targets are measured in turn, ROUNDS times, each round's
# share of the hop is taken from measurements seconds apart, and medians are
# printed, with the steal seen during the run.
#
# Then start-up and memory (scripts/bench/memory.py, against a `demo` pool,
# no upstream): the time from spawning `troupe serve` to its "listening on"
# line and to the first 200 from /healthz (median of STARTS starts); idle RSS
# before and after one request; and N concurrent open streams for each N in
# STREAMS, all from CLIENTS client processes (Python asyncio + aiohttp, from
# the repo's .venv): RSS idle, with all N open, per stream, the gaps between
# chunks the streams saw, and RSS AFTER seconds after the streams end.
#
#   scripts/bench/run.sh                    # 5 rounds of 3 s, 32 connections; then memory
#   ROUNDS=9 DURATION=5 CONNECTIONS=64 scripts/bench/run.sh
#   scripts/bench/run.sh latency            # only the latency part (or ONLY=latency)
#   scripts/bench/run.sh memory             # only start-up and memory (or ONLY=memory), ~6 min
#   STREAMS=1000 AFTER=10 scripts/bench/run.sh memory   # a quick one, ~2 min
#   STARTS=0 STREAMS=10000 CLIENTS=2 scripts/bench/run.sh memory
#   TROUPE_BIN=target/debug/troupe scripts/bench/run.sh memory   # no dist build
#
# Memory knobs: STARTS (5), STREAMS ("1000 10000"), CHUNK_DELAY_MS (1000: one
# chunk a second per stream), STREAM_SECONDS (60: length of each answer),
# AFTER (60), CLIENTS (1).
#
# The latency part needs wrk, nginx and redis-server
# (apt-get install wrk nginx-light redis-server).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
DURATION="${DURATION:-3}"
ROUNDS="${ROUNDS:-5}"
CONNECTIONS="${CONNECTIONS:-32}"
ONLY="${1:-${ONLY:-all}}"
case "$ONLY" in
    all | latency | memory) ;;
    *) echo "usage: $0 [all|latency|memory]" >&2; exit 2 ;;
esac

if [ "$ONLY" != memory ]; then
    for tool in wrk nginx; do
        command -v "$tool" >/dev/null || { echo "$tool is not installed: apt-get install wrk nginx-light" >&2; exit 1; }
    done
fi
if [ -n "${TROUPE_BIN:-}" ]; then
    BIN="$(realpath "$TROUPE_BIN")"
else
    # The profile the container ships (see Cargo.toml).
    cargo build --profile dist --quiet
    BIN="$PWD/target/dist/troupe"
fi

# Start-up and memory: the .venv of scripts/test.sh (aiohttp), made if missing.
memory_bench() {
    local venv="$PWD/.venv" reqs="$PWD/tests/requirements.txt"
    if [ ! -x "$venv/bin/python" ]; then
        "${PYTHON:-python3}" -m venv "$venv" || { echo "python3 -m venv failed (apt-get install python3-venv)" >&2; exit 1; }
    fi
    if [ ! -f "$venv/.requirements.stamp" ] || [ "$reqs" -nt "$venv/.requirements.stamp" ]; then
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$reqs"
        touch "$venv/.requirements.stamp"
    fi
    # N streams hold N sockets in the client and N in troupe (it inherits
    # this limit).
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    "$venv/bin/python" scripts/bench/memory.py --bin "$BIN" \
        --starts "${STARTS:-5}" --streams "$(tr ' ' ',' <<<"${STREAMS:-1000 10000}")" \
        --chunk-delay-ms "${CHUNK_DELAY_MS:-1000}" --stream-seconds "${STREAM_SECONDS:-60}" \
        --after "${AFTER:-60}" --clients "${CLIENTS:-1}" --workers "${WORKERS:-0}"
}
if [ "$ONLY" = memory ]; then
    memory_bench
    exit 0
fi
TMP="$(mktemp -d)"
chmod 755 "$TMP" # nginx workers run as another user when started by root
TROUPE_PID=""
CLUSTER_PID=""
REDIS_PID=""
cleanup() {
    [ -n "$TROUPE_PID" ] && kill "$TROUPE_PID" 2>/dev/null || true
    [ -n "$CLUSTER_PID" ] && kill "$CLUSTER_PID" 2>/dev/null || true
    [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null || true
    for n in upstream hop; do
        [ -f "$TMP/$n.pid" ] && kill "$(cat "$TMP/$n.pid")" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP_PORT="$(free_port)"
HOP_PORT="$(free_port)"

# A realistic small answer: a role chunk, eight text chunks, the finish chunk
# with usage, [DONE].
CHUNK='{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hello "},"finish_reason":null}]}'
FIRST='{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}'
FINAL='{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":8,"total_tokens":13}}'
{
    printf 'data: %s\n\n' "$FIRST" "$CHUNK" "$CHUNK" "$CHUNK" "$CHUNK" "$CHUNK" "$CHUNK" "$CHUNK" "$CHUNK" "$FINAL"
    printf 'data: [DONE]\n\n'
} > "$TMP/answer.sse"

# Two nginx processes, one worker each: the canned upstream, and the bare
# proxy hop in front of it. (One process serving both would make the "hop"
# a function call inside one event loop, not a hop.)
ngx_conf() { # name, server block
    cat > "$TMP/$1.conf" <<NGX
worker_processes 1;
pid $TMP/$1.pid;
error_log $TMP/$1.err;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/$1-body;
    proxy_temp_path $TMP/$1-proxy;
    keepalive_requests 1000000;
    upstream canned { server 127.0.0.1:$UP_PORT; keepalive 256; }
    $2
}
NGX
    nginx -c "$TMP/$1.conf"
}
ngx_conf upstream "server {
        listen 127.0.0.1:$UP_PORT;
        location /v1/chat/completions {
            default_type text/event-stream;
            root $TMP;
            try_files /answer.sse =404;
            error_page 405 =200 /answer.sse;
        }
        location = /answer.sse { root $TMP; default_type text/event-stream; }
    }"
ngx_conf hop "server {
        listen 127.0.0.1:$HOP_PORT;
        location / {
            proxy_pass http://canned;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering off;
        }
    }"

cat > "$TMP/troupe.toml" <<TOML
[server]
listen = "127.0.0.1:0"
data_dir = "$TMP/data"
max_queue = 100000
queue_timeout = "60s"
${WORKERS:+workers = $WORKERS}

[[pools]]
name = "canned"
kind = "openai"
base_url = "http://127.0.0.1:$UP_PORT/v1"
models = ["canned"]
max_concurrency = 512
  [[pools.accounts]]
  name = "a"
  api_key = "sk-bench"
  [[pools.accounts]]
  name = "b"
  api_key = "sk-bench"
TOML
RUST_LOG=warn "$BIN" serve --config "$TMP/troupe.toml" > "$TMP/out" 2> "$TMP/err" &
TROUPE_PID=$!
for _ in $(seq 1 100); do grep -q listening "$TMP/out" 2>/dev/null && break; sleep 0.1; done
ADDR="$(sed -n 's/^listening on //p' "$TMP/out" | head -n1)"
[ -n "$ADDR" ] || { echo "gateway did not start:"; cat "$TMP/err"; exit 1; }
for _ in $(seq 1 50); do curl -fs "$ADDR/readyz" >/dev/null && break; sleep 0.1; done

# The same gateway as one replica of a cluster, with a Redis of its own.
REDIS_PORT="$(free_port)"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$TMP" >/dev/null &
REDIS_PID=$!
for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
sed "s|^data_dir = .*|data_dir = \"$TMP/data2\"|" "$TMP/troupe.toml" > "$TMP/cluster.toml"
printf '\n[cluster]\nredis_url = "redis://127.0.0.1:%s/0"\n' "$REDIS_PORT" >> "$TMP/cluster.toml"
RUST_LOG=warn "$BIN" serve --config "$TMP/cluster.toml" > "$TMP/out2" 2> "$TMP/err2" &
CLUSTER_PID=$!
for _ in $(seq 1 100); do grep -q listening "$TMP/out2" 2>/dev/null && break; sleep 0.1; done
ADDR2="$(sed -n 's/^listening on //p' "$TMP/out2" | head -n1)"
[ -n "$ADDR2" ] || { echo "clustered gateway did not start:"; cat "$TMP/err2"; exit 1; }
for _ in $(seq 1 50); do curl -fs "$ADDR2/readyz" | grep -q '"redis":"up"' && break; sleep 0.1; done

cat > "$TMP/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"canned","stream":true,"messages":[{"role":"user","content":"the quick brown fox jumps over the lazy dog"}]}'
LUA
cat > "$TMP/responses.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"canned","stream":true,"input":"the quick brown fox jumps over the lazy dog"}'
LUA
cat > "$TMP/messages.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.body = '{"model":"canned","stream":true,"max_tokens":100,"messages":[{"role":"user","content":"the quick brown fox jumps over the lazy dog"}]}'
LUA

# wrk prints latencies as 123.45us / 1.23ms / 1.02s: in microseconds.
to_us() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000; else if (v ~ /s$/) print n * 1000000; else print n }'; }

measure() { # url threads connections -> "p50_us p99_us rps errors"
    local out p50 p99 rps errs script=post.lua path=/v1/chat/completions
    case $1 in
        responses) script=responses.lua path=/v1/responses ;;
        messages) script=messages.lua path=/v1/messages ;;
    esac
    out="$(${PIN:-} wrk -t"$2" -c"$3" -d"${DURATION}s" --latency -s "$TMP/$script" "$(url_of "$1")$path")"
    p50="$(to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")")"
    p99="$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")"
    rps="$(awk '/^Requests\/sec/ {print $2}' <<<"$out")"
    errs="$(awk '/Non-2xx|Socket errors/ {printf "%s;", $0}' <<<"$out" | tr -s ' ' '_')"
    echo "$p50 $p99 $rps ${errs:-none}"
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# CPU time the host took from this VM, as a share of all CPU time.
steal_ticks() { awk '/^cpu / { print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }
# With one request in flight the chain client → proxy → upstream → proxy →
# client runs one step at a time. On a VM, waking a process on the other
# (idle, halted) CPU costs tens of microseconds, paid twice more by any proxy
# in its own process: so latency is measured with the load tool, the proxy
# and the upstream sharing CPU 0 (the proxy's own cost), and also unpinned.
ALL_CPUS="0-$(( $(nproc) - 1 ))"
pids_of() { # upstream | proxies: the processes (nginx master and workers)
    case $1 in
        upstream) echo "$(cat "$TMP/upstream.pid") $(pgrep -P "$(cat "$TMP/upstream.pid")")" ;;
        proxies) echo "$TROUPE_PID $CLUSTER_PID $REDIS_PID $(cat "$TMP/hop.pid") $(pgrep -P "$(cat "$TMP/hop.pid")")" ;;
    esac
}
pin() { # cpus for the upstream [cpus for the proxies]
    local p
    for p in $(pids_of upstream); do taskset -a -pc "$1" "$p" >/dev/null; done
    for p in $(pids_of proxies); do taskset -a -pc "${2:-$1}" "$p" >/dev/null; done
}
url_of() {
    case $1 in
        direct) echo "http://127.0.0.1:$UP_PORT" ;;
        hop) echo "http://127.0.0.1:$HOP_PORT" ;;
        troupe | responses | messages) echo "$ADDR" ;;
        cluster) echo "$ADDR2" ;;
    esac
}
last() { awk '{print $NF}' <<<"${R[$1]}"; }
# CPU time (user + system, all threads) of a proxy: troupe, or the hop's
# nginx worker.
proxy_pid() {
    case $1 in
        hop) pgrep -P "$(cat "$TMP/hop.pid")" | head -n1 ;;
        cluster) echo "$CLUSTER_PID" ;;
        *) echo "$TROUPE_PID" ;;
    esac
}
# The clustered gateway's CPU time includes its Redis's.
cpu_of() { if [ "$1" = cluster ]; then echo $(( $(cpu_ticks "$CLUSTER_PID") + $(cpu_ticks "$REDIS_PID") )); else cpu_ticks "$(proxy_pid "$1")"; fi; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
us_per_request() { # ticks before, ticks after, req/s
    awk -v a="$1" -v b="$2" -v r="$3" -v d="$DURATION" -v hz="$(getconf CLK_TCK)" 'BEGIN{ if (r > 0) print (b-a)*1000000/hz/(r*d); else print 0 }'
}
diff_last() { awk -v a="$(last "$1")" -v b="$(last "$2")" 'BEGIN{print a-b}'; }

echo "troupe benchmark: $(nproc) cores, $ROUNDS rounds of ${DURATION}s per measurement, $(date -u +%FT%TZ)"
# Warm up connections and caches.
wrk -t1 -c4 -d1s -s "$TMP/post.lua" "$ADDR/v1/chat/completions" >/dev/null
wrk -t1 -c4 -d1s -s "$TMP/responses.lua" "$ADDR/v1/responses" >/dev/null
wrk -t1 -c4 -d1s -s "$TMP/messages.lua" "$ADDR/v1/messages" >/dev/null
wrk -t1 -c4 -d1s -s "$TMP/post.lua" "http://127.0.0.1:$HOP_PORT/v1/chat/completions" >/dev/null
wrk -t1 -c4 -d1s -s "$TMP/post.lua" "$ADDR2/v1/chat/completions" >/dev/null

read -r steal0 total0 <<<"$(steal_ticks)"
ERRORS=""
declare -A R
note_errors() { [ "$2" = none ] || ERRORS+="$1: $2 "; }
for round in $(seq 1 "$ROUNDS"); do
    pin 0
    for t in direct hop troupe responses messages cluster; do
        read -r p50 p99 _ errs <<<"$(PIN="taskset -c 0" measure "$t" 1 1)"
        R[$t.p50]+="$p50 "; R[$t.p99]+="$p99 "; note_errors "$t c1 pinned" "$errs"
    done
    # Proxy on CPU 1, load tool and upstream on CPU 0: every step of the
    # chain crosses CPUs, which on a VM costs a wake-up of the other vCPU.
    if [ "$(nproc)" -gt 1 ]; then
        pin 0 1
        for t in hop troupe; do
            read -r p50 _ _ errs <<<"$(PIN="taskset -c 0" measure "$t" 1 1)"
            R[$t.s50]+="$p50 "; note_errors "$t c1 split" "$errs"
        done
    fi
    pin "$ALL_CPUS"
    for t in direct hop troupe; do
        read -r p50 p99 _ errs <<<"$(measure "$t" 1 1)"
        R[$t.u50]+="$p50 "; R[$t.u99]+="$p99 "; note_errors "$t c1" "$errs"
    done
    for t in direct hop troupe responses messages cluster; do
        [ "$t" = direct ] || cpu0="$(cpu_of "$t")"
        read -r _ _ rps errs <<<"$(measure "$t" 2 "$CONNECTIONS")"
        R[$t.rps]+="$rps "; note_errors "$t c$CONNECTIONS" "$errs"
        # CPU time per request: steadier than req/s on a shared VM.
        [ "$t" = direct ] || R[$t.cpu]+="$(us_per_request "$cpu0" "$(cpu_of "$t")" "$rps") "
    done
    # This round's figures, from measurements seconds apart.
    R[share]+="$(awk -v a="$(last troupe.rps)" -v b="$(last hop.rps)" 'BEGIN{print 100*a/b}') "
    for k in 50 99; do
        R[add$k]+="$(diff_last troupe.p$k direct.p$k) "; R[hadd$k]+="$(diff_last hop.p$k direct.p$k) "
        R[uadd$k]+="$(diff_last troupe.u$k direct.u$k) "; R[huadd$k]+="$(diff_last hop.u$k direct.u$k) "
        R[radd$k]+="$(diff_last responses.p$k direct.p$k) "; R[madd$k]+="$(diff_last messages.p$k direct.p$k) "
        R[cadd$k]+="$(diff_last cluster.p$k troupe.p$k) "
    done
    printf '  round %d: one in flight, added p50 %4.0f us (unpinned %4.0f us); troupe %6.0f req/s = %3.0f%% of the hop (%6.0f req/s)\n' \
        "$round" "$(last add50)" "$(last uadd50)" "$(last troupe.rps)" "$(last share)" "$(last hop.rps)"
done
read -r steal1 total1 <<<"$(steal_ticks)"
med() { tr ' ' '\n' <<<"${R[$1]}" | grep . | median; }
span() { tr ' ' '\n' <<<"${R[$1]}" | grep . | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f to %.0f", lo, hi }'; }

echo
echo "medians over $ROUNDS rounds"
echo "one request in flight (wrk -t1 -c1), streamed answer of 10 chunks, all on CPU 0:"
printf '  %-10s p50 %6.0f us   p99 %6.0f us\n' direct "$(med direct.p50)" "$(med direct.p99)"
printf '  %-10s p50 %6.0f us   p99 %6.0f us   added p50 %5.0f us, p99 %5.0f us\n' "nginx hop" "$(med hop.p50)" "$(med hop.p99)" "$(med hadd50)" "$(med hadd99)"
printf '  %-10s p50 %6.0f us   p99 %6.0f us   added p50 %5.0f us, p99 %5.0f us   (budget: 150 us, 1000 us)\n' troupe "$(med troupe.p50)" "$(med troupe.p99)" "$(med add50)" "$(med add99)"
# The Responses path's added p50 against Chat Completions', as measured
# (its budget is 10 % over it).
ROVER="$(awk -v r="$(med radd50)" -v t="$(med add50)" 'BEGIN { if (t > 0) printf "%+.0f %%", (r / t - 1) * 100; else printf "n/a" }')"
printf '  %-10s p50 %6.0f us   p99 %6.0f us   added p50 %5.0f us, p99 %5.0f us   (/v1/responses: %s over troupe, budget +10 %%)\n' responses "$(med responses.p50)" "$(med responses.p99)" "$(med radd50)" "$(med radd99)" "$ROVER"
printf '  %-10s p50 %6.0f us   p99 %6.0f us   added p50 %5.0f us, p99 %5.0f us   (/v1/messages, translated likewise)\n' messages "$(med messages.p50)" "$(med messages.p99)" "$(med madd50)" "$(med madd99)"
printf '  %-10s p50 %6.0f us   p99 %6.0f us   over troupe: p50 %+5.0f us, p99 %+5.0f us   ([cluster] with Redis)\n' cluster "$(med cluster.p50)" "$(med cluster.p99)" "$(med cadd50)" "$(med cadd99)"
echo "the same, unpinned:"
printf '  %-10s p50 %6.0f us   p99 %6.0f us\n' direct "$(med direct.u50)" "$(med direct.u99)"
printf '  %-10s p50 %6.0f us   p99 %6.0f us   added p50 %5.0f us, p99 %5.0f us\n' "nginx hop" "$(med hop.u50)" "$(med hop.u99)" "$(med huadd50)" "$(med huadd99)"
printf '  %-10s p50 %6.0f us   p99 %6.0f us   added p50 %5.0f us, p99 %5.0f us\n' troupe "$(med troupe.u50)" "$(med troupe.u99)" "$(med uadd50)" "$(med uadd99)"
if [ "$(nproc)" -gt 1 ]; then
    echo "the proxy alone on CPU 1 (load tool and upstream on CPU 0):"
    printf '  %-10s p50 %6.0f us\n' "nginx hop" "$(med hop.s50)"
    printf '  %-10s p50 %6.0f us\n' troupe "$(med troupe.s50)"
fi
echo "under concurrency (wrk -t2 -c$CONNECTIONS):"
printf '  %-10s %7.0f req/s\n' direct "$(med direct.rps)"
printf '  %-10s %7.0f req/s                                         %3.0f us of CPU per request\n' "nginx hop" "$(med hop.rps)" "$(med hop.cpu)"
printf '  %-10s %7.0f req/s   %3.0f%% of the nginx hop   (budget: 50%%)   %3.0f us of CPU per request\n' troupe "$(med troupe.rps)" "$(med share)" "$(med troupe.cpu)"
printf '  %-10s %7.0f req/s                                         %3.0f us of CPU per request\n' responses "$(med responses.rps)" "$(med responses.cpu)"
printf '  %-10s %7.0f req/s                                         %3.0f us of CPU per request\n' messages "$(med messages.rps)" "$(med messages.cpu)"
printf '  %-10s %7.0f req/s                                         %3.0f us of CPU per request (troupe and its Redis)\n' cluster "$(med cluster.rps)" "$(med cluster.cpu)"
echo "  by round: troupe's share $(span share) %; added p50 on CPU 0 $(span add50) us, unpinned $(span uadd50) us"
echo
echo "errors: ${ERRORS:-none}"
echo "CPU time stolen by the host during the run: $(awk -v a="$steal0" -v b="$steal1" -v c="$total0" -v d="$total1" 'BEGIN{ if (d > c) printf "%.0f%%", 100*(b-a)/(d-c); else print "?" }')"
echo "gateway RSS after the run: $(ps -o rss= -p "$TROUPE_PID") KiB"

if [ "$ONLY" = all ]; then
    # Stop this part's gateway and nginx first: they would share the cores.
    cleanup
    trap - EXIT
    echo
    memory_bench
fi
