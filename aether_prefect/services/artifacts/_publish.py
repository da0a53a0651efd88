"""Publish a saved artifact as a Prefect artifact of the current run (markdown, table or link)."""

from __future__ import annotations

import json
import re
from typing import Any

from aether_prefect.services.artifacts._index import Artifact

#: Text up to this size is shown inline as markdown; larger content becomes a link.
MAX_INLINE_TEXT = 64 * 1024
#: A JSON list of records up to this size is shown as a table.
MAX_TABLE_JSON = 256 * 1024
MAX_TABLE_ROWS = 1000
_KEY_MAX = 100


def prefect_key(name: str | None, kind: str) -> str:
    """A Prefect artifact key from the name (else the kind), sanitised to ``[a-z0-9-]``."""
    raw = (name or kind or "artifact").lower()
    key = re.sub(r"[^a-z0-9]+", "-", raw).strip("-")[:_KEY_MAX].strip("-")
    return key or "artifact"


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def describe(art: Artifact) -> str:
    """Markdown description: kind, size, sha256, labels, metrics and where the bytes are."""
    lines = [
        f"**{art.kind}** artifact `{art.name or art.artifact_id[:12]}`, {_human(art.bytes)}"
        + (f", {art.mime}" if art.mime else ""),
        f"- sha256: `{art.sha256}`",
        f"- bytes: [{art.uri}]({art.uri})",
    ]
    if art.labels:
        lines.append("- labels: " + ", ".join(f"`{k}={v}`" for k, v in sorted(art.labels.items())))
    if art.metrics:
        lines.append("- metrics: " + ", ".join(f"`{k}={v:g}`" for k, v in sorted(art.metrics.items())))
    return "\n".join(lines)


def _fence(text: str) -> str:
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return f"{ticks}\n{text}\n{ticks}"


def _table(obj: Any) -> list[dict[str, Any]] | None:
    if isinstance(obj, list) and obj and len(obj) <= MAX_TABLE_ROWS and all(isinstance(r, dict) for r in obj):
        return obj
    return None


def payload(art: Artifact, content: bytes | None, json_obj: Any = None) -> tuple[str, str]:
    """``(type, data)`` for the Prefect artifact: small text inline, a JSON list of records as a table, else a link."""
    link = f"[{art.name or art.kind}]({art.uri})"
    if content is None:
        return "markdown", link
    if json_obj is not None and len(content) <= MAX_TABLE_JSON and _table(json_obj) is not None:
        return "table", content.decode("utf-8")
    is_text = (art.mime or "").startswith(("text/", "application/json"))
    if is_text and len(content) <= MAX_INLINE_TEXT:
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError:
            return "markdown", link
        if "markdown" in (art.mime or "") or (art.name or "").endswith(".md"):
            return "markdown", text
        return "markdown", _fence(text)
    return "markdown", link


async def publish(
    art: Artifact, *, flow_run_id: str | None, task_run_id: str | None, content: bytes | None = None, json_obj: Any = None
) -> str | None:
    """Create the Prefect artifact inside the current run; None (and nothing sent) outside a run."""
    if not flow_run_id and not task_run_id:
        return None
    from aether_prefect._prefect import artifacts as prefect_artifacts

    kind, data = payload(art, content, json_obj)
    return await prefect_artifacts.create_artifact(
        key=prefect_key(art.name, art.kind), type=kind, description=describe(art), data=data,
        flow_run_id=flow_run_id, task_run_id=task_run_id,
    )


def publish_sync(
    art: Artifact, *, flow_run_id: str | None, task_run_id: str | None, content: bytes | None = None, json_obj: Any = None
) -> str | None:
    """Blocking twin of :func:`publish` on the calling thread's Prefect client."""
    if not flow_run_id and not task_run_id:
        return None
    from aether_prefect._prefect import artifacts as prefect_artifacts

    kind, data = payload(art, content, json_obj)
    return prefect_artifacts.create_artifact_sync(
        key=prefect_key(art.name, art.kind), type=kind, description=describe(art), data=data,
        flow_run_id=flow_run_id, task_run_id=task_run_id,
    )


def unpublish_sync(prefect_artifact_id: str) -> None:
    """Blocking twin of :func:`unpublish`."""
    from aether_prefect._prefect import artifacts as prefect_artifacts

    try:
        prefect_artifacts.delete_artifact_sync(prefect_artifact_id)
    except Exception as exc:  # noqa: BLE001 - the save's own error is the one to raise
        import logging

        logging.getLogger("aether_prefect.artifacts").warning(
            "could not delete Prefect artifact %s of a failed save: %s", prefect_artifact_id, exc)


async def unpublish(prefect_artifact_id: str) -> None:
    """Delete a Prefect artifact created for a save whose index write then failed (best effort: a failure is
    logged, and the artifact still points at bytes that exist)."""
    from aether_prefect._prefect import artifacts as prefect_artifacts

    try:
        await prefect_artifacts.delete_artifact(prefect_artifact_id)
    except Exception as exc:  # noqa: BLE001 - the save's own error is the one to raise
        import logging

        logging.getLogger("aether_prefect.artifacts").warning(
            "could not delete Prefect artifact %s of a failed save: %s", prefect_artifact_id, exc)


__all__ = ["describe", "payload", "prefect_key", "publish", "publish_sync", "unpublish", "unpublish_sync"]
