"""The one way slidemap reads and writes its JSON sidecar files: pydantic models with a versioned header.

Every sidecar (scene.json, chips.json, prediction.json, metrics.json, a bundle's metadata) starts with
``format`` and ``format_version``; :func:`load_sidecar` checks both once, then validates the rest, and turns
any problem (not JSON, a missing key, a wrong type, a value out of range) into a one-line UserError naming
the file, the key and what to do. Readers then use attributes, never ``dict.get`` with silent defaults.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from slidemap.errors import UserError, validation_line
from slidemap.formats.files import atomic_file
from slidemap.version import __version__


class Record(BaseModel):
    """A part of a sidecar file: unknown keys are kept (newer writers may add some), values validated."""

    model_config = ConfigDict(extra="allow", frozen=True, protected_namespaces=())


class Sidecar(Record):
    """A sidecar file: ``format`` and ``format_version`` first, then the subclass's fields."""

    REDO: ClassVar[str] = "recreate it with this slidemap"
    """What a user does about a file that fails to validate (e.g. 'prepare the scene again')."""

    format: str
    format_version: int = 1
    slidemap_version: str = __version__

    @classmethod
    def header(cls) -> tuple[str, int]:
        """The (format, version) a valid file of this kind starts with (the fields' defaults)."""
        return cls.model_fields["format"].default, cls.model_fields["format_version"].default

    @classmethod
    def from_data(cls, data: Any, where: str) -> Self:
        """Validate already-parsed JSON ``data``; ``where`` names the file in errors."""
        if not isinstance(data, dict):
            raise UserError(f"{where}: holds a JSON {type(data).__name__}, not an object; {cls.REDO}")
        kind, version = cls.header()
        if data.get("format") != kind:
            raise UserError(f"{where}: format {data.get('format')!r} is not {kind!r}; give a file slidemap "
                            f"wrote")
        if data.get("format_version") != version:
            raise UserError(f"{where}: {kind} version {data.get('format_version')} is not {version}; "
                            f"{cls.REDO}")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise UserError(f"{where}: {validation_line(e)}; {cls.REDO}") from None

    @classmethod
    def load(cls, path: str | Path, option: str = "") -> Self:
        """Read and validate ``path``; a missing, corrupt or invalid file is a one-line UserError."""
        p = Path(path)
        where = f"{option} {p}".strip()
        try:
            text = p.read_text()
        except FileNotFoundError:
            raise UserError(f"{where}: no such file; {cls.REDO}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{where}: unreadable ({e.__class__.__name__}); {cls.REDO}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not valid JSON ({e.msg} at line {e.lineno}); {cls.REDO}") from None
        return cls.from_data(data, where)

    def save(self, path: str | Path, sync: bool = True) -> None:
        """Write the file atomically (indented JSON); ``sync`` False skips the flush to disk (``atomic_file``)."""
        with atomic_file(path, sync) as tmp:
            tmp.write_text(self.model_dump_json(indent=2) + "\n")
