"""Pixel grids in ground units, the grid value object, and the one rule from an area's polygon to a window.

Metric pixel sizes and areas work in any CRS (geographic included); every stage compares rasters by their
:class:`Grid`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window, subdivide

if TYPE_CHECKING:
    import rasterio.io
    from shapely.geometry import Polygon
    from shapely.geometry.base import BaseGeometry

WGS84_A = 6378137.0
WGS84_F = 1 / 298.257223563
WGS84_E2 = WGS84_F * (2 - WGS84_F)


def meridian_radii(lat_deg: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Meridional (M) and prime-vertical (N) radii of curvature of WGS84 at a latitude."""
    phi = np.radians(lat_deg)
    s2 = np.sin(phi) ** 2
    m = WGS84_A * (1 - WGS84_E2) / (1 - WGS84_E2 * s2) ** 1.5
    n = WGS84_A / np.sqrt(1 - WGS84_E2 * s2)
    return m, n


def _linear_unit_m(crs: CRS) -> float:
    try:
        factor = crs.linear_units_factor[1]
    except Exception:  # noqa: BLE001 - CRS without linear units
        factor = 1.0
    return float(factor)


def pixel_size_m(crs: CRS, transform: Affine, height: int) -> tuple[float, float]:
    """Pixel width and height in metres on the ground, measured at the grid's centre row."""
    dx, dy = row_pixel_sizes_m(crs, transform, height // 2, 1)
    return float(dx[0]), float(dy[0])


def row_pixel_areas_m2(crs: CRS, transform: Affine, row_off: int, nrows: int) -> np.ndarray:
    """Ground area of one pixel in m² for each row ``row_off .. row_off+nrows-1``."""
    dx, dy = row_pixel_sizes_m(crs, transform, row_off, nrows)
    return dx * dy


def row_pixel_sizes_m(crs: CRS, transform: Affine, row_off: int, nrows: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel width and height in metres on the ground for each row ``row_off .. row_off+nrows-1``.

    Geographic CRS: degrees converted on the WGS84 ellipsoid (the width shrinks with latitude).
    Projected CRS: the CRS unit in metres, divided by the projection's scale factor where it departs
    from 1 by more than 1 % (Web Mercator at 45° N doubles lengths; UTM's 0.04 % is left as the
    planar metres every GIS reports).
    """
    rows = np.arange(row_off, row_off + nrows, dtype=np.float64) + 0.5
    if crs is not None and crs.is_geographic:
        lat = transform.f + transform.e * rows
        m, n = meridian_radii(lat)
        return np.radians(abs(transform.a)) * n * np.cos(np.radians(lat)), np.radians(abs(transform.e)) * m
    unit = _linear_unit_m(crs) if crs is not None else 1.0
    dx = np.full(nrows, abs(transform.a) * unit)
    dy = np.full(nrows, abs(transform.e) * unit)
    if crs is not None and crs.is_projected:
        k, h = _scale_factors(crs.to_wkt(), transform, rows)
        distorted = (np.abs(k - 1) > 0.01) | (np.abs(h - 1) > 0.01)
        dx = np.where(distorted, dx / k, dx)
        dy = np.where(distorted, dy / h, dy)
    return dx, dy


def _scale_factors(wkt: str, transform: Affine, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parallel (k) and meridional (h) scale factors of a projected CRS in each row; 1.0 where it cannot tell.

    They are taken at the grid's first column: the grid's width is not known here, and the distortions that matter
    vary with latitude. "Cannot tell" is e.g. outside the projection's domain.
    """
    try:
        import pyproj

        crs = pyproj.CRS.from_wkt(wkt)
        proj, to_geodetic = pyproj.Proj(crs), pyproj.Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)
        x = np.full(rows.shape, transform.c + transform.a * 0.5)
        y = transform.f + transform.e * rows
        lon, lat = to_geodetic.transform(x, y)
        f = proj.get_factors(lon, lat)
        k = np.asarray(f.parallel_scale, dtype=np.float64)
        h = np.asarray(f.meridional_scale, dtype=np.float64)
    except Exception:  # noqa: BLE001 - a CRS pyproj cannot evaluate: keep nominal metres
        return np.ones_like(rows), np.ones_like(rows)
    bad = ~np.isfinite(k) | ~np.isfinite(h) | (k <= 0) | (h <= 0)
    return np.where(bad, 1.0, k), np.where(bad, 1.0, h)


def masked_area_km2(mask: np.ndarray, row_areas_m2: np.ndarray) -> float:
    """Area in km² of the True pixels of a 2-D boolean ``mask`` whose rows have pixels of ``row_areas_m2``.

    ``row_areas_m2`` is :func:`row_pixel_areas_m2` over the mask's rows, computed once for all the masks of
    one block.
    """
    per_row = mask.sum(axis=1, dtype=np.int64)
    return float((per_row * row_areas_m2).sum() / 1e6)


def block_windows(width: int, height: int, block: int = 1024) -> list[Window]:
    """Row-major ``block`` x ``block`` windows covering a ``width`` x ``height`` grid."""
    return subdivide(Window(0, 0, width, height), block, block)


def transform_bounds_xy(transform: Affine, width: int, height: int) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of a ``width`` x ``height`` pixel grid with ``transform``."""
    xs, ys = zip(*(transform @ c for c in ((0, 0), (width, 0), (0, height), (width, height))), strict=True)
    return min(xs), min(ys), max(xs), max(ys)


@dataclass(frozen=True)
class Grid:
    """A pixel grid (CRS, transform, size): what two rasters must share to be compared pixel by pixel."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @classmethod
    def of(cls, ds: rasterio.io.DatasetReaderBase) -> Grid:
        """The grid of an open rasterio dataset."""
        return cls(ds.crs, ds.transform, ds.width, ds.height)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of the whole grid in its CRS."""
        return transform_bounds_xy(self.transform, self.width, self.height)

    def box(self, col_off: int = 0, row_off: int = 0, width: int | None = None, height: int | None = None
            ) -> Polygon:
        """Polygon (grid CRS) covering a block of whole pixels; the whole grid by default."""
        from shapely.geometry import Polygon

        w = self.width - col_off if width is None else width
        h = self.height - row_off if height is None else height
        c0, r0 = col_off, row_off
        corners = [(c0, r0), (c0 + w, r0), (c0 + w, r0 + h), (c0, r0 + h)]
        return Polygon([self.transform @ c for c in corners])

    def window_transform(self, window: Window) -> Affine:
        """The transform of ``window``'s pixels (its top-left pixel becomes (0, 0))."""
        return self.transform @ Affine.translation(window.col_off, window.row_off)


PIXEL_TOLERANCE = 1e-6
"""Pixel-space rounding slack of :func:`area_window` (float noise of reprojected pixel-edge polygons)."""


def area_window(geoms: BaseGeometry | list[BaseGeometry] | tuple[BaseGeometry, ...] | None,
                grid: Grid) -> Window | None:
    """The one rule from an area's polygon(s) to pixels: the smallest whole-pixel window of ``grid`` holding them.

    Their bounds are rounded outwards (as ``rasterio.features.geometry_window``) and clipped to the grid; None
    when they miss it or are empty.
    """
    import math

    from rasterio.features import bounds

    geoms = [g for g in (geoms if isinstance(geoms, list | tuple) else [geoms])
             if g is not None and not g.is_empty]
    if not geoms:
        return None
    # As geometry_window (bounds in pixel space, rounded outwards), but bounds within 1e-6 px of a pixel
    # edge count as on it: an area drawn on pixel edges and reprojected (areas.gpkg) is a few 1e-12 px
    # off, which must not add a row or column of pixels outside it.
    inverse = ~grid.transform
    boxes = [bounds(g, transform=inverse) for g in geoms]  # in pixels: columns 0 and 2, rows 1 and 3
    cols = [v for b in boxes for v in (b[0], b[2])]
    rows = [v for b in boxes for v in (b[1], b[3])]
    c0 = max(math.floor(min(cols) + PIXEL_TOLERANCE), 0)
    r0 = max(math.floor(min(rows) + PIXEL_TOLERANCE), 0)
    c1 = min(math.ceil(max(cols) - PIXEL_TOLERANCE), grid.width)
    r1 = min(math.ceil(max(rows) - PIXEL_TOLERANCE), grid.height)
    return Window(c0, r0, c1 - c0, r1 - r0) if c1 > c0 and r1 > r0 else None


def bounds_overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    """Whether two (xmin, ymin, xmax, ymax) boxes in one CRS share area (touching edges do not)."""
    from rasterio.coords import disjoint_bounds

    return not disjoint_bounds(a, b) and a[0] != b[2] and b[0] != a[2] and a[1] != b[3] and b[1] != a[3]
