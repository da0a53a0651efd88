"""@aether_task / @aether_flow against a real Prefect server."""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import pickle
import typing
from typing import Any

import pytest
from prefect import flow, task
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


# --- identity, caching and API visibility ---------------------------------------------

@aether_task(cache_policy=None)
def pid_and_ids(x: int, *, context: NodeContext) -> dict:
    return {"x": x, "pid": os.getpid(), "run_id": context.run_id, "graph_id": context.graph_id,
            "task_run_id": context.task_run_id}


def test_process_pool_builds_context_in_worker() -> None:
    from prefect.task_runners import ProcessPoolTaskRunner

    @flow(name="pp-flow", task_runner=ProcessPoolTaskRunner(max_workers=2))
    def f() -> tuple[list[dict], str]:
        from prefect.runtime import flow_run

        return [fu.result() for fu in pid_and_ids.map([1, 2])], str(flow_run.id)

    res, fr_id = f()
    assert all(r["pid"] != os.getpid() for r in res)
    assert all(r["run_id"] == fr_id and r["graph_id"] == "pp-flow" for r in res)


def test_dask_runner_builds_context_in_worker() -> None:
    from prefect_dask import DaskTaskRunner

    runner = DaskTaskRunner(cluster_kwargs={"n_workers": 1, "processes": True, "threads_per_worker": 1,
                                            "dashboard_address": None})

    @flow(name="dask-flow", task_runner=runner)
    def f() -> tuple[list[dict], str]:
        from prefect.runtime import flow_run

        return [fu.result() for fu in pid_and_ids.map([1, 2])], str(flow_run.id)

    res, fr_id = f()
    assert all(r["pid"] != os.getpid() for r in res)
    assert all(r["run_id"] == fr_id and r["graph_id"] == "dask-flow" for r in res)


CALLS: list[str] = []


@aether_task(persist_result=True)
def cached_a(x: int, *, context: NodeContext) -> int:
    CALLS.append("a")
    return x + 1


@aether_task(persist_result=True)
def cached_b(x: int, *, context: NodeContext) -> int:
    CALLS.append("b")
    return x + 100


def test_caching_hits_and_no_cross_task_sharing() -> None:
    from prefect.cache_policies import INPUTS, TASK_SOURCE

    a = cached_a.with_options(cache_policy=INPUTS + TASK_SOURCE)
    b = cached_b.with_options(cache_policy=INPUTS + TASK_SOURCE)
    CALLS.clear()

    @flow
    def f() -> list[int]:
        return [a(7), a(7), b(7)]

    assert f() == [8, 8, 107]
    assert CALLS == ["a", "b"]  # second a(7) was a cache hit; b did not reuse a's entry
    assert cached_a.task_key != cached_b.task_key


def test_task_inputs_and_logs_from_api() -> None:
    import asyncio as aio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    @aether_task(task_run_name="logged-{x}")
    def logged(x: int, *, context: NodeContext) -> str:
        context.logger().info("hello from %s", context.node_id)
        return context.task_run_id  # type: ignore[return-value]

    @flow
    def f() -> str:
        return logged(5)

    tr_id = f()

    async def read() -> tuple[dict, list[str]]:
        async with get_client() as client:
            tr = await client.read_task_run(tr_id)
            for _ in range(50):
                logs = await client.read_logs(log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[tr_id])))
                msgs = [lg.message for lg in logs]
                if any("hello from" in m for m in msgs):
                    break
                await aio.sleep(0.2)
            return tr.task_inputs, msgs

    inputs, msgs = aio.run(read())
    assert set(inputs) == {"x"}
    assert "hello from logged-5" in msgs


def test_positional_context_and_parameters_schema() -> None:
    @aether_task
    def mid(a: int, context: NodeContext, b: int = 2) -> tuple[int, int, str]:
        return a, b, type(context).__name__

    assert mid(1) == (1, 2, "NodeContext")
    assert mid(1, 3) == (1, 3, "NodeContext")

    @aether_flow
    def fl(n: int, *, context: NodeContext) -> int:
        return n

    from prefect.utilities.callables import parameter_schema

    assert set(parameter_schema(fl.fn).properties) == {"n"}
    assert set(parameter_schema(mid.fn).properties) == {"a", "b"}


