"""Prefect events: emit (best effort, through Prefect's own events worker) and flush what was emitted.

Prefect sends events from a background worker. A script that exits while that worker still holds our
events makes Prefect print ``Still processing items: N items remaining...`` and may lose them, so a
context that ends waits (bounded) for the events it queued: :func:`aflush` from ``NodeContext.aclose``.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any
from uuid import UUID

#: Set by :func:`emit`, cleared by a flush that saw the worker's queue empty: a flush with nothing to
#: wait for costs nothing (no thread hop, no worker started).
_pending = threading.Event()
_waiter: threading.Thread | None = None
_waiter_lock = threading.Lock()


def emit(event: str, *, resource: dict[str, str], related: list[dict[str, str]] | None = None,
         payload: dict[str, Any] | None = None, id: UUID | None = None, occurred: datetime | None = None) -> None:
    """Queue one event on Prefect's events worker (returns at once; delivery is asynchronous)."""
    from prefect.events import emit_event

    kwargs: dict[str, Any] = {}
    if id is not None:
        kwargs["id"] = id
    if occurred is not None:
        kwargs["occurred"] = occurred
    emit_event(event=event, resource=resource, related=related or [], payload=payload or {}, **kwargs)
    _pending.set()


def pending() -> bool:
    """True when events were emitted here since the last complete flush."""
    return _pending.is_set()


def flush(timeout_s: float = 30.0) -> bool:
    """Block until Prefect's events worker has sent every queued event (at most ``timeout_s``); True if it did.

    Uses the worker's public ``wait_until_empty`` (the worker keeps running; a later emit needs no restart).
    That call has no timeout, so it runs on one shared daemon thread that a later flush joins again: a
    server that is down costs each flush ``timeout_s`` at most, and never a thread per call.
    """
    global _waiter
    if not _pending.is_set():
        return True
    from prefect.events.worker import EventsWorker

    with _waiter_lock:
        if _waiter is None or not _waiter.is_alive():
            _pending.clear()  # an emit from now on sets it again and is waited for by the next flush
            try:
                worker = EventsWorker.instance()
            except Exception:  # noqa: BLE001 - flushing is best effort; Prefect drains again at exit
                return False
            _waiter = threading.Thread(target=worker.wait_until_empty, name="aether-events-flush", daemon=True)
            _waiter.start()
        waiter = _waiter
    waiter.join(timeout_s)
    if waiter.is_alive():
        _pending.set()
        return False
    return True


async def aflush(timeout_s: float = 30.0) -> bool:
    """Async twin of :func:`flush`: returns at once when nothing is pending, else waits on a worker thread."""
    if not _pending.is_set():
        return True
    import anyio

    return await anyio.to_thread.run_sync(flush, timeout_s)
