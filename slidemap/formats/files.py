"""Safe output folders, atomic writes and input checks shared by every stage.

Every stage builds its output in a temporary sibling and renames it into place when complete, so an
interrupted command leaves either the old state or the new one, never a half-written folder. Before
anything is written, :func:`check_out` decides whether ``--out`` may be used at all: a new path, an
empty folder, or an earlier output *of the same kind* (recognised by its marker file, e.g. scene.json)
may be; a folder of the user's, an input of the command or a folder around one never is. A per-output
advisory lock makes a second writer of the same ``--out`` fail at once, naming the holder, and temporary
siblings left by a killed writer are removed by the next one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from slidemap.errors import UserError

DISK_ERRORS = {errno.ENOSPC: "no space left on the device; free some space (or choose another --out) and "
                             "rerun",
               errno.EDQUOT: "disk quota exceeded; free some space and rerun",
               errno.EROFS: "the file system is read-only; choose a writable --out",
               errno.EACCES: "permission denied; choose a folder you may write to",
               errno.EPERM: "operation not permitted; choose a folder you may write to"}
"""OS errors a user can fix, worded as the second half of a one-line error naming the path."""

_HOST = socket.gethostname().replace("-", "_") or "host"


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


# --- the --out rule --------------------------------------------------------------------------------

def _is_within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both resolved)."""
    return path == folder or folder in path.parents


def check_out(out: str | Path, marker: str, inputs: Sequence[str | Path] = (), what: str = "output",
              option: str = "--out") -> Path:
    """Refuse, in one line, an output path whose replacement would lose a user's data.

    Allowed: a new path, an empty folder, or an earlier output of the same kind (a folder holding
    ``marker``) that is not one of ``inputs``. Refused: the current folder or one above it, a file, a
    folder with other content, an input of the command, a folder that holds an input, a path inside an
    input. Returns ``out`` resolved.
    """
    given = Path(out)
    out = given.resolve()
    cwd = Path.cwd().resolve()
    if _is_within(cwd, out):
        raise UserError(f"{option} {given}: is the current folder (or holds it); name a new folder for the "
                        f"{what}, e.g. {option} {what.split()[0]}")
    for p in inputs:
        src = Path(p).resolve()
        if _is_within(src, out):
            kind = "is" if src == out else "holds"
            raise UserError(f"{option} {given}: {kind} an input of this command ({p}); writing there would "
                            f"destroy it, choose a new folder for the {what}")
        if _is_within(out, src):
            raise UserError(f"{option} {given}: lies inside an input of this command ({p}); choose a folder "
                            f"outside it for the {what}")
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise UserError(f"{option} {given}: exists and is not a folder; choose a new path for the {what}")
        entries = sorted(e.name for e in out.iterdir())
        if entries and marker not in entries:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise UserError(f"{option} {given}: is a folder with other content ({shown}) and not an earlier "
                            f"{what} (no {marker}); move your files or choose a new folder")
    return out


# --- locks and stale temporaries -------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold an advisory lock on output path ``out``; a second holder fails at once, naming the first.

    The lock file ``.NAME.lock`` beside ``out`` records the holder (host, pid, command) and is removed on
    release; a lock acquired on a file that another process removed meanwhile is retried.
    """
    lock_path = out.parent / f".{out.name}.lock"
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError):
                holder = os.pread(fd, 400, 0).decode(errors="replace").strip()
            os.close(fd)
            raise UserError(f"--out {out}: another slidemap command is writing it ({holder or 'unknown'}); "
                            f"wait for it to finish or choose another --out") from None
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        import sys

        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {_HOST} pid {os.getpid()}: {' '.join(sys.argv)[:300]}".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        os.close(fd)


def _temp_name(out: Path, tag: str) -> Path:
    return out.parent / f".{out.name}.{tag}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_stale_temps(out: Path, keep_own: bool = False) -> list[Path]:
    """Remove temporary siblings of ``out`` whose writer is gone (call while holding its lock).

    Temporaries carry the writer's host and pid in their name; one of this host whose process no longer
    runs is stale (a killed command's half-written output). Others' hosts are left alone, and so are this
    process's own with ``keep_own``.
    """
    removed = []
    for tag in ("tmp", "old"):
        for p in out.parent.glob(f".{out.name}.{tag}-*"):
            parts = p.name.rsplit("-", 3)
            if len(parts) != 4:
                continue
            _, host, pid, _ = parts
            if host == _HOST and pid.isdigit() and (int(pid) == os.getpid() and not keep_own
                                                    or not _pid_alive(int(pid))):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
    return removed


# --- atomic writes ---------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_dir(out: str | Path, marker: str, inputs: Sequence[str | Path] = (), what: str = "output"
               ) -> Iterator[Path]:
    """Yield a temporary sibling folder of ``out``; on success it replaces ``out`` in one rename.

    ``out`` is first checked with :func:`check_out` (``marker`` names the file that identifies an
    earlier output of this kind, ``inputs`` the command's inputs), and locked for the duration. On any
    exception (Ctrl-C and SIGTERM included) the temporary folder is removed and ``out`` is left as it was.
    """
    out = check_out(out, marker, inputs, what)
    with disk_errors(out):
        out.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        remove_stale_temps(out)
        tmp = _temp_name(out, "tmp")
        try:
            with disk_errors(out):
                tmp.mkdir()
                yield tmp  # a write inside that finds the disk full is one line naming ``out`` too
            with disk_errors(out):
                old = None
                if out.exists():
                    old = _temp_name(out, "old")
                    os.replace(out, old)
                os.replace(tmp, out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | Path, sync: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it is flushed to disk and renamed onto ``path``.

    Temporaries of ``path`` left by a killed writer (a checkpoint, a bundle) are removed first. ``sync``
    False skips the flush: the rename alone keeps the file whole through a killed process, only a power cut
    could lose it; for files that are cheap to remake and checked when read (a prediction's metrics) or
    published by the rename of the folder they are written in.
    """
    path = Path(path)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path, keep_own=True)
        # the temporary keeps the suffix: GDAL and OGR pick their driver by it
        tmp = path.parent / f".{path.name}.tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}"
    try:
        with disk_errors(path):
            yield tmp
        with disk_errors(path):
            if tmp.exists():
                os.chmod(tmp, 0o644)
                if sync:
                    fd = os.open(tmp, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


NEARLY_FULL = 64 << 20
"""Free bytes below which a failed write is taken for a full disk (see :func:`disk_errors`)."""


@contextlib.contextmanager
def disk_errors(path: str | Path) -> Iterator[None]:
    """Turn a full disk, a read-only file system or a denied permission into a one-line UserError.

    GDAL, OGR and torch's archive writer report a full disk as a failed write without its errno (e.g.
    "TIFFAppendToStrip: Write error"); such a failure on a file system with (almost) no space left is
    taken for what it is.
    """
    try:
        yield
    except Exception as e:
        if isinstance(e, OSError) and e.errno in DISK_ERRORS:
            raise UserError(f"{e.filename or path}: {DISK_ERRORS[e.errno]}") from None
        # (rasterio's RasterioIOError is an OSError without errno)
        writer = type(e).__module__.split(".")[0] in ("rasterio", "pyogrio") or isinstance(e, RuntimeError) \
            and ("inline_container" in str(e) or "StreamWriter" in str(e))  # torch.save's archive writer
        if not writer or not _nearly_full(path):
            raise
        raise UserError(f"{path}: {DISK_ERRORS[errno.ENOSPC]}") from None


def _nearly_full(path: str | Path) -> bool:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < NEARLY_FULL


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` (pydantic models included) as indented JSON, atomically."""
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

    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
