"""The artifact index, persisted in the object store and cached per process.

Every save writes one small immutable event object (never a read-modify-write of a
shared object, so writers in many processes cannot overwrite each other):

- ``artifacts/index/rec/<YYYYMMDDHH>/<MM>/<time_us>-<uuid>.json``: an ``add`` (a full
  Artifact record), a ``pin`` or a ``prefect`` (Prefect artifact id) event.
- ``artifacts/index/snap/<YYYYMMDDHH>-<uuid>.json``: an immutable snapshot of every
  event in hour folders up to that hour, written by whichever process has loaded
  many events one by one, so a fresh process reads one object instead of thousands.

A process loads the newest snapshot plus the events after it once, then on each
query lists only what is new: one LIST after the last seen key on stores that
page by key (S3), else the minute folders near "now". Writers' clocks may be up
to ``LOOKBACK_S`` apart.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from pydantic import BaseModel, Field

from aether_prefect.services.stores._per_store import PerStore
from aether_prefect.services.stores.base import ObjectNotFound, ObjectStore

ROOT = "artifacts"
REC = f"{ROOT}/index/rec"
SNAP = f"{ROOT}/index/snap"
#: Seconds of clock difference between writers that incremental refreshes tolerate.
LOOKBACK_S = 600
#: Events loaded one by one (in settled hours) before a process writes a new snapshot.
SNAPSHOT_AFTER = 500


class Artifact(BaseModel):
    """One saved artifact: content-addressed bytes plus what the index knows about them."""

    artifact_id: str = Field(description="sha256 of the content (hex); same bytes, same id.")
    uri: str = Field(description="Where the bytes are: file:///... or s3://bucket/...")
    sha256: str
    kind: str
    bytes: int = Field(ge=0, description="Size of the content in bytes.")
    mime: str | None = None
    name: str | None = None
    labels: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    pinned: bool = False
    created_at: datetime
    run_id: str | None = None
    graph_id: str | None = None
    node_id: str | None = None
    prefect_artifact_id: str | None = None

    @property
    def id(self) -> str:
        """AetherGraph's name of ``artifact_id``."""
        return self.artifact_id


class IndexEvent(BaseModel):
    """One immutable index object: an artifact added, pinned, or linked to its Prefect artifact."""

    op: Literal["add", "pin", "prefect"]
    artifact_id: str
    record: Artifact | None = None
    ref: str | None = None  # the "add" event key a "prefect" event completes
    prefect_artifact_id: str | None = None
    at: datetime


def _hour(t: datetime) -> str:
    return t.strftime("%Y%m%d%H")


def _minute_folder(t: datetime) -> str:
    return f"{REC}/{_hour(t)}/{t.strftime('%M')}"


def new_event_key(now: datetime | None = None) -> str:
    """A unique, time-ordered key for a new event."""
    now = now or datetime.now(timezone.utc)
    return f"{_minute_folder(now)}/{int(now.timestamp() * 1e6):017d}-{uuid.uuid4().hex[:12]}.json"


def _folder_of(key: str) -> str:
    return key[len(REC) + 1 :].split("/", 1)[0]


