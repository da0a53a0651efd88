"""#21: the artifact index is partitioned by graph and run; queries read only what they need; old stores
still read and migrate (twice, losing nothing)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from aether_prefect import open_session
from aether_prefect.blocks import AetherConfig, AetherObjectStore
from aether_prefect.services.artifacts import Artifact, blob_key
from aether_prefect.services.artifacts import _migrate
from aether_prefect.services.artifacts._index import REC, ArtifactIndex, IndexEvent
from aether_prefect.services.artifacts._migrate import MARKER, migrate
from aether_prefect.services.artifacts._parts import (
    FACETS, FACETS_COMPLETE, IDS, PINS, RUNS, SEGS, PartitionedIndex, enc, part_of, parts_for,
)
from aether_prefect.services.stores import open_store
from aether_prefect.services.stores.base import ObjectStore
from aether_prefect.services.stores.local import LocalStore
from tests.services.artifacts._helpers import CountingStore

pytestmark = pytest.mark.anyio


def _rec(i: int, graph: str | None, run: str, *, kind: str = "k", at: datetime | None = None) -> Artifact:
    sha = hashlib.sha256(f"{i}".encode()).hexdigest()
    return Artifact(artifact_id=sha, uri=f"file:///{sha}", sha256=sha, kind=kind, bytes=1, metrics={"m": float(i)},
                    labels={"i": i, "run_id": run}, created_at=at or datetime.now(timezone.utc), run_id=run,
                    graph_id=graph, node_id="n")


def _fill(store: ObjectStore) -> dict[tuple[str | None, str], list[str]]:
    writer = PartitionedIndex(store)
    layout = {("ga", "r1"): range(0, 6), ("ga", "r2"): range(6, 10), ("g/b ü", "r1"): range(10, 13), (None, "r9"): range(13, 14)}
    out: dict[tuple[str | None, str], list[str]] = {}
    for (graph, run), ids in layout.items():
        out[(graph, run)] = [writer.write_add(_rec(i, graph, run)) and _rec(i, graph, run).artifact_id for i in ids]
    return out


def test_queries_read_only_their_partitions(store: ObjectStore) -> None:
    ids = _fill(store)
    counting = CountingStore(store)
    fresh = PartitionedIndex(counting)  # type: ignore[arg-type]
    recs = [r for _, r in fresh.run_records("ga", "r1")]
    assert sorted(r.artifact_id for r in recs) == sorted(ids[("ga", "r1")])
    run_prefix = f"{RUNS}/{enc('g', 'ga')}/{enc('r', 'r1')}/"
    assert counting.reads and all(k.startswith(run_prefix) for k in counting.reads), counting.reads
    assert counting.lists == [run_prefix], "one LIST: the run's folder holds its events and its segments"
    assert list(fresh._parts) == [part_of("ga", "r1")], "a fresh process holds only what it queried"

    counting.reads.clear()
    graph = [r for _, r in fresh.graph_records("ga")]
    assert sorted(r.artifact_id for r in graph) == sorted(ids[("ga", "r1")] + ids[("ga", "r2")])
    assert all(k.startswith(f"{RUNS}/{enc('g', 'ga')}/{enc('r', 'r2')}/") for k in counting.reads), "r1 is cached"
    weird = [r for _, r in PartitionedIndex(store).graph_records("g/b ü")]
    assert sorted(r.artifact_id for r in weird) == sorted(ids[("g/b ü", "r1")]) and weird[0].graph_id == "g/b ü"
    assert len(PartitionedIndex(store).all_records()) == 14

    counting.reads.clear()
    target = ids[("ga", "r2")][1]
    point = PartitionedIndex(counting)  # type: ignore[arg-type]
    got = point.get(target)
    assert got is not None and got.artifact_id == target and got.run_id == "r2"
    assert all(k.startswith((f"{IDS}/{target[:2]}/{target}/", f"{RUNS}/{enc('g', 'ga')}/{enc('r', 'r2')}/"))
               for k in counting.reads), counting.reads
    assert point.get("0" * 64) is None


def test_first_save_marks_a_store_without_old_layout_migrated(store: ObjectStore) -> None:
    """A fresh reader of a store saved by this layout GETs one marker instead of listing the old layout's folders."""
    _fill(store)
    assert store.exists(MARKER)
    counting = CountingStore(store)
    assert _migrate.legacy_index(counting) is None  # type: ignore[arg-type]
    assert (counting.lists, counting.reads) == ([], [MARKER])
    assert _migrate.legacy_index(counting) is None and counting.reads == [MARKER], "checked once per process"


