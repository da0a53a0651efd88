"""Every public method of every service class exported from aether_prefect shows a runnable example (#18.4).

A docstring passes when one of its lines starts with ``Example:`` (inline, ``Example: ``kv.sync.get("k")````)
or ``Example::`` (a code block follows), as the README's examples are written, or a doctest-style ``>>>`` line. Classes that do not pass yet
are in ``NOT_YET``: an explicit list that only shrinks. A class that passes must leave it (the test says so),
and a class not in it must keep passing.
"""

from __future__ import annotations

import inspect
import re

import aether_prefect
from aether_prefect.services.base import BoundService, Service
from aether_prefect.services.stores.base import ObjectStore

EXAMPLE = re.compile(r"^\s*(Example::?|>>> )", re.M)

#: Service classes whose public methods do not all carry an example yet (remove a name once it passes).
NOT_YET: set[str] = set()


def service_classes() -> dict[str, type]:
    """Exported classes users call methods on: the NodeContext, every service, the object store."""
    found = {}
    for name in aether_prefect.__all__:
        obj = getattr(aether_prefect, name)
        if inspect.isclass(obj) and (obj is aether_prefect.NodeContext
                                     or issubclass(obj, (BoundService, Service, ObjectStore))):
            found[name] = obj
    return found


def public_methods(cls: type) -> dict[str, object]:
    """Public methods defined by the class or by one of our own bases (not by object, ABC or Prefect)."""
    out: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        if klass is not cls and not klass.__module__.startswith("aether_prefect"):
            continue
        for name, member in vars(klass).items():
            if name.startswith("_"):
                continue
            fn = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
            if inspect.isfunction(fn):
                out[name] = fn
    return out


def missing_examples(cls: type) -> list[str]:
    return sorted(name for name, fn in public_methods(cls).items() if not EXAMPLE.search(inspect.getdoc(fn) or ""))


def test_the_classes_checked_are_the_exported_services() -> None:
    classes = service_classes()
    assert {"NodeContext", "ObjectStore", "PrefectKV", "ArtifactsService", "LLMService", "MemoryService",
            "RAGService", "ChannelService", "MCPClient", "Service"} <= set(classes)
    assert NOT_YET <= set(classes), f"NOT_YET names a class that is not exported: {NOT_YET - set(classes)}"
    assert all(public_methods(cls) for cls in classes.values())


def test_every_public_service_method_has_an_example() -> None:
    missing = {name: missing_examples(cls) for name, cls in service_classes().items() if name not in NOT_YET}
    missing = {k: v for k, v in missing.items() if v}
    assert not missing, f"public methods without an 'Example:' line in their docstring: {missing}"


def test_the_allowlist_only_shrinks() -> None:
    done = sorted(name for name, cls in service_classes().items() if name in NOT_YET and not missing_examples(cls))
    assert not done, f"{done} now carry an example on every public method: remove them from NOT_YET"


def test_the_check_can_fail() -> None:
    class Probe(BoundService):
        async def documented(self) -> None:
            """Do it.

            Example: ``await probe.documented()``
            """

        async def bare(self) -> None:
            """Do it, with no example."""

    missing = missing_examples(Probe)
    assert "bare" in missing and "documented" not in missing
