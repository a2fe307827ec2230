"""Label rasters as the landslide inventory (issue 15, point 1): a mask raster on any grid and CRS,
landslide values, unknown pixels (nodata, --unlabelled-values, outside its footprint) as 255 counted
nowhere, and landslides counted as connected components; compared with the same labels as polygons."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import SHARED_DATA, write_raster, write_vector
from rasterio import features
from rasterio.warp import Resampling, calculate_default_transform, reproject
from scene_helpers import blobs, image_with, untrained_bundle
from scipy import ndimage

from slidemap.cli import main
from slidemap.errors import UserError
from slidemap.formats.scene import Scene
from slidemap.stages.predict import PredictOptions
from slidemap.stages.predict import run as predict
from slidemap.stages.prepare import PrepareOptions, PrepareWarning, run

CRS = "EPSG:32633"
TRANSFORM = Affine(10.0, 0, 500000.0, 0, -10.0, 5100000.0)
SIZE = 96


def labels_array(seed: int = 3) -> np.ndarray:
    """uint8 labels like the Chattogram raster: 0 unlabelled (a frame and a corner), 1 background, 2
    landslide (irregular blobs), plus a few pixels of 3 (say, cloud)."""
    lab = np.ones((SIZE, SIZE), dtype=np.uint8)
    lab[blobs((SIZE, SIZE), 7, (4, 9), seed)] = 2
    lab[:6, :] = 0
    lab[:, -10:] = 0
    lab[70:80, 5:20] = 3
    return lab


def polygons_of(lab: np.ndarray, transform: Affine, crs, path: Path, value: int = 2) -> Path:
    """The pixels of ``value`` as polygons (4-connected, as the mask's landslides are)."""
    from shapely.geometry import shape

    geoms = [shape(g) for g, v in features.shapes(lab, mask=lab == value, connectivity=4, transform=transform)
             if v == value]
    return write_vector(path, geoms, crs, id=list(range(1, len(geoms) + 1)))


def prepare(tmp: Path, name: str, **options):
    return run(PrepareOptions(out=tmp / name, split="1:1", **options))


@pytest.fixture
def inputs(tmp_path):
    lab = labels_array()
    image = image_with(tmp_path, lab == 2, TRANSFORM, CRS)
    labels = write_raster(tmp_path / "labels.tif", lab, CRS, TRANSFORM, nodata=0)
    return tmp_path, lab, image, labels


def test_label_raster_mask_matches_the_same_labels_as_polygons(inputs):
    tmp, lab, image, labels = inputs
    poly = polygons_of(lab, TRANSFORM, CRS, tmp / "labels.gpkg")
    a = prepare(tmp, "from_raster", images=[image], inventory=labels, label_values=[2])
    b = prepare(tmp, "from_polygons", images=[image], inventory=poly)
    ma, mb = Scene(a.path).read_mask(), Scene(b.path).read_mask()
    known = lab != 0
    assert np.array_equal(ma[known], mb[known])  # identical wherever the raster knows the truth
    assert np.all(ma[lab == 2] == 1) and np.all(ma[lab == 1] == 0) and np.all(ma[lab == 3] == 0)
    assert np.all(ma[lab == 0] == 255) and np.all(mb[lab == 0] != 255)  # unknown, not background
    ia, ib = a.meta.inventory, b.meta.inventory
    assert ia.kind == "raster" and ib.kind == "polygons"
    components = ndimage.label(lab == 2)[1]  # 4-connected
    assert ia.landslides == ib.landslides == components == ib.inside
    assert ia.landslide_pixels == ib.landslide_pixels == int((lab == 2).sum())
    assert ia.landslide_km2 == pytest.approx(ib.landslide_km2) == pytest.approx((lab == 2).sum() * 100 / 1e6)
    assert ia.unknown_km2 == pytest.approx((lab == 0).sum() * 100 / 1e6)
    assert ia.labelled_km2 == pytest.approx(known.sum() * 100 / 1e6)
    assert ib.unknown_km2 == 0
    # per area: the same landslides and km², but valid km² only where the truth is known
    for ra, rb in zip(a.meta.areas, b.meta.areas, strict=True):
        assert ra.landslide_pixels == rb.landslide_pixels and ra.landslides == rb.landslides
        assert ra.valid_km2 < rb.valid_km2
    saved = json.loads((a.path / "scene.json").read_text())["inventory"]
    assert saved["label_values"] == [2.0] and saved["nodata"] == 0.0 and saved["kind"] == "raster"
    assert [s.resampling for s in a.meta.sources if s.role == "inventory"] == ["none"]


def test_label_raster_on_another_grid_and_crs_matches_polygons(tmp_path):
    """Labels in EPSG:4326 on pixels a third of the image's: nearest resampling agrees with rasterising the
    same label pixels as polygons (the centre rule) except at a few rim pixels (GDAL's approximate warp)."""
    fine = Affine(10 / 3, 0, 500000.0 - 20, 0, -10 / 3, 5100000.0 + 20)
    n = 3 * SIZE + 12
    lab = np.ones((n, n), dtype=np.uint8)
    lab[blobs((n, n), 8, (12, 25), 5)] = 2
    lab[:30] = 0
    utm = write_raster(tmp_path / "labels_utm.tif", lab, CRS, fine, nodata=0)
    with rasterio.open(utm) as src:
        t, w, h = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height, *src.bounds)
        geo = np.zeros((h, w), dtype=np.uint8)
        reproject(lab, geo, src_transform=fine, src_crs=CRS, dst_transform=t, dst_crs="EPSG:4326",
                  resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)
    labels = write_raster(tmp_path / "labels.tif", geo, "EPSG:4326", t, nodata=0)
    poly = polygons_of(geo, t, "EPSG:4326", tmp_path / "labels.gpkg")
    image = image_with(tmp_path, np.zeros((SIZE, SIZE), bool), TRANSFORM, CRS)
    a = prepare(tmp_path, "a", images=[image], inventory=labels, label_values=[2])
    b = prepare(tmp_path, "b", images=[image], inventory=poly)
    ma, mb = Scene(a.path).read_mask(), Scene(b.path).read_mask()
    known = ma != 255
    slide_b = mb == 1
    assert (ma == 1).sum() > 500
    disagree = ((ma == 1) != slide_b) & known
    assert disagree.sum() <= 0.01 * slide_b.sum()
    assert a.meta.inventory.landslide_km2 == pytest.approx(b.meta.inventory.landslide_km2, rel=0.01)
    assert a.meta.inventory.landslides == b.meta.inventory.landslides
    assert [s.resampling for s in a.meta.sources if s.role == "inventory"] == ["nearest"]


