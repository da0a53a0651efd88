"""MCP client service: ``context.mcp(name)`` talks to one MCP server (stdio or streamable HTTP) via the official SDK.

One session per client, opened on first use (with the MCP ``initialize`` handshake),
reused within the context and closed with it, so no subprocess or connection
outlives the context. The SDK's anyio task groups must be exited by the task that
entered them, while sync callers (``client.sync.call(...)``) run each call as a
separate task on the portal loop: so every session lives inside one dedicated
owner task that enters the transport and the ``ClientSession``, signals ready,
waits for a close request and exits in that same task. Callers only send
requests through the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from aether_prefect.blocks import AetherMCPServer
from aether_prefect.errors import MCPError, ValidationError
from aether_prefect.services.base import BoundService
from aether_prefect.services.journal import journaled

if TYPE_CHECKING:
    import httpx2
    from mcp.client.session import ClientSession

    from aether_prefect.context import NodeContext

T = TypeVar("T")
_log = logging.getLogger("aether_prefect.mcp")

_CONNECTION_CLOSED = -32000  # JSON-RPC code the SDK uses when the connection ended under a request
_CLOSE_WAIT_S = 10.0  # bound on waiting for a session to shut down (the SDK kills a stuck stdio server in ~2 s)


class _AttrDict(dict):  # type: ignore[type-arg]
    """A dict whose keys also read as attributes: both ``t["name"]`` and ``t.name`` work (AetherGraph defect 9)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}; fields: {', '.join(self)}") from None

    def __reduce__(self) -> Any:
        return (type(self), (dict(self),))


class MCPTool(_AttrDict):
    """One tool of a server: ``name``, ``description``, ``input_schema``, ``output_schema``."""


class MCPResource(_AttrDict):
    """One resource of a server: ``uri``, ``name``, ``description``, ``mime_type``."""


def _jsonable(model: Any) -> dict[str, Any]:
    """A JSON-friendly dict of an SDK pydantic model (snake_case field names, no empty fields)."""
    return model.model_dump(mode="json", exclude_none=True)  # type: ignore[no-any-return]


def _leaves(exc: BaseException) -> list[BaseException]:
    """The leaf exceptions of a (possibly nested) exception group."""
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for sub in exc.exceptions:
            out.extend(_leaves(sub))
        return out
    return [exc]


def _where(server: AetherMCPServer) -> str:
    """The server's command (its arguments left out: a token may be one), or its URL without credentials or query."""
    if server.transport == "stdio":
        hidden = f" (+{len(server.args)} args, not shown)" if server.args else ""
        return f"{server.command}{hidden}"
    from urllib.parse import urlsplit

    u = urlsplit(server.url or "")
    host = u.hostname or ""
    return f"{u.scheme}://{host}{f':{u.port}' if u.port else ''}{u.path}"


def _hidden_values(server: AetherMCPServer) -> list[str]:
    """What must never appear in a message: stdio args and env values, header values (4+ characters)."""
    values = list(server.args)
    for secret in (server.env, server.headers):
        if secret is not None:
            values += [str(v) for v in secret.get_secret_value().values()]
    return sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)


def _scrub(text: str, server: AetherMCPServer) -> str:
    """``text`` with every stdio arg, env value and header value replaced by ***."""
    for value in _hidden_values(server):
        text = text.replace(value, "***")
    return text


def _errlog() -> Any:
    """Where a stdio server's stderr goes: ours when it is a real file, else the inherited fd 2."""
    try:
        sys.stderr.fileno()
        return sys.stderr
    except (AttributeError, OSError, ValueError):
        return None


