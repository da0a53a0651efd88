"""Shared test setup: a real Prefect server for the whole session, started before Prefect is imported.

Every test talks to that server through PREFECT_API_URL (child processes inherit it).
Service-specific servers (S3, LLM, MCP) are fixtures in tests/servers/.
"""

from __future__ import annotations

import atexit
import os
import tempfile
from pathlib import Path

_HOME = Path(tempfile.mkdtemp(prefix="aether-tests-"))
os.environ.update(
    PREFECT_HOME=str(_HOME / "client"),
    # Prefect 3.6-3.8 put task results (and cache records) in ~/.prefect/storage whatever PREFECT_HOME says:
    # cache hits from an earlier run would leak into this one.
    PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(_HOME / "client" / "storage"),
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
    PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW="ignore",
    AETHER_PREFECT_CONFIG_REFRESH_S="2",
)
for _var in ("AETHER_PREFECT_CONFIG", "OPENAI_API_KEY", "OPENAI_BASE_URL", "AETHER_LLM_MODEL"):
    os.environ.pop(_var, None)

from tests.servers.prefect_server import PrefectServer  # noqa: E402

_SERVER = PrefectServer(home=_HOME / "server").start()
os.environ["PREFECT_API_URL"] = _SERVER.api_url
# Registered before Prefect's own exit hooks, so it runs after they flush logs to the API.
atexit.register(_SERVER.stop)

import pytest  # noqa: E402

from tests.servers.s3 import moto_s3, s3_store_block  # noqa: E402,F401
from tests.servers.openai_server import llm_server, openai_server  # noqa: E402,F401


@pytest.fixture(scope="session", autouse=True)
def prefect_server() -> PrefectServer:
    """The session's real Prefect server (waits until healthy)."""
    _SERVER.wait_ready()
    return _SERVER


@pytest.fixture()
def portal_hops(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """``watch(module)`` -> the list of coroutines (by qualname) that ``module`` sends to the portal loop through its
    ``run_sync`` from then on; they still run. Shows which sync calls stay on the calling thread."""
    from typing import Any

    def watch(module: Any) -> list[str]:
        hops: list[str] = []
        real = module.run_sync

        def counting(coro: Any) -> Any:
            hops.append(coro.__qualname__)
            return real(coro)

        monkeypatch.setattr(module, "run_sync", counting)
        return hops

    return watch


@pytest.fixture()
def tmp_store(tmp_path: Path):  # type: ignore[no-untyped-def]
    """An AetherObjectStore block on a fresh local directory."""
    from aether_prefect.blocks import AetherObjectStore

    return AetherObjectStore(backend="local", root=str(tmp_path / "store"))


@pytest.fixture()
def local_config(tmp_store):  # type: ignore[no-untyped-def]
    """An unsaved AetherConfig on a fresh local store, a unique KV namespace."""
    import uuid

    from aether_prefect.blocks import AetherConfig

    return AetherConfig(store=tmp_store, kv_namespace=f"t{uuid.uuid4().hex[:10]}")
