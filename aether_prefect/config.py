"""Config resolution: which AetherConfig a context is built from, loaded once per process.

Order: ``config=`` (instance or saved name) > env ``AETHER_PREFECT_CONFIG`` > the saved
``default`` > embedded defaults. Within a service, rt_overrides > config > environment.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr

from aether_prefect.blocks import AetherConfig, AetherLLMProfile, AetherObjectStore
from aether_prefect.errors import ConfigError

if TYPE_CHECKING:
    from concurrent.futures import Future

ENV_CONFIG = "AETHER_PREFECT_CONFIG"
DEFAULT_BLOCK_NAME = "default"
#: Seconds a loaded config is reused before the next context build re-reads it.
REFRESH_S = float(os.environ.get("AETHER_PREFECT_CONFIG_REFRESH_S", "60"))

_cache: dict[str, tuple[float, AetherConfig | None]] = {}
_cache_lock = threading.Lock()


def clear_config_cache() -> None:
    """Forget every cached config (tests, or after editing blocks in the UI)."""
    with _cache_lock:
        _cache.clear()


def embedded_defaults() -> AetherConfig:
    """The config used when nothing is saved: a local store under $PREFECT_HOME/aether, no LLM, no MCP."""
    return AetherConfig()


def default_store_root() -> Path:
    """Root of the embedded local store: ``$PREFECT_HOME`` (objects live under its ``aether/``)."""
    from aether_prefect._prefect import prefect_home

    return Path(prefect_home()).expanduser()


def store_config(config: AetherConfig) -> AetherObjectStore:
    """The object store block of ``config``, or the embedded local default."""
    return config.store if config.store is not None else AetherObjectStore(backend="local", root=str(default_store_root()))


def llm_profile(config: AetherConfig, name: str = "default") -> AetherLLMProfile | None:
    """Profile ``name`` from the config; for ``default`` fall back to OPENAI_* environment variables."""
    if name in config.llm:
        return config.llm[name]
    if name != "default":
        return None
    key = os.environ.get("OPENAI_API_KEY")
    base = os.environ.get("OPENAI_BASE_URL")
    if not key and not base:
        return None
    return AetherLLMProfile(
        model=os.environ.get("AETHER_LLM_MODEL") or "gpt-4o-mini",
        base_url=base or "https://api.openai.com/v1",
        api_key=SecretStr(key) if key else None,
        embed_model=os.environ.get("AETHER_EMBED_MODEL") or None,
    )


def _check_name(name: str) -> str:
    import re

    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9-]+", name):
        raise ConfigError(
            f"config name {name!r} is not a valid block name: use lowercase letters, digits and '-' "
            "(the name you passed to AetherConfig.save)"
        )
    return name


async def _load_saved(name: str, *, missing_ok: bool) -> AetherConfig | None:
    from aether_prefect._prefect import prefect_client

    now = time.monotonic()
    hit = _cache.get(name)
    if hit is not None and hit[0] > now:
        return hit[1]
    client = await prefect_client()
    try:
        loaded: AetherConfig | None = await AetherConfig.aload(name, client=client)
    except ValueError as exc:
        if "Unable to find block document" not in str(exc):
            raise ConfigError(f"AetherConfig block {name!r} could not be loaded: {exc}") from None
        loaded = None
    with _cache_lock:
        _cache[name] = (time.monotonic() + REFRESH_S, loaded)
    if loaded is None and not missing_ok:
        raise ConfigError(
            f"No saved AetherConfig block named {name!r}. Save one with "
            f"AetherConfig(...).save({name!r}) or fix the name (block type 'aether-config')."
        )
    return loaded


async def aload_saved(name: str) -> AetherConfig | None:
    """The saved AetherConfig ``name`` (cached like every config load), or None when none is saved."""
    return await _load_saved(_check_name(name), missing_ok=True)


def cached_config(config: AetherConfig | str | None = None) -> AetherConfig | None:
    """The config ``aresolve_config`` would return, if that needs no I/O right now (else None).

    Lets sync task wrappers build a context on their own thread instead of hopping
    to the portal loop for what is, once warm, a dictionary lookup.
    """
    if isinstance(config, AetherConfig):
        return config
    if config is not None and not isinstance(config, str):
        return None
    name = config or os.environ.get(ENV_CONFIG) or DEFAULT_BLOCK_NAME
    hit = _cache.get(name)
    if hit is None or hit[0] <= time.monotonic():
        return None
    if hit[1] is None:
        return embedded_defaults() if name == DEFAULT_BLOCK_NAME and not config and not os.environ.get(ENV_CONFIG) else None
    return hit[1]


def prefetch_config(config: str | None = None) -> "Future[AetherConfig]":
    """Start resolving ``config`` (a saved name, or None for the environment / ``default``) on a thread of its own
    with its own event loop and client, filling the cache; the future gives what :func:`aresolve_config` would
    (or raises its error).

    Lets a sync flow build its context and start its body while the config loads (#21: the block read and the
    event it emits cost 0.3-1 s on a loaded machine, before a flow's first task could start). Waiting on the
    future never needs another event loop, so it cannot deadlock whichever thread waits.
    Example: ``fut = prefetch_config("prod"); ...; cfg = fut.result()``
    """
    import asyncio
    import contextvars
    from concurrent.futures import Future

    fut: Future[AetherConfig] = Future()
    run_ctx = contextvars.copy_context()  # the run's contextvars: the block's "loaded" event relates to the run

    async def resolve() -> AetherConfig:
        from aether_prefect._prefect import drop_client

        try:
            return await aresolve_config(config)
        finally:
            await drop_client()  # this loop ends here: close its client

    def load() -> None:
        try:
            fut.set_result(run_ctx.run(asyncio.run, resolve()))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
            fut.set_exception(exc)

    threading.Thread(target=load, name="aether-config-load", daemon=True).start()
    return fut


async def aresolve_config(config: AetherConfig | str | None = None) -> AetherConfig:
    """Resolve ``config=`` per the precedence above; at most one API call per refresh period."""
    if isinstance(config, AetherConfig):
        return config
    if config is not None and not isinstance(config, str):
        raise ConfigError(
            f"config= takes an AetherConfig or the name of a saved one, not {type(config).__name__}"
        )
    if isinstance(config, str):
        return await _load_saved(_check_name(config), missing_ok=False)  # type: ignore[return-value]
    env_name = os.environ.get(ENV_CONFIG)
    if env_name:
        return await _load_saved(_check_name(env_name), missing_ok=False)  # type: ignore[return-value]
    saved = await _load_saved(DEFAULT_BLOCK_NAME, missing_ok=True)
    return saved if saved is not None else embedded_defaults()
