"""OpenAI wire formats: Chat Completions (OpenAI, DeepSeek, OpenRouter, LM Studio, Ollama, vLLM, any compatible
API), Azure OpenAI's flavour of it, and the Responses API (``AetherLLMProfile(api="responses")``).

Reasoning models (o1, o3, o4, gpt-5 families) get ``max_completion_tokens`` instead of ``max_tokens`` and no
``temperature``/``top_p`` (those models reject both); ``reasoning_effort`` from the profile is sent to them.
"""

from __future__ import annotations

import logging
from typing import Any

from aether_prefect.errors import ConfigError, LLMError
from aether_prefect.services.llm._providers import is_reasoning_model
from aether_prefect.services.llm._usage import Usage
from aether_prefect.services.llm._wire import (
    Adapter,
    ChatReply,
    ChatSpec,
    HttpCall,
    StreamEvent,
    forced_tool,
    function_of,
    text_of,
    tool_call,
)

_log = logging.getLogger("aether_prefect.llm")
DEFAULT_AZURE_API_VERSION = "2024-10-21"
#: Azure's Responses API is only served under a preview api-version.
DEFAULT_AZURE_RESPONSES_API_VERSION = "2025-04-01-preview"
#: Sampling knobs reasoning models refuse.
_REASONING_DROPPED = ("temperature", "top_p")


def _reasoning_knobs(body: dict[str, Any], model: str, effort: str | None, *, responses: bool) -> None:
    """Drop what reasoning models refuse, add the profile's reasoning effort."""
    dropped = [k for k in _REASONING_DROPPED if k in body]
    for k in dropped:
        body.pop(k)
    if dropped:
        _log.debug("model %s is a reasoning model: not sending %s", model, ", ".join(dropped))
    if effort:
        if responses:
            body.setdefault("reasoning", {"effort": effort})
        else:
            body.setdefault("reasoning_effort", effort)


