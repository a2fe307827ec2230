"""The options object every stage takes: a frozen pydantic model whose errors read as one CLI line.

A stage is called as ``run(XOptions(...))``; everything is validated when the options are built, before
anything is read or written, and a bad value is a UserError naming the option as the command line spells
it (``--batch-size 0: must be greater than or equal to 1``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from slidemap.errors import UserError, option_name, validation_line
from slidemap.nn.precision import precision_field


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str | Path) else value


Paths = Annotated[list[Path], BeforeValidator(_as_list), Field(min_length=1)]
"""One path or several: a stage that takes several inputs (images, chip sets) takes a single one as is."""


def one_of(names: Sequence[str]) -> Any:
    """A string field that must be one of ``names`` (a registry's keys); the CLI offers them as its choices."""
    allowed = tuple(names)

    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"use one of {', '.join(allowed)}")
        return value

    return Annotated[str, AfterValidator(check), Field(json_schema_extra={"choices": list(allowed)})]


# The options several stages share, each described once (the CLI's help is these descriptions).
Device = Annotated[Literal["auto", "cpu", "cuda"], Field(
    description="Where the network runs: auto (a CUDA GPU when there is one, else the CPU), cpu or cuda.")]
Precision = Annotated[str, AfterValidator(precision_field), Field(
    description="auto, 32, bf16 or 16 (GPU only). auto: bf16 on a GPU that has it and on a CPU whose bf16 "
                "matmul runs at least 1.5x its fp32 (measured once per machine, `slidemap info`), else 32.")]
Tile = Annotated[int, Field(description="Side in pixels of the tiles the network sees (a multiple of 16).")]
TileOverlap = Annotated[int, Field(ge=0, description="Pixels shared by neighbouring tiles (their probabilities "
                                                     "are blended there).")]


class StageOptions(BaseModel):
    """Base of the stages' options: unknown keys refused, values validated, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True,
                              protected_namespaces=(), use_attribute_docstrings=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise UserError(validation_line(e, option_name, "unknown option")) from None

    def replace(self, **changes: Any) -> Self:
        """A validated copy with ``changes``."""
        return type(self)(**{**self.model_dump(), **changes})


class StageResult(BaseModel):
    """Base of the stages' typed results (paths and figures, JSON-serialisable)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True, protected_namespaces=())
