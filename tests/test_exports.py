"""The curated public surface: every name in __all__ exists, and the SPEC's entry points are there."""

from __future__ import annotations

import aether_prefect


def test_all_names_exist() -> None:
    assert [n for n in aether_prefect.__all__ if not hasattr(aether_prefect, n)] == []
    assert len(set(aether_prefect.__all__)) == len(aether_prefect.__all__)


def test_spec_entry_points_are_public() -> None:
    required = {
        "open_session", "open_session_sync", "build_adhoc_context", "aether_task", "aether_flow", "NodeContext",
        "current_context", "register_context_service", "Service", "ServiceNotConfigured", "AetherError",
        "AetherConfig", "AetherLLMProfile", "AetherObjectStore", "AetherMCPServer", "LLMBudget",
        "LLMBudgetExceeded", "start_server", "stop_server", "publish_flow_usage", "Artifact", "MemoryEvent",
    }
    assert required <= set(aether_prefect.__all__)
