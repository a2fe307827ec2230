"""The CLI's options, derived from the options models the stages take: each name, default and help defined once.

A command is declared as the options model it fills (:func:`model_command`): every field becomes an option
(``--batch-size``), with the field's default, its description as help, its choices (a ``Literal`` or a
registry's names, :func:`slidemap.stages.options.one_of`) and its type: booleans as ``--x/--no-x``, lists of
names or numbers as one comma-separated value, lists of files as a repeated option (``--image A --image B``).
The shared options (``--device``, ``--precision``, ``--tile``, ``--overlap``, ``--batch-size``) are the fields of
shared types in ``slidemap.stages.options``, so they read the same in every command that has them.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import inspect
import types
import typing
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from slidemap.errors import UserError


def split_names(value: str | None) -> list[str] | None:
    """``a, b,c`` -> ``["a", "b", "c"]``; None (or only commas) -> None."""
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    return names or None


def split_numbers(option: str, value: str | None) -> list[float] | None:
    """Comma-separated numbers, or a one-line UserError naming ``option``."""
    names = split_names(value)
    if names is None:
        return None
    try:
        return [float(v) for v in names]
    except ValueError:
        raise UserError(f"{option} {value}: expected comma-separated numbers, e.g. 1,2") from None


def option_flag(name: str) -> str:
    """How the command line spells field ``name``: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


# --- one field as one option ------------------------------------------------------------------------------

def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True  # noqa: UP007
    return annotation, False


def _choices(field: FieldInfo, annotation: Any) -> list[str] | None:
    # a registry's names (stages.options.one_of), on the field or on its Annotated type's own Field
    for extra in (field.json_schema_extra, *(getattr(m, "json_schema_extra", None) for m in field.metadata)):
        choices = extra.get("choices") if isinstance(extra, dict) else None
        if isinstance(choices, list):
            return [str(c) for c in choices]
    if typing.get_origin(annotation) is Literal:
        return [str(a) for a in typing.get_args(annotation)]
    return None


class _Kind(enum.Enum):
    PLAIN = "plain"
    NAMES = "names"  # a list of strings: one comma-separated value
    NUMBERS = "numbers"  # a list of numbers: one comma-separated value
    FILES = "files"  # a list of paths: a repeated option, or a variadic argument
    CHOICE = "choice"


def _kind(field: FieldInfo) -> tuple[_Kind, Any, list[str] | None]:
    """What the command line takes for ``field``: its kind, the type typer parses, the choices."""
    annotation, _ = _strip_optional(field.annotation)
    choices = _choices(field, annotation)
    if choices:
        return _Kind.CHOICE, str, choices
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType) and Path in args:  # a model given as a file (Path | Bundle)
        # ... or as several files (an ensemble: Path | Bundle | list[Path | Bundle])
        several = any(typing.get_origin(a) is list for a in args)
        return (_Kind.FILES, list[Path], None) if several else (_Kind.PLAIN, Path, None)
    if origin is list:
        item = args[0] if args else str
        if item is Path:
            return _Kind.FILES, list[Path], None
        if item in (int, float):
            return _Kind.NUMBERS, str, None
        return _Kind.NAMES, str, None
    if origin in (typing.Union, types.UnionType):  # e.g. str | float: typed as text, the model converts
        return _Kind.PLAIN, str, None
    return _Kind.PLAIN, annotation, None


def _help(field: FieldInfo, kind: _Kind, choices: list[str] | None) -> str:
    text = " ".join((field.description or "").split())
    if kind is _Kind.CHOICE and choices and not any(c in text for c in choices):
        text = f"{text} One of {', '.join(choices)}.".strip()
    if kind in (_Kind.NAMES, _Kind.NUMBERS) and "comma" not in text:
        text = f"{text} (comma-separated)".strip()
    return text


@functools.cache
def _choice_enum(name: str, choices: tuple[str, ...]) -> type[enum.Enum]:
    # typer offers an Enum's values as the option's choices
    return enum.Enum(name, {c: c for c in choices}, type=str)  # type: ignore[return-value]


