"""RAG corpus index: BM25 and dense vectors over numpy arrays, persisted as one object per document.

Layout in the object store (no shared object is read-modified-written, so
concurrent upserts from several processes never lose each other's documents):

- ``rag/corpora/<corpus_id>.json``                   corpus settings, created once (put_if_absent)
- ``rag/data/<corpus_id>/docs/<src>/<rev>.json``     one immutable record per document revision
- ``rag/data/<corpus_id>/commits/<time_ns>-<uuid>.json``  one immutable commit per change: the
  revisions it adds and removes
- ``rag/data/<corpus_id>/checkpoints/<upto>--<uuid>.json``  the revisions live after every commit up to
  ``upto``, with the count and a digest of exactly those commit keys, so a fresh reader replays only the
  commits after it
- ``rag/data/<corpus_id>/version``                   a random token rewritten after every change

``src`` hashes the document's source (its path, ``source`` or title), ``rev`` its content,
labels and chunking, so a changed document replaces its earlier revision.

The commit is the commit point (#17.7): a writer puts its revisions, then the commit, then deletes
the revisions it replaced. Every reader, warm or fresh, sees exactly the revisions added and not
removed by the commits it lists (replayed in key order), so a writer that dies at any point leaves
every process with the same view (revisions without a commit are invisible to all). A corpus
written before commits existed is read by listing its revisions until its first commit, which
lists them all. Readers cache the index per process and fetch only new commits and records.

Checkpoints keep a fresh reader's cost with the corpus, not its history: a reader that replayed
``CHECKPOINT_EVERY`` commits past the last checkpoint writes one (immutable, any process may). A fresh reader
lists the commits, takes the newest checkpoint whose count and digest match the listed keys up to its
``upto`` (so a late commit with an earlier key is never skipped) and fetches only the later commits. Commits
are never deleted, so readers of older versions and a damaged or missing checkpoint still read everything.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from aether_prefect.errors import RAGError
from aether_prefect.services.rag._chunk import term_counts, tokenize
from aether_prefect.services.stores.base import ObjectNotFound, ObjectStore

_log = logging.getLogger("aether_prefect.rag")

BM25_K1 = 1.2
BM25_B = 0.75
#: Chunks a delta snapshot may hold before the next search rebuilds the base (or a tenth of the base).
DELTA_MIN = 5000
#: Commits replayed past the last checkpoint before a reader writes a new one (and checkpoints kept).
CHECKPOINT_EVERY = 64
CHECKPOINTS_KEPT = 3


class CorpusSettings(BaseModel):
    """Per-corpus settings, written once when the corpus is bound."""

    corpus_id: str
    chunk_size: int = Field(default=800, ge=50, le=100_000)
    chunk_overlap: int = Field(default=120, ge=0)
    created_at: float = Field(default_factory=time.time)
    key: str | None = None


class DocRecord(BaseModel):
    """One stored document revision: its chunks, labels and (optionally) their embeddings."""

    model_config = ConfigDict(extra="ignore")

    doc_id: str
    corpus_id: str
    title: str
    source: str
    labels: dict[str, Any] = Field(default_factory=dict)
    meta: dict[str, Any] = Field(default_factory=dict)
    chunks: list[str]
    updated_at: float = Field(default_factory=time.time)
    embed_model: str | None = None
    dim: int | None = None
    vectors_b64: str | None = None

    def chunk_id(self, i: int) -> str:
        """Stable id of chunk ``i`` of this document."""
        return f"{self.doc_id}:{i}"

    def vectors(self) -> np.ndarray | None:
        """The (chunks x dim) float32 embedding matrix, or None when stored without embeddings."""
        if not self.vectors_b64 or not self.dim:
            return None
        arr = np.frombuffer(base64.b64decode(self.vectors_b64), dtype="<f4")
        return arr.reshape(len(self.chunks), self.dim)

    @staticmethod
    def encode_vectors(vectors: list[list[float]]) -> str:
        """Pack embeddings as little-endian float32, base64 (4x smaller than JSON floats)."""
        return base64.b64encode(np.asarray(vectors, dtype="<f4").tobytes()).decode("ascii")


# ---------------------------------------------------------------------------
# Persistence (blocking: call through anyio.to_thread from async code)
# ---------------------------------------------------------------------------


def settings_key(corpus_id: str) -> str:
    return f"rag/corpora/{corpus_id}.json"


def docs_prefix(corpus_id: str) -> str:
    return f"rag/data/{corpus_id}/docs/"


def version_key(corpus_id: str) -> str:
    return f"rag/data/{corpus_id}/version"


def doc_key(corpus_id: str, src: str, rev: str) -> str:
    return f"{docs_prefix(corpus_id)}{src}/{rev}.json"


def read_settings(store: ObjectStore, corpus_id: str) -> CorpusSettings | None:
    """The corpus settings, or None if the corpus was never bound."""
    try:
        return CorpusSettings.model_validate_json(store.get_bytes(settings_key(corpus_id)))
    except ObjectNotFound:
        return None


def create_settings(store: ObjectStore, settings: CorpusSettings) -> CorpusSettings:
    """Create the corpus if absent (atomic); returns the settings that won."""
    store.put_if_absent(settings_key(settings.corpus_id), settings.model_dump_json().encode())
    found = read_settings(store, settings.corpus_id)
    assert found is not None
    return found


def list_corpus_ids(store: ObjectStore) -> list[str]:
    """Ids of every bound corpus in the store."""
    out = []
    for key in store.list_keys("rag/corpora/"):
        name = key.rsplit("/", 1)[-1]
        if name.endswith(".json"):
            out.append(name[: -len(".json")])
    return out


def commits_prefix(corpus_id: str) -> str:
    return f"rag/data/{corpus_id}/commits/"


def write_commit(store: ObjectStore, corpus_id: str, add: Iterable[str], remove: Iterable[str]) -> str:
    """Publish a change (the commit point of an upsert or delete); returns the commit's key."""
    key = f"{commits_prefix(corpus_id)}{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.json"
    body = json.dumps({"add": sorted(add), "remove": sorted(remove)}, separators=(",", ":")).encode()
    store.put_bytes(key, body, content_type="application/json")
    return key


