"""The old artifact index layout (one time-ordered folder for the whole store): read it, or convert it.

A store written before the partitioned index still reads: while it holds old events and no migration marker,
queries also consult the old whole-store index. ``migrate`` copies every old event into the partitioned
layout under keys derived from the old ones (so a second run rewrites the same objects: safe twice), never
deletes an old object, then writes the marker so queries stop reading the old layout. It also writes the facet
markers (kind, label values) of every partitioned record, so ``view="all"`` with ``kind=``/``labels=`` reads
only the matching runs of a store written before the markers existed.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from pydantic import BaseModel

from aether_prefect.services.artifacts._index import ArtifactIndex, index_for
from aether_prefect.services.artifacts._parts import (
    FACETS_COMPLETE, IDS, MIGRATED, PINS, RUNS, PartitionedIndex, _dumps, facet_markers, part_of, parts_for,
)
from aether_prefect.services.stores.base import ObjectStore

MARKER = MIGRATED

_absent: "weakref.WeakKeyDictionary[ObjectStore, bool]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def legacy_index(store: ObjectStore) -> ArtifactIndex | None:
    """The old whole-store index of ``store``, refreshed, if it holds events not yet migrated; else None.

    Checked once per process: one GET of the migration marker (written on a store's first save when the old layout
    is empty, and by ``migrate``), else a LIST of each old folder; a store found without old events is not checked
    again.
    """
    with _lock:
        if _absent.get(store):
            return None
    index = parts_for(store)
    if index.layout(recheck=True) is not None or not index._has_legacy():
        with _lock:
            _absent[store] = True
        return None
    old = index_for(store)
    old.refresh()
    return old


class MigrationReport(BaseModel):
    """What ``migrate`` did: records and Prefect links copied, pins copied, old objects left in place."""

    records: int
    prefect_links: int
    pins: int
    already_migrated: bool
    facet_markers: int = 0
    pin_events: int = 0


def migrate(store: ObjectStore) -> MigrationReport:
    """Copy the old index into the partitioned layout; idempotent, loses nothing, deletes nothing."""
    already = store.exists(MARKER)
    old = ArtifactIndex(store)
    old.refresh()
    records = prefect_links = 0
    for key, rec in old.records():
        part = part_of(rec.graph_id, rec.run_id)
        tail = key.rsplit("/", 1)[1]  # <time_us>-<uuid>.json: unique and time ordered already
        new_key = f"{RUNS}/{part[0]}/{part[1]}/{tail}"
        raw: dict[str, Any] = {"op": "add", "artifact_id": rec.artifact_id, "at": rec.created_at.isoformat(),
                               "record": rec.model_dump(mode="json", exclude={"pinned", "prefect_artifact_id"})}
        store.put_bytes(f"{IDS}/{rec.artifact_id[:2]}/{rec.artifact_id}/{tail[:-5]}", new_key.encode())
        store.put_bytes(new_key, _dumps(raw), content_type="application/json")
        records += 1
        if rec.prefect_artifact_id:
            link = {"op": "prefect", "artifact_id": rec.artifact_id, "ref": new_key,
                    "prefect_artifact_id": rec.prefect_artifact_id, "at": rec.created_at.isoformat()}
            store.put_bytes(f"{RUNS}/{part[0]}/{part[1]}/{tail[:-5]}-prefect.json", _dumps(link), content_type="application/json")
            prefect_links += 1
    pins = 0
    for aid in sorted(old._pinned):
        store.put_bytes(f"{PINS}/{aid}", b"migrated")
        pins += 1
    index = PartitionedIndex(store)  # every pin (old layout's or an earlier version's) as pin events in its runs
    pinned = sorted({key.rsplit("/", 1)[1] for key in store.list_keys(f"{PINS}/")})
    pin_events = sum(index.pin_runs(aid) for aid in pinned)
    markers: set[str] = set()  # every partitioned record's facet markers (kind, labels), then the mark they are complete
    for _key, rec in index.all_records():
        markers.update(facet_markers(rec))
    for marker in sorted(markers):
        store.put_bytes(marker, b"")
    store.put_bytes(FACETS_COMPLETE, _dumps({"since": "migrate"}), content_type="application/json")
    store.put_bytes(MARKER, _dumps({"records": records, "prefect_links": prefect_links, "pins": pins, "facets": True,
                                   "pins_in_runs": True}),
                    content_type="application/json")
    parts_for(store).forget_facets()  # this process's index reads the marks again
    with _lock:
        _absent[store] = True
    return MigrationReport(records=records, prefect_links=prefect_links, pins=pins, already_migrated=already,
                           facet_markers=len(markers), pin_events=pin_events)


__all__ = ["MARKER", "MigrationReport", "legacy_index", "migrate"]
