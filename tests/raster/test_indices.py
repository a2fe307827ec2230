"""Derived and pre-event layers (issue 15, point 3): spectral indices from bands found through the one alias
table, pre-event images on any grid co-registered onto the scene (``pre_*``), change layers (``d<index>``),
and prediction on bare images that derives whatever layers the model was trained with."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import make_rasters, write_raster
from scene_helpers import untrained_bundle

from slidemap.cli import main
from slidemap.errors import UserError
from slidemap.figures import true_colour
from slidemap.formats.chips import ChipSet
from slidemap.formats.scene import Recipe, Scene
from slidemap.nn.bundle import load_bundle
from slidemap.raster.bands import layer_kinds, rgb_band_indexes
from slidemap.raster.indices import compute_index, index_inputs
from slidemap.stages import sample, train
from slidemap.stages.predict import PredictOptions
from slidemap.stages.predict import run as predict
from slidemap.stages.prepare import PrepareOptions, PrepareWarning, run

CRS = "EPSG:32633"
TRANSFORM = Affine(10.0, 0, 500000.0, 0, -10.0, 5100000.0)
SIZE = 64


def ramp(transform: Affine, shape: tuple[int, int], base: np.ndarray, gain: float) -> np.ndarray:
    """(4, H, W) digital numbers, each band linear in x and y (bilinear warps reproduce it exactly)."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
    x, y = transform @ (cols, rows)
    x, y = (x - 500000.0) / 10, (5100000.0 - y) / 10  # scene pixels east / south of the origin
    return np.stack([b + gain * (3 * x + 2 * y) + 0 * x for b in base]).astype(np.float32)


