"""Rasters and vectors on disk: opening and reading with one-line errors, and the GeoTIFF layout we write.

Every stage reads rasters through :func:`open_raster` / :func:`read_raster` and vectors through
:func:`read_vector`, so a missing file, a non-raster, a truncated or corrupt GeoTIFF (GDAL fails only when
the damaged block is read) or a vector OGR cannot open is always one line naming the file. Every GeoTIFF
slidemap writes is tiled and deflate-compressed (:func:`gtiff_profile`), written in whole block rows
(:class:`RowWriter`) and given overviews (:func:`build_overviews`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.windows import Window

from slidemap.errors import UserError
from slidemap.formats.files import require_file

if TYPE_CHECKING:
    import geopandas as gpd

DEFLATE_LEVEL = 1
"""Deflate level of every GeoTIFF slidemap writes: level 1 writes a float32 stack 2.6x faster than GDAL's
default 6 at the same size (with predictor 3; docs/performance.md), and writing was most of ``prepare``."""
GDAL_CACHE_MB = 256
"""GDAL's block cache while a stage streams a scene (GDAL's default, 5 % of RAM, grows with the scene)."""
OVERVIEW_FACTORS = (2, 4, 8, 16, 32, 64)
PREDICTOR_CODECS = ("deflate", "lzw", "zstd", "lzma")
"""The GeoTIFF codecs a predictor helps (GDAL ignores one with any other, e.g. PackBits)."""
OVERVIEW_MIN_SIZE = 256  # gdaladdo's default -minsize, and the side of our GeoTIFF blocks
GPKG_TIMESTAMP = "2000-01-01T00:00:00Z"
"""The ``last_change`` every GeoPackage slidemap writes records, so that reruns give identical bytes."""


def _reason(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:160]


def open_raster(path: str | Path, option: str, need_crs: bool = True) -> rasterio.DatasetReader:
    """Open a raster for reading; every failure is a one-line UserError naming ``option``.

    Failures: a missing file, a non-raster, or (with ``need_crs``) a raster without a CRS.
    """
    p = require_file(path, option)
    try:
        with warnings.catch_warnings():  # a raster without georeferencing gets our own one-line error below
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            ds = rasterio.open(p)
    except rasterio.errors.RasterioIOError:
        raise UserError(f"{option} {p}: not a raster GDAL can read; give a GeoTIFF") from None
    if need_crs and ds.crs is None:
        ds.close()
        raise UserError(f"{option} {p}: has no CRS; assign one (gdal_edit.py -a_srs EPSG:XXXX) and retry")
    return ds


def is_raster(path: str | Path, option: str) -> bool:
    """Whether GDAL opens ``path`` (an existing file, else a one-line UserError) as a raster.

    This is how an input that may be either a raster or a vector (a label raster or polygons) is told apart.
    """
    p = require_file(path, option)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(p) as ds:
                return ds.count > 0 and ds.width > 0 and ds.height > 0
    except (rasterio.errors.RasterioIOError, rasterio.errors.RasterioError):
        return False


def read_block(ds: rasterio.io.DatasetReaderBase, option: str, indexes: int | Sequence[int] | None = None,
               window: Window | None = None, out_dtype: str | None = None, **kwargs: Any) -> np.ndarray:
    """``ds.read(...)`` with GDAL read errors (a truncated or corrupt file) as a one-line UserError."""
    try:
        if isinstance(indexes, Sequence):
            indexes = list(indexes)
        return ds.read(indexes, window=window, out_dtype=out_dtype, **kwargs)
    except (rasterio.errors.RasterioIOError, rasterio.errors.RasterioError) as e:
        raise UserError(f"{option} {ds.name}: cannot be read ({_reason(e)}); the file is truncated or "
                        f"corrupt, write it again") from None


def read_raster(path: str | Path, option: str, indexes: int | Sequence[int] | None = None,
                window: Window | None = None, out_dtype: str | None = None) -> np.ndarray:
    """Open ``path``, read ``indexes`` over ``window`` and close it; every failure is one line."""
    with open_raster(path, option, need_crs=False) as ds:
        return read_block(ds, option, indexes, window, out_dtype)


def read_vector(path: str | Path, option: str) -> gpd.GeoDataFrame:
    """Read any OGR vector into a GeoDataFrame; errors name ``option``."""
    import geopandas as gpd
    import pyogrio

    p = require_file(path, option)
    try:
        gdf = gpd.read_file(p)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, pyogrio.errors.FieldError,
            ValueError, OSError) as e:
        raise UserError(f"{option} {p}: not a vector file OGR can read ({_reason(e)})") from None
    if "geometry" not in gdf or gdf.geometry.name is None:
        raise UserError(f"{option} {p}: has no geometry column")
    if len(gdf) and gdf.crs is None:
        raise UserError(f"{option} {p}: has no CRS; save it with a CRS (e.g. a .prj beside a Shapefile)")
    return gdf


def gtiff_profile(width: int, height: int, count: int, dtype: str, crs: CRS | None, transform: Affine,
                  nodata: float | None = None, block: int = 256, compress: str = "deflate") -> dict[str, Any]:
    """Profile of a tiled, compressed GeoTIFF (the only raster layout slidemap writes)."""
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": count, "dtype": dtype,
        "crs": crs, "transform": transform, "nodata": nodata, "compress": compress,
        "BIGTIFF": "IF_SAFER",
    }
    if width >= block and height >= block:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    if compress == "deflate":
        profile["zlevel"] = DEFLATE_LEVEL
    if compress in PREDICTOR_CODECS and np.dtype(dtype).kind == "f":
        profile["predictor"] = 3
    elif compress in PREDICTOR_CODECS and np.dtype(dtype).itemsize > 1:
        profile["predictor"] = 2
    return profile


class RowWriter:
    """Writes consecutive rows to band 1, buffered to whole block rows so no compressed block is written twice.

    Rewritten blocks would bloat a compressed GeoTIFF.
    """

    def __init__(self, ds: rasterio.io.DatasetWriter, block: int = 256) -> None:
        self.ds, self.block, self.next_row = ds, block, 0
        self.pending: list[np.ndarray] = []

    def write(self, rows: np.ndarray) -> None:
        """Queue ``rows`` (the next ones down) and write every whole block row they complete."""
        self.pending.append(rows)
        n = sum(len(p) for p in self.pending)
        full = (n // self.block) * self.block
        if full:
            self._flush(full)

    def close(self) -> None:
        """Write the rows still queued (the last, partial block row)."""
        n = sum(len(p) for p in self.pending)
        if n:
            self._flush(n)

    def _flush(self, n: int) -> None:
        data = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        self.ds.write(data[:n], 1, window=Window(0, self.next_row, data.shape[1], n))
        self.next_row += n
        self.pending = [data[n:]] if n < len(data) else []


def overview_factors(width: int, height: int) -> list[int]:
    """Overview levels as ``gdaladdo`` picks them (``-minsize 256``): halve until the smallest fits a block.

    A raster that already fits one 256-px block gets none: a GIS reads it whole faster than an overview.
    """
    return [f for f in OVERVIEW_FACTORS if max(width, height) / (f // 2) > OVERVIEW_MIN_SIZE]


def build_overviews(path: Path, resampling: Resampling, size: tuple[int, int] | None = None) -> None:
    """Internal overviews (deflate) so a GIS draws a large raster quickly at any zoom.

    ``size`` (width, height), when the caller knows it, saves opening the file to learn it.
    """
    if size is None:
        with rasterio.open(path) as ds:
            size = ds.width, ds.height
    factors = overview_factors(*size)
    if not factors:
        return
    with rasterio.Env(COMPRESS_OVERVIEW="DEFLATE"), rasterio.open(path, "r+") as ds:
        ds.build_overviews(factors, resampling)
        ds.update_tags(ns="rio_overview", resampling=resampling.name)


@contextlib.contextmanager
def pinned_gpkg_timestamp(stamp: str = GPKG_TIMESTAMP) -> Iterator[None]:
    """GeoPackages written meanwhile record ``stamp`` as their last change instead of the wall clock.

    So the same data gives the same bytes (users hash results).
    """
    import pyogrio

    previous = pyogrio.get_gdal_config_option("OGR_CURRENT_DATE")
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": stamp})
    try:
        yield
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": previous})
