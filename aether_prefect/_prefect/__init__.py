"""The one door to Prefect: every call into Prefect's client, variables, artifacts, events, pause/resume,
logs and run context goes through this package, and only public Prefect API is used here.

A Prefect release that changes one of these touches this folder only. ``tests/test_prefect_door.py``
checks that no other module of the package imports Prefect's client, context or settings.
"""

from __future__ import annotations

from aether_prefect._prefect import _artifacts as artifacts
from aether_prefect._prefect import _events as events
from aether_prefect._prefect import _pause as pause
from aether_prefect._prefect import _variables as variables
from aether_prefect._prefect._client import (
    drop_client,
    healthcheck,
    prefect_client,
    sync_client,
    with_client,
    with_sync_client,
)
from aether_prefect._prefect._logs import run_logger
from aether_prefect._prefect._runs import (
    DurableIdentity,
    RunIds,
    api_url,
    current_run_ids,
    durable_identity,
    flow_run_ui_url,
    in_flow_run,
    prefect_home,
    prefect_version,
    task_run_attempt,
    ui_url,
    ui_url_for,
    use_api_url,
)

__all__ = [
    "DurableIdentity",
    "RunIds",
    "api_url",
    "artifacts",
    "current_run_ids",
    "drop_client",
    "durable_identity",
    "events",
    "flow_run_ui_url",
    "healthcheck",
    "in_flow_run",
    "pause",
    "prefect_client",
    "prefect_home",
    "prefect_version",
    "run_logger",
    "sync_client",
    "task_run_attempt",
    "ui_url",
    "ui_url_for",
    "use_api_url",
    "variables",
    "with_client",
    "with_sync_client",
]
