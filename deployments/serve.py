"""Serve the example flows from one process, with schedules: ``python deployments/serve.py``.

Needs a real Prefect server (``aether-prefect server start`` or ``prefect server start``)
and PREFECT_API_URL pointing at it. Each run executes in a subprocess of this one.
Options: ``--cron "0 2 * * *"`` (data-prep schedule), ``--source PATH``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from prefect import serve  # noqa: E402

from flows.ai_enrich import ai_enrich  # noqa: E402
from flows.data_prep import DEFAULT_SOURCE, data_prep  # noqa: E402


def deployments(cron: str, source: str) -> list:  # type: ignore[type-arg]
    """The RunnerDeployments this process serves."""
    return [
        data_prep.to_deployment(
            name="nightly", cron=cron, parameters={"source": source, "chunk_size": 50},
            tags=["aether-prefect", "data-prep"], description="Incremental orders data prep (KV watermark).",
        ),
        ai_enrich.to_deployment(
            name="on-demand", tags=["aether-prefect", "llm"],
            description="LLM + RAG + MCP enrichment; needs an AetherConfig with an LLM profile and an MCP server.",
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cron", default="0 2 * * *", help="data-prep schedule (default: 02:00 daily)")
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="orders CSV the scheduled runs read")
    args = parser.parse_args(argv)
    serve(*deployments(args.cron, args.source))


if __name__ == "__main__":
    main()
