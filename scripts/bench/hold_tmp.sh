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
#
# first with one request in flight (added latency p50/p99), then under
# concurrency (requests/s, and troupe as a share of the nginx hop).
#
# Both proxies get one worker (nginx `worker_processes 1`, troupe
# `workers = 1`). A shared VM's host takes CPU time away ("steal") in bursts,
# so the three targets are measured in turn, ROUNDS times, each round's
# share of the hop is taken from measurements seconds apart, and medians are
# printed, with the steal seen during the run.
#
#   scripts/bench/run.sh                    # 5 rounds of 3 s, 32 connections
#   ROUNDS=9 DURATION=5 CONNECTIONS=64 scripts/bench/run.sh
#
# Needs wrk and nginx (apt-get install wrk nginx-light).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
DURATION="${DURATION:-3}"
ROUNDS="${ROUNDS:-5}"
CONNECTIONS="${CONNECTIONS:-32}"

for tool in wrk nginx; do
    command -v "$tool" >/dev/null || { echo "$tool is not installed: apt-get install wrk nginx-light" >&2; exit 1; }
done
true
BIN="$PWD/target/release/troupe"
TMP="$(mktemp -d)"
chmod 755 "$TMP" # nginx workers run as another user when started by root
TROUPE_PID=""
cleanup() {
    [ -n "$TROUPE_PID" ] && kill "$TROUPE_PID" 2>/dev/null || true
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
workers = ${WORKERS:-1}

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

cat > "$TMP/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"canned","stream":true,"messages":[{"role":"user","content":"the quick brown fox jumps over the lazy dog"}]}'
LUA

# wrk prints latencies as 123.45us / 1.23ms / 1.02s: in microseconds.
to_us() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000; else if (v ~ /s$/) print n * 1000000; else print n }'; }

measure() { # url threads connections -> "p50_us p99_us rps errors"
    local out p50 p99 rps errs
    out="$(${PIN:-} wrk -t"$2" -c"$3" -d"${DURATION}s" --latency -s "$TMP/post.lua" "$1/v1/chat/completions")"
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
pin() {
    local p
    for p in "$TROUPE_PID" $(cat "$TMP/upstream.pid" "$TMP/hop.pid") $(pgrep -P "$(cat "$TMP/upstream.pid")") $(pgrep -P "$(cat "$TMP/hop.pid")"); do
        taskset -a -pc "$1" "$p" >/dev/null
    done
}
url_of() {
    case $1 in
        direct) echo "http://127.0.0.1:$UP_PORT" ;;
        hop) echo "http://127.0.0.1:$HOP_PORT" ;;
        troupe) echo "$ADDR" ;;
    esac
}
last() { awk '{print $NF}' <<<"${R[$1]}"; }
diff_last() { awk -v a="$(last "$1")" -v b="$(last "$2")" 'BEGIN{print a-b}'; }


echo "ADDR=$ADDR UP=http://127.0.0.1:$UP_PORT HOP=http://127.0.0.1:$HOP_PORT PID=$TROUPE_PID TMP=$TMP" > /tmp/benv
sleep "${HOLD:-600}"
