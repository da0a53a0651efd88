"""Ad-hoc sessions: a fully wired NodeContext outside a graph (scripts, notebooks, admin jobs).

Unlike AetherGraph's, closing a session closes every service it opened, and
rt_overrides apply to that context only (unknown keys raise TypeError).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

from aether_prefect._overrides import RuntimeOverrides, parse_overrides
from aether_prefect._prefect import current_run_ids
from aether_prefect.blocks import AetherConfig
from aether_prefect.config import aresolve_config
from aether_prefect.context import NodeContext, _reset_current, _set_current

if TYPE_CHECKING:
    from concurrent.futures import Future


def new_run_id() -> str:
    """A fresh ad-hoc run id: ``adhoc-<8 hex>``.

    Example: ``new_run_id()  # "adhoc-3f9a1c2e"``
    """
    return f"adhoc-{secrets.token_hex(4)}"


def _check_id(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty str, got {value!r}")


async def make_context(
    *, run_id: str | None, graph_id: str, node_id: str, overrides: RuntimeOverrides, use_run_names: bool = False
) -> NodeContext:
    """Build a NodeContext for the current place (in a Prefect run or not). One config lookup at most."""
    config = await aresolve_config(overrides.config)
    return context_for(config, run_id=run_id, graph_id=graph_id, node_id=node_id, overrides=overrides,
                       use_run_names=use_run_names)


def context_for(
    config: "AetherConfig | Future[AetherConfig]", *, run_id: str | None, graph_id: str, node_id: str,
    overrides: RuntimeOverrides, use_run_names: bool = False,
) -> NodeContext:
    """A NodeContext for the current place from an already resolved config, or one still loading (no I/O)."""
    ids = current_run_ids()
    if use_run_names:
        graph_id = ids.flow_name or graph_id
        node_id = ids.task_run_name or node_id
    return NodeContext(
        run_id=run_id or ids.flow_run_id or new_run_id(),
        graph_id=graph_id,
        node_id=node_id,
        config=config,
        overrides=overrides,
        flow_run_id=ids.flow_run_id,
        task_run_id=ids.task_run_id,
        deployment_id=ids.deployment_id,
    )


async def build_adhoc_context(
    run_id: str | None = None, graph_id: str = "adhoc", node_id: str = "adhoc", **rt_overrides: Any
) -> NodeContext:
    """Build a context the caller owns: ``await context.aclose()`` when done.

    ``rt_overrides``: ``config=``, ``session_id=``, ``memory_level=``, ``max_concurrency=``,
    ``llm_budget=``, ``kv_namespace=``, ``store=`` and service injections (``llm=``, ``kv=``...).

    Example: ``context = await build_adhoc_context(kv_namespace="scratch"); ...; await context.aclose()``
    """
    if run_id is not None:
        _check_id("run_id", run_id)
    _check_id("graph_id", graph_id)
    _check_id("node_id", node_id)
    overrides = parse_overrides(rt_overrides)
    return await make_context(run_id=run_id, graph_id=graph_id, node_id=node_id, overrides=overrides)


@asynccontextmanager
async def open_session(
    run_id: str | None = None, graph_id: str = "adhoc", node_id: str = "adhoc", **rt_overrides: Any
) -> AsyncIterator[NodeContext]:
    """``async with open_session() as context:`` a temporary context; services closed on exit, even on error.

    Example: ``async with open_session() as context: await context.kv().set("k", 1)``
    """
    context = await build_adhoc_context(run_id, graph_id, node_id, **rt_overrides)
    token = _set_current(context)
    try:
        yield context
    finally:
        _reset_current(token)
        await context.aclose()


@contextmanager
def open_session_sync(
    run_id: str | None = None, graph_id: str = "adhoc", node_id: str = "adhoc", **rt_overrides: Any
) -> Iterator[NodeContext]:
    """Sync twin of :func:`open_session` for plain scripts; use ``service.sync.method(...)`` inside.

    Example: ``with open_session_sync() as context: context.kv().sync.set("k", 1)``
    """
    from aether_prefect._sync import run_sync

    context = run_sync(build_adhoc_context(run_id, graph_id, node_id, **rt_overrides))
    token = _set_current(context)
    try:
        yield context
    finally:
        _reset_current(token)
        run_sync(context.aclose())