def test_a_pin_is_read_with_its_runs_listing(store: ObjectStore) -> None:
    """pin(id) writes a pin event into every run holding the id: a fresh reader of those runs sees it in the run's
    one LIST, with no pin check (HEAD) per hit; get_by_id sees it too."""
    ids = _fill(store)
    target = ids[("ga", "r1")][2]
    PartitionedIndex(store).write_add(_rec(2, "ga", "r2"))  # the same bytes saved in another run
    PartitionedIndex(store).write_pin(target)
    counting = CountingStore(store)
    fresh = PartitionedIndex(counting)  # type: ignore[arg-type]
    assert fresh.pins_in_runs()
    for run in ("r1", "r2"):
        recs = {r.artifact_id: r for _, r in fresh.run_records("ga", run)}
        assert recs[target].pinned and not any(r.pinned for a, r in recs.items() if a != target), run
    assert counting.heads == [] and len(counting.lists) == 2, (counting.heads, counting.lists)
    got = PartitionedIndex(store).get(target)
    assert got is not None and got.pinned
    PartitionedIndex(store).write_pin(target)  # twice: the same objects
    assert len([k for k in store.list_keys(f"{RUNS}/") if "/pin-" in k]) == 2


async def test_pins_from_before_pin_events_still_read_and_migrate_folds_them(config_local: AetherConfig) -> None:
    store = open_store(config_local.store)  # type: ignore[arg-type]
    ids = _fill(store)
    target = ids[("ga", "r1")][0]
    store.put_bytes(f"{PINS}/{target}", b"old")  # a pin as the previous version wrote it, in a store without marker
    store.delete(MARKER)
    parts_for.clear()
    async with open_session(config=config_local, graph_id="ga", run_id="r1") as ctx:
        hits = {a.artifact_id: a.pinned for a in await ctx.artifacts().search(view="run")}
        assert hits[target] and sum(hits.values()) == 1  # a pin check per hit: the store does not say otherwise
        assert (await ctx.artifacts().get_by_id(target)).pinned
    parts_for.clear()
    assert not PartitionedIndex(store).pins_in_runs()
    report = migrate(store)
    assert report.pin_events == 1 and json.loads(store.get_bytes(MARKER))["pins_in_runs"] is True
    fresh = PartitionedIndex(store)
    assert fresh.pins_in_runs() and {r.artifact_id for _, r in fresh.run_records("ga", "r1") if r.pinned} == {target}


def test_segments_cut_reads_and_miss_nothing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, "p")
    writer = PartitionedIndex(store)
    for i in range(40):
        writer.write_add(_rec(i, "g", "r"))
    assert len(PartitionedIndex(store).run_records("g", "r")) == 40  # fetched one by one: writes a segment
    segs = [k for k in store.list_keys(f"{RUNS}/") if k.rsplit("/", 1)[1].startswith("seg-")]
    assert len(segs) == 1 and not list(store.list_keys(f"{SEGS}/"))
    writer.write_add(_rec(40, "g", "r", at=datetime.now(timezone.utc) - timedelta(hours=3)))  # a skewed clock
    counting = CountingStore(store)
    recs = PartitionedIndex(counting).run_records("g", "r")  # type: ignore[arg-type]
    assert sorted(int(r.metrics["m"]) for _, r in recs) == list(range(41))
    assert len(counting.reads) == 2, counting.reads  # the segment and the one event it lacks
    assert len(counting.lists) == 1, counting.lists