class _Connection:
    """One MCP session owned by one task on one event loop (see the module docstring)."""

    def __init__(self, server: AetherMCPServer, label: str, http_transport: "httpx2.AsyncBaseTransport | None") -> None:
        self.server = server
        self.label = label
        self.loop = asyncio.get_running_loop()
        self.session: "ClientSession | None" = None
        self.server_info: dict[str, Any] | None = None
        self.error: MCPError | None = None
        self.broken = False
        self.http_status: int | None = None  # last HTTP error status seen (401/403 -> token refused)
        self._http_transport = http_transport
        self._ready = asyncio.Event()
        self._closing = asyncio.Event()
        # A fresh contextvars context: the session must not hold on to the caller's Prefect run context.
        self.task = self.loop.create_task(self._own(), name=f"aether-mcp-{label}", context=contextvars.Context())

    # -- the owner task -------------------------------------------------------

    async def _own(self) -> None:
        """Enter transport and session, handshake, wait for close, exit: all in this one task."""
        from mcp.client.session import ClientSession

        try:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(self._transport())
                session = await stack.enter_async_context(
                    ClientSession(read, write, read_timeout_seconds=self.server.timeout_s)
                )
                init = await session.initialize()
                self.server_info = {
                    "name": init.server_info.name,
                    "version": init.server_info.version,
                    "protocol_version": init.protocol_version,
                    "instructions": init.instructions,
                }
                self.session = session
                self._ready.set()
                await self._closing.wait()
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the waiting callers as an MCPError
            self.broken = True
            if not self._ready.is_set():
                self.error = self.translate(exc, "connecting")
            elif not self._closing.is_set():
                _log.debug("MCP session %s ended: %s", self.label, _scrub(repr(exc), self.server))
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
        finally:
            self.broken = True
            self.session = None
            self._ready.set()

    def _transport(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """The SDK transport for the block; secrets are revealed here, at connection time only."""
        s = self.server
        if s.transport == "stdio":
            from mcp.client.stdio import StdioServerParameters, stdio_client

            env = {str(k): str(v) for k, v in (s.env.get_secret_value() if s.env else {}).items()}
            params = StdioServerParameters(command=s.command or "", args=list(s.args), env=env or None, cwd=s.cwd)
            return stdio_client(params, errlog=_errlog())
        return self._http()

    @contextlib.asynccontextmanager
    async def _http(self) -> Any:
        """Streamable HTTP over an httpx2 client carrying the block's headers; records error statuses."""
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        headers = {str(k): str(v) for k, v in (self.server.headers.get_secret_value() if self.server.headers else {}).items()}

        async def _on_response(response: "httpx2.Response") -> None:
            if response.status_code >= 400:
                self.http_status = response.status_code

        timeout = httpx2.Timeout(self.server.timeout_s, read=max(self.server.timeout_s, 300.0))
        async with httpx2.AsyncClient(
            headers=headers, timeout=timeout, transport=self._http_transport, event_hooks={"response": [_on_response]}
        ) as client:
            async with streamable_http_client(self.server.url or "", http_client=client) as streams:
                yield streams

    # -- used by callers ----------------------------------------------------------

    async def wait_ready(self) -> "ClientSession":
        """The live session, once the handshake is done; MCPError if the connection failed."""
        await self._ready.wait()
        if self.session is None or self.broken:
            raise self.error or MCPError(f"MCP server {self.label}: the session is closed; call again to reconnect")
        return self.session

    def signal_close(self) -> None:
        """Ask the owner task to exit, without waiting (safe from any thread or loop)."""
        if self.loop.is_closed():
            return  # the loop's shutdown already cancelled (and so exited) the owner task
        if _running_loop() is self.loop:
            self._closing.set()
        else:
            with contextlib.suppress(RuntimeError):  # loop closed meanwhile
                self.loop.call_soon_threadsafe(self._closing.set)

    async def _exit_and_wait(self) -> None:
        self._closing.set()
        await asyncio.wait({self.task})  # never cancels the owner, never raises its error

    async def close(self) -> None:
        """Ask the owner task to exit and wait (bounded) until it has, from its own loop or another one."""
        if self.loop.is_closed() or self.task.done():
            return
        if _running_loop() is self.loop:
            self._closing.set()
            await asyncio.wait({self.task}, timeout=_CLOSE_WAIT_S)
            return
        # Another loop (e.g. opened on the sync portal, closed by an async task): wait through a thread-safe future.
        try:
            done = asyncio.run_coroutine_threadsafe(self._exit_and_wait(), self.loop)
        except RuntimeError:  # loop closed meanwhile
            return
        await asyncio.wait({asyncio.wrap_future(done)}, timeout=_CLOSE_WAIT_S)

    def translate(self, exc: BaseException, doing: str) -> MCPError:
        """An MCPError saying what went wrong and how to fix it; never includes headers, tokens, args or env."""
        if isinstance(exc, MCPError):
            return exc
        err = self._translate(exc, doing)
        scrubbed = _scrub(str(err), self.server)
        return err if scrubbed == str(err) else MCPError(scrubbed)

    def _translate(self, exc: BaseException, doing: str) -> MCPError:
        s = self.server
        where = _where(s)
        if self.http_status in (401, 403):
            return MCPError(
                f"MCP server {self.label} at {where} refused the credentials (HTTP {self.http_status}) while {doing}: "
                "check the Authorization header (e.g. the bearer token) in the AetherMCPServer block's headers"
            )
        leaves = [e for e in _leaves(exc) if not isinstance(e, asyncio.CancelledError)] or [exc]
        leaf = leaves[0]
        from mcp.shared.exceptions import MCPError as SDKError

        try:
            import httpx2

            http_errors: tuple[type[BaseException], ...] = (httpx2.TransportError,)
        except ImportError:  # pragma: no cover - httpx2 comes with mcp
            http_errors = ()
        if isinstance(leaf, http_errors):
            return MCPError(
                f"cannot reach MCP server {self.label} at {where} while {doing}: {type(leaf).__name__}: {leaf}; "
                "check that the server runs and the AetherMCPServer url is right"
            )
        if isinstance(leaf, (FileNotFoundError, PermissionError)) and s.transport == "stdio":
            return MCPError(
                f"cannot start MCP server {self.label}: {leaf.strerror or leaf} ({s.command!r}); "
                "check the AetherMCPServer command, args and cwd"
            )
        if isinstance(leaf, SDKError):
            code = leaf.error.code
            if code == _CONNECTION_CLOSED:
                return MCPError(
                    f"MCP server {self.label} ({where}) closed the connection while {doing} "
                    "(did the server exit or crash?); the next call reconnects"
                )
            if self.http_status and leaf.error.message == "Server returned an error response":
                return MCPError(f"MCP server {self.label} at {where} answered HTTP {self.http_status} while {doing}")
            return MCPError(f"MCP server {self.label} returned an error while {doing}: {leaf.error.message} (code {code})")
        if isinstance(leaf, TimeoutError):
            return MCPError(
                f"MCP server {self.label} ({where}) did not answer within {s.timeout_s:g}s while {doing}; "
                "raise AetherMCPServer.timeout_s if it is just slow"
            )
        return MCPError(f"MCP server {self.label} ({where}) failed while {doing}: {type(leaf).__name__}: {leaf}")

    def is_connection_error(self, exc: BaseException) -> bool:
        """True when ``exc`` means this session is unusable (the next call must reconnect)."""
        from mcp.shared.exceptions import MCPError as SDKError

        if self.broken or self.task.done():
            return True
        if isinstance(exc, SDKError):
            return exc.error.code == _CONNECTION_CLOSED or exc.error.message == "Session terminated"
        return isinstance(exc, (OSError, TimeoutError))


class MCPClient(BoundService):
    """A client of one MCP server for one context: ``await context.mcp("name").call("tool", {...})``.

    Sync tasks use ``context.mcp().sync.call(...)``. ``async with context.mcp() as m:`` opens and
    closes explicitly; otherwise the session opens on first use and closes with the context.
    """

    def __init__(
        self,
        ctx: "NodeContext",
        name: str,
        server: AetherMCPServer,
        *,
        http_transport: "httpx2.AsyncBaseTransport | None" = None,
    ) -> None:
        super().__init__(ctx)
        self.name = name
        self.server = server
        self._http_transport = http_transport
        self._conn: _Connection | None = None
        self._retired: list[_Connection] = []  # sessions left on another loop, closed by close()
        self._lock = threading.Lock()  # guards _conn swaps only (never held across an await)
        self._tool_names: set[str] | None = None
        self._finished = False

    def __repr__(self) -> str:
        where = self.server.command if self.server.transport == "stdio" else _where(self.server)
        state = "open" if self._conn is not None and not self._conn.broken else "closed"
        return f"MCPClient(name={self.name!r}, transport={self.server.transport!r}, target={where!r}, {state})"

    @property
    def _label(self) -> str:
        return repr(self.name)

    @property
    def server_info(self) -> dict[str, Any] | None:
        """What the server said in the ``initialize`` handshake (name, version, protocol_version, instructions)."""
        conn = self._conn
        return conn.server_info if conn is not None else None

    # -- session lifetime ------------------------------------------------------------

    async def _connection(self) -> _Connection:
        """The live connection for the running loop, opening (or reopening) it if needed."""
        if self._finished:
            raise MCPError(
                f"MCP client {self._label} was closed with its context; use context.mcp({self.name!r}) "
                "inside a live task run or session"
            )
        loop = asyncio.get_running_loop()
        with self._lock:
            conn = self._conn
            if conn is None or conn.broken or conn.loop is not loop:
                if conn is not None:
                    # Used from another loop now (e.g. a .sync call in an async task): reopen here. The old
                    # session is only signalled, never awaited here: its loop may be the one blocked on us.
                    conn.signal_close()
                    self._retired = [c for c in self._retired if not c.task.done()] + [conn]
                conn = _Connection(self.server, self._label, self._http_transport)
                self._conn = conn
        try:
            await conn.wait_ready()
        except MCPError:
            with self._lock:
                if self._conn is conn:
                    self._conn = None
            raise
        return conn

    async def _request(self, doing: str, op: Callable[["ClientSession"], Awaitable[T]]) -> T:
        """Run ``op`` on the session; connection failures become MCPError and drop the session."""
        conn = await self._connection()
        session = await conn.wait_ready()
        try:
            return await op(session)
        except Exception as exc:
            err = conn.translate(exc, doing)
            if conn.is_connection_error(exc):
                with self._lock:
                    if self._conn is conn:
                        self._conn = None
                await conn.close()
            raise err from None

    async def open(self) -> None:
        """Start the server connection and do the ``initialize`` handshake now (otherwise done on first use).

        Example: ``await context.mcp("tools").open()  # optional: the first call opens it``
        """
        await self._connection()

    async def close(self) -> None:
        """Close the session (and stop a stdio server); a later call opens a new one.

        Example: ``await context.mcp("tools").close()``
        """
        with self._lock:
            conns = [c for c in (*self._retired, self._conn) if c is not None]
            self._conn, self._retired = None, []
        for conn in conns:
            await conn.close()

    async def aclose(self) -> None:
        """Close with the context: nothing of this client outlives it.

        Example: ``await context.mcp("tools").aclose()``
        """
        self._finished = True
        await self.close()

    async def __aenter__(self) -> "MCPClient":
        await self.open()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- MCP operations ---------------------------------------------------------------

    async def list_tools(self) -> list[MCPTool]:
        """The server's tools as ``[{"name", "description", "input_schema", "output_schema"}]`` (``t.name`` works too).

        Example: ``names = [t.name for t in await context.mcp("tools").list_tools()]``
        """

        async def op(session: "ClientSession") -> list[MCPTool]:
            return [
                MCPTool(name=t.name, description=t.description or "", input_schema=t.input_schema,
                        output_schema=t.output_schema)
                for page in await _all_pages(session.list_tools)
                for t in page.tools
            ]

        tools = await self._request("listing tools", op)
        self._tool_names = {t["name"] for t in tools}
        return tools

    @journaled("mcp.call")
    async def call(self, tool: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Call ``tool`` with ``params``: the structured result when the server gives one, else ``{"content": [...]}``.

        A tool error raises MCPError with the server's message.

        Example: ``out = await context.mcp("tools").call("add", {"a": 1, "b": 2})``
        """
        if not isinstance(tool, str) or not tool:
            raise ValidationError(f"tool must be a non-empty str naming a tool of MCP server {self._label}, got {tool!r}")
        if params is not None and not isinstance(params, Mapping):
            raise ValidationError(f"params must be a dict of tool arguments or None, got {type(params).__name__}")
        arguments = dict(params) if params is not None else None
        if arguments:
            try:
                json.dumps(arguments)
            except (TypeError, ValueError) as exc:
                raise ValidationError(f"params of tool {tool!r} must be JSON-serializable: {exc}") from None

        result = await self._request(f"calling tool {tool!r}", lambda s: s.call_tool(tool, arguments))
        if result.is_error:
            message = " ".join(getattr(c, "text", "") for c in result.content).strip() or "no message"
            if await self._is_unknown_tool(tool):
                known = ", ".join(sorted(self._tool_names or ())) or "none"
                raise MCPError(_scrub(f"MCP server {self._label} has no tool {tool!r} (its tools: {known}); "
                                      f"server said: {message}", self.server))
            raise MCPError(_scrub(f"tool {tool!r} of MCP server {self._label} failed: {message}", self.server))
        if result.structured_content is not None:
            return dict(result.structured_content)
        return {"content": [_jsonable(c) for c in result.content]}

    async def _is_unknown_tool(self, tool: str) -> bool:
        """Whether ``tool`` is missing from the server's tool list (listed at most once, on the error path)."""
        if self._tool_names is None:
            with contextlib.suppress(MCPError):
                await self.list_tools()
        return self._tool_names is not None and tool not in self._tool_names

    async def list_resources(self) -> list[MCPResource]:
        """The server's resources as ``[{"uri", "name", "description", "mime_type"}]`` (attribute access works too).

        Example: ``uris = [r.uri for r in await context.mcp("tools").list_resources()]``
        """

        async def op(session: "ClientSession") -> list[MCPResource]:
            return [
                MCPResource(uri=str(r.uri), name=r.name, description=r.description or "", mime_type=r.mime_type)
                for page in await _all_pages(session.list_resources)
                for r in page.resources
            ]

        return await self._request("listing resources", op)

    async def read_resource(self, uri: str) -> dict[str, Any]:
        """Read ``uri``: ``{"uri", "contents": [{"uri", "mime_type", "text" | "blob"}]}`` (blob is base64).

        Example: ``doc = await context.mcp("tools").read_resource("file:///readme")``
        """
        if not isinstance(uri, str) or not uri:
            raise ValidationError(f"uri must be a non-empty str such as 'file:///...' or 'demo://x', got {uri!r}")
        result = await self._request(f"reading resource {uri!r}", lambda s: s.read_resource(uri))
        return {"uri": uri, "contents": [_jsonable(c) for c in result.contents]}


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _all_pages(list_page: Callable[..., Awaitable[Any]]) -> list[Any]:
    """Every page of a paginated MCP list request, following ``next_cursor``."""
    from mcp_types import PaginatedRequestParams

    pages: list[Any] = []
    cursor: str | None = None
    while True:
        page = await list_page(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
        pages.append(page)
        cursor = page.next_cursor
        if not cursor:
            return pages


def create(ctx: "NodeContext", name: str, server: AetherMCPServer) -> MCPClient:
    """Factory used by ``NodeContext.mcp(name)``: a client that connects on first use."""
    return MCPClient(ctx, name, server)
