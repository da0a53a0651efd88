"""LLM usage accounting: calls and tokens per profile and model, one table artifact per task run and per flow run.

Each context has one ``UsageTracker`` (``ctx._service("llm-usage", ...)``); closing the context publishes the
task run's table. ``publish_flow_usage`` sums every task table of a flow run (whichever process wrote it,
read back from the Prefect API) into one table keyed ``llm-usage-<flow name>``.
"""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from aether_prefect.services.journal import call_usage

if TYPE_CHECKING:
    from aether_prefect.context import NodeContext

_log = logging.getLogger("aether_prefect.llm")

#: metadata_ marker of the tables this module writes.
MARK_KEY = "aether_prefect"
TASK_MARK = "llm-usage-task"
FLOW_MARK = "llm-usage-flow"
COLUMNS = ["profile", "model", "calls", "prompt_tokens", "completion_tokens", "total_tokens", "replayed",
           "tokens_saved"]


class Usage(BaseModel):
    """Tokens of one or more calls, whatever the provider named them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def from_provider(cls, raw: Any) -> "Usage":
        """Normalise OpenAI (prompt/completion), Responses/Anthropic (input/output) and Ollama (eval counts) usage."""
        if not isinstance(raw, dict):
            return cls()

        def pick(*names: str) -> int:
            for n in names:
                v = raw.get(n)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    return int(v)
            return 0

        prompt = pick("prompt_tokens", "input_tokens", "prompt_eval_count")
        completion = pick("completion_tokens", "output_tokens", "eval_count")
        total = pick("total_tokens") or prompt + completion
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total)

    @classmethod
    def billed(cls, reported: "Usage", messages: list[dict[str, Any]], pieces: list[str]) -> "Usage":
        """Usage of a stream: what the provider reported, else (no usage chunk came) an estimate.

        The estimate counts about 4 characters per prompt token and one token per streamed piece, so billed
        tokens still reach budgets and usage tables when a stream stops part-way or its usage never arrives.
        """
        if reported.total_tokens or not pieces:
            return reported
        chars = sum(len(m["content"]) if isinstance(m.get("content"), str) else len(json.dumps(m.get("content")))
                    for m in messages)
        prompt, completion = -(-chars // 4), len(pieces)
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
        )

    def as_dict(self) -> dict[str, int]:
        """The ``usage`` dict returned by chat(): prompt_tokens, completion_tokens, total_tokens."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}


class UsageRow(BaseModel):
    """One table row: calls and tokens of one profile and model."""

    profile: str
    model: str
    calls: int = Field(default=0, ge=0)
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    total_tokens: int = Field(default=0, ge=0)
    replayed: int = Field(default=0, ge=0, description="Calls replayed from the journal: no request, no tokens.")
    tokens_saved: int = Field(default=0, ge=0, description="Tokens the replayed calls cost when they first ran.")

    def add(self, usage: Usage, calls: int = 1) -> None:
        """Count ``calls`` more calls and their tokens."""
        self.calls += calls
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.total_tokens += usage.total_tokens

    def add_replayed(self, replayed: int, tokens_saved: int) -> None:
        """Count replayed calls: zero tokens spent, ``tokens_saved`` not paid again."""
        self.replayed += replayed
        self.tokens_saved += tokens_saved


def _sum_rows(rows: list[UsageRow]) -> list[UsageRow]:
    """Rows merged per (profile, model), sorted."""
    merged: dict[tuple[str, str], UsageRow] = {}
    for r in rows:
        acc = merged.setdefault((r.profile, r.model), UsageRow(profile=r.profile, model=r.model))
        acc.add(Usage(prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens,
                      total_tokens=r.total_tokens), calls=r.calls)
        acc.add_replayed(r.replayed, r.tokens_saved)
    return [merged[k] for k in sorted(merged)]


