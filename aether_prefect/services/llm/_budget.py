"""LLM budgets: refuse a call before sending when the task run's or the flow run's budget is spent.

- Per task run: ``ctx.llm_budget`` (the ``llm_budget=`` override, shared by every profile) or the profile's
  ``budget_per_task_run``. Counted in this process, keyed by task run id, so every retry attempt of the task
  run (a fresh context each) draws on the same budget.
- Per flow run: the profile's ``budget_per_flow_run``, shared by every task on every worker of the flow run
  through allotments. A ledger in the KV (``llm-budget/<flow run>/<profile>``, with a TTL) records how many
  calls and tokens have been handed out. A context claims a block of calls and tokens from it with one
  locked KV operation, spends the block locally (no request per call), claims the next block when it runs
  out and gives back what it did not use when it closes. Blocks double while a context keeps claiming
  (halve after a quiet spell), cover at least the callers waiting for one (200 concurrent chats: one claim)
  and never exceed a quarter of what is left, so a slow caller does not hoard. When less than half a block
  is left in hand, the next block is claimed in the background, so callers do not wait for the KV.
  A process that dies keeps its block: the unreturned part counts as spent, so the budget is never exceeded.
  A call is refused (nothing sent, nothing counted) when this context's block is empty and the ledger has
  nothing left; until other contexts close, the unused parts of their blocks are not available to it.

Calls are reserved before sending (a call-count budget is exact, even across processes). Tokens are only known
after a reply: a call in flight when a token budget runs out finishes and is counted, so a token budget can be
overshot by at most one call per concurrent caller. A request that fails after it was sent still counts as a
call; a call refused by a budget, or stopped by any error before sending, gives its reservations back.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from aether_prefect.budgets import LLMBudget
from aether_prefect.errors import LLMBudgetExceeded
from aether_prefect.services.llm._usage import Usage

if TYPE_CHECKING:
    from aether_prefect.blocks import AetherLLMProfile
    from aether_prefect.context import NodeContext
    from aether_prefect.services.kv import PrefectKV

T = TypeVar("T")

#: Seconds a flow run's KV counters live after their first increment.
FLOW_COUNTER_TTL_S = 3 * 24 * 3600
_MAX_TASK_COUNTERS = 10_000
_MAX_BLOCK = 1024  # most calls claimed in one block
_QUIET_S = 10.0  # a context that has not claimed for this long halves its block
_FIRST_TOKENS_PER_CALL = 256  # token block guess before any reply was seen


@dataclass
class _Counter:
    """Calls and tokens spent so far in one task-run scope."""

    calls: int = 0
    tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


_task_counters: "OrderedDict[tuple[str, str], _Counter]" = OrderedDict()
_task_lock = threading.Lock()


def _task_counter(key: tuple[str, str]) -> _Counter:
    """The process-wide counter of a task-run scope (oldest scopes forgotten past 10,000)."""
    with _task_lock:
        c = _task_counters.get(key)
        if c is None:
            c = _task_counters[key] = _Counter()
            while len(_task_counters) > _MAX_TASK_COUNTERS:
                _task_counters.popitem(last=False)
        else:
            _task_counters.move_to_end(key)
        return c


def _refuse(scope: str, profile: str, measure: str, spent: int, limit: int, fix: str) -> LLMBudgetExceeded:
    err = LLMBudgetExceeded(
        f"LLM budget per {scope} for profile {profile!r} is spent: {spent} {measure} used, limit {limit}. "
        f"No request was sent. Fix: {fix}"
    )
    err.budget = scope  # type: ignore[attr-defined]
    err.measure = measure  # type: ignore[attr-defined]
    err.spent = spent  # type: ignore[attr-defined]
    err.limit = limit  # type: ignore[attr-defined]
    return err


@dataclass
class Reservation:
    """What acquire() reserved, so commit() or give_back() can settle it."""

    task: _Counter | None = None
    flow: "_Allotment | None" = None


class _Allotment:
    """One context's block of a flow run's budget: claimed from the KV ledger, spent here, returned at close."""

    def __init__(self, guard: "BudgetGuard", budget: LLMBudget, key: str) -> None:
        self._guard = guard
        self.budget = budget
        self.key = key
        self.calls = 0  # calls in hand
        self.tokens = 0  # tokens in hand (negative: tokens a reply used beyond the block, claimed next time)
        self._block = 1
        self._waiting = 0
        self._last_claim = -math.inf
        self._tokens_per_call = float(_FIRST_TOKENS_PER_CALL)
        self._kv: "PrefectKV | None" = None
        self._refill: "asyncio.Task[None] | None" = None
        self._claim_locks: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]" = (
            weakref.WeakKeyDictionary()
        )

    def _in_hand(self) -> bool:
        return (self.budget.calls is None or self.calls > 0) and (
            self.budget.total_tokens is None or self.tokens > 0)

    def _claim_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._claim_locks.get(loop)
        if lock is None:
            lock = self._claim_locks[loop] = asyncio.Lock()
        return lock

    async def take(self) -> None:
        """Take one call from the block, claiming the next block first if needed; LLMBudgetExceeded if none."""
        if not self._in_hand():
            self._waiting += 1  # callers waiting for a block: the next claim asks for at least one each
            try:
                while not self._in_hand():
                    async with self._claim_lock():  # one claim at a time per context; the others wait for it
                        if self._in_hand():
                            break
                        await self._claim()
            finally:
                self._waiting -= 1
        if self.budget.calls is not None:
            self.calls -= 1
        self._maybe_refill()

    def _low(self) -> bool:
        """True when less than half a block is left in hand: time to claim the next one ahead of need."""
        half = max(1, self._block // 2)
        return (self.budget.calls is not None and self.calls < half) or (
            self.budget.total_tokens is not None and self.tokens < half * self._tokens_per_call)

    def _maybe_refill(self) -> None:
        """Claim the next block in the background while this one still lasts, so no caller waits for the KV."""
        if self._refill is not None or not self._low():
            return
        loop = asyncio.get_running_loop()
        if self._claim_locks.get(loop) is not None and self._claim_locks[loop].locked():
            return  # a claim is on its way already
        self._refill = loop.create_task(self._claim_ahead())

    async def _claim_ahead(self) -> None:
        try:
            async with self._claim_lock():
                if self._low():
                    await self._claim(ahead=True)
        except Exception:  # noqa: BLE001 - nothing left, or the KV failed: the next caller claims (or is refused)
            pass
        finally:
            self._refill = None

    def spend(self, tokens: int) -> None:
        """Count a finished call's tokens against the block."""
        if self.budget.total_tokens is not None:
            self.tokens -= tokens
        self._tokens_per_call = 0.8 * self._tokens_per_call + 0.2 * max(tokens, 1)

    def give_back_call(self) -> None:
        """Return one taken call that was never sent."""
        if self.budget.calls is not None:
            self.calls += 1

    async def _claim(self, *, ahead: bool = False) -> None:
        now = time.monotonic()
        if now - self._last_claim > _QUIET_S:
            self._block = max(1, self._block // 2)
        want_calls = max(self._block, self._waiting)
        want_tokens = max(0, -self.tokens) + max(1, math.ceil(want_calls * self._tokens_per_call))
        grant: dict[str, int] = {}
        calls_cap, tokens_cap = self.budget.calls, self.budget.total_tokens
        have_calls, have_tokens = self.calls, self.tokens

        def claim(ledger: Any) -> dict[str, int]:
            used = {"calls": 0, "tokens": 0, **(ledger if isinstance(ledger, dict) else {})}
            g_calls = g_tokens = 0
            if calls_cap is not None:
                left = max(0, calls_cap - int(used["calls"]))
                g_calls = min(want_calls, max(1, left // 4), left)
            if tokens_cap is not None:
                left = max(0, tokens_cap - int(used["tokens"]))
                g_tokens = min(want_tokens, max(1, left // 4, -have_tokens + 1), left)
            if (calls_cap is not None and have_calls + g_calls <= 0) or (
                    tokens_cap is not None and have_tokens + g_tokens <= 0):
                g_calls = g_tokens = 0  # not enough for one call: take nothing, refuse
            grant.update(calls=g_calls, tokens=g_tokens, spent_calls=int(used["calls"]),
                         spent_tokens=int(used["tokens"]))
            return {"calls": int(used["calls"]) + g_calls, "tokens": int(used["tokens"]) + g_tokens}

        kv = self._ledger_kv()
        await kv.update(self.key, claim, ttl_s=FLOW_COUNTER_TTL_S)
        self._last_claim = now
        self.calls += grant["calls"]
        self.tokens += grant["tokens"]
        if grant["calls"] or grant["tokens"]:
            self._block = min(self._block * 2, _MAX_BLOCK)
            return
        if ahead:
            return  # nothing left to claim ahead: callers are refused when the block in hand is spent
        g = self._guard
        if calls_cap is not None and self.calls <= 0:
            raise _refuse("flow run", g._profile, "calls", grant["spent_calls"], calls_cap, g._flow_fix)
        raise _refuse("flow run", g._profile, "total_tokens", grant["spent_tokens"], tokens_cap or 0, g._flow_fix)

    def _ledger_kv(self) -> "PrefectKV":
        if self._kv is None:
            self._kv = self._guard._ctx.kv()
        return self._kv

    async def release(self) -> None:
        """Give the unused part of the block back to the ledger (one locked KV operation, if anything is left)."""
        refill = self._refill
        if refill is not None and refill.get_loop() is asyncio.get_running_loop():
            await asyncio.wait([refill])  # a claim ahead in flight: its grant is in hand before giving back
        calls = self.calls if self.budget.calls is not None else 0
        tokens = max(self.tokens, 0) if self.budget.total_tokens is not None else 0
        if calls <= 0 and tokens <= 0:
            return
        self.calls, self.tokens = self.calls - calls, self.tokens - tokens

        def give_back(ledger: Any) -> dict[str, int]:
            used = {"calls": 0, "tokens": 0, **(ledger if isinstance(ledger, dict) else {})}
            return {"calls": max(0, int(used["calls"]) - calls), "tokens": max(0, int(used["tokens"]) - tokens)}

        await self._ledger_kv().update(self.key, give_back)


class BudgetGuard:
    """The budgets that apply to one LLM service of one context."""

    def __init__(self, ctx: "NodeContext", profile_name: str, profile: "AetherLLMProfile") -> None:
        self._ctx = ctx
        self._profile = profile_name
        override = ctx.llm_budget
        self.task_budget: LLMBudget | None = override if override is not None else profile.budget_per_task_run
        self.flow_budget: LLMBudget | None = profile.budget_per_flow_run
        if self.task_budget is not None and self.task_budget.is_unlimited():
            self.task_budget = None
        if self.flow_budget is not None and self.flow_budget.is_unlimited():
            self.flow_budget = None
        # An llm_budget= override caps the task run across profiles; a profile's budget caps that profile.
        scope = "*" if override is not None else profile_name
        run = ctx.task_run_id or f"context-{id(ctx)}-{ctx.run_id}"
        self._task_key = (run, scope)
        flow_run = ctx.flow_run_id or ctx.run_id
        self._flow_fix = f"raise budget_per_flow_run of LLM profile {profile_name!r}, or start a new flow run"
        self._flow = None if self.flow_budget is None else _Allotment(
            self, self.flow_budget, f"llm-budget/{flow_run}/{profile_name}")

    @property
    def active(self) -> bool:
        """True when some budget applies (else acquire/commit cost nothing)."""
        return self.task_budget is not None or self.flow_budget is not None

    async def acquire(self) -> Reservation:
        """Reserve one call, or raise LLMBudgetExceeded (nothing is sent then, nothing stays reserved)."""
        res = Reservation()
        if self.task_budget is not None:
            res.task = self._acquire_task(self.task_budget)
        if self._flow is not None:
            try:
                await self._flow.take()
            except BaseException:
                self.give_back(res)  # the flow check failed (refused, KV down, cancelled): nothing is sent
                raise
            res.flow = self._flow
        return res

    def give_back(self, res: Reservation) -> None:
        """Return a reservation whose call was never sent."""
        task, res.task = res.task, None
        if task is not None:
            with task.lock:
                task.calls -= 1
        flow, res.flow = res.flow, None
        if flow is not None:
            flow.give_back_call()

    def _acquire_task(self, budget: LLMBudget) -> _Counter:
        c = _task_counter(self._task_key)
        fix = ("raise llm_budget= of the task (or budget_per_task_run of the profile), "
               "or split the work over more task runs")
        with c.lock:
            if budget.total_tokens is not None and c.tokens >= budget.total_tokens:
                raise _refuse("task run", self._profile, "total_tokens", c.tokens, budget.total_tokens, fix)
            if budget.calls is not None and c.calls >= budget.calls:
                raise _refuse("task run", self._profile, "calls", c.calls, budget.calls, fix)
            c.calls += 1
        return c

    def commit(self, res: Reservation, usage: Usage) -> None:
        """Add a finished (or failed part-way) call's tokens to the counters it was reserved on."""
        if res.task is not None and usage.total_tokens:
            with res.task.lock:
                res.task.tokens += usage.total_tokens
        if res.flow is not None:
            res.flow.spend(usage.total_tokens)

    async def aclose(self) -> None:
        """Give the unused part of this context's flow-run allotment back."""
        if self._flow is not None:
            await self._flow.release()


async def gather_capped(calls: list[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Run budgeted calls at most ``limit`` at a time, results in order; the first failure cancels the rest.

    Calls not yet started when one fails are never started, so they reserve no budget and send nothing.
    """
    sem = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with sem:
            return await call()

    tasks = [asyncio.ensure_future(one(c)) for c in calls]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        return [t.result() for t in tasks]
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
