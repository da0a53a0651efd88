"""Incremental data prep: validate, clean and de-duplicate new orders, with every service of the context.

Run it: ``python flows/data_prep.py`` (embedded defaults: local Prefect API and
object store). Run it twice: the KV watermark makes the second run skip what the
first one processed. Options: ``--source PATH``, ``--chunk-size N``.
"""

from __future__ import annotations

import os

# The in-process Prefect server's first start on a fresh PREFECT_HOME runs migrations and can take
# longer than Prefect's 20 s default; give it room (set before Prefect is imported).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import argparse
import csv
import io
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from pydantic import BaseModel, Field, ValidationError, field_validator

if __package__ in (None, ""):  # `python flows/data_prep.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aether_prefect import NodeContext, ServiceNotConfigured, aether_flow, aether_task

DEFAULT_SOURCE = str(Path(__file__).resolve().parent / "data" / "orders.csv")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$")


class Order(BaseModel):
    """One valid order row after cleaning."""

    order_id: int = Field(gt=0)
    customer: str = Field(min_length=1)
    email: str
    amount: float = Field(ge=0)
    currency: Literal["EUR", "USD", "GBP"]
    created_at: datetime

    @field_validator("customer", mode="before")
    @classmethod
    def _name(cls, v: str) -> str:
        return " ".join(str(v).split()).title()

    @field_validator("email", mode="before")
    @classmethod
    def _email(cls, v: str) -> str:
        v = str(v).strip().lower()
        if not _EMAIL.match(v):
            raise ValueError("not an email address")
        return v


def _watermark_key(source: str) -> str:
    return f"data-prep/watermark/{Path(source).name}"


@aether_task(task_run_name="load-new-rows")
def load_new_rows(source: str, *, context: NodeContext) -> tuple[list[dict[str, Any]], int]:
    """Read the source and keep rows newer than the KV watermark (the last order_id processed)."""
    watermark = int(context.kv().sync.get(_watermark_key(source), 0) or 0)
    with open(source, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("order_id", "").isdigit() and int(r["order_id"]) > watermark]
    context.logger().info("%d new rows after watermark %d in %s", len(rows), watermark, Path(source).name)
    return rows, watermark


@aether_task(task_run_name="clean-chunk-{index}", retries=2, retry_delay_seconds=1)
def clean_chunk(rows: list[dict[str, Any]], index: int, *, context: NodeContext) -> dict[str, Any]:
    """Validate and clean one chunk; de-duplicate within it. Returns valid orders and rejected rows."""
    valid: dict[int, dict[str, Any]] = {}
    rejected: list[dict[str, Any]] = []
    duplicates = 0
    for raw in rows:
        try:
            order = Order.model_validate(raw)
        except ValidationError as exc:
            reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            rejected.append({**raw, "reasons": reasons})
            continue
        if order.order_id in valid:
            duplicates += 1
            continue
        valid[order.order_id] = order.model_dump(mode="json")
    context.logger().info("chunk %d: %d valid, %d rejected, %d duplicates", index, len(valid), len(rejected), duplicates)
    return {"valid": list(valid.values()), "rejected": rejected, "duplicates": duplicates}


@aether_task(task_run_name="publish-results")
def publish(source: str, results: list[dict[str, Any]], watermark: int, rows_in: int, *,
            context: NodeContext) -> dict[str, Any]:
    """Merge chunks, save the output and rejects as artifacts, advance the watermark, publish a summary."""
    arts = context.artifacts().sync
    merged: dict[int, dict[str, Any]] = {}
    duplicates = sum(r["duplicates"] for r in results)
    for r in results:
        for order in r["valid"]:
            if order["order_id"] in merged:
                duplicates += 1
            merged[order["order_id"]] = order
    rejected = [row for r in results for row in r["rejected"]]
    orders = [merged[k] for k in sorted(merged)]

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(Order.model_fields))
    writer.writeheader()
    writer.writerows(orders)
    dataset = arts.save_text(out.getvalue(), kind="dataset", name="clean-orders",
                             labels={"source": Path(source).name}, metrics={"rows": len(orders)})
    if rejected:
        arts.save_json(rejected, kind="rejected", name="rejected-orders", labels={"source": Path(source).name},
                       metrics={"rows": len(rejected)})
    seen_ids = [int(r["order_id"]) for res in results for r in res["valid"] + res["rejected"]
                if str(r.get("order_id", "")).isdigit()]
    new_watermark = max([watermark, *seen_ids])
    context.kv().sync.set(_watermark_key(source), new_watermark)
    summary = {
        "source": Path(source).name, "rows_in": rows_in,
        "valid": len(orders), "rejected": len(rejected), "duplicates": duplicates,
        "watermark_before": watermark, "watermark_after": new_watermark,
        "output_artifact": dataset.artifact_id, "total_amount": round(sum(o["amount"] for o in orders), 2),
    }
    arts.save_json([summary], kind="summary", name="data-prep-summary")
    return summary


@aether_task(task_run_name="remember-run", memory_level="graph")
def remember(summary: dict[str, Any], *, context: NodeContext) -> str | None:
    """Record the run summary on the flow's graph-level timeline; add an LLM summary if one is configured."""
    mem = context.memory().sync
    mem.record("run_summary", summary, tags=["data-prep"], metrics={"valid": summary["valid"]})
    try:
        llm = context.llm()
    except ServiceNotConfigured:
        context.logger().info("no LLM configured: skipping the LLM summary")
        return None
    previous = [e.data for e in mem.recent(kinds=["run_summary"], limit=5)]
    text, _usage = llm.sync.chat([
        {"role": "system", "content": "You summarise data-prep runs for an operator in two sentences."},
        {"role": "user", "content": f"This run: {summary}. Recent runs: {previous}"},
    ])
    context.artifacts().sync.save_text(text, kind="llm-summary", name="llm-summary")
    return text


@aether_flow(name="data-prep", log_prints=True)
def data_prep(source: str = DEFAULT_SOURCE, chunk_size: int = 50, *, context: NodeContext) -> dict[str, Any]:
    """Process the orders added to ``source`` since the last run."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    if not Path(source).is_file():
        raise FileNotFoundError(f"source {source!r} does not exist; pass --source PATH to a CSV of orders")
    rows, watermark = load_new_rows(source)
    if not rows:
        context.logger().info("nothing new since watermark %d: done", watermark)
        return {"source": Path(source).name, "rows_in": 0, "valid": 0, "rejected": 0, "duplicates": 0,
                "watermark_before": watermark, "watermark_after": watermark}
    chunks = [rows[i : i + chunk_size] for i in range(0, len(rows), chunk_size)]
    futures = clean_chunk.map(chunks, list(range(len(chunks))))
    progress = create_progress_artifact(0.0, key="data-prep-progress", description="chunks cleaned")
    results = []
    for done, fut in enumerate(futures, start=1):
        results.append(fut.result())
        update_progress_artifact(progress, 100.0 * done / len(chunks))
    summary = publish(source, results, watermark, len(rows))
    remember(summary)
    print(f"data-prep: {summary['valid']} valid, {summary['rejected']} rejected, "
          f"{summary['duplicates']} duplicates; watermark {watermark} -> {summary['watermark_after']}")
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=DEFAULT_SOURCE)
    parser.add_argument("--chunk-size", type=int, default=50)
    args = parser.parse_args(argv)
    return data_prep(source=args.source, chunk_size=args.chunk_size)


if __name__ == "__main__":
    main()