# -- generator tasks (#17.21) and class/static methods (#17.22) ------------------------------------------

GEN_SEEN: list[tuple[str, bool]] = []


@aether_task
def count_up(n: int, *, context: NodeContext) -> Any:
    for i in range(n):
        GEN_SEEN.append((context.node_id, current_context() is context and not context.closed))
        yield i


@aether_task
async def acount_up(n: int, *, context: NodeContext) -> Any:
    from prefect.context import TaskRunContext

    for i in range(n):
        await asyncio.sleep(0)
        GEN_SEEN.append((context.node_id, current_context() is context and TaskRunContext.get() is not None
                         and not context.closed))
        yield i


def test_generator_task_yields_every_item_like_task() -> None:
    GEN_SEEN.clear()
    assert list(count_up(3)) == [0, 1, 2]
    assert len(GEN_SEEN) == 3 and all(ok for _, ok in GEN_SEEN) and GEN_SEEN[0][0].startswith("count_up")

    @flow
    def f() -> list[int]:
        return list(count_up(2))

    assert f() == [0, 1]


def test_async_generator_task_runs_inside_its_task_run() -> None:
    GEN_SEEN.clear()

    async def consume() -> list[int]:
        return [i async for i in acount_up(3)]

    assert asyncio.run(consume()) == [0, 1, 2]
    assert len(GEN_SEEN) == 3 and all(ok for _, ok in GEN_SEEN), GEN_SEEN


def test_generator_context_closes_when_finished_or_closed() -> None:
    contexts: list[NodeContext] = []

    @aether_task
    def gen(*, context: NodeContext) -> Any:
        contexts.append(context)
        context.kv()  # an I/O service, so closing goes through aclose()
        yield 1
        yield 2

    assert list(gen()) == [1, 2] and contexts[-1].closed

    it = gen()
    assert next(it) == 1 and not contexts[-1].closed  # open for the whole iteration
    it.close()
    assert contexts[-1].closed
    with pytest.raises(LookupError):
        current_context()  # nothing leaks to the consumer


def test_generator_task_failure_and_retries_match_task() -> None:
    """Retries and failure states of generator tasks: the same outcome as with @task."""

    def outcome(decorate: Any) -> tuple[Any, int]:
        attempts: list[int] = []

        def body(**_: Any) -> Any:
            attempts.append(1)
            yield len(attempts)
            if len(attempts) < 2:
                raise ValueError("first attempt fails after one item")

        if decorate is aether_task:
            def flaky(*, context: NodeContext) -> Any:
                yield from body()
        else:
            def flaky() -> Any:  # type: ignore[misc]
                yield from body()

        t = decorate(retries=1, retry_delay_seconds=0)(flaky)

        @flow
        def f() -> list[int]:
            return list(t())

        try:
            return f(), len(attempts)
        except ValueError as exc:
            return repr(exc), len(attempts)

    assert outcome(aether_task) == outcome(task)


class Scaler:
    factor = 3

    @aether_task
    @classmethod
    def scale(cls, x: int, *, context: NodeContext) -> tuple[int, str]:
        return x * cls.factor, context.node_id

    @aether_task(retries=0)
    @staticmethod
    def double(x: int, *, context: NodeContext) -> tuple[int, bool]:
        return 2 * x, current_context() is context


def test_classmethod_and_staticmethod_tasks() -> None:
    @flow
    def f() -> tuple[Any, Any, Any]:
        return Scaler.scale(2), Scaler.double(4), Scaler.double.submit(5).result()

    (scaled, node), doubled, submitted = f()
    assert scaled == 6 and node.startswith("scale") and doubled == (8, True) and submitted == (10, True)


