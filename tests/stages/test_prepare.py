"""`slidemap prepare`: the scene folder holds the input pixels, the right mask, areas and figures, and bad
input is one clear error that leaves nothing behind."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from conftest import SHARED_DATA, TINY_BANDS, make_rasters, pixel_box, write_raster, write_vector
from pyproj import Geod
from shapely.geometry import Polygon, box

from slidemap.cli import main
from slidemap.errors import UserError
from slidemap.formats.files import sha256
from slidemap.formats.scene import Scene
from slidemap.raster.stats import RunningStats
from slidemap.stages import prepare
from slidemap.stages.prepare import PrepareOptions, PrepareWarning

GEOD = Geod(ellps="WGS84")


def prepare_scene(images, out: Path, **options) -> Scene:
    """Run the prepare stage and open the scene folder it wrote (its result describes that very folder)."""
    result = prepare.run(PrepareOptions(images=list(images), out=out, **options))
    scene = Scene(result.path)
    assert result.path == Path(out) and result.meta == scene.meta
    return scene


def _leftovers(out: Path) -> list[str]:
    """The scene folder or any temporary sibling of it."""
    return sorted(p.name for p in out.parent.glob(f"*{out.name}*"))


# --- the tiny scene (shared, prepared once) -------------------------------------------------------

def test_stack_holds_the_input_pixels_and_band_names(tiny_scene, tiny_inputs):
    scene = Scene(tiny_scene)
    assert scene.bands == [*TINY_BANDS, "dem", "slope"]
    assert scene.meta.image_bands == list(TINY_BANDS) and scene.meta.terrain == ["dem", "slope"]
    stack = scene.read()
    assert stack.dtype == np.float32 and stack.shape == (6, 128, 128)
    for row, col in [(0, 0), (15, 12), (64, 100), (127, 127)]:
        np.testing.assert_array_equal(stack[:4, row, col], tiny_inputs.pixels[:, row, col])
    with rasterio.open(scene.stack_path) as ds:
        assert ds.descriptions == (*TINY_BANDS, "dem", "slope")
        assert np.isnan(ds.nodata) and ds.compression is not None
        assert ds.crs == tiny_inputs.crs and ds.transform == tiny_inputs.transform
    assert scene.crs == tiny_inputs.crs and scene.transform == tiny_inputs.transform
    assert scene.pixel_size_m == (10.0, 10.0)


def test_mask_and_per_area_figures(tiny_scene, tiny_inputs):
    scene = Scene(tiny_scene)
    mask = scene.read_mask()
    assert set(np.unique(mask)) == {0, 1}
    expected = np.zeros_like(mask)
    for c0, r0, c1, r1 in tiny_inputs.landslides:
        expected[r0:r1, c0:c1] = 1
    # The inventory was stored in EPSG:4326: after reprojection every pixel still lands where it was.
    np.testing.assert_array_equal(mask, expected)
    areas = {a.name: a for a in scene.meta.areas}
    assert [(a.name, a.role) for a in scene.meta.areas] == [
        ("train", "train"), ("test_a", "test"), ("test_b", "test")]
    assert areas["train"].landslides == 2 and areas["train"].landslide_pixels == 200 + 140
    assert areas["test_a"].landslides == 1 and areas["test_a"].landslide_km2 == pytest.approx(0.0128)
    assert areas["test_b"].landslides == 1 and areas["test_b"].landslide_km2 == pytest.approx(0.02)
    assert areas["train"].area_km2 == pytest.approx(64 * 128 * 100 / 1e6)
    assert areas["test_a"].bounds.model_dump() == {"row_off": 0, "col_off": 72, "height": 60, "width": 56}
    # The bounds agree with the scene reader's area mask.
    am = scene.area_mask("test_b")
    rows, cols = np.nonzero(am)
    assert areas["test_b"].bounds.model_dump() == {"row_off": rows.min(), "col_off": cols.min(),
                                                   "height": np.ptp(rows) + 1, "width": np.ptp(cols) + 1}
    inv = scene.meta.inventory
    assert inv.features == 4 and inv.inside == 4 and inv.repaired == 0


def test_statistics_over_the_train_area_only(tiny_scene):
    scene = Scene(tiny_scene)
    stack = scene.read().astype(np.float64)
    train = scene.area_mask("train")
    for i, name in enumerate(scene.bands):
        values = stack[i][train]
        s = scene.stats[name]
        assert s.mean == pytest.approx(values.mean(), rel=1e-6)
        assert s.std == pytest.approx(values.std(), rel=1e-5, abs=1e-6)
        assert (s.min, s.max) == pytest.approx((values.min(), values.max()))
    # The DEM rises 0.3 m/m eastwards: the (western) train area is ~100 m lower than the whole scene.
    assert scene.stats["dem"].mean == pytest.approx(np.nanmean(stack[4]) - 0.3 * 10 * 32, abs=2)


def test_scene_json_contract(tiny_scene, tiny_inputs):
    meta = json.loads((tiny_scene / "scene.json").read_text())
    for key in ("format", "format_version", "slidemap_version", "bands", "crs", "transform", "width",
                "height", "pixel_size_m", "stats", "areas", "inventory", "terrain", "image_bands", "sources",
                "quicklook"):
        assert key in meta
    assert meta["format"] == "slidemap.scene" and meta["format_version"] == 1
    assert meta["crs"] == "EPSG:32633" and len(meta["transform"]) == 6
    roles = {s["role"]: s for s in meta["sources"]}
    assert set(roles) == {"image", "dem", "inventory", "areas"}
    assert roles["image"]["sha256"] == sha256(tiny_inputs.image)
    assert (tiny_scene / "quicklook.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    areas = gpd.read_file(tiny_scene / "areas.gpkg")
    assert list(areas.columns) == ["name", "role", "geometry"] and areas.crs == tiny_inputs.crs
    assert sorted(p.name for p in tiny_scene.iterdir()) == [
        "areas.gpkg", "mask.tif", "quicklook.png", "scene.json", "stack.tif"]


# --- images, band names, nodata -------------------------------------------------------------------

def test_band_names_option_defaults_and_uniqueness(tmp_path):
    a = make_rasters(tmp_path / "a", size=32, bands=None, dem=False, inventory_name="", areas=False)
    b = make_rasters(tmp_path / "b", size=32, bands=("red", "red", "nir"), dem=False, inventory_name="",
                     areas=False, seed=1)
    scene = prepare_scene([a.image, b.image], tmp_path / "s1")
    assert scene.bands == ["band1", "band2", "band3", "red", "red_2", "nir"]
    np.testing.assert_array_equal(scene.read(bands=["red_2"])[0], b.pixels[1])
    scene = prepare_scene([a.image, b.image], tmp_path / "s2", band_names=["b", "g", "r", "x", "y", "z"])
    assert scene.bands == ["b", "g", "r", "x", "y", "z"]
    with rasterio.open(scene.stack_path) as ds:
        assert ds.descriptions == ("b", "g", "r", "x", "y", "z")
    # A band called like a terrain layer is renamed, the terrain layer keeps its name.
    c = make_rasters(tmp_path / "c", size=32, bands=("dem", "slope"), inventory_name="", areas=False)
    assert prepare_scene([c.image], tmp_path / "s3", dem=c.dem).bands == ["dem_2", "slope_2", "dem", "slope"]


def test_image_on_another_grid_is_reprojected(tmp_path):
    a = make_rasters(tmp_path / "a", size=64, dem=False, inventory_name="", areas=False)
    # Same pixels, shifted by (8 cols, 4 rows) on the same lattice: a partial overlap.
    t = a.transform
    shifted = write_raster(tmp_path / "shifted.tif", a.pixels[:1, :48, :48] + 7, a.crs,
                           t @ rasterio.Affine.translation(8, 4), nodata=0, descriptions=["late"])
    scene = prepare_scene([a.image, shifted], tmp_path / "scene")
    stack, mask = scene.read(), scene.read_mask()
    np.testing.assert_array_equal(stack[4, 4:52, 8:56], a.pixels[0, :48, :48] + 7)
    assert np.isnan(stack[:, :4]).all() and np.isnan(stack[:, :, 56:]).all()  # outside the late image
    assert (mask[:4] == 255).all() and (mask[4:52, 8:56] == 0).all()
    assert scene.meta.areas == [] and scene.meta.inventory is None


def test_nodata_rows_are_nodata_everywhere_and_not_in_statistics(tmp_path):
    r = make_rasters(tmp_path, size=64, nodata_rows=(10, 20))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrepareWarning)
        scene = prepare_scene([r.image], tmp_path / "scene", dem=r.dem, inventory=r.inventory,
                              split="1:1")
    stack, mask = scene.read(), scene.read_mask()
    assert np.isnan(stack[:, 10:20]).all() and (mask[10:20] == 255).all()
    assert np.isfinite(stack[:, :10]).all() and np.isfinite(stack[:, 20:]).all()
    assert scene.stats["blue"].min > 0
    # The landslide across rows 10-20 (rows 6..16 of a 64 px scene) lost its nodata part.
    assert ((mask == 1) & (np.arange(64)[:, None] >= 10) & (np.arange(64)[:, None] < 20)).sum() == 0
    assert (mask == 1).sum() > 0
    # Landslide 3 (rows 10-14) lies wholly in the nodata rows: no area counts it.
    assert r.landslides[2][1] >= 10 and r.landslides[2][3] <= 20
    assert [a.landslides for a in scene.meta.areas] == [2, 1]


def test_dem_covering_part_of_the_scene_masks_the_rest(tmp_path):
    r = make_rasters(tmp_path, size=64, inventory_name="", areas=False)
    with rasterio.open(r.dem) as ds:
        dem = ds.read(1)
        dem[:, : dem.shape[1] // 2] = -9999.0  # west half of the DEM is nodata
        write_raster(tmp_path / "half.tif", dem, ds.crs, ds.transform, nodata=-9999.0)
    scene = prepare_scene([r.image], tmp_path / "scene", dem=tmp_path / "half.tif")
    mask = scene.read_mask()
    stack = scene.read()
    assert (mask[:, :8] == 255).all() and (mask[:, -8:] == 0).all()
    assert np.array_equal(np.isnan(stack).any(axis=0), mask == 255)


def test_dem_without_nodata_value_is_nodata_outside_its_footprint(tmp_path):
    r = make_rasters(tmp_path, size=64, dem=False, inventory_name="", areas=False)
    left, top = r.transform @ (0, 0)
    # A UTM DEM (no nodata value) covering only the northern half of the scene, with a margin.
    dem = write_raster(tmp_path / "dem.tif", np.full((40, 80), 250.0, np.float32), r.crs,
                       rasterio.Affine(10, 0, left - 40, 0, -10, top + 40))
    scene = prepare_scene([r.image], tmp_path / "scene", dem=dem, terrain=["dem"])
    mask, stack = scene.read_mask(), scene.read()
    assert (mask[:30] == 0).all() and (mask[40:] == 255).all()
    assert np.allclose(stack[4, :30], 250.0) and np.isnan(stack[4, 40:]).all()


def test_quicklook_true_colour_choice_and_stretch():
    from slidemap.figures import stretch, true_colour
    from slidemap.raster.bands import rgb_band_indexes

    assert rgb_band_indexes(["blue", "green", "red", "nir"]) == [2, 1, 0]
    assert rgb_band_indexes(["B02", "B03", "B04", "B08"]) == [2, 1, 0]
    assert rgb_band_indexes(["a", "b", "c", "d"]) == [0, 1, 2]
    assert rgb_band_indexes(["dem"]) == [0, 0, 0]
    v = np.arange(100, dtype=np.float32).reshape(10, 10)
    v[0, 0] = np.nan
    out = stretch(v)
    assert np.isnan(out[0, 0]) and out[1, 0] == pytest.approx((10 - 2.96) / (97.04 - 2.96), abs=1e-3)
    rgba = true_colour(np.stack([v, v, v]), ["red", "green", "blue"])
    assert rgba.shape == (10, 10, 4) and rgba[0, 0, 3] == 0 and rgba[5, 5, 3] == 1


# --- areas, split, inventory ------------------------------------------------------------------

@pytest.mark.parametrize("axis", ["x", "y"])
def test_split_cuts_the_valid_area_3_to_2(tmp_path, axis):
    r = make_rasters(tmp_path, size=100, dem=False, nodata_rows=(0, 40) if axis == "y" else None)
    scene = prepare_scene([r.image], tmp_path / "scene", inventory=r.inventory, split="3:2", split_axis=axis)
    train, test = scene.meta.areas
    assert (train.name, train.role, test.name, test.role) == ("train", "train", "test", "test")
    ratio = train.valid_km2 / (train.valid_km2 + test.valid_km2)
    assert ratio == pytest.approx(0.6, abs=0.011)  # within one row/column of 100
    if axis == "x":
        assert train.bounds.width == 60 and test.bounds.col_off == 60
    else:  # 60 valid rows (40..100): 36 train rows after the 40 nodata rows
        assert train.bounds.height == 76 and test.bounds.row_off == 76
    assert (scene.meta.split.ratio, scene.meta.split.axis) == ((3, 2), axis)
    assert not (scene.area_mask("train") & scene.area_mask("test")).any()
    # Statistics (gathered per column/row while writing, before the cut was known) cover the train area.
    assert scene.meta.stats_over == "train"
    values = scene.read()[:, scene.area_mask("train") & (scene.read_mask() != 255)].astype(np.float64)
    for i, name in enumerate(scene.bands):
        s = scene.stats[name]
        assert (s.mean, s.std) == pytest.approx((values[i].mean(), values[i].std()), rel=1e-9)
        assert (s.min, s.max) == (values[i].min(), values[i].max())


@pytest.mark.parametrize("axis", ["x", "y"])
def test_statistics_per_line_merge_exactly_across_blocks(axis):
    """Chan's update per column (row), blocks added in any order and merged over a subset of lines."""
    rng = np.random.default_rng(0)
    block = rng.normal(1000, 300, (3, 40, 50))
    counted = rng.random((40, 50)) > 0.3
    lines = 50 if axis == "x" else 40
    stats = RunningStats(3, lines)
    halves = [(slice(None), slice(25, None)), (slice(None), slice(0, 25))] if axis == "x" else \
        [(slice(20, None), slice(None)), (slice(0, 20), slice(None))]
    for rows, cols in halves:
        first = (cols if axis == "x" else rows).start
        stats.add_lines(block[:, rows, cols], counted[rows, cols], axis, first)
    keep = np.arange(lines) < 30
    selected = counted & (keep[None, :] if axis == "x" else keep[:, None])
    values = block[:, selected]
    d = stats.merged(keep).as_dict("abc")
    for i, name in enumerate("abc"):
        expected = (values[i].mean(), values[i].std())
        assert (d[name]["mean"], d[name]["std"]) == pytest.approx(expected, rel=1e-12)
        assert (d[name]["min"], d[name]["max"]) == (values[i].min(), values[i].max())
    # No line kept (a band without one valid pixel): no statistics at all, not 0 / 1.
    empty = stats.merged(np.zeros(lines, bool)).as_dict("abc")
    assert empty["a"] == {"mean": None, "std": None, "min": None, "max": None, "count": 0}


