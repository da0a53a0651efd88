"""AetherGraph's file questions (``ask_files``) and upload inbox (``get_latest_uploads``) on Prefect.

Prefect's pause form cannot carry a file upload, so a file question is a text question whose answer names
the files: local paths (that must exist) or object-store URIs (``file://`` that must exist, ``s3://``).
Local files are saved with ``context.artifacts()`` (copied, as AetherGraph saves Slack uploads as artifacts),
and every file comes back as AetherGraph's ``FileRef`` dict (``id``, ``name``, ``mimetype``, ``size``,
``uri``, ``platform``, ``channel_key``, ``ts``). The upload inbox is per process, run and channel, like
AetherGraph's ephemeral-KV inbox.
"""

from __future__ import annotations

import mimetypes
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_URI = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_STORE_SCHEMES = ("file", "s3")

_lock = threading.Lock()
_inbox: dict[tuple[str, str], list[dict[str, Any]]] = {}


class FilesAnswer(dict):  # type: ignore[type-arg]
    """What ``ask_files`` returns: ``{"text", "files"}`` (AetherGraph 0.1.0a15) that also reads as
    ``result.text`` / ``result.files`` (AetherGraph's newer ``FileInteractionResult``)."""

    @property
    def text(self) -> str:
        return str(self.get("text", ""))

    @property
    def files(self) -> list[dict[str, Any]]:
        return list(self.get("files", []))


def hint(multiple: bool, accept: Sequence[str] | None) -> str:
    """The line added under the prompt telling the person how to answer a file question here."""
    several = ", several separated by new lines or commas" if multiple else " (one file)"
    kinds = f"; expected: {', '.join(accept)}" if accept else ""
    return (f"(Prefect cannot upload files: answer with the path of a file on the worker's machine or a store URI "
            f"(file://..., s3://...){several}{kinds}; leave empty for none)")


def parse(answer: str, multiple: bool) -> tuple[list[str], str | None]:
    """(paths or URIs, None) for a valid answer, else ([], what is wrong). An empty answer names no files."""
    parts = [p.strip().strip("'\"") for p in re.split(r"[\n,]" if multiple else r"\n", answer or "")]
    items = [p for p in parts if p]
    if len(items) > 1 and not multiple:
        return [], f"only one file is asked for, got {len(items)}"
    for item in items:
        m = _URI.match(item)
        if m:
            scheme = m.group(1).lower()
            if scheme not in _STORE_SCHEMES:
                return [], f"{item!r} is not a store URI (file://, s3://) nor a local path"
            if scheme == "file" and not Path(item[len("file://"):]).is_file():
                return [], f"{item!r} names no existing file"
        elif not Path(item).expanduser().is_file():
            return [], f"{item!r} is not an existing file"
    return items, None


async def to_file_refs(ctx: Any, items: Sequence[str], channel_key: str) -> list[dict[str, Any]]:
    """AetherGraph ``FileRef`` dicts for ``items``; local files are saved as artifacts (copied) first."""
    refs: list[dict[str, Any]] = []
    for item in items:
        m = _URI.match(item)
        local = Path(item[len("file://"):] if m and m.group(1).lower() == "file" else item).expanduser() \
            if (not m or m.group(1).lower() == "file") else None
        name = (local.name if local is not None else item.rstrip("/").rsplit("/", 1)[-1]) or "file"
        ref: dict[str, Any] = {
            "name": name, "mimetype": mimetypes.guess_type(name)[0] or "application/octet-stream",
            "platform": "prefect", "channel_key": channel_key, "ts": time.time(),
        }
        if local is not None:
            art = await ctx.artifacts().save_file(str(local), kind="upload", name=name,
                                                  labels={"channel": channel_key})
            ref.update(id=art.artifact_id, uri=art.uri, size=local.stat().st_size)
        else:
            ref.update(id=item, uri=item)
        refs.append(ref)
    return refs


def _inbox_key(ctx: Any, channel_key: str) -> tuple[str, str]:
    return (str(getattr(ctx, "flow_run_id", None) or getattr(ctx, "run_id", None) or ""), channel_key)


def put(ctx: Any, channel_key: str, refs: Sequence[dict[str, Any]]) -> None:
    """Add ``refs`` to the upload inbox of this run and channel."""
    with _lock:
        _inbox.setdefault(_inbox_key(ctx, channel_key), []).extend(dict(r) for r in refs)


def take(ctx: Any, channel_key: str, clear: bool) -> list[dict[str, Any]]:
    """The inbox's files (oldest first); ``clear`` empties it."""
    with _lock:
        key = _inbox_key(ctx, channel_key)
        files = _inbox.pop(key, []) if clear else list(_inbox.get(key, []))
    return [dict(f) for f in files]