class ChatCompletions(Adapter):
    """``POST {base}/chat/completions`` and ``POST {base}/embeddings``, key as a Bearer token."""

    def __init__(self, profile: Any, base_url: str, *, embeddings: bool = True, provider: str = "openai") -> None:
        super().__init__(profile, base_url, embeddings=embeddings)
        self.provider = provider

    def default_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.provider == "openrouter":  # OpenRouter's optional attribution headers
            if self.profile.app_url:
                headers["HTTP-Referer"] = self.profile.app_url
            if self.profile.app_name:
                headers["X-Title"] = self.profile.app_name
        return headers

    def _url(self, endpoint: str, model: str) -> tuple[str, dict[str, str]]:
        return f"{self.base_url}/{endpoint}", {}

    def _reasoning(self, model: str) -> bool:
        """The profile's ``reasoning`` when set, else a guess from the model name."""
        forced = self.profile.reasoning
        return forced if forced is not None else is_reasoning_model(model)

    def _with_model(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        return {"model": model, **body}

    def chat_call(self, spec: ChatSpec, *, stream: bool = False) -> HttpCall:
        body: dict[str, Any] = self._with_model({"messages": spec.messages}, spec.model)
        if spec.output_format == "json_object":
            body["response_format"] = {"type": "json_object"}
        elif spec.output_format == "json_schema":
            body["response_format"] = {"type": "json_schema", "json_schema": spec.schema_spec}
        reasoning = self._reasoning(spec.model)
        if spec.max_output_tokens is not None:
            body["max_completion_tokens" if reasoning else "max_tokens"] = spec.max_output_tokens
        if spec.tools is not None:
            body["tools"] = spec.tools
        if spec.tool_choice is not None:
            body["tool_choice"] = spec.tool_choice
        body.update(spec.extra)
        if reasoning:
            _reasoning_knobs(body, spec.model, self.profile.reasoning_effort, responses=False)
        if stream:
            body["stream"] = True
            body.setdefault("stream_options", {"include_usage": True})
        url, params = self._url("chat/completions", spec.model)
        return HttpCall(url, body, params)

    def chat_reply(self, data: Any) -> ChatReply:
        try:
            message = data["choices"][0]["message"]
            content = message.get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise self.bad_reply("choices[0].message", data, "check that base_url points at an OpenAI-compatible "
                                 "/chat/completions API") from None
        calls = [c for c in (message.get("tool_calls") or []) if isinstance(c, dict)]
        return ChatReply(text_of(content), Usage.from_provider(data.get("usage")), calls)

    def stream_event(self, data: Any) -> StreamEvent:
        if not isinstance(data, dict):
            return StreamEvent()
        if isinstance(data.get("error"), dict):
            err = data["error"]
            raise LLMError(f"the LLM stream failed: {err.get('message') or err}", status=err.get("code")
                           if isinstance(err.get("code"), int) else None)
        pieces = [str((c.get("delta") or {}).get("content") or "") for c in data.get("choices") or []
                  if isinstance(c, dict)]
        return StreamEvent(text="".join(pieces), usage=data.get("usage") or None)

    def embed_call(self, texts: list[str], model: str) -> HttpCall:
        url, params = self._url("embeddings", model)
        return HttpCall(url, self._with_model({"input": texts}, model), params)

    def embed_reply(self, data: Any, count: int) -> tuple[list[list[float]], Usage]:
        items = sorted((data.get("data") if isinstance(data, dict) else None) or [], key=lambda d: d.get("index", 0))
        if len(items) != count:
            raise LLMError(f"embeddings reply has {len(items)} vectors for {count} inputs; "
                           "Fix: check the embed_model and base_url of the profile")
        return [list(map(float, d["embedding"])) for d in items], Usage.from_provider(data.get("usage"))


class AzureChatCompletions(ChatCompletions):
    """Azure OpenAI: ``{base}/openai/deployments/<deployment>/...?api-version=``, key in ``api-key``."""

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"api-key": key}

    def _url(self, endpoint: str, model: str) -> tuple[str, dict[str, str]]:
        version = self.profile.api_version or DEFAULT_AZURE_API_VERSION
        return f"{self.base_url}/openai/deployments/{model}/{endpoint}", {"api-version": version}

    def models_call(self) -> HttpCall:
        return HttpCall(f"{self.base_url}/openai/models", None,
                        {"api-version": self.profile.api_version or DEFAULT_AZURE_API_VERSION})

    def _with_model(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        return body  # the deployment in the path names the model


def _responses_input(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages as Responses ``input`` items (tool calls and results become function_call items)."""
    items: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role == "tool":
            items.append({"type": "function_call_output", "call_id": str(m.get("tool_call_id", "")),
                          "output": text_of(m.get("content"))})
            continue
        content = m.get("content")
        if content is not None and content != "" or not m.get("tool_calls"):
            items.append({"role": role, "content": content if content is not None else ""})
        for call in m.get("tool_calls") or []:
            fn = call.get("function") or {}
            items.append({"type": "function_call", "call_id": str(call.get("id", "")), "name": fn.get("name"),
                          "arguments": fn.get("arguments") or "{}"})
    return items


def _responses_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI chat tools (function nested) as Responses tools (flat); other tool kinds pass unchanged."""
    out = []
    for tool in tools:
        fn = function_of(tool)
        out.append({"type": "function", **fn} if fn is not None else tool)
    return out


class Responses(ChatCompletions):
    """OpenAI's Responses API: ``POST {base}/responses`` (input items, ``text.format``, ``max_output_tokens``)."""

    def chat_call(self, spec: ChatSpec, *, stream: bool = False) -> HttpCall:
        body: dict[str, Any] = self._with_model({"input": _responses_input(spec.messages)}, spec.model)
        if spec.output_format == "json_object":
            body["text"] = {"format": {"type": "json_object"}}
        elif spec.output_format == "json_schema" and spec.schema_spec is not None:
            body["text"] = {"format": {"type": "json_schema", **spec.schema_spec}}
        if spec.max_output_tokens is not None:
            body["max_output_tokens"] = spec.max_output_tokens
        if spec.tools is not None:
            body["tools"] = _responses_tools(spec.tools)
        if spec.tool_choice is not None:
            name = forced_tool(spec.tool_choice)
            body["tool_choice"] = {"type": "function", "name": name} if name else spec.tool_choice
        body.update(spec.extra)
        if self._reasoning(spec.model):
            _reasoning_knobs(body, spec.model, self.profile.reasoning_effort, responses=True)
        if stream:
            body["stream"] = True
        url, params = self._url("responses", spec.model)
        return HttpCall(url, body, params)

    def chat_reply(self, data: Any) -> ChatReply:
        output = data.get("output") if isinstance(data, dict) else None
        if not isinstance(output, list):
            raise self.bad_reply("output list", data, "check that base_url serves OpenAI's /responses API, "
                                 "or set api='chat' on the profile")
        if data.get("status") == "failed" and data.get("error"):
            raise LLMError(f"the LLM response failed: {(data['error'] or {}).get('message')}")
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for item in output:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "message":
                texts += [str(p.get("text", "")) for p in item.get("content") or []
                          if isinstance(p, dict) and p.get("type") == "output_text"]
            elif item.get("type") == "function_call":
                calls.append(tool_call(str(item.get("call_id") or item.get("id") or ""), str(item.get("name")),
                                       item.get("arguments")))
        return ChatReply("".join(texts), Usage.from_provider(data.get("usage")), calls)

    def stream_event(self, data: Any) -> StreamEvent:
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "response.output_text.delta":
            return StreamEvent(text=str(data.get("delta") or ""))
        if kind in ("response.completed", "response.incomplete"):
            return StreamEvent(usage=(data.get("response") or {}).get("usage"), done=True)
        if kind in ("response.failed", "error"):
            err = (data.get("response") or {}).get("error") if kind == "response.failed" else data
            message = (err or {}).get("message") if isinstance(err, dict) else err
            raise LLMError(f"the LLM stream failed: {message}")
        return StreamEvent()


class AzureResponses(Responses):
    """Azure OpenAI's Responses API: ``{base}/openai/responses?api-version=``, the deployment as ``model``."""

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"api-key": key}

    def models_call(self) -> HttpCall:
        return HttpCall(f"{self.base_url}/openai/models", None,
                        {"api-version": self.profile.api_version or DEFAULT_AZURE_API_VERSION})

    def _url(self, endpoint: str, model: str) -> tuple[str, dict[str, str]]:
        if endpoint != "responses":
            return AzureChatCompletions._url(self, endpoint, model)  # type: ignore[arg-type]
        version = self.profile.api_version or DEFAULT_AZURE_RESPONSES_API_VERSION
        return f"{self.base_url}/openai/responses", {"api-version": version}

    def embed_call(self, texts: list[str], model: str) -> HttpCall:
        url, params = self._url("embeddings", model)
        return HttpCall(url, {"input": texts}, params)


def check_azure(profile_name: str, model: str | None) -> str:
    """The deployment name, or a ConfigError saying where to set it."""
    if not model:
        raise ConfigError(
            f"LLM profile {profile_name!r} (azure) needs a deployment name: set model= (or azure_deployment=) "
            "for chat, embed_model= for embeddings, or pass model="
        )
    return model
