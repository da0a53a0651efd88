"""Fill a store with N artifact records or N memory events quickly, for the #21 scale benches.

The bulk path writes exactly the objects the public API writes for the same input (``ArtifactsService.save_*``:
the content blob, the id pointer and the add event of the partitioned index, in that order, through the same
``PartitionedIndex.write_add``; ``MemoryService.record``: the hour marker and one event object under the key its
``LogWriter`` allocates), minus the Prefect artifact and the Prefect event (a bench measures the store, and
the public API skips those outside a run too). It runs the writes on a thread pool. ``durable=False`` (``--fast``)
writes the same objects without flushing each to disk: 1,000,000 records took ~16 min at load 20-30 on a shared
2-core machine (20,000: 8 s unloaded vs 55 s flushing each).

Command line: ``python bench/fill.py ROOT --artifacts 1000000 --fast --no-blobs`` then
``BENCH_ARTIFACT_STORE_1000000=ROOT BENCH_MILLION=1 BENCH_ARTIFACT_SCALE_ONLY=1 python bench/bench_artifacts.py``.

Usage from a bench::

    from fill import fill_artifacts, fill_memory
    fill_artifacts(store, n=100_000, graphs=10, run_size=50)
    fill_artifacts(store, n=1_000_000, graphs=100, write_blobs=False, durable=False)  # about 10 min, see below
    fill_memory(store, "memory/run/r1", n=1_000_000)   # every event within one hour
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from aether_prefect.services.artifacts import Artifact, blob_key
from aether_prefect.services.artifacts._parts import PartitionedIndex
from aether_prefect.services.stores.base import ObjectStore


def _chunks(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def artifact_record(store: ObjectStore, i: int, graph_id: str, run_id: str, node_id: str) -> tuple[bytes, Artifact]:
    """The bytes and the record ``save_json({"i": i}, kind=..., metrics=...)`` would produce in that scope."""
    data = json.dumps({"i": i}).encode()
    sha = hashlib.sha256(data).hexdigest()
    scope = {"run_id": run_id, "graph_id": graph_id, "node_id": node_id}
    kind = "model" if i % 10 == 0 else "metrics"
    rec = Artifact(
        artifact_id=sha, uri=store.uri(blob_key(sha)), sha256=sha, kind=kind, bytes=len(data), mime="application/json",
        name=None, labels={"shard": i % 100, **scope}, metrics={"score": (i * 7919 % 10007) / 10007.0},
        created_at=datetime.now(timezone.utc), **scope,
    )
    return data, rec


class _Unflushed:
    """``store`` with ``put_bytes`` as ``put_small``: the same objects under the same keys, atomically visible, but
    not flushed to disk one by one (a fixture need not survive a machine crash; a million fsyncs take an hour)."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    def put_bytes(self, key: str, data: bytes, **_kw: Any) -> None:
        self._store.put_small(key, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def fill_artifacts(
    store: ObjectStore, n: int, *, graphs: int = 10, run_size: int = 50, threads: int = 16, write_blobs: bool = True,
    graph_prefix: str = "g", durable: bool = True,
) -> list[tuple[str, str]]:
    """Write ``n`` artifact records in runs of ``run_size`` spread over ``graphs`` graphs; returns (graph, run) pairs.

    ``durable=False`` writes the same objects without flushing each to disk (``put_small``), for big fixtures."""
    if not durable:
        store = _Unflushed(store)  # type: ignore[assignment]
    index = PartitionedIndex(store)

    def one(i: int) -> None:
        run_no = i // run_size
        graph_id, run_id = f"{graph_prefix}{run_no % graphs}", f"run-{run_no:07d}"
        data, rec = artifact_record(store, i, graph_id, run_id, f"n{i % 3}")
        if write_blobs:
            store.put_bytes(blob_key(rec.artifact_id), data, content_type="application/json", sha256=rec.artifact_id)
        index.write_add(rec)

    scopes = scopes_of(n, graphs=graphs, run_size=run_size, graph_prefix=graph_prefix)
    with ThreadPoolExecutor(threads) as pool:
        for chunk in _chunks(n, 10_000):
            list(pool.map(one, chunk))
    return scopes


def scopes_of(n: int, *, graphs: int | None = None, run_size: int = 50, graph_prefix: str = "g") -> list[tuple[str, str]]:
    """The (graph, run) pairs ``fill_artifacts(store, n, ...)`` writes (``graphs`` default: one per 10,000 records,
    as the benches fill), so a bench can query a store filled earlier."""
    graphs = graphs or max(1, n // 10_000)
    return [(f"{graph_prefix}{(i // run_size) % graphs}", f"run-{i // run_size:07d}") for i in range(0, n, run_size)]


def fill_memory(
    store: ObjectStore, prefix: str, n: int, *, run_id: str = "bench", threads: int = 16, start_ns: int | None = None
) -> None:
    """Write ``n`` memory events into the timeline at ``prefix`` (e.g. ``timeline_prefix("run", run_id)``), all
    within one hour, exactly as ``record(kind, data)`` writes them."""
    from aether_prefect.services.memory import Event
    from aether_prefect.services.memory._log import LogWriter, ts_iso

    writer = LogWriter(store, prefix)
    base = start_ns or (int(datetime.now(timezone.utc).timestamp()) // 3600 * 3600) * 1_000_000_000
    step = max(1, 3_599_000_000_000 // max(n, 1))

    def one(i: int) -> None:
        ts = base + i * step
        seq = i + 1
        kind = "tick" if i % 5 else "note"
        ev = Event(event_id=str(uuid.uuid4()), ts=ts_iso(ts), run_id=run_id, kind=kind, data={"i": i}, text=f"event {i} " + ("alpha" if i % 7 else "beta"))
        writer.write(ts, writer.key_for(ts, seq, kind), ev.model_dump_json().encode("utf-8"))

    with ThreadPoolExecutor(threads) as pool:
        for chunk in _chunks(n, 10_000):
            list(pool.map(one, chunk))


__all__ = ["artifact_record", "fill_artifacts", "fill_memory", "scopes_of"]


def _main(argv: list[str] | None = None) -> Any:  # pragma: no cover - a manual entry point
    import argparse
    import time

    from aether_prefect.services.stores.local import LocalStore

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("root")
    ap.add_argument("--artifacts", type=int, default=0)
    ap.add_argument("--memory", type=int, default=0)
    ap.add_argument("--graphs", type=int, default=0, help="graphs to spread the artifacts over (default: N/10,000)")
    ap.add_argument("--fast", action="store_true", help="do not flush each object to disk (same objects)")
    ap.add_argument("--no-blobs", action="store_true", help="index records only (queries never read the blobs)")
    args = ap.parse_args(argv)
    store = LocalStore(args.root)
    t = time.perf_counter()
    if args.artifacts:
        fill_artifacts(store, args.artifacts, graphs=args.graphs or max(1, args.artifacts // 10_000), write_blobs=not args.no_blobs,
                       durable=not args.fast)
    if args.memory:
        fill_memory(store, "memory/run/bench", args.memory)
    print(f"filled in {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":  # pragma: no cover
    _main()
