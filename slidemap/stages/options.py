"""The options object every stage takes: a frozen pydantic model whose errors read as one CLI line.

A stage is called as ``run(XOptions(...))``; everything is validated when the options are built, before
anything is read or written, and a bad value is a UserError naming the option as the command line spells
it (``--batch-size 0: must be at least 1``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from slidemap.errors import UserError


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str | Path) else value


Paths = Annotated[list[Path], BeforeValidator(_as_list), Field(min_length=1)]
"""One path or several: a stage that takes several inputs (images, chip sets) takes a single one as is."""


class StageOptions(BaseModel):
    """Base of the stages' options: unknown keys refused, values validated, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True,
                              protected_namespaces=())

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise UserError(option_error(e)) from None

    def replace(self, **changes: Any) -> Self:
        """A validated copy with ``changes``."""
        return type(self)(**{**self.model_dump(), **changes})


def option_error(error: ValidationError) -> str:
    """The first problem as ``--option value: what is wrong``."""
    first = error.errors()[0]
    loc = [str(p) for p in first.get("loc", ())]
    if not loc:  # a check across options: its message names them
        return str(first.get("msg", "invalid options")).removeprefix("Value error, ")
    name = "--" + loc[0].replace("_", "-")
    if first.get("type") == "extra_forbidden":
        return f"{name}: unknown option"
    if first.get("type") == "missing":
        return f"{name}: required"
    value = first.get("input")
    shown = "" if isinstance(value, dict) or value is None else f" {_short(value)}"
    msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    msg = msg.replace("Input should be", "must be")
    return f"{name}{shown}: {msg}"


def _short(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)[:80]
    if isinstance(value, Path):
        return str(value)
    return str(value)[:80]


class StageResult(BaseModel):
    """Base of the stages' typed results (paths and figures, JSON-serialisable)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True, protected_namespaces=())
