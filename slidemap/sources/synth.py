"""``slidemap synth``: a synthetic study area that behaves like a real one where it matters.

Why synthetic: the demo and most tests need a scene with a known inventory, of any size, written in
seconds, with nothing to download. Why this much physics: in a scene where landslides are simply the
brightest pixels a network learns "bright = landslide" and still scores well, hiding bugs. So the
terrain comes first (rivers carve valleys; slopes follow from the DEM), landslides start on steep
slopes and run down the fall line (bright fresh scar, darker mixed runout, slightly redder soil), and
the false-positive sources study 000 names (gravel roads, riverbeds with bedload, bare fields,
settlements) sit where they sit in nature: on flat valley floors, or as thin lines. Topographic
shading and thin cloud change brightness further, so one band's brightness fails while colour, slope
and shape together work.

``OUT`` holds ``image.tif`` (5-band uint16 DN, 5 m, UTM 23S, nodata 0), ``dem.tif`` (float32,
12.5 m, EPSG:4326), ``inventory.gpkg`` (EPSG:4326, ``id``, ``area_m2`` geodesic) and ``areas.gpkg``
(EPSG:3857, ``name``, ``role``): three CRSs on purpose, so that ``prepare`` has to co-register them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from scipy import ndimage, signal

from slidemap.errors import UserError

IMAGE_CRS = CRS.from_epsg(32723)  # UTM 23S: Nova Friburgo, the area of study 000
DEM_CRS = CRS.from_epsg(4326)
INVENTORY_CRS = CRS.from_epsg(4326)
AREAS_CRS = CRS.from_epsg(3857)
ORIGIN_XY = (740_000.0, 7_540_000.0)  # upper-left corner of the image in UTM 23S
BANDS = ("blue", "green", "red", "red_edge", "nir")
DEM_RESOLUTION_M = 12.5  # like ALOS PALSAR RTC
DEM_MARGIN_M = 250.0
MIN_AREA_M2, MAX_AREA_M2 = 200.0, 80_000.0  # the range of study 000's inventory
MAX_RUN_M = 750.0  # longest landslide path traced down the fall line
TRAIN_FRACTION = 0.6
RELIEF_M, HILL_LENGTH_M, ROUGH_M = 480.0, 800.0, (16.0, 4.0)
SUN_AZIMUTH_DEG, SUN_ELEVATION_DEG = 60.0, 55.0
GPKG_TIMESTAMP = "2011-01-12T00:00:00Z"  # fixed last_change, so the GeoPackages are byte-identical

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
PATH_RADIANCE = (0.012, 0.007, 0.004, 0.002, 0.001)  # additive, strongest in blue

# Cover classes of the internal class raster (kept for diagnostics; not written).
COVER = {"vegetation": 0, "bare_field": 1, "crop_field": 2, "urban": 3, "building": 4, "water": 5,
         "river_bar": 6, "road": 7, "scar": 8, "runout": 9}


def synthesize(out: str | Path, seed: int = 0, size: int = 2048, pixel_size: float = 5.0,
               landslides: int = 120, nodata_stripe: bool = True) -> dict[str, Path]:
    """Write a synthetic study area into ``out`` (atomically) and return its four files by role.

    Args:
        out: folder to write (replaced if it exists).
        seed: every random choice derives from it; the same seed gives byte-identical files.
        size: image width and height in pixels.
        pixel_size: image pixel size in metres.
        landslides: number of landslides; about 60 % go to the train area, 20 % to each test area.
        nodata_stripe: blank a slanted stripe of the image to 0, the declared nodata value.

    Returns:
        ``{"image", "dem", "inventory", "areas"}`` paths inside ``out``.
    """
    from slidemap.formats.files import atomic_dir

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"OUT {out}: exists and is not a folder; choose another path")
    scene = generate(seed=seed, size=size, pixel_size=pixel_size, landslides=landslides,
                     nodata_stripe=nodata_stripe)
    names = {"image": "image.tif", "dem": "dem.tif", "inventory": "inventory.gpkg", "areas": "areas.gpkg"}
    with atomic_dir(out, "areas.gpkg", what="synthetic study area") as tmp:
        _write_image(tmp / names["image"], scene)
        _write_dem(tmp / names["dem"], scene)
        _write_vectors(tmp / names["inventory"], tmp / names["areas"], scene)
    return {role: out / name for role, name in names.items()}


# --- the scene in memory ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """The image grid and the coarser terrain grid (``k`` pixels per cell) around it with a margin."""

    size: int
    pixel: float
    k: int
    margin: int  # terrain cells beyond the image on each side

    @property
    def transform(self) -> Affine:
        return Affine(self.pixel, 0.0, ORIGIN_XY[0], 0.0, -self.pixel, ORIGIN_XY[1])

    @property
    def extent_m(self) -> float:
        return self.size * self.pixel

    @property
    def cell(self) -> float:
        return self.pixel * self.k

    @property
    def terrain_shape(self) -> tuple[int, int]:
        n = math.ceil(self.size / self.k) + 2 * self.margin
        return n, n

    @property
    def terrain_bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of the terrain grid in metres."""
        xmin = ORIGIN_XY[0] - self.margin * self.cell
        ymax = ORIGIN_XY[1] + self.margin * self.cell
        rows, cols = self.terrain_shape
        return xmin, ymax - rows * self.cell, xmin + cols * self.cell, ymax

    def terrain_index(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fractional (row, col) of map coordinates on the terrain grid (cell centres are integers)."""
        xmin, _, _, ymax = self.terrain_bounds
        return (ymax - y) / self.cell - 0.5, (x - xmin) / self.cell - 0.5

    def pixel_to_xy(self, uv: np.ndarray) -> np.ndarray:
        """Map coordinates of continuous image coordinates ``(u, v)`` = (column, row), corners integer."""
        return np.column_stack([ORIGIN_XY[0] + uv[:, 0] * self.pixel, ORIGIN_XY[1] - uv[:, 1] * self.pixel])


@dataclass
class River:
    xy: np.ndarray  # (N, 2) map coordinates, upstream to downstream
    order: int  # 1 main river, 2 tributary, 3 creek
    width: float  # channel width in m
    floodplain: float  # half-width of the flat valley floor in m
    base: np.ndarray  # (N,) elevation of the valley floor along the river in m


@dataclass
class Landslide:
    outline: object  # shapely Polygon in the image CRS
    scar: object  # the upper part: fresh bright scar
    region: int  # 0 train, 1 test_a, 2 test_b


@dataclass
class Scene:
    """Everything ``synthesize`` writes, in memory, plus the slope and cover classes behind it (for tests
    and measurements)."""

    grid: Grid
    image: np.ndarray  # (5, H, W) uint16 DN, 0 = nodata
    elevation: np.ndarray  # terrain grid elevation in m
    slope: np.ndarray  # (H, W) slope in degrees on the image grid
    cover: np.ndarray  # (H, W) uint8 COVER classes
    landslides: list[Landslide]
    areas: dict[str, tuple[str, object]]  # name -> (role, shapely Polygon in the image CRS)
    seed: int
    rivers: list[River] = field(default_factory=list)


def generate(seed: int = 0, size: int = 2048, pixel_size: float = 5.0, landslides: int = 120,
             nodata_stripe: bool = True) -> Scene:
    """Build the synthetic scene in memory (no files): terrain, land cover, landslides, image."""
    _check_args(seed, size, pixel_size, landslides)
    streams = np.random.SeedSequence(seed).spawn(8)
    rng = {name: np.random.default_rng(s) for name, s in zip(
        ("rivers", "terrain", "landslides", "fields", "settlements", "roads", "surface", "sensor"),
        streams, strict=True)}
    k = 2 if pixel_size < 10 else 1
    margin_m = 600.0 + 0.03 * size * pixel_size  # DEM margin + UTM grid convergence
    grid = Grid(size, float(pixel_size), k, math.ceil(margin_m / (pixel_size * k)))

    rivers = make_rivers(rng["rivers"], grid)
    elevation = make_elevation(rng["terrain"], grid, rivers)
    terrain = _image_terrain(grid, elevation, rivers)
    areas = make_areas(grid)
    slides = place_landslides(rng["landslides"], grid, terrain, areas, landslides)
    reflectance, cover = render_surface(rng, grid, terrain, rivers, slides)
    image = to_digital_numbers(rng["sensor"], grid, reflectance, terrain, nodata_stripe)
    return Scene(grid, image, elevation, terrain["slope"], cover, slides, areas, seed, rivers)


def _check_args(seed: int, size: int, pixel_size: float, landslides: int) -> None:
    if seed < 0:
        raise UserError(f"--seed {seed}: must be 0 or positive")
    if size < 256:
        raise UserError(f"--size {size}: too small for a train and two test areas; use at least 256 px")
    if not 1.0 <= pixel_size <= 60.0:
        raise UserError(f"--pixel-size {pixel_size}: use a pixel size between 1 and 60 m")
    if landslides < 0:
        raise UserError(f"--landslides {landslides}: must be 0 or positive")


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


def _smooth_series(rng: np.random.Generator, n: int, persistence: float, sd: float) -> np.ndarray:
    """An AR(1) series: the meander of a river, the wobble of a landslide's edge."""
    return signal.lfilter([1.0], [1.0, -persistence], rng.normal(0.0, sd, n))


# --- terrain ---------------------------------------------------------------------------------------


class _Occupancy:
    """Coarse raster of where rivers already run (and their valley-floor elevation there), to stop new
    rivers before they run into others and to find the emptiest ground for the next creek."""

    def __init__(self, bounds: tuple[float, float, float, float], cell: float = 80.0):
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


def _walk(rng: np.random.Generator, start: np.ndarray, heading: float, length: float, step: float,
          wiggle: float, persistence: float) -> np.ndarray:
    """A meandering path: the heading drifts as an AR(1) process around its initial direction."""
    n = max(2, int(length / step))
    headings = heading + _smooth_series(rng, n, persistence, wiggle)
    steps = step * np.column_stack([np.cos(headings), np.sin(headings)])
    return np.vstack([start, start + np.cumsum(steps, axis=0)])


def _truncate(xy: np.ndarray, occupancy: _Occupancy, gap: float, skip: int) -> np.ndarray:
    """Cut a path where it leaves the terrain or comes within ``gap`` m of an existing river."""
    bad = ~occupancy.inside(xy)
    bad[skip:] |= occupancy.distance(xy[skip:]) < gap
    stop = int(np.argmax(bad)) if bad.any() else len(xy)
    return xy[:stop]


def make_rivers(rng: np.random.Generator, grid: Grid) -> list[River]:
    """A dendritic river network: meandering main rivers, tributaries branching off at acute angles
    and creeks off those, each stopping before it runs into another valley."""
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
        xy = _walk(rng, start, inward + rng.uniform(-0.4, 0.4), 3 * span, 20.0, 0.05, 0.985)
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
                xy = _walk(rng, parent.xy[j], heading, rng.uniform(*length), 20.0, 0.06, 0.95)
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
    """Creeks from the ground farthest from any river down to the nearest one, until no point is more
    than ``max_gap`` m from a river: so ridges and valleys cover the whole scene, no plateaus."""
    creeks = []
    for _ in range(10_000):
        far = int(np.argmax(occupancy.dist))
        if occupancy.dist.flat[far] < max_gap:
            break
        r, c = np.unravel_index(far, occupancy.dist.shape)
        p = occupancy.xy(np.array([r]), np.array([c]))[0] + rng.uniform(-20, 20, 2)
        points, wander = [p], _smooth_series(rng, 400, 0.9, 0.12)
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


def _rasterize_rivers(grid: Grid, rivers: list[River]) -> tuple[np.ndarray, np.ndarray]:
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


def _floodplains(grid: Grid, rivers: list[River]) -> np.ndarray:
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


def make_elevation(rng: np.random.Generator, grid: Grid, rivers: list[River]) -> np.ndarray:
    """Elevation (m) on the terrain grid: flat valley floors along the rivers, concave hillslopes rising
    with distance from the valley floor up to sharp ridges, spurs and hollows from noise octaves.

    Valleys are where the rivers are by construction, so rivers lie in valley bottoms and landslides
    running down the fall line end on valley floors.
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
    relief = RELIEF_M * (1.0 + 0.25 * smooth_noise(rng, shape, 3000.0 / cell, order=3))
    length = HILL_LENGTH_M * (1.0 + 0.2 * smooth_noise(rng, shape, 2500.0 / cell, order=3))
    profile = relief * (1.0 - np.exp(-hill / length)) * (1.0 - np.exp(-hill / 45.0))
    rough = (ROUGH_M[0] * smooth_noise(rng, shape, 600.0 / cell, order=3)
             + ROUGH_M[1] * smooth_noise(rng, shape, 200.0 / cell, order=3)) * (1.0 - np.exp(-hill / 80.0))
    regional = 60.0 * smooth_noise(rng, shape, 8000.0 / cell, order=3)
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


def _image_terrain(grid: Grid, elevation: np.ndarray, rivers: list[River]) -> dict[str, np.ndarray]:
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


# --- areas and landslides --------------------------------------------------------------------------


def make_areas(grid: Grid) -> dict[str, tuple[str, object]]:
    """Train area on the left 60 %, two test areas stacked on the right: disjoint, sharing edges only.

    The train outline carries the test areas' common corner as a vertex, so after any reprojection
    the shared edges stay identical and the areas never overlap.
    """
    from shapely.geometry import Polygon

    x0, y0 = ORIGIN_XY
    p, n = grid.pixel, grid.size
    xs, ym = x0 + round(TRAIN_FRACTION * n) * p, y0 - (n // 2) * p
    x1, y1 = x0 + n * p, y0 - n * p
    return {
        "train": ("train", Polygon([(x0, y0), (xs, y0), (xs, ym), (xs, y1), (x0, y1)])),
        "test_a": ("test", Polygon([(xs, y0), (x1, y0), (x1, ym), (xs, ym)])),
        "test_b": ("test", Polygon([(xs, ym), (x1, ym), (x1, y1), (xs, y1)])),
    }


def _region_raster(grid: Grid) -> np.ndarray:
    region = np.zeros((grid.size, grid.size), np.uint8)
    region[: grid.size // 2, round(TRAIN_FRACTION * grid.size):] = 1
    region[grid.size // 2:, round(TRAIN_FRACTION * grid.size):] = 2
    return region


def _trace_downslope(grid: Grid, terrain: dict[str, np.ndarray], start: np.ndarray, length_px: np.ndarray,
                     n_steps: int = 96, min_slope: float = 7.0) -> tuple[np.ndarray, np.ndarray]:
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


def _outline(rng: np.random.Generator, path: np.ndarray, area_px: float, split: float):
    """Polygon of a landslide of about ``area_px`` pixels along its path (u, v pixels): round crown,
    narrower track, fan-shaped runout; and the scar, its part above ``split`` (fraction of the length).

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
    wobble = [1.0 + np.clip(_smooth_series(rng, n, 0.8, 0.05), -0.35, 0.35) for _ in range(2)]
    left = path + normal * (half * width * wobble[0])[:, None]
    right = path - normal * (half * width * wobble[1])[:, None]
    i = int(round(split * (n - 1)))

    def polygon(a: np.ndarray, b: np.ndarray):
        geom = make_valid(Polygon(np.vstack([a, b[::-1]])))
        parts = [g for g in getattr(geom, "geoms", [geom]) if g.geom_type == "Polygon"]
        return max(parts, key=lambda g: g.area) if parts else None

    return polygon(left, right), polygon(left[: i + 1], right[: i + 1])


def place_landslides(rng: np.random.Generator, grid: Grid, terrain: dict[str, np.ndarray],
                     areas: dict[str, tuple[str, object]], count: int) -> list[Landslide]:
    """Place ``count`` landslides: crowns on steep slopes, bodies down the fall line, sizes
    log-uniform in 200-80,000 m², none overlapping another or crossing an area's edge; 20 % in each
    test area (the train area makes up what a crowded test area cannot hold).

    Raises:
        UserError: when the terrain of this size cannot hold that many.
    """
    from shapely import affinity

    if count == 0:
        return []
    region = _region_raster(grid)
    slope = terrain["slope"]
    to_xy = [grid.pixel, 0.0, 0.0, -grid.pixel, ORIGIN_XY[0], ORIGIN_XY[1]]
    placed: list[Landslide] = []
    keep_out: list[object] = []  # placed slides with a halo, and their bounding boxes
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
            paths, n_valid = _trace_downslope(grid, terrain, start, np.full(k, MAX_RUN_M / grid.pixel))
            reach = (n_valid - 1) * MAX_RUN_M / grid.pixel / (len(paths) - 1)
            # the longest runs get the largest slides (up to a little shuffling), as on real slopes
            # a crowded scene is filled up with smaller slides in later rounds
            largest = max(MAX_AREA_M2 * 0.9 / 4 ** attempt, MIN_AREA_M2 * 4)
            area = np.sort(np.exp(rng.uniform(np.log(MIN_AREA_M2 * 1.1), np.log(largest), k)))
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
                if not max(MIN_AREA_M2 * 1.02, 0.5 * area[j]) <= outline.area <= MAX_AREA_M2 * 0.98:
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
                        f"{grid.size} px scene; ask for fewer or a larger --size")
    return placed


