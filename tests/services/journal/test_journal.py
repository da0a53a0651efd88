"""Durable calls (#19): a retry replays journaled LLM and MCP calls instead of paying again.

Real components only: the loopback OpenAI-compatible server, the demo MCP server over stdio, the session's
Prefect server, a local object store.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.runtime import flow_run as runtime_flow_run

from aether_prefect import NodeContext, aether_task
from aether_prefect.blocks import AetherConfig
from aether_prefect.errors import ValidationError
from aether_prefect.services.journal import ENV_REPLAY_FROM, prune
from aether_prefect.services.journal._entry import Entry
from aether_prefect.services.journal._log import LOG_SUFFIX, entries_at, entry_key
from aether_prefect.services.llm._usage import read_task_tables
from aether_prefect.services.stores import open_store
from aether_prefect.services.stores.local import LocalStore
from tests.services.journal._counting_server import block as counting_block
from tests.servers.openai_server import FakeOpenAI, Reply, chat_completion

CALLS = 5


def _cfg(server: FakeOpenAI, local_config: AetherConfig, **profile: Any) -> AetherConfig:
    return local_config.model_copy(update={"llm": {"default": server.profile(**profile)}})


def _chat_requests(server: FakeOpenAI) -> int:
    return sum(1 for r in server.requests if r.path.endswith("/chat/completions"))


def _usage(flow_run_id: str) -> dict[str, int]:
    """The flow run's usage tables summed (one per attempt's context)."""
    tables = asyncio.run(read_task_tables(flow_run_id))
    keys = ("calls", "total_tokens", "replayed", "tokens_saved")
    return {k: sum(getattr(r, k) for t in tables for r in t) for k in keys}


def test_task_retry_replays_five_calls_and_counts_tokens_once(llm_server: FakeOpenAI,
                                                               local_config: AetherConfig) -> None:
    attempts: list[list[str]] = []

    @aether_task(config=_cfg(llm_server, local_config), retries=1)
    async def five_calls(topic: str, *, context: NodeContext) -> list[str]:
        texts = [(await context.llm().chat(f"{topic} step {i}"))[0] for i in range(CALLS)]
        attempts.append(texts)
        if len(attempts) == 1:
            raise RuntimeError("database write failed")  # after the paid-for calls
        return texts

    @flow
    async def pipeline() -> tuple[str, list[str]]:
        return str(runtime_flow_run.id), await five_calls("durable")

    flow_run_id, texts = asyncio.run(pipeline())
    assert texts == attempts[0] == [f"echo: durable step {i}" for i in range(CALLS)]
    assert len(attempts) == 2
    assert _chat_requests(llm_server) == CALLS  # not 10
    usage = _usage(flow_run_id)
    one_attempt = CALLS * (3 + 4)  # the fake server counts words: "durable step i" -> 3, "echo: durable step i" -> 4
    assert usage == {"calls": CALLS, "total_tokens": one_attempt, "replayed": CALLS, "tokens_saved": one_attempt}


def test_stream_replays_text_through_on_delta(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    seen: list[list[str]] = []

    @aether_task(config=_cfg(llm_server, local_config), retries=1)
    async def streamer(*, context: NodeContext) -> str:
        pieces: list[str] = []
        text, usage = await context.llm().chat_stream("one two three four", on_delta=pieces.append)
        seen.append(pieces)
        if len(seen) == 1:
            raise RuntimeError("fail after the stream")
        return text

    @flow
    async def pipeline() -> str:
        return await streamer()

    assert asyncio.run(pipeline()) == "echo: one two three four"
    assert len(seen) == 2 and seen[1] == seen[0] and len(seen[0]) > 1
    assert _chat_requests(llm_server) == 1


def test_tool_calls_in_the_reply_are_replayed(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    tool_calls = [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}]
    llm_server.script("/chat/completions", [Reply(json=chat_completion("fake-chat", None, 5, 2, tool_calls=tool_calls,
                                                                       finish_reason="tool_calls"))])
    replies: list[Any] = []
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]

    @aether_task(config=_cfg(llm_server, local_config), retries=1)
    async def agent(*, context: NodeContext) -> Any:
        llm = context.llm()
        await llm.chat("find x", tools=tools)
        replies.append(llm.last_response["choices"][0]["message"]["tool_calls"])
        if len(replies) == 1:
            raise RuntimeError("tool failed")
        return replies[-1]

    @flow
    async def pipeline() -> Any:
        return await agent()

    assert asyncio.run(pipeline()) == tool_calls == replies[0]
    assert _chat_requests(llm_server) == 1


def test_first_mismatch_ends_replay_for_the_attempt(llm_server: FakeOpenAI, local_config: AetherConfig,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    attempt = {"n": 0}

    @aether_task(config=_cfg(llm_server, local_config), retries=1)
    async def drifting(*, context: NodeContext) -> list[str]:
        attempt["n"] += 1
        out = []
        for i in range(CALLS):
            prompt = f"changed {i}" if attempt["n"] == 2 and i == 2 else f"same {i}"
            out.append((await context.llm().chat(prompt))[0])
        if attempt["n"] == 1:
            raise RuntimeError("fail")
        return out

    @flow
    async def pipeline() -> list[str]:
        return await drifting()

    with caplog.at_level("WARNING"):
        out = asyncio.run(pipeline())
    assert out == ["echo: same 0", "echo: same 1", "echo: changed 2", "echo: same 3", "echo: same 4"]
    assert _chat_requests(llm_server) == CALLS + 3  # positions 2, 3, 4 went live: replay ended at the mismatch
    assert [r.json["messages"][-1]["content"] for r in llm_server.requests[CALLS:]] == ["changed 2", "same 3", "same 4"]
    notes = [r.getMessage() for r in caplog.records if "replay ends" in r.getMessage()]
    assert len(notes) == 1 and "position 2" in notes[0]


@pytest.mark.parametrize("where", ["task", "profile", "call"])
def test_durable_false_goes_live_every_attempt(llm_server: FakeOpenAI, local_config: AetherConfig, where: str) -> None:
    attempts: list[int] = []
    cfg = _cfg(llm_server, local_config, **({"durable": False} if where == "profile" else {}))
    task_kw: dict[str, Any] = {"durable": False} if where == "task" else {}
    call_kw: dict[str, Any] = {"durable": False} if where == "call" else {}

    @aether_task(config=cfg, retries=1, **task_kw)
    async def live(*, context: NodeContext) -> int:
        for i in range(2):
            await context.llm().chat(f"q {i}", **call_kw)
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("fail")
        return len(attempts)

    @flow
    async def pipeline() -> int:
        return await live()

    assert asyncio.run(pipeline()) == 2
    assert _chat_requests(llm_server) == 4
    assert all("durable" not in r.json for r in llm_server.requests)  # the flag never reaches the provider


def test_bad_durable_flag_is_rejected(local_config: AetherConfig) -> None:
    with pytest.raises(ValidationError, match="durable"):
        aether_task(config=local_config, durable="yes")(lambda *, context: None)


def test_embed_and_raw_replay(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    results: list[Any] = []

    @aether_task(config=_cfg(llm_server, local_config), retries=1)
    async def mixed(*, context: NodeContext) -> Any:
        llm = context.llm()
        vectors = await llm.embed(["alpha", "beta gamma"])
        models = await llm.raw(method="GET", path="/models", headers={"X-Attempt": str(len(results))})
        results.append((vectors, models))
        if len(results) == 1:
            raise RuntimeError("fail")
        return results[-1]

    @flow
    async def pipeline() -> Any:
        return await mixed()

    assert asyncio.run(pipeline()) == results[0]
    assert len(llm_server.requests) == 2  # one embeddings, one /models: the retry sent nothing


def test_mcp_tool_runs_once_per_logical_call(tmp_path: Path, local_config: AetherConfig) -> None:
    counter = tmp_path / "invocations.txt"
    cfg = local_config.model_copy(update={"mcp": {"default": counting_block()}})
    attempts: list[list[int]] = []

    @aether_task(config=cfg, retries=2)
    async def side_effects(*, context: NodeContext) -> list[int]:
        counts = [(await context.mcp().call("tally", {"path": str(counter), "label": f"ticket {i}"}))["count"]
                  for i in range(3)]
        attempts.append(counts)
        if len(attempts) < 3:
            raise RuntimeError("fail after the tools ran")
        return counts

    @flow
    async def pipeline() -> list[int]:
        return await side_effects()

    assert asyncio.run(pipeline()) == [1, 2, 3]
    assert attempts == [[1, 2, 3]] * 3
    assert counter.read_text().splitlines() == ["ticket 0", "ticket 1", "ticket 2"]  # 1 invocation per logical call


def test_mcp_server_durable_false_calls_every_attempt(tmp_path: Path, local_config: AetherConfig) -> None:
    counter = tmp_path / "invocations.txt"
    cfg = local_config.model_copy(update={"mcp": {"default": counting_block(durable=False)}})
    attempts: list[int] = []

    @aether_task(config=cfg, retries=1)
    async def pure(*, context: NodeContext) -> int:
        attempts.append((await context.mcp().call("tally", {"path": str(counter)}))["count"])
        if len(attempts) == 1:
            raise RuntimeError("fail")
        return attempts[-1]

    @flow
    async def pipeline() -> int:
        return await pure()

    assert asyncio.run(pipeline()) == 2 and len(counter.read_text().splitlines()) == 2


def test_two_runs_of_one_task_with_equal_params_keep_separate_journals(llm_server: FakeOpenAI,
                                                                      local_config: AetherConfig) -> None:
    llm_server.script("/chat/completions", [Reply(json=chat_completion("fake-chat", "first", 1, 1)),
                                            Reply(json=chat_completion("fake-chat", "second", 1, 1))])
    failed: list[bool] = []

    @aether_task(config=_cfg(llm_server, local_config))
    async def ask(q: str, *, context: NodeContext) -> str:
        return (await context.llm().chat(q))[0]

    @flow(retries=1)
    async def pipeline() -> list[str]:
        out = [await ask("same"), await ask("same")]
        if not failed:
            failed.append(True)
            raise RuntimeError("flow fails after both tasks")
        return out

    assert asyncio.run(pipeline()) == ["first", "second"]  # the flow-run retry replayed each from its own journal
    assert _chat_requests(llm_server) == 2


def test_replay_from_an_earlier_flow_run(llm_server: FakeOpenAI, local_config: AetherConfig,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(llm_server, local_config)

    @aether_task(config=cfg)
    async def chain(*, context: NodeContext) -> list[str]:
        llm = context.llm()
        first = (await llm.chat("draft"))[0]
        return [first, (await llm.chat(f"improve {first}"))[0]]

    @flow
    async def pipeline() -> tuple[str, list[str]]:
        return str(runtime_flow_run.id), await chain()

    first_id, first = asyncio.run(pipeline())
    assert _chat_requests(llm_server) == 2
    _, again = asyncio.run(pipeline())  # a new flow run pays again
    assert again == first and _chat_requests(llm_server) == 4
    monkeypatch.setenv(ENV_REPLAY_FROM, first_id)
    replay_id, replayed = asyncio.run(pipeline())
    assert replayed == first and replay_id != first_id
    assert _chat_requests(llm_server) == 4
    assert _usage(replay_id)["replayed"] == 2


def test_secrets_never_reach_the_journal(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    cfg = _cfg(llm_server, local_config)

    @aether_task(config=cfg)
    async def leaky(*, context: NodeContext) -> None:
        await context.llm().chat(f"repeat {llm_server.api_key}")  # the echo reply carries the key
        await context.llm().chat("harmless")

    @flow
    async def pipeline() -> None:
        await leaky()

    asyncio.run(pipeline())
    store = open_store(local_config.store)
    keys = list(store.list_keys("journal/"))
    assert [e.position for k in keys for e in entries_at(store, k)] == [1]  # only the harmless call was journaled
    blob = b"".join(store.get_bytes(k) for k in keys)
    assert llm_server.api_key.encode() not in blob and b"harmless" in blob


def test_prune_removes_only_old_flow_runs(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    @aether_task(config=_cfg(llm_server, local_config))
    async def one(*, context: NodeContext) -> None:
        await context.llm().chat("x")

    @flow
    async def pipeline() -> None:
        await one()

    asyncio.run(pipeline())
    store = open_store(local_config.store)
    assert prune(store) == (0, 0)  # fresh: kept
    before = list(store.list_keys("journal/"))
    assert sum(k.endswith(LOG_SUFFIX) for k in before) == 1  # the attempt's log, next to the ordinal claims
    assert prune(store, dry_run=True, now=time.time() + 8 * 24 * 3600) == (1, len(before))
    assert list(store.list_keys("journal/")) == before
    assert prune(store, now=time.time() + 8 * 24 * 3600) == (1, len(before))
    assert list(store.list_keys("journal/")) == []


def test_outside_a_run_nothing_is_journaled(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    from aether_prefect.session import open_session

    async def go() -> None:
        async with open_session(config=_cfg(llm_server, local_config)) as ctx:
            await ctx.llm().chat("hi")
            await ctx.llm().chat("hi")

    asyncio.run(go())
    assert _chat_requests(llm_server) == 2
    assert list(open_store(local_config.store).list_keys("journal/")) == []


def test_cli_journal_prune(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    import os
    import subprocess
    import uuid

    cfg = _cfg(llm_server, local_config)

    @aether_task(config=cfg)
    async def one(*, context: NodeContext) -> None:
        await context.llm().chat("x")

    @flow
    async def pipeline() -> None:
        await one()

    asyncio.run(pipeline())
    name = f"journal-{uuid.uuid4().hex[:8]}"
    cfg.save(name)
    store = open_store(local_config.store)
    root = Path(__file__).resolve().parents[3]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aether_prefect.cli", "journal", "prune", name, *args], cwd=root,
                              capture_output=True, text=True, timeout=180, env=dict(os.environ))

    kept = cli()
    assert kept.returncode == 0, kept.stderr
    assert "deleted the call journals of 0 flow run(s)" in kept.stdout and list(store.list_keys("journal/"))
    gone = cli("--older-than-days", "0")
    assert gone.returncode == 0, gone.stderr
    assert "deleted the call journals of 1 flow run(s)" in gone.stdout
    assert list(store.list_keys("journal/")) == []
    assert llm_server.api_key not in kept.stdout + kept.stderr + gone.stdout + gone.stderr


def test_a_failing_store_means_live_calls_not_a_failed_task(llm_server: FakeOpenAI, local_config: AetherConfig,
                                                            tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    from aether_prefect.blocks import AetherObjectStore

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store's folder should be")
    cfg = _cfg(llm_server, local_config).model_copy(
        update={"store": AetherObjectStore(backend="local", root=str(blocker))})
    attempts: list[str] = []

    @aether_task(config=cfg, retries=1)
    async def unjournaled(*, context: NodeContext) -> str:
        text = (await context.llm().chat("still answered"))[0]
        await context.llm().chat("again")
        attempts.append(text)
        if len(attempts) == 1:
            raise RuntimeError("fail")
        return text

    @flow
    async def pipeline() -> str:
        return await unjournaled()

    with caplog.at_level("WARNING"):
        assert asyncio.run(pipeline()) == "echo: still answered"
    assert _chat_requests(llm_server) == 4  # no journal: both attempts paid, neither failed because of it
    assert sum("call journal off" in r.getMessage() for r in caplog.records) == 2  # once per attempt


class _SlowStore(LocalStore):
    """A store that cannot append (as S3) and whose puts take a while (a slow disk or bucket): entries go one
    object each through the background writer, and the attempt must wait for them."""

    def open_log(self, key: str, *, reserve: int = 0) -> None:  # type: ignore[override]
        return None

    def put_small(self, key: str, data: bytes) -> None:
        time.sleep(0.3)
        super().put_small(key, data)


def _entries(store: Any) -> list[Entry]:
    return [e for k in store.list_keys("journal/") for e in entries_at(store, k)]


@pytest.mark.parametrize("where", ["local log", "slow store without appends", "s3"])
def test_entries_are_stored_when_the_task_reports(llm_server: FakeOpenAI, local_config: AetherConfig,
                                                  tmp_path: Path, request: pytest.FixtureRequest, where: str) -> None:
    if where == "s3":
        cfg = _cfg(llm_server, local_config).model_copy(update={"store": request.getfixturevalue("s3_store_block")})
        store, task_kw = open_store(cfg.store), {}
    elif where == "local log":
        cfg = _cfg(llm_server, local_config)
        store, task_kw = open_store(cfg.store), {}
    else:
        cfg = _cfg(llm_server, local_config)
        store = _SlowStore(tmp_path / "slow")
        task_kw = {"store": store}

    @aether_task(config=cfg, **task_kw)
    async def three(*, context: NodeContext) -> None:
        for i in range(3):
            await context.llm().chat(f"kept {i}")

    @flow
    async def pipeline() -> None:
        await three()

    asyncio.run(pipeline())
    keys = list(store.list_keys("journal/"))
    assert sorted(e.position for e in _entries(store)) == [0, 1, 2]
    logs = [k for k in keys if k.endswith(LOG_SUFFIX)]
    assert len(logs) == (1 if where == "local log" else 0)  # one log per attempt, or one object per entry
    assert sum(k.endswith(".json") for k in keys) == (0 if where == "local log" else 3)


def _chain_run(llm_server: FakeOpenAI, local_config: AetherConfig, calls: int = 3) -> Any:
    @aether_task(config=_cfg(llm_server, local_config))
    async def chain(*, context: NodeContext) -> list[str]:
        return [(await context.llm().chat(f"link {i}"))[0] for i in range(calls)]

    @flow
    async def pipeline() -> tuple[str, list[str]]:
        return str(runtime_flow_run.id), await chain()

    return pipeline


def _live_prompts(llm_server: FakeOpenAI, since: int) -> list[str]:
    return [r.json["messages"][-1]["content"] for r in llm_server.requests[since:]]


@pytest.mark.parametrize("damage", ["cut short", "zeroed"])
def test_a_torn_log_tail_never_replays(llm_server: FakeOpenAI, local_config: AetherConfig,
                                       monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    """What a machine crash can leave of the unflushed end of a log (cut short, or zeroed) goes live; the records
    before it replay."""
    pipeline = _chain_run(llm_server, local_config)
    first_id, first = asyncio.run(pipeline())
    store = open_store(local_config.store)
    (log,) = [k for k in store.list_keys("journal/") if k.endswith(LOG_SUFFIX)]
    whole = store.get_bytes(log)
    last = len(whole) - len(whole.rsplit(b"AJL2", 1)[1]) - 4  # where the third record starts
    torn = whole[:len(whole) - 7] if damage == "cut short" else whole[:last] + b"\0" * (len(whole) - last)
    store.put_bytes(log, torn)
    assert [e.position for e in entries_at(store, log)] == [0, 1]
    monkeypatch.setenv(ENV_REPLAY_FROM, first_id)
    _, again = asyncio.run(pipeline())
    assert again == first
    assert _live_prompts(llm_server, 3) == ["link 2"]


def test_a_damaged_record_hides_the_rest_of_its_log(llm_server: FakeOpenAI, local_config: AetherConfig,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = _chain_run(llm_server, local_config)
    first_id, first = asyncio.run(pipeline())
    store = open_store(local_config.store)
    (log,) = [k for k in store.list_keys("journal/") if k.endswith(LOG_SUFFIX)]
    whole = bytearray(store.get_bytes(log))
    second = whole.index(b"AJL2", 4)
    whole[second + 60] ^= 1  # one flipped bit in the second record's body
    store.put_bytes(log, bytes(whole))
    monkeypatch.setenv(ENV_REPLAY_FROM, first_id)
    _, again = asyncio.run(pipeline())
    assert again == first
    assert _live_prompts(llm_server, 3) == ["link 1", "link 2"]


def test_entries_of_the_one_object_per_entry_layout_still_replay(llm_server: FakeOpenAI,
                                                                 local_config: AetherConfig,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Journals written before the log (format 2: one digest-framed object per entry), torn ones going live."""
    pipeline = _chain_run(llm_server, local_config)
    first_id, first = asyncio.run(pipeline())
    store = open_store(local_config.store)
    (log,) = [k for k in store.list_keys("journal/") if k.endswith(LOG_SUFFIX)]
    folder = log.rsplit("/", 1)[0] + "/"
    for entry in entries_at(store, log):  # rewrite the journal in the old layout
        blob = entry.encode([])
        assert blob is not None
        store.put_bytes(entry_key(folder, entry.position), blob if entry.position != 2 else blob[:-3])
    store.delete(log)
    monkeypatch.setenv(ENV_REPLAY_FROM, first_id)
    _, again = asyncio.run(pipeline())
    assert again == first
    assert _live_prompts(llm_server, 3) == ["link 2"]


