"""One suite over both object store backends: LocalStore (a directory) and S3Store (moto over HTTP)."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any
from pathlib import Path

import pytest

from aether_prefect.errors import StoreError
from aether_prefect.services.stores import InvalidKey, ObjectNotFound, ObjectStore, open_store
from aether_prefect.services.stores.local import LocalStore
from aether_prefect.services.stores.s3 import MULTIPART_THRESHOLD, S3Store
from tests.servers.s3 import SECRET_KEY


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    """A fresh store of each backend."""
    if request.param == "local":
        yield LocalStore(tmp_path / "root")
    else:
        block = request.getfixturevalue("s3_store_block")
        yield S3Store.from_block(block)


def test_roundtrip_and_metadata(store: ObjectStore) -> None:
    store.put_bytes("a/b/c.bin", b"hello", content_type="application/octet-stream")
    assert store.get_bytes("a/b/c.bin") == b"hello"
    assert store.exists("a/b/c.bin") and not store.exists("a/b/missing")
    assert store.size("a/b/c.bin") == 5
    assert store.key_from_uri(store.uri("a/b/c.bin")) == "a/b/c.bin"
    store.put_bytes("a/b/c.bin", b"again")  # overwrite
    assert store.get_bytes("a/b/c.bin") == b"again"
    store.delete("a/b/c.bin")
    store.delete("a/b/c.bin")  # deleting a missing key is fine
    with pytest.raises(ObjectNotFound):
        store.get_bytes("a/b/c.bin")
    with pytest.raises(ObjectNotFound):
        store.size("a/b/c.bin")


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "a/./b", "nul\x00", "sp ace", "a\\b"])
def test_invalid_keys(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.put_bytes(key, b"x")


def test_uri_of_another_store_is_rejected(store: ObjectStore) -> None:
    with pytest.raises(InvalidKey):
        store.key_from_uri("s3://some-other-bucket/x/y" if store.scheme == "file" else "file:///tmp/x")


def test_put_if_absent_once_under_concurrency(store: ObjectStore) -> None:
    results: list[bool] = []
    lock = threading.Lock()

    def attempt(i: int) -> None:
        ok = store.put_if_absent("once/key", f"writer-{i}".encode())
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    winner = results.index(True)
    assert store.get_bytes("once/key").startswith(b"writer-")
    assert store.put_if_absent("once/key", b"late") is False
    assert store.get_bytes("once/key") != b"late"
    assert winner >= 0


def test_list_order_prefix_and_start_after(store: ObjectStore) -> None:
    keys = ["l/b/2", "l/a/1", "l/c", "l/a/0", "other/x", "l2/z"]
    for k in keys:
        store.put_bytes(k, k.encode())
    assert list(store.list_keys("l/")) == ["l/a/0", "l/a/1", "l/b/2", "l/c"]
    assert list(store.list_keys("l/a/")) == ["l/a/0", "l/a/1"]
    assert list(store.list_keys("l/", start_after="l/a/1")) == ["l/b/2", "l/c"]
    assert list(store.list_keys("l")) == ["l/a/0", "l/a/1", "l/b/2", "l/c", "l2/z"]
    assert list(store.list_keys("nothing/")) == []


def test_list_order_matches_full_keys_across_folders(store: ObjectStore) -> None:
    """Folders and files interleave in plain key order ('-' < '/' < 'b'), lazily or not, with start_after."""
    keys = ["a/b/c", "a-c", "ab", "a/a", "z", "m/n/o", "m/n-o", "m.x", "a/b-d"]
    for k in keys:
        store.put_bytes(k, b"x")
    assert list(store.list_keys("")) == sorted(keys)
    assert list(store.list_keys("a/b")) == ["a/b-d", "a/b/c"]
    for after in [*sorted(keys), "a/", "m", "0"]:
        assert list(store.list_keys("", start_after=after)) == [k for k in sorted(keys) if k > after]


def test_put_file_streams_and_download(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    size = MULTIPART_THRESHOLD + 3 * 1024 * 1024 + 17  # multipart on S3
    with open(src, "wb") as f:
        for i in range(size // (1024 * 1024) + 1):
            f.write(hashlib.sha256(str(i).encode()).digest() * 32768)
        f.truncate(size)
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    store.put_file("files/big.bin", src, content_type="application/octet-stream")
    assert store.size("files/big.bin") == size
    dest = tmp_path / "out" / "big.bin"
    store.download_file("files/big.bin", dest)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == want
    assert [p.name for p in dest.parent.iterdir()] == ["big.bin"]  # no temp file left
    with pytest.raises(ObjectNotFound):
        store.download_file("files/none", tmp_path / "out" / "none")
    assert not (tmp_path / "out" / "none").exists()


def test_failed_put_file_leaves_nothing(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises((OSError, StoreError)):
        store.put_file("files/absent", tmp_path / "does-not-exist")
    assert not store.exists("files/absent")
    if isinstance(store, LocalStore):
        assert not any((store.root / ".tmp").glob("*"))


def _read_while_flipping(store: ObjectStore, put: Callable[[str, bytes], Any], key: str, a: bytes,
                         b: bytes) -> list[bytes]:
    """40 reads of ``key`` while another thread writes ``a`` and ``b`` to it in turn (40 writes) with ``put``."""
    stop = threading.Event()

    def writer() -> None:
        for i in range(40):
            if stop.is_set():
                return
            put(key, b if i % 2 else a)

    t = threading.Thread(target=writer)
    t.start()
    try:
        return [store.get_bytes(key) for _ in range(40)]
    finally:
        stop.set()
        t.join()


def test_readers_see_whole_objects_only(store: ObjectStore) -> None:
    """Atomic writes: a concurrent reader sees one whole version or the other, never a mix or a prefix."""
    a, b = b"a" * (1024 * 1024), b"b" * (1024 * 1024)
    store.put_bytes("atomic/k", a)
    seen = _read_while_flipping(store, store.put_bytes, "atomic/k", a, b)
    assert [len(d) for d in seen if d not in (a, b)] == []


def test_one_store_per_block(tmp_store, s3_store_block) -> None:  # type: ignore[no-untyped-def]
    assert open_store(tmp_store) is open_store(tmp_store.model_copy())
    s3 = open_store(s3_store_block)
    assert isinstance(s3, S3Store) and s3 is open_store(s3_store_block)


def test_s3_one_client_per_process(s3_store_block) -> None:  # type: ignore[no-untyped-def]
    store = S3Store.from_block(s3_store_block)
    store.put_bytes("x", b"1")
    first = store._client()
    store.get_bytes("x")
    assert store._client() is first
    other: list[object] = []
    t = threading.Thread(target=lambda: other.append(store._client()))
    t.start()
    t.join()
    assert other[0] is first  # shared by threads (boto3 clients are thread-safe)
    store.close()
    assert store._client() is not first and store.get_bytes("x") == b"1"  # rebuilt lazily after close


def test_s3_unreachable_is_a_store_error_without_secrets(s3_store_block) -> None:  # type: ignore[no-untyped-def]
    from tests.servers.prefect_server import free_port

    block = s3_store_block.model_copy(update={"endpoint_url": f"http://127.0.0.1:{free_port()}"})
    store = S3Store.from_block(block)
    assert SECRET_KEY not in repr(store)
    for call in (lambda: store.put_bytes("k", b"x"), lambda: store.get_bytes("k"), lambda: list(store.list_keys("p/")),
                 lambda: store.put_if_absent("k", b"x")):
        with pytest.raises(StoreError) as info:
            call()
        assert SECRET_KEY not in str(info.value) and "reachable" in str(info.value)


def test_s3_wrong_bucket_is_a_store_error(s3_store_block) -> None:  # type: ignore[no-untyped-def]
    store = S3Store.from_block(s3_store_block.model_copy(update={"bucket": "no-such-bucket-here"}))
    with pytest.raises(StoreError, match="no-such-bucket-here") as info:
        store.put_bytes("k", b"x")
    # The block's credentials reach boto3 directly: never the message, never the process environment.
    assert SECRET_KEY not in str(info.value) and SECRET_KEY not in repr(info.value)
    assert SECRET_KEY not in os.environ.values()


def test_put_small_is_atomic_and_leaves_no_temp_file(store: ObjectStore) -> None:
    """put_small (no fsync on a local store) still commits whole objects only: new folders, overwrites, readers."""
    store.put_small("small/new/folder/k", b"first")
    assert store.get_bytes("small/new/folder/k") == b"first"
    a, b = b"a" * (256 * 1024), b"b" * (256 * 1024)
    seen = _read_while_flipping(store, store.put_small, "small/new/folder/k", a, b)
    assert all(data in (b"first", a, b) for data in seen)
    assert list(store.list_keys("small/")) == ["small/new/folder/k"]
    if isinstance(store, LocalStore):
        assert not any((store.root / ".tmp").glob("*"))
        with pytest.raises(OSError):  # a folder where the object should go: an error, and no temp file left
            store.put_small("small/new", b"x")
        assert not any((store.root / ".tmp").glob("*"))


def test_put_small_if_absent_creates_once(store: ObjectStore) -> None:
    assert store.put_small_if_absent("marks/new/folder/m", b"first")
    assert not store.put_small_if_absent("marks/new/folder/m", b"second")
    assert store.get_bytes("marks/new/folder/m") == b"first"
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(store.put_small_if_absent("marks/race", b"x")))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1


def test_open_log_appends_whole_records_on_a_local_store_only(store: ObjectStore) -> None:
    log = store.open_log("logs/new/folder/a.jlog")
    if not isinstance(store, LocalStore):
        assert log is None  # S3 writes objects whole: the journal puts one object per entry there
        return
    assert log is not None
    with pytest.raises(FileExistsError):  # a log is created, never reopened or shared
        store.open_log("logs/new/folder/a.jlog")
    assert store.get_bytes("logs/new/folder/a.jlog") == b""
    records = [bytes([65 + i]) * (1000 + i) for i in range(4)]
    threads = [threading.Thread(target=log.append, args=(r,)) for r in records]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    blob = store.get_bytes("logs/new/folder/a.jlog")  # visible at once, no close or flush needed
    assert sorted(blob[i:i + 1] * n for i, n in _runs(blob)) == sorted(records)  # whole, never interleaved
    log.close()
    log.close()
    with pytest.raises(ValueError):
        log.append(b"late")
    assert list(store.list_keys("logs/")) == ["logs/new/folder/a.jlog"]


def test_a_reserved_log_appends_through_a_map_and_is_trimmed_at_close(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    log = store.open_log("logs/m/a.jlog", reserve=4096)
    assert log is not None
    assert store.get_bytes("logs/m/a.jlog") == bytes(4096)  # allocated up front: zeros until appended
    records = [bytes([65 + i]) * (1000 + 700 * i) for i in range(8)]  # 16,800 bytes: grows past the reserve twice
    threads = [threading.Thread(target=log.append, args=(r,)) for r in records]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    blob = store.get_bytes("logs/m/a.jlog")  # visible at once (in the page cache), followed by zeros
    written = sum(map(len, records))
    assert len(blob) >= written and blob[written:] == bytes(len(blob) - written)
    assert sorted(blob[i:i + 1] * n for i, n in _runs(blob[:written])) == sorted(records)  # whole, never interleaved
    log.close()
    log.close()
    assert store.get_bytes("logs/m/a.jlog") == blob[:written]  # trimmed to what was appended
    with pytest.raises(ValueError):
        log.append(b"late")
    with pytest.raises(FileExistsError):
        store.open_log("logs/m/a.jlog", reserve=4096)


def _runs(blob: bytes) -> list[tuple[int, int]]:
    """(start, length) of each run of one repeated byte."""
    out: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(blob) + 1):
        if i == len(blob) or blob[i] != blob[start]:
            out.append((start, i - start))
            start = i
    return out


def _leave_leftovers(store: ObjectStore) -> None:
    """What writers killed mid-write leave: a temp object (and, on S3, an unfinished multipart upload)."""
    if isinstance(store, LocalStore):
        (store.root / ".tmp").mkdir(parents=True, exist_ok=True)
        for name, age in (("w-old", 7200), ("w-new", 0)):
            p = store.root / ".tmp" / name
            p.write_bytes(b"half")
            os.utime(p, (p.stat().st_atime - age, p.stat().st_mtime - age))
    else:
        assert isinstance(store, S3Store)
        client, base = store._client(), f"{store.prefix}/" if store.prefix else ""
        client.put_object(Bucket=store.bucket, Key=f"{base}.tmp/uploads/dead", Body=b"half")
        up = client.create_multipart_upload(Bucket=store.bucket, Key=f"{base}.tmp/uploads/big")
        client.upload_part(Bucket=store.bucket, Key=f"{base}.tmp/uploads/big", UploadId=up["UploadId"], PartNumber=1,
                           Body=b"x" * 1024)


def _multipart_uploads(store: S3Store) -> int:
    return len(store._client().list_multipart_uploads(Bucket=store.bucket).get("Uploads", []))


def test_sweep_removes_only_old_leftovers_never_objects(store: ObjectStore) -> None:
    """`store sweep`: leftovers of interrupted writes older than the limit go; stored objects and newer
    leftovers (a running upload) stay; a dry run only counts."""
    store.put_bytes("keep/a", b"a")
    _leave_leftovers(store)
    if isinstance(store, LocalStore):
        assert store.sweep(3600, dry_run=True).temp_objects == 1
        assert store.sweep(3600).temp_objects == 1
        assert sorted(p.name for p in (store.root / ".tmp").iterdir()) == ["w-new"]  # the running write stays
        assert store.sweep(0).temp_objects == 1 and not any((store.root / ".tmp").iterdir())
    else:
        assert isinstance(store, S3Store)
        # Too new to go (moto reports every multipart upload as initiated on 2010-11-10, so only the temp object
        # shows the age limit here).
        assert store.sweep(3600, dry_run=True).temp_objects == 0
        assert store.sweep(0, dry_run=True).model_dump() == {"temp_objects": 1, "multipart_uploads": 1}
        assert _multipart_uploads(store) == 1
        assert store.sweep(0).model_dump() == {"temp_objects": 1, "multipart_uploads": 1}
        assert _multipart_uploads(store) == 0 and not list(store.list_keys(".tmp/"))
    assert store.get_bytes("keep/a") == b"a"
    with pytest.raises(ValueError, match="older_than_s must be a number of seconds >= 0"):
        store.sweep(-1)


def test_cli_store_sweep(tmp_store: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from aether_prefect import cli
    from aether_prefect.blocks import AetherConfig

    async def fake_load(name: str | None) -> tuple[str, AetherConfig]:
        return "test", AetherConfig(store=tmp_store)

    monkeypatch.setattr(cli, "_load", fake_load)
    store = open_store(tmp_store)
    assert isinstance(store, LocalStore)
    _leave_leftovers(store)
    assert cli.main(["store", "sweep", "--older-than-hours", "1", "--dry-run"]) == 0
    assert "would remove 1 temp object(s)" in capsys.readouterr().out
    assert cli.main(["store", "sweep", "--older-than-hours", "1"]) == 0
    assert "removed 1 temp object(s)" in capsys.readouterr().out
    assert cli.main(["store", "sweep", "--older-than-hours", "-1"]) == 2
