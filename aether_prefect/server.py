"""The "sidecar" Prefect server: start a real ``prefect server start`` on 127.0.0.1 when none answers.

The ephemeral server Prefect starts with no ``PREFECT_API_URL`` lives inside one
process: no UI can reach it, so nobody could answer a ``channel().ask_*`` question
or trigger a deployment. ``start_server()`` gives scripts and notebooks a real one
(AetherGraph's ``start_server`` sidecar), ``stop_server()`` stops only what it started.
"""

from __future__ import annotations

import atexit
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from aether_prefect.errors import ServerError, ValidationError

_HOST = "127.0.0.1"
_lock = threading.RLock()
_started: dict[int, "_Started"] = {}  # port -> server this process started


class ServerInfo(BaseModel):
    """What ``start_server`` recorded about a server it started (also the on-disk state file)."""

    pid: int
    port: int
    api_url: str
    ui_url: str
    log_path: str
    detached: bool
    started_at: dt.datetime
    previous_api_url: str | None = None


class _Started:
    """A server this process started: its record and, when it is our child, the Popen handle."""

    def __init__(self, info: ServerInfo, proc: subprocess.Popen[bytes] | None) -> None:
        self.info = info
        self.proc = proc


def _state_dir() -> Path:
    """``$PREFECT_HOME/aether``: where server logs and state files live."""
    from aether_prefect._prefect import prefect_home

    path = Path(prefect_home()).expanduser() / "aether"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _state_file(port: int) -> Path:
    return _state_dir() / f"server-{port}.json"


def _healthy(api_url: str, timeout: float = 2.0) -> bool:
    """True when a Prefect API answers ``GET /health`` at ``api_url``."""
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def _ui_url(api_url: str) -> str:
    """The UI's URL for an API URL (``http://host:port/api`` -> ``http://host:port``)."""
    from aether_prefect._prefect import ui_url_for

    return ui_url_for(api_url)


def _configured_api_url() -> str | None:
    """PREFECT_API_URL as this process sees it (environment or active Prefect profile)."""
    from aether_prefect._prefect import api_url

    return os.environ.get("PREFECT_API_URL") or api_url()


def _use_api_url(url: str | None) -> None:
    """Point this process (and children it starts later) at ``url``; None goes back to the ephemeral server."""
    from aether_prefect._prefect import use_api_url

    use_api_url(url)


def _check_port(port: int) -> None:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValidationError(f"port must be an int between 1 and 65535, got {port!r}")


# AetherGraph's start_server keywords that have a meaning here (see start_server's docstring).
_AG_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


class ServerHandle:
    """What ``start_server(..., return_handle=True)`` returns beside the URL (AetherGraph's handle)."""

    def __init__(self, url: str, port: int | None) -> None:
        self.url = url
        self.port = port

    def stop(self) -> bool:
        """Stop the server if this process started it (``stop_server(port)``); True if one was stopped."""
        return stop_server(self.port) if self.port is not None else False

    def block(self) -> None:
        """Wait until Ctrl-C (what AetherGraph scripts call to keep the sidecar up), then stop the server."""
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            self.stop()

    def __repr__(self) -> str:
        return f"ServerHandle(url={self.url!r})"


def _free_port(host: str) -> int:
    """A port the OS says is free on ``host`` right now (``port=0``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _load_user_code(project_root: str | None, modules: list[str], paths: list[str], strict: bool) -> None:
    """AetherGraph's ``load_modules``/``load_paths``: import user code so its ``register_*`` calls run."""
    import importlib
    import importlib.util
    import warnings

    if project_root is not None and str(Path(project_root).resolve()) not in sys.path:
        sys.path.insert(0, str(Path(project_root).resolve()))
    for target in [*modules, *paths]:
        try:
            if target in modules:
                importlib.import_module(target)
            else:
                file = Path(target).resolve()
                spec = importlib.util.spec_from_file_location(f"_aether_loaded_{file.stem}", file)
                if spec is None or spec.loader is None:
                    raise ImportError(f"cannot load {file} as a Python file")
                mod = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = mod
                spec.loader.exec_module(mod)
        except Exception as exc:
            if strict:
                raise ServerError(f"start_server: loading {target!r} failed: {exc}") from exc
            warnings.warn(f"start_server: loading {target!r} failed ({exc}); pass strict_load=True to raise",
                          stacklevel=3)


