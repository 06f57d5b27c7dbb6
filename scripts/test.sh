#!/usr/bin/env bash
# Full local check: formatting, lints, Rust unit tests, then the black-box
# Python tests against the built binary. Works on a fresh machine with a Rust
# toolchain and python3; the Python deps go into .venv.
#
#   scripts/test.sh              # everything
#   scripts/test.sh -k tools     # extra args go to pytest
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --all-targets -- -D warnings

step "cargo build"
cargo build

step "cargo test"
cargo test

VENV="$ROOT/.venv"
REQS="$ROOT/tests/requirements.txt"
STAMP="$VENV/.requirements.stamp"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    step "creating $VENV"
    "$PYTHON" -m venv "$VENV" || {
        echo "error: '$PYTHON -m venv' failed (on Debian: apt-get install python3-venv)" >&2
        exit 1
    }
fi
if [ ! -f "$STAMP" ] || [ "$REQS" -nt "$STAMP" ]; then
    step "installing tests/requirements.txt"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQS"
    touch "$STAMP"
fi

# The Vercel AI SDK client of tests/test_ai_sdk.py: its pinned npm packages,
# with the machine's Node.js and npm (without npm that test is skipped).
AI_SDK="$ROOT/tests/clients/ai_sdk"
if ! command -v npm >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    step "installing nodejs and npm (for the AI SDK and Claude Code clients)"
    apt-get update -qq >/dev/null && apt-get install -y -qq nodejs npm >/dev/null \
        || echo "could not install npm"
fi
if command -v npm >/dev/null 2>&1; then
    if [ ! -f "$AI_SDK/node_modules/.package-lock.json" ] || [ "$AI_SDK/package-lock.json" -nt "$AI_SDK/node_modules/.package-lock.json" ]; then
        step "installing tests/clients/ai_sdk (npm ci)"
        (cd "$AI_SDK" && npm ci --no-audit --no-fund --loglevel=error)
    fi
    # Codex CLI, a real Responses API client (tests/test_codex.py); the
    # package ships its native binary.
    CODEX="$ROOT/tests/clients/codex"
    if [ ! -f "$CODEX/node_modules/.package-lock.json" ] || [ "$CODEX/package-lock.json" -nt "$CODEX/node_modules/.package-lock.json" ]; then
        step "installing tests/clients/codex (npm ci)"
        (cd "$CODEX" && npm ci --no-audit --no-fund --loglevel=error)
    fi
else
    echo "npm is not installed: tests/test_ai_sdk.py and tests/test_codex.py will be skipped"
fi

step "container files (hadolint, yamllint; no Docker engine needed)"
"$VENV/bin/hadolint" Dockerfile
"$VENV/bin/yamllint" -d "{extends: default, rules: {line-length: {max: 120}, document-start: disable, truthy: disable}}" docker-compose.yml

# The dashboard test drives Debian's Chromium; install it where we can.
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        step "installing chromium (for the dashboard test)"
        apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null \
            || echo "could not install chromium: the dashboard test will be skipped"
    else
        echo "chromium is not installed and this is not root: the dashboard test will be skipped"
    fi
fi

# The cluster tests start their own redis-server (never the machine's).
if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        step "installing redis-server (for the cluster tests)"
        apt-get update -qq >/dev/null && apt-get install -y -qq redis-server >/dev/null \
            || { echo "error: could not install redis-server" >&2; exit 1; }
    else
        echo "error: redis-server is missing and this is not root: apt-get install redis-server" >&2
        exit 1
    fi
fi

step "pytest"
export TROUPE_BIN="${TROUPE_BIN:-$ROOT/target/debug/troupe}"
"$VENV/bin/python" -m pytest -q tests "$@"
