"""One object per ObjectStore in this process (an index, a cache), dropped with the store."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

from aether_prefect.services.stores.base import ObjectStore

T = TypeVar("T")


class PerStore(Generic[T]):
    """``per_store(store)`` returns the one ``factory(store)`` of that store, built on first use."""

    def __init__(self, factory: Callable[[ObjectStore], T]) -> None:
        self._factory = factory
        self._items: weakref.WeakKeyDictionary[ObjectStore, T] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def __call__(self, store: ObjectStore) -> T:
        with self._lock:
            item = self._items.get(store)
            if item is None:
                item = self._items[store] = self._factory(store)
            return item

    def clear(self) -> None:
        """Forget every store's object (tests: simulate a fresh process)."""
        with self._lock:
            self._items.clear()
