"""Background processes of the local cluster: start, record (pid + start time), check, stop by pid.

A recorded process is identified by its pid AND its start time, so a stale
``pids.json`` never makes us signal an unrelated process that reused the pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import psutil
from pydantic import BaseModel


class Proc(BaseModel):
    """One process the cluster started: what it is, its pid and start time, where it logs."""

    name: str
    pid: int
    create_time: float
    log: str


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if it is free on 127.0.0.1, else any free port."""
    if preferred:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(name: str, argv: Sequence[str], *, env: dict[str, str], cwd: Path, log: Path) -> Proc:
    """Start ``argv`` detached (own session, output appended to ``log``) and record it."""
    cwd.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            list(argv), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    return Proc(name=name, pid=popen.pid, create_time=psutil.Process(popen.pid).create_time(), log=str(log))


def adopt(name: str, pid: int, log: Path) -> Proc:
    """Record a process we did not spawn ourselves (the postmaster started by pg_ctl)."""
    return Proc(name=name, pid=pid, create_time=psutil.Process(pid).create_time(), log=str(log))


def handle(proc: Proc | None) -> psutil.Process | None:
    """The live process behind a record, or None if it is gone (or the pid now belongs to another process)."""
    if proc is None:
        return None
    try:
        p = psutil.Process(proc.pid)
        if abs(p.create_time() - proc.create_time) > 1.0 or p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p
    except psutil.Error:
        return None


def alive(proc: Proc | None) -> bool:
    """True while the recorded process runs."""
    return handle(proc) is not None


def tree(proc: Proc | None) -> list[psutil.Process]:
    """The recorded process and all its descendants (flow-run subprocesses, Dask workers...)."""
    p = handle(proc)
    if p is None:
        return []
    try:
        return [p, *p.children(recursive=True)]
    except psutil.Error:
        return [p]


def signal_tree(proc: Proc | None, sig: int) -> list[psutil.Process]:
    """Send ``sig`` to the process and its descendants; return those signalled."""
    procs = tree(proc)
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.Error:
            pass
    return procs


def stop(proc: Proc | None, *, sig: int = signal.SIGTERM, timeout: float = 20.0, whole_tree: bool = True) -> None:
    """Stop a recorded process (and its descendants): ``sig`` first, SIGKILL after ``timeout``."""
    procs = tree(proc) if whole_tree else [p for p in [handle(proc)] if p is not None]
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(procs, timeout=timeout)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=5)


def wait_http(url: str, *, timeout: float, proc: Proc | None = None, ok: Sequence[int] = (200,)) -> float:
    """Poll ``url`` until it answers one of ``ok``; return the seconds waited. Fails fast if ``proc`` dies."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and not alive(proc):
            raise RuntimeError(f"{proc.name} (pid {proc.pid}) exited; see its log {proc.log}:\n{tail(proc.log)}")
        try:
            if httpx.get(url, timeout=2).status_code in ok:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    hint = f"; see {proc.log}:\n{tail(proc.log)}" if proc else ""
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s{hint}")


def tail(path: str | os.PathLike[str], n: int = 3000) -> str:
    """The last ``n`` characters of a log file ('' if missing)."""
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return ""


def peak_rss_mb(procs: Sequence[psutil.Process]) -> float:
    """Sum of the resident memory of ``procs`` in MiB (0 for those gone)."""
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / (1024 * 1024)
