"""The sync bridge (``_sync.run_sync`` on anyio portals): nested calls, re-entering callbacks, cancellation, timeouts.

Every call that could hang runs in a daemon thread joined with a generous limit, so a regression fails the
test instead of hanging the suite; the assertions are about outcomes, never durations.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from aether_prefect import NodeContext, Service, aether_task, current_context, register_context_service, shutdown_services
from aether_prefect._sync import run_sync
from aether_prefect.blocks import AetherConfig
from aether_prefect.session import open_session_sync
from tests.servers.openai_server import FakeOpenAI

LIMIT_S = 60.0  # a deadlock shows up as this limit being reached, never as a slow pass


def finishes(fn: Callable[[], Any], limit: float = LIMIT_S) -> Any:
    """Run ``fn`` in a daemon thread; its result, its exception re-raised, or a failure if it hangs."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(limit)
    assert not t.is_alive(), f"{fn!r} did not finish within {limit}s: the bridge deadlocked"
    if "error" in out:
        raise out["error"]
    return out["value"]


class AsyncStart(Service):
    """A custom service whose start() is async: reaching it from sync code needs the bridge."""

    def __init__(self) -> None:
        super().__init__()
        self.started = 0

    async def start(self) -> None:
        await asyncio.sleep(0)
        self.started += 1

    def node(self) -> str:
        return self.ctx().node_id


@pytest.fixture()
def async_start_service() -> Any:
    svc = AsyncStart()
    register_context_service("bridged", svc)
    yield svc
    shutdown_services()


def test_nested_run_sync_from_the_portal_thread() -> None:
    """Sync code running on the portal loop (a sync callback) may call run_sync again, several levels deep."""

    async def leaf() -> str:
        await asyncio.sleep(0)
        return "leaf"

    def sync_callback(depth: int) -> str:
        return run_sync(level(depth - 1)) if depth else run_sync(leaf())

    async def level(depth: int) -> str:
        await asyncio.sleep(0)
        return sync_callback(depth)  # blocking call made on the loop that runs this coroutine

    assert finishes(lambda: run_sync(level(3))) == "leaf"


def test_run_sync_keeps_the_callers_contextvars() -> None:
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("bridge_test_var", default="unset")

    async def read_and_set() -> str:
        seen = var.get()
        var.set("changed inside")
        return seen

    def call() -> tuple[str, str]:
        var.set("caller")
        return run_sync(read_and_set()), var.get()

    assert finishes(call) == ("caller", "caller")  # seen inside; the coroutine's own set does not leak back


def test_async_start_reached_from_code_on_the_portal(local_config: AetherConfig, async_start_service: AsyncStart) -> None:
    """An async Service.start() reached from a coroutine run by run_sync (so: on the portal) used to hang."""

    def go() -> str:
        with open_session_sync(config=local_config, node_id="portal-user") as ctx:

            async def touches_service() -> str:
                await asyncio.sleep(0)
                return str(ctx.bridged().node())  # sync accessor -> async start() -> the bridge, on the portal

            return run_sync(touches_service())

    node = finishes(go)
    assert node == "portal-user" and async_start_service.started == 1


def test_stream_callback_reenters_a_custom_service(
    llm_server: FakeOpenAI, local_config: AetherConfig, async_start_service: AsyncStart
) -> None:
    """A sync on_delta of llm().sync.chat_stream that calls context.<service>() (async start) completes."""
    cfg = local_config.model_copy(update={"llm": {"default": llm_server.profile()}})
    seen: list[tuple[str, str]] = []

    def go() -> str:
        with open_session_sync(config=cfg, node_id="streamer") as ctx:

            def on_delta(piece: str) -> None:
                seen.append((piece, ctx.bridged().node()))

            text, _ = ctx.llm().sync.chat_stream("one two three", on_delta=on_delta)
            return str(text)

    text = finishes(go)
    assert text == "echo: one two three" == "".join(p for p, _ in seen)
    assert {node for _, node in seen} == {"streamer"} and async_start_service.started == 1


