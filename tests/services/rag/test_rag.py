"""RAG service against real stores (local dir, moto S3) and the loopback OpenAI-compatible server."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aether_prefect.blocks import AetherConfig, AetherLLMProfile, AetherObjectStore
from aether_prefect.errors import RAGError, ServiceNotConfigured
from aether_prefect.services import rag as rag_mod
from aether_prefect.session import open_session_sync

DATA = Path(__file__).resolve().parents[2] / "data" / "rag"
ROOT = Path(__file__).resolve().parents[3]

CATEGORY = {
    "photosynthesis": "biology", "honeybees": "biology", "vaccines": "biology", "coral_reefs": "biology",
    "volcanoes": "earth", "plate_tectonics": "earth", "black_holes": "space",
    "sourdough": "food", "espresso": "food", "chess_openings": "games", "tcp": "computing",
    "git_rebase": "computing", "python_gil": "computing", "compound_interest": "finance",
    "marathon": "sport", "roman_aqueducts": "history",
}

# query -> the file stem that must be in the top 3
QUERIES = {
    "how do plants turn light into sugar": "photosynthesis",
    "what is a pyroclastic flow": "volcanoes",
    "wild yeast starter and lactic acid": "sourdough",
    "Sicilian Defence against e4": "chess_openings",
    "SYN ACK three-way handshake": "tcp",
    "waggle dance of worker bees": "honeybees",
    "event horizon and Hawking radiation": "black_holes",
    "rule of 72 doubling time": "compound_interest",
    "taper before race day long run": "marathon",
    "squash commits interactive rebase": "git_rebase",
    "why do corals bleach": "coral_reefs",
    "memory B cells immune system": "vaccines",
    "Pont du Gard water gradient": "roman_aqueducts",
    "crema and nine bars of pressure": "espresso",
    "subduction at convergent boundaries": "plate_tectonics",
    "threads and the global interpreter lock": "python_gil",
}


def corpus_docs() -> list[dict[str, Any]]:
    """Every file of the fixed corpus as a path doc labelled with its category."""
    return [{"path": str(p), "labels": {"category": CATEGORY[p.stem], "stem": p.stem}} for p in sorted(DATA.iterdir())]


def stem_of(hit: Any) -> str:
    return Path(hit.meta["source"]).stem


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("AETHER_RAG_REFRESH_S", "0")
    rag_mod.clear_cache()
    yield
    rag_mod.clear_cache()


@pytest.fixture()
def ctx(local_config: AetherConfig) -> Iterator[Any]:
    with open_session_sync(config=local_config) as context:
        yield context


@pytest.fixture()
def dense_config(tmp_store: AetherObjectStore, llm_server: Any) -> AetherConfig:
    profile = AetherLLMProfile(base_url=llm_server.base_url, api_key=llm_server.api_key, model="m", embed_model="e")
    return AetherConfig(llm={"default": profile}, store=tmp_store)


def test_lexical_finds_expected_doc_in_top3(ctx: Any) -> None:
    rag = ctx.rag.sync
    cid = rag.bind_corpus("kb")
    res = rag.upsert_docs(cid, corpus_docs())
    assert res.added == 16 and res.unchanged == 0 and res.embedded is False
    misses = {}
    for query, stem in QUERIES.items():
        hits = rag.search(cid, query, k=3, mode="lexical")
        stems = [stem_of(h) for h in hits]
        if stem not in stems:
            misses[query] = stems
    assert len(QUERIES) >= 10 and not misses, misses
    top = rag.search(cid, "waggle dance", k=1, mode="lexical")[0]
    assert top.corpus_id == cid and top.chunk_id == f"{top.doc_id}:0" and top.score > 0
    assert top["text"] == top.text and top.get("nope") is None and "waggle" in top.text
    assert top.meta["title"] == "Honeybees" and top.meta["labels"]["category"] == "biology"


def test_rag_attribute_and_call_are_the_same_service(ctx: Any) -> None:
    assert ctx.rag() is ctx.rag
    cid = ctx.rag().sync.bind_corpus(key="My Knowledge Base")
    assert cid.startswith("My-Knowledge-Base-") and cid == ctx.rag.sync.bind_corpus(key="My Knowledge Base")
    assert cid in [c["corpus_id"] for c in ctx.rag.sync.list_corpora()]


def test_hybrid_without_embedder_falls_back_and_dense_raises(ctx: Any) -> None:
    rag = ctx.rag.sync
    rag.upsert_docs("kb", corpus_docs()[:4])
    hits = rag.search("kb", "chess opening", k=2)
    assert hits and all(h.meta["fallback"].startswith("lexical") and h.meta["mode"] == "lexical" for h in hits)
    with pytest.raises(ServiceNotConfigured, match="embed_model"):
        rag.search("kb", "chess", mode="dense")


def test_upsert_twice_same_counts_and_changed_doc_replaces(ctx: Any) -> None:
    rag = ctx.rag.sync
    rag.upsert_docs("kb", corpus_docs())
    before = rag.stats("kb")
    again = rag.upsert_docs("kb", corpus_docs())
    assert (again.added, again.replaced, again.unchanged) == (0, 0, 16)
    assert rag.stats("kb") == before and before.docs == 16

    doc = {"text": "Kiwis are flightless birds from New Zealand.", "title": "Kiwi", "labels": {"k": 1}}
    first = rag.upsert_docs("kb", [doc, dict(doc)])  # a duplicate within one call collapses
    assert first.added == 1 and rag.stats("kb").docs == 17
    changed = rag.upsert_docs("kb", [{**doc, "text": "Kiwis lay enormous eggs relative to their body size."}])
    assert (changed.added, changed.replaced) == (0, 1) and changed.doc_ids != first.doc_ids
    assert rag.stats("kb").docs == 17
    assert not rag.search("kb", "flightless", mode="lexical")
    assert rag.search("kb", "enormous eggs", mode="lexical")[0].doc_id == changed.doc_ids[0]
    relabelled = rag.upsert_docs("kb", [{**doc, "text": "Kiwis lay enormous eggs relative to their body size.",
                                         "labels": {"k": 2}}])
    assert relabelled.replaced == 1 and rag.search("kb", "eggs", filters={"k": 2}, mode="lexical")


def test_delete_docs(ctx: Any) -> None:
    rag = ctx.rag.sync
    res = rag.upsert_docs("kb", corpus_docs())
    target = rag.search("kb", "espresso crema", k=1, mode="lexical")[0].doc_id
    out = rag.delete_docs("kb", [target, "nope"])
    assert out == {"deleted": 1, "missing": ["nope"]}
    assert rag.stats("kb").docs == 15
    assert all(h.doc_id != target for h in rag.search("kb", "espresso crema", k=5, mode="lexical"))
    assert target not in [d.doc_id for d in rag.list_docs("kb")] and target in res.doc_ids
    rag_mod.clear_cache()  # a fresh process view agrees
    assert rag.stats("kb").docs == 15


def test_label_filters_exact_and_any_of(ctx: Any) -> None:
    rag = ctx.rag.sync
    rag.upsert_docs("kb", corpus_docs())
    q = "water light energy"  # matches several categories
    bio = rag.search("kb", q, k=8, filters={"category": "biology"}, mode="lexical")
    assert bio and {h.meta["labels"]["category"] for h in bio} == {"biology"}
    mixed = rag.search("kb", "water", k=8, filters={"category": ["history", "food"]}, mode="lexical")
    assert {h.meta["labels"]["category"] for h in mixed} == {"history", "food"}
    assert rag.search("kb", q, filters={"category": "nothing"}, mode="lexical") == []
    both = rag.search("kb", "algae photosynthesis", filters={"category": "biology", "stem": "coral_reefs"},
                      mode="lexical")
    assert {stem_of(h) for h in both} == {"coral_reefs"}


def test_chunking_size_and_overlap(ctx: Any) -> None:
    rag = ctx.rag.sync
    cid = rag.bind_corpus("small", chunk_size=120, chunk_overlap=30)
    text = " ".join(f"sentence{i} about topic{i % 7} goes here." for i in range(40))
    res = rag.upsert_docs(cid, [{"text": text, "title": "long"}])
    docs = rag.list_docs(cid)
    assert docs[0].chunks == res.chunks and res.chunks > 5
    hits = rag.search(cid, "sentence39", k=1, mode="lexical")
    assert hits[0].chunk_id.endswith(f":{docs[0].chunks - 1}") and len(hits[0].text) <= 120
    with pytest.raises(RAGError, match="already exists with chunk_size=120"):
        rag.bind_corpus(cid, chunk_size=500)
    with pytest.raises(RAGError, match="chunk_overlap"):
        rag.bind_corpus("other", chunk_size=100, chunk_overlap=100)


def test_chunker_respects_size_overlap_and_covers_text() -> None:
    from aether_prefect.services.rag._chunk import chunk_text, term_counts, tokenize

    text = "\n\n".join(" ".join(f"p{p}w{i}" for i in range(30)) + "." for p in range(6))
    chunks = chunk_text(text, 200, 40)
    assert len(chunks) > 3 and all(len(c) <= 200 for c in chunks)
    words = [w.strip(".") for c in chunks for w in c.split()]
    assert set(words) == {w.strip(".") for w in text.split()}  # nothing lost
    assert len(words) > len(text.split())  # overlap repeats some words
    assert chunk_text("  ", 100, 10) == [] and chunk_text("short", 100, 10) == ["short"]
    sample = "The bees' dances: Bees dance, the bee dances again!"
    assert term_counts(sample) == {t: tokenize(sample).count(t) for t in set(tokenize(sample))}


def test_bad_input_raises_typed_errors_before_writing(ctx: Any, tmp_path: Path) -> None:
    rag = ctx.rag.sync
    with pytest.raises(RAGError, match="unknown corpus 'ghost'"):
        rag.search("ghost", "anything")
    rag.upsert_docs("kb", corpus_docs()[:2])
    with pytest.raises(RAGError, match="non-empty"):
        rag.search("kb", "   ")
    with pytest.raises(RAGError, match="mode"):
        rag.search("kb", "x", mode="fuzzy")
    with pytest.raises(RAGError, match="k must be"):
        rag.search("kb", "x", k=0)
    pdf = tmp_path / "paper.pdf"
    pdf.write_bytes(b"%PDF-1.4")
    good = {"text": "A perfectly fine document about lighthouses.", "title": "Lighthouses"}
    with pytest.raises(RAGError, match="could not read the PDF"):  # PDFs are read (pdf extra); a broken one is refused
        rag.upsert_docs("kb", [good, {"path": str(pdf)}])
    docx = tmp_path / "paper.docx"
    docx.write_bytes(b"PK")
    with pytest.raises(RAGError, match="unsupported file type '.docx'"):
        rag.upsert_docs("kb", [good, {"path": str(docx)}])
    with pytest.raises(RAGError, match="does not exist"):
        rag.upsert_docs("kb", [good, {"path": str(tmp_path / "missing.md")}])
    with pytest.raises(RAGError, match="exactly one of 'text' or 'path'"):
        rag.upsert_docs("kb", [{"title": "nothing"}])
    with pytest.raises(RAGError, match="not valid"):
        rag.upsert_docs("kb", [{"text": "x", "labels": ["not", "a", "dict"]}])
    with pytest.raises(RAGError, match="corpus_id"):
        rag.upsert_docs("../etc", [good])
    assert rag.stats("kb").docs == 2  # the good doc of each failed batch was not written
    assert not rag.search("kb", "lighthouses", mode="lexical")


@pytest.mark.slow
def test_persistence_and_concurrent_upserts_across_processes(local_config: AetherConfig) -> None:
    root = local_config.store.root  # type: ignore[union-attr]
    script = textwrap.dedent(
        """
        import json, sys
        from aether_prefect.blocks import AetherConfig, AetherObjectStore
        from aether_prefect.session import open_session_sync
        root, who, action = sys.argv[1], sys.argv[2], sys.argv[3]
        cfg = AetherConfig(store=AetherObjectStore(backend="local", root=root))
        with open_session_sync(config=cfg) as c:
            if action == "upsert":
                docs = [{"text": f"{who} note {i}: zebra{who}{i} facts", "title": f"{who}-{i}"} for i in range(10)]
                c.rag.sync.upsert_docs("shared", docs)
            out = {"docs": c.rag.sync.stats("shared").docs,
                   "hit": [h.meta["title"] for h in c.rag.sync.search("shared", "zebramain3", mode="lexical")]}
            print(json.dumps(out))
        """
    )

    def spawn(who: str, action: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", script, root, who, action], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    procs = [spawn("a", "upsert"), spawn("b", "upsert")]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    with open_session_sync(config=local_config) as c:
        assert c.rag.sync.stats("shared").docs == 20  # neither writer lost the other's docs
        assert c.rag.sync.search("shared", "zebrab7", k=1, mode="lexical")[0].meta["title"] == "b-7"
        c.rag.sync.upsert_docs("shared", [{"text": "main note: zebramain3", "title": "main-3"}])
    reader = spawn("r", "read")
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err[-2000:]
    assert json.loads(out.strip().splitlines()[-1]) == {"docs": 21, "hit": ["main-3"]}


def test_cached_index_sees_changes_from_another_context(local_config: AetherConfig) -> None:
    with open_session_sync(config=local_config) as a, open_session_sync(config=local_config) as b:
        a.rag.sync.upsert_docs("kb", corpus_docs()[:3])
        assert b.rag.sync.stats("kb").docs == 3
        store = a.store()
        # Simulate another process: write through a separate index cache.
        rag_mod._indexes.clear()
        a.rag.sync.upsert_docs("kb", [{"text": "Narwhals have a long spiral tusk.", "title": "Narwhal"}])
        assert b.rag.sync.search("kb", "narwhal tusk", mode="lexical")[0].meta["title"] == "Narwhal"
        assert store.exists("rag/corpora/kb.json")


def test_s3_backend_roundtrip(s3_store_block: AetherObjectStore) -> None:
    cfg = AetherConfig(store=s3_store_block)
    with open_session_sync(config=cfg) as c:
        c.rag.sync.upsert_docs("s3kb", corpus_docs())
    rag_mod.clear_cache()
    with open_session_sync(config=cfg) as c:
        assert c.rag.sync.stats("s3kb").docs == 16
        assert stem_of(c.rag.sync.search("s3kb", "waggle dance", k=1, mode="lexical")[0]) == "honeybees"
        assert c.rag.sync.upsert_docs("s3kb", corpus_docs()).unchanged == 16


# ---------------------------------------------------------------------------
# Dense, hybrid and answer against the loopback OpenAI-compatible server
# ---------------------------------------------------------------------------


def test_dense_and_hybrid_search(dense_config: AetherConfig, llm_server: Any) -> None:
    with open_session_sync(config=dense_config) as c:
        rag = c.rag.sync
        res = rag.upsert_docs("kb", corpus_docs())
        assert res.embedded is True
        st = rag.stats("kb")
        assert st.vectors == st.chunks == 16 and st.dim == 384
        embed_calls = llm_server.requests_to("embeddings")
        assert embed_calls and embed_calls[0].json["model"] == "e"
        dense_hits = hybrid_hits = 0
        for query, stem in QUERIES.items():
            d = rag.search("kb", query, k=3, mode="dense")
            h = rag.search("kb", query, k=3, mode="hybrid")
            assert all(x.meta["mode"] == "dense" for x in d) and all(x.meta["mode"] == "hybrid" for x in h)
            assert all("fallback" not in x.meta for x in h)
            dense_hits += stem in [stem_of(x) for x in d]
            hybrid_hits += stem in [stem_of(x) for x in h]
        assert dense_hits >= 10 and hybrid_hits >= 12, (dense_hits, hybrid_hits)
        bees = rag.search("kb", "waggle dance", k=1, mode="dense", filters={"category": "biology"})
        assert stem_of(bees[0]) == "honeybees"
        assert rag.search("kb", "waggle dance", mode="dense", filters={"category": "space"})[0].meta["labels"][
            "category"] == "space"
        # A later upsert rebuilds the arrays reusing old rows: old and new docs are both found.
        rag.upsert_docs("kb", [{"text": "Axolotls regrow lost limbs and gills.", "title": "Axolotl"}])
        assert rag.search("kb", "axolotls regrow limbs", k=1, mode="dense")[0].meta["title"] == "Axolotl"
        assert stem_of(rag.search("kb", "waggle dance worker bees", k=1, mode="dense")[0]) == "honeybees"
        # Re-upserting unchanged docs sends no embedding request.
        n = len(llm_server.requests_to("embeddings"))
        assert rag.upsert_docs("kb", corpus_docs()).unchanged == 16
        assert len(llm_server.requests_to("embeddings")) == n


def test_corpus_without_embeddings_is_embedded_on_first_dense_use(
    local_config: AetherConfig, dense_config: AetherConfig, llm_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """#17.8: upserted with no embedder, searched later with one: the missing chunks are embedded once."""
    import logging

    cfg = AetherConfig(llm=dense_config.llm, store=local_config.store)
    with open_session_sync(config=local_config) as c:
        c.rag.sync.upsert_docs("kb", corpus_docs()[:3])
        chunks = c.rag.sync.stats("kb").chunks
    with open_session_sync(config=cfg) as c:
        with caplog.at_level(logging.INFO, logger="aether_prefect.rag"):
            hits = c.rag.sync.search("kb", "chess openings", mode="hybrid")
        assert hits and all("fallback" not in h.meta and h.meta["mode"] == "hybrid" for h in hits)
        assert all(h.meta["embedded_on_search"] == chunks for h in hits)
        assert f"embedded {chunks} chunks of 3 documents" in caplog.text
        assert c.rag.sync.stats("kb").vectors == chunks
        dense = c.rag.sync.search("kb", "chess openings", mode="dense")
        assert dense and "embedded_on_search" not in dense[0].meta
        n = len(llm_server.requests_to("embeddings"))
        assert c.rag.sync.upsert_docs("kb", corpus_docs()[:3]).unchanged == 3  # stored with vectors now
    rag_mod.clear_cache()
    with open_session_sync(config=cfg) as c:  # a fresh process embeds nothing again
        assert "embedded_on_search" not in c.rag.sync.search("kb", "bees", mode="dense")[0].meta
    assert len(llm_server.requests_to("embeddings")) == n + 1  # only the query


