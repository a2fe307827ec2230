"""``auto`` by measurement (the one resolver in slidemap.nn.device), its cache and ``slidemap info``; the
ONNX Runtime engines of ``predict --engine`` (fp32 and int8) against torch, on a tiny run trained here.

No test times anything against a figure: the resolver is fed made-up rates, and the engines are compared by
their outputs. Performance figures come from bench/bench_engines.py.
"""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import rasterio
import torch

from slidemap.cli import main
from slidemap.errors import UserError
from slidemap.nn import device as dev
from slidemap.nn.device import Probe, Setting, measure, pick, resolve_run

FP32, FP32_NCHW, BF16 = Setting("torch", "32", True), Setting("torch", "32", False), Setting("torch", "bf16")
ONNX, INT8 = Setting("onnx", "32", False), Setting("onnx-int8", "int8", False)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Every test measures into its own cache directory (never the user's)."""
    monkeypatch.delenv("SLIDEMAP_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "slidemap"


@pytest.fixture
def made_up_rates(monkeypatch):
    """The resolver's timing replaced by made-up rates: each step is called once and returns its rate, so
    a loaded machine cannot change what these tests see."""
    monkeypatch.setattr(dev, "measure", lambda steps, seconds=0: {k: fn() for k, fn in steps.items()})


def fake_probe(rates: dict[str, float], candidates=(FP32, FP32_NCHW, BF16), size=64, calls=None):
    """A probe whose step in setting ``s`` 'runs' at rates[s.name] (with ``made_up_rates``)."""

    def step(setting):
        def run():
            if calls is not None:
                calls.append(setting.name)
            return rates[setting.name]
        return run

    return Probe("train", {"network": "unet", "size": size}, list(candidates), step, "chips/s")


# --- the resolver ------------------------------------------------------------------------------------

def test_pick_keeps_the_reference_unless_another_is_clearly_faster():
    cands = [FP32, FP32_NCHW, BF16]
    assert pick({"torch-fp32": 100, "torch-fp32-nchw": 105, "torch-bf16": 108}, cands) == FP32
    assert pick({"torch-fp32": 100, "torch-fp32-nchw": 90, "torch-bf16": 180}, cands) == BF16
    assert pick({"torch-fp32": 100, "torch-fp32-nchw": 125, "torch-bf16": 60}, cands) == FP32_NCHW


def test_measure_times_every_step_round_robin():
    calls = []
    steps = {n: (lambda n=n: calls.append(n) or 2.0) for n in ("a", "b")}
    rates = measure(steps, seconds=0.0, min_rounds=3)
    assert calls == ["a", "b"] * 4  # one warm-up call each, then 3 rounds alternating
    assert set(rates) == {"a", "b"} and all(r > 0 for r in rates.values())


def test_auto_is_measured_once_then_read_from_the_cache(made_up_rates, own_cache):
    calls = []
    rates = {"torch-fp32": 50.0, "torch-fp32-nchw": 40.0, "torch-bf16": 120.0}
    first = resolve_run("auto", "cpu", "torch", None, fake_probe(rates, calls=calls), measure_seconds=0.05)
    assert first.how == "measured" and first.setting == BF16 and first.precision == "bf16"
    assert first.rates == rates
    assert (own_cache / "choices.json").is_file()
    n = len(calls)
    again = resolve_run("auto", "cpu", "torch", None, fake_probe(rates, calls=calls), measure_seconds=0.05)
    assert again.how == "cached" and again.setting == BF16 and len(calls) == n
    other_size = resolve_run("auto", "cpu", "torch", None, fake_probe(rates, size=128, calls=calls),
                             measure_seconds=0.05)
    assert other_size.how == "measured" and len(calls) > n
    record = again.record()
    assert record["setting"] == "torch-bf16" and record["how"] == "cached" and record["unit"] == "chips/s"


def test_given_values_are_kept_and_narrow_what_auto_measures(made_up_rates):
    rates = {"torch-fp32": 50.0, "torch-fp32-nchw": 80.0, "torch-bf16": 120.0}
    given = resolve_run("bf16", "cpu", "torch", True, fake_probe(rates))
    assert given.how == "given" and given.setting == BF16
    layout = resolve_run("32", "cpu", "torch", None, fake_probe(rates), measure_seconds=0.02)
    assert layout.setting == FP32_NCHW and set(layout.rates) == {"torch-fp32", "torch-fp32-nchw"}
    assert resolve_run("auto", "cpu").setting == FP32  # nothing to measure: fp32, the exact one
    assert resolve_run("32", "cpu", "onnx").setting == ONNX
    assert resolve_run(None, "cpu", "onnx-int8").precision == "int8"


@pytest.mark.parametrize(("precision", "engine", "words"), [
    ("16", "torch", "--precision 16"),
    ("bf16", "onnx", "--engine onnx --precision bf16"),
    ("32", "tensorrt", "--engine tensorrt"),
    ("64", "torch", "--precision 64"),
])
def test_bad_precision_or_engine_is_a_user_error(precision, engine, words):
    with pytest.raises(UserError, match=words):
        resolve_run(precision, "cpu", engine)


def test_cache_dir_follows_xdg_and_survives_a_corrupt_file(made_up_rates, own_cache, monkeypatch, tmp_path):
    assert dev.cache_dir() == own_cache
    monkeypatch.setenv("SLIDEMAP_CACHE_DIR", str(tmp_path / "mine"))
    assert dev.cache_dir() == tmp_path / "mine"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "choices.json").write_text("{not json")
    rates = {"torch-fp32": 50.0, "torch-fp32-nchw": 40.0, "torch-bf16": 10.0}
    choice = resolve_run("auto", "cpu", "torch", None, fake_probe(rates), measure_seconds=0.02)
    assert choice.setting == FP32 and choice.how == "measured"
    assert json.loads((tmp_path / "mine" / "choices.json").read_text())["format"] == dev.CACHE_FORMAT


def test_info_shows_the_machine_the_cache_and_autos_pick(made_up_rates, capsys):
    rates = {"torch-fp32": 50.0, "torch-fp32-nchw": 40.0, "torch-bf16": 120.0}
    resolve_run("auto", "cpu", "torch", None, fake_probe(rates), measure_seconds=0.02)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "cpu " in out and "threads" in out and "torch 2." in out and "choices.json (1 measurement)" in out
    assert "auto -> torch-bf16" in out
    starred = [ln for ln in out.splitlines() if ln.strip().startswith("*")]
    assert len(starred) == 1 and "torch-bf16" in starred[0]


# --- the ONNX Runtime engines -----------------------------------------------------------------------------

ort = pytest.importorskip("onnxruntime")


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
                                           progress=False, seed=0))
    finally:
        if old is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = old
    return {"root": root, "scene": scene.path, "chips": chips.path, "run": run}


