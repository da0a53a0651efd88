"""AetherGraph's older artifact spellings: ``save``, ``tmp_path``, ``to_local_path``, ``load_artifact``, ...

Mixed into :class:`ArtifactsService`. Every call maps onto the service's own methods, so the defect
fixes hold: ``save``/``save_file`` copy and never delete the source (AetherGraph's ``cleanup=True``
default is not copied), and loads verify the sha256.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from aether_prefect.errors import ArtifactNotFound, ValidationError
from aether_prefect.services._legacy import Adapter, LegacyKeywords, name_from_uri, tags_into_labels

if TYPE_CHECKING:
    from aether_prefect.services.artifacts._index import Artifact

# AetherGraph's scope levels -> our views. user/org/session span runs: the closest view is "all".
_LEVEL_TO_VIEW = {"node": "node", "run": "run", "graph": "graph", "all": "all", "scope": "run",
                  "session": "all", "user": "all", "org": "all"}


def _view_of_level(level: str | None, kw: dict[str, Any]) -> None:
    if level is None or "view" in kw or "scope" in kw:
        return
    if level not in _LEVEL_TO_VIEW:
        raise ValidationError(f"level must be one of {sorted(_LEVEL_TO_VIEW)}, got {level!r}")
    kw["view"] = _LEVEL_TO_VIEW[level]


def legacy_save_keywords(kw: dict[str, Any]) -> dict[str, Any]:
    """A save's keywords with AetherGraph's ``suggested_uri=`` and ``tags=`` mapped onto ``name=`` and ``labels=``."""
    kw = dict(kw)
    suggested_uri = kw.pop("suggested_uri", None)
    tags = kw.pop("tags", None)
    if kw.get("name") is None and suggested_uri is not None:
        kw["name"] = name_from_uri(suggested_uri)
    if tags:
        kw["labels"] = tags_into_labels(kw.get("labels"), tags)
    return kw


async def _save_legacy(self: Any, fn: Any, *args: Any, **kw: Any) -> Any:
    """``save_text/save_json/save_file(..., suggested_uri=, tags=)``: the uri's file name becomes ``name``."""
    return await fn(self, *args, **legacy_save_keywords(kw))


async def _query_legacy(self: Any, fn: Any, *args: Any, filters: dict[str, Any] | None = None,
                        level: str | None = None, metric_mode: str | None = None,
                        tags: list[str] | None = None, **kw: Any) -> Any:
    """``best/search(..., filters=, level=, metric_mode=, tags=)``: label filters, scope level, sort mode."""
    if filters:
        kw["labels"] = {**filters, **(kw.get("labels") or {})}
    if tags:
        kw["labels"] = tags_into_labels(kw.get("labels"), tags)
    if metric_mode is not None and "mode" not in kw:
        kw["mode"] = metric_mode
    _view_of_level(level, kw)
    return await fn(self, *args, **kw)


