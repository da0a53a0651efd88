"""Human in the loop on Prefect: pause a flow run for typed run input (answered in the UI form)."""

from __future__ import annotations

from typing import Any

from prefect.input import RunInput  # the base of typed answer forms (re-exported for the channel)


class PauseTimeout(Exception):
    """Nobody submitted the form before the timeout."""


async def pause_for_input(model: type[Any], *, timeout_s: int, poll_interval_s: int, key: str | None = None) -> Any:
    """Pause the current flow run until ``model``'s form is submitted; :class:`PauseTimeout` after ``timeout_s``."""
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import apause_flow_run

    kwargs: dict[str, Any] = {"wait_for_input": model, "timeout": timeout_s, "poll_interval": poll_interval_s}
    if key is not None:
        kwargs["key"] = key
    try:
        return await apause_flow_run(**kwargs)
    except FlowPauseTimeout as exc:
        raise PauseTimeout(str(exc)) from exc

__all__ = ["PauseTimeout", "RunInput", "pause_for_input"]
