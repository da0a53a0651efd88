"""Integrity checks of the scale scenario, read back from the cluster with nothing but the saved AetherConfig.

Each check returns a ``Check`` (name, ok, detail). They hold after load and after
every fault: every index record has its bytes with a matching sha256, no duplicate
index entries, no half-written blob, every Prefect artifact points at bytes that
exist, one memory summary per completed flow run, exact KV counters and watermarks.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import anyio
from pydantic import BaseModel

from aether_prefect import NodeContext
from aether_prefect.services.artifacts._index import index_for
from aether_prefect.services.artifacts._parts import parts_for
from aether_prefect.services.artifacts import blob_key
from aether_prefect.services.stores.base import ObjectNotFound, ObjectStore
from scale.flows import SUMMARY_KIND, counter_key, watermark_key

_SHA_RE = re.compile(r"sha256: `([0-9a-f]{64})`")


class Check(BaseModel):
    """One promise checked: its name, whether it held, and the evidence."""

    name: str
    ok: bool
    detail: str


class RunInfo(BaseModel):
    """A flow run of the scenario: id, final state, how many shards it fanned out."""

    id: str
    state: str
    n_tasks: int


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _blob_check(store: ObjectStore, sha: str) -> str | None:
    """None if the blob of ``sha`` exists and hashes to it, else what is wrong."""
    try:
        data = store.get_bytes(blob_key(sha))
    except ObjectNotFound:
        return f"{sha[:12]}: no bytes"
    return None if _sha(data) == sha else f"{sha[:12]}: bytes hash to {_sha(data)[:12]}"


def check_index(store: ObjectStore, runs: Sequence[RunInfo]) -> list[Check]:
    """Index records of the runs: bytes present with matching sha256, no duplicates, every shard of a completed run."""
    index = index_for(store)  # the layout before the partitioned index (a cluster store may hold both)
    index.refresh()
    ids = {r.id for r in runs}
    records = [*index.records(), *parts_for(store).all_records()]  # a run's records live in one layout only
    recs = [rec for _key, rec in records if rec.run_id in ids and rec.kind == "shard"]
    bad = [p for p in (_blob_check(store, sha) for sha in {r.sha256 for r in recs}) if p]
    dup = [k for k, n in Counter((r.artifact_id, r.run_id, r.node_id, r.name) for r in recs).items() if n > 1]
    per_run = Counter(r.run_id for r in recs)
    missing = [f"{r.id[:8]}: {per_run.get(r.id, 0)}/{r.n_tasks}" for r in runs
               if r.state == "COMPLETED" and per_run.get(r.id, 0) < r.n_tasks]
    return [
        Check(name="index records have bytes (sha256 ok)", ok=not bad,
              detail=f"{len(recs)} records checked" + (f"; bad: {bad[:5]}" if bad else "")),
        Check(name="no duplicate index entries", ok=not dup,
              detail=(f"{len(dup)} (artifact, run, node) indexed twice, e.g. "
                      + ", ".join(f"{node}@{run[:8]} ({sha[:8]})" for sha, run, node, _name in dup[:3])) if dup else "none"),
        Check(name="every shard of a completed run indexed", ok=not missing,
              detail="all" if not missing else f"short: {missing[:5]}"),
    ]


def check_blobs(store: ObjectStore) -> Check:
    """No half-written blob: every object under artifacts/blobs/ hashes to its own name."""
    bad: list[str] = []
    n = 0
    for key in store.list_keys("artifacts/blobs/"):
        n += 1
        sha = key.rsplit("/", 1)[-1]
        if _sha(store.get_bytes(key)) != sha:
            bad.append(sha[:12])
    return Check(name="no half-written blob", ok=not bad, detail=f"{n} blobs hashed" + (f"; bad: {bad[:5]}" if bad else ""))


async def check_prefect_artifacts(store: ObjectStore, runs: Sequence[RunInfo]) -> Check:
    """Every Prefect artifact of the runs names a sha256 whose bytes exist and match."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from aether_prefect._prefect import prefect_client

    client = await prefect_client()
    shas: list[str] = []
    unparsable = 0
    for chunk in [list(runs[i:i + 20]) for i in range(0, len(runs), 20)]:
        offset = 0
        while True:
            page = await client.read_artifacts(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in chunk])), limit=200, offset=offset)
            for art in page:
                if art.type in (None, "result"):  # Prefect's own result records, not aether artifacts
                    continue
                m = _SHA_RE.search(art.description or "")
                if m:
                    shas.append(m.group(1))
                else:
                    unparsable += 1
            if len(page) < 200:
                break
            offset += 200
    bad = [p for p in [await anyio.to_thread.run_sync(_blob_check, store, s) for s in set(shas)] if p]
    return Check(name="Prefect artifacts point at existing bytes", ok=not bad and unparsable == 0,
                 detail=f"{len(shas)} artifacts checked" + (f"; bad: {bad[:5]}" if bad else "")
                 + (f"; {unparsable} without a sha256" if unparsable else ""))


async def check_memory(ctx: NodeContext, runs: Sequence[RunInfo]) -> Check:
    """The graph-level timeline holds exactly one summary per completed run (at most one for others)."""
    events = await ctx.memory().recent(kinds=[SUMMARY_KIND], limit=10_000)
    count = Counter(str((e.data or {}).get("flow_run_id")) for e in events)
    wrong = [f"{r.id[:8]}={count.get(r.id, 0)}" for r in runs
             if (count.get(r.id, 0) != 1 if r.state == "COMPLETED" else count.get(r.id, 0) > 1)]
    return Check(name="one memory summary per flow run", ok=not wrong,
                 detail=f"{sum(count[r.id] for r in runs)} summaries for {len(runs)} runs"
                 + (f"; wrong: {wrong[:5]}" if wrong else ""))


async def check_kv(ctx: NodeContext, runs: Sequence[RunInfo]) -> Check:
    """Counters and watermarks of completed runs are exactly n_tasks."""
    kv = ctx.kv()
    wrong: list[str] = []
    done = [r for r in runs if r.state == "COMPLETED"]
    for r in done:
        counter: Any = await kv.get(counter_key(r.id))
        mark: Any = await kv.get(watermark_key(r.id))
        if counter != r.n_tasks or mark != r.n_tasks:
            wrong.append(f"{r.id[:8]}: counter={counter} watermark={mark} want {r.n_tasks}")
    return Check(name="KV counters and watermarks exact", ok=not wrong,
                 detail=f"{len(done)} runs checked" + (f"; wrong: {wrong[:5]}" if wrong else ""))


async def check_all(ctx: NodeContext, runs: Sequence[RunInfo]) -> list[Check]:
    """Every integrity check over ``runs`` (``ctx`` opened on the cluster's saved config, graph 'scale-flow')."""
    store = ctx.store()
    checks = await anyio.to_thread.run_sync(check_index, store, runs)
    checks.append(await anyio.to_thread.run_sync(check_blobs, store))
    checks.append(await check_prefect_artifacts(store, runs))
    checks.append(await check_memory(ctx, runs))
    checks.append(await check_kv(ctx, runs))
    return checks