def _writer_proc(root: str, n: int, tag: int) -> None:
    store = LocalStore(root, "p")
    index = PartitionedIndex(store)
    for i in range(n):
        index.write_add(_rec(tag * 1000 + i, "g", "shared"))


@pytest.mark.slow
def test_concurrent_writers_in_many_processes_lose_nothing(tmp_path: Path) -> None:
    # spawn, not fork: a child forked from a process with Prefect's threads running can inherit a held lock
    # (on Prefect 3.6 a forked writer exited 1 when the whole folder ran before it).
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer_proc, args=(str(tmp_path), 25, t)) for t in range(4)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(600)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(30)
    recs = PartitionedIndex(LocalStore(tmp_path, "p")).run_records("g", "shared")
    assert sorted(int(r.metrics["m"]) for _, r in recs) == sorted(t * 1000 + i for t in range(4) for i in range(25))


def test_a_retried_save_is_one_entry_in_its_partition(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, "p")
    rec = _rec(1, "g", "r")
    part = part_of("g", "r")
    keys = [f"{RUNS}/{part[0]}/{part[1]}/{n:017d}-{uuid.uuid4().hex[:12]}.json" for n in (1, 2)]
    for key in keys:  # the first attempt landed, the retry wrote a second add event of the same save
        raw = IndexEvent(op="add", artifact_id=rec.artifact_id, record=rec, at=rec.created_at)
        store.put_bytes(key, json.dumps(raw.model_dump(mode="json", exclude_none=True)).encode())
    link = IndexEvent(op="prefect", artifact_id=rec.artifact_id, ref=keys[1], prefect_artifact_id="pa-1", at=rec.created_at)
    store.put_bytes(f"{RUNS}/{part[0]}/{part[1]}/{3:017d}-x.json", json.dumps(link.model_dump(mode="json", exclude_none=True)).encode())
    recs = PartitionedIndex(store).run_records("g", "r")
    assert len(recs) == 1 and recs[0][1].prefect_artifact_id == "pa-1"


@pytest.mark.parametrize("landed_first", [True, False])
def test_a_retried_save_links_its_newest_prefect_artifact(tmp_path: Path, landed_first: bool) -> None:
    """Add events carry their Prefect artifact's id: a retry (same save, its own Prefect artifact) is one entry
    linked to the retry's artifact, whichever event a reader sees first."""
    from aether_prefect.services.artifacts._parts import _Partition

    rec = _rec(1, "g", "r")
    part = part_of("g", "r")
    keys = [f"{RUNS}/{part[0]}/{part[1]}/{n:017d}-{uuid.uuid4().hex[:12]}.json" for n in (1, 2)]
    raws = [IndexEvent(op="add", artifact_id=rec.artifact_id, record=rec.model_copy(update={"prefect_artifact_id": pid}),
                       at=rec.created_at).model_dump(mode="json", exclude_none=True) for pid in ("pa-1", "pa-2")]
    p = _Partition(part)
    for i in ((0, 1) if landed_first else (1, 0)):
        p._apply(keys[i], raws[i])
    recs = p.records()
    assert [(k, r.prefect_artifact_id) for k, r in recs] == [(keys[0], "pa-2")]