def test_geographic_scene_km2_and_mask_counts(tmp_path):
    # Scene in degrees at 60°N (pixels ~5.6 m x 11.1 m); inventory stored in UTM 33N.
    r = make_rasters(tmp_path, size=128, crs="EPSG:4326", origin=(15.0, 60.2), pixel=1e-4, dem=False,
                     inventory_crs="EPSG:32633")
    slide = Polygon([(15.002, 60.1995), (15.0045, 60.1985), (15.004, 60.1945), (15.0015, 60.196)])
    write_vector(tmp_path / "slides.geojson", [slide], "EPSG:32633", src_crs="EPSG:4326", id=[1])
    scene = prepare_scene([r.image], tmp_path / "scene", inventory=tmp_path / "slides.geojson",
                          areas=r.areas)
    assert scene.meta.crs == "EPSG:4326"
    dx, dy = scene.pixel_size_m
    assert dx == pytest.approx(5.55, abs=0.02) and dy == pytest.approx(11.14, abs=0.02)
    true_m2 = abs(GEOD.geometry_area_perimeter(slide)[0])
    mask = scene.read_mask()
    pixel_m2 = dx * dy
    boundary_px = GEOD.geometry_area_perimeter(slide)[1] / min(dx, dy)
    assert abs((mask == 1).sum() * pixel_m2 - true_m2) < 0.5 * boundary_px * pixel_m2
    assert (mask == 1).sum() * pixel_m2 == pytest.approx(true_m2, rel=0.03)
    areas = {a.name: a for a in scene.meta.areas}
    train_poly = pixel_box(r.transform, r.area_boxes[0][2])
    assert areas["train"].area_km2 == pytest.approx(abs(GEOD.geometry_area_perimeter(train_poly)[0]) / 1e6,
                                                    rel=1e-4)
    assert areas["train"].landslides == 1 and areas["test_a"].landslides == 0
    assert areas["train"].landslide_km2 == pytest.approx(true_m2 / 1e6, rel=0.03)
    # All-touched marks every pixel the outline crosses: more pixels, each a superset.
    scene2 = prepare_scene([r.image], tmp_path / "scene2", inventory=tmp_path / "slides.geojson",
                           all_touched=True)
    touched = scene2.read_mask() == 1
    assert touched.sum() > (mask == 1).sum() and not ((mask == 1) & ~touched).any()


