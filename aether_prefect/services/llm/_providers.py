"""The one provider table: every provider name a profile may use, its wire format, default base URL and embeddings.

The names are AetherGraph's (``aethergraph/services/llm/registry.py``) plus ``vllm``, which aether-prefect
accepted before. ``context.llm_set_key`` and ``LLMService`` both read this table; nothing else holds a URL.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from typing import Literal

from aether_prefect.errors import ConfigError

Wire = Literal["openai", "azure", "anthropic", "gemini"]


@dataclass(frozen=True)
class ProviderSpec:
    """One provider: how requests are shaped (``wire``), where they go by default, whether it embeds."""

    name: str
    title: str
    wire: Wire
    base_url: str | None
    embeddings: bool
    #: The environment variable that overrides ``base_url`` when a profile sets none (AetherGraph's registry).
    base_url_env: str | None = None


PROVIDERS: dict[str, ProviderSpec] = {
    spec.name: spec
    for spec in (
        ProviderSpec("openai", "OpenAI", "openai", "https://api.openai.com/v1", True, "OPENAI_BASE_URL"),
        ProviderSpec("azure", "Azure OpenAI", "azure", None, True, "AZURE_OPENAI_ENDPOINT"),
        ProviderSpec("anthropic", "Anthropic", "anthropic", "https://api.anthropic.com", False),
        ProviderSpec("google", "Google Gemini", "gemini", "https://generativelanguage.googleapis.com", True),
        ProviderSpec("deepseek", "DeepSeek", "openai", "https://api.deepseek.com", False, "DEEPSEEK_BASE_URL"),
        ProviderSpec("openrouter", "OpenRouter", "openai", "https://openrouter.ai/api/v1", True),
        ProviderSpec("lmstudio", "LM Studio", "openai", "http://localhost:1234/v1", True, "LMSTUDIO_BASE_URL"),
        ProviderSpec("ollama", "Ollama", "openai", "http://localhost:11434/v1", True, "OLLAMA_BASE_URL"),
        ProviderSpec("vllm", "vLLM", "openai", "http://localhost:8000/v1", True),
        ProviderSpec("openai_compatible", "OpenAI-compatible endpoint", "openai", None, True,
                     "OPENAI_COMPATIBLE_BASE_URL"),
    )
}
#: Other spellings people use for the same provider.
ALIASES = {"gemini": "google", "azure_openai": "azure", "openai-compatible": "openai_compatible", "lm_studio": "lmstudio"}
#: OpenAI model families that take ``max_completion_tokens`` and no ``temperature`` (reasoning models).
REASONING_MODEL_RE = re.compile(r"^(?:[\w.-]+/)?(?:o\d+(?:$|[-_.])|gpt-5)", re.IGNORECASE)
#: ``max_tokens`` sent to Anthropic when neither the call nor the profile sets one (the API requires it).
DEFAULT_ANTHROPIC_MAX_TOKENS = 4096


def accepted() -> str:
    """The accepted provider names, for error messages."""
    return ", ".join(PROVIDERS)


def normalize(name: str) -> str:
    """The table's name for ``name`` (case, spaces and aliases folded); ValueError naming the accepted ones."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in PROVIDERS:
        raise ValueError(f"unknown LLM provider {name!r}; accepted providers: {accepted()} "
                         "(use 'openai_compatible' with base_url= for any other OpenAI-compatible API)")
    return key


def provider_spec(name: str) -> ProviderSpec:
    """The table entry of ``name``; ConfigError naming the accepted providers when there is none."""
    try:
        return PROVIDERS[normalize(name)]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def default_base_url(name: str) -> str | None:
    """The provider's default base URL: its environment variable when set (``OPENAI_BASE_URL``, ...: what
    AetherGraph and the OpenAI SDK do), else the table's URL; None when it has none (unknown names too)."""
    spec = PROVIDERS.get(ALIASES.get(name.strip().lower(), name.strip().lower()))
    if spec is None:
        return None
    configured = os.environ.get(spec.base_url_env, "").strip() if spec.base_url_env else ""
    value = configured or spec.base_url
    return value.rstrip("/") if value else None


@functools.lru_cache(maxsize=256)
def is_reasoning_model(model: str | None) -> bool:
    """True for OpenAI reasoning families (o1, o3, o4-mini, gpt-5...), also behind a router prefix (openai/o3)."""
    return bool(model) and REASONING_MODEL_RE.match(model or "") is not None
