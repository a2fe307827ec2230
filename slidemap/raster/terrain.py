"""Terrain layers from a DEM on the scene grid: slope, aspect and hillshade.

Pixel sizes are taken in true metres, per row: in a geographic CRS (degrees) a pixel's east-west size
shrinks with the cosine of latitude, so one constant would bias slopes of tall scenes. Derivatives use
Horn's 3x3 operator (the one GDAL and most GIS use): exact on a plane, and it smooths noise of DEMs that
were resampled from a coarser grid. A missing neighbour (scene edge, DEM nodata) turns a central
difference into a one-sided one, so valid terrain is not eroded by one pixel around every hole.
"""

from __future__ import annotations

import numpy as np

TERRAIN_LAYERS = ("dem", "slope", "aspect", "hillshade")

# Sun of the hillshade: the cartographic convention (light from the north-west, 45° above the horizon).
HILLSHADE_AZIMUTH_DEG = 315.0
HILLSHADE_ALTITUDE_DEG = 45.0


def gradient(dem: np.ndarray, dx_m: np.ndarray | float, dy_m: np.ndarray | float,
             ) -> tuple[np.ndarray, np.ndarray]:
    """Elevation gradient (dz/d_east, dz/d_north) in m/m by Horn's method.

    Each row's east-west difference uses that row's own pixel width; the three rows (and, for the
    north-south difference, the three columns) are then weighted 1:2:1. Where a neighbour is missing
    (scene edge, DEM hole) the difference becomes one-sided and missing rows/columns drop out of the
    weighting, so a plane stays exact right up to the edge.

    Args:
        dem: (H, W) elevations in metres, NaN where unknown; rows run southwards (north-up grid).
        dx_m: pixel width in metres, a scalar or one value per row (geographic CRS).
        dy_m: pixel height in metres (positive), a scalar or one value per row.

    Returns:
        Two (H, W) float64 arrays, NaN where the elevation is NaN.
    """
    z = np.asarray(dem, dtype=np.float64)
    h, w = z.shape
    dx = np.broadcast_to(np.asarray(dx_m, dtype=np.float64).reshape(-1, 1), (h, 1))
    dy = np.broadcast_to(np.asarray(dy_m, dtype=np.float64).reshape(-1, 1), (h, 1))
    dz_east_rows = _difference(z, axis=1) / dx  # per row: dz per pixel step east / metres per step
    dz_south = _difference(z, axis=0) / dy  # rows run southwards
    dz_east = _smooth_121(dz_east_rows, axis=0)
    dz_north = -_smooth_121(dz_south, axis=1)
    nodata = np.isnan(z)
    dz_east[nodata] = np.nan
    dz_north[nodata] = np.nan
    return dz_east, dz_north


def _difference(z: np.ndarray, axis: int) -> np.ndarray:
    """Change of ``z`` per pixel step along ``axis``.

    Central where both neighbours exist, one-sided where one does, NaN where neither (or the pixel itself is NaN).
    """
    p = np.pad(z, [(1, 1) if a == axis else (0, 0) for a in range(2)], constant_values=np.nan)
    n = z.shape[axis]
    before = np.take(p, np.arange(0, n), axis=axis)
    after = np.take(p, np.arange(2, n + 2), axis=axis)
    central = (after - before) / 2
    forward = after - z
    backward = z - before
    return np.where(~np.isnan(central), central, np.where(~np.isnan(forward), forward, backward))


def _smooth_121(d: np.ndarray, axis: int) -> np.ndarray:
    """1:2:1 weighted mean of ``d`` across ``axis``, ignoring NaN entries (0 where all three are NaN)."""
    p = np.pad(d, [(1, 1) if a == axis else (0, 0) for a in range(2)], constant_values=np.nan)
    n = d.shape[axis]
    total = np.zeros_like(d)
    weight = np.zeros_like(d)
    for offset, wt in ((0, 1.0), (1, 2.0), (2, 1.0)):
        v = np.take(p, np.arange(offset, offset + n), axis=axis)
        ok = ~np.isnan(v)
        total += np.where(ok, v * wt, 0.0)
        weight += ok * wt
    return np.divide(total, weight, out=np.zeros_like(d), where=weight > 0)


def slope_deg(dz_east: np.ndarray, dz_north: np.ndarray) -> np.ndarray:
    """Slope in degrees, atan(|∇z|)."""
    return np.degrees(np.arctan(np.hypot(dz_east, dz_north)))


def aspect_deg(dz_east: np.ndarray, dz_north: np.ndarray) -> np.ndarray:
    """Compass direction the slope faces (downhill), degrees clockwise from north in [0, 360); 0 where flat.

    Flat pixels get 0 rather than nodata so that a flat valley floor is not dropped from the scene.
    """
    a = np.degrees(np.arctan2(-dz_east, -dz_north)) % 360.0
    flat = (dz_east == 0) & (dz_north == 0)
    return np.where(flat, 0.0, a)


def hillshade(dz_east: np.ndarray, dz_north: np.ndarray, azimuth_deg: float = HILLSHADE_AZIMUTH_DEG,
              altitude_deg: float = HILLSHADE_ALTITUDE_DEG) -> np.ndarray:
    """Illumination in [0, 1] of each pixel by a sun at ``azimuth_deg`` / ``altitude_deg`` (1: facing it)."""
    slope = np.arctan(np.hypot(dz_east, dz_north))
    aspect = np.radians(aspect_deg(dz_east, dz_north))
    zenith = np.radians(90.0 - altitude_deg)
    shade = (np.cos(zenith) * np.cos(slope)
             + np.sin(zenith) * np.sin(slope) * np.cos(np.radians(azimuth_deg) - aspect))
    return np.clip(shade, 0.0, 1.0)


def terrain_layers(dem: np.ndarray, dx_m: np.ndarray | float, dy_m: np.ndarray | float,
                   layers: tuple[str, ...] | list[str]) -> dict[str, np.ndarray]:
    """The requested ``layers`` (names from TERRAIN_LAYERS) of a DEM block, each float32 (H, W).

    NaN where the DEM is NaN.
    """
    unknown = [n for n in layers if n not in TERRAIN_LAYERS]
    if unknown:
        raise ValueError(f"unknown terrain layers {unknown}; known: {TERRAIN_LAYERS}")
    out: dict[str, np.ndarray] = {}
    nodata = np.isnan(dem)
    grad = gradient(dem, dx_m, dy_m) if set(layers) - {"dem"} else None
    for name in layers:
        if name == "dem":
            values = np.asarray(dem, dtype=np.float64)
        else:
            assert grad is not None  # computed whenever a layer other than dem is asked for
            if name == "slope":
                values = slope_deg(*grad)
            elif name == "aspect":
                values = aspect_deg(*grad)
            else:
                values = hillshade(*grad)
        out[name] = np.where(nodata, np.nan, values).astype(np.float32)
    return out
