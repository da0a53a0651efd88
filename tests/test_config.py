"""Config resolution: one test per precedence rule."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from pydantic import SecretStr

from aether_prefect import AetherConfig, AetherLLMProfile, ConfigError, build_adhoc_context, clear_config_cache
from aether_prefect.config import aresolve_config, llm_profile
from aether_prefect.errors import ValidationError


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    clear_config_cache()
    for var in ("AETHER_PREFECT_CONFIG", "OPENAI_API_KEY", "OPENAI_BASE_URL", "AETHER_LLM_MODEL"):
        monkeypatch.delenv(var, raising=False)
    yield
    clear_config_cache()


def _name() -> str:
    return f"cfg-{uuid.uuid4().hex[:10]}"


def test_instance_is_used_as_is() -> None:
    cfg = AetherConfig(kv_namespace="inst")
    assert asyncio.run(aresolve_config(cfg)) is cfg


def test_saved_name_is_loaded() -> None:
    name = _name()
    AetherConfig(kv_namespace="by-name").save(name)
    assert asyncio.run(aresolve_config(name)).kv_namespace == "by-name"


def test_missing_saved_name_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="No saved AetherConfig block named 'nope-missing'.*aether-config"):
        asyncio.run(aresolve_config("nope-missing"))


def test_wrong_type_and_bad_name() -> None:
    with pytest.raises(ConfigError, match="takes an AetherConfig or the name"):
        asyncio.run(aresolve_config(42))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not a valid block name"):
        asyncio.run(aresolve_config("Bad Name"))
    with pytest.raises(ValidationError, match="config= takes"):
        asyncio.run(build_adhoc_context(config=3.5))


def test_env_names_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    name = _name()
    AetherConfig(kv_namespace="from-env").save(name)
    monkeypatch.setenv("AETHER_PREFECT_CONFIG", name)
    assert asyncio.run(aresolve_config(None)).kv_namespace == "from-env"


def test_explicit_config_beats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AETHER_PREFECT_CONFIG", "does-not-exist")
    assert asyncio.run(aresolve_config(AetherConfig(kv_namespace="explicit"))).kv_namespace == "explicit"


def test_saved_default_then_embedded_defaults() -> None:
    from prefect.client.orchestration import get_client

    AetherConfig(kv_namespace="saved-default").save("default", overwrite=True)
    try:
        assert asyncio.run(aresolve_config(None)).kv_namespace == "saved-default"
    finally:
        async def drop() -> None:
            async with get_client() as client:
                doc = await client.read_block_document_by_name("default", block_type_slug="aether-config")
                await client.delete_block_document(doc.id)

        asyncio.run(drop())
    clear_config_cache()
    cfg = asyncio.run(aresolve_config(None))
    assert cfg.kv_namespace == "aether" and cfg.store is None and cfg.llm == {}


def test_loaded_once_then_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    import aether_prefect.config as config_module

    monkeypatch.setattr(config_module, "REFRESH_S", 600.0)
    name = _name()
    AetherConfig(kv_namespace="first").save(name)
    assert asyncio.run(aresolve_config(name)).kv_namespace == "first"
    AetherConfig(kv_namespace="second").save(name, overwrite=True)
    assert asyncio.run(aresolve_config(name)).kv_namespace == "first"  # cached within the refresh period
    clear_config_cache()
    assert asyncio.run(aresolve_config(name)).kv_namespace == "second"


def test_rt_overrides_beat_config() -> None:
    cfg = AetherConfig(kv_namespace="cfgns", memory_level="graph")

    async def go() -> tuple[str, str, str, str]:
        a = await build_adhoc_context(config=cfg, kv_namespace="override", memory_level="session", session_id="s")
        b = await build_adhoc_context(config=cfg)
        return a.kv_namespace, a.memory_level, b.kv_namespace, b.memory_level

    assert asyncio.run(go()) == ("override", "session", "cfgns", "graph")


def test_config_beats_environment_for_llm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    monkeypatch.setenv("AETHER_LLM_MODEL", "env-model")
    cfg = AetherConfig(llm={"default": AetherLLMProfile(model="cfg-model", api_key=SecretStr("sk-cfg"))})
    assert llm_profile(cfg, "default").model == "cfg-model"  # type: ignore[union-attr]
    env_prof = llm_profile(AetherConfig(), "default")
    assert env_prof is not None and env_prof.model == "env-model"
    assert env_prof.api_key.get_secret_value() == "sk-env"  # type: ignore[union-attr]
    assert llm_profile(AetherConfig(), "other") is None


def test_llm_override_beats_config() -> None:
    cfg = AetherConfig(llm={"default": AetherLLMProfile(model="cfg-model")})

    async def go() -> str | None:
        ctx = await build_adhoc_context(config=cfg, llm={"default": AetherLLMProfile(model="ov-model")})
        return ctx.llm_profile().model  # type: ignore[union-attr]

    assert asyncio.run(go()) == "ov-model"


def test_sync_flow_body_starts_while_its_saved_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync @aether_flow starts its body while its saved config loads on a thread of its own (#21: the block read
    no longer delays a flow's first task); the first use of the config waits for it; a config that fails to load
    still fails the flow with ConfigError, even when the body never used it."""
    import threading

    from aether_prefect import NodeContext, aether_flow
    from aether_prefect import config as config_module

    name = _name()
    AetherConfig(kv_namespace="prefetched").save(name)
    body_started = threading.Event()
    seen: dict[str, object] = {}
    real_load = config_module._load_saved

    async def load_after_the_body_started(block: str, *, missing_ok: bool) -> object:
        import anyio

        seen["body_first"] = await anyio.to_thread.run_sync(body_started.wait, 20)
        return await real_load(block, missing_ok=missing_ok)

    monkeypatch.setattr(config_module, "_load_saved", load_after_the_body_started)

    @aether_flow(config=name)
    def f(*, context: NodeContext) -> str:
        body_started.set()
        return context.kv_namespace

    assert f() == "prefetched" and seen["body_first"] is True

    @aether_flow(config="nope-missing-" + uuid.uuid4().hex[:6])
    def g(*, context: NodeContext) -> int:
        return 1

    with pytest.raises(ConfigError, match="No saved AetherConfig block named"):
        g()
