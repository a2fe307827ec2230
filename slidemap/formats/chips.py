"""The chip set store: the training patches of one sampling run, memory-mappable.

A chip set folder holds
- ``images.npy``: float32 (N, C, S, S), raw (not normalised) layer values, NaN where nodata;
- ``masks.npy``: uint8 (N, S, S), 1 landslide, 0 background, 255 nodata;
- ``windows.csv``: one row per chip: ``id,row,col,size,area,source`` (pixel offsets in the scene, or
  the source file name for imported patch datasets such as Landslide4Sense);
- ``chips.json`` (:class:`ChipsMeta`): band names, normalisation statistics, patch size, the sampler and
  its arguments, and the scene it came from.
"""

from __future__ import annotations

import csv
import errno
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, ValidationError

from slidemap.errors import UserError, validation_line
from slidemap.formats.base import Record, Sidecar
from slidemap.formats.files import DISK_ERRORS, require_dir
from slidemap.formats.scene import BandStats, Recipe

WINDOW_FIELDS = ("id", "row", "col", "size", "area", "source")


class ChipsMeta(Sidecar):
    """``chips.json``."""

    REDO = "sample the chip set again"

    format: str = "slidemap.chips"
    bands: list[str] = Field(min_length=1)
    stats: dict[str, BandStats] = {}
    size: int = Field(gt=0)
    count: int = Field(ge=0)
    sampler: dict[str, Any] = {}
    scene: str | None = None
    summary: dict[str, Any] = {}
    recipe: Recipe | None = None  # how the scene's layers were made (from scene.json)


class Window(Record):
    """One row of windows.csv: where a chip was cut (row/col/size empty for independent patches)."""

    id: int = Field(ge=0)
    row: int | None = Field(None, ge=0)
    col: int | None = Field(None, ge=0)
    size: int | None = Field(None, gt=0)
    area: str = ""
    source: str = ""


class ChipSet:
    """Read-only view of a chip set folder; arrays are memory-mapped, not loaded."""

    def __init__(self, path: str | Path, option: str = "CHIPS") -> None:
        self.path = require_dir(path, option, marker="chips.json", what="chip set")
        self.meta = ChipsMeta.load(self.path / "chips.json", option)
        where = f"{option} {self.path}"
        try:
            self.images = np.load(self.path / "images.npy", mmap_mode="r")
            self.masks = (np.load(self.path / "masks.npy", mmap_mode="r")
                          if (self.path / "masks.npy").exists() else None)
        except (OSError, ValueError) as e:
            raise UserError(f"{where}: chip arrays unreadable ({e}); sample it again") from None
        if self.images.ndim != 4 or self.images.shape[1] != len(self.bands) \
                or self.images.shape[2] != self.images.shape[3]:
            raise UserError(f"{where}: images.npy shape {self.images.shape} does not hold square chips of "
                            f"{len(self.bands)} bands; sample it again")
        if self.masks is not None and self.masks.shape != (self.images.shape[0], *self.images.shape[2:]):
            raise UserError(f"{where}: masks.npy shape {self.masks.shape} does not match images.npy "
                            f"{self.images.shape}; sample it again")
        self.windows = read_windows(self.path / "windows.csv", where)
        if self.windows and len(self.windows) != len(self):
            raise UserError(f"{where}: windows.csv has {len(self.windows)} rows for {len(self)} chips; "
                            f"sample it again")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def bands(self) -> list[str]:
        """Band names, in the order of the images' channels."""
        return list(self.meta.bands)

    @property
    def stats(self) -> dict[str, BandStats]:
        """Each band's statistics as chips.json records them."""
        return self.meta.stats

    @property
    def size(self) -> int:
        """Side of the square chips in pixels."""
        return int(self.images.shape[-1])

    def band_indexes(self, names: Sequence[str] | None) -> list[int]:
        """0-based indexes of ``names`` (all bands if None); unknown names are a UserError."""
        if not names:
            return list(range(len(self.bands)))
        missing = [n for n in names if n not in self.bands]
        if missing:
            raise UserError(f"--bands: {', '.join(missing)} not in chip set {self.path}; it has "
                            f"{', '.join(self.bands)}")
        return [self.bands.index(n) for n in names]


