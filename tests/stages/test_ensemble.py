"""Ensembles (several models averaged tile by tile) and the uncertainty map of their spread."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from conftest import cli_error
from test_predict import bundle_meta, lively, lively_scene, predict, scene_bundle

from slidemap.cli import main
from slidemap.errors import UserError
from slidemap.formats.bundle import BundleMeta
from slidemap.formats.scene import Recipe
from slidemap.nn.bundle import load_bundle, save_bundle
from slidemap.nn.inference import MemberAverage, SymmetryAverage, TileRunner, ViewSpread
from slidemap.nn.models import build_model
from slidemap.nn.normalise import Normaliser, match_bands
from slidemap.stages import sample, train

TILING = {"tile": 96, "overlap": 32, "precision": "32"}


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """A 160 px scene (nodata rows 70-75) and two lively U-Nets whose bundles standardise differently."""
    root = tmp_path_factory.mktemp("ensemble")
    scene, net, r = lively_scene(root, 160, nodata_rows=(70, 75), crop=128)
    a = scene_bundle(root / "a.pt", scene, net, thresholds={"0.5": 0.5, "best": 0.6})
    # member b: other weights, and statistics as if trained on a brighter, more varied chip set
    stats = {b: {"mean": s.mean + 0.5 * s.std, "std": 1.5 * s.std} for b, s in scene.stats.items()}
    torch.manual_seed(1)
    net_b = build_model("unet", in_channels=len(scene.bands), filters=4)
    lively(net_b, Normaliser.from_stats(scene.bands, stats, "b", "")(scene.read())[:, :128, :128])
    b = save_bundle(root / "b.pt", net_b, bundle_meta(scene.bands, net_b, stats=stats,
                                                      thresholds={"0.5": 0.5, "best": 0.4})).path
    return {"root": root, "scene": scene, "rasters": r, "a": a, "b": b}


def read(path):
    """Band 1, the profile, and (scales, offsets) of a GeoTIFF."""
    with rasterio.open(path) as ds:
        return ds.read(1), ds.profile, (ds.scales, ds.offsets)


def test_an_ensemble_is_the_mean_of_its_members_each_standardised_its_own_way(two, tmp_path):
    scene = two["scene"].path
    pa = predict(two["a"], tmp_path / "a", scene=scene, as_float=True, **TILING)
    pb = predict(two["b"], tmp_path / "b", scene=scene, as_float=True, **TILING)
    ens = predict([two["a"], two["b"]], tmp_path / "ab", scene=scene, as_float=True, **TILING)
    a, b, e = (read(tmp_path / n / "probability.tif")[0] for n in ("a", "b", "ab"))
    valid = np.isfinite(a)
    assert (np.isfinite(e) == valid).all() and (~valid[70:75]).all()
    assert np.abs(a - b)[valid].mean() > 0.05  # the members disagree: the test can tell a wrong normaliser
    # next to the nodata rows too: each member turns nodata into its own training mean
    assert np.abs(e - (a + b) / 2)[valid].max() < 1e-5
    # the threshold: the mean of the members' own (0.6 and 0.4); post-processing and bundle: the first's
    assert ens.meta.threshold.value == pytest.approx(0.5) and ens.meta.threshold.which == "best"
    mask = read(tmp_path / "ab" / "mask.tif")[0]
    assert ((mask == 1) == (valid & (e >= 0.5))).all()
    assert pa.meta.threshold.value == 0.6 and pb.meta.threshold.value == 0.4
    info = json.loads((tmp_path / "ab" / "prediction.json").read_text())
    assert info["ensemble"]["members"] == [str(two["a"].resolve()), str(two["b"].resolve())]
    assert info["ensemble"]["thresholds"] == [0.6, 0.4] and info["model"] == str(two["a"].resolve())
    assert info["engine_choice"]["members"] == 2 and info["uncertainty"]["views"] == 2
    # uint8 (the default): within one step of 1/254 of the members' mean
    predict([two["a"], two["b"]], tmp_path / "ab8", scene=scene, **TILING)
    e8 = read(tmp_path / "ab8" / "probability.tif")[0]
    assert np.abs(e8[valid] / 254 - ((a + b) / 2)[valid]).max() <= 0.5 / 254 + 1e-6
    # a given threshold is the ensemble's
    given = predict([two["a"], two["b"]], tmp_path / "given", scene=scene, threshold=0.3, **TILING)
    assert given.meta.threshold.value == pytest.approx(0.3)


def test_uncertainty_is_the_spread_of_the_views(two, tmp_path):
    scene = two["scene"].path
    predict([two["a"], two["b"]], tmp_path / "ab", scene=scene, as_float=True, **TILING)
    predict(two["a"], tmp_path / "a", scene=scene, as_float=True, **TILING)
    predict(two["b"], tmp_path / "b", scene=scene, as_float=True, **TILING)
    a, b = read(tmp_path / "a" / "probability.tif")[0], read(tmp_path / "b" / "probability.tif")[0]
    u, profile, (scales, offsets) = read(tmp_path / "ab" / "uncertainty.tif")
    valid = np.isfinite(a)
    assert profile["dtype"] == "uint8" and profile["nodata"] == 255 and profile["compress"] == "deflate"
    assert scales == (pytest.approx(1 / 254),) and offsets == (0.0,)
    assert (u[~valid] == 255).all() and u[valid].max() <= 127
    # two views: the standard deviation is half their difference (away from the blended tile overlaps exact)
    assert np.abs(u[valid] / 254 - (np.abs(a - b) / 2)[valid]).max() < 0.02
    assert (tmp_path / "ab" / "uncertainty.qml").is_file()
    info = json.loads((tmp_path / "ab" / "prediction.json").read_text())["uncertainty"]
    assert info["measure"] == "std" and (info["members"], info["symmetries"], info["views"]) == (2, 1, 2)


def test_the_same_model_twice_agrees_everywhere_and_equals_it_alone(two, tmp_path):
    scene = two["scene"].path
    predict(two["a"], tmp_path / "one", scene=scene, **TILING)
    predict([two["a"], two["a"]], tmp_path / "twice", scene=scene, **TILING)
    u, _, _ = read(tmp_path / "twice" / "uncertainty.tif")
    mask = read(tmp_path / "twice" / "mask.tif")[0]
    assert (u[mask != 255] == 0).all() and (u[mask == 255] == 255).all()
    for name in ("probability.tif", "mask.tif"):
        assert (read(tmp_path / "one" / name)[0] == read(tmp_path / "twice" / name)[0]).all(), name
    assert not (tmp_path / "one" / "uncertainty.tif").exists()  # one model, one view: nothing spreads
    # bare images, prepared on the fly as the members' scenes were
    r = two["rasters"]
    predict([two["a"], two["a"]], tmp_path / "bare", images=[r.image], dem=r.dem, **TILING)
    assert (read(tmp_path / "bare" / "mask.tif")[0] == mask).all()


def test_tta_composes_with_an_ensemble_and_alone_writes_its_spread(two, tmp_path):
    scene = two["scene"].path
    tta = predict(two["a"], tmp_path / "tta", scene=scene, tta=2, **TILING)
    assert tta.meta.uncertainty.views == 2 and (read(tmp_path / "tta" / "uncertainty.tif")[0] > 0).any()
    both = predict([two["a"], two["b"]], tmp_path / "both", scene=scene, tta=2, as_float=True, **TILING)
    assert both.meta.uncertainty.views == 4 and both.meta.engine_choice["tta"] == 2
    # each member's tta probability, averaged, is the ensemble's
    one = [predict(m, tmp_path / m.stem, scene=scene, tta=2, as_float=True, **TILING) for m in (two["a"], two["b"])]
    a, b = (read(r.path / "probability.tif")[0] for r in one)
    e = read(tmp_path / "both" / "probability.tif")[0]
    valid = np.isfinite(a)
    assert np.abs(e - (a + b) / 2)[valid].max() < 1e-5


def test_view_spread_of_identical_views_is_zero_and_wrappers_nest():
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 16, 16), dtype=np.float32)
    plain = lambda b: b[:, 0] / 2  # noqa: E731 - a network that sees one band
    unit = Normaliser(("a", "b", "c"), np.zeros(3, np.float32), np.ones(3, np.float32))
    shifted = Normaliser(("a", "b", "c"), np.full(3, 0.5, np.float32), np.full(3, 2.0, np.float32))
    out = ViewSpread(MemberAverage([plain, plain], [unit, unit]))(x)
    assert out.shape == (2, 2, 16, 16) and (out[:, 1] == 0).all() and np.allclose(out[:, 0], x[:, 0] / 2)
    mixed = ViewSpread(SymmetryAverage(MemberAverage([plain, plain], [unit, shifted]), 2))(x.copy())
    expected = (x[:, 0] / 2 + (x[:, 0] - 0.5) / 4) / 2
    assert np.allclose(mixed[:, 0], expected, atol=1e-6)
    assert np.allclose(mixed[:, 1], np.abs(x[:, 0] / 2 - (x[:, 0] - 0.5) / 4) / 2, atol=1e-6)
    nan = x.copy()
    nan[0, :, 3, 3] = np.nan  # nodata: each member's training mean, 0 after its standardisation
    assert MemberAverage([plain, plain], [unit, shifted])(nan)[0, 3, 3] == 0
    with pytest.raises(ValueError, match="at least two members"):
        MemberAverage([plain])


def test_members_that_take_another_input_are_one_line(two, tmp_path, capsys):
    a = load_bundle(two["a"])
    reordered = BundleMeta(**{**a.meta.model_dump(), "bands": [*a.bands[1:], a.bands[0]]})
    other = save_bundle(tmp_path / "reordered.pt", a.build_model(), reordered).path
    with pytest.raises(UserError, match=r"MODEL .*reordered\.pt: its bands .* differ from the first member's"):
        predict([two["a"], other], tmp_path / "out", scene=two["scene"].path, **TILING)
    line = cli_error(capsys, ["predict", str(two["a"]), str(other), "--scene", str(two["scene"].path),
                              "--out", str(tmp_path / "cli")])
    assert "reordered.pt" in line and "an ensemble's members must take the same input" in line
    bigger = save_bundle(tmp_path / "p128.pt", a.build_model(), BundleMeta(**{**a.meta.model_dump(),
                                                                            "patch_size": 128})).path
    with pytest.raises(UserError, match="patch size 128 px differs from the first member's 64 px"):
        predict([two["a"], bigger], tmp_path / "out", scene=two["scene"].path, **TILING)
    resampled = save_bundle(tmp_path / "r.pt", a.build_model(), BundleMeta(**{
        **a.meta.model_dump(), "recipe": Recipe(resolution_m=20.0)})).path
    with pytest.raises(UserError, match="recipe of preparation has resolution_m 20.0, the first member's None"):
        predict([two["a"], resampled], tmp_path / "out", scene=two["scene"].path, **TILING)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cli").exists()


def test_an_ensemble_of_two_trained_models_on_a_patch_set_and_from_the_cli(tiny_scene, tmp_path, capsys):
    """Two tiny models trained on the same chips with other seeds: the ensemble's patch masks are the mean of
    their probabilities thresholded, and the CLI takes the members as arguments."""
    chips = sample.run(sample.SampleOptions(scene=tiny_scene, out=tmp_path / "chips", method="grid", size=32,
                                            overlap=0.5)).path
    runs = [train.run(train.TrainOptions(chips=[chips], out=tmp_path / f"run{s}", model="unet", filters=4,
                                         batch_size=8, epochs=2, progress=False, seed=s, min_chips=1)).run
            for s in (0, 1)]
    out = tmp_path / "patches"
    result = predict(runs, out, chips=chips, precision="32", previews=0)
    assert result.meta.ensemble.members == [str((r / "bundle.pt").resolve()) for r in runs]
    import h5py

    from slidemap.formats.chips import ChipSet

    cs = ChipSet(chips)
    bundles = [load_bundle(r) for r in runs]
    raw = np.asarray(cs.images[:], dtype=np.float32)[:, match_bands(bundles[0].bands, cs.bands, "chips", "")]
    probs = [TileRunner(b.build_model(), "cpu", "32")(b.normaliser()(raw.copy())) for b in bundles]
    expected = (probs[0] + probs[1]) / 2 >= result.meta.threshold
    got = np.stack([h5py.File(out / name)["mask"][:] for name in result.meta.masks])
    assert (got == expected).mean() > 0.999  # float rounding may flip a pixel at the threshold
    assert main(["predict", str(runs[0]), str(runs[1]), "--scene", str(tiny_scene), "--out",
                 str(tmp_path / "cli"), "--precision", "32"]) == 0
    assert "prediction" in capsys.readouterr().out and (tmp_path / "cli" / "uncertainty.tif").is_file()
