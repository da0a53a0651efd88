"""Service plumbing: the base of built-in services, and custom services users register.

Built-in services are created per context (``BoundService``); custom services are
long-lived, one instance per process (``Service``), and see the calling task's
context through ``self.ctx()``.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import functools
import inspect
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from aether_prefect._sync import SyncView, maybe_await, run_sync
from aether_prefect.errors import ValidationError
from aether_prefect.services._service_lock import ServiceLock

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
        """Release what this service opened for its context (connections, subprocesses).

        Example: ``await context.kv().aclose()  # the context does this when the task ends``
        """

    def close_blocking(self) -> bool:
        """Close on the calling thread when this service's close needs no event loop (True); else do nothing and
        return False (then :meth:`aclose` must run). Lets a sync task's context close without a hop to the portal.

        Example: ``if not svc.close_blocking(): await svc.aclose()``
        """
        return type(self).aclose is BoundService.aclose


# ---------------------------------------------------------------------------
# Custom services
# ---------------------------------------------------------------------------


class Service:
    """Base class for custom services registered with :func:`register_context_service`.

    ``start()`` runs once before first use, ``close()`` once at process exit (or
    :func:`shutdown_services`); both may be sync or async. Inside methods,
    ``self.ctx()`` is the NodeContext of the calling task. ``self._lock`` is one
    mutex for sync and async code (``with self.locked():``, ``async with self.alocked():``,
    ``async with self._lock:``, ``@self.critical()``). Subclasses need not call
    ``super().__init__()`` (``@dataclass`` subclasses included): this state is created on first use.
    """

    def __init__(self) -> None:
        _state(self)

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: a subclass that skipped super().__init__().
        if name in _LAZY:
            return _state(self)[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def start(self) -> Any:
        """Hook: open connections, load models. Called before first use.

        Example: ``await context.my_service().start()  # called for you on first use``
        """

    def close(self) -> Any:
        """Hook: release resources. Called at process exit or shutdown_services().

        Example: ``await context.my_service().close()  # called for you when the context closes``
        """

    def ctx(self) -> "NodeContext":
        """The NodeContext of the task calling this service.

        Example: ``self.ctx().logger().info("inside %s", self.ctx().node_id)``
        """
        from aether_prefect.context import current_context

        return current_context()

    @property
    def sync(self) -> Any:
        """Blocking twin for sync tasks, as for built-in services: ``context.db().sync.query("q")``."""
        return SyncView(self)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise a critical section across threads and tasks: ``with self.locked(): ...``.

        Example: ``with self.locked(): self.count += 1``
        """
        with self._lock:
            yield

    @contextlib.asynccontextmanager
    async def alocked(self) -> AsyncIterator[None]:
        """Async form of :meth:`locked`, the same lock, never blocking the event loop: ``async with self.alocked(): ...``.

        Example: ``async with self.alocked(): self.count += 1``
        """
        async with self._lock:
            yield

    def critical(self) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """AetherGraph's decorator: run ``fn`` (sync or async) holding ``self._lock``; the wrapper is async.

        Example: ``await self.critical()(self._bump)(1)``
        """

        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(fn)
            async def wrapped(*args: Any, **kwargs: Any) -> Any:
                async with self._lock:
                    return await maybe_await(fn(*args, **kwargs))

            return wrapped

        return deco

    async def run_blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking ``fn`` in a worker thread so the event loop keeps going.

        Example: ``rows = await self.run_blocking(db.fetch_all, "select 1")``
        """
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


_LAZY = ("_lock", "_aether_started", "_aether_start_lock")


def _state(service: Service) -> dict[str, Any]:
    """The base class's per-instance state, created once (thread-safe: dict.setdefault is atomic)."""
    d = vars(service)
    d.setdefault("_lock", ServiceLock())
    d.setdefault("_aether_started", False)
    d.setdefault("_aether_start_lock", threading.Lock())
    return d


_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_registry: dict[str, Any] = {}
_registry_lock = threading.Lock()
# Services whose ``start()`` is running in this call chain. The portal and worker threads inherit it (run_sync
# copies the caller's contextvars), so a start that reaches its own service (or a cycle back to it) gets the
# service as it is, the way a circular import gets the half-initialised module, instead of waiting on itself.
_starting: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar("aether_starting", default=frozenset())


def _context_names() -> frozenset[str]:
    """Every public name a NodeContext already answers to (methods, properties, ids set in ``__init__``)."""
    from aether_prefect.context import NodeContext

    return frozenset(n for n in dir(NodeContext) if not n.startswith("_")) | frozenset(
        NodeContext.__annotations__
    )


def register_context_service(name: str, service: Any) -> None:
    """Register ``service`` under ``name`` for every context of this process.

    Register at import time of the module defining your tasks, so every worker
    process of a distributed task runner has it too. Then ``context.<name>`` is a
    handle on it: ``context.db.query(...)``, ``context.db()`` (the service), ``context.db(x)`` (its ``__call__``).
    Example: ``register_context_service("materials", MaterialsDB())``
    """
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.startswith("_"):
        raise ValidationError(
            f"service name {name!r} must be a Python identifier not starting with '_' (e.g. 'materials')"
        )
    if name in _context_names():
        raise ValidationError(
            f"service name {name!r} clashes with NodeContext.{name}, which every context already has, so "
            f"context.{name} could never reach your service; register it under another name"
        )
    if service is None:
        raise ValidationError("service must be an object, not None")
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
    if isinstance(service, Service):
        state = _state(service)
        starting = _starting.get()
        if not state["_aether_started"] and id(service) not in starting:
            with state["_aether_start_lock"]:
                if not state["_aether_started"]:
                    token = _starting.set(starting | {id(service)})
                    try:
                        _call_hook(service.start)
                    finally:
                        _starting.reset(token)
                    state["_aether_started"] = True
    return service


class ServiceHandle:
    """What ``context.<name>`` returns for a custom service (AetherGraph's handle).

    Attribute access reaches the service (``context.materials.lookup("Si")``); calling
    with no arguments returns the service (``context.materials()``); calling with
    arguments calls it (``context.predictor("hello")`` is ``service("hello")``).
    """

    __slots__ = ("_name", "_service")

    def __init__(self, name: str, service: Any) -> None:
        self._name = name
        self._service = service

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._service, attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not args and not kwargs:
            return self._service
        if not callable(self._service):
            raise TypeError(
                f"service {self._name!r} ({type(self._service).__name__}) is not callable; call "
                f"context.{self._name}() with no arguments to get it, then call its methods"
            )
        return self._service(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<service handle {self._name!r}: {self._service!r}>"


def _call_hook(hook: Callable[[], Any]) -> None:
    """Run a sync or async lifecycle hook to completion from sync code (any thread, any loop)."""
    result = hook()
    if inspect.isawaitable(result):
        run_sync(_await(result))


async def _await(aw: Any) -> Any:
    return await aw


def _close_service(service: Any) -> None:
    if isinstance(service, Service):
        state = _state(service)
        if state["_aether_started"]:
            state["_aether_started"] = False
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
