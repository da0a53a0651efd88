"""The tasks the scale flows fan out; an importable module (``scale.work``) so Dask workers can unpickle them."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import time
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.variables import Variable

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


@functools.cache
def hand_s3() -> tuple[Any, str, str]:
    """(boto3 client, bucket, key prefix) of the cluster's S3, as hand-written code would hold them: the saved
    config's store block loaded once per process and one boto3 client per process."""
    import boto3

    from aether_prefect.blocks import AetherConfig

    block = AetherConfig.load(os.environ["AETHER_PREFECT_CONFIG"]).store  # type: ignore[union-attr]
    secret = block.aws_secret_access_key.get_secret_value() if block.aws_secret_access_key else None
    client = boto3.session.Session(region_name=block.region, aws_access_key_id=block.aws_access_key_id,
                                   aws_secret_access_key=secret).client("s3", endpoint_url=block.endpoint_url)
    return client, str(block.bucket), block.prefix.strip("/")


def hand_variable(flow_run_id: str, what: str) -> str:
    """A Prefect Variable name for the hand-written flow's counter or watermark (``[a-z0-9_-]``)."""
    return f"hand-{flow_run_id}-{what}"


def hand_put(key: str, body: bytes) -> str:
    """PUT ``body`` under ``key`` (with S3's SHA256 check), as hand-written code would; returns its s3:// URI."""
    client, bucket, prefix = hand_s3()
    full = f"{prefix}/{key}" if prefix else key
    digest = hashlib.sha256(body).digest()
    client.put_object(Bucket=bucket, Key=full, Body=body, ContentType="application/json",
                      ChecksumSHA256=base64.b64encode(digest).decode())
    return f"s3://{bucket}/{full}"


@task(retries=SHARD_RETRIES, retry_delay_seconds=SHARD_RETRY_DELAY_S, persist_result=True,
      task_run_name="hand-shard-{index}")
def hand_shard(batch: str, index: int, counter: str, salt: str, rows: int = 200, hold_s: float = 0.0) -> dict[str, Any]:
    """The shard's work written by hand with bare Prefect and boto3 (the baseline of the cluster ratio, #21): the
    JSON to S3 (one PUT), a markdown Prefect artifact linking it, and a counter as a Variable read and write
    (not atomic: concurrent shards can lose increments, which the aether KV's locked ``incr`` does not)."""
    data = make_rows(batch, index, rows, salt)
    if hold_s:
        time.sleep(hold_s)
    body = json.dumps(data).encode()
    sha = hashlib.sha256(body).hexdigest()
    uri = hand_put(f"hand/{sha[:2]}/{sha}", body)
    create_markdown_artifact(f"[shard-{index}]({uri})\n\n- sha256: `{sha}`\n- rows: {len(data)}", key=f"shard-{index}")
    Variable.set(counter, int(Variable.get(counter, default=0) or 0) + 1, overwrite=True)  # type: ignore[arg-type]
    return {"index": index, "rows": len(data), "sha256": sha, "uri": uri}
