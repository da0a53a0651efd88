"""HTTP plumbing of the LLM service: pooled httpx clients per process and event loop, retries, typed errors.

Retries on 429/500/502/503/504, Anthropic's 529 ``overloaded_error``, any error body whose type or status says
overloaded or rate-limited (Gemini's ``RESOURCE_EXHAUSTED``/``UNAVAILABLE``) and connection errors, with
exponential backoff and jitter, honouring ``Retry-After`` (seconds or an HTTP date) and ``retry-after-ms``.
Other 4xx fail at once. Error messages carry the status and the provider's message, with every known secret
and any ``user:pass@`` of a URL masked.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import random
import threading
import time
import weakref
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

import httpx

from aether_prefect.errors import LLMError

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 529})
#: Error ``type`` (Anthropic, OpenAI) or ``status`` (Google) values retried whatever the HTTP status.
RETRY_ERROR_KINDS = frozenset({"overloaded_error", "rate_limit_error", "RESOURCE_EXHAUSTED", "UNAVAILABLE"})
#: Connection failures worth retrying (the request never reached, or lost, the server).
RETRY_TRANSPORT_ERRORS = (httpx.NetworkError, httpx.ConnectTimeout, httpx.RemoteProtocolError)
#: First backoff step in seconds (doubled per retry, with jitter); tests may lower it.
BACKOFF_BASE_S = 0.5
#: Longest single wait, whatever Retry-After says.
MAX_WAIT_S = 60.0
EXCERPT_CHARS = 300
MASK = "***"

#: Clients per event loop. httpcore's pool scans all its connections and queued requests at every request start
#: and response close, so its CPU per call grows with the calls in flight in one pool (200 concurrent chats on
#: one client: about 4 ms of client CPU per call on a loaded 2-core machine; spread over 8 clients: about 2 ms).
SHARDS = 8
#: Limits of each of the SHARDS clients (512 connections and 256 idle kept alive in all).
SHARD_LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=32)
#: Limits of the one client used with a custom transport.
POOL_LIMITS = httpx.Limits(max_connections=512, max_keepalive_connections=128)


class ClientPool:
    """The LLM clients of one process and event loop; a request goes to the client with the fewest in flight.

    Sequential calls all use the first client (one kept-alive connection, one TLS handshake); concurrent calls
    spread evenly. A custom transport (``use_transport``, a test double) gets one client.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        if transport is not None:
            self.clients = [httpx.AsyncClient(transport=transport, limits=POOL_LIMITS, follow_redirects=False)]
        else:
            # One TLS context for all shards, built as httpx builds its default (certifi, or SSL_CERT_FILE /
            # SSL_CERT_DIR): loading the CA bundle costs ~70 ms, once per pool rather than once per client.
            tls = httpx.create_ssl_context()
            self.clients = [httpx.AsyncClient(limits=SHARD_LIMITS, verify=tls, follow_redirects=False)
                            for _ in range(SHARDS)]
        n = len(self.clients)
        self._busy = [0] * n
        self.pid = os.getpid()

    @property
    def is_closed(self) -> bool:
        return any(c.is_closed for c in self.clients)

    def acquire(self) -> int:
        """The index of the least busy client, counted busy until :meth:`release`."""
        busy = self._busy
        i = busy.index(min(busy)) if len(busy) > 1 else 0
        busy[i] += 1
        return i

    def release(self, i: int) -> None:
        self._busy[i] -= 1


_pools: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, ClientPool]]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()
_default_transport: httpx.AsyncBaseTransport | None = None


def use_transport(transport: httpx.AsyncBaseTransport | None) -> None:
    """Route every LLM request of this process through ``transport`` (a proxy, a test double); None resets."""
    global _default_transport
    _default_transport = transport


def client_pool(transport: httpx.AsyncBaseTransport | None = None) -> ClientPool:
    """The process's clients for the running loop (and transport); created once, reused by every call."""
    transport = transport if transport is not None else _default_transport
    loop = asyncio.get_running_loop()
    key = id(transport) if transport is not None else 0
    with _lock:
        per_loop = _pools.setdefault(loop, {})
        pool = per_loop.get(key)
        if pool is not None and pool.pid == os.getpid() and not pool.is_closed:
            return pool
        pool = per_loop[key] = ClientPool(transport)
        return pool


def mask_url(url: str) -> str:
    """``url`` with any ``user:pass@`` part replaced by ``***@`` (for reprs and messages)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=f"{MASK}@{parts.netloc.rsplit('@', 1)[1]}"))


def url_secrets(url: str) -> list[str]:
    """The user info of ``url`` (``user:pass`` and the password alone), to mask wherever it might show."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    if "@" not in parts.netloc:
        return []
    info = parts.netloc.rsplit("@", 1)[0]
    return [s for s in (info, parts.password or "") if s]


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret (4+ characters) replaced by ***."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def retry_after_s(response: httpx.Response) -> float | None:
    """Seconds the server asked to wait (``retry-after-ms``, ``Retry-After`` seconds or HTTP date), if any."""
    ms = response.headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_s(attempt: int, response: httpx.Response | None = None) -> float:
    """Wait before retry ``attempt`` (0-based): Retry-After when given, else exponential with jitter."""
    hinted = retry_after_s(response) if response is not None else None
    if hinted is not None:
        return min(hinted, MAX_WAIT_S)
    step = BACKOFF_BASE_S * (2**attempt)
    return min(step / 2 + random.uniform(0, step / 2), MAX_WAIT_S)


