"""Terrain layers: exact on planes, metric in geographic CRSs, and right after `prepare` warps a DEM."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import make_rasters, plane_dem, surface_at

from slidemap.formats.scene import Scene
from slidemap.raster.geo import row_pixel_sizes_m
from slidemap.raster.terrain import aspect_deg, gradient, hillshade, slope_deg, terrain_layers
from slidemap.stages import prepare


def _plane(h: int, w: int, dx: float, dy: float, east: float, north: float) -> np.ndarray:
    rows, cols = np.mgrid[0:h, 0:w].astype(float)
    return 100.0 + east * cols * dx - north * rows * dy  # rows run southwards


def test_gradient_is_exact_on_a_plane_up_to_edges_and_holes():
    z = _plane(40, 50, dx=9.0, dy=11.0, east=0.25, north=-0.4)
    z[10:13, 20:24] = np.nan
    z[0, 0] = np.nan
    z[30, :] = np.nan  # a whole missing row
    ge, gn = gradient(z, 9.0, 11.0)
    assert np.isnan(ge).sum() == np.isnan(z).sum()
    np.testing.assert_allclose(ge[~np.isnan(z)], 0.25, atol=1e-12)
    np.testing.assert_allclose(gn[~np.isnan(z)], -0.4, atol=1e-12)


def test_per_row_pixel_width_gives_the_true_gradient():
    # East-west pixel width shrinking row by row, as in a geographic CRS; z rises 0.5 m per metre east.
    h, w = 30, 20
    dx = np.linspace(10.0, 7.0, h)
    z = 0.5 * np.arange(w)[None, :] * dx[:, None]
    ge, gn = gradient(z, dx, 10.0)
    np.testing.assert_allclose(ge, 0.5, rtol=1e-12)
    # A single mean width would be wrong by up to 17 % at the top and bottom rows.
    ge_mean, _ = gradient(z, dx.mean(), 10.0)
    assert abs(ge_mean[0, 5] / 0.5 - 1) > 0.1


def test_slope_aspect_hillshade_values():
    ge = np.array([1.0, 0.0, -1.0, 0.0, 0.0])
    gn = np.array([0.0, 1.0, 0.0, -1.0, 0.0])
    np.testing.assert_allclose(slope_deg(ge, gn), [45, 45, 45, 45, 0])
    # Aspect is the compass direction the slope faces (downhill): rising east faces west.
    np.testing.assert_allclose(aspect_deg(ge, gn), [270, 180, 90, 0, 0])
    hs = hillshade(ge, gn)
    assert hs[4] == pytest.approx(np.sin(np.radians(45)))  # flat: sin(sun altitude)
    assert hs[0] > hs[2]  # facing west is lit by a north-west sun, facing east is not


def test_hillshade_brightest_facing_the_sun():
    # Sun in the north-west (315°) at 45°: a 45° slope facing north-west is lit head-on (1.0),
    # one facing south-east gets no light.
    g = 1 / np.sqrt(2)
    facing_nw = hillshade(np.array([g]), np.array([-g]))  # rising to the south-east: faces north-west
    facing_se = hillshade(np.array([-g]), np.array([g]))
    assert facing_nw[0] == pytest.approx(1.0, abs=1e-9)
    assert facing_se[0] == pytest.approx(0.0, abs=1e-9)


def test_terrain_layers_keep_nodata_and_reject_unknown_names():
    z = _plane(8, 8, 10, 10, 0.1, 0.0)
    z[2, 2] = np.nan
    layers = terrain_layers(z, 10.0, 10.0, ["dem", "slope", "aspect", "hillshade"])
    assert set(layers) == {"dem", "slope", "aspect", "hillshade"}
    for values in layers.values():
        assert values.dtype == np.float32 and np.isnan(values[2, 2]) and np.isfinite(values).sum() == 63
    assert layers["slope"][0, 0] == pytest.approx(np.degrees(np.arctan(0.1)), abs=1e-4)
    with pytest.raises(ValueError, match="curvature"):
        terrain_layers(z, 10.0, 10.0, ["curvature"])


def test_row_pixel_sizes_geographic_and_projected():
    from rasterio.crs import CRS

    geo = Affine(1e-4, 0, 10.0, 0, -1e-4, 60.0)
    dx, dy = row_pixel_sizes_m(CRS.from_epsg(4326), geo, 0, 3)
    # At 60°N a 1e-4° pixel is about 5.58 m wide and 11.14 m tall.
    assert dx[0] == pytest.approx(5.58, abs=0.01) and dy[0] == pytest.approx(11.14, abs=0.01)
    assert dx[0] < dx[1] < dx[2]  # widths grow southwards (rows run south)
    dx, dy = row_pixel_sizes_m(CRS.from_epsg(32633), Affine(5, 0, 0, 0, -5, 0), 10, 2)
    assert list(dx) == [5.0, 5.0] and list(dy) == [5.0, 5.0]


SLOPE = float(np.degrees(np.arctan(np.hypot(0.3, -0.2))))  # the default plane of make_rasters


@pytest.mark.parametrize("case", ["utm-scene_geographic-dem", "geographic-scene_utm-dem"])
def test_plane_dem_on_coarser_grid_in_another_crs(tmp_path, case):
    if case == "utm-scene_geographic-dem":
        r = make_rasters(tmp_path, size=96, crs="EPSG:32633", dem_crs="EPSG:4326", inventory_name="",
                         areas=False)
    else:  # scene in degrees at 46°N; DEM (12.5 m pixels) and plane in UTM 33N
        r = make_rasters(tmp_path, size=96, crs="EPSG:4326", origin=(15.0, 46.0), pixel=1e-4,
                         dem_crs="EPSG:32633", dem_pixel=12.5, surface_crs="EPSG:32633", inventory_name="",
                         areas=False)
    result = prepare.run(prepare.PrepareOptions(images=[r.image], out=tmp_path / "scene", dem=r.dem,
                                                terrain=["dem", "slope", "aspect"]))
    scene = Scene(result.path)
    assert result.meta.terrain == ["dem", "slope", "aspect"]
    assert scene.bands == ["blue", "green", "red", "nir", "dem", "slope", "aspect"]
    dem, slope, aspect = scene.read(bands=["dem", "slope", "aspect"])
    rows, cols = np.mgrid[0:96, 0:96]
    surface_crs = "EPSG:32633"
    expected = surface_at(r, plane_dem(0.3, -0.2), rows, cols, surface_crs=surface_crs)
    assert np.isfinite(dem).all()
    assert np.abs(dem - expected).max() < 0.05  # metres, on a plane spanning ~±150 m (measured: 0.004)
    assert np.abs(slope - SLOPE).max() < 0.05  # degrees (measured: 0.008)
    # Rising to the east-south-east, the plane faces west-north-west (atan2(-0.3, 0.2) = 303.69°);
    # at 15°E, UTM 33N's central meridian, grid north is true north.
    assert np.abs(aspect - 303.69).max() < 0.05
    with rasterio.open(scene.stack_path) as ds:
        assert ds.descriptions[4:] == ("dem", "slope", "aspect")
