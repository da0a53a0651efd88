"""End to end on a real Prefect server: blocks registered, an S3-backed AetherConfig saved, the example
deployments served by deployments/serve.py, a run created from a deployment through the API (as the UI
does), its results checked through public APIs, and a cron schedule creating runs by itself."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest

from aether_prefect import AetherConfig, open_session

pytestmark = pytest.mark.slow  # multi-process: newest Prefect only in CI (Makefile)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def served(moto_s3, s3_store_block, tmp_path: Path):  # type: ignore[no-untyped-def]
    """deployments/serve.py running against the session's server with an S3-backed saved config."""
    reg = subprocess.run([sys.executable, "-m", "aether_prefect.cli", "blocks", "register"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert reg.returncode == 0 and "aether-config" in reg.stdout, reg.stderr
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    AetherConfig(store=s3_store_block, kv_namespace=name).save(name)
    source = tmp_path / "orders.csv"
    shutil.copy(ROOT / "flows" / "data" / "orders.csv", source)
    env = {**os.environ, "AETHER_PREFECT_CONFIG": name, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "deployments/serve.py", "--cron", "* * * * *", "--source", str(source)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield name, source, proc, tmp_path / "serve.log"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


async def _wait_deployment(client, name: str, proc, log: Path):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve.py exited: {log.read_text()[-3000:]}")
        try:
            return await client.read_deployment_by_name(name)
        except Exception:  # noqa: BLE001 - not registered yet
            await asyncio.sleep(0.5)
    raise AssertionError(f"deployment {name} never appeared: {log.read_text()[-3000:]}")


def test_deployment_run_from_api_and_cron(served, moto_s3) -> None:  # type: ignore[no-untyped-def]
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterId

    name, source, proc, log = served
    started = time.monotonic()

    async def run() -> tuple[object, list, int]:
        async with get_client() as client:
            dep = await _wait_deployment(client, "data-prep/nightly", proc, log)
            fr = await client.create_flow_run_from_deployment(dep.id, parameters={"source": str(source)})
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                fr = await client.read_flow_run(fr.id)
                if fr.state and fr.state.is_final():
                    break
                await asyncio.sleep(1)
            arts = await client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fr.id])))
            scheduled = 0
            for _ in range(60):
                runs = await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))
                scheduled = sum(1 for r in runs if r.auto_scheduled)
                if scheduled:
                    break
                await asyncio.sleep(1)
            return fr, arts, scheduled

    fr, arts, scheduled = asyncio.run(run())
    assert fr.state.is_completed(), f"{fr.state}: {log.read_text()[-3000:]}"
    assert scheduled >= 1, "the cron schedule created no run by itself"
    flow_run_id = str(fr.id)

    # Prefect artifacts of the run: the summary table, the progress bar, the dataset and rejects.
    assert {"table", "progress"} <= {a.type for a in arts}
    assert any((a.key or "").startswith("data-prep-summary") for a in arts)

    # The bytes are in S3 with matching sha256; KV watermark; memory summary at graph level.
    async def check() -> tuple[list, object, list]:
        async with open_session(config=name, graph_id="data-prep", memory_level="graph") as ctx:
            found = await ctx.artifacts().search(labels={"run_id": flow_run_id}, view="all")
            wm = await ctx.kv().get(f"data-prep/watermark/{source.name}")
            events = await ctx.memory().recent(kinds=["run_summary"], limit=20)
            return found, wm, events

    found, wm, events = asyncio.run(check())
    assert {a.kind for a in found} >= {"dataset", "rejected", "summary"}
    cfg = AetherConfig.load(name)
    s3 = boto3.client("s3", endpoint_url=moto_s3.url, region_name="us-east-1",
                      aws_access_key_id=cfg.store.aws_access_key_id,
                      aws_secret_access_key=cfg.store.aws_secret_access_key.get_secret_value())
    for art in found:
        assert art.uri.startswith(f"s3://{cfg.store.bucket}/")
        key = art.uri.split("/", 3)[3]
        body = s3.get_object(Bucket=cfg.store.bucket, Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == art.sha256
    assert wm == 240
    assert [e.data["valid"] for e in events if e.run_id == flow_run_id] == [212]
    print(f"e2e deployment run took {time.monotonic() - started:.1f}s")


def test_prefect_yaml_deploys_with_schedule_parameters_and_pull_step(tmp_path: Path) -> None:
    """`prefect deploy --all --prefect-file deployments/prefect.yaml`, as the README says, against the server."""
    from prefect.client.orchestration import get_client

    pool = f"aether-process-{uuid.uuid4().hex[:6]}"
    tag = uuid.uuid4().hex[:6]  # own deployment names, so the served ones of the other test are untouched
    text = (ROOT / "deployments" / "prefect.yaml").read_text().replace("name: aether-process", f"name: {pool}")
    text = text.replace("- name: nightly", f"- name: nightly-{tag}").replace("- name: on-demand", f"- name: on-demand-{tag}")
    assert text.count(f"name: {pool}") == 2 and text.count(tag) == 2
    (tmp_path / "prefect.yaml").write_text(text)
    env = {**os.environ, "AETHER_PREFECT_REPO": str(ROOT)}
    made = subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", pool, "--type", "process"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    out = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file",
                          str(tmp_path / "prefect.yaml")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]

    async def read():  # type: ignore[no-untyped-def]
        async with get_client() as client:
            return await client.read_deployment_by_name(f"data-prep/nightly-{tag}")

    dep = asyncio.run(read())
    assert dep.work_pool_name == pool and dep.parameters == {"chunk_size": 50}
    assert [s.schedule.cron for s in dep.schedules] == ["0 2 * * *"]
    assert dep.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
    assert dep.entrypoint == "flows/data_prep.py:data_prep"
