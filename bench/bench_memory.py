"""Memory: ``record`` throughput vs raw object-store puts of the same payloads, and ``recent(50)`` after 10,000 events.

``record`` validates, writes one immutable object (plus one hour marker per hour)
and queues a Prefect event (a real server is running, so events are emitted).
The raw path puts the same bytes at fresh keys with the store directly. For
``recent(50)`` the raw path reads the same 50 objects by known keys (no listing).
The local backend is measured at 10,000 events; S3 (moto on loopback, slow at listing) at 1,000.
"""

from __future__ import annotations

import _common  # noqa: F401  (sets the environment before prefect is imported)
from _common import amedian_s, report, row, start_prefect_server

import asyncio
import tempfile
import time
import uuid
from typing import Any

N_RECORD_LOCAL = 1000
N_RECORD_S3 = 200
N_FILL_LOCAL = 10_000
N_FILL_S3 = 1_000
#: #21: a timeline of this many events, all in one hour (1,000,000 with BENCH_MILLION=1; see fill.py).
import os as _os

N_SCALE = int(_os.environ.get("BENCH_MEMORY_SCALE_N", "1000000" if _os.environ.get("BENCH_MILLION") else "100000"))


async def _throughput(mem: Any, store: Any, n: int, chunk: int = 50) -> tuple[float, float]:
    """(ours events/s, raw puts/s): ``n`` sequential records vs ``n`` raw puts, interleaved in chunks (fair to drift)."""
    import anyio

    payloads = [{"step": i, "loss": 1.0 / (i + 1), "note": "epoch finished"} for i in range(n)]
    body = (await mem.record("metric", payloads[0], tags=["bench"])).model_dump_json().encode()
    prefix = f"bench-raw/{uuid.uuid4().hex}"

    def raw_puts(start: int, stop: int) -> None:
        for i in range(start, stop):
            store.put_bytes(f"{prefix}/{i:08d}.json", body)

    t_ours = t_raw = 0.0
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        t = time.perf_counter()
        for p in payloads[start:stop]:
            await mem.record("metric", p, tags=["bench"])
        t_ours += time.perf_counter() - t
        t = time.perf_counter()
        await anyio.to_thread.run_sync(raw_puts, start, stop)
        t_raw += time.perf_counter() - t
    return n / t_ours, n / t_raw


async def _fill(mem: Any, n: int, concurrency: int) -> None:
    """Write ``n`` events quickly (Prefect mirror off: the bench measures reads, not the events API)."""
    mem._emit_ok = False
    for start in range(0, n, concurrency):
        await asyncio.gather(*(mem.record("fill", {"i": i}) for i in range(start, min(n, start + concurrency))))


async def _recent_median(mem: Any, store: Any, n: int) -> tuple[float, float]:
    """(recent(50) median s, raw 50 known-key reads median s)."""
    import anyio

    from aether_prefect.services.memory._log import newest_keys

    keys = [k for _, k in zip(range(50), newest_keys(store, mem.prefix))]

    async def ours() -> None:
        assert len(await mem.recent(limit=50)) == 50

    async def raw() -> None:
        await anyio.to_thread.run_sync(lambda: [store.get_bytes(k) for k in keys])

    return await amedian_s(ours, n, warmup=1), await amedian_s(raw, n, warmup=1)


async def _scale(rows: list[Any]) -> None:
    """#21: recent(50) and search on a timeline of N_SCALE events recorded within one hour (local store)."""
    from fill import fill_memory

    from aether_prefect import open_session
    from aether_prefect.blocks import AetherConfig, AetherObjectStore

    cfg = AetherConfig(store=AetherObjectStore(backend="local", root=tempfile.mkdtemp(prefix="aether-bench-mem-scale-")),
                       memory_mirror="off")
    async with open_session(config=cfg, graph_id="bench-scale", run_id="scale") as ctx:
        mem, store = ctx.memory(), ctx.store()
        t = time.perf_counter()
        fill_memory(store, mem.prefix, N_SCALE, run_id="scale")
        fill_s = time.perf_counter() - t
        ours_s, raw_s = await _recent_median(mem, store, 15)
        search_s = await amedian_s(lambda: mem.search("beta event", limit=10), 5, warmup=1)
    rows.append(row(f"local: fill {N_SCALE} events in one hour (fill.py, per event)", fill_s / N_SCALE * 1e3, None, "ms"))
    rows.append(row(f"local: recent(50), {N_SCALE} events in one hour (median)", ours_s * 1e3, None, "ms", 20))
    rows.append(row(f"  same vs reading those 50 known keys", ours_s * 1e3, raw_s * 1e3, "ms"))
    rows.append(row(f"local: search('beta event', limit=10), {N_SCALE} events (scans the newest 10,000)",
                    search_s * 1e3, None, "ms"))


async def main() -> None:
    start_prefect_server()
    from aether_prefect import open_session
    from aether_prefect.blocks import AetherConfig, AetherObjectStore

    rows = []
    local = AetherConfig(store=AetherObjectStore(backend="local", root=tempfile.mkdtemp(prefix="aether-bench-mem-")))
    async with open_session(config=local, graph_id="bench-memory") as ctx:
        mem, store = ctx.memory(), ctx.store()
        await mem.record("warmup", "x")
        ours, raw = await _throughput(mem, store, N_RECORD_LOCAL)
        rows.append(row(f"local: record throughput ({N_RECORD_LOCAL} sequential)", ours, raw, "ev/s",
                        None, higher_is_better=True))
    async with open_session(config=local, graph_id="bench-memory") as ctx:
        mem, store = ctx.memory(), ctx.store()
        await _fill(mem, N_FILL_LOCAL, 32)
        ours_s, raw_s = await _recent_median(mem, store, 30)
        rows.append(row(f"local: recent(50) after {N_FILL_LOCAL} events (median)", ours_s * 1e3, raw_s * 1e3, "ms"))

    await _scale(rows)

    from tests.servers.s3 import ACCESS_KEY, SECRET_KEY, MotoS3
    from pydantic import SecretStr

    moto = MotoS3().start()
    try:
        s3 = AetherConfig(store=AetherObjectStore(
            backend="s3", bucket=moto.create_bucket(), prefix="aether", endpoint_url=moto.url, region="us-east-1",
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SecretStr(SECRET_KEY)))
        async with open_session(config=s3, graph_id="bench-memory") as ctx:
            mem, store = ctx.memory(), ctx.store()
            await mem.record("warmup", "x")
            ours, raw = await _throughput(mem, store, N_RECORD_S3)
            rows.append(row(f"s3 (moto): record throughput ({N_RECORD_S3} sequential)", ours, raw, "ev/s",
                            None, higher_is_better=True))
        async with open_session(config=s3, graph_id="bench-memory") as ctx:
            mem, store = ctx.memory(), ctx.store()
            await _fill(mem, N_FILL_S3, 16)
            ours_s, raw_s = await _recent_median(mem, store, 7)
            rows.append(row(f"s3 (moto): recent(50) after {N_FILL_S3} events (median)", ours_s * 1e3, raw_s * 1e3,
                            "ms"))
    finally:
        moto.stop()
    report("memory", rows)


if __name__ == "__main__":
    asyncio.run(main())
