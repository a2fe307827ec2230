"""``standardise: scene``: each chip set trained on, and each input predicted, standardised with its own statistics.

The point of the option: a scene whose image bands went through another sensor's gain and offset gives the same
probabilities as the original scene (within the uint8 step 1/254), where a model standardising with its training
statistics sees other values. The scenes are tiny (``make_rasters``) and the network a seeded random U-Net made
lively on the scene (logits spread over ±3), so that any difference in its input shows in its probabilities.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import rasterio
import torch
import yaml
from conftest import make_rasters, write_raster

from slidemap.errors import UserError
from slidemap.formats.bundle import BundleMeta
from slidemap.formats.chips import ChipSet, write_chipset
from slidemap.formats.files import atomic_dir
from slidemap.formats.scene import Scene
from slidemap.nn.bundle import load_bundle, save_bundle
from slidemap.nn.models import build_model
from slidemap.nn.normalise import Normaliser
from slidemap.nn.task import load_chip_tensors
from slidemap.raster.shift import InputStats
from slidemap.stages import predict, prepare, sample, train
from slidemap.stages.maps import ShiftWarning, warn_shift
from slidemap.stages.standardise import training_normalisers

GAIN = 1.6
OFFSETS = (50.0, 80.0, 30.0, 120.0)  # per image band (blue, green, red, nir)


def gained(image, out, gain=GAIN, offsets=OFFSETS):
    """``image`` (uint16, nodata 0) through another sensor: ``gain * dn + offset`` per band, nodata kept."""
    with rasterio.open(image) as src:
        dn, profile, names = src.read().astype(np.float32), src.profile, src.descriptions
    valid = (dn != 0).all(axis=0)
    x = dn * np.float32(gain) + np.asarray(offsets, np.float32)[:, None, None]
    x[:, ~valid] = 0
    return write_raster(out, x, profile["crs"], profile["transform"], nodata=0, descriptions=list(names))


def lively_net(scene: Scene, seed: int = 0) -> torch.nn.Module:
    """A seeded 4-filter U-Net whose logits on ``scene`` (standardised by its stats) spread over about ±3."""
    torch.manual_seed(seed)
    net = build_model("unet", in_channels=len(scene.bands), filters=4)
    x = Normaliser.from_stats(scene.bands, scene.stats, "scene", "prepare it again")(scene.read())[None]
    with torch.no_grad():
        lo, hi = np.percentile(net(torch.from_numpy(x)).numpy(), [16, 84])
        net.head.weight.mul_(6.0 / max(hi - lo, 1e-6))
        net.head.bias.mul_(6.0 / max(hi - lo, 1e-6))
        net.head.bias.sub_(float(np.median(net(torch.from_numpy(x)).numpy())))
    return net.eval()


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    """One study area prepared twice: as imaged, and through a gain of 1.6 and offsets; bundles of both kinds."""
    root = tmp_path_factory.mktemp("standardise")
    r = make_rasters(root / "in", size=128, nodata_rows=(40, 44))
    other = gained(r.image, root / "in" / "gained.tif")
    scenes = {}
    for name, image in (("plain", r.image), ("gained", other)):
        scenes[name] = Scene(prepare.run(prepare.PrepareOptions(
            images=[image], out=root / name, dem=r.dem, inventory=r.inventory, areas=r.areas)).path)
    net = lively_net(scenes["plain"])
    bundles = {}
    for kind in ("training", "scene"):
        meta = BundleMeta(architecture="unet", model_args=net.config, bands=scenes["plain"].bands, patch_size=64,
                          stats=scenes["plain"].stats, thresholds={"0.5": 0.5, "best": 0.5}, standardise=kind)
        bundles[kind] = save_bundle(root / f"{kind}.pt", net, meta).path
    return {"root": root, "rasters": r, "images": {"plain": r.image, "gained": other}, "scenes": scenes,
            "bundles": bundles}


def probability(folder):
    with rasterio.open(folder / "probability.tif") as ds:
        return ds.read(1).astype(int)


def run_predict(sites, kind, name, out, **options):
    given = {"images": [sites["images"][name]], "dem": sites["rasters"].dem} if options.pop("bare", False) \
        else {"scene": sites["scenes"][name].path}
    return predict.run(predict.PredictOptions(model=sites["bundles"][kind], out=sites["root"] / out, tile=64,
                                              overlap=16, device="cpu", precision="32", **given, **options))


@pytest.mark.parametrize("area", [None, "test_a"])
def test_a_scene_model_gives_the_same_probabilities_through_another_gain_and_offset(sites, area):
    probs, metas = {}, {}
    for kind in ("training", "scene"):
        for name in ("plain", "gained"):
            result = run_predict(sites, kind, name, f"{kind}-{name}-{area}", area=area)
            probs[kind, name], metas[kind, name] = probability(result.path), result.meta
    plain, other = probs["scene", "plain"], probs["scene", "gained"]
    assert ((plain == 255) == (other == 255)).all() and (plain < 255).sum() > 1000
    valid = plain < 255
    assert np.abs(plain - other)[valid].max() <= 1  # within 1/254: the uint8 rounding
    drift = np.abs(probs["training", "plain"] - probs["training", "gained"])[valid]
    assert drift.mean() > 20  # the training statistics see other values: other probabilities
    assert not metas["scene", "gained"].shift_warnings
    for name in ("plain", "gained"):
        s = metas["scene", name].standardisation
        assert s is not None and (s.standardise, s.source) == ("scene", "region")
        t = metas["training", name].standardisation
        assert t is not None and (t.standardise, t.source) == ("training", "bundle")
        assert t.stats["red"]["mean"] == pytest.approx(sites["scenes"]["plain"].stats["red"].mean, rel=1e-6)


def test_the_shift_guard_is_quiet_for_a_scene_model(sites):
    # a level or scale far from the training one is what such a model absorbs, not a sign of a wrong input
    seen = InputStats(sites["scenes"]["plain"].bands)
    seen.add(np.full((1, len(seen.bands), 4, 4), 1e6, np.float32))
    with pytest.warns(ShiftWarning):
        assert warn_shift(load_bundle(sites["bundles"]["training"]), seen, "--scene x")
    assert warn_shift(load_bundle(sites["bundles"]["scene"]), seen, "--scene x") == []


def test_the_region_statistics_are_those_of_its_valid_pixels_inside_the_area(sites):
    scene = sites["scenes"]["gained"]
    result = run_predict(sites, "scene", "gained", "stats-area", area="test_a")
    stats = result.meta.standardisation.stats
    inside = scene.area_mask("test_a")
    x = scene.read()
    valid = inside & np.isfinite(x).all(axis=0)
    assert (~np.isfinite(x[:, inside])).any()  # the nodata rows cross the area: they must not count
    for i, band in enumerate(scene.bands):
        values = x[i][valid].astype(np.float64)
        assert stats[band]["mean"] == pytest.approx(values.mean(), rel=1e-6)
        assert stats[band]["std"] == pytest.approx(values.std(), rel=1e-5)
    saved = json.loads((result.path / "prediction.json").read_text())["standardisation"]
    assert saved["source"] == "region" and saved["stats"]["nir"]["mean"] == stats["nir"]["mean"]


def test_bare_images_take_the_statistics_prepare_measured_over_the_same_pixels(sites):
    whole = run_predict(sites, "scene", "gained", "whole")
    bare = run_predict(sites, "scene", "gained", "bare", bare=True)
    assert bare.meta.standardisation.source == "scene.json" and whole.meta.standardisation.source == "region"
    for band, s in whole.meta.standardisation.stats.items():
        assert bare.meta.standardisation.stats[band]["mean"] == pytest.approx(s["mean"], rel=1e-6)
    assert np.abs(probability(bare.path) - probability(whole.path)).max() <= 1
    plain = run_predict(sites, "scene", "plain", "bare-plain", bare=True)
    assert np.abs(probability(bare.path) - probability(plain.path))[probability(plain.path) < 255].max() <= 1


def h5_mask(path):
    with h5py.File(path) as f:
        return f["mask"][()]


def test_a_patch_set_is_standardised_with_its_own_statistics(sites):
    masks = {}
    for name in ("plain", "gained"):
        chips = sample.run(sample.SampleOptions(scene=sites["scenes"][name].path, out=sites["root"] / f"chips-{name}",
                                                method="grid", size=64, overlap=0.5)).path
        result = predict.run(predict.PredictOptions(model=sites["bundles"]["scene"], out=sites["root"] / f"p-{name}",
                                                    chips=chips, threshold="0.5", device="cpu", precision="32",
                                                    previews=0))
        s = result.meta.standardisation
        assert s is not None and s.source == "chips.json" and not result.meta.shift_warnings
        assert s.stats["red"]["mean"] == pytest.approx(ChipSet(chips).stats["red"].mean, rel=1e-6)
        masks[name] = [h5_mask(result.path / m) for m in result.meta.masks]
    differ = sum(int((a != b).sum()) for a, b in zip(masks["plain"], masks["gained"], strict=True))
    assert differ <= 4 and sum(int(m.sum()) for m in masks["plain"]) > 100


# --- training ----------------------------------------------------------------------------------------------

BANDS = ("red", "nir")


def chipset(folder, gain=1.0, offset=0.0, seed=0):
    """A 5x5 grid chip set of 32 px (25 % overlap) whose red band is brighter on landslides; NaN in one corner."""
    rng = np.random.default_rng(seed)
    extent, size, step = 128, 32, 24
    scene = rng.normal(0, 1, (len(BANDS), extent, extent)).astype(np.float32)
    yy, xx = np.mgrid[0:extent, 0:extent]
    mask = np.zeros((extent, extent), np.uint8)
    for _ in range(10):
        cy, cx, r = int(rng.integers(0, extent)), int(rng.integers(0, extent)), int(rng.integers(3, 8))
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1
    scene[0][mask == 1] += 2.5
    scene = (scene * np.float32(80) + 600) * np.float32(gain) + np.float32(offset)
    scene[:, :4, :4] = np.nan
    windows = [{"row": i * step, "col": j * step, "size": size, "area": "train"} for i in range(5) for j in range(5)]
    images = np.stack([scene[:, w["row"]:w["row"] + size, w["col"]:w["col"] + size] for w in windows])
    masks = np.stack([mask[w["row"]:w["row"] + size, w["col"]:w["col"] + size] for w in windows])
    stats = {b: {"mean": float(np.nanmean(scene[k])), "std": float(np.nanstd(scene[k])),
                 "count": int(np.isfinite(scene[k]).sum())} for k, b in enumerate(BANDS)}
    with atomic_dir(folder, "chips.json") as tmp:
        write_chipset(tmp, images, masks, windows, {"bands": list(BANDS), "stats": stats, "sampler": {}})
    return folder


def test_each_chip_set_is_standardised_with_its_own_statistics(tmp_path):
    plain = ChipSet(chipset(tmp_path / "plain"))
    other = ChipSet(chipset(tmp_path / "other", gain=GAIN, offset=40.0))
    pooled, per_set = training_normalisers([plain, other], list(BANDS), "training")
    assert all(p is pooled for p in per_set)
    _, per_set = training_normalisers([plain, other], list(BANDS), "scene")
    images, masks = load_chip_tensors([plain, other], BANDS, per_set)
    n = len(plain)
    np.testing.assert_allclose(images[:n].numpy(), images[n:].numpy(), atol=2e-5)  # the two sites look alike
    assert (masks[:n] == masks[n:]).all() and (masks[:n] == 255).any()
    base, _ = training_normalisers([plain, other], list(BANDS), "training")
    images, _ = load_chip_tensors([plain, other], BANDS, base)
    assert np.abs(images[:n].numpy() - images[n:].numpy()).mean() > 0.5  # pooled: the sites stay apart


def test_a_scene_run_records_it_and_a_default_run_writes_as_before(tmp_path):
    sets = [chipset(tmp_path / "a"), chipset(tmp_path / "b", gain=GAIN, offset=40.0, seed=1)]
    fast = dict(filters=4, batch_size=8, epochs=1, progress=False, min_chips=1, precision="32", device="cpu")
    runs = {kind: train.run(train.TrainOptions(chips=sets, out=tmp_path / kind, standardise=kind, **fast))
            for kind in ("training", "scene")}
    assert runs["scene"].model.meta.standardise == "scene"
    assert load_bundle(runs["scene"].bundle).meta.standardise == "scene"
    assert yaml.safe_load((tmp_path / "scene" / "config.yaml").read_text())["standardise"] == "scene"
    # the default is written as before the option: no key in config.yaml (a run resumes) nor in the bundle
    assert "standardise" not in yaml.safe_load((tmp_path / "training" / "config.yaml").read_text())
    raw = torch.load(runs["training"].bundle, weights_only=True)["meta_json"]
    assert "standardise" not in raw and load_bundle(runs["training"].bundle).meta.standardise == "training"
    # both record the pooled statistics (the domain-shift guard's reference, the photometric ratio)
    assert runs["scene"].model.meta.stats == runs["training"].model.meta.stats
    with pytest.raises(UserError, match="--resume: standardise"):
        train.run(train.TrainOptions(chips=sets, out=tmp_path / "scene", resume=True, **{**fast, "epochs": 2}))


def test_the_option_is_on_the_command_line(capsys):
    from slidemap.cli import main

    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--standardise" in text and "training" in text and "scene" in text
    assert main(["train", ".", "--out", "x", "--standardise", "sensor"]) == 2
    assert "'sensor' is not one of 'training', 'scene'" in capsys.readouterr().err
