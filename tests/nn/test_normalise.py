"""The one standardisation: pooled statistics of several sites, per-scene statistics, the bundle's record of which."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from slidemap.errors import UserError
from slidemap.formats.bundle import BundleMeta
from slidemap.nn.bundle import load_bundle, save_bundle
from slidemap.nn.models import build_model
from slidemap.nn.normalise import Normaliser
from slidemap.raster.stats import RunningStats


def stats_of(x: np.ndarray, bands) -> dict:
    """``{band: {mean, std, count}}`` of (C, ...) pixels, NaN not counted, as prepare gathers them."""
    s = RunningStats(len(bands))
    s.add_finite(x)
    return s.as_dict(bands)


def test_pooled_statistics_are_those_of_the_sites_taken_together():
    rng = np.random.default_rng(0)
    a = rng.normal(100, 10, (2, 300))
    b = rng.normal((160, 5), (30, 2), (200, 2)).T
    parts = [Normaliser.from_stats(["x", "y"], stats_of(v, ["x", "y"]), "t", "redo") for v in (a, b)]
    pooled = Normaliser.pooled(parts, np.array([[300, 300], [200, 200]], float), "t", "redo")
    both = np.concatenate([a, b], axis=1)
    np.testing.assert_allclose(pooled.mean, both.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(pooled.std, both.std(axis=1), rtol=1e-5)


def test_per_scene_statistics_undo_a_gain_and_offset_and_ignore_nodata():
    rng = np.random.default_rng(1)
    x = rng.normal(800, 60, (3, 40, 40)).astype(np.float32)
    x[:, 5:8] = np.nan  # nodata rows: not counted, and 0 once standardised
    x[2] = 7.0  # a constant band: only centred
    y = x * np.float32(1.6) + np.asarray([50, 80, 0], np.float32)[:, None, None]
    bands = ["a", "b", "c"]
    nx = Normaliser.from_stats(bands, stats_of(x, bands), "x", "redo")
    ny = Normaliser.from_stats(bands, stats_of(y, bands), "y", "redo")
    assert nx.std[2] == ny.std[2] == 1.0
    sx, sy = nx(x.copy()), ny(y.copy())
    np.testing.assert_allclose(sx, sy, atol=2e-5)
    assert (sx[:, 5:8] == 0).all() and np.abs(sx[:2].mean(axis=(1, 2))).max() < 0.1
    # a band without a valid pixel has nothing to standardise with: one line naming where
    empty = np.full((1, 4, 4), np.nan, np.float32)
    with pytest.raises(UserError, match="region x: holds no normalisation statistics for band"):
        Normaliser.from_stats(["a"], stats_of(empty, ["a"]), "region x", "give a region with imagery")


def _meta(**fields) -> BundleMeta:
    return BundleMeta(architecture="unet", model_args={"filters": 4}, bands=["red", "nir"], patch_size=32,
                      stats={"red": {"mean": 1.0, "std": 2.0}, "nir": {"mean": 3.0, "std": 0.0}}, **fields)


def test_the_bundle_records_its_standardisation_and_old_bundles_read_as_training(tmp_path):
    net = build_model("unet", in_channels=2, filters=4)
    default = save_bundle(tmp_path / "training.pt", net, _meta())
    scene = save_bundle(tmp_path / "scene.pt", net, _meta(standardise="scene"))
    assert load_bundle(scene.path).meta.standardise == "scene"
    assert load_bundle(default.path).meta.standardise == "training"
    # the default is not written: such a bundle holds the bytes it held before the option, and an old one reads
    # as "training"
    raw = torch.load(default.path, weights_only=True)["meta_json"]
    assert "standardise" not in json.loads(raw)
    assert json.loads(torch.load(scene.path, weights_only=True)["meta_json"])["standardise"] == "scene"
    data = json.loads(raw)
    with pytest.raises(UserError, match="standardise"):
        BundleMeta.from_data({**data, "standardise": "per-tile"}, "MODEL m.pt")
    # the bundle's own normaliser stays the training one (what an export would bake in)
    np.testing.assert_array_equal(load_bundle(scene.path).normaliser().std, [2.0, 1.0])
