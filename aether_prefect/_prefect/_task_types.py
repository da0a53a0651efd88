"""Prefect's own task keyword types, for the typed overloads of ``aether_task`` (imported only by type checkers)."""

from __future__ import annotations

from prefect import Task
from prefect.assets import Asset
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.results import ResultSerializer, ResultStorage
from prefect.tasks import RetryConditionCallable, StateHookCallable, TaskRunNameValueOrCallable
from prefect.utilities.annotations import NotSet

__all__ = [
    "Asset", "CachePolicy", "NotSet", "ResultSerializer", "ResultStorage", "RetryConditionCallable",
    "StateHookCallable", "Task", "TaskRunContext", "TaskRunNameValueOrCallable",
]
