"""``task`` for Prefect's own task tests, made with ``@aether_task``: copied into the exported tests by
ci/prefect_task_semantics.py, which makes ``tests/test_tasks.py`` and ``tests/test_task_engine.py`` import it.

Prefect's test functions take no ``context`` parameter and ``@aether_task`` requires one (it is how
the context reaches the user's code). ``_adapt`` gives each function one: a keyword-only
``context: NodeContext`` appended to its signature, dropped before the original is called. The
adapter keeps the function's kind (sync, coroutine, generator, async generator, classmethod,
staticmethod), its name and its code identity (``__prefect_task_source__``), so what remains to
compare is ``@aether_task`` itself.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any

from aether_prefect import NodeContext, aether_task
from aether_prefect._overrides import KNOWN_OVERRIDES

_CONTEXT = inspect.Parameter("context", inspect.Parameter.KEYWORD_ONLY, annotation=NodeContext)


def _has_context(sig: inspect.Signature) -> bool:
    return any(p.name == "context" or p.annotation in (NodeContext, "NodeContext") for p in sig.parameters.values())


def _with_context(sig: inspect.Signature) -> inspect.Signature:
    params = list(sig.parameters.values())
    at = len(params) - (1 if params and params[-1].kind is inspect.Parameter.VAR_KEYWORD else 0)
    return sig.replace(parameters=[*params[:at], _CONTEXT, *params[at:]])


def _is_kind(fn: Any, check: Callable[[Any], bool]) -> bool:
    """Like ``check(fn)``, also for callable objects whose ``__call__`` is of that kind (as Prefect sees them)."""
    return check(fn) or (not inspect.isroutine(fn) and check(getattr(fn, "__call__", None)))


def _adapt(fn: Any) -> Any:
    if isinstance(fn, (classmethod, staticmethod)):
        return type(fn)(_adapt(fn.__func__))
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return fn  # let @aether_task say what is wrong
    if _has_context(sig):
        return fn

    adapted: Callable[..., Any]
    if _is_kind(fn, inspect.isasyncgenfunction):

        async def adapted(*args: Any, context: NodeContext, **kwargs: Any) -> AsyncGenerator[Any, Any]:
            agen = fn(*args, **kwargs)
            try:
                item = await agen.__anext__()
                while True:
                    try:
                        sent = yield item
                    except GeneratorExit:
                        await agen.aclose()
                        raise
                    except BaseException as exc:
                        item = await agen.athrow(exc)
                    else:
                        item = await agen.asend(sent)
            except StopAsyncIteration:
                return

    elif _is_kind(fn, inspect.isgeneratorfunction):

        def adapted(*args: Any, context: NodeContext, **kwargs: Any) -> Generator[Any, Any, Any]:
            return (yield from fn(*args, **kwargs))

    elif _is_kind(fn, inspect.iscoroutinefunction):

        async def adapted(*args: Any, context: NodeContext, **kwargs: Any) -> Any:
            return await fn(*args, **kwargs)

    else:

        def adapted(*args: Any, context: NodeContext, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

    try:
        functools.update_wrapper(adapted, fn)
    except AttributeError:  # objects without __name__ (partials, callable instances)
        pass
    adapted.__signature__ = _with_context(sig)  # type: ignore[attr-defined]
    # Prefect takes a task's code identity (task_key, cache hashes) from here when it is __wrapped__.
    adapted.__wrapped__ = fn  # type: ignore[attr-defined]
    adapted.__prefect_task_source__ = getattr(fn, "__prefect_task_source__", fn)  # type: ignore[attr-defined]
    return adapted


def task(__fn: Any = None, **kwargs: Any) -> Any:
    """Prefect's ``task``, made with ``@aether_task`` over the adapted function."""
    if __fn is None:
        return lambda fn: aether_task(_adapt(fn), **kwargs)
    return aether_task(_adapt(__fn), **kwargs)


def _overload_signature() -> inspect.Signature:
    """``task``'s signature as ``aether_task``'s keyword overload states it, less our own keywords.

    Prefect's tests that read ``inspect.signature(task)`` then check what editors and type checkers
    see of ``@aether_task(...)``: every keyword of Prefect's ``task``.
    """
    keyword = next(sig for sig in map(inspect.signature, typing.get_overloads(aether_task)) if "retries" in sig.parameters)
    fn = inspect.Parameter("__fn", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
    prefect_keywords = [p for p in keyword.parameters.values()
                        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in KNOWN_OVERRIDES]
    return keyword.replace(parameters=[fn, *prefect_keywords])


task.__signature__ = _overload_signature()  # type: ignore[attr-defined]
