"""A journaled method's arguments by name, defaults filled in: what ``inspect.Signature.bind`` and
``apply_defaults`` give, for the calls they accept, at a fraction of the cost (they run on every live call)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

_P = inspect.Parameter
Binder = Callable[[Any, tuple[Any, ...], dict[str, Any]], "dict[str, Any] | None"]


def binder(sig: inspect.Signature) -> Binder:
    """``bind(self, args, kwargs)`` -> ``sig.bind(self, *args, **kwargs)`` with defaults applied, as a dict of
    arguments, or None when ``sig.bind`` would raise ``TypeError`` (the method then raises its own error).

    Methods with positional-only or ``*args`` parameters go through ``sig.bind`` itself.
    """
    params = list(sig.parameters.values())

    def slow(svc: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
        try:
            bound = sig.bind(svc, *args, **kwargs)
        except TypeError:
            return None
        bound.apply_defaults()
        return dict(bound.arguments)

    if any(p.kind in (_P.POSITIONAL_ONLY, _P.VAR_POSITIONAL) for p in params):
        return slow
    positional = tuple(p.name for p in params if p.kind is _P.POSITIONAL_OR_KEYWORD)
    named = frozenset(p.name for p in params if p.kind is not _P.VAR_KEYWORD)
    defaults = {p.name: p.default for p in params if p.kind is not _P.VAR_KEYWORD and p.default is not p.empty}
    required = named - defaults.keys()
    var_kw = next((p.name for p in params if p.kind is _P.VAR_KEYWORD), None)
    plain = required <= set(positional)  # every positional given and no keyword: nothing else to check

    def fast(svc: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
        if plain and not kwargs and len(args) + 1 == len(positional):
            out = dict(defaults)
            out.update(zip(positional, (svc, *args)))
            if var_kw is not None:
                out[var_kw] = {}
            return out
        given = (svc, *args)
        if len(given) > len(positional):
            return slow(svc, args, kwargs)
        out = dict(defaults)
        out.update(zip(positional, given))
        extra: dict[str, Any] = {}
        for name, value in kwargs.items():
            if name in named:
                if name in positional[:len(given)]:
                    return None  # given twice
                out[name] = value
            else:
                extra[name] = value
        if var_kw is not None:
            out[var_kw] = extra
        elif extra:
            return None  # an unexpected keyword
        return out if required <= out.keys() else None

    return fast