def test_invalid_geometries_are_repaired_and_reported(tmp_path):
    r = make_rasters(tmp_path, size=64, dem=False, inventory_name="", areas=False)
    left, top = r.transform @ (0, 0)
    bowtie = Polygon([(left + 100, top - 100), (left + 300, top - 300), (left + 300, top - 100),
                      (left + 100, top - 300)])  # self-intersecting
    ok = box(left + 400, top - 500, left + 500, top - 400)
    write_vector(tmp_path / "inv.gpkg", [bowtie, ok], r.crs, id=[1, 2])
    with pytest.warns(PrepareWarning, match="repaired 1 invalid geometry"):
        scene = prepare_scene([r.image], tmp_path / "scene", inventory=tmp_path / "inv.gpkg")
    assert scene.meta.inventory.repaired == 1 and scene.meta.inventory.inside == 2
    # The repaired bow tie is two triangles of 10 000 m² each: ~200 pixels of 100 m², plus the square.
    assert (scene.read_mask() == 1).sum() == pytest.approx(200 + 100, abs=25)


def test_inventory_with_nothing_inside_is_a_warning(tmp_path):
    r = make_rasters(tmp_path, size=64, dem=False, inventory_name="", areas=False)
    left, top = r.transform @ (0, 0)
    # Polygons on both sides of the scene: their extent overlaps it, none lies inside.
    outside = [box(left - 500, top - 300, left - 100, top - 100),
               box(left + 900, top - 300, left + 990, top - 100)]
    write_vector(tmp_path / "far.gpkg", outside, r.crs, id=[1, 2])
    with pytest.warns(PrepareWarning, match="no polygon lies inside the scene"):
        scene = prepare_scene([r.image], tmp_path / "scene", inventory=tmp_path / "far.gpkg")
    assert set(np.unique(scene.read_mask())) == {0}
    assert scene.meta.inventory.inside == 0 and scene.meta.inventory.features == 2


