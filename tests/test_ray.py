"""@aether_task on prefect-ray's RayTaskRunner: a local Ray cluster, the context built in the Ray worker.

The README claims every Prefect task runner works; this is the Ray half of that claim (the Dask and
process-pool halves are in tests/test_task.py). Ray workers are separate processes started by the local
raylet: they inherit this process's environment (PREFECT_API_URL, PREFECT_HOME, PYTHONPATH), so the
default config resolves to the same Prefect server and the same local object store there.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from prefect import flow

from aether_prefect import NodeContext, aether_task, open_session_sync

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@aether_task(cache_policy=None)
def ray_work(x: int, key: str, *, context: NodeContext) -> dict:
    """Runs in a Ray worker: ids, one artifact and one KV write from the context built there."""
    art = context.artifacts().sync.save_text(f"from ray {x} {key}", name=f"ray-{x}")
    context.kv().sync.set(f"{key}-{x}", {"x": x, "pid": os.getpid()})
    total = context.kv().sync.incr(f"{key}-n")
    return {"x": x, "pid": os.getpid(), "run_id": context.run_id, "graph_id": context.graph_id,
            "node_id": context.node_id, "flow_run_id": context.flow_run_id, "task_run_id": context.task_run_id,
            "artifact_id": art.artifact_id, "incr": total}


@pytest.fixture(scope="module")
def ray_runner() -> Iterator[object]:
    """A RayTaskRunner over a local Ray started here (2 CPUs, no dashboard); shut down after the module.

    Ray waits a fixed 30 s for its raylet to register; on a machine loaded by parallel test runs that can
    run out, so the start is tried twice. The runner uses the already initialised Ray (it does not own it).
    """
    import ray  # in the test extra, like prefect-dask: a missing install fails here, it is not skipped
    from prefect_ray import RayTaskRunner

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    for attempt in (1, 2):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    try:
        yield RayTaskRunner()
    finally:
        ray.shutdown()


def test_ray_runner_builds_context_in_worker(ray_runner: object) -> None:
    key = f"ray-{uuid.uuid4().hex[:8]}"

    @flow(name="ray-flow", task_runner=ray_runner)  # type: ignore[arg-type]
    def f() -> tuple[list[dict], str]:
        from prefect.runtime import flow_run

        return [fu.result() for fu in ray_work.map([1, 2, 3], key=key)], str(flow_run.id)

    res, fr_id = f()
    assert [r["x"] for r in res] == [1, 2, 3]
    assert all(r["pid"] != os.getpid() for r in res)  # built in a Ray worker process, not here
    assert all(r["run_id"] == fr_id == r["flow_run_id"] and r["graph_id"] == "ray-flow" for r in res)
    assert all(r["node_id"].startswith("ray_work") for r in res)
    assert len({r["task_run_id"] for r in res}) == 3 and all(r["task_run_id"] for r in res)
    assert sorted(r["incr"] for r in res) == [1, 2, 3]  # the KV lock is exact across Ray workers

    with open_session_sync() as ctx:  # what the workers wrote is visible from here
        for r in res:
            assert ctx.artifacts().sync.load_text_by_id(r["artifact_id"]) == f"from ray {r['x']} {key}"
            assert ctx.kv().sync.get(f"{key}-{r['x']}") == {"x": r["x"], "pid": r["pid"]}
        assert ctx.kv().sync.get(f"{key}-n") == 3


def test_ray_questions_reach_the_asking_tasks(ray_runner: object) -> None:
    """#20.5: two tasks in Ray workers ask at once; each answer (given in any order) reaches the task that asked."""
    from tests.services.channel._helpers import ask_and_answer, ask_in_worker

    def make(prompts: list[str]) -> object:
        @flow(name="channel-ray", task_runner=ray_runner)  # type: ignore[arg-type]
        def f() -> list[object]:
            return [fu.result() for fu in ask_in_worker.map(prompts)]

        return f

    ask_and_answer(make)
