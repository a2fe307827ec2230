"""Ground metres and km² from slidemap.raster.geo in geographic, projected and distorting projected CRSs."""

import numpy as np
import pyproj
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS
from shapely.geometry import box

from slidemap.raster.geo import masked_area_km2, pixel_size_m, row_pixel_areas_m2


def _geodesic_km2(crs: CRS, geom) -> float:
    to_ll = pyproj.Transformer.from_crs(crs.to_wkt(), "EPSG:4326", always_xy=True)
    dense = shapely.segmentize(geom, max_segment_length=abs(geom.bounds[2] - geom.bounds[0]) / 50)
    ll = shapely.transform(dense, lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1])))
    return abs(pyproj.Geod(ellps="WGS84").geometry_area_perimeter(ll)[0]) / 1e6


@pytest.mark.parametrize("epsg, transform", [
    (3857, Affine(10, 0, 1_000_000, 0, -10, 5_621_521.5)),   # Web Mercator near 45° N: scale ~1.41
    (32723, Affine(5, 0, 740_000, 0, -5, 7_540_000)),         # UTM: planar metres
    (4326, Affine(1e-4, 0, -42.5, 0, -1e-4, -22.3)),          # degrees
])
def test_mask_km2_equals_geodesic_area(epsg, transform):
    crs = CRS.from_epsg(epsg)
    mask = np.ones((400, 300), bool)
    west, north = transform.c, transform.f
    geom = box(west, north + transform.e * 400, west + transform.a * 300, north)
    km2 = masked_area_km2(mask, row_pixel_areas_m2(crs, transform, 0, 400))
    assert km2 == pytest.approx(_geodesic_km2(crs, geom), rel=2e-3)


def test_web_mercator_pixel_is_shrunk_to_ground_metres():
    dx, dy = pixel_size_m(CRS.from_epsg(3857), Affine(10, 0, 0, 0, -10, 5_621_521.5), 10)
    assert dx == pytest.approx(10 * np.cos(np.radians(45)), rel=5e-3)
    assert dy == pytest.approx(dx, rel=1e-6)
