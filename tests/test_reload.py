"""Hot reload: pools added, removed and changed without a restart, under
load, by the admin API, by SIGHUP and by editing the file; an invalid file is
rejected and the running configuration stays."""

from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

import support

ADMIN = "reload-admin"


def config(tmp: Path, pools: str, extra_server: str = "") -> str:
    return f"""
[server]
listen = "127.0.0.1:0"
api_keys = ["{support.GATEWAY_KEY}"]
admin_key = "{ADMIN}"
data_dir = {support.toml_str(str(tmp / "data"))}
{extra_server}
{pools}
"""


def demo_pool(name: str, models: str, sessions: int = 2, delay: str = "5ms") -> str:
    return f"""
[[pools]]
name = "{name}"
kind = "demo"
models = [{models}]
sessions = {sessions}
max_concurrency = 4
chunk_delay = "{delay}"
"""


def admin(gw) -> httpx.Client:
    return httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {ADMIN}"}, trust_env=False, timeout=15)


def sessions(gw) -> dict[str, list[dict]]:
    with admin(gw) as c:
        out: dict[str, list[dict]] = {}
        for s in c.get("/admin/sessions").json()["sessions"]:
            out.setdefault(s["pool"], []).append(s)
        return out


def models(gw) -> set[str]:
    with gw.http() as c:
        return {m["id"] for m in c.get("/v1/models").json()["data"]}


def wait_for(pred, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def ask(c: httpx.Client, model: str, text: str, stream: bool) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
    if not stream:
        r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]
    with c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200, r.read()
        text, done = "", False
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                continue
            chunk = json.loads(data)
            assert "error" not in chunk, chunk
            for ch in chunk["choices"]:
                text += ch["delta"].get("content") or ""
        assert done, "stream ended without [DONE]"
        return text


def test_reload_under_load_loses_no_request(tmp_path):
    path = tmp_path / "troupe.toml"
    first = config(tmp_path, demo_pool("main", '"demo"') + demo_pool("old", '"old-model"') + demo_pool("steady", '"steady"'))
    gw = support.start_gateway(tmp_path, first)
    try:
        assert gw.wait_ready(10)
        steady_ids = sorted(s["id"] for s in sessions(gw)["steady"])
        main_ids = sorted(s["id"] for s in sessions(gw)["main"])
        results: list[str] = []
        errors: list[str] = []
        stop = threading.Event()

        def worker(n: int) -> None:
            with gw.http() as c:
                for i in range(40):
                    if stop.is_set():
                        return
                    text = f"load {n}-{i}"
                    try:
                        got = ask(c, "demo", text, stream=(i % 2 == 0))
                        if got != support.DEMO_PREFIX + text:
                            errors.append(f"{text}: {got!r}")
                        results.append(text)
                    except Exception as e:  # noqa: BLE001 - every failure is reported
                        errors.append(f"{text}: {e!r}")

        with ThreadPoolExecutor(max_workers=6) as pool:
            futures = [pool.submit(worker, n) for n in range(6)]
            time.sleep(0.5)
            # Replace `main` (more sessions), remove `old`, add `fresh`; `steady` is untouched.
            second = config(
                tmp_path,
                demo_pool("main", '"demo"', sessions=3) + demo_pool("fresh", '"new-model"') + demo_pool("steady", '"steady"'),
            )
            path.write_text(second)
            with admin(gw) as c:
                r = c.post("/admin/reload")
            assert r.status_code == 200, r.text
            changes = r.json()["changes"]
            assert "removed pool old" in changes and "added pool fresh" in changes and "replaced pool main" in changes, changes
            assert "steady" not in changes
            for f in futures:
                f.result(timeout=120)
        stop.set()
        assert not errors, errors[:5]
        assert len(results) == 240
        assert models(gw) == {"demo", "new-model", "steady"}
        with gw.http() as c:
            assert ask(c, "new-model", "hello new", stream=False) == support.DEMO_PREFIX + "hello new"
            assert c.post("/v1/chat/completions", json={"model": "old-model", "messages": [{"role": "user", "content": "x"}]}).status_code == 404
        after = sessions(gw)
        assert sorted(s["id"] for s in after["steady"]) == steady_ids, "an unchanged pool was restarted"
        assert "old" not in after
        assert wait_for(lambda: len(sessions(gw).get("main", [])) == 3)
        assert not set(s["id"] for s in sessions(gw)["main"]) & set(main_ids), "the replaced pool kept old sessions"
        with admin(gw) as c:
            events = c.get("/admin/restarts").json()["events"]
        assert any(e["event"] == "reload" and "added pool fresh" in e["reason"] for e in events), events
    finally:
        gw.cleanup()