class ArtifactIndex:
    """The process-wide view of one store's index: records by event key, pins, Prefect links."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        self._lock = threading.RLock()
        self._loaded = False
        self._seen: set[str] = set()
        self._adds: dict[str, Artifact] = {}  # event key -> record (time ordered keys)
        self._pinned: set[str] = set()
        self._prefect: dict[str, str] = {}  # add-event key -> prefect artifact id
        self._snap_hour = ""  # hour folders <= this are covered by the loaded snapshot
        self._loose: dict[str, dict[str, Any]] = {}  # raw events not in any snapshot
        self._last_refresh: datetime | None = None
        self._version = 0
        self._snap_checked: datetime | None = None
        self._records_cache: list[tuple[str, Artifact]] | None = None
        self._merged: dict[str, Artifact] = {}
        self._records_version = -1
        self._postings: dict[tuple[Any, ...], set[str]] = {}  # ("kind", k) / ("label", name, value) -> add keys
        self._by_ident: dict[tuple[Any, ...], str] = {}  # identity of a save -> the earliest add key
        self._alias: dict[str, str] = {}  # add key of a repeated save -> the add key kept for it

    # -- writes ---------------------------------------------------------------------

    def write(self, event: IndexEvent) -> str:
        """Persist ``event`` as a new immutable object and apply it locally; returns its key."""
        key = new_event_key(event.at)
        raw = event.model_dump(mode="json", exclude_none=True)
        self._store.put_bytes(key, json.dumps(raw, separators=(",", ":")).encode(), content_type="application/json")
        with self._lock:
            self._apply(key, raw)
        return key

    # -- reads ----------------------------------------------------------------------

    def refresh(self) -> None:
        """Bring the cache up to date: a full load the first time, then the recent hour folders only."""
        with self._lock:
            now = datetime.now(timezone.utc)
            if not self._loaded:
                self._full_load()
            else:
                since = (self._last_refresh or now) - timedelta(seconds=LOOKBACK_S)
                self._load_events(k for k in self._recent_keys(since, now) if k not in self._seen)
            self._last_refresh = now
            self._maybe_snapshot(now)

    def _recent_keys(self, since: datetime, now: datetime) -> Iterable[str]:
        if getattr(self._store, "lists_after_cheaply", False):  # S3: one LIST from a key on
            return self._store.list_keys(f"{REC}/", start_after=f"{_minute_folder(since)}/")
        keys: list[str] = []
        minute = since.replace(second=0, microsecond=0)
        end = now + timedelta(seconds=LOOKBACK_S)
        while minute <= end:
            keys.extend(self._store.list_keys(f"{_minute_folder(minute)}/"))
            minute += timedelta(minutes=1)
        return keys

    def records(self) -> list[tuple[str, Artifact]]:
        """Every add event (key, record), oldest first, with pins and Prefect ids applied."""
        with self._lock:
            if self._records_cache is not None and self._records_version == self._version:
                return self._records_cache
            out = []
            for key in sorted(self._adds):
                rec = self._adds[key]
                pinned = rec.artifact_id in self._pinned
                pid = self._prefect.get(key)
                if pinned != rec.pinned or (pid and pid != rec.prefect_artifact_id):
                    rec = rec.model_copy(update={"pinned": pinned or rec.pinned, "prefect_artifact_id": pid or rec.prefect_artifact_id})
                out.append((key, rec))
            self._records_cache, self._merged, self._records_version = out, dict(out), self._version
            return out

    def query(self, kind: str | None = None, labels: dict[str, Any] | None = None) -> list[Artifact]:
        """Records of ``kind`` having every label (a list value: any of), newest first, through the postings."""
        with self._lock:
            everything = self.records()
            sets: list[set[str]] = []
            if kind is not None:
                sets.append(self._postings.get(("kind", kind), set()))
            for name, want in (labels or {}).items():
                union: set[str] = set()
                for value in want if isinstance(want, list) else [want]:
                    union |= self._postings.get(("label", name, value), set())
                sets.append(union)
            if not sets:
                return [rec for _, rec in reversed(everything)]
            keys = set.intersection(*sorted(sets, key=len))
            return [self._merged[k] for k in sorted(keys, reverse=True)]

    # -- internals ------------------------------------------------------------------

    def _apply(self, key: str, raw: dict[str, Any]) -> None:
        if key in self._seen:
            return
        self._seen.add(key)
        self._version += 1
        op = raw.get("op")
        if op == "add" and raw.get("record"):
            self._add(key, Artifact.model_validate(raw["record"]))
        elif op == "pin":
            self._pinned.add(raw["artifact_id"])
        elif op == "prefect" and raw.get("ref") and raw.get("prefect_artifact_id"):
            self._prefect[self._alias.get(raw["ref"], raw["ref"])] = raw["prefect_artifact_id"]
        if _folder_of(key) > self._snap_hour:
            self._loose[key] = raw

    @staticmethod
    def _identity(rec: Artifact) -> tuple[Any, ...]:
        """What makes two add events the same save: same bytes, scope, kind, name, labels and metrics."""
        return (rec.artifact_id, rec.run_id, rec.graph_id, rec.node_id, rec.kind, rec.name,
                json.dumps(rec.labels, sort_keys=True, default=str), json.dumps(rec.metrics, sort_keys=True))

    def _add(self, key: str, rec: Artifact) -> None:
        """Index an add event, folding a repeat of the same save (e.g. a retry after an ambiguous
        store error whose first write did land) into the earliest one, so each save has one entry."""
        ident = self._identity(rec)
        kept = self._by_ident.get(ident)
        if kept is not None and kept < key:
            self._alias[key] = kept
            if key in self._prefect and kept not in self._prefect:
                self._prefect[kept] = self._prefect.pop(key)
            return
        if kept is not None:  # an earlier writer's event arrived late: it becomes the kept one
            self._drop_add(kept)
            self._alias[kept] = key
            if kept in self._prefect and key not in self._prefect:
                self._prefect[key] = self._prefect.pop(kept)
        self._by_ident[ident] = key
        self._adds[key] = rec
        for posting in self._posting_keys(rec):
            try:
                self._postings.setdefault(posting, set()).add(key)
            except TypeError:  # unhashable (foreign record): found by a full scan only
                pass

    def _drop_add(self, key: str) -> None:
        rec = self._adds.pop(key)
        for posting in self._posting_keys(rec):
            try:
                self._postings.get(posting, set()).discard(key)
            except TypeError:
                pass

    @staticmethod
    def _posting_keys(rec: Artifact) -> list[tuple[Any, ...]]:
        keys: list[tuple[Any, ...]] = [("kind", rec.kind)]
        for name, value in rec.labels.items():
            keys += [("label", name, v) for v in (value if isinstance(value, list) else [value])]
        return keys

    def _full_load(self) -> None:
        snaps = list(self._store.list_keys(f"{SNAP}/"))
        events: dict[str, dict[str, Any]] = {}
        for snap_key in reversed(snaps):  # newest first; fall back if one is unreadable
            try:
                snap = json.loads(self._store.get_bytes(snap_key))
            except (ObjectNotFound, ValueError):
                continue
            self._snap_hour = str(snap["through"])
            events = snap["events"]
            break
        for key in sorted(events):
            self._apply(key, events[key])
        start = f"{REC}/{self._snap_hour}/~" if self._snap_hour else None
        self._load_events([k for k in self._store.list_keys(f"{REC}/", start_after=start) if k not in self._seen])
        self._loaded = True

    def _load_events(self, keys: Iterable[str]) -> None:
        keys = sorted(keys)
        if not keys:
            return

        def fetch(key: str) -> tuple[str, dict[str, Any] | None]:
            try:
                return key, json.loads(self._store.get_bytes(key))
            except (ObjectNotFound, ValueError):
                return key, None  # deleted or foreign object: skip

        if len(keys) > 8:
            with ThreadPoolExecutor(8) as pool:
                fetched = list(pool.map(fetch, keys))
        else:
            fetched = [fetch(k) for k in keys]
        for key, raw in fetched:
            if raw is not None:
                self._apply(key, raw)

    def _maybe_snapshot(self, now: datetime) -> None:
        """Write a snapshot covering settled hours once enough loose events piled up there."""
        if len(self._loose) < SNAPSHOT_AFTER or (self._snap_checked and now - self._snap_checked < timedelta(minutes=1)):
            return
        self._snap_checked = now  # at most one scan a minute, so queries stay cheap
        settled = _hour(now - timedelta(seconds=2 * LOOKBACK_S) - timedelta(hours=1))
        loose = [k for k in self._loose if _folder_of(k) <= settled]
        if len(loose) < SNAPSHOT_AFTER:
            return
        events: dict[str, dict[str, Any]] = {}
        for key, rec in self._adds.items():
            if _folder_of(key) <= settled:
                events[key] = {"op": "add", "artifact_id": rec.artifact_id, "record": rec.model_dump(mode="json")}
        for key, raw in self._loose.items():
            if _folder_of(key) <= settled and raw.get("op") != "add":
                events[key] = raw
        for aid in self._pinned:  # pins older than the snapshot window are folded into one event each
            events.setdefault(f"{REC}/{settled}/pin-{aid}", {"op": "pin", "artifact_id": aid})
        for ref, pid in self._prefect.items():
            if _folder_of(ref) <= settled:
                events.setdefault(f"{ref}.prefect", {"op": "prefect", "artifact_id": "", "ref": ref, "prefect_artifact_id": pid})
        body = json.dumps({"through": settled, "events": events}, separators=(",", ":")).encode()
        try:
            self._store.put_bytes(f"{SNAP}/{settled}-{uuid.uuid4().hex[:12]}.json", body, content_type="application/json")
        except Exception:  # noqa: BLE001 - a snapshot is an optimisation; the events stay authoritative
            return
        self._snap_hour = settled
        for key in loose:
            self._loose.pop(key, None)


#: The one ArtifactIndex of ``store`` in this process.
index_for: PerStore[ArtifactIndex] = PerStore(ArtifactIndex)


__all__ = ["Artifact", "ArtifactIndex", "IndexEvent", "index_for", "new_event_key"]
