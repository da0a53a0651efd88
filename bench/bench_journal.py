"""Durable calls bench (#19): what a retry costs with the call journal (ours) vs without it (today's path).

Side by side in one run, on a private real Prefect server, the loopback OpenAI-compatible server and the demo
MCP server over stdio:
- a task making 5 LLM calls that fails after them on attempt 1 (retries=1): requests received, tokens counted;
- the same with an MCP tool counting its own invocations: invocations per logical call;
- a replayed call vs a live call, and a journaled live call vs a plain one (same task run, interleaved pairs in
  alternating order: the ratio of the medians, and the median of each pair's difference over the plain median);
- the 5-call scenario on the Dask task runner, and with the worker process SIGKILLed (flow-run retry).
Run: ``python bench/bench_journal.py`` (``--quick`` skips Dask and SIGKILL; ``--cold`` adds the journal's own work per
live call with cold caches and a stand-in for the request, which moves far less with the machine's load than the
live-call figures; its target is 5% of the plain live call measured in the same run).
"""

from __future__ import annotations

import _common as common  # noqa: I001 - must come first: sets the environment

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow
from pydantic import SecretStr

from aether_prefect import NodeContext, aether_task
from aether_prefect.blocks import AetherConfig, AetherLLMProfile, AetherObjectStore
from aether_prefect.services.llm._usage import read_task_tables
from bench_llm import start_llm_server
from tests.services.journal._counting_server import block as counting_block
from tests.servers.openai_server import FAKE_API_KEY, FakeOpenAI

CALLS = 5
PAIRS = 400  # paired rounds of the timing scenario (a loopback call takes ~2 ms: ~4 s for all of them)
WARMUP = 10  # rounds before those, not counted: the first call of an attempt claims and reads the journal


def _config(server: FakeOpenAI | AetherLLMProfile, **extra: Any) -> AetherConfig:
    root = tempfile.mkdtemp(prefix="aether-journal-bench-")
    profile = server if isinstance(server, AetherLLMProfile) else server.profile()
    return AetherConfig(store=AetherObjectStore(backend="local", root=root), llm={"default": profile},
                        kv_namespace="bench", **extra)


def _chat_requests(server: FakeOpenAI) -> int:
    return sum(1 for r in server.requests if r.path.endswith("/chat/completions"))


def five_call_scenario(server: FakeOpenAI, durable: bool) -> tuple[int, int]:
    """(requests received, tokens counted) for 5 calls, a failure after them, one retry."""
    server.reset()
    state = {"attempt": 0}

    @aether_task(config=_config(server), retries=1, durable=durable)
    async def five(*, context: NodeContext) -> None:
        state["attempt"] += 1
        for i in range(CALLS):
            await context.llm().chat(f"step {i} of the chain")
        if state["attempt"] == 1:
            raise RuntimeError("the database write failed")

    @flow
    async def pipeline() -> str:
        from prefect.runtime import flow_run

        await five()
        return str(flow_run.id)

    flow_run_id = asyncio.run(pipeline())
    tables = asyncio.run(read_task_tables(flow_run_id))
    return _chat_requests(server), sum(r.total_tokens for t in tables for r in t)


def mcp_scenario(durable: bool) -> int:
    """Invocations of a counting MCP tool for 3 logical calls, a failure after them, one retry."""
    counter = Path(tempfile.mkdtemp()) / "count.txt"
    server = counting_block(durable=durable)
    cfg = AetherConfig(store=AetherObjectStore(backend="local", root=tempfile.mkdtemp()), mcp={"default": server})
    state = {"attempt": 0}

    @aether_task(config=cfg, retries=1)
    async def tools(*, context: NodeContext) -> None:
        state["attempt"] += 1
        for i in range(3):
            await context.mcp().call("tally", {"path": str(counter), "label": f"ticket {i}"})
        if state["attempt"] == 1:
            raise RuntimeError("fail after the tools ran")

    @flow
    async def pipeline() -> None:
        await tools()

    asyncio.run(pipeline())
    return len(counter.read_text().splitlines())


