"""The LLM service: ``context.llm(profile)``: chat, streaming, embeddings and raw requests for every provider.

Providers (``_providers.py``, AetherGraph's names): OpenAI (Chat Completions, or the Responses API with
``api="responses"``), Azure OpenAI, Anthropic Messages, Google Gemini, DeepSeek, OpenRouter, LM Studio, Ollama,
vLLM and any OpenAI-compatible API. One adapter per wire format (``_openai.py``, ``_anthropic.py``,
``_gemini.py``) shapes requests and reads replies; this module gives every provider the same budgets
(``_budget.py``), usage table (``_usage.py``), pooled client and retries (``_http.py``), exchange logs and JSON
re-asks. Sync tasks use ``context.llm().sync.chat(...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from aether_prefect._sync import maybe_await
from aether_prefect.blocks import AetherLLMProfile
from aether_prefect.errors import ConfigError, LLMError, LLMInvalidOutput, ServiceNotConfigured, ValidationError
from aether_prefect.services.base import BoundService
from aether_prefect.services.journal import journaled
from aether_prefect.services.llm import _http as llm_http
from aether_prefect.services.llm._anthropic import Messages
from aether_prefect.services.llm._budget import BudgetGuard, Reservation, gather_capped
from aether_prefect.services.llm._gemini import GenerateContent
from aether_prefect.services.llm._openai import AzureChatCompletions, AzureResponses, ChatCompletions, Responses
from aether_prefect.services.llm._providers import PROVIDERS, ProviderSpec, default_base_url, provider_spec
from aether_prefect.services.llm._usage import Usage, UsageRow, tracker
from aether_prefect.services.llm._wire import SSE, Adapter, ChatReply, ChatSpec, HttpCall

if TYPE_CHECKING:
    from aether_prefect.context import NodeContext

OutputFormat = Literal["text", "json_object", "json_schema"]
OUTPUT_FORMATS = ("text", "json_object", "json_schema")
_log = logging.getLogger("aether_prefect.llm")
#: Texts per embeddings request.
EMBED_BATCH = 128
#: Embeddings requests of one embed() call in flight at once.
EMBED_CONCURRENCY = 4
#: Characters kept per message in exchange-log artifacts.
EXCHANGE_MAX_CHARS = 2000
_RESERVED_BODY_KEYS = frozenset({"messages", "stream", "response_format", "input"})

OnDelta = Callable[[str], "Awaitable[Any] | Any"]


def secret_values(obj: Any) -> set[str]:
    """Every string held in a SecretStr / SecretDict anywhere inside ``obj`` (blocks, dicts, lists)."""
    found: set[str] = set()

    def leaves(value: Any) -> None:
        if isinstance(value, str):
            found.add(value)
        elif isinstance(value, dict):
            for v in value.values():
                leaves(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                leaves(v)

    def walk(value: Any, depth: int = 0) -> None:
        if depth > 8 or value is None:
            return
        if hasattr(value, "get_secret_value"):
            leaves(value.get_secret_value())
        elif isinstance(value, dict):
            for v in value.values():
                walk(v, depth + 1)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v, depth + 1)
        elif hasattr(type(value), "model_fields"):
            for name in type(value).model_fields:
                walk(getattr(value, name, None), depth + 1)

    walk(obj)
    return found


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    """A list of ``{"role", "content"}`` dicts (a plain str becomes one user message)."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValidationError(
            f"messages must be a non-empty list of {{'role': ..., 'content': ...}} dicts (or a str), got {messages!r:.80}"
        )
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or ("content" not in m and "tool_calls" not in m):
            raise ValidationError(
                f"messages[{i}] must be a dict with a str 'role' and a 'content', e.g. "
                f"{{'role': 'user', 'content': 'hello'}}; got {m!r:.80}"
            )
        out.append(dict(m))
    return out


