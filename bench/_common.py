"""Shared bench plumbing: a private Prefect server and PREFECT_HOME, medians, and one result format.

Import this module FIRST in a bench script (before prefect): it sets the environment.
Each bench prints a table and writes bench/results/<name>.json with rows of
``{"measure", "ours", "raw", "unit", "ratio", "target", "ok"}``.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"

_home = Path(tempfile.mkdtemp(prefix="aether-bench-"))
atexit.register(shutil.rmtree, _home, True)  # registered first, so it runs after the server (below) has stopped
os.environ.update(
    PREFECT_HOME=str(_home / "client"),
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
    PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW="ignore",
    PREFECT_LOGGING_LEVEL=os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING"),
)
for _v in ("AETHER_PREFECT_CONFIG", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
    os.environ.pop(_v, None)

_server = None


def start_prefect_server() -> str:
    """Start a private real Prefect server (once per bench process) and point PREFECT_API_URL at it."""
    global _server
    if _server is None:
        from tests.servers.prefect_server import PrefectServer

        _server = PrefectServer(home=_home / "server").start()
        os.environ["PREFECT_API_URL"] = _server.api_url
        atexit.register(_server.stop)
        _server.wait_ready()
    return _server.api_url


def median_s(fn: Callable[[], Any], n: int, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` over ``n`` runs, in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


async def amedian_s(fn: Callable[[], Any], n: int, warmup: int = 3) -> float:
    """Async twin of :func:`median_s` for coroutine functions."""
    for _ in range(warmup):
        await fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def row(measure: str, ours: float, raw: float | None, unit: str, target: float | None = None,
        higher_is_better: bool = False) -> dict[str, Any]:
    """One result row; ``ratio`` = ours / raw; ``ok`` compares the ratio (or ``ours`` when no raw) to target."""
    ratio = (ours / raw) if raw else None
    value = ratio if ratio is not None else ours
    ok = None if target is None else (value >= target if higher_is_better else value <= target)
    return {"measure": measure, "ours": ours, "raw": raw, "unit": unit, "ratio": ratio, "target": target, "ok": ok}


def report(name: str, rows: list[dict[str, Any]]) -> None:
    """Print ``rows`` as a table and write bench/results/<name>.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"bench": name, "rows": rows}, indent=2))
    print(f"\n== {name}")
    print(f"{'measure':58} {'ours':>12} {'raw':>12} {'unit':>6} {'ratio':>7} {'target':>7}  ok")
    for r in rows:
        fmt = lambda v: "-" if v is None else (f"{v:.4g}")  # noqa: E731
        print(f"{r['measure'][:58]:58} {fmt(r['ours']):>12} {fmt(r['raw']):>12} {r['unit']:>6} "
              f"{fmt(r['ratio']):>7} {fmt(r['target']):>7}  {'' if r['ok'] is None else ('yes' if r['ok'] else 'NO')}")
