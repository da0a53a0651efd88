"""Durable calls (#19): the journal's per-call encoding (argument binding, fingerprints, entry bodies) gives what
the slower general paths give, and entries fingerprinted the older way still replay."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
from prefect import flow
from prefect.runtime import flow_run as runtime_flow_run
from pydantic import BaseModel

import aether_prefect.services.journal as journal_pkg
from aether_prefect import NodeContext, aether_task
from aether_prefect.blocks import AetherConfig
from aether_prefect.services.journal import ENV_REPLAY_FROM
from aether_prefect.services.journal._bind import binder
from aether_prefect.services.journal._entry import (Entry, entry_body, fingerprint, legacy_fingerprint,
                                                    older_fingerprints, secret_needles)
from aether_prefect.services.journal._log import LOG_SUFFIX, entries_at
from aether_prefect.services.llm import LLMService
from aether_prefect.services.mcp import MCPClient
from aether_prefect.services.stores import open_store
from tests.servers.openai_server import FakeOpenAI

_CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((), {}), (("hi",), {}), (("hi",), {"model": "m"}), (("hi", "m"), {}), ((), {"messages": "hi"}),
    (("hi",), {"messages": "again"}), (("hi",), {"temperature": 0.3, "kw": 1}), (("a", "b", "c", "d"), {}),
    (("hi",), {"on_delta": print, "extra": 2}), ((), {"tool": "t", "params": {}}), (("t", {"a": 1}), {}),
    (("t",), {"self": 1}), ((), {"method": "GET", "path": "/x"}), (("POST",), {}), (("x", "y"), {"texts": ["a"]}),
]


@pytest.mark.parametrize("method", [LLMService.chat, LLMService.chat_stream, LLMService.embed, LLMService.raw,
                                    MCPClient.call], ids=lambda m: m.__qualname__)
def test_binder_gives_what_signature_bind_gives(method: Any) -> None:
    fn = method.__wrapped__
    sig, bind = inspect.signature(fn), binder(inspect.signature(fn))
    for args, kwargs in _CALLS:
        try:
            bound = sig.bind("svc", *args, **kwargs)
            bound.apply_defaults()
            want: dict[str, Any] | None = dict(bound.arguments)
        except TypeError:
            want = None
        assert bind("svc", args, kwargs) == want, (args, kwargs)


def test_fingerprint_is_stable_and_separates_requests() -> None:
    request = {"kind": "chat", "model": "m", "args": {"messages": [{"role": "user", "content": "é \"q\""}],
                                                      "tools": None, "kw": {"temperature": 0.5}, "tags": {"b", "a"}}}
    same = {"args": {"kw": {"temperature": 0.5}, "tags": {"a", "b"}, "tools": None,
                     "messages": [{"content": "é \"q\"", "role": "user"}]}, "model": "m", "kind": "chat"}
    assert fingerprint(request) == fingerprint(same)  # key order and set order do not matter
    assert fingerprint(request) != fingerprint({**request, "model": "n"})
    assert len(fingerprint(request)) == 32  # BLAKE2b-128
    older = list(older_fingerprints(request))  # sha256 over orjson's text, then over json.dumps's
    assert all(len(f) == 64 for f in older) and older[0] == older[1] == legacy_fingerprint(request)
    tiny = {"kind": "chat", "args": {"kw": {"temperature": 1e-05}}}  # orjson's text differs (0.00001 vs 1e-05)
    assert len(set(older_fingerprints(tiny))) == 2 and list(older_fingerprints(tiny))[1] == legacy_fingerprint(tiny)
    odd = {"kind": "chat", "args": {1: "int key"}}  # orjson refuses: json.dumps's text stands in
    assert list(older_fingerprints(odd)) == [legacy_fingerprint(odd)]
    assert fingerprint(odd) != fingerprint({"kind": "chat", "args": {2: "int key"}})


class _Model(BaseModel):
    name: str
    n: int


def test_entry_body_reads_back_as_the_model_would_write_it() -> None:
    reply = {"id": "x", "choices": [{"message": {"content": "hé"}}], "usage": {"total_tokens": 3}}
    fields: dict[str, Any] = {"usage": [("default", "m", 1, 2, 3)], "pieces": ["h", "é"], "last_response": reply}
    for result in [("text", {"total_tokens": 3}), [[0.5, 1.0]], {"content": [{"text": "ok"}]}, _Model(name="a", n=1),
                   {"n": {1: "int key"}}]:
        data = entry_body("chat", 4, "f" * 64, result, **fields)
        assert data is not None
        got = Entry.from_body(data)
        model = Entry(kind="chat", position=4, fingerprint="f" * 64, result=result, **fields)
        want = Entry.from_body(model.model_dump_json().encode())
        assert got is not None and want is not None
        assert got.model_dump(exclude={"created"}) == want.model_dump(exclude={"created"})
    assert entry_body("chat", 0, "f" * 64, object()) is None  # not JSON: not journaled


@pytest.mark.parametrize("secret", ["sk-plain-0123", 'sk-"quoted"\\x', "sk-é-unicode", 'sk-é-and-"quote"'])
def test_entry_body_refuses_a_secret_in_any_spelling(secret: str) -> None:
    needles = [n.encode() for n in secret_needles([secret])]
    assert entry_body("chat", 0, "f" * 64, ("fine", {})) is not None
    for result in [(f"echo {secret}", {}), _Model(name=secret, n=1)]:
        assert entry_body("chat", 0, "f" * 64, result, needles=needles) is None
        assert entry_body("mcp.call", 0, "f" * 64, {"text": secret}, needles=needles) is None


_OLDER_WRITERS = {"sha256 of json.dumps": legacy_fingerprint, "sha256 of orjson": lambda r: next(older_fingerprints(r)),
                  "BLAKE2b of the bound request": fingerprint}


@pytest.mark.parametrize("older", list(_OLDER_WRITERS))
def test_entries_fingerprinted_the_older_way_still_replay(llm_server: FakeOpenAI, local_config: AetherConfig,
                                                          monkeypatch: pytest.MonkeyPatch, older: str) -> None:
    @aether_task(config=local_config.model_copy(update={"llm": {"default": llm_server.profile()}}))
    async def chain(*, context: NodeContext) -> list[str]:
        return [(await context.llm().chat(f"link {i}", temperature=1e-05))[0] for i in range(3)]

    @flow
    async def pipeline() -> tuple[str, list[str]]:
        return str(runtime_flow_run.id), await chain()

    with monkeypatch.context() as m:  # journal as the versions before did, on a request where their texts differ
        bind = binder(inspect.signature(LLMService.chat.__wrapped__))
        m.setattr(journal_pkg, "_fingerprint", lambda kind, svc, args, kwargs: _OLDER_WRITERS[older](
            journal_pkg._request(kind, svc, bind(svc, args, kwargs))))
        first_id, first = asyncio.run(pipeline())
    store = open_store(local_config.store)
    (log,) = [k for k in store.list_keys("journal/") if k.endswith(LOG_SUFFIX)]
    assert len({e.fingerprint for e in entries_at(store, log)}) == 3
    monkeypatch.setenv(ENV_REPLAY_FROM, first_id)
    _, again = asyncio.run(pipeline())
    assert again == first and len(llm_server.requests) == 3  # all three replayed
