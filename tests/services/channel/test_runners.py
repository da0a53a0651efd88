"""Questions from tasks on other task runners (process pool, Dask): the same keyed question, answered the same way."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from prefect import flow

from aether_prefect import NodeContext, aether_task, answer, pending_questions
from tests.services.channel._helpers import Background, wait_for

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


@aether_task
def ask_in_worker(prompt: str, *, context: NodeContext) -> tuple[str, int]:
    import os

    return context.channel().sync.ask_text(prompt, timeout_s=500), os.getpid()


def _ask_and_answer(make_flow: Any) -> None:
    import os

    prompts = [f"worker question {i} {uuid.uuid4().hex[:6]}" for i in range(2)]
    run = Background(make_flow(prompts))

    def both() -> list[Any]:
        qs = [q for q in pending_questions() if q.prompt in prompts]
        return qs if len(qs) == 2 else []

    qs = wait_for(both, 300, "both questions from the workers")
    for q in reversed(qs):  # any order
        answer(q.flow_run_id, text=f"re: {q.prompt}", question_id=q.question_id)
    out = run.join(300)
    assert [a for a, _ in out] == [f"re: {p}" for p in prompts]
    assert all(pid != os.getpid() for _, pid in out)
    assert {q.task_name for q in qs} == {"ask_in_worker"}


def test_process_pool() -> None:
    from prefect.task_runners import ProcessPoolTaskRunner

    def make(prompts: list[str]) -> Any:
        @flow(name="channel-process-pool", task_runner=ProcessPoolTaskRunner(max_workers=2))
        def f() -> list[Any]:
            return [fu.result() for fu in ask_in_worker.map(prompts)]

        return f

    _ask_and_answer(make)


def test_dask() -> None:
    from prefect_dask import DaskTaskRunner

    def make(prompts: list[str]) -> Any:
        runner = DaskTaskRunner(cluster_kwargs={"n_workers": 2, "processes": True, "threads_per_worker": 1,
                                                "dashboard_address": None})

        @flow(name="channel-dask", task_runner=runner)
        def f() -> list[Any]:
            return [fu.result() for fu in ask_in_worker.map(prompts)]

        return f

    _ask_and_answer(make)
