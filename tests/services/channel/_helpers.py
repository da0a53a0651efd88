"""Helpers of the channel tests: run a flow in the background, wait for a condition, ask from workers."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from aether_prefect import NodeContext, aether_task, answer, pending_questions


class Background:
    """Runs a flow in a thread (it blocks while paused), keeps its result or error."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self.result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.error = exc

    def join(self, timeout: float = 90) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "flow did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def wait_for(fn: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last = exc
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")


@aether_task
def ask_in_worker(prompt: str, *, context: NodeContext) -> tuple[str, int]:
    import os

    return context.channel().sync.ask_text(prompt, timeout_s=500), os.getpid()


def ask_and_answer(make_flow: Any) -> None:
    """Two tasks of a flow (from ``make_flow(prompts)``) ask at once in workers; both answers reach the askers."""
    import os

    prompts = [f"worker question {i} {uuid.uuid4().hex[:6]}" for i in range(2)]
    run = Background(make_flow(prompts))

    def both() -> list[Any]:
        qs = [q for q in pending_questions() if q.prompt in prompts]
        return qs if len(qs) == 2 else []

    qs = wait_for(both, 300, "both questions from the workers")
    for q in reversed(qs):  # any order
        answer(q.flow_run_id, text=f"re: {q.prompt}", question_id=q.question_id)
    out = run.join(300)
    assert [a for a, _ in out] == [f"re: {p}" for p in prompts]
    assert all(pid != os.getpid() for _, pid in out)
    assert {q.task_name for q in qs} == {"ask_in_worker"}
