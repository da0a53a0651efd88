"""RAG bench: search latency at 10k and 100k chunks (lexical, dense 384-d, hybrid), upsert throughput, and a fresh
load after a long history (checkpoint vs replay). Run: ``bench/bench_rag.py [--history 1000] [10000 100000]``.

Everything goes through the real service (``context.rag``) on a local object store. The
embedder is a local in-process hashed bag-of-words model (384-d) injected as ``llm=``, so
the figures measure our indexing and search, not an embedding API. ``raw`` for search is
the same query scored by the bare index functions (no service, thread hop or freshness
check), so the ratio is the service's overhead.
"""

from __future__ import annotations

import _common as common  # noqa: I001 - must come first: it sets the environment

import asyncio
import os
import sys
import tempfile
import time
import zlib
from typing import Any

import numpy as np

DIM = 384
WORDS_PER_CHUNK = 70
CHUNKS_PER_DOC = 100
VOCAB = 30_000
N_QUERIES = 30


def _bucket(word: str) -> int:
    """The vector slot of a word: synthetic words ('w123') by number, any other word (a new note's) by crc32."""
    return (int(word[1:]) if word[1:].isdigit() else zlib.crc32(word.encode())) % DIM


class LocalEmbedder:
    """A deterministic hashed bag-of-words embedder (what a local sentence model would be in its place)."""

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return self.embed_np(texts).tolist()

    @staticmethod
    def embed_np(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for i, t in enumerate(texts):
            idx = np.fromiter((_bucket(w) for w in t.split()), dtype=np.int64)
            np.add.at(out[i], idx, 1.0)
        n = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, n, out=out, where=n > 0)
        return out


def synthetic_docs(n_chunks: int, seed: int) -> list[dict[str, Any]]:
    """Docs of CHUNKS_PER_DOC chunk-sized paragraphs of Zipf-distributed words ``w<id>``."""
    rng = np.random.default_rng(seed)
    ids = np.minimum(rng.zipf(1.3, size=n_chunks * WORDS_PER_CHUNK), VOCAB) - 1
    words = np.char.add("w", np.char.zfill(ids.astype(str), 5)).reshape(n_chunks, WORDS_PER_CHUNK)  # fixed width
    paras = [" ".join(row) for row in words]
    docs = []
    for d in range(0, n_chunks, CHUNKS_PER_DOC):
        docs.append({"text": "\n\n".join(paras[d : d + CHUNKS_PER_DOC]), "title": f"doc-{seed}-{d}",
                     "labels": {"shard": d % 7}})
    return docs


