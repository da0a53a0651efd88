"""context.channel() against the real Prefect server of conftest: questions answered through the API as the UI does."""

from __future__ import annotations

import asyncio
import io
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.flow_runs import resume_flow_run
from prefect.input import keyset_from_paused_state, read_flow_run_input

from aether_prefect import NodeContext, aether_task, open_session
from aether_prefect.errors import ChannelError, ChannelTimeout, ValidationError
from tests.services.channel._helpers import Background, wait_for

pytestmark = pytest.mark.timeout(180)

FLOW_RUNS: dict[str, str] = {}  # token -> flow run id, written by the task before it asks


def paused_question(token: str) -> tuple[str, dict[str, Any], str]:
    """Wait until the flow run of ``token`` is Paused; return (flow run id, input schema, description) read from the API."""
    run_id = wait_for(lambda: FLOW_RUNS.get(token), what="the task to start")
    with get_client(sync_client=True) as client:
        state = wait_for(
            lambda: (s := client.read_flow_run(UUID(run_id)).state) is not None and s.is_paused() and s,
            what="the flow run to be Paused",
        )
    keyset = keyset_from_paused_state(state)
    schema = wait_for(lambda: read_flow_run_input(keyset["schema"], flow_run_id=UUID(run_id)), 20, "the run input schema")
    description = wait_for(lambda: read_flow_run_input(keyset["description"], flow_run_id=UUID(run_id)), 20, "the description")
    return run_id, schema, description


def test_ask_text_answered_through_the_api(local_config: Any) -> None:
    token = uuid.uuid4().hex

    @aether_task(config=local_config)
    def ask(token: str, *, context: NodeContext) -> dict[str, Any]:
        FLOW_RUNS[token] = context.flow_run_id  # type: ignore[assignment]
        channel = context.channel()
        answer = channel.sync.ask_text("Favourite colour?", timeout_s=120)
        return {"answer": answer, "chat": context.memory().sync.recent_chat()}

    @flow(name="channel-ask-text")
    def f(token: str) -> dict[str, Any]:
        return ask(token)

    run = Background(f, token)
    run_id, schema, description = paused_question(token)
    assert description == "Favourite colour?"
    assert schema["properties"]["answer"]["type"] == "string" and "answer" in schema["required"]
    resume_flow_run(UUID(run_id), run_input={"answer": "blue"})
    out = run.join()
    assert out["answer"] == "blue"
    assert [(t["role"], t["content"]) for t in out["chat"]] == [("assistant", "Favourite colour?"), ("user", "blue")]


@pytest.mark.parametrize("choice,approved", [("Approve", True), ("Reject", False)])
def test_ask_approval_both_choices(local_config: Any, choice: str, approved: bool) -> None:
    token = uuid.uuid4().hex

    @aether_task(config=local_config)
    async def approve(token: str, *, context: NodeContext) -> dict[str, Any]:
        FLOW_RUNS[token] = context.flow_run_id  # type: ignore[assignment]
        out = await context.channel().ask_approval("Deploy to prod?", timeout_s=120)
        return {**out, "chat": await context.memory().recent_chat()}

    @flow(name="channel-ask-approval")
    async def f(token: str) -> dict[str, Any]:
        return await approve(token)

    run = Background(lambda t: asyncio.run(f(t)), token)
    run_id, schema, description = paused_question(token)
    assert description == "Deploy to prod?"
    choice_schema = schema["properties"]["choice"]
    options = choice_schema.get("enum") or schema.get("$defs", {}).get("choice", {}).get("enum")
    assert options == ["Approve", "Reject"], schema
    resume_flow_run(UUID(run_id), run_input={"choice": choice})
    out = run.join()
    assert out["approved"] is approved and out["choice"] == choice
    assert [t["role"] for t in out["chat"]] == ["assistant", "user"] and out["chat"][1]["content"] == choice


def test_ask_timeout_raises_channel_timeout(local_config: Any) -> None:
    token = uuid.uuid4().hex
    seen: dict[str, BaseException] = {}

    @aether_task(config=local_config)
    def ask(*, context: NodeContext) -> str:
        try:
            return context.channel().sync.ask_text("Pick a number", timeout_s=2)
        except BaseException as exc:
            seen[token] = exc
            raise

    @flow(name="channel-timeout")
    def f() -> str:
        return ask()

    f(return_state=True)  # nobody answers: the task fails, and with it the flow run
    assert isinstance(seen.get(token), ChannelTimeout), seen
    assert "Pick a number" in str(seen[token]) and "within 2s" in str(seen[token])


def test_send_text_reaches_the_run_logs(local_config: Any, prefect_server: Any) -> None:
    line = f"hello from the channel {uuid.uuid4().hex}"

    @aether_task(config=local_config)
    async def say(*, context: NodeContext) -> tuple[str, list[dict[str, Any]]]:
        await context.channel().send_text(line, meta={"step": 1})
        return context.flow_run_id, await context.memory().recent_chat()  # type: ignore[return-value]

    @flow(name="channel-send-text")
    async def f() -> tuple[str, list[dict[str, Any]]]:
        return await say()

    run_id, chat = asyncio.run(f())
    assert [(t["role"], t["content"]) for t in chat] == [("assistant", line)]

    def logged() -> bool:
        r = httpx.post(f"{prefect_server.api_url}/logs/filter",
                       json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 100}, timeout=10)
        assert r.status_code == 200, r.text
        return any(entry["message"] == line for entry in r.json())

    wait_for(logged, 30, "the line in the run's logs")


