"""Landslides: crowns on steep slopes, bodies traced down the fall line.

Outlines have a round crown, a narrower track and a fan-shaped runout; they are painted as a bright fresh scar
over a darker runout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from slidemap.errors import UserError
from slidemap.sources.synth.grid import COVER, ORIGIN_XY, SynthGrid, region_raster
from slidemap.sources.synth.landcover import jitter, paint, rasterize
from slidemap.sources.synth.terrain import smooth_series

if TYPE_CHECKING:
    from shapely.geometry import Polygon

MIN_AREA_M2, MAX_AREA_M2 = 200.0, 80_000.0  # the range of study 000's inventory
MAX_RUN_M = 750.0  # longest landslide path traced down the fall line


@dataclass
class Landslide:
    """One placed landslide: its outline and scar in the image CRS, and the area it lies in."""

    outline: Polygon
    scar: Polygon  # the upper part: fresh bright scar
    region: int  # 0 train, 1 test_a, 2 test_b


def _trace_downslope(grid: SynthGrid, terrain: dict[str, np.ndarray], start: np.ndarray,
                     length_px: np.ndarray, n_steps: int = 96, min_slope: float = 7.0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Follow the fall line from each start point (u, v) for its length; stop on gentle ground.

    Returns the paths (n_steps, K, 2) and how many points of each are valid.
    """
    du, dv = terrain["fall_du"], terrain["fall_dv"]
    paths = np.empty((n_steps, len(start), 2))
    paths[0] = start
    n_valid = np.full(len(start), n_steps)
    alive = np.ones(len(start), bool)
    step = length_px / (n_steps - 1)
    heading = None
    for i in range(1, n_steps):
        p = paths[i - 1]
        idx = [p[:, 1] - 0.5, p[:, 0] - 0.5]
        g = -np.column_stack([ndimage.map_coordinates(du, idx, order=1, mode="nearest"),
                              ndimage.map_coordinates(dv, idx, order=1, mode="nearest")])
        g /= np.linalg.norm(g, axis=1, keepdims=True) + 1e-12
        heading = g if heading is None else 0.5 * g + 0.5 * heading
        heading /= np.linalg.norm(heading, axis=1, keepdims=True) + 1e-12
        new = p + heading * step[:, None]
        s = ndimage.map_coordinates(terrain["slope"], [new[:, 1] - 0.5, new[:, 0] - 0.5], order=1,
                                    mode="nearest")
        outside = (new < 1).any(axis=1) | (new > grid.size - 1).any(axis=1)
        stop = alive & ((s < min_slope) | outside)
        n_valid[stop] = i
        alive &= ~stop
        paths[i] = np.where(alive[:, None], new, p)
    return paths, n_valid


def _resample(path: np.ndarray, length: float, n: int) -> np.ndarray:
    """The first ``length`` (same units) of a path, as ``n`` evenly spaced points."""
    s = np.r_[0.0, np.cumsum(np.hypot(*np.diff(path, axis=0).T))]
    at = np.linspace(0.0, min(length, s[-1]), n)
    return np.column_stack([np.interp(at, s, path[:, 0]), np.interp(at, s, path[:, 1])])


