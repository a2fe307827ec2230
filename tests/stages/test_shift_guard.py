"""The domain-shift guard: input statistics gathered while reading, compared with the training statistics."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import rasterio
from test_predict import lively_scene, predict, scene_bundle

from slidemap.cli import main
from slidemap.formats.scene import Scene
from slidemap.raster.shift import InputStats, shift_warnings
from slidemap.raster.stats import RunningStats
from slidemap.stages.maps import ShiftWarning

TRAIN = {"red": {"mean": 0.12, "std": 0.05, "min": 0.0, "max": 0.6},
         "nir": {"mean": 0.30, "std": 0.08, "min": 0.01, "max": 0.8},
         "dem": {"mean": 400.0, "std": 120.0, "min": 50.0, "max": 900.0}}


def seen(**bands) -> dict:
    return {b: {"count": 100, **v} for b, v in bands.items()}


def test_reflectance_as_0_10000_is_named_with_its_cause():
    out = shift_warnings(TRAIN, seen(red={"mean": 1200.0, "std": 500.0, "min": 0.0, "max": 6000.0},
                                     nir={"mean": 0.31, "std": 0.07, "min": 0.02, "max": 0.7}))
    assert list(out) == ["red"]
    assert "band red" in out["red"] and "about 10000x wider" in out["red"] and "0-10000" in out["red"]
    back = shift_warnings({"red": {"mean": 1200.0, "std": 500.0, "min": 0.0, "max": 6000.0}},
                          seen(red={"mean": 0.12, "std": 0.05, "min": 0.0, "max": 0.6}))
    assert "about 10000x narrower" in back["red"]


def test_a_shifted_mean_and_swapped_bands():
    out = shift_warnings(TRAIN, seen(dem={"mean": 1500.0, "std": 100.0, "min": 1200.0, "max": 1800.0}))
    assert "band dem" in out["dem"] and "9.2 training std above" in out["dem"] and "sensor" in out["dem"]
    swapped = shift_warnings(TRAIN, seen(red={"mean": 0.31, "std": 0.08, "min": 0.01, "max": 0.8},
                                         nir={"mean": 0.12, "std": 0.05, "min": 0.0, "max": 0.6}))
    assert list(swapped) == ["red"] and "look like band nir" in swapped["red"]  # nir: 2.2 std, within


def test_no_alarm_within_the_training_distribution_or_without_statistics():
    assert shift_warnings(TRAIN, seen(red={"mean": 0.2, "std": 0.06, "min": 0.0, "max": 0.9},
                                      dem={"mean": 700.0, "std": 100.0, "min": 10.0, "max": 1500.0})) == {}
    # a near-constant training band (a flat test DEM): a tiny std does not make rounding an alarm
    flat = {"slope": {"mean": 19.83, "std": 0.0003, "min": 19.829, "max": 19.831}}
    assert shift_warnings(flat, seen(slope={"mean": 19.8303, "std": 0.0002, "min": 19.5, "max": 20.1})) == {}
    assert shift_warnings({"red": {"mean": None, "std": None}}, seen(red={"mean": 5.0, "std": 1.0})) == {}
    assert shift_warnings(TRAIN, {"red": {"count": 0, "mean": None, "std": None}}) == {}


def test_rows_read_twice_count_once_and_nan_never():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (2, 100, 7)).astype(np.float32)
    x[1, 10:20] = np.nan
    stats = InputStats(["a", "b"])
    for r0, r1 in ((0, 40), (24, 70), (60, 100), (90, 100)):  # overlapping reads, as tiles are
        stats.add_rows(r0, x[:, r0:r1])
    got = stats.as_dict()
    for i, band in enumerate("ab"):
        v = x[i][np.isfinite(x[i])].astype(np.float64)
        assert got[band]["count"] == v.size
        assert got[band]["mean"] == pytest.approx(v.mean(), rel=1e-5)
        assert got[band]["std"] == pytest.approx(v.std(), rel=1e-5)
        assert (got[band]["min"], got[band]["max"]) == pytest.approx((v.min(), v.max()), rel=1e-5)
    streamed = RunningStats(2)
    streamed.add_finite(x)
    assert streamed.as_dict("ab")["b"]["count"] == 700 - 70


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("shift")
    scene, net, r = lively_scene(root, 96)
    bundle = scene_bundle(root / "bundle.pt", scene, net)
    # the same scene with its image bands stored 10000x larger (reflectance 0-1 vs 0-10000, say)
    scaled = root / "scaled"
    shutil.copytree(scene.path, scaled)
    with rasterio.open(scaled / "stack.tif", "r+") as ds:
        for i, band in enumerate(ds.descriptions, 1):
            if band in r.bands:
                ds.write(ds.read(i) * 10000.0, i)
    return {"root": root, "scene": scene, "scaled": scaled, "bundle": bundle, "image_bands": r.bands}


def test_predict_warns_once_per_band_and_records_the_statistics(study):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = predict(study["bundle"], study["root"] / "p_scaled", scene=study["scaled"], tile=64, overlap=32)
    shift = [str(w.message) for w in caught if issubclass(w.category, ShiftWarning)]
    bands = study["image_bands"]
    assert len(shift) == len(bands)  # once per image band (not per strip), none for dem and slope
    for band, message in zip(bands, shift, strict=True):
        assert f"band {band}:" in message and "about 10000x wider" in message
    meta = json.loads((study["root"] / "p_scaled" / "prediction.json").read_text())
    assert meta["shift_warnings"] == result.meta.shift_warnings and len(meta["shift_warnings"]) == len(bands)
    stack = Scene(study["scaled"]).read()
    for i, band in enumerate(Scene(study["scaled"]).bands):  # exact over the region, rows counted once
        v = stack[i][np.isfinite(stack[i])]
        s = meta["input_stats"][band]
        assert s["count"] == v.size and s["mean"] == pytest.approx(float(v.mean(dtype=np.float64)), rel=1e-4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain = predict(study["bundle"], study["root"] / "p_plain", scene=study["scene"].path, tile=64,
                        overlap=32)
    assert not [w for w in caught if issubclass(w.category, ShiftWarning)] and plain.meta.shift_warnings == []


def test_cli_prints_each_warning_as_one_line(study, capsys):
    assert main(["predict", str(study["bundle"]), "--scene", str(study["scaled"]), "--out",
                 str(study["root"] / "p_cli"), "--tile", "64", "--overlap", "32"]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning: ")]
    assert len(lines) == len(study["image_bands"]) and all("10000x" in ln for ln in lines)


def test_patch_sets_are_guarded_too(tmp_path):
    from l4s_helpers import lively_patch_bundle, make_l4s

    from slidemap.sources.l4s import import_l4s
    from slidemap.stages import predict as stage

    chips = import_l4s(make_l4s(tmp_path / "d", [1, 2]), tmp_path / "chips")
    bundle = lively_patch_bundle(tmp_path, chips)
    import h5py

    scaled = make_l4s(tmp_path / "d10k", [1, 2])
    for n in (1, 2):
        with h5py.File(scaled / "img" / f"image_{n}.h5", "r+") as f:
            f["img"][..., 13] = f["img"][..., 13] * 10000.0  # the DEM in other units
    other = import_l4s(scaled, tmp_path / "chips10k")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta = stage.run(stage.PredictOptions(model=bundle, out=tmp_path / "p", chips=other.path,
                                              device="cpu", precision="32")).meta
    shift = [str(w.message) for w in caught if issubclass(w.category, ShiftWarning)]
    assert len(shift) == 1 and "band dem:" in shift[0] and meta.input_stats["dem"]["count"] == 2 * 128 * 128
