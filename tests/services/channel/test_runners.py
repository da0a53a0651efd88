"""Questions from tasks on other task runners (process pool, Dask; Ray is in tests/test_ray.py): the same keyed
question, answered the same way."""

from __future__ import annotations

from typing import Any

import pytest
from prefect import flow

from tests.services.channel._helpers import ask_and_answer as _ask_and_answer
from tests.services.channel._helpers import ask_in_worker

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


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
