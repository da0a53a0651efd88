"""rt_overrides: the known runtime knobs of one context. Unknown keys are a TypeError."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

from aether_prefect.blocks import AetherConfig, AetherObjectStore
from aether_prefect.budgets import LLMBudget
from aether_prefect.errors import ValidationError

MEMORY_LEVELS = ("run", "session", "graph")


@dataclass(frozen=True)
class RuntimeOverrides:
    """Per-context overrides. Service slots take an instance to inject (used as is, not closed by the context)
    or, for ``llm``/``mcp``, a profile/server block or a dict of them by name."""

    config: AetherConfig | str | None = None
    session_id: str | None = None
    memory_level: str | None = None
    max_concurrency: int | None = None
    llm_budget: LLMBudget | None = None
    kv_namespace: str | None = None
    durable: bool | None = None
    replay_from: str | None = None
    store: Any = None
    llm: Any = None
    artifacts: Any = None
    kv: Any = None
    memory: Any = None
    mcp: Any = None
    rag: Any = None
    channel: Any = None


KNOWN_OVERRIDES: frozenset[str] = frozenset(f.name for f in fields(RuntimeOverrides))


def parse_overrides(values: dict[str, Any]) -> RuntimeOverrides:
    """Validate ``values``; raise TypeError naming an unknown key, ValidationError for a bad value."""
    unknown = sorted(set(values) - KNOWN_OVERRIDES)
    if unknown:
        raise TypeError(
            f"unknown runtime override {unknown[0]!r}"
            + (f" (and {', '.join(map(repr, unknown[1:]))})" if len(unknown) > 1 else "")
            + f"; known overrides: {', '.join(sorted(KNOWN_OVERRIDES))}"
        )
    v = dict(values)
    cfg = v.get("config")
    if cfg is not None and not isinstance(cfg, (AetherConfig, str)):
        raise ValidationError(
            f"config= takes an AetherConfig or the name of a saved one, not {type(cfg).__name__}"
        )
    sid = v.get("session_id")
    if sid is not None and (not isinstance(sid, str) or not sid):
        raise ValidationError(f"session_id must be a non-empty str or None, got {sid!r}")
    level = v.get("memory_level")
    if level is not None and level not in MEMORY_LEVELS:
        raise ValidationError(f"memory_level must be one of {MEMORY_LEVELS}, got {level!r}")
    mc = v.get("max_concurrency")
    if mc is not None and (isinstance(mc, bool) or not isinstance(mc, int) or mc < 1):
        raise ValidationError(f"max_concurrency must be a positive int, got {mc!r}")
    budget = v.get("llm_budget")
    if budget is not None and not isinstance(budget, LLMBudget):
        if isinstance(budget, dict):
            try:
                v["llm_budget"] = LLMBudget(**budget)
            except Exception as exc:
                raise ValidationError(f"llm_budget is invalid: {exc}") from None
        else:
            raise ValidationError(f"llm_budget must be an LLMBudget or a dict, got {type(budget).__name__}")
    if v.get("kv_namespace") is not None:
        from aether_prefect.services.kv._names import check_namespace  # the one namespace rule

        check_namespace(v["kv_namespace"])
    durable = v.get("durable")
    if durable is not None and not isinstance(durable, bool):
        raise ValidationError(f"durable must be True or False (journal and replay LLM/MCP calls), got {durable!r}")
    replay = v.get("replay_from")
    if replay is not None and (not isinstance(replay, str) or not re.fullmatch(r"[A-Za-z0-9-]{1,64}", replay)):
        raise ValidationError(f"replay_from must be the id of an earlier flow run (a UUID string), got {replay!r}")
    store = v.get("store")
    if store is not None:
        from aether_prefect.services.stores.base import ObjectStore

        if not isinstance(store, (AetherObjectStore, ObjectStore)):
            raise ValidationError(f"store= takes an AetherObjectStore or an ObjectStore, not {type(store).__name__}")
    return RuntimeOverrides(**v)
