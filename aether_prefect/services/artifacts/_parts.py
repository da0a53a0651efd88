"""The artifact index, partitioned by graph and run in the store's own key layout (#21).

Why the key layout and not an embedded engine: every save must stay an immutable write that many processes
on many machines can do at once, on a directory or an S3 bucket. SQLite/DuckDB files cannot be written
concurrently through S3, while S3 lists any key prefix in one request per 1,000 keys; so the partition *is*
the prefix, and a query lists and reads only the partitions it needs:

- ``artifacts/index/v2/run/g=<graph>/r=<run>/<time_us>-<uuid>.json``: the ``add`` event of a save (the commit
  point, holding its Prefect artifact's id) and, from older writers, a ``prefect`` event linking an add event to
  its Prefect artifact, in the run's partition. A repeat of a save links the kept record to its own Prefect
  artifact (the newest attempt's), as a ``prefect`` event would.
- ``artifacts/index/v2/id/<sha[:2]>/<sha>/<time_us>-<uuid>``: a pointer (the add event's key) written just
  before the add event, so ``get_by_id`` lists one tiny prefix. A pointer whose add event never landed is
  ignored.
- ``artifacts/index/v2/run/g=<graph>/r=<run>/pin-<sha>.json``: a pin event, written by ``pin`` into every run
  holding a record of the id (found by its pointers), so a query reads pins with the run's one LIST; its key is
  fixed per run and id (pinning twice rewrites it). ``artifacts/index/v2/pin/<sha>`` also marks the id pinned
  (idempotent); queries check it per hit only in a store whose migration marker does not say ``pins_in_runs``
  (pins written before pin events existed; ``store migrate`` folds them into their runs).
- ``artifacts/index/v2/facet/k=<kind>/<g>/<r>`` and ``.../facet/l=<label>/v=<json value>/<g>/<r>``: empty
  markers saying "this run partition holds a record of this kind / with this label value", written (once per
  process and run) just before the add event, so ``view="all"`` with ``kind=``/``labels=`` lists the markers
  and reads only the runs that match. ``artifacts/index/v2/facets.json`` says every record of the store has
  its markers (written on a store's first save, or by ``aether-prefect store migrate``); without it such a
  query reads every partition, as before.
- ``artifacts/index/v2/run/g=<graph>/r=<run>/seg-<count>-<uuid>.json``: a segment, the events of a run partition
  known to a reader that had to fetch many of them one by one. It lives in the run's folder, so the one LIST of
  the partition returns its events and its segments; it names its keys, so a reader takes the biggest segment and
  fetches only the keys it lacks; writer clocks do not matter. Segments are an optimisation: the events stay
  authoritative (segments that older versions wrote under ``v2/seg/`` are no longer read).
- ``artifacts/index/v2/gseg/g=<graph>/<count>-<uuid>.seg``: a graph segment (see ``_graphseg``), the folded
  records of a graph's runs with a fingerprint of each run's event keys; ``view="graph"`` reads it plus only the
  runs whose keys changed since, so a graph of 10,000 records costs one LIST of its keys and one object.

``view="run"|"node"`` reads one partition, ``view="graph"`` the graph's partitions, ``view="all"`` with
``kind=``/``labels=`` the partitions their markers name, and ``view="all"`` alone every partition. A
process caches the partitions it queried and, on each query, lists only those partitions again.
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import orjson
from pydantic import ValidationError as PydanticValidationError

from aether_prefect.services.artifacts._graphseg import Block, GraphSegment, Row, build, fingerprint
from aether_prefect.services.artifacts._index import REC, ROOT, SNAP, Artifact, IndexEvent
from aether_prefect.services.artifacts._query import Filter, Hit
from aether_prefect.services.stores._per_store import PerStore
from aether_prefect.services.stores.base import ObjectNotFound, ObjectStore

V2 = f"{ROOT}/index/v2"
RUNS = f"{V2}/run"
IDS = f"{V2}/id"
PINS = f"{V2}/pin"
SEGS = f"{V2}/seg"  # where run segments were written before they moved into the run's folder (no longer read)
#: A run segment's name in its run folder starts so (an event's name starts with a digit, a pin's with "pin-").
SEG_MARK = "seg-"
PIN_MARK = "pin-"
GSEGS = f"{V2}/gseg"
FACETS = f"{V2}/facet"
#: Present when every record of the store has its facet markers.
FACETS_COMPLETE = f"{V2}/facets.json"
#: Present when the store holds no record of the old whole-store layout, or every one was copied (``store migrate``):
#: written on a store's first save when the old layout is empty, so a fresh reader pays one GET instead of a LIST of
#: each old folder. Its JSON says what else holds for the whole store (``facets``: see FACETS_COMPLETE).
MIGRATED = f"{V2}/migrated.json"
#: Events fetched one by one in a partition before the reader writes a segment of it.
SEGMENT_AFTER = 32
#: A graph query writes a new graph segment when at least this many of the graph's runs (holding at least
#: GRAPH_SEGMENT_EVENTS events, and an eighth of the graph's events up to 4,096) were read outside it.
GRAPH_SEGMENT_RUNS = 8
GRAPH_SEGMENT_EVENTS = 256
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_POOL = 16
_UNREAD: Any = {"unread": True}  # a layout not read yet (a sentinel: None means the marker is absent)

Part = tuple[str, str]  # (graph part, run part) as they appear in keys
#: A filter on an add event's raw record (parsed JSON), applied before validation.
Where = Callable[[dict[str, Any]], bool]


def enc(tag: str, value: str | None) -> str:
    """A key part for an id of any text: ``<tag>=`` + the id with unsafe bytes as ``~XX`` (None: ``<tag>-``)."""
    if value is None:
        return f"{tag}-"
    out = []
    for ch in value:
        if ch in _SAFE:
            out.append(ch)
        else:
            out.extend(f"~{b:02X}" for b in ch.encode("utf-8"))
    return f"{tag}=" + "".join(out)


def part_of(graph_id: str | None, run_id: str | None) -> Part:
    return enc("g", graph_id), enc("r", run_id)


def _facet_value(value: Any) -> str:
    """A label value as marker text; equal values (1, 1.0, True) share one text, as ``==`` matches them."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return orjson.dumps(value).decode()


