"""Co-registration: the scene grid (the first image's, or a target resolution), and every input raster on it.

An input on exactly the scene grid is read as it is; any other is warped onto the grid through a GDAL
virtual warped dataset (:class:`rasterio.vrt.WarpedVRT`) read window by window, so memory stays bounded.
How it is resampled follows what the warp does to its pixels (:func:`resampling_for`): **average** when
the grid's pixels are coarser than the source's (every source pixel contributes, no aliasing), **bilinear**
when they are as fine or finer; categorical rasters (label rasters) are always taken **nearest**.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from slidemap.errors import UserError
from slidemap.raster.geo import Grid, bounds_overlap, pixel_size_m

COARSENING = 1.25
"""Grid pixels this many times the source's (linear, in ground metres) or more are averaged; below it
(a reprojection of a grid of about the same resolution, or refining) the warp is bilinear."""
MIN_RESOLUTION_M, MAX_RESOLUTION_M = 0.01, 100_000.0


def grid_of(ds: rasterio.DatasetReader, path: Path, option: str = "--image") -> Grid:
    """The north-up grid of ``ds``; a rotated or south-up raster is a one-line UserError."""
    t = ds.transform
    if t.b != 0 or t.d != 0:
        raise UserError(f"{option} {path}: has a rotated grid; warp it north-up first (gdalwarp) and retry")
    if t.e >= 0:
        raise UserError(f"{option} {path}: rows run northwards (positive y pixel size); warp it north-up "
                        f"first")
    return Grid(ds.crs, t, ds.width, ds.height)


def ground_pixel_m(grid: Grid) -> float:
    """The grid's pixel size in ground metres at its centre (geometric mean of width and height)."""
    dx, dy = pixel_size_m(grid.crs, grid.transform, grid.height)
    return math.sqrt(dx * dy)


def target_grid(grid: Grid, resolution_m: float | None) -> Grid:
    """``grid`` resampled to pixels of ``resolution_m`` ground metres (None: ``grid`` itself).

    The pixel is ``resolution_m`` x ``resolution_m`` metres at the grid's centre, in the grid's own CRS (so
    in a geographic CRS its size in degrees differs east-west and north-south); the new grid keeps the
    top-left corner and covers the whole extent (the last column and row may reach a little beyond it).
    """
    if resolution_m is None:
        return grid
    dx, dy = pixel_size_m(grid.crs, grid.transform, grid.height)
    t = grid.transform
    a, e = t.a * resolution_m / dx, t.e * resolution_m / dy
    width = max(1, math.ceil(grid.width * t.a / a - 1e-6))
    height = max(1, math.ceil(grid.height * t.e / e - 1e-6))
    return Grid(grid.crs, Affine(a, 0.0, t.c, 0.0, e, t.f), width, height)


def resampling_for(ds: rasterio.DatasetReader, grid: Grid) -> Resampling:
    """Average when ``grid`` coarsens ``ds`` (by COARSENING or more), else bilinear."""
    try:
        source = ground_pixel_m(Grid(ds.crs, ds.transform, ds.width, ds.height))
    except Exception:  # noqa: BLE001 - a CRS pyproj cannot measure: keep the safe bilinear
        return Resampling.bilinear
    return Resampling.average if ground_pixel_m(grid) >= COARSENING * source else Resampling.bilinear


def on_grid(ds: rasterio.DatasetReader, grid: Grid) -> bool:
    """Whether ``ds`` lies exactly on ``grid`` (same CRS, size and transform)."""
    return (ds.crs == grid.crs and ds.width == grid.width and ds.height == grid.height
            and ds.transform.almost_equals(grid.transform, precision=1e-9 * max(1.0, abs(grid.transform.a))))


@dataclass(frozen=True)
class OnGrid:
    """An input raster as seen on the scene grid: its data bands and where it holds data."""

    ds: rasterio.io.DatasetReaderBase  # the file itself, or a WarpedVRT of it onto the grid
    count: int  # data bands (a VRT's added alpha band excluded)
    alpha: int | None = None  # 1-based alpha band of a VRT (sources without a nodata value)
    resampling: str = "none"  # how it was brought onto the grid ("none": it lies on it)

    def read(self, window: Window, bands: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Bands (C, H, W) float32 with NaN at nodata, and validity (H, W): True where every band has data."""
        idx = list(bands) if bands else list(range(1, self.count + 1))
        data = self.ds.read(idx, window=window, out_dtype="float32", masked=True)
        values = data.filled(np.nan)
        valid = ~np.ma.getmaskarray(data).any(axis=0) & np.isfinite(values).all(axis=0)
        if self.alpha is not None:
            valid &= self.ds.read(self.alpha, window=window) > 0
        values[:, ~valid] = np.nan
        return values, valid


@contextlib.contextmanager
def aligned(ds: rasterio.DatasetReader, grid: Grid, option: str, path: Path, first: Path,
            resampling: Resampling | None = None, what: str = "the image") -> Iterator[OnGrid]:
    """``ds`` itself if it lies on ``grid``, else a WarpedVRT of it onto ``grid``.

    ``resampling`` defaults to :func:`resampling_for`. An input that cannot reach the grid is a one-line UserError
    naming ``option`` and ``path`` (``what`` says what it is, ``first`` is the image that defined the grid).
    """
    if on_grid(ds, grid):
        yield OnGrid(ds, ds.count)
        return
    from rasterio.warp import transform_bounds

    try:
        in_grid_crs = transform_bounds(ds.crs, grid.crs, *ds.bounds, densify_pts=21)
    except Exception as e:  # noqa: BLE001 - PROJ raises several types
        raise UserError(f"{option} {path}: cannot be aligned with {first} (CRS transform failed: "
                        f"{str(e).splitlines()[0]}); give rasters in compatible CRSs") from None
    if not all(np.isfinite(in_grid_crs)) or not bounds_overlap(in_grid_crs, grid.bounds):
        raise UserError(f"{option} {path}: {what} does not overlap {first}; give a raster that covers "
                        f"the scene")
    method = resampling if resampling is not None else resampling_for(ds, grid)
    # Without a nodata value, an alpha band marks the pixels outside the source's footprint. The warp works
    # in float32 (what the stack holds), so averaged or interpolated digital numbers are not rounded.
    add_alpha = ds.nodata is None
    vrt = WarpedVRT(ds, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                    resampling=method, add_alpha=add_alpha, tolerance=0.01, dtype="float32")
    try:
        yield OnGrid(vrt, ds.count, alpha=ds.count + 1 if add_alpha else None, resampling=method.name)
    finally:
        vrt.close()
