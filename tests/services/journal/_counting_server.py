"""A real MCP server (official SDK, stdio) whose one tool counts its own invocations in a file.

Run: ``python -m tests.services.journal._counting_server``.
"""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import MCPServer

server: MCPServer[Any] = MCPServer("journal-counter", log_level="WARNING")


@server.tool(description="Count an invocation in a file (a side effect that survives restarts).")
def tally(path: str, label: str = "") -> dict[str, Any]:
    """Append one line to ``path``; ``{"count": lines so far}``."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{label}\n")
    with open(path, encoding="utf-8") as f:
        return {"count": sum(1 for _ in f)}


def block(**fields: Any) -> Any:
    """An AetherMCPServer that starts this server over stdio."""
    import sys
    from pathlib import Path

    from aether_prefect.blocks import AetherMCPServer

    root = Path(__file__).resolve().parents[3]
    return AetherMCPServer(transport="stdio", command=sys.executable,
                           args=["-m", "tests.services.journal._counting_server"], cwd=str(root), timeout_s=30,
                           **fields)


if __name__ == "__main__":
    server.run("stdio")