def kind_prefix(kind: str) -> str:
    """The marker folder of the run partitions holding records of ``kind``."""
    return f"{FACETS}/{enc('k', kind)}/"


def label_prefix(name: str, value: Any) -> str:
    """The marker folder of the run partitions holding records whose label ``name`` is (or lists) ``value``."""
    return f"{FACETS}/{enc('l', name)}/{enc('v', _facet_value(value))}/"


def facet_markers(record: Artifact) -> list[str]:
    """The marker keys a save of ``record`` writes: its kind and each label value, in its run partition."""
    g, r = part_of(record.graph_id, record.run_id)
    out = [f"{kind_prefix(record.kind)}{g}/{r}"]
    for name, value in record.labels.items():
        for v in value if isinstance(value, list) else [value]:
            if v is None or isinstance(v, (str, int, float, bool)):
                out.append(f"{label_prefix(name, v)}{g}/{r}")
    return out


def _event_key(part: Part, at: datetime | None = None) -> str:
    at = at or datetime.now(timezone.utc)
    return f"{RUNS}/{part[0]}/{part[1]}/{int(at.timestamp() * 1e6):017d}-{uuid.uuid4().hex[:12]}.json"


def _part_of_key(key: str) -> Part:
    g, r = key[len(RUNS) + 1 :].split("/", 2)[:2]
    return g, r


def _is_seg(key: str) -> bool:
    """Whether a key listed in a run folder is a run segment rather than an event."""
    return key.startswith(SEG_MARK, key.rfind("/") + 1)


def _split(keys: Iterable[str]) -> tuple[list[str], list[str]]:
    """A run folder's listing as (event keys, segment keys)."""
    events: list[str] = []
    segs: list[str] = []
    for key in keys:
        (segs if _is_seg(key) else events).append(key)
    return events, segs


def _validated(raw: dict[str, Any], prefect_id: str | None, pinned: bool) -> Artifact | None:
    """An add event's raw record as an Artifact with its Prefect link and pin applied (None: not a record)."""
    try:
        rec = Artifact.model_validate(raw)
    except PydanticValidationError:
        return None  # a foreign or damaged object: not an artifact record
    update: dict[str, Any] = {}
    if prefect_id and prefect_id != rec.prefect_artifact_id:
        update["prefect_artifact_id"] = prefect_id
    if pinned and not rec.pinned:
        update["pinned"] = True
    return rec.model_copy(update=update) if update else rec


