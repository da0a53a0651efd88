"""KV: get/set/delete vs raw ``Variable.get`` / ``Variable.set(overwrite=True)`` / ``Variable.unset``, and incr under contention.

Both sides use their blocking forms (``kv.sync.get`` vs ``Variable.get``), first
outside any run (raw Prefect builds a client per call there; ours keeps one per
process), then inside a sync task run of a flow (raw Prefect reuses the run's
client). Values are small (inline in the variable). ``set`` overwrites an
existing key: ours sends read + PATCH, raw sends read + PATCH + read.

Contention: 4 processes each ``incr`` one key N times; ops/s over the wall time
and lost updates (expected - final value; must be 0). The raw get+set increment
is run the same way to show what the lock prevents, and the same increment under
a Prefect global concurrency limit of 1 slot (``prefect.concurrency.asyncio.concurrency``)
shows what that lock would cost instead of ours. Requests per uncontended ``incr``
are counted by kind. ``--ops`` runs the get/set/delete rows only.

The sync twins of get/exists/set/delete send their Variables request on the calling thread for small
values (no hop to the portal loop), as raw ``Variable.get`` does. ``delete`` stays a GET and a DELETE: the
GET tells whether the value lives in the object store (the Variables DELETE answers 204 with no body, and a
small delete must not touch the store).
"""

from __future__ import annotations

import _common  # noqa: F401  (sets the environment before prefect is imported)
from _common import ROOT, report, row, start_prefect_server

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

N_OPS = 30
N_INCR = 25
N_PROCS = 4
ROUNDS = int(os.environ.get("BENCH_KV_ROUNDS", "3"))


def _requests_per_incr(ctx: Any, n: int = 10) -> dict[str, float]:
    """Prefect API requests per uncontended ``incr``, by kind (counted on the KV's Variables calls)."""
    from aether_prefect._sync import run_sync
    from aether_prefect.services.kv import PrefectKV, VariablesAPI

    counts: dict[str, int] = {}

    class Counting(VariablesAPI):
        pass

    for method in ("read", "create", "patch", "patch_id", "delete", "delete_id"):
        def make(m: str) -> Any:
            async def call(self: Any, *a: Any, **k: Any) -> Any:
                counts[m] = counts.get(m, 0) + 1
                return await getattr(VariablesAPI, m)(self, *a, **k)
            return call
        setattr(Counting, method, make(method))
    kv = PrefectKV(ctx, api=Counting())
    run_sync(kv.incr("per-op"))
    counts.clear()
    for _ in range(n):
        run_sync(kv.incr("per-op"))
    return {k: v / n for k, v in sorted(counts.items())}


def _paired(ours: Callable[[], Any], raw: Callable[[], Any], n: int = N_OPS, warmup: int = 3) -> tuple[float, float]:
    """Median seconds of ``ours()`` and ``raw()``, calls alternated so both see the same machine load."""
    for _ in range(warmup):
        ours()
        raw()
    t_ours, t_raw = [], []
    for i in range(n):
        for fn, acc in ((ours, t_ours), (raw, t_raw)) if i % 2 == 0 else ((raw, t_raw), (ours, t_ours)):
            t = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t)
    return statistics.median(t_ours), statistics.median(t_raw)


def _ops(kv: Any, prefix: str) -> dict[str, tuple[float, float]]:
    """Median seconds (ours, raw) of get, set (overwrite) and delete, with the blocking APIs."""
    from prefect.variables import Variable

    ours_key, raw_name = f"{prefix}-ours", f"bench-raw-{prefix}"
    kv.sync.set(ours_key, {"n": 0})
    Variable.set(raw_name, {"n": 0}, overwrite=True)
    out = {
        "get": _paired(lambda: kv.sync.get(ours_key), lambda: Variable.get(raw_name)),
        "set": _paired(lambda: kv.sync.set(ours_key, {"n": 1}), lambda: Variable.set(raw_name, {"n": 1}, overwrite=True)),
    }
    n = N_OPS + 3  # 3 warm-ups first; every call deletes a key that exists
    for j in range(n):
        kv.sync.set(f"{ours_key}-{j}", j)
        Variable.set(f"{raw_name}-{j}", j)
    ours_left, raw_left = list(range(n)), list(range(n))
    out["delete"] = _paired(lambda: kv.sync.delete(f"{ours_key}-{ours_left.pop()}"),
                            lambda: Variable.unset(f"{raw_name}-{raw_left.pop()}"))
    return out


def _child(ns: str, root: str, mode: str, n: int, go: str) -> None:
    """One contending process: wait for ``go``, then ``n`` increments (ours or raw get+set)."""
    import asyncio

    from prefect.variables import Variable

    from aether_prefect.blocks import AetherConfig, AetherObjectStore
    from aether_prefect.session import open_session

    async def main() -> None:
        cfg = AetherConfig(kv_namespace=ns, store=AetherObjectStore(backend="local", root=root))
        async with open_session(config=cfg) as ctx:
            kv = ctx.kv()
            await kv.get("warm")
            await Variable.aget("warm")
            print("READY", flush=True)
            while not os.path.exists(go):
                await asyncio.sleep(0.01)
            for _ in range(n):
                if mode == "ours":
                    await kv.incr("counter")
                elif mode == "gcl":
                    from prefect.concurrency.asyncio import concurrency

                    async with concurrency(f"gcl-{ns}", occupy=1, strict=True):
                        await kv.set("counter", (await kv.get("counter", 0)) + 1)
                else:
                    cur = await Variable.aget(f"raw-{ns}", default=0)
                    await Variable.aset(f"raw-{ns}", cur + 1, overwrite=True)
            print("DONE", flush=True)

    asyncio.run(main())


