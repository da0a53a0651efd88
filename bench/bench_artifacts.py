"""Artifacts bench: save_file to S3 vs raw boto3, save_text in a task vs raw Prefect artifact, search over 10k.

Run: ``.venv/bin/python bench/bench_artifacts.py`` (a few minutes; starts a private Prefect server and moto).
The #21 scale figures alone: ``BENCH_ARTIFACT_SCALE_ONLY=1``; at a million records: ``BENCH_MILLION=1`` (the fill
takes ~5-16 min; or fill once with ``bench/fill.py ROOT --artifacts 1000000 --fast --no-blobs`` and pass
``BENCH_ARTIFACT_STORE_1000000=ROOT``).
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


SCALE_N = int(os.environ.get("BENCH_ARTIFACT_SCALE_N", "1000000" if os.environ.get("BENCH_MILLION") else "20000"))
SCALE_ROUNDS = int(os.environ.get("BENCH_ARTIFACT_SCALE_ROUNDS", "9"))
#: Fill the scale stores without flushing each object to disk (same objects; see fill.py). 0: flush each.
SCALE_FAST_FILL = os.environ.get("BENCH_ARTIFACT_FAST_FILL", "1") != "0"

# The queries of one fresh worker process, timed inside it after its imports (the store backend included: a real
# worker imported it on its first save or query) and after its session set-up.
_FRESH = r"""
import json, os, sys, time, resource
import psutil
from aether_prefect import open_session_sync
from aether_prefect.blocks import AetherConfig, AetherObjectStore
import aether_prefect.services.stores.local  # noqa: F401 - an import, excluded from the timings
args = json.loads(sys.argv[1])
cfg = AetherConfig(store=AetherObjectStore(backend="local", root=args["root"]), memory_mirror="off")
proc = psutil.Process()
out = {"load": os.getloadavg()[0]}
with open_session_sync(config=cfg, graph_id=args["graph"], run_id=args["run"]) as ctx:
    arts = ctx.artifacts().sync
    out["rss0"] = proc.memory_info().rss
    t = time.perf_counter(); hits = arts.search(view="run"); out["run_ms"] = (time.perf_counter() - t) * 1000
    out["run_hits"] = len(hits)
    t = time.perf_counter(); rec = arts.get_by_id(args["id"]); out["id_ms"] = (time.perf_counter() - t) * 1000
    assert rec.artifact_id == args["id"]
    t = time.perf_counter(); best = arts.best(kind="model", metric="score", view="graph")
    out["graph_ms"] = (time.perf_counter() - t) * 1000
    out["graph_ok"] = best is not None
    t = time.perf_counter(); top = arts.search(kind="model", metric="score", view="graph", limit=10)
    out["gsearch_ms"] = (time.perf_counter() - t) * 1000
    out["gsearch_hits"] = len(top)
    out["rss_growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - out["rss0"]) / 2**20
print(json.dumps(out))
"""

_PYCACHE = tempfile.mkdtemp(prefix="bench-pycache-")


def _fresh(root: str, graph: str, run: str, artifact_id: str) -> dict[str, Any]:
    """Run the queries in a fresh Python process (timed inside it, after imports); its figures.

    Bytecode is cached (in a private folder) as in any installed deployment, so a lazy import is not compiled again
    in every process."""
    import json
    import subprocess
    import sys

    arg = json.dumps({"root": root, "graph": graph, "run": run, "id": artifact_id})
    env = {**os.environ, "PYTHONPATH": str(common.ROOT), "PYTHONPYCACHEPREFIX": _PYCACHE}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    out = subprocess.run([sys.executable, "-c", _FRESH, arg], capture_output=True, text=True, timeout=1800,
                         cwd=str(common.ROOT), env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _filled(n: int) -> tuple[str, list[tuple[str, str]], float]:
    from fill import fill_artifacts

    from aether_prefect.services.stores.local import LocalStore

    root = tempfile.mkdtemp(prefix=f"bench-scale-{n}-")
    t = time.perf_counter()
    scopes = fill_artifacts(LocalStore(root), n, graphs=max(1, n // 10_000), run_size=50, write_blobs=False,
                            durable=not SCALE_FAST_FILL)
    return root, scopes, time.perf_counter() - t


def bench_scale(rows: list[dict[str, Any]]) -> None:
    """#21: fresh-process queries on a store of SCALE_N records vs one of 1,000 (local store), medians of
    SCALE_ROUNDS rounds alternating the two stores, with the load average next to each figure."""
    from fill import artifact_record

    from aether_prefect.services.stores.local import LocalStore

    import atexit
    import shutil

    atexit.register(shutil.rmtree, _PYCACHE, True)
    stores = {}
    for n in (1000, SCALE_N):
        root = os.environ.get(f"BENCH_ARTIFACT_STORE_{n}")  # an already filled store (fill.py --artifacts n)
        if root:
            from fill import scopes_of

            scopes, fill_s = scopes_of(n), float("nan")
        else:
            root, scopes, fill_s = _filled(n)
            atexit.register(shutil.rmtree, root, True)  # a filled store is the bench's own: gone at exit
        graph, run = scopes[len(scopes) // 2]
        first = (len(scopes) // 2) * 50
        aid = artifact_record(LocalStore(root), first + 7, graph, run, "n")[1].artifact_id
        cold = _fresh(root, graph, run, aid)  # the first reader of these partitions (writes their segments)
        assert cold["run_hits"] == 50 and cold["graph_ok"], cold
        stores[n] = (root, graph, run, aid, cold, fill_s)
    runs: dict[int, list[dict[str, Any]]] = {1000: [], SCALE_N: []}
    for _ in range(SCALE_ROUNDS):  # alternate, so both stores see the same machine load
        for n in (1000, SCALE_N):
            root, graph, run, aid, _cold, _ = stores[n]
            res = _fresh(root, graph, run, aid)
            assert res["run_hits"] == 50 and res["gsearch_hits"] == 10, res
            runs[n].append(res)

    def med(n: int, key: str) -> float:
        return statistics.median(r[key] for r in runs[n])

    def spread(n: int, key: str) -> str:
        vals = sorted(r[key] for r in runs[n])
        return f"{vals[0]:.3g}-{vals[-1]:.3g}"

    loads = [r["load"] for n in runs for r in runs[n]]
    cold_big, fill_s = stores[SCALE_N][4], stores[SCALE_N][5]
    big = f"{SCALE_N:,}"
    rows.append(common.row(f"fill {big} records (fill.py, ms per record)", fill_s / SCALE_N * 1000, None, "ms"))
    rows.append(common.row(f"fresh search(view='run'), 50 of {big}", med(SCALE_N, "run_ms"), None, "ms", 50))
    rows.append(common.row("  same, vs a store of 1,000 (ratio target 2)", med(SCALE_N, "run_ms"), med(1000, "run_ms"), "ms", 2))
    rows.append(common.row("  same, best of each (ratio target 2)", min(r["run_ms"] for r in runs[SCALE_N]),
                           min(r["run_ms"] for r in runs[1000]), "ms", 2))
    rows.append(common.row("  same, first reader of the run (writes its segment)", cold_big["run_ms"], None, "ms"))
    rows.append(common.row(f"fresh get_by_id, store of {big}", med(SCALE_N, "id_ms"), None, "ms", 10))
    rows.append(common.row(f"fresh best(view='graph'), 10,000 of {big}", med(SCALE_N, "graph_ms"), None, "ms", 200))
    rows.append(common.row("  same, vs a store of 1,000 (a graph of 1,000)", med(SCALE_N, "graph_ms"), med(1000, "graph_ms"), "ms"))
    rows.append(common.row("  same, first reader (reads the runs, writes the segment)", cold_big["graph_ms"], None, "ms"))
    rows.append(common.row("  then search(view='graph', kind, metric, limit=10)", med(SCALE_N, "gsearch_ms"), None, "ms", 200))
    rows.append(common.row("peak RSS growth of the process over those queries",
                           max([r["rss_growth_mb"] for r in runs[SCALE_N]] + [cold_big["rss_growth_mb"]]), None, "MiB", 150))
    print(f"\nscale: medians of {SCALE_ROUNDS} fresh processes per store, alternating; load average {min(loads):.1f}-"
          f"{max(loads):.1f}; fill of {big} took {fill_s:.0f} s")
    for key in ("run_ms", "id_ms", "graph_ms", "gsearch_ms"):
        print(f"  {key:11} {big}: {spread(SCALE_N, key)} ms   1,000: {spread(1000, key)} ms")


def main() -> None:
    rows: list[dict[str, Any]] = []
    if os.environ.get("BENCH_ARTIFACT_SCALE_ONLY"):  # the #21 figures alone: no Prefect server, no moto
        bench_scale(rows)
        common.report("artifacts_scale", rows)
        return
    common.start_prefect_server()
    bench_scale(rows)
    bench_save_text(rows)
    bench_save_file(rows)
    common.report("artifacts", rows)


if __name__ == "__main__":
    main()
