"""The inbox: every question waiting on the Prefect server, and answering one from anywhere (Python or CLI).

An answer is checked against the question's own form before anything is written, and lands in the question's
answer slot only if that slot is still empty (see ``_questions``): wrong type, a run that is not waiting, a
question already answered or timed out each raise a typed error and change nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import pydantic

from aether_prefect._prefect import pause
from aether_prefect._sync import run_sync
from aether_prefect.errors import ChannelValidationError, QuestionNotWaiting
from aether_prefect.services.channel._forms import Kind, Option, validate_answer
from aether_prefect.services.channel._questions import ANSWER_PREFIX, QUESTION_PREFIX, Outcome, Question, write_outcome


class PendingQuestion(pydantic.BaseModel):
    """A question waiting for a person: where it was asked, what it asks, until when, and where to answer it."""

    flow_run_id: str
    question_id: str
    flow_name: str | None
    flow_run_name: str | None
    task_name: str | None
    kind: Kind
    prompt: str
    options: list[Option]
    multiple: bool
    asked_at: dt.datetime
    timeout_at: dt.datetime
    ui_url: str | None
    showing: bool  # True when the flow run's page shows this question's form right now


def _pending(q: Question, state: pause.RunState, flow_name: str | None) -> PendingQuestion:
    return PendingQuestion(
        flow_run_id=q.flow_run_id, question_id=q.qid, flow_name=q.flow_name or flow_name,
        flow_run_name=q.flow_run_name or state.flow_run_name, task_name=q.task_name, kind=q.kind, prompt=q.prompt,
        options=q.options, multiple=q.multiple, asked_at=q.asked_at, timeout_at=q.timeout_at, ui_url=q.ui_url,
        showing=state.is_paused and (state.pause_key or "").startswith(f"aether-{q.qid}-"),
    )


async def _waiting_in(state: pause.RunState, flow_name: str | None) -> list[PendingQuestion]:
    """The questions of one flow run still waiting: recorded, no outcome yet, not past their timeout."""
    questions = await pause.list_inputs(state.flow_run_id, QUESTION_PREFIX)
    outcomes = await pause.list_inputs(state.flow_run_id, ANSWER_PREFIX)
    now = dt.datetime.now(dt.timezone.utc)
    out = []
    for key, raw in questions.items():
        q = Question.model_validate(raw)
        if ANSWER_PREFIX + q.qid not in outcomes and q.timeout_at > now:
            out.append(_pending(q, state, flow_name))
    return sorted(out, key=lambda p: p.asked_at)


async def apending_questions(flow_run_id: str | None = None) -> list[PendingQuestion]:
    """Every question waiting on the server (or in one flow run), oldest first.

    >>> for q in await apending_questions(): print(q.flow_run_id, q.prompt, q.ui_url)
    """
    if flow_run_id is not None:
        state = await pause.run_state(str(flow_run_id))
        return await _waiting_in(state, None) if state.is_paused or state.is_running else []
    out: list[PendingQuestion] = []
    for state, flow_name in await pause.paused_flow_runs():
        out.extend(await _waiting_in(state, flow_name))
    return sorted(out, key=lambda p: p.asked_at)


def pending_questions(flow_run_id: str | None = None) -> list[PendingQuestion]:
    """Blocking twin of :func:`apending_questions`.

    >>> [q.prompt for q in pending_questions()]
    """
    return run_sync(apending_questions(flow_run_id))


def _form_data(
    q: PendingQuestion, *, text: str | None, choice: str | Sequence[str] | None, approve: bool | None, reason: str | None
) -> dict[str, Any]:
    """The answer as the question's form fields; ChannelValidationError when it does not fit the question's kind."""
    given = [n for n, v in (("text", text), ("choice", choice), ("approve/reject", approve)) if v is not None]
    where = f"question {q.question_id} ({q.kind}: {q.prompt[:80]!r})"
    if q.kind == "text":
        if given != ["text"] or reason is not None:
            raise ChannelValidationError(f"{where} takes a text answer: pass text=... (--text), nothing else")
        return {"answer": text}
    labels = {o.id.casefold(): o.label for o in q.options} | {o.label.casefold(): o.label for o in q.options}

    def label_of(value: str) -> str:
        hit = labels.get(str(value).strip().casefold())
        if hit is None:
            raise ChannelValidationError(f"{value!r} is not an option of {where}; options: {[o.label for o in q.options]}")
        return hit

    if q.kind == "approval":
        if len(given) != 1 or given[0] == "text":
            raise ChannelValidationError(
                f"{where} takes approve=True/False (--approve/--reject) or choice=..., plus an optional reason"
            )
        value = label_of(str(choice)) if choice is not None else q.options[0 if approve else 1].label
        return {"choice": value, "reason": reason or ""}
    # choices
    if "approve/reject" in given or choice is None or reason is not None:
        raise ChannelValidationError(
            f"{where} takes choice=... (--choice, repeatable when several may be picked), and optional text"
        )
    picked = [choice] if isinstance(choice, str) else list(choice)
    if not q.multiple and len(picked) != 1:
        raise ChannelValidationError(f"{where} takes exactly one choice, got {picked!r}")
    labels_picked = [label_of(c) for c in picked]
    data: dict[str, Any] = {"choices": labels_picked} if q.multiple else {"choice": labels_picked[0]}
    data["text"] = text or ""
    return data


async def aanswer(
    flow_run_id: str, *, text: str | None = None, choice: str | Sequence[str] | None = None,
    approve: bool | None = None, reason: str | None = None, question_id: str | None = None, via: str = "api",
) -> PendingQuestion:
    """Answer a waiting question of ``flow_run_id`` (its only one, or ``question_id``); returns the question answered.

    >>> await aanswer(run_id, approve=False, reason="tests are red")
    """
    flow_run_id = str(flow_run_id)
    try:
        state = await pause.run_state(flow_run_id)
    except Exception as exc:  # noqa: BLE001 - an unknown id or an unreachable server: nothing was written
        raise QuestionNotWaiting(f"flow run {flow_run_id} could not be read ({type(exc).__name__}): check the id") from exc
    waiting = await _waiting_in(state, None) if (state.is_paused or state.is_running) else []
    if question_id is not None:
        waiting = [q for q in waiting if q.question_id == question_id]
    if not waiting:
        raise QuestionNotWaiting(await _why_not_waiting(flow_run_id, state, question_id))
    if len(waiting) > 1:
        raise ChannelValidationError(
            f"flow run {flow_run_id} has {len(waiting)} waiting questions; pick one with question_id= (--question): "
            + "; ".join(f"{q.question_id}: {q.prompt[:60]!r}" for q in waiting)
        )
    q = waiting[0]
    data = _form_data(q, text=text, choice=choice, approve=approve, reason=reason)
    try:
        fields = validate_answer(q.kind, q.options, q.multiple, data)
    except Exception as exc:
        raise ChannelValidationError(str(exc)) from exc
    now = dt.datetime.now(dt.timezone.utc)
    if q.timeout_at <= now:
        raise QuestionNotWaiting(f"question {q.question_id} timed out at {q.timeout_at.isoformat()}; nothing was changed")
    ours = Outcome(answer=fields, via=via, at=now)
    if state.is_suspended and q.showing:
        # No process waits on a suspended run: the resume (the server checks the form's schema) reschedules it,
        # and its rerun may record the same answer in the slot before we do.
        try:
            await pause.resume_with_input(flow_run_id, fields)
        except Exception as exc:  # noqa: BLE001 - refused by the server: nothing was changed
            raise QuestionNotWaiting(f"flow run {flow_run_id} could not be resumed ({exc}); nothing was changed") from exc
        held = await write_outcome(flow_run_id, q.question_id, ours)
        if held is not ours and held.answer != fields:  # pragma: no cover - another answer won the race
            raise QuestionNotWaiting(_closed_reason(q.question_id, held))
        return q
    held = await write_outcome(flow_run_id, q.question_id, ours)
    if held is not ours:
        raise QuestionNotWaiting(_closed_reason(q.question_id, held))
    if q.showing and state.pause_key:
        await pause.release_pause(flow_run_id, state.pause_key)  # the asking task also releases it; first one wins
    return q


def answer(
    flow_run_id: str, *, text: str | None = None, choice: str | Sequence[str] | None = None,
    approve: bool | None = None, reason: str | None = None, question_id: str | None = None,
) -> PendingQuestion:
    """Blocking twin of :func:`aanswer`.

    >>> answer(run_id, choice="safe")
    """
    return run_sync(aanswer(flow_run_id, text=text, choice=choice, approve=approve, reason=reason, question_id=question_id))


def _closed_reason(qid: str, outcome: Outcome) -> str:
    if outcome.answer is not None:
        return f"question {qid} was already answered ({outcome.via}, {outcome.at.isoformat()}); nothing was changed"
    return f"question {qid} is closed ({outcome.closed}, {outcome.at.isoformat()}); nothing was changed"


async def _why_not_waiting(flow_run_id: str, state: pause.RunState, qid: str | None) -> str:
    questions = await pause.list_inputs(flow_run_id, QUESTION_PREFIX) if not state.type == "NONE" else {}
    outcomes = await pause.list_inputs(flow_run_id, ANSWER_PREFIX) if questions else {}
    if qid is not None and QUESTION_PREFIX + qid not in questions:
        return f"flow run {flow_run_id} has no question {qid}; see `aether-prefect pending`"
    for key, raw in sorted(questions.items(), key=lambda kv: str(kv[1].get("asked_at")), reverse=True):
        q = Question.model_validate(raw)
        if qid is not None and q.qid != qid:
            continue
        if ANSWER_PREFIX + q.qid in outcomes:
            return _closed_reason(q.qid, Outcome.model_validate(outcomes[ANSWER_PREFIX + q.qid]))
        if q.timeout_at <= dt.datetime.now(dt.timezone.utc):
            return f"question {q.qid} timed out at {q.timeout_at.isoformat()}; nothing was changed"
        break
    return f"flow run {flow_run_id} is not waiting for an answer (state: {state.type.lower()}); nothing was changed"
