"""Every ```python block of README.md runs, as written, in a fresh interpreter against the test servers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.S | re.M)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index: int, llm_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "home"),
        "OPENAI_BASE_URL": llm_server.base_url,
        "OPENAI_API_KEY": llm_server.api_key,
        "AETHER_LLM_MODEL": "fake-chat",
    }
    env.pop("AETHER_PREFECT_CONFIG", None)
    out = subprocess.run([sys.executable, "-c", BLOCKS[index]], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, f"README block {index} failed:\n{BLOCKS[index]}\n---\n{out.stderr[-4000:]}"
