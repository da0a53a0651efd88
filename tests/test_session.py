"""open_session / build_adhoc_context / open_session_sync, overrides, errors, logger, secrets."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from pathlib import Path

import httpx

import pytest
from pydantic import SecretStr

from aether_prefect import (
    AetherConfig,
    AetherLLMProfile,
    NodeContext,
    ServiceNotConfigured,
    build_adhoc_context,
    current_context,
    open_session,
    open_session_sync,
)
from aether_prefect.services.base import BoundService

SECRET = "sk-session-secret-0123456789"


class Probe(BoundService):
    """A service that records whether its context closed it."""

    closed = False

    async def aclose(self) -> None:
        self.closed = True


def test_defaults_and_ids(local_config: AetherConfig) -> None:
    async def go() -> NodeContext:
        async with open_session(config=local_config) as ctx:
            assert current_context() is ctx
            return ctx

    ctx = asyncio.run(go())
    assert re.fullmatch(r"adhoc-[0-9a-f]{8}", ctx.run_id)
    assert (ctx.graph_id, ctx.node_id, ctx.session_id, ctx.flow_run_id, ctx.task_run_id, ctx.deployment_id) == (
        "adhoc", "adhoc", None, None, None, None)
    assert ctx.closed
    with pytest.raises(LookupError, match="inside an @aether_task"):
        current_context()


def test_custom_ids_and_session_id(local_config: AetherConfig) -> None:
    async def go() -> tuple[str, str, str, str | None]:
        async with open_session("r1", "g1", "n1", config=local_config, session_id="s1") as ctx:
            return ctx.run_id, ctx.graph_id, ctx.node_id, ctx.session_id

    assert asyncio.run(go()) == ("r1", "g1", "n1", "s1")


def test_unknown_override_is_a_type_error_naming_it(local_config: AetherConfig) -> None:
    async def go() -> None:
        async with open_session(config=local_config, foo="bar"):
            pass

    with pytest.raises(TypeError, match="unknown runtime override 'foo'"):
        asyncio.run(go())


def test_overrides_apply_to_one_context_only(local_config: AetherConfig) -> None:
    async def go() -> tuple[str, str, int | None, int | None]:
        a = await build_adhoc_context(config=local_config, memory_level="graph", max_concurrency=4)
        b = await build_adhoc_context(config=local_config)
        await a.aclose()
        await b.aclose()
        return a.memory_level, b.memory_level, a.max_concurrency, b.max_concurrency

    assert asyncio.run(go()) == ("graph", "run", 4, None)


@pytest.mark.parametrize("bad", [{"memory_level": "forever"}, {"max_concurrency": 0}, {"session_id": ""},
                                 {"llm_budget": {"calls": -1}}, {"kv_namespace": "UPPER"}])
def test_bad_override_values(local_config: AetherConfig, bad: dict) -> None:
    from aether_prefect import ValidationError

    with pytest.raises(ValidationError):
        asyncio.run(build_adhoc_context(config=local_config, **bad))


def test_services_closed_on_exit_even_when_body_raises(local_config: AetherConfig) -> None:
    probes: list[Probe] = []

    async def go() -> None:
        async with open_session(config=local_config) as ctx:
            probes.append(ctx._service("probe", lambda: Probe(ctx)))
            raise RuntimeError("body failed")

    with pytest.raises(RuntimeError, match="body failed"):
        asyncio.run(go())
    assert probes[0].closed


def test_closed_context_refuses_new_services(local_config: AetherConfig) -> None:
    ctx = asyncio.run(build_adhoc_context(config=local_config))
    asyncio.run(ctx.aclose())
    with pytest.raises(RuntimeError, match="is closed"):
        ctx._service("probe", lambda: Probe(ctx))


def test_sync_twin(local_config: AetherConfig) -> None:
    with open_session_sync(config=local_config, node_id="sync") as ctx:
        assert ctx.node_id == "sync" and current_context() is ctx
        probe = ctx._service("probe", lambda: Probe(ctx))
    assert ctx.closed and probe.closed


def test_unconfigured_services_raise_at_the_accessor(local_config: AetherConfig) -> None:
    with open_session_sync(config=local_config) as ctx:
        with pytest.raises(ServiceNotConfigured, match="AetherLLMProfile.*OPENAI_API_KEY"):
            ctx.llm()
        with pytest.raises(ServiceNotConfigured, match="'fast'.*AetherLLMProfile"):
            ctx.llm("fast")
        with pytest.raises(ServiceNotConfigured, match="AetherMCPServer"):
            ctx.mcp()
        assert isinstance(ServiceNotConfigured("x", block_type="B", how="h"), RuntimeError)


def test_logger_outside_a_run_carries_ids_without_warnings(local_config: AetherConfig,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with open_session_sync("log-run", "log-graph", "log-node", config=local_config) as ctx:
            logger = ctx.logger()
            logger.logger.propagate = True
            with caplog.at_level(logging.INFO, logger="aether_prefect"):
                logger.info("hello %s", "there")
    rec = [r for r in caplog.records if r.getMessage() == "hello there"][0]
    assert (rec.run_id, rec.graph_id, rec.node_id) == ("log-run", "log-graph", "log-node")  # type: ignore[attr-defined]


def test_secrets_stay_out_of_reprs_errors_and_logs(local_config: AetherConfig,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    cfg = local_config.model_copy(update={"llm": {"default": AetherLLMProfile(model="m", api_key=SecretStr(SECRET))}})
    with caplog.at_level(logging.DEBUG):
        with open_session_sync(config=cfg) as ctx:
            ctx.logger().info("config is %r", ctx.config)
            texts = [repr(ctx), str(ctx.config), repr(ctx.config), repr(ctx.llm_profile())]
            try:
                ctx.llm("missing")
            except ServiceNotConfigured as exc:
                texts.append(str(exc))
            ctx.llm_set_key("openai", SECRET + "-2", model="x")
            texts.append(repr(ctx.llm_profile()))
    texts.append(caplog.text)
    for text in texts:
        assert SECRET not in text


def test_llm_set_key_is_per_context(local_config: AetherConfig) -> None:
    with open_session_sync(config=local_config) as a, open_session_sync(config=local_config) as b:
        a.llm_set_key("openai", "sk-a", model="gpt-a")
        assert a.llm_profile().model == "gpt-a"  # type: ignore[union-attr]
        assert a.llm_profile().base_url == "https://api.openai.com/v1"  # type: ignore[union-attr]
        assert b.llm_profile() is None


def _events_named(name: str, want: int, timeout_s: float = 60) -> int:
    """How many Prefect events named ``name`` the server holds (polled until ``want`` or the deadline)."""
    url = os.environ["PREFECT_API_URL"].rstrip("/") + "/events/filter"
    deadline = time.monotonic() + timeout_s
    found = 0
    while time.monotonic() < deadline:
        resp = httpx.post(url, json={"filter": {"event": {"name": [name]}}, "limit": 50}, timeout=10)
        resp.raise_for_status()
        found = len(resp.json()["events"])
        if found >= want:
            break
        time.sleep(0.5)
    return found


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_script_exits_clean_and_its_mirrored_events_reach_the_server(tmp_path: Path, mode: str) -> None:
    """Closing a session sends the events it queued: no "Still processing items" at exit, none lost (#17.19)."""
    kind = f"exit{uuid.uuid4().hex[:8]}"
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from aether_prefect import AetherConfig, AetherObjectStore, open_session, open_session_sync
        cfg = AetherConfig(store=AetherObjectStore(backend="local", root=sys.argv[1]))
        if {mode!r} == "sync":
            with open_session_sync(config=cfg) as ctx:
                for i in range(20):
                    ctx.memory().sync.record({kind!r}, {{"i": i}})
        else:
            async def main():
                async with open_session(config=cfg) as ctx:
                    for i in range(20):
                        await ctx.memory().record({kind!r}, {{"i": i}})
            asyncio.run(main())
        print("DONE", flush=True)
        """
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "store")], env=env, cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "DONE" in proc.stdout, proc.stderr[-3000:]
    assert "Still processing items" not in proc.stderr, proc.stderr[-3000:]
    assert _events_named(f"aether.memory.{kind}", 20) == 20


def test_unknown_profile_error_lists_the_profiles_in_effect(local_config: AetherConfig,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Profiles from the environment and from overrides are named, not "none" (#17.20)."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with open_session_sync(config=local_config) as ctx:
        assert ctx.llm_profile() is not None  # the environment configures `default`
        with pytest.raises(ServiceNotConfigured) as info:
            ctx.llm("fast")
    msg = str(info.value)
    assert "configured profiles: default (from OPENAI_API_KEY" in msg and "none" not in msg and SECRET not in msg

    cfg = local_config.model_copy(update={"llm": {"big": AetherLLMProfile(model="m")}})
    with open_session_sync(config=cfg, llm={"small": AetherLLMProfile(model="s")}) as ctx:
        ctx.llm_set_key("openai", "sk-x", model="x", profile="keyed")
        with pytest.raises(ServiceNotConfigured, match=r"configured profiles: big, default \(from OPENAI.*keyed, small"):
            ctx.llm("fast")