def _contend(mode: str) -> tuple[float, int]:
    """(ops/s, lost updates) for N_PROCS processes x N_INCR increments of one key."""
    from prefect.variables import Variable

    from aether_prefect.session import open_session_sync

    ns = f"b{uuid.uuid4().hex[:8]}"
    root = tempfile.mkdtemp(prefix="aether-bench-kv-")
    go = os.path.join(root, "go")
    if mode == "raw":
        Variable.set(f"raw-{ns}", 0, overwrite=True)
    if mode == "gcl":
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

        with get_client(sync_client=True) as client:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=f"gcl-{ns}", limit=1))
    procs = [
        subprocess.Popen([sys.executable, __file__, "--child", ns, root, mode, str(N_INCR), go],
                         stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
        for _ in range(N_PROCS)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "READY"
        t = time.perf_counter()
        Path(go).touch()
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "DONE"
        wall = time.perf_counter() - t
    finally:
        for p in procs:
            p.wait(timeout=60) if p.poll() is None else None
    if mode in ("ours", "gcl"):
        from aether_prefect.blocks import AetherConfig, AetherObjectStore

        with open_session_sync(config=AetherConfig(kv_namespace=ns, store=AetherObjectStore(backend="local", root=root))) as ctx:
            final = ctx.kv().sync.get("counter")
    else:
        final = Variable.get(f"raw-{ns}")
    total = N_PROCS * N_INCR
    return total / wall, total - int(final)


def main() -> None:
    start_prefect_server()
    from prefect import flow

    from aether_prefect import NodeContext, aether_task
    from aether_prefect.blocks import AetherConfig, AetherObjectStore
    from aether_prefect.session import open_session_sync

    cfg = AetherConfig(kv_namespace=f"b{uuid.uuid4().hex[:8]}",
                       store=AetherObjectStore(backend="local", root=tempfile.mkdtemp(prefix="aether-bench-kv-")))
    rows: list[dict[str, Any]] = [row("machine load (1-min loadavg) at start", os.getloadavg()[0], None, "load")]
    targets = {"get": 1.1, "set": 1.0, "delete": 1.1}

    with open_session_sync(config=cfg) as ctx:
        outside = _ops(ctx.kv(), "out")
    for op, (ours, raw) in outside.items():
        rows.append(row(f"{op}, outside any run (median)", ours * 1e3, raw * 1e3, "ms", targets[op]))

    @aether_task(config=cfg)
    def in_task(*, context: NodeContext) -> dict[str, tuple[float, float]]:
        return _ops(context.kv(), "in")

    @flow(name="bench-kv")
    def bench_flow() -> dict[str, tuple[float, float]]:
        return in_task()

    inside = bench_flow()
    for op, (ours, raw) in inside.items():
        rows.append(row(f"{op}, inside a task run (median)", ours * 1e3, raw * 1e3, "ms", targets[op]))

    if "--ops" in sys.argv:  # get/set/delete only, no contention rounds
        rows.append(row("machine load (1-min loadavg) at end", os.getloadavg()[0], None, "load"))
        report("kv-ops", rows)
        return
    with open_session_sync(config=cfg) as ctx:
        per_op = _requests_per_incr(ctx)
    rows.append(row("requests per uncontended incr: " + ", ".join(f"{k} {v:g}" for k, v in per_op.items()),
                    sum(per_op.values()), None, "req"))
    ours, raw, gcl = [], [], []
    for _ in range(ROUNDS):  # paired rounds: ours, raw and the GCL-locked increment one after the other
        ours.append(_contend("ours"))
        raw.append(_contend("raw"))
        gcl.append(_contend("gcl"))
    ours_ops, ours_lost = statistics.median(o for o, _ in ours), max(lost for _, lost in ours)
    raw_ops, raw_lost = statistics.median(o for o, _ in raw), max(lost for _, lost in raw)
    gcl_ops, gcl_lost = statistics.median(o for o, _ in gcl), max(lost for _, lost in gcl)
    rows.append(row(f"incr, {N_PROCS} procs x {N_INCR} on one key: ops/s (goal >= 20)", ours_ops, None, "ops/s", 20,
                    higher_is_better=True))
    rows.append(row("  ours vs unlocked get+set (raw loses updates)", ours_ops, raw_ops, "ops/s"))
    rows.append(row("  ours vs get+set under a Prefect global concurrency limit", ours_ops, gcl_ops, "ops/s"))
    rows.append(row("incr under contention: lost updates (ours; must be 0)", ours_lost, None, "count", 0))
    rows.append(row("GCL-locked get+set under contention: lost updates", gcl_lost, None, "count", 0))
    rows.append(row("raw get+set increment under contention: lost updates", raw_lost, None, "count"))
    rows.append(row("machine load (1-min loadavg) at end", os.getloadavg()[0], None, "load"))
    report("kv", rows)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6])
    else:
        main()
