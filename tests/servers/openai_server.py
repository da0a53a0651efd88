"""A real OpenAI-compatible HTTP server on 127.0.0.1 (Starlette under uvicorn, background thread), scriptable per test.

Contract used by several test files:
- `embed_text(text, dim=384)`: deterministic hashed bag-of-words vector, L2-normalised.
- `FakeOpenAI`: `.base_url` ("http://127.0.0.1:PORT/v1"), `.api_key` (required as `Authorization: Bearer`
  or Azure's `api-key` header; 401 otherwise), `.requests` (recorded `Recorded` items), `.script(path, [...])`
  to queue replies, `.reset()`, `.profile(**fields)` to build an AetherLLMProfile pointing here.
- Default `/v1/chat/completions`: content "echo: <last user message>" (JSON modes: `{"echo": ...}`),
  usage counted in words; `stream: true` streams SSE chunks and a final usage chunk.
- Default `/v1/embeddings`: `embed_text` vectors, order preserved, usage counted.
- Azure paths (`/openai/deployments/<name>/chat/completions?api-version=...`, `/openai/models`) are served the same way.
- Default `/v1/responses` (OpenAI's Responses API): output items, `text.format` JSON modes, flat function tools,
  `response.*` stream events ending with `response.completed` (no `[DONE]`).
- Reasoning models (`o1`, `o3`, `o4-mini`, `gpt-5`...) get OpenAI's 400 for `max_tokens` or a non-default
  `temperature`, as the real API answers.
- Fixtures: session `openai_server`, function `llm_server` (same server, reset per test).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.servers.prefect_server import free_port

FAKE_API_KEY = "sk-fake-test-key-0123456789abcdefSECRET"
_WORD_RE = re.compile(r"\w+")


def _tokens(text: str) -> list[str]:
    """Lowercased word tokens of a text."""
    return _WORD_RE.findall(text.lower())


def embed_text(text: str, dim: int = 384) -> list[float]:
    """Deterministic hashed bag-of-words embedding, L2-normalised (all zeros for a text with no words)."""
    vec = [0.0] * dim
    for tok in _tokens(text):
        h = int.from_bytes(hashlib.blake2b(tok.encode(), digest_size=8).digest(), "big")
        vec[h % dim] += 1.0
    norm = math.sqrt(sum(v * v for v in vec))
    return [v / norm for v in vec] if norm else vec


def count_tokens(text: str) -> int:
    """The fake server's token count: words, at least 1."""
    return max(1, len(_tokens(text)))


@dataclass
class Reply:
    """A scripted reply: status, JSON or raw body, headers, a delay before answering, or SSE chunks.

    `sse`: list of chunks (dict -> JSON, str -> sent verbatim) sent as `data:` events, then
    `data: [DONE]` unless `sse_done=False`; `chunk_delay` seconds between chunks.
    """

    status: int = 200
    json: Any = None
    body: str | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    sse: list[Any] | None = None
    sse_done: bool = True
    chunk_delay: float = 0.0


@dataclass
class Recorded:
    """One request the server received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    at: float


def _as_reply(item: Reply | dict[str, Any]) -> Reply:
    """Accept a Reply or a dict of its fields."""
    return item if isinstance(item, Reply) else Reply(**item)


def _text_of(content: Any) -> str:
    """Text of a message content: a str, or a list of parts with 'text'."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _bad_param(message: str, param: str, code: str) -> Response:
    """An OpenAI 400 ``invalid_request_error`` naming a parameter."""
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                   "code": code}}, status_code=400)


