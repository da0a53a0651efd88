"""The LLM service (#7) against the loopback OpenAI-compatible server and the real Prefect server."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from uuid import UUID

import pytest
from prefect import flow
from pydantic import SecretStr

from aether_prefect import NodeContext, aether_task
from aether_prefect.blocks import AetherConfig
from aether_prefect.errors import LLMError, LLMInvalidOutput, ServiceNotConfigured, ValidationError
from aether_prefect.services.llm import _http as llm_http
from aether_prefect.services.llm._usage import TASK_MARK
from aether_prefect.session import open_session
from tests.servers.openai_server import FakeOpenAI, Reply, embed_text


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep exponential backoff short (Retry-After is still honoured as sent)."""
    monkeypatch.setattr(llm_http, "BACKOFF_BASE_S", 0.05)


def _cfg(server: FakeOpenAI, local_config: AetherConfig, **profile: Any) -> AetherConfig:
    return local_config.model_copy(update={"llm": {"default": server.profile(**profile)}})


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _artifacts(flow_run_id: str, kind: str | None = None) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        arts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)])))
    return [a for a in arts if kind is None or a.type == kind]


def test_plain_chat(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    async def go() -> tuple[str, dict[str, int]]:
        async with open_session(config=_cfg(llm_server, local_config)) as ctx:
            return await ctx.llm().chat([{"role": "system", "content": "be brief"},
                                         {"role": "user", "content": "hello there"}], temperature=0)

    text, usage = run(go())
    assert text == "echo: hello there"
    assert usage == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    (req,) = llm_server.requests
    assert req.path == "/v1/chat/completions"
    assert req.json["model"] == "fake-chat" and req.json["temperature"] == 0
    assert req.headers["authorization"] == f"Bearer {llm_server.api_key}"


def test_streamed_chat_async_and_sync_callbacks(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    pieces: list[str] = []

    async def on_delta(piece: str) -> None:
        await asyncio.sleep(0)
        pieces.append(piece)

    async def go() -> tuple[str, dict[str, int]]:
        async with open_session(config=_cfg(llm_server, local_config)) as ctx:
            return await ctx.llm().chat_stream("one two three", on_delta=on_delta)

    text, usage = run(go())
    assert text == "echo: one two three" == "".join(pieces) and len(pieces) == 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] == 7
    assert llm_server.requests[0].json["stream"] is True

    sync_pieces: list[str] = []
    llm_server.script("/chat/completions", [Reply(sse=[
        {"choices": [{"index": 0, "delta": {"content": "a"}}]}, ": keep-alive comment",
        {"choices": [{"index": 0, "delta": {"content": "b"}}]},
        {"choices": [], "usage": {"input_tokens": 2, "output_tokens": 1}}])])
    from aether_prefect.session import open_session_sync

    with open_session_sync(config=_cfg(llm_server, local_config)) as ctx:
        text, usage = ctx.llm().sync.chat_stream("x", on_delta=sync_pieces.append)
    assert (text, sync_pieces) == ("ab", ["a", "b"])
    assert usage == {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}


def test_429_retry_after_then_success(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    llm_server.script("/chat/completions", [
        Reply(status=429, headers={"Retry-After": "1"}, json={"error": {"message": "Rate limit reached"}})])

    async def go() -> str:
        async with open_session(config=_cfg(llm_server, local_config)) as ctx:
            return (await ctx.llm().chat("hi"))[0]

    assert run(go()) == "echo: hi"
    first, second = llm_server.requests
    assert second.at - first.at >= 0.9  # waited as Retry-After asked


def test_retry_after_http_date_parsed() -> None:
    import email.utils
    import time

    import httpx

    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    r = httpx.Response(429, headers={"Retry-After": when})
    assert 25 <= llm_http.retry_after_s(r) <= 31  # type: ignore[operator]
    assert llm_http.retry_after_s(httpx.Response(429, headers={"retry-after-ms": "250"})) == 0.25


def test_500_twice_then_success_and_no_retry_on_400(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    llm_server.script("/chat/completions", [Reply(status=500, body="oops"), Reply(status=503, json={})])

    async def go() -> str:
        async with open_session(config=_cfg(llm_server, local_config)) as ctx:
            text = (await ctx.llm().chat("again"))[0]
            llm_server.script("/chat/completions", [Reply(status=400, json={"error": {"message": "bad param"}})])
            with pytest.raises(LLMError) as err:
                await ctx.llm().chat("bad")
            assert err.value.status == 400 and "bad param" in str(err.value)
            return text

    assert run(go()) == "echo: again"
    assert len(llm_server.requests) == 4  # 3 for the first call, 1 (no retry) for the 400


def test_retries_exhausted(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    llm_server.script("/chat/completions", [Reply(status=502)] * 3)

    async def go() -> None:
        async with open_session(config=_cfg(llm_server, local_config, max_retries=2)) as ctx:
            await ctx.llm().chat("x")

    with pytest.raises(LLMError) as err:
        run(go())
    assert err.value.status == 502 and "after 3 attempts" in str(err.value)
    assert len(llm_server.requests) == 3


def test_401_typed_error_without_key(llm_server: FakeOpenAI, local_config: AetherConfig,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = _cfg(llm_server, local_config, api_key=SecretStr("sk-wrong-key-abcdef123456"))

    async def go() -> tuple[LLMError, str]:
        async with open_session(config=cfg) as ctx:
            svc = ctx.llm()
            with pytest.raises(LLMError) as err:
                await svc.chat("hi")
            return err.value, repr(svc)

    err, rep = run(go())
    assert err.status == 401 and "Incorrect API key" in str(err) and "api_key" in str(err)
    assert len(llm_server.requests) == 1  # no retry on 401
    assert "sk-wrong-key-abcdef123456" not in str(err) + rep + caplog.text

    # A provider that echoes the key in its error body: the key is masked in the typed error.
    llm_server.script("/chat/completions", [Reply(status=403, json={"error": {
        "message": f"key {llm_server.api_key} is not allowed"}})])

    async def go2() -> LLMError:
        async with open_session(config=_cfg(llm_server, local_config)) as ctx:
            with pytest.raises(LLMError) as e:
                await ctx.llm().chat("hi")
            return e.value

    err2 = run(go2())
    assert err2.status == 403 and llm_server.api_key not in str(err2) and "***" in str(err2)


def test_json_modes(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    schema = {"type": "object", "properties": {"echo": {"type": "string"}}, "required": ["echo"]}
    llm_server.script("/chat/completions", [Reply(json={
        "choices": [{"message": {"role": "assistant", "content": "{not json at all"}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})])

    async def go() -> tuple[str, str, LLMInvalidOutput]:
        async with open_session(config=_cfg(llm_server, local_config)) as ctx:
            llm = ctx.llm()
            with pytest.raises(LLMInvalidOutput) as bad:
                await llm.chat("q", output_format="json_object")
            obj, _ = await llm.chat("q1", output_format="json_object")
            sch, _ = await llm.chat("q2", output_format="json_schema", json_schema=schema)
            return obj, sch, bad.value

    obj, sch, bad = run(go())
    assert "{not json at all" in bad.excerpt and "not valid JSON" in str(bad)
    assert json.loads(obj) == {"echo": "q1"} and json.loads(sch) == {"echo": "q2"}
    sent = llm_server.requests[-1].json["response_format"]
    assert sent == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}

    # Reply valid JSON but not matching the schema: rejected, with the schema problem named.
    llm_server.script("/chat/completions", [Reply(json={
        "choices": [{"message": {"role": "assistant", "content": '{"other": 1}'}}]})])

    async def go2() -> None:
        async with open_session(config=_cfg(llm_server, local_config)) as ctx:
            await ctx.llm().chat("q", output_format="json_schema", json_schema={"name": "x", "schema": schema})

    with pytest.raises(LLMInvalidOutput, match="'echo' is a required property"):
        run(go2())


def test_timeout(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    llm_server.script("/chat/completions", [Reply(delay=3.0, json={})])

    async def go() -> None:
        async with open_session(config=_cfg(llm_server, local_config, timeout_s=0.5)) as ctx:
            await ctx.llm().chat("slow")

    with pytest.raises(LLMError, match="timed out after 0.5s") as err:
        run(go())
    assert err.value.status is None
    assert len(llm_server.requests) == 1  # a read timeout is not retried


def test_embeddings_batched_in_order(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    texts = ["alpha beta", "gamma", "delta epsilon zeta", "eta", "theta iota"]

    async def go() -> list[list[float]]:
        async with open_session(config=_cfg(llm_server, local_config)) as ctx:
            vecs = await ctx.llm().embed(texts, batch_size=2)
            assert await ctx.llm().embed([]) == []
            with pytest.raises(ValidationError):
                await ctx.llm().embed("not a list")  # type: ignore[arg-type]
            rows = ctx.llm().usage()
            assert [(r.model, r.calls) for r in rows] == [("fake-embed", 3)]
            return vecs

    vecs = run(go())
    assert vecs == [pytest.approx(embed_text(t)) for t in texts]
    assert sorted(len(r.json["input"]) for r in llm_server.requests) == [1, 2, 2]  # batches go concurrently


def test_azure_provider(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    cfg = _cfg(llm_server, local_config, provider="azure", base_url=llm_server.url, model="dep-chat",
               embed_model="dep-embed", api_version="2024-06-01")

    async def go() -> tuple[str, int]:
        async with open_session(config=cfg) as ctx:
            text, _ = await ctx.llm().chat("hi azure")
            vecs = await ctx.llm().embed(["x"])
            return text, len(vecs)

    assert run(go()) == ("echo: hi azure", 1)
    chat, emb = llm_server.requests
    assert chat.path == "/openai/deployments/dep-chat/chat/completions" and chat.query == {"api-version": "2024-06-01"}
    assert emb.path == "/openai/deployments/dep-embed/embeddings"
    assert chat.headers["api-key"] == llm_server.api_key and "authorization" not in chat.headers


def test_raw_and_key_only_to_own_origin(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    async def go() -> Any:
        async with open_session(config=_cfg(llm_server, local_config)) as ctx:
            models = await ctx.llm().raw(method="GET", path="/models")
            other = llm_server.base_url.replace("127.0.0.1", "localhost") + "/models"
            with pytest.raises(LLMError) as err:
                await ctx.llm().raw(method="GET", url=other)  # other origin: no key sent, so 401
            assert err.value.status == 401
            with pytest.raises(ValidationError):
                await ctx.llm().raw(path="/a", url="http://x")
            return models

    assert [m["id"] for m in run(go())["data"]] == ["fake-chat", "fake-embed"]
    assert "authorization" in llm_server.requests[0].headers
    assert "authorization" not in llm_server.requests[1].headers


def test_bad_input_and_unknown_profile(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    async def go() -> None:
        async with open_session(config=_cfg(llm_server, local_config)) as ctx:
            llm = ctx.llm()
            for call in (lambda: llm.chat([]), lambda: llm.chat([{"content": "no role"}]),
                         lambda: llm.chat("x", output_format="yaml"),
                         lambda: llm.chat("x", output_format="json_schema"),
                         lambda: llm.chat("x", output_format="json_schema", json_schema={"type": 12}),
                         lambda: llm.chat("x", max_output_tokens=0),
                         lambda: llm.chat("x", validation_retries=-1)):
                with pytest.raises(ValidationError):
                    await call()
            with pytest.raises(ServiceNotConfigured, match="'nope'"):
                ctx.llm("nope")

    run(go())
    assert llm_server.requests == []  # nothing was sent


def test_max_concurrency_caps_calls(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    llm_server.script("/chat/completions", [Reply(delay=0.4, json={
        "choices": [{"message": {"role": "assistant", "content": "ok"}}]})] * 4)

    async def go() -> None:
        async with open_session(config=_cfg(llm_server, local_config), max_concurrency=2) as ctx:
            await asyncio.gather(*(ctx.llm().chat(f"c{i}") for i in range(4)))

    run(go())
    arrivals = sorted(r.at for r in llm_server.requests)
    assert len(arrivals) == 4
    assert arrivals[2] - arrivals[0] >= 0.35  # the 3rd call waited until a reply (0.4 s each) freed a slot


def test_usage_table_artifact_in_flow_run(llm_server: FakeOpenAI, local_config: AetherConfig,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = local_config.model_copy(update={"llm": {"default": llm_server.profile(),
                                                  "other": llm_server.profile(model="fake-other")}})

    @aether_task(config=cfg)
    def work(*, context: NodeContext) -> str:
        context.llm().sync.chat("one two")            # 2 + 3 tokens
        context.llm().sync.chat("three")              # 1 + 2
        context.llm("other").sync.chat_stream("four")  # 1 + 2
        context.llm().sync.embed(["a b c"])           # 3 + 0
        context.logger().info("llm repr %r", context.llm())
        return str(context.task_run_id)

    @flow(name="llm-usage-table")
    def f() -> tuple[str, str]:
        from prefect.runtime import flow_run

        return work(), str(flow_run.id)

    task_run_id, flow_run_id = f()
    tables = [a for a in run(_artifacts(flow_run_id, "table")) if (a.metadata_ or {}).get("aether_prefect") == TASK_MARK]
    assert len(tables) == 1 and str(tables[0].task_run_id) == task_run_id
    rows = {(r["profile"], r["model"]): r for r in json.loads(tables[0].data)}
    assert rows[("default", "fake-chat")] == {"profile": "default", "model": "fake-chat", "calls": 2,
                                              "prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8,
                                              "replayed": 0, "tokens_saved": 0}
    assert rows[("other", "fake-other")]["calls"] == 1 and rows[("other", "fake-other")]["total_tokens"] == 3
    assert rows[("default", "fake-embed")]["prompt_tokens"] == 3
    everything = json.dumps([a.model_dump(mode="json") for a in run(_artifacts(flow_run_id))])
    assert llm_server.api_key not in everything + caplog.text


def test_tool_calls_reach_last_response(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]

    async def go() -> tuple[str, Any]:
        async with open_session(config=_cfg(llm_server, local_config)) as ctx:
            llm = ctx.llm()
            text, _ = await llm.chat("find it", tools=tools, tool_choice="required")
            return text, llm.last_response

    text, response = run(go())
    assert text == ""
    (call,) = response["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "lookup"
    assert llm_server.requests[0].json["tools"] == tools and llm_server.requests[0].json["tool_choice"] == "required"


def test_llm_set_key_and_overrides(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    async def go() -> tuple[int | None, str]:
        async with open_session(config=_cfg(llm_server, local_config, api_key=None)) as ctx:
            with pytest.raises(LLMError) as err:
                await ctx.llm().chat("no key yet")
            ctx.llm_set_key("openai", llm_server.api_key, model="fake-set")
            text, _ = await ctx.llm(timeout_s=5).chat("with key")
            return err.value.status, text

    status, text = run(go())
    assert status == 401 and text == "echo: with key"
    assert llm_server.requests[-1].json["model"] == "fake-set"


def test_concurrent_calls_spread_over_the_client_pool(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    """Concurrent chats go to the least busy of SHARDS clients (httpcore's per-pool scans grow with the calls in
    flight in one pool); sequential chats all use the first one; every lease is returned, after failures too."""
    shards = llm_http.SHARDS

    async def go() -> tuple[list[int], list[int], list[int], list[int]]:
        async with open_session(config=_cfg(llm_server, local_config)) as ctx:
            llm = ctx.llm()
            pool = llm_http.client_pool()
            assert len(pool.clients) == shards and len({id(c) for c in pool.clients}) == shards
            picked: list[int] = []
            acquire = pool.acquire

            def recording() -> int:
                picked.append(acquire())
                return picked[-1]

            pool.acquire = recording  # type: ignore[method-assign]
            for i in range(5):
                await llm.chat(f"one at a time {i}")
            sequential, picked[:] = list(picked), []
            texts = await asyncio.gather(*(llm.chat(f"q {i}") for i in range(8 * shards)))
            assert [t for t, _ in texts] == [f"echo: q {i}" for i in range(8 * shards)]
            concurrent, picked[:] = list(picked), []
            llm_server.script("/chat/completions", [Reply(status=400, json={"error": {"message": "bad"}})] * 3)
            failed = await asyncio.gather(*(llm.chat("x") for _ in range(3)), return_exceptions=True)
            assert all(isinstance(e, LLMError) for e in failed)
            pool.acquire = acquire  # type: ignore[method-assign]
            idle = [pool.acquire() for _ in range(shards)]  # all leases back: one per client, in order
            for i in idle:
                pool.release(i)
            return sequential, concurrent, picked, idle

    sequential, concurrent, failed, idle = run(go())
    assert sequential == [0] * 5
    assert sorted(concurrent) == sorted(list(range(shards)) * 8)
    assert failed == [0, 1, 2] and idle == list(range(shards))


def test_a_custom_transport_gets_one_client() -> None:
    import httpx

    async def go() -> int:
        transport = httpx.MockTransport(lambda request: httpx.Response(200, json={}))
        return len(llm_http.client_pool(transport).clients)

    assert run(go()) == 1


def test_the_client_pool_builds_one_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shards share one TLS context: loading the CA bundle per client cost ~70 ms each at a loop's first call."""
    import ssl

    built: list[ssl.SSLContext] = []
    create = ssl.create_default_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        built.append(create(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(ssl, "create_default_context", counting)

    async def go() -> int:
        pool = llm_http.ClientPool()
        for c in pool.clients:
            await c.aclose()
        return len(pool.clients)

    assert run(go()) == llm_http.SHARDS and len(built) == 1
