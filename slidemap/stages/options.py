"""The options object every stage takes: a frozen pydantic model whose errors read as one CLI line.

A stage is called as ``run(XOptions(...))``; everything is validated when the options are built, before
anything is read or written, and a bad value is a UserError naming the option as the command line spells
it (``--batch-size 0: must be greater than or equal to 1``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from slidemap.errors import UserError, option_name, validation_line


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
            raise UserError(validation_line(e, option_name, "unknown option")) from None

    def replace(self, **changes: Any) -> Self:
        """A validated copy with ``changes``."""
        return type(self)(**{**self.model_dump(), **changes})


class StageResult(BaseModel):
    """Base of the stages' typed results (paths and figures, JSON-serialisable)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True, protected_namespaces=())
