"""Artifacts service: content-addressed bytes in the object store, indexed, published as Prefect artifacts.

Save order, so nothing is lost or half-written, in three steps (#21: a save used to be six writes one after the
other): first, at once, the blob (atomic, ``artifacts/blobs/<sha[:2]>/<sha>``, S3-verified), the index's id
pointer and facet markers (none means anything without the add event); then the Prefect artifact (only once the
bytes exist); then the index's add event carrying the Prefect artifact's id (the commit point). A failure before
the add event leaves no record, and the Prefect artifact of a failed add event is deleted again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import mimetypes
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio

from aether_prefect._sync import SyncView, async_cm
from aether_prefect.services.artifacts._compat import ArtifactsCompat, legacy_save_keywords
from aether_prefect.errors import ArtifactNotFound, IntegrityError, ValidationError
from aether_prefect.services.artifacts._index import ROOT, Artifact
from aether_prefect.services.artifacts._migrate import legacy_index
from aether_prefect.services.artifacts._parts import parts_for
from aether_prefect.services.artifacts._publish import publish, publish_sync, unpublish, unpublish_sync
from aether_prefect.services.artifacts._query import Filter, Hit, label_match
from aether_prefect.services._checks import check_metrics
from aether_prefect.services.base import BoundService
from aether_prefect.services.stores.base import InvalidKey, ObjectNotFound, ObjectStore

if TYPE_CHECKING:
    from aether_prefect.context import NodeContext

View = Literal["node", "graph", "run", "all"]
_VIEWS = ("node", "graph", "run", "all")
_CHUNK = 1024 * 1024
_SCOPE_LABELS = ("run_id", "graph_id", "node_id")


def blob_key(sha: str) -> str:
    """Store key of the blob with this sha256."""
    return f"{ROOT}/blobs/{sha[:2]}/{sha}"


_INLINE_MAX = 64 * 1024


def _read_if_small(path: Path, limit: int) -> bytes | None:
    """The whole file if it holds at most ``limit`` bytes (one read), else None."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    return data if len(data) <= limit else None


def _hash_file(path: Path) -> tuple[str, int]:
    """sha256 and size of a file, streamed (hashlib reads into one reused buffer, releasing the GIL)."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        return digest, f.tell()


def _cache_dir() -> Path:
    """This OS user's verified-copy cache: under ``$PREFECT_HOME``, uid in the name, mode 0700.

    Never a directory shared by users (a second user would get PermissionError, or read another's files).
    """
    from aether_prefect._prefect import prefect_home

    uid = os.getuid() if hasattr(os, "getuid") else os.getlogin()
    path = Path(prefect_home()).expanduser() / "aether-cache" / f"artifacts-{uid}"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _decode(data: bytes, encoding: str, what: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ValidationError(
            f"artifact {what} is not {encoding} text (byte {data[exc.start:exc.start + 1]!r} at offset {exc.start}); "
            "load it with load_bytes/load_bytes_by_id, or pass the encoding it was written in"
        ) from None
    except LookupError:
        raise ValidationError(f"unknown encoding {encoding!r}; pass a Python codec name such as 'utf-8'") from None


def _parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except UnicodeDecodeError as exc:
        raise ValidationError(
            f"artifact {what} is not JSON: its bytes are not UTF-8 text (offset {exc.start}); "
            "load it with load_bytes/load_bytes_by_id"
        ) from None
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"artifact {what} is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            "load it with load_text/load_bytes, or save JSON with save_json"
        ) from None


# -- validation ----------------------------------------------------------------------


def _text_payload(text: str, kind: str, name: str | None, mime: str | None) -> tuple[bytes, str]:
    """(UTF-8 bytes, mime) of a ``save_text``."""
    if not isinstance(text, str):
        raise ValidationError(f"save_text takes a str, got {type(text).__name__}; use save_bytes or save_json")
    if mime is None:
        md = (name or "").endswith(".md") or "markdown" in kind or kind in ("md", "report")
        mime = "text/markdown; charset=utf-8" if md else "text/plain; charset=utf-8"
    return text.encode("utf-8"), mime


def _json_payload(obj: Any) -> bytes:
    """The JSON bytes of a ``save_json``."""
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            f"save_json got an object that is not JSON-serialisable ({exc}); convert it to dicts, lists, "
            "str, numbers, bool and None first (NaN/inf are not allowed), or use save_bytes"
        ) from None


def _bytes_payload(data: Any, name: str | None, mime: str | None) -> tuple[bytes, str]:
    """(bytes, mime) of a ``save_bytes``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValidationError(f"save_bytes takes bytes, got {type(data).__name__}; use save_text or save_json")
    if mime is None:
        mime = (mimetypes.guess_type(name)[0] if name else None) or "application/octet-stream"
    return bytes(data), mime


def _check_name(name: str | None) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not name.strip():
        raise ValidationError(f"artifact name must be a non-empty str or None, got {name!r}")
    if "\x00" in name or "/" in name or "\\" in name or name in (".", "..") or ".." in name or os.path.isabs(name):
        raise ValidationError(
            f"artifact name {name!r} is not allowed: use a plain file name such as 'report.md' "
            "(no '..', no path separators, no absolute path, no NUL)"
        )
    if len(name) > 200:
        raise ValidationError(f"artifact name is {len(name)} characters long; keep it to 200 or fewer")
    return name


def _check_kind(kind: str) -> str:
    if not isinstance(kind, str) or not kind.strip() or "\x00" in kind or len(kind) > 100:
        raise ValidationError(f"kind must be a non-empty str of at most 100 characters without NUL, got {kind!r}")
    return kind


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _check_labels(labels: dict[str, Any] | None) -> dict[str, Any]:
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise ValidationError(f"labels must be a dict of str to str/number/bool (or lists of them), got {type(labels).__name__}")
    for k, v in labels.items():
        if not isinstance(k, str) or not k:
            raise ValidationError(f"label keys must be non-empty str, got {k!r}")
        if not (_scalar(v) or (isinstance(v, (list, tuple)) and all(_scalar(x) for x in v))):
            raise ValidationError(f"label {k!r} has a {type(v).__name__} value; use str, number, bool or a list of them")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in labels.items()}


