"""The scale flows deployed to the cluster: ``scale_flow`` (@aether_task fan-out), ``hand_flow`` (the same work
written by hand with bare @task, boto3 and Prefect's artifacts and Variables) and ``bare_flow`` (bare @task).

Each run fans out ``n_tasks`` shards on a DaskTaskRunner (a LocalCluster of 2
single-threaded worker processes), then records one summary in the graph-level
memory and sets a KV watermark. Deployed from this repo's directory by
``scale.setup``; the tasks live in ``scale.work`` so Dask workers can import them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:  # Prefect loads this file by path; Dask's spawned workers copy sys.path
    sys.path.insert(0, _REPO)

from prefect import flow  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from prefect_dask import DaskTaskRunner  # noqa: E402

from aether_prefect import NodeContext, aether_flow  # noqa: E402
from prefect.variables import Variable  # noqa: E402

from scale.work import bare_shard, hand_put, hand_shard, hand_variable, shard  # noqa: E402

SUMMARY_KIND = "scale.summary"


def dask_runner() -> DaskTaskRunner:
    """A small LocalCluster of processes per flow run (2 workers x 1 thread, no dashboard port)."""
    return DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})


def counter_key(flow_run_id: str) -> str:
    """KV key counting the shards of one flow run."""
    return f"scale/{flow_run_id}/shards"


def watermark_key(flow_run_id: str) -> str:
    """KV key holding the number of shards a flow run completed."""
    return f"scale/{flow_run_id}/watermark"


@aether_flow(name="scale-flow", retries=1, retry_delay_seconds=2, task_runner=dask_runner(), memory_level="graph")
def scale_flow(batch: str = "demo", n_tasks: int = 10, rows: int = 200, hold_s: float = 0.0, *,
               context: NodeContext) -> dict[str, Any]:
    """Fan out ``n_tasks`` @aether_task shards, then one graph-level memory summary and a KV watermark."""
    run_id = str(flow_run.get_id())
    futures = shard.map(batch, range(n_tasks), counter_key(run_id), run_id, rows, hold_s)  # type: ignore[attr-defined]
    results = [f.result() for f in futures]
    total = sum(r["rows"] for r in results)
    context.kv().sync.set(watermark_key(run_id), len(results))
    context.memory().sync.record(SUMMARY_KIND, {"flow_run_id": run_id, "batch": batch, "shards": len(results),
                                                "rows": total}, tags=[batch])
    return {"flow_run_id": run_id, "shards": len(results), "rows": total}


@flow(name="bare-flow", retries=1, retry_delay_seconds=2, task_runner=dask_runner())
def bare_flow(batch: str = "demo", n_tasks: int = 10, rows: int = 200, hold_s: float = 0.0) -> dict[str, Any]:
    """The same fan-out with bare @task shards and no aether services (the baseline of the ratio)."""
    run_id = str(flow_run.get_id())
    futures = bare_shard.map(batch, range(n_tasks), counter_key(run_id), run_id, rows, hold_s)  # type: ignore[attr-defined]
    results = [f.result() for f in futures]
    return {"flow_run_id": run_id, "shards": len(results), "rows": sum(r["rows"] for r in results)}


@flow(name="hand-flow", retries=1, retry_delay_seconds=2, task_runner=dask_runner())
def hand_flow(batch: str = "demo", n_tasks: int = 10, rows: int = 200, hold_s: float = 0.0) -> dict[str, Any]:
    """``scale_flow``'s work written by hand (the baseline of the cluster ratio, #21): shards that PUT their JSON
    with boto3, create a markdown artifact and read+write a Variable counter; then a Variable watermark and one
    summary object PUT to S3 (what ``memory().record`` stores)."""
    run_id = str(flow_run.get_id())
    futures = hand_shard.map(batch, range(n_tasks), hand_variable(run_id, "shards"), run_id, rows, hold_s)  # type: ignore[attr-defined]
    results = [f.result() for f in futures]
    total = sum(r["rows"] for r in results)
    Variable.set(hand_variable(run_id, "watermark"), len(results), overwrite=True)
    summary = {"kind": SUMMARY_KIND, "flow_run_id": run_id, "batch": batch, "shards": len(results), "rows": total}
    hand_put(f"hand/summary/{run_id}.json", json.dumps(summary).encode())
    return {"flow_run_id": run_id, "shards": len(results), "rows": total}