def test_values_unlabelled_and_outside_the_footprint_are_unknown(inputs):
    tmp, lab, image, _ = inputs
    lab4 = lab.copy()
    lab4[20:30, 20:30] = 4  # a second landslide class
    # the label raster covers only the left half of the image and has no nodata value
    half = write_raster(tmp / "half.tif", lab4[:, :48], CRS, TRANSFORM, nodata=None)
    r = prepare(tmp, "s", images=[image], inventory=half, label_values=[2, 4], unlabelled_values=[0, 3])
    m = Scene(r.path).read_mask()
    assert np.all(m[:, 48:] == 255)  # outside the label raster: unknown
    left = lab4[:, :48]
    assert np.all(m[:, :48][np.isin(left, [2, 4])] == 1)
    assert np.all(m[:, :48][np.isin(left, [0, 3])] == 255)
    assert np.all(m[:, :48][left == 1] == 0)
    assert r.meta.inventory.unlabelled_values == [0.0, 3.0] and r.meta.inventory.nodata is None


def test_landslides_are_4_connected_components(tmp_path):
    lab = np.ones((SIZE, SIZE), dtype=np.uint8)
    lab[10:20, 10:20] = 2
    lab[20:30, 20:30] = 2  # touches the first only at a corner: a second landslide
    lab[50:60, 10:70] = 2  # crosses the --split cut (column 48): one landslide, counted in both areas
    image = image_with(tmp_path, lab == 2, TRANSFORM, CRS)
    labels = write_raster(tmp_path / "labels.tif", lab, CRS, TRANSFORM, nodata=0)
    r = prepare(tmp_path, "s", images=[image], inventory=labels, label_values=[2])
    assert r.meta.inventory.landslides == 3
    assert r.meta.inventory.landslide_pixels == 100 + 100 + 600
    by_role = {a.role: a.landslides for a in r.meta.areas}
    assert by_role == {"train": 3, "test": 1}


