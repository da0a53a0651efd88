"""The example flows run to Completed, their own code; data-prep's watermark; ai-enrich's clear failure."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from aether_prefect import AetherConfig, AetherMCPServer, ServiceNotConfigured, clear_config_cache, open_session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flows import data_prep as dp  # noqa: E402


@pytest.fixture()
def saved_config(local_config: AetherConfig, monkeypatch: pytest.MonkeyPatch) -> tuple[str, AetherConfig]:
    """A saved AetherConfig on a private local store, selected through AETHER_PREFECT_CONFIG."""
    name = f"flows-{uuid.uuid4().hex[:8]}"
    local_config.save(name)
    monkeypatch.setenv("AETHER_PREFECT_CONFIG", name)
    clear_config_cache()
    return name, local_config


def _copy_source(tmp_path: Path) -> Path:
    src = tmp_path / f"orders-{uuid.uuid4().hex[:6]}.csv"
    shutil.copy(dp.DEFAULT_SOURCE, src)
    return src


def test_data_prep_is_incremental(saved_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = _copy_source(tmp_path)
    first = dp.data_prep(source=str(src), chunk_size=40)
    assert first["rows_in"] == 252 and first["valid"] == 212 and first["duplicates"] == 12
    assert first["rejected"] == 28 and first["watermark_after"] == 240

    second = dp.data_prep(source=str(src))
    assert second["rows_in"] == 0 and second["watermark_before"] == 240

    with open(src, "a") as f:
        f.write("241,New Customer,new@example.com,10.5,EUR,2026-11-20T10:00:00\n")
        f.write("242,,bad,1,EUR,2026-11-20T10:00:00\n")
    third = dp.data_prep(source=str(src))
    assert (third["rows_in"], third["valid"], third["rejected"], third["watermark_after"]) == (2, 1, 1, 242)

    async def check() -> tuple[object, list]:
        async with open_session(graph_id="data-prep", memory_level="graph") as ctx:
            wm = await ctx.kv().get(f"data-prep/watermark/{src.name}")
            events = await ctx.memory().recent(kinds=["run_summary"], limit=10)
            out = await ctx.artifacts().load_text_by_id(first["output_artifact"])
            return wm, [events, out]

    wm, (events, out) = asyncio.run(check())
    assert wm == 242
    assert [e.data["watermark_after"] for e in events][-2:] == [240, 242]
    assert out.count("\n") == 213 and out.startswith("order_id,customer,email")


def test_data_prep_publishes_prefect_artifacts(saved_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    src = _copy_source(tmp_path)
    state = dp.data_prep(source=str(src), return_state=True)
    assert state.is_completed()
    flow_run_id = state.state_details.flow_run_id

    async def read() -> list:
        async with get_client() as client:
            return await client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    arts = asyncio.run(read())
    kinds = {a.type for a in arts}
    assert {"table", "progress"} <= kinds, kinds
    assert any(a.key and "summary" in a.key for a in arts)


def _run_script(path: str, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, path], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_scripts_run_as_users_run_them(saved_config) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ}
    out = _run_script("flows/data_prep.py", env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Finished in state Completed()" in out.stdout + out.stderr
    out = _run_script("flows/adhoc_script.py", env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "this script ran 1 time(s)" in out.stdout
    assert "skipping the haiku" in out.stdout + out.stderr
    assert "$(PY) flows/data_prep.py" in (ROOT / "Makefile").read_text()  # `make demo` runs this script


def test_demo_runs_on_embedded_defaults(tmp_path: Path) -> None:
    """`make demo` on a fresh machine: no PREFECT_API_URL (Prefect's in-process server), a fresh PREFECT_HOME,
    no saved config (local store under $PREFECT_HOME/aether); a second run finds the watermark."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "AETHER_PREFECT_CONFIG")}
    env["PREFECT_HOME"] = str(tmp_path / "home")
    first = _run_script("flows/data_prep.py", env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "watermark 0 -> 240" in first.stdout + first.stderr
    second = _run_script("flows/data_prep.py", env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "nothing new since watermark 240" in second.stdout + second.stderr
    assert list((tmp_path / "home" / "aether" / "artifacts" / "blobs").rglob("*"))


def test_ai_enrich_fails_clearly_without_llm_and_mcp(saved_config) -> None:  # type: ignore[no-untyped-def]
    from flows.ai_enrich import ai_enrich

    with pytest.raises(ServiceNotConfigured) as info:
        asyncio.run(ai_enrich())
    msg = str(info.value)
    assert "AetherLLMProfile" in msg and "AetherMCPServer" in msg and "OPENAI_API_KEY" in msg


def test_ai_enrich_with_llm_rag_and_mcp(local_config: AetherConfig, llm_server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from flows.ai_enrich import ai_enrich

    cfg = local_config.model_copy(update={
        "llm": {"default": llm_server.profile(embed_model="embed")},
        "mcp": {"default": AetherMCPServer(command=sys.executable, args=[str(ROOT / "flows" / "tools_server.py")])},
    })
    name = f"ai-{uuid.uuid4().hex[:8]}"
    cfg.save(name)
    monkeypatch.setenv("AETHER_PREFECT_CONFIG", name)
    clear_config_cache()
    report = asyncio.run(ai_enrich())
    assert len(report["answers"]) == 2
    assert all(a["citations"] and a["words"] >= 1 for a in report["answers"])
    assert report["sample_conversion"] == {"amount": 92.0, "currency": "EUR"}
    assert llm_server.requests_to("/chat/completions")
