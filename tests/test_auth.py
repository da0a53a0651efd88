"""Behind Prefect's own basic auth: a server started with PREFECT_SERVER_API_AUTH_STRING refuses a client
without the string, and every service works through the one door with it (PREFECT_API_AUTH_STRING only)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pydantic import SecretStr
    from prefect import flow
    from aether_prefect import (AetherConfig, AetherLLMProfile, AetherObjectStore, NodeContext, aether_task,
                                open_session_sync, read_flow_usage)

    store, llm_url, llm_key = sys.argv[1], sys.argv[2], sys.argv[3]
    AetherConfig(store=AetherObjectStore(backend="local", root=store), kv_namespace="authns",
                 llm={"default": AetherLLMProfile(base_url=llm_url, api_key=SecretStr(llm_key), model="m")}
                 ).save("auth-cfg", overwrite=True)

    @aether_task(config="auth-cfg")
    def work(*, context: NodeContext) -> dict:
        kv = context.kv()
        kv.sync.set("k", {"v": 1})
        art = context.artifacts().sync.save_text("hello", name="greeting")
        context.memory().sync.record("note", "remembered")
        text, usage = context.llm().sync.chat([{"role": "user", "content": "hi"}])
        return {"kv": kv.sync.get("k"), "incr": kv.sync.incr("n"), "prefect_artifact": art.prefect_artifact_id,
                "memory": [e.text for e in context.memory().sync.recent(kinds=["note"])], "llm": bool(text)}

    @flow
    def authed() -> dict:
        return work()

    out = authed()
    print("RESULT " + json.dumps(out), flush=True)
    """
)


@pytest.mark.slow
def test_every_service_works_behind_basic_auth(tmp_path: Path, llm_server) -> None:  # type: ignore[no-untyped-def]
    from tests.servers.prefect_server import PrefectServer

    auth = f"aether:{secrets.token_urlsafe(16)}"
    server = PrefectServer(home=tmp_path / "srv", env={"PREFECT_SERVER_API_AUTH_STRING": auth}).start()
    try:
        server.wait_ready()  # /health is open to probes, everything else needs the string
        refused = httpx.post(f"{server.api_url}/variables/filter", json={}, timeout=10)
        assert refused.status_code == 401
        wrong = httpx.post(f"{server.api_url}/variables/filter", json={}, timeout=10, auth=("aether", "nope"))
        assert wrong.status_code == 401

        env = {**os.environ, "PREFECT_API_URL": server.api_url, "PYTHONPATH": str(ROOT),
               "PREFECT_HOME": str(tmp_path / "client")}
        env.pop("PREFECT_API_AUTH_STRING", None)
        # Without the string: a clear error, not a hang or a traceback from deep inside Prefect.
        no_auth = subprocess.run(
            [sys.executable, "-c", "from aether_prefect import open_session_sync\n"
             "with open_session_sync() as c: c.kv().sync.set('k', 1)"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert no_auth.returncode != 0 and "401" in no_auth.stderr

        env["PREFECT_API_AUTH_STRING"] = auth
        run = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "store"), llm_server.base_url,
                              llm_server.api_key], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        line = next(l for l in run.stdout.splitlines() if l.startswith("RESULT "))
        result = json.loads(line[len("RESULT "):])
        assert result["kv"] == {"v": 1} and result["incr"] == 1 and result["llm"] is True
        assert result["prefect_artifact"] and result["memory"] == ["remembered"]
        assert auth.split(":")[1] not in run.stdout + run.stderr  # the secret is never printed

        arts = httpx.post(f"{server.api_url}/artifacts/filter", json={"limit": 50}, timeout=10,
                          auth=tuple(auth.split(":", 1))).json()  # type: ignore[arg-type]
        assert any(a.get("key") == "greeting" for a in arts)
    finally:
        server.stop()