def _schema_spec(json_schema: Any) -> dict[str, Any]:
    """OpenAI's ``response_format.json_schema`` object from a bare JSON schema or from ``{"name", "schema"}``."""
    if not isinstance(json_schema, dict):
        raise ValidationError(
            f"json_schema must be a JSON schema dict (or {{'name': ..., 'schema': {{...}}}}), got {type(json_schema).__name__}"
        )
    if isinstance(json_schema.get("schema"), dict):
        spec = {"name": str(json_schema.get("name") or "output"), "schema": json_schema["schema"]}
        if "strict" in json_schema:
            spec["strict"] = bool(json_schema["strict"])
    else:
        spec = {"name": "output", "schema": json_schema}
    import jsonschema

    try:
        jsonschema.validators.validator_for(spec["schema"]).check_schema(spec["schema"])
    except jsonschema.SchemaError as exc:
        raise ValidationError(f"json_schema is not a valid JSON schema: {exc.message}") from None
    return spec


def _json_problem(text: str, schema: dict[str, Any] | None) -> str | None:
    """Why ``text`` is not acceptable JSON (or does not match ``schema``); None when it is fine."""
    body = text.strip()
    if body.startswith("```"):  # some models fence JSON even in JSON mode
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.rsplit("```", 1)[0].strip()
    try:
        value = json.loads(body)
    except ValueError as exc:
        return f"the reply is not valid JSON ({exc})"
    if schema is None:
        return None
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return None
    return f"the reply does not match the JSON schema: {error.message} (at {error.json_path})"


_NO_SLOT = contextlib.nullcontext()


def _adapter(spec: ProviderSpec, profile: AetherLLMProfile, base_url: str) -> Adapter:
    """The wire-format adapter of a provider (and, for OpenAI and Azure, of the profile's ``api``)."""
    if spec.wire == "anthropic":
        return Messages(profile, base_url, embeddings=spec.embeddings)
    if spec.wire == "gemini":
        return GenerateContent(profile, base_url, embeddings=spec.embeddings)
    responses = profile.api == "responses"
    if spec.wire == "azure":
        return (AzureResponses if responses else AzureChatCompletions)(profile, base_url, embeddings=spec.embeddings)
    return (Responses if responses else ChatCompletions)(profile, base_url, embeddings=spec.embeddings,
                                                         provider=spec.name)


