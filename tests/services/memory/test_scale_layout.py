"""#21 memory: ``recent(limit)`` lists O(limit) keys whatever the events' timing; old layouts still read;
#17.12: ``memory_mirror`` decides what reaches Prefect events."""

from __future__ import annotations

import importlib
import os
import time
import uuid
from typing import Any

import pytest
from prefect import flow

from aether_prefect import NodeContext, aether_task, open_session
from aether_prefect.blocks import AetherConfig, AetherObjectStore
from aether_prefect.services.stores import local as local_store

pytestmark = pytest.mark.anyio
_log = importlib.import_module("aether_prefect.services.memory._log")  # the module (the package's _log is its logger)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Clock:
    """Stands in for ``time`` inside the memory log: events 1.5 s apart, all within one hour."""

    def __init__(self, start_ns: int) -> None:
        self.now = start_ns

    def time_ns(self) -> int:
        self.now += 1_500_000_000
        return self.now


def _hour_start() -> int:
    t = int(time.time()) // 3600 * 3600 - 2 * 3600
    return t * 1_000_000_000


async def test_recent_lists_o_limit_entries_in_a_busy_hour(tmp_store: AetherObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    config = AetherConfig(store=tmp_store, memory_mirror="off")
    monkeypatch.setattr(_log, "time", _Clock(_hour_start()))
    async with open_session(config=config, graph_id="busy") as ctx:
        mem = ctx.memory()
        for i in range(800):  # 20 minutes of one hour
            await mem.record("tick", {"i": i})
        seen = {"entries": 0}
        real = os.scandir

        class _Counted:
            def __init__(self, path: Any) -> None:
                self._it = real(path)

            def __enter__(self) -> "_Counted":
                return self

            def __exit__(self, *a: Any) -> None:
                self._it.close()

            def __iter__(self) -> Any:
                for entry in self._it:
                    seen["entries"] += 1
                    yield entry

        monkeypatch.setattr(local_store.os, "scandir", _Counted)
        got = await mem.recent(limit=5)
        monkeypatch.setattr(local_store.os, "scandir", real)
    assert [e.data["i"] for e in got] == [795, 796, 797, 798, 799]
    assert seen["entries"] < 150, f"recent(5) listed {seen['entries']} directory entries for 800 events"


async def test_events_in_the_old_hour_layout_still_read(tmp_store: AetherObjectStore) -> None:
    config = AetherConfig(store=tmp_store, memory_mirror="off")
    async with open_session(config=config, graph_id="old") as ctx:
        mem = ctx.memory()
        first = await mem.record("note", "written by the old layout")
        store = ctx.store()
        new_key = next(k for k in store.list_keys(f"{mem.prefix}/ev/"))
        hour, rest = new_key.split("/ev/", 1)[1].split("/", 1)
        old_key = f"{mem.prefix}/ev/{hour}/{rest.rsplit('/', 1)[1]}"  # no minute/second folders
        store.put_bytes(old_key, store.get_bytes(new_key))
        store.delete(new_key)
        second = await mem.record("note", "written by the new layout")
        assert [e.event_id for e in await mem.recent(limit=10)] == [first.event_id, second.event_id]


@pytest.mark.parametrize("mirror", ["off", "kind", "excerpt"])
def test_memory_mirror_setting(tmp_store: AetherObjectStore, mirror: str) -> None:
    from tests.services.memory.test_memory import _poll_events

    kind = f"mir{uuid.uuid4().hex[:8]}"
    config = AetherConfig(store=tmp_store, memory_mirror=mirror)  # type: ignore[arg-type]

    @aether_task(config=config)
    def probe(*, context: NodeContext) -> str:
        context.memory().sync.record(kind, {"secret-ish": "data"}, text="private text " * 50)
        return "ok"

    @flow(name="mem-mirror")
    def f() -> str:
        return probe()

    f()
    events = _poll_events(f"aether.memory.{kind}", want=1, timeout_s=8 if mirror == "off" else 45)
    if mirror == "off":
        assert events == [], "memory_mirror='off' sent an event"
        return
    assert len(events) == 1
    payload = events[0]["payload"]
    assert payload["kind"] == kind
    if mirror == "kind":
        assert "text" not in payload and "data" not in payload and "tags" not in payload
    else:
        assert payload["data"] == {"secret-ish": "data"} and len(payload["text"]) <= 256
