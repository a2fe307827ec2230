"""The sensor: shading, cloud, path radiance, blur, noise and quantisation to digital numbers.

Topographic shading is under the sun of the acquisition; the blur is the sensor's PSF.

Two acquisitions share it: the post-event image on the image grid and, on request, a pre-event image
of the same ground before the landslides, under another sun, with other cloud and noise, on a coarser
and shifted grid.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from slidemap.sources.synth.grid import PRE_EVENT_ZOOM, SynthGrid, pre_event_grid
from slidemap.sources.synth.landcover import SPECTRA
from slidemap.sources.synth.terrain import smooth_noise

SUN_AZIMUTH_DEG, SUN_ELEVATION_DEG = 60.0, 55.0  # January (the event), mid-morning
PRE_SUN_AZIMUTH_DEG, PRE_SUN_ELEVATION_DEG = 35.0, 40.0  # the dry-season winter before: a lower sun
PATH_RADIANCE = (0.012, 0.007, 0.004, 0.002, 0.001)  # additive, strongest in blue


def _illumination(terrain: dict[str, np.ndarray], azimuth_deg: float = SUN_AZIMUTH_DEG,
                  elevation_deg: float = SUN_ELEVATION_DEG) -> np.ndarray:
    """Relative illumination: direct sun on the slope (cos of the incidence angle) plus sky light."""
    az, zen = np.radians(azimuth_deg), np.radians(90.0 - elevation_deg)
    gx, gy = terrain["dz_du"], -terrain["dz_dv"]  # dz/dx east, dz/dy north
    norm = np.sqrt(1.0 + gx ** 2 + gy ** 2)
    cos_i = (np.cos(zen) - np.sin(zen) * (gx * np.sin(az) + gy * np.cos(az))) / norm
    return np.clip(0.3 + 0.7 * np.maximum(cos_i, 0.0) / np.cos(zen), 0.25, 1.6).astype(np.float32)


def to_digital_numbers(rng: np.random.Generator, grid: SynthGrid, refl: np.ndarray,
                       terrain: dict[str, np.ndarray], nodata_stripe: bool, gain: float = 1.0,
                       sun_elevation_deg: float = SUN_ELEVATION_DEG) -> np.ndarray:
    """Shade the terrain (in place) under the sun at ``sun_elevation_deg``, then :func:`_acquire` on the image grid.

    The sensor's ``gain`` multiplies the digital numbers.
    """
    refl *= _illumination(terrain, SUN_AZIMUTH_DEG, sun_elevation_deg)[None]
    return _acquire(rng, refl, grid.pixel, nodata_stripe, gain)


def pre_event_digital_numbers(rng: np.random.Generator, grid: SynthGrid, refl: np.ndarray,
                              terrain: dict[str, np.ndarray]) -> np.ndarray:
    """The pre-event acquisition of reflectance ``refl`` (image grid, before the landslides).

    Shaded under the pre-event sun, averaged onto :func:`~slidemap.sources.synth.grid.pre_event_grid`, then cloud,
    blur, noise and quantisation of its own. No nodata stripe.
    """
    shaded = refl * _illumination(terrain, PRE_SUN_AZIMUTH_DEG, PRE_SUN_ELEVATION_DEG)[None]
    _, n = pre_event_grid(grid)
    # each pre-event pixel covers half of image pixel 2j, all of 2j + 1 and half of 2j + 2 per axis
    w = np.array([0.25, 0.5, 0.25], np.float32)
    coarse = ndimage.convolve1d(ndimage.convolve1d(shaded, w, axis=1), w, axis=2)[:, 1:2 * n:2, 1:2 * n:2]
    return _acquire(rng, np.ascontiguousarray(coarse), grid.pixel * PRE_EVENT_ZOOM, nodata_stripe=False)


def _acquire(rng: np.random.Generator, refl: np.ndarray, pixel: float, nodata_stripe: bool,
             gain: float = 1.0) -> np.ndarray:
    """Turn shaded reflectance (5, n, n) into digital numbers.

    Adds thin cloud and path radiance, blurs (sensor PSF), adds noise, quantises to uint16 DN (reflectance x
    10,000 x ``gain``, at least 1) and blanks the nodata stripe to 0.
    """
    n, p = refl.shape[1], pixel
    haze = np.clip(0.35 * (smooth_noise(rng, (n, n), 1200.0 / p) - 0.8), 0.0, 0.28)  # thin: ground shows
    haze *= 1.0 + 0.15 * smooth_noise(rng, (n, n), 60.0 / p)
    dn = np.empty((5, n, n), np.uint16)
    for b in range(5):
        band = (1.0 - haze) * refl[b] + haze * SPECTRA["haze"][b] + PATH_RADIANCE[b]
        band = ndimage.gaussian_filter(band, 0.5, truncate=3.0)
        band += rng.standard_normal((n, n), dtype=np.float32) * (0.0015 + 0.01 * band)
        dn[b] = np.clip(np.rint(band * (10_000.0 * gain)), 1, 65_535).astype(np.uint16)
    if nodata_stripe:
        rows, cols = np.mgrid[0:n, 0:n]
        offset = rows - 0.72 * n - 0.12 * (cols - n / 2)
        dn[:, (offset >= 0) & (offset < 0.035 * n)] = 0
    return dn
