"""Prefect's notification blocks (SlackWebhook, MicrosoftTeamsWebhook, CustomWebhookNotificationBlock, ...):
load a saved one by name, and send through any of them (public ``Block.aload`` and ``anotify``/``notify``)."""

from __future__ import annotations

import inspect
from typing import Any


def is_notification_block(obj: Any) -> bool:
    """True for an instance of any Prefect NotificationBlock (or anything with the same ``notify`` method)."""
    from prefect.blocks.abstract import NotificationBlock

    return isinstance(obj, NotificationBlock) or callable(getattr(obj, "notify", None))


async def load_notification_block(name: str) -> Any:
    """The saved block ``"<block-type-slug>/<name>"`` (e.g. ``"slack-webhook/ops"``)."""
    from prefect.blocks.core import Block

    block = await Block.aload(name)
    if not is_notification_block(block):
        raise TypeError(f"block {name!r} is a {type(block).__name__}, not a notification block")
    return block


async def send(block: Any, body: str, subject: str | None) -> None:
    """Send ``body`` through ``block``; raises whatever the block raises (the caller logs it)."""
    fn = getattr(block, "anotify", None) or block.notify
    result = fn(body, subject=subject)
    if inspect.isawaitable(result):
        await result
