"""#21 on the cluster: the ``@aether_task`` flow vs the same work written by hand, in paired rounds.

Run: ``.venv/bin/python bench/bench_cluster.py [--root .cluster] [--rounds 12] [--runs 2]`` (starts the cluster of
``make cluster`` if it is not running, and stops it again at the end; about 30 s per round on a quiet 2-core
machine, 1-2 minutes at load 8-12, so the default 12 rounds take 6-25 minutes).

Both flows are deployed to the cluster by ``scale.setup`` and run by its 2 process workers on the same S3 (moto)
and Prefect server (PostgreSQL):
- ours: ``scale-flow/scale`` - 10 ``@aether_task`` shards (Dask) each ``artifacts().save_json`` (S3 + index +
  Prefect table artifact) and ``kv().incr`` (locked, exact), then ``kv().set`` and ``memory().record``;
- hand: ``hand-flow/scale`` - the same shards as bare ``@task``: a boto3 PUT of the JSON, ``create_markdown_artifact``
  and a Variable read + write (not atomic), then a Variable write and a boto3 PUT of the summary.
Each round creates ``--runs`` runs of one flow at once and waits for them, then of the other (order alternating
per round). Times are the server's: a flow run's start to end (the flow body, its Dask cluster included) and
each shard task run's start to end. Ratios are ours / hand; every round prints its own paired ratios and the load.

The headline (the issue's goal row) is still the median of the per-round paired flow ratios. Next to it: a
distribution-free ~95% interval of that median (order statistics of the sorted round ratios, binomial(n, 1/2)),
because one round's ratio swings by 20-40% (each flow run starts its own Dask LocalCluster, and the machine is
shared), so 6 rounds could not tell 1.00 from 1.15; and the ratio of the medians of all flow runs (pooled, not
paired), which the same noise moves less. Both are printed, the goal is judged on the headline only.

Measured 2026-12-05 (#21), one warm shard run in-process against this cluster (load 1-3, client + server +
PostgreSQL + moto CPU per shard from /proc): ours 10 requests (5 S3 PUTs: blob, id pointer, 2 facet markers,
add event; 5 API: table artifact, lock create, read, write, lock delete) and ~95 ms of CPU across the machine,
by hand 6 (1 PUT; artifact, 3 Variable reads and a write) and ~65 ms. On 2 saturated cores a shard's time
follows that CPU (shard ratio 1.4-1.5 at load 3-4), not its round trips. The sync save, ``incr`` and context
close now run on the task's thread (no hops to the portal loop), and a flow starts its body while its config
loads (see the commits of #21 on 2026-12-05). 12 rounds at 19:33 UTC that day, load 2.3-5.5: median paired flow
ratio 1.11 (interval 1.06-1.16), pooled flow medians 5.79 s / 5.22 s, shard 1.46 (250 / 188 ms); again at 19:40,
load 2.4-4.0: 1.097 (1.06-1.14), 6.60 s / 6.06 s, shard 1.27; at 19:50, alone on the machine, load 3.0-4.2: 1.058
(1.01-1.10), 6.38 s / 5.97 s, shard 1.36; scale/README.md keeps every run.
"""

from __future__ import annotations

import _common as common  # noqa: I001 - must come first: sets the environment

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

OURS, HAND = "scale-flow/scale", "hand-flow/scale"