class LLMService(BoundService):
    """A client bound to one profile and one NodeContext, speaking the profile's provider's wire format.

    Async methods: ``chat``, ``chat_stream``, ``embed``, ``raw``; ``.sync`` has blocking twins.
    ``usage()`` gives the calls and tokens of this task run so far.
    """

    def __init__(
        self,
        ctx: "NodeContext",
        profile_name: str,
        profile: AetherLLMProfile,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(ctx)
        self.profile_name = profile_name
        self.profile = profile
        spec = provider_spec(profile.provider)
        self.provider = spec.name
        self._transport = transport
        self._budget = BudgetGuard(ctx, profile_name, profile)
        self._secrets: list[str] | None = None
        self.last_response: dict[str, Any] | None = None
        #: Tool calls of the last chat reply, in OpenAI's shape whatever the provider.
        self.last_tool_calls: list[dict[str, Any]] = []
        base = profile.base_url or default_base_url(spec.name)  # the provider's env variable, else its URL
        if base is None:
            example = ("AetherLLMProfile(provider='azure', base_url='https://<resource>.openai.azure.com', "
                       "model='<deployment>')" if spec.name == "azure" else
                       f"AetherLLMProfile(provider={spec.name!r}, base_url='http://host:port/v1')")
            raise ConfigError(
                f"LLM profile {profile_name!r} uses provider {spec.name!r}, which has no default base_url: set "
                f"{example}" + (f" or the {spec.base_url_env} environment variable" if spec.base_url_env else "") +
                " (providers with a default URL: "
                f"{', '.join(n for n, p in PROVIDERS.items() if p.base_url)})"
            )
        if spec.wire == "azure":
            base = base.rstrip("/").removesuffix("/openai")
        self.base_url: str = base.rstrip("/")
        self._adapter = _adapter(spec, profile, self.base_url)
        self._timeout = httpx.Timeout(profile.timeout_s)
        self._pool_cache: tuple[asyncio.AbstractEventLoop, llm_http.ClientPool] | None = None

    def __repr__(self) -> str:
        return (f"LLMService(profile={self.profile_name!r}, provider={self.provider!r}, "
                f"model={self.profile.model!r}, base_url={llm_http.mask_url(self.base_url)!r})")

    # -- plumbing -------------------------------------------------------------------------------------------

    def _api_key(self) -> str | None:
        """The key: the profile's ``api_key``, else the environment variable named by ``api_key_ref``."""
        key = self.profile.api_key
        if isinstance(key, SecretStr):
            return key.get_secret_value()
        if self.profile.api_key_ref:
            return os.environ.get(self.profile.api_key_ref) or None
        return None

    def _secret_list(self) -> list[str]:
        """Values to mask in errors and artifacts: the key, header values, URL passwords, every config secret."""
        if self._secrets is None:
            found = secret_values(self.profile) | secret_values(self.ctx.config)
            found |= set(llm_http.url_secrets(self.base_url))
            key = self._api_key()
            if key:
                found.add(key)
            self._secrets = sorted(found, key=len, reverse=True)
        return self._secrets

    def _headers(self, extra: dict[str, str] | None = None, *, auth: bool = True) -> dict[str, str]:
        """Request headers; the key is revealed here only, at the moment of sending."""
        headers: dict[str, str] = dict(self._adapter.default_headers())
        if auth and self.profile.headers is not None:
            headers.update({str(k): str(v) for k, v in self.profile.headers.get_secret_value().items()})
        key = self._api_key() if auth else None
        if key:
            headers.update(self._adapter.auth_headers(key))
        if self.profile.tag_requests:
            if self.ctx.flow_run_id:
                headers["X-Aether-Flow-Run-Id"] = self.ctx.flow_run_id
            if self.ctx.task_run_id:
                headers["X-Aether-Task-Run-Id"] = self.ctx.task_run_id
        if extra:
            headers.update(extra)
        return headers

    def _model(self, model: str | None, *, embed: bool = False) -> str:
        chosen = model or (self.profile.embed_model if embed else self.profile.model)
        if not chosen:
            field = "embed_model" if embed else "model"
            raise ConfigError(
                f"LLM profile {self.profile_name!r} has no {field}: pass model=... or set "
                f"AetherLLMProfile({field}='...')" + (" or AETHER_LLM_MODEL" if not embed else "")
                + (" (for azure: the deployment name)" if self.provider == "azure" else "")
            )
        return chosen

    def _slot(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """One of the context's ``max_concurrency`` slots (no cap when unset: a no-op, no generator per call)."""
        limit = self.ctx.max_concurrency
        if not limit:
            return _NO_SLOT
        sem: asyncio.Semaphore = self.ctx._service("llm-limiter", lambda: asyncio.Semaphore(limit))
        return sem

    def _pool(self) -> llm_http.ClientPool:
        """The pooled clients of the running loop (looked up once per loop by this service)."""
        loop = asyncio.get_running_loop()
        cached = self._pool_cache
        if cached is not None and cached[0] is loop and not cached[1].is_closed:
            return cached[1]
        pool = llm_http.client_pool(self._transport)
        self._pool_cache = (loop, pool)
        return pool

    async def _reserve(self) -> Reservation | None:
        return await self._budget.acquire() if self._budget.active else None

    async def _account(self, res: Reservation | None, model: str, usage: Usage) -> None:
        tracker(self.ctx).record(self.profile_name, model, usage)
        if res is not None:
            self._budget.commit(res, usage)

    async def aclose(self) -> None:
        """Give the unused part of this context's flow-run budget allotment back.

        Example: ``await context.llm().aclose()  # the context does this when the task ends``
        """
        await self._budget.aclose()

    def _request(self, client: httpx.AsyncClient, call: HttpCall, extra_headers: dict[str, str] | None = None,
                 *, auth: bool = True, method: str = "POST") -> httpx.Request:
        headers = {**call.headers, **extra_headers} if extra_headers else call.headers
        return client.build_request(
            method, call.url, json=call.body, params=call.params or None, headers=self._headers(headers, auth=auth),
            timeout=self._timeout,
        )

    async def _send(self, call: HttpCall, extra_headers: dict[str, str] | None = None, *, auth: bool = True,
                    method: str = "POST") -> httpx.Response:
        """Send one request with retries (budget already reserved); the response is read."""
        pool = self._pool()
        shard = pool.acquire()
        try:
            client = pool.clients[shard]
            request = self._request(client, call, extra_headers, auth=auth, method=method)
            async with self._slot():
                return await llm_http.send(
                    request, client=client, max_retries=self.profile.max_retries, timeout_s=self.profile.timeout_s,
                    profile=self.profile_name, secrets=self._secret_list(),
                )
        finally:
            pool.release(shard)

    def _json_of(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            excerpt = llm_http.redact(response.text[:300], self._secret_list())
            url = llm_http.redact(llm_http.mask_url(str(response.request.url.copy_with(query=None))),
                                  self._secret_list())
            raise LLMError(
                f"LLM reply from {url} is not JSON: {excerpt!r}. "
                f"Fix: check base_url points at the {self.provider} API",
                status=response.status_code,
            ) from None

    # -- chat -----------------------------------------------------------------------------------------------

    def _chat_spec(self, messages: list[dict[str, Any]], model: str, output_format: str,
                   schema_spec: dict[str, Any] | None, max_output_tokens: int | None, tools: Any,
                   tool_choice: Any, kw: dict[str, Any]) -> ChatSpec:
        reserved = sorted(set(kw) & _RESERVED_BODY_KEYS) if kw else None
        if reserved:
            raise ValidationError(f"{reserved[0]!r} cannot be passed as an extra keyword; use the named parameters")
        if max_output_tokens is not None:
            if isinstance(max_output_tokens, bool) or not isinstance(max_output_tokens, int) or max_output_tokens < 1:
                raise ValidationError(f"max_output_tokens must be a positive int, got {max_output_tokens!r}")
        if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
            raise ValidationError("tools must be a list of tool dicts, e.g. [{'type': 'function', 'function': "
                                  "{'name': 'lookup', 'parameters': {'type': 'object'}}}]")
        return ChatSpec(messages=messages, model=model, output_format=output_format, schema_spec=schema_spec,
                        max_output_tokens=max_output_tokens if max_output_tokens is not None
                        else self.profile.max_output_tokens,
                        tools=tools, tool_choice=tool_choice, extra=dict(kw))

    @journaled("chat")
    async def chat(
        self,
        messages: Sequence[dict[str, Any]] | str,
        *,
        model: str | None = None,
        output_format: OutputFormat = "text",
        json_schema: dict[str, Any] | None = None,
        max_output_tokens: int | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        validation_retries: int = 0,
        **kw: Any,
    ) -> tuple[str, dict[str, int]]:
        """Send a chat request in the provider's wire format; return ``(text, usage)``.

        JSON modes check the reply (against ``json_schema`` when given) and, with ``validation_retries=N``,
        re-ask up to N times with the problem appended; usage sums every attempt. Tools and tool calls use
        OpenAI's shape for every provider: the calls are in ``self.last_tool_calls``, the provider's full reply
        in ``self.last_response``.

        Example::

            text, usage = await context.llm().chat([{"role": "user", "content": "Say hi"}])
        """
        msgs = _check_messages(messages)
        if output_format not in OUTPUT_FORMATS:
            raise ValidationError(f"output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
        if output_format == "json_schema" and json_schema is None:
            raise ValidationError("output_format='json_schema' needs json_schema={...} (a JSON schema dict)")
        if isinstance(validation_retries, bool) or not isinstance(validation_retries, int) or validation_retries < 0:
            raise ValidationError(f"validation_retries must be an int >= 0, got {validation_retries!r}")
        schema = _schema_spec(json_schema) if json_schema is not None else None
        model_name = self._model(model)
        spec = self._chat_spec(msgs, model_name, output_format, schema, max_output_tokens, tools, tool_choice, kw)
        total = Usage()
        attempt = 0
        while True:
            call = self._adapter.chat_call(spec)
            res = await self._reserve()
            response = await self._send(call)
            data = self._json_of(response)
            try:
                reply: ChatReply = self._adapter.chat_reply(data)
            except LLMError:
                await self._account(res, model_name, Usage())
                raise
            await self._account(res, model_name, reply.usage)
            total = reply.usage if attempt == 0 else total + reply.usage
            self.last_response = data
            self.last_tool_calls = reply.tool_calls
            text = reply.text
            if self.profile.log_exchanges:
                await self._log_exchange(spec.messages, text, reply.usage, model_name)
            if output_format == "text":
                return text, total.as_dict()
            problem = _json_problem(text, schema["schema"] if schema else None)
            if problem is None:
                return text, total.as_dict()
            if attempt >= validation_retries:
                excerpt = llm_http.redact(text[:300], self._secret_list())
                raise LLMInvalidOutput(
                    f"LLM reply in {output_format} mode was rejected after {attempt + 1} attempt(s): {problem}. "
                    f"Reply excerpt: {excerpt!r}. Fix: pass validation_retries=N to re-ask, simplify the schema, "
                    "or use a model that supports structured output",
                    excerpt=excerpt, attempts=attempt + 1,
                )
            attempt += 1
            spec.messages = [*spec.messages, {"role": "assistant", "content": text},
                             {"role": "user", "content": f"Your previous reply was rejected: {problem}. "
                              "Answer again with only valid JSON" + (" matching the schema." if schema else ".")}]

    @journaled("chat_stream")
    async def chat_stream(
        self,
        messages: Sequence[dict[str, Any]] | str,
        *,
        on_delta: OnDelta | None = None,
        model: str | None = None,
        max_output_tokens: int | None = None,
        **kw: Any,
    ) -> tuple[str, dict[str, int]]:
        """Stream a chat reply over server-sent events; ``on_delta(text_piece)`` (sync or async) per piece.

        Example::

            text, usage = await context.llm().chat_stream(msgs, on_delta=lambda piece: print(piece, end=""))
        """
        msgs = _check_messages(messages)
        model_name = self._model(model)
        spec = self._chat_spec(msgs, model_name, "text", None, max_output_tokens, kw.pop("tools", None),
                               kw.pop("tool_choice", None), kw)
        call = self._adapter.chat_call(spec, stream=True)
        res = await self._reserve()
        pool = self._pool()
        shard = pool.acquire()
        try:
            return await self._stream(pool.clients[shard], call, res, msgs, model_name, on_delta)
        finally:
            pool.release(shard)

    async def _stream(self, client: httpx.AsyncClient, call: HttpCall, res: Reservation | None,
                      msgs: list[dict[str, Any]], model_name: str, on_delta: OnDelta | None) -> tuple[str, dict[str, int]]:
        """Send a streaming chat on ``client``, feed ``on_delta``, account and log; ``(text, usage)``."""
        request = self._request(client, call)
        pieces: list[str] = []
        raw_usage: Any = None
        async with self._slot():
            response = await llm_http.send(
                request, client=client, max_retries=self.profile.max_retries, timeout_s=self.profile.timeout_s,
                profile=self.profile_name, secrets=self._secret_list(), stream=True,
            )
            try:
                parser = SSE()
                async for line in response.aiter_lines():
                    payload = parser.feed(line.rstrip("\r"))
                    if payload is None:
                        continue
                    if payload.strip() == "[DONE]":
                        break
                    try:
                        data = json.loads(payload)
                    except ValueError:
                        continue
                    event = self._adapter.stream_event(data)
                    raw_usage = self._adapter.fold_usage(raw_usage, event.usage)
                    if event.text:
                        pieces.append(event.text)
                        if on_delta is not None:
                            await maybe_await(on_delta(event.text))
                    if event.done:
                        break
            except BaseException as exc:
                # Failed part-way (or on_delta raised): the provider bills what it streamed; account for it.
                billed = Usage.billed(self._adapter.stream_usage(raw_usage), msgs, pieces)
                await self._account(res, model_name, billed)
                if isinstance(exc, httpx.HTTPError):
                    raise llm_http.transport_error(exc, url=call.url, profile=self.profile_name,
                                                   timeout_s=self.profile.timeout_s, secrets=self._secret_list(),
                                                   attempts=1) from None
                raise
            finally:
                await response.aclose()
        text = "".join(pieces)
        usage = Usage.billed(self._adapter.stream_usage(raw_usage), msgs, pieces)  # estimated if none came
        await self._account(res, model_name, usage)
        await self._log_exchange(msgs, text, usage, model_name)
        return text, usage.as_dict()

    # -- embeddings and raw ---------------------------------------------------------------------------------

    @journaled("embed")
    async def embed(self, texts: Sequence[str], *, model: str | None = None,
                    batch_size: int = EMBED_BATCH) -> list[list[float]]:
        """Embed ``texts`` (batched, one budgeted call per batch); vectors in the order of ``texts``.

        A provider without embeddings (Anthropic, DeepSeek) uses the profile named by ``embed_profile``.

        Example::

            vectors = await context.llm().embed(["first text", "second text"])
        """
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise ValidationError(f"texts must be a list of str (wrap a single text in a list), got {type(texts).__name__}")
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise ValidationError(f"texts[{bad}] must be a str, got {type(texts[bad]).__name__}")
        if not self._adapter.embeddings:
            if self.profile.embed_profile and self.profile.embed_profile != self.profile_name:
                delegate = self.ctx.llm(self.profile.embed_profile)
                return await delegate.embed(texts, model=model, batch_size=batch_size)  # type: ignore[no-any-return]
            raise ServiceNotConfigured(
                f"Embeddings for LLM profile {self.profile_name!r} (provider {self.provider}, which has no "
                "embeddings API)",
                block_type="AetherLLMProfile",
                how=(f"name an embedding profile: AetherLLMProfile(provider={self.provider!r}, ..., "
                     "embed_profile='embed') with AetherConfig(llm={'embed': AetherLLMProfile(provider='openai', "
                     "embed_model='text-embedding-3-small', ...)})"),
            )
        if not texts:
            return []
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValidationError(f"batch_size must be a positive int, got {batch_size!r}")
        model_name = self._model(model, embed=True)
        batches = [list(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]

        async def one(batch: list[str]) -> list[list[float]]:
            res = await self._reserve()
            data = self._json_of(await self._send(self._adapter.embed_call(batch, model_name)))
            try:
                vectors, usage = self._adapter.embed_reply(data, len(batch))
            except LLMError:
                await self._account(res, model_name, Usage())
                raise
            await self._account(res, model_name, usage)
            return vectors

        results = await gather_capped([lambda b=b: one(b) for b in batches], EMBED_CONCURRENCY)
        return [v for part in results for v in part]

    @journaled("raw")
    async def raw(
        self,
        *,
        method: str = "POST",
        path: str | None = None,
        url: str | None = None,
        json: Any = None,  # noqa: A002 - the name the tutorials use
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Send a verbatim request to ``base_url + path`` (or ``url``); return the JSON reply (or text).

        The profile's key (in the provider's header) is sent only to the profile's own origin. Counts as a call
        for budgets; usage in the reply, if any, is added to the task run's table.

        Example::

            models = await context.llm().raw(method="GET", path="/models")
        """
        if (path is None) == (url is None):
            raise ValidationError("raw() needs exactly one of path='/models' (relative to base_url) or url='https://...'")
        target = url if url is not None else f"{self.base_url}/{str(path).lstrip('/')}"
        if not target.startswith(("http://", "https://")):
            raise ValidationError(f"url must start with http:// or https://, got {llm_http.mask_url(target)!r}")
        same_origin = urlsplit(target)[:2] == urlsplit(self.base_url)[:2]
        res = await self._reserve()
        response = await self._send(HttpCall(target, json, dict(params or {})), headers, auth=same_origin,
                                    method=method.upper())
        try:
            data: Any = response.json()
        except ValueError:
            data = response.text
        raw_usage = data.get("usage") if isinstance(data, dict) else None
        await self._account(res, self.profile.model or "raw", Usage.from_provider(raw_usage))
        return data

    async def _probe(self) -> None:
        """List the provider's models in its own wire format (``aether-prefect doctor``): proves URL and key."""
        call = self._adapter.models_call()
        await self.raw(method="GET", url=call.url, params=call.params or None)

    # -- observability --------------------------------------------------------------------------------------

    def usage(self) -> list[UsageRow]:
        """Calls and tokens of this task run so far, per profile and model (all profiles of the context).

        Example: ``rows = context.llm().usage(); print(rows[-1].total_tokens)``
        """
        return tracker(self.ctx).rows()

    async def _log_exchange(self, messages: list[dict[str, Any]], reply: str, usage: Usage, model: str) -> None:
        """With ``log_exchanges``: one markdown artifact per exchange in the run, messages cut, secrets masked."""
        if not self.profile.log_exchanges or not self.ctx.flow_run_id:
            return
        from aether_prefect._prefect import artifacts as prefect_artifacts

        md = exchange_markdown(messages, reply, usage, model=model, profile=self.profile_name,
                               secrets=self._secret_list())
        try:
            await prefect_artifacts.create_artifact(
                type="markdown", data=md,
                description=f"LLM exchange of {self.ctx.node_id} (profile {self.profile_name}, model {model})",
                flow_run_id=self.ctx.flow_run_id, task_run_id=self.ctx.task_run_id,
            )
        except Exception as exc:  # noqa: BLE001 - a paid-for reply must not be lost to a logging failure
            _log.warning("could not publish the LLM exchange log of %s: %s", self.ctx.node_id,
                         llm_http.redact(str(exc), self._secret_list()))


def _cut(text: str, limit: int = EXCHANGE_MAX_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}\n[... cut: {len(text) - limit} more characters]"


def exchange_markdown(messages: list[dict[str, Any]], reply: str, usage: Usage, *, model: str, profile: str,
                      secrets: Sequence[str], limit: int = EXCHANGE_MAX_CHARS) -> str:
    """The exchange as markdown: each message cut to ``limit`` characters, secrets masked, no headers."""

    def block(text: str) -> str:
        return "```text\n" + llm_http.redact(_cut(text, limit), secrets).replace("```", "'''") + "\n```"

    parts = [f"## LLM exchange (profile `{profile}`, model `{model}`)",
             f"Tokens: prompt {usage.prompt_tokens}, completion {usage.completion_tokens}, total {usage.total_tokens}"]
    for m in messages:
        content = m.get("content")
        text = content if isinstance(content, str) else json.dumps(content, default=str)
        if m.get("tool_calls"):
            text += "\n[tool_calls] " + json.dumps(m["tool_calls"], default=str)
        parts.append(f"### {m.get('role', '?')}\n{block(text)}")
    parts.append(f"### reply\n{block(reply)}")
    return "\n\n".join(parts)


def create(ctx: "NodeContext", profile_name: str, profile: AetherLLMProfile) -> LLMService:
    """Factory used by ``NodeContext.llm``: one service per context and profile (and overrides)."""
    return LLMService(ctx, profile_name, profile)
