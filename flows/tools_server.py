"""A small MCP tool server (official SDK) used by flows/ai_enrich.py: ``python flows/tools_server.py``.

Speaks MCP over stdio. Configure it as ``AetherMCPServer(command=sys.executable,
args=["flows/tools_server.py"])`` under the name ``default``.
"""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server: MCPServer[Any] = MCPServer("aether-example-tools", log_level="WARNING")

RATES_TO_EUR = {"EUR": 1.0, "USD": 0.92, "GBP": 1.17}


@server.tool(description="Convert an amount between EUR, USD and GBP at fixed example rates.")
def convert(amount: float, from_currency: str, to_currency: str = "EUR") -> dict[str, Any]:
    """Fixed example rates, so runs are reproducible."""
    src, dst = from_currency.upper(), to_currency.upper()
    if src not in RATES_TO_EUR or dst not in RATES_TO_EUR:
        raise ToolError(f"unknown currency: use one of {', '.join(RATES_TO_EUR)}")
    return {"amount": round(amount * RATES_TO_EUR[src] / RATES_TO_EUR[dst], 2), "currency": dst}


@server.tool(description="Count the words of a text.")
def word_count(text: str) -> dict[str, int]:
    """Whitespace-separated words."""
    return {"words": len(text.split())}


if __name__ == "__main__":
    server.run(transport="stdio")
