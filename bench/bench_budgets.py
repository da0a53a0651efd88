"""Flow-run LLM budgets by allotment (#23): the cost of a flow budget per call and under 200 concurrent chats.

Rows:
- one chat under a flow-run budget vs none, sequential in one context (goal <= 1.2x);
- 200 concurrent chats under a flow-run budget vs none (goal >= 0.9) and ours without budget vs raw httpx
  (goal >= 0.95), as the median of per-round throughput ratios;
- the same 200-chat batches inside a task run of a flow, where the call journal is on by default: durable
  (journaled) vs ``durable=False`` vs raw httpx, to show what journaling costs at this concurrency;
- ours vs raw httpx spread over the same number of clients as our pool (``SHARDS``): our own per-call code;
- client CPU per call of each arm (``time.process_time`` of this process over a batch / 200): less sensitive
  to other processes on the machine than wall time, it shows our own per-call work;
- KV operations per call under the flow budget (ledger updates / calls).

Method: the loopback OpenAI-compatible server runs in its own process (its CPU does not share the client's
GIL). Every arm is warmed up first (connections open, allotment claimed), then ROUNDS rounds each run every
arm once, in an order rotated and reversed from round to round so drift and other processes' load hit every
arm alike; a ratio is taken within each round and the median of those ratios is reported. The 1-minute load
average is printed at start and end: on a 2-core machine shared with other work the wall-time ratios of one
run can still be off by 10-20%; the CPU-per-call rows are the steadier ones.
Run: ``.venv/bin/python bench/bench_budgets.py``.
"""

from __future__ import annotations

import _common as common  # noqa: I001 - must come first: sets the environment

import asyncio
import os
from collections.abc import Awaitable
from typing import Any

import httpx

from bench_llm import (CONCURRENT, ROUNDS, WARMUP, load_row, ours_batch, paired_ms, raw_batch, ratio_rows, rounds,
                       start_llm_server)
from tests.servers.openai_server import FAKE_API_KEY


async def in_task_rows(config: Any, raw: httpx.AsyncClient, base: str) -> list[dict[str, Any]]:
    """200-chat batches inside a task run (journal on by default): durable vs durable=False vs raw httpx."""
    from prefect import flow

    from aether_prefect import NodeContext, aether_task

    @aether_task(config=config)
    async def chats(*, context: NodeContext) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        llm = context.llm()
        return await rounds({
            "raw": lambda: raw_batch(raw, base),
            "durable": lambda: ours_batch(llm),
            "not durable": lambda: ours_batch(llm, durable=False),
        })

    @flow(name="bench-budgets-journal")
    async def bench_flow() -> Any:
        return await chats()

    wall, cpu = await bench_flow()
    return (ratio_rows(f"in a task run, {CONCURRENT} chats: journaled (default) vs durable=False", wall, cpu,
                       "durable", "not durable", target=0.9)
            + ratio_rows(f"in a task run, {CONCURRENT} chats: journaled (default) vs raw httpx", wall, cpu,
                         "durable", "raw", target=0.95))


async def main() -> None:
    from pydantic import SecretStr

    from aether_prefect.blocks import AetherConfig, AetherLLMProfile
    from aether_prefect.budgets import LLMBudget
    from aether_prefect.services.kv import PrefectKV
    from aether_prefect.session import open_session

    updates = 0
    original_update = PrefectKV.update

    async def counting_update(self: Any, *a: Any, **k: Any) -> Any:
        nonlocal updates
        updates += 1
        return await original_update(self, *a, **k)

    PrefectKV.update = counting_update  # type: ignore[method-assign]

    proc, base = start_llm_server()
    try:
        profile = AetherLLMProfile(base_url=base, api_key=SecretStr(FAKE_API_KEY), model="fake-chat", timeout_s=60)
        budget = LLMBudget(calls=10**9, total_tokens=10**12)
        config = AetherConfig(llm={"default": profile,
                                   "flowbudget": profile.model_copy(update={"budget_per_flow_run": budget})},
                              kv_namespace=f"bench{os.getpid()}")
        rows = [load_row("start")]
        headers = {"Authorization": f"Bearer {FAKE_API_KEY}"}
        # Raw httpx: one client as a hand-written caller would keep it, with the connection limits our one
        # client had before it was split into shards (llm/_http.py ClientPool).
        # Also raw httpx over SHARDS clients with our shard limits: what is left is our own per-call code.
        from aether_prefect.services.llm._http import SHARD_LIMITS, SHARDS

        raw8 = [httpx.AsyncClient(limits=SHARD_LIMITS) for _ in range(SHARDS)]
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=512, max_keepalive_connections=128)) as raw:
            async with open_session(config=config) as ctx:
                await ctx.kv().get("warm-up")

                def plain(i: int) -> Awaitable[Any]:
                    return ctx.llm().chat(f"question number {i}")

                def budgeted(i: int) -> Awaitable[Any]:
                    return ctx.llm("flowbudget").chat(f"question number {i}")

                updates = 0
                none_ms, flow_ms = await paired_ms(plain, budgeted, n=100)
                seq_updates = updates
            rows.append(common.row("one chat under a flow-run budget vs none (median)", flow_ms, none_ms, "ms",
                                   target=1.2))
            rows.append(common.row("ledger updates per budgeted call, sequential (105 calls)", seq_updates / 105,
                                   None, "ops"))

            async with open_session(config=config) as ctx:
                none_llm, flow_llm = ctx.llm(), ctx.llm("flowbudget")
                updates = 0
                wall, cpu = await rounds({
                    "raw": lambda: raw_batch(raw, base),
                    "raw pool": lambda: raw_batch(raw8, base),
                    "none": lambda: ours_batch(none_llm),
                    "flow": lambda: ours_batch(flow_llm),
                })
                conc_updates = updates
            rows += ratio_rows(f"{CONCURRENT} concurrent chats: flow budget vs none", wall, cpu, "flow", "none", 0.9)
            rows += ratio_rows(f"{CONCURRENT} concurrent chats: ours (no budget) vs raw httpx", wall, cpu, "none",
                               "raw", 0.95)
            rows += ratio_rows(f"{CONCURRENT} chats: ours vs raw httpx spread over {SHARDS} clients as ours", wall,
                               cpu, "none", "raw pool", 0.95)
            rows.append(common.row(f"ledger updates per budgeted call, {CONCURRENT} concurrent",
                                   conc_updates / (CONCURRENT * (ROUNDS + WARMUP)), None, "ops"))
            rows += await in_task_rows(config, raw, base)
        for c in raw8:
            await c.aclose()
        rows.append(load_row("end"))
        common.report("budgets", rows)
    finally:
        PrefectKV.update = original_update  # type: ignore[method-assign]
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    common.start_prefect_server()
    asyncio.run(main())
