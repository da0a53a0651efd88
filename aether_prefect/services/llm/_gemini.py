"""Google's Gemini API: ``models/<model>:generateContent`` / ``:streamGenerateContent?alt=sse`` /
``:embedContent`` / ``:batchEmbedContents`` under ``{base}/v1beta``, the key in ``x-goog-api-key``.

Roles are mapped (``assistant`` -> ``model``, system messages -> ``systemInstruction``), OpenAI-style tools to
``functionDeclarations`` and ``functionCall`` parts back to tool calls, JSON modes to ``responseMimeType`` (and
``responseJsonSchema``), usage from ``usageMetadata``. The embeddings API reports no token usage: embed calls
count as calls with 0 tokens.
"""

from __future__ import annotations

from typing import Any

from aether_prefect.errors import LLMError
from aether_prefect.services.llm._usage import Usage
from aether_prefect.services.llm._wire import (
    Adapter,
    ChatReply,
    ChatSpec,
    HttpCall,
    StreamEvent,
    forced_tool,
    function_of,
    parse_arguments,
    text_of,
    tool_call,
)

API_VERSION = "v1beta"
#: OpenAI-style keywords that belong in ``generationConfig`` (renamed to Gemini's spelling).
_GENERATION = {"temperature": "temperature", "top_p": "topP", "top_k": "topK", "stop": "stopSequences",
               "seed": "seed", "presence_penalty": "presencePenalty", "frequency_penalty": "frequencyPenalty",
               "n": "candidateCount"}


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, list):
        return [{"text": str(p.get("text", ""))} if p.get("type") == "text" else p
                for p in content if isinstance(p, dict)]
    text = text_of(content)
    return [{"text": text}] if text else []


