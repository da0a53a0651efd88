"""Service plumbing: the base of built-in services, and custom services users register.

Built-in services are created per context (``BoundService``); custom services are
long-lived, one instance per process (``Service``), and see the calling task's
context through ``self.ctx()``.
"""

from __future__ import annotations

import anyio
import asyncio
import atexit
import contextlib
import functools
import inspect
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from aether_prefect._sync import SyncView, run_sync

if TYPE_CHECKING:
    from aether_prefect.context import NodeContext

T = TypeVar("T")


class BoundService:
    """Base of built-in services: bound to one NodeContext, closed with it.

    ``svc.sync`` is the blocking twin of every async method (for sync tasks).
    """

    def __init__(self, ctx: "NodeContext") -> None:
        self._ctx = ctx

    @property
    def ctx(self) -> "NodeContext":
        return self._ctx

    @property
    def sync(self) -> Any:
        """Blocking twin: ``svc.sync.method(...)`` runs ``await svc.method(...)`` to completion."""
        return SyncView(self)

    async def aclose(self) -> None:
        """Release what this service opened for its context (connections, subprocesses)."""


# ---------------------------------------------------------------------------
# Custom services
# ---------------------------------------------------------------------------


class Service:
    """Base class for custom services registered with :func:`register_context_service`.

    ``start()`` runs once before first use, ``close()`` once at process exit (or
    :func:`shutdown_services`); both may be sync or async. Inside methods,
    ``self.ctx()`` is the NodeContext of the calling task.
    """

    def __init__(self) -> None:
        self._aether_started = False
        self._aether_start_lock = threading.Lock()
        self._aether_lock = threading.RLock()

    def start(self) -> Any:
        """Hook: open connections, load models. Called before first use."""

    def close(self) -> Any:
        """Hook: release resources. Called at process exit or shutdown_services()."""

    def ctx(self) -> "NodeContext":
        """The NodeContext of the task calling this service."""
        from aether_prefect.context import current_context

        return current_context()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise a critical section across threads: ``with self.locked(): ...``."""
        with self._aether_lock:
            yield

    @contextlib.asynccontextmanager
    async def alocked(self) -> AsyncIterator[None]:
        """Async form of :meth:`locked` that does not block the event loop while waiting."""
        await anyio.to_thread.run_sync(self._aether_lock.acquire)
        try:
            yield
        finally:
            self._aether_lock.release()

    async def run_blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking ``fn`` in a worker thread so the event loop keeps going."""
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


_BUILTIN_NAMES = frozenset(
    {
        "logger", "artifacts", "kv", "memory", "mem", "llm", "llm_set_key", "rag", "mcp", "channel",
        "svc", "aclose", "close", "config", "store", "sync",
    }
)
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_registry: dict[str, Any] = {}
_registry_lock = threading.Lock()


def register_context_service(name: str, service: Any) -> None:
    """Register ``service`` under ``name`` for every context of this process.

    Register at import time of the module defining your tasks, so every worker
    process of a distributed task runner has it too.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.startswith("_"):
        raise ValueError(f"service name {name!r} must be a Python identifier not starting with '_'")
    if name in _BUILTIN_NAMES:
        raise ValueError(f"service name {name!r} is a built-in NodeContext accessor; choose another name")
    if service is None:
        raise ValueError("service must be an object, not None")
    with _registry_lock:
        old = _registry.get(name)
        _registry[name] = service
    if old is not None and old is not service:
        _close_service(old)


def registered_services() -> dict[str, Any]:
    """A copy of the registry (name -> service)."""
    with _registry_lock:
        return dict(_registry)


def get_service(name: str) -> Any:
    """The service registered as ``name``, started if needed; KeyError if none."""
    with _registry_lock:
        service = _registry.get(name)
    if service is None:
        known = ", ".join(sorted(_registry)) or "none"
        raise KeyError(
            f"no context service named {name!r} (registered: {known}); "
            "register it with register_context_service(name, service)"
        )
    if isinstance(service, Service) and not service._aether_started:
        with service._aether_start_lock:
            if not service._aether_started:
                _call_hook(service.start)
                service._aether_started = True
    return service


def _call_hook(hook: Callable[[], Any]) -> None:
    result = hook()
    if inspect.isawaitable(result):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            run_sync(_await(result))
            return
        # Called from a running loop (sync accessor inside async code): finish on the portal.
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(run_sync, _await(result)).result()


async def _await(aw: Any) -> Any:
    return await aw


def _close_service(service: Any) -> None:
    if isinstance(service, Service):
        if service._aether_started:
            service._aether_started = False
            _call_hook(service.close)
    elif hasattr(service, "close") and callable(service.close):
        _call_hook(service.close)


def shutdown_services() -> None:
    """Close every registered service (also done at process exit) and empty the registry."""
    with _registry_lock:
        services = list(_registry.values())
        _registry.clear()
    for service in services:
        try:
            _close_service(service)
        except Exception:  # noqa: BLE001 - one failing close must not stop the others
            pass


atexit.register(shutdown_services)
