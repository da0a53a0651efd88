"""The sync bridge: run a service coroutine to completion from sync code.

Every service method is async (AetherGraph style). Sync code calls them through
``service.sync.method(...)``; the coroutine runs on one background event loop per
process (the "portal"), with the caller's contextvars, so Prefect's run context
and ``current_context()`` are seen, and per-loop clients are reused across calls.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextvars
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")
S = TypeVar("S")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def _portal_loop() -> asyncio.AbstractEventLoop:
    global _loop, _thread
    with _lock:
        if _loop is None or _loop.is_closed() or _thread is None or not _thread.is_alive():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def _run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=_run, name="aether-prefect-portal", daemon=True)
            thread.start()
            ready.wait()
            _loop, _thread = loop, thread
        return _loop


def portal_loop() -> asyncio.AbstractEventLoop:
    """The process-wide background loop sync calls run on."""
    return _portal_loop()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the portal loop with the caller's contextvars and wait for it.

    Must not be called from the portal thread itself (that would deadlock).
    """
    loop = _portal_loop()
    if threading.current_thread() is _thread:
        coro.close()
        raise RuntimeError("run_sync() called from the aether-prefect portal loop; await the coroutine instead")
    ctx = contextvars.copy_context()
    result: concurrent.futures.Future[T] = concurrent.futures.Future()

    def _start() -> None:
        task = loop.create_task(coro, context=ctx)

        def _done(t: asyncio.Task[T]) -> None:
            if t.cancelled():
                result.cancel()
            elif t.exception() is not None:
                result.set_exception(t.exception())  # type: ignore[arg-type]
            else:
                result.set_result(t.result())

        task.add_done_callback(_done)

    loop.call_soon_threadsafe(_start)
    return result.result()


def _shutdown() -> None:
    loop = _loop
    if loop is not None and not loop.is_closed():
        loop.call_soon_threadsafe(loop.stop)


atexit.register(_shutdown)


class SyncView(Generic[S]):
    """Blocking twin of an async service: ``svc.sync.get(k)`` == ``await svc.get(k)``.

    Async methods become blocking; async context managers (like ``writer``)
    become sync context managers; everything else passes through.
    """

    __slots__ = ("_target",)

    def __init__(self, target: S) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if inspect.iscoroutinefunction(attr):

            @functools.wraps(attr)
            def call(*args: Any, **kwargs: Any) -> Any:
                return run_sync(attr(*args, **kwargs))

            return call
        if callable(attr) and getattr(attr, "_aether_async_cm", False):

            @functools.wraps(attr)
            def cm(*args: Any, **kwargs: Any) -> Any:
                return _SyncCM(attr(*args, **kwargs))

            return cm
        return attr

    def __repr__(self) -> str:
        return f"<sync view of {self._target!r}>"


class _SyncCM:
    """Sync wrapper of an async context manager, driven through the portal."""

    def __init__(self, acm: Any) -> None:
        self._acm = acm
        self._value: Any = None

    def __enter__(self) -> Any:
        value = run_sync(self._acm.__aenter__())
        self._value = _SyncWrapped(value) if value is not None else None
        return self._value

    def __exit__(self, *exc: Any) -> bool:
        return bool(run_sync(self._acm.__aexit__(*exc)))


class _SyncWrapped:
    """Wrap an object yielded by an async context manager so its async methods block."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if inspect.iscoroutinefunction(attr):
            return lambda *a, **k: run_sync(attr(*a, **k))
        return attr


def async_cm(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a method returning an async context manager so ``.sync`` exposes it as a sync one."""
    fn._aether_async_cm = True  # type: ignore[attr-defined]
    return fn


async def maybe_await(value: T | Awaitable[T]) -> T:
    """Await ``value`` if it is awaitable (for callbacks that may be sync or async)."""
    if inspect.isawaitable(value):
        return await value  # type: ignore[no-any-return]
    return value  # type: ignore[return-value]
