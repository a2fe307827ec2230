"""Landslide4Sense import, prediction in the submission format, and pooled evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from l4s_helpers import lively_patch_bundle, make_l4s, tiny_bundle

from slidemap.cli import main
from slidemap.errors import UserError
from slidemap.formats.chips import ChipSet
from slidemap.formats.files import sha256
from slidemap.formats.prediction import PatchMetrics, PatchPrediction
from slidemap.sources.l4s import (
    L4S_BANDS,
    L4S_PUBLISHED_MEAN,
    L4S_PUBLISHED_STD,
    find_patches,
    import_l4s,
    read_mask,
    write_mask,
)
from slidemap.stages import evaluate, predict

SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "landslide4sense-sample"
SAMPLE_NUMBERS = [1, 2, 3, 16, 27, 28]


def one_line_error(excinfo, *names: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    for name in names:
        assert name in msg, msg
    return msg


# --- the real sample ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample_chips(tmp_path_factory):
    if not SAMPLE.is_dir():
        pytest.skip(f"real data absent: {SAMPLE}")
    return import_l4s(SAMPLE, tmp_path_factory.mktemp("l4s") / "chips")


def test_sample_import_equals_h5py(sample_chips):
    assert sample_chips.bands == L4S_BANDS
    assert sample_chips.bands[:12] == [f"B{i}" for i in range(1, 13)] and "B8A" not in sample_chips.bands
    assert [w["source"] for w in sample_chips.windows] == [f"image_{n}.h5" for n in SAMPLE_NUMBERS]
    assert sample_chips.images.dtype == np.float32 and sample_chips.images.shape == (6, 14, 128, 128)
    assert sample_chips.masks.dtype == np.uint8 and sample_chips.masks.shape == (6, 128, 128)
    for i, n in enumerate(SAMPLE_NUMBERS):
        with h5py.File(SAMPLE / "img" / f"image_{n}.h5") as f:
            img = f["img"][()]
        with h5py.File(SAMPLE / "mask" / f"mask_{n}.h5") as f:
            mask = f["mask"][()]
        np.testing.assert_array_equal(sample_chips.images[i], np.moveaxis(img, -1, 0).astype(np.float32))
        np.testing.assert_array_equal(sample_chips.masks[i], mask)
        # channel 13 is slope, 14 the DEM (channels last in the file)
        dem = sample_chips.images[i, L4S_BANDS.index("dem")]
        np.testing.assert_array_equal(dem, img[:, :, 13].astype(np.float32))
    assert sample_chips.masks[SAMPLE_NUMBERS.index(3)].max() == 0  # patch 3 is a negative example
    assert sample_chips.meta.summary["positive_patches"] == 5
    assert sample_chips.meta.sampler["method"] == "l4s-import"
    assert sample_chips.windows[0]["row"] == "" and sample_chips.windows[0]["size"] == 128


def test_sample_stats_are_the_imported_data(sample_chips):
    data = np.asarray(sample_chips.images, dtype=np.float64)
    for b, name in enumerate(L4S_BANDS):
        s = sample_chips.stats[name]
        assert s.mean == pytest.approx(data[:, b].mean(), rel=1e-9)
        assert s.std == pytest.approx(data[:, b].std(), rel=1e-9)
        assert s.min == data[:, b].min() and s.max == data[:, b].max()
    assert sample_chips.meta.stats_source == "imported"


def test_sample_published_stats(tmp_path):
    if not SAMPLE.is_dir():
        pytest.skip(f"real data absent: {SAMPLE}")
    chips = import_l4s(SAMPLE, tmp_path / "chips", published_stats=True)
    assert [chips.stats[b].mean for b in L4S_BANDS] == L4S_PUBLISHED_MEAN
    assert [chips.stats[b].std for b in L4S_BANDS] == L4S_PUBLISHED_STD
    assert chips.stats["dem"].max == float(np.asarray(chips.images[:, 13]).max())
    assert chips.meta.stats_source == "published"


# --- generated L4S-format folders ---------------------------------------------------------------------

def test_import_sorts_by_number_and_streams_stats_exactly(tmp_path):
    src = make_l4s(tmp_path / "d", [10, 2, 1, 33])
    chips = import_l4s(src, tmp_path / "chips")
    assert [w["source"] for w in chips.windows] == ["image_1.h5", "image_2.h5", "image_10.h5", "image_33.h5"]
    # per-patch means were drawn around the patch number: the order is visible in the data
    assert np.round(np.asarray(chips.images).mean(axis=(1, 2, 3))).tolist() == [1, 2, 10, 33]
    data = np.asarray(chips.images, dtype=np.float64)
    assert chips.stats["B5"].std == pytest.approx(data[:, 4].std(), rel=1e-9)


def test_nan_never_counts_in_stats(tmp_path):
    src = make_l4s(tmp_path / "d", [1, 2])
    with h5py.File(src / "img" / "image_2.h5", "r+") as f:
        img = f["img"][()]
        img[:64, :, 0] = np.nan
        f["img"][...] = img
    chips = import_l4s(src, tmp_path / "chips")
    band0 = np.asarray(chips.images[:, 0], dtype=np.float64)
    assert np.isnan(band0).sum() == 64 * 128
    assert chips.stats["B1"].mean == pytest.approx(np.nanmean(band0), rel=1e-9)
    assert chips.stats["B1"].std == pytest.approx(np.nanstd(band0), rel=1e-9)
    assert chips.stats["B1"].min == np.nanmin(band0)


def test_band_without_valid_pixels_has_no_statistics(tmp_path):
    """Intended: a band that is NaN everywhere has mean/std/min/max None (0.1 wrote mean 0, std 1)."""
    src = make_l4s(tmp_path / "d", [1, 2])
    for n in (1, 2):
        with h5py.File(src / "img" / f"image_{n}.h5", "r+") as f:
            img = f["img"][()]
            img[:, :, 0] = np.nan
            f["img"][...] = img
    chips = import_l4s(src, tmp_path / "chips")
    s = chips.stats["B1"]
    assert (s.mean, s.std, s.min, s.max, s.count) == (None, None, None, None, 0)
    assert chips.stats["B2"].count == 2 * 128 * 128 and chips.stats["B2"].std > 0


def test_without_masks_is_a_prediction_only_chip_set(tmp_path):
    src = make_l4s(tmp_path / "test", [5, 6], masks=False)
    chips = import_l4s(src, tmp_path / "chips")
    assert chips.masks is None and not (chips.path / "masks.npy").exists()
    assert chips.meta.summary == {"patches": 2, "masks": False}


def test_list_file_is_lenient(tmp_path):
    root = tmp_path / "root"
    make_l4s(root / "TrainData", [1, 2, 3, 4, 5, 12])
    lst = tmp_path / "train.txt"
    # the benchmark's own lists name files relative to the data root; other lists use bare names
    lst.write_text("TrainData/img/image_12.h5\n\n# comment\n")
    assert [p.number for p in find_patches(root, lst)] == [12]
    lst.write_text("img/image_3.h5\n1\nimage_2.h5\n/img/image_5.h5\nimage_4\nTrainData/img/image_12.h5\n1\n")
    patches = find_patches(root / "TrainData", lst)
    assert [p.number for p in patches] == [1, 2, 3, 4, 5, 12]
    assert patches[0].mask == root / "TrainData" / "mask" / "mask_1.h5"
    chips = import_l4s(root / "TrainData", tmp_path / "chips", list_file=lst)
    assert len(chips) == 6 and chips.meta.sampler["list"] == str(lst.resolve())


def test_list_naming_missing_files(tmp_path):
    src = make_l4s(tmp_path / "d", [1])
    lst = tmp_path / "val.txt"
    lst.write_text("img/image_1.h5\nimg/image_7.h5\n9\n")
    with pytest.raises(UserError) as e:
        import_l4s(src, tmp_path / "chips", list_file=lst)
    assert "line 2 'img/image_7.h5'" in one_line_error(e, "val.txt", "1 more")
    lst.write_text("\n\n")
    with pytest.raises(UserError) as e:
        import_l4s(src, tmp_path / "chips", list_file=lst)
    one_line_error(e, "val.txt", "no patches")


def test_corrupt_file_names_it(tmp_path):
    src = make_l4s(tmp_path / "d", [1, 2])
    (src / "img" / "image_2.h5").write_bytes(b"this is not HDF5 at all" * 100)
    with pytest.raises(UserError) as e:
        import_l4s(src, tmp_path / "chips")
    one_line_error(e, "image_2.h5", "corrupt or truncated")
    assert not (tmp_path / "chips").exists()  # nothing half-written is left behind


def test_truncated_file_names_it(tmp_path):
    src = make_l4s(tmp_path / "d", [1, 2])
    path = src / "mask" / "mask_1.h5"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError) as e:
        import_l4s(src, tmp_path / "chips")
    one_line_error(e, "mask_1.h5", "corrupt or truncated")


def test_truncated_image_data_names_it(tmp_path):
    src = make_l4s(tmp_path / "d", [1])
    path = src / "img" / "image_1.h5"
    path.write_bytes(path.read_bytes()[:-50_000])  # header intact, data cut short
    with pytest.raises(UserError) as e:
        import_l4s(src, tmp_path / "chips")
    one_line_error(e, "image_1.h5")


def test_wrong_shape_and_missing_dataset_name_the_file(tmp_path):
    src = make_l4s(tmp_path / "d", [1, 2])
    with h5py.File(src / "img" / "image_2.h5", "w") as f:
        f.create_dataset("img", data=np.zeros((128, 128, 13)))
    with pytest.raises(UserError) as e:
        import_l4s(src, tmp_path / "chips")
    one_line_error(e, "image_2.h5", "(128, 128, 13)", "(128, 128, 14)")
    with h5py.File(src / "img" / "image_2.h5", "w") as f:
        f.create_dataset("data", data=np.zeros((128, 128, 14)))
    with pytest.raises(UserError) as e:
        import_l4s(src, tmp_path / "chips")
    one_line_error(e, "image_2.h5", "no dataset 'img'", "data")
    with h5py.File(src / "mask" / "mask_1.h5", "w") as f:
        f.create_dataset("mask", data=np.full((128, 128), 7, np.uint8))
    with pytest.raises(UserError) as e:
        read_mask(src / "mask" / "mask_1.h5")
    one_line_error(e, "mask_1.h5", "other than 0 and 1")


def test_mixed_masks_name_the_image(tmp_path):
    src = make_l4s(tmp_path / "d", [1, 2, 3])
    (src / "mask" / "mask_2.h5").unlink()
    with pytest.raises(UserError) as e:
        import_l4s(src, tmp_path / "chips")
    one_line_error(e, "image_2.h5", "mask_2.h5", "missing")


def test_empty_or_missing_folder(tmp_path):
    (tmp_path / "empty" / "img").mkdir(parents=True)
    with pytest.raises(UserError) as e:
        import_l4s(tmp_path / "empty", tmp_path / "chips")
    one_line_error(e, "empty", "no image_N.h5")
    with pytest.raises(UserError) as e:
        import_l4s(tmp_path / "nowhere", tmp_path / "chips")
    one_line_error(e, "nowhere")
    (tmp_path / "flat").mkdir()
    with pytest.raises(UserError) as e:
        import_l4s(tmp_path / "flat", tmp_path / "chips")
    one_line_error(e, "flat", "no img/")


def test_failed_import_keeps_previous_chip_set(tmp_path):
    src = make_l4s(tmp_path / "d", [1, 2])
    import_l4s(src, tmp_path / "chips")
    (src / "img" / "image_2.h5").write_bytes(b"broken")
    with pytest.raises(UserError):
        import_l4s(src, tmp_path / "chips")
    assert len(ChipSet(tmp_path / "chips")) == 2


def test_cli_import_error_is_one_line(tmp_path, capsys):
    src = make_l4s(tmp_path / "d", [1])
    (src / "img" / "image_1.h5").write_bytes(b"x")
    assert main(["l4s", "import", str(src), "--out", str(tmp_path / "chips")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: image ") and "image_1.h5" in err and "\n" not in err


# --- evaluate: pooled counts, checked by hand -------------------------------------------------------------

def write_prediction(folder: Path, chips: ChipSet, preds: list[np.ndarray]) -> Path:
    folder.mkdir()
    names = [w["source"].replace("image", "mask") for w in chips.windows]
    for name, p in zip(names, preds, strict=True):
        write_mask(folder / name, p)
    PatchPrediction(chips=str(chips.path.resolve()), chips_sha256=sha256(chips.path / "chips.json"),
                    model="bundle.pt", threshold=0.5, bands=chips.bands, count=len(names), masks=names,
                    sources=[w["source"] for w in chips.windows]).save(folder / "prediction.json")
    return folder


def evaluate_patches(pred: Path, chips: Path) -> evaluate.EvaluateResult:
    """``slidemap evaluate PRED --truth CHIPS`` through its API."""
    return evaluate.run(evaluate.EvaluateOptions(pred=pred, truth=chips))


def test_evaluate_pools_pixel_counts(tmp_path):
    src = make_l4s(tmp_path / "d", [1, 2])
    t1 = np.zeros((128, 128), np.uint8)
    t1[:10, :10] = 1  # 100 landslide pixels
    t2 = np.zeros((128, 128), np.uint8)  # a negative patch
    for n, t in ((1, t1), (2, t2)):
        with h5py.File(src / "mask" / f"mask_{n}.h5", "w") as f:
            f.create_dataset("mask", data=t)
    chips = import_l4s(src, tmp_path / "chips")
    p1 = np.zeros((128, 128), np.uint8)
    p1[5:15, :10] = 1  # 50 hit, 50 beside
    p2 = np.zeros((128, 128), np.uint8)
    p2[0, :30] = 1  # 30 false alarms in the negative patch
    pred = write_prediction(tmp_path / "pred", chips, [p1, p2])
    result = evaluate_patches(pred, chips.path)
    # pooled: tp 50, fp 50 + 30, fn 50, tn 2*128*128 - 180
    metrics = json.loads((pred / "metrics.json").read_text())
    assert metrics["counts"] == {"tp": 50, "fp": 80, "fn": 50, "tn": 2 * 128 * 128 - 180}
    assert isinstance(result.metrics, PatchMetrics)
    assert result.metrics.scores.precision == pytest.approx(50 / 130, abs=1e-6)
    assert result.metrics.scores.recall == pytest.approx(0.5, abs=1e-6)
    assert result.metrics.scores.f1 == pytest.approx(100 / 230, abs=1e-6)
    assert result.metrics.scores.iou == pytest.approx(50 / 180, abs=1e-6)
    assert "F1 %" in result.table and "43.48" in result.table
    rows = (pred / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("id,source,mask,tp,fp,fn,tn")
    assert rows[1].startswith("0,image_1.h5,mask_1.h5,50,50,50,")
    assert rows[2].startswith("1,image_2.h5,mask_2.h5,0,30,0,")


def test_evaluate_errors(tmp_path):
    src = make_l4s(tmp_path / "d", [1, 2])
    chips = import_l4s(src, tmp_path / "chips")
    pred = write_prediction(tmp_path / "pred", chips, [np.zeros((128, 128), np.uint8)] * 2)
    (pred / "mask_2.h5").unlink()
    with pytest.raises(UserError) as e:
        evaluate_patches(pred, chips.path)
    one_line_error(e, "mask_2.h5", "missing")
    nomask = import_l4s(make_l4s(tmp_path / "t", [1, 2], masks=False), tmp_path / "tchips")
    with pytest.raises(UserError) as e:
        evaluate_patches(pred, nomask.path)
    one_line_error(e, "tchips", "no masks")
    with pytest.raises(UserError) as e:
        evaluate_patches(tmp_path / "d", chips.path)
    one_line_error(e, "PRED")


def test_evaluate_refuses_another_chip_set_with_the_same_names(tmp_path):
    """Intended: the prediction records its chip set's chips.json hash; another chip set whose patches
    have the same file names (here another draw of image_1.h5, image_2.h5) is refused, not scored."""
    chips = import_l4s(make_l4s(tmp_path / "d", [1, 2]), tmp_path / "chips")
    other = import_l4s(make_l4s(tmp_path / "d2", [1, 2], seed=1), tmp_path / "other")
    pred = write_prediction(tmp_path / "pred", chips, [np.zeros((128, 128), np.uint8)] * 2)
    with pytest.raises(UserError) as e:
        evaluate_patches(pred, other.path)
    one_line_error(e, "other", "not the chip set")
    assert not (pred / "metrics.json").exists()
    assert evaluate_patches(pred, chips.path).metrics.patches == 2


def test_cli_evaluate_corrupt_patch_prediction_is_one_line(tmp_path, capsys):
    chips = import_l4s(make_l4s(tmp_path / "d", [1]), tmp_path / "chips")
    pred = write_prediction(tmp_path / "pred", chips, [np.zeros((128, 128), np.uint8)])
    info = json.loads((pred / "prediction.json").read_text())
    cases = (({**info, "masks": "mask_1.h5"}, "masks: "), ({**info, "threshold": 2}, "threshold: "),
             ({**info, "count": -1}, "count: "))
    for bad, expected in cases:
        (pred / "prediction.json").write_text(json.dumps(bad))
        assert main(["evaluate", str(pred), "--truth", str(chips.path)]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: PRED {pred / 'prediction.json'}: {expected}"), err
    # a patch prediction of slidemap 0.1 (no format header) is named as such
    (pred / "prediction.json").write_text(json.dumps({"kind": "patches", "masks": ["mask_1.h5"]}))
    assert main(["evaluate", str(pred)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "older slidemap" in err[0]


# --- predict ------------------------------------------------------------------------------------------

def predict_patches(bundle: Path, chips: Path, out: Path, **options) -> predict.PredictResult:
    """``slidemap predict MODEL --chips CHIPS --out OUT`` through its API."""
    return predict.run(predict.PredictOptions(model=bundle, out=out, chips=chips, **options))


def test_predict_writes_submission_masks(tmp_path):
    import torch

    src = make_l4s(tmp_path / "d", [3, 7, 11])
    with h5py.File(src / "img" / "image_7.h5", "r+") as f:  # nodata must not break prediction
        img = f["img"][()]
        img[:8, :8, :] = np.nan
        f["img"][...] = img
    chips = import_l4s(src, tmp_path / "chips")
    bands = ["B4", "B3", "B2", "dem"]  # a subset, in another order than the chip set's
    stats = {b: {"mean": 5.0, "std": 2.0} for b in bands}
    x = np.asarray(chips.images[1:2])[:, [3, 2, 1, 13]]
    x = np.nan_to_num((x - 5.0) / 2.0, nan=0.0).astype(np.float32)
    # a network whose mask of patch 7 is about half landslide (a fresh one says 1 everywhere, which any
    # standardisation would reproduce); fp32, the precision of the reference computed below
    bundle = tiny_bundle(tmp_path / "bundle.pt", bands, stats, centre_on=x)
    result = predict_patches(bundle, chips.path, tmp_path / "pred", threshold="0.5", batch_size=2,
                             device="cpu", evaluate=True, previews=2, precision="32")
    assert isinstance(result.meta, PatchPrediction) and result.previews == 2
    pred = tmp_path / "pred"
    assert sorted(p.name for p in pred.glob("mask_*.h5")) == ["mask_11.h5", "mask_3.h5", "mask_7.h5"]
    for name in ("mask_3.h5", "mask_7.h5", "mask_11.h5"):
        with h5py.File(pred / name) as f:
            assert list(f) == ["mask"] and f["mask"].shape == (128, 128) and f["mask"].dtype == np.uint8
            assert set(np.unique(f["mask"][()])) <= {0, 1}
    assert len(list((pred / "previews").glob("*.png"))) == 2
    info = json.loads((pred / "prediction.json").read_text())
    assert info["kind"] == "patches" and info["threshold"] == 0.5
    assert info["chips"] == str(chips.path.resolve())
    assert info["format"] == "slidemap.patch_prediction"
    assert info["chips_sha256"] == sha256(chips.path / "chips.json")
    assert isinstance(result.evaluation.metrics, PatchMetrics) and (pred / "metrics.json").exists()
    # the masks are the bundle's network on the chips standardised with the BUNDLE's statistics
    from slidemap.nn.bundle import load_bundle

    net = load_bundle(bundle).build_model()
    with torch.no_grad():
        expected = (torch.sigmoid(net(torch.from_numpy(x)))[0, 0].numpy() >= 0.5).astype(np.uint8)
    assert 0.2 < expected.mean() < 0.8
    np.testing.assert_array_equal(read_mask(pred / "mask_7.h5"), expected)


def test_predict_refuses_missing_bands(tmp_path):
    chips = import_l4s(make_l4s(tmp_path / "d", [1]), tmp_path / "chips")
    bands = ["B4", "nir"]
    bundle = tiny_bundle(tmp_path / "bundle.pt", bands, {b: {"mean": 0, "std": 1} for b in bands})
    with pytest.raises(UserError) as e:
        predict_patches(bundle, chips.path, tmp_path / "pred", device="cpu")
    one_line_error(e, "nir", "chips")
    assert not (tmp_path / "pred").exists()


# --- as participants use it ---------------------------------------------------------------------------

def test_submission_folder_holds_only_the_masks_and_the_zip_has_no_folder(tmp_path, capsys):
    import zipfile

    chips = import_l4s(make_l4s(tmp_path / "ValidData", [4, 9, 12]), tmp_path / "chips")
    bundle = lively_patch_bundle(tmp_path, chips)
    out = tmp_path / "pred"
    assert main(["predict", str(bundle), "--chips", str(chips.path), "--out", str(out), "--submission",
                 "--device", "cpu", "--precision", "32"]) == 0
    printed = capsys.readouterr().out
    assert "submission.zip" in printed and "threshold 0.5000 (0.5)" in printed
    names = ["mask_4.h5", "mask_9.h5", "mask_12.h5"]
    assert sorted(p.name for p in (out / "submission").iterdir()) == sorted(names)
    with zipfile.ZipFile(out / "submission.zip") as z:
        assert z.namelist() == names  # at the root, in patch order, nothing else
        for n in names:
            assert z.read(n) == (out / n).read_bytes() == (out / "submission" / n).read_bytes()
    info = json.loads((out / "prediction.json").read_text())
    assert info["submission"] == ["submission", "submission.zip"]
    again = tmp_path / "again"
    predict_patches(bundle, chips.path, again, submission=True, device="cpu", precision="32")
    assert (again / "submission.zip").read_bytes() == (out / "submission.zip").read_bytes()
    # --submission is for patch sets only
    with pytest.raises(Exception, match="--submission goes with --chips"):
        predict.PredictOptions(model=bundle, out=tmp_path / "x", scene=tmp_path, submission=True)


def test_patch_sets_default_to_0_5_unless_the_validation_threshold_is_asked_for(tmp_path):
    """A 2-epoch model's 'best' threshold of 0.01 marked every pixel as landslide: patch sets default to
    0.5, the benchmark's arg-max."""
    from slidemap.formats.bundle import PostProcess

    chips = import_l4s(make_l4s(tmp_path / "d", [1, 2]), tmp_path / "chips")
    bundle = lively_patch_bundle(tmp_path, chips, thresholds={"0.5": 0.5, "best": 0.01},
                                  postprocess=PostProcess(threshold=0.2, min_pixels=4))
    default = predict_patches(bundle, chips.path, tmp_path / "p0", device="cpu", precision="32").meta
    assert (default.threshold, default.threshold_choice) == (0.5, "0.5")
    assert default.postprocess["source"] == "none"
    best = predict_patches(bundle, chips.path, tmp_path / "p1", threshold="best", device="cpu",
                           precision="32").meta
    assert (best.threshold, best.threshold_choice) == (0.01, "best")
    learned = predict_patches(bundle, chips.path, tmp_path / "p2", postprocess="bundle", device="cpu",
                              precision="32").meta
    assert (learned.threshold, learned.threshold_choice, learned.postprocess["min_pixels"]) == \
        (0.2, "postprocess", 4)
    assert best.landslide_pixels > default.landslide_pixels
    with pytest.raises(Exception, match="--min-area goes with scenes"):
        predict.PredictOptions(model=bundle, out=tmp_path / "x", chips=chips.path, min_area=100.0)


