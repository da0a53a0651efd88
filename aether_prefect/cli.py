"""The ``aether-prefect`` command: register blocks, show config (secrets masked), check services, run a server,
list and answer the questions flow runs wait on."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aether_prefect.blocks import AetherConfig

_BLOCK_MODULE = "aether_prefect.blocks"


def _masked(config: AetherConfig) -> dict[str, Any]:
    """The config as JSON-able data with every secret shown as ********."""
    return json.loads(config.model_dump_json(exclude={"block_type_slug"}, round_trip=False))


def cmd_blocks_register(_: argparse.Namespace) -> int:
    """Register every aether-prefect Block type with the Prefect API."""
    from prefect.blocks.core import Block

    from aether_prefect import blocks

    async def _register() -> list[str]:
        names = []
        for cls in (blocks.AetherLLMProfile, blocks.AetherObjectStore, blocks.AetherMCPServer, blocks.AetherConfig):
            await cls.register_type_and_schema()
            names.append(cls.get_block_type_slug())
        return names

    assert issubclass(blocks.AetherConfig, Block)
    for name in asyncio.run(_register()):
        print(f"registered block type {name}")
    return 0


async def _load(name: str | None) -> tuple[str, AetherConfig]:
    label, config, _ = await _load_saved(name)
    return label, config


async def _load_saved(name: str | None) -> tuple[str, AetherConfig, bool]:
    """(label, config, saved): ``saved`` is False when the embedded defaults are in effect."""
    import os

    from aether_prefect.config import DEFAULT_BLOCK_NAME, ENV_CONFIG, aload_saved, aresolve_config

    explicit = name or os.environ.get(ENV_CONFIG)
    label = explicit or DEFAULT_BLOCK_NAME
    config = await aresolve_config(name)
    saved = bool(explicit) or await aload_saved(DEFAULT_BLOCK_NAME) is not None
    return label, config, saved


def _in_effect(config: AetherConfig) -> tuple[dict[str, Any], list[str]]:
    """The config as services will use it (secrets masked), and one note per value filled in from a default.

    A config with no store uses the local directory under ``$PREFECT_HOME``; one with no ``default`` LLM
    profile uses ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL`` when they are set. Show those, not ``null``.
    """
    from aether_prefect.config import llm_profile, store_config
    from aether_prefect.services.stores import open_store

    shown = _masked(config)
    notes: list[str] = []
    if config.store is None:
        block = store_config(config)
        shown["store"] = json.loads(block.model_dump_json())
        notes.append(f"store: none saved, so the embedded local store is used: {open_store(block)!r}")
    if "default" not in config.llm:
        env_profile = llm_profile(config, "default")
        if env_profile is not None:
            shown.setdefault("llm", {})["default"] = json.loads(env_profile.model_dump_json())
            notes.append("llm 'default': none saved, so it comes from OPENAI_API_KEY / OPENAI_BASE_URL / AETHER_LLM_MODEL")
    return shown, notes


def cmd_config_show(args: argparse.Namespace) -> int:
    """Print the config in effect with secrets masked (defaults filled in, each said where it comes from)."""
    label, config, saved = asyncio.run(_load_saved(args.name))
    print(f"# AetherConfig {label!r}" + ("" if saved else " (embedded defaults: nothing saved)"))
    shown, notes = _in_effect(config)
    for note in notes:
        print(f"# {note}")
    print(json.dumps(shown, indent=2, default=str))
    return 0


async def _doctor(name: str | None) -> list[tuple[str, bool, str]]:
    from aether_prefect._prefect import healthcheck
    from aether_prefect.config import store_config
    from aether_prefect.services.stores import open_store

    results: list[tuple[str, bool, str]] = []

    async def check(label: str, fn: Callable[[], Awaitable[str]]) -> None:
        t = time.perf_counter()
        try:
            detail = await fn()
            results.append((label, True, f"{detail} ({(time.perf_counter() - t) * 1000:.0f} ms)"))
        except Exception as exc:  # noqa: BLE001 - doctor reports every failure, never a traceback
            results.append((label, False, f"{type(exc).__name__}: {exc}"))

    async def api() -> str:
        return await healthcheck()

    await check("prefect api", api)
    label, config = await _load(name) if results[-1][1] else (name or "default", AetherConfig())
    store_block = store_config(config)

    async def store() -> str:
        import anyio

        st = open_store(store_block)
        key = f"doctor/probe-{uuid.uuid4().hex}"
        payload = b"aether-prefect doctor probe"
        await anyio.to_thread.run_sync(st.put_bytes, key, payload)
        try:
            back = await anyio.to_thread.run_sync(st.get_bytes, key)
            if back != payload:
                raise RuntimeError("read back different bytes")
        finally:
            await anyio.to_thread.run_sync(st.delete, key)
        return f"{store_block.backend} write/read/delete ok"

    await check(f"object store ({store_block.backend})", store)

    from aether_prefect.session import build_adhoc_context

    ctx = await build_adhoc_context(config=config, graph_id="doctor", node_id="doctor")
    try:
        for pname in sorted(set(config.llm) | ({"default"} if ctx.llm_profile("default") else set())):

            async def llm(pname: str = pname) -> str:
                svc = ctx.llm(pname)
                prof = ctx.llm_profile(pname)
                await svc._probe()  # the provider's own model list (Anthropic /v1/models, Gemini /v1beta/models, ...)
                from aether_prefect.services.llm._http import mask_url

                return f"{mask_url(prof.base_url or '') if prof else ''} answered"

            await check(f"llm profile {pname}", llm)
        for sname in sorted(config.mcp):

            async def mcp(sname: str = sname) -> str:
                tools = await ctx.mcp(sname).list_tools()
                return f"{len(tools)} tools"

            await check(f"mcp server {sname}", mcp)
    finally:
        await ctx.aclose()
    return results


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check the Prefect API, the object store, each LLM profile and MCP server; exit 1 if any fails."""
    results = asyncio.run(_doctor(args.name))
    for label, ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'} {label}: {detail}")
    return 0 if all(ok for _, ok, _ in results) else 1


