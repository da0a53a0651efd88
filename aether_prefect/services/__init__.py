"""The services a NodeContext hands out, one module or folder each, and the table that builds them.

``FACTORIES`` maps an accessor's service name to the function that builds it for a context, so
"find usages" leads from ``NodeContext.kv()`` straight to ``services/kv``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aether_prefect.services import artifacts, channel, kv, llm, logger, mcp, memory, rag

FACTORIES: dict[str, Callable[..., Any]] = {
    "logger": logger.create,
    "artifacts": artifacts.create,
    "kv": kv.create,
    "memory": memory.create,
    "channel": channel.create,
    "llm": llm.create,
    "mcp": mcp.create,
    "rag": rag.create,
}

__all__ = ["FACTORIES"]
