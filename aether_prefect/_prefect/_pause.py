"""Human in the loop on Prefect: flow run inputs, and the flow run's Paused state that shows a question's form.

Several questions of one flow run can wait at once, so the channel keeps each question (and its answer) in its
own flow run input, and uses the flow run's single Paused state only to show one question's form in the UI at
a time (``pause_key`` ``aether-<qid>-<n>``). Every call is public Prefect API (the client's flow run input and
state routes, ``RunInput.asave`` for the form schema).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

import httpx
from prefect.input import RunInput  # the base of typed answer forms (re-exported for the channel)

from aether_prefect._prefect._client import with_client

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient


class PauseTimeout(Exception):
    """Nobody submitted the form before the timeout."""


class PauseRefused(Exception):
    """The server refused to pause the flow run (e.g. it is not running any more)."""


@dataclass(frozen=True)
class RunState:
    """The parts of a flow run's state the channel needs."""

    flow_run_id: str
    type: str  # "RUNNING", "PAUSED", "COMPLETED", ...
    name: str | None
    pause_key: str | None
    pause_timeout: dt.datetime | None
    flow_run_name: str | None
    deployment_id: str | None

    @property
    def is_paused(self) -> bool:
        return self.type == "PAUSED"

    @property
    def is_running(self) -> bool:
        return self.type == "RUNNING"

    @property
    def is_suspended(self) -> bool:
        return self.type == "PAUSED" and self.name == "Suspended"

    @property
    def is_final(self) -> bool:
        return self.type in {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


def response_key(pause_key: str) -> str:
    """Where Prefect's resume endpoint stores the form's answer for the Paused state of ``pause_key``."""
    from prefect.input import keyset_from_base_key

    return str(keyset_from_base_key(f"paused-{pause_key}")["response"])


def _state_of(flow_run: Any) -> RunState:
    state = flow_run.state
    details = state.state_details if state is not None else None
    return RunState(
        flow_run_id=str(flow_run.id),
        type=state.type.value if state is not None else "NONE",
        name=state.name if state is not None else None,
        pause_key=details.pause_key if details is not None else None,
        pause_timeout=details.pause_timeout if details is not None else None,
        flow_run_name=flow_run.name,
        deployment_id=str(flow_run.deployment_id) if flow_run.deployment_id else None,
    )


async def run_state(flow_run_id: str) -> RunState:
    """The flow run's current state."""

    async def call(client: "PrefectClient") -> RunState:
        return _state_of(await client.read_flow_run(UUID(flow_run_id)))

    return await with_client(call)


async def put_input(flow_run_id: str, key: str, value: Any) -> bool:
    """Store ``value`` (JSON) under ``key`` on the flow run; False when ``key`` is already taken (nothing changed)."""

    async def call(client: "PrefectClient") -> bool:
        try:
            await client.create_flow_run_input(UUID(flow_run_id), key=key, value=json.dumps(value))
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 409:
                return False
            raise
        return True

    return await with_client(call)


async def get_input(flow_run_id: str, key: str) -> Any | None:
    """The JSON value under ``key`` on the flow run; None when there is none."""

    async def call(client: "PrefectClient") -> Any | None:
        try:
            raw = await client.read_flow_run_input(UUID(flow_run_id), key=key)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 404:
                return None
            raise
        return json.loads(raw)

    return await with_client(call)


async def list_inputs(flow_run_id: str, prefix: str, limit: int = 200) -> dict[str, Any]:
    """Every input of the flow run whose key starts with ``prefix``, as ``{key: JSON value}``."""

    async def call(client: "PrefectClient") -> dict[str, Any]:
        rows = await client.filter_flow_run_input(UUID(flow_run_id), key_prefix=prefix, limit=limit, exclude_keys=set())
        return {row.key: json.loads(row.value) for row in rows}

    return await with_client(call)


async def propose_pause(flow_run_id: str, pause_key: str, timeout_s: int, form: type[RunInput]) -> bool:
    """Pause the flow run showing ``form`` (its description is the prompt); False if it is already paused.

    :class:`PauseRefused` when the run cannot pause at all (not running, or the server aborted the pause).
    """
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.input import keyset_from_paused_state
    from prefect.states import Paused

    state = Paused(timeout_seconds=timeout_s, reschedule=False, pause_key=pause_key)
    keyset = keyset_from_paused_state(state)
    state.state_details.run_input_keyset = keyset

    async def call(client: "PrefectClient") -> Any:
        return await client.set_flow_run_state(UUID(flow_run_id), state)

    result = await with_client(call)
    if result.status == SetStateStatus.ACCEPT:
        await form.asave(keyset, flow_run_id=UUID(flow_run_id))
        return True
    if result.status == SetStateStatus.ABORT:
        raise PauseRefused(str(getattr(result.details, "reason", "") or "the server aborted the pause"))
    current = await run_state(flow_run_id)
    if current.is_paused or current.is_running:
        return False  # another question holds the pause (or it moved on): wait for our turn
    raise PauseRefused(f"the flow run is {current.type.lower()}, not running")


async def release_pause(flow_run_id: str, pause_key: str) -> bool:
    """Set the flow run Running again if it is paused for ``pause_key`` (so another question can show); True if done."""
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.states import Running

    current = await run_state(flow_run_id)
    if not current.is_paused or current.pause_key != pause_key:
        return False

    async def call(client: "PrefectClient") -> Any:
        return await client.set_flow_run_state(UUID(flow_run_id), Running())

    result = await with_client(call)
    return bool(result.status == SetStateStatus.ACCEPT)


async def paused_flow_runs(limit: int = 200) -> list[tuple[RunState, str | None]]:
    """Flow runs on the server that are Paused right now, with their flow's name."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    async def call(client: "PrefectClient") -> list[tuple[RunState, str | None]]:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))),
            limit=limit,
        )
        names: dict[Any, str | None] = {}
        out = []
        for run in runs:
            if run.flow_id not in names:
                try:
                    names[run.flow_id] = (await client.read_flow(run.flow_id)).name
                except httpx.HTTPStatusError:
                    names[run.flow_id] = None
            out.append((_state_of(run), names[run.flow_id]))
        return out

    return await with_client(call)


def task_identity() -> str | None:
    """The current task and its inputs (task key + parameters): the same when a rerun of the flow run reaches it.

    Prefect's dynamic key is random per attempt, so it cannot be used; the injected ``context`` is left out.
    """
    import hashlib

    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    if ctx is None or ctx.task_run is None:
        return None
    params = {k: v for k, v in (ctx.parameters or {}).items() if k != "context"}
    data = json.dumps(params, sort_keys=True, default=lambda o: type(o).__qualname__)
    return f"{ctx.task_run.task_key}:{hashlib.sha256(data.encode()).hexdigest()}"


def results_persisted() -> bool:
    """True when the current flow run persists results (what a rerun after suspension needs to skip done tasks)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return bool(ctx is not None and ctx.persist_result)


async def suspend_for_input(flow_run_id: str, key: str, timeout_s: int, form: type[RunInput]) -> Any:
    """Suspend the flow run (its process exits; the answer reschedules it) showing ``form``.

    Returns the answer when this suspend already fired and the run was resumed with it (the rerun). Otherwise
    raises Prefect's ``Pause`` signal, which ends the asking task and the flow run's process; the flow run of a
    deployment is rerun by its worker once the form is answered. :class:`PauseRefused` when it cannot suspend.
    """
    from prefect.exceptions import Pause
    from prefect.flow_runs import asuspend_flow_run

    try:
        answer = await asuspend_flow_run(wait_for_input=form, flow_run_id=UUID(flow_run_id), timeout=timeout_s, key=key)
    except RuntimeError as exc:
        raise PauseRefused(str(exc)) from exc
    if answer is not None:
        return answer

    async def call(client: "PrefectClient") -> Any:
        return (await client.read_flow_run(UUID(flow_run_id))).state

    raise Pause(state=await with_client(call))


async def resume_with_input(flow_run_id: str, run_input: dict[str, Any]) -> None:
    """Resume a paused or suspended flow run with its form's answer (a suspended one is rescheduled)."""
    from prefect.flow_runs import aresume_flow_run

    await aresume_flow_run(UUID(flow_run_id), run_input=run_input)


async def pause_for_input(model: type[Any], *, timeout_s: int, poll_interval_s: int, key: str | None = None) -> Any:
    """Prefect's own one-question pause of the current flow run; :class:`PauseTimeout` after ``timeout_s``."""
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import apause_flow_run

    kwargs: dict[str, Any] = {"wait_for_input": model, "timeout": timeout_s, "poll_interval": poll_interval_s}
    if key is not None:
        kwargs["key"] = key
    try:
        return await apause_flow_run(**kwargs)
    except FlowPauseTimeout as exc:
        raise PauseTimeout(str(exc)) from exc


__all__ = [
    "PauseRefused",
    "PauseTimeout",
    "RunInput",
    "RunState",
    "get_input",
    "list_inputs",
    "pause_for_input",
    "paused_flow_runs",
    "propose_pause",
    "put_input",
    "release_pause",
    "response_key",
    "results_persisted",
    "resume_with_input",
    "run_state",
    "suspend_for_input",
    "task_identity",
]
