"""The ONNX Runtime engines of ``predict --engine onnx|onnx-int8`` and the QGIS file, on a tiny run trained here.

``slidemap export`` writes the engines (fp32; int8 calibrated on the run's training chips, with the engines'
validation F1 recorded beside the export); ``predict`` runs them from ``--onnx-model`` or an export beside the
bundle and never writes outside its ``--out``. The engines are compared with torch by their outputs; nothing
is timed. The exported QGIS file is run through the Deepness plugin's own panel under QGIS where a Python with
QGIS's bindings is named by ``SLIDEMAP_QGIS_PYTHON`` (see :data:`QGIS_HOWTO`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from slidemap.cli import main
from slidemap.stages.runners import PredictWarning

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

DEEPNESS_CHECK = Path(__file__).resolve().parents[3] / "shared" / "tools" / "deepness_check.py"
QGIS_PYTHON = "SLIDEMAP_QGIS_PYTHON"
"""Names the Python that runs the Deepness check: one that imports qgis.core, cv2 and onnxruntime <= 1.17."""
QGIS_HOWTO = ("apt install python3-qgis qgis-providers python3-opencv; /usr/bin/python3 -m venv "
              "--system-site-packages V && V/bin/pip install 'onnxruntime<=1.17' 'numpy<2'; then "
              f"{QGIS_PYTHON}=V/bin/python")


def test_onnx_runner_has_the_tile_runners_interface(tmp_path):
    from slidemap.nn.engines import OnnxRunner, export_onnx
    from slidemap.nn.inference import TileRunner
    from slidemap.nn.models import build_model

    torch.manual_seed(0)
    net = build_model("unet", in_channels=5, filters=4)
    export_onnx(net, 5, tmp_path / "m.onnx")
    onnx_run, torch_run = OnnxRunner(tmp_path / "m.onnx"), TileRunner(net, "cpu", "32")
    x = np.random.default_rng(0).standard_normal((3, 48, 80, 5), dtype=np.float32)
    batch = x.transpose(0, 3, 1, 2)  # a channels-last view, as the strip engine hands it over
    got, want = onnx_run(batch), torch_run(batch)
    assert got.shape == want.shape == (3, 48, 80) and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-4
    assert (onnx_run.engine, onnx_run.precision, str(onnx_run.device)) == ("onnx", "32", "cpu")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A synthetic area, its scene and chips, and a U-Net-4 trained on them for 3 epochs."""
    import os

    from slidemap.sources.synth import synthesize
    from slidemap.stages import prepare, sample, train

    root = tmp_path_factory.mktemp("engines")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(root / "xdg")
    try:
        data = synthesize(root / "data", seed=0, size=320, landslides=20)
        scene = prepare.run(prepare.PrepareOptions(images=[data["image"]], out=root / "scene",
                                                   dem=data["dem"], inventory=data["inventory"],
                                                   areas=data["areas"]))
        chips = sample.run(sample.SampleOptions(scene=scene.path, out=root / "chips", size=32, overlap=0.5))
        run = train.run(train.TrainOptions(chips=[chips.path], out=root / "run", filters=4, epochs=3,
                                           progress=False, min_chips=1, seed=0, precision="32"))
    finally:
        if old is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = old
    return {"root": root, "scene": scene.path, "chips": chips.path, "run": run}


def _export(run_folder: Path, onnx_path: Path, *extra: str) -> Path:
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    assert main(["export", str(run_folder), "--onnx", str(onnx_path), "--tile", "128", "--overlap", "32",
                 *extra]) == 0
    return onnx_path


@pytest.fixture(scope="module")
def exported(tiny_run):
    """The run exported with --int8 into a folder of its own (the run folder is not touched)."""
    return _export(tiny_run["run"].run, tiny_run["root"] / "export" / "m.onnx", "--int8")


def _predict(tiny_run, name, engine, **kw):
    from slidemap.stages import predict

    return predict.run(predict.PredictOptions(model=tiny_run["run"].bundle, out=tiny_run["root"] / name,
                                              scene=tiny_run["scene"], engine=engine, tile=128, overlap=32,
                                              as_float=True, **kw))


def _prob(result):
    with rasterio.open(result.path / "probability.tif") as ds:
        return ds.read(1)


