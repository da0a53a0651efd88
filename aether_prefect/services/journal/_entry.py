"""One journal entry: the fingerprint of a request and the recorded result of the call that succeeded."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, Field

#: Entry format version; an entry of another version is never replayed.
VERSION = 1


def fingerprint(request: dict[str, Any]) -> str:
    """SHA-256 of the request's canonical JSON: only a hash is stored, never the request (nor a secret in it)."""
    canon = json.dumps(request, sort_keys=True, separators=(",", ":"), default=_opaque, ensure_ascii=False)
    return hashlib.sha256(canon.encode()).hexdigest()


def _opaque(value: Any) -> str:
    """Stand-in for a value JSON cannot hold: its type only (an address in a repr would differ every attempt)."""
    if isinstance(value, (set, frozenset)):
        return json.dumps(sorted(map(str, value)))
    if hasattr(value, "model_dump"):
        return json.dumps(value.model_dump(mode="json"), sort_keys=True, default=str)
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


class Entry(BaseModel):
    """A call that succeeded: where it sat in the task's sequence, what it asked, what it got and cost."""

    v: int = VERSION
    kind: str
    position: int = Field(ge=0)
    fingerprint: str
    created: float = Field(default_factory=time.time)
    result: Any = None
    usage: list[tuple[str, str, int, int, int]] = Field(
        default_factory=list, description="(profile, model, prompt, completion, total) per accounted request."
    )
    pieces: list[str] | None = None
    last_response: Any = None

    def encode(self, secrets: Iterable[str]) -> bytes | None:
        """The entry as JSON bytes, or None when a secret value appears in it (then it is not journaled)."""
        try:
            data = self.model_dump_json().encode()
        except (TypeError, ValueError):
            return None  # a result JSON cannot hold: the call stays live on retries
        text = data.decode()
        if any(s and len(s) >= 4 and (s in text or json.dumps(s)[1:-1] in text) for s in secrets):
            return None
        return data

    @classmethod
    def decode(cls, data: bytes) -> "Entry | None":
        """The entry in ``data``, None when it is unreadable or of another format version."""
        try:
            entry = cls.model_validate_json(data)
        except ValueError:
            return None
        return entry if entry.v == VERSION else None