def write_chipset(folder: Path, images: np.ndarray, masks: np.ndarray | None, windows: list[dict[str, Any]],
                  meta: dict[str, Any]) -> None:
    """Write a complete chip set into ``folder`` (normally the temporary folder of ``atomic_dir``).

    For large sets create the arrays with :func:`open_arrays` first and pass them back here.
    """
    folder = Path(folder)
    if not (folder / "images.npy").exists():
        np.save(folder / "images.npy", np.ascontiguousarray(images, dtype=np.float32))
    if masks is not None and not (folder / "masks.npy").exists():
        np.save(folder / "masks.npy", np.ascontiguousarray(masks, dtype=np.uint8))
    write_windows(folder / "windows.csv", windows)
    full = {"count": int(images.shape[0]), "size": int(images.shape[-1]), **meta}
    ChipsMeta.model_validate(full).save(folder / "chips.json")


def open_arrays(folder: Path, n: int, channels: int, size: int,
                with_masks: bool = True) -> tuple[np.memmap, np.memmap | None]:
    """Create ``images.npy`` / ``masks.npy`` in ``folder`` as writable memmaps (for streaming writers).

    Their disk space is reserved first (``posix_fallocate``): a memory-mapped write into a sparse file on
    a full disk kills the process with SIGBUS, a reservation fails with a clean ENOSPC instead.
    """
    shapes: list[tuple[str, type[np.generic], tuple[int, ...]]] = [("images.npy", np.float32,
                                                                     (n, channels, size, size))]
    if with_masks:
        shapes.append(("masks.npy", np.uint8, (n, size, size)))
    arrays = []
    for name, dtype, shape in shapes:
        path = folder / name
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        _reserve(path)
        arrays.append(arr)
    return arrays[0], (arrays[1] if with_masks else None)


def _reserve(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate: write zeros
            return
        if e.errno in DISK_ERRORS:
            raise UserError(f"{path.parent}: {DISK_ERRORS[e.errno]}") from None
        raise
    finally:
        os.close(fd)


def write_windows(path: Path, windows: list[dict[str, Any]]) -> None:
    """Write windows.csv, one row per chip; a window without an ``id`` gets its position."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=WINDOW_FIELDS)
        w.writeheader()
        for i, win in enumerate(windows):
            row = {k: win.get(k, "") for k in WINDOW_FIELDS}
            row["id"] = win.get("id", i)
            w.writerow(row)


def read_windows(path: Path, where: str = "CHIPS") -> list[dict[str, Any]]:
    """The rows of windows.csv as dicts (ints where given); a garbage row is a one-line UserError."""
    if not path.exists():
        return []
    out = []
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"id", "row", "col", "size"} <= set(reader.fieldnames):
                raise UserError(f"{where}: windows.csv lacks the columns {', '.join(WINDOW_FIELDS)}; sample "
                                f"it again")
            for n, row in enumerate(reader, start=2):
                clean = {k: (None if v in (None, "") and k in ("row", "col", "size") else v or "")
                         for k, v in row.items() if k is not None}
                try:
                    w = Window.model_validate(clean)
                except ValidationError as e:
                    raise UserError(f"{where}: windows.csv line {n}: {validation_line(e)}; sample it "
                                    f"again") from None
                out.append({"id": w.id, "row": "" if w.row is None else w.row,
                            "col": "" if w.col is None else w.col, "size": "" if w.size is None else w.size,
                            "area": w.area, "source": w.source})
    except UnicodeDecodeError:
        raise UserError(f"{where}: windows.csv is not text; sample it again") from None
    return out
