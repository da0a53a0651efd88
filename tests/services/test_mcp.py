"""context.mcp(): real MCP servers (official SDK) over stdio and streamable HTTP."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psutil
import pytest
from prefect import flow

from aether_prefect import NodeContext, aether_task, open_session
from aether_prefect.blocks import AetherConfig, AetherMCPServer
from aether_prefect.errors import MCPError, ServiceNotConfigured, ValidationError
from tests.servers.mcp_servers import MCPHttpServer, mcp_http_server, mcp_stdio_block, stdio_block  # noqa: F401


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run an async test body on a fresh event loop."""
    return asyncio.run(fn())


def cfg(local_config: AetherConfig, **servers: AetherMCPServer) -> AetherConfig:
    """``local_config`` with these MCP servers."""
    return local_config.model_copy(update={"mcp": servers})


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (or is a zombie awaiting reaping)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.05)
    return gone(pid)


def demo_children() -> list[psutil.Process]:
    """Demo MCP stdio servers started by this process (directly or by the portal thread)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
            if "mcp_demo_server --transport stdio" in cmd and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


async def check_everything(m: Any, *, greeting: str | None) -> None:
    """list/call/resources on one client."""
    tools = await m.list_tools()
    names = [t.name for t in tools]
    assert names == [t["name"] for t in tools]
    assert {"add", "echo", "whoami", "fail"} <= set(names)
    add = next(t for t in tools if t.name == "add")
    assert add["description"] == "Add two integers."
    assert add.input_schema["required"] == ["a", "b"]
    assert m.server_info["name"] == "aether-demo" and m.server_info["protocol_version"]

    assert await m.call("add", {"a": 2, "b": 40}) == {"result": 42}
    assert await m.call("echo", {"text": "hi there"}) == {"content": [{"type": "text", "text": "hi there"}]}
    who = await m.call("whoami")
    assert who["greeting"] == greeting

    resources = await m.list_resources()
    by_uri = {r.uri: r for r in resources}
    assert by_uri["demo://readme"]["mime_type"] == "text/plain" and by_uri["demo://readme"].name == "readme"
    doc = await m.read_resource("demo://readme")
    assert doc["uri"] == "demo://readme" and doc["contents"][0]["text"] == "aether demo readme"
    cfg_doc = await m.read_resource("demo://config")
    assert '"answer": 42' in cfg_doc["contents"][0]["text"]


# -- both transports ------------------------------------------------------------------


def test_stdio_list_call_resources(local_config: AetherConfig, mcp_stdio_block: AetherMCPServer) -> None:
    async def body() -> int:
        async with open_session(config=cfg(local_config, default=mcp_stdio_block)) as ctx:
            m = ctx.mcp()
            await check_everything(m, greeting="hello-from-env")
            assert ctx.mcp() is m  # reused within the context
            pid = (await m.call("whoami"))["pid"]
            assert pid in {p.pid for p in demo_children()}
        return pid

    pid = run(body)
    assert wait_gone(pid), "the stdio server outlived its context"


def test_http_list_call_resources(local_config: AetherConfig, mcp_http_server: MCPHttpServer) -> None:
    async def body() -> None:
        async with open_session(config=cfg(local_config, web=mcp_http_server.block())) as ctx:
            await check_everything(ctx.mcp("web"), greeting=None)

    run(body)


def test_one_handshake_one_process_for_many_calls(local_config: AetherConfig, mcp_stdio_block: AetherMCPServer) -> None:
    async def body() -> set[int]:
        async with open_session(config=cfg(local_config, default=mcp_stdio_block)) as ctx:
            m = ctx.mcp()
            await m.open()
            info = m.server_info
            results = await asyncio.gather(*(m.call("whoami") for _ in range(20)))
            assert m.server_info is info  # no second initialize
            return {r["pid"] for r in results}

    pids = run(body)
    assert len(pids) == 1


# -- errors ------------------------------------------------------------------------------


def test_wrong_token_is_refused_without_leaking_it(local_config: AetherConfig, mcp_http_server: MCPHttpServer) -> None:
    bad = "wrong-token-s3cr3t"

    async def body() -> None:
        async with open_session(config=cfg(local_config, default=mcp_http_server.block(token=bad))) as ctx:
            m = ctx.mcp()
            with pytest.raises(MCPError, match="refused the credentials") as info:
                await m.list_tools()
            assert "401" in str(info.value)
            assert bad not in str(info.value) and bad not in repr(m) and mcp_http_server.token not in str(info.value)
            with pytest.raises(MCPError, match="refused"):  # still refused, no stale session
                await m.call("add", {"a": 1, "b": 2})

    run(body)


def test_missing_token_is_refused(local_config: AetherConfig, mcp_http_server: MCPHttpServer) -> None:
    server = AetherMCPServer(transport="http", url=mcp_http_server.url)

    async def body() -> None:
        async with open_session(config=cfg(local_config, default=server)) as ctx:
            with pytest.raises(MCPError, match="HTTP 401"):
                await ctx.mcp().open()

    run(body)


def test_unknown_tool_and_tool_error(local_config: AetherConfig, mcp_stdio_block: AetherMCPServer) -> None:
    async def body() -> None:
        async with open_session(config=cfg(local_config, default=mcp_stdio_block)) as ctx:
            m = ctx.mcp()
            with pytest.raises(MCPError, match=r"has no tool 'nope' \(its tools: add, echo, fail, whoami\)"):
                await m.call("nope", {"x": 1})
            with pytest.raises(MCPError, match="tool 'fail' .* failed: .*disk on fire"):
                await m.call("fail", {"message": "disk on fire"})
            assert await m.call("add", {"a": 1, "b": 1}) == {"result": 2}  # the session survives tool errors

    run(body)


def test_bad_input_is_rejected_before_sending(local_config: AetherConfig) -> None:
    never = stdio_block()
    never.command = "/nonexistent/never-started"

    async def body() -> None:
        async with open_session(config=cfg(local_config, default=never)) as ctx:
            m = ctx.mcp()
            with pytest.raises(ValidationError, match="tool must be a non-empty str"):
                await m.call("")
            with pytest.raises(ValidationError, match="params must be a dict"):
                await m.call("add", [1, 2])  # type: ignore[arg-type]
            with pytest.raises(ValidationError, match="JSON-serializable"):
                await m.call("add", {"a": object()})
            with pytest.raises(ValidationError, match="uri must be"):
                await m.read_resource("")
            with pytest.raises(MCPError, match="cannot start MCP server 'default'.*check the AetherMCPServer command"):
                await m.list_tools()

    run(body)


def test_unconfigured_names_are_listed(local_config: AetherConfig, mcp_stdio_block: AetherMCPServer) -> None:
    async def body() -> None:
        async with open_session(config=cfg(local_config, tools=mcp_stdio_block)) as ctx:
            with pytest.raises(ServiceNotConfigured, match="configured servers: tools"):
                ctx.mcp()
            assert ctx.mcp("tools") is not None

    run(body)


# -- crashes and reconnects ------------------------------------------------------------


def test_stdio_server_killed_between_calls_reconnects(local_config: AetherConfig, mcp_stdio_block: AetherMCPServer) -> None:
    async def body() -> tuple[int, int]:
        async with open_session(config=cfg(local_config, default=mcp_stdio_block)) as ctx:
            m = ctx.mcp()
            first = (await m.call("whoami"))["pid"]
            psutil.Process(first).kill()
            await asyncio.to_thread(wait_gone, first)
            with pytest.raises(MCPError, match="closed the connection.*next call reconnects"):
                await m.call("add", {"a": 1, "b": 2})
            second = (await m.call("whoami"))["pid"]
            assert await m.call("add", {"a": 1, "b": 2}) == {"result": 3}
        return first, second

    first, second = run(body)
    assert first != second
    assert wait_gone(second)


def test_http_server_killed_between_calls_reconnects(local_config: AetherConfig) -> None:
    server = MCPHttpServer().start()
    try:

        async def body() -> None:
            async with open_session(config=cfg(local_config, default=server.block())) as ctx:
                m = ctx.mcp()
                assert await m.call("add", {"a": 1, "b": 2}) == {"result": 3}
                await asyncio.to_thread(server.stop)
                with pytest.raises(MCPError, match=f"127.0.0.1:{server.port}"):
                    await m.call("add", {"a": 1, "b": 2})
                with pytest.raises(MCPError, match="cannot reach MCP server 'default'"):
                    await m.call("add", {"a": 1, "b": 2})  # still down: a clear error, no hang
                await asyncio.to_thread(server.start)
                assert await m.call("add", {"a": 5, "b": 2}) == {"result": 7}

        run(body)
    finally:
        server.stop()


# -- lifetime -----------------------------------------------------------------------------


def test_close_and_reopen_and_no_use_after_context(local_config: AetherConfig, mcp_stdio_block: AetherMCPServer) -> None:
    async def body() -> Any:
        async with open_session(config=cfg(local_config, default=mcp_stdio_block)) as ctx:
            m = ctx.mcp()
            a = (await m.call("whoami"))["pid"]
            await m.close()
            assert await asyncio.to_thread(wait_gone, a)
            async with m:
                b = (await m.call("whoami"))["pid"]
            assert b != a and await asyncio.to_thread(wait_gone, b)
            c = (await m.call("whoami"))["pid"]
        assert await asyncio.to_thread(wait_gone, c)
        with pytest.raises(MCPError, match="closed with its context"):
            await m.call("whoami")
        return c

    run(body)
    assert demo_children() == []


def test_session_used_from_another_loop_reopens_there(local_config: AetherConfig, mcp_stdio_block: AetherMCPServer) -> None:
    async def body() -> None:
        async with open_session(config=cfg(local_config, default=mcp_stdio_block)) as ctx:
            m = ctx.mcp()
            here = (await m.call("whoami"))["pid"]
            # The sync twin runs on the portal loop: the session moves there, the old one is closed.
            there = (await asyncio.to_thread(m.sync.call, "whoami"))["pid"]
            assert there != here and await asyncio.to_thread(wait_gone, here)
            assert (await asyncio.to_thread(m.sync.call, "add", {"a": 1, "b": 2})) == {"result": 3}
        assert await asyncio.to_thread(wait_gone, there)  # closed across loops with the context

    run(body)
    assert demo_children() == []


def test_sync_call_blocking_an_async_loop_does_not_deadlock(
    local_config: AetherConfig, mcp_stdio_block: AetherMCPServer
) -> None:
    async def body() -> None:
        async with open_session(config=cfg(local_config, default=mcp_stdio_block)) as ctx:
            m = ctx.mcp()
            here = (await m.call("whoami"))["pid"]
            # Mixed styles: a blocking .sync call from async code blocks this loop, where the first session lives.
            there = m.sync.call("whoami")["pid"]
            assert there != here
            assert (await m.call("add", {"a": 2, "b": 2})) == {"result": 4}  # back on this loop: reopens here
        assert all([await asyncio.to_thread(wait_gone, p) for p in (here, there)])

    run(body)
    assert demo_children() == []


def test_inside_aether_tasks_sync_and_async(
    local_config: AetherConfig, mcp_stdio_block: AetherMCPServer, mcp_http_server: MCPHttpServer
) -> None:
    config = cfg(local_config, default=mcp_stdio_block, web=mcp_http_server.block())

    @aether_task(config=config)
    def sync_mcp_task(*, context: NodeContext) -> dict:
        m = context.mcp()
        tools = m.sync.list_tools()
        return {"pid": m.sync.call("whoami")["pid"], "sum": m.sync.call("add", {"a": 3, "b": 4})["result"],
                "tools": sorted(t.name for t in tools),
                "readme": m.sync.read_resource("demo://readme")["contents"][0]["text"]}

    @aether_task(config=config)
    async def async_mcp_task(*, context: NodeContext) -> dict:
        m = context.mcp("web")
        pid = (await context.mcp().call("whoami"))["pid"]
        return {"sum": (await m.call("add", {"a": 10, "b": 1}))["result"], "n": len(await m.list_resources()), "pid": pid}

    @flow(name="mcp-flow")
    def f() -> tuple[dict, dict, dict]:
        return sync_mcp_task(), async_mcp_task.submit().result(), sync_mcp_task.submit().result()

    one, two, three = f()
    assert one["sum"] == 7 and "add" in one["tools"] and one["readme"] == "aether demo readme"
    assert two["sum"] == 11 and two["n"] == 2
    assert len({one["pid"], two["pid"], three["pid"]}) == 3  # a fresh context (and session) per task run
    assert all(wait_gone(r["pid"]) for r in (one, two, three)), "a task's MCP server outlived its task run"
    assert demo_children() == []


def test_stdio_failure_message_hides_args_and_env(local_config: AetherConfig) -> None:
    """#17.12: a token passed as a stdio argument or in env never appears in the MCPError or the repr."""
    import sys

    server = AetherMCPServer(command=sys.executable,
                             args=["-c", "import sys; sys.exit(3)", "--token", "tok-SECRET-arg-123"],
                             env={"API_TOKEN": "env-SECRET-456"}, timeout_s=5)

    async def go() -> tuple[str, str]:
        async with open_session(config=cfg(local_config, default=server)) as ctx:
            m = ctx.mcp()
            with pytest.raises(MCPError) as err:
                await m.list_tools()
            return str(err.value), repr(m)

    message, rep = run(go)
    assert "tok-SECRET-arg-123" not in message + rep and "env-SECRET-456" not in message + rep
    assert "sys.exit" not in message and sys.executable in message  # the command is named, its arguments are not
