"""Small bridges to Prefect: the current run's ids, and one API client per event loop."""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient


@dataclass(frozen=True)
class RunIds:
    """Ids of the Prefect run the caller is in; all None outside a run."""

    flow_run_id: str | None = None
    task_run_id: str | None = None
    deployment_id: str | None = None
    flow_name: str | None = None
    task_run_name: str | None = None
    flow_run_name: str | None = None


def current_run_ids() -> RunIds:
    """Read the ids from Prefect's run contexts (contextvars); no network call."""
    from prefect.context import FlowRunContext, TaskRunContext

    task_ctx = TaskRunContext.get()
    flow_ctx = FlowRunContext.get()
    flow_run = flow_ctx.flow_run if flow_ctx else None
    task_run = task_ctx.task_run if task_ctx else None
    flow_run_id = str(flow_run.id) if flow_run else (str(task_run.flow_run_id) if task_run and task_run.flow_run_id else None)
    return RunIds(
        flow_run_id=flow_run_id,
        task_run_id=str(task_run.id) if task_run else None,
        deployment_id=str(flow_run.deployment_id) if flow_run and flow_run.deployment_id else None,
        flow_name=flow_ctx.flow.name if flow_ctx and flow_ctx.flow else None,
        task_run_name=task_run.name if task_run else None,
        flow_run_name=flow_run.name if flow_run else None,
    )


_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PrefectClient]" = weakref.WeakKeyDictionary()
_client_lock = threading.Lock()


async def prefect_client() -> "PrefectClient":
    """One entered PrefectClient per process and event loop (Prefect builds a new one per call otherwise)."""
    from prefect.client.orchestration import get_client

    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is not None and _pid_ok(client):
        return client
    client = get_client()
    await client.__aenter__()
    client._aether_pid = os.getpid()  # type: ignore[attr-defined]
    with _client_lock:
        _clients[loop] = client
    return client


def _pid_ok(client: object) -> bool:
    return getattr(client, "_aether_pid", None) == os.getpid()


def api_url() -> str | None:
    """The configured PREFECT_API_URL, or None when runs use the in-process ephemeral server."""
    from prefect.settings import PREFECT_API_URL

    value = PREFECT_API_URL.value()
    return str(value) if value else None
