"""The AetherGraph ad-hoc session quick start, on Prefect: ``python flows/adhoc_script.py``.

Runs without an LLM: the chat step is skipped with a note when none is configured
(set OPENAI_API_KEY, or an AetherConfig with an ``llm`` profile, to see a haiku).
"""

from __future__ import annotations

import os

# The in-process Prefect server's first start on a fresh PREFECT_HOME runs migrations and can take
# longer than Prefect's 20 s default; give it room (set before Prefect is imported).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import asyncio
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aether_prefect import ServiceNotConfigured, open_session


async def main() -> dict:
    async with open_session(run_id=None, graph_id="adhoc", node_id="adhoc") as context:
        context.logger().info("hello from adhoc")
        try:
            txt, _ = await context.llm().chat([{"role": "user", "content": "Give me a haiku about photons."}])
            print(txt)
        except ServiceNotConfigured as exc:
            context.logger().info("no LLM configured, skipping the haiku (%s)", exc.block_type)
            txt = None
        note = await context.artifacts().save_text("photons travel light", kind="note", name="adhoc-note")
        runs = await context.kv().incr("adhoc-script/runs")
        await context.memory().record("note", {"artifact_id": note.artifact_id, "runs": runs})
        recent = await context.memory().recent(limit=5)
        print(f"run {context.run_id}: saved {note.uri}; this script ran {runs} time(s); "
              f"{len(recent)} memory event(s) in this run")
        return {"run_id": context.run_id, "artifact_id": note.artifact_id, "runs": runs, "haiku": txt}


if __name__ == "__main__":
    asyncio.run(main())
