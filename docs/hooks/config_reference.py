"""MkDocs hook: the configuration reference, generated from the pydantic models at build time.

A page that holds the line `<!-- config-reference -->` gets, in its place, one table per config section
(and per nested model, e.g. `model.lora`): every field with its type, default and description."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from rlcm.config import schema as config_module

MARKER = "<!-- config-reference -->"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation names (`X`, `X | None`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]
    return []


def type_name(annotation: Any) -> str:
    """A short spelling of a field's type: `int | None`, `Literal['sync', 'async']`, `dict[str, Any]`."""
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("NoneType", "None")


def default_text(field: FieldInfo) -> str:
    """The default as YAML would spell it; a default factory is called (its models are sections of their own)."""
    if field.default_factory is not None:
        value = field.default_factory()
        return "see below" if isinstance(value, BaseModel) else f"`{value!r}`"
    if field.default is PydanticUndefined:
        return "required"
    return f"`{field.default!r}`"


def constraints(field: FieldInfo) -> str:
    """Bounds such as `ge=1` as text (`≥ 1`)."""
    symbols = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "length ≥", "max_length": "length ≤"}
    parts = []
    for item in field.metadata:
        for attr, symbol in symbols.items():
            if getattr(item, attr, None) is not None:
                parts.append(f"{symbol} {getattr(item, attr)}")
    return ", ".join(parts)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def section_tables(model: type[BaseModel], prefix: str, note: str | None = None) -> list[str]:
    """One table of `model`'s plain fields under heading `prefix` (with the model's docstring or `note`),
    then one per nested model."""
    rows, nested = [], []
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        models = _models_in(field.annotation)
        if models:
            nested.append((key, models[0], field.description))
            continue
        limits = constraints(field)
        description = cell(" ".join(filter(None, [field.description, f"({limits})" if limits else ""])))
        rows.append(
            f"| `{name}` | `{cell(type_name(field.annotation))}` | {cell(default_text(field))} | {description} |"
        )
    lines = []
    if rows:
        title = prefix or "top level"
        doc = " ".join((model.__doc__ or note or "").strip().split("\n\n")[0].split()) if prefix else ""
        lines += [f"### `{title}`", "", *([doc, ""] if doc else [])]
        lines += ["| key | type | default | description |", "|---|---|---|---|", *rows, ""]
    for key, nested_model, description in nested:
        lines += section_tables(nested_model, key, description)
    return lines


def reference() -> str:
    """Every section of `TrainConfig`, its fields, types, defaults and descriptions, as Markdown."""
    return "\n".join(section_tables(config_module.TrainConfig, ""))


def on_page_markdown(markdown: str, **_: Any) -> str:
    return markdown.replace(MARKER, reference()) if MARKER in markdown else markdown
