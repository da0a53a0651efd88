"""Graph segments: one compact object answering ``view="graph"`` queries for the settled runs of a graph (#21).

``artifacts/index/v2/gseg/g=<graph>/<events>-<uuid>.seg`` holds, for each run partition of the graph it covers,
the records that partition folds to (retried saves folded, Prefect links applied) and a fingerprint of the exact
event keys they were folded from. A reader lists the graph's event keys (the authoritative index), uses a run's
block only when the run's listed keys have the block's fingerprint, and reads every other run the usual way
(its run segment, then its new events). So a segment can be stale, old or written by a slower process and the
answer is still exact: a save that lands after a segment was written changes its run's keys, and that run is
read from its events. Segments are immutable, written once under a unique name (an atomic put), and never
needed: deleting them all only makes graph queries slower.

Layout (so a query parses little): a magic line, a JSON header line (the runs with their fingerprints, and where
each column lies), then the columns as JSON arrays (kind and node as dictionary codes, each metric and label as a
(rows, values) column, artifact ids, times, record offsets), each parsed only when a query needs it, then the
records' full JSON back to back, each validated only when a query returns it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import partial
from typing import Any, NamedTuple

import orjson
from pydantic import ValidationError as PydanticValidationError

from aether_prefect.services.artifacts._index import Artifact
from aether_prefect.services.artifacts._query import Filter, Hit, label_match

MAGIC = b"aether-graph-segment 1"


class Row(NamedTuple):
    """One record of a run block: its add event's name, its JSON line, and the columns queries filter on."""

    name: str
    line: bytes
    artifact_id: str
    at: float
    kind: str
    node_id: str | None
    metrics: dict[str, float]
    labels: dict[str, Any]

    @classmethod
    def of(cls, name: str, rec: Artifact) -> "Row":
        """The row of a validated record (its add event named ``name`` in the run folder)."""
        return cls(name, rec.model_dump_json().encode(), rec.artifact_id, rec.created_at.timestamp(), rec.kind,
                   rec.node_id, dict(rec.metrics), dict(rec.labels))


class Block(NamedTuple):
    """A run partition as a segment holds it: its folder name, the fingerprint and count of its event keys."""

    run: str
    fingerprint: str
    events: int
    rows: list[Row]


def fingerprint(keys: Iterable[str]) -> str:
    """A digest of a run partition's sorted event keys: equal exactly when the same events are there."""
    return hashlib.blake2b("\n".join(sorted(keys)).encode(), digest_size=16).hexdigest()


def build(graph: str, blocks: list[Block], graph_fingerprint: str) -> bytes:
    """The bytes of a segment of ``graph`` holding ``blocks`` (each run's rows in key order); ``graph_fingerprint``
    is the fingerprint of every event key the blocks were folded from, so a reader whose listing of the graph has
    it uses every block without grouping its keys by run."""
    ids: list[str] = []
    names: list[str] = []
    at: list[float] = []
    kinds: dict[str, int] = {}
    kind: list[int] = []
    nodes: dict[str | None, int] = {}
    node: list[int] = []
    metrics: dict[str, tuple[list[int], list[float]]] = {}
    labels: dict[str, tuple[dict[bytes, int], list[Any], list[int], list[int]]] = {}
    runs: list[list[Any]] = []
    lines: list[bytes] = []
    for block in blocks:
        start = len(ids)
        for row in block.rows:
            i = len(ids)
            ids.append(row.artifact_id)
            names.append(row.name)
            at.append(row.at)
            kind.append(kinds.setdefault(row.kind, len(kinds)))
            node.append(nodes.setdefault(row.node_id, len(nodes)))
            for name, value in row.metrics.items():
                m_rows, m_vals = metrics.setdefault(name, ([], []))
                m_rows.append(i)
                m_vals.append(value)
            for name, value in row.labels.items():
                codes, values, l_rows, l_idx = labels.setdefault(name, ({}, [], [], []))
                text = orjson.dumps(value)
                code = codes.get(text)
                if code is None:
                    code = codes[text] = len(values)
                    values.append(value)
                l_rows.append(i)
                l_idx.append(code)
            lines.append(row.line)
        runs.append([block.run, block.fingerprint, block.events, start, len(ids)])
    n = len(ids)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    parts: list[bytes] = []
    size = 0

    def put(value: Any) -> list[int]:
        nonlocal size
        blob = orjson.dumps(value)
        parts.append(blob)
        size += len(blob)
        return [size - len(blob), len(blob)]

    # a column present on every row is stored dense (rows None)
    cols = {name: put(value) for name, value in (("ids", ids), ("names", names), ("at", at), ("kinds", list(kinds)),
                                                 ("kind", kind), ("nodes", list(nodes)), ("node", node),
                                                 ("lines", offsets))}
    metric_cols = {k: put([None if len(r) == n else r, v]) for k, (r, v) in metrics.items()}
    label_cols = {k: put([vals, None if len(r) == n else r, ix]) for k, (_, vals, r, ix) in labels.items()}
    cols["records"] = [size, offsets[-1]]
    parts.extend(lines)
    header = {"g": graph, "n": n, "fingerprint": graph_fingerprint, "events": sum(b.events for b in blocks),
              "runs": runs, "cols": cols, "metrics": metric_cols, "labels": label_cols}
    return b"".join([MAGIC, b"\n", orjson.dumps(header), b"\n", *parts])


