"""Prefect Blocks that hold every service's configuration.

Register them with ``prefect block register -m aether_prefect.blocks`` (or
``aether-prefect blocks register``); edit them in the Prefect UI.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect.blocks.core import Block
from prefect.types import SecretDict
from pydantic import Field, SecretStr, field_serializer, field_validator, model_validator

from aether_prefect.budgets import LLMBudget

_DOCS = "https://github.com/aether-prefect/aether-prefect#configuration"
_LOGO = "https://raw.githubusercontent.com/aether-prefect/aether-prefect/main/docs/logo.png"

_NAME_RE = r"^[A-Za-z0-9_.-]+$"


#: AetherGraph ``LLMProfile`` fields renamed here (AetherGraph name -> ours), so its profiles load unchanged.
_AETHERGRAPH_RENAMED = {"timeout": "timeout_s"}
#: AetherGraph ``endpoint_id`` values and the ``api`` they select.
_ENDPOINT_APIS = {"openai_responses": "responses", "azure_responses": "responses"}
#: AetherGraph ``LLMProfile`` fields accepted for compatibility that have no effect here.
_AETHERGRAPH_IGNORED = frozenset({
    "rate_limit_group", "thinking_mode", "thinking_budget", "reasoning_summary", "compatibility_policy",
    "structured_output_policy", "prompt_cache_policy", "context_window_tokens", "capability_overrides",
    "vision_enabled", "vision_max_images", "vision_max_image_bytes", "vision_resize_enabled",
    "vision_resize_max_dimension", "vision_resize_max_pixels", "vision_resize_jpeg_quality",
    "vision_resize_min_jpeg_quality", "vision_accepted_mime_prefixes", "vision_accepted_mime_types",
})


class AetherLLMProfile(Block):
    """One LLM endpoint of any provider AetherGraph names (OpenAI, Azure, Anthropic, Gemini, DeepSeek, ...)."""

    _block_type_name = "Aether LLM Profile"
    _block_type_slug = "aether-llm-profile"
    _logo_url = _LOGO
    _documentation_url = _DOCS
    _description = "An LLM endpoint (OpenAI, Azure, Anthropic, Gemini, ...) used by context.llm(profile) in tasks."
    _code_example = """
```python
from aether_prefect.blocks import AetherLLMProfile

profile = AetherLLMProfile.load("BLOCK_NAME")
```
"""

    provider: str = Field(
        default="openai",
        description="openai, azure, anthropic, google, deepseek, openrouter, lmstudio, ollama, vllm or "
        "openai_compatible (any OpenAI-compatible API, with base_url).",
    )
    model: str | None = Field(default=None, description="Chat model (for Azure: the deployment name).")
    base_url: str | None = Field(
        default=None,
        description="Base URL of the API; unset means the provider's own (e.g. https://api.openai.com/v1).",
    )
    api_key: SecretStr | None = Field(default=None, description="API key, kept secret; never logged.")
    api_key_ref: str | None = Field(
        default=None, description="Environment variable holding the key when api_key is unset, e.g. ANTHROPIC_API_KEY."
    )
    api: Literal["chat", "responses"] = Field(
        default="chat", description="OpenAI/Azure only: 'chat' (Chat Completions) or 'responses' (Responses API)."
    )
    embed_model: str | None = Field(default=None, description="Embedding model used by embed() and RAG.")
    embed_profile: str | None = Field(
        default=None, description="Profile used by embed() when this provider has no embeddings (Anthropic, DeepSeek)."
    )
    max_output_tokens: int | None = Field(
        default=None, ge=1, description="Default reply token cap (Anthropic requires one: 4096 when unset)."
    )
    reasoning: bool | None = Field(
        default=None, description="Send reasoning-model parameters (max_completion_tokens, no temperature); "
        "unset means decide from the model name (o1, o3, o4, gpt-5 families), e.g. set it for an Azure deployment.",
    )
    reasoning_effort: Literal["minimal", "low", "medium", "high", "xhigh", "max"] | None = Field(
        default=None, description="Reasoning effort sent to OpenAI reasoning models (o1, o3, o4, gpt-5)."
    )
    api_version: str | None = Field(default=None, description="Azure OpenAI api-version query parameter.")
    app_name: str | None = Field(default=None, description="OpenRouter attribution: sent as X-Title.")
    app_url: str | None = Field(default=None, description="OpenRouter attribution: sent as HTTP-Referer.")
    timeout_s: float = Field(default=60.0, gt=0, description="Timeout of one HTTP request, in seconds.")
    max_retries: int = Field(default=3, ge=0, le=20, description="Retries on 429, 5xx and connection errors.")
    headers: SecretDict | None = Field(default=None, description="Extra HTTP headers sent with every request.")
    budget_per_task_run: LLMBudget | None = Field(
        default=None, description="Cap on calls and tokens per task run (across its retry attempts)."
    )
    budget_per_flow_run: LLMBudget | None = Field(
        default=None, description="Cap on calls and tokens per flow run, shared by every task and worker."
    )
    log_exchanges: bool = Field(
        default=False, description="Publish each chat exchange as a markdown artifact, secrets masked."
    )
    tag_requests: bool = Field(
        default=False, description="Send X-Aether-Flow-Run-Id and X-Aether-Task-Run-Id headers with requests."
    )
    durable: bool = Field(
        default=True, description="Journal successful calls so a task or flow retry replays them instead of paying again."
    )

    @model_validator(mode="before")
    @classmethod
    def _aethergraph_fields(cls, data: Any) -> Any:
        """Accept an AetherGraph ``LLMProfile``'s fields: rename, map endpoint_id/azure_deployment/retry, drop no-ops."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for theirs, ours in _AETHERGRAPH_RENAMED.items():
            if theirs in data:
                value = data.pop(theirs)
                data.setdefault(ours, value)
        endpoint = data.pop("endpoint_id", None)
        if endpoint is not None:
            data.setdefault("api", _ENDPOINT_APIS.get(str(endpoint), "chat"))
        deployment = data.pop("azure_deployment", None)
        if deployment:
            from aether_prefect.services.llm._providers import is_reasoning_model

            if data.get("reasoning") is None and is_reasoning_model(data.get("model")):
                data["reasoning"] = True  # the model name is about to be replaced by the deployment's
            data["model"] = deployment  # our Azure profiles name the deployment in model
        retry = data.pop("retry", None)
        attempts = retry.get("max_attempts") if isinstance(retry, dict) else getattr(retry, "max_attempts", None)
        if isinstance(attempts, int) and "max_retries" not in data:
            data["max_retries"] = max(0, attempts - 1)
        for name in _AETHERGRAPH_IGNORED & set(data):
            data.pop(name)
        return data

    @field_validator("provider")
    @classmethod
    def _check_provider(cls, v: str) -> str:
        from aether_prefect.services.llm._providers import normalize  # lazy: the llm package imports this module

        return normalize(v)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {v!r}")
        return v.rstrip("/") if v else v


