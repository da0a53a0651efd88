"""#21: graph segments answer ``view="graph"`` from one object plus the runs changed since, exactly as the events do:
new saves, retried saves, Prefect links and new runs written after a segment are seen; a save landing while a
segment is written is not lost; stores without segments (or with a damaged one) still answer."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from aether_prefect import open_session
from aether_prefect.blocks import AetherConfig, AetherObjectStore
from aether_prefect.services.artifacts import Artifact, _parts
from aether_prefect.services.artifacts._index import IndexEvent
from aether_prefect.services.artifacts._parts import GSEGS, RUNS, SEGS, PartitionedIndex, enc, part_of
from aether_prefect.services.artifacts._query import Filter
from aether_prefect.services.stores import open_store
from aether_prefect.services.stores.base import ObjectStore
from aether_prefect.services.stores.local import LocalStore
from tests.services.artifacts._helpers import CountingStore

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def small_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Segments after a few runs, so small graphs exercise them."""
    monkeypatch.setattr(_parts, "GRAPH_SEGMENT_RUNS", 3)
    monkeypatch.setattr(_parts, "GRAPH_SEGMENT_EVENTS", 1)


def _rec(i: int, run: str, *, graph: str = "g", kind: str | None = None, m: float | None = None) -> Artifact:
    sha = hashlib.sha256(f"{i}".encode()).hexdigest()
    return Artifact(artifact_id=sha, uri=f"file:///{sha}", sha256=sha, kind=kind or ("model" if i % 2 else "data"),
                    bytes=1, metrics={"m": float(i if m is None else m)}, labels={"i": i % 3, "run_id": run},
                    created_at=datetime.now(timezone.utc), run_id=run, graph_id=graph, node_id="n")


def _truth(store: ObjectStore, graph: str = "g", flt: Filter | None = None) -> list[tuple[Any, ...]]:
    """The graph's records as the events alone give them (no graph segment: a plain callable filter)."""
    flt = flt or Filter()
    pairs = PartitionedIndex(store).graph_records(graph, lambda raw: flt(raw))
    return sorted((r.artifact_id, r.run_id, r.kind, r.metrics["m"], r.prefect_artifact_id) for _, r in pairs)


def _seen(store: ObjectStore, graph: str = "g", flt: Filter | None = None) -> list[tuple[Any, ...]]:
    hits = PartitionedIndex(store).graph_hits(graph, flt or Filter())
    recs = [h.artifact() for h in hits]
    return sorted((r.artifact_id, r.run_id, r.kind, r.metrics["m"], r.prefect_artifact_id) for r in recs if r)


def _segments(store: ObjectStore, graph: str = "g") -> list[str]:
    return list(store.list_keys(f"{GSEGS}/{enc('g', graph)}/"))


def test_a_segment_plus_newer_runs_answers_exactly_and_reads_only_the_changed_runs(store: ObjectStore) -> None:
    writer = PartitionedIndex(store)
    keys = {}
    for i in range(24):  # 6 runs of 4
        keys[i] = writer.write_add(_rec(i, f"r{i // 4}"))
    assert _seen(store) == _truth(store) and len(_truth(store)) == 24
    assert len(_segments(store)) == 1, "the first graph query wrote a segment"

    # after the segment: a new save in r1, a retried save in r2 (a second add event of the same save), a
    # Prefect link for a record of r3, and a new run r9
    writer.write_add(_rec(101, "r1", m=1000.0))
    again = _rec(9, "r2")
    part = part_of("g", "r2")
    retry_key = f"{RUNS}/{part[0]}/{part[1]}/99999999999999999-{uuid.uuid4().hex[:12]}.json"
    raw = IndexEvent(op="add", artifact_id=again.artifact_id, record=again, at=again.created_at)
    store.put_bytes(retry_key, json.dumps(raw.model_dump(mode="json", exclude_none=True)).encode())
    part3 = part_of("g", "r3")  # a Prefect link event, as writers before the add event carried the link wrote it
    link = IndexEvent(op="prefect", artifact_id=_rec(13, "r3").artifact_id, ref=keys[13], prefect_artifact_id="pa-13",
                      at=again.created_at)
    store.put_bytes(f"{RUNS}/{part3[0]}/{part3[1]}/99999999999999999-{uuid.uuid4().hex[:12]}.json",
                    json.dumps(link.model_dump(mode="json", exclude_none=True)).encode())
    writer.write_add(_rec(200, "r9"))

    counting = CountingStore(store)
    got = _seen(counting)  # type: ignore[arg-type]
    assert got == _truth(store) and len(got) == 26
    assert ("pa-13" in {g[4] for g in got}) and sum(1 for g in got if g[0] == again.artifact_id) == 1
    runs_read = {k[len(RUNS) + 1 :].split("/")[1] for k in counting.reads if k.startswith(f"{RUNS}/")}
    runs_read |= {k[len(SEGS) + 1 :].split("/")[1] for k in counting.reads if k.startswith(f"{SEGS}/")}
    assert runs_read == {enc("r", r) for r in ("r1", "r2", "r3", "r9")}, "unchanged runs come from the segment"
    assert sum(1 for k in counting.reads if k.startswith(f"{GSEGS}/")) == 1

    for flt in (Filter(kind="model", metric="m"), Filter(labels={"i": [0, 2]}), Filter(kind="data", labels={"i": 1}),
                Filter(metric="nope"), Filter(kind="nope"), Filter(labels={"run_id": "r9"})):
        assert _seen(store, flt=flt) == _truth(store, flt=flt), flt
    best = max(PartitionedIndex(store).graph_hits("g", Filter(kind="model", metric="m")), key=lambda h: h.score or 0)
    assert best.artifact() is not None and best.artifact().metrics["m"] == 1000.0  # type: ignore[union-attr]


