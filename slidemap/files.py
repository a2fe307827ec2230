"""Atomic writes and input checks shared by every stage.

Every stage builds its output in a temporary sibling and renames it into place when complete, so an
interrupted command leaves either the old state or the new one, never a half-written folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slidemap.errors import UserError


def require_file(path: str | Path, option: str) -> Path:
    """Return ``path`` as a Path, or raise a UserError naming ``option`` if it is not an existing file."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{option} {p}: no such file; check the path")
    if p.is_dir():
        raise UserError(f"{option} {p}: is a folder, expected a file")
    return p


def require_dir(path: str | Path, option: str, marker: str | None = None, what: str = "folder") -> Path:
    """Return ``path`` if it is a folder (holding ``marker`` if given), else raise a UserError."""
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"{option} {p}: no such {what}; check the path")
    if marker and not (p / marker).is_file():
        raise UserError(f"{option} {p}: not a {what} (no {marker} inside); give the folder a slidemap "
                        f"command wrote")
    return p


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling folder of ``out``; on success it replaces ``out`` in one rename.

    On any exception the temporary folder is removed and ``out`` is left as it was.
    """
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder; choose another path")
    if out.exists() and not overwrite:
        raise UserError(f"--out {out}: already exists; remove it or choose another path")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it is renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if tmp.exists():
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be shared
    os.replace(tmp, path)


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def read_json(path: str | Path, option: str = "file") -> Any:
    """Read JSON, turning a missing or corrupt file into a UserError."""
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(f"{option} {p}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{option} {p}: not valid JSON ({e}); the folder is corrupt, recreate it") from None


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
