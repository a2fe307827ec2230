"""The study area in memory: :func:`generate` runs terrain, land cover, landslides and the sensor in
order, each on its own random stream, and returns a :class:`StudyArea` (no files).

Named ``StudyArea`` (not ``Scene``) so that it is never mistaken for
:class:`slidemap.formats.scene.Scene`, the prepared scene folder that ``prepare`` writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from slidemap.errors import UserError
from slidemap.sources.synth.grid import SynthGrid, make_areas
from slidemap.sources.synth.landcover import render_surface, to_digital_numbers
from slidemap.sources.synth.landslides import Landslide, paint_landslides, place_landslides
from slidemap.sources.synth.terrain import River, image_terrain, make_elevation, make_rivers


@dataclass
class StudyArea:
    """Everything ``synthesize`` writes, in memory, plus the slope and cover classes behind it (for tests
    and measurements)."""

    grid: SynthGrid
    image: np.ndarray  # (5, H, W) uint16 DN, 0 = nodata
    elevation: np.ndarray  # terrain grid elevation in m
    slope: np.ndarray  # (H, W) slope in degrees on the image grid
    cover: np.ndarray  # (H, W) uint8 COVER classes
    landslides: list[Landslide]
    areas: dict[str, tuple[str, object]]  # name -> (role, shapely Polygon in the image CRS)
    seed: int
    rivers: list[River] = field(default_factory=list)


def generate(seed: int = 0, size: int = 2048, pixel_size: float = 5.0, landslides: int = 120,
             nodata_stripe: bool = True) -> StudyArea:
    """Build the synthetic scene in memory (no files): terrain, land cover, landslides, image."""
    check_args(seed, size, pixel_size, landslides)
    streams = np.random.SeedSequence(seed).spawn(8)
    rng = {name: np.random.default_rng(s) for name, s in zip(
        ("rivers", "terrain", "landslides", "fields", "settlements", "roads", "surface", "sensor"),
        streams, strict=True)}
    k = 2 if pixel_size < 10 else 1
    margin_m = 600.0 + 0.03 * size * pixel_size  # DEM margin + UTM grid convergence
    grid = SynthGrid(size, float(pixel_size), k, math.ceil(margin_m / (pixel_size * k)))

    rivers = make_rivers(rng["rivers"], grid)
    elevation = make_elevation(rng["terrain"], grid, rivers)
    terrain = image_terrain(grid, elevation, rivers)
    areas = make_areas(grid)
    slides = place_landslides(rng["landslides"], grid, terrain, areas, landslides)
    reflectance, cover = render_surface(rng, grid, terrain, rivers)
    paint_landslides(rng["landslides"], grid, slides, reflectance, cover)
    image = to_digital_numbers(rng["sensor"], grid, reflectance, terrain, nodata_stripe)
    return StudyArea(grid, image, elevation, terrain["slope"], cover, slides, areas, seed, rivers)


def check_args(seed: int, size: int, pixel_size: float, landslides: int) -> None:
    """Refuse, in one line naming the option, a value the generator cannot work with."""
    if seed < 0:
        raise UserError(f"--seed {seed}: must be 0 or positive")
    if size < 256:
        raise UserError(f"--size {size}: too small for a train and two test areas; use at least 256 px")
    if not 1.0 <= pixel_size <= 60.0:
        raise UserError(f"--pixel-size {pixel_size}: use a pixel size between 1 and 60 m")
    if landslides < 0:
        raise UserError(f"--landslides {landslides}: must be 0 or positive")
