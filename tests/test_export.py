"""`slidemap export --onnx`: raw bands in, probability out, standardisation inside, Deepness metadata.

The bundle is built here (a seeded U-Net with made-up band statistics), and the exported model is run the
way the Deepness QGIS plugin runs it (its ModelBase.preprocessing: bands in the layer's order, x / 255,
then (x - standardization_mean) / standardization_std, NHWC -> NCHW; Segmentor: one sigmoid channel).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from slidemap.cli import main
from slidemap.errors import UserError
from slidemap.formats.bundle import BundleMeta, PostProcess
from slidemap.formats.scene import BandStats
from slidemap.nn.bundle import load_bundle, save_bundle
from slidemap.nn.models import build_model

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

BANDS = ["blue", "green", "red", "nir", "dem", "slope"]
MEANS = [420.0, 610.0, 700.0, 2300.0, 850.0, 14.0]
STDS = [60.0, 80.0, 95.0, 400.0, 120.0, 9.0]


def make_bundle(path, arch="unet", postprocess=None, pixel_size=(10.0, 10.0), seed=0):
    torch.manual_seed(seed)
    net = build_model(arch, in_channels=len(BANDS), filters=4)
    with torch.no_grad():  # a head bias that puts probabilities in the middle, where errors show
        net.head.bias.fill_(0.3) if hasattr(net, "head") else None
    meta = BundleMeta(architecture=arch, model_args=dict(net.config), bands=BANDS,
                      stats={b: BandStats(mean=m, std=s) for b, m, s in zip(BANDS, MEANS, STDS, strict=True)},
                      patch_size=64, thresholds={"0.5": 0.5, "best": 0.4321}, postprocess=postprocess,
                      training={"pixel_size_m": list(pixel_size)} if pixel_size else {})
    return save_bundle(path, net, meta)


def raw_scene(n=2, h=96, w=80, seed=1):
    rng = np.random.default_rng(seed)
    x = np.array(MEANS)[None, :, None, None] + np.array(STDS)[None, :, None, None] * rng.standard_normal(
        (n, len(BANDS), h, w))
    return x.astype(np.float32)


def torch_probability(bundle_path, raw):
    b = load_bundle(bundle_path)
    with torch.inference_mode():
        return torch.sigmoid(b.build_model()(torch.from_numpy(b.normaliser()(raw.copy())))).numpy()[:, 0]


@pytest.mark.parametrize("arch", ["unet", "resunet"])
def test_exported_model_matches_torch_with_dynamic_batch_and_size(tmp_path, arch):
    bundle = make_bundle(tmp_path / "bundle.pt", arch)
    out = tmp_path / "model.onnx"
    assert main(["export", str(bundle), "--onnx", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert inp.shape[1] == len(BANDS) and all(isinstance(d, str) for d in (inp.shape[0], *inp.shape[2:]))
    assert outp.shape[1] == 1
    for shape in ((1, 64, 64), (3, 96, 80), (2, 160, 48)):
        raw = raw_scene(*shape)
        raw[0, 2, 10, 11] = np.nan  # nodata: the training mean after standardising, as in slidemap
        got = session.run(None, {inp.name: raw})[0]
        assert got.shape == (shape[0], 1, shape[1], shape[2])
        want = torch_probability(bundle, raw)
        assert np.abs(got[:, 0] - want).max() <= 1e-4
        assert 0.05 < float(want.mean()) < 0.95


def test_deepness_reads_the_metadata_and_its_preprocessing_gives_slidemaps_probabilities(tmp_path):
    bundle = make_bundle(tmp_path / "bundle.pt", postprocess=PostProcess(min_area_m2=2000.0))
    out = tmp_path / "model.onnx"
    assert main(["export", str(bundle), "--onnx", str(out), "--tile", "256", "--overlap", "32"]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    assert meta["model_type"] == "Segmentor"
    assert meta["class_names"] == {"0": "landslide"}
    assert meta["resolution"] == 1000.0  # cm per pixel: 10 m
    assert meta["tile_size"] == 256 and meta["tiles_size"] == 256
    assert meta["tiles_overlap"] == 12  # percent of the tile (Deepness's unit): 32 / 256
    assert meta["seg_thresh"] == pytest.approx(0.4321)
    assert meta["seg_small_segment"] == 4  # 20 px minimum: kernel side (4 // 2) ** 2 + 1 = 5 >= sqrt(20)
    assert meta["slidemap_bands"] == BANDS
    # Deepness: tiles (N, H, W, C) of the layer's bands in order, x * 1/255, standardised with the metadata.
    raw = raw_scene(2, 64, 64).transpose(0, 2, 3, 1).round().astype(np.uint16)
    x = np.float32(raw * 1.0 / 255.0)
    x = (x - np.array(meta["standardization_mean"], np.float32)) / np.array(meta["standardization_std"],
                                                                              np.float32)
    x = np.transpose(x, (0, 3, 1, 2))
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    want = torch_probability(bundle, raw.transpose(0, 3, 1, 2).astype(np.float32))
    assert np.abs(got[:, 0] - want).max() <= 1e-4
    assert got.ndim == 4 and got.shape[1] == 1  # Deepness: one channel = sigmoid, thresholded at seg_thresh


def test_export_errors_are_one_line_and_name_the_option(tmp_path, capsys):
    bundle = make_bundle(tmp_path / "bundle.pt", pixel_size=None)
    assert main(["export", str(bundle), "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert "--resolution-cm" in capsys.readouterr().err
    assert main(["export", str(bundle), "--onnx", str(tmp_path / "m.onnx"), "--resolution-cm", "500"]) == 0
    assert main(["export", str(bundle), "--onnx", str(tmp_path / "m.txt"), "--resolution-cm", "5"]) == 2
    assert "--onnx" in capsys.readouterr().err
    assert main(["export", str(bundle), "--onnx", str(tmp_path / "no" / "m.onnx"),
                 "--resolution-cm", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --onnx") and err.count("\n") == 1
    assert main(["export", str(tmp_path / "missing.pt"), "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_export_without_onnx_installed_is_a_user_error(tmp_path, monkeypatch):
    import sys

    from slidemap.stages import export

    bundle = make_bundle(tmp_path / "bundle.pt")
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(UserError, match=r"slidemap\[onnx\]"):
        export.run(export.ExportOptions(model=bundle, onnx=tmp_path / "m.onnx"))
