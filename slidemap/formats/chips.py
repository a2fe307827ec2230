"""The chip set store: the training patches of one sampling run, memory-mappable.

A chip set folder holds
- ``images.npy``: float32 (N, C, S, S), raw (not normalised) layer values, NaN where nodata;
- ``masks.npy``: uint8 (N, S, S), 1 landslide, 0 background, 255 nodata;
- ``windows.csv``: one row per chip: ``id,row,col,size,area,source`` (pixel offsets in the scene, or
  the source file name for imported patch datasets such as Landslide4Sense);
- ``chips.json``: format name and version, band names, normalisation statistics (per band mean, std,
  min, max), patch size, sampler and its arguments (method, seed, ...), and the scene it came from.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slidemap.errors import UserError
from slidemap.formats.files import read_json, require_dir, write_json

CHIPS_FORMAT = "slidemap.chips"
CHIPS_FORMAT_VERSION = 1
WINDOW_FIELDS = ("id", "row", "col", "size", "area", "source")


class ChipSet:
    """Read-only view of a chip set folder; arrays are memory-mapped, not loaded."""

    def __init__(self, path: str | Path, option: str = "CHIPS"):
        self.path = require_dir(path, option, marker="chips.json", what="chip set")
        meta = read_json(self.path / "chips.json", option)
        if meta.get("format") != CHIPS_FORMAT:
            raise UserError(f"{option} {self.path}: chips.json does not describe a slidemap chip set")
        if meta.get("format_version") != CHIPS_FORMAT_VERSION:
            raise UserError(f"{option} {self.path}: chip set format version {meta.get('format_version')} "
                            f"is not {CHIPS_FORMAT_VERSION}; sample it again with this slidemap")
        self.meta = meta
        try:
            self.images = np.load(self.path / "images.npy", mmap_mode="r")
            self.masks = (np.load(self.path / "masks.npy", mmap_mode="r")
                          if (self.path / "masks.npy").exists() else None)
        except (OSError, ValueError) as e:
            raise UserError(f"{option} {self.path}: chip arrays unreadable ({e}); sample it again") from None
        if self.images.ndim != 4 or self.images.shape[1] != len(self.bands):
            raise UserError(f"{option} {self.path}: images.npy shape {self.images.shape} does not match "
                            f"{len(self.bands)} bands")
        self.windows = read_windows(self.path / "windows.csv")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def bands(self) -> list[str]:
        return list(self.meta["bands"])

    @property
    def stats(self) -> dict[str, dict[str, float]]:
        return self.meta["stats"]

    @property
    def size(self) -> int:
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
    full = {"format": CHIPS_FORMAT, "format_version": CHIPS_FORMAT_VERSION, **meta}
    full.setdefault("count", int(images.shape[0]))
    full.setdefault("size", int(images.shape[-1]))
    write_json(folder / "chips.json", full)


def open_arrays(folder: Path, n: int, channels: int, size: int, with_masks: bool = True):
    """Create ``images.npy`` / ``masks.npy`` in ``folder`` as writable memmaps (for streaming writers)."""
    images = np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=np.float32,
                                       shape=(n, channels, size, size))
    masks = (np.lib.format.open_memmap(folder / "masks.npy", mode="w+", dtype=np.uint8, shape=(n, size, size))
             if with_masks else None)
    return images, masks


def write_windows(path: Path, windows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=WINDOW_FIELDS)
        w.writeheader()
        for i, win in enumerate(windows):
            row = {k: win.get(k, "") for k in WINDOW_FIELDS}
            row["id"] = win.get("id", i)
            w.writerow(row)


def read_windows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for k in ("id", "row", "col", "size"):
                if row.get(k) not in (None, ""):
                    row[k] = int(row[k])
            out.append(row)
    return out
