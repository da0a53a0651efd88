"""Cluster setup, run against the cluster's API: S3 bucket, blocks, saved AetherConfig, work pool, deployments.

Idempotent; ``scale.cluster`` runs it as ``python -m scale.setup --state <root>/pids.json``
with ``PREFECT_API_URL`` pointing at the cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from scale.cluster import REPO, ClusterState

#: Credentials of the moto endpoint (moto accepts any); stored in the block, never in worker env.
S3_KEY_ID = "scale-access-key"
S3_SECRET = "scale-secret-key"
#: (entrypoint, deployment name) of the flows the cluster deploys.
DEPLOYMENTS = [
    ("scale/flows.py:scale_flow", "scale"),
    ("scale/flows.py:bare_flow", "scale"),
    ("scale/flows.py:hand_flow", "scale"),
]
EXAMPLE = ("flows/data_prep.py", "data-prep")


def ensure_bucket(state: ClusterState) -> None:
    """Create the bucket on moto unless it exists (moto forgets buckets when it restarts)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=state.s3_url, region_name="us-east-1",
                      aws_access_key_id=S3_KEY_ID, aws_secret_access_key=S3_SECRET)
    names = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if state.bucket not in names:
        s3.create_bucket(Bucket=state.bucket)


def save_config(state: ClusterState) -> None:
    """Register the aether blocks and save the AetherConfig the workers load by name."""
    from pydantic import SecretStr

    from aether_prefect.blocks import AetherConfig, AetherLLMProfile, AetherMCPServer, AetherObjectStore

    for cls in (AetherLLMProfile, AetherObjectStore, AetherMCPServer, AetherConfig):
        cls.register_type_and_schema()
    store = AetherObjectStore(
        backend="s3", bucket=state.bucket, prefix="aether", endpoint_url=state.s3_url, region="us-east-1",
        aws_access_key_id=S3_KEY_ID, aws_secret_access_key=SecretStr(S3_SECRET),
    )
    AetherConfig(store=store, kv_namespace=state.kv_namespace).save(state.config_name, overwrite=True)


async def ensure_pool(state: ClusterState) -> None:
    """Create the ``process`` work pool unless it exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    async with get_client() as client:
        try:
            await client.create_work_pool(WorkPoolCreate(name=state.pool, type="process"))
        except ObjectAlreadyExists:
            pass


def deploy(state: ClusterState) -> list[str]:
    """Deploy the scale flows (and the example data-prep flow when present) to the pool from this repo."""
    from prefect import Flow
    from prefect.flows import load_flow_from_entrypoint

    done: list[str] = []
    targets = list(DEPLOYMENTS)
    example = REPO / EXAMPLE[0]
    if example.exists():
        targets += [(f"{EXAMPLE[0]}:{name}", EXAMPLE[1]) for name in _flow_names(example)]
    for entrypoint, name in targets:
        try:
            flow = load_flow_from_entrypoint(str(REPO / entrypoint), use_placeholder_flow=False)
            assert isinstance(flow, Flow)
            source = flow.from_source(source=str(REPO), entrypoint=entrypoint)
            source.deploy(name=name, work_pool_name=state.pool, build=False, push=False, print_next_steps=False)  # type: ignore[union-attr]
            done.append(f"{flow.name}/{name}")
        except Exception as exc:  # the example flow is optional; ours are not
            if entrypoint.startswith("scale/"):
                raise
            print(f"warning: could not deploy {entrypoint}: {exc}", file=sys.stderr)
    return done


async def queue_first_run(state: ClusterState) -> str:
    """Queue one run of scale-flow, so a fresh cluster's UI shows a run with its artifacts."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        dep = await client.read_deployment_by_name("scale-flow/scale")
        run = await client.create_flow_run_from_deployment(dep.id, parameters={"batch": "first-run"}, tags=["first-run"])
        return str(run.id)


def _flow_names(path: Path) -> list[str]:
    """Names of the module-level flow objects in a script, read without running it."""
    import ast

    names: list[str] = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for dec in node.decorator_list:
                target = dec.func if isinstance(dec, ast.Call) else dec
                if isinstance(target, ast.Name) and target.id in {"flow", "aether_flow"}:
                    names.append(node.name)
    return names


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: apply the whole setup."""
    ap = argparse.ArgumentParser(prog="python -m scale.setup")
    ap.add_argument("--state", type=Path, required=True)
    ap.add_argument("--first-run", action="store_true", help="queue one scale-flow run (fresh clusters)")
    args = ap.parse_args(argv)
    state = ClusterState.model_validate_json(args.state.read_text())
    ensure_bucket(state)
    save_config(state)
    asyncio.run(ensure_pool(state))
    for name in deploy(state):
        print(f"deployed {name}")
    if args.first_run:
        print(f"queued first run {asyncio.run(queue_first_run(state))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