@pytest.mark.parametrize("value", [2, 255, 0.5])
def test_prediction_values_outside_0_1_are_an_error(tmp_path, value):
    chips = import_l4s(make_l4s(tmp_path / "d", [1]), tmp_path / "chips")
    pred = write_prediction(tmp_path / "pred", chips, [np.zeros((128, 128), np.uint8)])
    bad = np.zeros((128, 128), np.float32 if value == 0.5 else np.uint8)
    bad[5, 5] = value
    with h5py.File(pred / "mask_1.h5", "w") as f:
        f.create_dataset("mask", data=bad)
    with pytest.raises(UserError) as e:
        evaluate_patches(pred, chips.path)
    one_line_error(e, "mask_1.h5")
    assert not (pred / "metrics.json").exists()


def test_validation_prediction_scored_against_the_training_split_is_refused(tmp_path):
    """TrainData and ValidData share image numbers; a prediction of the validation split scored against
    the training split's chip set would print a plausible wrong F1: it is refused by chips.json's hash.
    Importing the same folder again gives the same chip set (the same hash), which is accepted."""
    train = import_l4s(make_l4s(tmp_path / "TrainData", [1, 2, 3], seed=0), tmp_path / "train")
    valid = import_l4s(make_l4s(tmp_path / "ValidData", [1, 2, 3], seed=5), tmp_path / "valid")
    bundle = lively_patch_bundle(tmp_path, valid)
    pred = tmp_path / "pred"
    predict_patches(bundle, valid.path, pred, device="cpu", precision="32")
    assert main(["evaluate", str(pred), "--truth", str(train.path)]) == 2
    with pytest.raises(UserError) as e:
        evaluate_patches(pred, train.path)
    one_line_error(e, str(train.path), "not the chip set", "valid")
    again = import_l4s(tmp_path / "ValidData", tmp_path / "valid_again")
    assert evaluate_patches(pred, again.path).metrics.patches == 3
    assert evaluate_patches(pred, valid.path).metrics.patches == 3


def test_l4s_help_points_to_predict_and_evaluate(capsys):
    assert main(["l4s", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "predict MODEL --chips CHIPS" in text and "evaluate PRED --truth CHIPS" in text
