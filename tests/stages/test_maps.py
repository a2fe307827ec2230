"""Maps people read: probability scale and description, QGIS styles, error maps cropped to the area."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import write_raster
from test_predict import lively_scene, predict, scene_bundle

from slidemap.figures import error_map_png, footprint_window
from slidemap.raster.metrics import FN, FP, NODATA_CLASS, TN, TP
from slidemap.stages import evaluate


def parse_qml(path: Path) -> ET.Element:
    text = path.read_text()
    assert text.startswith("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>")
    root = ET.fromstring(text.split("\n", 1)[1])
    assert root.tag == "qgis" and root.find("pipe/rasterrenderer").get("band") == "1"
    return root


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    root = tmp_path_factory.mktemp("maps")
    scene, net, _ = lively_scene(root, 96)
    bundle = scene_bundle(root / "bundle.pt", scene, net)
    out = root / "pred"
    predict(bundle, out, scene=scene.path, tile=64, overlap=32, evaluate=True)
    return {"root": root, "scene": scene, "bundle": bundle, "out": out}


def test_probability_carries_scale_offset_and_description(predicted):
    with rasterio.open(predicted["out"] / "probability.tif") as ds:
        assert ds.scales == pytest.approx((1 / 254,)) and ds.offsets == (0.0,)
        assert ds.descriptions[0].startswith("landslide probability (0-1)")
        raw = ds.read(1)
        p = raw[raw != 255] * ds.scales[0] + ds.offsets[0]  # what a GIS shows
        assert 0.0 <= p.min() and p.max() <= 1.0
    float_out = predicted["root"] / "pred_float"
    predict(predicted["bundle"], float_out, scene=predicted["scene"].path, tile=64, overlap=32, as_float=True)
    with rasterio.open(float_out / "probability.tif") as ds:
        assert ds.scales == (1.0,) and ds.descriptions[0] == "landslide probability (0-1)"


def test_qgis_styles_beside_mask_probability_and_error_maps(predicted):
    out = predicted["out"]
    ramp = parse_qml(out / "probability.qml").find("pipe/rasterrenderer")
    assert ramp.get("type") == "singlebandpseudocolor"
    assert (ramp.get("classificationMin"), ramp.get("classificationMax")) == ("0", "1")
    shader = ramp.find("rastershader/colorrampshader")
    assert shader.get("colorRampType") == "INTERPOLATED"
    values = [float(i.get("value")) for i in shader.findall("item")]
    assert values[0] == 0.0 and values[-1] == 1.0 and values == sorted(values)  # in probability units 0-1
    mask = parse_qml(out / "mask.qml").find("pipe/rasterrenderer")
    entries = {e.get("value"): e for e in mask.findall("colorPalette/paletteEntry")}
    assert mask.get("type") == "paletted" and set(entries) == {"0", "1"}
    assert entries["1"].get("label") == "landslide" and entries["1"].get("alpha") == "255"
    assert entries["0"].get("alpha") == "0"  # background transparent over the imagery
    maps = sorted(out.glob("error_map_*.tif"))
    assert maps
    for tif in maps:
        palette = parse_qml(tif.with_suffix(".qml")).findall("pipe/rasterrenderer/colorPalette/paletteEntry")
        by_value = {int(e.get("value")): e for e in palette}
        assert set(by_value) == {TN, TP, FP, FN}
        assert by_value[FP].get("label") == "FP: false alarm" and by_value[FP].get("color") == "#eb00eb"


def _stack(path: Path, size: int, transform: Affine) -> Path:
    rng = np.random.default_rng(0)
    data = rng.uniform(100, 900, (3, size, size)).astype(np.float32)
    return write_raster(path, data, "EPSG:32633", transform, descriptions=["red", "green", "blue"])


def _error_map(path: Path, cls: np.ndarray, transform: Affine) -> Path:
    return write_raster(path, cls.astype(np.uint8), "EPSG:32633", transform, nodata=NODATA_CLASS)


def _image_part(png: Path, header: int = 84) -> np.ndarray:
    rgb = matplotlib.image.imread(png)[header:, :, :3]
    keep = ~(rgb == 1.0).all(axis=2)  # white figure margins around a narrow map
    return rgb[:, keep.any(axis=0)]


def test_error_map_is_cropped_to_the_areas_footprint(tmp_path):
    size = 400
    transform = Affine(10, 0, 500000, 0, -10, 5100000)
    stack = _stack(tmp_path / "stack.tif", size, transform)
    cls = np.full((size, size), NODATA_CLASS, np.uint8)
    cls[100:150, 50:350] = TN  # a 300 x 50 px area inside a 400 x 400 window
    cls[120:130, 100:120] = TP
    tif = _error_map(tmp_path / "em.tif", cls, transform)
    win = footprint_window(tif)
    assert (win.row_off, win.col_off) == (92, 42) and (win.height, win.width) == (66, 316)  # 8 px padding
    png = error_map_png(tif, tmp_path / "em.png", stack, ["red", "green", "blue"], "test")
    part = _image_part(png)
    assert part.shape[1] / part.shape[0] == pytest.approx(316 / 66, rel=0.05)  # not the 400 x 400 box


def test_thin_diagonal_area_is_not_drawn_on_a_grey_canvas(tmp_path):
    size = 300
    transform = Affine(10, 0, 500000, 0, -10, 5100000)
    stack = _stack(tmp_path / "stack.tif", size, transform)
    rows, cols = np.mgrid[0:size, 0:size]
    cls = np.full((size, size), NODATA_CLASS, np.uint8)
    cls[np.abs(rows - cols) < 8] = TN  # a thin diagonal band: 5 % of its bounding box
    cls[(np.abs(rows - cols) < 8) & (rows > 140) & (rows < 160)] = TP
    tif = _error_map(tmp_path / "em.tif", cls, transform)
    png = error_map_png(tif, tmp_path / "em.png", stack, ["red", "green", "blue"], "diagonal")
    part = _image_part(png)
    flat_grey = (np.abs(part - part.mean(axis=2, keepdims=True)).max(axis=2) < 0.01) & (part.mean(axis=2) < 0.6)
    assert flat_grey.mean() < 0.05  # outside the area: the image faded, not a grey (or darkened) canvas
    assert part.mean() > 0.6  # faded to a light wash
    # scene nodata still shows as grey
    with rasterio.open(stack, "r+") as ds:
        data = ds.read()
        data[:, :, :150] = np.nan
        ds.write(data)
    error_map_png(tif, tmp_path / "em2.png", stack, ["red", "green", "blue"], "half without image")
    grey = _image_part(tmp_path / "em2.png")
    assert (np.abs(grey - 0.55).max(axis=2) < 0.01).mean() > 0.3


def test_evaluate_error_map_png_and_style(predicted, tmp_path):
    result = evaluate.run(evaluate.EvaluateOptions(pred=predicted["out"]))
    for key, path in result.files.items():
        if key.startswith("error_map_"):
            assert Path(path).with_suffix(".qml").is_file()