def cmd_server_start(args: argparse.Namespace) -> int:
    """Start a local Prefect server (if none answers) and print its UI URL."""
    from aether_prefect.server import start_server

    url = start_server(args.port, ui=not args.no_ui, detach=True)
    print(url)
    return 0


def cmd_server_stop(args: argparse.Namespace) -> int:
    """Stop the local Prefect server started by `aether-prefect server start`."""
    from aether_prefect.server import stop_server

    stopped = stop_server(port=args.port)
    print("stopped" if stopped else "no server started by aether-prefect is running")
    return 0


def cmd_pending(args: argparse.Namespace) -> int:
    """List every question waiting on the server: flow run, task, prompt, options, asked at, times out at, UI link."""
    from aether_prefect.services.channel import pending_questions

    questions = pending_questions(args.flow_run)
    if args.json:
        print(json.dumps([q.model_dump(mode="json") for q in questions], indent=2))
        return 0
    if not questions:
        print("no question is waiting")
        return 0
    for q in questions:
        where = " / ".join(x for x in (q.flow_name, q.flow_run_name, q.task_name) if x)
        shown = "  (shown in the UI)" if q.showing else ""
        print(f"{q.flow_run_id}  {where}  [{q.kind}{', several' if q.multiple else ''}]{shown}")
        print(f"  question {q.question_id}: {q.prompt}")
        if q.options:
            print("  options: " + ", ".join(o.label if o.label == o.id else f"{o.label} ({o.id})" for o in q.options))
        print(f"  asked {q.asked_at.isoformat(timespec='seconds')}, times out {q.timeout_at.isoformat(timespec='seconds')}")
        print(f"  {q.ui_url or '(no UI URL)'}")
    return 0


def cmd_answer(args: argparse.Namespace) -> int:
    """Answer the question a flow run waits on (exit 2 with one clear line if it does not fit or is not waiting)."""
    from aether_prefect.services.channel import answer

    approve = True if args.approve else (False if args.reject else None)
    choice = None if not args.choice else (args.choice[0] if len(args.choice) == 1 else args.choice)
    q = answer(args.flow_run_id, text=args.text, choice=choice, approve=approve, reason=args.reason,
               question_id=args.question)
    print(f"answered question {q.question_id} of flow run {q.flow_run_id}: {q.prompt}")
    return 0


def cmd_journal_prune(args: argparse.Namespace) -> int:
    """Delete call journals of flow runs whose newest entry is older than the retention (default 7 days)."""
    from aether_prefect.config import store_config
    from aether_prefect.services.journal import prune
    from aether_prefect.services.stores import open_store

    if args.older_than_days < 0:
        print("error: --older-than-days must be >= 0", file=sys.stderr)
        return 2
    _, config = asyncio.run(_load(args.name))
    runs, objects = prune(open_store(store_config(config)), older_than_s=args.older_than_days * 86400,
                          dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} the call journals of {runs} flow run(s) ({objects} object(s)) older than {args.older_than_days:g} days")
    return 0


