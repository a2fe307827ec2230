"""The one exception type that means "the user gave us something we cannot use", and its one-line message.

:func:`validation_line` is the one translation of a pydantic validation error into that line. The CLI
prints a UserError as a single ``error: ...`` line and exits with status 2; every other exception is a bug
and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

Location = Sequence[str | int]
"""Where pydantic found a problem: field names and list indexes, outermost first."""

# the tags pydantic puts in a location for the member of a union (``x: int | str`` fails at ("x", "int"))
_UNION_TAGS = frozenset({"int", "float", "str", "bool", "none", "list", "dict", "tuple", "set"})


class UserError(Exception):
    """Bad input: a missing file, a wrong option, inputs that do not fit together.

    The message is one line that names the file or option and says what to do.
    """


def option_name(loc: Location) -> str:
    """A location spelled as the command line spells its option: ``("batch_size",)`` -> ``--batch-size``."""
    return "--" + str(loc[0]).replace("_", "-")


def key_path(loc: Location) -> str:
    """A location spelled as a key path of a YAML or JSON file: ``training.batch_size``, ``areas.0.name``."""
    return ".".join(str(p) for p in loc)


def validation_line(error: ValidationError, key: Callable[[Location], str] = key_path,
                    unknown: str = "unknown key") -> str:
    """The first problem of a pydantic ValidationError as one line naming the key and what is wrong.

    ``key`` spells the location: :func:`option_name` for options (``--batch-size 0: must be greater than
    or equal to 1``, the value as typed), :func:`key_path` for spec and sidecar keys
    (``training.epochs: 0: must be ...``, the value as written in the file). ``unknown`` is what an
    unknown key is called (``unknown option``, or a hint where to look up the right spelling). A check
    across several keys (no location) is its own message.
    """
    first = error.errors()[0]
    loc = [p for p in first.get("loc", ()) if isinstance(p, int) or ("[" not in p and p not in _UNION_TAGS)]
    msg = str(first.get("msg", "invalid")).removeprefix("Value error, ").replace("Input should be", "must be")
    if not loc:
        return msg
    name = key(loc)
    kind = first.get("type")
    if kind == "extra_forbidden":
        return f"{name}: {unknown}"
    if kind == "missing":
        return f"{name}: missing"
    value = first.get("input")
    if value is None or isinstance(value, dict):
        return f"{name}: {msg}"
    if name.startswith("--"):
        return f"{name} {_as_typed(value)}: {msg}"
    if isinstance(value, list | tuple):
        return f"{name}: {msg}"
    return f"{name}: {repr(value)[:80]}: {msg}"


def _as_typed(value: Any) -> str:
    """A value as a command line gives it: lists comma-separated, cut to 80 characters."""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)[:80]
    return str(value)[:80]