def _keeps_code_identity(fn: Any) -> Any:
    """A decorator that keeps ``fn``'s code identity for Prefect, as compatibility decorators do."""
    @functools.wraps(fn)
    def inner(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    inner.__prefect_task_source__ = fn  # type: ignore[attr-defined]
    return inner


def _step_plus(n: int) -> Any:
    """A function named ``step`` whose code differs for each ``n`` (the constant is in its bytecode)."""
    namespace: dict[str, Any] = {"NodeContext": NodeContext}
    exec(f"def step(x, *, context: NodeContext):\n    return x + {n}", namespace)
    return namespace["step"]


def test_code_identity_through_a_compatibility_decorator() -> None:
    # Found by Prefect's own task tests (ci/prefect_task_semantics.py): @task over such a decorator
    # keys and caches each function by its own code; @aether_task used the decorator's code for all.
    from prefect.tasks import task_input_hash

    zero, one = _step_plus(0), _step_plus(1)
    t0 = aether_task(_keeps_code_identity(zero), cache_key_fn=task_input_hash, persist_result=True)
    t1 = aether_task(_keeps_code_identity(one), cache_key_fn=task_input_hash, persist_result=True)
    assert t0.task_key != t1.task_key
    assert aether_task(zero).task_key != aether_task(one).task_key  # same name, other code: never one key
    honoured = task(_keeps_code_identity(zero)).task_key != task(_keeps_code_identity(one)).task_key
    if honoured:  # Prefect >= 3.9 keys @task by what the decorator names as its code; we match it
        assert t0.task_key == task(_keeps_code_identity(zero)).task_key

    @flow
    def f() -> list[int]:
        return [t0(5), t1(5), t0(5)]

    assert f() == [5, 6, 5]  # t1(5) is not a cache hit of t0(5)


def test_keyword_overload_carries_every_task_keyword_and_ours() -> None:
    from aether_prefect._overrides import KNOWN_OVERRIDES

    keyword = next(
        sig for sig in map(inspect.signature, typing.get_overloads(aether_task)) if "retries" in sig.parameters
    )
    prefect_keywords = set(inspect.signature(task).parameters) - {"__fn"}
    assert prefect_keywords <= set(keyword.parameters), prefect_keywords - set(keyword.parameters)
    assert KNOWN_OVERRIDES <= set(keyword.parameters), KNOWN_OVERRIDES - set(keyword.parameters)
    assert keyword.parameters["retries"].default is inspect.signature(task).parameters["retries"].default


def test_sync_task_closes_on_its_own_thread_unless_a_service_needs_the_loop(
    local_config: Any, portal_hops: Any
) -> None:
    """A sync task whose services close without an event loop (artifacts, a KV with no increment in flight) closes
    its context on its own thread (#21: no hop to the portal when each task ends), the artifacts' temp folder
    removed; one that queued Prefect events (a memory record) still closes through aclose, which sends them."""
    from pathlib import Path

    from aether_prefect import task as task_module
    from aether_prefect._prefect import events

    hops = portal_hops(task_module)
    seen: dict[str, Any] = {}

    @aether_task(config=local_config)
    def quiet(*, context: NodeContext) -> None:
        arts = context.artifacts()
        seen["tmp"] = Path(arts.sync.tmp_path(".txt")).parent
        arts.sync.save_text("x")
        assert context.kv().sync.incr("n") >= 1
        seen["quiet"] = context

    @aether_task(config=local_config)
    def noisy(*, context: NodeContext) -> None:
        context.memory().sync.record("note", {"a": 1})
        seen["noisy"] = context

    events.flush()
    quiet()
    assert seen["tmp"].is_dir() is False and seen["quiet"].closed
    assert not [h for h in hops if h.endswith("_finish")]
    noisy()
    assert seen["noisy"].closed and [h for h in hops if h.endswith("_finish")] == ["_finish"]
    assert not events.pending()  # aclose sent the memory mirror's event
