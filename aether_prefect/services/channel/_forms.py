"""The forms a question shows in the Prefect UI (RunInput models), its options, and the typed answers.

A form is rebuilt from the question's record alone (kind, options, multiple), so the inbox can validate an
answer exactly as the UI form does, in any process.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pydantic

from aether_prefect._prefect._pause import RunInput
from aether_prefect.errors import ValidationError

Kind = Literal["text", "approval", "choices"]


@dataclass(frozen=True, slots=True)
class ChoiceResult:
    """What ``ask_choices`` returns, in AetherGraph's shape: the option's id, its label, free text, and whether it matched.

    With ``multiple=True``, ``choices`` / ``choice_labels`` hold every picked option (``choice`` is the first).
    """

    choice: str | None
    choice_label: str | None
    text: str = ""
    matched: bool = False
    choices: tuple[str, ...] = ()
    choice_labels: tuple[str, ...] = ()


@dataclass
class Button:
    """AetherGraph's ``Button`` (``from aethergraph import Button``): a labelled value or link.

    In ``ask_choices``/``ask_approval`` options a button is the option ``id=value or url or label``;
    ``send_buttons`` lists them (links as URLs) in the message. ``style`` is accepted and has no effect here.
    """

    label: str
    value: str | None = None
    url: str | None = None
    style: str | None = None


class Option(pydantic.BaseModel):
    """One option of a question: ``id`` is what the task gets back, ``label`` what the person sees."""

    id: str
    label: str


def short(prompt: str, limit: int = 120) -> str:
    return prompt if len(prompt) <= limit else prompt[: limit - 3] + "..."


def check_prompt(prompt: Any) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValidationError(f"prompt must be a non-empty str, got {prompt!r}")
    return prompt


def check_timeout(timeout_s: Any) -> float:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0 or math.isinf(timeout_s):
        raise ValidationError(f"timeout_s must be a positive finite number of seconds, got {timeout_s!r}")
    return float(timeout_s)


def check_options(options: Any) -> tuple[str, ...]:
    """``ask_approval``'s options: at least two distinct non-empty str, the first meaning approved."""
    if isinstance(options, str) or not isinstance(options, Sequence):
        raise ValidationError(f"options must be a sequence of str such as ('Approve', 'Reject'), got {options!r}")
    opts = tuple(options)
    if len(opts) < 2 or not all(isinstance(o, str) and o.strip() for o in opts) or len(set(opts)) != len(opts):
        raise ValidationError(
            f"options must hold at least two distinct non-empty str (the first one means approved), got {opts!r}"
        )
    return opts


def build_options(options: Any) -> list[Option]:
    """``ask_choices``'s options as AetherGraph takes them: str, or mappings with ``id`` and/or ``label``."""
    if isinstance(options, (str, bytes)) or not isinstance(options, Sequence) or isinstance(options, Mapping):
        raise ValidationError(
            f"options must be a list of str, {{'id', 'label'}} dicts or Buttons such as ['Yes', 'No'], got {options!r}"
        )
    built: list[Option] = []
    for raw in options:
        if isinstance(raw, str):
            label = choice_id = raw.strip()
        elif isinstance(raw, Button) or (hasattr(raw, "label") and hasattr(raw, "value") and not hasattr(raw, "id")):
            label = str(raw.label or "").strip()
            choice_id = str(raw.value or getattr(raw, "url", None) or label).strip()
        elif isinstance(raw, Mapping) or (hasattr(raw, "id") and hasattr(raw, "label")):  # dict or AG's ChoiceOption
            get = raw.get if isinstance(raw, Mapping) else (lambda k, _r=raw: getattr(_r, k, None))
            label = str(get("label") or get("name") or get("id") or "").strip()
            choice_id = str(get("id") or label).strip()
        else:
            raise ValidationError(f"each option must be a str or a {{'id', 'label'}} dict, got {raw!r}")
        if not label:
            raise ValidationError(f"option {raw!r} has no label or id; give it a non-empty 'label'")
        built.append(Option(id=choice_id, label=label))
    ids = [o.id for o in built]
    labels = [o.label for o in built]
    if len(built) < 1 or len(set(ids)) != len(ids) or len(set(labels)) != len(labels):
        raise ValidationError(
            f"options must be at least one option with distinct ids and distinct labels, got {[o.model_dump() for o in built]}"
        )
    return built


class TextAnswer(RunInput):
    """The form ``ask_text`` shows in the Prefect UI: one free-text answer."""

    answer: str = pydantic.Field(title="Answer")


def form_for(kind: Kind, options: Sequence[Option] = (), multiple: bool = False) -> type[RunInput]:
    """The RunInput the UI renders for a question: a text box, an approval select (+ reason), or a (multi-)select."""
    if kind == "text":
        return TextAnswer
    labels = tuple(o.label for o in options)
    choice_type: Any = Literal[labels]  # type: ignore[valid-type]
    if kind == "approval":
        return pydantic.create_model(  # type: ignore[no-any-return, call-overload]
            "Approval", __base__=RunInput,
            choice=(choice_type, pydantic.Field(title="Choice")),
            reason=(str, pydantic.Field(default="", title="Reason (optional)")),
        )
    if multiple:
        return pydantic.create_model(  # type: ignore[no-any-return, call-overload]
            "Choices", __base__=RunInput,
            choices=(list[choice_type], pydantic.Field(title="Choices", min_length=1)),  # type: ignore[valid-type]
            text=(str, pydantic.Field(default="", title="Comment (optional)")),
        )
    return pydantic.create_model(  # type: ignore[no-any-return, call-overload]
        "Choice", __base__=RunInput,
        choice=(choice_type, pydantic.Field(title="Choice")),
        text=(str, pydantic.Field(default="", title="Comment (optional)")),
    )


def validate_answer(kind: Kind, options: Sequence[Option], multiple: bool, data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` checked against the question's form (as the UI's form checks it); the form's fields as a dict."""
    model = form_for(kind, options, multiple)
    try:
        parsed = model.model_validate(dict(data))
    except pydantic.ValidationError as exc:
        raise ValidationError(f"the answer does not fit the question's form: {exc.errors(include_url=False)}") from exc
    fields = set(model.model_fields) - set(RunInput.model_fields)
    return {k: v for k, v in parsed.model_dump().items() if k in fields}


def approval_result(opts: Sequence[str], data: Mapping[str, Any]) -> dict[str, Any]:
    """``{"approved", "choice", "reason"}`` from an approval form's answer."""
    choice = str(data["choice"])
    reason = data.get("reason")
    return {"approved": choice == opts[0], "choice": choice, "reason": reason if reason else None}


def choice_result(options: Sequence[Option], multiple: bool, data: Mapping[str, Any]) -> ChoiceResult:
    """A ChoiceResult from a choice form's answer (labels back to ids)."""
    by_label = {o.label: o for o in options}
    picked = [by_label[str(v)] for v in (data.get("choices") or [])] if multiple else [by_label[str(data["choice"])]]
    text = str(data.get("text") or "")
    first = picked[0] if picked else None
    return ChoiceResult(
        choice=first.id if first else None,
        choice_label=first.label if first else None,
        text=text,
        matched=bool(picked),
        choices=tuple(o.id for o in picked),
        choice_labels=tuple(o.label for o in picked),
    )
