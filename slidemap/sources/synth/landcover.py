"""Land cover: surface reflectance painted back to front, with the class of every pixel.

Back to front: vegetation, fields, settlements, rivers with gravel bars, roads.

The look-alikes of landslides that study 000 names (bare fields, gravel roads, riverbeds with
bedload, settlements) are painted where they sit in nature: on flat valley floors, or as thin lines.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from slidemap.sources.synth.grid import COVER, SynthGrid
from slidemap.sources.synth.terrain import River, smooth_noise, walk

if TYPE_CHECKING:
    from shapely.geometry import Polygon

# Surface reflectance (blue, green, red, red_edge, nir), typical of RapidEye over south-east Brazil.
SPECTRA = {
    "forest": (0.030, 0.050, 0.032, 0.140, 0.330),
    "pasture": (0.045, 0.080, 0.065, 0.190, 0.340),
    "dry_grass": (0.070, 0.100, 0.120, 0.190, 0.270),
    "crop": (0.040, 0.085, 0.050, 0.220, 0.420),
    "water": (0.060, 0.070, 0.050, 0.035, 0.020),
    "scar": (0.100, 0.145, 0.225, 0.265, 0.300),  # fresh saprolite: bright, reddish
    "runout": (0.080, 0.105, 0.135, 0.170, 0.210),  # wet, mixed debris
    "bare_field": (0.105, 0.150, 0.185, 0.225, 0.265),  # tilled soil: browner than a scar
    "gravel": (0.140, 0.170, 0.195, 0.220, 0.250),  # roads and river bars: grey
    "asphalt": (0.060, 0.070, 0.080, 0.090, 0.100),
    "urban_ground": (0.090, 0.110, 0.125, 0.155, 0.200),
    "roof_tile": (0.075, 0.095, 0.185, 0.230, 0.260),
    "roof_concrete": (0.160, 0.180, 0.195, 0.210, 0.220),
    "roof_metal": (0.220, 0.240, 0.250, 0.260, 0.270),
    "haze": (0.300, 0.300, 0.290, 0.280, 0.270),
}


# --- land cover and reflectance --------------------------------------------------------------------


def spectrum(name: str) -> np.ndarray:
    """The reflectance of cover ``name`` in the five bands, as float32."""
    return np.asarray(SPECTRA[name], np.float32)


def jitter(rng: np.random.Generator, name: str, brightness_sd: float = 0.18, band_sd: float = 0.04
            ) -> np.ndarray:
    """One object's spectrum: the class spectrum times a brightness factor and small per-band changes."""
    return spectrum(name) * np.exp(rng.normal(0.0, brightness_sd)) * np.exp(rng.normal(0.0, band_sd, 5))


def rasterize(grid: SynthGrid, shapes: list, all_touched: bool = False, dtype: str = "int32") -> np.ndarray:
    """Burn ``shapes`` (``(geometry, value)`` pairs, map coordinates) into an image-grid raster; 0 elsewhere."""
    from rasterio import features

    n = grid.size
    if not shapes:
        return np.zeros((n, n), dtype)
    return features.rasterize(shapes, out_shape=(n, n), transform=grid.transform, fill=0,
                              all_touched=all_touched, dtype=dtype)


def paint(reflectance: np.ndarray, where: np.ndarray, spectra: np.ndarray, alpha: np.ndarray | float = 1.0
          ) -> None:
    """Blend ``spectra`` (5, N) or (5,) into the pixels ``where`` with weight ``alpha``."""
    if np.ndim(spectra) == 1:
        spectra = np.asarray(spectra)[:, None]
    if np.ndim(alpha):
        alpha = np.asarray(alpha)[where]
    reflectance[:, where] = (1.0 - alpha) * reflectance[:, where] + alpha * spectra