def test_onnx_engine_gives_torchs_probabilities_through_the_same_tiling(tiny_run, exported):
    by_torch = _predict(tiny_run, "p-torch", "torch", precision="32")
    by_onnx = _predict(tiny_run, "p-onnx", "onnx", onnx_model=exported)
    assert by_torch.meta.engine == "torch" and by_torch.meta.precision == "32"
    assert by_onnx.meta.engine == "onnx" and by_onnx.meta.precision == "32"
    a, b = _prob(by_torch), _prob(by_onnx)
    both = np.isfinite(a)
    assert np.array_equal(both, np.isfinite(b)) and both.any()
    assert np.abs(a[both] - b[both]).max() <= 1e-4
    saved = json.loads((by_onnx.path / "prediction.json").read_text())
    assert saved["engine_choice"]["setting"] == "onnx" and saved["engine_choice"]["how"] == "given"
    assert saved["engine_choice"]["onnx_model"] == str((exported.parent / "m.engine.onnx").resolve())


def test_export_int8_is_calibrated_on_training_chips_and_records_the_engines_f1(tiny_run, exported):
    from slidemap.formats.chips import ChipSet

    folder = tiny_run["run"].run
    record = json.loads((exported.parent / "m.engines.json").read_text())
    summary = json.loads((folder / "summary.json").read_text())
    assert record["files"] == {"onnx": "m.engine.onnx", "onnx-int8": "m.engine-int8.onnx"}
    assert record["calibration"]["part"] == "training split"
    assert 0 < record["calibration"]["count"] <= summary["train_chips"]
    assert record["validation"]["count"] == summary["val_chips"]
    assert record["calibration"]["chips"] == [str(ChipSet(tiny_run["chips"]).path.resolve())]
    assert set(record["f1"]) == {"torch-fp32", "onnx", "onnx-int8"}
    assert abs(record["f1"]["onnx"] - record["f1"]["torch-fp32"]) <= 1e-3
    assert sorted(p.name for p in exported.parent.iterdir()) == [
        "m.engine-int8.onnx", "m.engine.onnx", "m.engines.json", "m.onnx", "m.qml"]
    result = _predict(tiny_run, "p-int8", "onnx-int8", onnx_model=exported)
    assert result.meta.engine == "onnx-int8" and result.meta.precision == "int8"
    assert result.meta.engine_choice["validation_f1"] == record["f1"]
    a, b = _prob(result), _prob(_predict(tiny_run, "p-fp32", "onnx", onnx_model=exported))
    ok = np.isfinite(a)
    assert np.abs(a[ok] - b[ok]).mean() < 0.05  # int8 approximates fp32
    assert not [p.name for p in folder.iterdir() if p.name.endswith((".onnx", ".engines.json"))]


