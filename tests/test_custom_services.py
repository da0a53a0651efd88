"""Custom services: register_context_service, Service hooks, ctx(), svc() and attribute access."""

from __future__ import annotations

import asyncio
import time

import pytest
from prefect import flow

from aether_prefect import NodeContext, Service, aether_task, open_session_sync, register_context_service, shutdown_services


class Counter(Service):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.count = 0

    async def start(self) -> None:
        self.events.append("start")

    def close(self) -> None:
        self.events.append("close")

    def whoami(self) -> str:
        return self.ctx().node_id

    async def slow_add(self, n: int) -> int:
        def blocking() -> int:
            time.sleep(0.01)
            with self.locked():
                self.count += n
                return self.count

        return await self.run_blocking(blocking)


def test_register_use_and_lifecycle(local_config) -> None:  # type: ignore[no-untyped-def]
    svc = Counter()
    register_context_service("counter", svc)
    try:
        @aether_task(config=local_config)
        def use(*, context: NodeContext) -> tuple[str, str, bool]:
            return context.counter().whoami(), context.svc("counter").whoami(), context.counter() is svc

        @flow
        def f() -> tuple[str, str, bool]:
            return use()

        a, b, same = f()
        assert a.startswith("use") and a == b and same
        assert svc.events == ["start"]  # started once, before first use

        async def adds() -> list[int]:
            return list(await asyncio.gather(*(svc.slow_add(1) for _ in range(5))))

        assert sorted(asyncio.run(adds())) == [1, 2, 3, 4, 5]
    finally:
        shutdown_services()
    assert svc.events == ["start", "close"]


def test_unknown_service_errors(local_config) -> None:  # type: ignore[no-untyped-def]
    with open_session_sync(config=local_config) as ctx:
        with pytest.raises(KeyError, match="no context service named 'nope'"):
            ctx.svc("nope")
        with pytest.raises(AttributeError, match="register_context_service"):
            ctx.nope()


def test_bad_registrations() -> None:
    with pytest.raises(ValueError, match="built-in"):
        register_context_service("llm", Counter())
    with pytest.raises(ValueError, match="identifier"):
        register_context_service("not valid", Counter())
