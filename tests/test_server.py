"""start_server / stop_server: a real `prefect server start` on a free port, stopped by PID."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest
from prefect.context import refresh_global_settings_context

from aether_prefect import server as srv
from aether_prefect.errors import ValidationError
from tests.servers.prefect_server import PrefectServer, free_port


@pytest.fixture()
def no_api_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process with no PREFECT_API_URL (as a fresh script would be); the session's URL comes back after."""
    monkeypatch.delenv("PREFECT_API_URL")
    refresh_global_settings_context()
    yield
    srv.stop_server()
    monkeypatch.undo()
    refresh_global_settings_context()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(300)
def test_start_health_reuse_stop(no_api_url: None) -> None:
    from aether_prefect._prefect import api_url

    port = free_port()
    ui = srv.start_server(port, ui=False)
    api = f"http://127.0.0.1:{port}/api"
    assert ui == f"http://127.0.0.1:{port}"
    assert httpx.get(f"{api}/health", timeout=5).json() is True
    assert os.environ["PREFECT_API_URL"] == api and api_url() == api  # env for children, setting for this process
    (info,) = srv.running_servers()
    assert info.port == port and _pid_alive(info.pid)
    assert os.path.exists(info.log_path)

    # One already answers (at PREFECT_API_URL, and on the port): no second server.
    assert srv.start_server(port, ui=False) == ui
    assert srv.start_server(free_port(), ui=False) == ui
    assert [s.pid for s in srv.running_servers()] == [info.pid]

    assert srv.stop_server() is True
    assert not _pid_alive(info.pid)
    assert srv.running_servers() == []
    assert "PREFECT_API_URL" not in os.environ  # restored to what it was before start_server
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{api}/health", timeout=2)
    assert srv.stop_server() is False  # nothing of ours left


def test_reuses_a_server_answering_on_the_port(no_api_url: None, prefect_server: PrefectServer) -> None:
    ui = srv.start_server(prefect_server.port, ui=False)
    assert ui == prefect_server.api_url[: -len("/api")]
    assert os.environ["PREFECT_API_URL"] == prefect_server.api_url
    assert srv.running_servers() == []
    assert srv.stop_server(prefect_server.port) is False  # not ours: never stopped
    assert httpx.get(f"{prefect_server.api_url}/health", timeout=5).status_code == 200


def test_reuses_the_configured_api_url(prefect_server: PrefectServer) -> None:
    assert srv.start_server(free_port()) == prefect_server.api_url[: -len("/api")]
    assert srv.running_servers() == []


@pytest.mark.parametrize("port", [-1, 70000, "4200", True])  # 0 is AetherGraph's "pick a free port"
def test_bad_port(port: object) -> None:
    with pytest.raises(ValidationError, match="port must be an int"):
        srv.start_server(port)  # type: ignore[arg-type]


def test_start_failure_reports_the_log(no_api_url: None, tmp_path: object) -> None:
    import socket

    with socket.socket() as s:  # a port taken by something that is not a Prefect API
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(srv.ServerError, match=f"port {port}"):
            srv.start_server(port, ui=False, timeout_s=120)
    assert srv.running_servers() == []
    assert "PREFECT_API_URL" not in os.environ


@pytest.mark.timeout(300)
def test_detached_server_outlives_its_starter_and_is_stopped_by_pid(prefect_server: PrefectServer) -> None:
    """What `aether-prefect server start` / `server stop` do: start in one process, stop from another."""
    import subprocess
    import sys

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    code = f"from aether_prefect.server import start_server; print(start_server({port}, ui=False, detach=True))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith(f"http://127.0.0.1:{port}")
    api = f"http://127.0.0.1:{port}/api"
    assert httpx.get(f"{api}/health", timeout=5).status_code == 200  # the starter exited, the server did not
    (info,) = [s for s in srv.running_servers() if s.port == port]
    assert info.detached and _pid_alive(info.pid)

    assert srv.stop_server(port) is True
    assert not _pid_alive(info.pid)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{api}/health", timeout=2)
    assert srv.stop_server(port) is False
    assert os.environ["PREFECT_API_URL"] == prefect_server.api_url  # ours was never touched