def _check_metrics(metrics: dict[str, float] | None) -> dict[str, float]:
    return check_metrics(metrics, ValidationError)


def _check_view(view: str | None, scope: str | None, default: str) -> str:
    if view is not None and scope is not None and view != scope:
        raise ValidationError(f"view={view!r} and scope={scope!r} disagree; pass one of them (scope is an alias of view)")
    v = view or scope or default
    if v not in _VIEWS:
        raise ValidationError(f"view must be one of {_VIEWS}, got {v!r}")
    return v




# -- the writer ------------------------------------------------------------------------


class ArtifactWriter:
    """What ``writer()`` yields: ``write(data)`` appends; ``path`` is the temp file for tools that write files."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "wb")
        self.labels: dict[str, Any] = {}
        self.metrics: dict[str, float] = {}
        self.artifact: Artifact | None = None

    def write(self, data: bytes | str) -> int:
        """Append bytes (or UTF-8 text) to the artifact being written."""
        return self._f.write(data.encode("utf-8") if isinstance(data, str) else data)

    def add_labels(self, **labels: Any) -> None:
        """Labels to record when the artifact is committed."""
        self.labels.update(labels)

    def add_metrics(self, **metrics: float) -> None:
        """Metrics to record when the artifact is committed."""
        self.metrics.update(metrics)

    def _close(self) -> None:
        if not self._f.closed:
            self._f.close()


# -- the service -----------------------------------------------------------------------


class ArtifactsService(ArtifactsCompat, BoundService):
    """``context.artifacts()``: save, load, list, search, best and pin artifacts; async (``.sync`` for blocking)."""

    def __init__(self, ctx: "NodeContext") -> None:
        super().__init__(ctx)
        self._store: ObjectStore | None = None

    def __repr__(self) -> str:
        return f"ArtifactsService(run_id={self.ctx.run_id!r}, node_id={self.ctx.node_id!r})"

    @property
    def sync(self) -> Any:
        """Blocking twin for sync tasks: ``arts.sync.best(...)`` == ``await arts.best(...)``; queries run on the
        calling thread (they only read the store), saves and loads go through the event loop as usual.

        Example: ``winner = context.artifacts().sync.best(kind="model", metric="accuracy", view="graph")``
        """
        return _ArtifactsSyncView(self)

    @property
    def store(self) -> ObjectStore:
        """The object store holding the bytes (resolved on first use)."""
        if self._store is None:
            self._store = self.ctx.store()
        return self._store

    # -- saving -------------------------------------------------------------------------

    async def save_text(
        self, text: str, *, kind: str = "text", name: str | None = None, labels: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None, pin: bool = False, mime: str | None = None,
    ) -> Artifact:
        """Save ``text`` (UTF-8); small text also shows inline in the Prefect UI.

        Example: ``art = await context.artifacts().save_text("# Report", kind="report", name="report.md")``
        """
        data, mime = _text_payload(text, kind, name, mime)
        return await self._save_data(data, kind, name, labels, metrics, pin, mime)

    async def save_json(
        self, obj: Any, *, kind: str = "json", name: str | None = None, labels: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None, pin: bool = False,
    ) -> Artifact:
        """Save ``obj`` as JSON; a list of records also shows as a table in the Prefect UI.

        Example: ``art = await context.artifacts().save_json({"rows": 120}, kind="stats", metrics={"rows": 120})``
        """
        return await self._save_data(_json_payload(obj), kind, name, labels, metrics, pin, "application/json",
                                     json_obj=obj)

    async def save_bytes(
        self, data: bytes, *, kind: str = "bytes", name: str | None = None, labels: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None, pin: bool = False, mime: str | None = None,
    ) -> Artifact:
        """Save raw bytes.

        Example: ``art = await context.artifacts().save_bytes(b"\x89PNG...", kind="image", name="plot.png")``
        """
        raw, mime = _bytes_payload(data, name, mime)
        return await self._save_data(raw, kind, name, labels, metrics, pin, mime)

    # Blocking twins of the in-memory saves (``arts.sync.save_text/save_json/save_bytes``): the same writes in the
    # same order, on the calling thread with its own Prefect client, without hops to the portal loop and a worker
    # thread (#21: a sync task's save costs what the hand-written boto3 PUT + artifact would, plus the index).

    def _save_text_blocking(
        self, text: str, *, kind: str = "text", name: str | None = None, labels: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None, pin: bool = False, mime: str | None = None,
    ) -> Artifact:
        data, mime = _text_payload(text, kind, name, mime)
        return self._save_data_blocking(data, kind, name, labels, metrics, pin, mime)

    def _save_json_blocking(
        self, obj: Any, *, kind: str = "json", name: str | None = None, labels: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None, pin: bool = False,
    ) -> Artifact:
        return self._save_data_blocking(_json_payload(obj), kind, name, labels, metrics, pin, "application/json",
                                        json_obj=obj)

    def _save_bytes_blocking(
        self, data: bytes, *, kind: str = "bytes", name: str | None = None, labels: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None, pin: bool = False, mime: str | None = None,
    ) -> Artifact:
        raw, mime = _bytes_payload(data, name, mime)
        return self._save_data_blocking(raw, kind, name, labels, metrics, pin, mime)

    async def save_file(
        self, path: str | os.PathLike[str], *, kind: str = "file", name: str | None = None,
        labels: dict[str, Any] | None = None, metrics: dict[str, float] | None = None, pin: bool = False,
        mime: str | None = None, cleanup: bool = False,
    ) -> Artifact:
        """Copy the file at ``path`` into the store (streamed); the source is deleted only if ``cleanup=True``.

        Example: ``art = await context.artifacts().save_file("out/model.pkl", kind="model", labels={"stage": "train"})``
        """
        src = Path(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else None
        if src is None or "\x00" in str(src):
            raise ValidationError(f"save_file takes a path to a file, got {path!r}")
        if not src.is_file():
            raise ValidationError(f"save_file: no file at {str(src)!r}; pass the path of an existing regular file")
        name = _check_name(name if name is not None else src.name)
        art = await self._save_file(src, kind, name, labels, metrics, pin, mime)
        if cleanup:
            src.unlink(missing_ok=True)
        return art

    @async_cm
    @contextlib.asynccontextmanager
    async def writer(
        self, *, kind: str = "file", planned_ext: str | None = None, name: str | None = None,
        labels: dict[str, Any] | None = None, metrics: dict[str, float] | None = None, pin: bool = False,
        mime: str | None = None,
    ) -> AsyncIterator[ArtifactWriter]:
        """Stream into a temp file: committed as an artifact on normal exit, discarded on error.

        ``w.artifact`` holds the saved Artifact after the block.

        Example: ``async with context.artifacts().writer(kind="log", planned_ext=".txt") as w: w.write("line 1\n")``
        """
        _check_kind(kind)
        _check_name(name)
        _check_labels(labels)
        _check_metrics(metrics)
        ext = planned_ext or ""
        if ext and not ext.startswith("."):
            ext = "." + ext
        if ext and (len(ext) > 20 or not ext[1:].replace(".", "").isalnum()):
            raise ValidationError(f"planned_ext {planned_ext!r} is not a file extension such as '.txt' or 'csv'")
        fd, tmp = tempfile.mkstemp(prefix="aether-artifact-", suffix=ext)
        os.close(fd)
        w = ArtifactWriter(Path(tmp))
        try:
            yield w
            w._close()
            w.artifact = await self._save_file(
                w.path, kind, name, {**(labels or {}), **w.labels}, {**(metrics or {}), **w.metrics}, pin, mime,
            )
        finally:
            w._close()
            Path(tmp).unlink(missing_ok=True)

    def _data_blob(self, data: bytes, mime: str | None) -> tuple[str, Callable[[], None]]:
        """(sha256, the write of the blob) of in-memory bytes."""
        sha = hashlib.sha256(data).hexdigest()
        store = self.store

        def blob() -> None:
            # Always written (atomically, S3-verified against ``sha``): a blob already there may be corrupt, and a
            # save must never end with a record whose blob does not hash to its id. Same bytes, same key.
            store.put_bytes(blob_key(sha), data, content_type=mime, sha256=sha)

        return sha, blob

    async def _save_data(
        self, data: bytes, kind: str, name: str | None, labels: dict[str, Any] | None,
        metrics: dict[str, float] | None, pin: bool, mime: str | None, json_obj: Any = None,
    ) -> Artifact:
        kind, name = _check_kind(kind), _check_name(name)
        labels, metrics = _check_labels(labels), _check_metrics(metrics)
        sha, blob = self._data_blob(data, mime)
        return await self._commit(sha, len(data), kind, name, labels, metrics, pin, mime, content=data,
                                  json_obj=json_obj, blob=blob)

    def _save_data_blocking(
        self, data: bytes, kind: str, name: str | None, labels: dict[str, Any] | None,
        metrics: dict[str, float] | None, pin: bool, mime: str | None, json_obj: Any = None,
    ) -> Artifact:
        """Blocking :meth:`_save_data` then :meth:`_commit`: the same writes in the same order (see the module's
        docstring), on the calling thread."""
        kind, name = _check_kind(kind), _check_name(name)
        labels, metrics = _check_labels(labels), _check_metrics(metrics)
        sha, blob = self._data_blob(data, mime)
        ctx = self.ctx
        art = self._record(sha, len(data), kind, name, labels, metrics, pin, mime)
        index = parts_for(self.store)
        ref = index.prepare_add(art, blob)
        pid = publish_sync(art, flow_run_id=ctx.flow_run_id, task_run_id=ctx.task_run_id, content=data,
                           json_obj=json_obj)
        if pid is not None:
            art = art.model_copy(update={"prefect_artifact_id": pid})
        try:
            index.commit_add(ref, art)
        except Exception:
            if pid is not None:  # no record (or, after an ambiguous error, a repeat of this save will link its own)
                unpublish_sync(pid)
            raise
        if pin:
            index.write_pin(sha)
        return art

    async def _save_file(
        self, src: Path, kind: str, name: str | None, labels: dict[str, Any] | None,
        metrics: dict[str, float] | None, pin: bool, mime: str | None,
    ) -> Artifact:
        kind, name = _check_kind(kind), _check_name(name)
        labels, metrics = _check_labels(labels), _check_metrics(metrics)
        if mime is None:
            mime = mimetypes.guess_type(name or src.name)[0] or "application/octet-stream"
        if mime.startswith("text/") or mime == "application/json":
            # Small text is shown inline in Prefect: read it once and save those very bytes.
            head = await anyio.to_thread.run_sync(_read_if_small, src, _INLINE_MAX)
            if head is not None:
                return await self._save_data(head, kind, name, labels, metrics, pin, mime)
        store = self.store
        # One read: hashed while uploaded, stored under the hash of what was actually read.
        sha, size = await anyio.to_thread.run_sync(
            lambda: store.put_file_addressed(src, blob_key, content_type=mime)
        )
        return await self._commit(sha, size, kind, name, labels, metrics, pin, mime, content=None)

    async def _commit(
        self, sha: str, size: int, kind: str, name: str | None, labels: dict[str, Any], metrics: dict[str, float],
        pin: bool, mime: str | None, *, content: bytes | None, json_obj: Any = None,
        blob: Callable[[], None] | None = None,
    ) -> Artifact:
        """Index and publish the bytes ``blob()`` writes (else bytes already in the store): see the module's
        docstring for the order."""
        ctx = self.ctx
        art = self._record(sha, size, kind, name, labels, metrics, pin, mime)
        index = parts_for(self.store)
        ref = await anyio.to_thread.run_sync(lambda: index.prepare_add(art, *([blob] if blob else [])))
        pid = await publish(art, flow_run_id=ctx.flow_run_id, task_run_id=ctx.task_run_id, content=content, json_obj=json_obj)
        if pid is not None:
            art = art.model_copy(update={"prefect_artifact_id": pid})
        try:
            await anyio.to_thread.run_sync(index.commit_add, ref, art)
        except Exception:
            if pid is not None:  # no record (or, after an ambiguous error, a repeat of this save will link its own)
                await unpublish(pid)
            raise
        if pin:
            await anyio.to_thread.run_sync(index.write_pin, sha)
        return art

    def _record(self, sha: str, size: int, kind: str, name: str | None, labels: dict[str, Any],
                metrics: dict[str, float], pin: bool, mime: str | None) -> Artifact:
        """The index record of a save in this context (its scope ids are also labels)."""
        ctx = self.ctx
        scope = {"run_id": ctx.run_id, "graph_id": ctx.graph_id, "node_id": ctx.node_id}
        return Artifact(
            artifact_id=sha, uri=self.store.uri(blob_key(sha)), sha256=sha, kind=kind, bytes=size, mime=mime,
            name=name, labels={**labels, **scope}, metrics=metrics, pinned=bool(pin),
            created_at=datetime.now(timezone.utc), **scope,
        )

    # -- loading ------------------------------------------------------------------------

    def _sha_of_uri(self, uri: str) -> str:
        if not isinstance(uri, str):
            raise ValidationError(f"expected an artifact uri str, got {type(uri).__name__}")
        try:
            key = self.store.key_from_uri(uri)
        except InvalidKey as exc:
            raise ValidationError(f"{uri!r} is not an artifact uri of this store: {exc}") from None
        sha = key.rsplit("/", 1)[-1]
        if key != blob_key(sha) or len(sha) != 64:
            raise ValidationError(f"{uri!r} is not an artifact uri (expected .../{ROOT}/blobs/<sha[:2]>/<sha256>)")
        return sha

    def _check_id(self, artifact_id: str) -> str:
        if not isinstance(artifact_id, str) or len(artifact_id) != 64 or not all(c in "0123456789abcdef" for c in artifact_id):
            raise ValidationError(f"artifact id must be a 64-character lowercase sha256 hex string, got {artifact_id!r}")
        return artifact_id

    async def _load(self, sha: str) -> bytes:
        store = self.store
        try:
            data = await anyio.to_thread.run_sync(store.get_bytes, blob_key(sha))
        except ObjectNotFound:
            raise ArtifactNotFound(f"artifact {sha} has no bytes in the store ({store.uri(blob_key(sha))})") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha:
            raise IntegrityError(
                f"artifact {sha} is corrupted: the stored bytes hash to {actual}. "
                "Restore the blob from a backup or save the artifact again."
            )
        return data

    async def get_by_id(self, artifact_id: str) -> Artifact:
        """The newest index record of ``artifact_id`` (any run); ArtifactNotFound if none.

        Example: ``art = await context.artifacts().get_by_id(art.artifact_id)``
        """
        return await anyio.to_thread.run_sync(self._get_by_id_blocking, artifact_id)

    def _get_by_id_blocking(self, artifact_id: str) -> Artifact:
        self._check_id(artifact_id)
        rec = self._get_record(artifact_id)
        if rec is None:
            raise ArtifactNotFound(f"no artifact with id {artifact_id} in the index of {self.store!r}")
        return rec

    def _get_record(self, artifact_id: str) -> Artifact | None:
        """A point lookup in the partitioned index (then the old layout, for a store not yet migrated)."""
        index = parts_for(self.store)
        rec = index.get(artifact_id)
        legacy = legacy_index(self.store)
        if legacy is not None:
            for _key, old in reversed(legacy.records()):
                if old.artifact_id == artifact_id and (rec is None or old.created_at > rec.created_at):
                    rec = old
                    break
        if rec is not None and not rec.pinned and not index.pins_in_runs() and index.pinned([artifact_id]):
            rec = rec.model_copy(update={"pinned": True})
        return rec

    async def load_bytes_by_id(self, artifact_id: str) -> bytes:
        """The bytes of ``artifact_id``, sha256-verified.

        Example: ``data = await context.artifacts().load_bytes_by_id(art.artifact_id)``
        """
        return await self._load(self._check_id(artifact_id))

    async def load_text_by_id(self, artifact_id: str, encoding: str = "utf-8") -> str:
        """The content of ``artifact_id`` as text; ValidationError if it is not text in ``encoding``.

        Example: ``text = await context.artifacts().load_text_by_id(art.artifact_id)``
        """
        return _decode(await self.load_bytes_by_id(artifact_id), encoding, artifact_id)

    async def load_json_by_id(self, artifact_id: str) -> Any:
        """The content of ``artifact_id`` parsed as JSON; ValidationError if it is not JSON.

        Example: ``obj = await context.artifacts().load_json_by_id(art.artifact_id)``
        """
        return _parse_json(await self.load_bytes_by_id(artifact_id), artifact_id)

    async def load_bytes(self, uri: str) -> bytes:
        """The bytes at an artifact ``uri``, sha256-verified.

        Example: ``data = await context.artifacts().load_bytes(art.uri)``
        """
        return await self._load(self._sha_of_uri(uri))

    async def load_text(self, uri: str, encoding: str = "utf-8") -> str:
        """The content at ``uri`` as text; ValidationError if it is not text in ``encoding``.

        Example: ``text = await context.artifacts().load_text(art.uri)``
        """
        return _decode(await self.load_bytes(uri), encoding, uri)

    async def load_json(self, uri: str) -> Any:
        """The content at ``uri`` parsed as JSON; ValidationError if it is not JSON.

        Example: ``obj = await context.artifacts().load_json(art.uri)``
        """
        return _parse_json(await self.load_bytes(uri), uri)

    async def as_local_file(self, artifact_or_uri: Artifact | str) -> str:
        """A verified local copy of the artifact (streamed, cached by sha256); returns its path.

        Example: ``path = await context.artifacts().as_local_file(art)``
        """
        if isinstance(artifact_or_uri, Artifact):
            sha = self._check_id(artifact_or_uri.artifact_id)
        elif isinstance(artifact_or_uri, str) and "://" in artifact_or_uri:
            sha = self._sha_of_uri(artifact_or_uri)
        else:
            sha = self._check_id(artifact_or_uri)  # type: ignore[arg-type]
        store = self.store
        def fetch() -> str:
            dest = _cache_dir() / sha
            if not dest.is_file() or _hash_file(dest)[0] != sha:
                try:
                    store.download_file(blob_key(sha), dest)
                except ObjectNotFound:
                    raise ArtifactNotFound(f"artifact {sha} has no bytes in the store ({store.uri(blob_key(sha))})") from None
                actual = _hash_file(dest)[0]
                if actual != sha:
                    dest.unlink(missing_ok=True)
                    raise IntegrityError(f"artifact {sha} is corrupted: the stored bytes hash to {actual}")
            return str(dest)

        return await anyio.to_thread.run_sync(fetch)

    # -- querying -----------------------------------------------------------------------

    def _in_view(self, rec: Artifact, view: str) -> bool:
        ctx = self.ctx
        if view == "all":
            return True
        if view == "graph":
            return rec.graph_id == ctx.graph_id
        if view == "run":
            return rec.run_id == ctx.run_id
        return rec.run_id == ctx.run_id and rec.node_id == ctx.node_id

    async def search(
        self, *, kind: str | None = None, labels: dict[str, Any] | None = None, metric: str | None = None,
        mode: Literal["max", "min"] = "max", view: View | None = None, scope: View | None = None,
        limit: int | None = None,
    ) -> list[Artifact]:
        """Artifacts in ``view`` matching ``kind`` and every label; by ``metric`` (best first) else newest first.

        Views: ``node`` (this run and node), ``run`` (this run), ``graph`` (every run of this graph), ``all``.
        One entry per artifact id (its newest record).

        Example: ``top = await context.artifacts().search(kind="model", metric="accuracy", mode="max", view="graph", limit=3)``
        """
        v, want = self._search_args(labels, mode, view, scope, limit)
        return await anyio.to_thread.run_sync(self._search, v, kind, want, metric, mode, limit)

    @staticmethod
    def _search_args(labels: dict[str, Any] | None, mode: str, view: str | None, scope: str | None,
                     limit: int | None) -> tuple[str, dict[str, Any]]:
        v = _check_view(view, scope, "run")
        if mode not in ("max", "min"):
            raise ValidationError(f"mode must be 'max' or 'min', got {mode!r}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValidationError(f"limit must be a positive int or None, got {limit!r}")
        return v, _check_labels(labels)

    def _search_blocking(
        self, *, kind: str | None = None, labels: dict[str, Any] | None = None, metric: str | None = None,
        mode: Literal["max", "min"] = "max", view: View | None = None, scope: View | None = None,
        limit: int | None = None,
    ) -> list[Artifact]:
        v, want = self._search_args(labels, mode, view, scope, limit)
        return self._search(v, kind, want, metric, mode, limit)

    def _list_blocking(self, view: View | None = None, *, scope: View | None = None, kind: str | None = None) -> list[Artifact]:
        return self._search_blocking(kind=kind, view=_check_view(view, scope, "run"))  # type: ignore[arg-type]

    def _best_blocking(
        self, *, kind: str | None = None, metric: str, mode: Literal["max", "min"] = "max",
        view: View | None = None, scope: View | None = None, labels: dict[str, Any] | None = None,
    ) -> Artifact | None:
        if not isinstance(metric, str) or not metric:
            raise ValidationError(f"best needs a metric name, got {metric!r}")
        hits = self._search_blocking(kind=kind, labels=labels, metric=metric, mode=mode, view=view, scope=scope, limit=1)
        return hits[0] if hits else None

    def _search(self, view: str, kind: str | None, want: dict[str, Any], metric: str | None, mode: str,
                limit: int | None) -> list[Artifact]:
        """``search`` in one worker thread: hits newest first, one per artifact id, ordered by ``metric`` if given;
        only the records returned are validated and checked for pins."""
        hits = self._view_hits(view, kind, want, metric)
        hits.sort(key=lambda h: h.at, reverse=True)
        seen: set[str] = set()
        unique: list[Hit] = []
        for hit in hits:
            if hit.artifact_id not in seen:
                seen.add(hit.artifact_id)
                unique.append(hit)
        if metric is not None:
            unique.sort(key=lambda h: h.score, reverse=(mode == "max"))  # type: ignore[arg-type, return-value]
        out: list[Artifact] = []
        for hit in unique:
            rec = hit.artifact()
            if rec is None or not self._matches(rec, view, kind, want, metric):
                continue
            out.append(rec)
            if limit is not None and len(out) >= limit:
                break
        index = parts_for(self.store)  # pins come with the runs' records, unless the store has pins from before that
        pinned = index.pinned([r.artifact_id for r in out if not r.pinned]) if out and not index.pins_in_runs() else set()
        return [r.model_copy(update={"pinned": True}) if r.artifact_id in pinned else r for r in out]

    def _matches(self, rec: Artifact, view: str, kind: str | None, want: dict[str, Any], metric: str | None) -> bool:
        if kind is not None and rec.kind != kind:
            return False
        if metric is not None and metric not in rec.metrics:
            return False
        if not self._in_view(rec, view):
            return False
        return not want or all(k in rec.labels and label_match(rec.labels[k], w) for k, w in want.items())

    async def list(self, view: View | None = None, *, scope: View | None = None, kind: str | None = None) -> list[Artifact]:
        """Artifacts in ``view`` (default the current run), newest first.

        Example: ``arts = await context.artifacts().list(view="run")``
        """
        return await self.search(kind=kind, view=_check_view(view, scope, "run"))  # type: ignore[arg-type]

    async def best(
        self, *, kind: str | None = None, metric: str, mode: Literal["max", "min"] = "max",
        view: View | None = None, scope: View | None = None, labels: dict[str, Any] | None = None,
    ) -> Artifact | None:
        """The artifact with the highest (``max``) or lowest (``min``) ``metric``, or None.

        Example: ``winner = await context.artifacts().best(kind="model", metric="accuracy", mode="max")``
        """
        if not isinstance(metric, str) or not metric:
            raise ValidationError(f"best needs a metric name, got {metric!r}")
        hits = await self.search(kind=kind, labels=labels, metric=metric, mode=mode, view=view, scope=scope, limit=1)
        return hits[0] if hits else None

    async def pin(self, artifact_id: str) -> Artifact:
        """Mark ``artifact_id`` as pinned (an idempotent pin object; safe from many processes): every record of it
        saved so far, in every run; a later save of the same bytes is a new record, pinned if saved with ``pin=True``.

        Example: ``await context.artifacts().pin(winner.artifact_id)``
        """
        rec = await self.get_by_id(artifact_id)
        await anyio.to_thread.run_sync(parts_for(self.store).write_pin, artifact_id)
        return rec.model_copy(update={"pinned": True})

    def _view_hits(self, view: str, kind: str | None, labels: dict[str, Any], metric: str | None = None) -> list[Hit]:
        """Hits that may be in ``view``: only the partitions (or the graph segment) the view needs are read, and
        only raw records matching ``kind``/``labels``/``metric`` are considered."""
        ctx, index = self.ctx, parts_for(self.store)
        flt = Filter(kind=kind, node_id=ctx.node_id if view == "node" else None, metric=metric, labels=labels)
        if view == "graph":
            hits = index.graph_hits(ctx.graph_id, flt)
        else:
            if view in ("run", "node"):
                pairs = index.run_records(ctx.graph_id, ctx.run_id, flt)
            else:  # the runs whose facet markers match kind/labels, else (no filter, or an unmarked store) every run
                facet = index.facet_records(kind, labels, flt) if (kind is not None or labels) else None
                pairs = facet if facet is not None else index.all_records(flt)
            hits = [Hit.of(key, rec, metric) for key, rec in pairs if self._matches(rec, view, kind, labels, metric)]
        legacy = legacy_index(self.store)
        if legacy is not None:  # a store written by the old layout and not migrated: read both
            hits += [Hit.of("", rec, metric) for rec in legacy.query(kind, labels)
                     if self._matches(rec, view, kind, labels, metric)]
        return hits


class _ArtifactsSyncView(SyncView):  # type: ignore[type-arg]
    """The artifacts' blocking view: queries (pure store reads) run on the calling thread instead of hopping to the
    portal loop and a worker thread, unless a subclass overrides the async method."""

    __slots__ = ()

    _BLOCKING = ("search", "list", "best", "get_by_id")
    #: In-memory saves with a blocking twin; the async path when a subclass overrides the save or what it calls.
    _SAVES = ("save_text", "save_json", "save_bytes")

    def __getattr__(self, name: str) -> Any:
        target = self._target
        cls = type(target)
        if name in self._BLOCKING and getattr(cls, name) is getattr(ArtifactsService, name) and (
                name == "get_by_id" or cls.search is ArtifactsService.search):
            return getattr(target, f"_{name}_blocking")
        if name in self._SAVES and all(getattr(cls, m) is getattr(ArtifactsService, m)
                                       for m in (name, "_save_data", "_commit")):
            fast = getattr(target, f"_{name}_blocking")

            @functools.wraps(getattr(target, name))
            def blocking(*args: Any, **kwargs: Any) -> Any:
                return fast(*args, **legacy_save_keywords(kwargs))

            return blocking
        return super().__getattr__(name)


def create(ctx: "NodeContext") -> ArtifactsService:
    """Factory used by ``NodeContext.artifacts()``."""
    return ArtifactsService(ctx)


__all__ = ["Artifact", "ArtifactWriter", "ArtifactsService", "blob_key", "create"]
