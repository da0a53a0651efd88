"""context.logger(): a LoggerAdapter carrying run/graph/node ids.

Inside a Prefect run it wraps Prefect's run logger, so lines reach the run's
logs in the UI. Outside a run it is plain stdlib logging, with no warnings.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aether_prefect.context import NodeContext

_FALLBACK = "aether_prefect.session"


class ContextLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Adds ``run_id``, ``graph_id`` and ``node_id`` to every record, merged with any caller extra.

    Example: ``context.logger().info("loaded %d rows", 10, extra={"table": "users"})``
    """

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


def _fallback_logger() -> logging.Logger:
    logger = logging.getLogger(_FALLBACK)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)-7s | aether | %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def create(ctx: "NodeContext") -> ContextLogger:
    """The logger for ``ctx``: Prefect's run logger when in a run, stdlib otherwise."""
    base: logging.Logger | logging.LoggerAdapter[Any]
    if ctx.flow_run_id or ctx.task_run_id:
        from aether_prefect._prefect import run_logger

        base = run_logger() or _fallback_logger()
    else:
        base = _fallback_logger()
    extra = {"run_id": ctx.run_id, "graph_id": ctx.graph_id, "node_id": ctx.node_id}
    return ContextLogger(base, extra)  # type: ignore[arg-type]
