"""Entering and closing open_session warm (after the first config load): median time and HTTP requests.

Target: at most 1 ms and 0 requests. The raw path for comparison is an empty
``async with`` of a no-op context manager (the floor any session must pay).
"""

from __future__ import annotations

import _common  # noqa: F401  (sets the environment before prefect is imported)
from _common import amedian_s, report, row, start_prefect_server

import asyncio
import contextlib

import httpx


class _Count:
    n = 0


_orig_send = httpx.AsyncClient.send


async def _counting_send(self, request, **kw):  # type: ignore[no-untyped-def]
    _Count.n += 1
    return await _orig_send(self, request, **kw)


async def main() -> None:
    start_prefect_server()
    from aether_prefect import open_session

    httpx.AsyncClient.send = _counting_send  # type: ignore[method-assign]

    async def ours() -> None:
        async with open_session() as ctx:
            ctx.logger()

    @contextlib.asynccontextmanager
    async def noop():  # type: ignore[no-untyped-def]
        yield object()

    async def raw() -> None:
        async with noop():
            pass

    await ours()  # first config load (one API call), not measured
    before = _Count.n
    n = 2000
    t_ours = await amedian_s(ours, n)
    requests = (_Count.n - before) / (n + 3)
    t_raw = await amedian_s(raw, n)
    report("session", [
        row("open_session enter+close, warm (median)", t_ours * 1e3, t_raw * 1e3, "ms", None),
        row("open_session absolute time (target <= 1 ms)", t_ours * 1e3, None, "ms", 1.0),
        row("HTTP requests per open_session, warm (target 0)", requests, None, "req", 0.0),
    ])


if __name__ == "__main__":
    asyncio.run(main())
