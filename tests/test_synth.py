"""``slidemap synth``: reproducible files in the promised formats, landslides where physics puts them,
and a scene where brightness alone fails."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from pyproj import Geod
from rasterio import features
from rasterio.warp import Resampling, reproject, transform_bounds

from slidemap.cli import main
from slidemap.errors import UserError
from slidemap.formats.files import sha256
from slidemap.raster.geo import pixel_size_m
from slidemap.sources.synth import BANDS, COVER, MAX_AREA_M2, MIN_AREA_M2, generate, synthesize

SIZE, COUNT = 512, 30
FILES = ("image", "dem", "inventory", "areas")

# sha256 of the files synth wrote at three settings before it became a package (commit 8bbb54b, GDAL and
# PROJ of the project venv). They change only when synth's output is *meant* to change: a refactoring,
# or a new parameter left at its default, must keep every byte.
REFERENCE = [
    ({"seed": 0, "size": 512},
     {"image": "51b10e4ccf0be7aa5d52ea711a1b350b6f68d2c9352471b98313097e931432f7",
      "dem": "5efdc19c4bc9f199d881a255bb40dc93fbb5bdc0de1e797ad898c852020aed39",
      "inventory": "4272fcfbe8161de816ca2a4dbcf8871013c2379d08d5d5e479373b8c3a4e924e",
      "areas": "d05b6d784b49c9fd97a6f640e1d4f318aaf380e1d23de590bfe9dc6dc8e6e346"}),
    ({"seed": 3, "size": 768, "landslides": 60},
     {"image": "1619f71e6ad3a55afb2fb2cb40e3c5243dafa52f6d668ee91468a12bb9aa8be7",
      "dem": "737e80690403c7dc4cab4d031a988c905eda6ccdcef949d3a1e001a7a4e951d8",
      "inventory": "fd1272b87a7bff957a0e9dc1e9fa2c9b4fd75bd5038645d3c24c3e6440f4a2ea",
      "areas": "c43c215886d27afd80a2a88ad939964778152a760b4dc6cbae658f02f7a4306e"}),
    ({"seed": 1, "size": 640, "pixel_size": 10.0, "landslides": 40, "nodata_stripe": False},
     {"image": "9a5ae878b424bb5f6d2a4bf802b1ca94f0ddfa4cefc1782e722ee101982bf55c",
      "dem": "7a71ca2698a58051c6cda6127f4d163ee56cf0b1787defbf68238cbda3bdf440",
      "inventory": "5f91a49e00a91c10f1bbb02f625e3abf5c677e1bcf389d10de8d5eca6f164a14",
      "areas": "d800a1b97ee36a60587db79711a9231a9ccc51b19980dc6cc078953c73009f1f"}),
]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One small synthetic study area shared by the tests that only read it."""
    return synthesize(tmp_path_factory.mktemp("synth") / "area", seed=7, size=SIZE, landslides=COUNT)


def _image_grid(path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.transform, ds.crs


def _truth_and_areas(study):
    """Inventory mask (pixel centre in a polygon) and area masks on the image grid."""
    image, transform, crs = _image_grid(study["image"])
    shape = image.shape[1:]
    inventory = gpd.read_file(study["inventory"]).to_crs(crs)
    truth = features.rasterize([(g, 1) for g in inventory.geometry], out_shape=shape, transform=transform,
                               dtype="uint8").astype(bool)
    areas = gpd.read_file(study["areas"]).to_crs(crs)
    masks = {row.name: (row.role, features.geometry_mask([row.geometry], shape, transform, invert=True))
             for row in areas.itertuples()}
    return image, truth, masks


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path, study):
    again = synthesize(tmp_path / "again", seed=7, size=SIZE, landslides=COUNT)
    for role in FILES:
        assert sha256(again[role]) == sha256(study[role]), role
    other = synthesize(tmp_path / "other", seed=8, size=SIZE, landslides=COUNT)
    for role in ("image", "dem", "inventory"):
        assert sha256(other[role]) != sha256(study[role]), role


