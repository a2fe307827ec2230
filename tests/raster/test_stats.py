"""Streamed per-band statistics: the same as float64 numpy over the finite pixels, however they are streamed."""

from __future__ import annotations

import numpy as np

from slidemap.raster.stats import RunningStats


def bands_with_trouble() -> np.ndarray:
    """(5, 300, 200) float32: a DEM far from 0, reflectance, NaN and infinities, a constant band, no valid pixel."""
    rng = np.random.default_rng(0)
    x = np.empty((5, 300, 200), np.float32)
    x[0] = rng.normal(3000.0, 0.5, (300, 200))  # a large mean, a small spread: float32 cancellation
    x[1] = rng.gamma(2.0, 0.05, (300, 200))
    x[1, 10:20] = np.nan
    x[1, 50, :7] = np.inf
    x[1, 51, :3] = -np.inf
    x[2] = 0.1  # constant, and not a float32 number's float64 twin: the M2 correction must not go below 0
    x[3] = rng.normal(-40.0, 12.0, (300, 200))
    x[4] = np.nan
    return x


def test_add_finite_matches_float64_over_finite_pixels():
    x = bands_with_trouble()
    s = RunningStats(5)
    for r in range(0, 300, 64):  # strips, as a prediction reads them
        s.add_finite(x[:, r:r + 64])
    got = s.as_dict(list("abcde"))
    for i, band in enumerate("abcd"):
        v = x[i][np.isfinite(x[i])].astype(np.float64)
        assert got[band]["count"] == v.size
        assert abs(got[band]["mean"] - v.mean()) <= 1e-12 * abs(v.mean())
        assert abs(got[band]["std"] - v.std()) <= 1e-9 * max(v.std(), 1.0)
        assert (got[band]["min"], got[band]["max"]) == (v.min(), v.max())
    assert got["b"]["count"] == 300 * 200 - 10 * 200 - 10
    assert got["c"]["std"] == 0.0
    assert got["e"]["count"] == 0
