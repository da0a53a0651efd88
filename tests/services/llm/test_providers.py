"""Providers (#24): the provider table, AetherGraph-style profiles, OpenAI reasoning models, key and URL masking (#17.11-12)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import pytest
from pydantic import SecretStr
from pydantic import ValidationError as PydanticValidationError

from aether_prefect.blocks import AetherConfig, AetherLLMProfile
from aether_prefect.errors import ConfigError, LLMError, ServiceNotConfigured
from aether_prefect.services.llm import _http as llm_http
from aether_prefect.services.llm._providers import PROVIDERS, default_base_url, is_reasoning_model
from aether_prefect.session import open_session
from tests.servers.anthropic_server import anthropic_server, anthropic_server_session  # noqa: F401
from tests.servers.gemini_server import gemini_server, gemini_server_session  # noqa: F401
from tests.servers.openai_server import FakeOpenAI, Reply, embed_text

AETHERGRAPH_PROVIDERS = ["openai", "azure", "anthropic", "google", "deepseek", "openrouter", "lmstudio", "ollama",
                         "openai_compatible"]


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm_http, "BACKOFF_BASE_S", 0.05)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _artifacts(flow_run_id: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)])))


def test_every_aethergraph_provider_is_accepted_and_unknown_ones_list_them() -> None:
    for name in [*AETHERGRAPH_PROVIDERS, "vllm", "Gemini", " OpenAI "]:
        assert AetherLLMProfile(provider=name).provider in PROVIDERS
    assert AetherLLMProfile(provider="gemini").provider == "google"
    with pytest.raises(PydanticValidationError) as err:
        AetherLLMProfile(provider="cohere")
    assert "unknown LLM provider 'cohere'" in str(err.value)
    for name in AETHERGRAPH_PROVIDERS:
        assert name in str(err.value)


def test_one_url_table_for_context_and_service() -> None:
    import aether_prefect.context as context_module
    import aether_prefect.services.llm as llm_module

    assert not hasattr(context_module, "_PROVIDER_URLS") and not hasattr(llm_module, "_PROVIDER_URLS")
    assert default_base_url("vllm") == "http://localhost:8000/v1"
    assert default_base_url("anthropic") == "https://api.anthropic.com"
    assert default_base_url("azure") is None
    assert not hasattr(llm_module.LLMService, "usage_totals")  # #18.5: the unused method is gone


def test_aethergraph_profile_fields_load_unchanged() -> None:
    # The fields of aethergraph.config.llm.LLMProfile, as an AetherGraph config writes them.
    prof = AetherLLMProfile(provider="azure", model="gpt-4o-mini", azure_deployment="my-dep", timeout=12.5,
                            base_url="https://res.openai.azure.com", api_key=SecretStr("k"),
                            endpoint_id="azure_responses", retry={"max_attempts": 2}, thinking_budget=4096,
                            reasoning_summary="auto", vision_enabled=False, api_key_ref=None)
    assert (prof.model, prof.timeout_s, prof.api, prof.max_retries) == ("my-dep", 12.5, "responses", 1)
    assert prof.reasoning is None  # gpt-4o-mini is no reasoning model
    o3 = AetherLLMProfile(provider="azure", model="o3-mini", azure_deployment="prod-reasoner",
                          base_url="https://res.openai.azure.com")
    assert (o3.model, o3.reasoning) == ("prod-reasoner", True)  # the deployment keeps the family's parameters
    assert "thinking_budget" not in prof.model_dump()


@pytest.mark.parametrize("model", ["o1", "o3-mini", "o4-mini", "gpt-5", "gpt-5-mini", "openai/o3", "o1-2024-12-17"])
def test_reasoning_families(model: str) -> None:
    assert is_reasoning_model(model)


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "omni-moderation", "llama3", None])
def test_not_reasoning_families(model: str | None) -> None:
    assert not is_reasoning_model(model)


def test_reasoning_model_gets_max_completion_tokens(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    cfg = local_config.model_copy(update={"llm": {
        "default": llm_server.profile(model="o3-mini", reasoning_effort="low"),
        "plain": llm_server.profile(model="gpt-4o-mini"),
        "azure": llm_server.profile(provider="azure", base_url=llm_server.url, model="o4-mini",
                                    azure_deployment="prod-reasoner")}})

    async def go() -> None:
        async with open_session(config=cfg) as ctx:
            await ctx.llm().chat("hi", max_output_tokens=50, temperature=0.2)
            await ctx.llm("plain").chat("hi", max_output_tokens=50, temperature=0.2)
            await ctx.llm("azure").chat("hi", max_output_tokens=50, temperature=0.2)

    run(go())
    reasoning, plain, azure = (r.json for r in llm_server.requests)
    assert llm_server.requests[2].path == "/openai/deployments/prod-reasoner/chat/completions"
    assert azure["max_completion_tokens"] == 50 and "max_tokens" not in azure and "temperature" not in azure
    assert reasoning["max_completion_tokens"] == 50 and "max_tokens" not in reasoning
    assert "temperature" not in reasoning and reasoning["reasoning_effort"] == "low"
    assert plain["max_tokens"] == 50 and plain["temperature"] == 0.2 and "max_completion_tokens" not in plain


def test_override_key_sends_the_key_asked_for(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    """#17.11: llm(api_key=k2) after llm(api_key=k1) sends k2 (and the same for headers=)."""
    cfg = local_config.model_copy(update={"llm": {"default": llm_server.profile(api_key=None)}})

    async def go() -> None:
        async with open_session(config=cfg) as ctx:
            with pytest.raises(LLMError):
                await ctx.llm(api_key=SecretStr("k1-wrong-key")).chat("a")
            await ctx.llm(api_key=SecretStr(llm_server.api_key)).chat("b")
            first = ctx.llm(headers={"X-Team": "one"})
            second = ctx.llm(headers={"X-Team": "two"})
            assert first is not second and ctx.llm(headers={"X-Team": "one"}) is first
            with pytest.raises(LLMError):
                await second.chat("c")  # no key: 401, but the header it sent is its own
            keys = [k for k in ctx._services if isinstance(k, tuple) and k[:1] == ("llm",)]
            assert "k1-wrong-key" not in repr(keys) and "two" not in repr(keys)

    run(go())
    sent = [(r.headers.get("authorization"), r.headers.get("x-team")) for r in llm_server.requests]
    assert sent == [("Bearer k1-wrong-key", None), (f"Bearer {llm_server.api_key}", None), (None, "two")]


