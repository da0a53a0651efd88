"""Channel: ask -> notification at a loopback webhook, and answer -> the asking task resumes.

Ours: ``ask_text`` in an ``@aether_task`` announced through a ``CustomWebhookNotificationBlock`` to a loopback
HTTP server, answered with ``aether_prefect.answer`` (the inbox). Raw: Prefect's ``pause_flow_run`` with the
same 1 s poll interval, answered with ``resume_flow_run`` (raw Prefect sends no notification). Goal: the task
resumes within the poll interval + 1 s.
"""

from __future__ import annotations

import _common  # noqa: F401  (sets the environment before prefect is imported)
from _common import report, row, start_prefect_server

import json
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from uuid import UUID

ROUNDS = 3


class Webhook:
    def __init__(self) -> None:
        arrivals: list[float] = []
        self.arrivals = arrivals

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length") or 0))
                arrivals.append(time.monotonic())
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _wait(cond: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    raise TimeoutError("bench condition not met")


def main() -> None:
    start_prefect_server()
    from prefect import flow, task
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.flow_runs import pause_flow_run, resume_flow_run
    from prefect.input import RunInput

    from aether_prefect import AetherConfig, AetherObjectStore, NodeContext, aether_task, answer

    hook = Webhook()
    config = AetherConfig(
        store=AetherObjectStore(backend="local", root=tempfile.mkdtemp()),
        notify=[CustomWebhookNotificationBlock(name="bench", url=hook.url, json_data={"body": "{{body}}"})],
    )
    marks: dict[str, float | str] = {}

    @aether_task(config=config)
    def ours_task(*, context: NodeContext) -> str:
        marks["run"] = context.flow_run_id  # type: ignore[assignment]
        marks["asked"] = time.monotonic()
        out = context.channel().sync.ask_text("bench question", timeout_s=300)
        marks["resumed"] = time.monotonic()
        return out

    @flow(name="bench-channel-ours")
    def ours_flow() -> str:
        return ours_task()

    class Answer(RunInput):
        answer: str

    @task
    def raw_task() -> str:
        from prefect.context import get_run_context

        marks["run"] = str(get_run_context().task_run.flow_run_id)  # type: ignore[union-attr]
        out = pause_flow_run(wait_for_input=Answer, timeout=300, poll_interval=1)
        marks["resumed"] = time.monotonic()
        return out.answer

    @flow(name="bench-channel-raw")
    def raw_flow() -> str:
        return raw_task()

    def paused(run_id: str) -> bool:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as c:
            s = c.read_flow_run(UUID(run_id)).state
            return bool(s and s.is_paused())

    def one(which: str) -> tuple[float | None, float]:
        marks.clear()
        n = len(hook.arrivals)
        t = threading.Thread(target=ours_flow if which == "ours" else raw_flow, daemon=True)
        t.start()
        run_id = str(_wait(lambda: marks.get("run")))
        _wait(lambda: paused(run_id))
        arrival = None
        if which == "ours":
            _wait(lambda: len(hook.arrivals) > n)
            arrival = hook.arrivals[n] - float(marks["asked"])
            time.sleep(0.5)  # the question is visible: a person reads it
            t0 = time.monotonic()
            answer(run_id, text="ok")
        else:
            time.sleep(0.5)
            t0 = time.monotonic()
            resume_flow_run(UUID(run_id), run_input={"answer": "ok"})
        _wait(lambda: marks.get("resumed"))
        t.join(60)
        return arrival, float(marks["resumed"]) - t0

    ours = [one("ours") for _ in range(ROUNDS)]
    raw = [one("raw") for _ in range(ROUNDS)]
    arrival = statistics.median(a for a, _ in ours if a is not None)
    resume_ours = statistics.median(r for _, r in ours)
    resume_raw = statistics.median(r for _, r in raw)
    report("channel", [
        row("ask -> webhook arrival (CustomWebhookNotificationBlock)", arrival, None, "s"),
        row("answer -> task resumes (poll 1 s; goal <= 2 s)", resume_ours, resume_raw, "s", target=None),
        row("answer -> task resumes, ours absolute vs goal poll+1 s", resume_ours, None, "s", target=2.0),
    ])
    print(json.dumps({"ours": ours, "raw": raw}))


if __name__ == "__main__":
    main()
