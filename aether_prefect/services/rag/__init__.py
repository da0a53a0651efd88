"""RAG service (``context.rag`` / ``context.rag()``): corpora in the object store, hybrid search, cited answers.

Search is BM25 always, dense cosine when the default LLM profile has an ``embed_model``
(vectors from ``context.llm().embed``), and ``hybrid`` = reciprocal rank fusion of both.
Corpus data layout and caching live in :mod:`aether_prefect.services.rag._index`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from aether_prefect.blocks import AetherLLMProfile
from aether_prefect.errors import RAGError, RAGValidationError, ServiceNotConfigured
from aether_prefect.services.rag import _index as ri
from aether_prefect.services.base import BoundService
from aether_prefect.services.rag._compat import RAGCompat
from aether_prefect.services.rag._chunk import chunk_text, read_text_file, title_of
from aether_prefect.services.stores.base import ObjectNotFound

_log = logging.getLogger("aether_prefect.rag")

if TYPE_CHECKING:
    from aether_prefect.context import NodeContext
    from aether_prefect.services.stores.base import ObjectStore

Mode = Literal["hybrid", "dense", "lexical"]
_MODES = ("hybrid", "dense", "lexical")
_CORPUS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_EMBED_BATCH = 128
_MAX_K = 1000


# ---------------------------------------------------------------------------
# Public data models (dict-style access kept for AetherGraph code)
# ---------------------------------------------------------------------------


class _DictAccess(BaseModel):
    """Pydantic model that also answers ``obj["field"]`` and ``obj.get("field")`` like a dict."""

    def __getitem__(self, name: str) -> Any:
        if name not in type(self).model_fields:
            raise KeyError(name)
        return getattr(self, name)

    def get(self, name: str, default: Any = None) -> Any:
        """Field value, or ``default`` for an unknown name."""
        return getattr(self, name) if name in type(self).model_fields else default

    def keys(self) -> list[str]:
        return list(type(self).model_fields)


class RagHit(_DictAccess):
    """One search result: a chunk of a document, its score, and metadata (title, labels, mode...)."""

    chunk_id: str
    doc_id: str
    corpus_id: str
    score: float
    text: str
    meta: dict[str, Any] = Field(default_factory=dict)


class UpsertResult(_DictAccess):
    """What ``upsert_docs`` changed: documents added, replaced (changed content) or unchanged."""

    corpus_id: str
    added: int
    replaced: int
    unchanged: int
    chunks: int
    doc_ids: list[str]
    embedded: bool


class DocInfo(_DictAccess):
    """A document in a corpus, as ``list_docs`` shows it."""

    doc_id: str
    title: str
    source: str
    labels: dict[str, Any]
    meta: dict[str, Any]
    chunks: int
    embedded: bool
    updated_at: float


class CorpusStats(_DictAccess):
    """Counts and settings of one corpus."""

    corpus_id: str
    docs: int
    chunks: int
    vectors: int
    dim: int | None
    vocabulary: int
    chunk_size: int
    chunk_overlap: int


class DocInput(BaseModel):
    """A document to upsert: ``{"text", "title", "labels"}`` or ``{"path", "labels"}``."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    title: str | None = None
    path: str | None = None
    labels: dict[str, Any] = Field(default_factory=dict)
    source: str | None = Field(default=None, description="Stable identity; a new text for the same source replaces it.")
    meta: dict[str, Any] = Field(default_factory=dict)


class _Prepared(BaseModel):
    """A validated, chunked document ready to be written."""

    key: str
    src: str
    record: ri.DocRecord


# ---------------------------------------------------------------------------
# Process-wide corpus cache
# ---------------------------------------------------------------------------

_indexes: dict[tuple[str, str], ri.CorpusIndex] = {}
_indexes_lock = threading.Lock()


def refresh_interval_s() -> float:
    """How often a cached corpus checks whether another process changed it (env AETHER_RAG_REFRESH_S)."""
    try:
        return max(0.0, float(os.environ.get("AETHER_RAG_REFRESH_S", "1.0")))
    except ValueError:
        return 1.0


def clear_cache() -> None:
    """Forget every cached corpus index of this process (they reload from the store on next use)."""
    with _indexes_lock:
        _indexes.clear()


def _cache_key(store: "ObjectStore", corpus_id: str) -> tuple[str, str]:
    return (store.uri("rag"), corpus_id)


