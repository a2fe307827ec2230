"""`slidemap evaluate`: metrics per area on hand-built masks, km² in any CRS, grids, objects, error maps."""

import csv
import json
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import cli_error
from pyproj import Geod
from scipy import ndimage
from shapely.geometry import box

from slidemap.cli import main
from slidemap.errors import UserError
from slidemap.formats.chips import write_chipset
from slidemap.formats.files import sha256
from slidemap.formats.prediction import PatchMetrics, PatchPrediction, SceneMetrics, ScenePrediction
from slidemap.formats.scene import SceneMeta
from slidemap.raster.components import ComponentLabeler
from slidemap.raster.geo import block_windows
from slidemap.raster.metrics import FN, FP, TN, TP, confusion
from slidemap.raster.metrics import NODATA_CLASS as NODATA
from slidemap.stages.evaluate import EvaluateOptions, EvaluateResult, run

UTM = "EPSG:32633"
UTM_10M = Affine(10, 0, 500000, 0, -10, 5000000)
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def evaluate(pred, truth=None, **options) -> EvaluateResult:
    """``slidemap evaluate`` through its API: ``run(EvaluateOptions(...))``."""
    return run(EvaluateOptions(pred=pred, truth=truth, **options))


# --- tiny folders built by hand per the scene / prediction contracts ---------------------------------
def write_tif(path, arr, crs, transform, nodata=None):
    arr = np.asarray(arr)
    arr = arr[None] if arr.ndim == 2 else arr
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0],
                       dtype=arr.dtype, crs=crs, transform=transform, nodata=nodata) as ds:
        ds.write(arr)
        for i, name in enumerate(("blue", "green", "red", "nir")[:arr.shape[0]] if arr.shape[0] > 1 else []):
            ds.set_band_description(i + 1, name)


def pixel_box(transform, r0, c0, r1, c1):
    """Polygon covering pixel rows r0..r1-1 and columns c0..c1-1."""
    x0, y0 = transform @ (c0, r0)
    x1, y1 = transform @ (c1, r1)
    return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def make_scene(root, mask, crs=UTM, transform=UTM_10M, areas=None, bands=("blue", "green", "red"), seed=0):
    """A scene folder: stack.tif, mask.tif, areas.gpkg, scene.json; ``areas`` = [(name, role, geom)]."""
    root = Path(root)
    root.mkdir(parents=True)
    mask = np.asarray(mask, dtype=np.uint8)
    h, w = mask.shape
    rng = np.random.default_rng(seed)
    stack = rng.uniform(0, 1, (len(bands), h, w)).astype("float32")
    stack[:, mask == 1] += 1.0  # landslides are bright
    write_tif(root / "stack.tif", stack, crs, transform, nodata=float("nan"))
    write_tif(root / "mask.tif", mask, crs, transform, nodata=255)
    if areas is None:
        areas = [("test", "test", pixel_box(transform, 0, 0, h, w))]
    gpd.GeoDataFrame({"name": [a[0] for a in areas], "role": [a[1] for a in areas]},
                     geometry=[a[2] for a in areas], crs=crs).to_file(root / "areas.gpkg")
    SceneMeta(bands=list(bands), crs=crs, transform=list(transform)[:6], width=w, height=h,
              pixel_size_m=(10.0, 10.0), inventory={"path": "inventory.gpkg"},
              areas=[{"name": a[0], "role": a[1]} for a in areas]).save(root / "scene.json")
    return root


def make_pred(root, mask, crs=UTM, transform=UTM_10M, threshold=0.5, area=None, scene=None):
    """A prediction folder: mask.tif, probability.tif, prediction.json (as ``predict`` describes it)."""
    root = Path(root)
    root.mkdir(parents=True)
    mask = np.asarray(mask, dtype=np.uint8)
    write_tif(root / "mask.tif", mask, crs, transform, nodata=255)
    write_tif(root / "probability.tif", np.where(mask == 1, 230, 20).astype(np.uint8), crs, transform)
    ScenePrediction(model="bundle.pt", scene=str(scene) if scene else None, area=area, crs=crs,
                    transform=list(transform)[:6], threshold={"value": threshold, "which": "given"},
                    tile=512, overlap=64, blend_margin=16, batch_size=4, device="cpu", precision="32",
                    width=mask.shape[1], height=mask.shape[0], landslides=0, landslide_km2=0.0,
                    valid_km2=0.0).save(root / "prediction.json")
    return root