def provider_message(response: httpx.Response, body: bytes) -> str:
    """The provider's error message (OpenAI ``{"error": {"message"}}`` and common variants), else ''."""
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or "")
        if isinstance(err, str):
            return err
        if "detail" in data:
            return str(data["detail"])
    return ""


def error_kind(body: bytes) -> str:
    """The provider's error type/status (``overloaded_error``, ``RESOURCE_EXHAUSTED``...), else ''."""
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("status") or err.get("type") or "")
    return ""


def retryable(status: int, body: bytes) -> bool:
    """Whether an error response is worth another attempt (rate limits, overload, server errors)."""
    return status in RETRY_STATUSES or (status >= 400 and error_kind(body) in RETRY_ERROR_KINDS)


def _hint(status: int, profile: str) -> str:
    if status in (401, 403):
        return f"check the api_key of LLM profile {profile!r} (AetherLLMProfile.api_key)"
    if status == 404:
        return f"check base_url, model and (for Azure) api_version of LLM profile {profile!r}"
    if status == 529:
        return "the provider is overloaded even after retries: try again later or raise max_retries"
    if status == 429:
        return "rate limited even after retries: raise max_retries on the profile or send fewer requests"
    if status >= 500:
        return "the provider failed even after retries: try again later or raise max_retries"
    return "fix the request arguments named in the provider's message"


def http_error(response: httpx.Response, body: bytes, *, profile: str, secrets: Iterable[str],
               attempts: int) -> LLMError:
    """A typed LLMError for an error response: status, provider message, excerpt, hint; secrets masked."""
    secrets = list(secrets)
    message = redact(provider_message(response, body), secrets)
    excerpt = redact(body[:EXCERPT_CHARS].decode("utf-8", "replace"), secrets)
    url = redact(mask_url(str(response.request.url.copy_with(query=None))), secrets)
    text = (
        f"LLM request {response.request.method} {url} failed with HTTP {response.status_code}"
        + (f" after {attempts} attempts" if attempts > 1 else "")
        + (f": {message}" if message else "")
        + f". Response excerpt: {excerpt!r}. Fix: {_hint(response.status_code, profile)}."
    )
    err = LLMError(text, status=response.status_code)
    err.provider_message = message  # type: ignore[attr-defined]
    err.excerpt = excerpt  # type: ignore[attr-defined]
    return err


def transport_error(exc: httpx.HTTPError, *, url: str, profile: str, timeout_s: float, secrets: Iterable[str],
                    attempts: int) -> LLMError:
    """A typed LLMError (status None) for a timeout or connection failure; secrets masked."""
    url = redact(mask_url(url), secrets)
    if isinstance(exc, httpx.TimeoutException):
        text = (f"LLM request to {url} timed out after {timeout_s:g}s ({type(exc).__name__}, {attempts} attempt(s)). "
                f"Fix: raise timeout_s of LLM profile {profile!r} or ask for a shorter reply")
    else:
        text = (f"LLM request to {url} failed to connect ({type(exc).__name__}: {redact(str(exc), secrets)}; "
                f"{attempts} attempt(s)). Fix: check base_url of LLM profile {profile!r} and that the server is up")
    return LLMError(text, status=None)


async def send(
    request: httpx.Request,
    *,
    client: httpx.AsyncClient,
    max_retries: int,
    timeout_s: float,
    profile: str,
    secrets: Iterable[str],
    stream: bool = False,
) -> httpx.Response:
    """Send ``request`` with retries; return a 2xx response (open, for ``stream=True``: the caller closes it)."""
    secrets = list(secrets)
    attempt = 0
    while True:
        try:
            response = await client.send(request, stream=stream)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            # A read timeout is not retried: the provider may still be generating (and billing) that reply.
            if attempt >= max_retries or not isinstance(exc, RETRY_TRANSPORT_ERRORS):
                raise transport_error(exc, url=str(request.url.copy_with(query=None)), profile=profile,
                                      timeout_s=timeout_s, secrets=secrets, attempts=attempt + 1) from None
            await asyncio.sleep(backoff_s(attempt))
            attempt += 1
            continue
        if response.status_code < 400:
            return response
        body = await response.aread()
        await response.aclose()
        if attempt < max_retries and retryable(response.status_code, body):
            await asyncio.sleep(backoff_s(attempt, response))
            attempt += 1
            continue
        raise http_error(response, body, profile=profile, secrets=secrets, attempts=attempt + 1)
