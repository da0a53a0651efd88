"""The load + fault scenario against the local cluster: prints a table of figures, exits 1 if a promise fails.

``python -m scale.scenario [--root .cluster] [--runs 8] [--tasks 10] [--phases load,one-worker,bare,kill,s3,server]``

Phases (each creates its flow runs at once from a deployment, as the UI does):
- ``load``: ``runs`` runs of ``scale-flow/scale`` on 2 workers -> task runs/min with 2 workers.
- ``one-worker``: the same with worker-2 stopped -> task runs/min with 1 worker.
- ``bare``: ``bare-flow/scale`` (bare @task, no services) on 2 workers -> the @aether_task / @task ratio.
- ``kill``: SIGKILL a worker's whole process tree (the worker, its flow-run processes and their Dask
  workers: a machine lost) while runs are in flight; its runs are marked Crashed, rerun, and complete.
- ``s3``: the S3 endpoint stops for a few seconds mid-run and starts again; shard retries ride it out.
- ``server``: the Prefect server is restarted mid-run while a KV lock holder dies; runs complete or end
  clearly (and are rerun), and the next ``incr`` on the locked key proceeds once the lease expires.
After every phase the integrity checks of ``scale.checks`` run over all runs so far.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, Field

from scale import cluster, procs
from scale.cluster import ClusterState

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
ALL_PHASES = ["load", "one-worker", "bare", "kill", "s3", "server"]
#: A RUNNING flow run whose process has been gone this long is a zombie: we mark it Crashed.
ZOMBIE_AFTER_S = 20.0
LOCK_LEASE_S = 8.0


class Row(BaseModel):
    """One line of the figures table."""

    name: str
    value: str
    ok: bool | None = None


class PhaseReport(BaseModel):
    """What one phase did and found."""

    name: str
    runs: int
    wall_s: float
    states: dict[str, int]
    notes: list[str] = Field(default_factory=list)
    checks: list[dict[str, Any]] = Field(default_factory=list)


class Report(BaseModel):
    """The whole scenario's outcome (written as JSON with ``--json``)."""

    ok: bool
    rows: list[Row]
    phases: list[PhaseReport]


