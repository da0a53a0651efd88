"""The object store interface shared by artifacts, memory, RAG and large KV values.

Blocking methods (boto3 and file I/O are blocking); async services call them
through ``anyio.to_thread.run_sync``. Keys are relative, '/'-separated, validated.
Every write is atomic: a reader sees the whole object or none of it.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from aether_prefect.errors import AetherError, StoreError, ValidationError

_KEY_PART = re.compile(r"^[A-Za-z0-9._=+@:,~-]+$")


class ObjectNotFound(StoreError, KeyError):
    """The key does not exist in the store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidKey(AetherError, ValueError):
    """A store key is not a safe relative path."""


def check_key(key: str) -> str:
    """Validate a store key: relative, '/'-separated, no '..', no empty parts, safe characters."""
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"store key must be a non-empty str, got {key!r}")
    parts = key.split("/")
    for part in parts:
        if part in ("", ".", "..") or not _KEY_PART.match(part):
            raise InvalidKey(
                f"store key {key!r} is not safe: use '/'-separated parts of letters, digits and ._=+@:,~- "
                "(no '..', no empty parts, no leading '/')"
            )
    return key


class SweepReport(BaseModel):
    """What :meth:`ObjectStore.sweep` removed (or would remove, on a dry run)."""

    temp_objects: int = 0
    multipart_uploads: int = 0


def check_age(older_than_s: float) -> float:
    """A sweep's age limit: a number of seconds >= 0."""
    if isinstance(older_than_s, bool) or not isinstance(older_than_s, (int, float)) or not older_than_s >= 0:
        raise ValidationError(f"older_than_s must be a number of seconds >= 0, got {older_than_s!r}")
    return float(older_than_s)