class GraphSegment:
    """A parsed graph segment: its run blocks' fingerprints; columns are parsed when a query first needs them and
    records when it returns them."""

    def __init__(self, key: str, header: dict[str, Any], body: memoryview) -> None:
        self.key = key
        self.graph: str = header["g"]
        self.fingerprint: str = header["fingerprint"]
        self.events: int = header["events"]
        self.n: int = header["n"]
        self._h = header
        self._body = body
        self._cols: dict[tuple[str, str], Any] = {}
        self.runs: dict[str, tuple[str, int, int, int]] = {
            run: (fp, events, start, end) for run, fp, events, start, end in header["runs"]}

    @classmethod
    def parse(cls, key: str, data: bytes) -> "GraphSegment | None":
        """The segment in ``data``, or None if it is not one (damaged, foreign, another version)."""
        try:
            first = data.index(b"\n")
            second = data.index(b"\n", first + 1)
            if data[:first] != MAGIC:
                return None
            header = orjson.loads(data[first + 1 : second])
            seg = cls(key, header, memoryview(data)[second + 1 :])
            if seg._h["cols"]["records"][0] + seg._h["cols"]["records"][1] != len(seg._body):
                return None  # truncated
            return seg
        except (ValueError, TypeError, KeyError, IndexError, orjson.JSONDecodeError):
            return None

    def _col(self, group: str, name: str) -> Any:
        got = self._cols.get((group, name))
        if got is None:
            where = self._h[group].get(name)
            if where is None:
                return None
            got = self._cols[(group, name)] = orjson.loads(self._body[where[0] : where[0] + where[1]])
        return got

    def covers_all(self, keys: list[str]) -> bool:
        """Whether the blocks were folded from exactly ``keys``, the graph's whole listing (every block usable)."""
        return len(keys) == self.events and fingerprint(keys) == self.fingerprint

    def covers(self, run: str, keys: list[str]) -> bool:
        """Whether this segment's block of ``run`` was folded from exactly the event keys ``keys``."""
        have = self.runs.get(run)
        return have is not None and have[1] == len(keys) and have[0] == fingerprint(keys)

    def record(self, row: int) -> Artifact | None:
        """The validated record of ``row``."""
        try:
            return Artifact.model_validate_json(self._line(row))
        except PydanticValidationError:
            return None

    def _line(self, row: int) -> bytes:
        offsets = self._col("cols", "lines")
        base = self._h["cols"]["records"][0]
        return bytes(self._body[base + offsets[row] : base + offsets[row + 1]])

    def select(self, flt: Filter, runs: Iterable[str], key_prefix: str) -> list[Hit]:
        """Hits passing ``flt`` in the blocks of ``runs`` (rows in key order, run after run)."""
        ranges = sorted((self.runs[r][2], self.runs[r][3], r) for r in runs if r in self.runs)
        if not ranges:
            return []
        kind = node = None
        if flt.kind is not None:
            kinds = self._col("cols", "kinds")
            if flt.kind not in kinds:
                return []
            code, kind = kinds.index(flt.kind), self._col("cols", "kind")
        if flt.node_id is not None:
            nodes = self._col("cols", "nodes")
            if flt.node_id not in nodes:
                return []
            node_code, node = nodes.index(flt.node_id), self._col("cols", "node")
        scores: dict[int, float] | list[float] | None = None
        if flt.metric is not None:
            col = self._col("metrics", flt.metric)
            if col is None:
                return []
            rows, vals = col
            scores = vals if rows is None else dict(zip(rows, vals))
        allowed: list[Any] = []
        for name, want in flt.labels.items():
            col = self._col("labels", name)
            if col is None:
                return []
            values, rows, codes = col
            ok = {c for c, v in enumerate(values) if label_match(v, want)}
            if not ok:
                return []
            allowed.append({r for r, c in zip(rows if rows is not None else range(self.n), codes) if c in ok})
        ids, at, names = self._col("cols", "ids"), self._col("cols", "at"), self._col("cols", "names")
        out: list[Hit] = []
        dense = isinstance(scores, list)
        for start, end, run in ranges:
            prefix = f"{key_prefix}{run}/"
            for r in range(start, end):
                if kind is not None and kind[r] != code:
                    continue
                if node is not None and node[r] != node_code:
                    continue
                score = None
                if scores is not None:
                    score = scores[r] if dense else scores.get(r)  # type: ignore[union-attr, index]
                    if score is None:
                        continue
                if allowed and not all(r in s for s in allowed):
                    continue
                out.append(Hit(prefix + names[r], at[r], ids[r], score, load=partial(self.record, r)))
        return out

    def blocks(self, runs: Iterable[str]) -> list[Block]:
        """The blocks of ``runs`` with their rows, for carrying them into the next segment."""
        rng = range(self.n)
        metrics: dict[int, dict[str, float]] = {}
        for name in self._h["metrics"]:
            rows, vals = self._col("metrics", name)
            for r, v in zip(rows if rows is not None else rng, vals):
                metrics.setdefault(r, {})[name] = v
        labels: dict[int, dict[str, Any]] = {}
        for name in self._h["labels"]:
            values, rows, codes = self._col("labels", name)
            for r, c in zip(rows if rows is not None else rng, codes):
                labels.setdefault(r, {})[name] = values[c]
        c = partial(self._col, "cols")
        names, ids, at, kinds, kind, nodes, node = (
            c("names"), c("ids"), c("at"), c("kinds"), c("kind"), c("nodes"), c("node"))
        out = []
        for run in runs:
            fp, events, start, end = self.runs[run]
            rows_out = [Row(names[r], self._line(r), ids[r], at[r], kinds[kind[r]], nodes[node[r]], metrics.get(r, {}),
                            labels.get(r, {})) for r in range(start, end)]
            out.append(Block(run, fp, events, rows_out))
        return out


__all__ = ["MAGIC", "Block", "GraphSegment", "Row", "build", "fingerprint"]
