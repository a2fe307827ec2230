"""Terrain: a river network first, then the elevation around it, and the slope and fall line.

The river network is dendritic; the elevation has flat valley floors, concave hillslopes and sharp ridges; slope
and fall line are on the image grid.

Rivers come first so that they lie in valley bottoms by construction and landslides running down the
fall line end on valley floors, as in nature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from affine import Affine
from scipy import ndimage

from slidemap.sources.synth.grid import SynthGrid

RELIEF_M, HILL_LENGTH_M, ROUGH_M = 480.0, 800.0, (16.0, 4.0)


@dataclass
class River:
    """One river of the network, upstream to downstream, with the valley floor it carves."""

    xy: np.ndarray  # (N, 2) map coordinates, upstream to downstream
    order: int  # 1 main river, 2 tributary, 3 creek
    width: float  # channel width in m
    floodplain: float  # half-width of the flat valley floor in m
    base: np.ndarray  # (N,) elevation of the valley floor along the river in m


# --- noise -----------------------------------------------------------------------------------------


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale_px: float, order: int = 1
                 ) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with blobs about ``scale_px`` pixels across.

    Built on a grid a quarter of the blob size and interpolated up, so large scales cost little;
    ``order=3`` (cubic) keeps derivatives smooth, which matters for terrain.
    """
    step = max(1, int(scale_px // 4))
    coarse = rng.standard_normal((shape[0] // step + 4, shape[1] // step + 4), dtype=np.float32)
    coarse = ndimage.gaussian_filter(coarse, sigma=max(scale_px / 3.0 / step, 0.5), mode="wrap")
    fine = ndimage.zoom(coarse, step, order=order, prefilter=order > 1)[step:step + shape[0],
                                                                         step:step + shape[1]]
    return ((fine - fine.mean()) / (fine.std() + 1e-12)).astype(np.float32)


def smooth_series(rng: np.random.Generator, n: int, persistence: float, sd: float) -> np.ndarray:
    """An AR(1) series: the meander of a river, the wobble of a landslide's edge."""
    # Imported here: scipy.signal imports scipy.stats, about 1 s that every slidemap command would pay.
    from scipy.signal import lfilter

    return lfilter([1.0], [1.0, -persistence], rng.normal(0.0, sd, n))


# --- terrain ---------------------------------------------------------------------------------------


class _Occupancy:
    """Coarse raster of where rivers already run (and their valley-floor elevation there).

    It stops new rivers before they run into others and finds the emptiest ground for the next creek.
    """

    def __init__(self, bounds: tuple[float, float, float, float], cell: float = 80.0) -> None:
        self.xmin, self.ymin, self.xmax, self.ymax = bounds
        self.cell = cell
        shape = (int((self.ymax - self.ymin) / cell) + 1, int((self.xmax - self.xmin) / cell) + 1)
        self.grid = np.zeros(shape, bool)
        self.base = np.zeros(shape, np.float32)
        self.dist = np.full(shape, np.inf)
        self.nearest = np.indices(shape)

    def _index(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = np.clip(((self.ymax - xy[:, 1]) / self.cell).astype(int), 0, self.grid.shape[0] - 1)
        c = np.clip(((xy[:, 0] - self.xmin) / self.cell).astype(int), 0, self.grid.shape[1] - 1)
        return r, c

    def xy(self, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        return np.column_stack([self.xmin + (c + 0.5) * self.cell, self.ymax - (r + 0.5) * self.cell])

    def add(self, xy: np.ndarray, base: np.ndarray) -> None:
        idx = self._index(xy)
        self.grid[idx] = True
        self.base[idx] = base
        dist, self.nearest = ndimage.distance_transform_edt(~self.grid, return_indices=True)
        self.dist = dist * self.cell

    def distance(self, xy: np.ndarray) -> np.ndarray:
        return self.dist[self._index(xy)]

    def nearest_river(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map coordinates of the nearest river cell and the valley-floor elevation there."""
        r, c = self._index(xy)
        nr, nc = self.nearest[0][r, c], self.nearest[1][r, c]
        return self.xy(nr, nc), self.base[nr, nc]

    def inside(self, xy: np.ndarray) -> np.ndarray:
        return ((xy[:, 0] >= self.xmin) & (xy[:, 0] <= self.xmax) & (xy[:, 1] >= self.ymin)
                & (xy[:, 1] <= self.ymax))


def walk(rng: np.random.Generator, start: np.ndarray, heading: float, length: float, step: float,
          wiggle: float, persistence: float) -> np.ndarray:
    """A meandering path: the heading drifts as an AR(1) process around its initial direction."""
    n = max(2, int(length / step))
    headings = heading + smooth_series(rng, n, persistence, wiggle)
    steps = step * np.column_stack([np.cos(headings), np.sin(headings)])
    return np.vstack([start, start + np.cumsum(steps, axis=0)])


def _truncate(xy: np.ndarray, occupancy: _Occupancy, gap: float, skip: int) -> np.ndarray:
    """Cut a path where it leaves the terrain or comes within ``gap`` m of an existing river."""
    bad = ~occupancy.inside(xy)
    bad[skip:] |= occupancy.distance(xy[skip:]) < gap
    stop = int(np.argmax(bad)) if bad.any() else len(xy)
    return xy[:stop]


def make_rivers(rng: np.random.Generator, grid: SynthGrid) -> list[River]:
    """A dendritic river network: meandering main rivers, tributaries and creeks.

    Tributaries branch off at acute angles and creeks off those, each stopping before it runs into another valley.
    """
    bounds = grid.terrain_bounds
    xmin, ymin, xmax, ymax = bounds
    span = xmax - xmin
    occupancy = _Occupancy(bounds)
    rivers: list[River] = []
    for i in range(1 + int(span / 12_000)):
        side = rng.integers(4)
        t = rng.uniform(0.2, 0.8)
        start, inward = [
            (np.array([xmin + 1.0, ymin + t * span]), 0.0),
            (np.array([xmax - 1.0, ymin + t * span]), math.pi),
            (np.array([xmin + t * span, ymin + 1.0]), math.pi / 2),
            (np.array([xmin + t * span, ymax - 1.0]), -math.pi / 2),
        ][side]
        xy = walk(rng, start, inward + rng.uniform(-0.4, 0.4), 3 * span, 20.0, 0.05, 0.985)
        xy = _truncate(xy, occupancy, 500.0, skip=0 if i == 0 else 10**9)
        if len(xy) < 20:
            continue
        s = np.r_[0.0, np.cumsum(np.hypot(*np.diff(xy, axis=0).T))]
        rivers.append(River(xy, 1, rng.uniform(14, 24), rng.uniform(60, 110), 820.0 - 0.004 * s))
        occupancy.add(xy, rivers[-1].base)
    # order: (spacing m, length m, gap m, width m, floodplain half-width m, gradient)
    plan = {2: ((500, 1000), (1500, 5000), 380.0, (6, 10), (25, 40), (0.02, 0.04)),
            3: ((300, 650), (400, 1600), 220.0, (3, 5), (8, 15), (0.05, 0.09))}
    for order, (spacing, length, gap, width, plain, gradient) in plan.items():
        for parent in [r for r in rivers if r.order < order]:
            s_parent = np.r_[0.0, np.cumsum(np.hypot(*np.diff(parent.xy, axis=0).T))]
            side = rng.choice([-1.0, 1.0])
            s = rng.uniform(0, spacing[0])
            while s < s_parent[-1] - 200:
                j = int(np.clip(np.searchsorted(s_parent, s), 1, len(s_parent) - 2))
                up = parent.xy[j - 1] - parent.xy[j + 1]
                heading = math.atan2(up[1], up[0]) + side * rng.uniform(0.6, 1.2)
                xy = walk(rng, parent.xy[j], heading, rng.uniform(*length), 20.0, 0.06, 0.95)
                xy = _truncate(xy, occupancy, gap, skip=int(gap / 20) + 3)
                if len(xy) * 20.0 >= 400:
                    xy = xy[::-1]
                    run = np.r_[0.0, np.cumsum(np.hypot(*np.diff(xy, axis=0).T))]
                    base = parent.base[j] + rng.uniform(*gradient) * (run[-1] - run)
                    rivers.append(River(xy, order, rng.uniform(*width), rng.uniform(*plain), base))
                    occupancy.add(xy, base)
                side = -side
                s += rng.uniform(*spacing)
    rivers += _fill_creeks(rng, occupancy)
    return rivers


def _fill_creeks(rng: np.random.Generator, occupancy: _Occupancy, max_gap: float = 550.0) -> list[River]:
    """Creeks from the ground farthest from any river down to the nearest one, until none is far.

    Until no point is more than ``max_gap`` m from a river: so ridges and valleys cover the whole scene, no
    plateaus.
    """
    creeks = []
    for _ in range(10_000):
        far = int(np.argmax(occupancy.dist))
        if occupancy.dist.flat[far] < max_gap:
            break
        r, c = np.unravel_index(far, occupancy.dist.shape)
        p = occupancy.xy(np.array([r]), np.array([c]))[0] + rng.uniform(-20, 20, 2)
        points, wander = [p], smooth_series(rng, 400, 0.9, 0.12)
        for i in range(400):
            target, _ = occupancy.nearest_river(p[None])
            if np.hypot(*(target[0] - p)) < 40.0:
                break
            to = target[0] - p
            heading = math.atan2(to[1], to[0]) + wander[i]
            p = p + 20.0 * np.array([math.cos(heading), math.sin(heading)])
            points.append(p)
        xy = np.asarray(points)
        _, junction = occupancy.nearest_river(xy[-1:])
        run = np.r_[0.0, np.cumsum(np.hypot(*np.diff(xy, axis=0).T))]
        base = junction[0] + rng.uniform(0.05, 0.09) * (run[-1] - run)
        creeks.append(River(xy, 3, rng.uniform(3, 5), rng.uniform(8, 15), base))
        occupancy.add(xy, base)
    return creeks


def _rasterize_rivers(grid: SynthGrid, rivers: list[River]) -> tuple[np.ndarray, np.ndarray]:
    """River cells of the terrain grid and the valley-floor elevation there."""
    shape = grid.terrain_shape
    base = np.zeros(shape, np.float32)
    is_river = np.zeros(shape, bool)
    for river in rivers:
        s = np.r_[0.0, np.cumsum(np.hypot(*np.diff(river.xy, axis=0).T))]
        dense = np.arange(0.0, s[-1], grid.cell / 2)
        x, y = np.interp(dense, s, river.xy[:, 0]), np.interp(dense, s, river.xy[:, 1])
        r, c = grid.terrain_index(x, y)
        r, c = np.rint(r).astype(int), np.rint(c).astype(int)
        ok = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
        is_river[r[ok], c[ok]] = True
        base[r[ok], c[ok]] = np.interp(dense, s, river.base)[ok]
    return is_river, base


def _floodplains(grid: SynthGrid, rivers: list[River]) -> np.ndarray:
    """Valley floors on the terrain grid: each river's corridor of its floodplain half-width."""
    from rasterio import features
    from shapely.geometry import LineString

    xmin, _, _, ymax = grid.terrain_bounds
    transform = Affine(grid.cell, 0.0, xmin, 0.0, -grid.cell, ymax)
    shapes = [(LineString(r.xy).buffer(r.floodplain), 1) for r in rivers]
    if not shapes:
        return np.zeros(grid.terrain_shape, bool)
    return features.rasterize(shapes, out_shape=grid.terrain_shape, transform=transform, fill=0,
                              dtype="uint8").astype(bool)


def make_elevation(rng: np.random.Generator, grid: SynthGrid, rivers: list[River], relief: float = 1.0
                   ) -> np.ndarray:
    """Elevation (m) on the terrain grid: flat valley floors along the rivers, hillslopes up to ridges.

    Concave hillslopes rise with distance from the valley floor up to sharp ridges; spurs and hollows come from
    noise octaves.

    Valleys are where the rivers are by construction, so rivers lie in valley bottoms and landslides
    running down the fall line end on valley floors. ``relief`` multiplies everything above the valley
    floors (hill height, roughness, regional swell), so slopes steepen with it while the valleys stay
    where they are.
    """
    shape, cell = grid.terrain_shape, grid.cell
    is_river, base = _rasterize_rivers(grid, rivers)
    floodplain = _floodplains(grid, rivers)
    if not is_river.any():  # no river reached the grid: one valley along the middle
        is_river[shape[0] // 2, :] = floodplain[shape[0] // 2, :] = True
        base[is_river] = 800.0
    dist, (ri, ci) = ndimage.distance_transform_edt(~is_river, return_indices=True)
    floor = _smooth_large(base[ri, ci], cell, 350.0) + 0.01 * np.minimum(dist * cell, 60.0)
    hill = (ndimage.distance_transform_edt(~(floodplain | is_river)) * cell).astype(np.float32)
    height = RELIEF_M * relief * (1.0 + 0.25 * smooth_noise(rng, shape, 3000.0 / cell, order=3))
    length = HILL_LENGTH_M * (1.0 + 0.2 * smooth_noise(rng, shape, 2500.0 / cell, order=3))
    profile = height * (1.0 - np.exp(-hill / length)) * (1.0 - np.exp(-hill / 45.0))
    rough_m = (ROUGH_M[0] * relief, ROUGH_M[1] * relief)
    rough = (rough_m[0] * smooth_noise(rng, shape, 600.0 / cell, order=3)
             + rough_m[1] * smooth_noise(rng, shape, 200.0 / cell, order=3)) * (1.0 - np.exp(-hill / 80.0))
    regional = 60.0 * relief * smooth_noise(rng, shape, 8000.0 / cell, order=3)
    z = floor + profile + rough + regional
    return ndimage.gaussian_filter(z, 20.0 / cell).astype(np.float32)  # round the ridge crests


def _smooth_large(values: np.ndarray, cell: float, sigma_m: float) -> np.ndarray:
    """Gaussian smoothing with a large sigma, done on a block-averaged grid for speed."""
    f = max(1, int(sigma_m / cell / 4))
    h, w = values.shape
    pad = np.pad(values, ((0, -h % f), (0, -w % f)), mode="edge")
    small = pad.reshape(pad.shape[0] // f, f, pad.shape[1] // f, f).mean(axis=(1, 3))
    small = ndimage.gaussian_filter(small, sigma_m / cell / f, mode="nearest")
    rows = (np.arange(h) + 0.5) / f - 0.5
    cols = (np.arange(w) + 0.5) / f - 0.5
    return ndimage.map_coordinates(small, np.meshgrid(rows, cols, indexing="ij"), order=1,
                                   mode="nearest").astype(np.float32)


def image_terrain(grid: SynthGrid, elevation: np.ndarray, rivers: list[River]) -> dict[str, np.ndarray]:
    """Elevation, slope, fall-line gradient and distance to rivers on the image grid."""
    n = grid.size
    centres = (np.arange(n) + 0.5) / grid.k + grid.margin - 0.5
    rows, cols = np.meshgrid(centres, centres, indexing="ij")
    z = ndimage.map_coordinates(elevation, [rows, cols], order=3, mode="nearest").astype(np.float32)
    dz_dv, dz_du = np.gradient(z, grid.pixel)
    slope = np.degrees(np.arctan(np.hypot(dz_du, dz_dv))).astype(np.float32)
    is_river, _ = _rasterize_rivers(grid, rivers)
    dist = ndimage.distance_transform_edt(~is_river).astype(np.float32) * grid.cell
    river_dist = ndimage.map_coordinates(dist, [rows, cols], order=1, mode="nearest")
    dz_du, dz_dv = dz_du.astype(np.float32), dz_dv.astype(np.float32)
    return {"z": z, "slope": slope, "dz_du": dz_du, "dz_dv": dz_dv, "river_dist": river_dist,
            "fall_du": ndimage.gaussian_filter(dz_du, 2.0, truncate=3.0),  # smoothed, to trace fall lines
            "fall_dv": ndimage.gaussian_filter(dz_dv, 2.0, truncate=3.0)}


