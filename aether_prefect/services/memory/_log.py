"""The memory log's layout in the object store: one immutable object per event, newest first by key.

Layout under ``memory/<level>/<timeline>/``::

    hours/<inv_hour>                                              marker: this hour has events
    ev/<inv_hour>/<inv_min>/<inv_sec>/<inv_ts>~<kind>~<writer>~<seq>.json   one event, never rewritten

``inv_hour``, ``inv_min``, ``inv_sec`` and ``inv_ts`` are the UTC hour, minute, second and
nanosecond timestamp subtracted from a constant, so the store's ascending listing yields the
newest events first: reading the newest N lists only the newest hour and second folders and
stops, however many events the hour holds (a local directory is listed whole, hence the minute
and second shards: at most 60 + 60 entries before the newest second's events; S3 pages 1,000 keys
at a time). Stores written before the second shard (events directly
in the hour folder) still read: in an hour holding both, the sharded (newer) events list first. Every writer has
its own random id and a strictly increasing timestamp, so concurrent writers in any
number of processes never touch the same object and each writer's order is kept.
The kind is in the key so kind filters skip objects without reading them.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from aether_prefect.services.stores.base import ObjectNotFound, ObjectStore

_MAX_TS = 10**20 - 1
_MAX_HOUR = 10**10 - 1
_SAFE_PART = re.compile(r"^[A-Za-z0-9.-]{1,100}$")
_SAFE_KIND = re.compile(r"^[A-Za-z0-9.-]{1,64}$")
_READ_WORKERS = 8
_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def _sha(value: str, n: int) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:n]


def encode_part(value: str) -> str:
    """A store-safe key part for a timeline id: itself when safe, else a readable slug plus a hash."""
    if _SAFE_PART.match(value) and value not in (".", ".."):
        return value
    slug = re.sub(r"[^A-Za-z0-9.-]+", "-", value).strip("-.")[:60] or "x"
    return f"{slug}~{_sha(value, 16)}"


def kind_token(kind: str) -> str:
    """The kind as it appears in event keys (hashed when it has characters keys cannot hold)."""
    return kind if _SAFE_KIND.match(kind) else "=" + _sha(kind, 12)


def timeline_prefix(level: str, ident: str) -> str:
    """Folder of one timeline: ``memory/<level>/<encoded id>``."""
    return f"memory/{level}/{encode_part(ident)}"


def ts_iso(ts_ns: int) -> str:
    """ISO-8601 UTC with microseconds for a nanosecond timestamp."""
    sec, ns = divmod(ts_ns, 1_000_000_000)
    return datetime.fromtimestamp(sec, tz=timezone.utc).replace(microsecond=ns // 1000).isoformat()


def _inv_hour(ts_ns: int) -> str:
    hour = int(datetime.fromtimestamp(ts_ns // 1_000_000_000, tz=timezone.utc).strftime("%Y%m%d%H"))
    return f"{_MAX_HOUR - hour:010d}"


def _inv_min_sec(ts_ns: int) -> str:
    """``<inv_min>/<inv_sec>`` of the hour (59 - minute, 59 - second): the newest folders list first."""
    minute, second = divmod((ts_ns // 1_000_000_000) % 3600, 60)
    return f"{59 - minute:02d}/{59 - second:02d}"


def key_kind_token(key: str) -> str:
    """The kind token stored in an event key."""
    return key.rsplit("/", 1)[-1].split("~")[1]


class LogWriter:
    """Allocates unique, per-writer ordered keys and writes event objects (blocking store calls)."""

    def __init__(self, store: ObjectStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix
        self.writer_id = secrets.token_hex(6)
        self._seq = 0
        self._last_ts = 0
        self._hours: set[str] = set()
        self._lock = threading.Lock()

    def allocate(self) -> tuple[int, int]:
        """Next (timestamp ns, sequence): strictly increasing for this writer even if the clock steps back."""
        with self._lock:
            ts = max(time.time_ns(), self._last_ts + 1)
            self._last_ts = ts
            self._seq += 1
            return ts, self._seq

    def key_for(self, ts_ns: int, seq: int, kind: str) -> str:
        """The object key of the event written at ``ts_ns`` with ``seq`` by this writer."""
        inv_ts = f"{_MAX_TS - ts_ns:020d}"
        return f"{self.prefix}/ev/{_inv_hour(ts_ns)}/{_inv_min_sec(ts_ns)}/{inv_ts}~{kind_token(kind)}~{self.writer_id}~{seq}.json"

    def write(self, ts_ns: int, key: str, body: bytes) -> None:
        """Mark the hour (once per writer per hour), then write the event object."""
        hour = _inv_hour(ts_ns)
        if hour not in self._hours:
            self.store.put_if_absent(f"{self.prefix}/hours/{hour}", ts_iso(ts_ns)[:13].encode())
            self._hours.add(hour)
        self.store.put_bytes(key, body, content_type="application/json")


def newest_keys(store: ObjectStore, prefix: str, kinds: Iterable[str] | None = None) -> Iterator[str]:
    """Event keys of a timeline, newest first, lazily (stop iterating to stop listing)."""
    tokens = {kind_token(k) for k in kinds} if kinds is not None else None
    for marker in store.list_keys(f"{prefix}/hours/"):
        hour = marker.rsplit("/", 1)[-1]
        for key in store.list_keys(f"{prefix}/ev/{hour}/"):
            if key.endswith(".json") and (tokens is None or key_kind_token(key) in tokens):
                yield key


def _read_pool() -> ThreadPoolExecutor:
    """One long-lived reader pool per process: its threads keep their per-thread store clients warm."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(_READ_WORKERS, thread_name_prefix="aether-memory-read")
            _pool_pid = os.getpid()
        return _pool


def read_many(store: ObjectStore, keys: list[str]) -> list[bytes | None]:
    """Read objects in order (in parallel for remote stores); a vanished object reads as None."""

    def one(key: str) -> bytes | None:
        try:
            return store.get_bytes(key)
        except ObjectNotFound:
            return None

    if len(keys) < 4 or store.scheme == "file":
        return [one(k) for k in keys]
    return list(_read_pool().map(one, keys))