class Waiter(Service):
    """A service call that never returns by itself; records whether it was cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.cancelled = threading.Event()

    async def wait_forever(self) -> None:
        self.entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


@pytest.fixture()
def waiter() -> Any:
    svc = Waiter()
    register_context_service("waiter", svc)
    yield svc
    shutdown_services()


def test_interrupted_caller_cancels_the_coroutine(waiter: Waiter) -> None:
    """An exception injected into the waiting thread (what Prefect's timeout does) cancels the coroutine."""
    import ctypes

    errors: list[BaseException] = []

    def call() -> None:
        try:
            run_sync(waiter.wait_forever())
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    assert waiter.entered.wait(LIMIT_S)
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident), ctypes.py_object(KeyboardInterrupt))
    t.join(LIMIT_S)
    assert not t.is_alive(), "the interrupted caller stayed blocked"
    assert [type(e) for e in errors] == [KeyboardInterrupt]
    assert waiter.cancelled.wait(LIMIT_S), "the coroutine kept running after its caller was interrupted"


@aether_task(timeout_seconds=1)
def blocked_in_service(*, context: NodeContext) -> str:
    context.waiter().sync.wait_forever()
    return "never"


def test_sync_task_timeout_in_a_worker_thread(waiter: Waiter) -> None:
    """A sync @aether_task(timeout_seconds=...) blocked in a service call times out, and the call is cancelled."""

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def f() -> Any:
        return blocked_in_service.submit().result(raise_on_failure=False)

    result = finishes(f)
    assert isinstance(result, TimeoutError), result
    assert waiter.cancelled.wait(LIMIT_S)


def test_sync_task_timeout_on_the_main_thread(waiter: Waiter) -> None:
    """Called directly (main thread: Prefect uses SIGALRM), the timeout also ends the task and cancels the call."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("needs the main thread (signal-based timeout)")

    @flow
    def f() -> tuple[bool, str]:
        state = blocked_in_service(return_state=True)
        return state.is_failed(), state.message or ""

    failed, message = f()
    assert failed and "timeout" in message.lower(), message
    assert waiter.cancelled.wait(LIMIT_S)


def test_sync_task_sees_its_context_inside_service_coroutines(local_config: AetherConfig) -> None:
    class Who(Service):
        async def who(self) -> str:
            return current_context().node_id

    register_context_service("who", Who())
    try:

        @aether_task(config=local_config)
        def ask(*, context: NodeContext) -> tuple[str, str]:
            return context.who().sync.who(), context.node_id

        inner, outer = finishes(ask)
        assert inner == outer
    finally:
        shutdown_services()


def test_a_base_exception_in_a_coroutine_leaves_the_portal_running() -> None:
    """A BaseException from a coroutine reaches its caller and the portal keeps serving later calls."""
    from aether_prefect._sync import run_sync

    class Boom(BaseException):
        pass

    async def bad() -> None:
        raise Boom("from the coroutine")

    async def good() -> int:
        return 42

    with pytest.raises(Boom, match="from the coroutine"):
        run_sync(bad())
    assert run_sync(good()) == 42


def test_interruption_as_the_coroutine_starts_still_cancels_it() -> None:
    """The interruption may reach the caller before run_sync holds the portal's future (the coroutine already
    running): it must still be cancelled. The coroutine interrupts its own caller on its first step, 30 times."""
    import ctypes

    for _ in range(30):
        started, cancelled = threading.Event(), threading.Event()
        errors: list[BaseException] = []
        caller: list[int] = []

        async def interrupt_my_caller() -> None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(caller[0]), ctypes.py_object(KeyboardInterrupt))
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        def call() -> None:
            caller.append(threading.get_ident())
            try:
                run_sync(interrupt_my_caller())
            except BaseException as exc:  # noqa: BLE001 - checked below
                errors.append(exc)

        t = threading.Thread(target=call, daemon=True)
        t.start()
        t.join(LIMIT_S)
        assert not t.is_alive(), "the interrupted caller stayed blocked"
        assert [type(e) for e in errors] == [KeyboardInterrupt]
        assert started.is_set()
        assert cancelled.wait(LIMIT_S), "the coroutine kept running after its caller was interrupted"