class RssSampler:
    """Samples the resident memory of each worker's process tree in a thread; keeps the peak per worker."""

    def __init__(self, state: ClusterState, every_s: float = 0.5) -> None:
        self.state = state
        self.every_s = every_s
        self.peak: dict[str, float] = {}
        self.peak_worker_only: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            for name, rec in list(self.state.procs.items()):
                if not name.startswith("worker-"):
                    continue
                tree = procs.tree(rec)
                self.peak[name] = max(self.peak.get(name, 0.0), procs.peak_rss_mb(tree))
                self.peak_worker_only[name] = max(self.peak_worker_only.get(name, 0.0), procs.peak_rss_mb(tree[:1]))

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Scenario:
    """Drives the cluster: creates flow runs, waits for them, injects faults, runs the checks."""

    def __init__(self, state: ClusterState, *, runs: int, tasks: int, rows: int, hold_s: float) -> None:
        self.state = state
        self.n_runs = runs
        self.n_tasks = tasks
        self.rows = rows
        self.hold_s = hold_s
        self.all_runs: dict[str, int] = {}  # flow run id -> n_tasks (scale-flow runs only)
        self.final: dict[str, str] = {}
        self.reports: list[PhaseReport] = []
        self.rows_out: list[Row] = []
        self.ok = True

    # -- Prefect plumbing --------------------------------------------------------------

    async def create_runs(self, deployment: str, n: int, *, hold_s: float = 0.0, tag: str) -> list[str]:
        """Create ``n`` flow runs of ``deployment`` at once; return their ids."""
        from aether_prefect._prefect import prefect_client

        client = await prefect_client()
        dep = await client.read_deployment_by_name(deployment)
        params = {"n_tasks": self.n_tasks, "rows": self.rows, "hold_s": hold_s}
        made = await asyncio.gather(*[
            client.create_flow_run_from_deployment(dep.id, parameters={**params, "batch": f"{tag}-{i}"}, tags=["scale", tag])
            for i in range(n)
        ])
        ids = [str(r.id) for r in made]
        if deployment.startswith("scale-flow/"):
            self.all_runs.update({i: self.n_tasks for i in ids})
        return ids

    async def read_runs(self, ids: list[str]) -> list[Any]:
        """The flow runs ``ids`` as the API sees them now."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        from aether_prefect._prefect import prefect_client

        client = await prefect_client()
        return list(await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)),
                                                limit=len(ids)))

    async def mark_crashed(self, run_id: str, why: str) -> None:
        """Force a flow run whose process is gone into Crashed (what a zombie-detecting automation does)."""
        from prefect.states import Crashed

        from aether_prefect._prefect import prefect_client

        client = await prefect_client()
        await client.set_flow_run_state(run_id, Crashed(message=why), force=True)

    async def wait_runs(self, ids: list[str], *, timeout: float = 900.0, on_tick: Callable[[list[Any]], Any] | None = None,
                        notes: list[str] | None = None) -> dict[str, str]:
        """Wait until every run is terminal; mark zombies (RUNNING, process gone) Crashed. Return id -> state."""
        gone_since: dict[str, float] = {}
        t0 = time.monotonic()
        while True:
            try:
                runs = await self.read_runs(ids)
            except Exception as exc:  # the API may be down during the server fault
                if time.monotonic() - t0 > timeout:
                    raise
                await asyncio.sleep(1.0)
                if notes is not None and not any("API unreachable" in n for n in notes):
                    notes.append(f"API unreachable while waiting ({type(exc).__name__}); kept polling")
                continue
            if on_tick is not None:
                await on_tick(runs)
            states = {str(r.id): (r.state.type.value if r.state else "PENDING") for r in runs}
            for r in runs:
                rid = str(r.id)
                if states[rid] == "RUNNING" and _pid_gone(r.infrastructure_pid):
                    first = gone_since.setdefault(rid, time.monotonic())
                    if time.monotonic() - first > ZOMBIE_AFTER_S:
                        await self.mark_crashed(rid, f"flow-run process {r.infrastructure_pid} is gone (worker killed?)")
                        if notes is not None:
                            notes.append(f"run {rid[:8]} zombie (process gone) -> marked Crashed")
                        gone_since.pop(rid)
                else:
                    gone_since.pop(rid, None)
            if len(states) == len(ids) and all(s in TERMINAL for s in states.values()):
                self.final.update(states)
                return states
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"flow runs not finished after {timeout:.0f}s: {states}")
            await asyncio.sleep(1.0)

    async def task_retries(self, ids: list[str]) -> int:
        """How many task-run attempts beyond the first the runs needed (Prefect's run_count)."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        from aether_prefect._prefect import prefect_client

        client = await prefect_client()
        total = 0
        offset = 0
        while True:
            page = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)),
                                               limit=200, offset=offset)
            total += sum(max(0, (t.run_count or 1) - 1) for t in page)
            if len(page) < 200:
                return total
            offset += 200

    async def run_checks(self, phase: PhaseReport) -> None:
        """Integrity checks over every scale-flow run so far; a failure fails the scenario."""
        from aether_prefect import open_session
        from scale.checks import RunInfo, check_all

        runs = [RunInfo(id=i, state=self.final.get(i, "UNKNOWN"), n_tasks=n) for i, n in self.all_runs.items()]
        async with open_session(graph_id="scale-flow", memory_level="graph", config=self.state.config_name) as ctx:
            checks = await check_all(ctx, runs)
        for c in checks:
            phase.checks.append(c.model_dump())
            if not c.ok:
                self.promise(f"[{phase.name}] {c.name}", False, c.detail)
        if all(c.ok for c in checks):
            self.promise(f"[{phase.name}] integrity: {len(checks)} checks over {len(runs)} runs", True,
                         "; ".join(c.detail for c in checks[:2]))

    def promise(self, name: str, ok: bool, value: str) -> None:
        """Record one promise row; a broken promise fails the scenario."""
        self.ok = self.ok and ok
        self.rows_out.append(Row(name=name, value=value, ok=ok))

    def figure(self, name: str, value: str) -> None:
        """Record one figure row."""
        self.rows_out.append(Row(name=name, value=value))

    # -- phases ------------------------------------------------------------------------

    async def phase_load(self, name: str, deployment: str = "scale-flow/scale") -> float:
        """Create ``runs`` runs at once and wait; return task runs per minute."""
        t0 = time.monotonic()
        ids = await self.create_runs(deployment, self.n_runs, tag=name)
        notes: list[str] = []
        states = await self.wait_runs(ids, notes=notes)
        wall = time.monotonic() - t0
        rep = PhaseReport(name=name, runs=len(ids), wall_s=round(wall, 1), states=_count(states), notes=notes)
        self.reports.append(rep)
        done = sum(1 for s in states.values() if s == "COMPLETED")
        self.promise(f"[{name}] all {len(ids)} runs complete", done == len(ids), f"{done}/{len(ids)} in {wall:.0f}s")
        if deployment.startswith("scale-flow/"):
            await self.run_checks(rep)
        return len(ids) * self.n_tasks * 60.0 / wall

    async def phase_one_worker(self) -> float:
        """Task runs/min with worker-2 stopped (restarted afterwards)."""
        names = self.state.worker_names()
        for n in names[1:]:
            cluster.stop_worker(self.state, n)
        try:
            return await self.phase_load("one-worker")
        finally:
            for n in names[1:]:
                cluster.start_worker(self.state, n)

    async def _wait_in_flight(self, ids: list[str], timeout: float = 300.0) -> list[Any]:
        """Wait until at least one of ``ids`` is RUNNING with a live process; return the running runs."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                runs = await self.read_runs(ids)
            except httpx.HTTPError as exc:
                if not _transient(exc):
                    raise
                await asyncio.sleep(1.0)
                continue
            running = [r for r in runs
                       if r.state and r.state.type.value == "RUNNING" and _pid_alive(r.infrastructure_pid)]
            if running:
                return running
            await asyncio.sleep(0.5)
        raise TimeoutError(f"none of {len(ids)} runs started within {timeout:.0f}s")

    async def _wait_mid_run(self, ids: list[str], timeout: float = 300.0) -> list[Any]:
        """Wait until a run is RUNNING and at least one of its shards has been saved (a Prefect artifact exists)."""
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType, FlowRunFilter, FlowRunFilterId

        from aether_prefect._prefect import prefect_client

        client = await prefect_client()
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                arts = await client.read_artifacts(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)),
                    artifact_filter=ArtifactFilter(type=ArtifactFilterType(not_any_=["result"])), limit=1)
            except httpx.HTTPError as exc:
                if not _transient(exc):
                    raise
                await asyncio.sleep(1.0)
                continue
            if arts:
                running = await self._wait_in_flight(ids, timeout=timeout)
                return running
            await asyncio.sleep(0.3)
        raise TimeoutError(f"no shard of {len(ids)} runs saved within {timeout:.0f}s")

    async def rerun_unfinished(self, states: dict[str, str], tag: str, notes: list[str]) -> tuple[int, int]:
        """Rerun (new flow runs, same parameters) every run that did not complete; return (reruns, completed)."""
        bad = [i for i, s in states.items() if s != "COMPLETED"]
        if not bad:
            return 0, 0
        ids = await self.create_runs("scale-flow/scale", len(bad), tag=f"{tag}-rerun")
        after = await self.wait_runs(ids, notes=notes)
        return len(ids), sum(1 for s in after.values() if s == "COMPLETED")

    async def phase_kill(self) -> None:
        """SIGKILL one worker's process tree while runs are in flight; its runs end Crashed and are rerun."""
        notes: list[str] = []
        t0 = time.monotonic()
        ids = await self.create_runs("scale-flow/scale", self.n_runs, hold_s=self.hold_s, tag="kill")
        running = await self._wait_mid_run(ids)
        victim = self._worker_holding(running)
        killed = procs.signal_tree(self.state.procs.get(victim), signal.SIGKILL)
        killed_pids = {p.pid for p in killed}
        held = [str(r.id) for r in await self.read_runs(ids) if _pid(r.infrastructure_pid) in killed_pids]
        notes.append(f"SIGKILL {victim} pid {self.state.procs[victim].pid} and {len(killed) - 1} descendants; "
                     f"it held {len(held)} run(s)")
        self.state.procs.pop(victim, None)
        cluster.save_state(self.state)
        await asyncio.sleep(2.0)
        states = await self.wait_runs(ids, notes=notes)
        cluster.start_worker(self.state, victim)
        others_bad = [i[:8] for i, s in states.items() if i not in held and s != "COMPLETED"]
        held_bad = [i[:8] for i in held if states.get(i) not in ("COMPLETED", "CRASHED")]
        reruns, rerun_ok = await self.rerun_unfinished(states, "kill", notes)
        wall = time.monotonic() - t0
        rep = PhaseReport(name="kill", runs=len(ids), wall_s=round(wall, 1), states=_count(states), notes=notes)
        self.reports.append(rep)
        self.promise("[kill] runs of the killed worker end Crashed, the others complete",
                     bool(held) and not others_bad and not held_bad,
                     f"{_count(states)}; held by killed worker: {len(held)}"
                     + (f"; not completed elsewhere: {others_bad}" if others_bad else ""))
        self.promise("[kill] reruns complete", rerun_ok == reruns, f"{rerun_ok}/{reruns}")
        await self.run_checks(rep)

    def _worker_holding(self, running: list[Any]) -> str:
        """The worker whose process tree runs one of the ``running`` flow runs."""
        pid_of = {str(r.id): _pid(r.infrastructure_pid) for r in running}
        for name in self.state.worker_names():
            tree = {p.pid for p in procs.tree(self.state.procs.get(name))}
            if any(pid in tree for pid in pid_of.values()):
                return name
        raise RuntimeError(f"no worker holds the running runs {list(pid_of)} (pids {list(pid_of.values())})")

    async def phase_s3(self, down_s: float) -> None:
        """Stop the S3 endpoint for ``down_s`` seconds mid-run, start it again; runs must complete."""
        notes: list[str] = []
        t0 = time.monotonic()
        ids = await self.create_runs("scale-flow/scale", self.n_runs, hold_s=self.hold_s, tag="s3")
        await self._wait_mid_run(ids)
        procs.stop(self.state.procs.pop("s3-proxy"), timeout=5)
        cluster.save_state(self.state)
        notes.append(f"S3 endpoint stopped for {down_s:.0f}s")
        await asyncio.sleep(down_s)
        cluster.start_s3_proxy(self.state)
        states = await self.wait_runs(ids, notes=notes)
        retries = await self.task_retries(ids)
        wall = time.monotonic() - t0
        rep = PhaseReport(name="s3", runs=len(ids), wall_s=round(wall, 1), states=_count(states), notes=notes)
        self.reports.append(rep)
        done = sum(1 for s in states.values() if s == "COMPLETED")
        self.promise(f"[s3] runs complete after S3 gone {down_s:.0f}s", done == len(ids),
                     f"{done}/{len(ids)}, task retries used: {retries}")
        await self.run_checks(rep)

    async def phase_server(self) -> None:
        """Restart the Prefect server mid-run while a KV lock holder dies; check lock expiry and the runs."""
        from aether_prefect import open_session

        notes: list[str] = []
        t0 = time.monotonic()
        ids = await self.create_runs("scale-flow/scale", self.n_runs, hold_s=self.hold_s, tag="server")
        await self._wait_mid_run(ids)
        lock_key = f"{LOCK_KEY}-{uuid.uuid4().hex[:8]}"
        holder = _start_lock_holder(self.state, lock_key)
        try:
            down = await asyncio.to_thread(cluster.restart_server, self.state, down_s=3.0)
        finally:
            holder.kill()
            holder.wait()
        notes.append(f"server restarted (API down {down:.1f}s); lock holder pid {holder.pid} killed meanwhile")
        # No cache is cleared here: the services' Prefect client replaces dead connections by itself.
        async with open_session(config=self.state.config_name) as ctx:
            t_lock = time.monotonic()
            value = await ctx.kv().incr(lock_key)
            waited = time.monotonic() - t_lock
        self.promise("[server] KV lock of a dead holder expires; next incr proceeds",
                     value == 1 and waited <= LOCK_LEASE_S + 30, f"incr={value} after {waited:.1f}s (lease {LOCK_LEASE_S:.0f}s)")
        states = await self.wait_runs(ids, notes=notes)
        runs = await self.read_runs(ids)
        unclear = [str(r.id)[:8] for r in runs if r.state and r.state.type.value != "COMPLETED" and not r.state.message]
        reruns, rerun_ok = await self.rerun_unfinished(states, "server", notes)
        wall = time.monotonic() - t0
        rep = PhaseReport(name="server", runs=len(ids), wall_s=round(wall, 1), states=_count(states), notes=notes)
        self.reports.append(rep)
        self.promise("[server] runs reconnect (complete) or end clearly, reruns complete",
                     not unclear and rerun_ok == reruns, f"{_count(states)}; reruns {rerun_ok}/{reruns}")
        await self.run_checks(rep)