def checkpoints_prefix(corpus_id: str) -> str:
    return f"rag/data/{corpus_id}/checkpoints/"


def commits_digest(keys: Iterable[str]) -> str:
    """A digest of exactly this set of commit keys (what a checkpoint covers)."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


def write_checkpoint(store: ObjectStore, corpus_id: str, covered: Iterable[str], live: Iterable[str]) -> str:
    """Record ``live`` as the revisions live after exactly the commits ``covered``; keeps the newest few."""
    keys = sorted(covered)
    upto = keys[-1]
    stem = upto.rsplit("/", 1)[-1][: -len(".json")]
    key = f"{checkpoints_prefix(corpus_id)}{stem}--{uuid.uuid4().hex[:12]}.json"
    body = {"upto": upto, "count": len(keys), "digest": commits_digest(keys), "live": sorted(live)}
    store.put_bytes(key, json.dumps(body, separators=(",", ":")).encode(), content_type="application/json")
    for old in sorted(store.list_keys(checkpoints_prefix(corpus_id)))[:-CHECKPOINTS_KEPT]:
        store.delete(old)  # a reader that listed it and finds it gone falls back to an older one or to replay
    return key


def read_checkpoint(store: ObjectStore, corpus_id: str, listed: list[str]) -> tuple[str, set[str]] | None:
    """(upto, live revisions) of the newest checkpoint that covers exactly the ``listed`` commits up to its
    ``upto`` (sorted keys); None when there is none, or none matches (a late commit, a damaged object)."""
    for ckey in sorted(store.list_keys(checkpoints_prefix(corpus_id)), reverse=True)[:CHECKPOINTS_KEPT + 1]:
        try:
            raw = json.loads(store.get_bytes(ckey))
            upto, count, digest, live = raw["upto"], int(raw["count"]), raw["digest"], raw["live"]
        except (ObjectNotFound, ValueError, KeyError, TypeError):
            continue
        if not isinstance(upto, str) or not isinstance(live, list):
            continue
        covered = [k for k in listed if k <= upto]
        if len(covered) == count and commits_digest(covered) == digest:
            return upto, {k for k in live if isinstance(k, str)}
    return None


def read_version(store: ObjectStore, corpus_id: str) -> str:
    try:
        return store.get_bytes(version_key(corpus_id)).decode()
    except ObjectNotFound:
        return ""


def bump_version(store: ObjectStore, corpus_id: str) -> str:
    token = uuid.uuid4().hex
    store.put_bytes(version_key(corpus_id), token.encode())
    return token


# ---------------------------------------------------------------------------
# In-memory index
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    """An immutable snapshot of the search arrays; searches use it without locks."""

    keys: list[str]  # object key per doc, in doc order
    recs: list[DocRecord]
    doc_rows: np.ndarray  # first chunk row of each doc (int64), length docs + 1
    chunk_doc: np.ndarray  # doc index per chunk (int32)
    chunk_pos: np.ndarray  # chunk number within its doc (int32)
    indptr: np.ndarray  # CSR offsets per term id (int64)
    post_chunk: np.ndarray  # chunk index per posting (int32)
    post_w: np.ndarray  # BM25 weight per posting (float32)
    vocab: dict[str, int]
    vectors: np.ndarray | None  # (chunks x dim) float32, unit rows; zero rows where missing
    has_vec: np.ndarray | None  # bool per chunk
    df: np.ndarray | None = None  # chunks per term id (int64), for the BM25 statistics of a later delta
    avgdl: float = 1.0  # mean tokens per chunk

    @property
    def n_chunks(self) -> int:
        return int(self.chunk_doc.shape[0])


@dataclass(frozen=True)
class _DocTerms:
    """Tokenised form of one record: term ids and counts of all its chunks, concatenated."""

    tids: np.ndarray  # int32
    tfs: np.ndarray  # float32
    lens: np.ndarray  # unique terms per chunk (int64)
    dl: np.ndarray  # tokens per chunk (float32)


@dataclass
class CorpusIndex:
    """The process-wide cached index of one corpus; thread-safe, rebuilt lazily after changes."""

    corpus_id: str
    settings: CorpusSettings
    records: dict[str, DocRecord] = field(default_factory=dict)  # object key -> record
    version: str | None = None
    checked_at: float = 0.0
    _terms: dict[str, _DocTerms] = field(default_factory=dict)
    _vocab: dict[str, int] = field(default_factory=dict)
    _built: Built | None = None
    _stale: Built | None = None  # the previous snapshot, whose vectors are reused by the next build
    _segs: list[tuple[Built, np.ndarray | None]] | None = None  # the base (+ alive mask) and a delta, if any
    commits: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # commit key -> its adds/removes
    base: set[str] | None = None  # the live revisions of the checkpoint loaded, if any ...
    base_upto: str = ""  # ... which covers every known commit key up to this one (kept as empty entries)
    lock: threading.RLock = field(default_factory=threading.RLock)

    # -- record bookkeeping ---------------------------------------------------

    def active(self) -> dict[str, str]:
        """src -> object key of the newest revision of each document."""
        best: dict[str, tuple[float, str]] = {}
        for key, rec in self.records.items():
            src = key.rsplit("/", 2)[-2]
            cur = best.get(src)
            if cur is None or (rec.updated_at, key) > cur:
                best[src] = (rec.updated_at, key)
        return {src: key for src, (_, key) in best.items()}

    def apply(self, added: dict[str, DocRecord], removed: Iterable[str]) -> None:
        """Add new records and drop removed ones; the search arrays rebuild on next use."""
        with self.lock:
            for key in removed:
                self.records.pop(key, None)
                self._terms.pop(key, None)
            for key, rec in added.items():
                self.records[key] = rec
                self._terms[key] = self._doc_terms(rec.chunks)
            self._segs = None  # the base snapshot stays: the next search adds a delta over it (#21)

    def _doc_terms(self, chunks: list[str]) -> _DocTerms:
        vocab = self._vocab
        tids: list[int] = []
        tfs: list[int] = []
        lens = np.zeros(len(chunks), np.int64)
        dl = np.zeros(len(chunks), np.float32)
        for i, text in enumerate(chunks):
            counts = term_counts(text)
            tids.extend(vocab.setdefault(t, len(vocab)) for t in counts)
            tfs.extend(counts.values())
            lens[i] = len(counts)
            dl[i] = sum(counts.values())
        return _DocTerms(np.asarray(tids, np.int32), np.asarray(tfs, np.float32), lens, dl)

    def committed(self) -> set[str]:
        """Revisions added and not removed by the known commits, replayed in key order (from the checkpoint's
        live set, when one was loaded, for the commits it covers)."""
        live: set[str] = set(self.base or ())
        for key in sorted(self.commits):
            if key <= self.base_upto:
                continue
            live |= set(self.commits[key].get("add", ()))
            live -= set(self.commits[key].get("remove", ()))
        return live

    def sync_from_store(self, store: ObjectStore) -> None:
        """Load records committed by any process since the last sync and drop removed ones."""
        with self.lock:
            version = read_version(store, self.corpus_id)
            listed = sorted(k for k in store.list_keys(commits_prefix(self.corpus_id)) if k.endswith(".json"))
            new = [k for k in listed if k not in self.commits]
            if self.base is not None and new and new[0] <= self.base_upto:
                # A commit older than the checkpoint landed late: replay everything, in key order.
                self.commits, self.base, self.base_upto, new = {}, None, "", listed
            if not self.commits and len(listed) > CHECKPOINT_EVERY:
                found = read_checkpoint(store, self.corpus_id, listed)
                if found is not None:
                    self.base_upto, self.base = found
                    self.commits = {k: {} for k in listed if k <= self.base_upto}
                    new = [k for k in listed if k > self.base_upto]
            for ckey in new:
                try:
                    raw = json.loads(store.get_bytes(ckey))
                except ObjectNotFound:
                    continue
                except ValueError:
                    raw = {}
                if not isinstance(raw, dict):  # not a commit (commits are written whole): nothing to replay
                    raw = {}
                self.commits[ckey] = {"add": list(raw.get("add", [])), "remove": list(raw.get("remove", []))}
            if sum(1 for k in self.commits if k > self.base_upto) >= CHECKPOINT_EVERY:
                live = self.committed()
                try:
                    write_checkpoint(store, self.corpus_id, self.commits, live)
                except Exception as exc:  # noqa: BLE001 - a reader that cannot write still reads everything
                    _log.debug("rag: no checkpoint written for %s: %s", self.corpus_id, exc)
                else:
                    self.base, self.base_upto = live, max(self.commits)
            if self.commits:
                keys = self.committed()
            else:  # a corpus written before commits existed: its listed revisions are its content
                keys = {k for k in store.list_keys(docs_prefix(self.corpus_id)) if k.endswith(".json")}
            added: dict[str, DocRecord] = {}
            for key in sorted(keys - set(self.records)):
                try:
                    added[key] = DocRecord.model_validate_json(store.get_bytes(key))
                except ObjectNotFound:
                    continue  # deleted between list and get
            removed = set(self.records) - keys
            if added or removed:
                self.apply(added, removed)
            self.version = version
            self.checked_at = time.monotonic()

    def refresh_if_changed(self, store: ObjectStore, interval_s: float) -> None:
        """Reload when another process changed the corpus (checked at most every ``interval_s``).

        The check lists the commits (not only the version token, which a writer that died after its
        commit never rewrote)."""
        if self.version is not None and time.monotonic() - self.checked_at < interval_s:
            return
        with self.lock:
            commits = {k for k in store.list_keys(commits_prefix(self.corpus_id)) if k.endswith(".json")}
            if read_version(store, self.corpus_id) != self.version or commits - set(self.commits):
                self.sync_from_store(store)
            else:
                self.checked_at = time.monotonic()

    # -- search arrays ----------------------------------------------------------

    def built(self) -> Built:
        """One search snapshot of every current record (a full build if a delta is pending)."""
        segs = self.segments()
        if len(segs) == 1 and segs[0][1] is None:
            return segs[0][0]
        with self.lock:
            self._full_build()
            return self._built  # type: ignore[return-value]

    def segments(self) -> list[tuple[Built, np.ndarray | None]]:
        """What a search scores: the base snapshot (with a mask of its chunks still current, or None) and,
        when documents changed since it was built, a small delta snapshot of just those documents.

        Costs follow the change, not the corpus (#21): the base is rebuilt only once the delta holds more
        than ``max(DELTA_MIN, base / 10)`` chunks. The delta's BM25 weights use the base's statistics plus
        its own; the base keeps the statistics of when it was built (close while the delta is small).
        """
        segs = self._segs
        if segs is not None:
            return segs
        with self.lock:
            if self._segs is not None:
                return self._segs
            base = self._built
            if base is None:
                self._full_build()
                return self._segs  # type: ignore[return-value]
            active = set(self.active().values())
            base_keys = set(base.keys)
            delta_keys = sorted(active - base_keys)
            dead = base_keys - active
            delta_chunks = sum(len(self.records[k].chunks) for k in delta_keys)
            if delta_chunks > max(DELTA_MIN, base.n_chunks // 10) or (base.n_chunks and len(dead) * 2 > len(base.keys)):
                self._full_build()
                return self._segs  # type: ignore[return-value]
            alive = None
            if dead:
                doc_alive = np.fromiter((k not in dead for k in base.keys), dtype=bool, count=len(base.keys))
                alive = doc_alive[base.chunk_doc]
            new_segs: list[tuple[Built, np.ndarray | None]] = [(base, alive)]
            if delta_keys:
                new_segs.append((self._build(delta_keys, stats_from=base), None))
            self._segs = new_segs
            return new_segs

    def _full_build(self) -> None:
        self._stale = self._built
        self._built = self._build(sorted(self.active().values()))
        self._stale = None
        self._segs = [(self._built, None)]

    def _build(self, keys: list[str], *, stats_from: Built | None = None) -> Built:
        recs = [self.records[k] for k in keys]
        terms_of = [self._terms[k] for k in keys]
        sizes = np.fromiter((len(r.chunks) for r in recs), dtype=np.int64, count=len(recs))
        doc_rows = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        n = int(doc_rows[-1])
        chunk_doc = np.repeat(np.arange(len(recs), dtype=np.int32), sizes)
        chunk_pos = (np.arange(n, dtype=np.int64) - doc_rows[chunk_doc]).astype(np.int32)
        vsize = len(self._vocab)
        lens = np.concatenate([t.lens for t in terms_of]) if recs else np.zeros(0, np.int64)
        if n and lens.sum():
            terms = np.concatenate([t.tids for t in terms_of])
            tf = np.concatenate([t.tfs for t in terms_of])
            dl = np.concatenate([t.dl for t in terms_of])
            chunk_of = np.repeat(np.arange(n, dtype=np.int32), lens)
            order = np.argsort(terms, kind="stable")
            terms, tf, chunk_of = terms[order], tf[order], chunk_of[order]
            df = np.bincount(terms, minlength=vsize)
            indptr = np.concatenate([[0], np.cumsum(df)]).astype(np.int64)
            if stats_from is not None and stats_from.df is not None:  # a delta: the corpus's statistics
                total_df = df.copy()
                total_df[: stats_from.df.shape[0]] += stats_from.df
                total_n = n + stats_from.n_chunks
                idf = np.log1p((total_n - total_df + 0.5) / (total_df + 0.5)).astype(np.float32)
                avgdl = stats_from.avgdl
            else:
                idf = np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)
                avgdl = float(dl.mean()) or 1.0
            norm = BM25_K1 * (1.0 - BM25_B + BM25_B * dl[chunk_of] / avgdl)
            w = (idf[terms] * tf * (BM25_K1 + 1.0) / (tf + norm)).astype(np.float32)
        else:
            indptr = np.zeros(vsize + 1, np.int64)
            chunk_of = np.zeros(0, np.int32)
            w = np.zeros(0, np.float32)
            df = np.zeros(vsize, np.int64)
            avgdl = stats_from.avgdl if stats_from is not None else 1.0
        vectors, has_vec = _build_vectors(keys, recs, doc_rows, self._stale if stats_from is None else None)
        return Built(keys, recs, doc_rows, chunk_doc, chunk_pos, indptr, chunk_of.astype(np.int32), w,
                     dict(self._vocab), vectors, has_vec, df.astype(np.int64), avgdl)


def _build_vectors(
    keys: list[str], recs: list[DocRecord], doc_rows: np.ndarray, prev: Built | None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The unit-row embedding matrix; rows of records already in ``prev`` are copied, not decoded again."""
    dim = next((r.dim for r in recs if r.vectors_b64 and r.dim), None)
    if dim is None:
        return None, None
    n = int(doc_rows[-1])
    mat = np.zeros((n, dim), dtype=np.float32)
    has = np.zeros(n, dtype=bool)
    reuse: dict[str, int] = {}
    if prev is not None and prev.vectors is not None and prev.vectors.shape[1] == dim:
        reuse = {k: i for i, k in enumerate(prev.keys)}
    for i, (key, r) in enumerate(zip(keys, recs)):
        a, z = int(doc_rows[i]), int(doc_rows[i + 1])
        j = reuse.get(key)
        if j is not None and prev is not None and prev.has_vec is not None:
            pa, pz = int(prev.doc_rows[j]), int(prev.doc_rows[j + 1])
            mat[a:z] = prev.vectors[pa:pz]  # type: ignore[index]
            has[a:z] = prev.has_vec[pa:pz]
            continue
        v = r.vectors() if r.dim == dim else None
        if v is not None:
            norms = np.linalg.norm(v, axis=1, keepdims=True)
            np.divide(v, norms, out=mat[a:z], where=norms > 0)
            has[a:z] = True
    return mat, has


# ---------------------------------------------------------------------------
# Scoring on a snapshot
# ---------------------------------------------------------------------------


def label_mask(b: Built, filters: dict[str, Any] | None) -> np.ndarray | None:
    """Chunk mask for label filters: every key must match; a list value means any-of."""
    if not filters:
        return None
    doc_ok = np.fromiter((labels_match(r.labels, filters) for r in b.recs), dtype=bool, count=len(b.recs))
    return doc_ok[b.chunk_doc] if b.n_chunks else np.zeros(0, bool)


def labels_match(labels: dict[str, Any], filters: dict[str, Any]) -> bool:
    """True when ``labels`` satisfy every filter (a doc's list label matches if any element does)."""
    for key, want in filters.items():
        if key not in labels:
            return False
        wants = list(want) if isinstance(want, (list, tuple, set, frozenset)) else [want]
        have = labels[key]
        haves = have if isinstance(have, list) else [have]
        if not any(h in wants for h in haves):
            return False
    return True


def top_k(scores: np.ndarray, k: int, valid: np.ndarray) -> list[tuple[int, float]]:
    """Indices and scores of the ``k`` best valid entries, best first (ties by index)."""
    cand = np.flatnonzero(valid)
    if cand.size == 0:
        return []
    sc = scores[cand]
    if cand.size > k:
        part = np.argpartition(-sc, k - 1)[:k]
        cand, sc = cand[part], sc[part]
    order = np.lexsort((cand, -sc))
    return [(int(cand[i]), float(sc[i])) for i in order]


def lexical_scores(b: Built, query: str) -> np.ndarray | None:
    """BM25 score per chunk, or None when no query term is in the corpus."""
    tids = sorted({b.vocab[t] for t in tokenize(query) if t in b.vocab})
    if not tids or b.n_chunks == 0:
        return None
    idx = np.concatenate([b.post_chunk[b.indptr[t] : b.indptr[t + 1]] for t in tids])
    w = np.concatenate([b.post_w[b.indptr[t] : b.indptr[t + 1]] for t in tids])
    if idx.size == 0:
        return None
    return np.bincount(idx, weights=w, minlength=b.n_chunks)


def search_lexical(b: Built, query: str, k: int, mask: np.ndarray | None) -> list[tuple[int, float]]:
    """Top-k chunks by BM25."""
    scores = lexical_scores(b, query)
    if scores is None:
        return []
    valid = scores > 0
    if mask is not None:
        valid &= mask
    return top_k(scores, k, valid)


def search_dense(b: Built, qvec: list[float], k: int, mask: np.ndarray | None) -> list[tuple[int, float]]:
    """Top-k chunks by cosine similarity to ``qvec``."""
    if b.vectors is None or b.has_vec is None:
        return []
    q = np.asarray(qvec, dtype=np.float32)
    if q.shape != (b.vectors.shape[1],):
        raise RAGError(
            f"query embedding has {q.shape[0]} dimensions but the corpus vectors have {b.vectors.shape[1]}: "
            "the embedding model changed; re-upsert the documents with the current embed_model"
        )
    nrm = float(np.linalg.norm(q))
    if nrm == 0 or not math.isfinite(nrm):
        return []
    # einsum, not BLAS: threaded sgemv stalls for tens of ms on a busy machine; this loop is single-threaded.
    scores = np.einsum("ij,j->i", b.vectors, q / nrm)
    valid = b.has_vec if mask is None else (b.has_vec & mask)
    return top_k(scores, k, valid)


def merge_top(rankings: list[list[tuple[Any, float]]], k: int) -> list[tuple[Any, float]]:
    """The ``k`` best of several rankings of comparable scores, best first (ties by id)."""
    return sorted((pair for r in rankings for pair in r), key=lambda p: (-p[1], p[0]))[:k]


def rrf(rankings: list[list[tuple[Any, float]]], k: int, c: int = 60) -> list[tuple[Any, float]]:
    """Reciprocal rank fusion of several rankings: score = sum 1/(c + rank)."""
    fused: dict[Any, float] = {}
    for ranking in rankings:
        for rank, (i, _) in enumerate(ranking, start=1):
            fused[i] = fused.get(i, 0.0) + 1.0 / (c + rank)
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


def dumps_record(rec: DocRecord) -> bytes:
    """Serialise a record (compact JSON)."""
    return json.dumps(rec.model_dump(mode="json"), separators=(",", ":")).encode()
