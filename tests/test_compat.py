"""AetherGraph code, written the way AetherGraph's examples write it, running on aether-prefect (issue 22).

Each test is one item of the issue: the AetherGraph call as its examples spell it, against the suite's real
Prefect server, real local store and the loopback OpenAI-compatible server; and what it did, checked.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prefect import flow
from prefect.context import refresh_global_settings_context

from aether_prefect import NodeContext, aether_task, open_session
from aether_prefect import _registration as reg
from aether_prefect import server as srv
from aether_prefect.blocks import AetherConfig
from aether_prefect.errors import ArtifactNotFound, ValidationError

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _clean_registrations() -> Iterator[None]:
    reg.clear_registrations()
    yield
    reg.clear_registrations()


# -- 1. start_server -------------------------------------------------------------------------------


def test_start_server_aethergraph_spelling_reuses_the_running_server(prefect_server) -> None:  # type: ignore[no-untyped-def]
    # The examples' first line: url = start_server(port=0). A server answers at PREFECT_API_URL: reuse it.
    url = srv.start_server(port=0)
    assert url == prefect_server.api_url[: -len("/api")]
    assert srv.start_server(port=0, log_level="info") == url
    url2, handle = srv.start_server(workspace="./aethergraph_workspace", port=0, return_handle=True,
                                    unvicorn_log_level="warning")
    assert url2 == url and handle.url == url and handle.stop() is False  # not ours to stop
    assert not Path("./aethergraph_workspace").exists()  # a reused server: nothing created
    with pytest.raises(ValidationError, match="return_container"):
        srv.start_server(port=0, return_container=True)
    with pytest.raises(ValidationError, match="log_level"):
        srv.start_server(port=0, log_level="loud")
    with pytest.raises(TypeError):
        srv.start_server(port=0, no_such_option=True)  # type: ignore[call-arg]


def test_start_server_loads_user_modules(tmp_path: Path) -> None:
    (tmp_path / "my_graphs.py").write_text(
        "from aether_prefect._registration import register_llm_client\n"
        "register_llm_client('loaded', 'openai', 'm-from-module', base_url='http://127.0.0.1:9/v1')\n"
    )
    srv.start_server(port=0, load_paths=[str(tmp_path / "my_graphs.py")], project_root=str(tmp_path))
    assert reg.registered_llm("loaded").model == "m-from-module"  # type: ignore[union-attr]
    with pytest.raises(Exception, match="no_such_module"):
        srv.start_server(port=0, load_modules=["no_such_module"], strict_load=True)


@pytest.fixture()
def no_api_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("PREFECT_API_URL")
    refresh_global_settings_context()
    yield
    srv.stop_server()
    monkeypatch.undo()
    refresh_global_settings_context()


@pytest.mark.timeout(300)
def test_start_server_port_0_starts_a_server_on_a_free_port_in_the_workspace(no_api_url: None, tmp_path: Path) -> None:
    ws = tmp_path / "aethergraph_workspace"
    url = srv.start_server(workspace=str(ws), port=0, log_level="info", timeout_s=240)
    (info,) = srv.running_servers()
    assert url == f"http://127.0.0.1:{info.port}" and info.port != 8745
    assert httpx.get(f"{url}/api/health", timeout=5).json() is True
    assert (ws / "prefect.db").exists()  # the workspace holds the started server's database
    assert srv.stop_server() is True


# -- 2. artifacts, the older spellings --------------------------------------------------------------


async def test_artifacts_older_spellings(local_config: AetherConfig, tmp_path: Path) -> None:
    async with open_session(config=local_config) as context:
        arts = context.artifacts()
        t = await arts.save_text("hello", suggested_uri="./notes/hello.txt", labels={"experiment": "exp001"})
        assert t.name == "hello.txt" and t.id == t.artifact_id
        j = await arts.save_json({"a": 1}, suggested_uri="./result.json", name="explicit.json")
        assert j.name == "explicit.json"  # name wins over suggested_uri

        tmp = await arts.tmp_path(suffix=".png")
        assert tmp.endswith(".png") and not os.path.exists(tmp)
        Path(tmp).write_bytes(b"\x89PNG fake")
        img = await arts.save(tmp, kind="image", suggested_uri="./red_dot.png",
                              labels={"experiment": "exp001", "step": "100"}, metrics={"val_loss": 0.55}, pin=True)
        assert img.name == "red_dot.png" and img.pinned and os.path.exists(tmp)  # copied, source kept (defect 4)
        src = tmp_path / "model.bin"
        src.write_bytes(b"weights")
        f = await arts.save_file(str(src), kind="model", suggested_uri="./model_v2.bin", metrics={"val_loss": 0.9})
        assert f.name == "model_v2.bin" and src.exists()

        best = await arts.best(kind="image", metric="val_loss", mode="min", filters={"experiment": "exp001"})
        assert best is not None and best.id == img.id
        assert await arts.best(kind="image", metric="val_loss", filters={"experiment": "exp999"}) is None
        found = await arts.search(kind="image", labels={"experiment": "exp001"}, scope="run")
        assert [a.id for a in found] == [img.id]

        path = arts.to_local_path(img.uri)
        assert Path(path).read_bytes() == b"\x89PNG fake"
        assert arts.to_local_file(img) == path
        assert arts.to_local_path(str(src)) == str(src.resolve())
        with pytest.raises(ArtifactNotFound):
            arts.to_local_path(str(tmp_path / "missing.txt"))
        assert arts.to_local_path(str(tmp_path / "missing.txt"), must_exist=False).endswith("missing.txt")
        assert await arts.load_artifact_bytes(t.uri) == b"hello"
        assert json.loads(await arts.load_artifact(j.uri)) == {"a": 1}
        tmp_dir = os.path.dirname(tmp)
    assert not os.path.exists(tmp_dir)  # the context's tmp folder goes with the context


# -- 5. memory --------------------------------------------------------------------------------------


async def test_memory_older_spellings(local_config: AetherConfig) -> None:
    from aether_prefect import Event

    async with open_session(config=local_config) as context:
        mem = context.memory()
        evt = await mem.write_result(
            topic="tool.calculator",
            inputs=[{"name": "expression", "kind": "text", "value": "1 + 2 * 3"}],
            outputs=[{"name": "result", "kind": "number", "vtype": "integer", "value": 7}],
            tags=["tool", "calculation"], metrics={"latency_ms": 12.3}, message="Evaluated 1 + 2 * 3",
        )
        assert isinstance(evt, Event) and evt.tool == "tool.calculator" and evt.kind == "tool_result"
        assert f"{evt.signal:.2f}" == "0.00"  # a float by default, so format strings work
        last = await mem.last_by_name("result")
        assert last is not None and last["value"] == 7 and last["event_id"] == evt.event_id
        assert await mem.last_by_name("nothing") is None
        by_topic = await mem.last_outputs_by_topic("tool.calculator")
        assert by_topic is not None and by_topic["last_outputs"] == {"result": 7}
        assert await mem.get_last_outputs_for_topic("tool.calculator") == by_topic
        with pytest.raises(ValidationError):
            await mem.write_result(tool="a", topic="b")
        noted = await mem.record("note", "plain")
        assert noted.signal == 0.0


# -- 4. runtime registration ------------------------------------------------------------------------


async def test_register_llm_client_and_inline_profile(local_config: AetherConfig, llm_server) -> None:  # type: ignore[no-untyped-def]
    from aether_prefect import register_llm_client

    register_llm_client(profile="my_openai", provider="openai", model="gpt-4o-mini",
                        base_url=llm_server.base_url, api_key=llm_server.api_key, timeout=30)

    @aether_task(config=local_config)
    async def ask(profile: str, *, context: NodeContext) -> str:
        text, _usage = await context.llm(profile=profile).chat([{"role": "user", "content": "Say hi"}])
        inline = context.llm(profile="runtime_openai", provider="openai", model="inline-model",
                             base_url=llm_server.base_url, api_key=llm_server.api_key, timeout=60.0)
        await inline.chat([{"role": "user", "content": "again"}])
        return text

    @flow
    async def use_profiles() -> str:
        return await ask("my_openai")

    assert await use_profiles()
    models = [r.json["model"] for r in llm_server.requests_to("chat/completions")]
    assert models == ["gpt-4o-mini", "inline-model"]
    assert llm_server.requests_to("chat/completions")[0].headers["authorization"] == f"Bearer {llm_server.api_key}"


async def test_registered_profile_overrides_config_and_context_override_wins(local_config: AetherConfig, llm_server) -> None:  # type: ignore[no-untyped-def]
    from aether_prefect import register_llm_client

    cfg = local_config.model_copy(update={"llm": {"default": llm_server.profile(model="from-block")}})
    register_llm_client("default", "openai", "registered", base_url=llm_server.base_url, api_key=llm_server.api_key)
    async with open_session(config=cfg) as context:
        assert context.llm().profile.model == "registered"
    async with open_session(config=cfg, llm=llm_server.profile(model="per-context")) as context:
        assert context.llm().profile.model == "per-context"
    reg.clear_registrations()
    async with open_session(config=cfg) as context:
        assert context.llm().profile.model == "from-block"


async def test_register_mcp_client_and_mcp_service(local_config: AetherConfig) -> None:
    import sys

    from aether_prefect import MCPService, StdioMCPClient, register_mcp_client, set_mcp_service

    server = str(Path(__file__).parent / "servers" / "mcp_demo_server.py")
    register_mcp_client("tools", StdioMCPClient([sys.executable, server]))
    async with open_session(config=local_config) as context:
        names = [t.name for t in await context.mcp("tools").list_tools()]
        assert names
    set_mcp_service(MCPService({"other": StdioMCPClient([sys.executable, server])}))
    assert reg.list_mcp_clients() == ["other"]
    with pytest.raises(ValidationError):
        register_mcp_client("bad", object())  # type: ignore[arg-type]


def test_channel_and_rag_index_registration_are_recorded() -> None:
    from aether_prefect import set_channel_alias, set_default_channel, set_rag_index_backend

    set_default_channel("console:local")  # AetherGraph's console key: our console channel
    set_channel_alias("my_console", "console:local")
    assert reg.channel_key() == "console" and reg.channel_key("my_console") == "console"
    set_default_channel("slack:team/T1:chan/C123")  # AetherGraph's Slack key: announced through a Slack block
    assert reg.channel_key() == "slack:team/T1:chan/C123"
    with pytest.raises(ValidationError, match="unknown channel"):
        set_default_channel("pigeon:loft/3")  # a channel we do not have: refused, not ignored
    settings = set_rag_index_backend(backend="faiss", dim=8)
    assert (settings.requested_backend, settings.backend, settings.dim) == ("faiss", "builtin", 8)
    with pytest.raises(ValidationError):
        set_default_channel("")


async def test_default_channel_and_alias_select_the_channel(local_config: AetherConfig) -> None:
    from aether_prefect import set_channel_alias, set_default_channel

    async with open_session(config=local_config) as context:
        assert context.channel().channel_key is None  # the Prefect UI
    set_default_channel("console:local")
    set_channel_alias("ops", "ui")
    async with open_session(config=local_config) as context:
        assert context.channel().channel_key == "console" and context.channel("ops").channel_key == "ui"


# -- 8. indices() and kb() ----------------------------------------------------------------------------


async def test_indices_and_kb_reach_the_rag_service(local_config: AetherConfig) -> None:
    async with open_session(config=local_config) as context:
        assert context.indices() is context.rag and context.kb() is context.rag
        cid = await context.kb().bind_corpus(key="kb-demo")
        await context.indices().upsert_docs(cid, [{"title": "t", "text": "refunds take five days"}])
        hits = await context.rag.search(cid, "refunds", k=1, mode="lexical")
        assert hits[0].text.startswith("refunds")


# -- 6. RAG -----------------------------------------------------------------------------------------


def _write_pdf(path: Path, text: str) -> None:
    """A one-page PDF whose content stream shows ``text`` (built by hand: no PDF writer in the test deps)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    path.write_bytes(bytes(out))


