"""LLM budgets, flow usage roll-up, exchange logs, run tags and re-asking (#13), real Prefect + loopback LLM."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from uuid import UUID

import pytest
from prefect import flow
from pydantic import SecretStr
from pydantic import ValidationError as PydanticValidationError

from aether_prefect import NodeContext, aether_flow, aether_task
from aether_prefect.blocks import AetherConfig, AetherLLMProfile
from aether_prefect.budgets import LLMBudget
from aether_prefect.errors import ConfigError, LLMBudgetExceeded, LLMInvalidOutput, ValidationError
from aether_prefect.services.llm._usage import FLOW_MARK, TASK_MARK, flow_usage_key, publish_flow_usage
from aether_prefect.session import open_session
from tests.servers.openai_server import FakeOpenAI, Reply


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def _cfg(server: FakeOpenAI, local_config: AetherConfig, **profile: Any) -> AetherConfig:
    return local_config.model_copy(update={"llm": {"default": server.profile(**profile)}})


async def _artifacts(flow_run_id: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)])))


def _flow_run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id)


def test_task_budget_of_two_calls(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    @aether_task(config=_cfg(llm_server, local_config), llm_budget=LLMBudget(calls=2))
    def work(*, context: NodeContext) -> str:
        context.llm().sync.chat("one")
        context.llm().sync.chat("two")
        with pytest.raises(LLMBudgetExceeded) as err:
            context.llm().sync.chat("three")
        return str(err.value)

    @flow
    def f() -> str:
        return work()

    message = f()
    assert "task run" in message and "2 calls used, limit 2" in message and "No request was sent" in message
    assert len(llm_server.requests) == 2


def test_task_budget_spans_retry_attempts(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    attempts: list[str] = []

    @aether_task(config=_cfg(llm_server, local_config, budget_per_task_run=LLMBudget(calls=3)), retries=1)
    def flaky(*, context: NodeContext) -> str:
        attempts.append(context.task_run_id or "")
        if len(attempts) == 1:
            context.llm().sync.chat("a")
            context.llm().sync.chat("b")
            raise RuntimeError("first attempt fails")
        context.llm().sync.chat("c")
        try:
            context.llm().sync.chat("d")
        except LLMBudgetExceeded:
            return "refused"
        return "allowed"

    @flow
    def f() -> str:
        return flaky()

    assert f() == "refused"
    assert len(attempts) == 2 and attempts[0] == attempts[1]
    assert len(llm_server.requests) == 3


def test_token_budget_counts_stream_and_embeddings(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    async def go() -> LLMBudgetExceeded:
        async with open_session(config=_cfg(llm_server, local_config),
                                llm_budget=LLMBudget(total_tokens=10)) as ctx:
            llm = ctx.llm()
            await llm.embed(["a b c d"])          # 4 tokens
            await llm.chat_stream("x")            # 1 + 2 = 3 -> 7
            await llm.chat("y")                   # 1 + 2 = 3 -> 10: the last one allowed
            with pytest.raises(LLMBudgetExceeded) as err:
                await llm.embed(["z"])
            return err.value

    err = run(go())
    assert (err.budget, err.measure, err.spent, err.limit) == ("task run", "total_tokens", 10, 10)  # type: ignore[attr-defined]
    assert len(llm_server.requests) == 3


def test_bad_budgets_are_typed_errors_at_configuration(llm_server: FakeOpenAI) -> None:
    for bad in ({"calls": 0}, {"total_tokens": -5}, {"cals": 3}):
        with pytest.raises(ConfigError, match="invalid LLMBudget"):
            LLMBudget(**bad)
        with pytest.raises(PydanticValidationError):
            AetherLLMProfile(model="m", budget_per_flow_run=bad)
        with pytest.raises(ValidationError, match="llm_budget"):
            aether_task(llm_budget=bad)(lambda *, context: None)
    with pytest.raises(ValidationError, match="llm_budget"):
        aether_task(llm_budget="10 calls")(lambda *, context: None)
    assert llm_server.requests == []


def test_flow_budget_shared_by_four_tasks_in_two_processes(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    import os

    from prefect.task_runners import ProcessPoolTaskRunner

    cfg = _cfg(llm_server, local_config, budget_per_flow_run=LLMBudget(calls=5))

    @aether_task(config=cfg)
    def spend(i: int, *, context: NodeContext) -> dict[str, Any]:
        sent, refused = 0, 0
        for n in range(6):  # call until refused (the flow budget is 5 calls in all)
            try:
                context.llm().sync.chat(f"task {i} call {n}")
                sent += 1
            except LLMBudgetExceeded:
                refused += 1
                break
        return {"sent": sent, "refused": refused, "pid": os.getpid()}

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=2))
    def f() -> list[dict[str, Any]]:
        return [fut.result() for fut in spend.map(range(4))]

    results = f()
    assert len({r["pid"] for r in results} - {os.getpid()}) >= 1
    assert all(r["pid"] != os.getpid() for r in results)
    assert sum(r["sent"] for r in results) == 5  # calls are reserved atomically in the KV: exact cap
    assert len(llm_server.requests_to("chat/completions")) == 5
    assert all(r["refused"] == 1 for r in results)  # every task saw the typed error once the budget was spent


def test_flow_rollup_equals_task_tables_and_cached_adds_nothing(llm_server: FakeOpenAI,
                                                                local_config: AetherConfig) -> None:
    from prefect.cache_policies import INPUTS, TASK_SOURCE

    cfg = local_config.model_copy(update={"llm": {"default": llm_server.profile(),
                                                  "other": llm_server.profile(model="fake-other")}})

    @aether_task(config=cfg)
    def a(*, context: NodeContext) -> None:
        context.llm().sync.chat("alpha beta")
        context.llm("other").sync.chat("gamma")

    @aether_task(config=cfg, persist_result=True, cache_policy=INPUTS + TASK_SOURCE)
    def cached(x: int, *, context: NodeContext) -> int:
        context.llm().sync.chat(f"cached {x}")
        return x

    @aether_flow(name="llm-rollup-flow", config=cfg)
    def f(*, context: NodeContext) -> str:
        a()
        cached(41)
        cached(41)  # cache hit: the function does not run, no new tokens
        context.llm().sync.embed(["flow body"])  # the flow body's own usage counts too
        return str(context.flow_run_id)

    flow_run_id = f()
    assert len(llm_server.requests_to("chat/completions")) == 3
    arts = run(_artifacts(flow_run_id))
    task_tables = [a for a in arts if (a.metadata_ or {}).get("aether_prefect") == TASK_MARK]
    (rollup,) = [a for a in arts if (a.metadata_ or {}).get("aether_prefect") == FLOW_MARK]
    assert len(task_tables) == 3  # a, the first cached(41), the flow body
    assert rollup.key == flow_usage_key("llm-rollup-flow") == "llm-usage-llm-rollup-flow"
    # Task run states reach the API through events (a moment late): publishing again once the Cached state
    # is visible notes it in the description, and the sums do not change.
    for _ in range(50):
        again = run(publish_flow_usage(flow_run_id, flow_name="llm-rollup-flow"))
        latest = [a for a in run(_artifacts(flow_run_id)) if a.key == rollup.key]
        if any("1 task run(s) came from Prefect's cache" in (x.description or "") for x in latest):
            break
        run(asyncio.sleep(0.2))
    else:
        pytest.fail("the cached task run was never noted in the roll-up")
    assert [r.model_dump() for r in again] == [r for r in json.loads(rollup.data) if r["profile"] != "TOTAL"]
    summed: dict[tuple[str, str], list[int]] = {}
    for t in task_tables:
        for r in json.loads(t.data):
            acc = summed.setdefault((r["profile"], r["model"]), [0, 0, 0, 0])
            for i, k in enumerate(("calls", "prompt_tokens", "completion_tokens", "total_tokens")):
                acc[i] += r[k]
    rolled = {(r["profile"], r["model"]): [r["calls"], r["prompt_tokens"], r["completion_tokens"], r["total_tokens"]]
              for r in json.loads(rollup.data) if r["profile"] != "TOTAL"}
    assert rolled == summed
    assert rolled[("default", "fake-chat")][0] == 2 and rolled[("other", "fake-other")][0] == 1
    assert rolled[("default", "fake-embed")] == [1, 2, 0, 2]
    total = next(r for r in json.loads(rollup.data) if r["profile"] == "TOTAL")
    assert total["calls"] == 4


def test_publish_flow_usage_from_plain_flow(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    @aether_task(config=_cfg(llm_server, local_config))
    async def t(*, context: NodeContext) -> None:
        await context.llm().chat("hello")

    @flow(name="plain-flow-usage")
    async def f() -> tuple[str, list[Any]]:
        await t()
        rows = await publish_flow_usage(_flow_run_id())
        return _flow_run_id(), rows

    flow_run_id, rows = run(f())
    assert [(r.profile, r.calls, r.total_tokens) for r in rows] == [("default", 1, 3)]
    keys = [a.key for a in run(_artifacts(flow_run_id))]
    assert "llm-usage-plain-flow-usage" in keys


def test_rollup_reads_only_the_unkeyed_tables(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    """The roll-up at the end of an @aether_flow reads only the run's tables without a key (#21): the task usage
    tables have none, so the run's saved lists of records (keyed tables) are not downloaded again; sums unchanged."""
    from aether_prefect import read_flow_usage
    from aether_prefect._prefect import artifacts as prefect_artifacts

    cfg = _cfg(llm_server, local_config)

    @aether_task(config=cfg)
    def t(*, context: NodeContext) -> None:
        context.llm().sync.chat("hello")
        context.artifacts().sync.save_json([{"row": i} for i in range(3)], kind="rows", name="rows")

    @aether_flow(name="rollup-unkeyed", config=cfg)
    def f(*, context: NodeContext) -> str:
        t()
        return str(context.flow_run_id)

    flow_run_id = f()
    tables = run(prefect_artifacts.read_artifacts(flow_run_id=flow_run_id, type="table"))
    unkeyed = run(prefect_artifacts.read_artifacts(flow_run_id=flow_run_id, type="table", unkeyed=True))
    assert sorted(str(a.key) for a in tables) == ["None", "llm-usage-rollup-unkeyed", "rows"]
    assert [a.key for a in unkeyed] == [None] and (unkeyed[0].metadata_ or {}).get("aether_prefect") == TASK_MARK
    assert [(r.profile, r.calls) for r in run(read_flow_usage(flow_run_id))] == [("default", 1)]


