"""The sync bridge: run a service coroutine to completion from sync code.

Every service method is async (AetherGraph style). Sync code calls them through
``service.sync.method(...)``; the coroutine runs on a background event loop of this
process (an anyio ``BlockingPortal``), with the caller's contextvars, so Prefect's
run context and ``current_context()`` are seen, and per-loop clients are reused.

Nested calls never deadlock: sync code already running on a portal's loop (a sync
``on_delta`` callback, an async ``Service.start()`` reached from a service method)
that calls ``run_sync`` again is served by the next portal, one per nesting level.
A caller interrupted while waiting (Ctrl-C, a Prefect task timeout in a worker
thread) cancels the coroutine.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextvars
import functools
import inspect
import queue
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

T = TypeVar("T")
S = TypeVar("S")

# How often a waiting caller wakes to let an exception injected into its thread (Prefect's
# timeout of a sync task in a worker thread) surface; results arrive immediately regardless.
_WAKE_S = 0.05


@dataclass(frozen=True)
class _Portal:
    portal: BlockingPortal
    thread: threading.Thread


_lock = threading.Lock()
_portals: list[_Portal] = []  # index = nesting level
_levels: dict[int, int] = {}  # thread ident of a portal's loop -> its level


def _start_portal(level: int) -> _Portal:
    """A BlockingPortal on its own daemon thread (a daemon, so it never holds up interpreter exit)."""
    handoff: queue.Queue[BlockingPortal | BaseException] = queue.Queue()

    async def serve() -> None:
        async with BlockingPortal() as portal:
            handoff.put(portal)
            await portal.sleep_until_stopped()

    def run() -> None:
        try:
            anyio.run(serve, backend="asyncio")
        except BaseException as exc:  # noqa: BLE001 - reported to the thread that asked for the portal
            handoff.put(exc)

    thread = threading.Thread(target=run, name=f"aether-prefect-portal-{level}", daemon=True)
    thread.start()
    got = handoff.get()
    if isinstance(got, BaseException):
        raise RuntimeError(f"the aether-prefect portal loop failed to start: {got!r}") from got
    return _Portal(got, thread)


def _portal_for_caller() -> BlockingPortal:
    """The portal this thread may block on: level 0, or one level below the portal it runs on."""
    level = _levels.get(threading.get_ident(), -1) + 1
    if level < len(_portals) and _portals[level].thread.is_alive():
        return _portals[level].portal
    with _lock:
        while len(_portals) <= level:
            _portals.append(_start_portal(len(_portals)))
        if not _portals[level].thread.is_alive():  # stopped (interpreter exit) or crashed: replace it
            _portals[level] = _start_portal(level)
        entry = _portals[level]
        _levels[entry.thread.ident] = level  # type: ignore[index]
        return entry.portal


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a portal loop with the caller's contextvars and wait for its result.

    Safe from any thread, including a portal's own (nested calls go one level down).
    If the wait is interrupted (KeyboardInterrupt, a timeout injected by Prefect),
    the coroutine is cancelled and the interruption propagates, wherever in this
    function the interruption lands (even before the portal's future is handed back).
    """
    try:
        portal = _portal_for_caller()
    except BaseException:
        coro.close()
        raise
    ctx = contextvars.copy_context()
    call = _Call()

    async def boxed() -> T | _Raised:
        task = asyncio.get_running_loop().create_task(coro, context=ctx)
        if not call.attach(task):  # the caller was interrupted before the coroutine started
            task.cancel()
        # A BaseException (KeyboardInterrupt, SystemExit, a test's own) escaping into the portal's task group
        # would stop the portal for every later caller: hand it back to the caller instead.
        try:
            return await task
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread below
            return _Raised(exc)

    future: concurrent.futures.Future[T | _Raised] | None = None
    try:
        future = portal.start_task_soon(boxed)
        while True:
            try:
                out = future.result(timeout=_WAKE_S)
            except concurrent.futures.TimeoutError:
                if future.done():  # the coroutine itself raised TimeoutError
                    raise
                continue
            if isinstance(out, _Raised):
                exc, out.exc = out.exc, None
                raise exc
            return out
    except BaseException:
        call.abandon()  # cancels the coroutine's task, or makes it cancel itself if it has not started yet
        if future is not None:
            future.cancel()  # the portal side (no-op once finished)
        raise


class _Call:
    """One run_sync call's coroutine task, so an interrupted caller can cancel it from its own thread.

    The interruption may land before ``start_task_soon`` returns the future (the coroutine can already be
    running then), so cancellation goes through the task itself, registered here as it starts.
    """

    __slots__ = ("_lock", "_task", "_abandoned")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._task: asyncio.Task[Any] | None = None
        self._abandoned = False

    def attach(self, task: asyncio.Task[Any]) -> bool:
        """Called on the portal loop as the task starts; False if the caller already gave up."""
        with self._lock:
            if self._abandoned:
                return False
            self._task = task
            return True

    def abandon(self) -> None:
        """Called by the interrupted caller: cancel the task (thread-safely) or mark it to cancel itself."""
        with self._lock:
            self._abandoned = True
            task = self._task
        if task is not None and not task.done():
            try:
                task.get_loop().call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the portal's loop is closed: nothing runs there any more
                pass


class _Raised:
    """What a coroutine run by :func:`run_sync` raised, carried back to the calling thread."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException | None) -> None:
        self.exc = exc


def _shutdown() -> None:
    """Stop every portal at interpreter exit, cancelling what still runs there."""
    with _lock:
        portals = list(_portals)
    for entry in reversed(portals):
        try:
            done = entry.portal.start_task_soon(entry.portal.stop, True)
            done.result(timeout=5)
        except Exception:  # noqa: BLE001 - already stopped, or wedged: the thread is a daemon
            pass


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