# --- land cover and reflectance --------------------------------------------------------------------


def _spectrum(name: str) -> np.ndarray:
    return np.asarray(SPECTRA[name], np.float32)


def _jitter(rng: np.random.Generator, name: str, brightness_sd: float = 0.18, band_sd: float = 0.04
            ) -> np.ndarray:
    """One object's spectrum: the class spectrum times a brightness factor and small per-band changes."""
    return _spectrum(name) * np.exp(rng.normal(0.0, brightness_sd)) * np.exp(rng.normal(0.0, band_sd, 5))


def _rasterize(grid: Grid, shapes: list, all_touched: bool = False, dtype: str = "int32") -> np.ndarray:
    from rasterio import features

    n = grid.size
    if not shapes:
        return np.zeros((n, n), dtype)
    return features.rasterize(shapes, out_shape=(n, n), transform=grid.transform, fill=0,
                              all_touched=all_touched, dtype=dtype)


def _paint(reflectance: np.ndarray, where: np.ndarray, spectra: np.ndarray, alpha: np.ndarray | float = 1.0
           ) -> None:
    """Blend ``spectra`` (5, N) or (5,) into the pixels ``where`` with weight ``alpha``."""
    if np.ndim(spectra) == 1:
        spectra = np.asarray(spectra)[:, None]
    if np.ndim(alpha):
        alpha = np.asarray(alpha)[where]
    reflectance[:, where] = (1.0 - alpha) * reflectance[:, where] + alpha * spectra


