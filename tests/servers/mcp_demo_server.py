"""A small real MCP server (official SDK) for tests and benches: stdio or streamable HTTP with a bearer token.

Run: ``python -m tests.servers.mcp_demo_server --transport stdio``
or ``python -m tests.servers.mcp_demo_server --transport http --port 8765 --token SECRET``.
"""

from __future__ import annotations

import argparse
import hmac
import os
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server: MCPServer[Any] = MCPServer("aether-demo", instructions="Test server of aether-prefect.", log_level="WARNING")


@server.tool(description="Add two integers.")
def add(a: int, b: int) -> int:
    """Structured output: ``{"result": a + b}``."""
    return a + b


@server.tool(description="Echo a text back as plain content.", structured_output=False)
def echo(text: str) -> str:
    """Unstructured output: one text content block."""
    return text


@server.tool(description="Describe the server process.")
def whoami() -> dict[str, Any]:
    """The server's pid and the DEMO_GREETING env var (to check env passing)."""
    return {"pid": os.getpid(), "greeting": os.environ.get("DEMO_GREETING")}


@server.tool(description="Always fails with the given message.")
def fail(message: str = "boom") -> str:
    """A tool error (isError result) carrying ``message``."""
    raise ToolError(message)


@server.resource("demo://readme", name="readme", description="A short text.", mime_type="text/plain")
def readme() -> str:
    """A static text resource."""
    return "aether demo readme"


@server.resource("demo://config", name="config", description="A JSON document.", mime_type="application/json")
def config() -> dict[str, Any]:
    """A static JSON resource."""
    return {"answer": 42}


class BearerAuth:
    """ASGI middleware: answer 401 unless ``Authorization: Bearer <token>`` matches."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            got = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(got, self.expected):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": b"unauthorized"})
                return
        await self.app(scope, receive, send)


def http_app(token: str | None) -> Any:
    """The streamable-HTTP ASGI app at ``/mcp``, behind a bearer check when ``token`` is given."""
    app = server.streamable_http_app()
    return BearerAuth(app, token) if token else app


def main() -> None:
    """Parse arguments and serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default=os.environ.get("DEMO_TOKEN"))
    args = parser.parse_args()
    if args.transport == "stdio":
        server.run("stdio")
        return
    import uvicorn

    uvicorn.run(http_app(args.token), host="127.0.0.1", port=args.port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
