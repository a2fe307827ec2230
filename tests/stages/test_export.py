"""`slidemap export --onnx`: raw bands in, probability out, standardisation inside, Deepness metadata.

The bundle is built here (a seeded U-Net with made-up band statistics), and the exported model is run the
way the Deepness QGIS plugin runs it (its ModelBase.preprocessing: bands in the layer's order, x / 255,
then (x - standardization_mean) / standardization_std, NHWC -> NCHW; Segmentor: one sigmoid channel). The
run through Deepness's own panel under QGIS is in tests/test_engines.py (it needs a trained run).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from scipy import ndimage

from slidemap.cli import main
from slidemap.errors import UserError
from slidemap.formats.bundle import BundleMeta, PostProcess
from slidemap.formats.scene import BandStats
from slidemap.nn.bundle import load_bundle, save_bundle
from slidemap.nn.engines import deepness_small_segment
from slidemap.nn.models import build_model

onnx = pytest.importorskip("onnx")

BANDS = ["blue", "green", "red", "nir", "dem", "slope"]
MEANS = [420.0, 610.0, 700.0, 2300.0, 850.0, 14.0]
STDS = [60.0, 80.0, 95.0, 400.0, 120.0, 9.0]


def make_bundle(path, arch="unet", postprocess=None, pixel_size=(10.0, 10.0), seed=0, standardise="training"):
    torch.manual_seed(seed)
    net = build_model(arch, in_channels=len(BANDS), filters=4)
    with torch.no_grad():  # a head bias that puts probabilities in the middle, where errors show
        net.head.bias.fill_(0.3) if hasattr(net, "head") else None
    meta = BundleMeta(architecture=arch, model_args=dict(net.config), bands=BANDS,
                      stats={b: BandStats(mean=m, std=s) for b, m, s in zip(BANDS, MEANS, STDS, strict=True)},
                      patch_size=64, thresholds={"0.5": 0.5, "best": 0.4321}, postprocess=postprocess,
                      training={"pixel_size_m": list(pixel_size)} if pixel_size else {}, standardise=standardise)
    return save_bundle(path, net, meta).path


def raw_scene(n=2, h=96, w=80, seed=1):
    rng = np.random.default_rng(seed)
    x = np.array(MEANS)[None, :, None, None] + np.array(STDS)[None, :, None, None] * rng.standard_normal(
        (n, len(BANDS), h, w))
    return x.astype(np.float32)


def torch_probability(bundle_path, raw):
    b = load_bundle(bundle_path)
    with torch.inference_mode():
        return torch.sigmoid(b.build_model()(torch.from_numpy(b.normaliser()(raw.copy())))).numpy()[:, 0]


def shape_of(value_info) -> list:
    """An ONNX input's or output's dimensions: ints where fixed, names where dynamic."""
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize(("tile", "given"), [(512, []), (96, ["--tile", "96", "--overlap", "32"])])
def test_the_qgis_file_has_a_fixed_tile_and_a_dynamic_batch(tmp_path, tile, given):
    """Deepness sets its tile size from the input's last dimension: it must be an integer, the metadata's."""
    bundle = make_bundle(tmp_path / "bundle.pt")
    out = tmp_path / "model.onnx"
    assert main(["export", str(bundle), "--onnx", str(out), *given]) == 0
    model = onnx.load(str(out))
    (inp,), (outp,) = model.graph.input, model.graph.output
    assert shape_of(inp) == ["batch", len(BANDS), tile, tile]
    assert shape_of(outp) == ["batch", 1, tile, tile]
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert meta["tile_size"] == tile
    engine = onnx.load(str(tmp_path / "model.engine.onnx"))  # predict's engine: any size, standardised input
    assert shape_of(engine.graph.input[0]) == ["batch", len(BANDS), "height", "width"]
    assert not engine.metadata_props


@pytest.mark.parametrize("arch", ["unet", "resunet"])
def test_exported_model_matches_torch_with_a_dynamic_batch(tmp_path, arch):
    ort = pytest.importorskip("onnxruntime")
    bundle = make_bundle(tmp_path / "bundle.pt", arch)
    out = tmp_path / "model.onnx"
    assert main(["export", str(bundle), "--onnx", str(out), "--tile", "64", "--overlap", "16"]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    for n in (1, 3):
        raw = raw_scene(n, 64, 64)
        raw[0, 2, 10, 11] = np.nan  # nodata: the training mean after standardising, as in slidemap
        got = session.run(None, {inp.name: raw})[0]
        assert got.shape == (n, 1, 64, 64)
        want = torch_probability(bundle, raw)
        assert np.abs(got[:, 0] - want).max() <= 1e-4
        assert 0.05 < float(want.mean()) < 0.95
    engine = ort.InferenceSession(str(tmp_path / "model.engine.onnx"), providers=["CPUExecutionProvider"])
    raw = raw_scene(2, 96, 80)
    b = load_bundle(bundle)
    got = engine.run(None, {"input": b.normaliser()(raw.copy())})[0][:, 0]
    assert np.abs(got - torch_probability(bundle, raw)).max() <= 1e-4


def test_deepness_reads_the_metadata_and_its_preprocessing_gives_slidemaps_probabilities(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    bundle = make_bundle(tmp_path / "bundle.pt", postprocess=PostProcess(min_area_m2=2000.0))
    out = tmp_path / "model.onnx"
    assert main(["export", str(bundle), "--onnx", str(out), "--tile", "64", "--overlap", "16"]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    assert meta["model_type"] == "Segmentor"
    assert meta["class_names"] == {"0": "landslide"}
    assert meta["resolution"] == 1000.0  # cm per pixel: 10 m
    assert meta["tile_size"] == 64 and meta["tiles_size"] == 64
    assert meta["tiles_overlap"] == 25  # percent of the tile (Deepness's unit): 16 / 64
    assert meta["seg_thresh"] == 0.43  # as the panel's two-decimal box holds it
    assert meta["slidemap_threshold"] == 0.4321
    assert meta["seg_small_segment"] == 5  # 20 px minimum: a 5 x 5 median keeps what fills 13 of its 25 px
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


def test_no_minimum_size_writes_small_segments_off(tmp_path):
    """Without the key the panel keeps its own default (a 9 x 9 median); 0 switches it off."""
    bundle = make_bundle(tmp_path / "bundle.pt")
    assert main(["export", str(bundle), "--onnx", str(tmp_path / "m.onnx")]) == 0
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert meta["seg_small_segment"] == 0 and meta["seg_thresh"] == 0.43


@pytest.mark.parametrize(("given", "written"), [("0.4321", 0.43), ("0.175", 0.17), ("0.004", 0.01), ("0.999", 1.0)])
def test_the_threshold_is_written_as_the_panel_holds_it(tmp_path, given, written):
    """Two decimals (0.175 is 0.17499... in binary); never 0, which would untick the panel's threshold."""
    bundle = make_bundle(tmp_path / "bundle.pt")
    assert main(["export", str(bundle), "--onnx", str(tmp_path / "m.onnx"), "--threshold", given]) == 0
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert meta["seg_thresh"] == written and meta["slidemap_threshold"] == float(given)