def test_a_save_landing_while_a_segment_is_written_is_not_lost(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, "p")
    writer = PartitionedIndex(store)
    for i in range(12):
        writer.write_add(_rec(i, f"r{i // 3}"))
    other = PartitionedIndex(store)  # another process's writer

    class LandsMidCompaction:
        """The store as the compacting reader sees it: a save lands in r0 just before its segment is put."""

        def __init__(self) -> None:
            self.landed = False

        def put_bytes(self, key: str, data: bytes, **kw: Any) -> None:
            if key.startswith(f"{GSEGS}/") and not self.landed:
                self.landed = True
                other.write_add(_rec(500, "r0", m=5000.0))
            store.put_bytes(key, data, **kw)

        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

    racing = LandsMidCompaction()
    first = PartitionedIndex(racing).graph_hits("g", Filter())  # type: ignore[arg-type]
    assert racing.landed and len(first) == 12, "the answer is as of the listing"
    assert len(_segments(store)) == 1
    assert _seen(store) == _truth(store) and len(_truth(store)) == 13, "the next reader sees the late save"
    top = PartitionedIndex(store).graph_hits("g", Filter(metric="m"))
    assert max(h.score or 0 for h in top) == 5000.0


def test_stores_without_or_with_a_damaged_segment_still_answer(store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = PartitionedIndex(store)
    for i in range(15):
        writer.write_add(_rec(i, f"r{i // 3}"))
    want = _truth(store)
    assert _seen(store) == want  # writes a segment
    [seg] = _segments(store)
    g = enc("g", "g")
    store.put_bytes(f"{GSEGS}/{g}/9999999999-damaged.seg", b"aether-graph-segment 1\n{not json")
    store.put_bytes(f"{GSEGS}/{g}/9999999998-foreign.seg", b"something else entirely")
    assert _seen(store) == want, "damaged or foreign segments are skipped"
    for key in _segments(store):
        store.delete(key)
    monkeypatch.setattr(_parts, "GRAPH_SEGMENT_RUNS", 10**9)  # and none written: the old reading path
    assert _seen(store) == want and not _segments(store), "no segment: the runs are read as before"
    assert seg


def test_an_older_segment_is_deleted_only_after_a_newer_one_was_read(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, "p")
    writer = PartitionedIndex(store)
    for i in range(12):
        writer.write_add(_rec(i, f"r{i // 3}"))
    _seen(store)
    first = _segments(store)
    for i in range(12, 24):
        writer.write_add(_rec(i, f"r{i // 3}"))
    _seen(store)  # reads the first segment, writes a second: the first stays (a reader may be on it)
    second = _segments(store)
    assert len(second) == 2 and set(first) < set(second)
    for i in range(24, 36):
        writer.write_add(_rec(i, f"r{i // 3}"))
    _seen(store)  # reads the second, writes a third, deletes the first
    third = _segments(store)
    assert len(third) == 2 and not set(first) & set(third)
    assert _seen(store) == _truth(store) and len(_truth(store)) == 36


def _writer(root: str, tag: int, n: int, go: Any) -> None:
    go.wait(600)
    index = PartitionedIndex(LocalStore(root, "p"))
    for i in range(n):  # own runs and one run every writer shares
        run = "shared" if i % 3 == 0 else f"w{tag}-{i // 5}"
        index.write_add(_rec(tag * 1000 + i, run))


def _compactor(root: str, go: Any, stop: Any, out: Any) -> None:
    store = LocalStore(root, "p")
    counts = []
    go.set()
    while not stop.is_set() or len(counts) < 3:
        counts.append(len(PartitionedIndex(store).graph_hits("g", Filter())))  # a fresh reader each time
    out.put(counts)


@pytest.mark.slow
def test_concurrent_writers_in_many_processes_while_segments_are_written_lose_nothing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, "p")
    seed = PartitionedIndex(store)
    for i in range(12):
        seed.write_add(_rec(90_000 + i, f"seed{i // 3}"))
    # spawn, not fork: a child forked from a process with Prefect's threads running can inherit a held lock.
    ctx = multiprocessing.get_context("spawn")
    go, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    compactor = ctx.Process(target=_compactor, args=(str(tmp_path), go, stop, out))
    writers = [ctx.Process(target=_writer, args=(str(tmp_path), t, 60, go)) for t in range(3)]
    try:
        compactor.start()
        for p in writers:
            p.start()
        for p in writers:
            p.join(600)
            assert p.exitcode == 0
        stop.set()
        counts = out.get(timeout=600)
        compactor.join(600)
        assert compactor.exitcode == 0
    finally:  # a failed writer must not leave the compactor looping (pytest would wait for it at exit)
        stop.set()
        for p in [compactor, *writers]:
            if p.is_alive():
                p.terminate()
                p.join(30)
    assert counts == sorted(counts), "a reader never sees fewer records than one before it"
    want = {hashlib.sha256(f"{t * 1000 + i}".encode()).hexdigest() for t in range(3) for i in range(60)}
    want |= {hashlib.sha256(f"{90_000 + i}".encode()).hexdigest() for i in range(12)}
    got = {h.artifact_id for h in PartitionedIndex(store).graph_hits("g", Filter())}
    assert got == want
    assert _segments(store), "segments were written along the way"
    assert sorted(r[0] for r in _seen(store)) == sorted(want)