def queries(seed: int) -> list[str]:
    """Four-word queries drawn from the corpus' own Zipf law, the 10 commonest words dropped as stopwords."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(N_QUERIES):
        ids = [int(x) - 1 for x in rng.zipf(1.3, size=200) if 10 < x <= VOCAB][:4]
        out.append(" ".join(f"w{i:05d}" for i in ids))
    return out


def chunk_size_for(docs: list[dict[str, Any]]) -> int:
    """A chunk size that keeps exactly one (fixed-width) paragraph per chunk."""
    paras = [len(p) for d in docs[:20] for p in d["text"].split("\n\n")]
    return int(max(paras) * 1.02) + 1


async def amedian_over(fn: Any, qs: list[str]) -> float:
    for q in qs[:3]:
        await fn(q)
    times = []
    for q in qs:
        t = time.perf_counter()
        await fn(q)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def median_over(fn: Any, qs: list[str]) -> float:
    times = []
    for q in qs:
        t = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


async def run_size(n_chunks: int, rows: list[dict[str, Any]], root: str) -> None:
    from aether_prefect import open_session
    from aether_prefect.blocks import AetherConfig, AetherObjectStore
    from aether_prefect.services.rag import _index as ri
    from aether_prefect.services.rag import _load_index

    cfg = AetherConfig(store=AetherObjectStore(backend="local", root=root))
    # chunk_size fits one paragraph, so each paragraph is one chunk
    docs = synthetic_docs(n_chunks, seed=n_chunks)
    label = f"{n_chunks // 1000}k"
    size = chunk_size_for(docs)
    async with open_session(config=cfg, llm=LocalEmbedder()) as ctx:
        cid = await ctx.rag.bind_corpus(f"bench-{label}", chunk_size=size, chunk_overlap=0)
        t = time.perf_counter()
        res = await ctx.rag.upsert_docs(cid, docs)
        up_s = time.perf_counter() - t
        rows.append(common.row(f"upsert {label} chunks, local embedder (chunks/s)", res.chunks / up_s, None,
                               "ch/s", higher_is_better=True))
        t = time.perf_counter()
        st = await ctx.rag.stats(cid)  # first search builds the arrays
        build_s = time.perf_counter() - t
        assert st.vectors == st.chunks, st
        print(f"{label}: {st.chunks} chunks, {st.vocabulary} terms, chunk_size {size}", flush=True)
        rows.append(common.row(f"index build {label} ({st.chunks} chunks)", build_s * 1000, None, "ms"))
        if n_chunks <= 10_000:
            lcid = await ctx.rag.bind_corpus(f"bench-lex-{label}", chunk_size=size, chunk_overlap=0)
        else:
            lcid = None
    if lcid:
        async with open_session(config=cfg) as ctx:
            t = time.perf_counter()
            res = await ctx.rag.upsert_docs(lcid, docs)
            rows.append(common.row(f"upsert {label} chunks, lexical only (chunks/s)", res.chunks / (time.perf_counter() - t),
                                   None, "ch/s", higher_is_better=True))

    qs = queries(n_chunks + 1)
    async with open_session(config=cfg, llm=LocalEmbedder()) as ctx:
        store = ctx.store()
        idx = _load_index(store, cid)
        b = idx.built()
        for mode in ("lexical", "dense", "hybrid"):
            ours = await amedian_over(lambda q, m=mode: ctx.rag.search(cid, q, k=8, mode=m), qs)
            if mode == "lexical":
                raw = median_over(lambda q: ri.search_lexical(b, q, 8, None), qs)
            elif mode == "dense":
                raw = median_over(lambda q: ri.search_dense(b, LocalEmbedder.embed_np([q])[0].tolist(), 8, None), qs)
            else:
                raw = median_over(lambda q: ri.rrf([ri.search_lexical(b, q, 50, None), ri.search_dense(
                    b, LocalEmbedder.embed_np([q])[0].tolist(), 50, None)], 8), qs)
            rows.append(common.row(f"search {mode} {label} chunks, median (ms)", ours * 1000, None, "ms",
                                   target=50.0 if n_chunks >= 100_000 else None))
            rows.append(common.row(f"  service vs bare index, {mode} {label}", ours * 1000, raw * 1000, "ms",
                                   target=None))
        filt = await amedian_over(lambda q: ctx.rag.search(cid, q, k=8, mode="lexical", filters={"shard": [1, 2]}), qs)
        rows.append(common.row(f"search lexical+filter {label} chunks, median (ms)", filt * 1000, None, "ms",
                               target=50.0 if n_chunks >= 100_000 else None))
        # #21: one new document into the corpus, then a search (costs should follow the document, not the corpus)
        times = []
        for i in range(3):
            t = time.perf_counter()
            await ctx.rag.upsert_docs(cid, [{"text": f"Brand new note {i}: okapi{i} zebra stripes.", "title": f"new-{i}"}])
            hits = await ctx.rag.search(cid, f"okapi{i} stripes", k=3, mode="hybrid")
            times.append(time.perf_counter() - t)
            assert hits and hits[0].meta["title"] == f"new-{i}"
        rows.append(common.row(f"upsert 1 doc into {label} chunks, then search (median of 3)", float(np.median(times)) * 1000,
                               None, "ms", target=100.0 if n_chunks >= 100_000 else None))


async def run_history(n_commits: int, rows: list[dict[str, Any]], root: str) -> None:
    """#21: a fresh process's first load of a 20-document corpus that ``n_commits`` upserts made, with checkpoints
    (ours) vs replaying every commit (raw: what a reader did before checkpoints, and still does without one)."""
    from aether_prefect import open_session
    from aether_prefect.blocks import AetherConfig, AetherObjectStore
    from aether_prefect.services.rag import _index as ri

    cfg = AetherConfig(store=AetherObjectStore(backend="local", root=root))
    async with open_session(config=cfg) as ctx:
        cid = await ctx.rag.bind_corpus("bench-history")
        t = time.perf_counter()
        for i in range(n_commits):
            await ctx.rag.upsert_docs(cid, [{"text": f"note {i}: okapi{i % 20} revision {i}", "title": f"doc-{i % 20}"}])
        print(f"history: {n_commits} upserts in {time.perf_counter() - t:.1f}s", flush=True)
        store = ctx.store()
    settings = ri.read_settings(store, cid)

    def fresh_load(checkpoints: bool) -> float:
        idx = ri.CorpusIndex(cid, settings)  # type: ignore[arg-type]
        orig = ri.read_checkpoint
        if not checkpoints:
            ri.read_checkpoint = lambda *a, **k: None  # type: ignore[assignment]
        try:
            t = time.perf_counter()
            idx.sync_from_store(store)
            took = time.perf_counter() - t
        finally:
            ri.read_checkpoint = orig  # type: ignore[assignment]
        assert len(idx.active()) == 20, len(idx.active())
        return took

    ours, raw = [], []
    for _ in range(5):  # interleaved
        ours.append(fresh_load(True))
        raw.append(fresh_load(False))
    rows.append(common.row(f"fresh load, 20 docs after {n_commits} commits: checkpoint vs replay (ms)",
                           float(np.median(ours)) * 1000, float(np.median(raw)) * 1000, "ms"))


def main() -> None:
    args = sys.argv[1:]
    history = 1000
    if "--history" in args:
        i = args.index("--history")
        history = int(args[i + 1])
        del args[i:i + 2]
    sizes = [int(s) for s in (args or ["10000", "100000"])]
    os.environ.setdefault("AETHER_RAG_REFRESH_S", "1.0")
    rows: list[dict[str, Any]] = []
    root = tempfile.mkdtemp(prefix="aether-bench-rag-")
    if history:
        asyncio.run(run_history(history, rows, root))
    for n in sizes:
        asyncio.run(run_size(n, rows, root))
    common.report("rag", rows)


if __name__ == "__main__":
    main()
