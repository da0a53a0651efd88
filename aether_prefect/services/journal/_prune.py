"""Retention: delete the journals of flow runs whose newest entry is older than the retention period."""

from __future__ import annotations

import time
from collections import defaultdict

from aether_prefect.services.journal._journal import PREFIX, RETENTION_S
from aether_prefect.services.journal._log import entries_at
from aether_prefect.services.stores.base import ObjectStore


def prune(store: ObjectStore, *, older_than_s: float = RETENTION_S, dry_run: bool = False,
          now: float | None = None) -> tuple[int, int]:
    """Delete every journal of a flow run whose entries are all older than ``older_than_s`` seconds.

    Returns ``(flow runs, objects)`` deleted (attempt logs, one-entry objects and ordinal claims; or that would
    be, with ``dry_run``). Unreadable entries count as old; a log counts by its newest readable entry. A flow run
    with one recent entry keeps all of its journal (a retry may still need it).

    Example::

        runs, entries = prune(open_store(store_config(config)), older_than_s=7 * 24 * 3600)
    """
    cutoff = (time.time() if now is None else now) - older_than_s
    by_run: dict[str, list[str]] = defaultdict(list)
    for key in store.list_keys(f"{PREFIX}/"):
        parts = key.split("/")
        if len(parts) >= 3:
            by_run[parts[1]].append(key)
    runs = entries = 0
    for keys in by_run.values():
        if any(_newer(store, key, cutoff) for key in reversed(keys)):
            continue
        runs += 1
        entries += len(keys)
        if not dry_run:
            for key in keys:
                store.delete(key)
    return runs, entries


def _newer(store: ObjectStore, key: str, cutoff: float) -> bool:
    """True when ``key`` (an attempt's log or a one-entry object) holds an entry made at or after ``cutoff``."""
    return any(entry.created >= cutoff for entry in entries_at(store, key))
