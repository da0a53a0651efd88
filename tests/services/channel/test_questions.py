"""Several questions of one flow run, ask_choices, approval reasons, and the inbox, on the real Prefect server."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any
from uuid import UUID

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.flow_runs import resume_flow_run

from aether_prefect import (
    ChannelValidationError,
    ChoiceResult,
    NodeContext,
    QuestionNotWaiting,
    aether_task,
    answer,
    pending_questions,
)
from aether_prefect.errors import ChannelTimeout
from tests.services.channel._helpers import Background, wait_for

pytestmark = pytest.mark.timeout(240)

RUNS: dict[str, str] = {}


def _questions_of(run_id: str, n: int) -> list[Any]:
    return wait_for(lambda: (qs := pending_questions(run_id)) and len(qs) == n and qs, 60, f"{n} waiting questions")


def _state(run_id: str) -> Any:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(run_id)).state


def test_two_tasks_ask_at_once_and_each_gets_its_own_answer(local_config: Any) -> None:
    """Both questions wait together; the one not on screen is answered first (inbox), the other through the UI route."""
    token = uuid.uuid4().hex
    both_asking = threading.Barrier(2, timeout=60)

    @aether_task(config=local_config)
    def ask(name: str, token: str, *, context: NodeContext) -> str:
        RUNS[token] = context.flow_run_id  # type: ignore[assignment]
        both_asking.wait()
        return context.channel().sync.ask_text(f"Name for {name}?", timeout_s=180)

    @flow(name="channel-two-questions")
    def f(token: str) -> list[str]:
        a = ask.submit("alpha", token)
        b = ask.submit("beta", token)
        return [a.result(), b.result()]

    run = Background(f, token)
    run_id = wait_for(lambda: RUNS.get(token), what="the tasks to start")
    qs = _questions_of(run_id, 2)
    assert sorted(q.prompt for q in qs) == ["Name for alpha?", "Name for beta?"]
    wait_for(lambda: any(q.showing for q in pending_questions(run_id)), 30, "one question on the UI form")
    showing = next(q for q in pending_questions(run_id) if q.showing)
    hidden = next(q for q in qs if q.question_id != showing.question_id)
    # The one not on screen first, through the inbox: it needs a question_id since two wait.
    with pytest.raises(ChannelValidationError, match="2 waiting questions"):
        answer(run_id, text="x")
    answer(run_id, text=f"answer to {hidden.prompt}", question_id=hidden.question_id)
    # Then the other through the UI route: Prefect's resume endpoint with the form's input, as the UI submits it.
    wait_for(lambda: _state(run_id).is_paused() and [q.question_id for q in pending_questions(run_id)] == [showing.question_id],
             30, "only the shown question left")
    assert _state(run_id).state_details.pause_key.startswith(f"aether-{showing.question_id}-")
    resume_flow_run(UUID(run_id), run_input={"answer": f"answer to {showing.prompt}"})
    assert run.join(120) == ["answer to Name for alpha?", "answer to Name for beta?"]
    assert pending_questions(run_id) == []


def test_ask_choices_single_multiple_and_approval_reason(local_config: Any) -> None:
    token = uuid.uuid4().hex

    @aether_task(config=local_config)
    async def ask(token: str, *, context: NodeContext) -> list[Any]:
        RUNS[token] = context.flow_run_id  # type: ignore[assignment]
        ch = context.channel()
        one = await ch.ask_choices("Mode?", [{"id": "safe", "label": "Safe mode"}, "Fast"], timeout_s=120)
        many = await ch.ask_choices("Regions?", ["eu", "us", "asia"], timeout_s=120, multiple=True)
        verdict = await ch.ask_approval("Deploy?", timeout_s=120)
        return [one, many, verdict]

    @flow(name="channel-choices")
    async def f(token: str) -> list[Any]:
        return await ask(token)

    run = Background(lambda t: asyncio.run(f(t)), token)
    run_id = wait_for(lambda: RUNS.get(token), what="the task to start")

    q = _questions_of(run_id, 1)[0]
    assert q.kind == "choices" and [o.label for o in q.options] == ["Safe mode", "Fast"]
    wait_for(lambda: _state(run_id).is_paused(), 30, "the pause")
    resume_flow_run(UUID(run_id), run_input={"choice": "Safe mode", "text": "careful"})  # the UI's select

    q = wait_for(lambda: (qs := pending_questions(run_id)) and qs[0].prompt == "Regions?" and qs[0], 60, "question 2")
    assert q.multiple
    with pytest.raises(ChannelValidationError, match="not an option"):
        answer(run_id, choice=["eu", "mars"])
    with pytest.raises(ChannelValidationError, match="takes choice"):
        answer(run_id, text="eu")
    assert pending_questions(run_id)[0].question_id == q.question_id  # nothing changed
    answer(run_id, choice=["eu", "ASIA"])

    q = wait_for(lambda: (qs := pending_questions(run_id)) and qs[0].prompt == "Deploy?" and qs[0], 60, "question 3")
    with pytest.raises(ChannelValidationError, match="takes approve"):
        answer(run_id, text="sure")
    answer(run_id, approve=False, reason="tests are red")
    with pytest.raises(QuestionNotWaiting, match="already answered|not waiting"):
        answer(run_id, approve=True)

    one, many, verdict = run.join(120)
    assert one == ChoiceResult(choice="safe", choice_label="Safe mode", text="careful", matched=True,
                               choices=("safe",), choice_labels=("Safe mode",))
    assert isinstance(one, ChoiceResult)
    assert (many.choice, many.choices, many.matched) == ("eu", ("eu", "asia"), True)
    assert verdict == {"approved": False, "choice": "Reject", "reason": "tests are red"}


def test_answer_after_timeout_is_refused_and_changes_nothing(local_config: Any) -> None:
    token = uuid.uuid4().hex
    seen: dict[str, BaseException] = {}

    @aether_task(config=local_config)
    def ask(token: str, *, context: NodeContext) -> str:
        RUNS[token] = context.flow_run_id  # type: ignore[assignment]
        try:
            return context.channel().sync.ask_text("Too late?", timeout_s=3)
        except ChannelTimeout as exc:
            seen[token] = exc
            return "timed out"

    @flow(name="channel-late-answer")
    def f(token: str) -> str:
        return ask(token)

    t = time.monotonic()
    assert f(token) == "timed out"
    assert time.monotonic() - t < 60
    run_id = RUNS[token]
    assert "Too late?" in str(seen[token])
    with pytest.raises(QuestionNotWaiting, match="closed \\(timeout|timed out|not waiting"):
        answer(run_id, text="now")
    with pytest.raises(QuestionNotWaiting, match="could not be read"):
        answer(str(uuid.uuid4()), text="now")
    assert pending_questions(run_id) == []
