"""``@aether_task`` and ``@aether_flow``: real Prefect tasks/flows with a fresh NodeContext per attempt.

The context parameter is hidden from Prefect (``__signature__`` omits it), so it
is not a task parameter: not in the UI, the cache key or ``task_inputs``, and
never pickled. The context is built inside the run, on whichever process or
worker runs it, and closed when the attempt ends, success or failure.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, overload

from aether_prefect._overrides import KNOWN_OVERRIDES, RuntimeOverrides, parse_overrides
from aether_prefect._sync import run_sync
from aether_prefect.context import NodeContext, _reset_current, _set_current
from aether_prefect.config import cached_config
from aether_prefect.session import context_for, make_context

F = TypeVar("F", bound=Callable[..., Any])

_HOW = (
    "add a keyword-only parameter named 'context' (or annotated NodeContext) without a default, e.g. "
    "`def clean(path: str, *, context: NodeContext) -> int:`"
)


def _context_param(fn: Callable[..., Any], kind: str) -> tuple[inspect.Signature, str]:
    if not callable(fn):
        raise TypeError(f"@aether_{kind} decorates a function, got {type(fn).__name__} {fn!r}")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"@aether_{kind} cannot read the signature of {fn!r}: {exc}") from None
    found = [
        p
        for p in sig.parameters.values()
        if p.name == "context" or p.annotation is NodeContext or p.annotation == "NodeContext"
    ]
    if not found:
        raise TypeError(f"@aether_{kind} function {getattr(fn, '__qualname__', fn)!r} takes no context parameter: {_HOW}")
    if len(found) > 1:
        raise TypeError(
            f"@aether_{kind} function {fn.__qualname__!r} has several context parameters "
            f"({', '.join(p.name for p in found)}); keep exactly one"
        )
    param = found[0]
    if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
        raise TypeError(f"the context parameter of {fn.__qualname__!r} cannot be *args or **kwargs: {_HOW}")
    if param.default is not inspect.Parameter.empty:
        raise TypeError(
            f"the context parameter {param.name!r} of {fn.__qualname__!r} has a default; aether-prefect always "
            f"supplies it, so remove the default: {_HOW}"
        )
    return sig, param.name


def _call(fn_sig: inspect.Signature, pname: str, public: inspect.Signature, ctx: NodeContext,
          args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """Re-bind a call made against the public signature into a call of the user's function."""
    bound = public.bind(*args, **kwargs)
    values = dict(bound.arguments)
    values[pname] = ctx
    call_args: list[Any] = []
    call_kwargs: dict[str, Any] = {}
    positional = True
    for p in fn_sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            call_args.extend(values.get(p.name, ()))
        elif p.kind is inspect.Parameter.VAR_KEYWORD:
            call_kwargs.update(values.get(p.name, {}))
        elif p.name not in values:
            positional = False
        elif p.kind is inspect.Parameter.KEYWORD_ONLY or (not positional and p.kind is not inspect.Parameter.POSITIONAL_ONLY):
            call_kwargs[p.name] = values[p.name]
        else:
            call_args.append(values[p.name])
    return call_args, call_kwargs


def _wrap(fn: Callable[..., Any], overrides: RuntimeOverrides, kind: str) -> Callable[..., Any]:
    sig, pname = _context_param(fn, kind)
    public = sig.replace(parameters=[p for p in sig.parameters.values() if p.name != pname])
    node_default = "flow" if kind == "flow" else getattr(fn, "__name__", "task")

    async def _build() -> NodeContext:
        return await make_context(
            run_id=None, graph_id="adhoc", node_id=node_default, overrides=overrides, use_run_names=True
        )

    def _build_sync() -> NodeContext:
        config = cached_config(overrides.config)
        if config is None:  # first use in this process, or the refresh period ran out: load on the portal
            return run_sync(_build())
        return context_for(config, run_id=None, graph_id="adhoc", node_id=node_default, overrides=overrides,
                           use_run_names=True)

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = await _build()
            token = _set_current(ctx)
            try:
                call_args, call_kwargs = _call(sig, pname, public, ctx, args, kwargs)
                return await fn(*call_args, **call_kwargs)
            finally:
                _reset_current(token)
                await _finish(ctx, kind)

    else:

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            ctx = _build_sync()
            token = _set_current(ctx)
            try:
                call_args, call_kwargs = _call(sig, pname, public, ctx, args, kwargs)
                return fn(*call_args, **call_kwargs)
            finally:
                _reset_current(token)
                if not (kind == "task" and ctx.close_nowait()):
                    run_sync(_finish(ctx, kind))

    wrapper.__signature__ = public  # type: ignore[attr-defined]
    # Prefect 3.9 derives task_key and cache hashes from this, so each task keeps its own identity.
    wrapper.__prefect_task_source__ = fn  # type: ignore[attr-defined]
    wrapper.__aether_context_param__ = pname  # type: ignore[attr-defined]
    return wrapper


async def _finish(ctx: NodeContext, kind: str) -> None:
    await ctx.aclose()
    if kind == "flow" and ctx.flow_run_id:
        try:
            from aether_prefect.services.llm._usage import publish_flow_usage
        except ImportError:  # usage roll-up not installed in this build
            return
        await publish_flow_usage(ctx.flow_run_id, flow_name=ctx.graph_id, quiet=True)


def _split(kwargs: dict[str, Any]) -> tuple[RuntimeOverrides, dict[str, Any]]:
    ours = {k: kwargs.pop(k) for k in list(kwargs) if k in KNOWN_OVERRIDES}
    return parse_overrides(ours), kwargs


@overload
def aether_task(fn: F, /) -> Any: ...
@overload
def aether_task(fn: None = None, /, **kwargs: Any) -> Callable[[F], Any]: ...


def aether_task(fn: Any = None, /, **kwargs: Any) -> Any:
    """Make ``fn`` a Prefect task whose ``context`` parameter receives a fresh NodeContext.

    Every ``prefect.task`` keyword passes through (``retries``, ``cache_policy``,
    ``task_run_name``...); ``config=`` and the rt_overrides (``llm_budget=``,
    ``memory_level=``...) are ours.
    """
    from prefect import task

    overrides, prefect_kwargs = _split(dict(kwargs))
    if fn is None:
        return lambda f: task(_wrap(f, overrides, "task"), **prefect_kwargs)
    if not callable(fn):
        raise TypeError(f"@aether_task decorates a function, got {type(fn).__name__} {fn!r}")
    return task(_wrap(fn, overrides, "task"), **prefect_kwargs)


def aether_flow(fn: Any = None, /, **kwargs: Any) -> Any:
    """Make ``fn`` a Prefect flow whose ``context`` parameter receives a NodeContext (``node_id="flow"``).

    At the end of the flow run, the LLM usage of all its task runs is published as one table.
    """
    from prefect import flow

    overrides, prefect_kwargs = _split(dict(kwargs))
    if fn is None:
        return lambda f: flow(_wrap(f, overrides, "flow"), **prefect_kwargs)
    if not callable(fn):
        raise TypeError(f"@aether_flow decorates a function, got {type(fn).__name__} {fn!r}")
    return flow(_wrap(fn, overrides, "flow"), **prefect_kwargs)
