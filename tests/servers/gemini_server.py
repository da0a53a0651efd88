"""A loopback Gemini API server, written from Google's public Gemini API reference.

- `POST /v1beta/models/<model>:generateContent` and `:streamGenerateContent?alt=sse` (SSE `data:` frames, each a
  GenerateContentResponse, no end marker): the key in `x-goog-api-key` (or `?key=`), else 400
  `INVALID_ARGUMENT` "API key not valid"; roles `user`/`model` only; `systemInstruction` apart; replies
  `candidates[0].content.parts` with "echo: <last user text>" (JSON `{"echo": ...}` when
  `generationConfig.responseMimeType` is `application/json`), `functionCall` parts under
  `toolConfig.functionCallingConfig.mode` `ANY`; `usageMetadata` {promptTokenCount, candidatesTokenCount,
  totalTokenCount}.
- `:embedContent` and `:batchEmbedContents`: `embed_text` vectors (no token usage, as the real API).
- Error bodies: `{"error": {"code", "message", "status"}}`, e.g. 429 `RESOURCE_EXHAUSTED`.
Scripts use the method name as the path: `server.script("generateContent", [...])`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from tests.servers.openai_server import FakeOpenAI, Reply, count_tokens, embed_text

FAKE_GOOGLE_KEY = "AIza-fake-test-key-0123456789SECRET"


def google_error(code: int, status: str, message: str, headers: dict[str, str] | None = None) -> Reply:
    """A scripted Google API error reply (e.g. 429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE)."""
    return Reply(status=code, json={"error": {"code": code, "message": message, "status": status}},
                 headers=headers or {})


def _text(parts: Any) -> str:
    return " ".join(str(p.get("text", "")) for p in parts or [] if isinstance(p, dict) and "text" in p)


def generate_response(parts: list[dict[str, Any]], prompt: int, completion: int, *, model: str,
                      finish: str = "STOP") -> dict[str, Any]:
    """A GenerateContentResponse body."""
    return {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
            "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": completion,
                              "totalTokenCount": prompt + completion},
            "modelVersion": model}


class FakeGemini(FakeOpenAI):
    """The Gemini API on 127.0.0.1; `.base_url` is the root (like https://generativelanguage.googleapis.com)."""

    sse_done_marker = False

    def __init__(self, api_key: str = FAKE_GOOGLE_KEY, port: int | None = None) -> None:
        super().__init__(api_key=api_key, port=port)

    @property
    def base_url(self) -> str:
        return self.url

    def profile(self, **fields: Any) -> Any:
        values: dict[str, Any] = {"provider": "google", "model": "gemini-fake", "embed_model": "gemini-embed-fake"}
        values.update(fields)
        return super().profile(**values)

    @staticmethod
    def _norm(path: str) -> str:
        path = "/" + path.lstrip("/")
        return "/" + path.rsplit(":", 1)[1] if ":" in path else path.removeprefix("/v1beta")

    def _authorized(self, request: Request) -> bool:
        return self.api_key in (request.headers.get("x-goog-api-key"), request.query_params.get("key"))

    def _unauthorized(self) -> Response:
        return JSONResponse({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                                       "status": "INVALID_ARGUMENT"}}, status_code=400)

    @staticmethod
    def _invalid(msg: str) -> Response:
        return JSONResponse({"error": {"code": 400, "message": msg, "status": "INVALID_ARGUMENT"}}, status_code=400)

    def _route(self, request: Request, body: Any) -> Response:
        path = request.url.path
        m = re.match(r"^/v1beta/models/([^/:]+):(\w+)$", path)
        if m and request.method == "POST":
            model, method = m.groups()
            if method == "generateContent":
                return self._generate(model, body or {}, stream=False)
            if method == "streamGenerateContent":
                return self._generate(model, body or {}, stream=request.query_params.get("alt") == "sse")
            if method == "embedContent":
                return JSONResponse({"embedding": {"values": embed_text(_text((body or {})["content"]["parts"]))}})
            if method == "batchEmbedContents":
                reqs = (body or {}).get("requests") or []
                for r in reqs:
                    if r.get("model") != f"models/{model}":
                        return self._invalid(f"Model {r.get('model')!r} in the request does not match models/{model}")
                return JSONResponse({"embeddings": [{"values": embed_text(_text(r["content"]["parts"]))} for r in reqs]})
        if path == "/v1beta/models":
            return JSONResponse({"models": [{"name": "models/gemini-fake"}, {"name": "models/gemini-embed-fake"}]})
        return JSONResponse({"error": {"code": 404, "message": f"Not found: {path}", "status": "NOT_FOUND"}},
                            status_code=404)

    def _generate(self, model: str, body: dict[str, Any], *, stream: bool) -> Response:
        contents = body.get("contents") or []
        if not contents:
            return self._invalid("* GenerateContentRequest.contents: contents is not specified")
        for c in contents:
            if c.get("role") not in ("user", "model"):
                return self._invalid("Please use a valid role: user, model.")
        system = _text((body.get("systemInstruction") or {}).get("parts"))
        last_user = next((_text(c.get("parts")) for c in reversed(contents)
                          if c.get("role") == "user" and _text(c.get("parts"))), "")
        config = body.get("generationConfig") or {}
        content = (json.dumps({"echo": last_user}) if config.get("responseMimeType") == "application/json"
                   else f"echo: {last_user}")
        prompt = count_tokens(" ".join([system, *(_text(c.get("parts")) for c in contents)]))
        completion = count_tokens(content)
        fcc = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
        decls = [d for t in body.get("tools") or [] for d in t.get("functionDeclarations") or []]
        if decls and fcc.get("mode") == "ANY":
            name = (fcc.get("allowedFunctionNames") or [decls[0]["name"]])[0]
            parts = [{"functionCall": {"name": name, "args": {"echo": last_user}}}]
            return JSONResponse(generate_response(parts, prompt, completion, model=model))
        if not stream:
            return JSONResponse(generate_response([{"text": content}], prompt, completion, model=model))
        pieces = re.findall(r"\S+\s*|\s+", content) or [""]
        chunks = []
        for i, piece in enumerate(pieces):
            chunk = generate_response([{"text": piece}], prompt, count_tokens("".join(pieces[:i + 1])), model=model)
            if i < len(pieces) - 1:
                chunk["candidates"][0].pop("finishReason")
            chunks.append(chunk)
        return StreamingResponse(self._sse(Reply(sse=chunks)), media_type="text/event-stream")


@pytest.fixture(scope="session")
def gemini_server_session() -> Iterator[FakeGemini]:
    server = FakeGemini().start()
    yield server
    server.stop()


@pytest.fixture()
def gemini_server(gemini_server_session: FakeGemini) -> FakeGemini:
    """The session's fake Gemini server, reset for this test."""
    gemini_server_session.reset()
    return gemini_server_session
