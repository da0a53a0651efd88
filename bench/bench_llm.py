"""LLM service bench: 200 concurrent chat calls vs raw httpx, per-call overhead, and the cost of budget checks.

Per provider (#24): the client-side cost of one ``chat`` through an in-process transport, ours vs raw httpx
sending the same request of the same wire format (OpenAI chat, Responses, Azure, Anthropic Messages, Gemini),
in paired rounds; the goal is within 10%. ``--providers`` runs only that part (no Prefect server needed).

The OpenAI-compatible server runs in its own process (so it does not share the GIL with the client side).
200-chat throughput: warm-up, then ROUNDS rounds running every arm once in a rotated/reversed order, the median
of per-round ratios, client CPU per call, and the load average at start and end (see ``rounds``).
Run: ``.venv/bin/python bench/bench_llm.py``.
"""

from __future__ import annotations

import _common as common  # noqa: I001 - must come first: sets the environment

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tests.servers.openai_server import FAKE_API_KEY
from tests.servers.prefect_server import free_port

CONCURRENT = 200
#: Rounds of the 200-chat comparisons (every arm once per round).
ROUNDS = int(os.environ.get("BENCH_CHAT_ROUNDS", "12"))
SEQUENTIAL = 60


def start_llm_server() -> tuple[subprocess.Popen[bytes], str]:
    """The fake OpenAI server in a subprocess; returns (process, base_url)."""
    port = free_port()
    code = (f"import time; from tests.servers.openai_server import FakeOpenAI; FakeOpenAI(port={port}).start(); "
            "time.sleep(10**6)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=str(common.ROOT), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1"
    for _ in range(300):
        try:
            httpx.get(f"{base}/models", headers={"Authorization": f"Bearer {FAKE_API_KEY}"}, timeout=1)
            return proc, base
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("fake OpenAI server did not start")


def _body(i: int) -> dict[str, Any]:
    return {"model": "fake-chat", "messages": [{"role": "user", "content": f"question number {i}"}]}


async def raw_batch(client: httpx.AsyncClient | list[httpx.AsyncClient], base: str) -> float:
    """Wall time of CONCURRENT raw POSTs (parse JSON, read content and usage, like the service does).

    ``client`` may be a list of clients, used in turn (the same spreading as our client pool).
    """
    headers = {"Authorization": f"Bearer {FAKE_API_KEY}"}
    clients = client if isinstance(client, list) else [client]

    async def one(i: int) -> str:
        r = await clients[i % len(clients)].post(f"{base}/chat/completions", json=_body(i), headers=headers, timeout=60)
        r.raise_for_status()
        data = r.json()
        _ = data["usage"]["total_tokens"]
        return str(data["choices"][0]["message"]["content"])

    t = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(CONCURRENT)))
    return time.perf_counter() - t


WARMUP = 2

Batch = Callable[[], Awaitable[float]]


async def ours_batch(llm: Any, **kw: Any) -> float:
    """Wall time of CONCURRENT ``llm.chat`` calls."""
    t = time.perf_counter()
    await asyncio.gather(*(llm.chat(f"question number {i}", **kw) for i in range(CONCURRENT)))
    return time.perf_counter() - t