def cmd_store_migrate(args: argparse.Namespace) -> int:
    """Convert the store's old artifact index to the partitioned layout (#21): safe twice, deletes nothing."""
    from aether_prefect.config import store_config
    from aether_prefect.services.artifacts._migrate import migrate
    from aether_prefect.services.stores import open_store

    _label, config = asyncio.run(_load(args.name))
    report = migrate(open_store(store_config(config)))
    print(json.dumps(report.model_dump()))
    return 0


def cmd_store_sweep(args: argparse.Namespace) -> int:
    """Remove temp objects and unfinished multipart uploads that interrupted writes left in the store."""
    from aether_prefect.config import store_config
    from aether_prefect.services.stores import open_store

    if not args.older_than_hours >= 0:
        print("error: --older-than-hours must be >= 0", file=sys.stderr)
        return 2
    _, config = asyncio.run(_load(args.name))
    report = open_store(store_config(config)).sweep(args.older_than_hours * 3600, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {report.temp_objects} temp object(s) and {report.multipart_uploads} unfinished multipart "
          f"upload(s) older than {args.older_than_hours:g} hours")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aether-prefect", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    blocks = sub.add_parser("blocks", help="manage block types").add_subparsers(dest="sub", required=True)
    blocks.add_parser("register", help="register the aether-prefect block types").set_defaults(fn=cmd_blocks_register)

    config = sub.add_parser("config", help="inspect configuration").add_subparsers(dest="sub", required=True)
    show = config.add_parser("show", help="print the resolved AetherConfig, secrets masked")
    show.add_argument("name", nargs="?", default=None, help="saved AetherConfig name (default: resolution order)")
    show.set_defaults(fn=cmd_config_show)

    doctor = sub.add_parser("doctor", help="check the API, store, LLM profiles and MCP servers")
    doctor.add_argument("name", nargs="?", default=None, help="saved AetherConfig name")
    doctor.set_defaults(fn=cmd_doctor)

    journal = sub.add_parser("journal", help="the durable-call journal").add_subparsers(dest="sub", required=True)
    prune = journal.add_parser("prune", help="delete call journals older than the retention")
    prune.add_argument("name", nargs="?", default=None, help="saved AetherConfig name (its object store)")
    prune.add_argument("--older-than-days", type=float, default=7.0, help="retention in days (default 7)")
    prune.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    prune.set_defaults(fn=cmd_journal_prune)
    store = sub.add_parser("store", help="maintain the object store").add_subparsers(dest="sub", required=True)
    migrate = store.add_parser("migrate", help="convert the artifact index to the partitioned layout (safe twice)")
    migrate.add_argument("name", nargs="?", default=None, help="saved AetherConfig name")
    migrate.set_defaults(fn=cmd_store_migrate)
    sweep = store.add_parser("sweep", help="remove what interrupted writes left (temp objects, multipart uploads)")
    sweep.add_argument("name", nargs="?", default=None, help="saved AetherConfig name")
    sweep.add_argument("--older-than-hours", type=float, default=24.0,
                       help="only leftovers older than this (default 24: a running upload is never touched)")
    sweep.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    sweep.set_defaults(fn=cmd_store_sweep)

    server = sub.add_parser("server", help="a local Prefect server").add_subparsers(dest="sub", required=True)
    start = server.add_parser("start", help="start `prefect server start` on 127.0.0.1 in the background")
    start.add_argument("--port", type=int, default=4200)
    start.add_argument("--no-ui", action="store_true")
    start.set_defaults(fn=cmd_server_start)
    stop = server.add_parser("stop", help="stop the server started by `server start`")
    stop.add_argument("--port", type=int, default=4200)
    stop.set_defaults(fn=cmd_server_stop)

    pending = sub.add_parser("pending", help="list the questions waiting for a person, across flow runs")
    pending.add_argument("--flow-run", default=None, help="only this flow run's questions")
    pending.add_argument("--json", action="store_true", help="print JSON")
    pending.set_defaults(fn=cmd_pending)
    ans = sub.add_parser("answer", help="answer the question a flow run waits on")
    ans.add_argument("flow_run_id")
    kind = ans.add_mutually_exclusive_group(required=True)
    kind.add_argument("--text", help="a text answer (ask_text)")
    kind.add_argument("--choice", action="append",
                      help="an option's id or label (ask_choices / ask_approval); repeat to pick several")
    kind.add_argument("--approve", action="store_true", help="approve (ask_approval)")
    kind.add_argument("--reject", action="store_true", help="reject (ask_approval)")
    ans.add_argument("--reason", default=None, help="why (ask_approval)")
    ans.add_argument("--question", default=None, help="the question id, when the run waits on several (see `pending`)")
    ans.set_defaults(fn=cmd_answer)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``aether-prefect`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except Exception as exc:  # noqa: BLE001 - a CLI prints one clear line, not a traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