def blobs(shape, n, seed, radius=(1, 5)):
    """Seeded random discs: a mask with ``n`` blobs of varied size."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape, dtype=np.uint8)
    for _ in range(n):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(*radius)
        out[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    return out


# hand case: truth nodata at (1,4), prediction nodata at (2,5)
TRUTH = [[1, 1, 0, 0, 0, 0],
         [1, 1, 0, 0, 255, 0],
         [0, 0, 0, 0, 0, 0],
         [0, 0, 0, 1, 1, 0]]
PRED = [[1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 1, 0],
        [0, 0, 0, 0, 0, 255],
        [1, 0, 0, 1, 0, 0]]
CLASSES = [[TP, FN, TN, TN, TN, TN],
           [TP, TP, FP, TN, NODATA, TN],
           [TN, TN, TN, TN, TN, NODATA],
           [FP, TN, TN, TP, FN, TN]]


@pytest.fixture
def hand(tmp_path):
    scene = make_scene(tmp_path / "scene", TRUTH)
    pred = make_pred(tmp_path / "pred", PRED, threshold=0.42, scene=scene)
    return pred, scene


# --- pixel metrics -----------------------------------------------------------------------------------
def test_hand_built_metrics(hand):
    pred, scene = hand
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # same grid, full coverage: nothing to warn about
        result = evaluate(pred, scene)
    assert isinstance(result.metrics, SceneMetrics)
    row = result.metrics.areas[0]
    assert row.pixels == {"tp": 4, "fp": 2, "fn": 2, "tn": 14, "nodata": 2}
    s = row.scores
    assert s.precision == pytest.approx(4 / 6)
    assert s.recall == pytest.approx(4 / 6)
    assert s.f1 == pytest.approx(8 / 12)
    assert s.iou == pytest.approx(4 / 8)
    assert s.iou_background == pytest.approx(14 / 18)
    assert s.miou == pytest.approx((4 / 8 + 14 / 18) / 2)
    assert row.km2 == pytest.approx({"tp": 4e-4, "fp": 2e-4, "fn": 2e-4, "tn": 14e-4})
    # the same counts as the stateless metric function, nodata of both excluded
    p, t = np.array(PRED), np.array(TRUTH)
    c = confusion(p == 1, t, valid=p != 255)
    assert (c.tp, c.fp, c.fn, c.tn) == (4, 2, 2, 14)
    # objects: truth blob 3/4 found, truth pair 1/2 found at 0.5; predicted: blob, single TP, one false alarm
    # (the predicted pixel on truth nodata is no object: it has no valid pixel)
    assert row.objects == {"landslides_total": 2, "landslides_found": 2, "predicted_objects": 3,
                           "false_alarms": 1}
    assert result.metrics.threshold == 0.42


def test_object_overlap_threshold(hand):
    pred, scene = hand
    row = evaluate(pred, scene, object_overlap=0.6).metrics.areas[0]
    assert row.objects["landslides_found"] == 1  # 3/4 >= 0.6, 1/2 < 0.6


def test_empty_truth_and_prediction(tmp_path):
    zeros = np.zeros((5, 7), dtype=np.uint8)
    scene = make_scene(tmp_path / "scene", zeros)
    row = evaluate(make_pred(tmp_path / "p0", zeros), scene).metrics.areas[0]
    assert row.pixels == {"tp": 0, "fp": 0, "fn": 0, "tn": 35, "nodata": 0}
    assert row.scores.precision == 0.0 and row.scores.recall == 0.0 and row.scores.f1 == 0.0
    assert row.scores.iou == 1.0 and row.scores.miou == 1.0  # nothing to find, nothing wrong
    assert row.objects == {"landslides_total": 0, "landslides_found": 0, "predicted_objects": 0,
                           "false_alarms": 0}
    alarm = zeros.copy()
    alarm[1:3, 1:3] = 1
    alarm[4, 6] = 1
    row = evaluate(make_pred(tmp_path / "p1", alarm), scene).metrics.areas[0]
    assert row.pixels == {"tp": 0, "fp": 5, "fn": 0, "tn": 30, "nodata": 0}
    assert row.scores.iou == 0.0 and row.scores.f1 == 0.0
    assert row.scores.iou_background == pytest.approx(30 / 35)
    assert row.objects["false_alarms"] == 2 and row.objects["landslides_total"] == 0


def test_all_nodata_prediction(tmp_path):
    truth = np.zeros((4, 4), dtype=np.uint8)
    truth[1, 1] = 1
    scene = make_scene(tmp_path / "scene", truth)
    row = evaluate(make_pred(tmp_path / "p", np.full((4, 4), 255)), scene).metrics.areas[0]
    assert row.pixels == {"tp": 0, "fp": 0, "fn": 0, "tn": 0, "nodata": 16}
    assert row.objects["landslides_total"] == 0  # a landslide wholly on nodata is not counted


def test_areas_separate_and_pool(tmp_path):
    t = UTM_10M
    truth = np.zeros((10, 20), dtype=np.uint8)
    truth[2:5, 2:5] = 1    # area a: found exactly
    truth[2:5, 12:15] = 1  # area b: missed
    truth[8, 0:20] = 1     # train strip, never evaluated by default
    pred = np.zeros_like(truth)
    pred[2:5, 2:5] = 1
    pred[8, :] = 1
    areas = [("a", "test", pixel_box(t, 0, 0, 7, 10)), ("b", "test", pixel_box(t, 0, 10, 7, 20)),
             ("fit", "train", pixel_box(t, 7, 0, 10, 20))]
    scene = make_scene(tmp_path / "scene", truth, areas=areas)
    m = evaluate(make_pred(tmp_path / "pred", pred), scene).metrics
    rows = {r.area: r for r in m.areas}
    assert list(rows) == ["a", "b"]
    assert rows["a"].pixels == {"tp": 9, "fp": 0, "fn": 0, "tn": 61, "nodata": 0}
    assert rows["b"].pixels == {"tp": 0, "fp": 0, "fn": 9, "tn": 61, "nodata": 0}
    assert rows["a"].scores.f1 == 1.0 and rows["b"].scores.recall == 0.0
    assert m.all.pixels == {"tp": 9, "fp": 0, "fn": 9, "tn": 122, "nodata": 0}
    assert m.all.scores.f1 == pytest.approx(18 / 27)
    assert m.all.objects["landslides_found"] == 1 and m.all.objects["landslides_total"] == 2
    fit = evaluate(tmp_path / "pred", scene, areas=["fit"]).metrics.areas
    assert [r.area for r in fit] == ["fit"] and fit[0].pixels["tp"] == 20


# --- areas in km² --------------------------------------------------------------------------------------
def test_km2_projected_feet(tmp_path):
    crs = "EPSG:2229"  # California zone 5, US survey feet
    t = Affine(100, 0, 6_500_000, 0, -100, 1_900_000)
    truth = np.ones((3, 4), dtype=np.uint8)
    scene = make_scene(tmp_path / "scene", truth, crs=crs, transform=t)
    row = evaluate(make_pred(tmp_path / "pred", truth, crs=crs, transform=t), scene).metrics.areas[0]
    ft = 1200 / 3937  # US survey foot in metres
    assert row.km2["tp"] == pytest.approx(12 * (100 * ft) ** 2 / 1e6, rel=1e-6)


def test_km2_geographic(tmp_path):
    t = Affine(0.001, 0, 10.0, 0, -0.001, 61.0)  # 0.001° pixels from 61°N southwards
    truth = np.zeros((30, 20), dtype=np.uint8)
    truth[::3, ::2] = 1
    pred = np.ones_like(truth)
    scene = make_scene(tmp_path / "scene", truth, crs="EPSG:4326", transform=t)
    pred_dir = make_pred(tmp_path / "pred", pred, crs="EPSG:4326", transform=t)
    row = evaluate(pred_dir, scene).metrics.areas[0]
    geod = Geod(ellps="WGS84")

    def km2(mask):
        total = 0.0
        for r, c in zip(*np.nonzero(mask), strict=True):
            area, _ = geod.geometry_area_perimeter(pixel_box(t, r, c, r + 1, c + 1))
            total += abs(area)
        return total / 1e6

    assert row.km2["tp"] == pytest.approx(km2(truth == 1), rel=1e-4)
    assert row.km2["fp"] == pytest.approx(km2(truth == 0), rel=1e-4)
    # plausibility: 100 pixels of 0.001° x 0.001°, ~111.2 km/° north, ~54 km/° east at 60.98°N
    assert row.km2["tp"] == pytest.approx(100 * 0.001 ** 2 * 111.2 * 54.1, rel=0.01)


# --- grids -------------------------------------------------------------------------------------------
def test_prediction_on_area_window_equals_full_grid(tmp_path):
    truth = blobs((40, 40), 25, seed=1)
    truth[30:, :6] = 255
    full = blobs((40, 40), 25, seed=2) | (truth == 1) * ndimage.binary_erosion(truth == 1).astype(np.uint8)
    full[5:8, 20:30] = 255
    area = pixel_box(UTM_10M, 10, 5, 34, 35)
    areas = [("test", "test", area), ("rest", "train", box(0, 0, 1, 1))]
    scene = make_scene(tmp_path / "scene", truth, areas=areas)
    a = evaluate(make_pred(tmp_path / "full", full), scene).metrics.areas[0]
    window_t = UTM_10M @ Affine.translation(3, 8)  # window rows 8..35, cols 3..38
    b = evaluate(make_pred(tmp_path / "win", full[8:36, 3:39], transform=window_t, area="test"),
                 scene).metrics.areas[0]
    for key in ("pixels", "km2", "scores", "objects"):
        assert getattr(a, key) == getattr(b, key), key
    assert a.pixels["tp"] > 0 and a.pixels["fn"] > 0 and a.pixels["fp"] > 0
    # and it matches a direct whole-array computation on the area's pixels
    inside = np.zeros((40, 40), bool)
    inside[10:34, 5:35] = True
    c = confusion(full == 1, truth, valid=inside & (full != 255))
    assert a.pixels == {**c.as_dict(), "nodata": int((inside & ((full == 255) | (truth == 255))).sum())}


def test_partial_coverage_warns(tmp_path):
    truth = blobs((20, 20), 6, seed=3)
    scene = make_scene(tmp_path / "scene", truth)
    pred = make_pred(tmp_path / "pred", truth[:10], transform=UTM_10M)
    with pytest.warns(UserWarning, match="covers 50.0%"):
        row = evaluate(pred, scene).metrics.areas[0]
    assert row.pixels["tp"] == int((truth[:10] == 1).sum()) and row.pixels["fn"] == 0


def test_truth_on_another_grid_is_reprojected(tmp_path):
    truth = blobs((12, 12), 5, seed=4)
    scene = make_scene(tmp_path / "scene", truth)
    fine = np.kron(truth, np.ones((2, 2), dtype=np.uint8))  # the same map at 5 m
    t5 = Affine(5, 0, UTM_10M.c, 0, -5, UTM_10M.f)
    with pytest.warns(UserWarning, match="reprojecting"):
        row = evaluate(make_pred(tmp_path / "pred", fine, transform=t5), scene).metrics.areas[0]
    assert row.pixels["tp"] == 4 * int(truth.sum()) and row.pixels["fp"] == row.pixels["fn"] == 0
    assert row.km2["tp"] == pytest.approx(truth.sum() * 100 / 1e6)


def test_no_overlap_is_an_error(tmp_path):
    scene = make_scene(tmp_path / "scene", np.zeros((5, 5)))
    far = Affine(10, 0, 700000, 0, -10, 5000000)
    pred = make_pred(tmp_path / "pred", np.zeros((5, 5)), transform=far)
    with pytest.raises(UserError, match="do not overlap"):
        evaluate(pred, scene)


def test_unknown_area_lists_known(hand):
    pred, scene = hand
    with pytest.raises(UserError, match=r"--area nope: .*areas are: test"):
        evaluate(pred, scene, areas=["nope"])


def test_bad_inputs(hand, tmp_path):
    pred, scene = hand
    with pytest.raises(UserError, match="--object-overlap"):
        evaluate(pred, scene, object_overlap=0)
    with pytest.raises(UserError, match="no such prediction folder"):
        evaluate(tmp_path / "missing", scene)
    with pytest.raises(UserError, match="--truth"):
        evaluate(pred, tmp_path / "missing")
    with pytest.raises(UserError, match="not a prediction folder"):
        evaluate(scene, scene)  # a scene folder has a mask.tif too, but no prediction.json
    bad = make_pred(tmp_path / "bad", np.array(PRED) * 7)
    with pytest.raises(UserError, match="value 7"):
        evaluate(bad, scene)
    assert not (bad / "metrics.json").exists() and not list(bad.glob("error_map*"))


# --- object level ------------------------------------------------------------------------------------
def direct_objects(truth, pred, overlap):
    """Whole-array reference for the object counts (one area covering everything)."""
    four = ndimage.generate_binary_structure(2, 1)
    tl, tn = ndimage.label(truth == 1, structure=four)
    pl, pn = ndimage.label(pred == 1, structure=four)
    found = total = alarms = objects = 0
    for i in range(1, tn + 1):
        valid = (tl == i) & (pred != 255)
        if valid.any():
            total += 1
            found += (valid & (pred == 1)).sum() >= overlap * valid.sum()
    for i in range(1, pn + 1):
        valid = (pl == i) & (truth != 255)
        if valid.any():
            objects += 1
            alarms += not (valid & (truth == 1)).any()
    return {"landslides_total": total, "landslides_found": int(found), "predicted_objects": objects,
            "false_alarms": alarms}


def test_objects_hand_made(tmp_path):
    truth = np.zeros((12, 12), dtype=np.uint8)
    pred = np.zeros_like(truth)
    truth[1:3, 1:6] = 1   # 10 px, 6 predicted -> found
    pred[1:3, 1:4] = 1
    truth[5:7, 1:6] = 1   # 10 px, 3 predicted -> missed at 0.5
    pred[5, 1:4] = 1
    truth[9:11, 9:11] = 1  # not predicted at all
    pred[9, 1] = 1        # false alarm 1
    pred[1:3, 9:11] = 1   # false alarm 2 (4 px)
    pred[3, 6] = 1        # only diagonal to truth and to the predicted blob: its own object, a false alarm
    scene = make_scene(tmp_path / "scene", truth)
    row = evaluate(make_pred(tmp_path / "pred", pred), scene).metrics.areas[0]
    assert row.objects == {"landslides_total": 3, "landslides_found": 1, "predicted_objects": 5,
                           "false_alarms": 3}
    assert row.objects == direct_objects(truth, pred, 0.5)


@pytest.mark.parametrize("connectivity", [4, 8])
def test_component_labeler_merges_seams(connectivity):
    """Block-wise labels merged across seams == labelling the whole array at once."""
    rng = np.random.default_rng(7)
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    for _ in range(30):
        h, w = rng.integers(17, 60, 2)
        objects = rng.random((h, w)) < rng.uniform(0.2, 0.6)
        valid, hit = rng.random((h, w)) < 0.9, rng.random((h, w)) < 0.5
        labeler = ComponentLabeler(int(w), connectivity, weights=("valid", "hit"))
        for b in block_windows(int(w), int(h), 16):
            s = (slice(b.row_off, b.row_off + b.height), slice(b.col_off, b.col_off + b.width))
            labeler.add(b, objects[s], valid=valid[s], hit=(valid & hit)[s])
        comps = labeler.resolve()
        lab, n = ndimage.label(objects, structure=structure)
        expected = zip(np.bincount(lab[valid], minlength=n + 1)[1:],
                       np.bincount(lab[valid & hit], minlength=n + 1)[1:], strict=True)
        assert sorted(zip(comps.sums["valid"], comps.sums["hit"], strict=True)) == sorted(expected)


def test_objects_streamed_across_blocks_equal_whole_array(tmp_path):
    truth = blobs((90, 77), 40, seed=5, radius=(1, 9))
    pred = blobs((90, 77), 40, seed=6, radius=(1, 9))
    pred[::17, :] = 0  # cut predicted blobs at various places
    truth[40:44, 10:60] = 255
    pred[60:63, :30] = 255
    truth[:, 31:33] = np.where(truth[:, 31:33] == 255, 255, 1)  # a long object crossing every row seam
    scene = make_scene(tmp_path / "scene", truth)
    p = make_pred(tmp_path / "pred", pred)
    small = evaluate(p, scene, block=16).metrics.areas[0]
    large = evaluate(p, scene).metrics.areas[0]
    assert small.objects == large.objects == direct_objects(truth, pred, 0.5)
    assert small.pixels == large.pixels


# --- outputs -----------------------------------------------------------------------------------------
def test_error_map_and_tables(hand):
    pred, scene = hand
    result = evaluate(pred, scene)
    with rasterio.open(result.files["error_map_test"]) as ds:
        assert ds.read(1).tolist() == CLASSES
        assert ds.crs.to_string() == UTM and ds.transform == UTM_10M and ds.nodata == 255
        cmap = ds.colormap(1)
        assert (cmap[TP][:3], cmap[FP][:3], cmap[FN][:3]) == ((255, 215, 0), (235, 0, 235), (0, 200, 255))
    png = Path(result.files["error_png_test"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(result.files["metrics_csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["area"] for r in rows] == ["test", "all"]
    assert float(rows[1]["f1"]) == pytest.approx(2 / 3)
    assert rows[1]["tp"] == "4" and rows[1]["threshold"] == "0.42"
    m = json.loads(Path(result.files["metrics_json"]).read_text())
    assert m["all"]["objects"]["false_alarms"] == 1 and m["areas"][0]["error_map_png"] == str(png)
    assert "test" in result.table and "all" in result.table and "0.667" in result.table
    assert not list(pred.glob(".*tmp*"))


def test_threshold_as_predict_records_it(hand):
    pred, scene = hand
    info = json.loads((pred / "prediction.json").read_text())
    (pred / "prediction.json").write_text(json.dumps({**info, "threshold": {"value": 0.37, "which": "best"}}))
    result = evaluate(pred, scene)
    assert (result.metrics.threshold, result.metrics.threshold_source) == (0.37, "best")
    assert "threshold 0.37 (best)" in result.table


def test_truth_defaults_to_the_predicted_scene(hand):
    pred, _ = hand
    assert evaluate(pred).metrics.all.pixels["tp"] == 4


def make_chips(root: Path, masks: list[np.ndarray], bands=("red", "green", "blue")) -> Path:
    """A chip set of 128 px patches named like Landslide4Sense's (image_1.h5, ...) with ``masks``."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.normal(0, 1, (len(masks), len(bands), 128, 128)).astype(np.float32)
    windows = [{"id": i, "size": 128, "source": f"image_{i + 1}.h5"} for i in range(len(masks))]
    write_chipset(root, images, np.stack(masks).astype(np.uint8), windows,
                  {"bands": list(bands), "stats": {b: {"mean": 0.0, "std": 1.0} for b in bands},
                   "sampler": {"method": "test"}})
    return root