async def test_old_layout_reads_then_migrates_twice_losing_nothing(config_local: AetherConfig) -> None:
    store = open_store(config_local.store)  # type: ignore[arg-type]
    old = ArtifactIndex(store)  # the pre-#21 writer
    now = datetime.now(timezone.utc)
    async with open_session(config=config_local, graph_id="ga", run_id="r1") as ctx:
        recs = [_rec(i, "ga", "r1", kind="model", at=now + timedelta(seconds=i)) for i in range(3)]
        for r in recs:
            store.put_bytes(blob_key(r.artifact_id), str(int(r.metrics["m"])).encode())
        keys = [old.write(IndexEvent(op="add", artifact_id=r.artifact_id, record=r, at=r.created_at)) for r in recs]
        old.write(IndexEvent(op="pin", artifact_id=recs[0].artifact_id, at=now))
        old.write(IndexEvent(op="prefect", artifact_id=recs[1].artifact_id, ref=keys[1], prefect_artifact_id="pa-1", at=now))
        old.write(IndexEvent(op="add", artifact_id=recs[2].artifact_id, record=_rec(2, "other", "r5", at=now), at=now))
        new = await ctx.artifacts().save_text("new layout", kind="model", metrics={"m": 9})
        assert not store.exists(MARKER), "a store holding old records is not marked migrated by a save"

        def snapshot(hits: list[Artifact]) -> list[tuple[str, bool, str | None, str | None]]:
            return sorted((h.artifact_id, h.pinned, h.prefect_artifact_id, h.run_id) for h in hits)

        before_run = snapshot(await ctx.artifacts().search(kind="model", view="run"))
        assert len(before_run) == 4 and new.artifact_id in {h[0] for h in before_run}
        assert (await ctx.artifacts().get_by_id(recs[0].artifact_id)).pinned
        assert (await ctx.artifacts().best(kind="model", metric="m")).artifact_id == new.artifact_id  # type: ignore[union-attr]
        before_all = snapshot(await ctx.artifacts().search(view="all"))
        old_objects = set(store.list_keys(f"{REC}/"))

        first = migrate(store)
        assert (first.records, first.pins, first.prefect_links, first.already_migrated) == (4, 1, 1, False)
        second = migrate(store)
        assert (second.records, second.already_migrated) == (4, True)
        assert set(store.list_keys(f"{REC}/")) == old_objects, "migration deletes nothing"
        assert store.exists(MARKER)
        _migrate._absent.clear()
        from aether_prefect.services.artifacts import _parts

        _parts.parts_for.clear()
        assert _migrate.legacy_index(store) is None  # migrated: the old layout is no longer read
        assert snapshot(await ctx.artifacts().search(kind="model", view="run")) == before_run
        assert snapshot(await ctx.artifacts().search(view="all")) == before_all
        assert (await ctx.artifacts().get_by_id(recs[1].artifact_id)).prefect_artifact_id == "pa-1"


@pytest.fixture
def config_local(tmp_store: AetherObjectStore) -> AetherConfig:
    _migrate._absent.clear()
    return AetherConfig(store=tmp_store)


