"""`aether-prefect pending` and `aether-prefect answer` as a person runs them, against a waiting flow run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect import flow

from aether_prefect import NodeContext, aether_task
from tests.services.channel._helpers import Background, wait_for

pytestmark = pytest.mark.timeout(900)
ROOT = Path(__file__).resolve().parents[3]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aether_prefect.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_pending_lists_and_answer_resumes(local_config: Any, prefect_server: Any) -> None:
    seen: dict[str, Any] = {}
    prompt = f"Ship build {uuid.uuid4().hex[:6]}?"

    @aether_task(config=local_config)
    def gate(*, context: NodeContext) -> dict[str, Any]:
        seen["run"] = context.flow_run_id
        return context.channel().sync.ask_approval(prompt, timeout_s=800)

    @flow(name="channel-cli")
    def f() -> dict[str, Any]:
        return gate()

    run = Background(f)
    run_id = wait_for(lambda: seen.get("run"), what="the task")

    def listed() -> dict[str, Any] | None:
        out = cli("pending", "--json")
        assert out.returncode == 0, out.stderr
        return next((q for q in json.loads(out.stdout) if q["flow_run_id"] == run_id), None)

    q = wait_for(listed, 60, "the question in `pending`")
    assert q["prompt"] == prompt and [o["label"] for o in q["options"]] == ["Approve", "Reject"]
    assert q["task_name"] == "gate" and q["flow_name"] == "channel-cli"
    assert q["ui_url"] == f"{prefect_server.api_url[:-4]}/runs/flow-run/{run_id}" and q["timeout_at"] > q["asked_at"]
    text = cli("pending")
    assert prompt in text.stdout and run_id in text.stdout

    wrong = cli("answer", run_id, "--text", "yes")
    assert wrong.returncode == 2 and "takes approve" in wrong.stderr and "Traceback" not in wrong.stderr
    ok = cli("answer", run_id, "--reject", "--reason", "changelog missing")
    assert ok.returncode == 0, ok.stderr
    assert run.join(120) == {"approved": False, "choice": "Reject", "reason": "changelog missing"}
    again = cli("answer", run_id, "--approve")
    assert again.returncode == 2 and "already answered" in again.stderr
    assert json.loads(cli("pending", "--json", "--flow-run", run_id).stdout) == []
