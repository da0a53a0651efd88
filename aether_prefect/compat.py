"""AetherGraph's decorators and runners on Prefect, so AetherGraph scripts run with only their imports changed.

``from aether_prefect.compat import graph_fn, graphify, tool, run, run_async, start_server, NodeContext``:

- ``@graph_fn(name=...)``: the function becomes a Prefect flow with a NodeContext (``aether_flow``) when run
  with ``run``/``run_async``; awaited directly it runs in that flow too, or with the ``context=`` you pass.
- ``@tool(outputs=[...])``: a Prefect task (``aether_task`` when it takes a ``context``). Inside a
  ``@graphify`` body a call submits the task and returns a handle whose attributes are its outputs
  (``r.result``), so fan-out runs concurrently on Prefect's task runner; elsewhere it is a normal call.
- ``@graphify(name=..., inputs=[...], outputs=[...])``: the body runs as a Prefect flow, building nothing:
  there is no static graph engine here; Prefect's task runs are the graph.
- ``run(target, inputs=None, run_id=None, max_concurrency=None)`` / ``await run_async(...)``: run it as a
  flow. A ``run_id`` becomes the session id with session-level memory, so runs that share a run_id share
  a memory timeline (what AetherGraph's examples use a fixed run_id for).
- The builtin tools ``send_text``/``ask_text``/``ask_approval``/``ask_files``/``send_buttons``/``get_latest_uploads``
  use the running context's channel; ``Button`` is AetherGraph's button.

AetherGraph's decorator keywords that describe its UI (``as_app``, ``as_agent``, ``description``, ...)
are accepted and ignored.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
from collections.abc import Callable, Iterable
from typing import Any

from aether_prefect._registration import (
    HttpMCPClient,
    MCPService,
    StdioMCPClient,
    list_mcp_clients,
    register_llm_client,
    register_mcp_client,
    set_channel_alias,
    set_default_channel,
    set_llm_client,
    set_mcp_service,
    set_rag_index_backend,
    set_rag_llm_client,
)
from aether_prefect._runtime_services import current_services
from aether_prefect.context import NodeContext, current_context
from aether_prefect.server import start_server, stop_server
from aether_prefect.services.base import Service, register_context_service
from aether_prefect.services.channel import Button
from aether_prefect.session import open_session

_in_graphify: contextvars.ContextVar[bool] = contextvars.ContextVar("aether_in_graphify", default=False)


def _takes_context(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "context" or p.annotation in (NodeContext, "NodeContext") for p in params)


def _overrides(run_id: str | None, max_concurrency: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if run_id is not None:
        out.update(session_id=str(run_id), memory_level="session")
    if max_concurrency is not None:
        out["max_concurrency"] = max_concurrency
    return out


# -- @graph_fn -------------------------------------------------------------------------------------------


class GraphFunction:
    """What ``@graph_fn`` returns: the function, run as a Prefect flow with a NodeContext."""

    def __init__(self, fn: Callable[..., Any], name: str | None, inputs: Any, outputs: Any) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        self.inputs = inputs
        self.outputs = outputs
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def as_flow(self, *, run_id: str | None = None, max_concurrency: int | None = None) -> Any:
        """A Prefect flow running this function (``aether_flow``), for ``run``/``run_async`` or a deployment."""
        from aether_prefect.task import aether_flow

        # AetherGraph does not validate inputs against annotations (which may be strings naming the script's
        # own imports under `from __future__ import annotations`): neither do these flows.
        return aether_flow(name=self.name, validate_parameters=False, **_overrides(run_id, max_concurrency))(self.fn)

    def __call__(self, *args: Any, context: NodeContext | None = None, **kwargs: Any) -> Any:
        if context is not None:  # called from another graph function with its context
            return self.fn(*args, context=context, **kwargs)
        return run_async(self, inputs=kwargs, _args=args)

    def __repr__(self) -> str:
        return f"graph_fn({self.name!r})"


def graph_fn(fn: Callable[..., Any] | None = None, /, *, name: str | None = None, inputs: Any = None,
             outputs: Any = None, **_ui: Any) -> Any:
    """AetherGraph's ``@graph_fn``: a function taking ``*, context: NodeContext``, run as a Prefect flow.

    >>> @graph_fn(name="hello")
    ... async def hello(*, context: NodeContext):
    ...     return {"run": context.run_id}
    """
    def deco(f: Callable[..., Any]) -> GraphFunction:
        return GraphFunction(f, name, inputs, outputs)

    return deco(fn) if fn is not None else deco


# -- @tool -------------------------------------------------------------------------------------------------


class NodeHandle:
    """A tool call inside ``@graphify``: its outputs are attributes (``r.result``, ``r.value``), resolved when read.

    The handle has no public methods of its own, so every output name (``value`` too) reaches the output.
    """

    def __init__(self, future: Any, outputs: list[str] | None) -> None:
        self._future = future
        self._outputs = outputs

    def _value(self) -> Any:
        """The tool's whole return value (waits for the task run)."""
        return _as_outputs(self._future.result(), self._outputs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        value = self._value()
        if isinstance(value, dict) and name in value:
            return value[name]
        raise AttributeError(f"tool output has no field {name!r} (outputs: {list(value) if isinstance(value, dict) else value!r})")

    def __getitem__(self, key: str) -> Any:
        return self._value()[key]


def _as_outputs(value: Any, outputs: list[str] | None) -> Any:
    if outputs and len(outputs) == 1 and not (isinstance(value, dict) and outputs[0] in value):
        return {outputs[0]: value}
    return value


def _resolve(value: Any) -> Any:
    if isinstance(value, NodeHandle):
        return value._value()
    if isinstance(value, list):
        return [_resolve(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_resolve(v) for v in value)
    if isinstance(value, dict):
        return {k: _resolve(v) for k, v in value.items()}
    return value


class ToolFunction:
    """What ``@tool`` returns: a Prefect task (an ``aether_task`` when the function takes a context)."""

    def __init__(self, fn: Callable[..., Any], name: str | None, outputs: list[str] | None) -> None:
        from prefect import task

        from aether_prefect.task import aether_task

        self.fn = fn
        self.name = name or fn.__name__
        self.outputs = list(outputs) if outputs else None
        self.task = aether_task(name=self.name)(fn) if _takes_context(fn) else task(name=self.name)(fn)
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # AetherGraph's node controls (_after=, _id=, _name=...): graphify bodies run their calls in order already
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("_")}
        if _in_graphify.get():
            return NodeHandle(self.task.submit(*_resolve(args), **_resolve(kwargs)), self.outputs)
        if "context" in kwargs and _takes_context(self.fn):
            return self.fn(*args, **kwargs)  # called by hand with a context: a plain call
        return self.task(*args, **kwargs)

    def __repr__(self) -> str:
        return f"tool({self.name!r})"


def tool(fn: Callable[..., Any] | None = None, /, *, name: str | None = None, outputs: Iterable[str] | None = None,
         **_meta: Any) -> Any:
    """AetherGraph's ``@tool(outputs=[...])``: the function as a Prefect task.

    >>> @tool(outputs=["out"])
    ... async def double(x: int):
    ...     return {"out": 2 * x}
    """
    def deco(f: Callable[..., Any]) -> ToolFunction:
        return ToolFunction(f, name, list(outputs) if outputs else None)

    return deco(fn) if fn is not None else deco


# -- @graphify -------------------------------------------------------------------------------------------


class GraphifyFunction:
    """What ``@graphify`` returns: the body, run as a Prefect flow whose tool calls are submitted tasks."""

    def __init__(self, fn: Callable[..., Any], name: str | None, inputs: Any, outputs: Any) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        self.inputs = inputs
        self.outputs = outputs
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def as_flow(self, *, run_id: str | None = None, max_concurrency: int | None = None) -> Any:
        """A Prefect flow running the body with a NodeContext (for the builtin tools)."""
        from aether_prefect.task import aether_flow

        body = self.fn

        def graph(*args: Any, context: NodeContext, **kwargs: Any) -> Any:
            token = _in_graphify.set(True)
            try:
                return _resolve(body(*args, **kwargs))
            finally:
                _in_graphify.reset(token)

        sig = inspect.signature(body)
        params = [p for p in sig.parameters.values()]
        params.append(inspect.Parameter("context", inspect.Parameter.KEYWORD_ONLY, annotation=NodeContext))
        graph.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        graph.__name__ = graph.__qualname__ = getattr(body, "__name__", "graph")
        return aether_flow(name=self.name, validate_parameters=False, **_overrides(run_id, max_concurrency))(graph)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``G = pipeline()`` builds the graph in AetherGraph (``run(G, inputs=...)`` runs it): here it is the
        graph itself, since Prefect builds the run as it goes. Called with inputs, it runs the graph."""
        if not args and not kwargs:
            return self
        return run(self, inputs=kwargs, _args=args)

    def build(self) -> "GraphifyFunction":
        """AetherGraph's ``pipeline.build()``: the graph to hand to ``run``/``run_async`` (this object).

        Example: ``result = run(pipeline.build(), inputs={"x": 7})``
        """
        return self

    def __repr__(self) -> str:
        return f"graphify({self.name!r})"


def graphify(fn: Callable[..., Any] | None = None, /, *, name: str | None = None, inputs: Any = None,
             outputs: Any = None, **_ui: Any) -> Any:
    """AetherGraph's ``@graphify``: a plain (sync) body calling ``@tool`` functions, run as a Prefect flow."""
    def deco(f: Callable[..., Any]) -> GraphifyFunction:
        return GraphifyFunction(f, name, inputs, outputs)

    return deco(fn) if fn is not None else deco


# -- runners ------------------------------------------------------------------------------------------------


async def run_async(target: Any, inputs: dict[str, Any] | None = None, *, run_id: str | None = None,
                    max_concurrency: int | None = None, _args: tuple[Any, ...] = (), **_ignored: Any) -> Any:
    """Run a ``@graph_fn``/``@graphify`` as a Prefect flow and return its result.

    >>> result = await run_async(hello, inputs={}, run_id="demo")
    """
    if not isinstance(target, (GraphFunction, GraphifyFunction)):
        raise TypeError(f"run_async takes a @graph_fn or @graphify function, got {type(target).__name__}")
    flow = target.as_flow(run_id=run_id, max_concurrency=max_concurrency)
    kwargs = dict(inputs or {})
    if inspect.iscoroutinefunction(flow.fn):
        return await flow(*_args, **kwargs)
    return await asyncio.to_thread(flow, *_args, **kwargs)


def run(target: Any, inputs: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """Blocking twin of :func:`run_async` (from a script, or from a thread when a loop is running).

    >>> result = run(hello, inputs={})
    """
    coro = run_async(target, inputs, **kwargs)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def _in_thread() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=_in_thread)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


# -- builtin tools (AetherGraph's aethergraph.tools) -----------------------------------------------------


# They are @tool functions, as in AetherGraph: awaited in a @graph_fn, or nodes (handles) in a @graphify body.


async def _send_text(text: str, *, meta: dict[str, Any] | None = None, channel: str | None = None,
                     context: NodeContext) -> dict[str, Any]:
    """Send ``text`` on the context's channel (``channel``: a key or alias): ``{"ok": True}``."""
    await context.channel(channel).send_text(text, meta=meta)
    return {"ok": True}


async def _ask_text(*, prompt: str, timeout_s: float = 3600, channel: str | None = None, silent: bool = False,
                    context: NodeContext, **_kw: Any) -> dict[str, Any]:
    """Ask a person on the context's channel: ``{"text": answer}``."""
    return {"text": await context.channel(channel).ask_text(prompt, timeout_s=timeout_s)}


async def _ask_approval(*, prompt: str, options: Iterable[Any] = ("Approve", "Reject"), timeout_s: float = 3600,
                        channel: str | None = None, context: NodeContext, **_kw: Any) -> dict[str, Any]:
    """Ask for an approval on the context's channel: ``{"approved", "choice", "reason"}``."""
    return dict(await context.channel(channel).ask_approval(prompt, options=list(options), timeout_s=timeout_s))


async def _ask_files(*, prompt: str, accept: list[str] | None = None, multiple: bool = True, timeout_s: float = 3600,
                     channel: str | None = None, context: NodeContext, **_kw: Any) -> dict[str, Any]:
    """Ask a person for files (paths or store URIs here): ``{"text", "files": [FileRef, ...]}``."""
    return dict(await context.channel(channel).ask_files(prompt, accept=accept, multiple=multiple,
                                                         timeout_s=timeout_s))


async def _send_buttons(*, text: str, buttons: Any, meta: dict[str, Any] | None = None, channel: str | None = None,
                        context: NodeContext) -> dict[str, Any]:
    """Send ``text`` with its buttons listed (no wait for a click): ``{"ok": True}``."""
    await context.channel(channel).send_buttons(text, buttons, meta=meta)
    return {"ok": True}


async def _get_latest_uploads(*, clear: bool = True, context: NodeContext) -> dict[str, Any]:
    """The files of this run's upload inbox: ``{"files": [FileRef, ...]}``."""
    return {"files": await context.channel().get_latest_uploads(clear=clear)}


send_text = tool(_send_text, name="send_text", outputs=["ok"])
ask_text = tool(_ask_text, name="ask_text", outputs=["text"])
ask_approval = tool(_ask_approval, name="ask_approval", outputs=["approved", "choice"])
ask_files = tool(_ask_files, name="ask_files", outputs=["text", "files"])
send_buttons = tool(_send_buttons, name="send_buttons", outputs=["ok"])
get_latest_uploads = tool(_get_latest_uploads, name="get_latest_uploads", outputs=["files"])


#: AetherGraph's ``aethergraph.server.start.start`` (``from aethergraph.server import start``): the same call.
start = start_server

__all__ = [
    "Button",
    "GraphFunction",
    "GraphifyFunction",
    "HttpMCPClient",
    "MCPService",
    "NodeContext",
    "NodeHandle",
    "Service",
    "StdioMCPClient",
    "ToolFunction",
    "ask_approval",
    "ask_files",
    "ask_text",
    "current_context",
    "current_services",
    "get_latest_uploads",
    "graph_fn",
    "graphify",
    "list_mcp_clients",
    "open_session",
    "register_context_service",
    "register_llm_client",
    "register_mcp_client",
    "run",
    "run_async",
    "send_buttons",
    "send_text",
    "set_channel_alias",
    "set_default_channel",
    "set_llm_client",
    "set_mcp_service",
    "set_rag_index_backend",
    "set_rag_llm_client",
    "start",
    "start_server",
    "stop_server",
    "tool",
]
