"""Durable calls: a retry never pays twice for an LLM or MCP call that already succeeded.

Every ``llm().chat``, ``chat_stream``, ``embed``, ``raw`` and ``mcp().call`` inside an ``@aether_task`` (or
``@aether_flow``) is journaled after it succeeds: result, usage and (for chat) the full reply, keyed by the
task run's durable identity (see ``aether_prefect._prefect.DurableIdentity``), the call's position in the
task's sequence and a fingerprint of the request. A later attempt (task retry, flow-run retry, or a rerun with
``replay_from=``) returns the recorded result at the same position and fingerprint without any request; the
first mismatch ends replay for that attempt. ``durable=False`` on the task, profile, MCP server or call opts out.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aether_prefect.services.journal._bind import binder
from aether_prefect.services.journal._entry import Entry, entry_body, fingerprint, older_fingerprints
from aether_prefect.services.journal._journal import ENV_REPLAY_FROM, PREFIX, RETENTION_S, Journal, journal_of
from aether_prefect.services.journal._prune import prune

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
#: True inside a live journaled call: a call it makes itself (embed delegated to ``embed_profile``) is part of
#: the outer call's entry, so it takes no position and is not journaled on its own.
_inside: contextvars.ContextVar[bool] = contextvars.ContextVar("aether_journaled_call", default=False)

#: The journaled methods and what their fingerprint leaves out (callbacks, per-attempt headers).
_IGNORED = {"chat": {"self"}, "chat_stream": {"self", "on_delta"}, "embed": {"self"}, "raw": {"self", "headers"},
            "mcp.call": {"self"}}


def journaled(kind: str) -> Callable[[F], F]:
    """Journal and replay the decorated service method (``kind``: chat, chat_stream, embed, raw, mcp.call).

    Adds a keyword ``durable: bool | None`` to the method: False always goes live and records nothing, True
    journals even when the task or profile/server said ``durable=False``.
    """
    if kind not in _IGNORED:
        raise ValueError(f"unknown journaled kind {kind!r}; one of {', '.join(_IGNORED)}")

    def deco(fn: F) -> F:
        bind = binder(inspect.signature(fn))

        @functools.wraps(fn)
        async def wrapper(svc: Any, *args: Any, durable: bool | None = None, **kwargs: Any) -> Any:
            journal = None if _inside.get() else _journal_for(svc, kind, durable)
            if journal is None:
                return await fn(svc, *args, **kwargs)
            position = journal.claim()
            arguments = bind(svc, args, kwargs)
            if arguments is None:
                return await fn(svc, *args, **kwargs)  # arguments the method rejects: it raises its own clear error
            request = _request(kind, svc, arguments)
            fp = fingerprint(request)
            entry = await journal.lookup(
                position, fp, lambda: f"{kind} {request.get('tool') or request.get('model') or ''}".strip(),
                lambda: older_fingerprints(request)) if journal.expects(position) else None
            if entry is not None:
                return await _replay(kind, svc, entry, arguments)
            return await _live(kind, svc, fn, journal, position, fp, args, kwargs)

        return wrapper  # type: ignore[return-value]

    return deco


def _journal_for(svc: Any, kind: str, durable: bool | None) -> Journal | None:
    """The context's journal when this call is durable (call flag > task flag and profile/server flag)."""
    if durable is not None and not isinstance(durable, bool):
        from aether_prefect.errors import ValidationError

        raise ValidationError(f"durable must be True, False or None (journal this call or not), got {durable!r}")
    if durable is False:
        return None
    ctx = svc.ctx
    if ctx.closed:
        return None  # the method raises its own "closed" error
    block = svc.server if kind == "mcp.call" else svc.profile
    if durable is None and (ctx.overrides.durable is False or getattr(block, "durable", True) is False):
        return None
    journal = journal_of(ctx)
    return journal if journal.active else None