def test_invalid_config_is_rejected_and_the_old_one_stays(tmp_path):
    path = tmp_path / "troupe.toml"
    gw = support.start_gateway(tmp_path, config(tmp_path, demo_pool("main", '"demo"')))
    try:
        assert gw.wait_ready(10)
        path.write_text(config(tmp_path, demo_pool("main", '"demo"').replace("sessions = 2", "sessons = 2")))
        with admin(gw) as c:
            r = c.post("/admin/reload")
            assert r.status_code == 400, r.text
            assert "pools[0].sessons" in r.json()["error"]["message"]
            events = c.get("/admin/restarts").json()["events"]
        assert any(e["event"] == "reload_rejected" for e in events), events
        assert models(gw) == {"demo"}
        with gw.http() as c:
            assert ask(c, "demo", "still here", stream=False) == support.DEMO_PREFIX + "still here"
    finally:
        gw.cleanup()


def test_file_change_and_sighup_trigger_reloads(tmp_path):
    path = tmp_path / "troupe.toml"
    gw = support.start_gateway(tmp_path, config(tmp_path, demo_pool("main", '"demo"')))
    try:
        assert gw.wait_ready(10)
        # Editing the file is enough.
        time.sleep(1.1)  # a new modification time even on coarse clocks
        path.write_text(config(tmp_path, demo_pool("main", '"demo"') + demo_pool("b", '"by-file"')))
        assert wait_for(lambda: "by-file" in models(gw), timeout=10), models(gw)
        # SIGHUP re-reads it as well (the watcher is slower than the signal).
        path.write_text(config(tmp_path, demo_pool("main", '"demo"') + demo_pool("c", '"by-signal"')))
        gw.popen.send_signal(signal.SIGHUP)
        assert wait_for(lambda: models(gw) == {"demo", "by-signal"}, timeout=10), models(gw)
        assert gw.alive()
    finally:
        gw.cleanup()


def test_account_changes_keep_the_other_sessions(tmp_path, clean_peer):
    def pool(accounts: list[tuple[str, str]]) -> str:
        out = f"""
[[pools]]
name = "peer"
kind = "openai"
base_url = "{clean_peer.url}/v1"
models = ["gpt-4o-mini"]
"""
        for name, key in accounts:
            out += f'  [[pools.accounts]]\n  name = "{name}"\n  api_key = "{key}"\n'
        return out

    path = tmp_path / "troupe.toml"
    k1, k2 = support.PEER_KEYS
    gw = support.start_gateway(tmp_path, config(tmp_path, pool([("a", k1), ("b", k2)])))
    try:
        assert gw.wait_ready(10)
        before = {s["session"]: s["id"] for s in sessions(gw)["peer"]}
        path.write_text(config(tmp_path, pool([("a", k1), ("c", k2)])))
        with admin(gw) as c:
            r = c.post("/admin/reload")
        assert r.status_code == 200 and "changed accounts of pool peer" in r.json()["changes"], r.text
        assert wait_for(lambda: {s["session"] for s in sessions(gw)["peer"]} == {"a", "c"})
        after = {s["session"]: s["id"] for s in sessions(gw)["peer"]}
        assert after["a"] == before["a"], "an unchanged account was restarted"
        with gw.http() as c:
            for i in range(4):
                assert ask(c, "gpt-4o-mini", f"q{i}", stream=False) == support.PEER_PREFIX + f"q{i}"
    finally:
        gw.cleanup()
