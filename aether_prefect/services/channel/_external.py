"""AetherGraph's external channel keys (``slack:...``, ``tg:...``, ``webhook:url/...``) on Prefect.

Prefect has no Slack or Telegram adapter: a person answers questions in the Prefect UI (or the inbox) and
messages go to the run log. What a Prefect user expects from ``context.channel("slack:team/T:chan/C")`` is
that the messages and questions are *announced* in Slack through the notification block they configured.
So an external key resolves, once per process, to notification targets:

1. the ``AetherConfig.notify`` entries of the platform's block type (``slack-webhook/<name>`` or a block);
2. else the saved block of that type named after the key's target (``slack:team/T:chan/C123`` -> ``c123``;
   for ``webhook:url/<URL>`` the ``custom-webhook`` block whose ``url`` is that URL), else the only saved one;
3. else nothing: the key falls back to the default channel (run log + Prefect UI) with ONE warning per key
   and process saying how to configure it. A plain message never raises and is never dropped (it is logged).
"""

from __future__ import annotations

import re
import threading
from typing import Any

#: AetherGraph's external key prefixes -> (the matching Prefect notification block type, its display name).
PLATFORMS: dict[str, tuple[str | None, str]] = {
    "slack": ("slack-webhook", "Slack"),
    "tg": (None, "Telegram"),
    "telegram": (None, "Telegram"),
    "webhook": ("custom-webhook", "webhook"),
}

_lock = threading.Lock()
_resolved: dict[tuple[str, tuple[str, ...]], list[Any]] = {}
_warned: set[str] = set()


def platform_of(key: str | None) -> str | None:
    """``"slack"`` for ``"slack:team/T:chan/C"`` (``tg``, ``telegram``, ``webhook`` likewise); None otherwise."""
    if not key or ":" not in key:
        return None
    prefix, rest = key.split(":", 1)
    return prefix.lower() if prefix.lower() in PLATFORMS and rest.strip() else None


def is_external_key(key: str | None) -> bool:
    """True for an AetherGraph external channel key this module maps onto notification blocks."""
    return platform_of(key) is not None


def _target_name(key: str) -> str:
    """The block name a key's target suggests: its last path segment, lower-cased, as a Prefect block slug."""
    last = re.split(r"[/:]", key.rstrip("/"))[-1]
    return re.sub(r"[^a-z0-9-]+", "-", last.lower()).strip("-")


def _webhook_url(key: str) -> str:
    rest = key.split(":", 1)[1]
    return rest[len("url/"):] if rest.startswith("url/") else rest


def _entry_slug(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry.split("/", 1)[0]
    get_slug = getattr(type(entry), "get_block_type_slug", None)
    return get_slug() if callable(get_slug) else None


async def targets_for(key: str, notify: list[Any], logger: Any) -> list[Any]:
    """The notification targets announcing messages and questions of channel ``key`` ([] = fall back, warned once).

    Example: ``await targets_for("slack:team/T:chan/C123", config.notify, logger)`` -> ``["slack-webhook/c123"]``
    """
    from aether_prefect._prefect import _notify as door

    platform = platform_of(key)
    assert platform is not None
    slug, display = PLATFORMS[platform]
    cache_key = (key, tuple(repr(e) if not isinstance(e, str) else e for e in notify))
    with _lock:
        if cache_key in _resolved:
            return list(_resolved[cache_key])
    targets: list[Any] = [e for e in notify if slug is not None and _entry_slug(e) == slug]
    why = ""
    if not targets and slug is not None:
        saved = await door.saved_blocks_of_type(slug)
        if platform == "webhook":
            wanted = [name for name, data in saved if data.get("url") == _webhook_url(key)]
        else:
            wanted = [name for name, _ in saved if name == _target_name(key)]
        if not wanted and len(saved) == 1 and platform != "webhook":
            wanted = [saved[0][0]]
        targets = [f"{slug}/{wanted[0]}"] if wanted else []
        if not targets and len(saved) > 1:
            why = f" (several saved {slug} blocks and none named {_target_name(key)!r}: " + ", ".join(n for n, _ in saved) + ")"
    with _lock:
        _resolved[cache_key] = targets
        first = key not in _warned
        if not targets:
            _warned.add(key)
    if not targets and first:
        logger.warning(fallback_warning(key, slug, display) + why)
    return list(targets)


def fallback_warning(key: str, slug: str | None, display: str) -> str:
    """The one warning for an external key with no notification block to announce through."""
    head = (f"channel {key!r}: no {display} notification block configured, so its messages go to the run log and "
            "its questions to the Prefect UI (answer there or with `aether-prefect answer`)")
    if slug is None:
        return (head + f". Prefect has no {display} notification block: to announce them elsewhere, save one "
                "(e.g. a custom-webhook block) and use the key 'notify:<block-type-slug>/<name>' or AetherConfig.notify")
    if slug == "custom-webhook":
        return (head + f". To announce them, save a custom-webhook block with url={_webhook_url(key)!r} "
                "(CustomWebhookNotificationBlock(name='aether', url=...).save('<name>')) or add "
                "'custom-webhook/<name>' to AetherConfig.notify")
    return (head + f". To announce them, save a {slug} block named {_target_name(key)!r} "
            f"(SlackWebhook(url='https://hooks.slack.com/services/...').save({_target_name(key)!r})) "
            f"or add '{slug}/<name>' to AetherConfig.notify")


def forget() -> None:
    """Drop the resolved targets and warnings of this process (tests; after saving a block mid-process)."""
    with _lock:
        _resolved.clear()
        _warned.clear()