def test_two_docs_that_would_replace_each_other_are_refused(ctx: Any) -> None:
    """#17.6: one call, one identity, two contents: a typed error naming the title, nothing written."""
    from aether_prefect.errors import RAGValidationError

    rag = ctx.rag.sync
    with pytest.raises(RAGValidationError, match="'Notes'"):
        rag.upsert_docs("c", [{"text": "a", "title": "Notes"}, {"text": "b", "title": "Notes"}])
    assert rag.list_docs("c") == []
    same = rag.upsert_docs("c", [{"text": "a", "title": "Notes"}, {"text": "a", "title": "Notes"}])
    assert len(set(same.doc_ids)) == 1 and len(rag.list_docs("c")) == 1  # the very same doc twice is one doc
    two = rag.upsert_docs("c", [{"text": "b", "title": "Notes", "source": "n2"}, {"text": "c", "title": "Other"}])
    assert two.added == 2 and len(rag.list_docs("c")) == 3


def test_answer_with_citations(dense_config: AetherConfig, llm_server: Any) -> None:
    with open_session_sync(config=dense_config) as c:
        rag = c.rag.sync
        rag.upsert_docs("kb", corpus_docs())
        hits = rag.search("kb", "How do bees tell each other where flowers are?", k=3)
        bee_n = [stem_of(h) for h in hits].index("honeybees") + 1
        llm_server.script("/v1/chat/completions", [{"json": {
            "id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant",
                                                  "content": f"They perform the waggle dance [{bee_n}] [99]."},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57}}}])
        out = rag.answer("kb", "How do bees tell each other where flowers are?", k=3)
        assert set(out) == {"answer", "citations", "usage", "resolved_citations"}
        assert out["answer"].startswith("They perform the waggle dance")
        assert [c_["n"] for c_ in out["citations"]] == [bee_n]  # [99] is not a passage: dropped
        resolved = out["resolved_citations"][0]
        assert resolved["title"] == "Honeybees" and "waggle" in resolved["text"]
        assert resolved["doc_id"] == hits[bee_n - 1].doc_id
        assert out["usage"]["total_tokens"] == 57 if isinstance(out["usage"], dict) else out["usage"]
        prompt = llm_server.requests_to("chat/completions")[-1].json["messages"]
        assert "square brackets" in prompt[0]["content"] and "waggle dance" in prompt[1]["content"]
        plain = rag.answer("kb", "What is sourdough?", with_citations=False, style="detailed")
        assert plain["citations"] == [] and plain["resolved_citations"] == []
        prompt = llm_server.requests_to("chat/completions")[-1].json["messages"]
        assert "square brackets" not in prompt[0]["content"] and "detailed" in prompt[0]["content"]