def test_predict_finds_an_export_beside_the_bundle_and_writes_nothing_there(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run["run"].bundle, run / "bundle.pt")
    argv = ["predict", str(run), "--scene", str(tiny_run["scene"]), "--tile", "128", "--overlap", "32"]
    assert main([*argv, "--out", str(tmp_path / "p0"), "--engine", "onnx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --engine onnx: no ONNX export of MODEL") and "slidemap export" in err
    assert err.count("\n") == 1 and os.listdir(run) == ["bundle.pt"] and not (tmp_path / "p0").exists()
    _export(run, run / "model.onnx")  # the user names the run folder for the export
    listing = sorted(os.listdir(run))
    assert listing == ["bundle.pt", "model.engine.onnx", "model.engines.json", "model.onnx", "model.qml"]
    assert main([*argv, "--out", str(tmp_path / "p1"), "--engine", "onnx"]) == 0
    saved = json.loads((tmp_path / "p1" / "prediction.json").read_text())
    assert saved["engine_choice"]["onnx_model"] == str((run / "model.engine.onnx").resolve())
    assert main([*argv, "--out", str(tmp_path / "p2"), "--engine", "onnx-int8"]) == 2  # exported without --int8
    assert "onnx-int8" in capsys.readouterr().err
    assert sorted(os.listdir(run)) == listing


def test_an_export_of_another_bundle_is_refused(tiny_run, exported, tmp_path, capsys):
    from slidemap.nn.bundle import load_bundle, save_bundle

    bundle = load_bundle(tiny_run["run"].bundle)
    net = bundle.build_model()
    with torch.no_grad():
        net.head.bias.add_(0.1)
    other = save_bundle(tmp_path / "other.pt", net, bundle.meta).path
    assert main(["predict", str(other), "--scene", str(tiny_run["scene"]), "--out", str(tmp_path / "p"),
                 "--engine", "onnx", "--onnx-model", str(exported)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --onnx-model {exported}: was exported from another bundle")
    assert main(["predict", str(other), "--scene", str(tiny_run["scene"]), "--out", str(tmp_path / "p"),
                 "--onnx-model", str(exported)]) == 2
    assert "--onnx-model goes with --engine onnx or onnx-int8" in capsys.readouterr().err


def test_int8_whose_f1_fell_by_more_than_001_is_run_with_a_warning(tiny_run, exported, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(exported.parent, copy)
    path = copy / "m.engines.json"
    record = json.loads(path.read_text())
    record["f1"].update({"torch-fp32": 0.8, "onnx": 0.8, "onnx-int8": 0.78})
    path.write_text(json.dumps(record))
    with pytest.warns(PredictWarning, match=r"--engine onnx-int8: validation F1 0\.7800 against 0\.8000 in fp32 "
                                            r"\(more than 0\.01 lower\)"):
        result = _predict(tiny_run, "p-int8-warned", "onnx-int8", onnx_model=copy / "m.onnx")
    assert result.meta.engine == "onnx-int8"


def test_export_int8_without_the_training_chips_and_predict_without_onnxruntime(tiny_run, monkeypatch, tmp_path,
                                                                                capsys):
    bundle = tiny_run["run"].bundle
    chips = tiny_run["chips"]
    moved = tmp_path / "chips-moved"
    shutil.copytree(chips, moved)
    shutil.rmtree(chips)
    (tmp_path / "e").mkdir()
    try:
        assert main(["export", str(bundle), "--onnx", str(tmp_path / "e" / "m.onnx"), "--int8"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --int8: MODEL") and "training chip set" in err and err.count("\n") == 1
        assert os.listdir(tmp_path / "e") == []
        _export(bundle, tmp_path / "e" / "m.onnx")  # fp32 needs no chips
    finally:
        shutil.copytree(moved, chips)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    code = main(["predict", str(bundle), "--scene", str(tiny_run["scene"]), "--out", str(tmp_path / "p3"),
                 "--engine", "onnx", "--onnx-model", str(tmp_path / "e" / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "--engine onnx" in err and "slidemap[onnx]" in err


def test_patch_prediction_takes_the_engine_too(tiny_run, exported):
    from slidemap.stages import predict

    result = predict.run(predict.PredictOptions(model=tiny_run["run"].bundle, out=tiny_run["root"] / "pp",
                                                chips=tiny_run["chips"], engine="onnx", onnx_model=exported,
                                                previews=0))
    assert result.meta.engine == "onnx" and result.meta.count > 0


# --- the QGIS file in Deepness's own panel ----------------------------------------------------------------

def _qgis_python() -> str:
    """The Python named by SLIDEMAP_QGIS_PYTHON, or a skip saying why there is none and how to get one."""
    if not DEEPNESS_CHECK.is_file():
        pytest.skip(f"{DEEPNESS_CHECK} is absent (it lies in the project's shared folder, not in a clone)")
    python = os.environ.get(QGIS_PYTHON)
    if not python:
        pytest.skip(f"QGIS's Python bindings: {QGIS_PYTHON} is not set ({QGIS_HOWTO})")
    probe = subprocess.run([python, "-c", "import qgis.core, cv2, onnxruntime"], capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["it does not run"])[-1]
        pytest.skip(f"{QGIS_PYTHON}={python}: {last} ({QGIS_HOWTO})")
    return python


def _lively_bundle(scene_path: Path, path: Path, postprocess=None) -> Path:
    """A random U-Net-4 for the scene whose probabilities spread over 0-1, a fifth of the pixels landslide.

    A trained tiny run calls everything (or nothing) a landslide; this one draws many blobs of both
    classes, so an agreement of class maps says something. Its best threshold has 4 decimals.
    """
    from slidemap.formats.bundle import BundleMeta
    from slidemap.formats.scene import Scene
    from slidemap.nn.bundle import save_bundle
    from slidemap.nn.models import build_model
    from slidemap.nn.normalise import Normaliser

    scene = Scene(scene_path)
    torch.manual_seed(0)
    net = build_model("unet", in_channels=len(scene.bands), filters=4)
    x = np.nan_to_num(Normaliser.from_stats(scene.bands, scene.stats, "scene", "prepare it again")(scene.read()))
    with torch.no_grad():
        lo, hi = np.percentile(net(torch.from_numpy(x[None])).numpy(), [16, 84])
        net.head.weight.mul_(6.0 / max(hi - lo, 1e-6))  # the head is linear: this scales the logits
        net.head.bias.mul_(6.0 / max(hi - lo, 1e-6))
        net.head.bias.sub_(float(np.percentile(net(torch.from_numpy(x[None])).numpy(), 80)) + 0.2735)
    meta = BundleMeta(architecture="unet", model_args=net.config, bands=scene.bands, stats=scene.stats,
                      patch_size=64, thresholds={"0.5": 0.5, "best": 0.4321}, postprocess=postprocess,
                      training={"pixel_size_m": list(scene.pixel_size_m)})
    return save_bundle(path, net.eval(), meta).path


def _deepness(python: str, model: Path, raster: Path, classes: Path) -> dict:
    done = subprocess.run([python, str(DEEPNESS_CHECK), str(model), str(raster), "--out", str(classes)],
                          capture_output=True, text=True, timeout=900)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print("deepness_check:", json.dumps(report))
    assert done.returncode == 0 and report["loaded"] and report["ran"] and report["errors"] == [], done.stderr[-2000:]
    return report


@pytest.mark.parametrize("min_pixels", [0, 20])
def test_deepness_panel_loads_and_runs_the_export_as_slidemap_predicts(tiny_run, tmp_path, min_pixels):
    """Deepness 0.6.5's dock widget (../shared/tools/deepness_check.py): choose the model, Load default
    parameters, Run. Its class map against ``slidemap predict`` at the file's threshold without post-processing,
    then (a minimum size of 20 px: seg_small_segment 5) through the 5 x 5 median Deepness applies."""
    from scipy import ndimage

    from slidemap.formats.bundle import PostProcess

    python = _qgis_python()
    scene = Path(tiny_run["scene"])
    bundle = _lively_bundle(scene, tmp_path / "bundle.pt", PostProcess(min_pixels=min_pixels) if min_pixels else None)
    model = _export(bundle, tmp_path / "q" / "m.onnx")
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(model)).metadata_props}
    assert meta["seg_thresh"] == 0.43 and meta["seg_small_segment"] == (5 if min_pixels else 0)
    report = _deepness(python, model, scene / "stack.tif", tmp_path / "classes.npy")
    assert report["defaults"] == {
        "model_type": "Segmentor", "resolution_cm": meta["resolution"], "tile_px": 128, "overlap_pct": 25,
        "threshold": 0.43, "small_segment": meta["seg_small_segment"] or None}  # None: the box unticked
    assert set(report["layers"]) == {"background", "landslide"}
    pred = tmp_path / "pred"
    assert main(["predict", str(bundle), "--scene", str(scene), "--out", str(pred), "--threshold", "0.43",
                 "--postprocess", "none", "--tile", "128", "--overlap", "32", "--precision", "32"]) == 0
    with rasterio.open(pred / "mask.tif") as ds:
        mask = ds.read(1)
    ours = mask == 1
    if meta["seg_small_segment"]:
        ours = ndimage.median_filter(ours.astype(np.uint8), size=meta["seg_small_segment"], mode="nearest") == 1
    theirs = np.load(tmp_path / "classes.npy") == 2
    assert theirs.shape == mask.shape
    valid = mask != 255
    agreement = float((theirs[valid] == ours[valid]).mean())
    print(f"agreement on {int(valid.sum())} valid pixels: {agreement:.5f}; landslide pixels: slidemap "
          f"{int(ours[valid].sum())}, Deepness {int(theirs[valid].sum())} (and {int(theirs[~valid].sum())} in "
          f"nodata)")
    assert 0.1 < ours[valid].mean() < 0.5
    assert agreement >= 0.99