def timing_scenario(server: AetherLLMProfile) -> dict[str, list[float]]:
    """Paired per-call times in one task run: attempt 1 plain vs journaled live calls, attempt 2 live vs replayed.

    The LLM server runs in its own process here (as a provider does), so its work does not share this process's
    GIL with the client side being measured.
    """
    times: dict[str, list[float]] = {"plain": [], "journaled": [], "live2": [], "replayed": []}
    state = {"attempt": 0}

    @aether_task(config=_config(server), retries=1)
    async def timed(*, context: NodeContext) -> None:
        state["attempt"] += 1
        llm = context.llm()
        first = state["attempt"] == 1
        for i in range(-WARMUP, PAIRS):
            order = [(False, "plain" if first else "live2"), (True, "journaled" if first else "replayed")]
            for durable, name in (order if i % 2 else order[::-1]):
                t = time.perf_counter()
                await llm.chat(f"question number {i}", durable=durable)
                if i >= 0:
                    times[name].append(time.perf_counter() - t)
        if first:
            raise RuntimeError("fail: the retry replays the journaled half")

    @flow
    async def pipeline() -> None:
        await timed()

    asyncio.run(pipeline())
    return times


def cold_scenario(pairs: int = 1000) -> list[float]:
    """Per-pair extra (us) of the journal's own work on a live chat: in-wrapper time of a journaled call minus that
    of a durable=False one, with a stand-in for the request that first evicts the CPU caches (writes 8 MB), as a
    real loopback call's ~1.5 ms of other work does, then accounts usage and sets ``last_response`` as a real
    call does. CPU-bound and free of the loopback server's scheduling, so it moves far less with the load than
    the live-call figures: it shows what a change to the journal costs or saves (``--cold``)."""
    import functools
    import inspect
    import json

    from aether_prefect.services.journal import journaled
    from aether_prefect.services.llm import LLMService
    from aether_prefect.services.llm._usage import Usage, tracker

    flush = bytearray(8 * 1024 * 1024)
    reply = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "model": "fake-chat", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "echo: a question"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}})
    inner = [0]

    async def stand_in(svc: Any, messages: Any, **kw: Any) -> tuple[str, dict[str, int]]:
        t = time.perf_counter_ns()
        flush[::64] = b"\x01" * (len(flush) // 64)
        tracker(svc.ctx).record(svc.profile_name, "fake-chat", Usage(prompt_tokens=5, completion_tokens=6,
                                                                     total_tokens=11))
        svc.last_response = json.loads(reply)
        await asyncio.sleep(0)
        inner[0] = time.perf_counter_ns() - t
        return f"echo: {messages}", {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}

    real = LLMService.chat
    stand_in.__signature__ = inspect.signature(real.__wrapped__)  # type: ignore[attr-defined]
    wrapped = journaled("chat")(stand_in)
    cost: dict[bool, list[int]] = {True: [], False: []}

    @functools.wraps(real)
    async def timed(svc: Any, *args: Any, durable: bool | None = None, **kw: Any) -> Any:
        t = time.perf_counter_ns()
        out = await wrapped(svc, *args, durable=durable, **kw)
        cost[durable is not False].append(time.perf_counter_ns() - t - inner[0])
        return out

    global PAIRS
    saved, PAIRS = PAIRS, pairs
    LLMService.chat = timed  # type: ignore[method-assign]
    try:
        timing_scenario(AetherLLMProfile(base_url="http://127.0.0.1:9/v1", api_key=SecretStr(FAKE_API_KEY),
                                         model="fake-chat", timeout_s=60))
    finally:
        LLMService.chat = real  # type: ignore[method-assign]
        PAIRS = saved
    first = slice(WARMUP, WARMUP + pairs)  # attempt 1: journaled live calls and plain ones
    return [(j - p) / 1000 for j, p in zip(cost[True][first], cost[False][first])]


def dask_scenario(server: FakeOpenAI, durable: bool) -> int:
    """Requests received for the 5-call scenario with the task on a Dask worker process."""
    from prefect_dask import DaskTaskRunner

    server.reset()
    marker = Path(tempfile.mkdtemp()) / "failed"

    @aether_task(config=_config(server), retries=1, durable=durable)
    async def five(path: str, *, context: NodeContext) -> None:
        for i in range(CALLS):
            await context.llm().chat(f"dask step {i}")
        if not os.path.exists(path):
            Path(path).write_text("x")
            raise RuntimeError("fail after the calls")

    @flow(task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 1, "threads_per_worker": 1, "processes": True}))
    def pipeline(path: str) -> None:
        five.submit(path).result()

    pipeline(str(marker))
    return _chat_requests(server)


