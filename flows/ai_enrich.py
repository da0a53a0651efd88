"""LLM + RAG + MCP together: answer operator questions from a small knowledge base, with tool calls.

Needs an AetherConfig with an LLM profile ``default`` (with ``embed_model`` for dense
search; lexical search works without) and an MCP server ``default``, e.g. the tool
server shipped here::

    AetherConfig(llm={"default": AetherLLMProfile(model="gpt-4o-mini", api_key=...)},
                 mcp={"default": AetherMCPServer(command=sys.executable, args=["flows/tools_server.py"])}).save("ai")
    AETHER_PREFECT_CONFIG=ai python flows/ai_enrich.py

Without them the flow fails at once with a message naming what to configure.
"""

from __future__ import annotations

import os

# The in-process Prefect server's first start on a fresh PREFECT_HOME runs migrations and can take
# longer than Prefect's 20 s default; give it room (set before Prefect is imported).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import asyncio
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aether_prefect import NodeContext, ServiceNotConfigured, aether_flow, aether_task

KB_DIR = str(Path(__file__).resolve().parent / "data" / "kb")
QUESTIONS = ["How long does a refund take?", "How long is delivery to the United Kingdom?"]


def require_services(context: NodeContext) -> None:
    """Fail fast, naming every missing piece, before any work is done."""
    missing: list[str] = []
    for accessor in (context.llm, context.mcp):
        try:
            accessor()
        except ServiceNotConfigured as exc:
            missing.append(str(exc))
    if missing:
        raise ServiceNotConfigured(
            "ai-enrich", block_type="AetherConfig",
            how="this flow needs an LLM profile 'default' and an MCP server 'default'. " + " | ".join(missing),
        )


@aether_task(task_run_name="index-kb")
async def index_kb(kb_dir: str, *, context: NodeContext) -> str:
    """Upsert the knowledge-base documents (idempotent: unchanged docs are not duplicated)."""
    corpus_id = await context.rag.bind_corpus(key="orders-kb")
    docs = [{"path": str(p), "labels": {"topic": p.stem}} for p in sorted(Path(kb_dir).glob("*.md"))]
    if not docs:
        raise FileNotFoundError(f"no .md documents in {kb_dir!r}")
    await context.rag.upsert_docs(corpus_id, docs)
    return corpus_id


@aether_task(task_run_name="answer-{index}", retries=1)
async def answer(corpus_id: str, question: str, index: int, *, context: NodeContext) -> dict[str, Any]:
    """Answer one question from the corpus, with citations; count its words with an MCP tool."""
    result = await context.rag.answer(corpus_id, question, k=3)
    words = await context.mcp().call("word_count", {"text": result["answer"]})
    await context.memory().record("qa", {"question": question, "answer": result["answer"]}, tags=["ai-enrich"])
    return {"question": question, "answer": result["answer"], "citations": result["citations"],
            "words": words.get("words"), "usage": result.get("usage")}


@aether_task(task_run_name="convert-total")
async def convert_total(amount: float, currency: str, *, context: NodeContext) -> dict[str, Any]:
    """Convert a total to EUR with the MCP tool server."""
    return await context.mcp().call("convert", {"amount": amount, "from_currency": currency, "to_currency": "EUR"})


@aether_flow(name="ai-enrich")
async def ai_enrich(questions: list[str] = QUESTIONS, kb_dir: str = KB_DIR, *, context: NodeContext) -> dict[str, Any]:
    """Index the KB, answer each question concurrently, convert a sample total, save a report artifact."""
    require_services(context)
    corpus_id = await index_kb(kb_dir)
    answers = await asyncio.gather(*(answer(corpus_id, q, i) for i, q in enumerate(questions)))
    converted = await convert_total(100.0, "USD")
    report = {"answers": list(answers), "sample_conversion": converted}
    await context.artifacts().save_json(report, kind="ai-report", name="ai-enrich-report")
    return report


if __name__ == "__main__":
    print(asyncio.run(ai_enrich()))