async def test_rag_retrieve_answer_with_llm_citations_and_pdf(local_config: AetherConfig, llm_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pdf = tmp_path / "paper.pdf"
    _write_pdf(pdf, "Refunds are processed within five business days of the return.")
    (tmp_path / "guide.md").write_text("# Guide\n\nShipping takes two weeks. Refunds need a receipt.\n")
    cfg = local_config.model_copy(update={"llm": {"default": llm_server.profile()}})
    async with open_session(config=cfg) as context:
        rag = context.rag()
        corpus_id = await rag.bind_corpus(corpus_id="demo-corpus-files")
        first = await rag.upsert_docs(corpus_id, [{"path": str(pdf), "labels": {"type": "pdf"}},
                                                  {"path": str(tmp_path / "guide.md")}])
        again = await rag.upsert_docs(corpus_id, [{"path": str(pdf), "labels": {"type": "pdf"}}])
        assert (first["added"], again["added"], again["unchanged"]) == (2, 0, 1)  # idempotent (defect 6)
        docs = {d.title: d for d in await rag.list_docs(corpus_id)}
        assert docs["paper"].source == str(pdf)

        hits = await rag.retrieve(corpus_id, "how many business days for refunds", k=1, rerank=True)
        assert "five business days" in hits[0].text and hits[0].__dict__["doc_id"] == docs["paper"].doc_id
        assert len(await rag.retrieve(corpus_id, "refunds", k=2, rerank=False)) == 2

        llm_server.script("/chat/completions", [{"json": {
            "id": "x", "object": "chat.completion", "model": "fake-chat",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Five business days [1]."},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}}])
        qa_llm = context.llm(profile="default")
        result = await rag.answer(corpus_id=corpus_id, question="How long do refunds take?", llm=qa_llm,
                                  style="detailed", with_citations=True, k=2)
        (cite,) = result["resolved_citations"]
        assert cite["rank"] == 1 and cite["snippet"] and cite["title"] and cite["doc_id"] and cite["chunk_id"]

        out = await rag.reembed(corpus_id, batch=1)
        assert out["reembedded"] == (await rag.stats(corpus_id))["chunks"] and out["docs"] == 2
        assert (await rag.stats(corpus_id))["vectors"] == out["reembedded"]


async def test_rag_pdf_without_the_extra_names_it(local_config: AetherConfig, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from aether_prefect.errors import RAGError

    pdf = tmp_path / "p.pdf"
    _write_pdf(pdf, "hello")
    monkeypatch.setitem(sys.modules, "pypdf", None)  # as if the extra were not installed
    async with open_session(config=local_config) as context:
        with pytest.raises(RAGError, match=r"aether-prefect\[pdf\]"):
            await context.rag.upsert_docs("c1", [{"path": str(pdf)}])


async def test_set_rag_llm_client_is_what_rag_embeds_with(local_config: AetherConfig, llm_server) -> None:  # type: ignore[no-untyped-def]
    from aether_prefect import register_llm_client, set_rag_index_backend, set_rag_llm_client

    client = register_llm_client(profile="my_openai", provider="openai", model="gpt-4o-mini",
                                 embed_model="rag-embed", base_url=llm_server.base_url, api_key=llm_server.api_key)
    set_rag_llm_client(client=client)
    async with open_session(config=local_config) as context:  # no LLM in the config: the registration is used
        cid = await context.rag.bind_corpus(key="rag-client")
        res = await context.rag.upsert_docs(cid, [{"title": "a", "text": "alpha beta gamma"}])
        assert res["embedded"] is True
    assert [r.json["model"] for r in llm_server.requests_to("embeddings")] == ["rag-embed"]
    set_rag_index_backend("faiss", dim=3)  # the loopback server's vectors are 384-d: refused, nothing written
    async with open_session(config=local_config) as context:
        from aether_prefect.errors import RAGError

        with pytest.raises(RAGError, match="dim=3"):
            await context.rag.upsert_docs("dim-check", [{"title": "b", "text": "delta"}])
        assert (await context.rag.stats("dim-check"))["docs"] == 0


# -- 5. memory-RAG helpers ----------------------------------------------------------------------------


async def test_memory_rag_helpers(local_config: AetherConfig, llm_server) -> None:  # type: ignore[no-untyped-def]
    cfg = local_config.model_copy(update={"llm": {"default": llm_server.profile()}})
    async with open_session(config=cfg) as context:
        mem = context.memory()
        corpus_id = await mem.rag_bind(corpus_id="memory_demo", labels={"project": "Quickstart"})
        assert corpus_id == "memory_demo"
        await mem.rag_upsert(corpus_id=corpus_id, topic="docs.manual_upsert", docs=[
            {"title": "Week 42 Notes", "text": "We tried achromatic design; near-IR shows better MTF at low NA."},
            {"title": "SOP: Optimize", "text": "Always sweep thickness and re-run tolerance before final export."},
        ])
        hits = await mem.rag_search(corpus_id=corpus_id, query="achromatic near-IR MTF low NA", k=4)
        assert hits[0]["text"].startswith("We tried") and float(hits[0]["score"]) > 0
        assert hits[0]["meta"]["labels"]["topic"] == "docs.manual_upsert"

        await mem.write_result(topic="optimize.camera", outputs=[{"name": "mtf50", "kind": "number", "value": 0.41}],
                               message="Iter 12 improved sagittal MTF50 in near-IR", severity=3)
        stats = await mem.rag_promote_events(corpus_id=corpus_id, where={"kinds": ["tool_result"], "limit": 50},
                                             policy={"min_signal": 0.0})
        assert stats["added"] == 1 and stats["chunks"] >= 1
        none = await mem.rag_promote_events(corpus_id=corpus_id, where={"kinds": ["tool_result"]},
                                            policy={"min_signal": 0.2})
        assert none == {"added": 0, "chunks": 0}  # events default to signal 0.0

        ans = await mem.rag_answer(corpus_id=corpus_id, question="Which iter improved MTF50", k=6)
        assert "answer" in ans
        assert (await mem.last_outputs_by_topic(f"rag.answer.{corpus_id}"))["last_outputs"]["answer"] == ans["answer"]
        keyed = await mem.rag_bind(key="notes")
        assert keyed.startswith("mem-") and keyed == await mem.rag_bind(key="notes")


# -- the decorators and runners AetherGraph's examples use (aether_prefect.compat) ----------------------------


def test_graph_fn_run_async_share_memory_by_run_id() -> None:
    import asyncio

    from aether_prefect.compat import graph_fn, run, run_async

    @graph_fn(name="write_memory_result_graph")
    async def write_graph(*, context: NodeContext):
        evt = await context.memory().write_result(topic="tool.calculator",
                                                  outputs=[{"name": "result", "kind": "number", "value": 7}])
        return {"event_id": evt.event_id, "flow_run_id": context.flow_run_id}

    @graph_fn(name="retrieve_last_calculation_result")
    async def read_graph(*, context: NodeContext):
        return {"last": await context.memory().last_by_name("result")}

    run_id = f"tutorial_memory_write_result_{os.getpid()}"
    wrote = asyncio.run(run_async(write_graph, inputs={}, run_id=run_id))
    assert wrote["flow_run_id"]  # a real Prefect flow run
    read = run(read_graph, inputs={}, run_id=run_id)
    assert read["last"]["value"] == 7 and read["last"]["event_id"] == wrote["event_id"]
    assert run(read_graph, inputs={})["last"] is None  # another run id: another timeline


def test_graphify_tools_fan_out_as_prefect_tasks() -> None:
    from aether_prefect.compat import graphify, run, tool

    @tool(outputs=["result"])
    async def pick(items: list[int], index: int):
        return {"result": items[index]}

    @tool(outputs=["out"])
    async def work(x: int):
        return {"out": x * 2}

    @tool(outputs=["sum"])
    async def reduce_sum(xs: list[int]):
        return {"sum": sum(xs)}

    @graphify(name="map_reduce", inputs=["vals"], outputs=["sum"])
    def map_reduce(vals):  # type: ignore[no-untyped-def]
        results = [pick(items=vals, index=i) for i in range(5)]
        outs = [work(x=r.result) for r in results]
        total = reduce_sum(xs=[o.out for o in outs])
        return {"sum": total.sum}

    assert run(map_reduce, inputs={"vals": [1, 2, 3, 4, 5]}, max_concurrency=5) == {"sum": 30}


def test_graphify_output_named_value_is_the_output() -> None:
    # AetherGraph's crash-resume demo: @tool(outputs=["value"]) and then a.value + b.value in the graph.
    from aether_prefect.compat import graphify, run, tool

    @tool(outputs=["value"])
    async def triple(x: int):
        return {"value": x * 3}

    @tool(outputs=["sum"])
    async def combine(a: int, b: int):
        return {"sum": a + b}

    @graphify(name="restart_minimal", inputs=["x", "n"], outputs=["sum"])
    def restart_minimal(x: int, n: int):  # type: ignore[no-untyped-def]
        a = triple(x=x, _id="a")
        b = triple(x=n)
        c = combine(a=a.value, b=b.value, _after=[a, b], _id="combine_3")
        return {"sum": c.sum}

    tg = restart_minimal()  # AetherGraph builds the graph first, then runs it with inputs
    assert run(tg, inputs={"x": 2, "n": 5}) == {"sum": 21}
    assert run(restart_minimal.build(), inputs={"x": 1, "n": 1}) == {"sum": 6}


# -- 7. channel keys: AetherGraph's file channel ---------------------------------------------------------


async def test_file_channel_appends_messages_and_refuses_questions(local_config: AetherConfig, tmp_path: Path) -> None:
    from aether_prefect.errors import ChannelError

    log = tmp_path / "runs" / "demo_run.log"
    async with open_session(config=local_config) as context:
        chan = context.channel(f"file:{log}")
        await chan.send_text("=== Demo run started ===")
        await chan.send_text("Step 1: loaded data\nStep 2: trained")
        with pytest.raises(ChannelError, match="file only records"):
            await chan.ask_text("Name?")
    lines = log.read_text(encoding="utf-8").splitlines()
    assert [ln.split("] ", 1)[1] for ln in lines] == ["=== Demo run started ===", "Step 1: loaded data", "Step 2: trained"]
    with pytest.raises(ValidationError, match="file:<path>"):
        async with open_session(config=local_config) as context:
            context.channel("file:")


# -- AetherGraph's container and module names: current_services(), aethergraph.server.start ------------------


async def test_current_services_configures_this_process(local_config: AetherConfig, llm_server) -> None:  # type: ignore[no-untyped-def]
    from aether_prefect.compat import current_services, start, start_server

    assert start is start_server  # `from aethergraph.server.start import start`
    svc = current_services()
    svc.channels.set_default_channel_key("console:stdin")
    svc.channels.register_alias("ops", "ui")
    svc.llm.configure_profile("fast", provider="openai", model="fake-chat", base_url=llm_server.base_url,
                              api_key=llm_server.api_key)
    settings = svc.rag.set_index_backend("faiss", dim=8)
    assert settings.dim == 8 and svc.channels.get_default_channel_key() == "console:stdin"
    async with open_session(config=local_config) as context:
        assert context.channel().channel_key == "console:stdin" and context.channel("ops").channel_key == "ui"
        text, _usage = await context.llm("fast").chat([{"role": "user", "content": "hi"}])
        assert text  # a real request to the loopback server with the configured profile
    with pytest.raises(ValidationError):
        svc.channels.set_default_channel_key("pigeon:loft/3")  # a channel we do not have
    with pytest.raises(AttributeError, match="channels, llm, rag"):
        svc.artifacts  # noqa: B018 - no such container part on Prefect: said, not faked


async def test_registered_openai_profile_without_base_url_uses_openai_base_url(
        local_config: AetherConfig, llm_server, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    # AetherGraph (and the OpenAI SDK) send provider="openai" without base_url to $OPENAI_BASE_URL when it is set.
    from aether_prefect import register_llm_client

    monkeypatch.setenv("OPENAI_BASE_URL", llm_server.base_url + "/")
    register_llm_client(profile="my_openai", provider="openai", model="fake-chat", api_key=llm_server.api_key)
    async with open_session(config=local_config) as context:
        llm = context.llm(profile="my_openai")
        assert llm.base_url == llm_server.base_url
        text, _usage = await llm.chat([{"role": "user", "content": "In one sentence, what is attention?"}])
        assert text
    monkeypatch.delenv("OPENAI_BASE_URL")
    async with open_session(config=local_config) as context:
        assert context.llm(profile="my_openai").base_url == "https://api.openai.com/v1"  # the provider's own URL


# -- 7. channel: AetherGraph's Button / send_buttons and ask_files / get_latest_uploads ------------------


def _answer_next(prompt_part: str, **how: object) -> str:
    """Answer the first pending question whose prompt contains ``prompt_part`` through the inbox; its prompt."""
    from aether_prefect import answer, pending_questions
    from tests.services.channel._helpers import wait_for

    q = wait_for(lambda: next((q for q in pending_questions() if prompt_part in q.prompt), None), 90,
                 f"a question containing {prompt_part!r}")
    answer(q.flow_run_id, question_id=q.question_id, **how)  # type: ignore[arg-type]
    return q.prompt


def test_buttons_as_aethergraph_writes_them(local_config: AetherConfig, caplog: pytest.LogCaptureFixture,
                                           prefect_server) -> None:  # type: ignore[no-untyped-def]
    import logging

    from aether_prefect import pending_questions
    from aether_prefect.compat import Button, send_buttons
    from tests.services.channel._helpers import Background, wait_for

    seen: dict[str, object] = {}

    @aether_task(config=local_config)
    async def pick(*, context: NodeContext) -> tuple[object, object]:
        chan = context.channel()
        await chan.send_buttons("Links:", [Button(label="Download Data", value="https://example.com/d.csv"),
                                           Button(label="View Dashboard", url="https://example.com/dash")], meta={})
        await send_buttons(text="Also:", buttons={"open": Button(label="Open report", url="https://example.com/r")},
                           context=context)  # the tool form, with the docs' dict of buttons
        r = await chan.ask_choices("Mode?", [Button(label="Safe", value="safe"), Button(label="Fast", value="fast")])
        ok = await chan.ask_approval("Ship it?", options=[Button(label="Yes", value="y"), Button(label="No")])
        return r, ok

    @flow(name="compat-buttons")
    async def f() -> tuple[object, object]:
        return await pick()

    with caplog.at_level(logging.INFO, logger="aether_prefect"):
        run = Background(lambda: asyncio.run(f()))
        q = wait_for(lambda: next((q for q in pending_questions() if q.prompt == "Mode?"), None), 90, "the choice")
        assert [(o.id, o.label) for o in q.options] == [("safe", "Safe"), ("fast", "Fast")]
        _answer_next("Mode?", choice="fast")
        _answer_next("Ship it?", choice="Yes")
        r, ok = run.join(120)
    assert (r.choice, r.choice_label, r.matched) == ("fast", "Fast", True)  # type: ignore[attr-defined]
    assert ok == {"approved": True, "choice": "Yes", "reason": None}
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "Links:\n- Download Data: https://example.com/d.csv\n- View Dashboard: https://example.com/dash" in logged
    assert "Also:\n- Open report: https://example.com/r" in logged
    seen.clear()


def test_ask_files_takes_paths_saves_artifacts_and_fills_the_upload_inbox(
        local_config: AetherConfig, tmp_path: Path, prefect_server) -> None:  # type: ignore[no-untyped-def]
    from aether_prefect.compat import ask_files, get_latest_uploads, graphify, run, send_text, tool
    from tests.services.channel._helpers import Background

    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n1,2\n3,4\n")
    seen: dict[str, object] = {}

    @aether_task(config=local_config)
    async def ask(*, context: NodeContext) -> dict[str, object]:
        chan = context.channel()
        r = await chan.ask_files("Please upload a CSV file.", accept=[".csv"], multiple=False)
        seen["inbox"] = await chan.get_latest_uploads(clear=False)
        seen["tool_inbox"] = await get_latest_uploads(context=context)
        seen["after_clear"] = await chan.get_latest_uploads()
        f0 = r.files[0]
        seen["bytes"] = await context.artifacts().load_bytes(f0["uri"])
        return r

    @flow(name="compat-ask-files")
    async def f() -> dict[str, object]:
        return await ask()

    bg = Background(lambda: asyncio.run(f()))
    prompt = _answer_next("Please upload a CSV file.", text="3")  # not a file: asked again, saying why
    assert "Prefect cannot upload files" in prompt and "expected: .csv" in prompt
    again = _answer_next("'3' is not an existing file", text=str(csv))
    assert again.startswith("'3' is not an existing file; please answer again.")
    r = bg.join(120)
    assert r["text"] == "" and r.files == r["files"] and len(r["files"]) == 1
    ref = r["files"][0]
    assert (ref["name"], ref["mimetype"], ref["size"], ref["platform"], ref["channel_key"]) == (
        "data.csv", "text/csv", csv.stat().st_size, "prefect", "ui")
    assert seen["bytes"] == csv.read_bytes() and ref["id"] and ref["uri"] != str(csv)  # saved as an artifact (a copy)
    assert seen["inbox"] == [ref] and seen["tool_inbox"] == {"files": [ref]} and seen["after_clear"] == []
    assert csv.exists()  # copied, never moved

    # The examples' @graphify form: files = ask_files(...); pick_first(files=files.files); send_text(...).
    @tool(outputs=["uri", "name"])
    async def pick_first(files: list, *, context: NodeContext) -> dict[str, str]:
        return {"uri": files[0]["uri"], "name": files[0]["name"]}

    @graphify(name="csv_upload", inputs=[], outputs=["name"])
    def pipeline():  # type: ignore[no-untyped-def]
        files = ask_files(prompt="Upload the CSV for the graph.", accept=[".csv"], multiple=False)
        first = pick_first(files=files.files, _after=files)
        send_text(text="got it", _after=first)
        return {"name": first.name}

    bg = Background(lambda: run(pipeline, inputs={}))
    _answer_next("Upload the CSV for the graph.", text=f"file://{csv}")
    assert bg.join(120) == {"name": "data.csv"}


async def test_send_file_bytes_and_stream_as_aethergraph_writes_them(
        local_config: AetherConfig, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    with caplog.at_level(logging.INFO, logger="aether_prefect"):
        async with open_session(config=local_config) as context:
            chan = context.channel()
            art = await chan.send_file(file_bytes=b"PK\x03\x04zip", filename="AAPL_export.zip", title="tick data")
            assert await context.artifacts().load_bytes(art.uri) == b"PK\x03\x04zip" and art.name == "AAPL_export.zip"
            assert await chan.send_file("https://example.com/r.pdf", title="report") is None  # AG's url argument
            async with chan.stream() as s:
                await s.delta("• update 1\n")
                await s.delta("• update 2\n")
                await s.end(full_text="Live report complete.\n• update 1\n• update 2\n")
            async with chan.stream() as s:
                await s.delta("never ended")  # as in AetherGraph: nothing is sent without end()
            with pytest.raises(ValidationError, match="one of"):
                await chan.send_file(file_bytes=b"x", url="https://example.com/x")
    logged = [r.getMessage() for r in caplog.records]
    assert f"tick data: {art.uri}" in logged and "report: https://example.com/r.pdf" in logged
    assert "Live report complete.\n• update 1\n• update 2\n" in logged and "never ended" not in logged


async def test_write_text_as_the_concept_guide_writes_it(local_config: AetherConfig) -> None:
    """AetherGraph's concept guide saves with ``arts.write_text(name, content=...)`` and records the returned ref."""
    async with open_session(config=local_config) as ctx:
        ref = await ctx.artifacts().write_text("spec_1.json", content="{'steps': 3}")
        await ctx.memory().record(kind="job_submitted", data={"spec_ref": ref})
        assert isinstance(ref, str) and await ctx.artifacts().load_text(ref) == "{'steps': 3}"
        (art,) = [a for a in await ctx.artifacts().list(view="run") if a.uri == ref]
        assert art.name == "spec_1.json" and art.kind == "text"
        with pytest.raises(ValidationError):
            await ctx.artifacts().write_text("", content="x")
