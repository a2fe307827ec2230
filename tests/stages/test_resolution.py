"""Target resolution (issue 15, point 2): ``prepare --resolution M`` resamples the stack onto a grid of M
metres (average when coarsening, bilinear when refining), derives terrain on the new grid and rasterises
the inventory on it; a 0.5 m scene taken to 2 m keeps its landslide km² within 1 %."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import make_rasters, plane_dem, write_dem, write_raster, write_vector
from rasterio import features
from rasterio.crs import CRS
from scene_helpers import image_with, untrained_bundle
from scipy import ndimage

from slidemap.errors import UserError
from slidemap.formats.scene import Recipe, Scene
from slidemap.raster.align import target_grid
from slidemap.raster.geo import Grid, pixel_size_m
from slidemap.stages.predict import PredictOptions
from slidemap.stages.predict import run as predict
from slidemap.stages.prepare import PrepareOptions, run

UTM = "EPSG:32633"
ORIGIN = (500000.0, 5100000.0)


def landslide_polygons(n: int, extent_m: float, seed: int):
    """``n`` irregular landslides 15-45 m across (large for a 0.5 m image), in metres from ORIGIN."""
    from shapely.geometry import Polygon

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        r = rng.uniform(15, 45)
        cx, cy = rng.uniform(r + 5, extent_m - r - 5, size=2)
        angles = np.sort(rng.uniform(0, 2 * np.pi, 14))
        radii = r * rng.uniform(0.55, 1.0, 14)
        out.append(Polygon([(ORIGIN[0] + cx + rr * np.cos(a), ORIGIN[1] - cy + rr * np.sin(a))
                            for a, rr in zip(angles, radii, strict=True)]))
    return out


@pytest.fixture(scope="module")
def vhr(tmp_path_factory):
    """A 0.5 m scene of 500 m x 500 m: 4-band image, a plane DEM at 1 m, 12 landslides as polygons and as
    a 0.5 m label raster (nodata 0, 1 background, 2 landslide)."""
    import shapely

    tmp = tmp_path_factory.mktemp("vhr")
    size, pixel = 1000, 0.5
    transform = Affine(pixel, 0, ORIGIN[0], 0, -pixel, ORIGIN[1])
    polys = landslide_polygons(12, size * pixel, seed=4)
    inside = features.rasterize(((p, 1) for p in polys), out_shape=(size, size), transform=transform) > 0
    image = image_with(tmp, inside, transform, UTM)
    labels = write_raster(tmp / "labels.tif", np.where(inside, 2, 1).astype(np.uint8), UTM, transform,
                          nodata=0)
    inventory = write_vector(tmp / "inventory.gpkg", polys, "EPSG:4326", src_crs=UTM, id=list(range(12)))
    bounds = rasterio.transform.array_bounds(size, size, transform)
    dem = write_dem(tmp / "dem.tif", UTM, bounds, UTM, 1.0, plane_dem(0.3, -0.2))
    return {"tmp": tmp, "image": image, "labels": labels, "inventory": inventory, "dem": dem,
            "transform": transform, "size": size, "km2": shapely.union_all(polys).area / 1e6}


def prepare(out: Path, **options):
    return run(PrepareOptions(out=out, split="1:1", **options))


def test_target_grid_in_metres_for_projected_and_geographic_crs():
    g = Grid(CRS.from_user_input(UTM), Affine(0.5, 0, ORIGIN[0], 0, -0.5, ORIGIN[1]), 1000, 998)
    t = target_grid(g, 2.0)
    assert (t.transform.a, t.transform.e, t.width, t.height) == (2.0, -2.0, 250, 250)
    assert t.transform.c == g.transform.c and t.transform.f == g.transform.f
    assert target_grid(g, None) is g
    geo = Grid(CRS.from_epsg(4326), Affine(8.98e-5, 0, 91.76, 0, -8.98e-5, 22.49), 1152, 2048)
    t = target_grid(geo, 20.0)
    dx, dy = pixel_size_m(t.crs, t.transform, t.height)
    assert dx == pytest.approx(20.0, rel=1e-6) and dy == pytest.approx(20.0, rel=1e-6)
    assert t.transform.a > t.transform.e * -1  # degrees east-west are longer than north-south at 22° N
    assert t.width * t.transform.a >= geo.width * geo.transform.a


@pytest.mark.slow
def test_half_metre_scene_to_2_m_keeps_landslide_km2_within_1_percent(vhr, tmp_path):
    native = prepare(tmp_path / "native", images=[vhr["image"]], dem=vhr["dem"], inventory=vhr["inventory"])
    coarse = prepare(tmp_path / "coarse", images=[vhr["image"]], dem=vhr["dem"], inventory=vhr["inventory"],
                     resolution=2.0)
    labels = prepare(tmp_path / "labels", images=[vhr["image"]], inventory=vhr["labels"], label_values=[2],
                     resolution=2.0)
    n, c, lab = native.meta, coarse.meta, labels.meta
    assert (c.width, c.height) == (250, 250) and c.pixel_size_m == pytest.approx((2.0, 2.0))
    assert c.native_pixel_size_m == pytest.approx((0.5, 0.5)) and c.recipe.resolution_m == 2.0
    assert n.inventory.landslide_km2 == pytest.approx(vhr["km2"], rel=0.002)
    for m in (c, lab):  # polygons rasterised on the 2 m grid, and the 0.5 m label raster taken nearest
        assert m.inventory.landslide_km2 == pytest.approx(n.inventory.landslide_km2, rel=0.01)
    assert c.inventory.landslides == n.inventory.landslides == 12
    # a label raster's landslides are connected components: two landslides 1.8 m apart touch at 2 m
    assert lab.inventory.landslides == ndimage.label(Scene(labels.path).read_mask() == 1)[1] == 11
    assert {s.role: s.resampling for s in c.sources} == {"image": "average", "dem": "average",
                                                         "inventory": "rasterised"}
    assert {s.role: s.resampling for s in lab.sources}["inventory"] == "nearest"
    # the image averaged: each 2 m pixel is the mean of its 4 x 4 native pixels
    with rasterio.open(vhr["image"]) as ds:
        raw = ds.read(out_dtype="float64")
    blocks = raw.reshape(4, 250, 4, 250, 4).mean(axis=(2, 4))
    stack = Scene(coarse.path).read(bands=["blue", "green", "red", "nir"])
    assert np.allclose(stack, blocks, rtol=1e-5)
    # terrain derived on the 2 m grid: the plane's slope everywhere
    slope = Scene(coarse.path).read(bands=["slope"])[0]
    assert np.allclose(slope, np.degrees(np.arctan(np.hypot(0.3, 0.2))), atol=0.01)
    saved = json.loads((coarse.path / "scene.json").read_text())
    assert saved["recipe"]["resolution_m"] == 2.0


def test_refining_is_bilinear_and_geographic_scenes_take_metres(tmp_path):
    r = make_rasters(tmp_path / "utm", size=32, pixel=10.0)
    fine = prepare(tmp_path / "fine", images=[r.image], dem=r.dem, inventory=r.inventory, resolution=5.0)
    assert (fine.meta.width, fine.meta.height) == (64, 64)
    assert {s.role: s.resampling for s in fine.meta.sources}["image"] == "bilinear"
    native = prepare(tmp_path / "native", images=[r.image], inventory=r.inventory)
    assert fine.meta.inventory.landslide_pixels == 4 * native.meta.inventory.landslide_pixels
    g = make_rasters(tmp_path / "geo", size=48, pixel=1e-4, crs="EPSG:4326", origin=(12.0, 46.0))
    geo = prepare(tmp_path / "geo_scene", images=[g.image], dem=g.dem, inventory=g.inventory, resolution=15.0)
    assert geo.meta.pixel_size_m == pytest.approx((15.0, 15.0), rel=1e-3)
    assert geo.meta.crs == "EPSG:4326" and geo.meta.inventory.landslides == 4
    assert geo.meta.native_pixel_size_m[1] == pytest.approx(11.1, rel=0.01)


@pytest.mark.parametrize("value", [0, -2, 1e9])
def test_bad_resolution_is_one_line_error(tmp_path, value):
    r = make_rasters(tmp_path, size=32, dem=False, areas=False)
    with pytest.raises(UserError, match=rf"^--resolution {value:g}|^--resolution {value}") as err:
        prepare(tmp_path / "s", images=[r.image], resolution=value)
    assert "\n" not in str(err.value)


def test_predict_on_bare_images_uses_the_training_resolution(vhr, tmp_path):
    """A model trained on a 2 m scene predicts bare 0.5 m images on the same 2 m grid."""
    small = tmp_path / "small"
    small.mkdir()
    with rasterio.open(vhr["image"]) as ds:
        window = rasterio.windows.Window(0, 0, 256, 256)
        write_raster(small / "image.tif", ds.read(window=window), UTM, ds.window_transform(window), nodata=0,
                     descriptions=list(ds.descriptions))
    bands = ["blue", "green", "red", "nir"]
    bundle = untrained_bundle(tmp_path / "b.pt", bands, Recipe(image_bands=bands, resolution_m=2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = predict(PredictOptions(model=bundle, out=tmp_path / "pred", images=[small / "image.tif"],
                                     tile=64, overlap=16))
    assert res.meta.transform[0] == pytest.approx(2.0) and (res.meta.width, res.meta.height) == (64, 64)