def _predict(tiny_run, name, engine, **kw):
    from slidemap.stages import predict

    return predict.run(predict.PredictOptions(model=tiny_run["run"].bundle, out=tiny_run["root"] / name,
                                              scene=tiny_run["scene"], engine=engine, tile=128, overlap=32,
                                              as_float=True, **kw))


def _prob(result):
    with rasterio.open(result.path / "probability.tif") as ds:
        return ds.read(1)


def test_training_records_how_its_precision_was_chosen(tiny_run):
    summary = json.loads((tiny_run["run"].run / "summary.json").read_text())
    choice = summary["precision_choice"]
    assert choice["how"] in ("measured", "cached") and choice["engine"] == "torch"
    assert set(choice["rates"]) >= {"torch-fp32", "torch-fp32-nchw"}
    assert summary["precision"] == choice["precision"] and summary["channels_last"] == choice["channels_last"]


def test_onnx_engine_gives_torchs_probabilities_through_the_same_tiling(tiny_run):
    by_torch = _predict(tiny_run, "p-torch", "torch", precision="32")
    by_onnx = _predict(tiny_run, "p-onnx", "onnx")
    assert by_torch.meta.engine == "torch" and by_torch.meta.precision == "32"
    assert by_onnx.meta.engine == "onnx" and by_onnx.meta.engine_choice["how"] == "given"
    a, b = _prob(by_torch), _prob(by_onnx)
    both = np.isfinite(a)
    assert np.array_equal(both, np.isfinite(b)) and both.any()
    assert np.abs(a[both] - b[both]).max() <= 1e-4
    saved = json.loads((by_onnx.path / "prediction.json").read_text())
    assert saved["engine"] == "onnx" and saved["engine_choice"]["setting"] == "onnx"


