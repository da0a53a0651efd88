"""hold_worker=False on a served deployment: the waiting run holds no process, the answer reruns it, the finished
task is not run again (persisted result) and the asking task gets the recorded answer. Plus the clear errors
where it cannot work (no deployment, results not persisted)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect import flow

from aether_prefect import NodeContext, aether_task, answer, pending_questions
from aether_prefect.errors import ChannelError
from tests.services.channel._helpers import wait_for

pytestmark = [pytest.mark.timeout(1500), pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[3]

FLOW_FILE = '''
import json, os, time
from prefect import flow
from aether_prefect import aether_task, NodeContext

LOG = os.environ["AETHER_TEST_LOG"]

def note(line):
    with open(LOG, "a") as f:
        f.write(line + "\\n")

@aether_task(persist_result=True)
def prepare(x: int, *, context: NodeContext) -> int:
    note("prepare")
    return x * 2

@aether_task(persist_result=True)
def gate(v: int, *, context: NodeContext) -> dict:
    note("gate")
    out = context.channel().sync.ask_approval(f"Ship {v}?", timeout_s=1200, hold_worker=False)
    note("resumed %.3f" % time.time())
    return out

@flow(name="hold-worker-flow", persist_result=True)
def hold_worker_flow(x: int = 21) -> dict:
    v = prepare(x)
    out = {"v": v, **gate(v)}
    note("result " + json.dumps(out))
    return out

if __name__ == "__main__":
    hold_worker_flow.serve(name="hold-worker-dep")
'''


def start_run(url: str, parameters: dict[str, Any]) -> str:
    """Creates the deployment's flow run; a refused or failed request (the SQLite server answers 5xx under load,
    as CI saw once) is retried with the same idempotency key, so at most one run is ever made."""
    body = {"parameters": parameters, "idempotency_key": f"hold-worker-{time.time_ns()}"}

    def post() -> str:
        r = httpx.post(url, json=body, timeout=30)
        assert r.status_code in (200, 201), f"create_flow_run answered {r.status_code}: {r.text[:500]}"
        return str(r.json()["id"])

    return wait_for(post, 120, "the flow run to be created")


def test_suspended_run_holds_no_process_and_replays(tmp_path: Path, prefect_server: Any) -> None:
    import psutil

    (tmp_path / "hw_flow.py").write_text(FLOW_FILE)
    log = tmp_path / "events.log"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}", "AETHER_TEST_LOG": str(log),
           "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    serve_log = open(tmp_path / "serve.log", "w")
    serve = subprocess.Popen([sys.executable, str(tmp_path / "hw_flow.py")], cwd=tmp_path, env=env,
                             stdout=serve_log, stderr=subprocess.STDOUT, start_new_session=True)
    api = prefect_server.api_url
    try:
        dep = wait_for(lambda: (r := httpx.get(f"{api}/deployments/name/hold-worker-flow/hold-worker-dep", timeout=10))
                       .status_code == 200 and r.json(), 600, "the served deployment")
        run_id = start_run(f"{api}/deployments/{dep['id']}/create_flow_run", {"x": 21})
        q = wait_for(lambda: (qs := pending_questions(run_id)) and qs[0], 600, "the question")
        assert q.prompt == "Ship 42?"
        state = wait_for(lambda: (s := httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["state"])["name"]
                         == "Suspended" and s, 120, "the Suspended state")
        assert state["type"] == "PAUSED"
        # The flow run's process exits: the serve process has no child left while the question waits.
        def run_processes() -> list[str]:
            """The serve process's children that run flow code (multiprocessing's resource tracker is not one)."""
            out = []
            for p in psutil.Process(serve.pid).children(recursive=True):
                try:
                    cmd = " ".join(p.cmdline())
                except psutil.Error:
                    continue
                if "resource_tracker" not in cmd:
                    out.append(cmd)
            return out

        wait_for(lambda: run_processes() == [], 300, "the flow run's process to exit")
        held = run_processes()
        rss_mb = psutil.Process(serve.pid).memory_info().rss / 2**20
        print(f"while waiting: flow-run processes={len(held)}, serve (the worker) RSS {rss_mb:.0f} MiB")
        assert held == []
        t0 = time.time()
        answer(run_id, approve=False, reason="release notes missing")
        wait_for(lambda: httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["state_type"] == "COMPLETED",
                 600, "the rerun to complete")
        lines = log.read_text().splitlines()
        assert lines.count("prepare") == 1, lines  # the finished task's persisted result was reused
        assert lines.count("gate") == 2, lines  # asked once, then the rerun found the recorded answer
        assert lines[-1] == 'result {"v": 42, "approved": false, "choice": "Reject", "reason": "release notes missing"}'
        resumed = float(next(x for x in lines if x.startswith("resumed")).split()[1])
        print(f"answer -> task resumes (rerun from a new process): {resumed - t0:.1f} s")
        assert pending_questions(run_id) == []
    finally:
        os.killpg(serve.pid, 15)
        serve.wait(timeout=60)


def test_hold_worker_false_without_a_deployment_is_a_clear_error(local_config: Any) -> None:
    @aether_task(config=local_config, persist_result=True)
    def ask(*, context: NodeContext) -> str:
        with pytest.raises(ChannelError, match="not a deployment's run") as info:
            context.channel().sync.ask_text("Suspend me?", hold_worker=False)
        return str(info.value)

    @flow(name="hold-worker-no-deployment", persist_result=True)
    def f() -> str:
        return ask()

    assert "flow.serve()" in f()
