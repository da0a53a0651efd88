"""Custom services: register_context_service, Service hooks, ctx(), svc() and attribute access."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from prefect import flow

from aether_prefect import (
    NodeContext,
    Service,
    ValidationError,
    aether_task,
    open_session_sync,
    register_context_service,
    shutdown_services,
)
from aether_prefect.services.base import registered_services


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
    with pytest.raises(ValidationError, match="identifier"):
        register_context_service("not valid", Counter())
    with pytest.raises(ValidationError, match="not None"):
        register_context_service("fine_name", None)


@pytest.mark.parametrize(
    "name", ["llm", "closed", "close", "run_id", "node_id", "overrides", "config", "rag", "svc", "llm_profile",
             "memory_level", "store", "mem"]
)
def test_names_a_context_already_uses_are_refused(name: str) -> None:
    """#17.13: `context.closed` is a bool, so a service registered as "closed" could never be reached."""
    with pytest.raises(ValidationError, match=f"clashes with NodeContext.{name}"):
        register_context_service(name, Counter())
    assert name not in registered_services()


class Tally(Service):
    def __init__(self) -> None:
        super().__init__()
        self.inside = 0
        self.max_inside = 0
        self.total = 0

    def _enter(self) -> None:
        self.inside += 1
        self.max_inside = max(self.max_inside, self.inside)

    def _leave(self) -> None:
        self.inside -= 1
        self.total += 1

    async def bump_async(self) -> None:
        async with self.alocked():
            self._enter()
            await asyncio.sleep(0.001)
            self._leave()

    def bump_sync(self) -> None:
        with self.locked():
            self._enter()
            time.sleep(0.001)
            self._leave()


