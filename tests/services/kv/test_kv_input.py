"""KV input errors are KVValidationError (a ValueError) saying how to fix them; small writes never need the store."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from aether_prefect.blocks import AetherConfig, AetherObjectStore
from aether_prefect.errors import KVValidationError, StoreError, ValidationError
from aether_prefect.services.kv import PrefectKV
from aether_prefect.session import open_session_sync
from tests.servers.prefect_server import free_port


@pytest.fixture()
def kv(local_config: AetherConfig) -> Iterator[PrefectKV]:
    with open_session_sync(config=local_config) as ctx:
        yield ctx.kv()


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda kv: kv.sync.set("k", {1, 2}), "sets to lists"),
        (lambda kv: kv.sync.set("k", math.nan), "JSON cannot hold"),
        (lambda kv: kv.sync.set("k", {"x": [math.inf]}), "['x'][0]"),
        (lambda kv: kv.sync.set(123, "v"), "convert it with str()"),
        (lambda kv: kv.sync.get(b"k"), "convert it with str()"),
        (lambda kv: kv.sync.set("k", 1, ttl_s=0), "positive number of seconds"),
        (lambda kv: kv.sync.incr("k", math.nan), "finite int or float"),
        (lambda kv: kv.sync.expire("k", "soon"), "number of seconds"),
        (lambda kv: kv.sync.mset([("a", 1), ("b",)]), "(key, value) pair"),
        (lambda kv: kv.sync.mset("ab"), "dict {key: value} or a list of (key, value) pairs"),
        (lambda kv: kv.sync.mset([(1, "v")]), "convert it with str()"),
        (lambda kv: kv.sync.list_append_unique("l", [{"no-id": 1}]), "pass id_key="),
        (lambda kv: kv.sync.scan_prefix(None), "must be str"),
    ],
)
def test_every_input_error_is_a_kv_validation_error(kv: PrefectKV, call: Any, fragment: str) -> None:
    with pytest.raises(KVValidationError) as err:
        call(kv)
    assert isinstance(err.value, ValidationError) and isinstance(err.value, ValueError)
    assert fragment in str(err.value)
    assert kv.sync.get("k") is None and kv.sync.get("a") is None  # nothing was written


def test_wrong_stored_type_is_a_validation_error_too(kv: PrefectKV) -> None:
    kv.sync.set("s", "text")
    with pytest.raises(ValueError, match="not a number"):
        kv.sync.incr("s")
    with pytest.raises(ValueError, match="not a list"):
        kv.sync.list_pop_all("s")
    assert kv.sync.get("s") == "text"


def test_mset_takes_a_dict_or_pairs(kv: PrefectKV) -> None:
    kv.sync.mset([("a", 1), ("b", [2])])
    kv.sync.mset((p for p in [("c", {"d": 3}), ("a", 4)]))
    kv.sync.mset({"e": None})
    assert kv.sync.mget(["a", "b", "c", "e"]) == [4, [2], {"d": 3}, None]
    assert kv.sync.exists("e")


def test_small_writes_succeed_with_the_object_store_unreachable(local_config: AetherConfig) -> None:
    dead = AetherObjectStore(
        backend="s3", bucket="nowhere", endpoint_url=f"http://127.0.0.1:{free_port()}", region="us-east-1",
        aws_access_key_id="x", aws_secret_access_key=SecretStr("y"),
    )
    cfg = AetherConfig(store=dead, kv_namespace=f"t{uuid.uuid4().hex[:10]}")
    with open_session_sync(config=cfg) as ctx:
        kv: PrefectKV = ctx.kv()
        kv.sync.set("small", {"n": 1})
        kv.sync.set("small", {"n": 2})  # overwrite of a small value
        kv.sync.set("ttl", "v", ttl_s=60)
        assert kv.sync.get("small") == {"n": 2} and kv.sync.incr("count") == 1
        kv.sync.mset([("m1", 1), ("m2", 2)])
        kv.sync.delete("small")
        kv.sync.delete("never-set")
        assert kv.sync.get("small") is None and kv.sync.mget(["m1", "m2"]) == [1, 2]
        with pytest.raises(StoreError):  # a large value does need the store: a typed error, nothing written
            kv.sync.set("big", "x" * 6000)
        assert kv.sync.get("big") is None


def test_concurrent_increments_in_one_process_share_locked_writes(local_config: AetherConfig) -> None:
    """Increments of one key that arrive while its lock is busy go in the next locked write, each its own result."""
    from aether_prefect.services.kv import VariablesAPI

    locks: list[str] = []

    class Counting(VariablesAPI):
        async def create(self, name: str, value: Any) -> Any:
            if "_l_" in name:
                locks.append(name)
            return await super().create(name, value)

    async def main() -> list[Any]:
        from aether_prefect.session import open_session

        async with open_session(config=local_config) as ctx:
            kv = PrefectKV(ctx, api=Counting())
            results = await asyncio.gather(*(kv.incr("hits", 2) for _ in range(20)), kv.incr("hits", 0.5))
            assert await kv.get("hits") == 40.5
            return list(results)

    results = asyncio.run(main())
    assert sorted(results[:20]) == list(range(2, 42, 2)) and results[20] == 40.5  # each caller its own value
    assert 1 <= len(locks) <= 3  # one lock for the first, one for everything that queued behind it
