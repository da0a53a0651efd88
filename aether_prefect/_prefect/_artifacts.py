"""Prefect artifacts and run records: create, read back, and the few run lookups the usage roll-up needs."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from aether_prefect._prefect._client import with_client, with_sync_client


def _uuid(value: str | UUID | None) -> UUID | None:
    return None if value is None else (value if isinstance(value, UUID) else UUID(str(value)))


def _artifact_create(
    type: str, data: Any, description: str | None, key: str | None, flow_run_id: str | None,
    task_run_id: str | None, metadata: dict[str, str] | None,
) -> Any:
    """Prefect's ``ArtifactCreate`` action for :func:`create_artifact` and its blocking twin."""
    from prefect.client.schemas.actions import ArtifactCreate

    return ArtifactCreate(
        key=key, type=type, data=data, description=description, metadata_=metadata,
        flow_run_id=_uuid(flow_run_id), task_run_id=_uuid(task_run_id),
    )


async def create_artifact(
    *,
    type: str,
    data: Any,
    description: str | None = None,
    key: str | None = None,
    flow_run_id: str | None = None,
    task_run_id: str | None = None,
    metadata: dict[str, str] | None = None,
) -> str:
    """Create one artifact (``markdown``, ``table``, ``link``...) attached to the given runs; returns its id."""
    artifact = _artifact_create(type, data, description, key, flow_run_id, task_run_id, metadata)

    async def call(client: Any) -> str:
        return str((await client.create_artifact(artifact=artifact)).id)

    return await with_client(call)


def create_artifact_sync(
    *,
    type: str,
    data: Any,
    description: str | None = None,
    key: str | None = None,
    flow_run_id: str | None = None,
    task_run_id: str | None = None,
    metadata: dict[str, str] | None = None,
) -> str:
    """Blocking twin of :func:`create_artifact` on the calling thread's client (no hop to an event loop)."""
    artifact = _artifact_create(type, data, description, key, flow_run_id, task_run_id, metadata)
    return with_sync_client(lambda client: str(client.create_artifact(artifact=artifact).id))


def delete_artifact_sync(artifact_id: str) -> None:
    """Blocking twin of :func:`delete_artifact` on the calling thread's client."""
    with_sync_client(lambda client: client.delete_artifact(_uuid(artifact_id)))


async def delete_artifact(artifact_id: str) -> None:
    """Delete one artifact by id (the undo of a save whose index write failed after it was published)."""

    async def call(client: Any) -> None:
        await client.delete_artifact(_uuid(artifact_id))

    await with_client(call)


async def read_artifacts(*, flow_run_id: str, type: str | None = None, key: str | None = None,
                         unkeyed: bool = False) -> list[Any]:
    """Every artifact of a flow run (optionally of one type or key, or only those without a key), paging through
    200 at a time."""
    from prefect.client.schemas.filters import (
        ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey, ArtifactFilterType,
    )

    flt = ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[_uuid(flow_run_id)]),
        type=ArtifactFilterType(any_=[type]) if type else None,
        key=ArtifactFilterKey(any_=[key]) if key else (ArtifactFilterKey(exists_=False) if unkeyed else None),
    )
    out: list[Any] = []
    offset = 0
    while True:
        async def call(client: Any, offset: int = offset) -> list[Any]:
            return await client.read_artifacts(artifact_filter=flt, limit=200, offset=offset)  # type: ignore[no-any-return]

        page = await with_client(call)
        out.extend(page)
        if len(page) < 200:
            return out
        offset += 200


async def read_latest_artifact(key: str) -> Any | None:
    """The latest version of the artifact with ``key``, or None."""
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    async def call(client: Any) -> list[Any]:
        return await client.read_latest_artifacts(  # type: ignore[no-any-return]
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=[key])), limit=1
        )

    found = await with_client(call)
    return found[0] if found else None


async def count_cached_task_runs(flow_run_id: str) -> int:
    """How many task runs of the flow run took their result from Prefect's cache."""
    from prefect.client.schemas.filters import (
        FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterState, TaskRunFilterStateName,
    )

    async def call(client: Any) -> int:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[_uuid(flow_run_id)])),
            # ``type=None`` spelled out: Prefect 3.6 requires both fields of the state filter.
            task_run_filter=TaskRunFilter(
                state=TaskRunFilterState(type=None, name=TaskRunFilterStateName(any_=["Cached"]))
            ),
        )
        return len(runs)

    return await with_client(call)


async def flow_name_of(flow_run_id: str) -> str:
    """The name of the flow a flow run belongs to."""

    async def call(client: Any) -> str:
        run = await client.read_flow_run(_uuid(flow_run_id))
        return str((await client.read_flow(run.flow_id)).name)

    return await with_client(call)
