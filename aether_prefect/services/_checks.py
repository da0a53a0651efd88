"""Input checks shared by services, raising the caller's typed error with a message that says how to fix it."""

from __future__ import annotations

import math
from typing import Any

from aether_prefect.errors import AetherError


def check_metrics(metrics: Any, error: type[AetherError]) -> dict[str, float]:
    """``metrics`` as a dict of non-empty str to finite float; ``error`` for anything else."""
    if metrics is None:
        return {}
    if not isinstance(metrics, dict):
        raise error(f"metrics must be a dict of str to number, got {type(metrics).__name__}")
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if not isinstance(k, str) or not k:
            raise error(f"metrics names must be non-empty str, got {k!r}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise error(f"metrics[{k!r}] must be a finite number, got {v!r}")
        out[k] = float(v)
    return out
