"""LocalStore: the object store as a directory. Writes go to a temp file, then rename."""

from __future__ import annotations

import errno
import itertools
import mmap
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from aether_prefect.services.stores.base import (
    AppendLog, HashingReader, InvalidKey, ObjectNotFound, ObjectStore, SweepReport, check_age, check_key,
)

_CHUNK = 1024 * 1024
_small = itertools.count()  # temp names of put_small: unique with the pid and thread id


class LocalStore(ObjectStore):
    """Objects as files under ``root/prefix``; a crash never leaves a half-written object."""

    scheme = "file"

    def __init__(self, root: str | Path, prefix: str = "aether") -> None:
        base = Path(root).expanduser().resolve()
        self.root = base / prefix if prefix else base
        self._tmp = self.root / ".tmp"

    def __repr__(self) -> str:
        return f"LocalStore(root={str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def key_from_uri(self, uri: str) -> str:
        prefix = self.root.as_uri() + "/"
        if not uri.startswith(prefix):
            raise InvalidKey(f"{uri!r} is not inside this local store ({self.root})")
        from urllib.parse import unquote

        return check_key(unquote(uri[len(prefix) :]))

    def _tmpfile(self) -> tuple[int, str]:
        self._tmp.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(dir=self._tmp, prefix="w-")

    def _commit(self, tmp: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)

    def put_bytes(
        self, key: str, data: bytes, *, content_type: str | None = None, sha256: str | None = None
    ) -> None:
        dest = self._path(key)
        fd, tmp = self._tmpfile()
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self._commit(tmp, dest)
        except BaseException:
            _unlink(tmp)
            raise

    def put_small(self, key: str, data: bytes) -> None:
        """Temp file + rename, no fsync: atomic for every reader, lost (never torn at the key) if this process
        dies; after a machine crash the caller's own check (a digest) must catch partial bytes. Plain ``os``
        calls: the journal writes one per LLM call, and little Python between them means little time holding the
        GIL.

        Example: ``store.put_small("journal/run/task/0-0/000000.json", framed_entry)``
        """
        dest = str(self._path(key))
        tmp = f"{self._tmp}/s-{os.getpid()}-{threading.get_ident()}-{next(_small)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:
            self._tmp.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            try:
                os.replace(tmp, dest)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                os.replace(tmp, dest)
        except BaseException:
            _unlink(tmp)
            raise

    def put_small_if_absent(self, key: str, data: bytes) -> bool:
        """One exclusive create at ``key`` then a write, no temp file, no fsync (see the base class).

        Example: ``created = store.put_small_if_absent("journal/run/claims/task/hash/attempt-1/000000", b"id")``
        """
        dest = str(self._path(key))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            fd = os.open(dest, flags, 0o600)
        except FileExistsError:
            return False
        except FileNotFoundError:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            try:
                fd = os.open(dest, flags, 0o600)
            except FileExistsError:
                return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def open_log(self, key: str, *, reserve: int = 0) -> "LocalLog | MappedLog":
        """A new file at ``key`` (exclusive create) opened for appends (``O_APPEND``, unbuffered, no fsync).

        ``reserve=N`` (where the system has ``posix_fallocate``): the file is allocated N bytes up front and appends
        are copied into a shared memory map of it (see :class:`MappedLog`); a file system that cannot allocate
        falls back to plain appends.

        Example: ``log = store.open_log("journal/run/task/0-0/log-ab12.jlog"); log.append(b"..."); log.close()``
        """
        dest = str(self._path(key))
        mapped = reserve > 0 and hasattr(os, "posix_fallocate")
        flags = (os.O_RDWR if mapped else os.O_WRONLY | os.O_APPEND) | os.O_CREAT | os.O_EXCL
        try:
            fd = os.open(dest, flags, 0o600)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            fd = os.open(dest, flags, 0o600)
        if mapped:
            try:
                return MappedLog(fd, reserve)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    os.close(fd)
                    raise
                os.ftruncate(fd, 0)  # no fallocate or mmap on this file system: plain appends
                os.close(fd)
            fd = os.open(dest, os.O_WRONLY | os.O_APPEND)
        return LocalLog(fd)

    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> None:
        dest = self._path(key)
        fd, tmp = self._tmpfile()
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                shutil.copyfileobj(src, out, _CHUNK)
                out.flush()
                os.fsync(out.fileno())
            self._commit(tmp, dest)
        except BaseException:
            _unlink(tmp)
            raise

    def put_file_addressed(
        self, path: Path, key_of: Callable[[str], str], *, content_type: str | None = None
    ) -> tuple[str, int]:
        """One read of ``path``: copied to a temp file while hashed, fsynced, then renamed onto ``key_of(sha)``."""
        fd, tmp = self._tmpfile()
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                reader = HashingReader(src)
                shutil.copyfileobj(reader, out, _CHUNK)  # type: ignore[misc]
                out.flush()
                os.fsync(out.fileno())
            sha = reader.hexdigest()
            self._commit(tmp, self._path(key_of(sha)))  # replaces whatever was there (even a corrupt blob)
            return sha, reader.size
        except BaseException:
            _unlink(tmp)
            raise

    def put_if_absent(self, key: str, data: bytes) -> bool:
        dest = self._path(key)
        if dest.exists():
            return False
        fd, tmp = self._tmpfile()
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(tmp, dest)  # atomic create-if-absent
                return True
            except FileExistsError:
                return False
        finally:
            _unlink(tmp)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(f"no object at {key!r} in {self.root}") from None

    def download_file(self, key: str, dest: Path) -> None:
        src = self._path(key)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".dl-")
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
                shutil.copyfileobj(f, out, _CHUNK)
            os.replace(tmp, dest)
        except FileNotFoundError:
            _unlink(tmp)
            raise ObjectNotFound(f"no object at {key!r} in {self.root}") from None
        except BaseException:
            _unlink(tmp)
            raise

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise ObjectNotFound(f"no object at {key!r} in {self.root}") from None

    def delete(self, key: str) -> None:
        _unlink(str(self._path(key)))

    def sweep(self, older_than_s: float, *, dry_run: bool = False) -> SweepReport:
        """Delete temp files under ``<root>/.tmp`` older than ``older_than_s`` (left by a writer killed mid-write).

        Example: ``LocalStore("/data").sweep(86400)  # SweepReport(temp_objects=1, multipart_uploads=0)``
        """
        cutoff = time.time() - check_age(older_than_s)
        n = 0
        try:
            entries = list(os.scandir(self._tmp))
        except FileNotFoundError:
            return SweepReport()
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    if not dry_run:
                        os.unlink(entry.path)
                    n += 1
            except FileNotFoundError:
                continue  # its writer finished (or another sweep took it) meanwhile
        return SweepReport(temp_objects=n)

    def list_keys(self, prefix: str, *, start_after: str | None = None) -> Iterator[str]:
        """Lazily, in ascending key order: each folder is read only when the walk reaches it.

        Entries are ordered by ``name + "/"`` for folders and ``name`` for files, which is
        exactly the order of the full keys, so a caller that stops early reads little.
        """
        folder, _, stem = prefix.rpartition("/")
        if folder:
            check_key(folder)
        base = self.root / folder if folder else self.root
        return self._walk(base, f"{folder}/" if folder else "", stem, start_after)

    def _walk(self, path: Path, key_prefix: str, stem: str, start_after: str | None) -> Iterator[str]:
        try:
            with os.scandir(path) as it:
                entries = [(e.name + "/" if e.is_dir() else e.name, e) for e in it]
        except (FileNotFoundError, NotADirectoryError):
            return
        entries.sort(key=lambda pair: pair[0])
        for sort_name, entry in entries:
            if not entry.name.startswith(stem) or (not key_prefix and entry.name == ".tmp"):
                continue
            key = key_prefix + sort_name
            if sort_name.endswith("/"):
                if start_after is not None and key < start_after and not start_after.startswith(key):
                    continue  # every key under this folder sorts before start_after
                yield from self._walk(Path(entry.path), key, "", start_after)
            elif start_after is None or key > start_after:
                yield key