async def _durations(sc: Any, ids: list[str]) -> tuple[list[float], list[float]]:
    """(flow run durations, shard task run durations) in seconds, from the server's start/end times."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from aether_prefect._prefect import prefect_client

    runs = await sc.read_runs(ids)
    flows = [(r.end_time - r.start_time).total_seconds() for r in runs if r.start_time and r.end_time]
    client = await prefect_client()
    tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=200)
    shards = [(t.end_time - t.start_time).total_seconds() for t in tasks
              if t.start_time and t.end_time and "shard" in (t.name or "")]
    return flows, shards


async def _rounds(sc: Any, rounds: int, runs: int) -> dict[str, Any]:
    res: dict[str, Any] = {"flow": {OURS: [], HAND: []}, "shard": {OURS: [], HAND: []}, "pairs": [], "shard_pairs": [],
                           "loads": [], "states": {}}
    for i in range(rounds):
        got: dict[str, tuple[list[float], list[float]]] = {}
        for dep in (OURS, HAND) if i % 2 == 0 else (HAND, OURS):
            ids = await sc.create_runs(dep, runs, tag=f"pair{i}")
            states = await sc.wait_runs(ids)
            for s in states.values():
                res["states"][s] = res["states"].get(s, 0) + 1
            got[dep] = await _durations(sc, ids)
        for dep in (OURS, HAND):
            res["flow"][dep] += got[dep][0]
            res["shard"][dep] += got[dep][1]
        res["pairs"].append(statistics.median(got[OURS][0]) / statistics.median(got[HAND][0]))
        res["shard_pairs"].append(statistics.median(got[OURS][1]) / statistics.median(got[HAND][1]))
        res["loads"].append(os.getloadavg()[0])
        print(f"round {i + 1}/{rounds}: flow {statistics.median(got[OURS][0]):.1f}s vs {statistics.median(got[HAND][0]):.1f}s "
              f"(ratio {res['pairs'][-1]:.2f}), shard {statistics.median(got[OURS][1]) * 1000:.0f} vs "
              f"{statistics.median(got[HAND][1]) * 1000:.0f} ms (ratio {res['shard_pairs'][-1]:.2f}); "
              "load %.1f %.1f %.1f" % os.getloadavg(), flush=True)
    return res


def median_interval(values: list[float], coverage: float = 0.95) -> tuple[float, float, float]:
    """(low, high, actual coverage): a distribution-free interval of the median of ``values`` (sorted order
    statistics x_(k) and x_(n+1-k), the largest k whose binomial(n, 1/2) tail stays within (1 - coverage) / 2).

    Example: ``median_interval([1.0, 1.2, 0.9, 1.1, 1.05, 0.95, 1.3, 1.0])``
    """
    from math import comb

    xs, n = sorted(values), len(values)
    k, tail = 0, 0.0
    while k < n // 2:
        nxt = tail + comb(n, k) / 2**n
        if nxt > (1 - coverage) / 2:
            break
        tail, k = nxt, k + 1
    if k == 0:  # too few rounds for the coverage: the whole range
        return xs[0], xs[-1], 1 - 2 / 2**n if n else 0.0
    return xs[k - 1], xs[n - k], 1 - 2 * tail


def main(argv: list[str] | None = None) -> None:
    from scale import cluster

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=cluster.DEFAULT_ROOT)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--runs", type=int, default=2, help="flow runs of each flow per round, created at once")
    ap.add_argument("--tasks", type=int, default=10)
    args = ap.parse_args(argv)
    before = cluster.status(args.root)
    was_up = bool(before.get("processes")) and all(p["alive"] for p in before["processes"].values())  # type: ignore[union-attr]
    t = time.perf_counter()
    state = cluster.start(args.root)
    print(f"cluster up in {time.perf_counter() - t:.0f}s: {state.ui_url}", flush=True)
    try:
        _measure(state, args)
    finally:
        if not was_up:  # leave the machine as we found it (`make cluster` first to keep it running)
            cluster.stop(args.root)


def _measure(state: Any, args: argparse.Namespace) -> None:
    from scale import cluster

    os.environ.update(cluster.client_env(state))  # before Prefect reads its settings
    from scale.scenario import Scenario

    sc = Scenario(state, runs=args.runs, tasks=args.tasks, rows=200, hold_s=0.0)
    warm = asyncio.run(_warm(sc, args.runs))
    print(f"warm-up round: {warm}", flush=True)
    res = asyncio.run(_rounds(sc, args.rounds, args.runs))
    med = statistics.median
    load = f"load {min(res['loads']):.1f}-{max(res['loads']):.1f}"
    low, high, cover = median_interval(res["pairs"])
    print("paired flow ratios by round: " + " ".join(f"{r:.2f}" for r in res["pairs"]))
    print("paired shard ratios by round: " + " ".join(f"{r:.2f}" for r in res["shard_pairs"]))
    print(f"median paired flow ratio {med(res['pairs']):.3f}, {cover:.0%} interval of the median {low:.2f}-{high:.2f}; "
          f"ratio of pooled flow medians {med(res['flow'][OURS]) / med(res['flow'][HAND]):.3f}; {load} (1-min average "
          "after each round)")
    rows = [
        common.row(f"flow ours/hand, median of {args.rounds} paired ratios ({load})", med(res["pairs"]), None, "x", 1.10),
        common.row(f"  {cover:.0%} interval of that median (distribution-free)", low, None, "x"),
        common.row(f"  ... its upper end", high, None, "x"),
        common.row(f"flow run duration, {args.tasks} shards on Dask (pooled medians)", med(res["flow"][OURS]),
                   med(res["flow"][HAND]), "s"),
        common.row("shard task run (median of paired ratios)", med(res["shard_pairs"]), None, "x"),
        common.row("shard task run duration", med(res["shard"][OURS]) * 1000, med(res["shard"][HAND]) * 1000, "ms"),
    ]
    print(f"final states: {res['states']}")
    common.report("cluster", rows)


async def _warm(sc: Any, runs: int) -> dict[str, str]:
    """One run of each flow first (the workers' first runs import everything; not counted)."""
    out: dict[str, str] = {}
    for dep in (OURS, HAND):
        ids = await sc.create_runs(dep, runs, tag="warm")
        out.update(await sc.wait_runs(ids))
    return out


if __name__ == "__main__":
    main()