def test_no_areas_no_inventory_statistics_over_all_valid_pixels(tmp_path):
    r = make_rasters(tmp_path, size=48, dem=False, inventory_name="", areas=False, nodata_rows=(0, 8))
    scene = prepare_scene([r.image], tmp_path / "scene")
    assert scene.meta.areas == [] and scene.meta.inventory is None and scene.meta.stats_over == "all"
    assert set(np.unique(scene.read_mask())) == {0, 255}
    valid = r.pixels[0, 8:].astype(np.float64)
    assert scene.stats["blue"].mean == pytest.approx(valid.mean())
    assert len(scene.area_geometries()) == 0


# --- bad input: one error naming the option, nothing left behind -------------------------------

def _bad_inputs(tmp_path: Path) -> dict:
    r = make_rasters(tmp_path / "in", size=32)
    t = r.transform
    (tmp_path / "notes.txt").write_text("not a raster\n")
    far = rasterio.Affine(10, 0, 900000, 0, -10, 1000000)
    write_raster(tmp_path / "far.tif", r.pixels, r.crs, far, nodata=0)
    write_raster(tmp_path / "nocrs.tif", r.pixels, None, t, nodata=0)
    write_raster(tmp_path / "far_dem.tif", np.ones((8, 8), np.float32), "EPSG:4326",
                 rasterio.Affine(0.01, 0, -60, 0, -0.01, -10))
    write_vector(tmp_path / "far_inv.gpkg", [box(0, 0, 1, 1)], "EPSG:4326", id=[1])
    write_vector(tmp_path / "nocrs_inv.gpkg", [pixel_box(t, (2, 2, 8, 8))], None, id=[1])
    write_vector(tmp_path / "overlap.gpkg", [pixel_box(t, (0, 0, 20, 32)), pixel_box(t, (16, 0, 32, 32))],
                 r.crs, name=["a", "b"], role=["train", "test"])
    write_vector(tmp_path / "outside.gpkg", [pixel_box(t, (0, 0, 16, 32)), pixel_box(t, (40, 0, 60, 32))],
                 r.crs, name=["a", "b"], role=["train", "test"])
    img, inv, areas = r.image, r.inventory, r.areas
    return {
        "missing image": ({"images": [tmp_path / "nope.tif"]}, "--image .*nope.tif: no such file"),
        "not a raster": ({"images": [tmp_path / "notes.txt"]}, "--image .*notes.txt: not a raster"),
        "image without CRS": ({"images": [tmp_path / "nocrs.tif"]}, "--image .*nocrs.tif: has no CRS"),
        "images not aligned": ({"images": [img, tmp_path / "far.tif"]},
                               "--image .*far.tif: .*does not overlap"),
        "DEM not a raster": ({"dem": areas}, "--dem .*areas.gpkg: not a raster"),
        "DEM without CRS": ({"dem": tmp_path / "nocrs.tif"}, "--dem .*nocrs.tif: has no CRS"),
        "DEM elsewhere": ({"dem": tmp_path / "far_dem.tif"}, "--dem .*far_dem.tif: .*does not overlap"),
        "inventory not a vector": ({"inventory": img}, "--inventory .*image.tif: not a vector"),
        "inventory missing": ({"inventory": tmp_path / "nope.gpkg"}, "--inventory .*nope.gpkg: no such file"),
        "inventory without CRS": ({"inventory": tmp_path / "nocrs_inv.gpkg"}, "--inventory .*: has no CRS"),
        "inventory elsewhere": ({"inventory": tmp_path / "far_inv.gpkg"}, "--inventory .*: does not overlap"),
        "areas overlap": ({"areas": tmp_path / "overlap.gpkg"},
                          "--areas .*: train area a and test area b overlap"),
        "area outside": ({"areas": tmp_path / "outside.gpkg"}, "--areas .*: area b lies outside the scene"),
        "areas missing": ({"areas": tmp_path / "nope.gpkg"}, "--areas .*nope.gpkg: no such file"),
        "band names count": ({"band_names": ["a", "b"]}, "--band-names: 2 names for 4 image bands"),
        "bad split": ({"areas": None, "split": "3-2"}, "--split 3-2: expected TRAIN:TEST"),
        "bad terrain": ({"terrain": ["slope", "curv"]}, "--terrain slope,curv: unknown layer curv"),
    }, {"images": [img], "dem": r.dem, "inventory": inv, "areas": areas}


