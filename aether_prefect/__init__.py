"""aether-prefect: a fresh, fully wired AetherGraph-style NodeContext in every Prefect task."""

from __future__ import annotations

from aether_prefect._registration import (
    MCPService,
    StdioMCPClient,
    register_llm_client,
    register_mcp_client,
    set_channel_alias,
    set_default_channel,
    set_mcp_service,
    set_rag_index_backend,
    set_rag_llm_client,
)
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
    ChannelValidationError,
    ConfigError,
    IntegrityError,
    KVError,
    KVValidationError,
    LLMBudgetExceeded,
    LLMError,
    LLMInvalidOutput,
    MCPError,
    MemoryValidationError,
    RAGError,
    RAGValidationError,
    ServerError,
    QuestionNotWaiting,
    ServiceNotConfigured,
    StoreError,
    ValidationError,
)
from aether_prefect.server import ServerInfo, running_servers, start_server, stop_server
from aether_prefect.services.artifacts._index import Artifact
from aether_prefect.services.artifacts import ArtifactsService
from aether_prefect.services.base import Service, register_context_service, shutdown_services
from aether_prefect.services.channel import ChannelService, ChoiceResult, PendingQuestion, answer, pending_questions
from aether_prefect.services.kv import PrefectKV
from aether_prefect.services.llm import LLMService
from aether_prefect.services.llm._usage import UsageRow, publish_flow_usage, read_flow_usage
from aether_prefect.services.mcp import MCPClient, MCPResource, MCPTool
from aether_prefect.services.memory import Event
from aether_prefect.services.memory import Event as MemoryEvent
from aether_prefect.services.memory import MemoryService
from aether_prefect.services.rag import CorpusStats, DocInfo, RAGService, RagHit, UpsertResult
from aether_prefect.services.stores.base import ObjectStore
from aether_prefect.session import build_adhoc_context, open_session, open_session_sync
from aether_prefect.task import aether_flow, aether_task

__version__ = "0.1.0"

__all__ = [
    "answer",
    "pending_questions",
    "set_rag_llm_client",
    "set_rag_index_backend",
    "set_mcp_service",
    "set_default_channel",
    "set_channel_alias",
    "register_mcp_client",
    "register_llm_client",
    "StdioMCPClient",
    "MCPService",
    "Event",
    "AetherConfig",
    "AetherError",
    "AetherLLMProfile",
    "AetherMCPServer",
    "AetherMemoryError",
    "AetherObjectStore",
    "Artifact",
    "ArtifactNotFound",
    "ArtifactsService",
    "ChannelError",
    "ChannelService",
    "ChannelTimeout",
    "ChannelValidationError",
    "ChoiceResult",
    "ConfigError",
    "CorpusStats",
    "DocInfo",
    "IntegrityError",
    "KVError",
    "KVValidationError",
    "LLMBudget",
    "LLMBudgetExceeded",
    "LLMError",
    "LLMInvalidOutput",
    "LLMService",
    "MCPClient",
    "MCPError",
    "MCPResource",
    "MCPTool",
    "MemoryEvent",
    "MemoryService",
    "MemoryValidationError",
    "NodeContext",
    "PendingQuestion",
    "QuestionNotWaiting",
    "ObjectStore",
    "PrefectKV",
    "RAGError",
    "RAGService",
    "RAGValidationError",
    "RagHit",
    "ServerError",
    "ServerInfo",
    "Service",
    "ServiceNotConfigured",
    "StoreError",
    "UpsertResult",
    "UsageRow",
    "ValidationError",
    "aether_flow",
    "aether_task",
    "build_adhoc_context",
    "clear_config_cache",
    "current_context",
    "open_session",
    "open_session_sync",
    "publish_flow_usage",
    "read_flow_usage",
    "register_context_service",
    "running_servers",
    "shutdown_services",
    "start_server",
    "stop_server",
    "__version__",
]