class LocalLog(AppendLog):
    """An open file appended to with plain ``os.write`` (about a microsecond per record, no Python buffer: what
    was appended survives a crash of this process). A lock keeps concurrent appends whole."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd
        self._lock = threading.Lock()

    def append(self, data: bytes) -> None:
        with self._lock:
            if self._fd is None:
                raise ValueError("append to a closed log")
            view = memoryview(data)
            while view:  # a regular file takes it in one write unless the disk is full or a signal cuts it
                view = view[os.write(self._fd, view):]

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:  # a context never closed must not leak the descriptor
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - nothing to do at interpreter teardown
            pass


class MappedLog(AppendLog):
    """An open file appended to by copying into a shared memory map of it: no system call per record (a
    ``write`` to the file costs 10-15 us on a live LLM call, a copy into the map a few), and what was copied is in
    the page cache at once, so it survives a crash (SIGKILL) of this process, as ``os.write`` does.

    The file is allocated ``reserve`` bytes up front (``posix_fallocate``: a full disk fails here with an
    ``OSError``, never later as a SIGBUS on a copy) and doubled when a record does not fit; :meth:`close` trims it
    to what was appended. Until then, and after a crash, readers see the appended bytes followed by zeros: the
    records must tell a zero tail from a record (the call journal's do). A lock keeps concurrent appends whole.
    """

    def __init__(self, fd: int, reserve: int) -> None:
        os.posix_fallocate(fd, 0, reserve)
        self._map: mmap.mmap | None = mmap.mmap(fd, reserve)
        self._fd = fd
        self._end = 0
        self._lock = threading.Lock()

    def append(self, data: bytes) -> None:
        with self._lock:
            if self._map is None:
                raise ValueError("append to a closed log")
            end = self._end + len(data)
            if end > len(self._map):
                size = max(end, 2 * len(self._map))
                os.posix_fallocate(self._fd, 0, size)
                self._map.resize(size)
            self._map[self._end:end] = data
            self._end = end

    def close(self) -> None:
        with self._lock:
            m, self._map = self._map, None
            if m is None:
                return
            m.close()
            try:
                os.ftruncate(self._fd, self._end)
            finally:
                os.close(self._fd)

    def __del__(self) -> None:  # a context never closed must not leak the descriptor or the map
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - nothing to do at interpreter teardown
            pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
