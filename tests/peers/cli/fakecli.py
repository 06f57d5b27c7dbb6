"""Shared behaviour of the fake command-line chat programs (fake_claude,
fake_codex, fake_gemini): the same options and JSON lines as the real
CLIs, with markers in the prompt that select misbehaviour.

Markers (anywhere in the prompt):
  [slow]      answer in many small pieces, FAKE_CLI_DELAY seconds apart
              (default 0.2), for disconnect tests
  [stubborn]  like [slow], but ignore SIGTERM and start a grandchild that
              ignores it too, to prove the whole process group is killed
  [crash]     write to stderr and exit 2 without answering
  [error]     answer with the CLI's own error line
  [stderr]    write noise to stderr while answering normally
  [long]      print one line of 2 MiB

A prompt (with claude's --system-prompt before it) holding a
`troupe-say` directive gets the scripted answer of the peers' shared model
(`tests/peers/_common.py`, `scripted_answer`), one output event per piece
of the directive's size, instead of the usual answer.

`fakecli.py --plain PROMPT` is a plain-text program for the `custom`
preset: it prints the answer (the scripted one, or `plain reply: <last
line of the prompt>`) as text, piece by piece, flushed after each.

State lives in FAKE_CLI_STATE (a directory): one transcript per session
(`<session>.json`, the prompts in order), `calls.jsonl` (every argv) and
`pids/` (the pid of every process started, grandchildren included).
FAKE_CLI_VERSION_FAIL=1 makes `--version` fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import pieces as split_pieces, scripted_answer  # noqa: E402


def state_dir() -> Path | None:
    d = os.environ.get("FAKE_CLI_STATE")
    if not d:
        return None
    p = Path(d)
    (p / "pids").mkdir(parents=True, exist_ok=True)
    return p


def note_pid(pid: int) -> None:
    d = state_dir()
    if d:
        (d / "pids" / str(pid)).write_text(str(pid))


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def sleeper() -> None:
    """A grandchild that ignores SIGTERM and would live for a minute."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    note_pid(os.getpid())
    time.sleep(60)


def parse(argv: list[str], flags_with_value: set[str], bool_flags: set[str]) -> tuple[dict, list[str]]:
    opts: dict = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in flags_with_value:
            if i + 1 >= len(argv):
                sys.stderr.write(f"error: option {a} needs a value\n")
                sys.exit(64)
            opts[a] = argv[i + 1]
            i += 2
        elif a in bool_flags:
            opts[a] = True
            i += 1
        elif a.startswith("--"):
            sys.stderr.write(f"error: unknown option {a}\n")
            sys.exit(64)
        else:
            rest.append(a)
            i += 1
    return opts, rest


def turn(name: str, prompt: str, model: str | None, resume: str | None) -> tuple[str, int, list[str]]:
    """Records the prompt in the session's transcript; returns the session
    id, the turn number and the answer's pieces."""
    d = state_dir()
    sid = resume or str(uuid.uuid4())
    prompts: list[str] = []
    if d:
        f = d / f"{sid}.json"
        if resume:
            if not f.exists():
                sys.stderr.write(f"error: no conversation found with session id {resume}\n")
                sys.exit(1)
            prompts = json.loads(f.read_text())
        prompts.append(prompt)
        f.write_text(json.dumps(prompts))
    n = len(prompts) or 1
    if "[crash]" in prompt:
        sys.stderr.write("fatal: simulated crash\n")
        sys.stderr.flush()
        sys.exit(2)
    if "[stderr]" in prompt:
        sys.stderr.write("warning: noise on stderr that is not the answer\n")
        sys.stderr.flush()
    if "[long]" in prompt:
        sys.stdout.write("x" * (2 * 1024 * 1024) + "\n")
        sys.stdout.flush()
        sys.exit(0)
    last = prompt.strip().splitlines()[-1] if prompt.strip() else ""
    pieces = [f"Hello from fake {name}. ", f"turn={n} session={sid} model={model or 'default'}. ", f"You said: {last}"]
    if "[slow]" in prompt or "[stubborn]" in prompt:
        pieces = pieces + [f" tick{i}" for i in range(200)]
    return sid, n, pieces


def scripted(prompt: str, system: str | None = None) -> list[str] | None:
    """The pieces of the scripted answer to `prompt` (after `system`, when
    the CLI got the system prompt apart), or None without a directive."""
    text = f"{system}\n\n{prompt}" if system else prompt
    found = scripted_answer(text)
    return split_pieces(*found) if found is not None else None


def plain(argv: list[str]) -> None:
    """`--plain PROMPT`: the answer as plain text."""
    start(argv)
    if len(argv) != 2:
        sys.stderr.write("error: usage: fakecli.py --plain PROMPT\n")
        sys.exit(64)
    prompt = argv[1]
    turn("plain", prompt, None, None)
    last = prompt.strip().splitlines()[-1] if prompt.strip() else ""
    out = scripted(prompt) or [f"plain reply: {last}"]
    for piece in out:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()


def delay(prompt: str) -> None:
    if "[slow]" in prompt or "[stubborn]" in prompt:
        time.sleep(float(os.environ.get("FAKE_CLI_DELAY", "0.2")))


def start(argv: list[str]) -> None:
    """Common start: `--version`, the call log, the pid note."""
    if argv == ["--version"]:
        if os.environ.get("FAKE_CLI_VERSION_FAIL") == "1":
            sys.stderr.write("fatal: simulated broken installation\n")
            sys.exit(3)
        print("1.0.0 (fake)")
        sys.exit(0)
    if len(argv) == 2 and argv[0] == "--sleeper":
        sleeper()
        sys.exit(0)
    note_pid(os.getpid())
    d = state_dir()
    if d:
        with open(d / "calls.jsonl", "a") as f:
            f.write(json.dumps({"argv": argv, "pid": os.getpid()}) + "\n")


def maybe_stubborn(prompt: str) -> None:
    if "[stubborn]" in prompt:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        subprocess.Popen([sys.executable, os.path.abspath(__file__), "--sleeper", "x"])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--sleeper"]:
        sleeper()
    elif sys.argv[1:2] == ["--plain"]:
        plain(sys.argv[1:])
