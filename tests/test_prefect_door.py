"""The one door to Prefect (``aether_prefect/_prefect/``): nothing else calls Prefect's client, variables,
artifacts, events, pause/resume or run context; nothing anywhere touches a private Prefect name; the door's
client recovers by itself after the server restarts; and the public Prefect API the door relies on exists
on the installed Prefect (so a release that drops one fails here, loudly, not deep in a service).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "aether_prefect"
DOOR = PACKAGE / "_prefect"

# What other modules may import from Prefect: class definitions and decorators, never calls into the API.
ALLOWED_OUTSIDE = {
    "prefect.blocks.core",  # Block, the base of our config blocks
    "prefect.types",  # SecretDict, a field type of our blocks
    "prefect",  # `task` / `flow`, which aether_task / aether_flow wrap
}
IMPORT_RE = re.compile(r"^\s*(?:from\s+(prefect[\w.]*)\s+import|import\s+(prefect[\w.]*))", re.M)
PRIVATE_RES = [
    re.compile(r"SyncClientContext"),
    re.compile(r"_block_document_(id|name)"),
    re.compile(r"prefect\._internal"),
    re.compile(r"(?<!_prefect)\._client\b(?!\s*\()"),  # PrefectClient._client (our own `self._client()` methods are calls)
    re.compile(r"from\s+prefect[\w.]*\s+import\s+_\w+"),
]


def _sources(*folders: Path) -> list[Path]:
    return [p for f in folders for p in sorted(f.rglob("*.py")) if ".venv" not in p.parts]


def test_only_the_door_imports_prefect_runtime_apis() -> None:
    offenders = []
    for path in _sources(PACKAGE):
        if DOOR in path.parents:
            continue
        for m in IMPORT_RE.finditer(path.read_text()):
            mod = m.group(1) or m.group(2)
            if mod not in ALLOWED_OUTSIDE:
                offenders.append(f"{path.relative_to(ROOT)}: {mod}")
    assert offenders == [], "Prefect reached outside aether_prefect/_prefect/: " + "; ".join(offenders)


def test_no_private_prefect_names_anywhere() -> None:
    offenders = []
    for path in _sources(PACKAGE, ROOT / "scale", ROOT / "bench", ROOT / "flows", ROOT / "deployments"):
        text = path.read_text()
        for rx in PRIVATE_RES:
            for m in rx.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {m.group(0)}")
    assert offenders == [], "private Prefect names used: " + "; ".join(offenders)


def test_the_public_prefect_api_the_door_uses_exists() -> None:
    """Fails on a Prefect release that drops or renames what the door calls."""
    import inspect

    from prefect.client.orchestration import PrefectClient, SyncPrefectClient, get_client
    from prefect.context import FlowRunContext, TaskRunContext, refresh_global_settings_context
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker
    from prefect.flow_runs import apause_flow_run
    from prefect.input import RunInput
    from prefect.logging import get_run_logger

    for cls in (PrefectClient, SyncPrefectClient):
        for name in ("request", "create_artifact", "read_artifacts", "read_task_runs", "read_flow_run", "read_flow"):
            assert callable(getattr(cls, name, None)), f"{cls.__name__}.{name} is gone"
    assert set(inspect.signature(PrefectClient.request).parameters) >= {"method", "path"}
    assert callable(EventsWorker.instance) and callable(EventsWorker.wait_until_empty)  # _events.flush
    assert {"wait_for_input", "timeout", "poll_interval", "key"} <= set(inspect.signature(apause_flow_run).parameters)
    assert all(callable(f) for f in (get_client, refresh_global_settings_context, emit_event, get_run_logger))
    assert FlowRunContext.get() is None and TaskRunContext.get() is None and issubclass(RunInput, object)


@pytest.mark.slow
def test_services_reconnect_after_a_server_restart(tmp_path: Path) -> None:
    """A process keeps using KV, artifacts, memory and new task runs across a restart of its Prefect server,
    clearing nothing (#17.17)."""
    from tests.servers.prefect_server import PrefectServer

    server = PrefectServer(home=tmp_path / "srv").start()
    try:
        server.wait_ready()
        script = textwrap.dedent(
            """
            import sys
            from prefect import flow
            from aether_prefect import AetherConfig, AetherObjectStore, NodeContext, aether_task, open_session_sync
            cfg = AetherConfig(store=AetherObjectStore(backend="local", root=sys.argv[1]), kv_namespace="restart")

            @aether_task(config=cfg)
            def in_task(*, context: NodeContext) -> str:
                context.memory().sync.record("after", {"in": "task"})
                return context.artifacts().sync.save_text("task", name="t").artifact_id

            @flow(name="after-restart")
            def after() -> str:
                return in_task()

            with open_session_sync(config=cfg) as ctx:
                ctx.kv().sync.set("k", 1)
                print("SET", flush=True)
                sys.stdin.readline()  # the test restarts the server meanwhile
                ctx.kv().sync.set("k", 2)
                print("AFTER", ctx.kv().sync.get("k"), ctx.kv().sync.incr("n"), flush=True)
                art = ctx.artifacts().sync.save_text("after restart", name="after")
                ctx.memory().sync.record("after", {"n": 1})
                print("ART", ctx.artifacts().sync.load_text_by_id(art.artifact_id), flush=True)
            print("TASK", len(after()), flush=True)
            """
        )
        env = {**os.environ, "PREFECT_API_URL": server.api_url, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "store")], env=env, cwd=ROOT,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdin is not None
        if proc.stdout.readline().strip() != "SET":
            proc.kill()
            pytest.fail(f"the first set failed: {proc.communicate()[1][-3000:]}")
        server.restart()
        proc.stdin.write("\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        assert "AFTER 2 1" in out and "ART after restart" in out and "TASK 64" in out
    finally:
        server.stop()
