"""Memory service: durable event log in the object store, mirrored as Prefect events (real server, real stores)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from aether_prefect import NodeContext, aether_task, open_session
from aether_prefect.blocks import AetherConfig, AetherObjectStore
from aether_prefect.errors import AetherMemoryError, ValidationError
from aether_prefect.services.memory import Event, MemoryService
from aether_prefect.services.stores.local import LocalStore

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class CountingStore(LocalStore):
    """A real LocalStore that counts object reads, to check what recent() touches."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads = 0

    def get_bytes(self, key: str) -> bytes:
        self.reads += 1
        return super().get_bytes(key)


def _memory_keys(config: AetherConfig) -> list[str]:
    from aether_prefect.services.stores import open_store

    return list(open_store(config.store).list_keys("memory/"))


# -- record / read --------------------------------------------------------------


async def test_record_returns_event_and_recent_is_oldest_first(local_config: AetherConfig) -> None:
    async with open_session(config=local_config, graph_id="g1", node_id="n1") as ctx:
        mem = ctx.memory()
        assert ctx.mem() is mem
        e1 = await mem.record("note", "plain text", tags=["a"], stage="s1", metrics={"loss": 0.5}, signal=0.7)
        e2 = await mem.record("note", {"x": (1, 2)}, severity=4)
        await mem.record("other", None, text="explicit")
        assert isinstance(e1, Event) and e1.text == "plain text" and e1.run_id == ctx.run_id
        assert (e1.graph_id, e1.node_id, e1.stage, e1.metrics, e1.signal) == ("g1", "n1", "s1", {"loss": 0.5}, 0.7)
        assert e2.data == {"x": [1, 2]} and e2.text == '{"x": [1, 2]}' and e2.severity == 4
        recent = await mem.recent()
        assert [e.kind for e in recent] == ["note", "note", "other"]
        assert recent[0].event_id == e1.event_id and recent[-1].text == "explicit"
        assert [e.event_id for e in await mem.recent(limit=2)] == [e2.event_id, recent[-1].event_id]
        assert [e.kind for e in await mem.recent(kinds=["other"])] == ["other"]
        assert [e.kind for e in await mem.recent(kinds="note")] == ["note", "note"]
        assert await mem.recent(kinds=["missing"]) == []


async def test_recent_reads_only_the_newest_objects(tmp_path: Path, local_config: AetherConfig) -> None:
    store = CountingStore(tmp_path / "counting")
    async with open_session(config=local_config, store=store) as ctx:
        mem = ctx.memory()
        await mem.record("rare", {"n": -1})
        for i in range(60):
            await mem.record("bulk", {"n": i})
        store.reads = 0
        newest = await mem.recent(limit=5)
        assert [e.data["n"] for e in newest] == [55, 56, 57, 58, 59] and store.reads == 5
        store.reads = 0
        rare = await mem.recent(kinds=["rare"], limit=5)
        assert [e.data["n"] for e in rare] == [-1] and store.reads == 1  # kind filter works on keys


async def test_recent_data_filters_tags_and_kinds(local_config: AetherConfig) -> None:
    async with open_session(config=local_config) as ctx:
        mem = ctx.memory()
        await mem.record("metric", {"v": 1}, tags=["train", "gpu"])
        await mem.record("metric", {"v": 2}, tags=["eval"])
        await mem.record("log", "text only", tags=["train"])
        await mem.record("metric", {"v": 3}, tags=["train"])
        assert await mem.recent_data(tags=["train"]) == [{"v": 1}, "text only", {"v": 3}]
        assert await mem.recent_data(kinds=["metric"], tags=["train"]) == [{"v": 1}, {"v": 3}]
        assert await mem.recent_data(kinds=["metric"], tags=["train", "gpu"]) == [{"v": 1}]
        assert await mem.recent_data(kinds=["metric"], limit=1) == [{"v": 3}]
        assert await mem.recent_data(tags=["nope"]) == []


