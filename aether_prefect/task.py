"""``@aether_task`` and ``@aether_flow``: real Prefect tasks/flows with a fresh NodeContext per attempt.

The context parameter is hidden from Prefect (``__signature__`` omits it), so it
is not a task parameter: not in the UI, the cache key or ``task_inputs``, and
never pickled. The context is built inside the run, on whichever process or
worker runs it, and closed when the attempt ends, success or failure.
"""

from __future__ import annotations

import datetime
import functools
import inspect
import types
from collections.abc import AsyncGenerator, Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from aether_prefect._overrides import KNOWN_OVERRIDES, RuntimeOverrides, parse_overrides
from aether_prefect._sync import run_sync
from aether_prefect.blocks import AetherConfig
from aether_prefect.budgets import LLMBudget
from aether_prefect.context import NodeContext, _reset_current, _set_current
from aether_prefect.config import cached_config, prefetch_config
from aether_prefect.session import context_for, make_context

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")

if TYPE_CHECKING:  # only for the typed overloads of aether_task: Prefect's own keyword types, through the door
    from aether_prefect._prefect._task_types import (
        Asset, CachePolicy, NotSet, ResultSerializer, ResultStorage, RetryConditionCallable, StateHookCallable, Task,
        TaskRunContext, TaskRunNameValueOrCallable,
    )

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
        if config is None and kind == "flow" and not isinstance(overrides.config, AetherConfig):
            # A flow's body starts while its saved config loads on a thread of its own (its tasks and Dask
            # cluster start meanwhile); the context's first use of the config waits for it.
            return context_for(prefetch_config(overrides.config), run_id=None, graph_id="adhoc", node_id=node_default,
                               overrides=overrides, use_run_names=True)
        if config is None:  # first use in this process, or the refresh period ran out: load on the portal
            return run_sync(_build())
        return context_for(config, run_id=None, graph_id="adhoc", node_id=node_default, overrides=overrides,
                           use_run_names=True)

    def _close_sync(ctx: NodeContext) -> None:
        if not (kind == "task" and ctx.close_nowait()):
            run_sync(_finish(ctx, kind))

    wrapper: Callable[..., Any]
    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def agen_wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
            # The context stays open for the whole iteration and is current only while the body runs.
            ctx = await _build()
            try:
                call_args, call_kwargs = _call(sig, pname, public, ctx, args, kwargs)
                agen = fn(*call_args, **call_kwargs)
                to_send: Any = None
                error: BaseException | None = None
                while True:
                    token = _set_current(ctx)
                    try:
                        item = await (agen.athrow(error) if error is not None else agen.asend(to_send))
                    except StopAsyncIteration:
                        return
                    finally:
                        _reset_current(token)
                    error = None
                    try:
                        to_send = yield item
                    except GeneratorExit:
                        token = _set_current(ctx)
                        try:
                            await agen.aclose()
                        finally:
                            _reset_current(token)
                        raise
                    except BaseException as exc:  # thrown in by the consumer: hand it to the body
                        error, to_send = exc, None
            finally:
                await _finish(ctx, kind)

        wrapper = agen_wrapper

    elif inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            ctx = _build_sync()
            try:
                call_args, call_kwargs = _call(sig, pname, public, ctx, args, kwargs)
                gen = fn(*call_args, **call_kwargs)
                to_send: Any = None
                error: BaseException | None = None
                while True:
                    token = _set_current(ctx)
                    try:
                        item = gen.throw(error) if error is not None else gen.send(to_send)
                    except StopIteration as stop:
                        return stop.value
                    finally:
                        _reset_current(token)
                    error = None
                    try:
                        to_send = yield item
                    except GeneratorExit:
                        token = _set_current(ctx)
                        try:
                            gen.close()
                        finally:
                            _reset_current(token)
                        raise
                    except BaseException as exc:  # thrown in by the consumer: hand it to the body
                        error, to_send = exc, None
            finally:
                _close_sync(ctx)

        wrapper = gen_wrapper

    elif inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = await _build()
            token = _set_current(ctx)
            try:
                call_args, call_kwargs = _call(sig, pname, public, ctx, args, kwargs)
                return await fn(*call_args, **call_kwargs)
            finally:
                _reset_current(token)
                await _finish(ctx, kind)

        wrapper = async_wrapper

    else:

        @functools.wraps(fn)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = _build_sync()
            token = _set_current(ctx)
            try:
                call_args, call_kwargs = _call(sig, pname, public, ctx, args, kwargs)
                return fn(*call_args, **call_kwargs)
            finally:
                _reset_current(token)
                _close_sync(ctx)

        wrapper = sync_wrapper

    wrapper.__signature__ = public  # type: ignore[attr-defined]
    # Prefect 3.9 derives task_key and cache hashes from this (when it is also __wrapped__), so each task
    # keeps its own identity: the user's code, or what a compatibility decorator under us names as its code.
    source = _task_source(fn)
    wrapper.__wrapped__ = source  # type: ignore[attr-defined]
    wrapper.__prefect_task_source__ = source  # type: ignore[attr-defined]
    # Prefect before 3.9 ignores that and keys tasks (task_key, and with it task_input_hash) by the wrapper's own
    # code object, which is the same for every @aether_task: each wrapper gets a copy carrying its source's code.
    wrapper.__code__ = _code_carrying(wrapper.__code__, source)
    wrapper.__aether_context_param__ = pname  # type: ignore[attr-defined]
    return wrapper