def _request(kind: str, svc: Any, arguments: dict[str, Any]) -> dict[str, Any]:
    """What identifies the call (hashed, never stored): method, target, model and the caller's arguments."""
    args = {k: v for k, v in arguments.items() if k not in _IGNORED[kind]}
    if kind == "mcp.call":
        return {"kind": kind, "server": svc.name, "transport": svc.server.transport, **args}
    model = args.pop("model", None) or (svc.profile.embed_model if kind == "embed" else svc.profile.model)
    return {"kind": kind, "provider": svc.provider, "base_url": svc.base_url, "model": model, "args": args}


async def _live(kind: str, svc: Any, fn: Callable[..., Awaitable[Any]], journal: Journal, position: int, fp: str,
                args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Make the call, then record it (only once it succeeded). An LLM call also keeps the usage of every request
    it accounted (``call_usage``) and its new ``last_response``."""
    pieces: list[str] | None = None
    if kind == "chat_stream":
        pieces = []
        kwargs = {**kwargs, "on_delta": _capturing(kwargs.get("on_delta"), pieces)}
    needles = journal.needles(svc, lambda: _secrets(svc))
    inside = _inside.set(True)
    try:
        if kind == "mcp.call":
            result = await fn(svc, *args, **kwargs)
            data = entry_body(kind, position, fp, result, needles=needles)
        else:
            call_usage = _call_usage()
            sink: list[tuple[str, str, Any]] = []
            before = svc.last_response
            token = call_usage.set(sink)
            try:
                result = await fn(svc, *args, **kwargs)
            finally:
                call_usage.reset(token)
            reply = svc.last_response if svc.last_response is not before else None
            usage = [(p, m, u.prompt_tokens, u.completion_tokens, u.total_tokens) for p, m, u in sink]
            data = entry_body(kind, position, fp, result, usage=usage, pieces=pieces, last_response=reply,
                              needles=needles)
    finally:
        _inside.reset(inside)
    if not journal.append_now(kind, position, data):  # once the attempt's log is open: no await
        await journal.record(kind, position, data)
    return result


@functools.cache
def _call_usage() -> "contextvars.ContextVar[Any]":
    """The LLM service's per-call usage sink (imported on first use: the LLM service imports this module)."""
    from aether_prefect.services.llm._usage import call_usage

    return call_usage


def _capturing(on_delta: Any, pieces: list[str]) -> Callable[[str], Awaitable[None]]:
    """``on_delta`` that also keeps every piece, so a replay streams the same pieces."""
    from aether_prefect._sync import maybe_await

    async def capture(piece: str) -> None:
        pieces.append(piece)
        if on_delta is not None:
            await maybe_await(on_delta(piece))

    return capture


async def _replay(kind: str, svc: Any, entry: Entry, arguments: dict[str, Any]) -> Any:
    """The recorded result, with no request: pieces through ``on_delta``, the reply in ``last_response``,
    usage counted as replayed (zero tokens spent)."""
    if kind == "mcp.call":
        return dict(entry.result)
    from aether_prefect._sync import maybe_await
    from aether_prefect.services.llm._usage import Usage, tracker

    track = tracker(svc.ctx)
    for profile, model, prompt, completion, total in entry.usage:
        track.record_replayed(profile, model, Usage(prompt_tokens=prompt, completion_tokens=completion,
                                                    total_tokens=total))
    if entry.last_response is not None:
        svc.last_response = entry.last_response
    on_delta = arguments.get("on_delta")
    if kind == "chat_stream" and on_delta is not None:
        for piece in entry.pieces or []:
            await maybe_await(on_delta(piece))
    if kind in ("chat", "chat_stream"):
        text, usage = entry.result
        return text, dict(usage)
    return entry.result


def _secrets(svc: Any) -> set[str]:
    """Every secret value the service could have seen (its block and the context's config); walked once per
    service object and attempt (the journal caches the result)."""
    from aether_prefect.services.llm import secret_values

    block = svc.server if hasattr(svc, "server") and not hasattr(svc, "profile") else svc.profile
    return secret_values(block) | secret_values(svc.ctx.config)


__all__ = ["ENV_REPLAY_FROM", "PREFIX", "RETENTION_S", "journaled", "prune"]