def test_base_url_credentials_are_masked(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    """#17.12: a user:pass@ part of base_url never shows in reprs or error messages."""
    url = llm_server.base_url.replace("http://", "http://alice:hunter2-pass@")
    cfg = local_config.model_copy(update={"llm": {"default": llm_server.profile(base_url=url, max_retries=0)}})

    async def go() -> tuple[str, str]:
        async with open_session(config=cfg) as ctx:
            svc = ctx.llm()
            with pytest.raises(LLMError) as err:
                await svc.chat("x")
            return repr(svc), str(err.value)

    rep, msg = run(go())
    assert "hunter2-pass" not in rep + msg and "***@127.0.0.1" in rep and "***@127.0.0.1" in msg


def test_unknown_provider_in_llm_set_key_and_missing_base_url(local_config: AetherConfig) -> None:
    from aether_prefect.errors import ValidationError

    async def go() -> None:
        async with open_session(config=local_config) as ctx:
            with pytest.raises(ValidationError, match="accepted providers"):
                ctx.llm_set_key("cohere", "k")
            ctx.llm_set_key("openai_compatible", "k", model="m")
            with pytest.raises(ConfigError, match="no default base_url"):
                ctx.llm()

    run(go())


# -- the same behaviour tests against every wire format's loopback server ---------------------------------------


@dataclass
class Case:
    """One provider profile against its loopback server, and how to script that server's native replies."""

    name: str
    server: FakeOpenAI
    fields: dict[str, Any]
    chat_key: str      # script key of the chat endpoint
    embed_key: str | None
    text_reply: Callable[[str], Reply]
    rate_limited: Callable[[], Reply]   # a 429 asking to wait 1 s
    overloaded: Callable[[], Reply]     # the provider's "busy" error, retried like a 429
    auth: tuple[str, str]               # header that must carry the key, and its value

    def profile(self, **more: Any) -> Any:
        return self.server.profile(**{**self.fields, **more})

    def config(self, local_config: AetherConfig, **more: Any) -> AetherConfig:
        return local_config.model_copy(update={"llm": {"default": self.profile(**more)}})


def _openai_text(text: str) -> Reply:
    return Reply(json={"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
                       "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


def _responses_text(text: str) -> Reply:
    return Reply(json={"object": "response", "status": "completed", "output": [
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}],
        "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}})


def _anthropic_text(text: str) -> Reply:
    from tests.servers.anthropic_server import message

    return Reply(json=message([{"type": "text", "text": text}], 1, 1))


def _gemini_text(text: str) -> Reply:
    from tests.servers.gemini_server import generate_response

    return Reply(json=generate_response([{"text": text}], 1, 1, model="gemini-fake"))


def _openai_error(status: int, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status=status, headers=headers or {},
                 json={"error": {"message": "Rate limit reached" if status == 429 else "The server is overloaded",
                                 "type": "requests", "code": None}})


def _case(name: str, request: pytest.FixtureRequest) -> Case:
    from tests.servers.anthropic_server import anthropic_error
    from tests.servers.gemini_server import google_error

    if name == "anthropic":
        srv = request.getfixturevalue("anthropic_server")
        return Case(name, srv, {}, "/messages", None, _anthropic_text,
                    lambda: anthropic_error(429, "rate_limit_error", "Number of requests has exceeded your rate limit",
                                            {"retry-after": "1"}),
                    lambda: anthropic_error(529, "overloaded_error", "Overloaded"), ("x-api-key", srv.api_key))
    if name == "google":
        srv = request.getfixturevalue("gemini_server")
        return Case(name, srv, {}, "generateContent", "batchEmbedContents", _gemini_text,
                    lambda: google_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).",
                                         {"retry-after": "1"}),
                    lambda: google_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
                    ("x-goog-api-key", srv.api_key))
    srv = request.getfixturevalue("llm_server")
    rate = lambda: _openai_error(429, {"retry-after": "1"})  # noqa: E731
    busy = lambda: _openai_error(503)  # noqa: E731
    bearer = ("authorization", f"Bearer {srv.api_key}")
    if name == "openai-responses":
        return Case(name, srv, {"provider": "openai", "api": "responses"}, "/responses", "/embeddings",
                    _responses_text, rate, busy, bearer)
    if name == "azure":
        return Case(name, srv, {"provider": "azure", "base_url": srv.url, "model": "dep-chat",
                                "embed_model": "dep-embed"}, "/chat/completions", "/embeddings", _openai_text, rate,
                    busy, ("api-key", srv.api_key))
    provider = "openai" if name == "openai-chat" else name
    embed_key = None if provider == "deepseek" else "/embeddings"
    return Case(name, srv, {"provider": provider}, "/chat/completions", embed_key, _openai_text, rate, busy, bearer)


WIRES = ["openai-chat", "openai-responses", "azure", "anthropic", "google"]
COMPATIBLE = ["deepseek", "openrouter", "lmstudio", "ollama", "openai_compatible", "vllm"]


@pytest.fixture(params=WIRES)
def wire(request: pytest.FixtureRequest) -> Case:
    return _case(request.param, request)


@pytest.fixture(params=WIRES + COMPATIBLE)
def any_provider(request: pytest.FixtureRequest) -> Case:
    return _case(request.param, request)


def test_chat_and_stream_every_provider(any_provider: Case, local_config: AetherConfig) -> None:
    case = any_provider
    pieces: list[str] = []

    async def go() -> tuple[Any, Any]:
        async with open_session(config=case.config(local_config)) as ctx:
            plain = await ctx.llm().chat([{"role": "system", "content": "be brief"},
                                          {"role": "user", "content": "hello there"}])
            streamed = await ctx.llm().chat_stream("one two three", on_delta=pieces.append)
            return plain, streamed

    (text, usage), (stext, susage) = run(go())
    assert text == "echo: hello there"
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert stext == "echo: one two three" == "".join(pieces) and len(pieces) >= 2
    assert susage["completion_tokens"] == 4 and susage["total_tokens"] == susage["prompt_tokens"] + 4
    header, value = case.auth
    assert all(r.headers.get(header) == value for r in case.server.requests)


def test_doctor_probes_each_providers_own_model_list(any_provider: Case, local_config: AetherConfig) -> None:
    """`aether-prefect doctor` lists models where the provider serves them (not `base_url + /models` for all)."""
    case = any_provider

    async def go() -> None:
        async with open_session(config=case.config(local_config)) as ctx:
            await ctx.llm()._probe()

    run(go())
    req = case.server.requests[-1]
    want = {"anthropic": "/v1/models", "google": "/v1beta/models", "azure": "/openai/models"}
    assert req.method == "GET"
    assert req.path == want.get(case.name, "/v1/models"), req.path
    if case.name == "azure":
        assert req.query.get("api-version")
    header, value = case.auth
    assert req.headers.get(header) == value


def test_json_modes_validated_and_reasked(wire: Case, local_config: AetherConfig) -> None:
    schema = {"type": "object", "properties": {"echo": {"type": "string"}}, "required": ["echo"]}
    wire.server.script(wire.chat_key, [wire.text_reply("{not json"), wire.text_reply('{"other": 1}')])

    async def go() -> tuple[str, dict[str, int], str]:
        async with open_session(config=wire.config(local_config)) as ctx:
            text, usage = await ctx.llm().chat("q", output_format="json_schema", json_schema=schema,
                                               validation_retries=2)
            obj, _ = await ctx.llm().chat("q2", output_format="json_object")
            return text, usage, obj

    text, usage, obj = run(go())
    assert set(json.loads(text)) == {"echo"} and json.loads(obj) == {"echo": "q2"}
    assert usage["total_tokens"] >= 4  # three attempts summed
    first, second, third, _ = (r.json for r in wire.server.requests)
    assert "{not json" in json.dumps(third) and "not valid JSON" in json.dumps(second)
    assert "'echo' is a required property" in json.dumps(third)


def test_tools_round_trip(wire: Case, local_config: AetherConfig) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "description": "Find a thing.",
                                                "parameters": {"type": "object",
                                                               "properties": {"echo": {"type": "string"}}}}}]

    async def go() -> tuple[str, list[dict[str, Any]], str]:
        async with open_session(config=wire.config(local_config)) as ctx:
            llm = ctx.llm()
            text, _ = await llm.chat("find it", tools=tools, tool_choice="required")
            calls = llm.last_tool_calls
            follow = [{"role": "user", "content": "find it"},
                      {"role": "assistant", "content": None, "tool_calls": calls},
                      {"role": "tool", "tool_call_id": calls[0]["id"], "content": "found: 42"},
                      {"role": "user", "content": "and now?"}]
            answer, _ = await llm.chat(follow, tools=tools)
            return text, calls, answer

    text, calls, answer = run(go())
    assert text == "" and len(calls) == 1
    assert calls[0]["type"] == "function" and calls[0]["function"]["name"] == "lookup"
    assert json.loads(calls[0]["function"]["arguments"]) == {"echo": "find it"}
    assert answer == "echo: and now?"  # the tool result was accepted in the provider's own shape
    assert "found: 42" in json.dumps(wire.server.requests[1].json)


