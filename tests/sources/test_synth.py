"""``slidemap synth``: reproducible files in the promised formats, landslides where physics puts them,
a scene where brightness alone fails, parameters that change a site the way they say, and a pre-event
image without the landslides on a grid of its own."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from pyproj import Geod
from rasterio import features
from rasterio.warp import Resampling, reproject, transform_bounds
from scipy import ndimage

from slidemap.cli import main
from slidemap.errors import UserError
from slidemap.formats.files import sha256
from slidemap.raster.geo import pixel_size_m
from slidemap.sources.synth import (
    BANDS,
    COVER,
    MARKER,
    MAX_AREA_M2,
    MIN_AREA_M2,
    SynthMarker,
    generate,
    pre_event_grid,
    read_marker,
    synthesize,
)

SIZE, COUNT = 512, 30
FILES = ("image", "dem", "inventory", "areas")

# sha256 of the files synth wrote at three settings before it became a package (commit 8bbb54b, GDAL and
# PROJ of the project venv). They change only when synth's output is *meant* to change: a refactoring,
# or a new parameter left at its default, must keep every byte. image.tif's digital numbers round float
# arithmetic whose last bits follow the SIMD kernels numpy dispatches on the CPU, so it has one hash per
# kernel family: AVX-512 (Zen 4, Xeon) and AVX2 only (Zen 3), both checked with the same code (be903a3).
IMAGE_AVX2 = {"seed0": "71bdcb4c58e3290d2e0b6befaae7ac47eab889ad8895a912452a90f3ad84f3f9",
              "seed3-768": "7c6be5b8633303b6c944d12e4ecd70d866fb6fdb5a99134c10bc4c99334a5b6a",
              "seed1-10m-nostripe": "e3a237668d25289b6bcce156e9efa5d8a6307acf56f3526fc03891eebb3112ca"}
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


@pytest.mark.parametrize("case", range(len(REFERENCE)), ids=list(IMAGE_AVX2))
def test_reference_outputs_are_byte_identical(tmp_path, case):
    kwargs, hashes = REFERENCE[case]
    paths = synthesize(tmp_path / "ref", **kwargs)
    found = {role: sha256(paths[role]) for role in hashes}
    assert found["image"] in (hashes["image"], IMAGE_AVX2[list(IMAGE_AVX2)[case]])
    assert {k: v for k, v in found.items() if k != "image"} == {k: v for k, v in hashes.items() if k != "image"}


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
    ({"seed": -3}, "--seed"), pytest.param({"size": 256, "landslides": 400}, "--landslides", marks=pytest.mark.slow),
    ({"relief": -1.0}, "--relief"), ({"relief": 0.0}, "--relief"), ({"relief": float("nan")}, "--relief"),
    ({"bare_fields": -0.5}, "--bare-fields"), ({"settlements": 11.0}, "--settlements"),
    ({"roads": -1.0}, "--roads"), ({"landslide_size": 0.0}, "--landslide-size"),
    ({"landslide_size": 5.0}, "--landslide-size"), ({"size": 300.5}, "--size"),
    ({"relief": "steep"}, "--relief"),
])
def test_bad_arguments_are_user_errors_and_write_nothing(tmp_path, kwargs, option):
    with pytest.raises(UserError, match=option) as e:
        synthesize(tmp_path / "out", **kwargs)
    assert "\n" not in str(e.value)  # one line
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
    assert main(["synth", str(tmp_path / "bad"), "--relief", "-1"]) == 2
    assert "error: --relief -1.0: use a factor between" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_cli_new_options_reach_the_marker(tmp_path, capsys):
    args = ["synth", str(tmp_path / "cli"), "--size", "256", "--landslides", "3", "--seed", "2", "--relief",
            "1.2", "--bare-fields", "2", "--settlements", "0.5", "--roads", "0", "--landslide-size", "1.5",
            "--pre-event"]
    assert main(args) == 0
    assert "pre_image" in capsys.readouterr().out
    marker = read_marker(tmp_path / "cli")
    assert (marker.relief, marker.bare_fields, marker.settlements, marker.roads, marker.landslide_size,
            marker.pre_event) == (1.2, 2.0, 0.5, 0.0, 1.5, True)


# --- the parameters of a site ----------------------------------------------------------------------

SITE = {"seed": 4, "size": 384, "landslides": 15, "pre_event": True}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A small study area with its pre-event image, written once for the tests that only read it."""
    return synthesize(tmp_path_factory.mktemp("site") / "area", **SITE)


