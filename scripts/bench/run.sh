#!/usr/bin/env bash
# Throughput and latency of the gateway, printed as figures (never a test).
#
#   scripts/bench/run.sh                 # N=20000 requests, C=64 concurrent
#   N=5000 C=16 scripts/bench/run.sh
#
# Measures, on loopback only:
#   1. demo pool, non-streaming and streaming (the gateway with no upstream I/O);
#   2. an `openai` pool in front of nginx serving a canned SSE answer, against
#      nginx directly: the difference is troupe's own overhead per request.
# Needs `hey` (apt-get install hey); nginx (apt-get install nginx-light) for 2.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
N="${N:-20000}"
C="${C:-64}"

command -v hey >/dev/null || { echo "hey is not installed: apt-get install hey" >&2; exit 1; }
cargo build --release --quiet
BIN="$PWD/target/release/troupe"
TMP="$(mktemp -d)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

CHUNK='{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hello "},"finish_reason":null}]}'
FINAL='{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":8,"total_tokens":13}}'

HAVE_NGINX=0
if command -v nginx >/dev/null; then
    HAVE_NGINX=1
    NGINX_PORT="$(free_port)"
    {
        printf 'data: %s\n\n' "$CHUNK" "$CHUNK" "$CHUNK" "$CHUNK" "$CHUNK" "$CHUNK" "$CHUNK" "$CHUNK"
        printf 'data: %s\n\ndata: [DONE]\n\n' "$FINAL"
    } > "$TMP/answer.sse"
    cat > "$TMP/nginx.conf" <<NGX
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/nginx.err;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP;
    keepalive_requests 100000;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location /v1/chat/completions {
            default_type text/event-stream;
            root $TMP;
            try_files /answer.sse =404;
            error_page 405 =200 /answer.sse;
        }
        location = /answer.sse { root $TMP; default_type text/event-stream; }
    }
}
NGX
    nginx -c "$TMP/nginx.conf"
fi

cat > "$TMP/troupe.toml" <<TOML
[server]
listen = "127.0.0.1:0"
data_dir = "$TMP/data"
max_queue = 100000
queue_timeout = "60s"

[[pools]]
name = "demo"
kind = "demo"
models = ["demo"]
sessions = 4
max_concurrency = 256
chunk_delay = "0ms"
TOML
if [ "$HAVE_NGINX" = 1 ]; then
    cat >> "$TMP/troupe.toml" <<TOML

[[pools]]
name = "nginx"
kind = "openai"
base_url = "http://127.0.0.1:$NGINX_PORT/v1"
models = ["canned"]
max_concurrency = 256
  [[pools.accounts]]
  name = "a"
  api_key = "sk-bench"
  [[pools.accounts]]
  name = "b"
  api_key = "sk-bench"
TOML
fi

RUST_LOG=warn "$BIN" serve --config "$TMP/troupe.toml" > "$TMP/out" 2> "$TMP/err" &
PIDS+=($!)
for _ in $(seq 1 100); do grep -q listening "$TMP/out" 2>/dev/null && break; sleep 0.1; done
ADDR="$(sed -n 's/^listening on //p' "$TMP/out" | head -n1)"
[ -n "$ADDR" ] || { echo "gateway did not start:"; cat "$TMP/err"; exit 1; }
for _ in $(seq 1 50); do curl -fs "$ADDR/readyz" >/dev/null && break; sleep 0.1; done

body() { # model stream
    printf '{"model":"%s","stream":%s,"messages":[{"role":"user","content":"the quick brown fox jumps over the lazy dog"}]}' "$1" "$2"
}

run() { # label url bodyfile
    local out
    out="$(hey -n "$N" -c "$C" -m POST -T application/json -D "$3" "$2")"
    local rps p50 p99 errs
    rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")"
    p50="$(awk '/ 50% in/ {print $3}' <<<"$out")"
    p99="$(awk '/ 99% in/ {print $3}' <<<"$out")"
    errs="$(awk '/Status code distribution/ {f=1; next} f && /\[/ {printf "%s ", $0}' <<<"$out" | tr -s " \t" " ")"
    printf '%-34s %10s req/s   p50 %8s s   p99 %8s s   %s\n' "$1" "$rps" "$p50" "$p99" "$errs"
}

echo "troupe benchmark: N=$N C=$C, $(nproc) cores, $(date -u +%F)"
body demo false > "$TMP/demo.json";   run "demo, non-stream" "$ADDR/v1/chat/completions" "$TMP/demo.json"
body demo true > "$TMP/demo-s.json";  run "demo, stream" "$ADDR/v1/chat/completions" "$TMP/demo-s.json"
if [ "$HAVE_NGINX" = 1 ]; then
    body canned true > "$TMP/canned-s.json"
    body canned false > "$TMP/canned.json"
    run "nginx direct (canned SSE)" "http://127.0.0.1:$NGINX_PORT/v1/chat/completions" "$TMP/canned-s.json"
    run "troupe -> nginx, stream" "$ADDR/v1/chat/completions" "$TMP/canned-s.json"
    run "troupe -> nginx, non-stream" "$ADDR/v1/chat/completions" "$TMP/canned.json"
fi
echo "gateway RSS after the run: $(ps -o rss= -p "${PIDS[0]}") KiB"
