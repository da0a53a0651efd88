"""Real MCP servers for tests and benches: the demo server over stdio (a block) and over streamable HTTP (a subprocess).

The HTTP server listens on 127.0.0.1 and requires ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers.prefect_server import free_port

ROOT = Path(__file__).resolve().parents[2]
DEMO_MODULE = "tests.servers.mcp_demo_server"


def stdio_block(**env: str) -> Any:
    """An AetherMCPServer that starts the demo server over stdio (``env`` goes to the server)."""
    from aether_prefect.blocks import AetherMCPServer

    return AetherMCPServer(
        transport="stdio", command=sys.executable, args=["-m", DEMO_MODULE, "--transport", "stdio"],
        cwd=str(ROOT), env=env or None, timeout_s=30,
    )


class MCPHttpServer:
    """The demo server over streamable HTTP in a subprocess; stop()/start() keep the port and token."""

    def __init__(self, port: int | None = None, token: str | None = None) -> None:
        self.port = port or free_port()
        self.token = token or secrets.token_urlsafe(16)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def block(self, token: str | None = None, **kw: Any) -> Any:
        """An AetherMCPServer for this server; ``token`` overrides the right one (to test refusal)."""
        from aether_prefect.blocks import AetherMCPServer

        tok = self.token if token is None else token
        return AetherMCPServer(transport="http", url=self.url, headers={"Authorization": f"Bearer {tok}"}, **kw)

    def start(self) -> "MCPHttpServer":
        """Start the subprocess and wait until it answers (401 without a token means up)."""
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            # --token=VALUE: a token_urlsafe token may start with "-", which argparse would take for an option
            [sys.executable, "-m", DEMO_MODULE, "--transport", "http", "--port", str(self.port), f"--token={self.token}"],
            cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=self._log, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.seek(0)
                raise RuntimeError(f"MCP demo HTTP server exited with {self.proc.returncode}: "
                                   f"{self._log.read().decode(errors='replace')[-2000:]}")
            try:
                if httpx.get(self.url, timeout=1).status_code == 401:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError("MCP demo HTTP server did not start within 60 s")

    def stop(self) -> None:
        """Kill the server process group at once (like a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture(scope="session")
def mcp_http_server() -> Iterator[MCPHttpServer]:
    """One demo MCP server over streamable HTTP for the whole test session."""
    server = MCPHttpServer().start()
    yield server
    server.stop()


@pytest.fixture()
def mcp_stdio_block() -> Any:
    """An AetherMCPServer starting the demo server over stdio, with DEMO_GREETING set."""
    return stdio_block(DEMO_GREETING="hello-from-env")