def test_int8_is_calibrated_on_training_chips_once_and_its_f1_recorded(tiny_run):
    from slidemap.formats.chips import ChipSet

    result = _predict(tiny_run, "p-int8", "onnx-int8")
    assert result.meta.engine == "onnx-int8" and result.meta.precision == "int8"
    folder = tiny_run["run"].run
    record = json.loads((folder / "bundle.engines.json").read_text())
    summary = json.loads((folder / "summary.json").read_text())
    assert record["calibration"]["part"] == "training split"
    assert 0 < record["calibration"]["count"] <= summary["train_chips"]
    assert record["validation"]["count"] == summary["val_chips"]
    assert record["calibration"]["chips"] == [str(ChipSet(tiny_run["chips"]).path.resolve())]
    assert {"torch-fp32", "onnx", "onnx-int8"} <= set(record["f1"])
    assert abs(record["f1"]["onnx"] - record["f1"]["torch-fp32"]) <= 1e-3
    int8 = folder / "bundle.int8.onnx"
    stamp = int8.stat().st_mtime_ns
    _predict(tiny_run, "p-int8-again", "onnx-int8")
    assert int8.stat().st_mtime_ns == stamp  # built once per bundle
    a, b = _prob(result), _prob(_predict(tiny_run, "p-fp32", "onnx"))
    ok = np.isfinite(a)
    assert np.abs(a[ok] - b[ok]).mean() < 0.05  # int8 approximates fp32


def test_auto_never_picks_an_engine_whose_f1_fell_by_more_than_001(tiny_run, monkeypatch, own_cache):
    from slidemap.stages import predict

    _predict(tiny_run, "p-build", "onnx-int8")  # the engines and their record exist
    path = tiny_run["run"].run / "bundle.engines.json"
    record = json.loads(path.read_text())
    record["f1"]["onnx-int8"] = record["f1"]["torch-fp32"] - 0.02
    record["f1"].pop("torch-bf16", None)
    path.write_text(json.dumps(record))
    measured = {"torch-fp32": 1.0, "torch-bf16": 3.0, "onnx": 1.05, "onnx-int8": 5.0}
    monkeypatch.setattr(dev, "measure", lambda steps, seconds=0: {k: measured[k] / 1e-6 for k in steps})
    result = predict.run(predict.PredictOptions(model=tiny_run["run"].bundle,
                                                out=tiny_run["root"] / "p-auto", scene=tiny_run["scene"],
                                                tile=128, overlap=32))
    choice = result.meta.engine_choice
    assert result.meta.engine == "torch" and choice["setting"] == "torch-fp32"  # onnx: not 10 % faster
    assert "onnx-int8" not in choice["rates"] and "0.02" not in choice["excluded"]["onnx-int8"]
    assert "validation F1" in choice["excluded"]["onnx-int8"]
    assert "torch-bf16" not in choice["rates"]
    record["f1"]["onnx-int8"] = record["f1"]["torch-fp32"] - 0.005
    path.write_text(json.dumps(record))
    shutil.rmtree(own_cache, ignore_errors=True)
    again = predict.run(predict.PredictOptions(model=tiny_run["run"].bundle, out=tiny_run["root"] / "p-auto2",
                                               scene=tiny_run["scene"], tile=128, overlap=32))
    assert again.meta.engine == "onnx-int8" and again.meta.engine_choice["how"] == "measured"