def test_answer_without_llm_is_not_configured(ctx: Any) -> None:
    ctx.rag.sync.upsert_docs("kb", corpus_docs()[:2])
    with pytest.raises(ServiceNotConfigured):
        ctx.rag.sync.answer("kb", "what is photosynthesis?")


def test_inside_prefect_flow_sync_and_async_tasks(local_config: AetherConfig) -> None:
    from prefect import flow

    from aether_prefect import NodeContext, aether_task

    @aether_task(config=local_config)
    def ingest(*, context: NodeContext) -> int:
        return context.rag.sync.upsert_docs("flowkb", corpus_docs()).added

    @aether_task(config=local_config)
    async def ask(query: str, *, context: NodeContext) -> str:
        hits = await context.rag().search("flowkb", query, k=1, mode="lexical")
        return stem_of(hits[0])

    @flow(name="rag-flow")
    def pipeline() -> tuple[int, str]:
        added = ingest()
        return added, ask.submit("Pont du Gard aqueduct", wait_for=[]).result()

    assert pipeline() == (16, "roman_aqueducts")


def test_replacing_never_deletes_a_newer_concurrent_revision(ctx: Any) -> None:
    import time

    from aether_prefect.services.rag import _index as ri

    rag = ctx.rag.sync
    doc = {"text": "Tardigrades survive in space.", "title": "Tardigrade"}
    first = rag.upsert_docs("kb", [doc])
    store = ctx.store()
    (key_v1,) = list(store.list_keys(ri.docs_prefix("kb")))
    # Another process wrote a revision of the same document just after ours (its clock is ahead).
    newer = ri.DocRecord(doc_id="f" * 24, corpus_id="kb", title="Tardigrade", source="Tardigrade",
                         chunks=["Tardigrades are also called water bears."], updated_at=time.time() + 100)
    key_other = key_v1.rsplit("/", 1)[0] + "/" + "0" * 24 + ".json"
    store.put_bytes(key_other, ri.dumps_record(newer))
    ri.write_commit(store, "kb", [key_other], [])  # ... and committed it
    res = rag.upsert_docs("kb", [{**doc, "text": "Tardigrades survive boiling and freezing."}])
    assert res.replaced == 1 and res.doc_ids != first.doc_ids  # v1 (older) went away
    assert store.exists(key_other) and not store.exists(key_v1)
    assert [d.doc_id for d in rag.list_docs("kb")] == ["f" * 24]  # readers see the newest revision only
    assert rag.search("kb", "water bears", k=1, mode="lexical")[0].doc_id == "f" * 24


