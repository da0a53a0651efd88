"""The tasks the scale flows fan out; an importable module (``scale.work``) so Dask workers can unpickle them."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from prefect import task

from aether_prefect import NodeContext, aether_task

#: Retries of one shard: enough to ride out a few seconds of S3 or API outage.
SHARD_RETRIES = 6
SHARD_RETRY_DELAY_S = 2


def make_rows(batch: str, index: int, rows: int, salt: str) -> list[dict[str, Any]]:
    """Deterministic rows of one shard (``salt`` makes each flow run's bytes distinct)."""
    return [
        {"batch": batch, "shard": index, "row": j, "salt": salt,
         "value": int(hashlib.sha256(f"{salt}:{index}:{j}".encode()).hexdigest()[:6], 16) % 1000}
        for j in range(rows)
    ]


@aether_task(retries=SHARD_RETRIES, retry_delay_seconds=SHARD_RETRY_DELAY_S, persist_result=True,
             task_run_name="shard-{index}")
def shard(batch: str, index: int, counter: str, salt: str, rows: int = 200, hold_s: float = 0.0, *,
          context: NodeContext) -> dict[str, Any]:
    """Build one shard, save it as a JSON artifact (S3 + Prefect artifact), then count it in the KV."""
    data = make_rows(batch, index, rows, salt)
    if hold_s:
        time.sleep(hold_s)
    art = context.artifacts().sync.save_json(data, kind="shard", name=f"shard-{index}",
                                             labels={"batch": batch, "shard": index})
    context.kv().sync.incr(counter)
    return {"index": index, "rows": len(data), "sha256": art.sha256, "uri": art.uri}


@task(retries=SHARD_RETRIES, retry_delay_seconds=SHARD_RETRY_DELAY_S, persist_result=True,
      task_run_name="bare-shard-{index}")
def bare_shard(batch: str, index: int, counter: str, salt: str, rows: int = 200, hold_s: float = 0.0) -> dict[str, Any]:
    """The same shard as a bare Prefect task: same rows and hashing, no aether services."""
    data = make_rows(batch, index, rows, salt)
    if hold_s:
        time.sleep(hold_s)
    body = json.dumps(data).encode()
    return {"index": index, "rows": len(data), "sha256": hashlib.sha256(body).hexdigest(), "uri": None}