def test_bad_label_raster_options_are_one_line_errors(inputs, tmp_path):
    tmp, lab, image, labels = inputs
    poly = polygons_of(lab, TRANSFORM, CRS, tmp / "labels.gpkg")
    four = write_raster(tmp / "four.tif", np.stack([lab] * 4), CRS, TRANSFORM, nodata=0)
    cases = [
        (dict(inventory=poly, label_values=[2]), r"--label-values / --unlabelled-values: .*labels.gpkg is a "
                                                 r"vector of polygons"),
        (dict(inventory=labels, label_values=[2], unlabelled_values=[2]),
         r"^--unlabelled-values 2: 2 is also in --label-values; a value is either landslide or unknown$"),
        (dict(label_values=[2]), r"^--label-values 2: goes with a label raster --inventory"),
        (dict(inventory=four), r"--inventory .*four.tif: not a vector of polygons, and a raster of 4 bands"),
        (dict(inventory=labels, label_values=[0]), r"--label-values 0: 0 is the nodata value"),
        (dict(inventory=labels, all_touched=True), r"--all-touched: applies to polygon inventories"),
    ]
    for options, message in cases:
        with pytest.raises(UserError, match=message) as err:
            prepare(tmp, "bad", images=[image], **options)
        assert "\n" not in str(err.value)
        assert not (tmp / "bad").exists()
    with pytest.warns(PrepareWarning, match=r"no valid pixel of the scene holds label value\(s\) 7"):
        prepare(tmp, "none", images=[image], inventory=labels, label_values=[7])


def test_cli_label_raster(inputs, capsys):
    tmp, lab, image, labels = inputs
    assert main(["prepare", "--image", str(image), "--inventory", str(labels), "--label-values", "2",
                 "--unlabelled-values", "3", "--split", "1:1", "--out", str(tmp / "cli")]) == 0
    out = capsys.readouterr().out
    n = ndimage.label(lab == 2)[1]
    assert f"inventory (raster): {n} landslides" in out and "unknown over" in out
    assert main(["prepare", "--image", str(image), "--inventory", str(labels), "--label-values", "two",
                 "--split", "1:1", "--out", str(tmp / "cli2")]) == 2
    assert capsys.readouterr().err.strip() == ("error: --label-values two: expected comma-separated numbers, "
                                               "e.g. 1,2")
    m = Scene(tmp / "cli").read_mask()
    assert np.all(m[lab == 3] == 255)


def test_predict_covers_unlabelled_pixels_of_a_label_raster_scene(inputs):
    """Unknown truth is not nodata: a scene prepared with a label raster is predicted wherever it has
    image data, while the evaluation counts only the labelled pixels."""
    tmp, lab, image, labels = inputs
    r = prepare(tmp, "s", images=[image], inventory=labels, label_values=[2])
    bundle = untrained_bundle(tmp / "b.pt", r.meta.bands)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = predict(PredictOptions(model=bundle, out=tmp / "pred", scene=r.path, tile=64, overlap=16,
                                     evaluate=True))
    with rasterio.open(tmp / "pred" / "probability.tif") as ds:
        prob = ds.read(1)
    assert np.all(prob != 255)  # every pixel of the image is predicted, labelled or not
    assert res.meta.valid_km2 == pytest.approx(SIZE * SIZE * 100 / 1e6)
    pixels = res.evaluation.metrics.all.pixels
    test_area = Scene(r.path).area_mask("test")
    assert sum(pixels[k] for k in ("tp", "fp", "fn", "tn")) == int(((lab != 0) & test_area).sum())


@pytest.mark.skipif(not (SHARED_DATA / "chattogram-s2" / "labels.tif").is_file(),
                    reason="../shared/data/chattogram-s2 is absent (a fresh clone has no ../shared)")
def test_chattogram_label_raster(tmp_path):
    """The real published label raster: 0 unlabelled (99.8 %), 1 not landslide, 2 landslide."""
    folder = SHARED_DATA / "chattogram-s2"
    r = run(PrepareOptions(images=[folder / "s2_4band.tif"], out=tmp_path / "scene",
                           inventory=folder / "labels.tif", label_values=[2], split="1:1",
                           band_names=["red", "green", "blue", "nir"], indices=["ndvi"]))
    inv = r.meta.inventory
    with rasterio.open(folder / "labels.tif") as ds:
        lab = ds.read(1)
    with rasterio.open(folder / "s2_4band.tif") as ds:
        valid = ~np.any(ds.read() == 0, axis=0)
    landslide = (lab == 2) & valid
    assert inv.kind == "raster" and inv.landslide_pixels == int(landslide.sum())
    assert inv.landslides == ndimage.label(landslide)[1]
    mask = Scene(r.path).read_mask()
    assert np.array_equal(mask == 1, landslide)
    assert np.array_equal(mask == 0, (lab == 1) & valid)
    assert inv.unknown_km2 > 100 * inv.labelled_km2  # unlabelled over 99 % of the valid scene
    assert 0.1 < inv.landslide_km2 < 0.2


