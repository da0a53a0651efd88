"""Helpers of the artifact tests."""

from __future__ import annotations

import threading
from typing import Any

from aether_prefect.services.stores.base import ObjectStore


class CountingStore:
    """Wraps a real store and records every key read, every key checked (HEAD) and every prefix listed (thread-safe)."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner, self.reads, self.lists, self.heads = inner, [], [], []  # type: ignore[var-annotated]
        self._lock = threading.Lock()

    def exists(self, key: str) -> bool:
        with self._lock:
            self.heads.append(key)
        return self.inner.exists(key)

    def get_bytes(self, key: str) -> bytes:
        with self._lock:
            self.reads.append(key)
        return self.inner.get_bytes(key)

    def list_keys(self, prefix: str, **kw: Any) -> Any:
        with self._lock:
            self.lists.append(prefix)
        return self.inner.list_keys(prefix, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
