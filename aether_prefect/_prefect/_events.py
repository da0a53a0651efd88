"""Prefect events: emit (best effort, through Prefect's own events worker) and flush before exit."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID


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


def flush(timeout_s: float = 10.0) -> None:
    """Block until Prefect's events workers have sent what was queued (so a script exits clean, nothing lost).

    ``EventsWorker.drain_all`` drains only workers that exist (it never starts one) and a later emit starts
    a new worker. Call it from a thread with no running event loop (or through :func:`aflush`).
    """
    from prefect.events.worker import EventsWorker

    try:
        EventsWorker.drain_all(timeout=timeout_s, at_exit=False)
    except Exception:  # noqa: BLE001 - flushing is best effort at close
        pass


async def aflush(timeout_s: float = 10.0) -> None:
    """Async twin of :func:`flush` (runs the blocking drain on a worker thread)."""
    import anyio

    await anyio.to_thread.run_sync(flush, timeout_s)
