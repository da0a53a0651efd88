"""LLMBudget: a cap on LLM calls and tokens, per task run or per flow run."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from aether_prefect.errors import ConfigError


class LLMBudget(BaseModel):
    """At most ``calls`` requests and ``total_tokens`` tokens; ``None`` means no cap on that measure."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    total_tokens: int | None = Field(default=None, gt=0, description="Most tokens (prompt + completion) allowed.")
    calls: int | None = Field(default=None, gt=0, description="Most LLM requests allowed.")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except PydanticValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'budget'}: {e['msg']}" for e in exc.errors())
            raise ConfigError(
                f"invalid LLMBudget ({problems}); use positive integers for total_tokens and calls, or None for no cap"
            ) from None

    def is_unlimited(self) -> bool:
        """True when neither measure is capped."""
        return self.total_tokens is None and self.calls is None