async def rounds(arms: dict[str, Batch], n: int = ROUNDS) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(wall s, client CPU s) per arm and round; every arm once per round, order rotated and reversed."""
    names = list(arms)
    for _ in range(WARMUP):
        for name in names:
            await arms[name]()
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    for r in range(n):
        k = r % len(names)
        order = names[k:] + names[:k]
        if (r // len(names)) % 2:
            order.reverse()
        for name in order:
            c = time.process_time()
            wall[name].append(await arms[name]())
            cpu[name].append(time.process_time() - c)
    return wall, cpu


def ratio_rows(label: str, wall: dict[str, list[float]], cpu: dict[str, list[float]], ours: str, base: str,
               target: float) -> list[dict[str, Any]]:
    """Throughput of ``ours`` over ``base``: medians, the median of per-round ratios, and CPU per call."""
    per_round = [b / o for o, b in zip(wall[ours], wall[base])]
    cpu_ours = statistics.median(cpu[ours]) / CONCURRENT * 1e6
    cpu_base = statistics.median(cpu[base]) / CONCURRENT * 1e6
    return [
        common.row(f"{label} (req/s, medians)", CONCURRENT / statistics.median(wall[ours]),
                   CONCURRENT / statistics.median(wall[base]), "req/s"),
        common.row(f"  median of {len(per_round)} per-round throughput ratios", statistics.median(per_round), None,
                   "x", target=target, higher_is_better=True),
        common.row(f"  per-round ratios: min {min(per_round):.2f}, max {max(per_round):.2f}", min(per_round), None,
                   "x"),
        common.row("  client CPU per call (process time / calls)", cpu_ours, cpu_base, "us"),
    ]


def load_row(when: str) -> dict[str, Any]:
    return common.row(f"machine load (1-min loadavg) at {when}", os.getloadavg()[0], None, "load")


Call = Callable[[int], Awaitable[Any]]


async def paired_ms(raw_call: Call, our_call: Call, n: int = SEQUENTIAL) -> tuple[float, float]:
    """Median ms of raw and our calls, measured in alternating pairs so machine load hits both alike."""
    raw_t, ours_t = [], []
    for i in range(n + 5):
        for call, acc in ((raw_call, raw_t), (our_call, ours_t)):
            t = time.perf_counter()
            await call(i)
            if i >= 5:
                acc.append((time.perf_counter() - t) * 1000)
    return statistics.median(raw_t), statistics.median(ours_t)


async def client_overhead_rows(config: Any) -> list[dict[str, Any]]:
    """Client-side cost only: the same chat through an in-process httpx.MockTransport, ours vs raw httpx."""
    from aether_prefect.services.llm import _http as llm_http
    from aether_prefect.session import open_session

    reply = (b'{"choices": [{"message": {"role": "assistant", "content": "echo"}}], '
             b'"usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}')
    transport = httpx.MockTransport(lambda req: httpx.Response(200, content=reply,
                                                               headers={"content-type": "application/json"}))
    llm_http.use_transport(transport)
    try:
        async with httpx.AsyncClient(transport=transport) as raw, open_session(config=config) as ctx:
            llm = ctx.llm()
            base = llm.base_url
            headers = {"Authorization": f"Bearer {FAKE_API_KEY}"}

            async def raw_one(i: int) -> None:
                (await raw.post(f"{base}/chat/completions", json=_body(i), headers=headers)).json()

            raw_us, ours_us = [], []
            for _ in range(7):
                r, o = await paired_ms(raw_one, lambda i: llm.chat(f"question number {i}"), n=300)
                raw_us.append(r * 1000)
                ours_us.append(o * 1000)
    finally:
        llm_http.use_transport(None)
    raw_med, ours_med = statistics.median(raw_us), statistics.median(ours_us)
    return [common.row("chat, client side only (in-process transport)", ours_med, raw_med, "us"),
            common.row("per-call overhead of the service vs raw httpx", ours_med - raw_med, None, "us")]


#: Canned replies per wire format, and how raw httpx sends and reads that wire format.
_REPLIES = {
    "openai": b'{"choices": [{"message": {"role": "assistant", "content": "echo"}}], '
              b'"usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}',
    "responses": b'{"object": "response", "status": "completed", "output": [{"type": "message", "role": "assistant", '
                 b'"content": [{"type": "output_text", "text": "echo"}]}], '
                 b'"usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4}}',
    "anthropic": b'{"type": "message", "role": "assistant", "content": [{"type": "text", "text": "echo"}], '
                 b'"stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 1}}',
    "gemini": b'{"candidates": [{"content": {"role": "model", "parts": [{"text": "echo"}]}, "finishReason": "STOP"}], '
              b'"usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1, "totalTokenCount": 4}}',
}
_BASE = "http://llm.bench.invalid"


def _raw_request(wire: str, i: int) -> tuple[str, dict[str, Any], dict[str, str], dict[str, str]]:
    """(url, body, headers, params) of the request raw httpx sends for one chat of ``wire``."""
    text = f"question number {i}"
    if wire == "anthropic":
        return (f"{_BASE}/v1/messages", {"model": "m", "max_tokens": 4096, "messages": [{"role": "user", "content": text}]},
                {"x-api-key": FAKE_API_KEY, "anthropic-version": "2023-06-01"}, {})
    if wire == "gemini":
        return (f"{_BASE}/v1beta/models/m:generateContent", {"contents": [{"role": "user", "parts": [{"text": text}]}]},
                {"x-goog-api-key": FAKE_API_KEY}, {})
    if wire == "responses":
        return (f"{_BASE}/responses", {"model": "m", "input": [{"role": "user", "content": text}]},
                {"Authorization": f"Bearer {FAKE_API_KEY}"}, {})
    if wire == "azure":
        return (f"{_BASE}/openai/deployments/m/chat/completions", {"messages": [{"role": "user", "content": text}]},
                {"api-key": FAKE_API_KEY}, {"api-version": "2024-10-21"})
    return (f"{_BASE}/chat/completions", {"model": "m", "messages": [{"role": "user", "content": text}]},
            {"Authorization": f"Bearer {FAKE_API_KEY}"}, {})


def _raw_read(wire: str, data: dict[str, Any]) -> tuple[str, int]:
    """Text and total tokens of a reply, read the way a hand-written client would."""
    if wire == "anthropic":
        return "".join(b["text"] for b in data["content"] if b["type"] == "text"), sum(data["usage"].values())
    if wire == "gemini":
        parts = data["candidates"][0]["content"]["parts"]
        return "".join(p.get("text", "") for p in parts), data["usageMetadata"]["totalTokenCount"]
    if wire == "responses":
        out = [c["text"] for item in data["output"] if item["type"] == "message" for c in item["content"]]
        return "".join(out), data["usage"]["total_tokens"]
    return data["choices"][0]["message"]["content"], data["usage"]["total_tokens"]


async def provider_overhead_rows(rounds: int = 5, n: int = 200) -> list[dict[str, Any]]:
    """Client-side cost per provider: our ``chat`` vs raw httpx of the same wire format, paired rounds."""
    from pydantic import SecretStr

    from aether_prefect.blocks import AetherConfig, AetherLLMProfile
    from aether_prefect.services.llm import _http as llm_http
    from aether_prefect.session import open_session

    def reply(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        wire = ("anthropic" if path.endswith("/messages") else "gemini" if ":generateContent" in path
                else "responses" if path.endswith("/responses") else "openai")
        return httpx.Response(200, content=_REPLIES[wire], headers={"content-type": "application/json"})

    transport = httpx.MockTransport(reply)
    profiles = {
        "openai": dict(provider="openai"), "responses": dict(provider="openai", api="responses"),
        "azure": dict(provider="azure"), "anthropic": dict(provider="anthropic"), "gemini": dict(provider="google"),
        "deepseek": dict(provider="deepseek"), "ollama": dict(provider="ollama"),
    }
    config = AetherConfig(llm={name: AetherLLMProfile(base_url=_BASE, api_key=SecretStr(FAKE_API_KEY), model="m",
                                                      **fields) for name, fields in profiles.items()},
                          kv_namespace=f"bench{os.getpid()}")
    rows = []
    llm_http.use_transport(transport)
    try:
        async with httpx.AsyncClient(transport=transport) as raw, open_session(config=config) as ctx:
            for name in profiles:
                wire = name if name in ("responses", "azure", "anthropic", "gemini") else "openai"
                llm = ctx.llm(name)

                async def raw_one(i: int, wire: str = wire) -> None:
                    url, body, headers, params = _raw_request(wire, i)
                    r = await raw.post(url, json=body, headers=headers, params=params or None)
                    r.raise_for_status()
                    _raw_read(wire, r.json())

                async def ours_one(i: int, llm: Any = llm) -> None:
                    await llm.chat(f"question number {i}")

                ratios, raw_us, ours_us = [], [], []
                for _ in range(rounds):
                    r, o = await paired_ms(raw_one, ours_one, n=n)
                    ratios.append(o / r)
                    raw_us.append(r * 1000)
                    ours_us.append(o * 1000)
                rows.append(common.row(f"chat client-side cost, {name} ({wire} wire) vs raw httpx",
                                       statistics.median(ours_us), statistics.median(raw_us), "us", target=1.10))
                rows.append(common.row(f"  median of {rounds} paired-round ratios, {name}", statistics.median(ratios),
                                       None, "x", target=1.10))
    finally:
        llm_http.use_transport(None)
    return rows


async def main() -> None:
    from pydantic import SecretStr

    from aether_prefect.blocks import AetherConfig, AetherLLMProfile
    from aether_prefect.budgets import LLMBudget
    from aether_prefect.session import open_session

    proc, base = start_llm_server()
    try:
        profile = AetherLLMProfile(base_url=base, api_key=SecretStr(FAKE_API_KEY), model="fake-chat", timeout_s=60)
        flow_profile = profile.model_copy(update={"budget_per_flow_run": LLMBudget(calls=10**9)})
        config = AetherConfig(llm={"default": profile, "flowbudget": flow_profile},
                              kv_namespace=f"bench{os.getpid()}")
        rows = [load_row("start")]
        headers = {"Authorization": f"Bearer {FAKE_API_KEY}"}
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=512, max_keepalive_connections=128)) as raw:

            async def raw_one(i: int) -> None:
                (await raw.post(f"{base}/chat/completions", json=_body(i), headers=headers)).json()

            # Sequential figures first, on fresh connections (a burst of 200 leaves the server slower for a while).
            async with open_session(config=config) as plain, \
                    open_session(config=config, llm_budget=LLMBudget(calls=10**9)) as budgeted:
                await plain.kv().get("warm-up")

                def plain_call(i: int) -> Awaitable[Any]:
                    return plain.llm().chat(f"question number {i}")

                raw_ms, plain_ms = await paired_ms(raw_one, plain_call)
                p1, task_ms = await paired_ms(plain_call, lambda i: budgeted.llm().chat(f"question number {i}"))
                p2, flow_ms = await paired_ms(plain_call, lambda i: plain.llm("flowbudget").chat(f"q {i}"), n=40)
            rows.append(common.row("one chat call over loopback, sequential (median)", plain_ms, raw_ms, "ms"))
            rows.extend(await client_overhead_rows(config))
            rows.extend(await provider_overhead_rows(rounds=3, n=100))
            rows.append(common.row("chat with a task-run budget vs none (median)", task_ms, p1, "ms"))
            rows.append(common.row("chat with a flow-run budget (KV incr) vs none", flow_ms, p2, "ms"))

            async with open_session(config=config) as ctx:
                llm = ctx.llm()
                wall, cpu = await rounds({"raw": lambda: raw_batch(raw, base), "ours": lambda: ours_batch(llm)})
            rows += ratio_rows(f"throughput, {CONCURRENT} concurrent chats, ours vs raw httpx", wall, cpu, "ours",
                               "raw", target=0.95)
        rows.append(load_row("end"))
        common.report("llm", rows)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def start_server(module: str, cls: str, probe: str, headers: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """A loopback provider server (tests/servers/<module>.py) in a subprocess; returns (process, root URL)."""
    port = free_port()
    code = f"import time; from tests.servers.{module} import {cls}; {cls}(port={port}).start(); time.sleep(10**6)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=str(common.ROOT), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    root = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            httpx.get(f"{root}{probe}", headers=headers, timeout=1)
            return proc, root
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{cls} did not start")


async def provider_loopback_rows(n: int = 60, rounds: int = 3) -> list[dict[str, Any]]:
    """One chat per provider over loopback to its own wire format's server: ours vs raw httpx, paired rounds."""
    from pydantic import SecretStr

    from aether_prefect.blocks import AetherConfig, AetherLLMProfile
    from aether_prefect.session import open_session
    from tests.servers.anthropic_server import FAKE_ANTHROPIC_KEY
    from tests.servers.gemini_server import FAKE_GOOGLE_KEY

    procs = {
        "openai": start_server("openai_server", "FakeOpenAI", "/v1/models", {"Authorization": f"Bearer {FAKE_API_KEY}"}),
        "anthropic": start_server("anthropic_server", "FakeAnthropic", "/v1/models", {"x-api-key": FAKE_ANTHROPIC_KEY}),
        "gemini": start_server("gemini_server", "FakeGemini", "/v1beta/models", {"x-goog-api-key": FAKE_GOOGLE_KEY}),
    }
    root = {k: v[1] for k, v in procs.items()}
    keys = {"openai": FAKE_API_KEY, "anthropic": FAKE_ANTHROPIC_KEY, "gemini": FAKE_GOOGLE_KEY}
    cases = {  # profile name: (wire, server, profile fields, model)
        "openai": ("openai", "openai", dict(provider="openai", base_url=f"{root['openai']}/v1"), "fake-chat"),
        "responses": ("responses", "openai", dict(provider="openai", api="responses",
                                                  base_url=f"{root['openai']}/v1"), "fake-chat"),
        "azure": ("azure", "openai", dict(provider="azure", base_url=root["openai"]), "m"),
        "anthropic": ("anthropic", "anthropic", dict(provider="anthropic", base_url=root["anthropic"]), "m"),
        "gemini": ("gemini", "gemini", dict(provider="google", base_url=root["gemini"]), "m"),
    }
    config = AetherConfig(llm={name: AetherLLMProfile(api_key=SecretStr(keys[srv]), model=model, **fields)
                               for name, (_, srv, fields, model) in cases.items()},
                          kv_namespace=f"bench{os.getpid()}")
    rows = []
    try:
        async with httpx.AsyncClient() as raw, open_session(config=config) as ctx:
            for name, (wire, srv, _, model) in cases.items():
                llm = ctx.llm(name)
                base = root[srv] + ("/v1" if wire in ("openai", "responses") else "")

                async def raw_one(i: int, wire: str = wire, base: str = base, srv: str = srv, model: str = model) -> None:
                    url, body, headers, params = _raw_request(wire, i)
                    url = url.replace(_BASE, base)
                    body = {**body, "model": model} if "model" in body else body
                    headers = {k: v.replace(FAKE_API_KEY, keys[srv]) for k, v in headers.items()}
                    r = await raw.post(url.replace("/models/m:", f"/models/{model}:"), json=body, headers=headers,
                                       params=params or None)
                    r.raise_for_status()
                    _raw_read(wire, r.json())

                async def ours_one(i: int, llm: Any = llm) -> None:
                    await llm.chat(f"question number {i}")

                ratios, raw_ms, ours_ms = [], [], []
                for _ in range(rounds):
                    r, o = await paired_ms(raw_one, ours_one, n=n)
                    ratios.append(o / r)
                    raw_ms.append(r)
                    ours_ms.append(o)
                rows.append(common.row(f"chat over loopback, {name} ({wire} wire) vs raw httpx", statistics.median(ours_ms),
                                       statistics.median(raw_ms), "ms", target=1.10))
                rows.append(common.row(f"  median of {rounds} paired-round ratios, {name}", statistics.median(ratios),
                                       None, "x", target=1.10))
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait(timeout=10)
    return rows


async def providers_only() -> None:
    rows = await provider_loopback_rows()
    rows += await provider_overhead_rows()
    common.report("llm-providers", rows)


if __name__ == "__main__":
    if "--providers" in sys.argv:  # client side only: no Prefect server, no LLM server
        asyncio.run(providers_only())
    else:
        common.start_prefect_server()
        asyncio.run(main())
