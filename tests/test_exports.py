"""The curated public surface (httpx's habit): exactly these names are exported, so a new public name is a
decision made here, and every one of them exists."""

from __future__ import annotations

import aether_prefect

# Add a name here in the same commit that exports it.
PUBLIC = {
    # entry points
    "open_session", "open_session_sync", "build_adhoc_context", "aether_task", "aether_flow", "NodeContext",
    "current_context", "register_context_service", "shutdown_services", "Service", "clear_config_cache",
    "start_server", "stop_server", "running_servers", "ServerInfo", "__version__",
    # config blocks and budgets
    "AetherConfig", "AetherLLMProfile", "AetherObjectStore", "AetherMCPServer", "LLMBudget",
    # services and their data
    "ArtifactsService", "Artifact", "PrefectKV", "MemoryService", "MemoryEvent", "LLMService", "UsageRow",
    "publish_flow_usage", "read_flow_usage", "RAGService", "RagHit", "CorpusStats", "DocInfo", "UpsertResult",
    "MCPClient", "MCPTool", "MCPResource", "ChannelService", "ObjectStore",
    # the channel's answers and inbox
    "ChoiceResult", "PendingQuestion", "pending_questions", "answer",
    # AetherGraph's names (issue 22): Event, and runtime registration for this process
    "Event", "register_llm_client", "set_rag_llm_client", "set_rag_index_backend", "set_default_channel",
    "set_channel_alias", "register_mcp_client", "set_mcp_service", "MCPService", "StdioMCPClient",
    # errors
    "AetherError", "ServiceNotConfigured", "ConfigError", "ValidationError", "StoreError", "IntegrityError",
    "ArtifactNotFound", "KVError", "KVValidationError", "AetherMemoryError", "MemoryValidationError", "LLMError",
    "LLMInvalidOutput", "LLMBudgetExceeded", "RAGError", "RAGValidationError", "MCPError", "ChannelError",
    "ChannelTimeout", "ChannelValidationError", "QuestionNotWaiting", "ServerError",
}


def test_exactly_the_public_names_are_exported() -> None:
    assert set(aether_prefect.__all__) == PUBLIC, (
        f"added: {sorted(set(aether_prefect.__all__) - PUBLIC)}; missing: {sorted(PUBLIC - set(aether_prefect.__all__))}"
    )
    assert len(set(aether_prefect.__all__)) == len(aether_prefect.__all__)


def test_every_public_name_exists() -> None:
    assert [n for n in aether_prefect.__all__ if not hasattr(aether_prefect, n)] == []


def test_input_errors_are_value_errors() -> None:
    """One rule for every service: bad input raises a ValidationError subclass (a ValueError)."""
    for name in ("KVValidationError", "MemoryValidationError", "RAGValidationError", "ConfigError"):
        cls = getattr(aether_prefect, name)
        assert issubclass(cls, aether_prefect.ValidationError) or issubclass(cls, ValueError), name
        assert issubclass(cls, ValueError), name