def _contents(messages: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """(system texts, Gemini contents): assistant -> model, tool results -> functionResponse parts."""
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name (functionResponse needs the name)
    for m in messages:
        role = m.get("role")
        if role in ("system", "developer"):
            system.append(text_of(m.get("content")))
            continue
        if role == "tool":
            call_id = str(m.get("tool_call_id", ""))
            name = m.get("name") or names.get(call_id, call_id)
            role, parts = "user", [{"functionResponse": {"name": name,
                                                          "response": {"content": text_of(m.get("content"))}}}]
        else:
            role = "model" if role == "assistant" else "user"
            parts = _parts(m.get("content"))
            for call in m.get("tool_calls") or []:
                fn = call.get("function") or {}
                names[str(call.get("id", ""))] = str(fn.get("name"))
                parts.append({"functionCall": {"name": fn.get("name"), "args": parse_arguments(fn.get("arguments"))}})
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"] += parts
        else:
            contents.append({"role": role, "parts": parts})
    return system, contents


def _usage(meta: Any) -> dict[str, int]:
    """usageMetadata as prompt/completion tokens (thinking tokens are billed as output)."""
    meta = meta if isinstance(meta, dict) else {}

    def n(key: str) -> int:
        v = meta.get(key)
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0

    prompt = n("promptTokenCount")
    completion = n("candidatesTokenCount") + n("thoughtsTokenCount")
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": n("totalTokenCount") or prompt + completion}


def _model_path(model: str) -> str:
    return model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"


class GenerateContent(Adapter):
    """Gemini adapter."""

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-goog-api-key": key}

    def _root(self) -> str:
        root = self.base_url
        if not root.rstrip("/").endswith(("/v1beta", "/v1", "/v1alpha")):
            root = f"{root}/{API_VERSION}"
        return root

    def _url(self, model: str, method: str) -> str:
        return f"{self._root()}/{_model_path(model)}:{method}"

    def models_call(self) -> HttpCall:
        return HttpCall(f"{self._root()}/models", None)

    def chat_call(self, spec: ChatSpec, *, stream: bool = False) -> HttpCall:
        system, contents = _contents(spec.messages)
        body: dict[str, Any] = {"contents": contents}
        if system:
            body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
        config: dict[str, Any] = {}
        if spec.output_format != "text":
            config["responseMimeType"] = "application/json"
            if spec.output_format == "json_schema" and spec.schema_spec is not None:
                config["responseJsonSchema"] = spec.schema_spec["schema"]
        if spec.max_output_tokens is not None:
            config["maxOutputTokens"] = spec.max_output_tokens
        if spec.tools is not None:
            decls = [{k: v for k, v in fn.items() if k in ("name", "description", "parameters")}
                     for fn in (function_of(t) for t in spec.tools) if fn is not None]
            native = [t for t in spec.tools if function_of(t) is None]
            body["tools"] = ([{"functionDeclarations": decls}] if decls else []) + native
        if spec.tool_choice is not None:
            name = forced_tool(spec.tool_choice)
            mode = {"required": "ANY", "auto": "AUTO", "none": "NONE"}.get(str(spec.tool_choice), "ANY")
            fcc: dict[str, Any] = {"mode": "ANY" if name else mode}
            if name:
                fcc["allowedFunctionNames"] = [name]
            body["toolConfig"] = {"functionCallingConfig": fcc}
        for key, value in spec.extra.items():
            if key in _GENERATION:
                config[_GENERATION[key]] = [value] if key == "stop" and isinstance(value, str) else value
            else:
                body[key] = value
        if config:
            body["generationConfig"] = {**config, **body.get("generationConfig", {})}
        if stream:
            return HttpCall(self._url(spec.model, "streamGenerateContent"), body, {"alt": "sse"})
        return HttpCall(self._url(spec.model, "generateContent"), body)

    def _candidate(self, data: Any) -> tuple[str, list[dict[str, Any]]]:
        candidates = data.get("candidates") if isinstance(data, dict) else None
        if not candidates:
            feedback = (data or {}).get("promptFeedback") if isinstance(data, dict) else None
            if isinstance(feedback, dict) and feedback.get("blockReason"):
                raise LLMError(f"Gemini blocked the prompt ({feedback['blockReason']}). Fix: rephrase the prompt "
                               "or adjust safetySettings (pass safetySettings=[...] to chat)")
            return "", []
        parts = ((candidates[0] or {}).get("content") or {}).get("parts") or []
        texts = [str(p.get("text", "")) for p in parts if isinstance(p, dict) and "text" in p and not p.get("thought")]
        calls = [tool_call(str(p["functionCall"].get("id") or f"call_{i}"), str(p["functionCall"].get("name")),
                           p["functionCall"].get("args"))
                 for i, p in enumerate(parts) if isinstance(p, dict) and isinstance(p.get("functionCall"), dict)]
        return "".join(texts), calls

    def chat_reply(self, data: Any) -> ChatReply:
        if not isinstance(data, dict) or ("candidates" not in data and "promptFeedback" not in data):
            raise self.bad_reply("candidates", data, "check that base_url points at the Gemini API "
                                 "(https://generativelanguage.googleapis.com)")
        text, calls = self._candidate(data)
        return ChatReply(text, Usage.from_provider(_usage(data.get("usageMetadata"))), calls)

    def stream_event(self, data: Any) -> StreamEvent:
        if not isinstance(data, dict):
            return StreamEvent()
        if isinstance(data.get("error"), dict):
            err = data["error"]
            raise LLMError(f"the LLM stream failed: {err.get('status', '')}: {err.get('message', '')}",
                           status=err.get("code") if isinstance(err.get("code"), int) else None)
        text, _ = self._candidate(data)
        return StreamEvent(text=text, usage=data.get("usageMetadata"))

    def stream_usage(self, usage: dict[str, Any] | None) -> Usage:
        return Usage.from_provider(_usage(usage))

    def embed_call(self, texts: list[str], model: str) -> HttpCall:
        if len(texts) == 1:
            return HttpCall(self._url(model, "embedContent"), {"content": {"parts": [{"text": texts[0]}]}})
        requests = [{"model": _model_path(model), "content": {"parts": [{"text": t}]}} for t in texts]
        return HttpCall(self._url(model, "batchEmbedContents"), {"requests": requests})

    def embed_reply(self, data: Any, count: int) -> tuple[list[list[float]], Usage]:
        data = data if isinstance(data, dict) else {}
        items = [data["embedding"]] if isinstance(data.get("embedding"), dict) else data.get("embeddings") or []
        if len(items) != count:
            raise LLMError(f"embeddings reply has {len(items)} vectors for {count} inputs; "
                           "Fix: check the embed_model and base_url of the profile")
        return [list(map(float, item.get("values") or [])) for item in items], Usage()
