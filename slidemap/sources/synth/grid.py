"""The image grid of a synthetic study area, its layout (train and test areas) and shared constants.

The constants every part of the generator shares: CRSs, origin, band names, cover classes.

Named ``SynthGrid`` (not ``Grid``) so that it is never mistaken for :class:`slidemap.raster.geo.Grid`,
the grid of a prepared scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from affine import Affine
from rasterio.crs import CRS

if TYPE_CHECKING:
    from shapely.geometry import Polygon

IMAGE_CRS = CRS.from_epsg(32723)  # UTM 23S: Nova Friburgo, the area of study 000
DEM_CRS = CRS.from_epsg(4326)
INVENTORY_CRS = CRS.from_epsg(4326)
AREAS_CRS = CRS.from_epsg(3857)
ORIGIN_XY = (740_000.0, 7_540_000.0)  # upper-left corner of the image in UTM 23S
BANDS = ("blue", "green", "red", "red_edge", "nir")
DEM_RESOLUTION_M = 12.5  # like ALOS PALSAR RTC
DEM_MARGIN_M = 250.0
TRAIN_FRACTION = 0.6
PRE_EVENT_ZOOM = 2  # pre-event pixels are 2x the image's (sensor.py's averaging assumes exactly 2)

# Cover classes of the internal class raster (kept for diagnostics; not written).
COVER = {"vegetation": 0, "bare_field": 1, "crop_field": 2, "urban": 3, "building": 4, "water": 5,
         "river_bar": 6, "road": 7, "scar": 8, "runout": 9}

@dataclass(frozen=True)
class SynthGrid:
    """The image grid and the coarser terrain grid (``k`` pixels per cell) around it with a margin."""

    size: int
    pixel: float
    k: int
    margin: int  # terrain cells beyond the image on each side

    @property
    def transform(self) -> Affine:
        """The image grid's transform (UTM 23S, upper-left corner at ``ORIGIN_XY``)."""
        return Affine(self.pixel, 0.0, ORIGIN_XY[0], 0.0, -self.pixel, ORIGIN_XY[1])

    @property
    def extent_m(self) -> float:
        """Side of the square image in metres."""
        return self.size * self.pixel

    @property
    def cell(self) -> float:
        """Side of a terrain cell in metres."""
        return self.pixel * self.k

    @property
    def terrain_shape(self) -> tuple[int, int]:
        """(rows, cols) of the terrain grid: the image in cells, plus the margin on each side."""
        n = math.ceil(self.size / self.k) + 2 * self.margin
        return n, n

    @property
    def terrain_bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of the terrain grid in metres."""
        xmin = ORIGIN_XY[0] - self.margin * self.cell
        ymax = ORIGIN_XY[1] + self.margin * self.cell
        rows, cols = self.terrain_shape
        return xmin, ymax - rows * self.cell, xmin + cols * self.cell, ymax

    def terrain_index(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fractional (row, col) of map coordinates on the terrain grid (cell centres are integers)."""
        xmin, _, _, ymax = self.terrain_bounds
        return (ymax - y) / self.cell - 0.5, (x - xmin) / self.cell - 0.5

    def pixel_to_xy(self, uv: np.ndarray) -> np.ndarray:
        """Map coordinates of continuous image coordinates ``(u, v)`` = (column, row), corners integer."""
        return np.column_stack([ORIGIN_XY[0] + uv[:, 0] * self.pixel, ORIGIN_XY[1] - uv[:, 1] * self.pixel])

def make_areas(grid: SynthGrid) -> dict[str, tuple[str, Polygon]]:
    """Train area on the left 60 %, two test areas stacked on the right: disjoint, sharing edges only.

    The train outline carries the test areas' common corner as a vertex, so after any reprojection
    the shared edges stay identical and the areas never overlap.
    """
    from shapely.geometry import Polygon

    x0, y0 = ORIGIN_XY
    p, n = grid.pixel, grid.size
    xs, ym = x0 + round(TRAIN_FRACTION * n) * p, y0 - (n // 2) * p
    x1, y1 = x0 + n * p, y0 - n * p
    return {
        "train": ("train", Polygon([(x0, y0), (xs, y0), (xs, ym), (xs, y1), (x0, y1)])),
        "test_a": ("test", Polygon([(xs, y0), (x1, y0), (x1, ym), (xs, ym)])),
        "test_b": ("test", Polygon([(xs, ym), (x1, ym), (x1, y1), (xs, y1)])),
    }


def region_raster(grid: SynthGrid) -> np.ndarray:
    """The areas of :func:`make_areas` as a raster on the image grid: 0 train, 1 test_a, 2 test_b."""
    region = np.zeros((grid.size, grid.size), np.uint8)
    region[: grid.size // 2, round(TRAIN_FRACTION * grid.size):] = 1
    region[grid.size // 2:, round(TRAIN_FRACTION * grid.size):] = 2
    return region


def pre_event_grid(grid: SynthGrid) -> tuple[Affine, int]:
    """Transform and width (= height) of the pre-event image's grid.

    Its pixels are ``PRE_EVENT_ZOOM`` times larger, offset by half an image pixel to the south-east, inside the
    image's extent.

    A different grid on purpose: a consumer that stacks the two images must co-register them, as it
    must with real images from two dates. Pre-event pixel ``j`` spans image pixels ``2j + 0.5`` to
    ``2j + 2.5`` (columns and rows alike).
    """
    pixel = grid.pixel * PRE_EVENT_ZOOM
    x0, y0 = ORIGIN_XY[0] + grid.pixel / 2, ORIGIN_XY[1] - grid.pixel / 2
    return Affine(pixel, 0.0, x0, 0.0, -pixel, y0), (grid.size - 1) // PRE_EVENT_ZOOM