def test_every_attempts_log_is_read(llm_server: FakeOpenAI, local_config: AetherConfig) -> None:
    """Attempt 1 pays for calls 0-1; attempt 2 replays call 0, rewords call 1 (replay ends) and pays for 1-3 in its
    own log; attempt 3 replays all four from both logs, and at position 1 the later attempt's entry wins."""
    attempts: list[list[str]] = []

    @aether_task(config=_cfg(llm_server, local_config), retries=2)
    async def growing(*, context: NodeContext) -> list[str]:
        n = len(attempts) + 1
        prompts = [f"step {i}" for i in range(2 if n == 1 else 4)]
        if n > 1:
            prompts[1] = "step 1, reworded"  # a changed prompt: attempt 2 goes live from position 1
        attempts.append([(await context.llm().chat(p))[0] for p in prompts])
        if n < 3:
            raise RuntimeError("fail after the calls")
        return attempts[-1]

    @flow
    async def pipeline() -> list[str]:
        return await growing()

    out = asyncio.run(pipeline())
    assert _live_prompts(llm_server, 0) == ["step 0", "step 1", "step 1, reworded", "step 2", "step 3"]
    assert out == attempts[1] == ["echo: step 0", "echo: step 1, reworded", "echo: step 2", "echo: step 3"]
    assert len(llm_server.requests) == 5  # attempt 3 sent nothing
    store = open_store(local_config.store)
    logs = [k for k in store.list_keys("journal/") if k.endswith(LOG_SUFFIX)]
    assert len(logs) == 2  # attempt 3 only replayed: it opened no log
    assert sorted(len(entries_at(store, k)) for k in logs) == [2, 3]