class AetherObjectStore(Block):
    """Where bytes live: a local directory (the default) or an S3-compatible bucket."""

    _block_type_name = "Aether Object Store"
    _block_type_slug = "aether-object-store"
    _logo_url = _LOGO
    _documentation_url = _DOCS
    _description = "Object store for aether-prefect artifacts, memory, RAG corpora and large KV values."
    _code_example = """
```python
from aether_prefect.blocks import AetherObjectStore

store = AetherObjectStore.load("BLOCK_NAME")
```
"""

    backend: Literal["local", "s3"] = Field(default="local", description="'local' for a directory, 's3' for a bucket.")
    root: str | None = Field(
        default=None, description="Local directory (backend 'local'); default $PREFECT_HOME/aether."
    )
    bucket: str | None = Field(default=None, description="S3 bucket name (backend 's3').")
    prefix: str = Field(default="aether", description="Key prefix inside the bucket or directory.")
    endpoint_url: str | None = Field(default=None, description="S3 endpoint URL for MinIO, R2, moto and the like.")
    region: str | None = Field(default=None, description="S3 region name.")
    aws_access_key_id: str | None = Field(
        default=None, description="Access key id; unset falls back to boto3's credential chain."
    )
    aws_secret_access_key: SecretStr | None = Field(
        default=None, description="Secret access key; unset falls back to boto3's credential chain."
    )

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, v: str) -> str:
        v = v.strip("/")
        if ".." in v.split("/"):
            raise ValueError("prefix must not contain '..'")
        return v

    @model_validator(mode="after")
    def _check_backend(self) -> "AetherObjectStore":
        if self.backend == "s3" and not self.bucket:
            raise ValueError("backend 's3' needs a bucket: set AetherObjectStore(bucket='my-bucket', ...)")
        return self