def test_every_bad_input_is_one_user_error_and_leaves_nothing(tmp_path):
    cases, good = _bad_inputs(tmp_path)
    for name, (change, message) in cases.items():
        out = tmp_path / "out" / name.replace(" ", "_")
        kwargs = {**good, **change}
        with pytest.raises(UserError, match=message) as err:
            prepare_scene(kwargs.pop("images"), out, **kwargs)
        assert "\n" not in str(err.value), name
        assert _leftovers(out) == [], name


def test_failure_keeps_an_existing_scene(tmp_path, tiny_inputs):
    out = tmp_path / "scene"
    prepare_scene([tiny_inputs.image], out, split="3:2")
    before = (out / "scene.json").read_bytes()
    with pytest.raises(UserError):
        prepare_scene([tiny_inputs.image], out, band_names=["x"])
    assert (out / "scene.json").read_bytes() == before and _leftovers(out) == ["scene"]


# --- the command ----------------------------------------------------------------------------------

def test_cli_prepare_prints_scene_and_errors(tmp_path, tiny_inputs, capsys):
    out = tmp_path / "scene"
    args = ["prepare", "--image", str(tiny_inputs.image), "--dem", str(tiny_inputs.dem), "--inventory",
            str(tiny_inputs.inventory), "--split", "3:2", "--split-axis", "y", "--terrain", "slope,hillshade",
            "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "128x128 px, bands blue, green, red, nir, slope, hillshade" in printed
    assert "train train:" in printed and "km²" in printed
    assert main(["prepare", "--image", str(tmp_path / "nope.tif"), "--split", "3:2", "--out",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --image {tmp_path / 'nope.tif'}: no such file; check the path"]
    both = ["prepare", "--image", str(tiny_inputs.image), "--areas", str(tiny_inputs.areas), "--split", "1:1",
            "--out", str(tmp_path / "y")]
    assert main(both) == 2
    assert capsys.readouterr().err.startswith("error: --areas / --split: give one")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    # neither: a scene only to predict (an analyst's fresh image), its statistics over all valid pixels
    assert main(["prepare", "--image", str(tiny_inputs.image), "--out", str(tmp_path / "z")]) == 0
    assert "128x128 px, bands blue, green, red, nir" in capsys.readouterr().out
    assert Scene(tmp_path / "z").areas == [] and Scene(tmp_path / "z").stats


def test_cli_prints_warnings_as_one_line(tmp_path, capsys):
    r = make_rasters(tmp_path, size=32, dem=False, inventory_name="", areas=False)
    write_vector(tmp_path / "empty.gpkg", [], r.crs, id=[])
    assert main(["prepare", "--image", str(r.image), "--inventory", str(tmp_path / "empty.gpkg"),
                 "--split", "1:1", "--out", str(tmp_path / "scene")]) == 0
    assert "warning: --inventory" in capsys.readouterr().err


# --- real data ------------------------------------------------------------------------------------

CHATTOGRAM = SHARED_DATA / "chattogram-s2" / "s2_4band.tif"


@pytest.mark.skipif(not CHATTOGRAM.exists(), reason="../shared/data/chattogram-s2 is absent")
def test_real_chattogram_scene_split(tmp_path):
    scene = prepare_scene([CHATTOGRAM], tmp_path / "scene", split="3:2")
    assert (scene.width, scene.height) == (1152, 2048) and scene.crs.to_epsg() == 4326
    dx, dy = scene.pixel_size_m
    assert dx == pytest.approx(9.25, abs=0.05) and dy == pytest.approx(9.95, abs=0.05)
    mask = scene.read_mask()
    assert (mask == 255).mean() == pytest.approx(0.61, abs=0.02) and set(np.unique(mask)) == {0, 255}
    train, test = scene.meta.areas
    assert train.valid_km2 / (train.valid_km2 + test.valid_km2) == pytest.approx(0.6, abs=0.01)
    assert train.area_km2 + test.area_km2 == pytest.approx(217.1, abs=0.5)
    for s in scene.stats.values():  # nodata 0 is not counted
        assert s.min > 0 and s.mean > s.min
    assert scene.meta.sources[0].sha256 == \
        "48914011f595c9ac028c62d3565dbba7dcd50b6394067ac595dd07654570524f"
