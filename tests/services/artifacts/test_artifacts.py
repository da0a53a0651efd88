"""context.artifacts() on both backends, with a real Prefect server and a real S3 endpoint (moto over HTTP)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest
from prefect import flow

from aether_prefect import NodeContext, aether_task, open_session, open_session_sync
from aether_prefect.blocks import AetherConfig, AetherObjectStore
from aether_prefect.errors import ArtifactNotFound, IntegrityError, StoreError, ValidationError
from aether_prefect.services.artifacts._index import REC
from aether_prefect.services.artifacts import Artifact, blob_key
from aether_prefect.services.stores import open_store
from aether_prefect.services.stores.local import LocalStore
from tests.servers.s3 import SECRET_KEY

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["local", "s3"])
def config(request: pytest.FixtureRequest, tmp_store: AetherObjectStore) -> AetherConfig:
    """An unsaved AetherConfig on a fresh store of each backend."""
    block = tmp_store if request.param == "local" else request.getfixturevalue("s3_store_block")
    return AetherConfig(store=block, kv_namespace=f"t{uuid.uuid4().hex[:10]}")


def _events(config: AetherConfig) -> list[str]:
    return list(open_store(config.store).list_keys(f"{REC}/"))  # type: ignore[arg-type]


async def test_save_and_load_roundtrip(config: AetherConfig) -> None:
    async with open_session(config=config, graph_id="g1", node_id="n1") as ctx:
        arts = ctx.artifacts()
        t = await arts.save_text("héllo", name="greeting.txt", labels={"lang": "fr"}, metrics={"score": 1})
        j = await arts.save_json({"a": [1, 2]}, kind="cfg")
        b = await arts.save_bytes(b"\x00\x01binary", name="x.bin")
        assert t.artifact_id == hashlib.sha256("héllo".encode()).hexdigest() == t.sha256
        assert t.bytes == len("héllo".encode()) and t.kind == "text" and t.mime.startswith("text/plain")
        assert t.labels == {"lang": "fr", "run_id": ctx.run_id, "graph_id": "g1", "node_id": "n1"}
        assert (t.run_id, t.graph_id, t.node_id) == (ctx.run_id, "g1", "n1") and t.metrics == {"score": 1.0}
        assert t.prefect_artifact_id is None  # outside a run
        assert await arts.load_text_by_id(t.artifact_id) == "héllo"
        assert await arts.load_text(t.uri) == "héllo"
        assert await arts.load_json_by_id(j.artifact_id) == {"a": [1, 2]} == await arts.load_json(j.uri)
        assert await arts.load_bytes(b.uri) == b"\x00\x01binary" == await arts.load_bytes_by_id(b.artifact_id)
        got = await arts.get_by_id(j.artifact_id)
        assert got.kind == "cfg" and got.uri == j.uri
        path = await arts.as_local_file(b)
        assert Path(path).read_bytes() == b"\x00\x01binary"
        assert Path(await arts.as_local_file(b.uri)).read_bytes() == b"\x00\x01binary"
        with pytest.raises(ArtifactNotFound):
            await arts.get_by_id("0" * 64)
        with pytest.raises(ArtifactNotFound):
            await arts.load_bytes_by_id("0" * 64)
        with pytest.raises(ValidationError):
            await arts.load_bytes_by_id("not-a-sha")


async def test_same_bytes_stored_once(config: AetherConfig) -> None:
    async with open_session(config=config) as ctx:
        a1 = await ctx.artifacts().save_text("same", name="one.txt")
        a2 = await ctx.artifacts().save_bytes(b"same", name="two.bin")
        assert a1.artifact_id == a2.artifact_id and a1.uri == a2.uri
        store = ctx.store()
        assert list(store.list_keys("artifacts/blobs/")) == [blob_key(a1.artifact_id)]
        assert len(await ctx.artifacts().list()) == 1  # one entry per artifact id (its newest record)


async def test_save_file_copies_and_cleanup(config: AetherConfig, tmp_path: Path) -> None:
    src = tmp_path / "report.md"
    src.write_text("# Report\nall good\n")
    async with open_session(config=config) as ctx:
        art = await ctx.artifacts().save_file(src, kind="report")
        assert src.exists(), "save_file must never delete the source by default"
        assert art.name == "report.md" and art.mime == "text/markdown"
        assert await ctx.artifacts().load_text(art.uri) == "# Report\nall good\n"
        art2 = await ctx.artifacts().save_file(str(src), name="renamed.md", cleanup=True)
        assert not src.exists() and art2.artifact_id == art.artifact_id and art2.name == "renamed.md"


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "a/b", "a\\b", "nul\x00", "..", "x..y", ""])
async def test_bad_names_rejected_before_writing(tmp_store: AetherObjectStore, name: str, tmp_path: Path) -> None:
    config = AetherConfig(store=tmp_store)
    src = tmp_path / "f.txt"
    src.write_text("x")
    async with open_session(config=config) as ctx:
        arts = ctx.artifacts()
        for call in (
            lambda: arts.save_text("x", name=name), lambda: arts.save_json([1], name=name),
            lambda: arts.save_bytes(b"x", name=name), lambda: arts.save_file(src, name=name),
        ):
            with pytest.raises(ValidationError, match="name"):
                await call()
        with pytest.raises(ValidationError):
            async with arts.writer(name=name) as w:
                w.write("x")
        assert list(ctx.store().list_keys("artifacts/")) == []


async def test_other_bad_input_rejected_before_writing(config: AetherConfig, tmp_path: Path) -> None:
    async with open_session(config=config) as ctx:
        arts = ctx.artifacts()
        with pytest.raises(ValidationError, match="no file at"):
            await arts.save_file(tmp_path / "missing.txt")
        with pytest.raises(ValidationError, match="no file at"):
            await arts.save_file(tmp_path)  # a directory
        with pytest.raises(ValidationError, match="JSON-serialisable"):
            await arts.save_json({"when": object()})
        with pytest.raises(ValidationError, match="JSON-serialisable"):
            await arts.save_json({"x": float("nan")})
        with pytest.raises(ValidationError, match="metric"):
            await arts.save_text("x", metrics={"loss": "low"})  # type: ignore[dict-item]
        with pytest.raises(ValidationError, match="label"):
            await arts.save_text("x", labels={"k": {"nested": 1}})
        with pytest.raises(ValidationError, match="save_text takes a str"):
            await arts.save_text(b"bytes")  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="view"):
            await arts.search(view="planet")  # type: ignore[arg-type]
        assert list(ctx.store().list_keys("artifacts/")) == []


async def test_writer_commits_on_exit_and_discards_on_error(config: AetherConfig) -> None:
    async with open_session(config=config) as ctx:
        arts = ctx.artifacts()
        async with arts.writer(kind="table", planned_ext=".csv", name="rows.csv") as w:
            w.write("a,b\n")
            w.write(b"1,2\n")
            w.add_metrics(rows=1)
        assert w.artifact is not None and w.artifact.mime == "text/csv" and w.artifact.metrics == {"rows": 1.0}
        assert await arts.load_text(w.artifact.uri) == "a,b\n1,2\n"
        assert not w.path.exists()
        before = _events(config)
        with pytest.raises(RuntimeError, match="boom"):
            async with arts.writer(kind="table") as w2:
                w2.write("partial")
                raise RuntimeError("boom")
        assert w2.artifact is None and not w2.path.exists()
        assert _events(config) == before
        assert len(list(ctx.store().list_keys("artifacts/blobs/"))) == 1


async def test_query_views_labels_metrics_pin(config: AetherConfig) -> None:
    run_a = f"run-{uuid.uuid4().hex[:6]}"
    async with open_session(config=config, run_id=run_a, graph_id="train", node_id="fit") as ctx:
        arts = ctx.artifacts()
        m1 = await arts.save_json({"m": 1}, kind="model", labels={"arch": "cnn"}, metrics={"acc": 0.7, "loss": 0.9})
        m2 = await arts.save_json({"m": 2}, kind="model", labels={"arch": "mlp"}, metrics={"acc": 0.9, "loss": 0.4})
        await arts.save_text("notes", kind="notes")
    async with open_session(config=config, run_id=run_a, graph_id="train", node_id="eval") as ctx:
        arts = ctx.artifacts()
        m3 = await arts.save_json({"m": 3}, kind="model", labels={"arch": "cnn"}, metrics={"acc": 0.8, "loss": 0.2})
        assert {a.artifact_id for a in await arts.search(kind="model", view="node")} == {m3.artifact_id}
        assert {a.artifact_id for a in await arts.search(kind="model", scope="node")} == {m3.artifact_id}
        assert len(await arts.list()) == 4 and len(await arts.list(view="node")) == 1
        assert [a.artifact_id for a in await arts.search(kind="model", metric="acc")] == [
            m2.artifact_id, m3.artifact_id, m1.artifact_id]
        assert [a.artifact_id for a in await arts.search(kind="model", metric="loss", mode="min", limit=2)] == [
            m3.artifact_id, m2.artifact_id]
        assert {a.artifact_id for a in await arts.search(labels={"arch": "cnn"})} == {m1.artifact_id, m3.artifact_id}
        assert (await arts.best(kind="model", metric="acc")).artifact_id == m2.artifact_id  # type: ignore[union-attr]
        assert (await arts.best(kind="model", metric="loss", mode="min", scope="run")).artifact_id == m3.artifact_id  # type: ignore[union-attr]
        assert await arts.best(kind="model", metric="f1") is None
        pinned = await arts.pin(m1.artifact_id)
        assert pinned.pinned
        assert (await arts.get_by_id(m1.artifact_id)).pinned
    async with open_session(config=config, graph_id="train", node_id="report") as ctx:  # a new run of the graph
        arts = ctx.artifacts()
        assert await arts.list() == []
        assert len(await arts.search(kind="model", view="graph")) == 3
        assert len(await arts.list(view="all")) == 4
        await arts.save_text("other graph", kind="notes")
    async with open_session(config=config, graph_id="other") as ctx:
        assert await ctx.artifacts().search(kind="model", view="graph") == []
        assert len(await ctx.artifacts().search(view="all")) == 5


def test_index_survives_the_process(config: AetherConfig) -> None:
    """Another process (a fresh cache) finds what this one saved, pins included."""
    from aether_prefect import open_session_sync

    with open_session_sync(config=config, graph_id="writer") as ctx:
        arts = ctx.artifacts().sync
        a = arts.save_json([{"x": 1}], kind="metrics", metrics={"f1": 0.5}, labels={"exp": "e1"})
        arts.pin(a.artifact_id)
        aid = a.artifact_id
    script = textwrap.dedent(
        """
        import json, sys
        from aether_prefect import open_session_sync
        from aether_prefect.blocks import AetherConfig
        cfg = AetherConfig.model_validate_json(sys.stdin.read())
        with open_session_sync(config=cfg, graph_id="reader") as ctx:
            best = ctx.artifacts().sync.best(kind="metrics", metric="f1", scope="all")
            hits = ctx.artifacts().sync.search(labels={"exp": "e1"}, view="all")
            print(json.dumps({"best": best.artifact_id, "pinned": best.pinned, "n": len(hits),
                              "data": ctx.artifacts().sync.load_json_by_id(best.artifact_id)}))
        """
    )
    data = config.model_dump(mode="json")
    if config.store.aws_secret_access_key is not None:  # type: ignore[union-attr]
        data["store"]["aws_secret_access_key"] = SECRET_KEY
    out = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(data), capture_output=True, text=True, timeout=180,
        cwd=str(Path(__file__).resolve().parents[3]),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"best": aid, "pinned": True, "n": 1, "data": [{"x": 1}]}


async def test_corrupted_blob_raises_integrity_error(config: AetherConfig) -> None:
    async with open_session(config=config) as ctx:
        arts = ctx.artifacts()
        art = await arts.save_text("precious data", name="p.txt")
        ctx.store().put_bytes(blob_key(art.artifact_id), b"tampered data")  # behind our back
        for call in (lambda: arts.load_bytes_by_id(art.artifact_id), lambda: arts.load_text(art.uri),
                     lambda: arts.as_local_file(art)):
            with pytest.raises(IntegrityError, match=art.artifact_id):
                await call()


class _IndexDown(LocalStore):
    """A real LocalStore whose index writes fail, as if the store went away between blob and record."""

    def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None, sha256: str | None = None) -> None:
        if key.startswith((REC, "artifacts/index/v2/run/")):  # the commit point of a save
            raise StoreError("index write refused (test)")
        super().put_bytes(key, data, content_type=content_type, sha256=sha256)


async def _prefect_artifacts(flow_run_id: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(flow_run_id)]))
        )


async def test_prefect_artifacts_readable_from_api(config: AetherConfig) -> None:
    @aether_task(config=config)
    async def produce(*, context: NodeContext) -> dict[str, Any]:
        arts = context.artifacts()
        t = await arts.save_text("# Hello\nsmall text", name="Hello World.md", labels={"k": "v"})
        tb = await arts.save_json([{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.3}], kind="Loss_Curve")
        b = await arts.save_bytes(b"\x89PNG....", kind="image", name="plot.png")
        return {"flow_run_id": context.flow_run_id, "task_run_id": context.task_run_id,
                "arts": [a.model_dump(mode="json") for a in (t, tb, b)]}

    @flow(name="artifacts-publish")
    async def f() -> dict[str, Any]:
        return await produce()

    out = await f()
    t, tb, b = (Artifact.model_validate(a) for a in out["arts"])
    assert all(a.prefect_artifact_id for a in (t, tb, b))
    found = {str(a.id): a for a in await _prefect_artifacts(out["flow_run_id"])}
    assert set(found) >= {t.prefect_artifact_id, tb.prefect_artifact_id, b.prefect_artifact_id}
    pt, ptb, pb = found[t.prefect_artifact_id], found[tb.prefect_artifact_id], found[b.prefect_artifact_id]  # type: ignore[index]
    assert (pt.key, pt.type, pt.data) == ("hello-world-md", "markdown", "# Hello\nsmall text")
    assert t.sha256 in pt.description and t.uri in pt.description and "k=v" in pt.description and "text" in pt.description
    assert (ptb.key, ptb.type) == ("loss-curve", "table") and json.loads(ptb.data)[1]["loss"] == 0.3
    assert (pb.key, pb.type) == ("plot-png", "markdown") and pb.data == f"[plot.png]({b.uri})"
    assert str(pt.task_run_id) == out["task_run_id"]
    # the index knows the Prefect ids too
    async with open_session(config=config) as ctx:
        rec = await ctx.artifacts().get_by_id(tb.artifact_id)
        assert rec.prefect_artifact_id == tb.prefect_artifact_id


async def test_no_prefect_artifact_and_no_warning_outside_a_run(tmp_store: AetherObjectStore) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        async with open_session(config=AetherConfig(store=tmp_store)) as ctx:
            art = await ctx.artifacts().save_text("quiet")
    assert art.prefect_artifact_id is None


async def test_failed_index_write_leaves_no_record_nor_prefect_artifact(tmp_path: Path) -> None:
    store = _IndexDown(tmp_path / "s")

    @aether_task(store=store)
    async def save(*, context: NodeContext) -> str:
        with pytest.raises(StoreError, match="index write refused"):
            await context.artifacts().save_text("lost?", name="x")
        return str(context.flow_run_id)

    @flow
    async def f() -> str:
        return await save()

    flow_run_id = await f()
    assert await _prefect_artifacts(flow_run_id) == []
    assert list(store.list_keys(f"{REC}/")) == []
    from aether_prefect.services.artifacts._parts import PartitionedIndex

    fresh = PartitionedIndex(store)
    assert fresh.all_records() == []
    assert fresh.get(hashlib.sha256(b"lost?").hexdigest()) is None  # an id pointer alone points at nothing
    assert len(list(store.list_keys("artifacts/blobs/"))) == 1  # the blob alone is harmless (no record points at it)


def _failing(store: Any) -> Any:
    """``store`` (a real store) made to refuse one PUT: ``store.fail_at = n`` refuses the n-th from now on."""
    import threading

    class Failing(type(store)):  # type: ignore[misc, valid-type]
        def put_bytes(self, key: str, data: bytes, **kw: Any) -> None:
            with self.lock:
                self.puts += 1
                refuse = self.puts == self.fail_at
            if refuse:
                self.refused.append(key)
                raise StoreError(f"PUT {self.puts} refused (test)")
            super().put_bytes(key, data, **kw)

    store.__class__ = Failing
    store.lock, store.puts, store.fail_at, store.refused = threading.Lock(), 0, None, []
    return store


async def test_a_save_failing_at_any_put_leaves_nothing_half_written(config: AetherConfig) -> None:
    """Fail the 1st, 2nd, ... PUT of a save until one succeeds (the blob, id pointer and markers go at once, then
    the Prefect artifact, then the add event): each failed save leaves no record and no Prefect artifact (the one
    published before a refused add event is deleted again); the retries leave one record each, with its bytes
    and its Prefect artifact."""
    from aether_prefect.services.artifacts._parts import RUNS, PartitionedIndex

    store = _failing(open_store(config.store))  # type: ignore[arg-type]
    failed: list[str] = []

    @aether_task(store=store)
    async def save(*, context: NodeContext) -> tuple[str, list[Artifact]]:
        arts = context.artifacts()
        for n in range(1, 30):
            store.fail_at = store.puts + n
            try:
                await arts.save_text(f"content {n}", name=f"a{n}.txt", labels={"n": n})
            except StoreError:
                sha = hashlib.sha256(f"content {n}".encode()).hexdigest()
                assert PartitionedIndex(store).get(sha) is None  # a fresh reader sees no record
                assert await _prefect_artifacts(str(context.flow_run_id)) == []
                failed.append(f"content {n}")
                continue
            break
        store.fail_at = None
        retried = [await arts.save_text(text, name=f"a{text.split()[1]}.txt", labels={"n": int(text.split()[1])})
                   for text in failed]
        return str(context.flow_run_id), retried

    @flow
    async def f() -> tuple[str, list[Artifact]]:
        return await save()

    flow_run_id, retried = await f()
    assert len(failed) >= 3 and any(k.startswith(f"{RUNS}/") for k in store.refused)  # the add event was refused too
    fresh = PartitionedIndex(store)
    records = [r for _, r in fresh.all_records()]
    shas = sorted(r.artifact_id for r in records)
    assert len(shas) == len(set(shas)) == len(failed) + 1  # one record per save, none of a failed attempt
    for rec in records:
        assert hashlib.sha256(store.get_bytes(blob_key(rec.artifact_id))).hexdigest() == rec.artifact_id
    in_run = {str(a.id) for a in await _prefect_artifacts(flow_run_id)}
    assert {r.prefect_artifact_id for r in records} == in_run and len(in_run) == len(records)
    assert {r.prefect_artifact_id for r in retried} <= in_run


async def test_a_save_writes_blob_pointer_and_markers_at_once_then_its_add_event(
        s3_store_block: AetherObjectStore) -> None:
    """On S3 the writes before the commit point go at once (the first three PUTs each wait until all three are in
    flight: written one after the other, the save would fail), and the add event starts once they have all landed."""
    import threading

    from aether_prefect.services.artifacts._parts import RUNS, PartitionedIndex

    store = open_store(s3_store_block)
    together = threading.Barrier(3, timeout=10)
    lock = threading.Lock()
    state = {"entered": 0, "in_flight": 0, "at_add": -1}

    class AtOnce(type(store)):  # type: ignore[misc]
        def put_bytes(self, key: str, data: bytes, **kw: Any) -> None:
            with lock:
                if key.startswith(f"{RUNS}/"):
                    state["at_add"] = state["in_flight"]
                state["entered"] += 1
                state["in_flight"] += 1
                first = state["entered"] <= 3
            try:
                if first:
                    together.wait()
                super().put_bytes(key, data, **kw)
            finally:
                with lock:
                    state["in_flight"] -= 1

    store.__class__ = AtOnce
    async with open_session(store=store) as ctx:
        art = await ctx.artifacts().save_text("at once", labels={"shard": 1})
    assert state["entered"] >= 4 and state["at_add"] == 0  # nothing else was being written when the add event went
    assert PartitionedIndex(store).get(art.artifact_id) is not None


def test_sync_task_uses_sync_view(config: AetherConfig) -> None:
    @aether_task(config=config)
    def work(*, context: NodeContext) -> tuple[str, str]:
        arts = context.artifacts().sync
        with arts.writer(kind="log", planned_ext="txt") as w:
            w.write("line\n")
        a = arts.save_text("sync text")
        return arts.load_text_by_id(a.artifact_id), arts.load_text(w.artifact.uri)

    @flow
    def f() -> tuple[str, str]:
        return work()

    assert f() == ("sync text", "line\n")


def test_sync_saves_run_on_the_calling_thread(local_config: AetherConfig) -> None:
    """``arts.sync.save_json/save_text/save_bytes`` in a sync task write the blob, the index and the Prefect artifact
    on the calling thread (#21: no hop to the portal loop and a worker thread), the add event last, each record
    linked to its Prefect artifact (a list of records as a table), AetherGraph's keywords mapped as in the async
    save; a subclass overriding a save takes the async path."""
    import threading

    from aether_prefect.services.artifacts import ArtifactsService

    puts: list[tuple[int, str]] = []

    class Watched(LocalStore):
        def put_bytes(self, key: str, data: bytes, **kw: Any) -> Any:
            puts.append((threading.get_ident(), key))
            return super().put_bytes(key, data, **kw)

    block = local_config.store
    state: dict[str, Any] = {}

    class Custom(ArtifactsService):
        async def save_text(self, text: str, **kw: Any) -> Artifact:  # type: ignore[override]
            return await super().save_text(text.upper(), **kw)

    @aether_task(config=local_config)
    def work(*, context: NodeContext) -> None:
        arts = context.artifacts()
        arts._store = Watched(block.root, block.prefix)  # type: ignore[union-attr]
        state["thread"], state["flow_run_id"] = threading.get_ident(), context.flow_run_id
        state["json"] = arts.sync.save_json([{"a": 1}, {"a": 2}], kind="rows", name="rows.json", tags=["t"])
        state["text"] = arts.sync.save_text("hi", suggested_uri="./notes/hello.md")
        state["bytes"] = arts.sync.save_bytes(b"\x00\x01", labels={"k": 1})
        state["puts"] = list(puts)
        custom = Custom(context)
        custom._store = arts._store
        state["custom"] = custom.sync.save_text("quiet")

    @flow
    def f() -> None:
        work()

    f()
    calls = state["puts"]
    assert calls and {t for t, _ in calls} == {state["thread"]}, "every write on the calling thread"
    adds = [i for i, (_, k) in enumerate(calls) if "/index/v2/run/" in k]
    assert len(adds) == 3
    before_first_add = [k for _, k in calls[:adds[0]]]
    assert blob_key(state["json"].sha256) in before_first_add  # the blob before its add event
    assert any(t != state["thread"] for t, k in puts[len(calls):])  # the override went through the portal
    assert state["text"].name == "hello.md" and state["json"].labels["tags"] == ["t"]
    assert state["bytes"].labels["k"] == 1 and state["custom"].sha256 == hashlib.sha256(b"QUIET").hexdigest()
    import anyio

    found = {str(a.id): a for a in anyio.run(_prefect_artifacts, state["flow_run_id"])}
    assert set(found) == {state[k].prefect_artifact_id for k in ("json", "text", "bytes", "custom")}
    assert found[state["json"].prefect_artifact_id].type == "table"
    with open_session_sync(config=local_config, graph_id=state["json"].graph_id, run_id=state["json"].run_id) as ctx:
        for k in ("json", "text", "bytes"):
            assert ctx.artifacts().sync.get_by_id(state[k].artifact_id).prefect_artifact_id == state[k].prefect_artifact_id


async def test_s3_endpoint_down_mid_flow_then_back(s3_store_block: AetherObjectStore, moto_s3: Any) -> None:
    """S3 stops: the save raises StoreError, no record, no Prefect artifact; back up: the same save works."""
    import anyio

    config = AetherConfig(store=s3_store_block)
    state: dict[str, Any] = {}

    @aether_task(config=config)
    async def save_twice(*, context: NodeContext) -> None:
        arts = context.artifacts()
        state["flow_run_id"] = context.flow_run_id
        await anyio.to_thread.run_sync(moto_s3.stop)
        try:
            with pytest.raises(StoreError) as info:
                await arts.save_text("survives", name="s.txt")
            assert SECRET_KEY not in str(info.value)
            state["after_fail"] = len(await _prefect_artifacts(context.flow_run_id))
        finally:
            await anyio.to_thread.run_sync(moto_s3.start)
            await anyio.to_thread.run_sync(moto_s3.create_bucket, s3_store_block.bucket)
        state["art"] = await arts.save_text("survives", name="s.txt")

    @flow
    async def f() -> None:
        await save_twice()

    await f()
    assert state["after_fail"] == 0
    arts_in_run = await _prefect_artifacts(state["flow_run_id"])
    assert [str(a.id) for a in arts_in_run] == [state["art"].prefect_artifact_id]
    async with open_session(config=config) as ctx:
        hits = await ctx.artifacts().search(view="all")
        assert [h.artifact_id for h in hits] == [state["art"].artifact_id]
        assert await ctx.artifacts().load_text(hits[0].uri) == "survives"


def _record(store: Any, i: int, at: Any) -> Any:
    from aether_prefect.services.artifacts._index import IndexEvent

    sha = f"{i:064x}"
    art = Artifact(artifact_id=sha, uri=store.uri(blob_key(sha)), sha256=sha, kind="k", bytes=1, created_at=at,
                   labels={"i": i}, metrics={"m": float(i)}, run_id="r", graph_id="g", node_id="n")
    return IndexEvent(op="add", artifact_id=sha, record=art, at=at)


def test_warm_cache_sees_other_writers(config: AetherConfig) -> None:
    """A long-lived index (one process) picks up events another process wrote after its first load."""
    from datetime import datetime, timezone

    from aether_prefect.services.artifacts._index import ArtifactIndex

    store = open_store(config.store)  # type: ignore[arg-type]
    reader, other = ArtifactIndex(store), ArtifactIndex(store)
    other.write(_record(store, 1, datetime.now(timezone.utc)))
    reader.refresh()
    assert [r.artifact_id for _, r in reader.records()] == [f"{1:064x}"]
    other.write(_record(store, 2, datetime.now(timezone.utc)))
    from aether_prefect.services.artifacts._index import IndexEvent

    other.write(IndexEvent(op="pin", artifact_id=f"{1:064x}", at=datetime.now(timezone.utc)))
    reader.refresh()
    recs = {r.artifact_id: r for _, r in reader.records()}
    assert set(recs) == {f"{1:064x}", f"{2:064x}"} and recs[f"{1:064x}"].pinned and not recs[f"{2:064x}"].pinned


def test_snapshot_compacts_settled_events(config: AetherConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many old events are folded into one immutable snapshot that fresh processes read instead."""
    from datetime import datetime, timedelta, timezone

    from aether_prefect.services.artifacts import _index as artifact_index
    from aether_prefect.services.artifacts._index import SNAP, ArtifactIndex

    monkeypatch.setattr(artifact_index, "SNAPSHOT_AFTER", 20)
    store = open_store(config.store)  # type: ignore[arg-type]
    old = datetime.now(timezone.utc) - timedelta(hours=5)
    writer = ArtifactIndex(store)
    for i in range(25):
        writer.write(_record(store, i, old + timedelta(seconds=i)))
    writer.write(_record(store, 99, datetime.now(timezone.utc)))  # recent: stays a loose event
    first = ArtifactIndex(store)
    first.refresh()
    assert len(first.records()) == 26
    snaps = list(store.list_keys(f"{SNAP}/"))
    assert len(snaps) == 1
    for key in list(store.list_keys(f"{REC}/")):  # drop the old loose events: only the snapshot holds them now
        if key < f"{REC}/{datetime.now(timezone.utc) - timedelta(hours=1):%Y%m%d%H}":
            store.delete(key)
    fresh = ArtifactIndex(store)
    fresh.refresh()
    assert sorted(int(r.artifact_id, 16) for _, r in fresh.records()) == [*range(25), 99]


@pytest.mark.parametrize("cut", ["during-multipart-upload", "after-blob-before-index"])
async def test_s3_stops_in_the_middle_of_a_save(
    cut: str, s3_store_block: AetherObjectStore, moto_s3: Any, tmp_path: Path
) -> None:
    """The endpoint dies mid-save (hooked on boto3's own event system): typed error, no record, no Prefect artifact."""
    import anyio

    from aether_prefect.services.stores.s3 import MULTIPART_CHUNKSIZE

    config = AetherConfig(store=s3_store_block)
    src = tmp_path / "big.bin"
    src.write_bytes(b"0123456789abcdef" * (5 * MULTIPART_CHUNKSIZE // 16))  # 5 parts
    event = "after-call.s3.UploadPart" if cut.startswith("during") else "after-call.s3.PutObject"
    state: dict[str, Any] = {}

    def stop_once(**_: Any) -> None:
        if not state.get("stopped"):
            state["stopped"] = True
            moto_s3.stop()

    @aether_task(config=config)
    async def save(*, context: NodeContext) -> None:
        arts = context.artifacts()
        state["flow_run_id"] = context.flow_run_id
        client = context.store()._client()  # type: ignore[attr-defined]
        client.meta.events.register(event, stop_once)
        try:
            with pytest.raises(StoreError) as info:
                if cut.startswith("during"):
                    await arts.save_file(src, kind="data")
                else:
                    await arts.save_text("cut after the blob", name="c.txt")
            assert SECRET_KEY not in str(info.value)
        finally:
            client.meta.events.unregister(event, stop_once)
        assert state["stopped"]
        assert await _prefect_artifacts(context.flow_run_id) == []
        from aether_prefect.services.artifacts._parts import parts_for

        assert all(not p._adds for p in parts_for(context.store())._parts.values())  # nothing applied locally
        await anyio.to_thread.run_sync(moto_s3.start)
        await anyio.to_thread.run_sync(moto_s3.create_bucket, s3_store_block.bucket)
        state["art"] = (await arts.save_file(src, kind="data")) if cut.startswith("during") else (
            await arts.save_text("cut after the blob", name="c.txt"))

    @flow
    async def f() -> None:
        await save()

    try:
        await f()
    finally:
        if moto_s3.proc is None:
            moto_s3.start()
    assert [str(a.id) for a in await _prefect_artifacts(state["flow_run_id"])] == [state["art"].prefect_artifact_id]
    async with open_session(config=config) as ctx:
        hits = await ctx.artifacts().search(view="all")
        assert [h.artifact_id for h in hits] == [state["art"].artifact_id]
        assert hashlib.sha256(await ctx.artifacts().load_bytes(hits[0].uri)).hexdigest() == hits[0].artifact_id


@pytest.mark.parametrize("landed_first", [True, False])
def test_a_repeated_save_is_one_index_entry(tmp_path: Path, landed_first: bool) -> None:
    """A retry after an ambiguous store error (the first add event did land) leaves one record per save,
    whichever order a process sees the two events in, and the Prefect link follows the kept record."""
    import json as _json
    from datetime import datetime, timedelta, timezone

    from aether_prefect.services.artifacts._index import ArtifactIndex, IndexEvent, new_event_key

    store = LocalStore(tmp_path, "p")
    sha = hashlib.sha256(b"x").hexdigest()
    now = datetime.now(timezone.utc)
    rec = Artifact(artifact_id=sha, uri="file:///x", sha256=sha, kind="k", bytes=1, name="n",
                   labels={"run_id": "r", "shard": 1}, created_at=now, run_id="r", graph_id="g", node_id="t-1")
    k1, k2 = new_event_key(now), new_event_key(now + timedelta(seconds=5))
    prefect_key = new_event_key(now + timedelta(seconds=6))

    def put(key: str, event: IndexEvent) -> None:
        store.put_bytes(key, _json.dumps(event.model_dump(mode="json", exclude_none=True)).encode())

    put(k1, IndexEvent(op="add", artifact_id=sha, record=rec, at=now))
    put(k2, IndexEvent(op="add", artifact_id=sha, record=rec, at=now))
    put(prefect_key, IndexEvent(op="prefect", artifact_id=sha, ref=k2, prefect_artifact_id="pa-1", at=now))
    other = rec.model_copy(update={"node_id": "t-2", "labels": {"run_id": "r", "shard": 2}})
    put(new_event_key(now + timedelta(seconds=7)), IndexEvent(op="add", artifact_id=sha, record=other, at=now))

    index = ArtifactIndex(store)
    if landed_first:
        index.refresh()
    else:  # the retry's events are seen first, the landed first attempt later (another writer's view)
        for key in (k2, prefect_key):
            index._apply(key, _json.loads(store.get_bytes(key)))
        index._loaded = True
        index.refresh()  # now the landed first attempt (and the other node's save) arrive
    records = [r for _, r in index.records()]
    assert sorted(r.node_id for r in records) == ["t-1", "t-2"]
    kept = [r for r in records if r.node_id == "t-1"][0]
    assert kept.prefect_artifact_id == "pa-1"
    assert [r.node_id for r in index.query(kind="k", labels={"shard": 1})] == ["t-1"]