def chat_completion(model: str, content: str | None, prompt_tokens: int, completion_tokens: int,
                    *, tool_calls: list[dict[str, Any]] | None = None, finish_reason: str = "stop") -> dict[str, Any]:
    """A chat.completion body as OpenAI returns it."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def stream_chunks(model: str, content: str, prompt_tokens: int, completion_tokens: int) -> list[dict[str, Any]]:
    """chat.completion.chunk events for a content (one per word), then a usage chunk with no choices."""
    cid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
    base = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    pieces = re.findall(r"\S+\s*|\s+", content) or [""]
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    chunks += [{**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({**base, "choices": [], "usage": {"prompt_tokens": prompt_tokens,
                                                   "completion_tokens": completion_tokens,
                                                   "total_tokens": prompt_tokens + completion_tokens}})
    return chunks


class FakeOpenAI:
    """The server: start()/stop(), scripted replies per path, recorded requests."""

    def __init__(self, api_key: str = FAKE_API_KEY, port: int | None = None) -> None:
        self.api_key = api_key
        self.port = port or free_port()
        self.requests: list[Recorded] = []
        self._scripts: dict[str, deque[Reply]] = {}
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST", "PUT", "DELETE"])])

    # ---- control -------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Root URL, no path."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI-style base URL (ends in /v1)."""
        return f"{self.url}/v1"

    def start(self) -> "FakeOpenAI":
        """Run uvicorn in a daemon thread and wait until it serves."""
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False, lifespan="off", timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fake-openai", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake OpenAI server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop uvicorn and join its thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def reset(self) -> None:
        """Forget recorded requests and queued scripts."""
        with self._lock:
            self.requests.clear()
            self._scripts.clear()

    def script(self, path: str, replies: list[Reply | dict[str, Any]]) -> None:
        """Queue replies for a path ('/v1/chat/completions', '/chat/completions', '/embeddings'...), used in order."""
        key = self._norm(path)
        with self._lock:
            self._scripts.setdefault(key, deque()).extend(_as_reply(r) for r in replies)

    def requests_to(self, suffix: str) -> list[Recorded]:
        """Recorded requests whose path ends with a suffix (e.g. 'chat/completions')."""
        with self._lock:
            return [r for r in self.requests if r.path.endswith(suffix)]

    def profile(self, **fields: Any) -> Any:
        """An AetherLLMProfile pointing at this server (fields override the defaults)."""
        from pydantic import SecretStr

        from aether_prefect.blocks import AetherLLMProfile

        values: dict[str, Any] = {"base_url": self.base_url, "api_key": SecretStr(self.api_key),
                                  "model": "fake-chat", "embed_model": "fake-embed", "timeout_s": 10.0,
                                  "max_retries": 3}
        values.update(fields)
        return AetherLLMProfile(**values)

    # ---- serving -------------------------------------------------------------------------------------------
    @staticmethod
    def _norm(path: str) -> str:
        """Path key for scripts: the endpoint after '/v1' or after an Azure deployment name."""
        path = "/" + path.lstrip("/")
        m = re.match(r"^/openai/deployments/[^/]+(/.*)$", path)
        if m:
            return m.group(1)
        if path == "/openai/models":  # Azure's model list (not under a deployment)
            return "/models"
        return path[3:] if path.startswith("/v1/") else path

    def _next_script(self, path: str) -> Reply | None:
        with self._lock:
            queue = self._scripts.get(self._norm(path))
            return queue.popleft() if queue else None

    def _authorized(self, request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        return auth == f"Bearer {self.api_key}" or request.headers.get("api-key") == self.api_key

    async def _handle(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with self._lock:
            self.requests.append(Recorded(request.method, request.url.path, dict(request.query_params),
                                          {k.lower(): v for k, v in request.headers.items()}, body, time.time()))
        if not self._authorized(request):
            return self._unauthorized()
        scripted = self._next_script(request.url.path)
        if scripted is not None:
            return await self._scripted(scripted)
        return self._route(request, body)

    def _unauthorized(self) -> Response:
        return JSONResponse({"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                                       "code": "invalid_api_key"}}, status_code=401)

    def _route(self, request: Request, body: Any) -> Response:
        """The default reply of an endpoint (no script queued)."""
        endpoint = self._norm(request.url.path)
        if endpoint == "/chat/completions" and request.method == "POST":
            return self._chat(body or {})
        if endpoint == "/responses" and request.method == "POST":
            return self._responses(body or {})
        if endpoint == "/embeddings" and request.method == "POST":
            return self._embeddings(body or {})
        if endpoint == "/models":
            return JSONResponse({"object": "list", "data": [{"id": "fake-chat", "object": "model"},
                                                            {"id": "fake-embed", "object": "model"}]})
        return JSONResponse({"error": {"message": f"Unknown path {request.url.path}", "type": "not_found"}},
                            status_code=404)

    async def _scripted(self, reply: Reply) -> Response:
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.sse is not None:
            return StreamingResponse(self._sse(reply), status_code=reply.status, headers=reply.headers,
                                     media_type="text/event-stream")
        if reply.body is not None:
            return Response(reply.body, status_code=reply.status, headers=reply.headers,
                            media_type=reply.headers.get("content-type", "application/json"))
        return JSONResponse(reply.json if reply.json is not None else {}, status_code=reply.status,
                            headers=reply.headers)

    #: Whether streams end with ``data: [DONE]`` (Chat Completions) or just end (Responses, Anthropic, Gemini).
    sse_done_marker = True

    async def _sse(self, reply: Reply) -> AsyncIterator[bytes]:
        """SSE frames of a reply; a dict chunk with a "type" also gets an ``event:`` line (Responses, Anthropic)."""
        for chunk in reply.sse or []:
            data = chunk if isinstance(chunk, str) else json.dumps(chunk)
            event = chunk.get("type") if isinstance(chunk, dict) and isinstance(chunk.get("type"), str) else None
            yield (f"event: {event}\n" if event else "").encode() + f"data: {data}\n\n".encode()
            if reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
        if reply.sse_done and self.sse_done_marker:
            yield b"data: [DONE]\n\n"

    def _reasoning_refusal(self, body: dict[str, Any], model: str, *, responses: bool = False) -> Response | None:
        """OpenAI's 400s for what reasoning models (o1, o3, o4, gpt-5) do not take."""
        if not re.match(r"^(o\d|gpt-5)", model):
            return None
        if "max_tokens" in body and not responses:
            return _bad_param("Unsupported parameter: 'max_tokens' is not supported with this model. "
                              "Use 'max_completion_tokens' instead.", "max_tokens", "unsupported_parameter")
        if body.get("temperature") not in (None, 1):
            return _bad_param(f"Unsupported value: 'temperature' does not support {body['temperature']} with this "
                              "model. Only the default (1) value is supported.", "temperature", "unsupported_value")
        return None

    def _chat(self, body: dict[str, Any]) -> Response:
        messages = body.get("messages") or []
        model = str(body.get("model") or "fake-chat")
        refusal = self._reasoning_refusal(body, model)
        if refusal is not None:
            return refusal
        last_user = next((_text_of(m.get("content")) for m in reversed(messages)
                          if isinstance(m, dict) and m.get("role") == "user"), "")
        fmt = (body.get("response_format") or {}).get("type")
        content = json.dumps({"echo": last_user}) if fmt in ("json_object", "json_schema") else f"echo: {last_user}"
        prompt = count_tokens(" ".join(_text_of(m.get("content")) for m in messages if isinstance(m, dict)))
        completion = count_tokens(content)
        tools = body.get("tools") or []
        choice = body.get("tool_choice")
        if tools and (choice == "required" or isinstance(choice, dict)):
            name = choice["function"]["name"] if isinstance(choice, dict) else tools[0]["function"]["name"]
            calls = [{"id": f"call_{uuid.uuid4().hex[:8]}", "type": "function",
                      "function": {"name": name, "arguments": json.dumps({"echo": last_user})}}]
            return JSONResponse(chat_completion(model, None, prompt, completion, tool_calls=calls,
                                                finish_reason="tool_calls"))
        if body.get("stream"):
            reply = Reply(sse=stream_chunks(model, content, prompt, completion))
            return StreamingResponse(self._sse(reply), media_type="text/event-stream")
        return JSONResponse(chat_completion(model, content, prompt, completion))

    def _responses(self, body: dict[str, Any]) -> Response:
        """OpenAI's Responses API: ``input`` (a str or items), ``instructions``, ``text.format``, flat tools."""
        model = str(body.get("model") or "fake-chat")
        for legacy in ("messages", "max_tokens", "response_format"):
            if legacy in body:
                return _bad_param(f"Unsupported parameter: '{legacy}'.", legacy, "unsupported_parameter")
        refusal = self._reasoning_refusal(body, model, responses=True)
        if refusal is not None:
            return refusal
        items = body.get("input")
        items = [{"role": "user", "content": items}] if isinstance(items, str) else list(items or [])
        texts = [_text_of(i.get("content")) if "role" in i else str(i.get("output", "")) for i in items
                 if isinstance(i, dict)]
        last_user = next((_text_of(i.get("content")) for i in reversed(items)
                          if isinstance(i, dict) and i.get("role") == "user"), "")
        fmt = ((body.get("text") or {}).get("format") or {}).get("type")
        content = json.dumps({"echo": last_user}) if fmt in ("json_object", "json_schema") else f"echo: {last_user}"
        prompt = count_tokens(" ".join([str(body.get("instructions") or ""), *texts]))
        completion = count_tokens(content)
        rid = f"resp_{uuid.uuid4().hex[:12]}"
        usage = {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion}
        tools = body.get("tools") or []
        choice = body.get("tool_choice")
        if tools and (choice == "required" or isinstance(choice, dict)):
            name = choice["name"] if isinstance(choice, dict) else tools[0]["name"]
            output = [{"type": "function_call", "id": f"fc_{uuid.uuid4().hex[:8]}", "call_id": f"call_{uuid.uuid4().hex[:8]}",
                       "name": name, "arguments": json.dumps({"echo": last_user}), "status": "completed"}]
        else:
            output = [{"type": "message", "id": f"msg_{uuid.uuid4().hex[:8]}", "status": "completed",
                       "role": "assistant", "content": [{"type": "output_text", "text": content, "annotations": []}]}]
        response = {"id": rid, "object": "response", "created_at": int(time.time()), "status": "completed",
                    "model": model, "output": output, "usage": usage}
        if not body.get("stream"):
            return JSONResponse(response)
        pieces = re.findall(r"\S+\s*|\s+", content) or [""]
        events: list[Any] = [{"type": "response.created", "response": {**response, "status": "in_progress",
                                                                       "output": [], "usage": None}}]
        events += [{"type": "response.output_text.delta", "item_id": output[0]["id"], "output_index": 0,
                    "content_index": 0, "delta": p} for p in pieces]
        events += [{"type": "response.output_text.done", "item_id": output[0]["id"], "output_index": 0,
                    "content_index": 0, "text": content},
                   {"type": "response.completed", "response": response}]
        return StreamingResponse(self._sse(Reply(sse=events, sse_done=False)), media_type="text/event-stream")

    def _embeddings(self, body: dict[str, Any]) -> Response:
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        if not texts or not all(isinstance(t, str) for t in texts):
            return JSONResponse({"error": {"message": "'input' must be a string or a list of strings",
                                           "type": "invalid_request_error"}}, status_code=400)
        dim = int(body.get("dimensions") or 384)
        data = [{"object": "embedding", "index": i, "embedding": embed_text(t, dim)} for i, t in enumerate(texts)]
        tokens = sum(count_tokens(t) for t in texts)
        return JSONResponse({"object": "list", "data": data, "model": str(body.get("model") or "fake-embed"),
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


@pytest.fixture(scope="session")
def openai_server() -> Iterator[FakeOpenAI]:
    """One fake OpenAI server for the whole test session."""
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture()
def llm_server(openai_server: FakeOpenAI) -> FakeOpenAI:
    """The session's fake OpenAI server, with scripts and recorded requests cleared for this test."""
    openai_server.reset()
    return openai_server