def _in_thread(fn, limit: float = 60.0):  # type: ignore[no-untyped-def]
    """Run fn in a daemon thread; fail (instead of hanging the suite) if it does not finish."""
    import threading

    out: dict = {}

    def target() -> None:
        try:
            out["v"] = fn()
        except BaseException as exc:  # noqa: BLE001
            out["e"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(limit)
    assert not t.is_alive(), "deadlocked"
    if "e" in out:
        raise out["e"]
    return out.get("v")


def test_alocked_twice_then_locked() -> None:
    """#17.1: alocked() took the lock in a worker thread and released it on the loop thread."""
    svc = Tally()

    async def twice() -> None:
        await svc.bump_async()
        await svc.bump_async()

    _in_thread(lambda: asyncio.run(twice()))
    _in_thread(svc.bump_sync)  # hung for ever when alocked() left the lock held
    assert svc.total == 3 and not svc._lock.locked()


def test_one_lock_across_threads_loops_and_tasks() -> None:
    """Sync threads and async tasks on two event loops never overlap inside the lock."""
    import concurrent.futures

    svc = Tally()

    async def many() -> None:
        await asyncio.gather(*(svc.bump_async() for _ in range(20)))

    def all_at_once() -> None:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            futs = [pool.submit(asyncio.run, many()) for _ in range(2)]
            futs += [pool.submit(svc.bump_sync) for _ in range(20)]
            for f in futs:
                f.result()

    _in_thread(all_at_once)
    assert svc.total == 60 and svc.max_inside == 1 and not svc._lock.locked()


def test_async_waiter_does_not_block_its_loop_and_can_be_cancelled() -> None:
    import threading

    svc = Tally()
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with svc.locked():
            held.set()
            release.wait(60)

    t = threading.Thread(target=holder, daemon=True)
    t.start()
    assert held.wait(60)

    async def scenario() -> tuple[bool, int]:
        ticks = 0
        waiter = asyncio.ensure_future(svc.bump_async())
        for _ in range(5):  # the loop keeps running while the waiter waits
            await asyncio.sleep(0.001)
            ticks += 1
        waiter.cancel()
        try:
            await waiter
        except asyncio.CancelledError:
            pass
        release.set()
        await asyncio.to_thread(t.join, 60)
        await svc.bump_async()  # the cancelled waiter left nothing held
        return waiter.cancelled(), ticks

    cancelled, ticks = _in_thread(lambda: asyncio.run(scenario()))
    assert cancelled and ticks == 5 and svc.total == 1 and not svc._lock.locked()


def test_critical_and_reentrancy() -> None:
    """AetherGraph's `critical()` decorator and `self._lock`; nested use by the same task or thread re-enters."""
    svc = Tally()

    async def body() -> int:
        async with svc._lock:
            async with svc.alocked():  # same task: re-enters instead of deadlocking
                return 7

    guarded = svc.critical()(body)
    assert _in_thread(lambda: asyncio.run(guarded())) == 7

    def nested_sync() -> bool:
        with svc.locked():
            with svc._lock:
                return svc._lock.locked()

    assert _in_thread(nested_sync) is True and not svc._lock.locked()


def test_subclass_without_super_init_and_dataclass(local_config) -> None:  # type: ignore[no-untyped-def]
    """#17.15 / #22.3: a Service subclass that skips super().__init__() (a @dataclass too) works."""
    from dataclasses import dataclass, field

    class NoSuper(Service):
        def __init__(self) -> None:
            self.started = 0

        async def start(self) -> None:
            self.started += 1

        async def node(self) -> str:
            async with self._lock:
                return self.ctx().node_id

    @dataclass
    class Materials(Service):
        table: dict[str, float] = field(default_factory=dict)
        starts: int = 0

        def start(self) -> None:
            self.starts += 1

        def lookup(self, name: str) -> float:
            with self.locked():
                return self.table[name]

    plain, mats = NoSuper(), Materials({"Si": 2.33})
    register_context_service("nosuper", plain)
    register_context_service("materials", mats)
    try:
        @aether_task(config=local_config)
        def use(*, context: NodeContext) -> tuple[str, float, str]:
            return context.nosuper().sync.node(), context.materials.lookup("Si"), context.node_id

        node, density, me = use()
        assert node == me and density == 2.33 and plain.started == 1 and mats.starts == 1
    finally:
        shutdown_services()


class Predictor(Service):
    def __init__(self) -> None:
        super().__init__()
        self.version = "v1"

    def __call__(self, text: str, *, upper: bool = False) -> str:
        return f"predicted:{text.upper() if upper else text}"

    def describe(self) -> str:
        return f"predictor {self.version}"


def test_context_attribute_is_a_service_handle(local_config) -> None:  # type: ignore[no-untyped-def]
    """#22.3: context.<name> reaches attributes, returns the service when called bare, calls it with arguments."""
    pred, plain = Predictor(), object()
    register_context_service("predictor", pred)
    register_context_service("plain", plain)
    try:
        with open_session_sync(config=local_config) as ctx:
            assert ctx.predictor() is pred and ctx.plain() is plain
            assert ctx.predictor("hello") == "predicted:hello"
            assert ctx.predictor("hi", upper=True) == "predicted:HI"
            assert ctx.predictor.version == "v1" and ctx.predictor.describe() == "predictor v1"
            with pytest.raises(TypeError, match="'plain' .* is not callable"):
                ctx.plain(1)
            with pytest.raises(AttributeError):
                ctx.predictor.missing_attribute
    finally:
        shutdown_services()


class _Peer(Service):
    """A service whose start reaches its peer (and itself) through the context, as a start that wires clients may."""

    def __init__(self, name: str, peer: str, holder: dict[str, NodeContext], is_async: bool) -> None:
        super().__init__()
        self.name, self.peer, self.holder, self.is_async, self.starts = name, peer, holder, is_async, 0
        self.saw: list[object] = []

    def _wire(self) -> None:
        self.starts += 1
        ctx = self.holder["ctx"]
        self.saw = [ctx.svc(self.peer), ctx.svc(self.name)]

    def start(self) -> object:
        if not self.is_async:
            self._wire()
            return None

        async def astart() -> None:
            self._wire()

        return astart()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync-start", "async-start"])
def test_a_start_that_reaches_its_own_service_does_not_deadlock(local_config, is_async: bool) -> None:  # type: ignore[no-untyped-def]
    """A start() that asks for its own service, or for a peer whose start asks for it back, gets the service
    (each started once) instead of waiting on its own start lock forever."""
    holder: dict[str, NodeContext] = {}
    a, b = _Peer("peer_a", "peer_b", holder, is_async), _Peer("peer_b", "peer_a", holder, is_async)
    register_context_service("peer_a", a)
    register_context_service("peer_b", b)
    got: list[object] = []
    try:
        with open_session_sync(config=local_config) as ctx:
            holder["ctx"] = ctx
            worker = threading.Thread(target=lambda: got.append(ctx.svc("peer_a")), daemon=True)
            worker.start()
            worker.join(timeout=60)
            assert not worker.is_alive(), "start() re-entering its own service deadlocked"
        assert got == [a]
        assert (a.starts, b.starts) == (1, 1)
        assert a.saw == [b, a] and b.saw == [a, b]
    finally:
        shutdown_services()
