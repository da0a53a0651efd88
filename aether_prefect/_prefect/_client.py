"""One Prefect API client per process and event loop (async), and per thread (sync).

Prefect builds a new client (and HTTP connection pool) for each ``Variable``/``Block`` call made outside a
run; services here keep one. A client whose connections died (a restarted server) is replaced on the next
call by :func:`with_client` (one retry on a transport error), so nothing outside this module clears caches.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import httpx

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient, SyncPrefectClient

T = TypeVar("T")

_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[int, PrefectClient]]" = weakref.WeakKeyDictionary()
_client_lock = threading.Lock()
_sync_local = threading.local()


async def prefect_client() -> "PrefectClient":
    """The entered PrefectClient of this process and event loop (built on first use)."""
    from prefect.client.orchestration import get_client

    loop = asyncio.get_running_loop()
    hit = _clients.get(loop)
    if hit is not None and hit[0] == os.getpid():
        return hit[1]
    client = get_client()
    await client.__aenter__()
    with _client_lock:
        _clients[loop] = (os.getpid(), client)
    return client


async def drop_client() -> None:
    """Forget (and close) this loop's client, so the next call builds a fresh one."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    with _client_lock:
        hit = _clients.pop(loop, None)
    if hit is not None and hit[0] == os.getpid():
        try:
            await hit[1].__aexit__(None, None, None)
        except Exception:  # noqa: BLE001 - a dead client may fail to close; it is dropped either way
            pass


async def with_client(fn: Callable[["PrefectClient"], Awaitable[T]]) -> T:
    """Run ``fn(client)``; on a transport error (server restarted, connections dead) retry once on a new client."""
    client = await prefect_client()
    try:
        return await fn(client)
    except (httpx.TransportError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "closed" not in str(exc).lower():
            raise
        await drop_client()
        return await fn(await prefect_client())


def sync_client() -> "SyncPrefectClient":
    """The entered blocking PrefectClient of the calling thread (one per thread and process)."""
    from prefect.client.orchestration import get_client

    hit = getattr(_sync_local, "client", None)
    if hit is not None and hit[0] == os.getpid():
        return hit[1]  # type: ignore[no-any-return]
    client = get_client(sync_client=True)
    client.__enter__()
    _sync_local.client = (os.getpid(), client)
    return client


def drop_sync_client() -> None:
    """Forget the calling thread's blocking client."""
    hit = getattr(_sync_local, "client", None)
    _sync_local.client = None
    if hit is not None and hit[0] == os.getpid():
        try:
            hit[1].__exit__(None, None, None)
        except Exception:  # noqa: BLE001
            pass


def with_sync_client(fn: Callable[["SyncPrefectClient"], T]) -> T:
    """Blocking twin of :func:`with_client`."""
    try:
        return fn(sync_client())
    except httpx.TransportError:
        drop_sync_client()
        return fn(sync_client())


async def healthcheck() -> str:
    """Ask the API for its health; returns the API URL it answered on."""

    async def call(client: "PrefectClient") -> str:
        await client.api_healthcheck()
        return str(client.api_url)

    return await with_client(call)

