"""Memory: a durable event log per run, session or graph, mirrored as Prefect events.

Each ``record`` writes one immutable JSON object to the object store (layout in
``_log.py``) and emits a Prefect event ``aether.memory.<kind>`` related to
the flow run and task run, so Automations can react. The timeline is chosen by
``memory_level``: ``run`` (run_id), ``session`` (session_id) or ``graph`` (the
flow name, shared by every scheduled run of one flow).

Unlike AetherGraph's, ``search`` returns ``[]`` on a miss.
"""

from __future__ import annotations

import json
import logging
import math
import re
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from itertools import islice
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydanticValidationError

from aether_prefect._overrides import MEMORY_LEVELS
from aether_prefect.errors import AetherMemoryError
from aether_prefect.services._checks import check_metrics
from aether_prefect.services.base import BoundService
from aether_prefect.services.memory._compat import MemoryCompat
from aether_prefect.services.memory._log import LogWriter, newest_keys, read_many, timeline_prefix, ts_iso

if TYPE_CHECKING:
    from aether_prefect.context import NodeContext
    from aether_prefect.services.stores.base import ObjectStore

_log = logging.getLogger("aether_prefect.memory")

CHAT_KIND = "chat.turn"
CHAT_SUMMARY_KIND = "chat.summary"
TOOL_RESULT_KIND = "tool_result"
CHAT_ROLES = ("user", "assistant", "system", "tool")
DEFAULT_MAX_SCAN = 2000
_PAYLOAD_TEXT = 256
_PAYLOAD_DATA_BYTES = 1024
_WORD = re.compile(r"\w+", re.UNICODE)


class Event(BaseModel):
    """One memory event, as stored and returned (AetherGraph's ``Event`` fields)."""

    model_config = ConfigDict(extra="ignore")

    event_id: str = Field(description="UUID; also the id of the mirrored Prefect event.")
    ts: str = Field(description="When it was recorded, ISO-8601 UTC.")
    run_id: str
    graph_id: str | None = None
    node_id: str | None = None
    session_id: str | None = None
    kind: str
    stage: str | None = None
    text: str | None = None
    tags: list[str] = Field(default_factory=list)
    data: Any = None
    metrics: dict[str, float] = Field(default_factory=dict)
    severity: int = 2
    signal: float = 0.0  # AetherGraph's default, so f"{e.signal:.2f}" works on every event
    tool: str | None = None
    inputs: list[dict[str, Any]] | None = None
    outputs: list[dict[str, Any]] | None = None

    @field_validator("signal", mode="before")
    @classmethod
    def _no_signal_is_zero(cls, v: Any) -> Any:
        return 0.0 if v is None else v  # events stored before signal defaulted to 0.0 hold null


