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


async def saved_blocks_of_type(block_type_slug: str) -> list[tuple[str, dict[str, Any]]]:
    """(name, non-secret fields) of every saved block of ``block_type_slug`` (e.g. ``"slack-webhook"``), by name."""
    from aether_prefect._prefect._client import with_client

    async def call(client: Any) -> list[Any]:
        return await client.read_block_documents_by_type(block_type_slug, include_secrets=False)

    from prefect.exceptions import ObjectNotFound

    try:
        docs = await with_client(call)
    except ObjectNotFound:  # the block type is not registered on this server: no blocks of it
        return []
    found = [(d.name, dict(d.data or {})) for d in docs if d.name and not getattr(d, "is_anonymous", False)]
    return sorted(found, key=lambda item: item[0])
