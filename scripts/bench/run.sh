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
#   scripts/bench/run.sh                    # 5 s per measurement, 32 connections
#   DURATION=10 CONNECTIONS=64 scripts/bench/run.sh
#
# Needs wrk and nginx (apt-get install wrk nginx-light).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
DURATION="${DURATION:-5}"
CONNECTIONS="${CONNECTIONS:-32}"

for tool in wrk nginx; do
    command -v "$tool" >/dev/null || { echo "$tool is not installed: apt-get install wrk nginx-light" >&2; exit 1; }
done
cargo build --release --quiet
BIN="$PWD/target/release/troupe"
TMP="$(mktemp -d)"
TROUPE_PID=""
cleanup() {
    [ -n "$TROUPE_PID" ] && kill "$TROUPE_PID" 2>/dev/null || true
    [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true
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

cat > "$TMP/nginx.conf" <<NGX
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/nginx.err;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP;
    proxy_temp_path $TMP;
    keepalive_requests 1000000;
    upstream canned { server 127.0.0.1:$UP_PORT; keepalive 256; }
    server {
        listen 127.0.0.1:$UP_PORT;
        location /v1/chat/completions {
            default_type text/event-stream;
            root $TMP;
            try_files /answer.sse =404;
            error_page 405 =200 /answer.sse;
        }
        location = /answer.sse { root $TMP; default_type text/event-stream; }
    }
    server {
        listen 127.0.0.1:$HOP_PORT;
        location / {
            proxy_pass http://canned;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
NGX
nginx -c "$TMP/nginx.conf"

cat > "$TMP/troupe.toml" <<TOML
[server]
listen = "127.0.0.1:0"
data_dir = "$TMP/data"
max_queue = 100000
queue_timeout = "60s"

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
    out="$(wrk -t"$2" -c"$3" -d"${DURATION}s" --latency -s "$TMP/post.lua" "$1/v1/chat/completions")"
    p50="$(to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")")"
    p99="$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")"
    rps="$(awk '/^Requests\/sec/ {print $2}' <<<"$out")"
    errs="$(awk '/Non-2xx|Socket errors/ {printf "%s ", $0}' <<<"$out")"
    echo "$p50 $p99 $rps ${errs:-none}"
}

echo "troupe benchmark: $(nproc) cores, ${DURATION}s per measurement, $(date -u +%FT%TZ)"
# Warm up connections and caches.
wrk -t1 -c4 -d1s -s "$TMP/post.lua" "$ADDR/v1/chat/completions" >/dev/null
wrk -t1 -c4 -d1s -s "$TMP/post.lua" "http://127.0.0.1:$HOP_PORT/v1/chat/completions" >/dev/null

echo
echo "one request in flight (wrk -t1 -c1), streamed answer of 10 chunks:"
read -r d50 d99 drps _ <<<"$(measure "http://127.0.0.1:$UP_PORT" 1 1)"
read -r n50 n99 nrps _ <<<"$(measure "http://127.0.0.1:$HOP_PORT" 1 1)"
read -r t50 t99 trps terr <<<"$(measure "$ADDR" 1 1)"
printf '  %-12s p50 %8.0f us   p99 %8.0f us   %9.0f req/s\n' direct "$d50" "$d99" "$drps"
printf '  %-12s p50 %8.0f us   p99 %8.0f us   %9.0f req/s   added p50 %5.0f us, p99 %5.0f us\n' "nginx hop" "$n50" "$n99" "$nrps" "$(awk -v a="$n50" -v b="$d50" 'BEGIN{print a-b}')" "$(awk -v a="$n99" -v b="$d99" 'BEGIN{print a-b}')"
printf '  %-12s p50 %8.0f us   p99 %8.0f us   %9.0f req/s   added p50 %5.0f us, p99 %5.0f us   errors: %s\n' troupe "$t50" "$t99" "$trps" "$(awk -v a="$t50" -v b="$d50" 'BEGIN{print a-b}')" "$(awk -v a="$t99" -v b="$d99" 'BEGIN{print a-b}')" "$terr"

echo
echo "under concurrency (wrk -t2 -c$CONNECTIONS):"
read -r _ _ drps _ <<<"$(measure "http://127.0.0.1:$UP_PORT" 2 "$CONNECTIONS")"
read -r _ _ nrps _ <<<"$(measure "http://127.0.0.1:$HOP_PORT" 2 "$CONNECTIONS")"
read -r t50 t99 trps terr <<<"$(measure "$ADDR" 2 "$CONNECTIONS")"
printf '  %-12s %9.0f req/s\n' direct "$drps"
printf '  %-12s %9.0f req/s   (%3.0f%% of direct)\n' "nginx hop" "$nrps" "$(awk -v a="$nrps" -v b="$drps" 'BEGIN{print 100*a/b}')"
printf '  %-12s %9.0f req/s   (%3.0f%% of direct, %3.0f%% of the nginx hop)   p50 %.0f us, p99 %.0f us   errors: %s\n' troupe "$trps" "$(awk -v a="$trps" -v b="$drps" 'BEGIN{print 100*a/b}')" "$(awk -v a="$trps" -v b="$nrps" 'BEGIN{print 100*a/b}')" "$t50" "$t99" "$terr"
echo
echo "gateway RSS after the run: $(ps -o rss= -p "$TROUPE_PID") KiB"
