"""Questions that wait in a flow run: one record and one answer slot per question, so several can wait at once.

Each question has an id ``qid`` and two flow run inputs: ``aether-question-<qid>`` (what was asked, by which
task, until when) and ``aether-answer-<qid>``, the outcome slot. The slot is written once (the server refuses
a second write), by whoever comes first: an answer (inbox, CLI, or the UI form copied over by the asking
task) or the asking task closing the question (timeout, cancelled). So an answer that races a timeout either
lands and is used, or is refused with a clear error; never both.

The UI shows one form per flow run (its Paused state), so waiting questions take turns holding the pause: a
question whose flow run is Running pauses it with its own ``pause_key`` (``aether-<qid>-<n>``); an answer
releases the pause and the next waiting question takes it. Answers through the inbox may come in any order.
"""

from __future__ import annotations

import datetime as dt
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import anyio
import pydantic

from aether_prefect._prefect import pause
from aether_prefect.errors import ChannelError, ChannelTimeout
from aether_prefect.services.channel._forms import Kind, Option, form_for, short, validate_answer

QUESTION_PREFIX = "aether-question-"
ANSWER_PREFIX = "aether-answer-"
_GRACE_S = 30  # the Paused state outlives the question by this much, so the asking task (not the server) ends it


class Question(pydantic.BaseModel):
    """What was asked: stored as the flow run input ``aether-question-<qid>``, read by the inbox."""

    qid: str
    flow_run_id: str
    kind: Kind
    prompt: str
    options: list[Option] = []
    multiple: bool = False
    flow_name: str | None = None
    flow_run_name: str | None = None
    task_name: str | None = None
    task_run_id: str | None = None
    asked_at: dt.datetime
    timeout_at: dt.datetime
    ui_url: str | None = None


class Outcome(pydantic.BaseModel):
    """The answer slot ``aether-answer-<qid>``: either ``answer`` (the form's fields) or ``closed`` (why not)."""

    answer: dict[str, Any] | None = None
    closed: Literal["timeout", "cancelled", "run ended"] | None = None
    via: str | None = None
    at: dt.datetime


def new_question(
    flow_run_id: str, kind: Kind, prompt: str, timeout_s: float, *, options: Sequence[Option] = (),
    multiple: bool = False, qid: str | None = None, **where: Any,
) -> Question:
    now = dt.datetime.now(dt.timezone.utc)
    return Question(
        qid=qid or uuid.uuid4().hex, flow_run_id=flow_run_id, kind=kind, prompt=prompt, options=list(options),
        multiple=multiple, asked_at=now, timeout_at=now + dt.timedelta(seconds=timeout_s), **where,
    )


async def read_outcome(flow_run_id: str, qid: str) -> Outcome | None:
    raw = await pause.get_input(flow_run_id, ANSWER_PREFIX + qid)
    return Outcome.model_validate(raw) if raw is not None else None


async def write_outcome(flow_run_id: str, qid: str, outcome: Outcome) -> Outcome:
    """Write the outcome slot once; returns the outcome that holds (ours, or the one written first)."""
    if await pause.put_input(flow_run_id, ANSWER_PREFIX + qid, outcome.model_dump(mode="json")):
        return outcome
    existing = await read_outcome(flow_run_id, qid)
    if existing is None:  # pragma: no cover - the server said the key exists
        raise ChannelError(f"the answer slot of question {qid} exists but cannot be read")
    return existing


