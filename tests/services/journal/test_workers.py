"""Durable calls (#19) across processes: the Dask task runner, and a worker SIGKILLed then a flow-run retry."""

from __future__ import annotations

import pytest

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from prefect import flow

from aether_prefect import NodeContext, aether_task
from aether_prefect.blocks import AetherConfig
from tests.servers.openai_server import FakeOpenAI

pytestmark = pytest.mark.slow  # multi-process: newest Prefect only in CI (Makefile)

ROOT = Path(__file__).resolve().parents[3]


def _chat_requests(server: FakeOpenAI) -> int:
    return sum(1 for r in server.requests if r.path.endswith("/chat/completions"))


def test_dask_task_retry_replays(llm_server: FakeOpenAI, local_config: AetherConfig, tmp_path: Path) -> None:
    from prefect_dask import DaskTaskRunner

    cfg = local_config.model_copy(update={"llm": {"default": llm_server.profile()}})

    @aether_task(config=cfg, retries=1)
    async def five(marker: str, *, context: NodeContext) -> tuple[list[str], int]:
        texts = [(await context.llm().chat(f"dask step {i}"))[0] for i in range(5)]
        if not os.path.exists(marker):
            Path(marker).write_text("failed once")
            raise RuntimeError("fail after the calls")
        return texts, os.getpid()

    @flow(task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 1, "threads_per_worker": 1, "processes": True}))
    def pipeline(marker: str) -> tuple[list[str], int]:
        return five.submit(marker).result()

    texts, pid = pipeline(str(tmp_path / "marker"))
    assert pid != os.getpid()  # ran in a Dask worker process
    assert texts == [f"echo: dask step {i}" for i in range(5)]
    assert _chat_requests(llm_server) == 5  # the retry on the worker replayed all five


def test_worker_killed_then_flow_run_retried_replays(llm_server: FakeOpenAI, local_config: AetherConfig,
                                                     tmp_path: Path) -> None:
    from prefect import get_client
    from prefect.states import AwaitingRetry

    from tests.services.journal._worker import CONFIG, killable

    local_config.model_copy(update={"llm": {"default": llm_server.profile()}}).save(CONFIG, overwrite=True)
    marker = tmp_path / "marker"

    async def create() -> str:
        async with get_client() as client:
            run = await client.create_flow_run(killable, parameters={"marker": str(marker)})
            return str(run.id)

    flow_run_id = asyncio.run(create())

    def worker() -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "tests.services.journal._worker", flow_run_id], cwd=ROOT,
                                env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)

    first = worker()
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the worker never finished its calls"
            time.sleep(0.1)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate(timeout=30)
    assert _chat_requests(llm_server) == 5

    async def retry() -> None:
        async with get_client() as client:
            await client.set_flow_run_state(flow_run_id, AwaitingRetry(), force=True)

    asyncio.run(retry())
    second = worker()
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-3000:]
    assert "echo: killed step 4" in out
    assert _chat_requests(llm_server) == 5  # the flow-run retry replayed the five calls

    async def state() -> tuple[str, int]:
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)
            return run.state.type.value, run.run_count

    kind, runs = asyncio.run(state())
    assert kind == "COMPLETED" and runs == 2