class ArtifactsCompat(LegacyKeywords):
    """AetherGraph's deprecated-but-used artifact methods, each mapped onto ours."""

    _LEGACY: dict[str, Adapter] = {
        "save_text": _save_legacy,
        "save_json": _save_legacy,
        "save_bytes": _save_legacy,
        "save_file": _save_legacy,
        "best": _query_legacy,
        "search": _query_legacy,
    }

    _tmp_dir: str | None = None

    async def save(
        self, path: str | os.PathLike[str], *, kind: str, labels: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None, suggested_uri: str | None = None, pin: bool = False,
        name: str | None = None,
    ) -> "Artifact":
        """AetherGraph's ``save(path, kind=...)``: ``save_file`` (copies; the source file is kept).

        >>> art = await context.artifacts().save("plot.png", kind="image", suggested_uri="./plot.png")
        """
        return await self.save_file(path, kind=kind, labels=labels, metrics=metrics, pin=pin,  # type: ignore[attr-defined]
                                    name=name or name_from_uri(suggested_uri))

    ingest = save
    ingest_file = save

    async def tmp_path(self, suffix: str = "") -> str:
        """A fresh file path in this context's temp folder (deleted when the context closes).

        >>> p = await context.artifacts().tmp_path(suffix=".png")
        """
        if not isinstance(suffix, str) or "/" in suffix or "\\" in suffix:
            raise ValidationError(f"suffix must be a str without path separators such as '.png', got {suffix!r}")
        if self._tmp_dir is None:
            self._tmp_dir = tempfile.mkdtemp(prefix="aether-tmp-")
        fd, path = tempfile.mkstemp(suffix=suffix, dir=self._tmp_dir)
        os.close(fd)
        os.unlink(path)  # AetherGraph hands out a path to write, not an open file
        return path

    stage_path = tmp_path
    stage = tmp_path

    def to_local_path(self, uri_or_path: "str | os.PathLike[str] | Artifact", *, must_exist: bool = True) -> str:
        """A local filesystem path for a ``file://`` URI, a path, or an artifact of a local store.

        Remote URIs (``s3://...``) come back unchanged, as in AetherGraph; use ``await as_local_file(...)``
        for a verified local copy from any store.

        >>> path = context.artifacts().to_local_path(art.uri)
        """
        from aether_prefect.services.artifacts._index import Artifact

        s = uri_or_path.uri if isinstance(uri_or_path, Artifact) else os.fspath(uri_or_path)
        if not isinstance(s, str) or not s:
            raise ValidationError(f"to_local_path takes a path, a file:// uri or an Artifact, got {uri_or_path!r}")
        parsed = urlparse(s)
        if "://" in s and parsed.scheme.lower() != "file":
            return s
        p = Path(unquote(parsed.path) if parsed.scheme.lower() == "file" else s).expanduser().resolve()
        if must_exist and not p.exists():
            raise ArtifactNotFound(f"no local file at {str(p)!r} (for {s!r}); pass must_exist=False to get the path anyway")
        return str(p)

    def to_local_file(self, artifact: "str | os.PathLike[str] | Artifact", *, must_exist: bool = True) -> str:
        """Like :meth:`to_local_path`, and the path must be a file.

        >>> path = context.artifacts().to_local_file(art)
        """
        p = self.to_local_path(artifact, must_exist=must_exist)
        if must_exist and "://" not in p and not Path(p).is_file():
            raise ValidationError(f"expected a file, got a directory: {p}")
        return p

    async def write_text(self, name: str, content: str, *, kind: str = "text",
                         labels: dict[str, Any] | None = None) -> str:
        """The spelling AetherGraph's concept guide uses: save ``content`` as a text artifact named ``name``; its URI.

        >>> ref = await context.artifacts().write_text("spec.json", content='{"steps": 3}')
        """
        if not isinstance(name, str) or not name.strip():
            raise ValidationError(f"write_text needs a file name such as 'result.txt' first, got {name!r}")
        art = await self.save_text(content, kind=kind, name=name, labels=labels)  # type: ignore[attr-defined]
        return str(art.uri)

    async def load_artifact(self, uri: str) -> bytes:
        """AetherGraph's compatibility loader: the artifact's bytes (sha256-verified), like ``load_bytes``.

        >>> data = await context.artifacts().load_artifact(art.uri)
        """
        return await self.load_bytes(uri)  # type: ignore[attr-defined,no-any-return]

    async def load_artifact_bytes(self, uri: str) -> bytes:
        """AetherGraph's older name of ``load_bytes(uri)``.

        >>> data = await context.artifacts().load_artifact_bytes(art.uri)
        """
        return await self.load_bytes(uri)  # type: ignore[attr-defined,no-any-return]

    async def aclose(self) -> None:
        """Remove this context's ``tmp_path`` folder, then close as usual.

        Example: ``await context.artifacts().aclose()  # NodeContext.aclose() does this for you``
        """
        tmp, self._tmp_dir = self._tmp_dir, None
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        await super().aclose()  # type: ignore[misc]

    def close_blocking(self) -> bool:
        """:meth:`aclose` on the calling thread (it removes a folder, nothing more); False if a subclass overrides it.

        Example: ``context.artifacts().close_blocking()  # NodeContext.close_nowait() does this for you``
        """
        if type(self).aclose is not ArtifactsCompat.aclose:
            return False
        tmp, self._tmp_dir = self._tmp_dir, None
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        return True
