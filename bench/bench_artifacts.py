"""Artifacts bench: save_file to S3 vs raw boto3, save_text in a task vs raw Prefect artifact, search over 10k.

Run: ``.venv/bin/python bench/bench_artifacts.py`` (a few minutes; starts a private Prefect server and moto).
"""

from __future__ import annotations

import _common as common  # noqa: I001 - must come first: sets the environment

import asyncio
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

MiB = 1024 * 1024
FILE_MIB = int(os.environ.get("BENCH_ARTIFACT_FILE_MIB", "256"))
N_SEARCH = int(os.environ.get("BENCH_ARTIFACT_SEARCH_N", "10000"))


class PeakRSS:
    """Sample this process's RSS every 5 ms while the block runs; ``growth`` is peak minus start, in MiB."""

    def __enter__(self) -> "PeakRSS":
        self._proc = psutil.Process()
        self.start = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def growth(self) -> float:
        return (self.peak - self.start) / MiB


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    with PeakRSS() as rss:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
    return dt, rss.growth


def bench_save_file(rows: list[dict[str, Any]]) -> None:
    import boto3
    from pydantic import SecretStr

    from aether_prefect import open_session_sync
    from aether_prefect.blocks import AetherConfig, AetherObjectStore
    from aether_prefect.services.artifacts import blob_key
    from tests.servers.s3 import ACCESS_KEY, SECRET_KEY, MotoS3

    moto = MotoS3().start()
    try:
        bucket = moto.create_bucket()
        tmp = Path(tempfile.mkdtemp(prefix="bench-art-"))
        src = tmp / "big.bin"
        with open(src, "wb") as f:
            for _ in range(FILE_MIB):
                f.write(os.urandom(MiB))
        raw = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                           aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
        block = AetherObjectStore(backend="s3", bucket=bucket, endpoint_url=moto.url, region="us-east-1",
                                  aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SecretStr(SECRET_KEY))
        cfg = AetherConfig(store=block)
        ours_t, ours_m, raw_t, raw_m = [], [], [], []
        with open_session_sync(config=cfg) as ctx:
            arts = ctx.artifacts().sync
            arts.save_text("warm up the client")
            raw.put_object(Bucket=bucket, Key="warm", Body=b"x")
            for i in range(3):  # alternate, so both see the same machine load
                dt, m = _timed(lambda: raw.upload_file(str(src), bucket, f"raw/big-{i}.bin"))
                raw_t.append(dt)
                raw_m.append(m)
                dt, m = _timed(lambda: arts.save_file(src, kind="blob"))
                ours_t.append(dt)
                ours_m.append(m)
                art = arts.search(kind="blob", limit=1)[0]
                ctx.store().delete(blob_key(art.artifact_id))  # so the next save uploads again
                raw.delete_object(Bucket=bucket, Key=f"raw/big-{i}.bin")
        rows.append(common.row(f"save_file {FILE_MIB} MiB to S3 (moto) vs boto3 upload_file (best of 3)",
                               min(ours_t), min(raw_t), "s", target=1.15))
        rows.append(common.row(f"save_file {FILE_MIB} MiB to S3 (moto) vs boto3 upload_file (median of 3)",
                               statistics.median(ours_t), statistics.median(raw_t), "s", target=1.15))
        rows.append(common.row(f"save_file {FILE_MIB} MiB peak RSS growth (raw: boto3 defaults)",
                               max(ours_m), max(raw_m), "MiB"))
        rows.append(common.row("save_file peak RSS growth (absolute target 64 MiB)", max(ours_m), None, "MiB",
                               target=64))
        src.unlink()
    finally:
        moto.stop()


def bench_save_text(rows: list[dict[str, Any]]) -> None:
    import httpx
    from prefect import flow
    from prefect.artifacts import acreate_markdown_artifact

    from aether_prefect import NodeContext, aether_task
    from aether_prefect.blocks import AetherConfig, AetherObjectStore

    counts = {"n": 0}
    real_send = httpx.AsyncClient.send

    async def counting_send(self: httpx.AsyncClient, request: httpx.Request, **kw: Any) -> httpx.Response:
        counts["n"] += 1
        return await real_send(self, request, **kw)

    httpx.AsyncClient.send = counting_send  # type: ignore[method-assign] - counts requests, changes nothing
    cfg = AetherConfig(store=AetherObjectStore(backend="local", root=tempfile.mkdtemp(prefix="bench-store-")))
    text = ("0123456789abcdef" * 64)[:1024]
    n = 30

    @aether_task(config=cfg)
    async def measure(*, context: NodeContext) -> dict[str, float]:
        arts = context.artifacts()
        i = 0

        async def ours() -> None:
            nonlocal i
            i += 1
            await arts.save_text(text[:-6] + f"{i:06d}", name="note.md")

        async def raw() -> None:
            nonlocal i
            i += 1
            await acreate_markdown_artifact(text[:-6] + f"{i:06d}", key="note-md")

        ours_s = await common.amedian_s(ours, n)
        raw_s = await common.amedian_s(raw, n)
        c0 = counts["n"]
        for _ in range(10):
            await ours()
        c1 = counts["n"]
        for _ in range(10):
            await raw()
        c2 = counts["n"]
        return {"ours": ours_s, "raw": raw_s, "ours_req": (c1 - c0) / 10, "raw_req": (c2 - c1) / 10}

    @flow
    async def f() -> dict[str, float]:
        return await measure()

    try:
        res = asyncio.run(f())
    finally:
        httpx.AsyncClient.send = real_send  # type: ignore[method-assign]
    rows.append(common.row("save_text 1 KB in a task vs create_markdown_artifact (median)",
                           res["ours"] * 1000, res["raw"] * 1000, "ms"))
    rows.append(common.row("save_text 1 KB: HTTP requests per call", res["ours_req"], res["raw_req"], "req"))