def field_parameter(model: type[BaseModel], name: str, flag: str | None = None, argument: bool = False,
                    help: str | None = None) -> inspect.Parameter:  # noqa: A002 - typer's own word
    """The typer parameter of ``model``'s field ``name``: its default, help, choices and type from the field."""
    field = model.model_fields[name]
    kind, parse, choices = _kind(field)
    default = ... if field.default is PydanticUndefined and field.default_factory is None else (
        field.get_default(call_default_factory=True))
    text = help if help is not None else _help(field, kind, choices)
    annotation: Any = parse
    if kind is _Kind.CHOICE and choices:
        annotation = _choice_enum(f"{model.__name__}_{name}", tuple(choices))
        if default not in (..., None):
            default = annotation(str(default))
    elif kind in (_Kind.NAMES, _Kind.NUMBERS) and isinstance(default, list):
        default = ",".join(str(v) for v in default) if default else None
    _, optional = _strip_optional(field.annotation)
    if (optional or default is None) and default is not ...:
        annotation = annotation | None
    if argument:
        info: Any = typer.Argument(default, help=text, show_default=default not in (None, ...))
    else:
        flag = flag or option_flag(name)
        decls = [f"{flag}/--no-{flag[2:]}"] if parse is bool else [flag]
        if kind is _Kind.FILES and default in ([], None):
            default = None
            annotation = list[Path] | None
        info = typer.Option(default, *decls, help=text, show_default=default not in (None, ...))
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def field_values(model: type[BaseModel], given: dict[str, Any]) -> dict[str, Any]:
    """The command line's values turned into what ``model``'s fields take (choices, comma lists, files)."""
    out: dict[str, Any] = {}
    for name, value in given.items():
        if name not in model.model_fields:
            continue
        kind, _, _ = _kind(model.model_fields[name])
        if isinstance(value, enum.Enum):
            value = value.value
        if kind is _Kind.NAMES and isinstance(value, str):
            value = split_names(value)
        elif kind is _Kind.NUMBERS and isinstance(value, str):
            value = split_numbers(option_flag(name), value)
        if value is None and model.model_fields[name].default is not None \
                and model.model_fields[name].default is not PydanticUndefined:
            continue  # an empty comma list or an absent repeated option: the model's default
        out[name] = value
    return out


# --- a command as the options model it fills ------------------------------------------------------------

def model_command(app: typer.Typer, model: type[BaseModel], name: str | None = None,
                  fields: Sequence[str] | None = None, exclude: Sequence[str] = (),
                  arguments: Sequence[str] = (), flags: dict[str, str] | None = None,
                  extra: Sequence[inspect.Parameter] = ()) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register ``body(values, **extra)`` as a command whose options are ``model``'s fields.

    ``fields`` (default: all but ``exclude``) in order; ``arguments`` are positional; ``flags`` renames an
    option (``{"images": "--image"}``); ``extra`` are further typer parameters handed to ``body`` by name
    (options that are not the model's, e.g. ``predict --scenes``). ``body`` gets the fields' values as the
    model takes them and builds the model, so a bad value is the model's own one-line error.
    """
    names = [n for n in (fields or model.model_fields) if n not in exclude]
    flags = flags or {}

    def register(body: Callable[..., None]) -> Callable[..., None]:
        params = [field_parameter(model, n, flags.get(n), n in arguments) for n in names]
        params += list(extra)
        extra_names = {p.name for p in extra}

        @functools.wraps(body)
        def command(**given: Any) -> None:
            values = field_values(model, {k: v for k, v in given.items() if k not in extra_names})
            body(values, **{k: v for k, v in given.items() if k in extra_names})

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        app.command(name)(command)
        return body

    return register


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Slidemap's own warnings as one ``warning: ...`` line each on stderr; others as Python shows them."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        # shown once the recording has stopped: inside it, showwarning would append to the very list being
        # shown, without end
        for w in caught:
            if w.category.__module__.startswith("slidemap") or issubclass(w.category, UserWarning) \
                    and str(w.filename).find("slidemap") >= 0:
                typer.echo(f"warning: {w.message}", err=True)
            elif not issubclass(w.category, DeprecationWarning | PendingDeprecationWarning):
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
