"""Object store backends and the per-process factory that picks one from an AetherObjectStore block."""

from __future__ import annotations

import hashlib
import threading

from aether_prefect.blocks import AetherObjectStore
from aether_prefect.services.stores.base import InvalidKey, ObjectNotFound, ObjectStore, check_key

_stores: dict[tuple[object, ...], ObjectStore] = {}
_lock = threading.Lock()


def _cache_key(block: AetherObjectStore) -> tuple[object, ...]:
    secret = block.aws_secret_access_key.get_secret_value() if block.aws_secret_access_key else ""
    return (
        block.backend,
        block.root,
        block.bucket,
        block.prefix,
        block.endpoint_url,
        block.region,
        block.aws_access_key_id,
        hashlib.sha256(secret.encode()).hexdigest(),
    )


def open_store(block: AetherObjectStore) -> ObjectStore:
    """The store for ``block``, one instance per process (clients inside are reused)."""
    key = _cache_key(block)
    with _lock:
        store = _stores.get(key)
        if store is None:
            store = _build(block)
            _stores[key] = store
        return store


def _build(block: AetherObjectStore) -> ObjectStore:
    if block.backend == "local":
        from aether_prefect.config import default_store_root
        from aether_prefect.services.stores.local import LocalStore

        return LocalStore(block.root or default_store_root(), block.prefix)
    from aether_prefect.services.stores.s3 import S3Store

    return S3Store.from_block(block)


__all__ = ["InvalidKey", "ObjectNotFound", "ObjectStore", "check_key", "open_store"]