LOCK_KEY = "scale/lock-probe"

_HOLDER = """
import asyncio, sys
from aether_prefect import open_session

async def main():
    async with open_session(config=sys.argv[1]) as ctx:
        lock = ctx.kv()._lock(sys.argv[2], lease_s=float(sys.argv[3]))
        await lock.acquire()
        print("held", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


def _start_lock_holder(state: ClusterState, key: str) -> subprocess.Popen[str]:
    """A process that takes the KV lock of ``key`` (lease LOCK_LEASE_S) and holds it until killed."""
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, state.config_name, key, str(LOCK_LEASE_S)],
                         env=cluster.client_env(state), stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    if line != "held":
        p.kill()
        raise RuntimeError(f"lock holder did not take the lock (said {line!r})")
    return p


def _pid(infra: str | None) -> int | None:
    if not infra:
        return None
    try:
        return int(str(infra).rsplit(":", 1)[-1])
    except ValueError:
        return None


def _transient(exc: httpx.HTTPError) -> bool:
    """Whether a poll of the API may be retried: no answer, or a 5xx (the server under load or restarting)."""
    return not isinstance(exc, httpx.HTTPStatusError) or exc.response.status_code >= 500


def _pid_alive(infra: str | None) -> bool:
    """True if the flow run's recorded process exists on this machine."""
    import psutil

    pid = _pid(infra)
    return pid is not None and psutil.pid_exists(pid)