async def test_search_ranks_and_a_miss_is_empty(local_config: AetherConfig) -> None:
    async with open_session(config=local_config) as ctx:
        mem = ctx.memory()
        await mem.record("note", "the quick brown fox", tags=["animals"])
        await mem.record("note", "a slow brown turtle")
        await mem.record("fact", "quick brown facts", tags=["animals"])
        await mem.record("note", "nothing relevant here")
        hits = await mem.search("quick brown")
        assert [h.text for h in hits] == ["quick brown facts", "the quick brown fox", "a slow brown turtle"]
        assert await mem.search("zebra") == []  # AetherGraph returned everything on a miss
        assert [h.text for h in await mem.search("brown", kinds=["note"])] == ["a slow brown turtle", "the quick brown fox"]
        assert [h.text for h in await mem.search("brown", tags=["animals"], limit=1)] == ["quick brown facts"]
        with pytest.raises(AetherMemoryError, match="no words"):
            await mem.search("  ")


async def test_chat_helpers_and_history_shape(local_config: AetherConfig) -> None:
    async with open_session(config=local_config) as ctx:
        mem = ctx.memory()
        await mem.record_chat_system("be brief")
        await mem.record_chat_user("hello")
        ev = await mem.record_chat_assistant("hi!")
        await mem.record_chat("tool", "42")
        assert ev.kind == "chat.turn" and ev.data == {"role": "assistant", "content": "hi!"}
        chat = await mem.recent_chat()
        assert [(c["role"], c["content"]) for c in chat] == [("system", "be brief"), ("user", "hello"),
                                                             ("assistant", "hi!"), ("tool", "42")]
        assert all(set(c) == {"role", "content", "ts"} for c in chat)
        hist = await mem.chat_history_for_llm(limit=2)
        assert hist == {"summary": "", "messages": [{"role": "assistant", "content": "hi!"},
                                                    {"role": "tool", "content": "42"}]}
        await mem.record("chat.summary", "they greeted each other")
        assert (await mem.chat_history_for_llm())["summary"] == "they greeted each other"
        with pytest.raises(AetherMemoryError, match="role"):
            await mem.record_chat("robot", "beep")


async def test_tool_result_helpers(local_config: AetherConfig) -> None:
    async with open_session(config=local_config) as ctx:
        mem = ctx.memory()
        assert await mem.last_tool_result("calc") is None
        for x in range(3):
            await mem.write_result(tool="calc", inputs=[{"name": "x", "kind": "number", "value": x}],
                                   outputs=[{"name": "y", "kind": "number", "value": x * x}])
        other = await mem.record_tool_result(tool="grep", outputs=[{"name": "hits", "value": ["a"]}],
                                             message="found a")
        assert other.kind == "tool_result" and other.text == "found a" and other.outputs == [
            {"name": "hits", "kind": "json", "value": ["a"]}]
        calc = await mem.recent_tool_results(tool="calc", limit=2)
        assert [e.outputs[0]["value"] for e in calc] == [1, 4] and all(e.tool == "calc" for e in calc)
        last = await mem.last_tool_result("calc")
        assert last is not None and last.inputs == [{"name": "x", "kind": "number", "value": 2}]
        assert last.data["tool"] == "calc" and last.severity == 3
        before = len(await mem.recent(limit=100))
        with pytest.raises(AetherMemoryError, match="name"):
            await mem.write_result(tool="calc", inputs=[{"kind": "number", "value": 1}])
        with pytest.raises(AetherMemoryError, match="list"):
            await mem.write_result(tool="calc", outputs={"name": "y", "value": 1})
        with pytest.raises(AetherMemoryError, match="JSON"):
            await mem.write_result(tool="calc", outputs=[{"name": "y", "value": object()}])
        assert len(await mem.recent(limit=100)) == before


# -- bad input --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "k", "data": {1, 2}}, "JSON"),
        ({"kind": "k", "data": {"x": float("nan")}}, "JSON"),
        ({"kind": "k", "data": b"bytes"}, "JSON"),
        ({"kind": "", "data": 1}, "kind"),
        ({"kind": "k", "data": 1, "tags": "single"}, "tags"),
        ({"kind": "k", "data": 1, "metrics": {"m": "high"}}, "metrics"),
        ({"kind": "k", "data": 1, "severity": 9}, "severity"),
        ({"kind": "k", "data": 1, "signal": float("inf")}, "signal"),
    ],
)
async def test_bad_input_is_typed_and_writes_nothing(local_config: AetherConfig, kwargs: dict[str, Any],
                                                     match: str) -> None:
    async with open_session(config=local_config) as ctx:
        with pytest.raises(AetherMemoryError, match=match):
            await ctx.memory().record(**kwargs)
    assert _memory_keys(local_config) == []