def _dumps(raw: dict[str, Any]) -> bytes:
    return orjson.dumps(raw)


def _canon(value: Any) -> str:
    """A cheap canonical text of a labels/metrics dict (keys sorted) for telling repeated saves apart."""
    return repr(sorted(value.items())) if isinstance(value, dict) else repr(value)


class _Partition:
    """One run's events in memory, folded as the whole-store index folds them (a retried save is one entry).

    Add records stay parsed JSON until a query returns them: a query filters the raw dicts first and validates
    only its hits into :class:`Artifact` (cached), so a graph of 10,000 records costs 10,000 dict checks, not
    10,000 pydantic validations.
    """

    def __init__(self, part: Part) -> None:
        self.part = part
        self.raw: dict[str, dict[str, Any]] = {}  # every event by key (what a segment holds)
        self._adds: dict[str, dict[str, Any]] = {}  # kept add key -> raw record
        self._prefect: dict[str, str] = {}  # kept add key -> Prefect artifact id
        self._alias: dict[str, str] = {}  # add key of a repeated save -> the add key kept for it
        self._by_sha: dict[str, list[str]] = {}  # artifact id -> its kept add keys
        self._pins: set[str] = set()  # artifact ids a pin event of this run names
        self._valid: dict[str, tuple[str | None, bool, Artifact | None]] = {}  # add key -> (prefect id, pinned, record)
        self.fetched = 0  # events fetched one by one since the last segment
        self.seg_count = 0

    @property
    def _seen(self) -> dict[str, dict[str, Any]]:
        return self.raw

    def _apply(self, key: str, raw: dict[str, Any]) -> None:
        if key in self.raw or not isinstance(raw, dict):
            return
        self.raw[key] = raw
        op = raw.get("op")
        rec = raw.get("record")
        if op == "add" and isinstance(rec, dict):
            self._add(key, rec)
        elif op == "prefect" and raw.get("ref") and raw.get("prefect_artifact_id"):
            self._prefect[self._alias.get(raw["ref"], raw["ref"])] = raw["prefect_artifact_id"]
        elif op == "pin" and isinstance(raw.get("artifact_id"), str):
            self._pins.add(raw["artifact_id"])

    @staticmethod
    def _ident(rec: dict[str, Any]) -> tuple[Any, ...]:
        """What makes two add events the same save: same bytes, scope, kind, name, labels and metrics."""
        g = rec.get
        return (g("run_id"), g("graph_id"), g("node_id"), g("kind"), g("name"),
                _canon(g("labels") or {}), _canon(g("metrics") or {}))

    def _add(self, key: str, rec: dict[str, Any]) -> None:
        """Keep an add event, folding a repeat of the same save (a retry whose first write did land) into the
        earliest one. Only adds of the same artifact id are compared, so the common case is one dict lookup."""
        sha = rec.get("artifact_id")
        same = self._by_sha.setdefault(sha if isinstance(sha, str) else repr(sha), [])
        kept = None
        if same:
            ident = self._ident(rec)
            kept = next((k for k in same if self._ident(self._adds[k]) == ident), None)
        if kept is not None and kept < key:  # a repeat of a save already kept
            self._alias[key] = kept
            if key in self._prefect and kept not in self._prefect:
                self._prefect[kept] = self._prefect.pop(key)
            elif rec.get("prefect_artifact_id") and key not in self._prefect:  # the repeat's own Prefect artifact, saved in its add event
                self._prefect[kept] = rec["prefect_artifact_id"]
            return
        if kept is not None:  # an earlier writer's event arrived late: it becomes the kept one
            old = self._adds.pop(kept)
            same.remove(kept)
            self._alias[kept] = key
            if kept in self._prefect and key not in self._prefect:
                self._prefect[key] = self._prefect.pop(kept)
            elif old.get("prefect_artifact_id") and key not in self._prefect:
                self._prefect[key] = old["prefect_artifact_id"]
        same.append(key)
        self._adds[key] = rec

    def record(self, key: str) -> Artifact | None:
        """The validated record of the kept add ``key`` with its Prefect link and pin (None if it is not a record)."""
        pid = self._prefect.get(key)
        raw = self._adds[key]
        pinned = raw.get("artifact_id") in self._pins
        hit = self._valid.get(key)
        if hit is not None and hit[0] == pid and hit[1] == pinned:
            return hit[2]
        rec = _validated(raw, pid, pinned)
        self._valid[key] = (pid, pinned, rec)
        return rec

    def records(self, where: Where | None = None) -> list[tuple[str, Artifact]]:
        """(key, record) of the kept adds whose raw record passes ``where``, oldest first."""
        out = []
        for key in sorted(self._adds):
            if where is None or where(self._adds[key]):
                rec = self.record(key)
                if rec is not None:
                    out.append((key, rec))
        return out


