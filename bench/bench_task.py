"""@aether_task overhead: 300 sequential tasks in one flow, and 300 .submit on a thread pool of 8.

Compares bare @task with @aether_task (context unused) and @aether_task with one
logger().info call, interleaving the variants and taking the median of repeats.
Target: at most 1.05 for the unused case.
"""

from __future__ import annotations

import _common  # noqa: F401
from _common import report, row, start_prefect_server

import statistics
import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 300
REPEATS = int(sys.argv[2]) if len(sys.argv) > 2 else 5


def main() -> None:
    start_prefect_server()
    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    from aether_prefect import NodeContext, aether_task

    @task
    def bare(i: int) -> int:
        return i

    @aether_task
    def ours_unused(i: int, *, context: NodeContext) -> int:
        return i

    @aether_task
    def ours_logger(i: int, *, context: NodeContext) -> int:
        context.logger().info("task %s", i)
        return i

    def seq_flow(t):  # type: ignore[no-untyped-def]
        @flow(name=f"bench-seq-{t.name}")
        def f() -> None:
            for i in range(N):
                t(i)
        return f

    def pool_flow(t):  # type: ignore[no-untyped-def]
        @flow(name=f"bench-pool-{t.name}", task_runner=ThreadPoolTaskRunner(max_workers=8))
        def f() -> None:
            futs = [t.submit(i) for i in range(N)]
            for fu in futs:
                fu.result()
        return f

    variants = {"bare": bare, "unused": ours_unused, "logger": ours_logger}
    seq = {k: seq_flow(v) for k, v in variants.items()}
    pool = {k: pool_flow(variants[k]) for k in ("bare", "unused")}
    seq["bare"]()  # warm-up: config load, client, first flow registration
    ours_unused(0)
    times: dict[str, list[float]] = {f"seq-{k}": [] for k in seq} | {f"pool-{k}": [] for k in pool}
    for _ in range(REPEATS):
        for k, f in seq.items():
            t = time.perf_counter()
            f()
            times[f"seq-{k}"].append(time.perf_counter() - t)
        for k, f in pool.items():
            t = time.perf_counter()
            f()
            times[f"pool-{k}"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    report("task", [
        row(f"{N} sequential tasks: @aether_task unused vs @task", med["seq-unused"], med["seq-bare"], "s", 1.05),
        row(f"{N} sequential tasks: @aether_task + logger vs @task", med["seq-logger"], med["seq-bare"], "s"),
        row(f"{N} .submit on 8 threads: @aether_task vs @task", med["pool-unused"], med["pool-bare"], "s"),
    ])


if __name__ == "__main__":
    main()