def _as_list(value: str | list[str] | tuple[str, ...] | None, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValidationError(f"{name} must be a str or a list of str, got {value!r}")


def start_server(
    port: int = 8745,
    *,
    host: str = _HOST,
    workspace: str | os.PathLike[str] | None = None,
    log_level: str = "warning",
    ui: bool = True,
    detach: bool = False,
    timeout_s: float = 180.0,
    load_modules: str | list[str] | None = None,
    load_module: str | list[str] | None = None,
    load_paths: str | list[str] | None = None,
    project_root: str | None = None,
    strict_load: bool = False,
    return_handle: bool = False,
    return_container: bool = False,
    unvicorn_log_level: str | None = None,
    uvicorn_log_level: str | None = None,
) -> Any:
    """Make sure a Prefect API answers, starting ``prefect server start`` on ``host:port`` if needed.

    Returns the UI's URL (``http://127.0.0.1:8745``). Reuses a server answering at
    ``PREFECT_API_URL`` or on ``port``; otherwise starts one in the background (log in
    ``$PREFECT_HOME/aether/server-<port>.log``), waits until ``/api/health`` answers,
    and sets ``PREFECT_API_URL`` for this process and its children. The server is
    stopped at process exit unless ``detach=True`` (what ``aether-prefect server start`` uses).

    AetherGraph's keywords work as written there: ``port=0`` picks a free port;
    ``workspace`` holds the started server's database (its ``PREFECT_HOME``); ``log_level``
    is the server's log level; ``load_modules``/``load_paths``/``project_root``/``strict_load``
    import your code first (so its ``register_*`` calls run); ``return_handle=True`` returns
    ``(url, ServerHandle)``. ``uvicorn_log_level`` (and AetherGraph's ``unvicorn_log_level``
    spelling) is accepted and ignored: Prefect's server sets its own. ``return_container=True``
    raises: there is no service container on Prefect (services come from Blocks).

    >>> from aether_prefect import start_server, stop_server
    >>> url = start_server(port=0)        # open url in a browser to answer channel().ask_text(...)
    >>> stop_server()
    """
    del unvicorn_log_level, uvicorn_log_level  # accepted for AetherGraph code; Prefect's server sets its own
    if return_container:
        raise ValidationError(
            "start_server(return_container=True) has no equivalent on Prefect: there is no service container; "
            "configure services with AetherConfig blocks or aether_prefect's register_* functions instead"
        )
    if isinstance(port, bool) or port != 0:
        _check_port(port)  # 0 (AetherGraph's "pick a free port") is the one value outside 1-65535 we take
    if not isinstance(host, str) or not host:
        raise ValidationError(f"host must be a non-empty str such as '127.0.0.1', got {host!r}")
    if not isinstance(log_level, str) or log_level.lower() not in _AG_LOG_LEVELS:
        raise ValidationError(f"log_level must be one of {_AG_LOG_LEVELS}, got {log_level!r}")
    if not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ValidationError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    modules = _as_list(load_modules, "load_modules") + _as_list(load_module, "load_module")
    paths = _as_list(load_paths, "load_paths")
    if modules or paths:
        _load_user_code(project_root, modules, paths, strict_load)
    url, started_port = _ensure_server(port, host, workspace, log_level, ui, detach, timeout_s)
    return (url, ServerHandle(url, started_port)) if return_handle else url


def _ensure_server(port: int, host: str, workspace: str | os.PathLike[str] | None, log_level: str, ui: bool,
                   detach: bool, timeout_s: float) -> tuple[str, int | None]:
    """Reuse a healthy server or start one; returns the UI URL and the port of a server this process started."""
    with _lock:
        configured = _configured_api_url()
        if configured and _healthy(configured):
            return _ui_url(configured), None
        client_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        if port != 0:
            local = f"http://{client_host}:{port}/api"
            if _healthy(local):
                _use_api_url(local)
                return _ui_url(local), None
        else:
            port = _free_port(host)
        info, proc = _spawn(port, host=host, client_host=client_host, workspace=workspace, log_level=log_level,
                            ui=ui, detach=detach, previous=os.environ.get("PREFECT_API_URL"))
        _started[port] = _Started(info, proc)
        try:
            _wait_healthy(info, proc, timeout_s)
        except BaseException:
            _stop(_started.pop(port))
            raise
        _use_api_url(info.api_url)
        return info.ui_url, port


def _spawn(port: int, *, host: str = _HOST, client_host: str = _HOST, workspace: str | os.PathLike[str] | None = None,
           log_level: str = "warning", ui: bool, detach: bool, previous: str | None,
           ) -> tuple[ServerInfo, subprocess.Popen[bytes]]:
    """Start ``prefect server start`` in its own session, output to a log file; record it on disk."""
    state_dir = _state_dir()
    log_path = state_dir / f"server-{port}.log"
    env = {**os.environ, "PREFECT_UI_ENABLED": "true" if ui else "false",
           "PREFECT_SERVER_LOGGING_LEVEL": log_level.upper() if log_level != "trace" else "DEBUG"}
    if workspace is not None:
        home = Path(os.fspath(workspace)).expanduser().resolve()
        home.mkdir(parents=True, exist_ok=True)
        env["PREFECT_HOME"] = str(home)  # the server's database lives in the AetherGraph workspace
    env.pop("PREFECT_API_URL", None)
    kwargs: dict[str, object] = {}
    if os.name == "nt":
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    else:
        kwargs["start_new_session"] = True  # Ctrl-C in the caller's terminal does not reach the server
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kwargs,  # type: ignore[arg-type]
        )
    api_url = f"http://{client_host}:{port}/api"
    info = ServerInfo(
        pid=proc.pid, port=port, api_url=api_url, ui_url=_ui_url(api_url), log_path=str(log_path),
        detached=detach, started_at=dt.datetime.now(dt.timezone.utc), previous_api_url=previous,
    )
    _state_file(port).write_text(info.model_dump_json(indent=2))
    return info, proc


