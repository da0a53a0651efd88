"""A loopback Anthropic Messages API server, written from Anthropic's public API reference.

- `POST /v1/messages`: needs `x-api-key` (401 `authentication_error` otherwise) and `anthropic-version` (400);
  `max_tokens` required; only `user`/`assistant` roles in `messages` (the system prompt is the top-level
  `system`); replies `{"type": "message", "content": [blocks], "stop_reason", "usage": {input_tokens,
  output_tokens}}` with text "echo: <last user text>" (a JSON object `{"echo": ...}` when the system prompt asks
  for JSON); `tool_choice` `any`/`tool` gives a `tool_use` block; `stream: true` sends the event types
  `message_start`, `content_block_start`, `ping`, `content_block_delta`, `content_block_stop`,
  `message_delta`, `message_stop`.
- Error bodies: `{"type": "error", "error": {"type": "...", "message": "..."}}`; 529 is `overloaded_error`.
- No embeddings endpoint (Anthropic has none). Scripts and recorded requests as in `FakeOpenAI`.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from tests.servers.openai_server import FakeOpenAI, Reply, count_tokens

FAKE_ANTHROPIC_KEY = "sk-ant-fake-test-key-0123456789SECRET"


def anthropic_error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Reply:
    """A scripted Anthropic error reply (e.g. 529 overloaded_error, 429 rate_limit_error)."""
    return Reply(status=status, json={"type": "error", "error": {"type": kind, "message": message}},
                 headers=headers or {})


def message(content: list[dict[str, Any]], input_tokens: int, output_tokens: int, *, model: str = "claude-fake",
            stop_reason: str = "end_turn") -> dict[str, Any]:
    """A Messages API reply body."""
    return {"id": f"msg_{uuid.uuid4().hex[:16]}", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(b.get("text") or b.get("content") or "") for b in content if isinstance(b, dict))
    return ""


def _said(content: Any) -> str:
    """What the user wrote (text blocks only, not tool results)."""
    if isinstance(content, str):
        return content
    return " ".join(str(b.get("text", "")) for b in content or [] if isinstance(b, dict) and b.get("type") == "text")


def stream_events(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The event sequence of a streamed text reply."""
    start = {**body, "content": [], "stop_reason": None,
             "usage": {"input_tokens": body["usage"]["input_tokens"], "output_tokens": 1}}
    text = "".join(b.get("text", "") for b in body["content"] if b.get("type") == "text")
    pieces = re.findall(r"\S+\s*|\s+", text) or [""]
    return [{"type": "message_start", "message": start},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            {"type": "ping"},
            *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}} for p in pieces),
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
             "usage": {"output_tokens": body["usage"]["output_tokens"]}},
            {"type": "message_stop"}]


class FakeAnthropic(FakeOpenAI):
    """The Messages API on 127.0.0.1; `.base_url` is the root (like https://api.anthropic.com)."""

    sse_done_marker = False

    def __init__(self, api_key: str = FAKE_ANTHROPIC_KEY, port: int | None = None) -> None:
        super().__init__(api_key=api_key, port=port)

    @property
    def base_url(self) -> str:
        return self.url

    def profile(self, **fields: Any) -> Any:
        values: dict[str, Any] = {"provider": "anthropic", "model": "claude-fake", "embed_model": None}
        values.update(fields)
        return super().profile(**values)

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("x-api-key") == self.api_key

    def _unauthorized(self) -> Response:
        return JSONResponse({"type": "error", "error": {"type": "authentication_error",
                                                        "message": "invalid x-api-key"}}, status_code=401)

    @staticmethod
    def _invalid(msg: str) -> Response:
        return JSONResponse({"type": "error", "error": {"type": "invalid_request_error", "message": msg}},
                            status_code=400)

    def _route(self, request: Request, body: Any) -> Response:
        endpoint = self._norm(request.url.path)
        if endpoint == "/messages" and request.method == "POST":
            if not request.headers.get("anthropic-version"):
                return self._invalid("anthropic-version: header is required")
            return self._messages(body or {})
        if endpoint == "/models":
            return JSONResponse({"data": [{"type": "model", "id": "claude-fake", "display_name": "Claude Fake"}],
                                 "has_more": False})
        return JSONResponse({"type": "error", "error": {"type": "not_found_error",
                                                        "message": f"Not found: {request.url.path}"}}, status_code=404)

    def _messages(self, body: dict[str, Any]) -> Response:
        if not isinstance(body.get("max_tokens"), int):
            return self._invalid("max_tokens: Field required")
        messages = body.get("messages") or []
        if not messages:
            return self._invalid("messages: at least one message is required")
        for i, m in enumerate(messages):
            if m.get("role") not in ("user", "assistant"):
                return self._invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        model = str(body.get("model") or "claude-fake")
        system = _text(body.get("system"))
        last_user = next((_said(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        wants_json = "JSON" in system
        content = json.dumps({"echo": last_user}) if wants_json else f"echo: {last_user}"
        prompt = count_tokens(" ".join([system, *(_text(m.get("content")) for m in messages)]))
        completion = count_tokens(content)
        tools = body.get("tools") or []
        choice = body.get("tool_choice") or {}
        if tools and choice.get("type") in ("any", "tool"):
            name = choice.get("name") or tools[0]["name"]
            block = {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:12]}", "name": name,
                     "input": {"echo": last_user}}
            return JSONResponse(message([block], prompt, completion, model=model, stop_reason="tool_use"))
        reply = message([{"type": "text", "text": content}], prompt, completion, model=model)
        if body.get("stream"):
            return StreamingResponse(self._sse(Reply(sse=stream_events(reply))), media_type="text/event-stream")
        return JSONResponse(reply)


@pytest.fixture(scope="session")
def anthropic_server_session() -> Iterator[FakeAnthropic]:
    server = FakeAnthropic().start()
    yield server
    server.stop()


@pytest.fixture()
def anthropic_server(anthropic_server_session: FakeAnthropic) -> FakeAnthropic:
    """The session's fake Anthropic server, reset for this test."""
    anthropic_server_session.reset()
    return anthropic_server_session
