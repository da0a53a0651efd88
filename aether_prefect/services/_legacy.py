"""AetherGraph's older keyword spellings on our service methods, without touching the methods themselves.

A compat mixin lists ``_LEGACY = {"method": adapter}``; when a service class inherits the mixin,
each named method of that class is wrapped once so the adapter sees the call first, maps the
older keywords onto ours (``suggested_uri=`` -> ``name=``, ``filters=`` -> ``labels=``) and calls the
method. The method's own signature, validation and docs stay those of the service.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, ClassVar

Adapter = Callable[..., Any]  # (self, original, *args, **kwargs) -> result (awaitable for async methods)


class LegacyKeywords:
    """Base of the ``_compat`` mixins: wraps the subclass's methods named in ``_LEGACY`` with their adapter."""

    _LEGACY: ClassVar[dict[str, Adapter]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        adapters: dict[str, Adapter] = {}
        for base in reversed(cls.__mro__):
            adapters.update(base.__dict__.get("_LEGACY", {}))
        for name, adapter in adapters.items():
            fn = cls.__dict__.get(name)
            if fn is None or getattr(fn, "__aether_legacy__", False):
                continue
            setattr(cls, name, _wrap(fn, adapter))


def _wrap(fn: Callable[..., Any], adapter: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with ``adapter(self, fn, *args, **kwargs)`` in front (async for async methods, sync for sync)."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def acall(self: Any, *args: Any, **kwargs: Any) -> Any:
            return await adapter(self, fn, *args, **kwargs)

        wrapped: Callable[..., Any] = acall
    else:

        @functools.wraps(fn)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            return adapter(self, fn, *args, **kwargs)

        wrapped = call
    wrapped.__aether_legacy__ = True  # type: ignore[attr-defined]
    return wrapped


def name_from_uri(suggested_uri: str | None) -> str | None:
    """AetherGraph's ``suggested_uri`` ("./red_dot.png", "file:///x/report.md") as our artifact ``name``."""
    if suggested_uri is None:
        return None
    if not isinstance(suggested_uri, str) or not suggested_uri.strip():
        return None
    tail = suggested_uri.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return tail or None


def tags_into_labels(labels: dict[str, Any] | None, tags: list[str] | None) -> dict[str, Any] | None:
    """AetherGraph's artifact/RAG ``tags=[...]`` kept as the label ``tags`` (searchable like any label)."""
    if not tags:
        return labels
    out = dict(labels or {})
    out["tags"] = [str(t) for t in tags]
    return out
