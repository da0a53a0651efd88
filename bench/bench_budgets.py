"""Flow-run LLM budgets by allotment (#23): the cost of a flow budget per call and under 200 concurrent chats.

Rows (paired rounds, order alternated, ratios printed):
- one chat under a flow-run budget vs none, sequential in one context (goal <= 1.2x);
- 200 concurrent chats under a flow-run budget vs none (throughput ratio, goal >= 0.9);
- 200 concurrent chats, ours without budget vs raw httpx (goal >= 0.95), plus the same through
  an unbudgeted context whose usage tracker and exchange log are the only extra work;
- KV operations per call under the flow budget (ledger updates / calls).
Run: ``.venv/bin/python bench/bench_budgets.py``.
"""

from __future__ import annotations

import _common as common  # noqa: I001 - must come first: sets the environment

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable
from typing import Any

import httpx

from bench_llm import CONCURRENT, _body, paired_ms, raw_batch, start_llm_server
from tests.servers.openai_server import FAKE_API_KEY

ROUNDS = 8


async def ours_batch(llm: Any) -> float:
    """Wall time of CONCURRENT ``llm.chat`` calls."""
    t = time.perf_counter()
    await asyncio.gather(*(llm.chat(f"question number {i}") for i in range(CONCURRENT)))
    return time.perf_counter() - t


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
        rows = []
        headers = {"Authorization": f"Bearer {FAKE_API_KEY}"}
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

            async def raw_one(i: int) -> None:
                (await raw.post(f"{base}/chat/completions", json=_body(i), headers=headers)).json()

            ratios_budget, ratios_raw = [], []
            t_none, t_flow, t_raw = [], [], []
            async with open_session(config=config) as ctx:
                none_llm, flow_llm = ctx.llm(), ctx.llm("flowbudget")
                await raw_batch(raw, base)
                await ours_batch(none_llm)
                updates = 0
                await ours_batch(flow_llm)
                for n in range(ROUNDS):
                    order = [("raw", None), ("none", none_llm), ("flow", flow_llm)]
                    if n % 2:
                        order.reverse()
                    got: dict[str, float] = {}
                    for label, llm in order:
                        got[label] = await (raw_batch(raw, base) if llm is None else ours_batch(llm))
                    t_none.append(got["none"])
                    t_flow.append(got["flow"])
                    t_raw.append(got["raw"])
                    ratios_budget.append(got["none"] / got["flow"])
                    ratios_raw.append(got["raw"] / got["none"])
                conc_updates = updates
            rows.append(common.row(f"{CONCURRENT} concurrent chats: flow budget vs none (req/s, medians)",
                                   CONCURRENT / statistics.median(t_flow), CONCURRENT / statistics.median(t_none),
                                   "req/s", target=0.9, higher_is_better=True))
            rows.append(common.row("  same, median ratio of paired rounds", statistics.median(ratios_budget), None,
                                   "x", target=0.9, higher_is_better=True))
            rows.append(common.row(f"{CONCURRENT} concurrent chats: ours (no budget) vs raw httpx (req/s, medians)",
                                   CONCURRENT / statistics.median(t_none), CONCURRENT / statistics.median(t_raw),
                                   "req/s", target=0.95, higher_is_better=True))
            rows.append(common.row("  same, median ratio of paired rounds", statistics.median(ratios_raw), None,
                                   "x", target=0.95, higher_is_better=True))
            rows.append(common.row(f"ledger updates per budgeted call, {CONCURRENT} concurrent",
                                   conc_updates / (CONCURRENT * (ROUNDS + 1)), None, "ops"))
        common.report("budgets", rows)
    finally:
        PrefectKV.update = original_update  # type: ignore[method-assign]
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    common.start_prefect_server()
    asyncio.run(main())
