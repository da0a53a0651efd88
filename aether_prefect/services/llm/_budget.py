"""LLM budgets: refuse a call before sending when the task run's or the flow run's budget is spent.

- Per task run: ``ctx.llm_budget`` (the ``llm_budget=`` override, shared by every profile) or the profile's
  ``budget_per_task_run``. Counted in this process, keyed by task run id, so every retry attempt of the task
  run (a fresh context each) draws on the same budget.
- Per flow run: the profile's ``budget_per_flow_run``, counted in the KV (atomic ``incr`` keyed by flow run id,
  with a TTL) so every task on every worker of the flow run shares it.

Calls are reserved before sending (a call-count budget is exact, even across processes). Tokens are only known
after a reply: a call in flight when a token budget runs out finishes and is counted, so a token budget can be
overshot by at most one call per concurrent caller. A request that fails after it was sent still counts as a
call; a call refused by a budget sends nothing and counts nothing.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aether_prefect.budgets import LLMBudget
from aether_prefect.errors import LLMBudgetExceeded
from aether_prefect.services.llm._usage import Usage

if TYPE_CHECKING:
    from aether_prefect.blocks import AetherLLMProfile
    from aether_prefect.context import NodeContext

#: Seconds a flow run's KV counters live after their first increment.
FLOW_COUNTER_TTL_S = 3 * 24 * 3600
_MAX_TASK_COUNTERS = 10_000


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
    """What acquire() reserved, so commit() can add the tokens to the same counters."""

    task: _Counter | None = None
    flow_tokens_key: str | None = None


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
        self._flow_prefix = f"llm-budget/{flow_run}/{profile_name}"

    @property
    def active(self) -> bool:
        """True when some budget applies (else acquire/commit cost nothing)."""
        return self.task_budget is not None or self.flow_budget is not None

    async def acquire(self) -> Reservation:
        """Reserve one call, or raise LLMBudgetExceeded (nothing is sent then)."""
        res = Reservation()
        if self.task_budget is not None:
            res.task = self._acquire_task(self.task_budget)
        if self.flow_budget is not None:
            try:
                res.flow_tokens_key = await self._acquire_flow(self.flow_budget)
            except LLMBudgetExceeded:
                if res.task is not None:  # give the task-run reservation back: nothing was sent
                    with res.task.lock:
                        res.task.calls -= 1
                raise
        return res

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

    async def _acquire_flow(self, budget: LLMBudget) -> str | None:
        kv = self._ctx.kv()
        fix = f"raise budget_per_flow_run of LLM profile {self._profile!r}, or start a new flow run"
        tokens_key = f"{self._flow_prefix}/tokens"
        if budget.total_tokens is not None:
            spent = int(await kv.get(tokens_key, 0) or 0)
            if spent >= budget.total_tokens:
                raise _refuse("flow run", self._profile, "total_tokens", spent, budget.total_tokens, fix)
        if budget.calls is not None:
            calls_key = f"{self._flow_prefix}/calls"
            n = int(await kv.incr(calls_key, 1))
            if n == 1:
                await kv.expire(calls_key, FLOW_COUNTER_TTL_S)
            if n > budget.calls:
                raise _refuse("flow run", self._profile, "calls", budget.calls, budget.calls, fix)
        return tokens_key if budget.total_tokens is not None else None

    async def commit(self, res: Reservation, usage: Usage) -> None:
        """Add a finished call's tokens to the counters it was reserved on."""
        if res.task is not None and usage.total_tokens:
            with res.task.lock:
                res.task.tokens += usage.total_tokens
        if res.flow_tokens_key is not None and usage.total_tokens:
            kv = self._ctx.kv()
            n = int(await kv.incr(res.flow_tokens_key, usage.total_tokens))
            if n == usage.total_tokens:
                await kv.expire(res.flow_tokens_key, FLOW_COUNTER_TTL_S)

    def spent(self) -> dict[str, Any]:
        """This task run's spend as counted here: {'calls': n, 'total_tokens': n}."""
        c = _task_counter(self._task_key)
        return {"calls": c.calls, "total_tokens": c.tokens}