def bench_search(rows: list[dict[str, Any]]) -> None:
    from datetime import datetime, timedelta, timezone
    from concurrent.futures import ThreadPoolExecutor

    from aether_prefect import open_session_sync
    from aether_prefect.blocks import AetherConfig, AetherObjectStore
    from aether_prefect.services.artifacts._index import Artifact, ArtifactIndex, IndexEvent, index_for

    root = tempfile.mkdtemp(prefix="bench-search-")
    cfg = AetherConfig(store=AetherObjectStore(backend="local", root=root))
    with open_session_sync(config=cfg, graph_id="bench") as ctx:
        store = ctx.store()
        writer = ArtifactIndex(store)  # a separate writer: the reader below learns everything from the store
        now = datetime.now(timezone.utc)
        # 10k artifacts accumulated over the last 24 hours (plus the newest in the last minute)
        spread = [now - timedelta(seconds=(N_SEARCH - i) * 86400 / N_SEARCH) for i in range(N_SEARCH)]

        def add(i: int) -> None:
            sha = f"{i:064x}"
            art = Artifact(artifact_id=sha, uri=store.uri(f"artifacts/blobs/{sha[:2]}/{sha}"), sha256=sha,
                           kind=("model", "metrics", "text")[i % 3], bytes=100, created_at=now,
                           labels={"exp": f"e{i % 50}", "run_id": f"r{i % 100}", "graph_id": "bench", "node_id": "n"},
                           metrics={"acc": (i * 7919 % 1000) / 1000}, run_id=f"r{i % 100}", graph_id="bench", node_id="n")
            writer.write(IndexEvent(op="add", artifact_id=sha, record=art, at=spread[i]))

        t = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(add, range(N_SEARCH)))
        write_s = time.perf_counter() - t

        cold = ArtifactIndex(store)  # a fresh process: reads every event, then writes a snapshot
        t = time.perf_counter()
        cold.refresh()
        cold_s = time.perf_counter() - t
        assert len(cold.records()) == N_SEARCH
        snapped = ArtifactIndex(store)  # the next fresh process: snapshot + the recent events
        t = time.perf_counter()
        snapped.refresh()
        snap_s = time.perf_counter() - t
        assert len(snapped.records()) == N_SEARCH

        arts = ctx.artifacts().sync
        arts.search(view="all", limit=1)  # first query loads the index once per process
        assert index_for(store) is not None
        hits = arts.search(view="all", labels={"exp": "e7"})
        assert len(hits) == N_SEARCH // 50, len(hits)
        search_s = common.median_s(lambda: arts.search(view="all", labels={"exp": "e7"}), 20)
        best_s = common.median_s(lambda: arts.best(kind="model", metric="acc", view="all"), 20)
    rows.append(common.row(f"search(view='all', labels=...) over {N_SEARCH} artifacts (median)", search_s * 1000,
                           None, "ms"))
    rows.append(common.row(f"best(kind, metric) over {N_SEARCH} artifacts (median)", best_s * 1000, None, "ms"))
    rows.append(common.row(f"first load of the index, {N_SEARCH} records, no snapshot yet", cold_s * 1000,
                           None, "ms"))
    rows.append(common.row(f"first load of the index, {N_SEARCH} records, from the snapshot", snap_s * 1000,
                           None, "ms"))
    rows.append(common.row(f"writing {N_SEARCH} index records, 4 threads (per record)", write_s / N_SEARCH * 1000,
                           None, "ms"))


def main() -> None:
    common.start_prefect_server()
    rows: list[dict[str, Any]] = []
    bench_save_text(rows)
    bench_search(rows)
    bench_save_file(rows)
    common.report("artifacts", rows)


if __name__ == "__main__":
    main()