def render_surface(rng: dict[str, np.random.Generator], grid: Grid, terrain: dict[str, np.ndarray],
                   rivers: list[River], slides: list[Landslide]) -> tuple[np.ndarray, np.ndarray]:
    """Surface reflectance (5, H, W) and cover classes, painted back to front: vegetation, fields,
    settlements, rivers with gravel bars, roads, landslides."""
    n = grid.size
    cover = np.zeros((n, n), np.uint8)
    refl = _vegetation(rng["surface"], grid, terrain)
    _fields(rng["fields"], grid, terrain, refl, cover)
    _settlements(rng["settlements"], grid, terrain, rivers, refl, cover)
    _rivers(rng["surface"], grid, rivers, refl, cover)
    _roads(rng["roads"], grid, rivers, refl, cover)
    _landslides(rng["landslides"], grid, slides, refl, cover)
    return refl, cover


def _vegetation(rng: np.random.Generator, grid: Grid, terrain: dict[str, np.ndarray]) -> np.ndarray:
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


def _rotated_rect(cx: float, cy: float, length: float, width: float, angle: float):
    from shapely import affinity
    from shapely.geometry import box

    return affinity.rotate(box(cx - length / 2, cy - width / 2, cx + length / 2, cy + width / 2), angle,
                           use_radians=True)


