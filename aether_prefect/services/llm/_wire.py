"""What every wire-format adapter does, and the pieces they share.

An adapter turns a provider-neutral request (OpenAI-style messages and tools, the output format, the token cap)
into one HTTP call of its provider's API, and the provider's reply (or stream event) back into text, tool calls
(OpenAI's shape) and usage (``prompt_tokens``/``completion_tokens``/``total_tokens``). It sends nothing itself:
``LLMService`` owns budgets, retries, the pooled client, accounting, exchange logs and JSON re-asks, so every
provider gets the same ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aether_prefect.errors import LLMError
from aether_prefect.services.llm._usage import Usage

if TYPE_CHECKING:
    from aether_prefect.blocks import AetherLLMProfile


@dataclass
class ChatSpec:
    """A provider-neutral chat request, as ``LLMService.chat`` / ``chat_stream`` validated it."""

    messages: list[dict[str, Any]]
    model: str
    output_format: str = "text"
    schema_spec: dict[str, Any] | None = None
    max_output_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class HttpCall:
    """One request to send: URL, query parameters, JSON body and the adapter's own (non-secret) headers."""

    url: str
    body: Any
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class ChatReply:
    """A parsed reply: text, tool calls in OpenAI's shape, normalised usage."""

    text: str
    usage: Usage
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class StreamEvent:
    """What one stream event carried: a text piece, usage so far (replaces earlier), the end of the stream."""

    text: str = ""
    usage: dict[str, Any] | None = None
    done: bool = False


class SSE:
    """Incremental server-sent-events parser: feed lines, get complete ``data`` payloads."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        if line == "":
            if not self._data:
                return None
            payload, self._data = "\n".join(self._data), []
            return payload
        if line.startswith("data:"):
            self._data.append(line[5:].lstrip(" "))
        return None  # comments (':'), event:, id:, retry: lines are ignored (payloads carry their own type)


def tool_call(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    """A tool call in OpenAI's chat-completions shape (``arguments`` as a JSON string)."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments if arguments is not None else {})
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


def function_of(tool: dict[str, Any]) -> dict[str, Any] | None:
    """``{"name", "description", "parameters"}`` of an OpenAI-style function tool; None for other tool kinds."""
    if tool.get("type") == "function" and isinstance(tool.get("function"), dict):
        return tool["function"]
    return None


def forced_tool(tool_choice: Any) -> str | None:
    """The function name an OpenAI-style ``tool_choice`` forces, if it forces one."""
    if isinstance(tool_choice, dict):
        fn = tool_choice.get("function")
        if isinstance(fn, dict) and fn.get("name"):
            return str(fn["name"])
        if tool_choice.get("name"):
            return str(tool_choice["name"])
    return None


def text_of(content: Any) -> str:
    """Plain text of a message content: a str, or the ``text`` of its parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def parse_arguments(arguments: Any) -> Any:
    """Tool-call arguments as a value (OpenAI sends a JSON string; other APIs want the object)."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            return {"arguments": arguments}
    return arguments if arguments is not None else {}


def json_instruction(spec: ChatSpec) -> str:
    """The instruction that asks for JSON where the API has no native JSON mode (or as a reinforcement)."""
    if spec.output_format == "json_schema" and spec.schema_spec is not None:
        return ("Reply with only a JSON value (no prose, no code fence) that matches this JSON schema: "
                + json.dumps(spec.schema_spec["schema"], separators=(",", ":")))
    return "Reply with only a valid JSON object (no prose, no code fence)."


class Adapter:
    """Base of the wire-format adapters; one instance per ``LLMService``."""

    #: Whether ``embed`` is available at all on this wire format (the provider table can also say no).
    embeddings = True

    def __init__(self, profile: "AetherLLMProfile", base_url: str, *, embeddings: bool = True) -> None:
        self.profile = profile
        self.base_url = base_url
        self.embeddings = self.embeddings and embeddings

    # -- headers ---------------------------------------------------------------------------------------------
    def auth_headers(self, key: str) -> dict[str, str]:
        """The headers that carry the API key (revealed by the caller at the moment of sending)."""
        return {"Authorization": f"Bearer {key}"}

    def default_headers(self) -> dict[str, str]:
        """Non-secret headers the API wants on every request (version pins, attribution)."""
        return {}

    # -- models ----------------------------------------------------------------------------------------------
    def models_call(self) -> HttpCall:
        """A cheap authenticated GET that lists the provider's models (what ``aether-prefect doctor`` probes)."""
        return HttpCall(f"{self.base_url}/models", None)

    # -- chat ------------------------------------------------------------------------------------------------
    def chat_call(self, spec: ChatSpec, *, stream: bool = False) -> HttpCall:
        raise NotImplementedError

    def chat_reply(self, data: Any) -> ChatReply:
        raise NotImplementedError

    def stream_event(self, data: Any) -> StreamEvent:
        """One parsed SSE ``data`` payload; raises LLMError for an error event."""
        raise NotImplementedError

    def fold_usage(self, old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any] | None:
        """Usage so far after one more event: by default the latest report replaces earlier ones."""
        return new if new is not None else old

    def stream_usage(self, usage: dict[str, Any] | None) -> Usage:
        """Normalised usage from what the stream events reported."""
        return Usage.from_provider(usage)

    # -- embeddings ------------------------------------------------------------------------------------------
    def embed_call(self, texts: list[str], model: str) -> HttpCall:
        raise NotImplementedError

    def embed_reply(self, data: Any, count: int) -> tuple[list[list[float]], Usage]:
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------------------------
    @staticmethod
    def bad_reply(what: str, data: Any, fix: str) -> LLMError:
        """A typed error for a reply that lacks what the wire format promises."""
        excerpt = json.dumps(data, default=str)[:300] if not isinstance(data, str) else data[:300]
        return LLMError(f"LLM reply has no {what}: {excerpt!r}. Fix: {fix}")
