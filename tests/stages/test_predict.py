"""Whole-scene prediction: tiling geometry, tiled == one pass, streamed outputs, polygons, bad input."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from conftest import cli_error, make_rasters
from rasterio.crs import CRS
from scipy import ndimage

from slidemap.cli import main
from slidemap.errors import UserError
from slidemap.formats.bundle import BundleMeta
from slidemap.formats.prediction import ScenePrediction
from slidemap.formats.scene import Scene
from slidemap.nn.bundle import save_bundle
from slidemap.nn.device import resolve_precision
from slidemap.nn.inference import TileRunner, predict_array
from slidemap.nn.models import build_model
from slidemap.nn.normalise import Normaliser
from slidemap.raster.polygons import (
    LandslideWriter,
    label_strip,
    landslide_labeler,
    mask_to_landslides,
    polygon_pieces,
)
from slidemap.raster.tiling import AxisTiling, check_tiling, wide_tile
from slidemap.stages.predict import PredictOptions, PredictResult, run


def predict(model, out, **options) -> PredictResult:
    """``slidemap predict`` through its API: ``run(PredictOptions(...))``."""
    return run(PredictOptions(model=model, out=out, **options))


def bundle_meta(bands, net, **fields) -> BundleMeta:
    """The description of a test bundle: a U-Net for ``bands``, unit statistics unless given."""
    fields.setdefault("stats", {b: {"mean": 0.0, "std": 1.0} for b in bands})
    return BundleMeta(architecture="unet", model_args=net.config, bands=list(bands), patch_size=64,
                      **{"thresholds": {"0.5": 0.5, "best": 0.5}, **fields})


def scene_bundle(path: Path, scene, net: torch.nn.Module, **fields) -> Path:
    """``net`` saved at ``path`` as a bundle for ``scene``'s bands and statistics (``fields``: the rest)."""
    return save_bundle(path, net, bundle_meta(scene.bands, net, stats=scene.stats, **fields)).path


def lively(net: torch.nn.Module, x: np.ndarray) -> torch.nn.Module:
    """Rescale a random network's head so its logits on ``x`` have median 0 and a spread (16-84 %) of ±3.

    A freshly initialised network predicts ~0.5 everywhere; spread over 0-1, its probabilities make
    tiling errors visible and its thresholded mask holds many landslide-like blobs.
    """
    with torch.no_grad():
        lo, hi = np.percentile(net(torch.from_numpy(x[None])).numpy(), [16, 84])
        net.head.weight.mul_(6.0 / max(hi - lo, 1e-6))  # the head is linear: this scales the logits
        net.head.bias.mul_(6.0 / max(hi - lo, 1e-6))
        net.head.bias.sub_(float(np.median(net(torch.from_numpy(x[None])).numpy())))
    return net.eval()


def lively_scene(root: Path, size: int, nodata_rows: tuple[int, int] | None = None,
                 crop: int | None = None):
    """A scene prepared from ``make_rasters(size)`` and a lively 4-filter U-Net for its bands (made lively on
    the first ``crop`` x ``crop`` px, else on all of it); returns (scene, net, rasters)."""
    from slidemap.stages.prepare import PrepareOptions
    from slidemap.stages.prepare import run as prepare

    r = make_rasters(root / "in", size=size, nodata_rows=nodata_rows)
    scene = Scene(prepare(PrepareOptions(images=[r.image], out=root / "scene", dem=r.dem,
                                         inventory=r.inventory, areas=r.areas)).path)
    torch.manual_seed(0)
    net = build_model("unet", in_channels=len(scene.bands), filters=4)
    x = Normaliser.from_stats(scene.bands, scene.stats, "scene", "prepare it again")(scene.read())
    lively(net, x if crop is None else x[:, :crop, :crop])
    return scene, net, r