def make_patch_pred(root: Path, chips: Path, preds: list[np.ndarray]) -> Path:
    """A patch prediction folder of ``chips``: one mask_N.h5 per patch and prediction.json."""
    from slidemap.sources.l4s import write_mask

    root.mkdir(parents=True)
    names = [f"mask_{i + 1}.h5" for i in range(len(preds))]
    for name, p in zip(names, preds, strict=True):
        write_mask(root / name, p)
    PatchPrediction(chips=str(chips.resolve()), chips_sha256=sha256(chips / "chips.json"), model="bundle.pt",
                    threshold=0.5, bands=["red", "green", "blue"], count=len(preds), masks=names,
                    sources=[f"image_{i + 1}.h5" for i in range(len(preds))]).save(root / "prediction.json")
    return root


def test_chip_set_truth_scores_patches(hand, tmp_path):
    """A chip set as --truth: evaluate scores the patch prediction through slidemap.stages.patches."""
    t1 = np.zeros((128, 128), np.uint8)
    t1[:10, :10] = 1  # 100 landslide pixels
    t2 = np.zeros((128, 128), np.uint8)  # a negative patch
    chips = make_chips(tmp_path / "chips", [t1, t2])
    p1 = np.zeros((128, 128), np.uint8)
    p1[5:15, :10] = 1  # 50 hit, 50 beside
    p2 = np.zeros((128, 128), np.uint8)
    p2[0, :30] = 1  # 30 false alarms in the negative patch
    pred = make_patch_pred(tmp_path / "patches", chips, [p1, p2])
    result = evaluate(pred, chips)
    assert isinstance(result.metrics, PatchMetrics) and result.path == pred
    assert result.metrics.counts == {"tp": 50, "fp": 80, "fn": 50, "tn": 2 * 128 * 128 - 180}
    assert result.metrics.scores.f1 == pytest.approx(100 / 230)
    assert result.metrics.scores.iou == pytest.approx(50 / 180)
    assert set(result.files) == {"metrics_json", "metrics_csv"} and "F1 %" in result.table
    assert PatchMetrics.load(pred / "metrics.json").counts == result.metrics.counts
    # without --truth: the chip set named in prediction.json
    assert evaluate(pred).metrics.counts == result.metrics.counts
    # a scene prediction is not scored against a chip set, and a chip set has no named areas
    with pytest.raises(UserError, match="scene prediction"):
        evaluate(hand[0], chips)
    with pytest.raises(UserError, match="--area"):
        evaluate(pred, chips, areas=["test"])