def test_send_rich_and_file_publish_artifacts(local_config: Any, tmp_path: Any, prefect_server: Any) -> None:
    path = tmp_path / "report.txt"
    path.write_text("numbers: 1 2 3")

    @aether_task(config=local_config)
    async def share(*, context: NodeContext) -> tuple[str, str | None, str]:
        rich = await context.channel().send_rich("# Result\n\n**42**", title="result")
        art = await context.channel().send_file(path)
        return context.flow_run_id, rich, art.uri  # type: ignore[return-value]

    @flow(name="channel-rich")
    async def f() -> tuple[str, str | None, str]:
        return await share()

    run_id, rich_id, uri = asyncio.run(f())
    assert rich_id is not None and path.exists()
    r = httpx.post(f"{prefect_server.api_url}/artifacts/filter",
                   json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}, timeout=10)
    arts = {a["id"]: a for a in r.json()}
    assert arts[rich_id]["type"] == "markdown" and "**42**" in arts[rich_id]["data"]
    assert any(uri in str(a.get("data")) or uri in str(a.get("description")) for a in arts.values() if a["id"] != rich_id)


def test_outside_a_run_without_a_terminal(local_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    asyncio.run(_outside_a_run(local_config))


async def _outside_a_run(local_config: Any) -> None:
    async with open_session(config=local_config) as context:
        with pytest.raises(ChannelError, match="needs a Prefect flow run .*or a terminal"):
            await context.channel().ask_text("Anyone there?")
        with pytest.raises(ChannelError, match="needs a Prefect flow run"):
            await context.channel().ask_approval("Ship it?")
        await context.channel().send_text("outside a run is fine")
        assert [t["content"] for t in await context.memory().recent_chat()] == ["outside a run is fine"]


def test_in_a_run_with_only_the_ephemeral_server_raises_at_once(local_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setattr(sys, "stdin", io.StringIO(""))

    @aether_task(config=local_config)
    def ask(*, context: NodeContext) -> str:
        with temporary_settings(restore_defaults={PREFECT_API_URL}):  # as a run without PREFECT_API_URL sees it
            t = time.monotonic()
            with pytest.raises(ChannelError, match=r"start_server\(\).*aether-prefect server start.*PREFECT_API_URL") as info:
                context.channel().sync.ask_text("Anyone?", timeout_s=60)
            assert time.monotonic() - t < 5
        return str(info.value)

    @flow(name="channel-ephemeral")
    def f() -> str:
        return ask()

    assert "ephemeral" in f()


def test_bad_input_is_refused_before_anything_happens(local_config: Any) -> None:
    asyncio.run(_bad_input(local_config))


async def _bad_input(local_config: Any) -> None:
    async with open_session(config=local_config) as context:
        ch = context.channel()
        with pytest.raises(ValidationError, match="prompt must be a non-empty str"):
            await ch.ask_text("  ")
        with pytest.raises(ValidationError, match="timeout_s must be a positive"):
            await ch.ask_text("q", timeout_s=0)
        with pytest.raises(ValidationError, match="at least two distinct"):
            await ch.ask_approval("q", options=("Yes", "Yes"))
        with pytest.raises(ValidationError, match="sequence of str"):
            await ch.ask_approval("q", options="Yes")
        with pytest.raises(ValidationError, match="text must be a str"):
            await ch.send_text(42)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="existing file"):
            await ch.send_file("/nonexistent/file.txt")
        assert await context.memory().recent_chat() == []


def test_console_prompt_on_a_terminal(tmp_path: Any) -> None:
    """Outside a run with a real pseudo-terminal on stdin: the question is asked on the console."""
    import os
    import pty
    import subprocess

    script = tmp_path / "ask.py"
    script.write_text(
        "import asyncio\n"
        "from aether_prefect import open_session\n"
        "from aether_prefect.blocks import AetherConfig, AetherObjectStore\n"
        f"cfg = AetherConfig(store=AetherObjectStore(backend='local', root={str(tmp_path / 'store')!r}))\n"
        "async def main():\n"
        "    async with open_session(config=cfg) as c:\n"
        "        a = await c.channel().ask_text('Your name?')\n"
        "        b = await c.channel().ask_approval('Proceed?', options=('Go', 'Stop'))\n"
        "        print('RESULT', a, b['choice'], b['approved'], flush=True)\n"
        "asyncio.run(main())\n"
    )
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, str(script)], stdin=slave, stdout=slave, stderr=slave, cwd=os.getcwd())
    os.close(slave)
    buf = b""

    def read_until(marker: bytes, timeout: float = 90) -> None:
        nonlocal buf
        deadline = time.monotonic() + timeout
        while marker not in buf and time.monotonic() < deadline:
            import select

            if select.select([master], [], [], 0.5)[0]:
                try:
                    buf += os.read(master, 4096)
                except OSError:
                    break
        assert marker in buf, buf.decode(errors="replace")[-2000:]

    try:
        read_until(b"Your name?")
        os.write(master, b"Ada\n")
        read_until(b"2. Stop")
        os.write(master, b"2\n")
        read_until(b"RESULT Ada Stop False")
    finally:
        proc.wait(timeout=30)
        os.close(master)
    assert b"RESULT Ada Stop False" in buf
