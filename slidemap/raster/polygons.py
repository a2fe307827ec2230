"""Predicted-landslide mask -> one polygon per landslide, streamed strip by strip.

A landslide is a 4-connected group of mask pixels, labelled strip by strip with
:class:`slidemap.raster.components.ComponentLabeler`; its area and mean probability are summed on the way,
so after the last strip every landslide is known without holding the scene. Polygons are then traced per
strip in pixel coordinates (exact integers, so pieces cut by a seam dissolve into one polygon) and written
as soon as the strips have passed a landslide's last row (:class:`LandslideWriter`).

Areas come from per-row pixel areas (``slidemap.raster.geo.row_pixel_areas_m2``): they are the true ground
areas also in a geographic CRS, and equal the polygon's planar area in a projected one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from slidemap.raster.components import ComponentLabeler, Components

if TYPE_CHECKING:
    import geopandas as gpd

LAYER = "landslides"
AREA, PROB = "area_m2", "prob"


def landslide_labeler(width: int) -> ComponentLabeler:
    """The labeller of predicted landslides: 4-connected, summing ground area and probability."""
    return ComponentLabeler(width, connectivity=4, weights=(AREA, PROB))


def label_strip(labeler: ComponentLabeler, row: int, binary: np.ndarray, prob: np.ndarray,
                row_areas_m2: np.ndarray) -> np.ndarray:
    """Label the full-width strip starting at ``row``; returns its provisional labels."""
    window = Window(0, row, binary.shape[1], binary.shape[0])
    return labeler.add(window, binary, **{AREA: row_areas_m2[:, None], PROB: prob})


def mean_probability(components: Components) -> np.ndarray:
    """Mean predicted probability of each landslide."""
    return components.sums[PROB] / np.maximum(components.pixels, 1)


def polygon_pieces(ids: np.ndarray, row_offset: int = 0) -> list[tuple[int, object]]:
    """(id, Polygon) for each 4-connected run of equal non-zero ``ids`` in one strip, in **pixel** coordinates.

    That is, x = column, y = row + ``row_offset``.

    Pixel coordinates are small integers, exact in floating point, so the pieces of one landslide cut
    by a seam share their edge exactly and dissolve into one Polygon; map coordinates of a geographic
    grid would differ in the last bit and leave slivers or MultiPolygons.
    """
    import shapely
    from rasterio import features

    ids = np.ascontiguousarray(ids, dtype=np.int32)
    if not ids.any():
        return []
    # Build all polygons of the strip in three vectorised shapely calls instead of one ``shape()`` per
    # polygon (the same coordinates, so the same geometries, at a fraction of the Python overhead).
    values: list[int] = []
    rings: list = []
    ring_owner: list[int] = []
    for g, v in features.shapes(ids, mask=ids > 0, connectivity=4,
                                transform=Affine.translation(0, row_offset)):
        ring_owner.extend([len(values)] * len(g["coordinates"]))
        values.append(int(v))
        rings.extend(g["coordinates"])
    ring_lengths = np.fromiter(map(len, rings), dtype=np.intp, count=len(rings))
    xy = np.fromiter(chain.from_iterable(chain.from_iterable(rings)), dtype=np.float64,
                     count=2 * int(ring_lengths.sum())).reshape(-1, 2)
    linear_rings = shapely.linearrings(xy, indices=np.repeat(np.arange(len(rings)), ring_lengths))
    geoms = shapely.polygons(linear_rings, indices=np.asarray(ring_owner, dtype=np.intp))
    return list(zip(values, geoms.tolist(), strict=True))


def merge_pieces(pieces: Iterable[tuple[int, object]]) -> dict[int, object]:
    """One geometry per id: pieces of a landslide cut by strip seams share edges and dissolve into one."""
    import shapely

    groups: dict[int, list] = defaultdict(list)
    for i, geom in pieces:
        groups[i].append(geom)
    return {i: (g[0] if len(g) == 1 else shapely.union_all(g)) for i, g in groups.items()}


def landslides_frame(components: Components, pixel_geometries: dict[int, object], transform: Affine,
                     crs: CRS | None) -> gpd.GeoDataFrame:
    """GeoDataFrame with columns id, area_m2, mean_probability for the landslides in ``pixel_geometries``.

    ``pixel_geometries`` maps id -> geometry in pixel coordinates (from :func:`merge_pieces`); they are
    mapped through ``transform``.
    """
    import geopandas as gpd
    import shapely

    ids = np.array(sorted(pixel_geometries), dtype=np.int64)
    geoms = gpd.GeoSeries([pixel_geometries[int(i)] for i in ids])
    if len(geoms):
        geoms = gpd.GeoSeries(shapely.transform(geoms.values.to_numpy(), _affine(transform)))
    return gpd.GeoDataFrame(
        {"id": ids, "area_m2": components.sums[AREA][ids - 1].astype(np.float64),
         "mean_probability": mean_probability(components)[ids - 1].astype(np.float64)},
        geometry=geoms.set_crs(crs, allow_override=True), crs=crs)


def _affine(transform: Affine) -> Callable[[np.ndarray], np.ndarray]:
    """Coordinate function of ``transform`` for ``shapely.transform``.

    It is the very arithmetic of ``GeoSeries.affine_transform``, applied to all geometries' coordinates in
    one call.
    """
    a, b, d, e, xoff, yoff = transform.a, transform.b, transform.d, transform.e, transform.c, transform.f

    def apply(coords: np.ndarray) -> np.ndarray:
        x, y = coords.T
        return np.stack([a * x + b * y + xoff, d * x + e * y + yoff]).T

    return apply


class LandslideWriter:
    """Streams polygons into a GeoPackage, each landslide written once the strips have passed its last row.

    Pieces are collected strip by strip, and each landslide is dissolved before it is written.

    Memory holds only the landslides that cross the current strip, not all of them. Rows are written
    in the order landslides end going down the grid; the ``id`` column keeps the top-to-bottom ids.
    """

    def __init__(self, path: str | Path, components: Components, transform: Affine, crs: CRS | None,
                 batch: int = 5000) -> None:
        self.path, self.components, self.transform, self.crs = Path(path), components, transform, crs
        self.batch = batch
        self.open: dict[int, list] = defaultdict(list)
        self.done: dict[int, object] = {}
        self.written = 0

    def add_pieces(self, pieces: Iterable[tuple[int, object]], below: int) -> None:
        """Take one strip's pieces (from :func:`polygon_pieces`) whose strip ends above row ``below``.

        This lets the caller polygonise the next strip in another thread meanwhile.
        """
        for i, geom in pieces:
            self.open[i].append(geom)
        open_ids = np.fromiter(self.open, dtype=np.int64, count=len(self.open))
        finished = open_ids[self.components.bottom_row[open_ids - 1] < below].tolist()
        self.done.update(merge_pieces((i, g) for i in finished for g in self.open.pop(i)))
        if len(self.done) >= self.batch:
            self._flush()

    def close(self) -> int:
        """Write what is left (an empty layer if there were no landslides); returns the count written."""
        self.done.update(merge_pieces((i, g) for i, gs in self.open.items() for g in gs))
        self.open.clear()
        if self.done or not self.written:
            self._flush()
        return self.written

    def _flush(self) -> None:
        import pyogrio

        frame = landslides_frame(self.components, self.done, self.transform, self.crs)
        pyogrio.write_dataframe(frame, self.path, layer=LAYER, driver="GPKG", geometry_type="Polygon",
                                promote_to_multi=False, append=self.written > 0)
        self.written += len(frame)
        self.done = {}


def mask_to_landslides(mask: np.ndarray, transform: Affine, crs: CRS | None, prob: np.ndarray | None = None,
                       min_area_m2: float = 0.0, strip_rows: int = 512) -> gpd.GeoDataFrame:
    """In-memory convenience: polygons of a (H, W) 0/1 mask (255 = nodata) as a GeoDataFrame.

    Uses the same streamed labelling as ``slidemap predict`` (strips of ``strip_rows``), so other stages
    and tests get identical polygons for identical masks.
    """
    from slidemap.raster.geo import row_pixel_areas_m2

    mask = np.asarray(mask)
    prob = np.zeros(mask.shape, dtype=np.float32) if prob is None else np.asarray(prob)
    labeler = landslide_labeler(mask.shape[1])
    strips = []
    for r0 in range(0, mask.shape[0], strip_rows):
        r1 = min(r0 + strip_rows, mask.shape[0])
        strips.append((r0, label_strip(labeler, r0, mask[r0:r1] == 1, prob[r0:r1],
                                       row_pixel_areas_m2(crs, transform, r0, r1 - r0))))
    comps = labeler.resolve({AREA: min_area_m2})
    pieces = []
    for r0, labels in strips:
        pieces += polygon_pieces(comps.ids(labels), r0)
    return landslides_frame(comps, merge_pieces(pieces), transform, crs)