def test_engines_without_onnxruntime_or_without_the_training_chips(tiny_run, monkeypatch, tmp_path, capsys):
    bundle = tiny_run["run"].bundle
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(bundle, lonely / "bundle.pt")
    meta_chips = tiny_run["chips"]
    moved = tmp_path / "chips-moved"
    shutil.copytree(meta_chips, moved)
    shutil.rmtree(meta_chips)
    try:
        code = main(["predict", str(lonely / "bundle.pt"), "--scene", str(tiny_run["scene"]), "--out",
                     str(tmp_path / "p"), "--engine", "onnx-int8", "--tile", "128", "--overlap", "32"])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: MODEL") and "training chip set" in err
        assert err.count("\n") == 1
        from slidemap.stages import predict

        auto = predict.run(predict.PredictOptions(model=lonely / "bundle.pt", out=tmp_path / "p2",
                                                  scene=tiny_run["scene"], tile=128, overlap=32))
        assert auto.meta.engine in ("torch", "onnx")  # exact engines only: int8 has no accuracy evidence
        assert "onnx-int8" in auto.meta.engine_choice.get("excluded", {})
    finally:
        shutil.copytree(moved, meta_chips)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    code = main(["predict", str(bundle), "--scene", str(tiny_run["scene"]), "--out", str(tmp_path / "p3"),
                 "--engine", "onnx"])
    err = capsys.readouterr().err
    assert code == 2 and "--engine onnx" in err and "slidemap[onnx]" in err
    from slidemap.stages import predict

    auto = predict.run(predict.PredictOptions(model=bundle, out=tmp_path / "p4", scene=tiny_run["scene"],
                                              tile=128, overlap=32))
    excluded = auto.meta.engine_choice["excluded"]
    assert auto.meta.engine == "torch" and "onnxruntime is not installed" in excluded["onnx"]


def test_patch_prediction_takes_the_engine_too(tiny_run):
    from slidemap.stages import predict

    result = predict.run(predict.PredictOptions(model=tiny_run["run"].bundle, out=tiny_run["root"] / "pp",
                                                chips=tiny_run["chips"], engine="onnx", previews=0))
    assert result.meta.engine == "onnx" and result.meta.count > 0


def test_bf16_stays_a_candidate_without_onnxruntime(tiny_run, monkeypatch, tmp_path, own_cache):
    """A plain install (no onnxruntime) checks bf16's validation F1 once and may then predict in bf16; the
    ONNX engines are still built over that torch-only record once onnxruntime is there."""
    from slidemap.nn.device import cpu_has_native_bf16
    from slidemap.stages import predict

    if not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16: auto never considers it")
    alone = tmp_path / "run"
    alone.mkdir()
    shutil.copy(tiny_run["run"].bundle, alone / "bundle.pt")
    real = sys.modules.get("onnxruntime")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    measured = {"torch-fp32": 1.0, "torch-bf16": 2.0}
    monkeypatch.setattr(dev, "measure", lambda steps, seconds=0: {k: measured[k] / 1e-6 for k in steps})
    result = predict.run(predict.PredictOptions(model=alone / "bundle.pt", out=tmp_path / "p",
                                                scene=tiny_run["scene"], tile=128, overlap=32))
    record = json.loads((alone / "bundle.engines.json").read_text())
    assert record["files"] == {} and set(record["f1"]) == {"torch-fp32", "torch-bf16"}
    assert result.meta.engine == "torch" and result.meta.precision == "bf16"
    assert result.meta.engine_choice["setting"] == "torch-bf16"
    assert "onnx" in result.meta.engine_choice["excluded"] and "torch-bf16" not in result.meta.engine_choice[
        "excluded"]
    if real is None:  # onnxruntime is there again (the cache and environment patches stay)
        monkeypatch.delitem(sys.modules, "onnxruntime")
    else:
        monkeypatch.setitem(sys.modules, "onnxruntime", real)
    built = predict.run(predict.PredictOptions(model=alone / "bundle.pt", out=tmp_path / "p2",
                                               scene=tiny_run["scene"], tile=128, overlap=32, engine="onnx"))
    assert built.meta.engine == "onnx" and (alone / "bundle.onnx").is_file()
    assert "onnx" in json.loads((alone / "bundle.engines.json").read_text())["files"]