def _log_tail(info: ServerInfo, chars: int = 2000) -> str:
    try:
        return Path(info.log_path).read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _wait_healthy(info: ServerInfo, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Poll ``/api/health`` until it answers; ServerError with the log's tail if the server dies or is slow."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise ServerError(
                f"`prefect server start` on port {info.port} exited with code {code} before it was healthy "
                f"(port already in use? pick another with start_server(port=...)). Log {info.log_path}:\n{_log_tail(info)}"
            )
        if _healthy(info.api_url):
            return
        time.sleep(0.3)
    raise ServerError(
        f"Prefect server on port {info.port} did not answer {info.api_url}/health within {timeout_s:.0f}s "
        f"(a fresh database can take 30 s on a busy machine: pass a larger timeout_s). Log {info.log_path}:\n{_log_tail(info)}"
    )


def _pid_is_prefect_server(pid: int) -> bool:
    """True when ``pid`` is alive and (where /proc exists) still runs ``prefect server start``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process: never ours to stop
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            return False
        return b"prefect" in b" ".join(argv) and b"server" in argv and b"start" in argv
    return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        if os.name == "nt":
            os.kill(pid, sig)
        else:
            os.killpg(pid, sig)  # the server and its uvicorn children share its session
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _stop(started: _Started, wait_s: float = 20.0) -> None:
    """SIGTERM the server's process group, SIGKILL after ``wait_s``; remove its state file."""
    pid, proc = started.info.pid, started.proc
    _signal_group(pid, signal.SIGTERM)
    if proc is not None:
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            _signal_group(pid, getattr(signal, "SIGKILL", signal.SIGTERM))
            proc.wait(timeout=wait_s)
    else:
        deadline = time.monotonic() + wait_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            _signal_group(pid, getattr(signal, "SIGKILL", signal.SIGTERM))
    try:
        state = _state_file(started.info.port)
        if state.exists() and ServerInfo.model_validate_json(state.read_text()).pid == pid:
            state.unlink()
    except (OSError, ValueError):
        pass


def _recorded(port: int | None) -> list[_Started]:
    """Servers recorded on disk by ``start_server`` (e.g. by ``aether-prefect server start``) that still run."""
    files = [_state_file(port)] if port is not None else sorted(_state_dir().glob("server-*.json"))
    found = []
    for path in files:
        try:
            info = ServerInfo.model_validate_json(path.read_text())
        except (OSError, ValueError):
            continue
        if _pid_is_prefect_server(info.pid):
            found.append(_Started(info, None))
        else:
            path.unlink(missing_ok=True)  # stale record: the process is gone (or the PID was reused)
    return found


def stop_server(port: int | None = None) -> bool:
    """Stop the Prefect server(s) ``start_server`` started (on ``port``, or all); True if one was stopped.

    Only servers this package started are touched, found by PID: first those of this
    process, else those recorded under ``$PREFECT_HOME/aether`` by a detached start
    (``aether-prefect server start``). ``PREFECT_API_URL`` is restored to what it was.
    """
    if port is not None:
        _check_port(port)
    with _lock:
        mine = [p for p in list(_started) if port is None or p == port]
        targets = [_started.pop(p) for p in mine] or _recorded(port)
        for started in targets:
            _stop(started)
            if os.environ.get("PREFECT_API_URL") == started.info.api_url:
                _use_api_url(started.info.previous_api_url)
        return bool(targets)


def running_servers() -> list[ServerInfo]:
    """Servers started by this process, then those recorded on disk, that are still alive."""
    with _lock:
        own = [s.info for s in _started.values() if s.proc is None or s.proc.poll() is None]
    ports = {i.port for i in own}
    return own + [s.info for s in _recorded(None) if s.info.port not in ports]


def _stop_attached_at_exit() -> None:
    """Stop non-detached servers when the process that started them exits."""
    with _lock:
        for port in [p for p, s in _started.items() if not s.info.detached]:
            try:
                _stop(_started.pop(port), wait_s=10.0)
            except Exception:  # noqa: BLE001 - exit hooks must not raise
                pass


atexit.register(_stop_attached_at_exit)