async def test_levels_unknown_and_session_without_id(local_config: AetherConfig) -> None:
    with pytest.raises(ValidationError, match="memory_level"):
        async with open_session(config=local_config, memory_level="weekly"):
            pass
    async with open_session(config=local_config, memory_level="session") as ctx:
        with pytest.raises(AetherMemoryError, match="session_id"):
            ctx.memory()
        with pytest.raises(AetherMemoryError, match="unknown"):
            MemoryService(ctx, level="weekly")
    assert _memory_keys(local_config) == []


async def test_timelines_by_level(local_config: AetherConfig) -> None:
    async with open_session(config=local_config, graph_id="etl") as a:
        await a.memory().record("k", "run-a")
    async with open_session(config=local_config, graph_id="etl") as b:
        assert await b.memory().recent() == []  # run level: a new run has its own timeline
    for i in range(2):
        async with open_session(config=local_config, memory_level="session", session_id="chat 42/é") as s:
            await s.memory().record("k", f"session-{i}")
            assert s.memory().timeline == "session:chat 42/é"
    async with open_session(config=local_config, memory_level="session", session_id="chat 42/é") as s:
        assert [e.data for e in await s.memory().recent()] == ["session-0", "session-1"]
    async with open_session(config=local_config, memory_level="graph", graph_id="my_flow") as g1:
        await g1.memory().record("k", "graph-1")
    async with open_session(config=local_config, memory_level="graph", graph_id="my_flow") as g2:
        got = await g2.memory().recent()
        assert [e.data for e in got] == ["graph-1"] and got[0].run_id != g2.run_id


# -- Prefect runs -------------------------------------------------------------------


def test_sync_tasks_and_concurrent_writers_lose_nothing(local_config: AetherConfig) -> None:
    """4 tasks x 100 records on a thread pool (2 sync sequential, 2 async gathered): 400, per-writer order kept."""

    @aether_task(config=local_config)
    def sync_burst(w: int, n: int, *, context: NodeContext) -> str:
        mem = context.memory()
        for i in range(n):
            mem.sync.record("burst", {"w": w, "i": i}, tags=[f"w{w}"])
        return context.run_id

    @aether_task(config=local_config)
    async def async_burst(w: int, n: int, *, context: NodeContext) -> str:
        mem = context.memory()
        await asyncio.gather(*(mem.record("burst", {"w": w, "i": i}, tags=[f"w{w}"]) for i in range(n)))
        return context.run_id

    @flow(name="mem-burst", task_runner=ThreadPoolTaskRunner(max_workers=4))
    def burst() -> list[str]:
        futs = [sync_burst.submit(0, 100), async_burst.submit(1, 100), sync_burst.submit(2, 100),
                async_burst.submit(3, 100)]
        return [f.result() for f in futs]

    run_ids = burst()
    assert len(set(run_ids)) == 1

    async def read() -> list[Event]:
        async with open_session(run_id=run_ids[0], config=local_config) as ctx:
            return await ctx.memory().recent(kinds=["burst"], limit=1000)

    events = asyncio.run(read())
    assert len(events) == 400 and len({e.event_id for e in events}) == 400
    for w in range(4):
        mine = [e for e in events if e.data["w"] == w]
        assert [e.data["i"] for e in mine] == list(range(100)), f"writer {w} out of order"
        assert len({e.node_id for e in mine}) == 1


_CHILD = """
import json, os, sys
from prefect import flow
from aether_prefect import NodeContext, aether_task
from aether_prefect.blocks import AetherConfig, AetherObjectStore

store_fields, flow_name, n = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
config = AetherConfig(store=AetherObjectStore(**store_fields), memory_level="graph")

@aether_task(config=config)
def write(n: int, *, context: NodeContext) -> str:
    for i in range(n):
        context.memory().sync.record("xproc", {"i": i, "pid": os.getpid()}, tags=["x"])
    return context.run_id

@flow(name=flow_name)
def writer_flow(n: int) -> str:
    return write(n)

print(json.dumps(writer_flow(n)))
"""


def _store_fields(block: AetherObjectStore) -> dict[str, Any]:
    fields = block.model_dump(exclude={"aws_secret_access_key", "block_type_slug"}, exclude_none=True)
    if block.aws_secret_access_key is not None:
        fields["aws_secret_access_key"] = block.aws_secret_access_key.get_secret_value()
    return fields