def sigkill_scenario(server: FakeOpenAI, durable: bool) -> int:
    """Requests received when the worker is SIGKILLed after its 5 calls and the flow run is retried."""
    from prefect import get_client
    from prefect.states import AwaitingRetry

    from tests.services.journal._worker import CONFIG, killable

    server.reset()
    profile = server.profile().model_copy(update={"durable": durable})
    _config(server).model_copy(update={"llm": {"default": profile}}).save(CONFIG, overwrite=True)
    marker = Path(tempfile.mkdtemp()) / "marker"

    async def create() -> str:
        async with get_client() as client:
            return str((await client.create_flow_run(killable, parameters={"marker": str(marker)})).id)

    flow_run_id = asyncio.run(create())
    cmd = [sys.executable, "-m", "tests.services.journal._worker", flow_run_id]
    first = subprocess.Popen(cmd, cwd=common.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 300
    while not marker.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()

    async def retry() -> None:
        async with get_client() as client:
            await client.set_flow_run_state(flow_run_id, AwaitingRetry(), force=True)

    asyncio.run(retry())
    subprocess.run(cmd, cwd=common.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300, check=True)
    return _chat_requests(server)


def _start_server() -> None:
    """The bench's private Prefect server; on a loaded machine its first start can outlast the usual 180 s."""
    from aether_prefect._prefect import use_api_url

    try:
        api = common.start_prefect_server()
    except TimeoutError:
        common._server.wait_ready(timeout=600)  # type: ignore[union-attr]
        api = common._server.api_url  # type: ignore[union-attr]
    use_api_url(api)  # prefect was imported above: refresh its settings so every client uses this server


def main() -> None:
    _start_server()
    server = FakeOpenAI().start()
    rows = []
    try:
        req_ours, tok_ours = five_call_scenario(server, durable=True)
        req_raw, tok_raw = five_call_scenario(server, durable=False)
        rows.append(common.row("5 calls, fail, retry: requests received", req_ours, req_raw, "req", target=0.5))
        rows.append(common.row("5 calls, fail, retry: tokens counted", tok_ours, tok_raw, "tok", target=0.5))
        inv_ours, inv_raw = mcp_scenario(True), mcp_scenario(False)
        rows.append(common.row("3 MCP tool calls, fail, retry: invocations", inv_ours, inv_raw, "calls", target=0.5))
        llm_proc, base = start_llm_server()
        try:
            t = timing_scenario(AetherLLMProfile(base_url=base, api_key=SecretStr(FAKE_API_KEY), model="fake-chat",
                                                 timeout_s=60))
        finally:
            llm_proc.kill()
        load = os.getloadavg()[0]
        med = {k: statistics.median(v) * 1000 for k, v in t.items()}
        extra = statistics.median(j - p for j, p in zip(t["journaled"], t["plain"])) * 1000
        rows.append(common.row("replayed call vs live call (local store)", med["replayed"], med["live2"], "ms",
                               target=0.10))
        rows.append(common.row("replayed call, absolute (goal <= 5 ms)", med["replayed"], None, "ms", target=5.0))
        rows.append(common.row(f"journaled live call vs plain live call (load {load:.1f})", med["journaled"],
                               med["plain"], "ms", target=1.05))
        rows.append(common.row("  same, paired: plain + median extra per pair", med["plain"] + extra, med["plain"],
                               "ms", target=1.05))
        if "--cold" in sys.argv:
            extra_cold = statistics.median(cold_scenario())
            rows.append(common.row(f"  journal's own work, cold stand-in call (load {os.getloadavg()[0]:.1f})",
                                   extra_cold, None, "us", target=0.05 * med["plain"] * 1000))
        if "--quick" not in sys.argv:
            rows.append(common.row("Dask runner, 5 calls, fail, retry: requests", dask_scenario(server, True),
                                   dask_scenario(server, False), "req", target=0.5))
            rows.append(common.row("worker SIGKILLed, flow-run retry: requests", sigkill_scenario(server, True),
                                   sigkill_scenario(server, False), "req", target=0.5))
    finally:
        server.stop()
    common.report("journal", rows)


if __name__ == "__main__":
    main()