def random_scene(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Smooth-ish random bands (sums of noise at two scales), standardised."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    coarse = ndimage.zoom(rng.normal(size=(c, h // 16 + 1, w // 16 + 1)), (1, 16, 16), order=1)[:, :h, :w]
    return (coarse + 0.5 * rng.normal(size=shape)).astype(np.float32)


# --- tiling geometry -------------------------------------------------------------------------------

@pytest.mark.parametrize("length,tile,overlap", [(430, 128, 64), (1000, 512, 64), (200, 512, 64), (20, 64, 0),
                                                 (577, 256, 96), (10000, 512, 64), (10001, 1856, 64),
                                                 (3000, 32, 16)])
def test_axis_tiling_covers_on_the_16px_grid(length, tile, overlap):
    t = AxisTiling.plan(length, tile, overlap)
    assert t.padded % 16 == 0 and t.padded >= length and t.tile % 16 == 0 and t.tile >= 32
    assert all(o % 16 == 0 for o in t.offsets)
    assert t.offsets[0] == 0 and t.offsets[-1] + t.tile == t.padded  # last one shifted back inside
    assert all(b - a <= tile - overlap for a, b in zip(t.offsets, t.offsets[1:], strict=False))
    assert all(a + t.tile - b >= overlap for a, b in zip(t.offsets, t.offsets[1:], strict=False))
    covered = np.zeros(t.padded, bool)
    for o in t.offsets:
        covered[o:o + t.tile] = True
    assert covered.all()


def test_axis_tiling_shrinks_tiles_to_even_out_the_last_one():
    ten_k = AxisTiling.plan(10000, 512, 64)  # 23 tiles either way; 496 px compute 11,408 px, not 11,776
    assert (ten_k.tile, len(ten_k.offsets), ten_k.offsets[1]) == (496, 23, 432)
    exact = AxisTiling.plan(4096, 512, 64)  # 9 x 448 + 64 = 4096: nothing to shrink
    assert (exact.tile, len(exact.offsets)) == (512, 9)
    wide = AxisTiling.plan(10000, wide_tile(512, 64, 4), 64)  # 4 tiles side by side per network pass
    assert wide_tile(512, 64, 4) == 1856 and (wide.tile, len(wide.offsets)) == (1728, 6)


def test_blend_weights_add_to_one_in_a_regular_overlap():
    t = AxisTiling.plan(1000, 256, 128)
    a, b = t.weights(0, 128, 32), t.weights(1, 128, 32)
    assert a[0] == 1.0  # the region border is not tapered
    stride = t.offsets[1]
    np.testing.assert_allclose(a[stride:] + b[:256 - stride], 1.0, atol=2e-6)
    assert b[:32].max() < 1e-5 and b[-32:].max() < 1e-5  # the floor within the margin of both shared edges
    assert b[96:160].min() > 0.999  # flat beyond the overlaps


@pytest.mark.parametrize("arch,tile,overlap,margin", [("unet", 384, 256, 112), ("resunet", 256, 128, 48)])
def test_tiled_equals_one_pass(arch, tile, overlap, margin):
    """With margin >= the receptive-field half-width (U-Net 102 px, ResU-Net 40 px), tiles on the 16-px grid
    reproduce the one-pass prediction everywhere, whatever the weights; the defaults come close."""
    torch.manual_seed(0)
    x = random_scene((4, 400, 410))  # 410 px: the last column of tiles is shifted and reflection-padded
    net = lively(build_model(arch, in_channels=4, filters=4), x[:, :, :400])
    one = predict_array(net, x, tile=1024, overlap=0)  # one tile: the whole (reflection-padded) region
    assert 0.2 < one.std() and one.min() < 0.05 and one.max() > 0.95
    exact = predict_array(net, x, tile=tile, overlap=overlap, margin=margin)
    assert np.abs(exact - one).max() < 1e-4
    default_blend = predict_array(net, x, tile=256)  # overlap 32, margin 8: measured 6e-5 (U-Net), 2e-4
    assert np.abs(default_blend - one).max() < 1 / 254  # within one step of the uint8 probability.tif
    no_margin = predict_array(net, x, tile=256, margin=0)  # measured 2e-2 and 6e-4
    assert np.abs(no_margin - one).max() > np.abs(default_blend - one).max()


def test_small_region_is_one_padded_tile_and_nodata_is_nan():
    torch.manual_seed(1)
    x = random_scene((3, 200, 300), seed=1)
    x[:, 50:60, 100:130] = np.nan
    net = build_model("unet", in_channels=3, filters=4)
    p = predict_array(net, x, tile=512, overlap=64, batch_size=2)
    assert p.shape == (200, 300)
    assert np.isnan(p[50:60, 100:130]).all() and np.isfinite(p[:50]).all()
    x0 = Normaliser(("a", "b", "c"), np.zeros(3, np.float32), np.ones(3, np.float32))(x.copy())  # NaN -> 0
    assert p[0, 0] == pytest.approx(predict_array(net, x0, tile=512, overlap=64)[0, 0], abs=1e-6)


def test_bad_tiling_options():
    with pytest.raises(UserError, match="--tile 100"):
        check_tiling(100, 0)
    with pytest.raises(UserError, match="--overlap 50"):
        check_tiling(512, 50)
    with pytest.raises(UserError, match="--overlap 512"):
        check_tiling(512, 512)


# --- polygons --------------------------------------------------------------------------------------

def test_streamed_polygons_match_connected_components():
    rng = np.random.default_rng(0)
    mask = (ndimage.gaussian_filter(rng.normal(size=(300, 200)), 2) > 0.1).astype(np.uint8)
    mask[100:110, :] = 255  # nodata never joins nor belongs to a landslide
    transform = Affine(10, 0, 500000, 0, -10, 5100000)
    labels, n = ndimage.label(mask == 1)  # 4-connected
    whole = mask_to_landslides(mask, transform, CRS.from_epsg(32633), strip_rows=1000)
    strips = mask_to_landslides(mask, transform, CRS.from_epsg(32633), strip_rows=7)
    assert len(whole) == len(strips) == n
    assert whole.geom_type.eq("Polygon").all() and strips.is_valid.all()
    np.testing.assert_allclose(strips.area, strips.area_m2)  # polygon area == pixel area
    assert strips.area_m2.sum() == pytest.approx((mask == 1).sum() * 100)
    np.testing.assert_allclose(np.sort(strips.area_m2), np.sort(np.bincount(labels.ravel())[1:] * 100.0))
    assert strips.geometry.union_all().equals(whole.geometry.union_all())


def test_landslide_writer_streams_the_same_polygons(tmp_path):
    rng = np.random.default_rng(1)
    mask = (ndimage.gaussian_filter(rng.normal(size=(120, 90)), 3) > 0.05).astype(np.uint8)
    transform, crs = Affine(5, 0, 400000, 0, -5, 3000000), CRS.from_epsg(32645)
    labeler = landslide_labeler(90)
    strips = []
    for r in range(0, 120, 9):  # 9-row strips: the last one has 3 rows
        h = len(mask[r:r + 9])
        strips.append((r, h, label_strip(labeler, r, mask[r:r + h] == 1, np.full((h, 90), 0.7),
                                         np.full(h, 25.0))))
    comps = labeler.resolve()
    writer = LandslideWriter(tmp_path / "l.gpkg", comps, transform, crs, batch=3)
    for r, h, labels in strips:  # as predict does: one strip's pieces, in pixel coordinates
        writer.add_pieces(polygon_pieces(comps.ids(labels), r), r + h)
    assert writer.close() == len(comps) > 5
    streamed = gpd.read_file(tmp_path / "l.gpkg").sort_values("id").reset_index(drop=True)
    whole = mask_to_landslides(mask, transform, crs, strip_rows=1000)
    assert list(streamed.id) == list(whole.id)
    np.testing.assert_allclose(streamed.area_m2, whole.area_m2)
    assert all(a.equals(b) for a, b in zip(streamed.geometry, whole.geometry, strict=True))
    np.testing.assert_allclose(streamed.mean_probability, 0.7)


def test_polygon_areas_are_true_areas_in_a_geographic_crs():
    mask = np.zeros((200, 200), np.uint8)
    mask[20:60, 30:90] = 1
    mask[120:190, 100:110] = 1
    transform = Affine(1e-4, 0, 91.8, 0, -1e-4, 22.45)  # ~10 m pixels near Chattogram
    gdf = mask_to_landslides(mask, transform, CRS.from_epsg(4326), strip_rows=50)  # both cross a seam
    assert list(gdf.geom_type) == ["Polygon", "Polygon"]  # seams dissolve exactly (in pixel space)
    equal_area = gdf.to_crs("+proj=laea +lat_0=22.44 +lon_0=91.81 +datum=WGS84")
    np.testing.assert_allclose(gdf.area_m2, equal_area.area, rtol=1e-4)


def test_min_area_drops_specks():
    mask = np.zeros((50, 50), np.uint8)
    mask[5:15, 5:15] = 1  # 100 px
    mask[30, 30] = 1  # a 1 px speck
    gdf = mask_to_landslides(mask, Affine(2, 0, 0, 0, -2, 0), CRS.from_epsg(32633), min_area_m2=10.0)
    assert list(gdf.area_m2) == [400.0]


# --- whole scenes ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A 160 px scene (nodata rows 70-75) and a lively 4-filter U-Net bundle for its bands."""
    root = tmp_path_factory.mktemp("predict")
    scene, net, r = lively_scene(root, 160, nodata_rows=(70, 75), crop=128)
    bundle = scene_bundle(root / "bundle.pt", scene, net, thresholds={"0.5": 0.5, "best": 0.6})
    return {"root": root, "rasters": r, "scene": scene, "bundle": bundle}


def read(path: Path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.profile, ds.overviews(1)


def test_predict_scene_writes_georeferenced_outputs(study):
    scene: Scene = study["scene"]
    out = study["root"] / "pred"
    result = predict(study["bundle"], out, scene=scene.path, tile=96, overlap=32, device="cpu")
    prob, pp, p_ovr = read(out / "probability.tif")
    mask, mp, m_ovr = read(out / "mask.tif")
    for profile in (pp, mp):
        assert profile["crs"] == scene.crs and profile["transform"] == scene.transform
        assert (profile["width"], profile["height"]) == (scene.width, scene.height)
        assert profile["dtype"] == "uint8" and profile["nodata"] == 255 and profile["compress"] == "deflate"
    assert p_ovr == m_ovr == []  # 160 px fit one 256-px block: no overviews, as gdaladdo decides
    nodata = np.zeros(mask.shape, bool)
    nodata[70:75] = True
    assert ((mask == 255) == nodata).all() and ((prob == 255) == nodata).all()
    assert prob[~nodata].max() <= 254
    # the mask is the thresholded probability (0.6 = "best"), up to the uint8 rounding of probability.tif
    p = prob[~nodata] / 254.0
    m = mask[~nodata] == 1
    assert m[p > 0.6 + 0.5 / 254].all() and not m[p < 0.6 - 0.5 / 254].any()
    assert 0.05 < m.mean() < 0.95

    gdf = gpd.read_file(out / "landslides.gpkg", layer="landslides")
    assert gdf.crs == scene.crs and list(gdf.columns) == ["id", "area_m2", "mean_probability", "geometry"]
    assert len(gdf) == result.meta.landslides == ndimage.label(mask == 1)[1] > 3
    np.testing.assert_allclose(gdf.area, gdf.area_m2)
    assert gdf.area_m2.sum() == pytest.approx((mask == 1).sum() * 100.0)
    assert gdf.mean_probability.between(0.6, 1.0).all()

    meta = json.loads((out / "prediction.json").read_text())
    assert meta["scene"] == str(scene.path.resolve()) and meta["threshold"] == {"value": 0.6, "which": "best"}
    assert meta["precision"] in ("32", "bf16")  # canonical names (0.1 wrote "bf16", "32", "cuda-mixed")
    assert meta["landslide_km2"] == pytest.approx((mask == 1).sum() * 100 / 1e6)
    assert meta["valid_km2"] == pytest.approx((~nodata).sum() * 100 / 1e6)
    assert result.meta.mpx_per_s > 0 and not list(out.glob(".*"))  # no temporary files left
    assert isinstance(result.meta, ScenePrediction) and result.path == out and result.evaluation is None


def test_float_output_min_area_and_threshold(study):
    out = study["root"] / "pred_float"
    predict(study["bundle"], out, scene=study["scene"].path, tile=96, overlap=32, threshold="0.5",
            min_area=2000.0, as_float=True)
    prob, pp, _ = read(out / "probability.tif")
    mask, _, _ = read(out / "mask.tif")
    assert pp["dtype"] == "float32" and np.isnan(pp["nodata"])
    assert np.isnan(prob[70:75]).all() and (mask[70:75] == 255).all()
    gdf = gpd.read_file(out / "landslides.gpkg")
    assert len(gdf) and (gdf.area_m2 >= 2000.0).all()
    assert gdf.area_m2.sum() == pytest.approx((mask == 1).sum() * 100.0)  # specks gone from the mask too
    kept = (prob >= 0.5) & (mask == 1)
    dropped = (prob >= 0.5) & (mask == 0)
    assert kept.sum() and dropped.sum()  # some specks were dropped, and they became background, not nodata
    assert json.loads((out / "prediction.json").read_text())["dropped_specks"] > 0


def test_area_window(study):
    scene: Scene = study["scene"]
    out = study["root"] / "pred_area"
    result = predict(study["bundle"], out, scene=scene.path, area="test_a", tile=96, overlap=32,
                     evaluate=True)
    mask, mp, _ = read(out / "mask.tif")
    # test_a is the pixel box cols 90-160, rows 0-75 of the 160 px scene (TINY_AREAS scaled)
    assert mask.shape == (75, 70)
    assert mp["transform"] == scene.transform @ Affine.translation(90, 0)
    assert (mask[70:75] == 255).all() and (mask[:70] != 255).all()
    meta = json.loads((out / "prediction.json").read_text())
    assert meta["area"] == "test_a" and meta["window"] == {"col_off": 90, "row_off": 0, "width": 70,
                                                           "height": 75}
    assert "test_a" in result.evaluation.table and (out / "metrics.json").exists()  # evaluated in the folder


def test_labels_kept_on_disk_give_the_same_outputs(study, monkeypatch):
    """A region too large for the in-memory labels streams them through a temporary GeoTIFF: same bytes."""
    import slidemap.stages.predict as mod

    a, b = study["root"] / "labels_memory", study["root"] / "labels_disk"
    predict(study["bundle"], a, scene=study["scene"].path, tile=96, overlap=32, min_area=300.0)
    monkeypatch.setattr(mod, "LABELS_IN_MEMORY", 0)
    seen = []
    real_open = mod.rasterio.open
    monkeypatch.setattr(mod.rasterio, "open", lambda path, *args, **kw: seen.append(Path(path).name)
                        or real_open(path, *args, **kw))
    predict(study["bundle"], b, scene=study["scene"].path, tile=96, overlap=32, min_area=300.0)
    assert seen.count(".labels.tif") == 2  # written, then read back
    for name in ("mask.tif", "probability.tif", "landslides.gpkg"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())  # no .labels.tif left


def test_bare_images_equal_the_prepared_scene(study):
    r = study["rasters"]
    a, b = study["root"] / "from_scene", study["root"] / "from_images"
    predict(study["bundle"], a, scene=study["scene"].path, tile=96, overlap=32, as_float=True)
    res = predict(study["bundle"], b, images=[r.image], dem=r.dem, tile=96, overlap=32, as_float=True)
    pa, pb = read(a / "probability.tif")[0], read(b / "probability.tif")[0]
    np.testing.assert_array_equal(np.isnan(pa), np.isnan(pb))
    np.testing.assert_allclose(pa, pb, atol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(read(a / "mask.tif")[0], read(b / "mask.tif")[0])
    meta = json.loads((b / "prediction.json").read_text())
    assert meta["scene"] is None and meta["images"] == [str(r.image.resolve())]
    assert res.meta.landslides > 0 and not (b / ".scene").exists()


def test_interrupted_predict_leaves_no_output(study, monkeypatch):
    import slidemap.stages.predict as mod

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mod, "build_overviews", boom)  # the very last step
    parent = study["root"] / "interrupted"
    parent.mkdir()
    with pytest.raises(KeyboardInterrupt):
        predict(study["bundle"], parent / "pred", scene=study["scene"].path, tile=96, overlap=32)
    assert list(parent.iterdir()) == []


def test_a_predict_that_fails_in_its_reader_leaves_no_output(study, monkeypatch):
    """A read that fails in the helper thread surfaces in the caller, and the folder is left as it was."""
    import slidemap.stages.predict as mod

    def unreadable(*args, **kwargs):
        raise OSError("simulated read error")

    monkeypatch.setattr(mod, "read_block", unreadable)
    parent = study["root"] / "unreadable"
    parent.mkdir()
    with pytest.raises(OSError, match="simulated read error"):
        predict(study["bundle"], parent / "pred", scene=study["scene"].path, tile=96, overlap=32)
    assert list(parent.iterdir()) == []
    monkeypatch.undo()
    predict(study["bundle"], parent / "pred", scene=study["scene"].path, tile=96, overlap=32)
    assert (parent / "pred" / "mask.tif").is_file()
    assert not [t for t in threading.enumerate() if t.name.startswith("slidemap-")]  # none left running


def test_band_mismatch_names_missing_and_extra_bands(study, tmp_path):
    net = build_model("unet", in_channels=3, filters=4)
    bundle = save_bundle(tmp_path / "b.pt", net, bundle_meta(["red", "nir", "swir"], net)).path
    with pytest.raises(UserError) as e:
        predict(bundle, tmp_path / "pred", scene=study["scene"].path)
    msg = str(e.value)
    assert "swir" in msg and "blue, green, dem, slope" in msg and "\n" not in msg
    assert not (tmp_path / "pred").exists()
    with pytest.raises(UserError, match="images hold 4 band"):
        predict(bundle, tmp_path / "pred", images=[study["rasters"].image])


def test_bad_input_is_one_line(study, tmp_path, capsys):
    scene = str(study["scene"].path)
    with pytest.raises(UserError, match="--area nowhere: .*areas are: train, test_a, test_b"):
        predict(study["bundle"], tmp_path / "p", scene=scene, area="nowhere")
    with pytest.raises(UserError, match="--threshold"):
        predict(study["bundle"], tmp_path / "p", scene=scene, threshold="1.5")
    (tmp_path / "corrupt.pt").write_bytes(b"not a bundle")
    with pytest.raises(UserError, match="corrupt.pt"):
        predict(tmp_path / "corrupt.pt", tmp_path / "p", scene=scene)
    no_crs = tmp_path / "nocrs.tif"
    with rasterio.open(no_crs, "w", driver="GTiff", width=8, height=8, count=4, dtype="uint16") as ds:
        ds.write(np.ones((4, 8, 8), np.uint16))
    with pytest.raises(UserError, match="has no CRS"):
        predict(study["bundle"], tmp_path / "p", images=[no_crs], dem=study["rasters"].dem)
    assert not (tmp_path / "p").exists()
    args = ["predict", str(tmp_path / "missing.pt"), "--scene", scene, "--out", str(tmp_path / "p")]
    assert main(args) == 2
    assert capsys.readouterr().err.startswith("error: MODEL")


def test_many_scenes_are_predicted_merged_and_resumed(study, tmp_path, capsys):
    """``predict MODEL --scenes LIST``: a folder per entry (a prepared scene, bare images), one merged GeoPackage
    of their landslides, a failing entry recorded without stopping the others, and a rerun that redoes nothing."""
    import geopandas as gpd

    r, scene = study["rasters"], study["scene"]
    one_band = tmp_path / "one_band.tif"
    with rasterio.open(r.image) as src:
        profile = {**src.profile, "count": 1}
        with rasterio.open(one_band, "w", **profile) as dst:
            dst.write(src.read(1), 1)
    listing = tmp_path / "scenes.txt"
    listing.write_text(f"# a region's scenes\n{scene.path}\n{r.image}   # bare image, with --dem\n{one_band}\n")
    out = tmp_path / "batch"
    argv = ["predict", str(study["bundle"]), "--scenes", str(listing), "--out", str(out), "--dem", str(r.dem),
            "--tile", "96", "--overlap", "32", "--engine", "torch"]
    assert main(argv) == 1  # one entry failed
    captured = capsys.readouterr()
    assert f"scene {Path(scene.path).name}: done" in captured.err and f"scene {r.image.stem}: done" in captured.err
    assert "scene one_band: FAILED: --image: the images hold 1 band(s)" in captured.err
    assert "2 scenes done, 1 failed" in captured.out
    names = [Path(scene.path).name, r.image.stem]
    metas = [json.loads((out / n / "prediction.json").read_text()) for n in names]
    assert [(m["engine"], m["engine_choice"]["how"]) for m in metas] == [("torch", "rule")] * 2
    assert not (out / "one_band").exists()
    np.testing.assert_array_equal(read(out / names[0] / "mask.tif")[0], read(out / names[1] / "mask.tif")[0])
    merged = gpd.read_file(out / "landslides.gpkg")
    assert merged.crs == scene.crs and sorted(set(merged["scene"])) == sorted(names)
    assert [int((merged["scene"] == n).sum()) for n in names] == [m["landslides"] for m in metas]
    assert metas[0]["landslides"] > 0
    stamps = [(out / n / "mask.tif").stat().st_mtime_ns for n in names]
    listing.write_text(f"{scene.path}\n{r.image}\n")  # the failing entry dropped: the rest is done already
    assert main(argv) == 0
    assert [(out / n / "mask.tif").stat().st_mtime_ns for n in names] == stamps
    assert "2 scenes done, 0 failed" in capsys.readouterr().out
    for extra in (["--area", "test"], ["--evaluate"]):
        line = cli_error(capsys, [*argv, *extra])
        assert line == f"error: --scenes: {extra[0]} applies to one scene; predict that scene on its own"


def test_scenes_in_two_utm_zones_merge_in_wgs84(study, tmp_path, capsys):
    """Sentinel-2 tiles of one region can lie in two UTM zones: their landslides are merged in WGS 84."""
    import geopandas as gpd
    from rasterio.warp import calculate_default_transform, reproject

    r, scene = study["rasters"], study["scene"]
    east = tmp_path / "east_zone.tif"
    with rasterio.open(r.image) as src:
        transform, width, height = calculate_default_transform(src.crs, "EPSG:32634", src.width, src.height,
                                                               *src.bounds)
        with rasterio.open(east, "w", **{**src.profile, "crs": "EPSG:32634", "transform": transform,
                                         "width": width, "height": height}) as dst:
            for b in range(1, src.count + 1):
                reproject(rasterio.band(src, b), rasterio.band(dst, b))
    listing = tmp_path / "scenes.txt"
    listing.write_text(f"{scene.path}\n{east}\n")
    out = tmp_path / "batch"
    assert main(["predict", str(study["bundle"]), "--scenes", str(listing), "--out", str(out), "--dem",
                 str(r.dem), "--tile", "96", "--overlap", "32", "--engine", "torch"]) == 0
    capsys.readouterr()
    merged = gpd.read_file(out / "landslides.gpkg")
    assert merged.crs.to_epsg() == 4326
    own = gpd.read_file(out / Path(scene.path).name / "landslides.gpkg")
    assert own.crs == scene.crs and len(own) > 0
    mine = merged[merged["scene"] == Path(scene.path).name]
    assert len(mine) == len(own) and int((merged["scene"] == "east_zone").sum()) > 0
    np.testing.assert_allclose(mine.to_crs(own.crs).geometry.area.to_numpy(), own.geometry.area.to_numpy(),
                               rtol=1e-6)


def test_cli_predict(study, capsys):
    out = study["root"] / "pred_cli"
    code = main(["predict", str(study["bundle"]), "--scene", str(study["scene"].path), "--out", str(out),
                 "--tile", "96", "--overlap", "32", "--min-area", "500"])
    assert code == 0
    printed = capsys.readouterr().out
    # the CLI now prints "  mask.tif  PATH" and "... km² of ... km² valid" (was "mask: PATH", "landslide_km2")
    assert any(line.split() == ["mask.tif", str(out / "mask.tif")] for line in printed.splitlines())
    assert f"prediction {out}: " in printed and " km² of " in printed


def test_cli_errors_are_one_line(study, tmp_path, capsys):
    """The real CLI: a missing model, a wrong --tile, two inputs, a corrupt model are one ``error:`` line
    naming the option or file, exit status 2, and nothing is written."""
    scene, bundle, out = str(study["scene"].path), str(study["bundle"]), str(tmp_path / "p")
    line = cli_error(capsys, ["predict", str(tmp_path / "missing.pt"), "--scene", scene, "--out", out])
    assert line.startswith(f"error: MODEL {tmp_path / 'missing.pt'}: no such file")
    line = cli_error(capsys, ["predict", bundle, "--scene", scene, "--out", out, "--tile", "100"])
    assert line.startswith("error: --tile 100: must be a multiple of 16")
    line = cli_error(capsys, ["predict", bundle, "--scene", scene, "--out", out, "--tile", "256",
                              "--overlap", "50"])
    assert line.startswith("error: --overlap 50:")
    line = cli_error(capsys, ["predict", bundle, "--scene", scene, "--chips", str(tmp_path), "--out", out])
    assert "--scene" in line and "--chips" in line and "exactly one input" in line
    line = cli_error(capsys, ["predict", bundle, "--out", out])
    assert "exactly one input" in line
    line = cli_error(capsys, ["predict", bundle, "--scene", scene, "--out", out, "--batch-size", "0"])
    assert line.startswith("error: --batch-size 0: must be greater than or equal to 1")
    line = cli_error(capsys, ["predict", bundle, "--scene", scene, "--out", out, "--precision", "fp8"])
    assert line.startswith("error: --precision fp8:")
    (tmp_path / "corrupt.pt").write_bytes(b"not a bundle")
    line = cli_error(capsys, ["predict", str(tmp_path / "corrupt.pt"), "--scene", scene, "--out", out])
    assert line.startswith(f"error: MODEL {tmp_path / 'corrupt.pt'}: ")
    line = cli_error(capsys, ["predict", bundle, "--scene", str(tmp_path / "nowhere"), "--out", out])
    assert line.startswith(f"error: --scene {tmp_path / 'nowhere'}: no such scene folder")
    assert not (tmp_path / "p").exists()
    # --out never replaces an input nor a folder of the user's
    before = sorted(p.name for p in study["scene"].path.iterdir())
    line = cli_error(capsys, ["predict", bundle, "--scene", scene, "--out", scene, "--tile", "96",
                              "--overlap", "32"])
    assert line.startswith(f"error: --out {scene}: is an input of this command")
    assert sorted(p.name for p in study["scene"].path.iterdir()) == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    line = cli_error(capsys, ["predict", bundle, "--scene", scene, "--out", str(tmp_path / "mine"),
                              "--tile", "96", "--overlap", "32"])
    assert line.startswith(f"error: --out {tmp_path / 'mine'}: is a folder with other content (notes.txt)")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    line = cli_error(capsys, ["predict", bundle, "--scene", scene, "--out", out, "--engine", "auto"])
    assert line.startswith("error: --engine auto: use torch, onnx or onnx-int8")


@pytest.mark.parametrize("engine", ["torch", "onnx", "onnx-int8"])
def test_out_is_checked_before_any_work_and_the_model_folder_stays_as_it_was(study, tmp_path, capsys, engine):
    """A refused --out adds nothing anywhere (no engines beside the bundle); a read-only run folder predicts."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(study["bundle"], run / "bundle.pt")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    line = cli_error(capsys, ["predict", str(run), "--scene", str(study["scene"].path), "--out", str(mine),
                              "--engine", engine, "--tile", "96", "--overlap", "32"])
    assert line.startswith(f"error: --out {mine}: is a folder with other content (notes.txt)")
    assert sorted(p.name for p in run.iterdir()) == ["bundle.pt"] and sorted(os.listdir(mine)) == ["notes.txt"]
    if engine != "torch":
        return
    run.chmod(0o555)
    try:
        result = predict(run, tmp_path / "pred", scene=study["scene"].path, tile=96, overlap=32)
    finally:
        run.chmod(0o755)
    assert result.meta.landslides > 0 and sorted(p.name for p in run.iterdir()) == ["bundle.pt"]


def test_vectorised_polygon_pieces_equal_shape_by_shape():
    """The bulk shapely construction gives exactly the geometries of one ``shape()`` per polygon."""
    from rasterio import features
    from shapely.geometry import shape

    from slidemap.raster.polygons import polygon_pieces

    ids = np.zeros((40, 50), dtype=np.int32)
    ids[2:20, 3:30] = 7
    ids[6:10, 8:12] = 0  # a hole
    ids[12:14, 20:22] = 0  # a second hole
    ids[25:39, 5:9] = 3
    ids[30:33, 40:49] = 3  # the same id, apart
    got = polygon_pieces(ids, row_offset=100)
    want = [(int(v), shape(g)) for g, v in features.shapes(
        ids, mask=ids > 0, connectivity=4, transform=Affine.translation(0, 100))]
    assert [i for i, _ in got] == [i for i, _ in want] == [7, 3, 3]
    assert [g.wkb for _, g in got] == [g.wkb for _, g in want]
    assert len(got[0][1].interiors) == 2
    assert polygon_pieces(np.zeros((4, 4), np.int32)) == []


def test_precision_auto_without_a_measurement_is_fp32_and_bf16_close_to_fp32():
    torch.manual_seed(2)
    x = random_scene((3, 96, 128), seed=2)
    net = lively(build_model("unet", in_channels=3, filters=4), x)
    # "auto" is the device module's rule, the same for every runner on this machine
    assert TileRunner(net, "cpu", "auto").precision == resolve_precision("auto", "cpu") in ("32", "bf16")
    assert TileRunner(net, "cpu", "32").precision == "32"
    assert TileRunner(net, "cpu", "bf16").precision == "bf16"
    p32 = predict_array(TileRunner(net, "cpu", "32"), x, tile=128, overlap=32)
    p16 = predict_array(TileRunner(net, "cpu", "bf16"), x, tile=128, overlap=32)
    # bf16 keeps ~3 significant digits; `lively` scales a tiny logit range up to ±3, amplifying them
    # (measured: mean 0.011, max 0.063); on the demo's trained U-Net, test F1 moved by 2e-4 at most.
    diff = np.abs(p16 - p32)
    assert 0.2 < p32.std() and diff.mean() < 0.02 and diff.max() < 0.15 and diff.max() > 0
    with pytest.raises(UserError, match="--precision 16"):
        TileRunner(net, "cpu", "16")


@pytest.mark.parametrize(("width", "height", "factors"), [(160, 160, []), (256, 100, []), (600, 300, [2, 4]),
                                                          (10_000, 10_000, [2, 4, 8, 16, 32, 64])])
def test_overviews_halve_until_a_block(tmp_path, width, height, factors):
    """Levels as gdaladdo's -minsize 256 picks them; the smallest overview fits one block."""
    from rasterio.enums import Resampling

    from slidemap.formats.gdal import build_overviews, gtiff_profile, overview_factors

    assert overview_factors(width, height) == factors
    if width * height > 1_000_000:
        return
    path = tmp_path / "r.tif"
    profile = gtiff_profile(width, height, 1, "uint8", rasterio.crs.CRS.from_epsg(32633),
                            rasterio.Affine(10, 0, 500_000, 0, -10, 5_000_000))
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(np.arange(width * height, dtype=np.uint32).reshape(1, height, width).astype(np.uint8))
    build_overviews(path, Resampling.nearest)
    with rasterio.open(path) as ds:
        assert ds.overviews(1) == factors
        assert not factors or max(ds.width, ds.height) // factors[-1] <= 256


def test_a_runner_built_once_serves_several_predictions_as_its_own_would(study, tmp_path):
    """The experiment runner may build one runner for a run's test areas and pass it to each prediction."""
    from slidemap.nn.bundle import load_bundle
    from slidemap.stages.runners import build_runner

    bundle = load_bundle(study["bundle"])
    runner, choice = build_runner(bundle, "cpu", "32", "torch")
    assert choice == {"engine": "torch", "precision": "32", "setting": "torch-fp32", "how": "given"}
    shared = [run(PredictOptions(model=bundle, out=tmp_path / f"shared_{area}", scene=study["scene"].path,
                                 area=area, tile=96, overlap=32, precision="32"), runner=runner)
              for area in ("test_a", "test_b")]
    own = predict(study["bundle"], tmp_path / "own", scene=study["scene"].path, area="test_b", tile=96,
                  overlap=32, precision="32")
    assert shared[1].meta.landslides == own.meta.landslides
    for name in ("mask.tif", "probability.tif", "landslides.gpkg"):
        assert (tmp_path / "shared_test_b" / name).read_bytes() == (tmp_path / "own" / name).read_bytes(), name


def test_a_saved_bundle_predicts_as_its_file(study, tmp_path):
    """What train gives the experiment runner: the bundle as written, weights in memory; it pickles to a
    worker, and its predictions are the file's, byte for byte."""
    import pickle

    from slidemap.nn.bundle import load_bundle, save_bundle

    loaded = load_bundle(study["bundle"])
    saved = save_bundle(tmp_path / "bundle.pt", loaded.build_model(), loaded.meta)
    assert saved.path == tmp_path / "bundle.pt"
    travelled = pickle.loads(pickle.dumps(saved))
    assert all(torch.equal(travelled.state_dict[k], v) for k, v in loaded.state_dict.items())
    a, b = tmp_path / "in_memory", tmp_path / "from_file"
    predict(saved, a, scene=study["scene"].path, tile=96, overlap=32)
    predict(load_bundle(tmp_path / "bundle.pt"), b, scene=study["scene"].path, tile=96, overlap=32)
    for name in ("mask.tif", "probability.tif", "landslides.gpkg"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.parametrize("maps", ["png", "tif", "none"])
def test_an_area_scored_while_predicting_equals_evaluating_after(study, tmp_path, monkeypatch, maps):
    """``predict --evaluate --area`` scores the mask as it writes it: the same files and numbers as ``evaluate``
    run on the finished folder, without reading the mask back."""
    import slidemap.stages.predict as mod
    from slidemap.stages.evaluate import EvaluateOptions
    from slidemap.stages.evaluate import run as evaluate_run

    scene = study["scene"].path
    after = tmp_path / "after"
    predict(study["bundle"], after, scene=scene, area="test_a", tile=96, overlap=32)
    separate = evaluate_run(EvaluateOptions(pred=after, truth=scene, areas=["test_a"], maps=maps))
    monkeypatch.setattr(mod, "evaluate_run", lambda *a, **k: pytest.fail("evaluated after predicting"))
    folded = tmp_path / "folded"
    result = predict(study["bundle"], folded, scene=scene, area="test_a", tile=96, overlap=32, evaluate=True,
                     error_maps=maps)
    names = sorted(p.name for p in after.iterdir())
    assert names == sorted(p.name for p in folded.iterdir())
    assert ("error_map_test_a.png" in names) == (maps == "png")
    assert ("error_map_test_a.tif" in names) == (maps != "none")
    timing = ("seconds", "mpx_per_s", "timings_s")
    for name in names:
        a, b = (after / name).read_bytes(), (folded / name).read_bytes()
        if name == "prediction.json":  # the same but for the clocks
            a, b = ({k: v for k, v in json.loads(x).items() if k not in timing} for x in (a, b))
        else:
            a = a.replace(str(after).encode(), str(folded).encode())
        assert a == b, name
    assert result.evaluation.table == separate.table
    assert result.evaluation.metrics.areas[0].pixels["tp"] > 0


# --- test-time augmentation -------------------------------------------------------------------------------

def test_symmetry_average_is_invariant_under_the_square_group_and_exact_for_an_equivariant_network():
    from slidemap.nn.inference import SymmetryAverage

    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 16, 16), dtype=np.float32)
    pointwise = SymmetryAverage(lambda b: b[:, 0] * 2.0, 8)  # commutes with every symmetry
    assert np.allclose(pointwise(x), x[:, 0] * 2.0, atol=1e-6)
    ramp = np.arange(16, dtype=np.float32)[None, None, :] / 16  # a network that sees only the column
    lopsided = SymmetryAverage(lambda b: np.broadcast_to(ramp, (len(b), 16, 16)).copy(), 8)
    p = lopsided(x)
    for q in (np.flip(p, -1), np.flip(p, -2), np.rot90(p, 1, axes=(-2, -1)), np.swapaxes(p, -1, -2)):
        assert np.allclose(q, p, atol=1e-6)  # the mean over the group is invariant under it
    mirrored = SymmetryAverage(lambda b: np.broadcast_to(ramp, (len(b), 16, 16)).copy(), 2)(x)
    assert np.allclose(mirrored[0, 0], np.full(16, 15 / 32), atol=1e-6)  # ramp and its mirror average out
    with pytest.raises(ValueError, match="use 1, 2, 4 or 8"):
        SymmetryAverage(lambda b: b[:, 0], 3)


def test_predict_tta_averages_eight_views_and_records_them(study, tmp_path):
    plain = predict(study["bundle"], tmp_path / "plain", scene=study["scene"].path, tile=96, overlap=32,
                    precision="32")
    tta = predict(study["bundle"], tmp_path / "tta", scene=study["scene"].path, tile=96, overlap=32,
                  precision="32", tta=8)
    meta = json.loads((tmp_path / "tta" / "prediction.json").read_text())
    assert meta["engine_choice"]["tta"] == 8 and "tta" not in plain.meta.engine_choice
    with rasterio.open(tmp_path / "plain" / "probability.tif") as a, \
            rasterio.open(tmp_path / "tta" / "probability.tif") as b:
        pa, pb = a.read(1).astype(int), b.read(1).astype(int)
    assert pa.shape == pb.shape and (pa != pb).any()
    assert tta.meta.valid_km2 == plain.meta.valid_km2
    with pytest.raises(UserError, match="--tta 3: use 1, 2, 4 or 8"):
        predict(study["bundle"], tmp_path / "bad", scene=study["scene"].path, tta=3)