@pytest.mark.parametrize("crash", ["before-commit", "after-commit-before-cleanup", "before-version-bump"])
def test_a_writer_crash_at_any_point_leaves_every_process_one_view(
    local_config: AetherConfig, monkeypatch: pytest.MonkeyPatch, crash: str
) -> None:
    """#17.7: a warm cache (another process's) and a fresh process see the same documents after a crash."""
    from aether_prefect.services.rag import _index as ri

    class Crash(BaseException):
        pass

    def boom(*_: Any, **__: Any) -> None:
        raise Crash(crash)

    with open_session_sync(config=local_config) as c:
        rag = c.rag.sync
        store = c.store()
        rag.upsert_docs("kb", [{"text": "Okapis live in forests.", "title": "Okapi"}, {"text": "Quokkas smile.", "title": "Quokka"}])
        settings = ri.read_settings(store, "kb")
        warm = ri.CorpusIndex("kb", settings)  # type: ignore[arg-type]
        warm.sync_from_store(store)
        if crash == "before-commit":
            monkeypatch.setattr(ri, "write_commit", boom)
        elif crash == "after-commit-before-cleanup":
            monkeypatch.setattr(store, "delete", boom)
        else:
            monkeypatch.setattr(ri, "bump_version", boom)
        with pytest.raises(Crash):
            rag.upsert_docs("kb", [{"text": "Okapis are related to giraffes.", "title": "Okapi"},
                                   {"text": "Aye-ayes tap on wood.", "title": "Aye-aye"}])
        monkeypatch.undo()
        warm.refresh_if_changed(store, 0.0)
        fresh = ri.CorpusIndex("kb", settings)  # type: ignore[arg-type]
        fresh.sync_from_store(store)

        def view(idx: ri.CorpusIndex) -> list[str]:
            return sorted(idx.records[k].chunks[0] for k in idx.active().values())

        assert view(warm) == view(fresh)
        if crash == "before-commit":
            assert view(fresh) == ["Okapis live in forests.", "Quokkas smile."]
        else:
            assert view(fresh) == ["Aye-ayes tap on wood.", "Okapis are related to giraffes.", "Quokkas smile."]
        rag_mod.clear_cache()
        titles = sorted(d.title for d in rag.list_docs("kb"))
        assert titles == (["Okapi", "Quokka"] if crash == "before-commit" else ["Aye-aye", "Okapi", "Quokka"])