class ToolIO(BaseModel):
    """One input or output of a tool result: ``{"name", "kind", "value"}`` (extra JSON keys kept)."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    kind: str = "json"
    value: Any = None


def _err(msg: str) -> AetherMemoryError:
    return AetherMemoryError(msg)


def _json_normal(value: Any, what: str) -> Any:
    """``value`` as it will read back from the log (tuples become lists); typed error if not JSON."""
    try:
        return json.loads(json.dumps(value, allow_nan=False, ensure_ascii=False))
    except (TypeError, ValueError) as exc:
        raise _err(
            f"memory {what} must be JSON-serialisable (str, int, float, bool, None, lists and dicts of them; "
            f"no NaN/inf): {exc}. Convert it first, e.g. save bytes or objects with context.artifacts() "
            "and record the artifact uri"
        ) from None


def _check_kind(kind: Any) -> str:
    if not isinstance(kind, str) or not kind.strip() or len(kind) > 200:
        raise _err(f"memory kind must be a non-empty str of at most 200 characters, got {kind!r}")
    return kind


def _check_tags(tags: Any) -> list[str]:
    if tags is None:
        return []
    if isinstance(tags, str) or not isinstance(tags, Iterable):
        raise _err(f"tags must be a list of str, got {tags!r} (write tags=[{tags!r}] for one tag)")
    out: list[str] = []
    for t in tags:
        if not isinstance(t, str) or not t:
            raise _err(f"every tag must be a non-empty str, got {t!r} in {tags!r}")
        if t not in out:
            out.append(t)
    return out


def _check_metrics(metrics: Any) -> dict[str, float]:
    return check_metrics(metrics, AetherMemoryError)


def _check_kinds(kinds: Any) -> list[str] | None:
    if kinds is None:
        return None
    if isinstance(kinds, str):
        return [kinds]
    if not isinstance(kinds, Iterable):
        raise _err(f"kinds must be a list of str (or one str), got {kinds!r}")
    out = list(kinds)
    for k in out:
        _check_kind(k)
    return out


def _check_limit(limit: Any, name: str = "limit") -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise _err(f"{name} must be a positive int, got {limit!r}")
    return limit


def _check_tool_io(items: Any, what: str) -> list[dict[str, Any]]:
    if items is None:
        return []
    if isinstance(items, (str, dict)) or not isinstance(items, Iterable):
        raise _err(f"{what} must be a list of {{'name', 'kind', 'value'}} dicts, got {items!r}")
    out = []
    for item in items:
        try:
            out.append(ToolIO.model_validate(item).model_dump())
        except PydanticValidationError as exc:
            first = exc.errors()[0]
            raise _err(
                f"each entry of {what} must be a dict like {{'name': 'x', 'kind': 'number', 'value': 1}}; "
                f"{item!r} is invalid: {first['msg']} at {'.'.join(map(str, first['loc'])) or 'top level'}"
            ) from None
    return _json_normal(out, what)  # type: ignore[no-any-return]


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def resolve_timeline(ctx: "NodeContext", level: str | None = None) -> tuple[str, str]:
    """(level, timeline id) for ``ctx``: run -> run_id, session -> session_id, graph -> graph_id."""
    level = level if level is not None else ctx.memory_level
    if level not in MEMORY_LEVELS:
        raise _err(
            f"memory_level {level!r} is unknown; use one of {', '.join(MEMORY_LEVELS)} "
            "(rt override memory_level=... or AetherConfig.memory_level)"
        )
    if level == "session":
        if not ctx.session_id:
            raise _err(
                "memory_level='session' needs a session_id: pass session_id='...' to open_session() or "
                "@aether_task(session_id=...), or use memory_level='run' or 'graph'"
            )
        return level, ctx.session_id
    return level, ctx.run_id if level == "run" else ctx.graph_id


class MemoryService(MemoryCompat, BoundService):
    """``context.memory()``: record events and read them back, newest history without scanning it all.

    Async methods; ``context.memory().sync.record(...)`` in sync tasks.
    """

    def __init__(self, ctx: "NodeContext", *, level: str | None = None, store: "ObjectStore | None" = None) -> None:
        super().__init__(ctx)
        self.level, self.timeline_id = resolve_timeline(ctx, level)
        self.prefix = timeline_prefix(self.level, self.timeline_id)
        self._store = store
        self._writer: LogWriter | None = None
        self._emit_ok: bool | None = None

    def __repr__(self) -> str:
        return f"MemoryService(timeline={self.timeline!r})"

    @property
    def timeline(self) -> str:
        """``<level>:<id>``, e.g. ``run:1f0c...`` or ``graph:nightly-etl``."""
        return f"{self.level}:{self.timeline_id}"

    @property
    def store(self) -> "ObjectStore":
        if self._store is None:
            self._store = self.ctx.store()
        return self._store

    @property
    def writer(self) -> LogWriter:
        if self._writer is None:
            self._writer = LogWriter(self.store, self.prefix)
        return self._writer

    # -- write ------------------------------------------------------------------

    async def record(
        self,
        kind: str,
        data: Any = None,
        *,
        tags: list[str] | None = None,
        severity: int = 2,
        stage: str | None = None,
        metrics: dict[str, float] | None = None,
        signal: float | None = None,
        text: str | None = None,
    ) -> Event:
        """Append an event to this timeline (durable) and mirror it as a Prefect event; returns it.

        Example: ``ev = await context.memory().record("note", {"rows": 120}, tags=["prep"], metrics={"rows": 120})``
        """
        return await self._record(kind, data, tags=tags, severity=severity, stage=stage, metrics=metrics,
                                  signal=signal, text=text)

    async def _record(self, kind: str, data: Any, **fields: Any) -> Event:
        event, key, ts_ns = self._build(kind, data, **fields)
        body = event.model_dump_json().encode("utf-8")
        await anyio.to_thread.run_sync(self.writer.write, ts_ns, key, body)
        self._emit(event)
        return event

    def _build(self, kind: str, data: Any, *, tags: Any, severity: Any, stage: Any, metrics: Any, signal: Any,
               text: Any, tool: str | None = None, inputs: list[dict[str, Any]] | None = None,
               outputs: list[dict[str, Any]] | None = None) -> tuple[Event, str, int]:
        """Validate everything, then allocate the key: bad input never reaches the store."""
        kind = _check_kind(kind)
        data = _json_normal(data, "data")
        tag_list = _check_tags(tags)
        metric_map = _check_metrics(metrics)
        if isinstance(severity, bool) or not isinstance(severity, int) or not 0 <= severity <= 5:
            raise _err(f"severity must be an int from 0 to 5 (2 = normal), got {severity!r}")
        if stage is not None and not isinstance(stage, str):
            raise _err(f"stage must be a str or None, got {stage!r}")
        if signal is not None and (isinstance(signal, bool) or not isinstance(signal, (int, float))
                                   or not math.isfinite(signal)):
            raise _err(f"signal must be a finite number or None, got {signal!r}")
        if text is not None and not isinstance(text, str):
            raise _err(f"text must be a str or None, got {type(text).__name__}")
        if text is None and data is not None:
            text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
        ts_ns, seq = self.writer.allocate()
        ctx = self.ctx
        event = Event(
            event_id=str(uuid.uuid4()), ts=ts_iso(ts_ns), run_id=ctx.run_id, graph_id=ctx.graph_id,
            node_id=ctx.node_id, session_id=ctx.session_id, kind=kind, stage=stage, text=text, tags=tag_list,
            data=data, metrics=metric_map, severity=severity, signal=0.0 if signal is None else float(signal),
            tool=tool, inputs=inputs, outputs=outputs,
        )
        return event, self.writer.key_for(ts_ns, seq, kind), ts_ns

    def _emit(self, event: Event) -> None:
        """Mirror ``event`` as the Prefect event ``aether.memory.<kind>`` (best effort, small payload)."""
        if self._emit_ok is None:
            from aether_prefect._prefect import api_url

            # Without an API URL, emitting outside a run would start an ephemeral server: skip it there.
            self._emit_ok = bool(api_url() or self.ctx.flow_run_id)
        if not self._emit_ok:
            return
        mirror = getattr(self.ctx.config, "memory_mirror", "excerpt")
        if mirror == "off":
            return
        from aether_prefect._prefect import events

        ctx = self.ctx
        related: list[dict[str, str]] = []
        if ctx.flow_run_id:
            related.append({"prefect.resource.id": f"prefect.flow-run.{ctx.flow_run_id}",
                            "prefect.resource.role": "flow-run"})
        if ctx.task_run_id:
            related.append({"prefect.resource.id": f"prefect.task-run.{ctx.task_run_id}",
                            "prefect.resource.role": "task-run"})
        payload: dict[str, Any] = {
            "kind": event.kind, "event_id": event.event_id, "node_id": event.node_id, "run_id": event.run_id,
        }
        if mirror == "excerpt":  # memory_mirror="kind" stops here: no text, tags nor data leave the store
            text = event.text or ""
            payload.update({
                "tags": event.tags[:20], "severity": event.severity, "stage": event.stage,
                "text": text[:_PAYLOAD_TEXT], "text_truncated": len(text) > _PAYLOAD_TEXT,
            })
            if event.signal is not None:
                payload["signal"] = event.signal
            if event.metrics:
                payload["metrics"] = dict(islice(event.metrics.items(), 20))
            data_json = json.dumps(event.data, ensure_ascii=False)
            if len(data_json.encode("utf-8")) <= _PAYLOAD_DATA_BYTES:
                payload["data"] = event.data
        try:
            events.emit(
                f"aether.memory.{event.kind}",
                resource={
                    "prefect.resource.id": f"aether.memory.{self.level}.{self.timeline_id}",
                    "prefect.resource.name": self.timeline,
                    "aether.memory.level": self.level,
                },
                related=related,
                payload=payload,
                id=uuid.UUID(event.event_id),
                occurred=datetime.fromisoformat(event.ts),
            )
        except Exception as exc:  # noqa: BLE001 - the durable record is written; the mirror is best effort
            _log.debug("could not emit Prefect event for memory kind %r: %s", event.kind, exc)

    # -- read -------------------------------------------------------------------

    def _scan(self, kinds: list[str] | None, match: Callable[[Event], bool], limit: int, max_scan: int) -> list[Event]:
        """Newest-first events of ``kinds`` passing ``match``: at most ``limit``, reading at most ``max_scan``."""
        out: list[Event] = []
        keys = newest_keys(self.store, self.prefix, kinds)
        scanned = 0
        batch = min(limit, 256)
        while len(out) < limit and scanned < max_scan:
            chunk = list(islice(keys, min(batch, max_scan - scanned)))
            if not chunk:
                break
            scanned += len(chunk)
            for raw in read_many(self.store, chunk):
                if raw is None:
                    continue
                try:
                    event = Event.model_validate_json(raw)
                except PydanticValidationError:
                    _log.warning("skipping an unreadable memory object in %s", self.timeline)
                    continue
                if kinds is not None and event.kind not in kinds:
                    continue  # a hashed kind token collided
                if match(event):
                    out.append(event)
                    if len(out) >= limit:
                        break
            batch = min(batch * 2, 256)
        return out

    async def _newest(self, kinds: list[str] | None, match: Callable[[Event], bool], limit: int,
                      max_scan: int) -> list[Event]:
        return await anyio.to_thread.run_sync(self._scan, kinds, match, limit, max_scan)

    async def recent(self, kinds: list[str] | str | None = None, limit: int = 50) -> list[Event]:
        """The newest ``limit`` events (of ``kinds``), oldest to newest. Reads only those objects.

        Example: ``events = await context.memory().recent(kinds=["note"], limit=10)``
        """
        kind_list = _check_kinds(kinds)
        limit = _check_limit(limit)
        events = await self._newest(kind_list, lambda e: True, limit, limit)
        return events[::-1]

    async def recent_data(self, kinds: list[str] | str | None = None, tags: list[str] | None = None,
                          limit: int = 50, *, max_scan: int = DEFAULT_MAX_SCAN) -> list[Any]:
        """``data`` (or ``text`` when data is None) of the newest events with ``kinds`` and all ``tags``.

        Example: ``rows = await context.memory().recent_data(kinds=["note"], tags=["prep"])``
        """
        kind_list = _check_kinds(kinds)
        want = set(_check_tags(tags))
        limit = _check_limit(limit)
        events = await self._newest(kind_list, lambda e: want.issubset(e.tags), limit, max(limit, max_scan))
        return [e.data if e.data is not None else e.text for e in reversed(events)]

    async def search(self, query: str, kinds: list[str] | str | None = None, tags: list[str] | None = None,
                     limit: int = 100, *, max_scan: int = DEFAULT_MAX_SCAN) -> list[Event]:
        """Events whose text, kind or tags share words with ``query``, best first; ``[]`` on a miss.

        Scans the newest ``max_scan`` events of the timeline (after the kind filter).

        Example: ``hits = await context.memory().search("refund", kinds=["chat.turn"])``
        """
        if not isinstance(query, str):
            raise _err(f"query must be a str, got {type(query).__name__}")
        words = _words(query)
        if not words:
            raise _err(f"query {query!r} has no words to search for; pass some text, or use recent() to list events")
        kind_list = _check_kinds(kinds)
        want = set(_check_tags(tags))
        limit = _check_limit(limit)
        max_scan = _check_limit(max_scan, "max_scan")
        phrase = query.strip().lower()
        scores: dict[str, float] = {}

        def match(e: Event) -> bool:
            if not want.issubset(e.tags):
                return False
            hay = " ".join([e.text or "", e.kind, " ".join(e.tags), e.stage or ""]).lower()
            score = len(words & _words(hay)) + (0.5 if len(words) > 1 and phrase in hay else 0.0)
            if score <= 0:
                return False
            scores[e.event_id] = score
            return True

        hits = await self._newest(kind_list, match, max_scan, max_scan)
        ranked = sorted(enumerate(hits), key=lambda p: (-scores[p[1].event_id], p[0]))  # ties: newest first
        return [e for _, e in ranked[:limit]]

    # -- chat -------------------------------------------------------------------

    async def record_chat(self, role: str, text: str, *, tags: list[str] | None = None, severity: int = 2,
                          signal: float | None = None) -> Event:
        """Record a chat turn: kind ``chat.turn``, data ``{"role", "content"}``.

        Example: ``await context.memory().record_chat("user", "What changed today?")``
        """
        if role not in CHAT_ROLES:
            raise _err(f"chat role must be one of {', '.join(CHAT_ROLES)}, got {role!r}")
        if not isinstance(text, str):
            raise _err(f"chat text must be a str, got {type(text).__name__}")
        return await self.record(CHAT_KIND, {"role": role, "content": text}, tags=tags, severity=severity,
                                 signal=signal, text=text)

    async def record_chat_user(self, text: str, **kw: Any) -> Event:
        """``record_chat("user", text)``.

        Example: ``await context.memory().record_chat_user("What changed today?")``
        """
        return await self.record_chat("user", text, **kw)

    async def record_chat_assistant(self, text: str, **kw: Any) -> Event:
        """``record_chat("assistant", text)``.

        Example: ``await context.memory().record_chat_assistant("Two files were added.")``
        """
        return await self.record_chat("assistant", text, **kw)

    async def record_chat_system(self, text: str, **kw: Any) -> Event:
        """``record_chat("system", text)``.

        Example: ``await context.memory().record_chat_system("You are terse.")``
        """
        return await self.record_chat("system", text, **kw)

    async def recent_chat(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest ``limit`` chat turns, oldest first: ``[{"role", "content", "ts"}]``.

        Example: ``turns = await context.memory().recent_chat(limit=20)``
        """
        events = await self.recent([CHAT_KIND], limit)
        return [{"role": e.data.get("role"), "content": e.data.get("content"), "ts": e.ts}
                for e in events if isinstance(e.data, dict)]

    async def chat_history_for_llm(self, limit: int = 20) -> dict[str, Any]:
        """``{"summary": str, "messages": [{"role", "content"}]}`` ready for ``llm().chat``.

        ``summary`` is the text of the newest ``chat.summary`` event ("" if none).

        Example: ``text, usage = await context.llm().chat(await context.memory().chat_history_for_llm(limit=20))``
        """
        turns = await self.recent_chat(limit)
        summaries = await self.recent([CHAT_SUMMARY_KIND], 1)
        summary = (summaries[0].text or "") if summaries else ""
        return {"summary": summary, "messages": [{"role": t["role"], "content": t["content"]} for t in turns]}

    # -- tool results -----------------------------------------------------------

    async def write_result(self, *, tool: str, inputs: list[dict[str, Any]] | None = None,
                           outputs: list[dict[str, Any]] | None = None, tags: list[str] | None = None,
                           metrics: dict[str, float] | None = None, message: str | None = None,
                           severity: int = 3) -> Event:
        """Record a tool result (kind ``tool_result``); inputs/outputs are lists of ``{"name", "kind", "value"}``.

        Example: ``await context.memory().write_result(tool="sum", inputs=[{"name": "xs", "kind": "json", "value": [1, 2]}], outputs=[{"name": "total", "kind": "number", "value": 3}])``
        """
        if not isinstance(tool, str) or not tool:
            raise _err(f"tool must be a non-empty str, got {tool!r}")
        ins = _check_tool_io(inputs, "inputs")
        outs = _check_tool_io(outputs, "outputs")
        if message is not None and not isinstance(message, str):
            raise _err(f"message must be a str or None, got {type(message).__name__}")
        text = message or f"{tool}: " + ", ".join(f"{o['name']}={json.dumps(o['value'])[:80]}" for o in outs)
        return await self._record(TOOL_RESULT_KIND, {"tool": tool, "inputs": ins, "outputs": outs, "message": message},
                                  tags=tags, severity=severity, stage=None, metrics=metrics, signal=None, text=text,
                                  tool=tool, inputs=ins, outputs=outs)

    record_tool_result = write_result

    async def recent_tool_results(self, tool: str, limit: int = 10, *,
                                  max_scan: int = DEFAULT_MAX_SCAN) -> list[Event]:
        """The newest ``limit`` results of ``tool``, oldest first.

        Example: ``results = await context.memory().recent_tool_results(tool="sum", limit=5)``
        """
        if not isinstance(tool, str) or not tool:
            raise _err(f"tool must be a non-empty str, got {tool!r}")
        limit = _check_limit(limit)
        events = await self._newest([TOOL_RESULT_KIND], lambda e: e.tool == tool, limit, max(limit, max_scan))
        return events[::-1]

    async def last_tool_result(self, tool: str) -> Event | None:
        """The newest result of ``tool``, or None.

        Example: ``last = await context.memory().last_tool_result("sum")``
        """
        found = await self.recent_tool_results(tool, 1)
        return found[0] if found else None


def create(ctx: "NodeContext") -> MemoryService:
    """Factory used by ``context.memory()``: raises AetherMemoryError for an unusable memory_level."""
    return MemoryService(ctx)