class _Waiter:
    """The asking task's side: keep the question visible (take the pause when free) until its slot is filled."""

    def __init__(self, q: Question, poll_s: float) -> None:
        self.q = q
        self.poll_s = poll_s
        self.form = form_for(q.kind, q.options, q.multiple).with_initial_data(description=q.prompt)
        self.pause_keys: list[str] = []

    async def _ui_answer(self) -> dict[str, Any] | None:
        """An answer submitted through the UI form of one of our pauses (Prefect stored it under the pause's keyset)."""
        for key in reversed(self.pause_keys):
            data = await pause.get_input(self.q.flow_run_id, pause.response_key(key))
            if data is not None:
                return validate_answer(self.q.kind, self.q.options, self.q.multiple, data)
        return None

    async def _outcome(self) -> Outcome | None:
        outcome = await read_outcome(self.q.flow_run_id, self.q.qid)
        if outcome is None:
            ui = await self._ui_answer()
            if ui is not None:
                now = dt.datetime.now(dt.timezone.utc)
                outcome = await write_outcome(self.q.flow_run_id, self.q.qid, Outcome(answer=ui, via="ui", at=now))
        return outcome

    async def _close(self, why: Literal["timeout", "cancelled", "run ended"]) -> Outcome:
        now = dt.datetime.now(dt.timezone.utc)
        return await write_outcome(self.q.flow_run_id, self.q.qid, Outcome(closed=why, at=now))

    async def run(self, deadline: float) -> dict[str, Any]:
        run_id = self.q.flow_run_id
        while True:
            outcome = await self._outcome()
            if outcome is not None:
                return self._result(outcome)
            state = await pause.run_state(run_id)
            remaining = deadline - time.monotonic()
            if state.is_final or state.type == "CANCELLING":
                return self._result(await self._close("run ended"))
            if remaining <= 0:
                return self._result(await self._close("timeout"))
            if state.is_running:
                key = f"aether-{self.q.qid}-{len(self.pause_keys) + 1}"
                try:
                    if await pause.propose_pause(run_id, key, math.ceil(remaining) + _GRACE_S, self.form):
                        self.pause_keys.append(key)
                        continue  # re-read at once: an answer may have landed while we paused
                except pause.PauseRefused as exc:
                    raise ChannelError(f"could not pause flow run {run_id} to ask {short(self.q.prompt)!r}: {exc}") from exc
            await anyio.sleep(min(self.poll_s, max(remaining, 0.05)))

    def _result(self, outcome: Outcome) -> dict[str, Any]:
        if outcome.answer is not None:
            return outcome.answer
        if outcome.closed == "timeout":
            raise ChannelTimeout(
                f"nobody answered {short(self.q.prompt)!r} within "
                f"{(self.q.timeout_at - self.q.asked_at).total_seconds():g}s (flow run {self.q.flow_run_id}); "
                "answer sooner in the Prefect UI or with `aether-prefect answer`, or pass a larger timeout_s"
            )
        raise ChannelError(f"question {short(self.q.prompt)!r} was closed ({outcome.closed}) before an answer came")

    async def release(self) -> None:
        """Give the pause back (if we hold it), so the next waiting question shows and tasks run again."""
        if self.pause_keys:
            await pause.release_pause(self.q.flow_run_id, self.pause_keys[-1])


async def ask(
    q: Question, *, poll_s: float, on_asked: Callable[[Question], Awaitable[None]] | None = None
) -> dict[str, Any]:
    """Store ``q``, show it, and wait for its answer (the form's fields); ChannelTimeout at ``q.timeout_at``."""
    await pause.put_input(q.flow_run_id, QUESTION_PREFIX + q.qid, q.model_dump(mode="json"))
    waiter = _Waiter(q, poll_s)
    deadline = time.monotonic() + (q.timeout_at - q.asked_at).total_seconds()
    answered = False
    try:
        if on_asked is not None:
            await on_asked(q)
        result = await waiter.run(deadline)
        answered = True
        return result
    finally:
        with anyio.CancelScope(shield=True):
            if not answered:
                try:
                    await waiter._close("cancelled")  # no-op when the slot is already filled
                except Exception:  # noqa: BLE001 - best effort; the question's timeout still closes it
                    pass
            try:
                await waiter.release()
            except Exception:  # noqa: BLE001 - the pause's own timeout ends it
                pass


def replay_id(flow_run_id: str, task_identity: str, kind: Kind, prompt: str, options: Sequence[Option], multiple: bool) -> str:
    """The question id a rerun of the same flow run finds again: same task (key + dynamic key), same question."""
    import hashlib
    import json

    data = json.dumps([flow_run_id, task_identity, kind, prompt, [o.model_dump() for o in options], multiple])
    return hashlib.sha256(data.encode()).hexdigest()[:32]


async def ask_suspending(q: Question, *, on_asked: Callable[[Question], Awaitable[None]] | None = None) -> dict[str, Any]:
    """``hold_worker=False``: answer from an earlier attempt if there is one, else suspend the flow run.

    Suspending raises Prefect's ``Pause`` signal: the task and the flow run's process end, and the worker reruns
    the flow run once the question is answered; the rerun reaches this same question (same ``qid``) and returns
    the recorded answer.
    """
    outcome = await read_outcome(q.flow_run_id, q.qid)
    if outcome is not None:
        return _Waiter(q, 0)._result(outcome)
    remaining = (q.timeout_at - q.asked_at).total_seconds()
    if await pause.put_input(q.flow_run_id, QUESTION_PREFIX + q.qid, q.model_dump(mode="json")) and on_asked:
        await on_asked(q)
    form = form_for(q.kind, q.options, q.multiple).with_initial_data(description=q.prompt)
    try:
        data = await pause.suspend_for_input(q.flow_run_id, f"aether-{q.qid}-s", math.ceil(remaining), form)
    except pause.PauseRefused as exc:
        raise ChannelError(f"could not suspend flow run {q.flow_run_id} to ask {short(q.prompt)!r}: {exc}") from exc
    fields = validate_answer(q.kind, q.options, q.multiple, data.model_dump() if hasattr(data, "model_dump") else data)
    now = dt.datetime.now(dt.timezone.utc)
    return _Waiter(q, 0)._result(await write_outcome(q.flow_run_id, q.qid, Outcome(answer=fields, via="ui", at=now)))