def _outline(rng: np.random.Generator, path: np.ndarray, area_px: float,
             split: float) -> tuple[Polygon | None, Polygon | None]:
    """Polygon of a landslide of about ``area_px`` pixels along its path (u, v pixels), and its scar.

    Round crown, narrower track, fan-shaped runout; the scar is its part above ``split`` (fraction of the length).

    A path cut short by gentle ground gives a wider slide, but never one less than twice as long as
    wide: landslides here are elongated down the fall line.
    """
    from shapely import make_valid
    from shapely.geometry import Polygon

    n = len(path)
    t = np.linspace(0.0, 1.0, n)
    length = np.hypot(*np.diff(path, axis=0).T).sum()
    width = np.sqrt(np.sin(np.pi * t)) * (1.0 - 0.3 * np.exp(-((t - 0.5) / 0.15) ** 2) + 0.25 * t)
    half = min(area_px / (width.mean() * length), length / 2.0) / 2
    tangent = np.gradient(path, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-12
    normal = np.column_stack([-tangent[:, 1], tangent[:, 0]])
    wobble = [1.0 + np.clip(smooth_series(rng, n, 0.8, 0.05), -0.35, 0.35) for _ in range(2)]
    left = path + normal * (half * width * wobble[0])[:, None]
    right = path - normal * (half * width * wobble[1])[:, None]
    i = int(round(split * (n - 1)))

    def polygon(a: np.ndarray, b: np.ndarray) -> Polygon | None:
        geom = make_valid(Polygon(np.vstack([a, b[::-1]])))
        parts = [g for g in getattr(geom, "geoms", [geom]) if g.geom_type == "Polygon"]
        return max(parts, key=lambda g: g.area) if parts else None

    return polygon(left, right), polygon(left[: i + 1], right[: i + 1])


def place_landslides(rng: np.random.Generator, grid: SynthGrid, terrain: dict[str, np.ndarray],
                     areas: dict[str, tuple[str, Polygon]], count: int, size: float = 1.0) -> list[Landslide]:
    """Place ``count`` landslides: crowns on steep slopes, bodies down the fall line.

    Sizes are log-uniform in 200-80,000 m², none overlapping another or crossing an area's edge; 20 % in each test
    area (the train area makes up what a crowded test area cannot hold).

    ``size`` multiplies the range of areas (and the longest run by its square root, so that shapes
    stay alike). Most slides here are as long as their fall line down to gentle ground, so larger
    slides also run out further, onto gentler ground (down to 7°/size instead of 7°), as more mobile
    large slides do; the slopes still cap what a small scene can hold.

    Raises:
        UserError: when the terrain of this size cannot hold that many.
    """
    from shapely import affinity

    if count == 0:
        return []
    min_area, max_area, max_run = MIN_AREA_M2 * size, MAX_AREA_M2 * size, MAX_RUN_M * math.sqrt(size)
    region = region_raster(grid)
    slope = terrain["slope"]
    to_xy = [grid.pixel, 0.0, 0.0, -grid.pixel, ORIGIN_XY[0], ORIGIN_XY[1]]
    placed: list[Landslide] = []
    keep_out: list[Polygon] = []  # placed slides with a halo, and their bounding boxes
    boxes = np.empty((0, 4))
    names = list(areas)
    for r in (1, 2, 0):  # test areas first, 20 % each; the train area takes the rest
        quota = round(0.2 * count) if r else count - len(placed)
        inner = areas[names[r]][1].buffer(-2 * grid.pixel)
        # crowns on slopes of 28 degrees and more, or on the steepest fifth of a gentler area
        steepest = min(28.0, max(18.0, float(np.percentile(slope[region == r], 80))))
        candidates = np.flatnonzero((slope >= steepest) & (slope <= 50.0) & (region == r))
        got = 0
        last = -quota
        for attempt in range(5):  # rounds of candidates, until full or a round adds almost nothing
            if got == quota or len(candidates) == 0 or got - last <= quota // 20:
                break
            last = got
            k = min(len(candidates), 8 * (quota - got) + 40)
            picks = rng.choice(candidates, size=k, replace=False)
            start = np.column_stack([picks % grid.size + rng.uniform(0, 1, k),
                                     picks // grid.size + rng.uniform(0, 1, k)])
            paths, n_valid = _trace_downslope(grid, terrain, start, np.full(k, max_run / grid.pixel),
                                              min_slope=7.0 / size)
            reach = (n_valid - 1) * max_run / grid.pixel / (len(paths) - 1)
            # the longest runs get the largest slides (up to a little shuffling), as on real slopes
            # a crowded scene is filled up with smaller slides in later rounds
            largest = max(max_area * 0.9 / 4 ** attempt, min_area * 4)
            area = np.sort(np.exp(rng.uniform(np.log(min_area * 1.1), np.log(largest), k)))
            area = area[np.argsort(np.argsort(reach * rng.lognormal(0.0, 0.5, k)))]
            ratio = rng.uniform(2.5, 6.0, k)
            length_px = np.minimum(np.sqrt(area * ratio / 0.9) / grid.pixel, reach)
            split = rng.uniform(0.45, 0.65, k)
            for j in rng.permutation(k):
                if got == quota:
                    break
                if length_px[j] < 3:
                    continue
                path = _resample(paths[: n_valid[j], j], length_px[j], 32)
                outline, scar = _outline(rng, path, area[j] / grid.pixel ** 2, split[j])
                if outline is None or scar is None:
                    continue
                outline = affinity.affine_transform(outline, to_xy)
                if not max(min_area * 1.02, 0.5 * area[j]) <= outline.area <= max_area * 0.98:
                    continue
                if not inner.contains(outline):
                    continue
                halo = outline.buffer(3 * grid.pixel)
                b = np.asarray(halo.bounds)
                near = np.flatnonzero((boxes[:, 0] < b[2]) & (boxes[:, 2] > b[0]) & (boxes[:, 1] < b[3])
                                      & (boxes[:, 3] > b[1]))
                if any(keep_out[i].intersects(halo) for i in near):
                    continue
                placed.append(Landslide(outline, affinity.affine_transform(scar, to_xy), r))
                keep_out.append(halo)
                boxes = np.vstack([boxes, b])
                got += 1
    if len(placed) < count:
        raise UserError(f"--landslides {count}: only {len(placed)} fit on the steep slopes of a "
                        f"{grid.size} px scene; ask for fewer, a larger --size, a higher --relief or a "
                        f"smaller --landslide-size")
    return placed


def paint_landslides(rng: np.random.Generator, grid: SynthGrid, slides: list[Landslide], refl: np.ndarray,
                cover: np.ndarray) -> None:
    """Paint fresh scars and runouts.

    Scars are bright, redder soil with a few surviving shrubs; runouts darker, wet debris mixed with broken
    vegetation.
    """
    if not slides:
        return
    n = grid.size
    body = rasterize(grid, [(s.outline, i + 1) for i, s in enumerate(slides)])
    scar = rasterize(grid, [(s.scar, i + 1) for i, s in enumerate(slides)]) > 0
    scar &= body > 0
    runout = (body > 0) & ~scar
    grain = ndimage.gaussian_filter(rng.standard_normal((n, n), dtype=np.float32), 1.2)
    grain /= grain.std() + 1e-12
    scar_spectra = np.asarray([jitter(rng, "scar", 0.15) for _ in slides]).T
    runout_spectra = np.asarray([jitter(rng, "runout", 0.15) for _ in slides]).T
    paint(refl, scar, scar_spectra[:, body[scar] - 1] * (1.0 + 0.07 * grain[scar]),
           np.clip(0.92 + 0.08 * grain, 0.75, 1.0))
    paint(refl, runout, runout_spectra[:, body[runout] - 1] * (1.0 + 0.1 * grain[runout]),
           np.clip(0.75 + 0.15 * grain, 0.45, 0.95))
    cover[scar] = COVER["scar"]
    cover[runout] = COVER["runout"]