def _random_xy(rng: np.random.Generator, grid: Grid, mask: np.ndarray, k: int,
               weight: np.ndarray | None = None) -> np.ndarray:
    """``k`` random map points on pixels where ``mask`` is True (empty if none), optionally weighted."""
    idx = np.flatnonzero(mask)
    if len(idx) == 0 or k == 0:
        return np.empty((0, 2))
    p = None if weight is None else weight.ravel()[idx] / weight.ravel()[idx].sum()
    pick = rng.choice(idx, size=k, replace=len(idx) < k, p=p)
    uv = np.column_stack([pick % grid.size + rng.uniform(0, 1, k), pick // grid.size + rng.uniform(0, 1, k)])
    return grid.pixel_to_xy(uv)


def _fields(rng: np.random.Generator, grid: Grid, terrain: dict[str, np.ndarray], refl: np.ndarray,
            cover: np.ndarray) -> None:
    """Field parcels on gentle ground: bare tilled soil (as bright as a scar, browner), crops, stubble."""
    area_km2 = (grid.extent_m / 1000.0) ** 2
    gentle = terrain["slope"] < 10.0
    xy = _random_xy(rng, grid, gentle, round(9 * area_km2), np.exp(-terrain["river_dist"] / 400.0))
    shapes, spectra, kinds = [], [], []
    for i, (x, y) in enumerate(xy):
        shapes.append((_rotated_rect(x, y, rng.uniform(60, 220), rng.uniform(40, 120), rng.uniform(0, np.pi)),
                       i + 1))
        kind = rng.choice(["bare_field", "crop", "dry_grass"], p=[0.55, 0.25, 0.2])
        kinds.append(COVER["bare_field"] if kind == "bare_field" else COVER["crop_field"])
        spectra.append(_jitter(rng, kind, 0.2 if kind == "bare_field" else 0.1))
    ids = _rasterize(grid, shapes)
    where = (ids > 0) & (terrain["slope"] < 15.0)
    if not where.any():
        return
    obj = ids[where] - 1
    rows = 1.0 + 0.06 * np.sin(np.arange(grid.size) * 2.1)[None, :]  # furrows
    texture = rows * (1.0 + 0.04 * rng.standard_normal((grid.size, grid.size), dtype=np.float32))
    _paint(refl, where, np.asarray(spectra).T[:, obj] * texture[where])
    cover[where] = np.asarray(kinds, np.uint8)[obj]


def _settlements(rng: np.random.Generator, grid: Grid, terrain: dict[str, np.ndarray], rivers: list[River],
                 refl: np.ndarray, cover: np.ndarray) -> None:
    """Towns on valley floors: streets and yards, dense small buildings with tile, concrete or metal roofs."""
    area_km2 = (grid.extent_m / 1000.0) ** 2
    flat = (terrain["slope"] < 6.0) & (terrain["river_dist"] < 250.0)
    centres = _random_xy(rng, grid, flat, max(1, round(area_km2 / 12)))
    n, p = grid.size, grid.pixel
    edge = smooth_noise(rng, (n, n), 120.0 / p)
    town = np.zeros((n, n), bool)
    buildings, spectra = [], []
    for cx, cy in centres:
        radius = rng.uniform(150.0, 420.0)
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
            spectra.append(_jitter(rng, roof, 0.15))
    if not town.any():
        return
    yards = np.clip(0.35 + 0.25 * smooth_noise(rng, (n, n), 40.0 / p), 0.0, 1.0)
    _paint(refl, town, _spectrum("urban_ground"), 1.0 - yards)
    cover[town] = COVER["urban"]
    _paint_numbered(grid, buildings, spectra, refl, cover, 0.85, "building")


def _rivers(rng: np.random.Generator, grid: Grid, rivers: list[River], refl: np.ndarray,
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
    bar = _rasterize(grid, bars, dtype="uint8") > 0
    _paint(refl, bar, _jitter(rng, "gravel", 0.1), 0.9)
    cover[bar] = COVER["river_bar"]
    water = _rasterize(grid, channel, dtype="uint8") > 0
    _paint(refl, water, _spectrum("water"), 0.9)
    cover[water] = COVER["water"]


def _roads(rng: np.random.Generator, grid: Grid, rivers: list[River], refl: np.ndarray,
           cover: np.ndarray) -> None:
    """Valley roads along the rivers (paved or gravel) and winding gravel roads up the hills."""
    from shapely.geometry import LineString

    lines = []
    for river in rivers:
        if river.order <= 2 and len(river.xy) > 40:
            side = rng.choice([-1.0, 1.0])
            road = LineString(river.xy).simplify(10.0).offset_curve(side * (0.7 * river.floodplain + 8.0))
            if not road.is_empty:
                lines.append((road, "asphalt" if river.order == 1 and rng.uniform() < 0.6 else "gravel"))
    area_km2 = (grid.extent_m / 1000.0) ** 2
    xmin, ymin, xmax, ymax = grid.terrain_bounds
    for _ in range(max(2, round(area_km2 / 4))):
        start = rng.uniform([xmin, ymin], [xmax, ymax])
        lines.append((LineString(_walk(rng, start, rng.uniform(0, 2 * np.pi), rng.uniform(800, 3000), 15.0,
                                       0.25, 0.9)), "gravel"))
    shapes, spectra = [], []
    for i, (line, kind) in enumerate(lines):
        shapes.append((line.buffer(rng.uniform(2.0, 3.5)), i + 1))
        spectra.append(_jitter(rng, kind, 0.12))
    _paint_numbered(grid, shapes, spectra, refl, cover, 0.8, "road")


def _paint_numbered(grid: Grid, shapes: list, spectra: list, refl: np.ndarray, cover: np.ndarray,
                    opacity: float, kind: str) -> None:
    """Paint shapes numbered 1..n (``(geometry, i)``), each in its own spectrum ``spectra[i - 1]``, and
    mark their pixels (every pixel they touch) as cover ``kind``."""
    ids = _rasterize(grid, shapes, all_touched=True)
    inside = ids > 0
    _paint(refl, inside, np.asarray(spectra).T[:, ids[inside] - 1], opacity)
    cover[inside] = COVER[kind]


def _landslides(rng: np.random.Generator, grid: Grid, slides: list[Landslide], refl: np.ndarray,
                cover: np.ndarray) -> None:
    """Fresh scars (bright, redder soil, a few surviving shrubs) and runouts (darker, wet debris mixed
    with broken vegetation)."""
    if not slides:
        return
    n = grid.size
    body = _rasterize(grid, [(s.outline, i + 1) for i, s in enumerate(slides)])
    scar = _rasterize(grid, [(s.scar, i + 1) for i, s in enumerate(slides)]) > 0
    scar &= body > 0
    runout = (body > 0) & ~scar
    grain = ndimage.gaussian_filter(rng.standard_normal((n, n), dtype=np.float32), 1.2)
    grain /= grain.std() + 1e-12
    scar_spectra = np.asarray([_jitter(rng, "scar", 0.15) for _ in slides]).T
    runout_spectra = np.asarray([_jitter(rng, "runout", 0.15) for _ in slides]).T
    _paint(refl, scar, scar_spectra[:, body[scar] - 1] * (1.0 + 0.07 * grain[scar]),
           np.clip(0.92 + 0.08 * grain, 0.75, 1.0))
    _paint(refl, runout, runout_spectra[:, body[runout] - 1] * (1.0 + 0.1 * grain[runout]),
           np.clip(0.75 + 0.15 * grain, 0.45, 0.95))
    cover[scar] = COVER["scar"]
    cover[runout] = COVER["runout"]


# --- sensor ---------------------------------------------------------------------------------------


def _illumination(terrain: dict[str, np.ndarray]) -> np.ndarray:
    """Relative illumination: direct sun on the slope (cos of the incidence angle) plus sky light."""
    az, zen = np.radians(SUN_AZIMUTH_DEG), np.radians(90.0 - SUN_ELEVATION_DEG)
    gx, gy = terrain["dz_du"], -terrain["dz_dv"]  # dz/dx east, dz/dy north
    norm = np.sqrt(1.0 + gx ** 2 + gy ** 2)
    cos_i = (np.cos(zen) - np.sin(zen) * (gx * np.sin(az) + gy * np.cos(az))) / norm
    return np.clip(0.3 + 0.7 * np.maximum(cos_i, 0.0) / np.cos(zen), 0.25, 1.6).astype(np.float32)


def to_digital_numbers(rng: np.random.Generator, grid: Grid, refl: np.ndarray, terrain: dict[str, np.ndarray],
                       nodata_stripe: bool) -> np.ndarray:
    """Shade the terrain, add thin cloud and path radiance, blur (sensor PSF), add noise, quantise to
    uint16 DN (reflectance x 10,000, at least 1) and blank the nodata stripe to 0."""
    n, p = grid.size, grid.pixel
    refl *= _illumination(terrain)[None]
    haze = np.clip(0.35 * (smooth_noise(rng, (n, n), 1200.0 / p) - 0.8), 0.0, 0.28)  # thin: ground shows
    haze *= 1.0 + 0.15 * smooth_noise(rng, (n, n), 60.0 / p)
    dn = np.empty((5, n, n), np.uint16)
    for b in range(5):
        band = (1.0 - haze) * refl[b] + haze * SPECTRA["haze"][b] + PATH_RADIANCE[b]
        band = ndimage.gaussian_filter(band, 0.5, truncate=3.0)
        band += rng.standard_normal((n, n), dtype=np.float32) * (0.0015 + 0.01 * band)
        dn[b] = np.clip(np.rint(band * 10_000.0), 1, 65_535).astype(np.uint16)
    if nodata_stripe:
        rows, cols = np.mgrid[0:n, 0:n]
        offset = rows - 0.72 * n - 0.12 * (cols - n / 2)
        dn[:, (offset >= 0) & (offset < 0.035 * n)] = 0
    return dn


# --- writing ---------------------------------------------------------------------------------------


def _write_image(path: Path, scene: Scene) -> None:
    import rasterio

    from slidemap.formats.gdal import gtiff_profile

    g = scene.grid
    profile = gtiff_profile(g.size, g.size, len(BANDS), "uint16", IMAGE_CRS, g.transform, nodata=0)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(scene.image)
        ds.descriptions = BANDS
        ds.update_tags(SOURCE="slidemap synth", SEED=str(scene.seed), UNITS="surface reflectance x 10000")


def dem_grid(grid: Grid) -> tuple[Affine, int, int]:
    """A 12.5 m grid in EPSG:4326 (degrees sized at the scene's centre latitude) covering the image
    with a margin."""
    from rasterio.warp import transform_bounds

    from slidemap.raster.geo import _meridian_radii

    x0, y0 = ORIGIN_XY
    west, south, east, north = transform_bounds(IMAGE_CRS, DEM_CRS, x0, y0 - grid.extent_m,
                                                x0 + grid.extent_m, y0, densify_pts=21)
    lat = (south + north) / 2
    m, nrad = _meridian_radii(lat)
    res_y = math.degrees(DEM_RESOLUTION_M / float(m))
    res_x = math.degrees(DEM_RESOLUTION_M / (float(nrad) * math.cos(math.radians(lat))))
    pad_x, pad_y = DEM_MARGIN_M / DEM_RESOLUTION_M * res_x, DEM_MARGIN_M / DEM_RESOLUTION_M * res_y
    west, east, south, north = west - pad_x, east + pad_x, south - pad_y, north + pad_y
    width, height = math.ceil((east - west) / res_x), math.ceil((north - south) / res_y)
    return Affine(res_x, 0.0, west, 0.0, -res_y, north), width, height


def _write_dem(path: Path, scene: Scene) -> None:
    import rasterio
    from pyproj import Transformer

    from slidemap.formats.gdal import gtiff_profile

    transform, width, height = dem_grid(scene.grid)
    lon = transform.c + (np.arange(width) + 0.5) * transform.a
    lat = transform.f + (np.arange(height) + 0.5) * transform.e
    lon2, lat2 = np.meshgrid(lon, lat)
    to_utm = Transformer.from_crs(DEM_CRS, IMAGE_CRS, always_xy=True)
    x, y = to_utm.transform(lon2.ravel(), lat2.ravel())
    r, c = scene.grid.terrain_index(np.asarray(x), np.asarray(y))
    z = ndimage.map_coordinates(scene.elevation, [r, c], order=3, mode="nearest").reshape(height, width)
    profile = gtiff_profile(width, height, 1, "float32", DEM_CRS, transform, nodata=-9999.0)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(z.astype(np.float32), 1)
        ds.descriptions = ("elevation",)
        ds.units = ("metre",)


def _write_vectors(inventory_path: Path, areas_path: Path, scene: Scene) -> None:
    import geopandas as gpd
    import pyogrio
    import shapely
    from pyproj import Geod

    geod = Geod(ellps="WGS84")
    slides = gpd.GeoSeries([s.outline for s in scene.landslides], crs=IMAGE_CRS).to_crs(INVENTORY_CRS)
    inventory = gpd.GeoDataFrame(
        {"id": np.arange(1, len(slides) + 1, dtype=np.int32),
         "area_m2": [round(abs(geod.geometry_area_perimeter(g)[0]), 2) for g in slides]},
        geometry=slides, crs=INVENTORY_CRS)
    names = list(scene.areas)
    outlines = [shapely.segmentize(scene.areas[k][1], 100.0) for k in names]
    areas = gpd.GeoDataFrame({"name": names, "role": [scene.areas[k][0] for k in names]},
                             geometry=gpd.GeoSeries(outlines, crs=IMAGE_CRS).to_crs(AREAS_CRS), crs=AREAS_CRS)
    previous = pyogrio.get_gdal_config_option("OGR_CURRENT_DATE")
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": GPKG_TIMESTAMP})
    try:
        pyogrio.write_dataframe(inventory, inventory_path, layer="inventory", driver="GPKG")
        pyogrio.write_dataframe(areas, areas_path, layer="areas", driver="GPKG")
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": previous})
