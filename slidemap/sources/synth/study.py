"""The study area in memory: :func:`generate` returns a :class:`StudyArea` (no files).

It runs terrain, land cover, landslides and the sensor in order, each on its own random stream.

Named ``StudyArea`` (not ``Scene``) so that it is never mistaken for
:class:`slidemap.formats.scene.Scene`, the prepared scene folder that ``prepare`` writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from affine import Affine

from slidemap.sources.synth.grid import SynthGrid, make_areas, pre_event_grid
from slidemap.sources.synth.landcover import render_surface
from slidemap.sources.synth.landslides import Landslide, paint_landslides, place_landslides
from slidemap.sources.synth.params import SynthParams
from slidemap.sources.synth.sensor import pre_event_digital_numbers, to_digital_numbers
from slidemap.sources.synth.terrain import River, image_terrain, make_elevation, make_rivers

if TYPE_CHECKING:
    from shapely.geometry import Polygon

# One random stream per part, so that a parameter of one part leaves the others' draws alone. New
# streams go at the end: the first ones then stay what they were (SeedSequence children are numbered).
STREAMS = ("rivers", "terrain", "landslides", "fields", "settlements", "roads", "surface", "sensor",
           "pre_sensor")


@dataclass
class StudyArea:
    """Everything ``synthesize`` writes, in memory, plus the slope and cover classes behind it.

    The extras are for tests and measurements.
    """

    grid: SynthGrid
    params: SynthParams
    image: np.ndarray  # (5, H, W) uint16 DN, 0 = nodata
    elevation: np.ndarray  # terrain grid elevation in m
    slope: np.ndarray  # (H, W) slope in degrees on the image grid
    cover: np.ndarray  # (H, W) uint8 COVER classes, landslides included
    landslides: list[Landslide]
    areas: dict[str, tuple[str, Polygon]]  # name -> (role, polygon in the image CRS)
    rivers: list[River] = field(default_factory=list)
    pre_image: np.ndarray | None = None  # (5, h, w) uint16 DN before the landslides, on pre_transform
    pre_transform: Affine | None = None

    @property
    def seed(self) -> int:
        """The seed every random stream was derived from."""
        return self.params.seed


def generate(seed: int = 0, size: int = 2048, pixel_size: float = 5.0, landslides: int = 120,
             nodata_stripe: bool = True, relief: float = 1.0, bare_fields: float = 1.0,
             settlements: float = 1.0, roads: float = 1.0, landslide_size: float = 1.0,
             pre_event: bool = False) -> StudyArea:
    """Build the synthetic study area in memory (no files): terrain, land cover, landslides, image(s).

    The parameters are those of :func:`~slidemap.sources.synth.writing.synthesize`; a bad value is a
    one-line UserError naming its option.
    """
    params = SynthParams.checked(seed=seed, size=size, pixel_size=pixel_size, landslides=landslides,
                                 nodata_stripe=nodata_stripe, relief=relief, bare_fields=bare_fields,
                                 settlements=settlements, roads=roads, landslide_size=landslide_size,
                                 pre_event=pre_event)
    return generate_from(params)


def generate_from(params: SynthParams) -> StudyArea:
    """:func:`generate` for checked parameters."""
    streams = np.random.SeedSequence(params.seed).spawn(len(STREAMS))
    rng = {name: np.random.default_rng(s) for name, s in zip(STREAMS, streams, strict=True)}
    size, pixel_size = params.size, params.pixel_size
    k = 2 if pixel_size < 10 else 1
    margin_m = 600.0 + 0.03 * size * pixel_size  # DEM margin + UTM grid convergence
    grid = SynthGrid(size, float(pixel_size), k, math.ceil(margin_m / (pixel_size * k)))

    rivers = make_rivers(rng["rivers"], grid)
    elevation = make_elevation(rng["terrain"], grid, rivers, params.relief)
    terrain = image_terrain(grid, elevation, rivers)
    areas = make_areas(grid)
    slides = place_landslides(rng["landslides"], grid, terrain, areas, params.landslides,
                              params.landslide_size)
    reflectance, cover = render_surface(rng, grid, terrain, rivers, params.bare_fields, params.settlements,
                                        params.roads)
    before = reflectance.copy() if params.pre_event else None
    paint_landslides(rng["landslides"], grid, slides, reflectance, cover)
    image = to_digital_numbers(rng["sensor"], grid, reflectance, terrain, params.nodata_stripe,
                               params.sensor_gain, params.sun_elevation)
    study = StudyArea(grid, params, image, elevation, terrain["slope"], cover, slides, areas, rivers)
    if before is not None:
        study.pre_image = pre_event_digital_numbers(rng["pre_sensor"], grid, before, terrain)
        study.pre_transform = pre_event_grid(grid)[0]
    return study
