"""The landslide inventory on the scene grid: polygons (any OGR format and CRS) or a label raster.

Either kind gives, block by block, the scene's truth (uint8: 1 landslide, 0 background, 255 unknown) and
says which landslide owns each landslide pixel, so that prepare counts landslides the same way for both:
for polygons a landslide is a polygon (one that owns at least one valid mask pixel), for a label raster it
is a 4-connected component of landslide pixels on the scene grid (``slidemap.raster.components``).
Polygons are reprojected to the scene CRS, repaired, and rasterised with the centre rule (or
``all_touched``); label rasters are described in ``slidemap.raster.labels``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rasterio import features
from rasterio.windows import Window

from slidemap.errors import UserError
from slidemap.formats.gdal import read_vector
from slidemap.raster.components import ComponentLabeler
from slidemap.raster.geo import Grid, bounds_overlap
from slidemap.raster.labels import LabelRaster

if TYPE_CHECKING:
    import geopandas as gpd
    from shapely.geometry.base import BaseGeometry

Warn = Callable[[str], None]


@dataclass
class PolygonInventory:
    """The landslide polygons, reprojected to the scene CRS and repaired."""

    path: Path
    gdf: gpd.GeoSeries  # the polygons intersecting the scene
    features: int
    repaired: int
    grid: Grid
    all_touched: bool = False

    kind = "polygons"

    @property
    def inside(self) -> int:
        """How many polygons intersect the scene."""
        return len(self.gdf)

    def ids(self, w: Window) -> np.ndarray:
        """Polygon number (1-based, 0: none) of each pixel of block ``w``; where polygons overlap, the later."""
        shape = (int(w.height), int(w.width))
        if len(self.gdf) == 0:
            return np.zeros(shape, dtype=np.int32)
        box = self.grid.box(int(w.col_off), int(w.row_off), shape[1], shape[0])
        hits = np.sort(self.gdf.sindex.query(box, predicate="intersects"))
        if len(hits) == 0:
            return np.zeros(shape, dtype=np.int32)
        return features.rasterize(((self.gdf.iloc[i], int(i) + 1) for i in hits), out_shape=shape, fill=0,
                                  transform=self.grid.window_transform(w), all_touched=self.all_touched,
                                  dtype="int32")

    def mask(self, w: Window) -> np.ndarray:
        """Truth of block ``w``: uint8 1 inside a polygon, else 0 (a polygon inventory knows every pixel)."""
        return (self.ids(w) > 0).astype(np.uint8)


Inventory = PolygonInventory | LabelRaster


def load_polygons(path: Path, grid: Grid, all_touched: bool, warn: Warn) -> PolygonInventory:
    """Read, reproject and repair the inventory; keep the polygons that intersect the scene."""
    import geopandas as gpd
    import shapely

    gdf = read_vector(path, "--inventory")
    n_features = len(gdf)
    geoms = gdf.geometry[gdf.geometry.notna() & ~gdf.geometry.is_empty]
    if len(geoms) == 0:
        warn(f"--inventory {path}: holds no polygons; the mask will have no landslides")
        return PolygonInventory(path, gpd.GeoSeries([], crs=grid.crs), n_features, 0, grid, all_touched)
    invalid = ~geoms.is_valid
    repaired = int(invalid.sum())
    if repaired:
        geoms = geoms.copy()
        geoms[invalid] = shapely.make_valid(geoms[invalid].values)
        noun = "geometry" if repaired == 1 else "geometries"
        warn(f"--inventory {path}: repaired {repaired} invalid {noun} (self-intersections etc.)")
    polygons = geoms.apply(_polygonal)
    polygons = polygons[polygons.notna()]
    if len(polygons) == 0:
        raise UserError(f"--inventory {path}: holds no polygons ({geoms.geom_type.iloc[0]}); give landslide "
                        f"polygons")
    polygons = gpd.GeoSeries(polygons.values, crs=gdf.crs).to_crs(grid.crs)
    polygons = polygons[polygons.notna() & ~polygons.is_empty & np.isfinite(polygons.bounds).all(axis=1)]
    if len(polygons) == 0 or not bounds_overlap(tuple(polygons.total_bounds), grid.bounds):
        raise UserError(f"--inventory {path}: does not overlap the images; give the inventory of this scene")
    inside = polygons[polygons.intersects(grid.box())].reset_index(drop=True)
    if len(inside) == 0:
        warn(f"--inventory {path}: no polygon lies inside the scene; the mask will have no landslides")
    return PolygonInventory(path, inside, n_features, repaired, grid, all_touched)


def _polygonal(geom: BaseGeometry | None) -> BaseGeometry | None:
    """The polygon parts of a geometry (make_valid may return collections with lines), or None."""
    import shapely

    if geom is None:
        return None
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [g for g in shapely.get_parts(geom) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else None


@dataclass
class LandslideCounter:
    """Which landslide owns each landslide pixel, fed the scene's blocks in row-major order.

    :meth:`owners` gives per block an id per pixel (provisional for label rasters); :meth:`count` says how
    many distinct landslides a set of those ids makes, once every block has been fed.
    """

    inventory: Inventory | None
    width: int
    _labeler: ComponentLabeler | None = None
    _lut: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.inventory, LabelRaster):
            self._labeler = ComponentLabeler(self.width, connectivity=4)

    def owners(self, w: Window, landslide: np.ndarray) -> np.ndarray:
        """Ids (int, 0: none) of block ``w`` whose landslide pixels (mask == 1) are ``landslide``."""
        if self.inventory is None:
            return np.zeros(landslide.shape, dtype=np.int64)
        if self._labeler is not None:
            return self._labeler.add(w, landslide)
        assert isinstance(self.inventory, PolygonInventory)  # a label raster always has a labeler
        return self.inventory.ids(w)

    def count(self, ids: set[int]) -> int:
        """Distinct landslides among ``ids`` (collected from :meth:`owners` at landslide pixels)."""
        if self._labeler is None:
            return len(ids - {0})
        if self._lut is None:
            self._lut = self._labeler.resolve().lut
        return len({int(v) for v in self._lut[np.fromiter(ids, dtype=np.int64)]} - {0}) if ids else 0