def _pid_gone(infra: str | None) -> bool:
    """True only if the flow run recorded a process and that process no longer exists."""
    import psutil

    pid = _pid(infra)
    return pid is not None and not psutil.pid_exists(pid)


def _count(states: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in states.values():
        out[s] = out.get(s, 0) + 1
    return out


def table(rows: list[Row]) -> str:
    """The figures and promises as a plain-text table."""
    width = max(len(r.name) for r in rows) if rows else 10
    lines = [f"{'figure / promise':<{width}}  {'value':<60}  ok", "-" * (width + 68)]
    for r in rows:
        mark = "" if r.ok is None else ("PASS" if r.ok else "FAIL")
        lines.append(f"{r.name:<{width}}  {r.value:<60}  {mark}")
    return "\n".join(lines)


async def run(state: ClusterState, args: argparse.Namespace) -> Report:
    """Run the chosen phases; collect figures, promises and phase reports."""
    sc = Scenario(state, runs=args.runs, tasks=args.tasks, rows=args.rows, hold_s=args.hold)
    phases = [p for p in args.phases.split(",") if p]
    unknown = set(phases) - set(ALL_PHASES)
    if unknown:
        raise SystemExit(f"unknown phase(s) {sorted(unknown)}; choose from {ALL_PHASES}")
    sc.figure("cluster", f"{state.workers} workers, {args.runs} runs x {args.tasks} @aether_task shards (Dask), "
                         f"{args.rows} rows/shard")
    if state.cold_start_s is not None:
        sc.figure("time for `make cluster` from nothing", f"{state.cold_start_s:.1f}s")
    with RssSampler(state) as rss:
        tpm2 = tpm1 = tpm_bare = None
        if "load" in phases:
            tpm2 = await sc.phase_load("load")
            sc.figure("task runs/min, 2 workers", f"{tpm2:.0f}")
        if "one-worker" in phases:
            tpm1 = await sc.phase_one_worker()
            sc.figure("task runs/min, 1 worker", f"{tpm1:.0f}")
        if "bare" in phases:
            tpm_bare = await sc.phase_load("bare", deployment="bare-flow/scale")
            sc.figure("task runs/min, bare @task, 2 workers", f"{tpm_bare:.0f}")
            if tpm2:
                sc.figure("@aether_task / bare @task time ratio", f"{tpm_bare / tpm2:.2f}x")
        if "kill" in phases:
            await sc.phase_kill()
        if "s3" in phases:
            await sc.phase_s3(args.s3_down)
        if "server" in phases:
            await sc.phase_server()
    for name in sorted(rss.peak):
        sc.figure(f"peak RSS {name} (worker / with its flow runs + Dask)",
                  f"{rss.peak_worker_only.get(name, 0):.0f} MiB / {rss.peak[name]:.0f} MiB")
    return Report(ok=sc.ok, rows=sc.rows_out, phases=sc.reports)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: start the cluster if needed, run the scenario, print the table, exit 1 on a broken promise."""
    ap = argparse.ArgumentParser(prog="python -m scale.scenario", description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=cluster.DEFAULT_ROOT)
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--hold", type=float, default=1.0, help="seconds each shard sleeps in the fault phases")
    ap.add_argument("--s3-down", type=float, default=10.0)
    ap.add_argument("--phases", default=",".join(ALL_PHASES))
    ap.add_argument("--worker-limit", type=int, default=4, help="max concurrent flow runs per worker (0: none)")
    ap.add_argument("--api-port", type=int, default=None, help="for a new cluster: None = 4300 if free, 0 = any")
    ap.add_argument("--s3-port", type=int, default=None, help="for a new cluster: None = 4310 if free, 0 = any")
    ap.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    args = ap.parse_args(argv)
    state = cluster.start(args.root, worker_limit=args.worker_limit or None, api_port=args.api_port,
                          s3_port=args.s3_port)
    os.environ.update(cluster.client_env(state))  # before Prefect reads its settings
    report = asyncio.run(run(state, args))
    print(table(report.rows))
    for ph in report.phases:
        print(f"  {ph.name}: {ph.runs} runs, {ph.wall_s}s, {ph.states}" + ("; " + "; ".join(ph.notes) if ph.notes else ""))
    print("SCALE SCENARIO:", "PASS" if report.ok else "FAIL")
    if args.json:
        args.json.write_text(report.model_dump_json(indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