async def test_search_and_best_over_a_graph_through_the_service(config_local: AetherConfig) -> None:
    saved: list[Artifact] = []
    for run in range(5):
        async with open_session(config=config_local, graph_id="gs", run_id=f"run{run}") as ctx:
            for j in range(3):
                saved.append(await ctx.artifacts().save_text(f"{run}-{j}", kind="model" if j else "data",
                                                             metrics={"acc": run * 10 + j}))
    store = open_store(config_local.store)  # type: ignore[arg-type]
    for attempt in range(2):  # the first query writes the segment, the second reads it
        _parts.parts_for.clear()
        async with open_session(config=config_local, graph_id="gs", run_id="reader") as ctx:
            arts = ctx.artifacts()
            best = await arts.best(kind="model", metric="acc", view="graph")
            assert best is not None and best.metrics["acc"] == 42
            worst = await arts.best(kind="model", metric="acc", mode="min", view="graph")
            assert worst is not None and worst.metrics["acc"] == 1
            top = await arts.search(kind="model", metric="acc", view="graph", limit=3)
            assert [a.metrics["acc"] for a in top] == [42, 41, 32]
            everything = await arts.list(view="graph")
            assert sorted(a.artifact_id for a in everything) == sorted(a.artifact_id for a in saved)
            assert [a.created_at for a in everything] == sorted((a.created_at for a in everything), reverse=True)
            await arts.pin(best.artifact_id)
            assert (await arts.best(kind="model", metric="acc", view="graph")).pinned  # type: ignore[union-attr]
        assert _segments(store, "gs"), attempt


@pytest.fixture
def config_local(tmp_store: AetherObjectStore) -> AetherConfig:
    from aether_prefect.services.artifacts import _migrate

    _migrate._absent.clear()
    return AetherConfig(store=tmp_store)


def test_threads_of_one_process_share_the_segment_safely(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, "p")
    index = PartitionedIndex(store)
    for i in range(12):
        index.write_add(_rec(i, f"r{i // 3}"))
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(10):
                index.write_add(_rec(1000 * (t + 1) + i, f"t{t}"))
                index.graph_hits("g", Filter(kind="model", metric="m"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert _seen(store) == _truth(store) and len(_truth(store)) == 42


def test_sync_queries_run_on_the_calling_thread_unless_overridden(config_local: AetherConfig) -> None:
    from aether_prefect import open_session_sync
    from aether_prefect.services.artifacts import ArtifactsService

    threads: set[int] = set()

    class Watched(LocalStore):
        def list_keys(self, prefix: str, **kw: Any) -> Any:
            threads.add(threading.get_ident())
            return super().list_keys(prefix, **kw)

    store = Watched(config_local.store.root, config_local.store.prefix)  # type: ignore[union-attr]
    with open_session_sync(config=config_local, graph_id="g", run_id="r") as ctx:
        arts = ctx.artifacts()
        arts._store = store
        saved = arts.sync.save_text("x", kind="model", metrics={"m": 1})
        threads.clear()
        assert [a.artifact_id for a in arts.sync.search(view="run")] == [saved.artifact_id]
        assert arts.sync.best(kind="model", metric="m", view="graph").artifact_id == saved.artifact_id
        assert [a.artifact_id for a in arts.sync.list()] == [saved.artifact_id]
        assert arts.sync.get_by_id(saved.artifact_id).artifact_id == saved.artifact_id
        assert threads == {threading.get_ident()}, "no hop to the portal loop or a worker thread"
        with pytest.raises(ValueError):
            arts.sync.search(mode="sideways")  # type: ignore[arg-type]

        class Custom(ArtifactsService):
            async def search(self, **kw: Any) -> list[Artifact]:  # type: ignore[override]
                return []

        custom = Custom(ctx)
        custom._store = store
        assert custom.sync.search(view="run") == [] and custom.sync.best(kind="model", metric="m") is None
        assert custom.sync.get_by_id(saved.artifact_id).artifact_id == saved.artifact_id
