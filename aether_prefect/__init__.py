"""aether-prefect: a fresh, fully wired AetherGraph-style NodeContext in every Prefect task."""

from __future__ import annotations

from aether_prefect.blocks import AetherConfig, AetherLLMProfile, AetherMCPServer, AetherObjectStore
from aether_prefect.budgets import LLMBudget
from aether_prefect.config import clear_config_cache
from aether_prefect.context import NodeContext, current_context
from aether_prefect.errors import (
    AetherError,
    AetherMemoryError,
    ArtifactNotFound,
    ChannelError,
    ChannelTimeout,
    ConfigError,
    IntegrityError,
    KVError,
    LLMBudgetExceeded,
    LLMError,
    MCPError,
    RAGError,
    ServiceNotConfigured,
    StoreError,
    ValidationError,
)
from aether_prefect.services.base import Service, register_context_service, shutdown_services
from aether_prefect.session import build_adhoc_context, open_session, open_session_sync
from aether_prefect.task import aether_flow, aether_task

__version__ = "0.1.0"

__all__ = [
    "AetherConfig",
    "AetherError",
    "AetherLLMProfile",
    "AetherMCPServer",
    "AetherMemoryError",
    "AetherObjectStore",
    "ArtifactNotFound",
    "ChannelError",
    "ChannelTimeout",
    "ConfigError",
    "IntegrityError",
    "KVError",
    "LLMBudget",
    "LLMBudgetExceeded",
    "LLMError",
    "MCPError",
    "NodeContext",
    "RAGError",
    "Service",
    "ServiceNotConfigured",
    "StoreError",
    "ValidationError",
    "__version__",
    "aether_flow",
    "aether_task",
    "build_adhoc_context",
    "clear_config_cache",
    "current_context",
    "open_session",
    "open_session_sync",
    "register_context_service",
    "shutdown_services",
]
