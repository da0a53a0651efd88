"""One lock for a custom service, usable from sync and async code on any thread or event loop.

A custom ``Service`` lives for the whole process and is called from sync tasks (worker
threads), async tasks (Prefect's loops) and the sync bridge's portal loops at once, so
neither ``threading.Lock`` (blocks an event loop while waiting) nor ``asyncio.Lock`` (bound
to one loop) fits. This one is owned by a thread (sync use) or an asyncio task (async use),
is re-entrant for that owner, and an async waiter waits without blocking its loop and can
be cancelled without leaving the lock held.
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType
from typing import Any


def _owner() -> Any:
    """Who acquires: the running asyncio task if there is one, else the current thread."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    return task if task is not None else threading.get_ident()


class ServiceLock:
    """``with lock:`` in sync code, ``async with lock:`` in async code: the same mutex.

    Example: ``async with self._lock: self.count += 1``
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._holder: Any = None
        self._depth = 0
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def _try_take(self, me: Any) -> bool:  # caller holds self._cond
        if self._holder is None or self._holder == me:
            self._holder = me
            self._depth += 1
            return True
        return False

    def locked(self) -> bool:
        """True while someone holds the lock (as ``asyncio.Lock.locked()``)."""
        return self._holder is not None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Blocking acquire from sync code (as ``threading.RLock.acquire``)."""
        me = _owner()
        with self._cond:
            if self._try_take(me):
                return True
            if not blocking:
                return False
            ok = self._cond.wait_for(lambda: self._try_take(me), None if timeout < 0 else timeout)
            return bool(ok)

    async def acquire_async(self) -> None:
        """Acquire without blocking the event loop; cancelling the wait leaves nothing held."""
        me = _owner()
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._try_take(me):
                    return
                waiter: asyncio.Future[None] = loop.create_future()
                entry = (loop, waiter)
                self._async_waiters.append(entry)
            try:
                await waiter
            finally:
                with self._cond:
                    if entry in self._async_waiters:
                        self._async_waiters.remove(entry)

    def release(self) -> None:
        """Release one level; the last one wakes every waiter (sync and async) to compete for it."""
        me = _owner()
        with self._cond:
            if self._holder is None or self._holder != me:
                raise RuntimeError("ServiceLock.release() by a thread or task that does not hold it")
            self._depth -= 1
            if self._depth:
                return
            self._holder = None
            self._cond.notify()
            waiters = list(self._async_waiters)
        for loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_wake, fut)
            except RuntimeError:  # that loop is closed: its waiter is gone with it
                pass

    def __enter__(self) -> "ServiceLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> "ServiceLock":
        await self.acquire_async()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<ServiceLock {'locked' if self.locked() else 'unlocked'}>"


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