@pytest.mark.parametrize("kwargs, hashes", REFERENCE, ids=["seed0", "seed3-768", "seed1-10m-nostripe"])
def test_reference_outputs_are_byte_identical(tmp_path, kwargs, hashes):
    paths = synthesize(tmp_path / "ref", **kwargs)
    assert {role: sha256(paths[role]) for role in hashes} == hashes


def test_image_format(study):
    with rasterio.open(study["image"]) as ds:
        assert ds.crs.to_epsg() == 32723
        assert ds.count == 5 and set(ds.dtypes) == {"uint16"}
        assert ds.descriptions == BANDS
        assert ds.nodata == 0
        assert ds.res == (5.0, 5.0) and ds.shape == (SIZE, SIZE)
        image = ds.read()
    blank = image == 0
    stripe = blank.all(axis=0)
    assert 0.01 < stripe.mean() < 0.06  # the nodata stripe, the same pixels in every band
    assert not (blank.any(axis=0) & ~stripe).any()  # valid pixels are never 0


def test_no_stripe_on_request(tmp_path):
    paths = synthesize(tmp_path / "s", seed=1, size=256, landslides=5, nodata_stripe=False)
    image, _, _ = _image_grid(paths["image"])
    assert (image > 0).all()


def test_dem_format_coverage_and_relief(study):
    image, transform, crs = _image_grid(study["image"])
    with rasterio.open(study["dem"]) as ds:
        assert ds.crs.to_epsg() == 4326 and ds.dtypes == ("float32",)
        dx, dy = pixel_size_m(ds.crs, ds.transform, ds.height)
        assert dx == pytest.approx(12.5, rel=0.01) and dy == pytest.approx(12.5, rel=0.01)
        extent = rasterio.transform.array_bounds(SIZE, SIZE, transform)  # (west, south, east, north)
        west, south, east, north = transform_bounds(crs, ds.crs, *extent)
        assert ds.bounds.left < west and ds.bounds.right > east
        assert ds.bounds.bottom < south and ds.bounds.top > north
        dem = np.zeros((SIZE, SIZE), np.float32)
        reproject(rasterio.band(ds, 1), dem, dst_transform=transform, dst_crs=crs,
                  resampling=Resampling.bilinear)
    assert 100 < dem.max() - dem.min() < 1000  # a few hundred metres of relief
    gy, gx = np.gradient(dem, 5.0)
    slope = np.degrees(np.arctan(np.hypot(gx, gy)))
    assert 10 < np.median(slope) < 35
    assert np.percentile(slope, 99.5) < 52


def test_inventory_count_areas_and_crs(study):
    inventory = gpd.read_file(study["inventory"])
    assert inventory.crs.to_epsg() == 4326
    assert list(inventory.columns) == ["id", "area_m2", "geometry"]
    assert len(inventory) == COUNT and inventory["id"].is_unique
    assert inventory["area_m2"].between(MIN_AREA_M2, MAX_AREA_M2).all()
    geod = Geod(ellps="WGS84")
    true = [abs(geod.geometry_area_perimeter(g)[0]) for g in inventory.geometry]
    np.testing.assert_allclose(inventory["area_m2"], true, atol=0.006)  # stored to the cm²
    planar = inventory.to_crs(32723).area  # UTM is within 0.1 % of true area here
    np.testing.assert_allclose(planar, true, rtol=2e-3)
    assert inventory["area_m2"].max() / inventory["area_m2"].min() > 20  # a wide range of sizes
    assert not any(a.intersects(b) for i, a in enumerate(inventory.geometry)
                   for b in inventory.geometry[i + 1:])


def test_areas_disjoint_cover_the_scene_and_hold_landslides(study):
    _, truth, masks = _truth_and_areas(study)
    areas = gpd.read_file(study["areas"])
    assert areas.crs.to_epsg() == 3857
    assert sorted(areas["name"]) == ["test_a", "test_b", "train"]
    assert dict(zip(areas["name"], areas["role"], strict=True)) == {"train": "train", "test_a": "test",
                                                                    "test_b": "test"}
    utm = areas.to_crs(32723).geometry.tolist()
    for i, a in enumerate(utm):
        for b in utm[i + 1:]:
            assert a.intersection(b).area < 1e-3  # shared edges only
    assert sum(g.area for g in utm) == pytest.approx((SIZE * 5.0) ** 2, rel=1e-4)
    total = np.zeros((SIZE, SIZE), int)
    for _, m in masks.values():
        total += m
    assert (total == 1).all()  # every pixel in exactly one area
    assert masks["train"][1].mean() == pytest.approx(0.6, abs=0.01)
    inventory = gpd.read_file(study["inventory"]).to_crs(32723)
    for name in ("test_a", "test_b"):
        inside = inventory.geometry.representative_point().within(utm[list(areas["name"]).index(name)])
        assert inside.sum() >= 4, name


