"""Announce a question (or a message) through the configured Prefect notification blocks.

The text carries the prompt with secrets masked, the flow and task, the timeout and the flow run's UI link.
A notification that fails is logged (with the block's type, never its URL) and never fails the task.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

from aether_prefect._prefect import _notify as door
from aether_prefect.services.channel._questions import Question

if TYPE_CHECKING:
    from aether_prefect.context import NodeContext

_SEND_TIMEOUT_S = 15.0
_MASK = "********"
_TOKEN_RES = [
    re.compile(r"\b(sk|pk|rk|xox[abprs]|ghp|gho|github_pat|glpat|AKIA)[-_A-Za-z0-9]{8,}"),
    re.compile(r"(?i)\b(bearer|token|api[_-]?key|password|passwd|secret)(\s*[:=]\s*|\s+)([^\s,;'\"]{4,})"),
    re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"),  # user:pass@ in URLs
]
_ENV_SECRET = re.compile(r"(?i)(key|token|secret|password|passwd|auth)")


def mask_secrets(text: str, ctx: "NodeContext | None" = None) -> str:
    """``text`` with the config's secrets, secret-looking environment values and token-shaped strings masked."""
    from aether_prefect.services.llm import secret_values

    known = secret_values(ctx.config) if ctx is not None else set()
    known |= {v for k, v in os.environ.items() if _ENV_SECRET.search(k) and len(v) >= 8}
    for secret in sorted((s for s in known if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, _MASK)
    text = _TOKEN_RES[0].sub(_MASK, text)
    text = _TOKEN_RES[1].sub(lambda m: f"{m.group(1)}{m.group(2)}{_MASK}", text)
    return _TOKEN_RES[2].sub(_MASK, text)


def question_text(q: Question, ctx: "NodeContext | None") -> tuple[str, str]:
    """(subject, body) announcing ``q``."""
    prompt = mask_secrets(q.prompt, ctx)
    where = " / ".join(x for x in (q.flow_name, q.flow_run_name, q.task_name) if x)
    seconds = (q.timeout_at - q.asked_at).total_seconds()
    lines = [f"Question: {prompt}"]
    if q.options:
        lines.append("Options: " + ", ".join(o.label for o in q.options) + (" (several allowed)" if q.multiple else ""))
    lines += [
        f"Asked by: {where or 'a flow run'} (flow run {q.flow_run_id})",
        f"Times out: {q.timeout_at.isoformat(timespec='seconds')} (in {seconds:g}s)",
        f"Answer in the UI: {q.ui_url}" if q.ui_url else "Answer in the UI: (no UI URL: set PREFECT_UI_URL)",
        f"Or: aether-prefect answer {q.flow_run_id} " + {"text": "--text ...", "approval": "--approve | --reject --reason ...",
                                                         "choices": "--choice ..."}[q.kind],
    ]
    return f"Waiting for an answer: {mask_secrets(q.prompt, ctx)[:80]}", "\n".join(lines)


async def resolve(targets: Sequence[Any]) -> list[tuple[str, Any]]:
    """(label, block) for each configured target; a name that cannot be loaded is logged and skipped."""
    out: list[tuple[str, Any]] = []
    for t in targets:
        if isinstance(t, str):
            try:
                out.append((t, await door.load_notification_block(t)))
            except Exception as exc:  # noqa: BLE001 - a missing block must not fail the task
                _log().warning("notification block %r could not be loaded (%s); skipped", t, type(exc).__name__)
        else:
            out.append((type(t).__name__, t))
    return out


async def send_all(targets: Sequence[Any], subject: str, body: str, logger: Any = None) -> list[str]:
    """Send through every target concurrently; returns the labels that failed (each logged, none raised)."""
    failed: list[str] = []
    log = logger or _log()
    blocks = await resolve(targets)
    failed += [t for t in targets if isinstance(t, str) and t not in {label for label, _ in blocks}]

    async def one(label: str, block: Any) -> None:
        try:
            with anyio.fail_after(_SEND_TIMEOUT_S):
                await door.send(block, body, subject)
        except Exception as exc:  # noqa: BLE001 - a failing notification never fails the task
            failed.append(label)
            log.warning(f"notification through {label} failed ({type(exc).__name__}); the question still waits")

    async with anyio.create_task_group() as tg:
        for label, block in blocks:
            tg.start_soon(one, label, block)
    return failed


def _log() -> Any:
    import logging

    return logging.getLogger("aether_prefect.channel")