def _spawn_writer(block: AetherObjectStore, flow_name: str, n: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(_store_fields(block)), flow_name, str(n)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )


def _check_graph_timeline(block: AetherObjectStore, procs: list[subprocess.Popen[str]], flow_name: str,
                          n: int) -> None:
    child_runs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        child_runs.append(json.loads(out.strip().splitlines()[-1]))

    async def read() -> tuple[str, list[Event]]:
        cfg = AetherConfig(store=block, memory_level="graph")
        async with open_session(config=cfg, graph_id=flow_name) as ctx:
            return ctx.run_id, await ctx.memory().recent(limit=10 * n)

    my_run, events = asyncio.run(read())
    assert len(events) == n * len(procs)
    assert {e.run_id for e in events} == set(child_runs) and my_run not in child_runs
    for pid in {e.data["pid"] for e in events}:
        assert [e.data["i"] for e in events if e.data["pid"] == pid] == list(range(n))


@pytest.mark.slow
def test_graph_level_across_processes_local(local_config: AetherConfig) -> None:
    """Two flow runs in two processes write the same graph timeline at once; a third process reads both."""
    flow_name = f"mem-xproc-{uuid.uuid4().hex[:8]}"
    procs = [_spawn_writer(local_config.store, flow_name, 30) for _ in range(2)]
    _check_graph_timeline(local_config.store, procs, flow_name, 30)


@pytest.mark.slow
def test_graph_level_across_processes_s3(s3_store_block: AetherObjectStore) -> None:
    flow_name = f"mem-xproc-s3-{uuid.uuid4().hex[:8]}"
    _check_graph_timeline(s3_store_block, [_spawn_writer(s3_store_block, flow_name, 20)], flow_name, 20)


# -- Prefect events -----------------------------------------------------------------


def _poll_events(name: str, want: int = 1, timeout_s: float = 45) -> list[dict[str, Any]]:
    url = os.environ["PREFECT_API_URL"].rstrip("/") + "/events/filter"
    body = {"filter": {"event": {"name": [name]}}, "limit": 50}
    deadline = time.monotonic() + timeout_s
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        resp = httpx.post(url, json=body, timeout=10)
        resp.raise_for_status()
        events = resp.json()["events"]
        if len(events) >= want:
            return events
        time.sleep(0.5)
    return events


def test_record_is_mirrored_as_a_prefect_event(local_config: AetherConfig) -> None:
    kind = f"probe{uuid.uuid4().hex[:8]}"

    @aether_task(config=local_config)
    def probe(*, context: NodeContext) -> dict[str, str]:
        ev = context.memory().sync.record(kind, {"n": 1}, tags=["p"], text="x" * 5000)
        return {"event_id": ev.event_id, "flow_run_id": str(context.flow_run_id),
                "task_run_id": str(context.task_run_id), "run_id": context.run_id}

    @flow(name="mem-events")
    def f() -> dict[str, str]:
        return probe()

    ids = f()
    events = _poll_events(f"aether.memory.{kind}")
    assert len(events) == 1, "the memory event never reached the Prefect API"
    ev = events[0]
    assert ev["id"] == ids["event_id"]
    assert ev["resource"]["prefect.resource.id"] == f"aether.memory.run.{ids['run_id']}"
    related = {r["prefect.resource.id"]: r["prefect.resource.role"] for r in ev["related"]}
    assert related[f"prefect.flow-run.{ids['flow_run_id']}"] == "flow-run"
    assert related[f"prefect.task-run.{ids['task_run_id']}"] == "task-run"
    assert ev["payload"]["kind"] == kind and ev["payload"]["data"] == {"n": 1}
    assert len(ev["payload"]["text"]) <= 256 and ev["payload"]["text_truncated"] is True

    # Outside any run the event is still emitted when an API is configured.
    async def outside() -> str:
        async with open_session(config=local_config, memory_level="graph", graph_id="outside") as ctx:
            return (await ctx.memory().record(kind, "outside")).event_id

    out_id = asyncio.run(outside())
    events = _poll_events(f"aether.memory.{kind}", want=2)
    outside_ev = [e for e in events if e["id"] == out_id]
    assert outside_ev and outside_ev[0]["resource"]["prefect.resource.id"] == "aether.memory.graph.outside"
