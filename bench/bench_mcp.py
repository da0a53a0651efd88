"""MCP: 200 sequential tool calls over stdio and over streamable HTTP, ours vs the SDK's raw ClientSession.

Ours is ``context.mcp().call("add", ...)`` (and its ``.sync`` twin); raw is ``ClientSession.call_tool``
on a session opened by hand. Calls alternate one by one so both see the same machine load; a last row
compares ours with raw calls on the very session ours uses (no second server process), isolating our overhead.
Run: ``.venv/bin/python bench/bench_mcp.py``.
"""

from __future__ import annotations

import _common  # noqa: F401  - first: sets the environment

import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from _common import report, row

from aether_prefect import open_session
from aether_prefect.blocks import AetherConfig, AetherMCPServer, AetherObjectStore
from tests.servers.mcp_servers import MCPHttpServer, stdio_block

CALLS = 200
BLOCK = 1
TARGET = 1.1


@contextlib.asynccontextmanager
async def raw_session(server: AetherMCPServer) -> AsyncIterator[Any]:
    """The SDK's own ClientSession on the same server, initialised, as a user would write it."""
    import httpx2
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client
    from mcp.client.streamable_http import streamable_http_client

    async with contextlib.AsyncExitStack() as stack:
        if server.transport == "stdio":
            params = StdioServerParameters(command=server.command or "", args=server.args, cwd=server.cwd)
            read, write = await stack.enter_async_context(stdio_client(params))
        else:
            headers = server.headers.get_secret_value() if server.headers else {}
            client = await stack.enter_async_context(httpx2.AsyncClient(headers=headers, timeout=30))
            read, write = await stack.enter_async_context(streamable_http_client(server.url or "", http_client=client))
        session = await stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        yield session


async def interleaved(ours: Callable[[int], Awaitable[Any]], raw: Callable[[int], Awaitable[Any]]) -> tuple[float, float]:
    """Median seconds per call of ``ours`` and ``raw``: CALLS each, alternating in blocks of BLOCK."""
    for i in range(5):  # warm-up
        await ours(i)
        await raw(i)
    times: dict[str, list[float]] = {"ours": [], "raw": []}
    for b in range(CALLS // BLOCK):
        order = [("ours", ours), ("raw", raw)] if b % 2 == 0 else [("raw", raw), ("ours", ours)]
        for key, fn in order:
            for i in range(BLOCK):
                t = time.perf_counter()
                await fn(i)
                times[key].append(time.perf_counter() - t)
    return statistics.median(times["ours"]), statistics.median(times["raw"])


async def bench_transport(label: str, server: AetherMCPServer, rows: list[dict[str, Any]]) -> None:
    """Async and sync rows for one transport."""
    config = AetherConfig(store=AetherObjectStore(backend="local", root=tempfile.mkdtemp()), mcp={"default": server})
    async with raw_session(server) as session, open_session(config=config) as ctx:
        m = ctx.mcp()
        await m.open()

        async def ours(i: int) -> Any:
            out = await m.call("add", {"a": i, "b": 1})
            assert out == {"result": i + 1}

        async def raw(i: int) -> Any:
            out = await session.call_tool("add", {"a": i, "b": 1})
            assert out.structured_content == {"result": i + 1}

        o, r = await interleaved(ours, raw)
        rows.append(row(f"{label}: {CALLS} sequential calls, async (ms/call)", o * 1e3, r * 1e3, "ms", TARGET))

        async def raw_same(i: int) -> Any:
            conn = m._conn
            assert conn is not None and conn.session is not None
            out = await conn.session.call_tool("add", {"a": i, "b": 1})
            assert out.structured_content == {"result": i + 1}

        o, r = await interleaved(ours, raw_same)
        rows.append(row(f"{label}: same session, ours vs raw call_tool (ms/call)", o * 1e3, r * 1e3, "ms", TARGET))

        async def ours_sync(i: int) -> Any:  # a sync task's path: blocking call through the portal loop
            out = await asyncio.to_thread(m.sync.call, "add", {"a": i, "b": 1})
            assert out == {"result": i + 1}

        o, r = await interleaved(ours_sync, raw)
        rows.append(row(f"{label}: {CALLS} sequential calls via .sync (ms/call)", o * 1e3, r * 1e3, "ms", None))


async def main() -> None:
    rows: list[dict[str, Any]] = []
    await bench_transport("stdio", stdio_block(), rows)
    http = MCPHttpServer().start()
    try:
        await bench_transport("http", http.block(), rows)
    finally:
        http.stop()
    report("mcp", rows)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