def test_exchange_log_masks_secrets(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    header_secret = "hdr-secret-value-98765"
    store_secret = "store-secret-abcdef-4321"
    cfg = _cfg(llm_server, local_config, log_exchanges=True, headers={"X-Extra": header_secret})
    cfg = cfg.model_copy(update={"store": cfg.store.model_copy(update={"aws_secret_access_key": SecretStr(store_secret)})})
    long_prompt = "word " * 1000

    @aether_task(config=cfg)
    def talk(*, context: NodeContext) -> str:
        context.llm().sync.chat([{"role": "system", "content": f"never say {header_secret} or {store_secret}"},
                                 {"role": "user", "content": f"tell me {llm_server.api_key}"}])
        context.llm().sync.chat_stream(long_prompt)
        return str(context.flow_run_id)

    @flow
    def f() -> str:
        return talk()

    flow_run_id = f()
    arts = run(_artifacts(flow_run_id))
    logs = [a for a in arts if a.type == "markdown"]
    assert len(logs) == 2
    first = next(a.data for a in logs if "never say" in a.data)
    assert "### system" in first and "### user" in first and "### reply" in first and "echo: tell me ***" in first
    stream_log = next(a.data for a in logs if "never say" not in a.data)
    assert "[... cut: " in stream_log and len(stream_log) < 5000
    everything = json.dumps([a.model_dump(mode="json") for a in arts])
    for secret in (llm_server.api_key, header_secret, store_secret):
        assert secret not in everything
    assert "authorization" not in everything.lower()
    assert llm_server.requests[0].headers["x-extra"] == header_secret  # the header itself was sent

    llm_server.reset()
    off = _cfg(llm_server, local_config)

    @aether_task(config=off)
    def quiet(*, context: NodeContext) -> str:
        context.llm().sync.chat("nothing logged")
        return str(context.flow_run_id)

    @flow
    def g() -> str:
        return quiet()

    assert [a for a in run(_artifacts(g())) if a.type == "markdown"] == []


def test_run_tags_on_requests(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    @aether_task(config=_cfg(llm_server, local_config, tag_requests=True))
    async def tagged(*, context: NodeContext) -> tuple[str, str]:
        await context.llm().chat("tag me")
        await context.llm().embed(["and me"])
        return str(context.flow_run_id), str(context.task_run_id)

    @aether_task(config=_cfg(llm_server, local_config))
    async def untagged(*, context: NodeContext) -> None:
        await context.llm().chat("not me")

    @flow
    async def f() -> tuple[str, str]:
        ids = await tagged()
        await untagged()
        return ids

    flow_run_id, task_run_id = run(f())
    chat, emb, plain = llm_server.requests
    for req in (chat, emb):
        assert req.headers["x-aether-flow-run-id"] == flow_run_id
        assert req.headers["x-aether-task-run-id"] == task_run_id
    assert "x-aether-flow-run-id" not in plain.headers


def test_reask_on_invalid_json(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}

    def reply(content: str, p: int, c: int) -> Reply:
        return Reply(json={"choices": [{"message": {"role": "assistant", "content": content}}],
                           "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}})

    llm_server.script("/chat/completions", [reply("Sure! here: {answer: 4", 10, 5), reply('{"answer": 4}', 20, 3)])

    async def go() -> tuple[str, dict[str, int], list[Any]]:
        async with open_session(config=_cfg(llm_server, local_config)) as ctx:
            text, usage = await ctx.llm().chat("2+2?", output_format="json_schema", json_schema=schema,
                                               validation_retries=1)
            return text, usage, ctx.llm().usage()

    text, usage, rows = run(go())
    assert json.loads(text) == {"answer": 4}
    assert usage == {"prompt_tokens": 30, "completion_tokens": 8, "total_tokens": 38}
    assert rows[0].calls == 2 and rows[0].total_tokens == 38
    second = llm_server.requests[1].json["messages"]
    assert second[-2] == {"role": "assistant", "content": "Sure! here: {answer: 4"}
    assert second[-1]["role"] == "user" and "not valid JSON" in second[-1]["content"]

    llm_server.reset()
    llm_server.script("/chat/completions", [reply("nope", 1, 1), reply('{"answer": "four"}', 1, 1)])

    async def go2() -> None:
        async with open_session(config=_cfg(llm_server, local_config)) as ctx:
            await ctx.llm().chat("2+2?", output_format="json_schema", json_schema=schema, validation_retries=1)

    with pytest.raises(LLMInvalidOutput, match="after 2 attempt") as err:
        run(go2())
    assert err.value.attempts == 2 and "four" in err.value.excerpt