def test_no_window_names_unknown_truth_when_labels_are_sparse(tmp_path):
    """Chattogram's labels know the truth on 0.5 % of the scene: sampling that finds no window says the
    windows were refused for unknown truth (255 in mask.tif, like nodata), not for image nodata."""
    from slidemap.stages.sample import SampleOptions
    from slidemap.stages.sample import run as sample

    lab = np.zeros((SIZE, SIZE), dtype=np.uint8)  # unlabelled but for a few blobs
    lab[blobs((SIZE, SIZE), 7, (2, 4), 5)] = 2
    lab[40:44, 10:14] = 1
    image = image_with(tmp_path, lab == 2, TRANSFORM, CRS)
    labels = write_raster(tmp_path / "labels.tif", lab, CRS, TRANSFORM, nodata=0)
    scene = prepare(tmp_path, "scene", images=[image], inventory=labels, label_values=[2]).path
    with pytest.raises(UserError, match=r"at most 0 px without imagery, at most 50% of unknown truth; the truth "
                                        r"is known on [0-9.]+ of [0-9.]+ km²\); try a smaller --size or a larger "
                                        r"--max-unknown or a larger --max-nodata"):
        sample(SampleOptions(scene=scene, out=tmp_path / "chips", method="grid", size=32))


PATCHY = 512  # side of the patch-labelled raster, px of 10 m


def patch_labels(seed: int = 0) -> np.ndarray:
    """uint8 labels as an analyst makes them patch by patch: 255 unlabelled, and 14 square patches of
    60-140 px labelled 0 (background) with landslide blobs of 1 inside them."""
    rng = np.random.default_rng(seed)
    lab = np.full((PATCHY, PATCHY), 255, dtype=np.uint8)
    slides = blobs((PATCHY, PATCHY), 60, (3, 9), seed)
    for _ in range(14):
        side = int(rng.integers(60, 141))
        r, c = rng.integers(0, PATCHY - side, size=2)
        patch = np.s_[r:r + side, c:c + side]
        lab[patch] = np.where(slides[patch], 1, 0)
    return lab


def test_patch_labels_sample_more_chips_as_max_unknown_grows(tmp_path):
    """A label raster labelled in patches: the chips and the km² of known truth they hold, for max_unknown
    0 / 0.25 / 0.5 / 0.75, equal a brute count over the grid lattice (docs/real-scenes.md tables them)."""
    from slidemap.formats.chips import ChipSet
    from slidemap.raster.sampling import grid_candidates
    from slidemap.stages.sample import SampleOptions
    from slidemap.stages.sample import run as sample

    lab = patch_labels()
    image = image_with(tmp_path, lab == 1, TRANSFORM, CRS)
    labels = write_raster(tmp_path / "labels.tif", lab, CRS, TRANSFORM, nodata=255)
    scene = Scene(run(PrepareOptions(out=tmp_path / "scene", images=[image], inventory=labels, label_values=[1],
                                     split="3:2")).path)
    mask = scene.read_mask()
    assert np.array_equal(mask, lab)  # the scene's grid is the raster's; every image pixel is valid
    train, test = scene.area_mask("train"), scene.area_mask("test")
    rows, cols = grid_candidates(train, 64, 0.0)
    chips, km2 = [], []
    for share in (0.0, 0.25, 0.5, 0.75):
        got = sample(SampleOptions(scene=scene.path, out=tmp_path / f"chips{share}", size=64, max_unknown=share))
        want = [(r, c) for r, c in zip(rows.tolist(), cols.tolist(), strict=True)
                if train[r:r + 64, c:c + 64].all() and not test[r:r + 64, c:c + 64].any()
                and (mask[r:r + 64, c:c + 64] == 255).sum() <= int(share * 64 * 64)]
        windows = [(w["row"], w["col"]) for w in ChipSet(got.path).windows]
        assert windows == want, share
        covered = np.zeros(mask.shape, dtype=bool)
        for r, c in want:
            covered[r:r + 64, c:c + 64] = True
        known = (covered & (mask != 255)).sum() * 100 / 1e6
        assert got.meta.summary["known_truth_km2"] == pytest.approx(known)
        chips.append(len(want))
        km2.append(known)
    assert chips[0] < chips[1] < chips[2] < chips[3]  # more windows, and more known truth in them
    assert km2[0] < km2[1] < km2[2] < km2[3]