class AetherMCPServer(Block):
    """How to reach one MCP server: a stdio subprocess or a streamable-HTTP URL."""

    _block_type_name = "Aether MCP Server"
    _block_type_slug = "aether-mcp-server"
    _logo_url = _LOGO
    _documentation_url = _DOCS
    _description = "An MCP server (stdio command or streamable HTTP URL) used by context.mcp(name)."
    _code_example = """
```python
from aether_prefect.blocks import AetherMCPServer

server = AetherMCPServer.load("BLOCK_NAME")
```
"""

    transport: Literal["stdio", "http"] = Field(default="stdio", description="'stdio' or 'http' (streamable HTTP).")
    command: str | None = Field(default=None, description="Executable to start (stdio).")
    args: list[str] = Field(default_factory=list, description="Arguments of the command (stdio).")
    env: SecretDict | None = Field(default=None, description="Extra environment variables for the command (stdio).")
    cwd: str | None = Field(default=None, description="Working directory of the command (stdio).")
    url: str | None = Field(default=None, description="Server URL, e.g. http://127.0.0.1:8000/mcp (http).")
    headers: SecretDict | None = Field(default=None, description="HTTP headers such as Authorization (http).")
    timeout_s: float = Field(default=30.0, gt=0, description="Timeout of one request, in seconds.")
    durable: bool = Field(
        default=True,
        description="Journal successful tool calls so a retry replays them instead of calling again; "
        "False for side-effect-free tools that should always run.",
    )

    @model_validator(mode="after")
    def _check_transport(self) -> "AetherMCPServer":
        if self.transport == "stdio" and not self.command:
            raise ValueError("transport 'stdio' needs a command: AetherMCPServer(command='python', args=[...])")
        if self.transport == "http" and not self.url:
            raise ValueError("transport 'http' needs a url: AetherMCPServer(transport='http', url='http://.../mcp')")
        return self


class AetherConfig(Block):
    """The bundle a task's NodeContext is built from: LLM profiles, object store, MCP servers, KV and memory settings."""

    _block_type_name = "Aether Config"
    _block_type_slug = "aether-config"
    _logo_url = _LOGO
    _documentation_url = _DOCS
    _description = "Everything aether-prefect services need, by name: pass config='NAME' or set AETHER_PREFECT_CONFIG."
    _code_example = """
```python
from aether_prefect.blocks import AetherConfig

config = AetherConfig.load("BLOCK_NAME")
```
"""

    llm: dict[str, AetherLLMProfile] = Field(
        default_factory=dict, description="LLM profiles by name; 'default' is what context.llm() uses."
    )
    store: AetherObjectStore | None = Field(
        default=None, description="Object store; unset means a local directory under $PREFECT_HOME/aether."
    )
    mcp: dict[str, AetherMCPServer] = Field(
        default_factory=dict, description="MCP servers by name; 'default' is what context.mcp() uses."
    )
    kv_namespace: str = Field(default="aether", description="KV namespace: Prefect Variables are prefixed with it.")
    memory_level: Literal["run", "session", "graph"] = Field(
        default="run", description="Memory timeline: per run, per session, or per graph (flow name)."
    )
    notify: list[Any] = Field(
        default_factory=list,
        description=(
            "Where the channel announces questions: Prefect notification blocks (SlackWebhook, MicrosoftTeamsWebhook, "
            "CustomWebhookNotificationBlock, any NotificationBlock), by saved name 'slack-webhook/ops' "
            "(what a saved AetherConfig holds) or as instances in code."
        ),
    )
    memory_mirror: Literal["off", "kind", "excerpt"] = Field(
        default="excerpt",
        description="What memory mirrors into Prefect events: nothing ('off'), the kind and ids only ('kind'), "
        "or a capped excerpt of text and data ('excerpt': 256 characters, 1 KiB of data).",
    )

    @field_validator("kv_namespace")
    @classmethod
    def _check_namespace(cls, v: str) -> str:
        from aether_prefect.services.kv._names import check_namespace  # the one namespace rule

        return check_namespace(v)

    @field_validator("notify", mode="before")
    @classmethod
    def _check_notify(cls, v: Any) -> list[Any]:
        from aether_prefect._prefect._notify import is_notification_block

        items = [] if v is None else (list(v) if isinstance(v, (list, tuple)) else [v])
        for item in items:
            if isinstance(item, str):
                if item.count("/") != 1 or not all(item.split("/")):
                    raise ValueError(
                        f"notify entry {item!r} is not a saved block name: use '<block-type-slug>/<name>', "
                        "e.g. 'slack-webhook/ops' (see `prefect block ls`)"
                    )
            elif not is_notification_block(item):
                raise ValueError(
                    f"notify entries must be Prefect notification blocks or their saved names, got {type(item).__name__}"
                )
        return items

    @field_serializer("notify")
    def _dump_notify(self, v: list[Any]) -> list[str]:
        """Names as they are; an instance as its type only (its URL and secrets never leave the process)."""
        return [x if isinstance(x, str) else f"<{type(x).__name__} instance: save it and use its name>" for x in v]

    @field_validator("llm", "mcp")
    @classmethod
    def _check_names(cls, v: dict[str, Any]) -> dict[str, Any]:
        import re

        for name in v:
            if not re.fullmatch(_NAME_RE, name):
                raise ValueError(f"profile/server name {name!r} is not valid: use letters, digits, '_', '.', '-'")
        return v


__all__ = ["AetherConfig", "AetherLLMProfile", "AetherMCPServer", "AetherObjectStore", "LLMBudget"]
