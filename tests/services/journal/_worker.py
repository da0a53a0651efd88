"""A flow run executed in a worker process that the test SIGKILLs, then runs again (a flow-run retry).

Run: ``python -m tests.services.journal._worker FLOW_RUN_ID``; the config is the saved AetherConfig ``CONFIG``.
The task makes five LLM calls, then on the first execution waits until their entries are in the store (on the
local store they already are: appended to the attempt's log), creates ``marker`` and waits to be killed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from prefect import flow

from aether_prefect import NodeContext, aether_task
from aether_prefect.services.journal._log import entries_at

CONFIG = "journal-sigkill-test"


@aether_task(config=CONFIG)
async def five_calls(marker: str, *, context: NodeContext) -> list[str]:
    texts = [(await context.llm().chat(f"killed step {i}"))[0] for i in range(5)]
    if not Path(marker).exists():
        store, durable = context.store(), context.llm().profile.durable is not False  # the bench's raw leg: False
        while durable and sum(len(entries_at(store, k)) for k in store.list_keys("journal/")) < 5:  # then kill
            await asyncio.sleep(0.02)
        Path(marker).write_text("calls done")
        await asyncio.sleep(600)  # the test kills this process here
    return texts


@flow(name="journal-killable")
async def killable(marker: str) -> list[str]:
    return await five_calls(marker)


def main(flow_run_id: str) -> None:
    from prefect import get_client
    from prefect.flow_engine import run_flow

    async def read() -> object:
        async with get_client() as client:
            return await client.read_flow_run(flow_run_id)

    flow_run = asyncio.run(read())
    result = asyncio.run(run_flow(killable, flow_run=flow_run, parameters=flow_run.parameters))  # type: ignore[arg-type,attr-defined]
    print(result)


if __name__ == "__main__":
    main(sys.argv[1])
