"""@aether_task / @aether_flow against a real Prefect server."""

from __future__ import annotations

import asyncio
import os
import pickle

import pytest
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from aether_prefect import NodeContext, aether_flow, aether_task, current_context

CLOSED: list[str] = []


@aether_task
def sync_ids(x: int, *, context: NodeContext) -> dict:
    return {"x": x, "run_id": context.run_id, "graph_id": context.graph_id, "node_id": context.node_id,
            "flow_run_id": context.flow_run_id, "task_run_id": context.task_run_id,
            "pid": os.getpid(), "same": current_context() is context}


@aether_task(retries=0)
async def async_ids(x: int, *, context: NodeContext) -> dict:
    await asyncio.sleep(0)
    return {"x": x, "run_id": context.run_id, "node_id": context.node_id, "task_run_id": context.task_run_id}


def test_sync_and_async_in_flow() -> None:
    @flow(name="ids-flow")
    def f() -> tuple[dict, dict]:
        return sync_ids(1), async_ids.submit(2).result()

    a, b = f()
    assert a["x"] == 1 and a["graph_id"] == "ids-flow" and a["run_id"] == a["flow_run_id"]
    assert a["node_id"].startswith("sync_ids") and a["same"] is True
    assert b["run_id"] == a["run_id"] and b["task_run_id"] != a["task_run_id"]


def test_called_outside_flow() -> None:
    out = sync_ids(3)
    assert out["run_id"].startswith("adhoc-") and out["graph_id"] == "adhoc" and out["flow_run_id"] is None


def test_submit_and_map_on_thread_pool() -> None:
    @flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
    def f() -> list[dict]:
        futs = [sync_ids.submit(i) for i in range(4)] + list(async_ids.map([10, 11]))
        return [fu.result() for fu in futs]

    res = f()
    assert [r["x"] for r in res] == [0, 1, 2, 3, 10, 11]
    assert len({r["task_run_id"] for r in res}) == 6


def test_retries_get_fresh_contexts() -> None:
    seen: list[NodeContext] = []

    @aether_task(retries=2, retry_delay_seconds=0)
    def flaky(*, context: NodeContext) -> int:
        seen.append(context)
        if len(seen) < 3:
            raise ValueError("boom")
        return len(seen)

    @flow
    def f() -> int:
        return flaky()

    assert f() == 3
    assert len({id(c) for c in seen}) == 3 and all(c.closed for c in seen)


def test_context_never_pickles() -> None:
    @aether_task
    def grab(*, context: NodeContext) -> str:
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(context)
        return "ok"

    assert grab() == "ok"


def test_bad_decoration() -> None:
    with pytest.raises(TypeError, match="no context parameter"):
        aether_task(lambda x: x)
    with pytest.raises(TypeError, match="has a default"):
        @aether_task
        def g(context: NodeContext = None) -> None:  # type: ignore[assignment]
            ...
    with pytest.raises(TypeError, match="decorates a function"):
        aether_task(42)


def test_aether_flow_context() -> None:
    @aether_flow(name="flow-ctx")
    def f(n: int, *, context: NodeContext) -> tuple[str, str, str | None]:
        return context.graph_id, context.node_id, context.flow_run_id

    g, n, fr = f(1)
    assert g == "flow-ctx" and n == "flow" and fr
