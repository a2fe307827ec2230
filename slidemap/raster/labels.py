"""Label rasters as the landslide inventory: a mask raster on any grid and CRS, brought onto the scene grid.

Many labelled datasets ship a mask raster, not polygons. Its values are read as three kinds of truth:
``label_values`` are landslide (1 in the scene's mask), its nodata and ``unlabelled_values`` (and every
pixel outside its footprint) are *unknown* (255: they count nowhere, neither as landslide nor as
background), and every other value is labelled background (0). The raster is resampled **nearest** onto
the scene grid (a label is a class, never averaged), through the same co-registration as every other input
(``slidemap.raster.align``), and read block by block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.enums import Resampling
from rasterio.windows import Window

from slidemap.errors import UserError
from slidemap.formats.gdal import open_raster
from slidemap.formats.scene import NODATA_MASK
from slidemap.raster.align import OnGrid, aligned
from slidemap.raster.geo import Grid

LANDSLIDE, BACKGROUND, UNKNOWN = 1, 0, NODATA_MASK


def classify_labels(values: np.ndarray, known: np.ndarray, label_values: Sequence[float],
                    unlabelled_values: Sequence[float]) -> np.ndarray:
    """The scene mask (uint8: 1 landslide, 0 background, 255 unknown) of label ``values`` (NaN allowed).

    ``known`` marks the pixels the label raster holds data for.
    """
    out = np.full(values.shape, BACKGROUND, dtype=np.uint8)
    out[np.isin(values, np.asarray(label_values, dtype=values.dtype))] = LANDSLIDE
    unknown = ~known | np.isin(values, np.asarray(unlabelled_values, dtype=values.dtype)) | np.isnan(values)
    out[unknown] = UNKNOWN
    return out


@dataclass(frozen=True)
class LabelRaster:
    """A label raster opened on the scene grid."""

    path: Path
    reader: OnGrid
    label_values: tuple[float, ...]
    unlabelled_values: tuple[float, ...]
    nodata: float | None
    source_pixel_m: tuple[float, float]

    kind = "raster"

    def mask(self, w: Window) -> np.ndarray:
        """Truth of block ``w`` on the scene grid: uint8 1 / 0 / 255 (unknown)."""
        values, known = self.reader.read(w, bands=[1])
        return classify_labels(values[0], known, self.label_values, self.unlabelled_values)


@contextlib.contextmanager
def open_label_raster(path: Path, grid: Grid, first: Path, label_values: Sequence[float],
                      unlabelled_values: Sequence[float], option: str = "--inventory",
                      ) -> Iterator[LabelRaster]:
    """Open ``path`` as a label raster seen on ``grid`` (nearest).

    A multi-band or float raster whose values cannot be classes, or one that misses the scene, is a one-line
    UserError.
    """
    from slidemap.raster.geo import pixel_size_m

    with open_raster(path, option) as ds:
        if ds.count != 1:
            raise UserError(f"{option} {path}: not a vector of polygons, and a raster of {ds.count} bands "
                            f"where a label raster has one; give polygons or the band of labels alone "
                            f"(gdal_translate -b N)")
        if np.dtype(ds.dtypes[0]).kind == "c":
            raise UserError(f"{option} {path}: holds complex numbers; give a raster of class values")
        clash = sorted(set(label_values) & ({ds.nodata} if ds.nodata is not None else set()))
        if clash:
            raise UserError(f"--label-values {','.join(f'{v:g}' for v in label_values)}: {clash[0]:g} is the "
                            f"nodata value of {path} (unlabelled); give the landslide class values")
        with aligned(ds, grid, option, path, first, resampling=Resampling.nearest,
                     what="the label raster") as reader:
            yield LabelRaster(Path(path), reader, tuple(label_values), tuple(unlabelled_values),
                              None if ds.nodata is None else float(ds.nodata),
                              pixel_size_m(ds.crs, ds.transform, ds.height))