def test_landslides_on_steep_slopes_and_look_alikes_on_flat_ground():
    scene = generate(seed=3, size=SIZE, landslides=COUNT)
    slope = scene.slope
    median = {name: np.median(slope[scene.cover == code]) for name, code in COVER.items()
              if (scene.cover == code).any()}
    assert median["scar"] > 25
    for name in ("bare_field", "urban", "building", "river_bar"):
        assert median[name] < 10, name
    # landslides run down the fall line: the long axis of most is within 35 degrees of downslope
    d_row, d_col = np.gradient(scene.elevation)  # terrain grid: rows run south, columns east
    aligned = []
    for slide in scene.landslides:
        corners = np.asarray(slide.outline.minimum_rotated_rectangle.exterior.coords)
        sides = np.diff(corners, axis=0)[:2]
        axis = sides[np.argmax(np.hypot(*sides.T))]
        x, y = slide.scar.centroid.coords[0]
        r, c = (int(round(float(i[0]))) for i in scene.grid.terrain_index(np.array([x]), np.array([y])))
        fall = np.array([-d_col[r, c], d_row[r, c]])  # downslope as (east, north)
        cos = abs(axis @ fall) / (np.linalg.norm(axis) * np.linalg.norm(fall))
        aligned.append(cos > np.cos(np.radians(35)))
    assert np.mean(aligned) > 0.8


def _best_threshold(values: np.ndarray, truth: np.ndarray) -> tuple[int, str]:
    """The DN threshold (and direction) with the best F1 on these pixels, searched over all values."""
    pos = np.bincount(values[truth], minlength=65536)
    neg = np.bincount(values[~truth], minlength=65536)
    best = (-1.0, 0, ">=")
    for direction, tp, fp in ((">=", pos[::-1].cumsum()[::-1], neg[::-1].cumsum()[::-1]),
                              ("<=", pos.cumsum(), neg.cumsum())):
        f1 = 2 * tp / np.maximum(tp + fp + pos.sum(), 1)
        i = int(np.argmax(f1))
        best = max(best, (float(f1[i]), i, direction))
    return best[1], best[2]


def _f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = np.count_nonzero(pred & truth)
    return 2 * tp / max(np.count_nonzero(pred) + np.count_nonzero(truth), 1)


def test_single_band_brightness_threshold_fails(study):
    image, truth, masks = _truth_and_areas(study)
    valid = (image > 0).all(axis=0)
    train = masks["train"][1] & valid
    test = (masks["test_a"][1] | masks["test_b"][1]) & valid
    assert truth[test].sum() > 500
    for band, name in enumerate(BANDS):
        threshold, direction = _best_threshold(image[band][train], truth[train])
        pred = image[band] >= threshold if direction == ">=" else image[band] <= threshold
        assert _f1(pred[test], truth[test]) < 0.5, name


@pytest.mark.parametrize("kwargs, option", [
    ({"size": 100}, "--size"), ({"pixel_size": 0.0}, "--pixel-size"), ({"landslides": -1}, "--landslides"),
    ({"seed": -3}, "--seed"), ({"size": 256, "landslides": 400}, "--landslides"),
])
def test_bad_arguments_are_user_errors_and_write_nothing(tmp_path, kwargs, option):
    with pytest.raises(UserError, match=option):
        synthesize(tmp_path / "out", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_cli(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "cli"), "--size", "256", "--landslides", "4", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    for role in FILES:
        assert role in out
    assert (tmp_path / "cli" / "inventory.gpkg").is_file()
    assert main(["synth", str(tmp_path / "bad"), "--size", "10"]) == 2
    assert "error: --size 10" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