def render_surface(rng: dict[str, np.random.Generator], grid: SynthGrid, terrain: dict[str, np.ndarray],
                   rivers: list[River], bare_fields: float = 1.0, settlements: float = 1.0, roads: float = 1.0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Surface reflectance (5, H, W) and cover classes before the landslides, painted back to front.

    The order: vegetation, fields, settlements, rivers with gravel bars, roads.

    ``bare_fields``, ``settlements`` and ``roads`` are density factors of the look-alikes that make a
    site hard (1.0 = the default mix); each painter draws from its own random stream, so changing one
    leaves the others where they were.
    """
    n = grid.size
    cover = np.zeros((n, n), np.uint8)
    refl = _vegetation(rng["surface"], grid, terrain)
    _fields(rng["fields"], grid, terrain, refl, cover, bare_fields)
    _settlements(rng["settlements"], grid, terrain, rivers, refl, cover, settlements)
    _rivers(rng["surface"], grid, rivers, refl, cover)
    _roads(rng["roads"], grid, rivers, refl, cover, roads)
    return refl, cover


def _vegetation(rng: np.random.Generator, grid: SynthGrid, terrain: dict[str, np.ndarray]) -> np.ndarray:
    """Forest on steep slopes and away from valleys, pasture (partly dry) near valleys; crown texture."""
    n, p = grid.size, grid.pixel
    patches = smooth_noise(rng, (n, n), 500.0 / p)
    score = 1.1 * patches + (terrain["slope"] - 17.0) / 7.0 + (terrain["river_dist"] - 250.0) / 300.0
    forest = 1.0 / (1.0 + np.exp(-2.5 * score))
    dry = np.clip(0.5 + 0.5 * smooth_noise(rng, (n, n), 300.0 / p), 0.0, 1.0) * 0.6
    crowns = ndimage.gaussian_filter(rng.standard_normal((n, n), dtype=np.float32), 0.9)
    crowns /= crowns.std() + 1e-12
    grass = (1.0 + 0.05 * smooth_noise(rng, (n, n), 60.0 / p))
    refl = np.empty((5, n, n), np.float32)
    for b in range(5):
        pasture = ((1.0 - dry) * SPECTRA["pasture"][b] + dry * SPECTRA["dry_grass"][b]) * grass
        woods = SPECTRA["forest"][b] * (1.0 + 0.2 * crowns)
        refl[b] = forest * woods + (1.0 - forest) * pasture
    return refl


def _rotated_rect(cx: float, cy: float, length: float, width: float, angle: float) -> Polygon:
    from shapely import affinity
    from shapely.geometry import box

    return affinity.rotate(box(cx - length / 2, cy - width / 2, cx + length / 2, cy + width / 2), angle,
                           use_radians=True)


def _random_xy(rng: np.random.Generator, grid: SynthGrid, mask: np.ndarray, k: int,
               weight: np.ndarray | None = None) -> np.ndarray:
    """``k`` random map points on pixels where ``mask`` is True (empty if none), optionally weighted."""
    idx = np.flatnonzero(mask)
    if len(idx) == 0 or k == 0:
        return np.empty((0, 2))
    p = None if weight is None else weight.ravel()[idx] / weight.ravel()[idx].sum()
    pick = rng.choice(idx, size=k, replace=len(idx) < k, p=p)
    uv = np.column_stack([pick % grid.size + rng.uniform(0, 1, k), pick // grid.size + rng.uniform(0, 1, k)])
    return grid.pixel_to_xy(uv)


def _fields(rng: np.random.Generator, grid: SynthGrid, terrain: dict[str, np.ndarray], refl: np.ndarray,
            cover: np.ndarray, bare: float = 1.0) -> None:
    """Field parcels on gentle ground: bare tilled soil (as bright as a scar, browner), crops, stubble.

    ``bare`` multiplies the expected number of bare parcels (55 % of 9 per km² by default) and leaves
    that of crops and stubble as it is.
    """
    area_km2 = (grid.extent_m / 1000.0) ** 2
    gentle = terrain["slope"] < 10.0
    weights = 0.55 * bare + 0.45  # parcels relative to the default: 0.55 bare + 0.45 crops and stubble
    kind_p = np.array([0.55 * bare, 0.25, 0.2]) / weights
    xy = _random_xy(rng, grid, gentle, round(9 * area_km2 * weights), np.exp(-terrain["river_dist"] / 400.0))
    shapes, spectra, kinds = [], [], []
    for i, (x, y) in enumerate(xy):
        shapes.append((_rotated_rect(x, y, rng.uniform(60, 220), rng.uniform(40, 120), rng.uniform(0, np.pi)),
                       i + 1))
        kind = rng.choice(["bare_field", "crop", "dry_grass"], p=kind_p)
        kinds.append(COVER["bare_field"] if kind == "bare_field" else COVER["crop_field"])
        spectra.append(jitter(rng, kind, 0.2 if kind == "bare_field" else 0.1))
    ids = rasterize(grid, shapes)
    where = (ids > 0) & (terrain["slope"] < 15.0)
    if not where.any():
        return
    obj = ids[where] - 1
    rows = 1.0 + 0.06 * np.sin(np.arange(grid.size) * 2.1)[None, :]  # furrows
    texture = rows * (1.0 + 0.04 * rng.standard_normal((grid.size, grid.size), dtype=np.float32))
    paint(refl, where, np.asarray(spectra).T[:, obj] * texture[where])
    cover[where] = np.asarray(kinds, np.uint8)[obj]


def _settlements(rng: np.random.Generator, grid: SynthGrid, terrain: dict[str, np.ndarray],
                 rivers: list[River], refl: np.ndarray, cover: np.ndarray, density: float = 1.0) -> None:
    """Towns on valley floors: streets and yards, dense small buildings with tile, concrete or metal roofs.

    ``density`` multiplies the settled area: the number of towns where the scene is large enough to
    hold several, the towns' areas where a whole number of towns cannot follow (a small scene has one).
    """
    area_km2 = (grid.extent_m / 1000.0) ** 2
    flat = (terrain["slope"] < 6.0) & (terrain["river_dist"] < 250.0)
    usual = max(1, round(area_km2 / 12))
    count = max(1, round(usual * density)) if density > 0 else 0
    scale = math.sqrt(usual * density / count) if count else 0.0  # radius factor for the rounding
    centres = _random_xy(rng, grid, flat, count)
    n, p = grid.size, grid.pixel
    edge = smooth_noise(rng, (n, n), 120.0 / p)
    town = np.zeros((n, n), bool)
    buildings: list[tuple[Polygon, int]] = []
    spectra: list[np.ndarray] = []
    for cx, cy in centres:
        radius = rng.uniform(150.0, 420.0) * scale
        c0, r0 = ~grid.transform @ (cx, cy)
        reach = 1.3 * radius / p
        win = (slice(int(np.clip(r0 - reach, 0, n)), int(np.clip(r0 + reach + 1, 0, n))),
               slice(int(np.clip(c0 - reach, 0, n)), int(np.clip(c0 + reach + 1, 0, n))))
        rows, cols = np.ogrid[win]
        disc = np.zeros((n, n), bool)
        disc[win] = ((np.hypot(cols + 0.5 - c0, rows + 0.5 - r0) < radius / p * (1.0 + 0.25 * edge[win]))
                     & (terrain["slope"][win] < 12.0))
        town |= disc
        street = rng.uniform(0, np.pi)
        for bx, by in _random_xy(rng, grid, disc, int(disc.sum() * p * p / 900)):
            angle = street + rng.choice([0.0, np.pi / 2]) + rng.normal(0, 0.05)
            buildings.append((_rotated_rect(bx, by, rng.uniform(8, 20), rng.uniform(6, 14), angle),
                              len(buildings) + 1))
            roof = rng.choice(["roof_tile", "roof_concrete", "roof_metal"], p=[0.5, 0.35, 0.15])
            spectra.append(jitter(rng, roof, 0.15))
    if not town.any():
        return
    yards = np.clip(0.35 + 0.25 * smooth_noise(rng, (n, n), 40.0 / p), 0.0, 1.0)
    paint(refl, town, spectrum("urban_ground"), 1.0 - yards)
    cover[town] = COVER["urban"]
    _paint_numbered(grid, buildings, spectra, refl, cover, 0.85, "building")


def _rivers(rng: np.random.Generator, grid: SynthGrid, rivers: list[River], refl: np.ndarray,
            cover: np.ndarray) -> None:
    """Water channels, and gravel bars (bedload) along stretches of the larger rivers."""
    from shapely.geometry import LineString

    channel, bars = [], []
    for river in rivers:
        line = LineString(river.xy)
        channel.append((line.buffer(max(river.width / 2, grid.pixel * 0.55)), 1))
        if river.order <= 2:
            s = np.arange(0.0, line.length, 150.0)
            for a, b in zip(s[:-1], s[1:], strict=True):
                if rng.uniform() < 0.5:  # a bar on one bank, tapering at both ends
                    stretch = LineString([line.interpolate(t) for t in np.linspace(a, b, 8)])
                    side = rng.choice([-1.0, 1.0])
                    bar = stretch.buffer(side * (river.width / 2 + rng.uniform(8.0, 25.0)), single_sided=True)
                    bars.append((bar.simplify(2.0).buffer(-4.0).buffer(4.0), 1))
    bar = rasterize(grid, bars, dtype="uint8") > 0
    paint(refl, bar, jitter(rng, "gravel", 0.1), 0.9)
    cover[bar] = COVER["river_bar"]
    water = rasterize(grid, channel, dtype="uint8") > 0
    paint(refl, water, spectrum("water"), 0.9)
    cover[water] = COVER["water"]


def _roads(rng: np.random.Generator, grid: SynthGrid, rivers: list[River], refl: np.ndarray,
           cover: np.ndarray, density: float = 1.0) -> None:
    """Valley roads along the rivers (paved or gravel) and winding gravel roads up the hills.

    ``density`` multiplies the number of hill roads (one per 4 km², at least 2, by default); at 0 there
    are no roads at all, valley roads included.
    """
    from shapely.geometry import LineString

    if density == 0:
        return
    lines = []
    for river in rivers:
        if river.order <= 2 and len(river.xy) > 40:
            side = rng.choice([-1.0, 1.0])
            road = LineString(river.xy).simplify(10.0).offset_curve(side * (0.7 * river.floodplain + 8.0))
            if not road.is_empty:
                lines.append((road, "asphalt" if river.order == 1 and rng.uniform() < 0.6 else "gravel"))
    area_km2 = (grid.extent_m / 1000.0) ** 2
    xmin, ymin, xmax, ymax = grid.terrain_bounds
    for _ in range(round(max(2, round(area_km2 / 4)) * density)):
        start = rng.uniform([xmin, ymin], [xmax, ymax])
        lines.append((LineString(walk(rng, start, rng.uniform(0, 2 * np.pi), rng.uniform(800, 3000), 15.0,
                                       0.25, 0.9)), "gravel"))
    shapes, spectra = [], []
    for i, (line, kind) in enumerate(lines):
        shapes.append((line.buffer(rng.uniform(2.0, 3.5)), i + 1))
        spectra.append(jitter(rng, kind, 0.12))
    _paint_numbered(grid, shapes, spectra, refl, cover, 0.8, "road")


def _paint_numbered(grid: SynthGrid, shapes: list, spectra: list, refl: np.ndarray, cover: np.ndarray,
                    opacity: float, kind: str) -> None:
    """Paint shapes numbered 1..n (``(geometry, i)``), each in its own spectrum ``spectra[i - 1]``.

    Their pixels (every pixel they touch) are marked as cover ``kind``.
    """
    ids = rasterize(grid, shapes, all_touched=True)
    inside = ids > 0
    paint(refl, inside, np.asarray(spectra).T[:, ids[inside] - 1], opacity)
    cover[inside] = COVER[kind]
