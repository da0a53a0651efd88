"""The typed errors users catch. Every message says what was wrong and how to fix it."""

from __future__ import annotations


class AetherError(Exception):
    """Base class of every error raised by aether-prefect (except ServiceNotConfigured)."""


class ServiceNotConfigured(RuntimeError):
    """A service was asked for that has no configuration.

    Raised at the accessor (``context.llm()``, ``context.mcp()``...), never later
    as a KeyError or a network error.
    """

    def __init__(self, service: str, *, block_type: str, how: str) -> None:
        self.service = service
        self.block_type = block_type
        super().__init__(f"{service} is not configured. Configure it with a {block_type} block: {how}")


class ConfigError(AetherError, ValueError):
    """A configuration value or a config block reference is invalid or missing."""


class ValidationError(AetherError, ValueError):
    """A public function was given an argument it cannot accept."""


class StoreError(AetherError):
    """The object store failed (unreachable, denied, ...). Nothing was committed."""


class IntegrityError(AetherError):
    """Stored bytes do not match the sha256 recorded for them."""


class ArtifactNotFound(AetherError, KeyError):
    """No artifact with that id or uri exists in the store."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class KVError(AetherError):
    """A KV operation failed (bad key, bad value, lock not acquired...)."""


class KVValidationError(KVError, ValidationError):
    """A KV call got bad input (a non-JSON value, a bad ttl_s or amount, a malformed mapping)."""


class KVLockLost(KVError):
    """A KV key's lock ran out (its holder stalled past the lease) before the write: nothing was written; retry."""


class AetherMemoryError(AetherError):
    """A memory operation failed."""


class MemoryValidationError(AetherMemoryError, ValidationError):
    """A memory call got bad input (unknown level, non-JSON data, bad limit...)."""


class LLMError(AetherError):
    """An LLM request failed. ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class LLMInvalidOutput(LLMError):
    """A JSON-mode reply was not valid JSON or failed its schema; ``excerpt`` holds what came back."""

    def __init__(self, message: str, *, excerpt: str = "", attempts: int = 1) -> None:
        self.excerpt = excerpt
        self.attempts = attempts
        super().__init__(message)


class LLMBudgetExceeded(AetherError):
    """An LLM call was refused before sending because a budget is spent."""


class RAGError(AetherError):
    """A RAG operation failed."""


class RAGValidationError(RAGError, ValidationError):
    """A RAG call got bad input (unknown corpus, empty query, bad file, clashing documents...)."""


class MCPError(AetherError):
    """An MCP server failed, refused, or reported a tool error."""


class ChannelError(AetherError):
    """A question could not be asked (no run, no terminal, no reachable UI)."""


class ChannelTimeout(ChannelError, TimeoutError):
    """Nobody answered a question in time."""


class ChannelValidationError(ValidationError, ChannelError):
    """An answer that does not fit its question (wrong kind, not an option, several questions and none picked)."""


class QuestionNotWaiting(ChannelError):
    """The question (or flow run) answered is not waiting: already answered, timed out, closed, or unknown."""


class ServerError(AetherError, RuntimeError):
    """A local Prefect server could not be started or stopped (see the log path in the message)."""