def _load_index(store: "ObjectStore", corpus_id: str, *, force_check: bool = False) -> ri.CorpusIndex:
    """The cached index of ``corpus_id`` (loaded on first use, refreshed when the store changed)."""
    ck = _cache_key(store, corpus_id)
    with _indexes_lock:
        idx = _indexes.get(ck)
    if idx is None:
        settings = ri.read_settings(store, corpus_id)
        if settings is None:
            known = ri.list_corpus_ids(store)
            raise RAGError(
                f"unknown corpus {corpus_id!r}: bind it first with context.rag.bind_corpus({corpus_id!r}) "
                f"or upsert documents into it (known corpora: {', '.join(known[:20]) or 'none'})"
            )
        fresh = ri.CorpusIndex(corpus_id=corpus_id, settings=settings)
        with _indexes_lock:
            idx = _indexes.setdefault(ck, fresh)
        if idx is fresh:
            idx.sync_from_store(store)
            return idx
    idx.refresh_if_changed(store, 0.0 if force_check else refresh_interval_s())
    return idx


# ---------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------


class RAGService(RAGCompat, BoundService):
    """Corpora of chunked documents with BM25 + dense hybrid search and LLM answers with citations.

    ``context.rag.search(...)`` and ``context.rag().search(...)`` both work; ``context.rag.sync``
    is the blocking twin for sync tasks.
    """

    def __call__(self) -> "RAGService":
        """``context.rag()`` returns the service itself (AetherGraph writes both forms)."""
        return self

    def __repr__(self) -> str:
        return f"RAGService(run_id={self.ctx.run_id!r})"

    # -- helpers ----------------------------------------------------------------

    def _store(self) -> "ObjectStore":
        return self.ctx.store()

    def _embedder(self) -> Any | None:
        """The LLM client used for embeddings, or None when no embed_model is configured."""
        ov = self.ctx.overrides.llm
        if ov is not None and not isinstance(ov, (AetherLLMProfile, dict)):
            return ov if hasattr(ov, "embed") else None
        prof = self.ctx.llm_profile()
        if prof is None or not prof.embed_model:
            return None
        return self.ctx.llm()

    async def _embed(self, llm: Any, texts: list[str]) -> list[list[float]]:
        out: list[list[float]] = []
        for i in range(0, len(texts), _EMBED_BATCH):
            batch = texts[i : i + _EMBED_BATCH]
            vecs = await llm.embed(batch)
            if len(vecs) != len(batch):
                raise RAGError(f"the embedding endpoint returned {len(vecs)} vectors for {len(batch)} texts; check the embed_model")
            out.extend(vecs)
        return out

    @staticmethod
    def _check_corpus_id(corpus_id: Any) -> str:
        if not isinstance(corpus_id, str) or not _CORPUS_RE.match(corpus_id):
            raise RAGError(
                f"corpus_id {corpus_id!r} is not valid: use 1-128 characters of letters, digits, '.', '_' and '-', "
                "starting with a letter or digit"
            )
        return corpus_id

    async def _index(self, corpus_id: str, *, force_check: bool = False) -> ri.CorpusIndex:
        self._check_corpus_id(corpus_id)
        store = self._store()
        return await anyio.to_thread.run_sync(lambda: _load_index(store, corpus_id, force_check=force_check))

    # -- corpora ------------------------------------------------------------------

    async def bind_corpus(
        self,
        corpus_id: str | None = None,
        key: str | None = None,
        *,
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
    ) -> str:
        """Create the corpus if needed and return its id.

        ``corpus_id`` wins; else ``key`` (any string) maps to a stable id; else the corpus
        of this run (``run-<run_id>``). Chunking settings are fixed when the corpus is created.

        Example: ``cid = await context.rag.bind_corpus("notes")``
        """
        if corpus_id is None:
            if key is not None:
                if not isinstance(key, str) or not key.strip():
                    raise RAGError(f"key must be a non-empty str, got {key!r}")
                slug = re.sub(r"[^A-Za-z0-9._-]+", "-", key).strip("-._")[:80]
                corpus_id = f"{slug or 'k'}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
            else:
                corpus_id = "run-" + re.sub(r"[^A-Za-z0-9._-]+", "-", self.ctx.run_id)[:100]
        self._check_corpus_id(corpus_id)
        defaults = ri.CorpusSettings.model_fields
        size = chunk_size if chunk_size is not None else defaults["chunk_size"].default
        overlap = chunk_overlap if chunk_overlap is not None else defaults["chunk_overlap"].default
        try:
            wanted = ri.CorpusSettings(corpus_id=corpus_id, chunk_size=size, chunk_overlap=overlap, key=key)
        except PydanticValidationError as exc:
            raise RAGError(f"invalid chunking settings for corpus {corpus_id!r}: {_first_error(exc)}") from None
        if wanted.chunk_overlap >= wanted.chunk_size:
            raise RAGError(
                f"chunk_overlap ({wanted.chunk_overlap}) must be smaller than chunk_size ({wanted.chunk_size})"
            )
        store = self._store()
        got = await anyio.to_thread.run_sync(lambda: ri.create_settings(store, wanted))
        for name, value in (("chunk_size", chunk_size), ("chunk_overlap", chunk_overlap)):
            if value is not None and getattr(got, name) != value:
                raise RAGError(
                    f"corpus {corpus_id!r} already exists with {name}={getattr(got, name)}; "
                    f"omit {name} or bind a new corpus id to use {name}={value}"
                )
        return corpus_id

    async def list_corpora(self) -> list[dict[str, Any]]:
        """Every corpus in the object store: ``[{"corpus_id", "key", "chunk_size", "chunk_overlap", "created_at"}]``.

        Example: ``ids = [c["corpus_id"] for c in await context.rag.list_corpora()]``
        """
        store = self._store()

        def _read() -> list[dict[str, Any]]:
            out = []
            for cid in ri.list_corpus_ids(store):
                s = ri.read_settings(store, cid)
                if s is not None:
                    out.append(s.model_dump())
            return out

        return await anyio.to_thread.run_sync(_read)

    async def stats(self, corpus_id: str) -> CorpusStats:
        """Document, chunk and vector counts of a corpus.

        Example: ``print((await context.rag.stats("notes")).chunks)``
        """
        idx = await self._index(corpus_id)
        b = await anyio.to_thread.run_sync(idx.built)
        return CorpusStats(
            corpus_id=corpus_id,
            docs=len(b.recs),
            chunks=b.n_chunks,
            vectors=int(b.has_vec.sum()) if b.has_vec is not None else 0,
            dim=int(b.vectors.shape[1]) if b.vectors is not None else None,
            vocabulary=int(b.indptr.shape[0] - 1),
            chunk_size=idx.settings.chunk_size,
            chunk_overlap=idx.settings.chunk_overlap,
        )

    async def list_docs(self, corpus_id: str, *, limit: int | None = None) -> list[DocInfo]:
        """Documents of a corpus (newest revision of each), sorted by title.

        Example: ``docs = await context.rag.list_docs("notes", limit=10)``
        """
        idx = await self._index(corpus_id)
        b = await anyio.to_thread.run_sync(idx.built)
        docs = [
            DocInfo(
                doc_id=r.doc_id, title=r.title, source=r.source, labels=r.labels, meta=r.meta,
                chunks=len(r.chunks), embedded=bool(r.vectors_b64), updated_at=r.updated_at,
            )
            for r in b.recs
        ]
        docs.sort(key=lambda d: (d.title, d.doc_id))
        return docs[:limit] if limit else docs

    # -- writing --------------------------------------------------------------------

    async def upsert_docs(self, corpus_id: str, docs: list[dict[str, Any]] | dict[str, Any]) -> UpsertResult:
        """Add or update documents; the same document again changes nothing, a changed one replaces its chunks.

        Each doc is ``{"text": str, "title": str, "labels": {...}}`` or ``{"path": "a.md", "labels": {...}}``
        (.txt, .md). ``source`` (optional) is the stable identity; it defaults to the path, else the title.
        Every doc is validated before anything is written. Unknown corpora are created.

        Example: ``await context.rag.upsert_docs("notes", [{"text": "Logs are kept 7 days.", "title": "Retention"}])``
        """
        self._check_corpus_id(corpus_id)
        if isinstance(docs, dict):
            docs = [docs]
        if not isinstance(docs, (list, tuple)):
            raise RAGError(f"docs must be a list of dicts, got {type(docs).__name__}")
        store = self._store()
        settings = await anyio.to_thread.run_sync(lambda: ri.read_settings(store, corpus_id))
        if settings is None:
            await self.bind_corpus(corpus_id)
            settings = await anyio.to_thread.run_sync(lambda: ri.read_settings(store, corpus_id))
            assert settings is not None
        llm = self._embedder()
        embed_model = _embed_model_name(self.ctx, llm)
        prepared = await anyio.to_thread.run_sync(lambda: _prepare_all(corpus_id, list(docs), settings, embed_model))
        idx = await self._index(corpus_id, force_check=True)
        new = [p for p in prepared if p.key not in idx.records]
        if llm is not None and new:
            texts = [t for p in new for t in p.record.chunks]
            vecs = await self._embed(llm, texts)
            pos = 0
            for p in new:
                n = len(p.record.chunks)
                chunk_vecs = vecs[pos : pos + n]
                pos += n
                if n:
                    p.record.dim = len(chunk_vecs[0])
                    p.record.vectors_b64 = ri.DocRecord.encode_vectors(chunk_vecs)
        replaced = await anyio.to_thread.run_sync(lambda: _write(store, idx, new))
        return UpsertResult(
            corpus_id=corpus_id,
            added=len(new) - replaced,
            replaced=replaced,
            unchanged=len(prepared) - len(new),
            chunks=sum(len(p.record.chunks) for p in prepared),
            doc_ids=[p.record.doc_id for p in prepared],
            embedded=llm is not None,
        )

    async def delete_docs(self, corpus_id: str, doc_ids: list[str] | str) -> dict[str, Any]:
        """Delete documents by ``doc_id``: ``{"deleted": n, "missing": [ids not found]}``.

        Example: ``await context.rag.delete_docs("notes", ["doc-1"])``
        """
        ids = [doc_ids] if isinstance(doc_ids, str) else list(doc_ids)
        if not all(isinstance(d, str) and d for d in ids):
            raise RAGError("doc_ids must be a doc_id str or a list of them (see list_docs or upsert_docs' doc_ids)")
        idx = await self._index(corpus_id, force_check=True)
        store = self._store()

        def _delete() -> dict[str, Any]:
            with idx.lock:
                want = set(ids)
                keys = [k for k, r in idx.records.items() if r.doc_id in want]
                found = {idx.records[k].doc_id for k in keys}
                if keys:
                    baseline = set() if idx.commits else set(idx.records)
                    ri.write_commit(store, corpus_id, baseline, keys)  # the commit point
                    for k in keys:
                        store.delete(k)
                    ri.bump_version(store, corpus_id)
                    idx.sync_from_store(store)
            return {"deleted": len(found), "missing": [d for d in ids if d not in found]}

        return await anyio.to_thread.run_sync(_delete)

    # -- reading ----------------------------------------------------------------------

    async def search(
        self,
        corpus_id: str,
        query: str,
        k: int = 8,
        filters: dict[str, Any] | None = None,
        mode: Mode = "hybrid",
    ) -> list[RagHit]:
        """Top-``k`` chunks for ``query``; ``filters`` match labels exactly (a list value = any of).

        ``hybrid`` fuses BM25 and dense ranks (falls back to lexical, noted in ``meta["fallback"]``,
        when no embed_model is configured); ``dense`` needs an embed_model.

        Example: ``hits = await context.rag.search("notes", "retention policy", k=5)``
        """
        if not isinstance(query, str) or not query.strip():
            raise RAGError(f"query must be a non-empty str, got {query!r}")
        if mode not in _MODES:
            raise RAGError(f"mode {mode!r} is not one of {', '.join(_MODES)}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= _MAX_K:
            raise RAGError(f"k must be an int between 1 and {_MAX_K}, got {k!r}")
        if filters is not None and not isinstance(filters, dict):
            raise RAGError(f"filters must be a dict of label -> value (or list of values), got {type(filters).__name__}")
        idx = await self._index(corpus_id)
        llm = self._embedder() if mode != "lexical" else None
        if mode == "dense" and llm is None:
            raise ServiceNotConfigured(
                "dense RAG search (embedding model)",
                block_type="AetherLLMProfile",
                how="set embed_model on the default LLM profile (AetherConfig(llm={'default': AetherLLMProfile(..., "
                "embed_model='text-embedding-3-small')})), or search with mode='lexical'",
            )
        qvec = (await self._embed(llm, [query]))[0] if llm is not None else None
        embedded_now = 0
        if llm is not None:
            embedded_now = await self._embed_missing(corpus_id, idx, llm)

        def _run() -> list[RagHit]:
            segs = idx.segments()  # the base snapshot and, after recent changes, a small delta (#21)
            masks = []
            for b, alive in segs:
                m = ri.label_mask(b, filters)
                masks.append(alive if m is None else (m if alive is None else (m & alive)))

            def each(fn: Any) -> list[tuple[Any, float]]:
                """Run ``fn(b, mask)`` per snapshot; ids become (snapshot, chunk)."""
                return [((si, i), sc) for si, (b, _) in enumerate(segs) for i, sc in fn(b, masks[si])]

            has_vectors = any(b.vectors is not None for b, _ in segs)
            fallback: str | None = None
            if mode == "lexical":
                ranked = ri.merge_top([each(lambda b, m: ri.search_lexical(b, query, k, m))], k)
            elif mode == "dense":
                if not has_vectors and any(b.n_chunks for b, _ in segs):
                    raise RAGError(
                        f"corpus {corpus_id!r} has no embeddings (its documents were upserted without an embed_model); "
                        "upsert them again now that one is configured, or search with mode='lexical'"
                    )
                ranked = ri.merge_top([each(lambda b, m: ri.search_dense(b, qvec or [], k, m))], k)
            else:
                wide = max(k * 4, 50)
                lex = ri.merge_top([each(lambda b, m: ri.search_lexical(b, query, wide, m))], wide)
                if qvec is None or not has_vectors:
                    fallback = "lexical: no embedding model configured" if qvec is None else "lexical: corpus has no embeddings"
                    ranked = lex[:k]
                else:
                    dense = ri.merge_top([each(lambda b, m: ri.search_dense(b, qvec, wide, m))], wide)
                    ranked = ri.rrf([lex, dense], k)
            used = mode if fallback is None else "lexical"
            hits = [_hit(segs[si][0], corpus_id, i, sc, used, fallback) for (si, i), sc in ranked]
            if embedded_now:
                for h in hits:
                    h.meta["embedded_on_search"] = embedded_now
            return hits

        return await anyio.to_thread.run_sync(_run)

    async def _embed_missing(self, corpus_id: str, idx: ri.CorpusIndex, llm: Any) -> int:
        """Embed the chunks of documents stored without embeddings (upserted before an embed_model was
        configured) and store them as new revisions; returns the number of chunks embedded (logged)."""
        with idx.lock:
            active = idx.active()
            missing = [(key, idx.records[key]) for key in sorted(active.values()) if not idx.records[key].vectors_b64]
        missing = [(k, r) for k, r in missing if r.chunks]
        if not missing:
            return 0
        store = self._store()
        settings = await anyio.to_thread.run_sync(lambda: ri.read_settings(store, corpus_id))
        embed_model = _embed_model_name(self.ctx, llm)
        vecs = await self._embed(llm, [t for _, r in missing for t in r.chunks])
        new: list[_Prepared] = []
        pos = 0
        for key, rec in missing:
            chunk_vecs = vecs[pos : pos + len(rec.chunks)]
            pos += len(rec.chunks)
            upd = rec.model_copy(update={
                "embed_model": embed_model, "dim": len(chunk_vecs[0]), "updated_at": max(time.time(), rec.updated_at + 1e-6),
                "vectors_b64": ri.DocRecord.encode_vectors(chunk_vecs),
            })
            new.append(_Prepared(key=_revision_key(corpus_id, upd, settings, embed_model), src=key.rsplit("/", 2)[-2], record=upd))
        await anyio.to_thread.run_sync(lambda: _write(store, idx, new))
        _log.info("RAG corpus %r: embedded %d chunks of %d documents stored without embeddings (model %s)",
                  corpus_id, pos, len(missing), embed_model)
        return pos

    async def answer(
        self,
        corpus_id: str,
        question: str,
        style: str = "concise",
        with_citations: bool = True,
        k: int = 6,
        *,
        mode: Mode = "hybrid",
        filters: dict[str, Any] | None = None,
        profile: str = "default",
    ) -> dict[str, Any]:
        """Answer ``question`` from the top-``k`` chunks with ``context.llm(profile).chat``.

        Returns ``{"answer", "citations", "usage", "resolved_citations"}``: ``citations`` are the
        passages the answer cites as ``[n]``; ``resolved_citations`` add document title, source and text.

        Example: ``out = await context.rag.answer("notes", "How long do we keep logs?")``
        """
        if not isinstance(style, str) or not style.strip():
            raise RAGError(f"style must be a non-empty str such as 'concise' or 'detailed', got {style!r}")
        hits = await self.search(corpus_id, question, k=k, filters=filters, mode=mode)
        llm = self.ctx.llm(profile)
        messages = _answer_messages(question, hits, style, with_citations)
        text, usage = await llm.chat(messages)
        cited: list[int] = []
        if with_citations:
            for m in re.finditer(r"\[(\d+(?:\s*,\s*\d+)*)\]", text or ""):
                for part in m.group(1).split(","):
                    n = int(part)
                    if 1 <= n <= len(hits) and n not in cited:
                        cited.append(n)
        citations = [{"n": n, "chunk_id": hits[n - 1].chunk_id, "doc_id": hits[n - 1].doc_id,
                      "score": hits[n - 1].score} for n in cited]
        resolved = [
            {
                "n": n,
                "chunk_id": hits[n - 1].chunk_id,
                "doc_id": hits[n - 1].doc_id,
                "corpus_id": corpus_id,
                "title": hits[n - 1].meta.get("title"),
                "source": hits[n - 1].meta.get("source"),
                "labels": hits[n - 1].meta.get("labels", {}),
                "text": hits[n - 1].text,
            }
            for n in cited
        ]
        return {"answer": text, "citations": citations, "usage": usage, "resolved_citations": resolved}


# ---------------------------------------------------------------------------
# Module helpers
# ---------------------------------------------------------------------------


def _first_error(exc: PydanticValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ())) or "value"
    return f"{loc}: {err.get('msg')}"