def test_a_small_change_adds_a_delta_instead_of_rebuilding() -> None:
    """#21: after one upsert into a built corpus, search scores a small delta over the base snapshot
    (costs follow the document), finds the new doc, never the replaced one, and agrees with a full build."""
    import time

    from aether_prefect.services.rag import _index as ri

    idx = ri.CorpusIndex("c", ri.CorpusSettings(corpus_id="c"))

    def rec(d: int, text: str) -> ri.DocRecord:
        return ri.DocRecord(doc_id=f"d{d}", corpus_id="c", title=f"t{d}", source=f"s{d}", chunks=[text, f"filler {d}"],
                            updated_at=time.time())

    idx.apply({f"rag/data/c/docs/s{d}/r.json": rec(d, f"common words document number {d}") for d in range(50)}, [])
    base = idx.segments()[0][0]
    assert base.n_chunks == 100
    idx.apply({"rag/data/c/docs/s99/r.json": rec(99, "okapi zebra stripes")}, ["rag/data/c/docs/s7/r.json"])
    segs = idx.segments()
    assert segs[0][0] is base and len(segs) == 2 and segs[1][0].n_chunks == 2  # no rebuild of the base
    assert segs[0][1] is not None and not segs[0][1][base.keys.index("rag/data/c/docs/s7/r.json") * 2]

    def found(query: str) -> list[str]:
        out = []
        for b, alive in idx.segments():
            out += [b.recs[int(b.chunk_doc[i])].doc_id for i, _ in ri.search_lexical(b, query, 5, alive)]
        return out

    assert found("okapi stripes") == ["d99"]
    assert "d7" not in found("number 7") and "d8" in found("number 8")
    full = idx.built()  # a full build folds the delta in
    assert idx.segments() == [(full, None)] and full.n_chunks == 100
    assert [full.recs[int(full.chunk_doc[i])].doc_id for i, _ in ri.search_lexical(full, "okapi stripes", 5, None)] == ["d99"]
