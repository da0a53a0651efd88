"""AetherGraph's RAG spellings: ``retrieve``, ``reembed``, ``answer(llm=)``, ranked citations, PDF documents.

Mixed into :class:`RAGService`. ``set_rag_llm_client`` (profile ``"rag"``) and ``set_rag_index_backend``
(its ``dim``) from :mod:`aether_prefect._registration` take effect here. Upserts stay idempotent
(SPEC section 6, defect 6): a PDF becomes a text document with the same identity rules.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import anyio

from aether_prefect._registration import RAG_PROFILE, rag_index_settings, registered_llm
from aether_prefect.errors import RAGError, ServiceNotConfigured
from aether_prefect.services._legacy import Adapter, LegacyKeywords

_SNIPPET = 240
_WORD = re.compile(r"\w+", re.UNICODE)


def pdf_text(path: str | Path) -> str:
    """The text of every page of a PDF (pypdf, the ``pdf`` extra); a clear error when it is missing."""
    try:
        from pypdf import PdfReader
    except ImportError:
        raise RAGError(
            f"{path}: reading PDF documents needs the 'pdf' extra: pip install 'aether-prefect[pdf]' (installs pypdf)"
        ) from None
    try:
        reader = PdfReader(str(path))
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
    except Exception as exc:  # pypdf raises its own error types for broken files
        raise RAGError(f"{path}: could not read the PDF ({type(exc).__name__}: {exc})") from None
    return "\n\n".join(p for p in pages if p)


def _pdf_as_text_doc(raw: Any) -> Any:
    """A ``{"path": "x.pdf", ...}`` doc as ``{"text": ..., "title": ..., "source": path, ...}``."""
    if not isinstance(raw, dict) or not isinstance(raw.get("path"), (str, Path)):
        return raw
    path = Path(raw["path"])
    if path.suffix.lower() != ".pdf":
        return raw
    if not path.is_file():
        raise RAGError(f"no PDF at {str(path)!r}; pass the path of an existing file")
    doc = {k: v for k, v in raw.items() if k != "path"}
    doc["text"] = pdf_text(path)
    doc.setdefault("title", path.stem)
    doc.setdefault("source", str(path))
    return doc


def _uses_rag_profile(self: Any) -> bool:
    return registered_llm(RAG_PROFILE) is not None and self.ctx.overrides.llm is None


async def _upsert_legacy(self: Any, fn: Any, corpus_id: str, docs: Any, *args: Any, **kw: Any) -> Any:
    """``upsert_docs`` also takes PDF paths (text extracted with pypdf)."""
    if isinstance(docs, dict):
        docs = [docs]
    if isinstance(docs, (list, tuple)):
        docs = await anyio.to_thread.run_sync(lambda: [_pdf_as_text_doc(d) for d in docs])
    return await fn(self, corpus_id, docs, *args, **kw)


async def _answer_legacy(self: Any, fn: Any, *args: Any, llm: Any = None, **kw: Any) -> Any:
    """``answer(..., llm=client)``; the ``"rag"`` profile when one is registered; citations with rank and snippet."""
    if llm is not None:
        name = getattr(llm, "profile_name", None)
        if not isinstance(name, str) or self.ctx.llm(name) is not llm:
            raise RAGError(
                "answer(llm=...) takes a client from this context, e.g. llm=context.llm('my_profile'); "
                "or pass profile='my_profile'"
            )
        kw.setdefault("profile", name)
    elif "profile" not in kw and _uses_rag_profile(self):
        kw["profile"] = RAG_PROFILE
    result: dict[str, Any] = await fn(self, *args, **kw)
    for rank, entry in enumerate(result.get("resolved_citations", []), start=1):
        entry["rank"] = rank
        text = entry.get("text") or ""
        entry["snippet"] = text if len(text) <= _SNIPPET else text[:_SNIPPET].rstrip() + "…"
    for rank, entry in enumerate(result.get("citations", []), start=1):
        entry["rank"] = rank
    return result


def _check_dim(vectors: list[list[float]]) -> None:
    settings = rag_index_settings()
    if settings is None or settings.dim is None or not vectors:
        return
    got = len(vectors[0])
    if got != settings.dim:
        raise RAGError(
            f"the embedding model returns {got}-dimensional vectors but set_rag_index_backend(dim={settings.dim}) "
            "was set; fix dim or the embed_model"
        )


async def _embed_checked(self: Any, fn: Any, llm: Any, texts: list[str]) -> list[list[float]]:
    """Embeddings, checked against ``set_rag_index_backend(dim=...)``."""
    vectors: list[list[float]] = await fn(self, llm, texts)
    _check_dim(vectors)
    return vectors


def _embedder_rag(self: Any, fn: Any) -> Any:
    """The embedding client: the ``"rag"`` profile (``set_rag_llm_client``) when registered, else as before."""
    if _uses_rag_profile(self):
        prof = self.ctx.llm_profile(RAG_PROFILE)
        return self.ctx.llm(RAG_PROFILE) if prof is not None and prof.embed_model else None
    return fn(self)


def _revision(corpus_id: str, rec: Any, size: int, overlap: int, model: str) -> Any:
    """The stored revision of ``rec`` under the same identity rules as ``upsert_docs`` (so a later upsert of the
    same document with the same model finds it unchanged)."""
    from aether_prefect.services import rag as rag_mod
    from aether_prefect.services.rag import _index as ri

    labels_json = json.dumps(rec.labels, sort_keys=True)
    meta_json = json.dumps(rec.meta, sort_keys=True)
    rev = rag_mod._sha(rec.doc_id, rec.source, labels_json, meta_json, str(size), str(overlap), model)[:24]
    src = rag_mod._sha(rec.source)[:24]
    return rag_mod._Prepared(key=ri.doc_key(corpus_id, src, rev), src=src, record=rec)


class RAGCompat(LegacyKeywords):
    """``retrieve``, ``reembed`` and AetherGraph's keywords on ``answer``/``upsert_docs``."""

    _LEGACY: dict[str, Adapter] = {
        "upsert_docs": _upsert_legacy,
        "answer": _answer_legacy,
        "_embed": _embed_checked,
        "_embedder": _embedder_rag,  # type: ignore[dict-item]
    }

    async def retrieve(self, corpus_id: str, query: str, k: int = 6, rerank: bool = True) -> list[Any]:
        """The top-``k`` chunks for ``query``; ``rerank=True`` re-orders a wider hybrid candidate set.

        The rerank scores each candidate by how many distinct query words it contains (then by its
        hybrid rank), so a chunk that covers the whole question beats one that repeats one word.

        >>> hits = await context.rag.retrieve(corpus_id, "refund window", k=3)

        Example: ``chunks = await context.rag.retrieve("notes", "retention", k=4)``
        """
        if not rerank:
            return await self.search(corpus_id, query, k=k)  # type: ignore[attr-defined,no-any-return]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise RAGError(f"k must be a positive int, got {k!r}")
        wide = await self.search(corpus_id, query, k=max(k * 4, 20))  # type: ignore[attr-defined]
        terms = {w.lower() for w in _WORD.findall(query)}
        if not terms:
            return wide[:k]  # type: ignore[no-any-return]

        def coverage(hit: Any) -> int:
            return len(terms & {w.lower() for w in _WORD.findall(hit.text)})

        order = sorted(range(len(wide)), key=lambda i: (-coverage(wide[i]), i))
        out = []
        for rank, i in enumerate(order[:k]):
            hit = wide[i]
            hit.meta["reranked"] = True
            hit.meta["rerank_position"] = rank + 1
            out.append(hit)
        return out

    async def reembed(self, corpus_id: str, doc_ids: list[str] | None = None, batch: int = 64) -> dict[str, Any]:
        """Compute embeddings again for a corpus's documents (all, or ``doc_ids``) with the current embed model.

        Use it after changing ``embed_model``; returns ``{"reembedded": chunks, "docs": n, "model": name}``.

        >>> await context.rag.reembed(corpus_id)

        Example: ``await context.rag.reembed("notes")  # after changing the embedding model``
        """
        from aether_prefect.services import rag as rag_mod
        from aether_prefect.services.rag import _index as ri

        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise RAGError(f"batch must be a positive int, got {batch!r}")
        llm = self._embedder()  # type: ignore[attr-defined]
        if llm is None:
            raise ServiceNotConfigured(
                "RAG re-embedding (embedding model)", block_type="AetherLLMProfile",
                how="set embed_model on the default LLM profile, or set_rag_llm_client(..., embed_model=...)",
            )
        model = getattr(getattr(llm, "profile", None), "embed_model", None) or type(llm).__name__
        idx = await self._index(corpus_id, force_check=True)  # type: ignore[attr-defined]
        built = await anyio.to_thread.run_sync(idx.built)
        want = None if doc_ids is None else set(doc_ids)
        recs = [r for r in built.recs if want is None or r.doc_id in want]
        if want is not None and len({r.doc_id for r in recs}) != len(want):
            missing = sorted(want - {r.doc_id for r in recs})
            raise RAGError(f"corpus {corpus_id!r} has no documents {missing}; see list_docs()")
        new = []
        chunks = 0
        for rec in recs:
            vecs: list[list[float]] = []
            for i in range(0, len(rec.chunks), batch):
                vecs.extend(await self._embed(llm, rec.chunks[i : i + batch]))  # type: ignore[attr-defined]
            chunks += len(vecs)
            updated = rec.model_copy(update={"embed_model": model, "dim": len(vecs[0]) if vecs else None,
                                              "vectors_b64": ri.DocRecord.encode_vectors(vecs) if vecs else None,
                                              "updated_at": time.time()})
            new.append(_revision(corpus_id, updated, idx.settings.chunk_size, idx.settings.chunk_overlap, model))
        store = self._store()  # type: ignore[attr-defined]
        await anyio.to_thread.run_sync(lambda: rag_mod._write(store, idx, new))
        return {"reembedded": chunks, "docs": len(recs), "model": model}
