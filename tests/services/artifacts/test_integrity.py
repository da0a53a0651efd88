"""#17.5 and #17.15: a save never ends with a record whose blob does not hash to its id; loads of bytes that
are not text/JSON raise a typed error; the verified-copy cache is per OS user."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest

from aether_prefect import open_session
from aether_prefect.blocks import AetherConfig, AetherObjectStore
from aether_prefect.errors import ValidationError
from aether_prefect.services import artifacts as artifacts_mod
from aether_prefect.services.artifacts import blob_key

pytestmark = pytest.mark.anyio

_BIG = 200 * 1024  # above the inline limit: the streamed upload path


@pytest.fixture(params=["local", "s3"])
def config(request: pytest.FixtureRequest, tmp_store: AetherObjectStore) -> AetherConfig:
    block = tmp_store if request.param == "local" else request.getfixturevalue("s3_store_block")
    return AetherConfig(store=block, kv_namespace=f"t{uuid.uuid4().hex[:10]}")


@pytest.mark.parametrize("size", [100, _BIG])
async def test_file_rewritten_while_saving_is_stored_under_the_hash_of_what_was_stored(
    config: AetherConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    src = tmp_path / "data.txt"
    first, second = b"a" * size, b"b" * size  # same length: a size check cannot tell them apart
    src.write_bytes(first)
    real_hash = artifacts_mod._hash_file

    def hash_then_rewrite(path: Path) -> tuple[str, int]:  # the window between hashing and uploading
        out = real_hash(path)
        if Path(path) == src:
            src.write_bytes(second)
        return out

    monkeypatch.setattr(artifacts_mod, "_hash_file", hash_then_rewrite)

    async with open_session(config=config) as ctx:
        arts = ctx.artifacts()
        art = await arts.save_file(src, kind="data")
        # whatever was read, the id names exactly the stored bytes
        stored = await arts.load_bytes_by_id(art.artifact_id)
        assert hashlib.sha256(stored).hexdigest() == art.artifact_id and len(stored) == art.bytes == size
        # and a later save of the file's genuine content is stored correctly, not skipped
        src.write_bytes(second)
        again = await arts.save_file(src, kind="data")
        assert again.artifact_id == hashlib.sha256(second).hexdigest()
        assert await arts.load_bytes_by_id(again.artifact_id) == second


@pytest.mark.parametrize("via", ["file", "bytes"])
@pytest.mark.parametrize("size", [100, _BIG])
async def test_a_corrupt_blob_found_on_save_is_replaced(config: AetherConfig, tmp_path: Path, via: str, size: int) -> None:
    content = os.urandom(size)
    sha = hashlib.sha256(content).hexdigest()
    async with open_session(config=config) as ctx:
        store = ctx.store()
        store.put_bytes(blob_key(sha), b"\x00" * size)  # same length, wrong bytes, already at the content key
        arts = ctx.artifacts()
        if via == "file":
            src = tmp_path / "blob.bin"
            src.write_bytes(content)
            art = await arts.save_file(src)
        else:
            art = await arts.save_bytes(content)
        assert art.artifact_id == sha
        assert await arts.load_bytes_by_id(sha) == content
        assert hashlib.sha256(store.get_bytes(blob_key(sha))).hexdigest() == sha
        assert not [k for k in store.list_keys("") if "uploads" in k], "temporary upload objects are removed"


async def test_save_file_reads_the_source_once(tmp_store: AetherObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(_BIG))
    reads: list[int] = []
    import builtins

    real_open = builtins.open

    def counting_open(file, mode="r", *a, **kw):  # type: ignore[no-untyped-def]
        if str(file) == str(src) and "r" in mode:
            reads.append(1)
        return real_open(file, mode, *a, **kw)

    async with open_session(config=AetherConfig(store=tmp_store)) as ctx:
        monkeypatch.setattr(builtins, "open", counting_open)
        art = await ctx.artifacts().save_file(src)
        monkeypatch.setattr(builtins, "open", real_open)
        assert await ctx.artifacts().load_bytes_by_id(art.artifact_id) == src.read_bytes()
    assert len(reads) == 1, f"the source was opened {len(reads)} times"


async def test_loading_non_text_or_non_json_is_a_typed_error(config: AetherConfig) -> None:
    async with open_session(config=config) as ctx:
        arts = ctx.artifacts()
        binary = await arts.save_bytes(b"\xff\xfe\x00binary")
        text = await arts.save_text("not json {")
        for call in (lambda: arts.load_text_by_id(binary.artifact_id), lambda: arts.load_text(binary.uri),
                     lambda: arts.load_json_by_id(binary.artifact_id), lambda: arts.load_json(binary.uri)):
            with pytest.raises(ValidationError, match="load_bytes"):
                await call()
        with pytest.raises(ValidationError, match="is not JSON"):
            await arts.load_json_by_id(text.artifact_id)
        with pytest.raises(ValidationError, match="unknown encoding"):
            await arts.load_text_by_id(text.artifact_id, encoding="no-such-codec")
        assert await arts.load_text_by_id(binary.artifact_id, encoding="latin-1") == "\xff\xfe\x00binary"


async def test_local_copies_live_in_a_per_user_cache(tmp_store: AetherObjectStore) -> None:
    async with open_session(config=AetherConfig(store=tmp_store)) as ctx:
        art = await ctx.artifacts().save_bytes(b"cached bytes")
        path = Path(await ctx.artifacts().as_local_file(art))
        assert path.read_bytes() == b"cached bytes"
        assert str(os.getuid()) in path.parent.name
        assert not str(path).startswith("/tmp/aether-prefect-artifacts")
        assert path.parent.stat().st_mode & 0o077 == 0, "the cache is private to its user"
