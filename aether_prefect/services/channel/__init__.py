"""context.channel(): messages to the run's log, and questions a person answers in the Prefect UI or the inbox.

``send_*`` write to the run log (and memory); ``ask_*`` keep the question in its own flow run input and pause
the flow run with a typed form (the UI shows it; several questions of one run take turns), so a person answers
in the UI, with ``aether-prefect answer`` or :func:`answer`, and the task that asked resumes with the answer.
Outside a run, or with only Prefect's in-process ephemeral server (which no UI can reach), questions go to the
console when stdin is a terminal. ``context.channel("console")`` always uses the console.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from aether_prefect.errors import ChannelError, ValidationError
from aether_prefect.services.base import BoundService
from aether_prefect.services.channel import _console, _external, _file, _notify, _questions, _uploads
from aether_prefect.services.channel._inbox import PendingQuestion, aanswer, answer, apending_questions, pending_questions
from aether_prefect.services.channel._forms import (
    Button,
    ChoiceResult,
    Kind,
    Option,
    TextAnswer,
    approval_result,
    build_options,
    check_options,
    check_prompt,
    check_timeout,
    choice_result,
    short,
)

if TYPE_CHECKING:
    from aether_prefect.context import NodeContext

_POLL_S = 1.0  # how often a waiting task checks for its answer (Prefect's own pause polls every 10 s)

Route = Literal["pause", "console"]
_UI_KEYS = {"ui", "prefect", "prefect:ui", "web", "web:chat"}
_CONSOLE_KEYS = {"console", "console:stdin", "console:stdout"}


def _check_key(channel_key: Any) -> str | None:
    """A channel key as AetherGraph spells it: None (the default: Prefect UI), ``"ui"``, ``"console[:stdin]"``."""
    if channel_key is None:
        return None
    if not isinstance(channel_key, str) or not channel_key.strip():
        raise ValidationError(f"channel key must be a non-empty str or None, got {channel_key!r}")
    key = channel_key.strip()
    if key.lower() in _UI_KEYS | _CONSOLE_KEYS | {"notify"}:
        return key.lower()
    if key.startswith("notify:") and key.count("/") == 1 and all(key[len("notify:"):].split("/")):
        return key
    if _file.is_file_key(key) and key[len(_file.PREFIX):].strip():
        return key
    if _external.is_external_key(key):
        return key  # AetherGraph's slack:/tg:/webhook: keys: announced through the matching notification block
    raise ValidationError(
        f"unknown channel {key!r}: use None or 'ui' (the Prefect UI, plus AetherConfig.notify; the default), "
        "'console' (the terminal), 'notify' (the UI, announced through AetherConfig.notify), "
        "'notify:<block-type-slug>/<name>' (the UI, announced through that saved notification block) or "
        "'file:<path>' (messages appended to that file), or AetherGraph's 'slack:...', 'tg:...', 'webhook:url/...' "
        "(the UI, announced through the matching notification block)"
    )


class ChannelService(BoundService):
    """AetherGraph's channel on Prefect: the run log for messages, keyed questions answered in the UI or the inbox.

    >>> await context.channel().send_text("training started")
    >>> name = await context.channel().ask_text("Which dataset?")          # answered in the UI
    >>> ok = await context.channel().ask_approval("Deploy?")   # {"approved": True, "choice": "Approve", "reason": None}
    >>> r = await context.channel().ask_choices("Mode?", ["Safe", "Fast"])  # ChoiceResult(choice="Safe", ...)
    >>> context.channel().sync.ask_text("Which dataset?")                 # same, from a sync task
    """

    def __init__(self, ctx: "NodeContext", channel_key: str | None = None) -> None:
        super().__init__(ctx)
        self.channel_key = _check_key(channel_key)

    # -- messages -------------------------------------------------------------

    async def send_text(self, text: str, *, meta: Mapping[str, Any] | None = None, notify: bool = False) -> None:
        """Write ``text`` as a line of the run's log (visible in the UI) and a ``chat.turn`` (assistant) in memory.

        On a ``file:<path>`` channel the text is also appended to that file (a timestamped line per line).

        ``meta`` goes with the log record (``extra={"channel_meta": meta}``). ``notify=True`` also sends it
        (secrets masked) through the configured notification blocks; a failed notification is only logged.

        >>> await context.channel().send_text("nightly run done", notify=True)

        Example: ``await context.channel().send_text("nightly run started", notify=True)``
        """
        if not isinstance(text, str):
            raise ValidationError(f"text must be a str, got {type(text).__name__}; format it first, e.g. str(value)")
        if meta is not None and not isinstance(meta, Mapping):
            raise ValidationError(f"meta must be a mapping or None, got {type(meta).__name__}")
        self.ctx.logger().info(text, extra={"channel_meta": dict(meta) if meta else None})
        if _file.is_file_key(self.channel_key):
            await _file.append(str(self.channel_key), text)
        if notify or _external.is_external_key(self.channel_key):
            await self._announce_message(text, warn=notify and not _external.is_external_key(self.channel_key))
        await self._remember("assistant", text)

    async def send_rich(self, text: str, *, title: str | None = None) -> str | None:
        """Publish markdown ``text`` as a markdown artifact of the current run; returns its id (None outside a run).

        Outside a run the text goes to the log instead. Also recorded in memory like ``send_text``.

        Example: ``await context.channel().send_rich("## Report\n3 rows kept", title="report")``
        """
        if not isinstance(text, str):
            raise ValidationError(f"text must be a markdown str, got {type(text).__name__}")
        artifact_id: str | None = None
        if self._in_flow_run():
            from aether_prefect._prefect import artifacts as prefect_artifacts
            from aether_prefect._prefect import current_run_ids

            ids = current_run_ids()
            artifact_id = await prefect_artifacts.create_artifact(
                type="markdown", data=text, description=title or "channel message",
                flow_run_id=ids.flow_run_id, task_run_id=ids.task_run_id,
            )
            self.ctx.logger().info(f"{title or 'message'}: published as a markdown artifact ({artifact_id})")
        else:
            self.ctx.logger().info(f"{title}\n{text}" if title else text)
        await self._remember("assistant", text)
        return artifact_id

    async def send_file(
        self, file: str | Path | Any = None, *, name: str | None = None, title: str | None = None,
        file_bytes: bytes | None = None, filename: str | None = None, url: str | None = None,
        channel: str | None = None, artifact_kind: str = "file", artifact_labels: dict[str, Any] | None = None,
        **_memory: Any,
    ) -> Any:
        """Share a file: a path (or AetherGraph's ``file_bytes=`` + ``filename=``) is saved with
        ``context.artifacts()`` (published in the run) and a line naming it is sent; returns the Artifact.

        ``file`` may also be an ``Artifact`` already saved; a link (``url=``, or an http(s) URL as ``file``,
        AetherGraph's first argument) is sent as a line and returns None. ``artifact_kind``/``artifact_labels``
        are the saved artifact's kind and labels; AetherGraph's ``memory_*`` keywords are accepted.

        Example: ``await context.channel().send_file("out/report.csv", title="report")``
        """
        if isinstance(file, str) and re.match(r"^https?://", file) and url is None:
            file, url = None, file
        given = [x for x in (file, file_bytes, url) if x is not None]
        if len(given) != 1:
            raise ValidationError("send_file takes one of: a path or Artifact, file_bytes= (with filename=), or url=")
        service = self._on(channel)
        if url is not None:
            if not isinstance(url, str) or not re.match(r"^https?://", url):
                raise ValidationError(f"url must be an http(s) URL, got {url!r}")
            await service.send_text(f"{title or filename or name or 'file'}: {url}")
            return None
        labels = dict(artifact_labels) if artifact_labels else None
        if file_bytes is not None:
            if not isinstance(file_bytes, (bytes, bytearray)):
                raise ValidationError(f"file_bytes must be bytes, got {type(file_bytes).__name__}")
            fname = filename or name or "file.bin"
            artifact = await self.ctx.artifacts().save_bytes(bytes(file_bytes), kind=artifact_kind, name=fname,
                                                             labels=labels)
        elif isinstance(file, (str, Path)):
            path = Path(file)
            if not path.is_file():
                raise ValidationError(f"send_file needs an existing file, {str(path)!r} is not one")
            artifact = await self.ctx.artifacts().save_file(str(path), kind=artifact_kind, name=name or filename or path.name,
                                                            labels=labels)
        elif hasattr(file, "uri") and hasattr(file, "artifact_id"):
            artifact = file
        else:
            raise ValidationError(f"file must be a path or an Artifact from context.artifacts(), got {type(file).__name__}")
        label = title or name or filename or getattr(artifact, "name", None) or artifact.artifact_id
        await service.send_text(f"{label}: {artifact.uri}")
        return artifact

    @contextlib.asynccontextmanager
    async def stream(self, channel: str | None = None) -> AsyncIterator["_StreamSender"]:
        """AetherGraph's streamed message: ``delta()`` pieces are collected and ``end()`` sends the whole text
        once (``end(full_text)`` replaces it), since a Prefect run log line cannot be edited in place.

        As in AetherGraph nothing is sent unless ``end()`` is called.

        Example: ``async with context.channel().stream() as s: await s.delta("a"); await s.end()``
        """
        yield _StreamSender(self._on(channel))

    async def send_buttons(
        self, text: str, buttons: Sequence[Any] | Mapping[str, Any], *, meta: Mapping[str, Any] | None = None,
        channel: str | None = None, **_memory: Any,
    ) -> None:
        """AetherGraph's ``send_buttons``: the message with its buttons listed (a link button as its URL).

        Like AetherGraph it does not wait for a click (ask with ``ask_choices(prompt, buttons)`` to wait);
        Prefect's UI has no buttons, so the buttons become lines of the message. ``memory_*`` keywords are
        accepted (the message is recorded in memory as every ``send_text`` is).

        Example: ``await context.channel().send_buttons("Report ready:", [Button(label="Open", url=report_url)])``
        """
        if not isinstance(text, str):
            raise ValidationError(f"text must be a str, got {type(text).__name__}")
        items = list(buttons.values()) if isinstance(buttons, Mapping) else buttons
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items:
            raise ValidationError(f"buttons must be a non-empty list of Button (or a dict of them), got {buttons!r}")
        lines = []
        for b in items:
            if not isinstance(b, Button) and not hasattr(b, "label"):
                raise ValidationError(f"each button must be a Button(label=..., value=... or url=...), got {b!r}")
            target = b.url or b.value
            lines.append(f"- {b.label}" + (f": {target}" if target else ""))
        service = self._on(channel)
        await service.send_text(text + "\n" + "\n".join(lines), meta=meta)

    # -- questions ------------------------------------------------------------

    async def ask_files(
        self, prompt: str, *, accept: Sequence[str] | None = None, multiple: bool = True, timeout_s: float = 3600,
        channel: str | None = None, **_memory: Any,
    ) -> "_uploads.FilesAnswer":
        """AetherGraph's ``ask_files``: a person names files, returned as ``{"text", "files": [FileRef, ...]}``.

        Prefect's pause form cannot upload files, so the question (a text question, answered in the UI or
        the inbox like any other) asks for paths on the worker's machine or store URIs (``file://``,
        ``s3://``); an answer naming no existing file or a foreign URI is asked again with what was wrong.
        Local files are saved with ``context.artifacts()`` (copied) and the ``FileRef``'s ``uri`` is the
        artifact's; the files also land in the upload inbox (``get_latest_uploads``). ``accept`` is shown
        as a hint, as in AetherGraph. The result also reads as ``result.text`` / ``result.files``.

        Example: ``r = await context.channel().ask_files("Upload the CSV", accept=[".csv"]); r["files"][0]["uri"]``
        """
        prompt = check_prompt(prompt)
        if not isinstance(multiple, bool):
            raise ValidationError(f"multiple must be a bool, got {multiple!r}")
        if accept is not None and (isinstance(accept, str) or not all(isinstance(a, str) for a in accept)):
            raise ValidationError(f"accept must be a list of str such as ['.csv', 'text/csv'], got {accept!r}")
        deadline = time.monotonic() + check_timeout(timeout_s)
        question, problem = f"{prompt}\n{_uploads.hint(multiple, accept)}", None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                from aether_prefect.errors import ChannelTimeout

                raise ChannelTimeout(f"no valid file answer to {short(prompt)!r} within {timeout_s}s (last: {problem})")
            asked = f"{problem}; please answer again.\n{question}" if problem else question
            raw = await self.ask_text(asked, timeout_s=max(left, 1.0), channel=channel)
            items, problem = _uploads.parse(raw, multiple)
            if problem is None:
                break
        key = self._upload_key(channel)
        refs = await _uploads.to_file_refs(self.ctx, items, key)
        _uploads.put(self.ctx, key, refs)
        return _uploads.FilesAnswer(text="" if items else raw.strip(), files=refs)

    async def get_latest_uploads(self, *, clear: bool = True) -> list[dict[str, Any]]:
        """AetherGraph's ``get_latest_uploads``: the files named in this run's ``ask_files`` answers on this
        channel (``FileRef`` dicts, oldest first), emptied when ``clear``; [] when none.

        Example: ``files = await context.channel().get_latest_uploads()``
        """
        return _uploads.take(self.ctx, self._upload_key(None), bool(clear))

    def _on(self, channel: str | None) -> "ChannelService":
        """This channel, or the one named by a per-call ``channel=`` (AetherGraph's keyword)."""
        return self if channel is None else ChannelService(self.ctx, channel)

    def _upload_key(self, channel: str | None) -> str:
        key = _check_key(channel) if channel is not None else self.channel_key
        return key or "ui"

    async def ask_text(
        self, prompt: str, *, timeout_s: float = 3600, channel: str | None = None, hold_worker: bool = True
    ) -> str:
        """Ask a person ``prompt`` and return the text they answer.

        In a flow run: the flow run's page in the Prefect UI shows a form (or answer it with
        ``aether-prefect answer RUN_ID --text ...``). Outside a run: the console, if stdin is a terminal.
        ChannelTimeout after ``timeout_s``. ``hold_worker=False`` (a deployment's run with persisted results)
        suspends the flow run instead of waiting in it: its process exits, and the answer reruns it.

        >>> name = await context.channel().ask_text("Which dataset?", timeout_s=600)

        Example: ``name = await context.channel().ask_text("Dataset name?", timeout_s=600)``
        """
        prompt = check_prompt(prompt)
        timeout = check_timeout(timeout_s)
        route = self._route(prompt, channel)
        await self._remember("assistant", prompt)
        if route == "pause":
            answer = str((await self._ask("text", prompt, timeout, channel=channel, hold_worker=hold_worker))["answer"])
        else:
            deadline = time.monotonic() + timeout
            answer = await _console.read_line(f"{prompt}\n> ", prompt, deadline, timeout)
        await self._remember("user", answer)
        return answer

    async def ask_approval(
        self, prompt: str, options: Sequence[str] = ("Approve", "Reject"), *, timeout_s: float = 3600,
        channel: str | None = None, hold_worker: bool = True,
    ) -> dict[str, Any]:
        """Ask a person to pick one of ``options``, with an optional reason.

        Returns ``{"approved": choice == options[0], "choice": choice, "reason": str | None}``.

        >>> ok = await context.channel().ask_approval("Deploy?")
        >>> ok                                   # {"approved": False, "choice": "Reject", "reason": "tests red"}

        Example: ``ok = await context.channel().ask_approval("Publish?"); ok["approved"]``
        """
        prompt = check_prompt(prompt)
        if not isinstance(options, (str, bytes)) and isinstance(options, Sequence):  # AetherGraph Buttons: their labels
            options = [o.label if isinstance(o, Button) else o for o in options]
        opts = check_options(options)
        timeout = check_timeout(timeout_s)
        route = self._route(prompt, channel)
        await self._remember("assistant", f"{prompt} [{' / '.join(opts)}]")
        if route == "pause":
            fields = await self._ask("approval", prompt, timeout, [Option(id=o, label=o) for o in opts], channel=channel,
                                     hold_worker=hold_worker)
            result = approval_result(opts, fields)
        else:
            deadline = time.monotonic() + timeout
            choice = (await self._console_pick(prompt, [Option(id=o, label=o) for o in opts], deadline, timeout))[0].id
            result = {"approved": choice == opts[0], "choice": choice, "reason": None}
        await self._remember("user", result["choice"] + (f" ({result['reason']})" if result["reason"] else ""))
        return result

    async def ask_choices(
        self, prompt: str, options: Sequence[Any], *, timeout_s: float = 3600, channel: str | None = None,
        multiple: bool = False, hold_worker: bool = True,
    ) -> ChoiceResult:
        """Ask a person to pick one option (several with ``multiple=True``); AetherGraph's ``ChoiceResult`` back.

        ``options`` are str or ``{"id", "label"}`` dicts; the UI shows the labels in a select (a multi-select
        with ``multiple=True``), the result carries the id (``choice``), the label and an optional comment.

        >>> r = await context.channel().ask_choices("Mode?", [{"id": "safe", "label": "Safe"}, "Fast"])
        >>> r.choice, r.choice_label, r.matched                          # ("safe", "Safe", True)

        Example: ``r = await context.channel().ask_choices("Region?", ["eu", "us"]); r.choice``
        """
        prompt = check_prompt(prompt)
        opts = build_options(options)
        timeout = check_timeout(timeout_s)
        if not isinstance(multiple, bool):
            raise ValidationError(f"multiple must be a bool, got {multiple!r}")
        route = self._route(prompt, channel)
        await self._remember("assistant", f"{prompt} [{' / '.join(o.label for o in opts)}]")
        if route == "pause":
            fields = await self._ask("choices", prompt, timeout, opts, multiple, channel=channel, hold_worker=hold_worker)
            result = choice_result(opts, multiple, fields)
        else:
            deadline = time.monotonic() + timeout
            picked = await self._console_pick(prompt, opts, deadline, timeout, multiple=multiple)
            key = "choices" if multiple else "choice"
            result = choice_result(opts, multiple, {key: [o.label for o in picked] if multiple else picked[0].label})
        said = "Selected: " + ", ".join(result.choices) + (f" | Text: {result.text}" if result.text else "")
        await self._remember("user", said)
        return result

    # -- plumbing -------------------------------------------------------------

    @staticmethod
    def _in_flow_run() -> bool:
        from aether_prefect._prefect import in_flow_run

        return in_flow_run()

    def _route(self, prompt: str, channel: str | None = None) -> Route:
        """Where a question goes: the flow run's pause form, or the console; ChannelError if nowhere. No I/O."""
        from aether_prefect._prefect import api_url

        key = _check_key(channel) if channel is not None else self.channel_key
        if _file.is_file_key(key):
            raise ChannelError(f"cannot ask {short(prompt)!r} on the file channel {key!r}: a file only records "
                               "messages; ask on the default channel (the Prefect UI) or 'console'")
        if key in _CONSOLE_KEYS:
            if not _console.stdin_is_tty():
                raise ChannelError(f"cannot ask {short(prompt)!r} on the console: stdin is not a terminal")
            return "console"
        in_run = self._in_flow_run()
        if (in_run or self.ctx.flow_run_id) and api_url():
            return "pause"  # a task on Dask/Ray has no flow run context, but its flow run id is all a question needs
        if (key is None or _external.is_external_key(key)) and _console.stdin_is_tty():  # the default channel
            return "console"
        if in_run:
            raise ChannelError(
                f"cannot ask {short(prompt)!r}: this flow run talks to Prefect's in-process ephemeral server "
                "(PREFECT_API_URL is not set), which no UI can reach, and stdin is not a terminal. "
                "Call aether_prefect.start_server() first, run `aether-prefect server start`, "
                "or set PREFECT_API_URL to a running Prefect server"
            )
        if self.ctx.flow_run_id:
            raise ChannelError(
                f"cannot ask {short(prompt)!r}: this worker has no Prefect flow run context for flow run "
                f"{self.ctx.flow_run_id}, so Prefect cannot pause it (and stdin is not a terminal). Ask from the "
                "flow, or from a task on a thread-pool or process-pool task runner, which carry that context"
            )
        raise ChannelError(
            f"cannot ask {short(prompt)!r}: a question needs a Prefect flow run (answered in the Prefect UI) "
            "or a terminal on stdin; call it inside a @flow / @aether_task, or run the script from a terminal"
        )

    async def _ask(
        self, kind: Kind, prompt: str, timeout: float, options: Sequence[Option] = (), multiple: bool = False,
        *, channel: str | None = None, hold_worker: bool = True,
    ) -> dict[str, Any]:
        """Ask in the current flow run and wait for the answer's form fields; ChannelTimeout after ``timeout``."""
        from aether_prefect._prefect import current_run_ids, flow_run_ui_url

        if not isinstance(hold_worker, bool):
            raise ValidationError(f"hold_worker must be a bool, got {hold_worker!r}")
        ids = current_run_ids()
        run_id = ids.flow_run_id or self.ctx.flow_run_id
        if not run_id:  # pragma: no cover - _route checked it
            raise ChannelError(f"cannot ask {short(prompt)!r}: no flow run")
        qid = None if hold_worker else self._check_suspendable(prompt, run_id, ids.deployment_id, kind, options, multiple)
        q = _questions.new_question(
            run_id, kind, prompt, timeout, options=options, multiple=multiple,
            flow_name=ids.flow_name or self.ctx.graph_id, flow_run_name=ids.flow_run_name,
            task_name=ids.task_name or self.ctx.node_id, task_run_id=ids.task_run_id or self.ctx.task_run_id,
            ui_url=flow_run_ui_url(run_id), qid=qid,
        )
        self.ctx.logger().info(
            f"waiting for an answer to {short(prompt)!r} (question {q.qid}): in the Prefect UI "
            f"({q.ui_url or 'no UI URL'}) or `aether-prefect answer {q.flow_run_id}`"
        )

        async def announce(q: _questions.Question) -> None:
            await self._announce_question(q, channel)

        if not hold_worker:
            return await _questions.ask_suspending(q, on_asked=announce)
        return await _questions.ask(q, poll_s=_POLL_S, on_asked=announce)

    def _check_suspendable(
        self, prompt: str, run_id: str, deployment_id: str | None, kind: Kind, options: Sequence[Option], multiple: bool
    ) -> str:
        """The replayable question id for ``hold_worker=False``; ChannelError where a suspended run cannot come back."""
        from aether_prefect._prefect import pause

        why = f"cannot ask {short(prompt)!r} with hold_worker=False: "
        if not deployment_id:
            raise ChannelError(
                why + f"flow run {run_id} is not a deployment's run, so nothing would rerun it after the answer. "
                "Run the flow through a deployment (flow.serve(), flow.deploy(), a work pool), or keep hold_worker=True"
            )
        if not self._in_flow_run():
            raise ChannelError(why + "this task runs without its flow run's context (Dask/Ray); ask from a thread-pool task")
        if not pause.results_persisted():
            raise ChannelError(
                why + "the flow does not persist results, so its rerun would run every finished task again. "
                "Use @flow(persist_result=True) or set PREFECT_RESULTS_PERSIST_BY_DEFAULT=true"
            )
        identity = pause.task_identity()
        if identity is None:
            raise ChannelError(why + "ask from inside a task of the flow (its rerun finds the answer by the task's key)")
        return _questions.replay_id(run_id, identity, kind, prompt, options, multiple)

    async def _notify_targets(self, channel: str | None = None) -> list[Any]:
        """The notification blocks a question or message goes through: the key's block (an external key's
        matching block), else AetherConfig.notify."""
        key = _check_key(channel) if channel is not None else self.channel_key
        if key is not None and key.startswith("notify:"):
            return [key[len("notify:"):]]
        if _external.is_external_key(key):
            return await _external.targets_for(str(key), list(self.ctx.config.notify), self.ctx.logger())
        return list(self.ctx.config.notify)

    async def _announce_question(self, q: _questions.Question, channel: str | None) -> None:
        targets = await self._notify_targets(channel)
        if targets:
            subject, body = _notify.question_text(q, self.ctx)
            await _notify.send_all(targets, subject, body, self.ctx.logger())

    async def _announce_message(self, text: str, *, warn: bool = True) -> None:
        from aether_prefect._prefect import current_run_ids, flow_run_ui_url

        targets = await self._notify_targets()
        if not targets:
            if not warn:  # an external key with no block: _external warned once already
                return
            self.ctx.logger().warning("send_text(notify=True): no notification block configured (AetherConfig.notify)")
            return
        ids = current_run_ids()
        where = " / ".join(x for x in (ids.flow_name, ids.flow_run_name, ids.task_name) if x) or "aether-prefect"
        body = _notify.mask_secrets(text, self.ctx)
        link = flow_run_ui_url(ids.flow_run_id) if ids.flow_run_id else None
        await _notify.send_all(targets, f"Message from {where}", body + (f"\n{link}" if link else ""), self.ctx.logger())

    async def _console_pick(
        self, prompt: str, opts: Sequence[Option], deadline: float, timeout: float, *, multiple: bool = False
    ) -> list[Option]:
        """Ask on the terminal until the answer names options (by number, id or label, any case; commas if multiple)."""
        menu = "\n".join(f"  {i}. {o.label}" for i, o in enumerate(opts, 1))
        hint = " (several: comma-separated)" if multiple else ""
        fresh = True
        while True:
            raw = await _console.read_line(f"{prompt}\n{menu}\n{hint}> ", prompt, deadline, timeout, fresh=fresh)
            fresh = False
            picked = [_match(part, opts) for part in (raw.split(",") if multiple else [raw])]
            if picked and all(p is not None for p in picked):
                return [p for p in picked if p is not None]

    async def _remember(self, role: str, text: str) -> None:
        """Record a chat turn in this context's memory."""
        await self.ctx.memory().record_chat(role, text)


class _StreamSender:
    """What ``stream()`` yields: ``start()``, ``delta(piece)``, ``end(full_text=None)``."""

    def __init__(self, service: ChannelService) -> None:
        self._service = service
        self._pieces: list[str] = []
        self._ended = False

    async def start(self) -> None:
        """Nothing to open on Prefect (the whole text is sent at ``end``)."""

    async def delta(self, text_piece: str) -> None:
        """Add a piece of the message."""
        if not isinstance(text_piece, str):
            raise ValidationError(f"text_piece must be a str, got {type(text_piece).__name__}")
        self._pieces.append(text_piece)

    async def end(self, full_text: str | None = None, **_memory: Any) -> None:
        """Send the message: ``full_text``, else the pieces joined (once; a second ``end`` does nothing)."""
        if self._ended:
            return
        self._ended = True
        await self._service.send_text(full_text if full_text is not None else "".join(self._pieces))


def _match(raw: str, opts: Sequence[Option]) -> Option | None:
    raw = raw.strip()
    if raw.isdigit() and 1 <= int(raw) <= len(opts):
        return opts[int(raw) - 1]
    for o in opts:
        if raw.casefold() in (o.id.casefold(), o.label.casefold()):
            return o
    return None


def create(ctx: "NodeContext", channel_key: str | None = None) -> ChannelService:
    """The channel of ``ctx`` for ``channel_key`` (None: the Prefect UI, else the console); no I/O."""
    return ChannelService(ctx, channel_key)


__all__ = [
    "Button", "ChannelService", "ChoiceResult", "PendingQuestion", "TextAnswer", "aanswer", "answer", "apending_questions",
    "create", "pending_questions",
]