def test_cli_prints_warnings_as_one_line(tmp_path, capsys):
    truth = blobs((12, 12), 5, seed=4)
    scene = make_scene(tmp_path / "scene", truth)
    t5 = Affine(5, 0, UTM_10M.c, 0, -5, UTM_10M.f)
    pred = make_pred(tmp_path / "pred", np.kron(truth, np.ones((2, 2), dtype=np.uint8)), transform=t5)
    assert main(["evaluate", str(pred), "--truth", str(scene)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: --truth") and "reprojecting it (nearest)" in err


def test_cli(hand, capsys):
    pred, scene = hand
    assert main(["evaluate", str(pred), "--truth", str(scene), "--object-overlap", "0.6"]) == 0
    out = capsys.readouterr().out
    assert "found/total" in out and "metrics_json" in out and "error_png_test" in out
    assert main(["evaluate", str(pred), "--truth", str(scene), "--area", "x"]) == 2
    assert "error: --area x" in capsys.readouterr().err


def test_cli_errors_are_one_line(hand, tmp_path, capsys):
    """The real CLI: a folder that is no prediction, or a prediction.json / scene.json that does not
    validate, is one ``error:`` line naming the option and the file, exit status 2, nothing written."""
    pred, scene = hand
    line = cli_error(capsys, ["evaluate", str(scene), "--truth", str(scene)])
    assert f"PRED {scene}: not a prediction folder" in line
    line = cli_error(capsys, ["evaluate", str(tmp_path / "nowhere")])
    assert "PRED" in line and "nowhere" in line

    def corrupt(name: str, text: str) -> Path:
        folder = make_pred(tmp_path / name, PRED, scene=scene)
        (folder / "prediction.json").write_text(text)
        return folder

    info = json.loads((pred / "prediction.json").read_text())
    cases = {
        "list": ("[1, 2, 3]", "holds a JSON list, not an object"),
        "text": ("{not json", "not valid JSON"),
        "tile": (json.dumps({**info, "tile": "large"}), "tile: "),
        "threshold": (json.dumps({**info, "threshold": {"value": "high"}}), "threshold.value: "),
        "range": (json.dumps({**info, "threshold": {"value": 1.5, "which": "best"}}), "threshold.value: "),
        "missing": (json.dumps({k: v for k, v in info.items() if k != "crs"}), "crs: missing"),
        "format": (json.dumps({**info, "format": "slidemap.scene"}), "format 'slidemap.scene'"),
        "patches": (json.dumps({"format": "slidemap.patch_prediction", "format_version": 1, "chips": 7}),
                    "chips: "),
    }
    for name, (text, expected) in cases.items():
        folder = corrupt(name, text)
        line = cli_error(capsys, ["evaluate", str(folder), "--truth", str(scene)])
        assert f"PRED {folder / 'prediction.json'}: " in line and expected in line, (name, line)
        assert not (folder / "metrics.json").exists() and not list(folder.glob("error_map*")), name
    # the truth's scene.json is validated too
    meta = json.loads((scene / "scene.json").read_text())
    (scene / "scene.json").write_text(json.dumps({**meta, "width": "wide"}))
    line = cli_error(capsys, ["evaluate", str(pred), "--truth", str(scene)])
    assert f"--truth {scene / 'scene.json'}: width: " in line


def test_stale_corrupt_metrics_json_is_replaced(hand, capsys):
    """metrics.json is an output: a corrupt one left in the folder is rewritten, never read."""
    pred, scene = hand
    (pred / "metrics.json").write_text("[1, 2]")
    assert main(["evaluate", str(pred), "--truth", str(scene)]) == 0
    assert SceneMetrics.load(pred / "metrics.json").all.pixels["tp"] == 4


@pytest.mark.skipif(not (SHARED_DATA / "chattogram-s2" / "s2_4band.tif").is_file(),
                    reason="../shared/data/chattogram-s2 not present")
def test_real_geographic_scene_with_irregular_nodata(tmp_path):
    """Real Sentinel-2 grid (EPSG:4326, 61 % nodata): km² match geodesic areas, nodata stays out."""
    with rasterio.open(SHARED_DATA / "chattogram-s2" / "s2_4band.tif") as ds:
        win = rasterio.windows.Window(150, 700, 200, 120)
        img = ds.read(window=win).astype("float32")
        t, crs = ds.window_transform(win), ds.crs.to_string()
    nodata = (img == 0).all(axis=0)
    assert nodata.any() and (~nodata).any()
    truth = np.where(nodata, 255, img[3] > np.percentile(img[3][~nodata], 85)).astype(np.uint8)
    pred = np.where(nodata, 255, np.roll(truth == 1, 2, axis=1)).astype(np.uint8)
    scene = make_scene(tmp_path / "scene", truth, crs=crs, transform=t, bands=("red", "green", "blue", "nir"))
    row = evaluate(make_pred(tmp_path / "pred", pred, crs=crs, transform=t), scene).metrics.areas[0]
    assert row.pixels["nodata"] == int(nodata.sum() + ((truth != 255) & (pred == 255)).sum())
    geod = Geod(ellps="WGS84")
    rows = np.nonzero(((truth == 1) & (pred == 1)).any(axis=1))[0]
    per_row = ((truth == 1) & (pred == 1)).sum(axis=1)
    expected = sum(per_row[r] * abs(geod.geometry_area_perimeter(pixel_box(t, r, 0, r + 1, 1))[0])
                   for r in rows)
    assert row.km2["tp"] == pytest.approx(expected / 1e6, rel=1e-4)