def _folder_hashes(folder):
    return {p.name: sha256(p) for p in sorted(folder.iterdir())}


def test_rerun_is_byte_identical_with_pre_image_and_marker(tmp_path, site):
    first = _folder_hashes(site["marker"].parent)
    assert set(first) == {"image.tif", "pre_image.tif", "dem.tif", "inventory.gpkg", "areas.gpkg", MARKER}
    assert _folder_hashes(synthesize(tmp_path / "again", **SITE)["marker"].parent) == first
    options = {"seed": 5, "size": 256, "landslides": 4, "relief": 1.3, "bare_fields": 2.0, "settlements": 1.5,
               "roads": 0.5, "landslide_size": 1.5, "pre_event": True}
    out = synthesize(tmp_path / "options", **options)["marker"].parent
    hashes = _folder_hashes(out)
    assert _folder_hashes(synthesize(out, **options)["marker"].parent) == hashes  # replaced in place


def test_marker_validates_and_describes_the_files(site):
    folder = site["marker"].parent
    marker = SynthMarker.model_validate_json(site["marker"].read_text())
    assert marker == read_marker(folder)
    assert (marker.format, marker.format_version) == ("slidemap.synth", 1)
    assert marker.params.model_dump() | SITE == marker.params.model_dump()  # the call's values
    assert (marker.relief, marker.bare_fields, marker.landslide_size, marker.pixel_size) == (1, 1, 1, 5)
    assert {f.name for f in marker.files} | {MARKER} == {p.name for p in folder.iterdir()}
    for f in marker.files:
        if f.name.endswith(".tif"):
            with rasterio.open(folder / f.name) as ds:
                assert ds.crs.to_string() == f.crs
                dx, dy = pixel_size_m(ds.crs, ds.transform, ds.height)
                assert (dx, dy) == pytest.approx((f.pixel_size_m, f.pixel_size_m), rel=0.01)
        else:
            assert gpd.read_file(folder / f.name).crs.to_string() == f.crs and f.pixel_size_m is None
    assert "time" not in site["marker"].read_text()  # no timestamps: reruns stay byte-identical


def test_out_replaces_an_earlier_area_and_refuses_a_users_folder(tmp_path):
    first = synthesize(tmp_path / "area", seed=1, size=256, landslides=2)
    before = sha256(first["inventory"])
    second = synthesize(tmp_path / "area", seed=2, size=256, landslides=2)
    assert sha256(second["inventory"]) != before and read_marker(tmp_path / "area").seed == 2
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="other content"):
        synthesize(mine, size=256, landslides=2)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_relief_steepens_slopes():
    slope = {r: generate(seed=0, size=256, landslides=0, relief=r).slope.mean() for r in (0.6, 1.0, 1.6)}
    assert slope[0.6] < 0.8 * slope[1.0] and slope[1.6] > 1.25 * slope[1.0]  # measured: 13.7, 20.6, 29.2°


def test_landslide_size_scales_areas():
    areas = {f: np.array([s.outline.area for s in generate(seed=0, size=SIZE, landslides=COUNT,
                                                           landslide_size=f).landslides])
             for f in (0.5, 1.0, 2.0)}
    mean = {f: a.mean() for f, a in areas.items()}
    assert mean[2.0] > 1.3 * mean[1.0] and mean[0.5] < 0.7 * mean[1.0]  # measured: 5243, 9405, 13228 m²
    for f, a in areas.items():
        assert (MIN_AREA_M2 * f <= a).all() and (a <= MAX_AREA_M2 * f).all(), f


@pytest.mark.parametrize("option, kinds", [("bare_fields", ["bare_field"]),
                                           ("settlements", ["urban", "building"]), ("roads", ["road"])])
def test_land_cover_mix(option, kinds):
    codes = [COVER[k] for k in kinds]
    pixels = {f: np.isin(generate(seed=0, size=256, landslides=0, **{option: f}).cover, codes).sum()
              for f in (0.0, 1.0, 3.0)}
    # measured (seed 0): bare fields 0 / 1367 / 3769 px, settlements 0 / 4885 / 10017, roads 0 / 640 / 794
    assert pixels[0.0] == 0 and pixels[1.0] > 0 and pixels[3.0] > 1.2 * pixels[1.0]
    if option == "bare_fields":
        assert pixels[3.0] > 2 * pixels[1.0]


