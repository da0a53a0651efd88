"""Prefect's run logger (lines reach the Prefect UI), or None outside a run."""

from __future__ import annotations

import logging
from typing import Any


def run_logger() -> "logging.Logger | logging.LoggerAdapter[Any] | None":
    """Prefect's logger for the current run; None when no run context is active here."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return None