def test_entry_decode_rejects_every_partial_or_altered_blob() -> None:
    blob = Entry(kind="chat", position=0, fingerprint="f" * 64, result=["text", {"total_tokens": 3}]).encode([])
    assert blob is not None and Entry.decode(blob) is not None
    assert all(Entry.decode(blob[:n]) is None for n in range(len(blob)))
    assert all(Entry.decode(blob[:n] + b"#" + blob[n + 1:]) is None for n in range(len(blob)) if blob[n:n + 1] != b"#")
    legacy = blob.partition(b"\n")[2]  # an entry of format 1 (no digest) is not replayed
    assert Entry.decode(legacy) is None


def test_log_records_stop_at_the_first_partial_or_altered_byte() -> None:
    from aether_prefect.services.journal._log import frame, records

    bodies = [b'{"a": 1}', b"second body", b""]
    blob = b"".join(map(frame, bodies))
    assert list(records(blob)) == bodies
    ends = [len(b"".join(map(frame, bodies[:i]))) for i in range(4)]
    for n in range(len(blob)):  # cut anywhere: exactly the whole records before the cut
        assert list(records(blob[:n])) == [b for b, end in zip(bodies, ends[1:]) if end <= n]
    for n in range(ends[1]):  # any altered byte of the first record hides the whole log
        assert list(records(blob[:n] + bytes([blob[n] ^ 0x40]) + blob[n + 1:])) == []


def test_logs_written_before_the_crc_records_still_read() -> None:
    """Logs of the earlier format (``AJL1`` records checked by sha256) read the same, torn and altered tails too."""
    import hashlib
    import struct

    from aether_prefect.services.journal._log import records

    bodies = [b'{"a": 1}', b"second body"]
    blob = b"".join(struct.pack(">4sI32s", b"AJL1", len(b), hashlib.sha256(b).digest()) + b for b in bodies)
    assert list(records(blob)) == bodies
    assert list(records(blob[:-1])) == bodies[:1]
    assert list(records(blob[:50] + bytes([blob[50] ^ 1]) + blob[51:])) == bodies[:1]
