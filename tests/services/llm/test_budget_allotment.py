"""Flow-run budgets by allotment (#23) and budget bookkeeping (#17.10), on real Prefect + the loopback LLM server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from aether_prefect.blocks import AetherConfig
from aether_prefect.budgets import LLMBudget
from aether_prefect.errors import KVError, LLMBudgetExceeded
from aether_prefect.services.kv import PrefectKV
from aether_prefect.session import open_session, open_session_sync
from tests.servers.openai_server import FakeOpenAI, Reply

pytestmark = pytest.mark.slow  # multi-process: newest Prefect only in CI (Makefile)

ROOT = Path(__file__).resolve().parents[3]

CHILD = textwrap.dedent(
    """
    import asyncio, json, os, sys, time
    from pydantic import SecretStr
    from aether_prefect.blocks import AetherConfig, AetherLLMProfile, AetherObjectStore
    from aether_prefect.budgets import LLMBudget
    from aether_prefect.errors import LLMBudgetExceeded
    from aether_prefect.session import open_session

    ns, root, base_url, key, run_id, calls, mode = sys.argv[1:8]

    async def main():
        profile = AetherLLMProfile(base_url=base_url, api_key=SecretStr(key), model="fake-chat",
                                   budget_per_flow_run=LLMBudget(calls=int(calls)))
        cfg = AetherConfig(kv_namespace=ns, store=AetherObjectStore(backend="local", root=root),
                           llm={"default": profile})
        async with open_session(config=cfg, run_id=run_id) as ctx:
            llm = ctx.llm()
            await ctx.kv().get("warm")
            print("READY", flush=True)
            if mode == "hold":
                for i in range(10):
                    await llm.chat(f"hold {i}")
                ahead = llm._budget._flow._refill  # a claim of the next block in flight: let it land first
                if ahead is not None:
                    await asyncio.wait([ahead])
                print("HOLDING", flush=True)
                await asyncio.sleep(600)
            while not os.path.exists(os.path.join(root, "go")):
                await asyncio.sleep(0.01)
            sent = refused = 0
            for i in range(1000):
                try:
                    await llm.chat(f"race {i}")
                    sent += 1
                except LLMBudgetExceeded:
                    refused += 1
                    break
            print(json.dumps({"sent": sent, "refused": refused}), flush=True)

    asyncio.run(main())
    """
)


def _spawn(tmp_path: Path, server: FakeOpenAI, ns: str, run_id: str, calls: int, mode: str) -> subprocess.Popen[str]:
    script = tmp_path / "budget_child.py"
    script.write_text(CHILD)
    (tmp_path / "store").mkdir(exist_ok=True)
    return subprocess.Popen(
        [sys.executable, str(script), ns, str(tmp_path / "store"), server.base_url, server.api_key, run_id,
         str(calls), mode],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=str(ROOT),
    )


def _race(tmp_path: Path, server: FakeOpenAI, ns: str, run_id: str, calls: int, n: int) -> list[dict[str, int]]:
    procs = [_spawn(tmp_path, server, ns, run_id, calls, "race") for _ in range(n)]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "READY", p.stderr.read() if p.stderr else ""
        (tmp_path / "store" / "go").touch()
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


def _ledger(local_config: AetherConfig, run_id: str) -> Any:
    with open_session_sync(config=local_config) as ctx:
        return ctx.kv().sync.get(f"llm-budget/{run_id}/default")


def test_four_processes_racing_on_a_flow_budget_send_exactly_n(llm_server: FakeOpenAI, local_config: AetherConfig,
                                                               tmp_path: Path) -> None:
    run_id = f"race-{uuid.uuid4().hex[:8]}"
    results = _race(tmp_path, llm_server, local_config.kv_namespace, run_id, 40, 4)
    assert len(llm_server.requests_to("chat/completions")) == 40  # what the provider saw
    assert sum(r["sent"] for r in results) == 40 and all(r["refused"] == 1 for r in results)
    assert _ledger(local_config, run_id) == {"calls": 40, "tokens": 0}


def test_killed_process_holding_an_allotment_cannot_overspend(llm_server: FakeOpenAI, local_config: AetherConfig,
                                                             tmp_path: Path) -> None:
    run_id = f"kill-{uuid.uuid4().hex[:8]}"
    ns = local_config.kv_namespace
    holder = _spawn(tmp_path, llm_server, ns, run_id, 40, "hold")
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "READY", holder.stderr.read() if holder.stderr else ""
        assert holder.stdout.readline().strip() == "HOLDING", holder.stderr.read() if holder.stderr else ""
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    claimed = _ledger(local_config, run_id)["calls"]
    assert claimed > 10  # blocks grew while it worked: part of its last block is unused
    results = _race(tmp_path, llm_server, ns, run_id, 40, 3)
    sent = len(llm_server.requests_to("chat/completions"))
    # The dead holder's unused calls count as spent: the others got exactly what was left, never more.
    assert sum(r["sent"] for r in results) == 40 - claimed
    assert sent == 10 + 40 - claimed < 40


def _cfg(server: FakeOpenAI, local_config: AetherConfig, **profile: Any) -> AetherConfig:
    return local_config.model_copy(update={"llm": {"default": server.profile(**profile)}})


def test_refused_calls_are_not_counted_in_the_flow_ledger(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    cfg = _cfg(llm_server, local_config, budget_per_flow_run=LLMBudget(calls=2))
    run_id = f"refused-{uuid.uuid4().hex[:8]}"
    with open_session_sync(config=cfg, run_id=run_id) as ctx:
        ctx.llm().sync.chat("one")
        ctx.llm().sync.chat("two")
        for _ in range(3):
            with pytest.raises(LLMBudgetExceeded, match="2 calls used, limit 2"):
                ctx.llm().sync.chat("refused")
        assert ctx.kv().sync.get(f"llm-budget/{run_id}/default") == {"calls": 2, "tokens": 0}
    assert len(llm_server.requests_to("chat/completions")) == 2


class _BrokenKV(PrefectKV):
    """A KV whose locked updates fail once with a non-budget error (the API went away for a moment)."""

    failures = 1

    async def update(self, key: str, fn: Any, *, ttl_s: float | None = None) -> Any:
        if _BrokenKV.failures:
            _BrokenKV.failures -= 1
            raise KVError("cannot reach the Prefect API (simulated)")
        return await super().update(key, fn, ttl_s=ttl_s)


def test_task_reservation_is_given_back_when_the_flow_check_fails(llm_server: FakeOpenAI,
                                                                 local_config: AetherConfig) -> None:
    cfg = _cfg(llm_server, local_config, budget_per_flow_run=LLMBudget(calls=10))

    async def main() -> None:
        async with open_session(config=cfg, llm_budget=LLMBudget(calls=1)) as ctx:
            ctx._services["kv"] = _BrokenKV(ctx)
            with pytest.raises(KVError, match="simulated"):
                await ctx.llm().chat("flow check fails")
            await ctx.llm().chat("the task budget of 1 call is still there")
            with pytest.raises(LLMBudgetExceeded, match="per task run"):
                await ctx.llm().chat("now it is spent")

    asyncio.run(main())
    assert len(llm_server.requests_to("chat/completions")) == 1


def _stream_chunks(n: int) -> list[dict[str, Any]]:
    return [{"choices": [{"index": 0, "delta": {"content": f"w{i} "}}]} for i in range(n)]


def test_stream_failing_part_way_is_accounted(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    cfg = _cfg(llm_server, local_config, budget_per_task_run=LLMBudget(total_tokens=10_000))

    async def main() -> None:
        async with open_session(config=cfg) as ctx:
            llm = ctx.llm()
            # 1. the connection ends after 5 pieces, without [DONE] or a usage chunk: billed, estimated
            llm_server.script("/chat/completions", [Reply(sse=_stream_chunks(5), sse_done=False)])
            text, usage = await llm.chat_stream("tell me " * 10)
            # 2. on_delta raises at the third piece; the provider had reported usage first
            chunks = [{"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}},
                      *_stream_chunks(6)]
            llm_server.script("/chat/completions", [Reply(sse=chunks)])
            seen: list[str] = []

            def on_delta(piece: str) -> None:
                seen.append(piece)
                if len(seen) == 3:
                    raise RuntimeError("display broke")

            with pytest.raises(RuntimeError, match="display broke"):
                await llm.chat_stream("again", on_delta=on_delta)
            rows = llm.usage()
            assert [r.calls for r in rows] == [2]
            assert rows[0].total_tokens == usage["total_tokens"] + 16 and usage["completion_tokens"] == 5
            assert text == "w0 w1 w2 w3 w4 "

    asyncio.run(main())


def test_embed_caps_concurrent_batches_and_cancels_the_rest(llm_server: FakeOpenAI,
                                                          local_config: AetherConfig) -> None:
    from aether_prefect.services.llm import EMBED_CONCURRENCY

    cfg = _cfg(llm_server, local_config, max_retries=0)
    ok = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
          "usage": {"prompt_tokens": 1, "total_tokens": 1}}
    # Batch 2 fails at once; the others would answer after 1 s each.
    llm_server.script("/embeddings", [Reply(json=ok, delay=1.0), Reply(status=400, json={"error": {"message": "bad"}}),
                                      *[Reply(json=ok, delay=1.0) for _ in range(10)]])

    async def main() -> None:
        async with open_session(config=cfg) as ctx:
            with pytest.raises(Exception, match="400"):
                await ctx.llm().embed([f"t{i}" for i in range(12)], batch_size=1)

    asyncio.run(main())
    sent = len(llm_server.requests_to("embeddings"))
    assert 2 <= sent <= EMBED_CONCURRENCY + 1  # never more than the cap in flight; none started after the failure


def test_concurrent_calls_share_one_claim(llm_server: FakeOpenAI, local_config: AetherConfig,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """50 concurrent chats in one context: the callers waiting for a block are covered by the next claim."""
    cfg = _cfg(llm_server, local_config, budget_per_flow_run=LLMBudget(calls=1000))
    run_id = f"conc-{uuid.uuid4().hex[:8]}"
    updates: list[str] = []
    original = PrefectKV.update

    async def counting(self: PrefectKV, key: str, fn: Any, *, ttl_s: float | None = None) -> Any:
        updates.append(key)
        return await original(self, key, fn, ttl_s=ttl_s)

    monkeypatch.setattr(PrefectKV, "update", counting)

    async def main() -> None:
        async with open_session(config=cfg, run_id=run_id) as ctx:
            await asyncio.gather(*(ctx.llm().chat(f"q{i}") for i in range(50)))
            assert len(updates) <= 3  # the first caller's claim, then one for the 49 that queued behind it
        assert len(updates) <= 4  # plus giving the unused part back at close

    asyncio.run(main())
    assert len(llm_server.requests_to("chat/completions")) == 50
    assert _ledger(local_config, run_id) == {"calls": 50, "tokens": 0}
