"""AetherGraph's older memory spellings: ``write_result(topic=)``, ``last_by_name``, the memory-RAG helpers.

Mixed into :class:`MemoryService`. The ``rag_*`` helpers reach ``context.rag`` (corpora in the object
store) and record what they did as tool results, as AetherGraph's memory facade did.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import TYPE_CHECKING, Any, Literal

from aether_prefect.services._legacy import Adapter, LegacyKeywords

if TYPE_CHECKING:
    from aether_prefect.services.memory import Event

_TOOL_RESULT = "tool_result"
_SCAN = 2000  # newest tool results read to answer last_by_name / last_outputs_by_topic


async def _write_result_legacy(self: Any, fn: Any, *args: Any, topic: str | None = None,
                               tool: str | None = None, **kw: Any) -> Any:
    """``write_result(topic=...)``: AetherGraph's alias of ``tool=``."""
    if tool is not None and topic is not None and tool != topic:
        from aether_prefect.errors import MemoryValidationError

        raise MemoryValidationError(f"write_result got tool={tool!r} and topic={topic!r}; pass one (topic is an alias of tool)")
    return await fn(self, *args, tool=tool if tool is not None else topic, **kw)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:60] or "x"


class MemoryCompat(LegacyKeywords):
    """AetherGraph's memory helpers that our service names differently or lacked."""

    _LEGACY: dict[str, Adapter] = {"write_result": _write_result_legacy, "record_tool_result": _write_result_legacy}

    async def _last_tool_event(self, match: Any) -> "Event | None":
        found = await self._newest([_TOOL_RESULT], match, 1, _SCAN)  # type: ignore[attr-defined]
        return found[0] if found else None

    async def last_by_name(self, name: str) -> dict[str, Any] | None:
        """The newest tool-result output called ``name``: ``{"ts", "event_id", "vtype", "value"}`` or None.

        >>> (await context.memory().last_by_name("result"))["value"]
        """
        e = await self._last_tool_event(lambda ev: any(o.get("name") == name for o in ev.outputs or []))
        if e is None:
            return None
        out = next(o for o in e.outputs or [] if o.get("name") == name)
        return {"ts": e.ts, "event_id": e.event_id, "vtype": out.get("vtype"), "value": out.get("value")}

    async def last_output_by_name(self, name: str) -> Any:
        """Just the value of :meth:`last_by_name` (None if there is none).

        Example: ``total = await context.memory().last_output_by_name("total")``
        """
        hit = await self.last_by_name(name)
        return None if hit is None else hit["value"]

    async def last_outputs_by_topic(self, topic: str) -> dict[str, Any] | None:
        """The newest result of tool/topic ``topic``: ``{"ts", "event_id", "last_outputs": {name: value}}`` or None.

        >>> (await context.memory().last_outputs_by_topic("tool.calculator"))["last_outputs"]
        """
        e = await self._last_tool_event(lambda ev: ev.tool == topic)
        if e is None:
            return None
        return {"ts": e.ts, "event_id": e.event_id,
                "last_outputs": {o["name"]: o.get("value") for o in e.outputs or [] if o.get("name")}}

    get_last_outputs_for_topic = last_outputs_by_topic

    async def last_tool_result_outputs(self, tool: str) -> dict[str, Any] | None:
        """The ``{name: value}`` outputs of the newest result of ``tool``, or None.

        Example: ``outs = await context.memory().last_tool_result_outputs("sum")  # {"total": 3}``
        """
        hit = await self.last_outputs_by_topic(tool)
        return None if hit is None else hit["last_outputs"]

    # -- memory-RAG ---------------------------------------------------------------

    def _rag(self) -> Any:
        return self.ctx.rag  # type: ignore[attr-defined]

    async def rag_bind(self, *, corpus_id: str | None = None, key: str | None = None, create_if_missing: bool = True,
                       labels: dict[str, Any] | None = None) -> str:
        """A corpus for this memory timeline: ``corpus_id``, else one derived from the timeline and ``key``.

        ``labels`` are AetherGraph's corpus metadata: accepted and not stored (our corpora carry per-document
        labels). With ``create_if_missing=False`` the id is returned without creating the corpus.

        >>> cid = await context.memory().rag_bind(key="notes")
        """
        del labels
        if corpus_id is None:
            logical = key or "default"
            timeline = self.timeline  # type: ignore[attr-defined]
            digest = hashlib.sha256(f"{timeline}:{logical}".encode()).hexdigest()[:8]
            corpus_id = f"mem-{_slug(timeline)}-{_slug(logical)}-{digest}"[:128]
        if not create_if_missing:
            self._rag()._check_corpus_id(corpus_id)
            return corpus_id
        return await self._rag().bind_corpus(corpus_id)  # type: ignore[no-any-return]

    async def rag_upsert(self, *, corpus_id: str, docs: list[dict[str, Any]], topic: str | None = None) -> Any:
        """Upsert ``docs`` into ``corpus_id`` (``context.rag.upsert_docs``); ``topic`` becomes each doc's label.

        >>> await context.memory().rag_upsert(corpus_id=cid, docs=[{"title": "t", "text": "..."}])
        """
        if topic:
            docs = [{**d, "labels": {**(d.get("labels") or {}), "topic": topic}} for d in docs]
        return await self._rag().upsert_docs(corpus_id, list(docs))

    async def rag_search(self, *, corpus_id: str, query: str, k: int = 8, filters: dict[str, Any] | None = None,
                         mode: Literal["hybrid", "dense", "lexical"] = "hybrid") -> list[dict[str, Any]]:
        """Search ``corpus_id``; hits as dicts ``{chunk_id, doc_id, corpus_id, score, text, meta}``.

        >>> hits = await context.memory().rag_search(corpus_id=cid, query="refund")
        """
        hits = await self._rag().search(corpus_id, query, k=k, filters=filters, mode=mode)
        return [h.model_dump() for h in hits]

    async def rag_answer(self, *, corpus_id: str, question: str, style: str = "concise", with_citations: bool = True,
                         k: int = 6) -> dict[str, Any]:
        """Answer from ``corpus_id`` (``context.rag.answer``) and record the answer as a tool result.

        >>> ans = await context.memory().rag_answer(corpus_id=cid, question="How long do refunds take?")
        """
        ans: dict[str, Any] = await self._rag().answer(corpus_id, question, style=style, with_citations=with_citations, k=k)
        outs = [{"name": "answer", "kind": "text", "value": ans.get("answer") or ""}]
        outs += [{"name": f"cite_{i}", "kind": "json", "value": c} for i, c in enumerate(ans.get("resolved_citations", []), 1)]
        usage = {k_: float(v) for k_, v in (ans.get("usage") or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        await self.write_result(tool=f"rag.answer.{corpus_id}", outputs=outs, tags=["rag", "qa"],  # type: ignore[attr-defined]
                                message=f"Q: {question}", metrics=usage, severity=2)
        return ans

    async def rag_promote_events(self, *, corpus_id: str, events: list["Event"] | None = None,
                                 where: dict[str, Any] | None = None, policy: dict[str, Any] | None = None) -> dict[str, Any]:
        """Copy memory events into ``corpus_id`` as documents (their text, else their inputs/outputs as JSON).

        ``where={"kinds": [...], "limit": n}`` picks recent events, ``policy={"min_signal": x}`` keeps those
        whose ``signal`` reaches ``x`` (default 0.0: all). Re-promoting an event changes nothing.

        >>> stats = await context.memory().rag_promote_events(corpus_id=cid, where={"kinds": ["tool_result"]})
        """
        min_signal = float((policy or {}).get("min_signal", 0.0))
        if events is None:
            w = where or {}
            events = await self.recent(kinds=w.get("kinds"), limit=int(w.get("limit", 200)))  # type: ignore[attr-defined]
            events = [e for e in events if (e.signal or 0.0) >= min_signal]
        docs = []
        for e in events:
            body = e.text or json.dumps({"inputs": e.inputs, "outputs": e.outputs, "metrics": e.metrics},
                                        ensure_ascii=False, default=str)
            labels = {"kind": e.kind, "tool": e.tool or "", "stage": e.stage or "", "severity": e.severity,
                      "tags": list(e.tags or []), "event_id": e.event_id}
            docs.append({"text": body, "title": f"{e.kind}:{e.tool or e.stage or 'n/a'}:{e.ts}", "labels": labels})
        if not docs:
            return {"added": 0, "chunks": 0}
        stats = await self._rag().upsert_docs(corpus_id, docs)
        await self.write_result(tool=f"rag.promote.{corpus_id}", tags=["rag", "ingest"], severity=2,  # type: ignore[attr-defined]
                                outputs=[{"name": "added_docs", "kind": "number", "value": stats["added"]}],
                                message=f"Promoted {stats['added']} events")
        return stats.model_dump()  # type: ignore[no-any-return]
