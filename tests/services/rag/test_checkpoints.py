"""RAG checkpoints (#21): a fresh reader's cost follows the corpus, not how many changes made it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from aether_prefect.blocks import AetherConfig
from aether_prefect.services import rag as rag_mod
from aether_prefect.services.rag import _index as ri
from aether_prefect.session import open_session_sync
from tests.services.artifacts._helpers import CountingStore

EVERY = 8  # CHECKPOINT_EVERY for these tests (64 in use), so the history builds in seconds
N = EVERY + 7  # commits: one checkpoint, then 7 commits after it (the writer syncs after each)


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("AETHER_RAG_REFRESH_S", "0")
    monkeypatch.setattr(ri, "CHECKPOINT_EVERY", EVERY)
    rag_mod.clear_cache()
    yield
    rag_mod.clear_cache()


def _view(idx: ri.CorpusIndex) -> list[str]:
    return sorted(idx.records[k].chunks[0] for k in idx.active().values())


def _fresh(store: Any, checkpoints: bool = True) -> ri.CorpusIndex:
    idx = ri.CorpusIndex("kb", ri.read_settings(store, "kb"))  # type: ignore[arg-type]
    if not checkpoints:
        idx.base_upto = ""  # read_checkpoint is only consulted by an empty index: make it find nothing
        orig = ri.read_checkpoint
        ri.read_checkpoint = lambda *a, **k: None  # type: ignore[assignment]
        try:
            idx.sync_from_store(store)
        finally:
            ri.read_checkpoint = orig  # type: ignore[assignment]
        return idx
    idx.sync_from_store(store)
    return idx


@pytest.fixture()
def history(local_config: AetherConfig) -> Iterator[tuple[Any, Any]]:
    """A corpus built by N commits: new documents, replaced ones and deletes (so replay order matters)."""
    with open_session_sync(config=local_config) as c:
        rag = c.rag.sync
        for i in range(N):
            if i % 5 == 4:
                rag.delete_docs("kb", [d.doc_id for d in rag.list_docs("kb") if d.title == f"doc{i - 2}"])
            else:  # every third upsert replaces the document two steps back
                title = f"doc{i - 2}" if i % 3 == 0 and i >= 2 else f"doc{i}"
                rag.upsert_docs("kb", [{"text": f"text of {title} at step {i}", "title": title}])
        yield c, c.store()


def test_a_fresh_reader_replays_only_the_commits_after_the_checkpoint(history: tuple[Any, Any]) -> None:
    c, store = history
    assert len(list(store.list_keys(ri.checkpoints_prefix("kb")))) == 1
    counting = CountingStore(store)
    fresh = _fresh(counting)  # type: ignore[arg-type]
    commits_read = [k for k in counting.reads if k.startswith(ri.commits_prefix("kb"))]
    listed = sorted(store.list_keys(ri.commits_prefix("kb")))
    assert len(listed) > EVERY and fresh.base is not None
    assert commits_read == [k for k in listed if k > fresh.base_upto]  # only those after the checkpoint
    assert 0 < len(commits_read) < len(listed) - EVERY + 1
    full = _fresh(store, checkpoints=False)
    assert _view(fresh) == _view(full) and len(_view(full)) > 5
    assert sorted(d.title for d in c.rag.sync.list_docs("kb")) == sorted(full.records[k].title for k in full.active().values())


def test_a_late_commit_older_than_the_checkpoint_is_not_skipped(history: tuple[Any, Any]) -> None:
    """A commit that lands after the checkpoint with an earlier key (a slow writer, a clock behind) is replayed
    in its place by fresh and warm readers alike."""
    _, store = history
    warm = _fresh(store)
    assert warm.base is not None
    rec = ri.DocRecord(doc_id="late" + "0" * 20, corpus_id="kb", title="late", source="late",
                       chunks=["a late okapi"], updated_at=time.time())
    doc = ri.doc_key("kb", "late", "r" * 24)
    store.put_bytes(doc, ri.dumps_record(rec))
    store.put_bytes(f"{ri.commits_prefix('kb')}{1:020d}-{uuid.uuid4().hex[:12]}.json", b'{"add":["%s"],"remove":[]}' % doc.encode())
    fresh = _fresh(store)
    assert "a late okapi" in _view(fresh) and _view(fresh) == _view(_fresh(store, checkpoints=False))
    warm.refresh_if_changed(store, 0.0)
    assert _view(warm) == _view(fresh)


@pytest.mark.parametrize("damage", ["garbage", "wrong-live", "deleted"])
def test_a_damaged_or_missing_checkpoint_falls_back_to_replay(history: tuple[Any, Any], damage: str) -> None:
    _, store = history
    (ckey,) = store.list_keys(ri.checkpoints_prefix("kb"))
    if damage == "garbage":
        store.put_bytes(ckey, b"\x00not json")
    elif damage == "wrong-live":  # its count no longer matches the listed commits: never trusted
        import json

        raw = json.loads(store.get_bytes(ckey))
        store.put_bytes(ckey, json.dumps({**raw, "count": raw["count"] - 1, "live": []}).encode())
    else:
        store.delete(ckey)
    assert _view(_fresh(store)) == _view(_fresh(store, checkpoints=False))
