"""The aether-prefect command: blocks register, config show (secrets masked), doctor (one line per check)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from pydantic import SecretStr

from aether_prefect import AetherConfig, AetherLLMProfile, AetherMCPServer

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-cli-secret-do-not-print-42"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aether_prefect.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=180, env={**os.environ, **(env or {})})


def test_blocks_register() -> None:
    out = cli("blocks", "register")
    assert out.returncode == 0, out.stderr
    for slug in ("aether-llm-profile", "aether-object-store", "aether-mcp-server", "aether-config"):
        assert f"registered block type {slug}" in out.stdout


def test_config_show_masks_secrets(local_config: AetherConfig) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    local_config.model_copy(update={"llm": {"default": AetherLLMProfile(model="m", api_key=SecretStr(SECRET))}}).save(name)
    out = cli("config", "show", name)
    assert out.returncode == 0, out.stderr
    assert f"AetherConfig '{name}'" in out.stdout and '"model": "m"' in out.stdout
    assert SECRET not in out.stdout + out.stderr and "********" in out.stdout


def test_config_show_missing_name_is_one_clear_line() -> None:
    out = cli("config", "show", "no-such-config-cli")
    assert out.returncode == 2
    assert "No saved AetherConfig block named 'no-such-config-cli'" in out.stderr
    assert "Traceback" not in out.stderr


def _shown(stdout: str) -> dict:
    """The JSON part of `config show` (after its '# ...' comment lines)."""
    import json

    return json.loads("\n".join(line for line in stdout.splitlines() if not line.startswith("#")))


def test_config_show_with_nothing_saved_shows_what_is_in_effect(tmp_path: Path) -> None:
    """No saved config: the local store under $PREFECT_HOME and the env LLM profile are shown, not null (#17.20)."""
    home = tmp_path / "home"
    out = cli("config", "show", env={"PREFECT_HOME": str(home)})
    assert out.returncode == 0, out.stderr
    shown = _shown(out.stdout)
    assert "nothing saved" in out.stdout and shown["llm"] == {}
    assert shown["store"]["backend"] == "local" and shown["store"]["root"] == str(home)
    assert f"LocalStore(root='{(home / 'aether').resolve()}')" in out.stdout

    out = cli("config", "show", env={"PREFECT_HOME": str(home), "OPENAI_API_KEY": SECRET, "AETHER_LLM_MODEL": "m-env"})
    assert out.returncode == 0, out.stderr
    shown = _shown(out.stdout)
    assert shown["llm"]["default"]["model"] == "m-env" and shown["llm"]["default"]["api_key"] == "**********"
    assert "OPENAI_API_KEY" in out.stdout and SECRET not in out.stdout + out.stderr


def test_doctor_all_ok_then_a_failing_profile(local_config: AetherConfig, llm_server) -> None:  # type: ignore[no-untyped-def]
    good = f"doc-{uuid.uuid4().hex[:8]}"
    local_config.model_copy(update={
        "llm": {"default": llm_server.profile()},
        "mcp": {"tools": AetherMCPServer(command=sys.executable, args=[str(ROOT / "flows" / "tools_server.py")])},
    }).save(good)
    out = cli("doctor", good)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines] == [
        "ok   prefect api", "ok   object store (local)", "ok   llm profile default", "ok   mcp server tools"]
    assert "2 tools" in lines[-1]

    bad = f"doc-{uuid.uuid4().hex[:8]}"
    bad_profile = llm_server.profile(api_key=SecretStr(SECRET), max_retries=0)  # credentials in its URL too
    bad_profile = bad_profile.model_copy(update={"base_url": bad_profile.base_url.replace("http://", "http://doc:pw-hidden@")})
    local_config.model_copy(update={"llm": {"default": bad_profile}}).save(bad)
    out = cli("doctor", bad)
    assert out.returncode == 1
    assert any(ln.startswith("FAIL llm profile default") and "401" in ln for ln in out.stdout.splitlines()), out.stdout
    assert SECRET not in out.stdout + out.stderr
    assert "***@127.0.0.1" in out.stdout and "pw-hidden" not in out.stdout + out.stderr