@pytest.mark.parametrize(("min_pixels", "n"), [(0, 0), (1, 0), (4.9, 0), (5, 3), (12.9, 3), (13, 5), (24, 5),
                                               (25, 7), (100, 13)])
def test_small_segment_is_the_largest_median_that_keeps_a_landslide_of_the_minimum(min_pixels, n):
    assert deepness_small_segment(min_pixels) == n


@pytest.mark.parametrize("min_pixels", [5, 13, 20, 40, 90])
def test_deepness_median_keeps_a_compact_landslide_of_the_minimum_and_drops_a_smaller_one(min_pixels):
    """What Deepness 0.6.5 does with seg_small_segment n: a median blur of side (n // 2) * 2 + 1."""
    n = deepness_small_segment(min_pixels)
    side = (n // 2) * 2 + 1
    need = (side * side + 1) // 2  # pixels of the window that must be landslide for its centre to stay one

    def survives(pixels: int) -> bool:
        img = np.zeros((41, 41), np.uint8)
        rr, cc = np.unravel_index(np.argsort(np.hypot(*np.mgrid[-20:21, -20:21]).ravel(), kind="stable")[:pixels],
                                  (41, 41))
        img[rr, cc] = 1  # the most compact blob of this many pixels: a disc around the centre
        return bool(ndimage.median_filter(img, size=side).any())

    assert need <= min_pixels and survives(need) and survives(int(np.ceil(min_pixels)))
    assert not survives(need - 1)


def test_the_style_colours_the_landslide_layer(tmp_path):
    bundle = make_bundle(tmp_path / "bundle.pt")
    assert main(["export", str(bundle), "--onnx", str(tmp_path / "m.onnx")]) == 0
    root = ET.parse(tmp_path / "m.qml").getroot()
    assert root.tag == "qgis" and root.get("styleCategories") == "Symbology"
    assert root.find("renderer-v2").get("type") == "singleSymbol"
    layer = root.find("renderer-v2/symbols/symbol/layer")
    options = {o.get("name"): o.get("value") for o in layer.findall("Option/Option")}
    assert layer.get("class") == "SimpleFill" and options["color"] == "230,25,75,110"
    assert root.find("layerGeometryType").text == "2"
    record = json.loads((tmp_path / "m.engines.json").read_text())
    assert record["files"] == {"onnx": "m.engine.onnx"} and record["f1"] == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.pt", "m.engine.onnx", "m.engines.json", "m.onnx",
                                                          "m.qml"]


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


def test_a_model_that_standardises_each_scene_with_its_own_statistics_is_refused(tmp_path, capsys):
    # the file would hold the training area's statistics and apply them to every layer: a silently wrong map
    bundle = make_bundle(tmp_path / "bundle.pt", standardise="scene")
    assert main(["export", str(bundle), "--onnx", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: RUN ") and err.count("\n") == 1 and "standardise scene" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.pt"]  # nothing written