class PartitionedIndex:
    """The process-wide, lazily filled view of one store's partitioned artifact index."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        self._lock = threading.RLock()
        self._parts: dict[Part, _Partition] = {}
        self._marked: set[str] = set()  # facet markers this process wrote (or saw written)
        self._complete: bool | None = None  # FACETS_COMPLETE seen (None: not checked yet)
        self._layout: dict[str, Any] | None = _UNREAD  # the migration marker's JSON (None: absent)
        self._gsegs: dict[str, GraphSegment] = {}  # graph part -> the graph segment last read or written
        # Threads only pay off where each request waits on a network; a local directory answers in microseconds.
        self._parallel = getattr(store, "scheme", "") != "file"

    # -- writes -------------------------------------------------------------------

    def write_add(self, record: Artifact) -> str:
        """Write a save's index entry: :meth:`prepare_add`, then :meth:`commit_add`; returns the add event's key."""
        key = self.prepare_add(record)
        self.commit_add(key, record)
        return key

    def prepare_add(self, record: Artifact, *also: Callable[[], Any]) -> str:
        """Everything a save writes before its commit point, at once: ``also`` (the blob), the id pointer and the
        facet markers this process has not written yet (and, on a store's first save, the mark that every
        record has its markers). None needs another: each only matters once the add event exists. Waits for
        all of them, then raises the first error; returns the key :meth:`commit_add` writes the add event to."""
        key = _event_key(part_of(record.graph_id, record.run_id), record.created_at)
        sha = record.artifact_id
        pointer = f"{IDS}/{sha[:2]}/{sha}/{key.rsplit('/', 1)[1][:-5]}"
        with self._lock:
            todo = [k for k in facet_markers(record) if k not in self._marked]
            first = self._complete is None
        jobs: list[Callable[[], Any]] = [*also, lambda: self._store.put_bytes(pointer, key.encode())]
        jobs += [functools.partial(self._store.put_bytes, k, b"") for k in todo]
        if first:
            jobs.append(self._first_save)
        self._map(lambda job: job(), jobs, small=1)
        if todo:
            with self._lock:
                self._marked.update(todo)
                if len(self._marked) > 100_000:
                    self._marked.clear()
        return key

    def commit_add(self, key: str, record: Artifact) -> None:
        """Write the add event of ``record`` at ``key`` (from :meth:`prepare_add`): the commit point of a save."""
        raw = IndexEvent(op="add", artifact_id=record.artifact_id, record=record, at=record.created_at).model_dump(
            mode="json", exclude_none=True)
        self._store.put_bytes(key, _dumps(raw), content_type="application/json")
        with self._lock:
            p = self._parts.get(_part_of_key(key))
            if p is not None:
                p._apply(key, raw)

    def forget_facets(self) -> None:
        """Check again whether the store's facet markers are complete and whether it is migrated (after ``store
        migrate`` wrote its markers)."""
        with self._lock:
            self._complete = None
            self._layout = _UNREAD

    def _check_complete(self) -> bool:
        """Whether the store's records all have facet markers (the migration marker or FACETS_COMPLETE says so); an
        empty store is marked so on its first save."""
        with self._lock:
            if self._complete is not None:
                return self._complete
        layout = self.layout()
        done = (layout is not None and layout.get("facets") is True) or self._store.exists(FACETS_COMPLETE)
        if not done and self._runs_empty():
            self._store.put_bytes(FACETS_COMPLETE, _dumps({"since": "first save"}), content_type="application/json")
            done = True
        with self._lock:
            self._complete = done
        return done

    def _runs_empty(self) -> bool:
        return next(iter(self._store.list_keys(f"{RUNS}/")), None) is None

    def _first_save(self) -> None:
        """On this process's first save to the store: if the store has no migration marker and no old-layout
        record, write the marker (then no fresh reader lists the old layout's folders again), saying whether the
        facet markers are complete; else the facet check. One PUT on a new store, as the facet mark was before."""
        if self.layout() is None and not self._has_legacy():
            empty = self._runs_empty()  # a new store: no record, so no pin and no record without markers
            facets = empty or self._store.exists(FACETS_COMPLETE)
            pins = empty or next(iter(self._store.list_keys(f"{PINS}/")), None) is None
            body = {"since": "first save", "facets": facets, "pins_in_runs": pins}
            self._store.put_bytes(MIGRATED, _dumps(body), content_type="application/json")
            with self._lock:
                self._layout = body
        self._check_complete()

    def _has_legacy(self) -> bool:
        """Whether the old whole-store layout holds any object (a LIST of each of its folders)."""
        return any(next(iter(self._store.list_keys(f"{prefix}/")), None) is not None for prefix in (REC, SNAP))

    def layout(self, recheck: bool = False) -> dict[str, Any] | None:
        """The migration marker's JSON (None: absent, so the old layout may hold records); read once per process
        while present, and again when absent if ``recheck``."""
        with self._lock:
            if self._layout is not _UNREAD and not (recheck and self._layout is None):
                return self._layout
        raw = self._get_json(MIGRATED)
        with self._lock:
            self._layout = raw
        return raw

    def write_pin(self, artifact_id: str) -> None:
        """Pin ``artifact_id`` (every record of it), idempotently."""
        self._store.put_bytes(f"{PINS}/{artifact_id}", datetime.now(timezone.utc).isoformat().encode())
        self.pin_runs(artifact_id)

    def pin_runs(self, artifact_id: str) -> int:
        """A pin event in every run partition holding a record of ``artifact_id`` (found by its id pointers), so a
        query of those runs sees the pin in its one LIST, without a pin check per hit; returns how many runs. A
        record saved after this, in another run, is a new record: pinned only if saved with ``pin=True``."""
        refs = self._map(self._get_bytes, self._list(f"{IDS}/{artifact_id[:2]}/{artifact_id}/"))
        texts = [ref.decode("utf-8", "replace") for ref in refs if ref]
        parts = sorted({_part_of_key(t) for t in texts if t.startswith(f"{RUNS}/") and t.count("/") > RUNS.count("/") + 2})
        raw = {"op": "pin", "artifact_id": artifact_id, "at": datetime.now(timezone.utc).isoformat()}

        def put(part: Part) -> None:
            key = f"{RUNS}/{part[0]}/{part[1]}/{PIN_MARK}{artifact_id}.json"
            self._store.put_bytes(key, _dumps(raw), content_type="application/json")
            with self._lock:
                p = self._parts.get(part)
                if p is not None:
                    p._apply(key, raw)

        self._map(put, parts, small=1)
        return len(parts)

    def pins_in_runs(self) -> bool:
        """Whether every pin of the store is a pin event in its runs (the migration marker says so), so a query
        needs no pin check per hit."""
        layout = self.layout()
        return layout is not None and layout.get("pins_in_runs") is True

    # -- reads --------------------------------------------------------------------

    def run_records(self, graph_id: str | None, run_id: str | None, where: Where | None = None) -> list[tuple[str, Artifact]]:
        """(key, record) of one run passing ``where``, fresh from the store (one LIST of the partition, its newest
        segment if this process has not read the run yet, and the events it lacks)."""
        part = part_of(graph_id, run_id)
        self._refresh_listed([part], [self._list(f"{RUNS}/{part[0]}/{part[1]}/")])
        return self._records([part], where)

    def _refresh_listed(self, parts: list[Part], listings: list[list[str]]) -> None:
        """Refresh ``parts`` from the listing of each one's folder (events and segments in one LIST)."""
        with self._lock:
            fresh = {part for part in parts if part not in self._parts}
        keys: dict[Part, list[str]] = {}
        segs: dict[Part, list[str]] = {}
        for part, listed in zip(parts, listings):
            keys[part], seg_keys = _split(listed)
            if part in fresh:
                segs[part] = seg_keys
        self._refresh(keys, segs)

    def graph_records(self, graph_id: str | None, where: Where | None = None) -> list[tuple[str, Artifact]]:
        """(key, record) of every run of ``graph_id`` passing ``where`` (a :class:`Filter` uses graph segments)."""
        if where is not None and not isinstance(where, Filter):
            g = enc("g", graph_id)
            return self._scan(f"{RUNS}/{g}/", where)
        return [(h.key, rec) for h in self.graph_hits(graph_id, where or Filter()) if (rec := h.artifact()) is not None]

    def graph_hits(self, graph_id: str | None, flt: Filter) -> list[Hit]:
        """Hits passing ``flt`` in every run of ``graph_id``: one LIST of the graph's event keys, the newest graph
        segment for the runs it covers exactly, the usual run read for the others; may write a new segment."""
        g = enc("g", graph_id)
        base = f"{RUNS}/{g}/"
        listed, run_segs = _split(self._list(base))
        seg, seg_keys = self._graph_segment(g)
        if seg is not None and seg.covers_all(listed):  # nothing changed since the segment: no grouping by run
            return seg.select(flt, list(seg.runs), base)
        cut = len(base)
        by_run: dict[str, list[str]] = {}
        for key in listed:
            slash = key.find("/", cut)
            if slash > cut:
                by_run.setdefault(key[cut:slash], []).append(key)
        covered = [run for run, keys in by_run.items() if seg is not None and seg.covers(run, keys)]
        done = set(covered)
        rest: dict[Part, list[str]] = {(g, run): keys for run, keys in by_run.items() if run not in done}
        if rest:
            with self._lock:
                fresh = [part for part in rest if part not in self._parts]
            segs: dict[Part, list[str]] = {part: [] for part in fresh}
            for key in run_segs:
                part = (g, key[cut : key.find("/", cut)])
                if part in segs:
                    segs[part].append(key)
            self._refresh(rest, segs)
        hits = seg.select(flt, covered, base) if seg is not None else []
        hits += [Hit.of(key, rec, flt.metric) for key, rec in self._records(list(rest), flt)]
        rest_events = sum(len(keys) for keys in rest.values())
        if len(rest) >= GRAPH_SEGMENT_RUNS and rest_events >= max(GRAPH_SEGMENT_EVENTS, min(len(listed) // 8, 4096)):
            self._write_graph_segment(g, seg, seg_keys, by_run, covered, rest)
        return hits

    def _graph_segment(self, g: str) -> tuple[GraphSegment | None, list[str]]:
        """The newest readable graph segment of ``g`` (cached while it is the newest) and the segment keys listed."""
        keys = sorted(self._list(f"{GSEGS}/{g}/"), reverse=True)
        with self._lock:
            cached = self._gsegs.get(g)
        for key in keys[:3]:  # newest first; an unreadable one (deleted meanwhile, damaged) falls back
            if cached is not None and cached.key == key:
                return cached, keys
            seg = GraphSegment.parse(key, self._get_bytes(key) or b"")
            if seg is not None and seg.graph == g:
                with self._lock:
                    self._gsegs[g] = seg
                return seg, keys
        return cached, keys

    def _write_graph_segment(self, g: str, seg: GraphSegment | None, seg_keys: list[str], by_run: dict[str, list[str]],
                             covered: list[str], rest: dict[Part, list[str]]) -> None:
        """Write a segment of graph ``g``: the blocks ``seg`` still covers plus the runs just read, each fingerprinted
        with exactly the event keys its records were folded from; then delete segments older than ``seg``."""
        blocks = seg.blocks(covered) if seg is not None else []
        keys = [k for run in covered for k in by_run[run]]
        for part in rest:
            block, block_keys = self._block(part, rest[part])
            blocks.append(block)
            keys += block_keys
        blocks.sort(key=lambda b: b.run)
        events = sum(b.events for b in blocks)
        key = f"{GSEGS}/{g}/{events:010d}-{uuid.uuid4().hex[:12]}.seg"
        body = build(g, blocks, fingerprint(keys))
        try:
            self._store.put_bytes(key, body, content_type="application/octet-stream")
        except Exception:  # noqa: BLE001 - a segment is an optimisation; the events stay authoritative
            return
        new = GraphSegment.parse(key, body)
        with self._lock:
            if new is not None:
                self._gsegs[g] = new
        if seg is not None:  # older generations: no reader needs them (a reader that still does reads the events)
            for old in seg_keys:
                if old < seg.key:
                    try:
                        self._store.delete(old)
                    except Exception:  # noqa: BLE001 - garbage left behind is harmless
                        pass

    def _block(self, part: Part, listed: list[str]) -> tuple[Block, set[str]]:
        """The block of a loaded run partition: its kept records, fingerprinted with the keys they come from (and
        any listed key that holds no event, which contributes nothing)."""
        with self._lock:
            p = self._parts[part]
            keys = set(p.raw) | set(listed)
            adds = [(k, p._adds[k], p._prefect.get(k), p._adds[k].get("artifact_id") in p._pins, p._valid.get(k))
                    for k in sorted(p._adds)]
        rows = []
        for key, raw, pid, pinned, hit in adds:
            rec = hit[2] if hit is not None and hit[:2] == (pid, pinned) else _validated(raw, pid, pinned)
            if rec is not None:
                rows.append(Row.of(key.rsplit("/", 1)[1], rec))
        return Block(part[1], fingerprint(keys), len(keys), rows), keys

    def all_records(self, where: Where | None = None) -> list[tuple[str, Artifact]]:
        """(key, record) of every run of every graph passing ``where`` (reads the whole history)."""
        return self._scan(f"{RUNS}/", where)

    def facet_records(self, kind: str | None, labels: dict[str, Any], where: Where | None = None) -> list[tuple[str, Artifact]] | None:
        """(key, record) passing ``where`` from only the runs whose markers match ``kind`` and every label (a
        list value: any of); None when the store's markers are not complete (the caller scans everything)."""
        prefixes: list[list[str]] = []
        if kind is not None:
            prefixes.append([kind_prefix(kind)])
        for name, want in labels.items():
            values = want if isinstance(want, list) else [want]
            if not all(v is None or isinstance(v, (str, int, float, bool)) for v in values):
                return None
            prefixes.append([label_prefix(name, v) for v in values])
        if not prefixes or not self._check_complete():
            return None
        flat = [p for group in prefixes for p in group]
        listed = dict(self._map(lambda p: (p, self._list(p)), flat))
        parts: set[Part] | None = None
        for group in prefixes:
            found = {tuple(k[len(p):].split("/", 1)) for p in group for k in listed[p]}
            parts = found if parts is None else parts & found  # type: ignore[operator]
        chosen: list[Part] = sorted(parts or ())  # type: ignore[arg-type]
        return self.parts_records(chosen, where)

    def parts_records(self, parts: list[Part], where: Where | None = None) -> list[tuple[str, Artifact]]:
        """(key, record) passing ``where`` of the run partitions ``parts`` (listed in parallel, one LIST each)."""
        self._refresh_listed(parts, self._map(lambda part: self._list(f"{RUNS}/{part[0]}/{part[1]}/"), parts))
        return self._records(parts, where)

    def get(self, artifact_id: str) -> Artifact | None:
        """The newest record of ``artifact_id``: one LIST of its id prefix, then its run's partition."""
        pointers = sorted(self._list(f"{IDS}/{artifact_id[:2]}/{artifact_id}/"), reverse=True)
        for pointer in pointers:
            try:
                ref = self._store.get_bytes(pointer).decode()
            except ObjectNotFound:
                continue
            if not ref.startswith(f"{RUNS}/"):
                continue
            part = _part_of_key(ref)
            with self._lock:
                p = self._parts.get(part)
            if p is None or ref not in p._seen:
                self._refresh_listed([part], [self._list(f"{RUNS}/{part[0]}/{part[1]}/")])
            with self._lock:
                p = self._parts[part]
                kept = p._alias.get(ref, ref)
                if kept in p._adds:
                    return p.record(kept)
        return None

    def pinned(self, artifact_ids: Iterable[str]) -> set[str]:
        """Which of ``artifact_ids`` are pinned (a HEAD each for a few, one LIST of the pins for many)."""
        ids = set(artifact_ids)
        if not ids:
            return set()
        if len(ids) > 64:
            return {k.rsplit("/", 1)[1] for k in self._list(f"{PINS}/")} & ids
        found = self._map(lambda a: (a, self._store.exists(f"{PINS}/{a}")), sorted(ids))
        return {a for a, yes in found if yes}

    # -- internals ----------------------------------------------------------------

    def _list(self, prefix: str) -> list[str]:
        return list(self._store.list_keys(prefix))

    def _scan(self, run_prefix: str, where: Where | None) -> list[tuple[str, Artifact]]:
        """Every run partition under ``run_prefix``: one LIST, which holds their events and their segments."""
        by_part: dict[Part, list[str]] = {}
        for key in self._list(run_prefix):
            by_part.setdefault(_part_of_key(key), []).append(key)
        parts = list(by_part)
        self._refresh_listed(parts, [by_part[part] for part in parts])
        return self._records(parts, where)

    def _refresh(self, keys: dict[Part, list[str]], segs: dict[Part, list[str]]) -> None:
        """Load the newest segment of each new partition, then fetch the events no one has seen yet."""
        with self._lock:
            parts = {}
            for part in keys:
                if part not in self._parts:
                    self._parts[part] = _Partition(part)
                parts[part] = self._parts[part]
        seg_jobs = [(part, max(seg_keys)) for part, seg_keys in segs.items() if seg_keys and part in parts]
        for part, raw_seg in self._map(lambda job: (job[0], self._get_json(job[1])), seg_jobs):
            if raw_seg:
                p = parts[part]
                with self._lock:
                    for key in sorted(raw_seg.get("events", {})):
                        p._apply(key, raw_seg["events"][key])
                    p.seg_count = max(p.seg_count, len(raw_seg.get("events", {})))
        todo = [(part, key) for part, part_keys in keys.items() for key in part_keys if key not in parts[part]._seen]
        for (part, key), raw in self._map(lambda job: (job, self._get_json(job[1])), todo):
            if raw is not None:
                with self._lock:
                    parts[part]._apply(key, raw)
                    parts[part].fetched += 1
        for p in parts.values():
            if p.fetched >= SEGMENT_AFTER:
                self._write_segment(p)

    def _write_segment(self, p: _Partition) -> None:
        with self._lock:
            events = dict(p.raw)
            p.fetched = 0
        if len(events) <= p.seg_count:
            return
        key = f"{RUNS}/{p.part[0]}/{p.part[1]}/{SEG_MARK}{len(events):09d}-{uuid.uuid4().hex[:12]}.json"
        try:
            self._store.put_bytes(key, _dumps({"events": events}), content_type="application/json")
        except Exception:  # noqa: BLE001 - a segment is an optimisation; the events stay authoritative
            return
        p.seg_count = len(events)

    def _get_bytes(self, key: str) -> bytes | None:
        try:
            return self._store.get_bytes(key)
        except ObjectNotFound:
            return None

    def _get_json(self, key: str) -> dict[str, Any] | None:
        try:
            out = orjson.loads(self._store.get_bytes(key))
        except (ObjectNotFound, orjson.JSONDecodeError):
            return None  # deleted or foreign object: skip
        return out if isinstance(out, dict) else None

    def _map(self, fn: Any, jobs: list[Any], small: int = 4) -> list[Any]:
        if len(jobs) <= small or not self._parallel:
            return [fn(j) for j in jobs]
        with ThreadPoolExecutor(min(_POOL, len(jobs))) as pool:
            return list(pool.map(fn, jobs))

    def _records(self, parts: list[Part], where: Where | None = None) -> list[tuple[str, Artifact]]:
        with self._lock:
            out: list[tuple[str, Artifact]] = []
            for part in parts:
                p = self._parts.get(part)
                if p is not None:
                    out.extend(p.records(where))
        return out


#: The one PartitionedIndex of ``store`` in this process.
parts_for: PerStore[PartitionedIndex] = PerStore(PartitionedIndex)


__all__ = ["FACETS", "FACETS_COMPLETE", "GSEGS", "IDS", "MIGRATED", "PIN_MARK", "PINS", "SEG_MARK", "RUNS", "SEGS", "V2", "facet_markers", "kind_prefix", "label_prefix", "PartitionedIndex", "enc", "part_of", "parts_for"]