class UsageTracker:
    """Calls and tokens of one context (one task run attempt), per profile and model; published on close."""

    def __init__(self, ctx: "NodeContext") -> None:
        self._ctx = ctx
        # Per (profile, model): [calls, prompt, completion, total, replayed, tokens_saved] as plain ints (a
        # pydantic row per update cost more than the rest of the accounting); rows() builds UsageRows.
        self._rows: dict[tuple[str, str], list[int]] = {}
        self.published_artifact_id: str | None = None

    def record(self, profile: str, model: str, usage: Usage) -> None:
        """Count one call of ``profile``/``model`` with its usage."""
        key = (profile, model or "?")
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = [0] * 6
        row[0] += 1
        row[1] += usage.prompt_tokens
        row[2] += usage.completion_tokens
        row[3] += usage.total_tokens
        sink = call_usage.get()  # inside a journaled call: its entry keeps the usage
        if sink is not None:
            sink.append((profile, model, usage.prompt_tokens, usage.completion_tokens, usage.total_tokens))

    def record_replayed(self, profile: str, model: str, saved: Usage) -> None:
        """Count one call replayed from the journal: no tokens spent, ``saved`` tokens not paid again."""
        row = self._rows.setdefault((profile, model or "?"), [0] * 6)
        row[4] += 1
        row[5] += saved.total_tokens

    def rows(self) -> list[UsageRow]:
        """The rows, sorted by profile and model."""
        return [UsageRow(profile=p, model=m, **dict(zip(COLUMNS[2:], self._rows[(p, m)]))) for p, m in sorted(self._rows)]

    async def aclose(self) -> None:
        """Publish the table once, if calls were made inside a Prefect run."""
        if not self._rows or not self._ctx.flow_run_id or self.published_artifact_id:
            return
        from aether_prefect._prefect import artifacts as prefect_artifacts

        scope = f"task run {self._ctx.node_id}" if self._ctx.task_run_id else "the flow body"
        self.published_artifact_id = await prefect_artifacts.create_artifact(
            type="table",
            data=json.dumps([r.model_dump() for r in self.rows()]),
            description=f"LLM usage of {scope}: calls and tokens per profile and model (aether-prefect).",
            metadata={MARK_KEY: TASK_MARK},
            flow_run_id=self._ctx.flow_run_id,
            task_run_id=self._ctx.task_run_id,
        )


def tracker(ctx: "NodeContext") -> UsageTracker:
    """The context's one UsageTracker (created on first use, closed with the context)."""
    return ctx._service("llm-usage", lambda: UsageTracker(ctx))  # type: ignore[no-any-return]


def flow_usage_key(flow_name: str) -> str:
    """Artifact key of a flow's roll-up table: ``llm-usage-<flow name>`` sanitised to [a-z0-9-]."""
    slug = re.sub(r"[^a-z0-9-]+", "-", flow_name.lower()).strip("-") or "flow"
    return f"llm-usage-{slug}"[:200]


def _rows_of(data: Any) -> list[UsageRow]:
    """UsageRows from a stored table artifact's data (JSON list of records)."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            return []
    if not isinstance(data, list):
        return []
    rows = []
    for item in data:
        try:
            rows.append(UsageRow.model_validate(item))
        except ValueError:
            continue
    return rows


async def read_task_tables(flow_run_id: str) -> list[list[UsageRow]]:
    """The usage tables that contexts of this flow run published (task runs and the flow body).

    They have no key, so only unkeyed tables are read (#21: the roll-up at the end of every @aether_flow no longer
    downloads the run's keyed tables, e.g. every ``save_json`` of a list of records)."""
    from aether_prefect._prefect import artifacts as prefect_artifacts

    found = await prefect_artifacts.read_artifacts(flow_run_id=flow_run_id, type="table", unkeyed=True)
    return [_rows_of(art.data) for art in found if (art.metadata_ or {}).get(MARK_KEY) == TASK_MARK]


async def read_flow_usage(flow_run_id: str) -> list[UsageRow]:
    """Calls and tokens of a whole flow run, per profile and model, summed from its task tables."""
    return _sum_rows([r for table in await read_task_tables(flow_run_id) for r in table])


async def publish_flow_usage(flow_run_id: str, *, flow_name: str | None = None, quiet: bool = False) -> list[UsageRow]:
    """Publish the flow run's roll-up table (key ``llm-usage-<flow name>``); call it at the end of a plain @flow.

    Returns the rows. ``quiet=True`` (used by @aether_flow) publishes nothing when no LLM call was made and
    logs instead of raising on API errors.
    """
    try:
        return await _publish_flow_usage(flow_run_id, flow_name=flow_name, quiet=quiet)
    except Exception as exc:
        if not quiet:
            raise
        _log.warning("could not publish the LLM usage roll-up of flow run %s: %s", flow_run_id, exc)
        return []


async def _publish_flow_usage(flow_run_id: str, *, flow_name: str | None, quiet: bool) -> list[UsageRow]:
    from aether_prefect._prefect import artifacts as prefect_artifacts

    tables = await read_task_tables(flow_run_id)
    rows = _sum_rows([r for t in tables for r in t])
    if quiet and not rows:
        return rows
    if flow_name is None:
        flow_name = await prefect_artifacts.flow_name_of(flow_run_id)
    cached = await prefect_artifacts.count_cached_task_runs(flow_run_id)
    total = _sum_rows([UsageRow(profile="TOTAL", model="*", **{k: getattr(r, k) for k in COLUMNS[2:]}) for r in rows])
    await prefect_artifacts.create_artifact(
        key=flow_usage_key(flow_name),
        type="table",
        data=json.dumps([r.model_dump() for r in rows + total]),
        description=(
            f"LLM usage of flow run {flow_run_id} ({flow_name}): {len(tables)} usage table(s) summed"
            + (f"; {cached} task run(s) came from Prefect's cache and added no tokens" if cached else "")
            + " (aether-prefect)."
        ),
        metadata={MARK_KEY: FLOW_MARK},
        flow_run_id=flow_run_id,
    )
    return rows
