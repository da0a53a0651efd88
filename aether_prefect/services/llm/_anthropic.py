"""Anthropic's Messages API: ``POST {base}/v1/messages`` with ``x-api-key`` and ``anthropic-version``.

The system prompt travels apart from the messages; ``max_tokens`` is required (the call's, else the profile's
``max_output_tokens``, else ``DEFAULT_ANTHROPIC_MAX_TOKENS``); OpenAI-style tools and tool calls are mapped to
``tool_use``/``tool_result`` blocks and back. JSON modes are asked for in the system prompt (the API has no JSON
switch) and validated by the service like every provider's. Anthropic has no embeddings API.
"""

from __future__ import annotations

from typing import Any

from aether_prefect.errors import LLMError
from aether_prefect.services.llm._providers import DEFAULT_ANTHROPIC_MAX_TOKENS
from aether_prefect.services.llm._usage import Usage
from aether_prefect.services.llm._wire import (
    Adapter,
    ChatReply,
    ChatSpec,
    HttpCall,
    StreamEvent,
    forced_tool,
    function_of,
    json_instruction,
    parse_arguments,
    text_of,
    tool_call,
)

ANTHROPIC_VERSION = "2023-06-01"
#: OpenAI-style keywords renamed for the Messages API.
_RENAMED = {"stop": "stop_sequences"}


def _blocks(content: Any) -> list[dict[str, Any]]:
    """Message content as Anthropic content blocks (a str becomes one text block; blocks pass through)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                out.append({"type": "text", "text": str(part.get("text", ""))})
            elif isinstance(part, dict):
                out.append(part)
        return out
    return [] if content is None else [{"type": "text", "text": str(content)}]


def _messages(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """(system text, Messages API messages): tool results become user ``tool_result`` blocks, same roles merged."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role in ("system", "developer"):
            system.append(text_of(m.get("content")))
            continue
        if role == "tool":
            role, blocks = "user", [{"type": "tool_result", "tool_use_id": str(m.get("tool_call_id", "")),
                                     "content": text_of(m.get("content"))}]
        else:
            role = "assistant" if role == "assistant" else "user"
            blocks = _blocks(m.get("content"))
            for call in m.get("tool_calls") or []:
                fn = call.get("function") or {}
                blocks.append({"type": "tool_use", "id": str(call.get("id", "")), "name": fn.get("name"),
                               "input": parse_arguments(fn.get("arguments"))})
        if out and out[-1]["role"] == role:
            out[-1]["content"] = _blocks(out[-1]["content"]) + blocks
        else:
            simple = len(blocks) == 1 and blocks[0].get("type") == "text"
            out.append({"role": role, "content": blocks[0]["text"] if simple else blocks})
    return "\n\n".join(s for s in system if s), out


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        fn = function_of(tool)
        if fn is None:
            out.append(tool)  # already an Anthropic tool (or a server tool)
            continue
        out.append({"name": fn["name"], "description": fn.get("description", ""),
                    "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}})
    return out


def _tool_choice(choice: Any) -> Any:
    name = forced_tool(choice)
    if name:
        return {"type": "tool", "name": name}
    if choice == "required":
        return {"type": "any"}
    if choice in ("auto", "none"):
        return {"type": choice}
    return choice


def _usage(raw: Any) -> dict[str, int]:
    """Anthropic usage as prompt/completion tokens (cache writes and reads count as prompt tokens)."""
    raw = raw if isinstance(raw, dict) else {}

    def n(key: str) -> int:
        v = raw.get(key)
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0

    prompt = n("input_tokens") + n("cache_creation_input_tokens") + n("cache_read_input_tokens")
    completion = n("output_tokens")
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Messages(Adapter):
    """Anthropic Messages API adapter."""

    embeddings = False

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key}

    def default_headers(self) -> dict[str, str]:
        return {"anthropic-version": ANTHROPIC_VERSION}

    def _root(self) -> str:
        return self.base_url.removesuffix("/v1")

    def models_call(self) -> HttpCall:
        return HttpCall(f"{self._root()}/v1/models", None)

    def chat_call(self, spec: ChatSpec, *, stream: bool = False) -> HttpCall:
        system, messages = _messages(spec.messages)
        if spec.output_format != "text":
            system = f"{system}\n\n{json_instruction(spec)}".strip()
        body: dict[str, Any] = {
            "model": spec.model,
            "max_tokens": spec.max_output_tokens or self.profile.max_output_tokens or DEFAULT_ANTHROPIC_MAX_TOKENS,
            "messages": messages,
        }
        if system:
            body["system"] = system
        if spec.tools is not None:
            body["tools"] = _tools(spec.tools)
        if spec.tool_choice is not None:
            body["tool_choice"] = _tool_choice(spec.tool_choice)
        body.update({_RENAMED.get(k, k): v for k, v in spec.extra.items()})
        if isinstance(body.get("stop_sequences"), str):
            body["stop_sequences"] = [body["stop_sequences"]]
        if stream:
            body["stream"] = True
        return HttpCall(f"{self._root()}/v1/messages", body)

    def chat_reply(self, data: Any) -> ChatReply:
        content = data.get("content") if isinstance(data, dict) else None
        if not isinstance(content, list):
            raise self.bad_reply("content blocks", data, "check that base_url points at Anthropic's API "
                                 "(https://api.anthropic.com)")
        texts = [str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") == "text"]
        calls = [tool_call(str(b.get("id", "")), str(b.get("name", "")), b.get("input"))
                 for b in content if isinstance(b, dict) and b.get("type") == "tool_use"]
        return ChatReply("".join(texts), Usage.from_provider(_usage(data.get("usage"))), calls)

    def stream_event(self, data: Any) -> StreamEvent:
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            return StreamEvent(text=str(delta.get("text") or "") if delta.get("type") == "text_delta" else "")
        if kind == "message_start":
            return StreamEvent(usage=(data.get("message") or {}).get("usage") or {})
        if kind == "message_delta":
            return StreamEvent(usage=data.get("usage") or {})
        if kind == "message_stop":
            return StreamEvent(done=True)
        if kind == "error":
            err = data.get("error") or {}
            status = 529 if err.get("type") == "overloaded_error" else None
            raise LLMError(f"the LLM stream failed: {err.get('type', 'error')}: {err.get('message', '')}",
                           status=status)
        return StreamEvent()  # ping, content_block_start/stop

    def fold_usage(self, old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any] | None:
        """message_start carries the input tokens, message_delta the cumulative output tokens: merge them."""
        return {**(old or {}), **new} if new is not None else old

    def stream_usage(self, usage: dict[str, Any] | None) -> Usage:
        return Usage.from_provider(_usage(usage))