class ObjectStore(ABC):
    """Bytes by key. Implementations: LocalStore (a directory) and S3Store (a bucket)."""

    scheme: str = ""

    @abstractmethod
    def uri(self, key: str) -> str:
        """Public URI of ``key`` (file:///... or s3://bucket/...).

        Example: ``context.store().uri("notes/a.txt")  # "file:///.../aether/notes/a.txt"``
        """

    @abstractmethod
    def key_from_uri(self, uri: str) -> str:
        """Inverse of :meth:`uri`; raises InvalidKey for a URI outside this store.

        Example: ``store.key_from_uri(store.uri("notes/a.txt"))  # "notes/a.txt"``
        """

    @abstractmethod
    def put_bytes(
        self, key: str, data: bytes, *, content_type: str | None = None, sha256: str | None = None
    ) -> None:
        """Write ``data`` at ``key`` atomically (overwrites).

        ``sha256`` (hex of ``data``, when the caller has it) lets the store verify the upload (S3 checksums).

        Example: ``context.store().put_bytes("notes/a.txt", b"hi", content_type="text/plain")``
        """

    def put_small(self, key: str, data: bytes) -> None:
        """Write a small object at ``key`` atomically, skipping the flush to disk where the store has one.

        Another process never sees a partial object, and a crash of this process loses nothing written; but after
        a crash of the machine the object may be missing or hold partial bytes, so a caller must verify what it
        reads back (the call journal frames entries with a digest). Default: :meth:`put_bytes`.

        Example: ``store.put_small("journal/run/task/0-0/000000.json", framed_entry)``
        """
        self.put_bytes(key, data)

    def put_small_if_absent(self, key: str, data: bytes) -> bool:
        """Create a small marker at ``key`` only if nothing is there (True if this call created it), skipping the
        flush to disk and, on a local store, the temp file: the object exists at once, so a reader may briefly
        (or after a machine crash) see fewer bytes than ``data``. For markers whose existence is what counts (the
        journal's slot claims). Default: :meth:`put_if_absent`.

        Example: ``created = store.put_small_if_absent("journal/run/claims/task/hash/attempt-1/000000", b"id")``
        """
        return self.put_if_absent(key, data)

    def open_log(self, key: str, *, reserve: int = 0) -> "AppendLog | None":
        """A new object at ``key`` open for appending, or None when the store cannot append (S3: objects are
        written whole). Each append reaches the operating system at once (a crash of this process loses nothing
        appended), nothing is flushed to disk, and readers may see a partial last append: callers frame and check
        their records (the call journal's log). ``reserve=N`` lets the store size the object up front to append
        without a system call each; readers may then see zeros after the appended bytes until the log is closed
        (or for good, after a crash), so only records that tell a zero tail from a record may ask. Default: None.

        Example: ``log = store.open_log("journal/run/task/0-0/log-ab12.jlog")  # None on S3``
        """
        return None

    @abstractmethod
    def put_file_addressed(
        self, path: Path, key_of: Callable[[str], str], *, content_type: str | None = None
    ) -> tuple[str, int]:
        """Store the file at ``path`` under ``key_of(sha256)`` reading it once; returns (sha256, size).

        The bytes are hashed in the same pass that uploads them (to a temporary object), so the key always
        names what was stored, even if the file changes meanwhile; whatever sat at that key and did not hold
        exactly those bytes is replaced.

        Example: ``sha, size = context.store().put_file_addressed(Path("a.bin"), lambda sha: f"blobs/{sha}")``
        """

    @abstractmethod
    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> None:
        """Stream the file at ``path`` to ``key`` atomically, never reading it whole into memory.

        Example: ``context.store().put_file("data/big.parquet", Path("big.parquet"))``
        """

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write ``data`` at ``key`` only if nothing is there; True if this call created it.

        Example: ``created = context.store().put_if_absent("markers/once", b"1")``
        """

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read the whole object; ObjectNotFound if missing.

        Example: ``context.store().get_bytes("notes/a.txt")  # b"hi"``
        """

    @abstractmethod
    def download_file(self, key: str, dest: Path) -> None:
        """Stream the object to ``dest`` (written atomically); ObjectNotFound if missing.

        Example: ``context.store().download_file("data/big.parquet", Path("/tmp/big.parquet"))``
        """

    @abstractmethod
    def exists(self, key: str) -> bool:
        """True if ``key`` exists.

        Example: ``context.store().exists("notes/a.txt")  # True``
        """

    @abstractmethod
    def size(self, key: str) -> int:
        """Size in bytes; ObjectNotFound if missing.

        Example: ``context.store().size("notes/a.txt")  # 2``
        """

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing key is not an error.

        Example: ``context.store().delete("notes/a.txt")``
        """

    @abstractmethod
    def list_keys(self, prefix: str, *, start_after: str | None = None) -> Iterator[str]:
        """Keys under ``prefix`` (a '/'-terminated folder or a plain prefix), in ascending order.

        Example: ``list(context.store().list_keys("notes/"))  # ["notes/a.txt"]``
        """

    def sweep(self, older_than_s: float, *, dry_run: bool = False) -> SweepReport:
        """Remove what interrupted writes left behind (temp objects, unfinished multipart uploads) older than
        ``older_than_s``; never a stored object. Stores without such leftovers remove nothing.

        Example: ``context.store().sweep(86400)  # SweepReport(temp_objects=2, multipart_uploads=1)``
        """
        check_age(older_than_s)
        return SweepReport()

    def close(self) -> None:
        """Release clients; the store may be used again afterwards (clients are rebuilt lazily).

        Example: ``store.close()  # clients are rebuilt on the next call``
        """


class AppendLog(ABC):
    """An object being written by appends (see :meth:`ObjectStore.open_log`); close it when done."""

    @abstractmethod
    def append(self, data: bytes) -> None:
        """Append ``data`` whole (one write where the system allows it), at once visible to readers.

        Example: ``log.append(framed_record)``
        """

    @abstractmethod
    def close(self) -> None:
        """Stop appending (idempotent); what was appended stays.

        Example: ``log.close()``
        """


class HashingReader:
    """A read-only, non-seekable file wrapper that hashes (sha256) and counts every byte read through it.

    Non-seekable on purpose: upload libraries then read each byte exactly once, in order.
    """

    def __init__(self, f: Any) -> None:
        self._f = f
        self._h = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._f.read(n)
        self._h.update(data)
        self.size += len(data)
        return data

    def hexdigest(self) -> str:
        return self._h.hexdigest()


__all__ = ["AppendLog", "HashingReader", "InvalidKey", "ObjectNotFound", "ObjectStore", "StoreError", "check_key"]
