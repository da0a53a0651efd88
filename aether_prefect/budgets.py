"""LLMBudget: a cap on LLM calls and tokens, per task run or per flow run."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LLMBudget(BaseModel):
    """At most ``calls`` requests and ``total_tokens`` tokens; ``None`` means no cap on that measure."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    total_tokens: int | None = Field(default=None, gt=0, description="Most tokens (prompt + completion) allowed.")
    calls: int | None = Field(default=None, gt=0, description="Most LLM requests allowed.")

    def is_unlimited(self) -> bool:
        """True when neither measure is capped."""
        return self.total_tokens is None and self.calls is None