def test_retries_honour_retry_after_and_overload(wire: Case, local_config: AetherConfig) -> None:
    wire.server.script(wire.chat_key, [wire.rate_limited(), wire.overloaded()])

    async def go() -> str:
        async with open_session(config=wire.config(local_config)) as ctx:
            return (await ctx.llm().chat("hi"))[0]

    assert run(go()) == "echo: hi"
    first, second, third = wire.server.requests
    assert second.at - first.at >= 0.9  # waited as Retry-After asked

    wire.server.reset()
    wire.server.script(wire.chat_key, [wire.overloaded()] * 2)

    async def go2() -> None:
        async with open_session(config=wire.config(local_config, max_retries=1)) as ctx:
            await ctx.llm().chat("hi")

    with pytest.raises(LLMError, match="after 2 attempts") as err:
        run(go2())
    assert wire.server.api_key not in str(err.value)


def test_embeddings_or_a_clear_error(wire: Case, local_config: AetherConfig) -> None:
    texts = ["alpha beta", "gamma", "delta epsilon zeta"]

    async def go() -> list[list[float]]:
        async with open_session(config=wire.config(local_config)) as ctx:
            vecs = await ctx.llm().embed(texts, batch_size=2)
            assert [r.calls for r in ctx.llm().usage() if r.model == (wire.profile().embed_model)] == [2]
            return vecs

    if wire.embed_key is None:
        with pytest.raises(ServiceNotConfigured, match="embed_profile"):
            run(go())
        return
    assert run(go()) == [pytest.approx(embed_text(t)) for t in texts]


