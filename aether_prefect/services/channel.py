"""context.channel(): messages to the run's log, and questions a person answers in the Prefect UI.

``send_*`` write to the run log (and memory); ``ask_*`` pause the flow run with a
typed run input (Prefect's ``pause_flow_run(wait_for_input=...)``), so the flow
run's page in the UI shows a form whose description is the prompt, and the task
resumes with the answer. Outside a run, or with only Prefect's in-process ephemeral
server (which no UI can reach), questions go to the console when stdin is a terminal.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
import pydantic
from aether_prefect._prefect._pause import RunInput

from aether_prefect.errors import ChannelError, ChannelTimeout, ValidationError
from aether_prefect.services.base import BoundService

if TYPE_CHECKING:
    from aether_prefect.context import NodeContext

_POLL_S = 1  # how often a paused task checks whether its flow run was resumed (Prefect's default is 10 s)


class TextAnswer(RunInput):
    """The form ``ask_text`` shows in the Prefect UI: one free-text answer."""

    answer: str = pydantic.Field(title="Answer")


def approval_model(options: Sequence[str]) -> type[RunInput]:
    """A RunInput whose ``choice`` field is one of ``options`` (the UI renders it as a select)."""
    choice_type = Literal[tuple(options)]  # type: ignore[valid-type]
    return pydantic.create_model(  # type: ignore[no-any-return, call-overload]
        "Approval", __base__=RunInput, choice=(choice_type, pydantic.Field(title="Choice"))
    )


def _short(prompt: str, limit: int = 120) -> str:
    return prompt if len(prompt) <= limit else prompt[: limit - 3] + "..."


def _check_prompt(prompt: Any) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValidationError(f"prompt must be a non-empty str, got {prompt!r}")
    return prompt


def _check_timeout(timeout_s: Any) -> float:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0 or math.isinf(timeout_s):
        raise ValidationError(f"timeout_s must be a positive finite number of seconds, got {timeout_s!r}")
    return float(timeout_s)


def _check_options(options: Any) -> tuple[str, ...]:
    if isinstance(options, str) or not isinstance(options, Sequence):
        raise ValidationError(f"options must be a sequence of str such as ('Approve', 'Reject'), got {options!r}")
    opts = tuple(options)
    if len(opts) < 2 or not all(isinstance(o, str) and o.strip() for o in opts) or len(set(opts)) != len(opts):
        raise ValidationError(
            f"options must hold at least two distinct non-empty str (the first one means approved), got {opts!r}"
        )
    return opts


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):  # closed or detached stdin
        return False


class ChannelService(BoundService):
    """AetherGraph's channel on Prefect: the run log for messages, pause-with-input for questions.

    >>> await context.channel().send_text("training started")
    >>> name = await context.channel().ask_text("Which dataset?")          # answered in the UI
    >>> ok = await context.channel().ask_approval("Deploy?")              # {"approved": True, "choice": "Approve"}
    >>> context.channel().sync.ask_text("Which dataset?")                 # same, from a sync task
    """

    # -- messages -------------------------------------------------------------

    async def send_text(self, text: str, *, meta: Mapping[str, Any] | None = None) -> None:
        """Write ``text`` as a line of the run's log (visible in the UI) and a ``chat.turn`` (assistant) in memory.

        ``meta`` goes with the log record (``extra={"channel_meta": meta}``).
        """
        if not isinstance(text, str):
            raise ValidationError(f"text must be a str, got {type(text).__name__}; format it first, e.g. str(value)")
        if meta is not None and not isinstance(meta, Mapping):
            raise ValidationError(f"meta must be a mapping or None, got {type(meta).__name__}")
        self.ctx.logger().info(text, extra={"channel_meta": dict(meta) if meta else None})
        await self._remember("assistant", text)

    async def send_rich(self, text: str, *, title: str | None = None) -> str | None:
        """Publish markdown ``text`` as a markdown artifact of the current run; returns its id (None outside a run).

        Outside a run the text goes to the log instead. Also recorded in memory like ``send_text``.
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

    async def send_file(self, file: str | Path | Any, *, name: str | None = None, title: str | None = None) -> Any:
        """Share a file: a path is saved with ``context.artifacts()`` (published in the run); logs a link to it.

        ``file`` may also be an ``Artifact`` already saved. Returns the Artifact.
        """
        if isinstance(file, (str, Path)):
            path = Path(file)
            if not path.is_file():
                raise ValidationError(f"send_file needs an existing file, {str(path)!r} is not one")
            artifact = await self.ctx.artifacts().save_file(str(path), kind="file", name=name or path.name)
        elif hasattr(file, "uri") and hasattr(file, "artifact_id"):
            artifact = file
        else:
            raise ValidationError(f"file must be a path or an Artifact from context.artifacts(), got {type(file).__name__}")
        label = title or name or getattr(artifact, "name", None) or artifact.artifact_id
        line = f"{label}: {artifact.uri}"
        self.ctx.logger().info(line)
        await self._remember("assistant", line)
        return artifact

    # -- questions ------------------------------------------------------------

    async def ask_text(self, prompt: str, *, timeout_s: float = 3600) -> str:
        """Ask a person ``prompt`` and return the text they answer.

        In a flow run: pauses the flow run until someone fills the form on its page in the
        Prefect UI (or calls ``resume_flow_run(id, run_input={"answer": ...})``). Outside a run:
        the console, if stdin is a terminal. ChannelTimeout after ``timeout_s``.
        """
        prompt = _check_prompt(prompt)
        timeout = _check_timeout(timeout_s)
        route = self._route(prompt)
        await self._remember("assistant", prompt)
        if route == "pause":
            answer = str((await self._pause(TextAnswer.with_initial_data(description=prompt), prompt, timeout)).answer)
        else:
            answer = await self._console(f"{prompt}\n> ", prompt, timeout)
        await self._remember("user", answer)
        return answer

    async def ask_approval(
        self, prompt: str, options: Sequence[str] = ("Approve", "Reject"), *, timeout_s: float = 3600
    ) -> dict[str, Any]:
        """Ask a person to pick one of ``options``; returns ``{"approved": choice == options[0], "choice": choice}``.

        In a flow run the UI form shows ``options`` as a choice; outside a run, the console.
        """
        prompt = _check_prompt(prompt)
        opts = _check_options(options)
        timeout = _check_timeout(timeout_s)
        route = self._route(prompt)
        await self._remember("assistant", f"{prompt} [{' / '.join(opts)}]")
        if route == "pause":
            model = approval_model(opts).with_initial_data(description=prompt)
            choice = str((await self._pause(model, prompt, timeout)).choice)  # type: ignore[attr-defined]
        else:
            choice = await self._console_choice(prompt, opts, timeout)
        await self._remember("user", choice)
        return {"approved": choice == opts[0], "choice": choice}

    # -- plumbing -------------------------------------------------------------

    @staticmethod
    def _in_flow_run() -> bool:
        from aether_prefect._prefect import in_flow_run

        return in_flow_run()

    def _route(self, prompt: str) -> Literal["pause", "console"]:
        """Where a question goes: the flow run's pause form, or the console; ChannelError if nowhere. No I/O."""
        from aether_prefect._prefect import api_url

        in_run = self._in_flow_run()
        if in_run and api_url():
            return "pause"
        if _stdin_is_tty():
            return "console"
        if in_run:
            raise ChannelError(
                f"cannot ask {_short(prompt)!r}: this flow run talks to Prefect's in-process ephemeral server "
                "(PREFECT_API_URL is not set), which no UI can reach, and stdin is not a terminal. "
                "Call aether_prefect.start_server() first, run `aether-prefect server start`, "
                "or set PREFECT_API_URL to a running Prefect server"
            )
        if self.ctx.flow_run_id:
            raise ChannelError(
                f"cannot ask {_short(prompt)!r}: this worker has no Prefect flow run context for flow run "
                f"{self.ctx.flow_run_id}, so Prefect cannot pause it (and stdin is not a terminal). Ask from the "
                "flow, or from a task on a thread-pool or process-pool task runner, which carry that context"
            )
        raise ChannelError(
            f"cannot ask {_short(prompt)!r}: a question needs a Prefect flow run (answered in the Prefect UI) "
            "or a terminal on stdin; call it inside a @flow / @aether_task, or run the script from a terminal"
        )

    async def _pause(self, model: type[RunInput], prompt: str, timeout: float) -> Any:
        """Pause the current flow run until a person submits ``model``'s form; ChannelTimeout after ``timeout``."""
        from aether_prefect._prefect import pause

        self.ctx.logger().info(f"waiting for an answer in the Prefect UI: {_short(prompt)}")
        try:
            return await pause.pause_for_input(model, timeout_s=math.ceil(timeout), poll_interval_s=_POLL_S)
        except pause.PauseTimeout as exc:
            raise ChannelTimeout(
                f"nobody answered {_short(prompt)!r} within {timeout:g}s (flow run {self.ctx.flow_run_id}); "
                "answer sooner in the Prefect UI or pass a larger timeout_s"
            ) from exc
        except RuntimeError as exc:
            raise ChannelError(f"could not pause flow run {self.ctx.flow_run_id} to ask {_short(prompt)!r}: {exc}") from exc

    async def _console(self, text: str, prompt: str, timeout: float) -> str:
        """Read one line from the terminal; ChannelTimeout after ``timeout``."""
        try:
            with anyio.fail_after(timeout):
                return await anyio.to_thread.run_sync(input, text, abandon_on_cancel=True)  # type: ignore[no-any-return]
        except TimeoutError as exc:
            raise ChannelTimeout(f"nobody answered {_short(prompt)!r} on the console within {timeout:g}s") from exc
        except EOFError as exc:
            raise ChannelError(f"stdin closed before {_short(prompt)!r} was answered") from exc

    async def _console_choice(self, prompt: str, opts: tuple[str, ...], timeout: float) -> str:
        """Ask on the terminal until the answer names an option (by number or text, any case)."""
        menu = "\n".join(f"  {i}. {o}" for i, o in enumerate(opts, 1))
        try:
            with anyio.fail_after(timeout):  # one deadline for all attempts
                while True:
                    raw = (await self._console(f"{prompt}\n{menu}\n> ", prompt, timeout)).strip()
                    if raw.isdigit() and 1 <= int(raw) <= len(opts):
                        return opts[int(raw) - 1]
                    for o in opts:
                        if raw.casefold() == o.casefold():
                            return o
        except TimeoutError as exc:
            raise ChannelTimeout(f"nobody answered {_short(prompt)!r} on the console within {timeout:g}s") from exc

    async def _remember(self, role: str, text: str) -> None:
        """Record a chat turn in this context's memory."""
        await self.ctx.memory().record_chat(role, text)


def create(ctx: "NodeContext") -> ChannelService:
    """The channel of ``ctx`` (no I/O until a message is sent)."""
    return ChannelService(ctx)