def _ndvi(dn):
    dn = dn.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (dn[4] - dn[2]) / (dn[4] + dn[2])


def test_pre_event_image_on_its_own_grid_without_scars_with_look_alikes(site):
    with rasterio.open(site["image"]) as ds:
        image_transform = ds.transform
    with rasterio.open(site["pre_image"]) as ds:
        pre, transform, crs = ds.read(), ds.transform, ds.crs
        assert ds.descriptions == BANDS and ds.nodata == 0 and set(ds.dtypes) == {"uint16"}
        assert ds.res == (10.0, 10.0) and transform != image_transform
        shift = (transform.c - image_transform.c, transform.f - image_transform.f)
        assert shift == (2.5, -2.5)  # half an image pixel
    study = generate(**SITE)
    np.testing.assert_array_equal(pre, study.pre_image)
    # co-register the post-event image onto the pre-event grid, as a consumer must
    with rasterio.open(site["image"]) as ds:
        post = np.zeros_like(pre)
        reproject(rasterio.band(ds, list(range(1, 6))), post, dst_transform=transform, dst_crs=crs,
                  dst_nodata=0, resampling=Resampling.average)
    valid = (post > 0).all(axis=0) & (pre > 0).all(axis=0)
    ndvi_pre, ndvi_post = _ndvi(pre), _ndvi(post)
    # each landslide against a ring of ground around it: a scar after the event, the same ground before
    inventory = gpd.read_file(site["inventory"]).to_crs(crs)
    ids = features.rasterize([(g, i + 1) for i, g in enumerate(inventory.geometry)], out_shape=pre.shape[1:],
                             transform=transform, dtype="int32")
    near_any = ndimage.binary_dilation(ids > 0)
    contrast = []
    for i in range(1, len(inventory) + 1):
        inside = ndimage.binary_erosion(ids == i) & valid
        ring = ndimage.binary_dilation(ids == i, iterations=4) & ~near_any & valid
        if inside.sum() >= 4 and ring.sum() >= 10:
            contrast.append([np.median(v[ring]) - np.median(v[inside]) for v in (ndvi_pre, ndvi_post)])
    contrast = np.array(contrast)
    assert len(contrast) >= 4
    assert (contrast[:, 1] > 0.25).all()  # measured 0.30-0.56: bare scars in vegetation
    assert (np.abs(contrast[:, 0]) < 0.15).all()  # measured |x| <= 0.11: vegetation like its surroundings
    # bare fields are there before the event too: as bare (low NDVI) in both images
    _, n = pre_event_grid(study.grid)
    on_pre = (slice(1, 2 * n, 2), slice(1, 2 * n, 2))  # the image pixel at each pre-event pixel's centre
    bare = ndimage.binary_erosion(study.cover == COVER["bare_field"], iterations=2)[on_pre] & valid
    vegetation = (study.cover == COVER["vegetation"])[on_pre] & valid
    assert bare.sum() > 50
    for ndvi in (ndvi_pre, ndvi_post):
        assert np.median(ndvi[bare]) < 0.3 < 0.6 < np.median(ndvi[vegetation])
    # acquired differently: another sun, cloud and noise, so unchanged ground differs beyond rounding
    unchanged = vegetation & ~near_any
    assert np.median(np.abs(pre[2][unchanged] / post[2][unchanged].astype(float) - 1)) > 0.05


def test_sites_differ_in_the_measured_ways():
    """Two sites for a transferability experiment: other seed, relief, mix and landslide size."""
    easy = generate(seed=0, size=SIZE, landslides=COUNT, relief=0.8, bare_fields=0.5, settlements=0.5,
                    roads=0.5, landslide_size=0.5)
    hard = generate(seed=11, size=SIZE, landslides=COUNT, relief=1.5, bare_fields=3.0, settlements=2.0,
                    roads=2.5, landslide_size=2.0)

    def measures(s):
        return (s.slope.mean(), np.mean([x.outline.area for x in s.landslides]),
                (s.cover == COVER["bare_field"]).mean())

    (slope_e, area_e, bare_e), (slope_h, area_h, bare_h) = measures(easy), measures(hard)
    # measured: mean slope 19.4 vs 30.9°, mean landslide 3604 vs 5796 m², bare fields 1.2 vs 3.7 %
    assert slope_h > 1.4 * slope_e and area_h > 1.4 * area_e and bare_h > 2 * bare_e
