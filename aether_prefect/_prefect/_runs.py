"""The current Prefect run as plain ids and names (read from Prefect's public run contexts; no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunIds:
    """Ids of the Prefect run the caller is in; all None outside a run."""

    flow_run_id: str | None = None
    task_run_id: str | None = None
    deployment_id: str | None = None
    flow_name: str | None = None
    task_run_name: str | None = None
    flow_run_name: str | None = None
    task_name: str | None = None


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
        task_name=task_ctx.task.name if task_ctx and task_ctx.task else None,
    )


def in_flow_run() -> bool:
    """True when a flow run context is active on this thread (a task on a thread/process runner carries it)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx is not None and ctx.flow_run is not None


def task_run_attempt() -> int | None:
    """The current task run's attempt (1, 2, ...), None outside a task run."""
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    if ctx is None or ctx.task_run is None:
        return None
    return int(ctx.task_run.run_count or 1)


def api_url() -> str | None:
    """The configured PREFECT_API_URL, or None when runs use the in-process ephemeral server."""
    from prefect.settings import PREFECT_API_URL

    value = PREFECT_API_URL.value()
    return str(value) if value else None


def ui_url_for(api: str) -> str:
    """The UI's URL for an API URL (``http://host:port/api`` -> ``http://host:port``)."""
    api = api.rstrip("/")
    return api[: -len("/api")] if api.endswith("/api") else api


def ui_url() -> str | None:
    """The Prefect UI's base URL: PREFECT_UI_URL, else derived from the API URL (``.../api`` dropped)."""
    from prefect.settings import PREFECT_UI_URL

    value = PREFECT_UI_URL.value()
    if value:
        return str(value).rstrip("/")
    api = api_url()
    return ui_url_for(api) if api else None


def use_api_url(url: str | None) -> None:
    """Point this process (and children it starts later) at ``url``; None goes back to the ephemeral server."""
    import os

    from prefect.context import refresh_global_settings_context

    if url:
        os.environ["PREFECT_API_URL"] = url
    else:
        os.environ.pop("PREFECT_API_URL", None)
    refresh_global_settings_context()


def flow_run_ui_url(flow_run_id: str) -> str | None:
    """Link to a flow run's page in the UI, or None when no UI can be reached."""
    base = ui_url()
    return f"{base}/runs/flow-run/{flow_run_id}" if base else None


def prefect_home() -> str:
    """Prefect's home folder (PREFECT_HOME) as the current settings see it."""
    from prefect.settings import get_current_settings

    return str(get_current_settings().home)


def prefect_version() -> str:
    import prefect

    return str(prefect.__version__)


@dataclass(frozen=True)
class DurableIdentity:
    """Who a run's journal belongs to, stable across Prefect retries of the task and of the flow run.

    ``flow_run_id`` + ``task_key`` + a hash of the task's parameters name the journal; the journal adds an
    ordinal it claims per flow attempt (``flow_attempt``, ``task_run_id``: used for that claim only), so two
    runs of one task with equal parameters keep separate journals. Never a timestamp; the attempt number and
    task run id never enter the journal's key, so a task retry (same task run) and a flow-run retry (new task
    runs, same order) find the same journal.
    """

    flow_run_id: str
    task_key: str
    params_hash: str
    flow_attempt: int = 1
    task_run_id: str | None = None

    def with_flow_run(self, flow_run_id: str) -> "DurableIdentity":
        """The same identity in another flow run (``replay_from``)."""
        return DurableIdentity(flow_run_id, self.task_key, self.params_hash, self.flow_attempt, self.task_run_id)


def _params_hash(parameters: Any) -> str:
    """Prefect's own stable hash of run parameters (JSON, else cloudpickle); 'unhashable' when neither works."""
    from prefect.utilities.hashing import hash_objects

    try:
        return hash_objects(dict(parameters or {})) or "unhashable"
    except Exception:  # noqa: BLE001 - an odd parameter must not fail the task, only its journal
        return "unhashable"


def durable_identity() -> DurableIdentity | None:
    """The durable identity of the current task run, or of the flow body (task_key ``__flow__``); None outside."""
    from prefect.context import FlowRunContext, TaskRunContext

    task_ctx = TaskRunContext.get()
    if task_ctx is not None and task_ctx.task_run is not None:
        run = task_ctx.task_run
        if run.flow_run_id is None:
            return None  # a task called outside any flow: nothing retries it as a whole
        return DurableIdentity(str(run.flow_run_id), str(run.task_key), _params_hash(task_ctx.parameters),
                               int(run.flow_run_run_count or 1), str(run.id))
    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        return DurableIdentity(str(flow_ctx.flow_run.id), "__flow__", _params_hash(flow_ctx.parameters))
    return None
