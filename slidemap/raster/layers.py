"""The layers of a scene stack, read block by block from inputs already brought onto the scene grid.

In stack order: the image bands, the spectral indices computed from them, the pre-event bands
(``pre_<band>``), the change layers (``d<index>``: the index after minus before) and the terrain layers
derived from the DEM on the scene grid (with one pixel of context, so slopes at block edges are as inside).
A pixel is valid where every input holds data; the inventory's truth (1 / 0 / 255 unknown) is read with the
block so one reader thread does all the input I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from rasterio.windows import Window

from slidemap.raster.align import OnGrid
from slidemap.raster.bands import PRE_PREFIX, change_name
from slidemap.raster.geo import Grid, row_pixel_sizes_m
from slidemap.raster.indices import compute_index
from slidemap.raster.terrain import terrain_layers

if TYPE_CHECKING:
    from slidemap.raster.inventory import Inventory


@dataclass
class StackSources:
    """Everything a block of the stack (and its truth) is made from."""

    grid: Grid
    images: Sequence[OnGrid]
    image_bands: list[str]
    indices: dict[str, list[int]] = field(default_factory=dict)  # index -> its inputs among the image bands
    pre_images: Sequence[OnGrid] = ()
    pre_bands: list[str] = field(default_factory=list)  # the pre-event images' band names, unprefixed
    change: dict[str, list[int]] = field(default_factory=dict)  # index (one of indices) -> its inputs among
    # the pre-event bands
    dem: OnGrid | None = None
    terrain: list[str] = field(default_factory=list)
    inventory: Inventory | None = None

    @property
    def bands(self) -> list[str]:
        """Layer names in stack order: image bands, indices, pre-event bands, change layers, terrain."""
        return (list(self.image_bands) + list(self.indices) + [PRE_PREFIX + b for b in self.pre_bands]
                + [change_name(i) for i in self.change] + list(self.terrain))

    def read(self, w: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Layers (C, H, W) float32 of block ``w``, its validity (H, W) and the inventory's truth (H, W).

        The truth is uint8, None without an inventory.
        """
        shape = (int(w.height), int(w.width))
        valid = np.ones(shape, dtype=bool)
        image, valid = _read_all(self.images, w, valid)
        after = {name: compute_index(name, image, inputs) for name, inputs in self.indices.items()}
        layers = [image, *(a[None] for a in after.values())]
        if self.pre_images:
            pre, valid = _read_all(self.pre_images, w, valid)
            layers.append(pre)
            layers += [(after[name] - compute_index(name, pre, inputs))[None]
                       for name, inputs in self.change.items()]
        if self.dem is not None and self.terrain:
            derived, ok = self._terrain(w, shape)
            valid &= ok
            layers.append(derived)
        truth = self.inventory.mask(w) if self.inventory is not None else None
        return np.concatenate(layers).astype(np.float32, copy=False), valid, truth

    def _terrain(self, w: Window, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        grid = self.grid
        r0, c0 = int(w.row_off), int(w.col_off)
        top, left = max(0, r0 - 1), max(0, c0 - 1)
        bottom, right = min(grid.height, r0 + shape[0] + 1), min(grid.width, c0 + shape[1] + 1)
        assert self.dem is not None  # read() asks for terrain only with a DEM
        values, _ = self.dem.read(Window(left, top, right - left, bottom - top), bands=[1])
        dem = values[0].astype(np.float64)
        dx, dy = row_pixel_sizes_m(grid.crs, grid.transform, top, bottom - top)
        derived = terrain_layers(dem, dx, dy, self.terrain)
        crop = (slice(r0 - top, r0 - top + shape[0]), slice(c0 - left, c0 - left + shape[1]))
        return np.stack([derived[n][crop] for n in self.terrain]), np.isfinite(dem[crop])


def _read_all(readers: Sequence[OnGrid], w: Window, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    parts = []
    for reader in readers:
        values, ok = reader.read(w)
        valid = valid & ok
        parts.append(values)
    return np.concatenate(parts), valid
