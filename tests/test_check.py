"""`troupe check` and `troupe serve` on good and bad configs."""

from __future__ import annotations

import subprocess

import support
from support import gateway_config, run_troupe, write_config

PEER_URL = "http://127.0.0.1:9"  # never contacted by `check`


def test_check_good_config(tmp_path):
    path = write_config(tmp_path, gateway_config(tmp_path, PEER_URL))
    r = run_troupe(["check", "--config", str(path)])
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    out = r.stdout
    for word in ("demo", "peer", "gpt-4o-mini", "peer-alias"):
        assert word in out, f"`troupe check` output does not mention {word!r}:\n{out}"


def test_check_unknown_key_names_dotted_key(tmp_path):
    text = gateway_config(tmp_path, PEER_URL).replace('listen = "127.0.0.1:0"', 'lisen = "127.0.0.1:0"')
    assert "lisen" in text
    path = write_config(tmp_path, text)
    r = run_troupe(["check", "--config", str(path)])
    assert r.returncode != 0, f"bad config accepted:\n{r.stdout}"
    assert "server.lisen" in r.stdout + r.stderr, f"error does not name server.lisen:\n{r.stdout}\n{r.stderr}"


def test_check_wrong_type_names_key(tmp_path):
    text = gateway_config(tmp_path, PEER_URL).replace("max_concurrency = 4", 'max_concurrency = "four"', 1)
    path = write_config(tmp_path, text)
    r = run_troupe(["check", "--config", str(path)])
    assert r.returncode != 0, f"bad config accepted:\n{r.stdout}"
    assert "max_concurrency" in r.stdout + r.stderr, f"{r.stdout}\n{r.stderr}"


def test_check_missing_file(tmp_path):
    r = run_troupe(["check", "--config", str(tmp_path / "missing.toml")])
    assert r.returncode != 0
    assert (r.stdout + r.stderr).strip(), "no error message for a missing config file"


def test_serve_refuses_bad_config(tmp_path):
    text = gateway_config(tmp_path, PEER_URL).replace('listen = "127.0.0.1:0"', 'lisen = "127.0.0.1:0"')
    path = write_config(tmp_path, text)
    try:
        r = run_troupe(["serve", "--config", str(path)], timeout=20)
    except subprocess.TimeoutExpired:
        raise AssertionError("`troupe serve` with a bad config kept running instead of exiting") from None
    assert r.returncode != 0
    assert "server.lisen" in r.stdout + r.stderr


def test_binary_exists():
    assert support.troupe_bin().exists(), f"{support.troupe_bin()} missing: run `cargo build` or set TROUPE_BIN"


def test_shipped_configs_are_valid():
    """Every file under config/ passes `troupe check` (with dummy secrets)."""
    import os

    configs = sorted((support.REPO_ROOT / "config").rglob("*.toml"))
    assert len(configs) >= 3, configs
    env = {k: "dummy-secret" for k in ("OPENAI_KEY_1", "OPENAI_KEY_2", "ANTHROPIC_KEY_1", "TROUPE_CLIENT_KEY", "ONDEMAND_KEY_1", "ONDEMAND_KEY_2", "LANGFAST_ANON_KEY", "LANGGRAPH_API_KEY", "LINGMA_SESSION_BUNDLE")}
    for path in configs:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            r = support.run_troupe(["check", "--config", str(path)])
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        assert r.returncode == 0, f"{path}: {r.stderr}"
        assert "dummy-secret" not in r.stdout + r.stderr


def test_probe_wants_a_2xx_within_its_timeout(gateway_factory):
    """`troupe probe` (the container health check) exits 0 on a 2xx and
    non-zero on another status or no answer, naming the URL."""
    g = gateway_factory()
    ok = run_troupe(["probe", "--url", g.url + "/healthz"])
    assert ok.returncode == 0, f"{ok.stdout}\n{ok.stderr}"
    missing = run_troupe(["probe", "--url", g.url + "/no-such-page"])
    assert missing.returncode != 0 and "404" in missing.stderr, missing.stderr
    closed = run_troupe(["probe", "--url", "http://127.0.0.1:9/healthz"])
    assert closed.returncode != 0 and "127.0.0.1:9" in closed.stderr, closed.stderr