def test_provider_without_embeddings_uses_its_embed_profile(anthropic_server: Any, llm_server: FakeOpenAI,
                                                            local_config: AetherConfig) -> None:
    cfg = local_config.model_copy(update={"llm": {"default": anthropic_server.profile(embed_profile="embed"),
                                                  "embed": llm_server.profile()}})

    async def go() -> list[list[float]]:
        async with open_session(config=cfg) as ctx:
            return await ctx.llm().embed(["alpha"])

    assert run(go()) == [pytest.approx(embed_text("alpha"))]
    assert [r.path for r in llm_server.requests] == ["/v1/embeddings"] and anthropic_server.requests == []


def test_budget_and_usage_table_every_wire(wire: Case, local_config: AetherConfig) -> None:
    from prefect import flow

    from aether_prefect import NodeContext, aether_task
    from aether_prefect.budgets import LLMBudget
    from aether_prefect.errors import LLMBudgetExceeded
    from aether_prefect.services.llm._usage import TASK_MARK

    @aether_task(config=wire.config(local_config), llm_budget=LLMBudget(calls=2))
    def work(*, context: NodeContext) -> str:
        context.llm().sync.chat("one two")
        context.llm().sync.chat_stream("three")
        with pytest.raises(LLMBudgetExceeded):
            context.llm().sync.chat("four")
        return str(context.task_run_id)

    @flow(name=f"llm-providers-{wire.name}")
    def f() -> tuple[str, str]:
        from prefect.runtime import flow_run

        return work(), str(flow_run.id)

    task_run_id, flow_run_id = f()
    assert len(wire.server.requests) == 2  # the refused call sent nothing
    tables = [a for a in run(_artifacts(flow_run_id)) if (a.metadata_ or {}).get("aether_prefect") == TASK_MARK]
    assert len(tables) == 1 and str(tables[0].task_run_id) == task_run_id
    (row,) = json.loads(tables[0].data)
    assert row["calls"] == 2 and row["model"] == wire.profile().model
    assert row["completion_tokens"] == 3 + 2 and row["total_tokens"] == row["prompt_tokens"] + 5