def _embed_model_name(ctx: "NodeContext", llm: Any | None) -> str | None:
    if llm is None:
        return None
    prof = ctx.llm_profile()
    return (prof.embed_model if prof is not None else None) or type(llm).__name__


def _sha(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()


def _prepare_all(corpus_id: str, docs: list[Any], settings: ri.CorpusSettings, embed_model: str | None) -> list[_Prepared]:
    """Validate, read and chunk every doc (no writes); the very same doc twice collapses to one.

    Two different docs with one identity (``source``, else path, else title) would replace each other:
    that is a RAGValidationError naming it, raised before anything is written.
    """
    out: dict[str, _Prepared] = {}
    first_of_src: dict[str, tuple[int, _Prepared]] = {}
    for i, raw in enumerate(docs):
        p = _prepare(corpus_id, i, raw, settings, embed_model)
        seen = first_of_src.get(p.src)
        if seen is not None and seen[1].key != p.key:
            j, other = seen
            raise RAGValidationError(
                f"docs #{j} and #{i} have the same identity (title {p.record.title!r}, source {p.record.source!r}) "
                "but different content, so one would silently replace the other; nothing was written. "
                "Give each a distinct 'title' or 'source', or upsert them in separate calls if the later one "
                "is meant to replace the earlier"
            )
        first_of_src.setdefault(p.src, (i, p))
        out.setdefault(p.key, p)
    return list(out.values())


def _prepare(corpus_id: str, i: int, raw: Any, settings: ri.CorpusSettings, embed_model: str | None) -> _Prepared:
    if not isinstance(raw, dict):
        raise RAGError(f"doc #{i} must be a dict like {{'text': ..., 'title': ...}} or {{'path': ...}}, got {type(raw).__name__}")
    try:
        doc = DocInput.model_validate(raw)
    except PydanticValidationError as exc:
        raise RAGError(
            f"doc #{i} is not valid ({_first_error(exc)}); use keys text, title, labels (dict), or path, labels"
        ) from None
    if (doc.text is None) == (doc.path is None):
        raise RAGError(f"doc #{i} must have exactly one of 'text' or 'path' (got {'both' if doc.text is not None else 'neither'})")
    try:
        json.dumps(doc.labels)
        json.dumps(doc.meta)
    except (TypeError, ValueError):
        raise RAGError(f"doc #{i}: labels and meta must be JSON values (str, number, bool, lists of them)") from None
    if doc.path is not None:
        text = read_text_file(doc.path)
        title = doc.title or title_of(text, Path(doc.path).stem)
        source = doc.source or str(doc.path)
    else:
        text = doc.text or ""
        title = doc.title or ""
        source = doc.source or title
    if not text.strip():
        raise RAGError(f"doc #{i} ({title or source or 'untitled'!r}) has no text; skip empty documents")
    doc_id = _sha(title, text)[:24]
    source = source or doc_id
    chunks = chunk_text(text, settings.chunk_size, settings.chunk_overlap)
    src = _sha(source)[:24]
    record = ri.DocRecord(
        doc_id=doc_id, corpus_id=corpus_id, title=title, source=source, labels=doc.labels, meta=doc.meta,
        chunks=chunks, updated_at=time.time(),
    )
    if embed_model:
        record.embed_model = embed_model
    return _Prepared(key=_revision_key(corpus_id, record, settings, embed_model), src=src, record=record)


def _revision_key(corpus_id: str, record: ri.DocRecord, settings: ri.CorpusSettings | None, embed_model: str | None) -> str:
    """Object key of a document revision: its source's folder, named by content, labels, chunking and model."""
    size, overlap = (settings.chunk_size, settings.chunk_overlap) if settings else (0, 0)
    rev = _sha(record.doc_id, record.source, json.dumps(record.labels, sort_keys=True), json.dumps(record.meta, sort_keys=True),
               str(size), str(overlap), embed_model or "")[:24]
    return ri.doc_key(corpus_id, _sha(record.source)[:24], rev)


def _write(store: "ObjectStore", idx: ri.CorpusIndex, new: list[_Prepared]) -> int:
    """Write new revisions, delete the revisions they replace, publish a new version; returns replaced count."""
    if not new:
        return 0
    replaced_srcs: set[str] = set()
    stale: list[str] = []
    for p in new:
        store.put_bytes(p.key, ri.dumps_record(p.record), content_type="application/json")
    for p in new:  # the revisions these replace (read before the commit, deleted after it)
        for old in store.list_keys(f"{ri.docs_prefix(idx.corpus_id)}{p.src}/"):
            if old == p.key:
                continue
            known = idx.records.get(old)
            try:
                rec = known or ri.DocRecord.model_validate_json(store.get_bytes(old))
            except ObjectNotFound:
                continue
            # Only delete older revisions: two processes replacing the same document at once
            # must not delete each other's; readers pick the newest of any leftovers.
            if (rec.updated_at, old) < (p.record.updated_at, p.key):
                stale.append(old)
                if old in idx.records:
                    replaced_srcs.add(p.src)
    with idx.lock:
        # A corpus's first commit also lists what it held before commits existed (nothing is lost).
        baseline = set() if idx.commits else set(idx.records)
        ri.write_commit(store, idx.corpus_id, baseline | {p.key for p in new}, stale)  # the commit point
        for old in stale:
            store.delete(old)
        ri.bump_version(store, idx.corpus_id)
        idx.sync_from_store(store)
    return len(replaced_srcs)


def _hit(b: ri.Built, corpus_id: str, i: int, score: float, mode: str, fallback: str | None) -> RagHit:
    rec = b.recs[int(b.chunk_doc[i])]
    pos = int(b.chunk_pos[i])
    meta: dict[str, Any] = {
        "title": rec.title, "source": rec.source, "labels": rec.labels, "chunk_index": pos,
        "mode": mode, **({"doc_meta": rec.meta} if rec.meta else {}),
    }
    if fallback:
        meta["fallback"] = fallback
    return RagHit(chunk_id=rec.chunk_id(pos), doc_id=rec.doc_id, corpus_id=corpus_id, score=score,
                  text=rec.chunks[pos], meta=meta)


def _answer_messages(question: str, hits: list[RagHit], style: str, with_citations: bool) -> list[dict[str, str]]:
    """The chat prompt: numbered passages, the question, and the answer style."""
    system = (
        "You answer questions using only the numbered context passages provided. "
        f"Answer style: {style}. "
        + ("Cite every passage you use by its number in square brackets, like [1] or [2][3]. " if with_citations else "")
        + "If the passages do not contain the answer, say that you do not know."
    )
    passages = "\n\n".join(f"[{n}] {h.meta.get('title') or h.doc_id}\n{h.text}" for n, h in enumerate(hits, start=1))
    user = f"Context passages:\n\n{passages or '(no passages found)'}\n\nQuestion: {question}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def create(ctx: "NodeContext") -> RAGService:
    """Factory used by ``NodeContext.rag``."""
    return RAGService(ctx)


__all__ = ["CorpusStats", "DocInfo", "RAGService", "RagHit", "UpsertResult", "clear_cache", "create"]