def test_cli_store_migrate_runs_twice(tmp_store: AetherObjectStore, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from aether_prefect import cli

    store = open_store(tmp_store)
    old = ArtifactIndex(store)
    r = _rec(7, "g", "r")
    old.write(IndexEvent(op="add", artifact_id=r.artifact_id, record=r, at=r.created_at))

    async def fake_load(name: str | None) -> tuple[str, AetherConfig]:
        return "test", AetherConfig(store=tmp_store)

    monkeypatch.setattr(cli, "_load", fake_load)
    for _ in range(2):
        assert cli.main(["store", "migrate"]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["records"] == 1
    got = PartitionedIndex(store).get(r.artifact_id)
    assert got is not None and got.run_id == "r"


def _fill_facets(store: ObjectStore) -> dict[str, Artifact]:
    """Records of kinds a/b with labels over four runs of two graphs; returns them by artifact id."""
    writer = PartitionedIndex(store)
    out = {}
    layout = [("g1", "r1", "a", {"stage": "train", "n": 1}), ("g1", "r1", "b", {"stage": "eval"}),
              ("g1", "r2", "b", {"stage": "train", "n": 2.0}), ("g2", "r3", "a", {"stage": ["eval", "x"], "n": True}),
              ("g2", "r4", "c", {"stage": "train"})]
    for i, (graph, run, kind, labels) in enumerate(layout):
        rec = _rec(100 + i, graph, run, kind=kind).model_copy(update={"labels": {**labels, "run_id": run}})
        writer.write_add(rec)
        out[rec.artifact_id] = rec
    return out


def _runs_read(counting: _Counting) -> set[str]:
    return {k[len(RUNS) + 1:].split("/")[1] for k in counting.reads if k.startswith(f"{RUNS}/")} | {
        k[len(SEGS) + 1:].split("/")[1] for k in counting.reads if k.startswith(f"{SEGS}/")}


def test_all_view_with_kind_or_labels_reads_only_matching_runs(store: ObjectStore) -> None:
    recs = _fill_facets(store)
    assert json.loads(store.get_bytes(MARKER))["facets"] is True, "the first save of an empty store marks its facets complete"

    def ask(kind: str | None, labels: dict[str, Any]) -> tuple[list[tuple[str, str]], set[str]]:
        counting = CountingStore(store)
        got = PartitionedIndex(counting).facet_records(kind, labels)  # type: ignore[arg-type]
        assert got is not None
        return sorted((r.run_id or "", r.kind) for _, r in got), _runs_read(counting)

    hits, runs = ask("a", {})
    assert hits == [("r1", "a"), ("r1", "b"), ("r3", "a")], "whole runs are read; the caller filters"
    assert runs == {enc("r", "r1"), enc("r", "r3")}
    _, runs = ask(None, {"stage": "eval"})  # a list label holds each of its values
    assert runs == {enc("r", "r1"), enc("r", "r3")}
    _, runs = ask("b", {"stage": "train"})  # kind and label: the runs having both
    assert runs == {enc("r", "r1"), enc("r", "r2")}
    _, runs = ask(None, {"stage": ["x", "nothing"]})  # any of the values
    assert runs == {enc("r", "r3")}
    _, runs = ask(None, {"n": 1})  # 1 == 1.0 == True, as label matching compares them
    assert runs == {enc("r", "r1"), enc("r", "r3")}
    _, runs = ask(None, {"n": 2})
    assert runs == {enc("r", "r2")}
    assert ask("zzz", {}) == ([], set())
    assert len(recs) == 5


async def test_search_all_by_kind_and_labels_through_the_service(config_local: AetherConfig) -> None:
    saved: dict[str, set[str]] = {}
    for run, kind, stage in [("r1", "model", "train"), ("r2", "model", "eval"), ("r3", "data", "train")]:
        async with open_session(config=config_local, graph_id=f"g-{run}", run_id=run) as ctx:
            art = await ctx.artifacts().save_text(f"{run} {kind}", kind=kind, labels={"stage": stage}, metrics={"m": len(run)})
            saved.setdefault(kind, set()).add(art.artifact_id)
            saved.setdefault(stage, set()).add(art.artifact_id)
    store = open_store(config_local.store)  # type: ignore[arg-type]
    assert list(store.list_keys(f"{FACETS}/"))
    async with open_session(config=config_local, graph_id="other", run_id="other") as ctx:
        arts = ctx.artifacts()
        assert {a.artifact_id for a in await arts.search(kind="model", view="all")} == saved["model"]
        assert {a.artifact_id for a in await arts.search(labels={"stage": "train"}, view="all")} == saved["train"]
        both = await arts.search(kind="model", labels={"stage": "train"}, view="all")
        assert {a.artifact_id for a in both} == saved["model"] & saved["train"]
        assert await arts.search(kind="none", view="all") == []


async def test_an_unmarked_store_still_answers_and_migrate_marks_it(config_local: AetherConfig) -> None:
    store = open_store(config_local.store)  # type: ignore[arg-type]
    recs = _fill_facets(store)
    for key in [*store.list_keys(f"{FACETS}/"), MARKER]:  # as written before the markers existed
        store.delete(key)
    from aether_prefect.services.artifacts import _parts

    _parts.parts_for.clear()
    assert PartitionedIndex(store).facet_records("a", {}) is None  # not complete: the caller scans everything
    want_a = {a for a, r in recs.items() if r.kind == "a"}
    async with open_session(config=config_local, graph_id="other", run_id="other") as ctx:
        assert {a.artifact_id for a in await ctx.artifacts().search(kind="a", view="all")} == want_a
        for _ in range(2):
            report = migrate(store)
            assert report.facet_markers > 0 and report.records == 0
        assert store.exists(FACETS_COMPLETE)
        got = PartitionedIndex(store).facet_records("a", {})
        assert got is not None and {r.artifact_id for _, r in got if r.kind == "a"} == want_a
        assert {a.artifact_id for a in await ctx.artifacts().search(kind="a", view="all")} == want_a