def _code_carrying(code: types.CodeType, source: Callable[..., Any]) -> types.CodeType:
    """``code`` with the identity of ``source`` as an extra (unused) constant, so hashing it tells tasks apart.

    Example: ``_code_carrying(wrapper.__code__, fn)`` runs exactly as ``wrapper.__code__``.
    """
    ident = getattr(source, "__code__", None) or f"{getattr(source, '__module__', '')}.{getattr(source, '__qualname__', '')}"
    return code.replace(co_consts=(*code.co_consts, ident))


def _task_source(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The function whose code is ``fn``'s identity for Prefect (task_key, ``task_input_hash``).

    A compatibility decorator keeps the code identity of the function it wraps by setting
    ``__prefect_task_source__`` to its ``__wrapped__``; ``@task`` over it honours that, so we do too
    (else every function under the same decorator would share one task key and one cache).
    Example: ``_task_source(fn)`` is ``fn`` for a plain function.
    """
    source = getattr(fn, "__prefect_task_source__", None)
    if source is not None and source is getattr(fn, "__wrapped__", None):
        return source
    return fn


async def _finish(ctx: NodeContext, kind: str) -> None:
    await ctx.aclose()
    if kind == "flow":
        ctx.config  # noqa: B018 - a config that failed to load fails the flow, even if its body never used it
    if kind == "flow" and ctx.flow_run_id:
        from aether_prefect.services.llm._usage import publish_flow_usage

        await publish_flow_usage(ctx.flow_run_id, flow_name=ctx.graph_id, quiet=True)


def _split(kwargs: dict[str, Any]) -> tuple[RuntimeOverrides, dict[str, Any]]:
    ours = {k: kwargs.pop(k) for k in list(kwargs) if k in KNOWN_OVERRIDES}
    return parse_overrides(ours), kwargs


@overload
def aether_task(fn: Callable[..., R], /) -> "Task[..., R]": ...
@overload
def aether_task(fn: "classmethod[Any, ..., R] | staticmethod[..., R]", /) -> "Task[..., R]": ...
@overload
def aether_task(
    fn: None = None,
    /,
    *,
    # Prefect's task keywords (prefect.tasks.task), passed through unchanged
    name: str | None = None,
    description: str | None = None,
    tags: Iterable[str] | None = None,
    version: str | None = None,
    cache_policy: "CachePolicy | type[NotSet]" = ...,
    cache_key_fn: "Callable[[TaskRunContext, dict[str, Any]], str | None] | None" = None,
    cache_expiration: datetime.timedelta | None = None,
    task_run_name: "TaskRunNameValueOrCallable | None" = None,
    retries: int | None = None,
    retry_delay_seconds: float | int | list[float] | Callable[[int], list[float]] | None = None,
    retry_jitter_factor: float | None = None,
    persist_result: bool | None = None,
    result_storage: "ResultStorage | None" = None,
    result_storage_key: str | None = None,
    result_serializer: "ResultSerializer | None" = None,
    cache_result_in_memory: bool = True,
    timeout_seconds: int | float | None = None,
    log_prints: bool | None = None,
    refresh_cache: bool | None = None,
    on_completion: "list[StateHookCallable] | None" = None,
    on_failure: "list[StateHookCallable] | None" = None,
    on_running: "list[StateHookCallable] | None" = None,
    retry_condition_fn: "RetryConditionCallable | None" = None,
    viz_return_value: Any = None,
    asset_deps: "list[str | Asset] | None" = None,
    # ours: the config and the runtime overrides of the context
    config: AetherConfig | str | None = None,
    session_id: str | None = None,
    memory_level: str | None = None,
    max_concurrency: int | None = None,
    llm_budget: LLMBudget | None = None,
    kv_namespace: str | None = None,
    store: Any = None,
    llm: Any = None,
    artifacts: Any = None,
    kv: Any = None,
    memory: Any = None,
    mcp: Any = None,
    rag: Any = None,
    channel: Any = None,
    durable: bool | None = None,
    replay_from: str | None = None,
) -> "Callable[[Callable[..., R]], Task[..., R]]": ...


def aether_task(fn: Any = None, /, **kwargs: Any) -> Any:
    """Make ``fn`` a Prefect task whose ``context`` parameter receives a fresh NodeContext.

    Every ``prefect.task`` keyword passes through (``retries``, ``cache_policy``,
    ``task_run_name``...); ``config=`` and the rt_overrides (``llm_budget=``,
    ``memory_level=``...) are ours. Like ``@task``, it takes functions, coroutine
    functions, (async) generator functions, and ``@classmethod``/``@staticmethod`` objects.
    Example: ``@aether_task(retries=2)`` over ``def clean(path: str, *, context: NodeContext) -> int: ...``
    """
    overrides, prefect_kwargs = _split(dict(kwargs))
    if fn is None:
        return lambda f: _task(f, overrides, prefect_kwargs)
    return _task(fn, overrides, prefect_kwargs)


def _task(fn: Any, overrides: RuntimeOverrides, prefect_kwargs: dict[str, Any]) -> Any:
    from prefect import task

    if isinstance(fn, (classmethod, staticmethod)):  # Prefect binds cls / nothing itself, as for @task
        return task(type(fn)(_wrap(fn.__func__, overrides, "task")), **prefect_kwargs)
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