@pytest.fixture
def post_pre(tmp_path):
    """A post-event image named with Sentinel-2 band names and a pre-event image on a 2x coarser grid
    shifted by half a scene pixel, both linear ramps."""
    post = ramp(TRANSFORM, (SIZE, SIZE), np.array([500.0, 700.0, 900.0, 3000.0]), 2.0)
    image = write_raster(tmp_path / "post.tif", post, CRS, TRANSFORM, nodata=-1.0,
                         descriptions=["B2", "B3", "B4", "B8"])
    pre_t = Affine(20.0, 0, 500000.0 - 25, 0, -20.0, 5100000.0 + 25)
    pre = ramp(pre_t, (SIZE // 2 + 4, SIZE // 2 + 4), np.array([400.0, 650.0, 600.0, 3500.0]), 1.0)
    pre_image = write_raster(tmp_path / "pre.tif", pre, CRS, pre_t, nodata=-1.0)
    return tmp_path, image, pre_image, post


def test_index_formulas_and_band_aliases():
    values = np.array([[[0.1]], [[0.2]], [[0.3]], [[0.5]], [[0.0]]], dtype=np.float32)
    for names in (["blue", "green", "red", "nir", "x"], ["B2", "B3", "B4", "B8", "x"],
                  ["B02", "B03", "B04", "B08", "x"], ["SR_B2", "SR_B3", "SR_B4", "SR_B5", "x"]):
        ndvi = compute_index("ndvi", values, index_inputs(names, "ndvi", "--indices", "test"))
        ndwi = compute_index("ndwi", values, index_inputs(names, "ndwi", "--indices", "test"))
        bright = compute_index("brightness", values, index_inputs(names, "brightness", "--indices", "test"))
        assert ndvi[0, 0] == pytest.approx(0.25) and ndwi[0, 0] == pytest.approx(-3 / 7)
        assert bright[0, 0] == pytest.approx(0.2)
    zero = np.zeros((2, 1, 1), dtype=np.float32)
    assert compute_index("ndvi", zero, [0, 1])[0, 0] == 0.0  # 0/0 is no vegetation, not nodata
    assert np.isnan(compute_index("ndvi", np.full((2, 1, 1), np.nan, np.float32), [0, 1])[0, 0])
    with pytest.raises(UserError, match=r"^--indices ndvi: needs band\(s\) nir \(nir/n/b8/b08…\) but test "
                                        r"has red, green, blue"):
        index_inputs(["red", "green", "blue"], "ndvi", "--indices", "test")
    assert rgb_band_indexes(["B2", "B3", "B4", "B8"]) == [2, 1, 0]  # the true-colour renderer's lookup
    rgba = true_colour(np.stack([np.full((2, 2), v, np.float32) for v in (1, 2, 3, 4)]) + np.eye(2),
                       ["B2", "B3", "B4", "B8"])
    assert rgba.shape == (2, 2, 4)
    kinds = layer_kinds(["B2", "nir", "ndvi", "pre_nir", "pre_B4", "dndvi", "dem", "slope", "dust"])
    assert kinds.image == ["B2", "nir", "dust"] and kinds.indices == ["ndvi"]
    assert kinds.pre == ["pre_nir", "pre_B4"] and kinds.change == ["dndvi"]
    assert kinds.terrain == ["dem", "slope"] and kinds.indices_to_compute == ["ndvi"]


def test_indices_pre_bands_and_change_layers(post_pre):
    tmp, image, pre_image, post = post_pre
    r = run(PrepareOptions(images=[image], out=tmp / "scene", indices=["ndvi", "ndwi", "brightness"],
                           pre_images=[pre_image], pre_band_names=["B2", "B3", "B4", "B8"], split="1:1"))
    assert r.meta.bands == ["B2", "B3", "B4", "B8", "ndvi", "ndwi", "brightness", "pre_B2", "pre_B3",
                            "pre_B4", "pre_B8", "dndvi", "dndwi", "dbrightness"]
    sc = Scene(r.path)
    stack = sc.read()
    interior = (slice(3, -3), slice(3, -3))
    red, green, blue, nir = post[2], post[1], post[0], post[3]
    assert np.allclose(stack[4], (nir - red) / (nir + red), atol=1e-6)
    assert np.allclose(stack[5], (green - nir) / (green + nir), atol=1e-6)
    assert np.allclose(stack[6], (red + green + blue) / 3, rtol=1e-6)
    # the pre-event image, co-registered bilinearly from its coarser shifted grid: the ramp at the
    # scene's own pixel centres
    expected_pre = ramp(TRANSFORM, (SIZE, SIZE), np.array([400.0, 650.0, 600.0, 3500.0]), 1.0)
    assert np.allclose(stack[7:11][(slice(None), *interior)], expected_pre[(slice(None), *interior)],
                       rtol=1e-5)
    pre_ndvi = (stack[10] - stack[9]) / (stack[10] + stack[9])
    assert np.allclose(stack[11], stack[4] - pre_ndvi, atol=1e-5)
    assert np.allclose(stack[13], stack[6] - stack[7:10].mean(axis=0), rtol=1e-4, atol=1e-3)
    recipe = r.meta.recipe
    assert recipe.indices == ["ndvi", "ndwi", "brightness"] and recipe.pre_bands == ["B2", "B3", "B4", "B8"]
    assert recipe.change == ["ndvi", "ndwi", "brightness"]
    assert {s.role: s.resampling for s in r.meta.sources}["pre_image"] == "bilinear"
    # only where both images hold data: the pre-event grid misses nothing here, stats count every pixel
    assert r.meta.stats["dndvi"].count == r.meta.stats["B2"].count


def test_pre_event_names_default_and_change_subset(post_pre):
    tmp, image, pre_image, _ = post_pre
    r = run(PrepareOptions(images=[image], out=tmp / "a", indices=["ndvi", "brightness"], change=["ndvi"],
                           pre_images=[pre_image], split="1:1"))
    # the pre-event file has no band descriptions: its bands take the image band names
    assert r.meta.bands == ["B2", "B3", "B4", "B8", "ndvi", "brightness", "pre_B2", "pre_B3", "pre_B4",
                            "pre_B8", "dndvi"]
    with pytest.warns(PrepareWarning, match=r"--pre-image: no change layer is made"):
        r = run(PrepareOptions(images=[image], out=tmp / "b", pre_images=[pre_image], split="1:1"))
    assert r.meta.bands[-4:] == ["pre_B2", "pre_B3", "pre_B4", "pre_B8"]


def test_bad_index_and_pre_image_options_are_one_line_errors(post_pre):
    tmp, image, pre_image, post = post_pre
    three = write_raster(tmp / "three.tif", post[:3], CRS, TRANSFORM, nodata=-1.0,
                         descriptions=["blue", "green", "red"])
    far = write_raster(tmp / "far.tif", post, CRS, TRANSFORM * Affine.translation(1000, 0), nodata=-1.0)
    cases = [
        (dict(images=[three], indices=["ndvi"]), r"^--indices ndvi: needs band\(s\) nir .* but --image "
                                                 r"\(three.tif\) has blue, green, red"),
        (dict(images=[image], indices=["evi"]), r"^--indices evi: unknown index evi; choose from "
                                                r"ndvi,ndwi,brightness,nbr"),
        (dict(images=[image], indices=["ndvi"], pre_images=[three]),
         r"^--indices ndvi: needs band\(s\) nir .* but --pre-image \(three.tif\)"),
        (dict(images=[image], indices=["ndvi"], change=["ndwi"], pre_images=[pre_image]),
         r"^--change ndwi: ndwi is not among --indices; a change layer needs its index$"),
        (dict(images=[image], indices=["ndvi"], change=["ndvi"]), r"^--change ndvi: goes with --pre-image"),
        (dict(images=[image], pre_band_names=["a"]), r"^--pre-band-names a: goes with --pre-image"),
        (dict(images=[image], pre_images=[pre_image], pre_band_names=["a", "b"]),
         r"^--pre-band-names: 2 names for 4 pre-event bands \(pre.tif: 4\)"),
        (dict(images=[image], pre_images=[far]), r"^--pre-image .*far.tif: the pre-event image does not "
                                                 r"overlap"),
        (dict(images=[image], band_names=["blue", "green", "ndvi", "nir"]), r"^--band-names: names must be "
                                                                            r".*\(clash: ndvi\)"),
        (dict(images=[image], band_names=["blue", "green", "pre_red", "nir"]), r"\(clash: pre_red\)"),
    ]
    for options, message in cases:
        with pytest.raises(UserError, match=message) as err:
            run(PrepareOptions(out=tmp / "bad", split="1:1", **options))
        assert "\n" not in str(err.value), str(err.value)
        assert not (tmp / "bad").exists()


def test_cli_indices_and_pre_image(post_pre, capsys):
    tmp, image, pre_image, _ = post_pre
    assert main(["prepare", "--image", str(image), "--pre-image", str(pre_image), "--indices", "ndvi, ndwi",
                 "--split", "1:1", "--out", str(tmp / "cli")]) == 0
    out = capsys.readouterr().out
    assert ("bands B2, B3, B4, B8, ndvi, ndwi, pre_B2, pre_B3, pre_B4, pre_B8, dndvi, dndwi "
            "(pixels 10 x 10 m)") in out
    assert main(["prepare", "--image", str(image), "--indices", "ndvi,evi", "--split", "1:1", "--out",
                 str(tmp / "cli2")]) == 2
    assert capsys.readouterr().err.strip() == ("error: --indices ndvi,evi: unknown index evi; choose from "
                                               "ndvi,ndwi,brightness,nbr")


def test_predict_bare_images_derives_indices_and_change_layers(post_pre, capsys):
    """A model using ndvi, dndvi and a pre-event band predicts bare images exactly as the prepared scene;
    without the pre-event image it says in one line what is missing."""
    tmp, image, pre_image, _ = post_pre
    scene = run(PrepareOptions(images=[image], out=tmp / "scene", indices=["ndvi", "brightness"],
                               pre_images=[pre_image], split="1:1")).path
    bands = ["B4", "B8", "ndvi", "pre_B8", "dndvi"]
    bundle = untrained_bundle(tmp / "b.pt", bands, Scene(scene).meta.recipe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predict(PredictOptions(model=bundle, out=tmp / "from_scene", scene=scene, tile=64, overlap=16))
        res = predict(PredictOptions(model=bundle, out=tmp / "from_images", images=[image],
                                     pre_images=[pre_image], tile=64, overlap=16))
    with rasterio.open(tmp / "from_scene" / "probability.tif") as a, \
            rasterio.open(tmp / "from_images" / "probability.tif") as b:
        assert np.array_equal(a.read(), b.read())
    assert res.meta.pre_images == [str(pre_image.resolve())]
    assert main(["predict", str(bundle), "--image", str(image), "--out", str(tmp / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --pre-image: model {bundle.resolve()} uses pre-event layer(s) pre_B8, dndvi; "
                   f"give the pre-event image(s) it was trained with")
    # a bundle without a recipe (older) still derives the layers from its band names
    plain = untrained_bundle(tmp / "plain.pt", ["B2", "B3", "B4", "B8", "ndvi", "pre_B8", "dndvi"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = predict(PredictOptions(model=plain, out=tmp / "plain", images=[image], pre_images=[pre_image],
                                     tile=64, overlap=16))
    assert res.meta.landslides >= 0
    with pytest.raises(UserError, match=r"--pre-image goes with --image"):
        PredictOptions(model=plain, out=tmp / "x", scene=scene, pre_images=[pre_image])


def test_recipe_travels_through_chips_into_the_bundle(tmp_path):
    r = make_rasters(tmp_path / "in", size=128)
    scene = run(PrepareOptions(images=[r.image], dem=r.dem, inventory=r.inventory, areas=r.areas,
                               indices=["ndvi"], out=tmp_path / "scene")).path
    chips = sample.run(sample.SampleOptions(scene=scene, out=tmp_path / "chips", size=32)).path
    assert ChipSet(chips).meta.recipe == Recipe(image_bands=list(r.bands), terrain=["dem", "slope"],
                                                indices=["ndvi"])
    result = train.run(train.TrainOptions(chips=[chips], out=tmp_path / "run", filters=2, epochs=1,
                                          batch_size=4, progress=False, min_chips=1,
                                          bands=["red", "nir", "ndvi", "slope"]))
    bundle = load_bundle(result.bundle)
    assert bundle.meta.recipe == ChipSet(chips).meta.recipe
    assert bundle.bands == ["red", "nir", "ndvi", "slope"]
