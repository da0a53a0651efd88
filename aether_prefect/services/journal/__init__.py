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
import itertools
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from aether_prefect.services.journal._bind import Binder, binder
from aether_prefect.services.journal._entry import Entry, entry_body, fingerprint, older_fingerprints
from aether_prefect.services.journal._journal import ENV_REPLAY_FROM, PREFIX, RETENTION_S, Journal, journal_of
from aether_prefect.services.journal._prune import prune

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
#: The usage sink of the live journaled call this code runs inside (None outside one). A call made inside it
#: (embed delegated to ``embed_profile``) is part of the outer call's entry, so it takes no position and is not
#: journaled on its own; the LLM usage tracker appends every request it accounts here as
#: ``(profile, model, prompt, completion, total)``, the usage the entry keeps.
call_usage: contextvars.ContextVar["list[tuple[str, str, int, int, int]] | None"] = contextvars.ContextVar(
    "aether_journaled_call", default=None)

#: The journaled methods and what their fingerprint leaves out (callbacks, per-attempt headers): keyword-only
#: parameters, so positional arguments never hold one.
_IGNORED = {"chat": {"on_delta"}, "chat_stream": {"on_delta"}, "embed": set(), "raw": {"headers"},
            "mcp.call": set()}


def journaled(kind: str) -> Callable[[F], F]:
    """Journal and replay the decorated service method (``kind``: chat, chat_stream, embed, raw, mcp.call).

    Adds a keyword ``durable: bool | None`` to the method: False always goes live and records nothing, True
    journals even when the task or profile/server said ``durable=False``.
    """
    if kind not in _IGNORED:
        raise ValueError(f"unknown journaled kind {kind!r}; one of {', '.join(_IGNORED)}")
    ignored = frozenset(_IGNORED[kind])

    def deco(fn: F) -> F:
        sig = inspect.signature(fn)
        bind = binder(sig)
        if any(sig.parameters[n].kind is not inspect.Parameter.KEYWORD_ONLY for n in ignored & sig.parameters.keys()):
            raise TypeError(f"{fn.__qualname__}: {sorted(ignored)} must be keyword-only to stay out of fingerprints")

        @functools.wraps(fn)
        async def wrapper(svc: Any, *args: Any, durable: bool | None = None, **kwargs: Any) -> Any:
            journal = None if call_usage.get() is not None else _journal_for(svc, kind, durable)
            if journal is None:
                return await fn(svc, *args, **kwargs)
            position = journal.claim()
            given = kwargs if ignored.isdisjoint(kwargs) else {k: v for k, v in kwargs.items() if k not in ignored}
            fp: str | None = None
            if journal.expects(position):
                fp = _fingerprint(kind, svc, args, given)
                entry = await journal.lookup(position, fp, lambda: _what(kind, svc, args, kwargs),
                                             lambda: _older(kind, svc, bind, args, kwargs))
                if entry is not None:
                    return await _replay(kind, svc, entry, kwargs)
            # else nothing can replay at this position (a first attempt once its journal is read): the call is
            # fingerprinted after it succeeded, next to the entry's encoding (warm orjson code, and a failed call
            # never pays for it). Arguments the call itself changed are fingerprinted as they are then (a retry
            # of such a call only goes live).
            # Live: make the call, then record it, only once it succeeded (inline, not a coroutine of its own: this
            # runs on every live call). An LLM call also keeps the usage of every request it accounted and its new
            # ``last_response``.
            pieces: list[str] | None = None
            if kind == "chat_stream":
                pieces = []
                kwargs = {**kwargs, "on_delta": _capturing(kwargs.get("on_delta"), pieces)}
            needles = journal.needles(svc, lambda: _secrets(svc))
            sink: list[tuple[str, str, int, int, int]] = []
            before = None if kind == "mcp.call" else svc.last_response
            token = call_usage.set(sink)
            try:
                result = await fn(svc, *args, **kwargs)
            finally:
                call_usage.reset(token)
            if fp is None:
                fp = _fingerprint(kind, svc, args, given)
            if kind == "mcp.call":
                data = entry_body(kind, position, fp, result, needles=needles)
            else:
                reply = svc.last_response
                data = entry_body(kind, position, fp, result, usage=sink, pieces=pieces,
                                  last_response=reply if reply is not before else None, needles=needles)
            if not journal.append_now(kind, position, data):  # once the attempt's log is open: no await
                await journal.record(kind, position, data)
            return result

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


def _fingerprint(kind: str, svc: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The call's fingerprint: method, target (server, or provider, base URL and the profile's model) and the
    caller's arguments as given (``kwargs`` without the ignored ones); only its hash is stored, never the request.

    The arguments are not bound to the signature first (that cost as much as the hash on every live call): a
    retry makes the same call the same way, and a call written another way (a keyword for a positional, a
    default spelled out) only goes live. Entries written before fingerprinted the bound request (:func:`_older`).
    """
    if kind == "mcp.call":
        return fingerprint([kind, svc.name, svc.server.transport, args, kwargs])
    model = svc.profile.embed_model if kind == "embed" else svc.profile.model
    return fingerprint([kind, svc.provider, svc.base_url, model, args, kwargs])


def _request(kind: str, svc: Any, arguments: dict[str, Any]) -> dict[str, Any]:
    """What entries written before fingerprinted: method, target, model and the caller's arguments, bound to
    the method's signature with defaults filled in (and ``self`` and the ignored ones left out)."""
    args = {k: v for k, v in arguments.items() if k != "self" and k not in _IGNORED[kind]}
    if kind == "mcp.call":
        return {"kind": kind, "server": svc.name, "transport": svc.server.transport, **args}
    model = args.pop("model", None) or (svc.profile.embed_model if kind == "embed" else svc.profile.model)
    return {"kind": kind, "provider": svc.provider, "base_url": svc.base_url, "model": model, "args": args}


def _older(kind: str, svc: Any, bind: Binder, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterable[str]:
    """The fingerprints entries written before would carry for this call (computed only when a recorded entry
    does not match :func:`_fingerprint`): BLAKE2b, then sha256, of the bound request (:func:`_request`)."""
    arguments = bind(svc, args, kwargs)
    if arguments is None:
        return ()
    request = _request(kind, svc, arguments)
    return itertools.chain((fingerprint(request),), older_fingerprints(request))


def _what(kind: str, svc: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The call as a log line names it: kind and tool or model."""
    if kind == "mcp.call":
        target = kwargs.get("tool") or (args[0] if args else "")
    else:
        target = kwargs.get("model") or (svc.profile.embed_model if kind == "embed" else svc.profile.model)
    return f"{kind} {target or ''}".strip()


def _capturing(on_delta: Any, pieces: list[str]) -> Callable[[str], Awaitable[None]]:
    """``on_delta`` that also keeps every piece, so a replay streams the same pieces."""
    from aether_prefect._sync import maybe_await

    async def capture(piece: str) -> None:
        pieces.append(piece)
        if on_delta is not None:
            await maybe_await(on_delta(piece))

    return capture


async def _replay(kind: str, svc: Any, entry: Entry, kwargs: dict[str, Any]) -> Any:
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
    on_delta = kwargs.get("on_delta")  # keyword-only
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
