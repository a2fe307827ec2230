"""Post-processing learned on validation: the clean-up, streamed == whole array, its choice, predict's use."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from conftest import cli_error
from scipy import ndimage
from test_predict import lively_scene, predict, scene_bundle
from test_train import FAST, make_chipset, train

from slidemap.formats.bundle import PostProcess
from slidemap.nn.bundle import load_bundle, save_bundle
from slidemap.raster.postprocess import (
    F1_TIE,
    Cleanup,
    Decision,
    StripCleaner,
    choose_postprocess,
    clean,
    decide,
    min_size_cap,
    object_scores,
)


def blobs(shape, seed: int, quantile: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random field and its mask above a quantile (ragged blobs with holes and specks)."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), 2) + 0.02 * rng.random(shape)
    return field, field > np.quantile(field, quantile)


# --- the clean-up -------------------------------------------------------------------------------------

def test_opening_closing_and_hole_filling_do_what_they_say():
    m = np.zeros((30, 30), bool)
    m[5:15, 5:15] = True  # a square ...
    m[9, 9] = False  # ... with a one-pixel hole
    m[20, 20] = True  # a speck
    m[5:15, 16:20] = True  # a second block one pixel-column apart from the square
    opened = clean(m, None, Cleanup(opening=1))
    assert not opened[20, 20] and opened[12, 12]  # the speck is gone, the square stays
    closed = clean(m, None, Cleanup(closing=1))
    assert closed[10, 15] and closed[9, 9]  # the gap and the hole are closed
    filled = clean(m, None, Cleanup(fill_holes=4))
    assert filled[9, 9] and not filled[10, 15] and filled.sum() == m.sum() + 1
    big = m.copy()
    big[7:12, 7:12] = False  # a 25 px hole: larger than 16
    assert not clean(big, None, Cleanup(fill_holes=16))[9, 9]
    valid = np.ones_like(m)
    valid[9, 9] = False  # a hole that is nodata is no hole: it stays nodata (False)
    assert not clean(m, valid, Cleanup(fill_holes=4))[9, 9]
    edge = np.ones((10, 10), bool)
    edge[0, 4] = False  # background touching the raster's edge is open ground, not a hole
    assert not clean(edge, None, Cleanup(fill_holes=4))[0, 4]
    # an object cut by the raster's edge is not eroded from that side
    border = np.zeros((12, 12), bool)
    border[:, :3] = True
    assert (clean(border, None, Cleanup(opening=1)) == border).all()


def test_patches_are_cleaned_independently():
    m = np.zeros((2, 8, 8), bool)
    m[0, -1, 3:6] = True  # touches patch 1's top edge only if the patches were one raster
    m[1, 0, 3:6] = True
    both = clean(m, None, Cleanup(closing=1, fill_holes=4))
    assert (both[0] == clean(m[0], None, Cleanup(closing=1, fill_holes=4))).all()
    assert (both[1] == clean(m[1], None, Cleanup(closing=1, fill_holes=4))).all()


@pytest.mark.parametrize("seed", range(12))
def test_streamed_clean_up_equals_the_whole_array(seed):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(30, 220)), int(rng.integers(8, 90))
    prob, binary = blobs((h, w), seed, rng.uniform(0.3, 0.8))
    valid = rng.random((h, w)) > 0.03
    valid[int(rng.integers(0, h)):, :2] = False
    cleanup = Cleanup(int(rng.integers(0, 3)), int(rng.integers(0, 3)), int(rng.choice([0, 4, 16, 64])))
    whole = clean(binary, valid, cleanup)
    cleaner, got, r = StripCleaner(h, cleanup), [], 0
    while r < h:
        n = min(int(rng.integers(1, 50)), h - r)
        got += cleaner.push(r, binary[r:r + n], valid[r:r + n], prob[r:r + n])
        r += n
    got += cleaner.finish()
    rows = [g[0] for g in got]
    assert rows == list(np.cumsum([0] + [len(g[1]) for g in got])[:-1])  # consecutive strips
    assert (np.concatenate([g[1] for g in got]) == whole).all()
    assert (np.concatenate([g[2] for g in got]) == valid).all()
    assert (np.concatenate([g[3] for g in got]) == prob).all()  # carried arrays stay aligned


# --- the choice on validation chips ----------------------------------------------------------------

def test_object_scores_count_false_alarms_and_drop_small_objects():
    truth = np.zeros((1, 20, 20), np.uint8)
    truth[0, 2:8, 2:8] = 1
    truth[0, 15:, 15:] = 255  # unknown truth
    pred = np.zeros_like(truth, dtype=bool)
    pred[0, 3:8, 3:8] = True  # hits the landslide
    pred[0, 12, 2] = True  # a one-pixel false alarm
    pred[0, 17, 17] = True  # on unknown truth: counted nowhere
    (tp, fp, fn, fa, objects), (tp2, fp2, _, fa2, objects2) = object_scores(pred, truth, (0, 2))
    assert (tp, fp, fn, fa, objects) == (25, 1, 11, 1, 2)
    assert (tp2, fp2, fa2, objects2) == (25, 0, 0, 1)


def test_choice_beats_the_threshold_alone_with_fewer_false_alarms():
    """Validation chips whose probabilities hold the landslides plus scattered specks and ragged holes."""
    rng = np.random.default_rng(0)
    truth = np.zeros((12, 64, 64), np.uint8)
    yy, xx = np.mgrid[0:64, 0:64]
    for k in range(12):
        for _ in range(3):
            cy, cx, r = rng.integers(8, 56, 2).tolist() + [int(rng.integers(4, 9))]
            truth[k][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1
    prob = np.where(truth == 1, 0.8, 0.15) + rng.normal(0, 0.12, truth.shape)
    specks = rng.random(truth.shape) < 0.004
    prob[specks] = 0.95  # isolated false alarms
    truth[:, :4, :4] = 255
    result = choose_postprocess(prob.astype(np.float32), truth, reference_threshold=0.5)
    best, ref = result.best, result.reference
    assert best.f1 >= ref.f1 and best.false_alarms < ref.false_alarms / 5
    assert best.min_pixels > 1 or best.cleanup.opening > 0
    assert 0.1 <= best.threshold <= 0.9
    # the choice is the F1 optimum up to the tie margin, and among those the fewest false alarms
    top = max(c.f1 for c in result.tried)
    assert best.f1 >= top - F1_TIE
    assert best.false_alarms == min(c.false_alarms for c in result.tried if c.f1 >= top - F1_TIE)
    assert choose_postprocess(prob, np.zeros_like(truth)) is None  # nothing to learn from


def test_minimum_size_is_capped_by_the_smallest_training_landslides():
    masks = np.zeros((3, 32, 32), np.uint8)
    masks[0, 5:9, 5:10] = 1  # 20 px
    masks[0, 20:26, 20:26] = 1  # 36 px
    masks[1, 10:20, 10:20] = 1  # 100 px
    masks[2, 0:2, 0:3] = 1  # 6 px but cut by the chip's edge: its size is unknown
    masks[2, 10:12, 10:12] = 255
    assert min_size_cap(masks) == int(np.percentile([20, 36, 100], 5) // 2) == 10
    assert min_size_cap(np.zeros((2, 8, 8), np.uint8)) is None
    rng = np.random.default_rng(1)
    truth = (rng.random((4, 32, 32)) < 0.2).astype(np.uint8)
    prob = np.where(truth == 1, 0.9, 0.1).astype(np.float32)
    capped = choose_postprocess(prob, truth, max_min_pixels=4)
    assert {c.min_pixels for c in capped.tried} == {0, 2, 4}


def test_decide_applies_the_bundle_to_scenes_and_0_5_to_patches():
    pp = PostProcess(threshold=0.35, opening=1, closing=2, fill_holes=16, min_pixels=9)
    scene = decide(pp, "auto", 0.61, None, None, patches=False, model="m")
    assert (scene.threshold, scene.which, scene.cleanup, scene.min_pixels) == (0.35, "postprocess",
                                                                            Cleanup(1, 2, 16), 9)
    patches = decide(pp, "auto", 0.61, None, None, patches=True, model="m")
    assert (patches.threshold, patches.which, patches.cleanup.active, patches.source) == (0.5, "0.5", False, "none")
    assert decide(pp, "bundle", 0.61, None, None, patches=True, model="m").threshold == 0.35
    off = decide(pp, "none", 0.61, None, None, patches=False, model="m")
    assert (off.threshold, off.which, off.cleanup.active, off.min_pixels) == (0.61, "best", False, 0)
    given = decide(pp, "auto", 0.61, (0.7, "given"), 500.0, patches=False, model="m")
    assert (given.threshold, given.cleanup, given.min_pixels, given.min_area_m2) == (0.7, Cleanup(1, 2, 16), 0,
                                                                                    500.0)
    assert decide(None, "auto", 0.61, None, None, patches=False, model="m").which == "best"
    with pytest.raises(Exception, match="--postprocess bundle: model m holds no post-processing"):
        decide(None, "bundle", 0.61, None, None, patches=False, model="m")


def test_training_stores_the_choice_in_the_bundle(tmp_path):
    chips = make_chipset(tmp_path / "chips")
    result = train(chips, tmp_path / "run", **FAST)
    pp = load_bundle(result.bundle).meta.postprocess
    assert pp is not None and 0.1 <= pp.threshold <= 0.9
    v = pp.validation
    assert v["f1"] >= v["reference_f1"] - F1_TIE and v["reference_threshold"] == result.summary.best_threshold
    assert result.summary.postprocess == pp.model_dump()
    assert load_bundle(result.bundle).meta.stats["red"].max is not None  # ranges for the shift guard


# --- predict applies it, streamed ------------------------------------------------------------------

@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("postprocess")
    scene, net, _ = lively_scene(root, 160, nodata_rows=(70, 75), crop=128)
    pp = PostProcess(threshold=0.45, opening=1, closing=1, fill_holes=16, min_pixels=6)
    bundle = scene_bundle(root / "bundle.pt", scene, net, thresholds={"0.5": 0.5, "best": 0.6}, postprocess=pp)
    return {"root": root, "scene": scene, "bundle": bundle, "pp": pp}


def read(path):
    with rasterio.open(path) as ds:
        return ds.read(1)


def test_predict_applies_the_bundles_post_processing_streamed(study):
    out = study["root"] / "pred"
    # 96 px tiles with 32 px overlap: strips of 64 rows, fewer than the clean-up's 20-row halo x 2 + 64
    result = predict(study["bundle"], out, scene=study["scene"].path, tile=96, overlap=32, as_float=True)
    prob, mask = read(out / "probability.tif"), read(out / "mask.tif")
    valid = ~np.isnan(prob)
    pp = study["pp"]
    expected = Decision(pp.threshold, "postprocess", Cleanup(pp.opening, pp.closing, pp.fill_holes),
                        pp.min_pixels).apply(np.nan_to_num(prob), valid)
    assert ((mask == 1) == expected).all() and ((mask == 255) == ~valid).all()
    raw = valid & (prob >= pp.threshold)
    assert (expected != raw).sum() > 20  # the clean-up did change the mask
    meta = json.loads((out / "prediction.json").read_text())
    assert meta["threshold"] == {"value": 0.45, "which": "postprocess"}
    assert meta["postprocess"] == {"source": "bundle", "threshold": 0.45, "threshold_from": "postprocess",
                                   "opening": 1, "closing": 1, "fill_holes": 16, "min_pixels": 6,
                                   "min_area_m2": 0.0}
    assert result.meta.landslides == ndimage.label(mask == 1)[1]


def test_postprocess_none_and_explicit_options_override(study):
    out = study["root"] / "pred_none"
    predict(study["bundle"], out, scene=study["scene"].path, tile=96, overlap=32, as_float=True,
            postprocess="none")
    prob, mask = read(out / "probability.tif"), read(out / "mask.tif")
    valid = ~np.isnan(prob)
    assert ((mask == 1) == (valid & (prob >= 0.6))).all()  # the bundle's "best", nothing else
    assert json.loads((out / "prediction.json").read_text())["postprocess"]["source"] == "none"
    out2 = study["root"] / "pred_given"
    predict(study["bundle"], out2, scene=study["scene"].path, tile=96, overlap=32, as_float=True,
            threshold="0.5", min_area=0.0)
    meta = json.loads((out2 / "prediction.json").read_text())
    assert meta["threshold"] == {"value": 0.5, "which": "0.5"}
    assert meta["postprocess"]["min_pixels"] == 0 and meta["postprocess"]["opening"] == 1
    mask2 = read(out2 / "mask.tif")
    assert ((mask2 == 1) == clean(valid & (prob >= 0.5), valid, Cleanup(1, 1, 16))).all()


def test_postprocess_bundle_without_one_is_a_one_line_error(study, capsys):
    bundle = load_bundle(study["bundle"])
    plain = study["root"] / "plain.pt"
    save_bundle(plain, bundle.build_model(), bundle.meta.model_copy(update={"postprocess": None}))
    line = cli_error(capsys, ["predict", str(plain), "--scene", str(study["scene"].path), "--out",
                              str(study["root"] / "x"), "--postprocess", "bundle"])
    assert "holds no post-processing learned on validation" in line