def test_openrouter_attribution_headers(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    cfg = local_config.model_copy(update={"llm": {
        "default": llm_server.profile(provider="openrouter", app_name="My App", app_url="https://example.org"),
        "plain": llm_server.profile(provider="openrouter")}})

    async def go() -> None:
        async with open_session(config=cfg) as ctx:
            await ctx.llm().chat("hi")
            await ctx.llm("plain").chat("hi")

    run(go())
    named, plain = llm_server.requests
    assert named.headers["x-title"] == "My App" and named.headers["http-referer"] == "https://example.org"
    assert "x-title" not in plain.headers and "http-referer" not in plain.headers


def test_anthropic_request_shape(anthropic_server: Any, local_config: AetherConfig) -> None:
    cfg = local_config.model_copy(update={"llm": {"default": anthropic_server.profile()}})

    async def go() -> None:
        async with open_session(config=cfg) as ctx:
            await ctx.llm().chat([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                                 stop="END", temperature=0)
            await ctx.llm().chat("hi", max_output_tokens=77)

    run(go())
    first, second = (r for r in anthropic_server.requests)
    assert first.headers["anthropic-version"] == "2023-06-01" and "authorization" not in first.headers
    assert first.json["system"] == "be brief" and first.json["messages"] == [{"role": "user", "content": "hi"}]
    assert first.json["max_tokens"] == 4096 and first.json["stop_sequences"] == ["END"]
    assert second.json["max_tokens"] == 77


def test_gemini_request_shape(gemini_server: Any, local_config: AetherConfig) -> None:
    cfg = local_config.model_copy(update={"llm": {"default": gemini_server.profile()}})

    async def go() -> None:
        async with open_session(config=cfg) as ctx:
            await ctx.llm().chat([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                                  {"role": "assistant", "content": "echo: hi"}, {"role": "user", "content": "again"}],
                                 max_output_tokens=64, temperature=0.5)
            await ctx.llm().embed(["one"])

    run(go())
    chat, emb = gemini_server.requests
    assert chat.path == "/v1beta/models/gemini-fake:generateContent"
    assert chat.json["systemInstruction"] == {"parts": [{"text": "be brief"}]}
    assert [c["role"] for c in chat.json["contents"]] == ["user", "model", "user"]
    assert chat.json["generationConfig"] == {"maxOutputTokens": 64, "temperature": 0.5}
    assert emb.path == "/v1beta/models/gemini-embed-fake:embedContent"


def test_aethergraph_style_profile_per_provider(local_config: AetherConfig, request: pytest.FixtureRequest) -> None:
    """An AetherGraph LLMProfile's fields (provider, model, base_url, api_key, timeout, ...) work unchanged."""
    for name in ["openai-chat", "anthropic", "google", "deepseek", "openrouter", "lmstudio", "ollama",
                 "openai_compatible"]:
        case = _case(name, request)
        case.server.reset()
        provider = {"openai-chat": "openai"}.get(name, name)
        fields = dict(provider=provider, model=case.profile().model, base_url=case.server.base_url,
                      api_key=SecretStr(case.server.api_key), timeout=30.0, embed_model=None,
                      retry={"max_attempts": 2}, reasoning_effort=None, compatibility_policy="compat",
                      structured_output_policy="best_available", prompt_cache_policy="auto",
                      thinking_budget=4096, reasoning_summary="auto", vision_enabled=False)
        cfg = local_config.model_copy(update={"llm": {"default": AetherLLMProfile(**fields)}})

        async def go() -> str:
            async with open_session(config=cfg) as ctx:
                return (await ctx.llm().chat("hi"))[0]

        assert run(go()) == "echo: hi", name


def test_api_key_ref_reads_the_environment_and_stays_masked(anthropic_server: Any, local_config: AetherConfig,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """AetherGraph's api_key_ref names where the key is: the environment variable is read at send time."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", anthropic_server.api_key)
    cfg = local_config.model_copy(update={"llm": {
        "default": anthropic_server.profile(api_key=None, api_key_ref="ANTHROPIC_API_KEY")}})
    anthropic_server.script("/messages", [{"status": 400, "json": {"type": "error", "error": {
        "type": "invalid_request_error", "message": f"echoing {anthropic_server.api_key}"}}}])

    async def go() -> tuple[str, str]:
        async with open_session(config=cfg) as ctx:
            with pytest.raises(LLMError) as err:
                await ctx.llm().chat("hi")
            return str(err.value), (await ctx.llm().chat("hi"))[0]

    message, text = run(go())
    assert text == "echo: hi" and anthropic_server.api_key not in message and "***" in message
    assert anthropic_server.requests[-1].headers["x-api-key"] == anthropic_server.api_key
