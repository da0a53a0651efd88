"""What an artifact query asks (:class:`Filter`) and what the index answers with (:class:`Hit`).

A query's filter is data, not a closure, so the index can apply it to raw event dicts (run partitions) and to
the columns of a graph segment alike. A hit carries what ordering needs (time, artifact id, the metric's value)
and validates its full record only when the caller keeps it: ``best()`` over a graph of 10,000 records builds
one :class:`Artifact`, not 10,000.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aether_prefect.services.artifacts._index import Artifact


def label_match(have: Any, want: Any) -> bool:
    """Whether a record's label value ``have`` (a value or a list of values) matches ``want`` (a value, or a
    list meaning any of them)."""
    if isinstance(want, (list, tuple)):
        return any(label_match(have, w) for w in want)
    if isinstance(have, list):
        return want in have
    return bool(have == want)


@dataclass(frozen=True)
class Filter:
    """A query's conditions on a record: its kind, node, a metric it must have, labels it must match.

    Calling it on a raw add record (parsed JSON) says whether the record passes, before any validation.
    """

    kind: str | None = None
    node_id: str | None = None
    metric: str | None = None
    labels: dict[str, Any] = field(default_factory=dict)

    def __call__(self, raw: dict[str, Any]) -> bool:
        if self.kind is not None and raw.get("kind") != self.kind:
            return False
        if self.node_id is not None and raw.get("node_id") != self.node_id:
            return False
        if self.metric is not None:
            metrics = raw.get("metrics")
            if not isinstance(metrics, dict) or metrics.get(self.metric) is None:
                return False
        if not self.labels:
            return True
        have = raw.get("labels") or {}
        return isinstance(have, dict) and all(k in have and label_match(have[k], w) for k, w in self.labels.items())


class Hit:
    """One record a query found: its time (epoch seconds), artifact id and metric value, and the record itself,
    validated on first :meth:`artifact` call."""

    __slots__ = ("key", "at", "artifact_id", "score", "_rec", "_load")

    def __init__(self, key: str, at: float, artifact_id: str, score: float | None,
                 rec: Artifact | None = None, load: Callable[[], Artifact | None] | None = None) -> None:
        self.key, self.at, self.artifact_id, self.score = key, at, artifact_id, score
        self._rec, self._load = rec, load

    @classmethod
    def of(cls, key: str, rec: Artifact, metric: str | None = None) -> "Hit":
        """A hit for a record already validated."""
        return cls(key, rec.created_at.timestamp(), rec.artifact_id, rec.metrics.get(metric) if metric else None, rec)

    def artifact(self) -> Artifact | None:
        """The validated record (None if its stored text is not an artifact record)."""
        if self._load is not None:
            self._rec, self._load = self._load(), None
        return self._rec


__all__ = ["Filter", "Hit", "label_match"]
