"""Fixtures shared by the artifact tests: the anyio backend and a real store of each backend."""

from __future__ import annotations

import pytest

from aether_prefect.blocks import AetherObjectStore
from aether_prefect.services.stores import open_store
from aether_prefect.services.stores.base import ObjectStore


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_store: AetherObjectStore) -> ObjectStore:
    """A local store and an S3 (moto) store, in turn."""
    block = tmp_store if request.param == "local" else request.getfixturevalue("s3_store_block")
    return open_store(block)
