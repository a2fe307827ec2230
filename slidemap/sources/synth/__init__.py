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
With ``pre_event`` it also holds ``pre_image.tif``: the same ground before the landslides, acquired
differently and on another grid (pixels twice as large, offset by half an image pixel). ``synth.json``
records the parameters and files.

Modules, imported one way (each only from those before it): ``grid`` (grid, layout, constants),
``params``, ``terrain`` (noise, rivers, elevation), ``landcover``, ``landslides``, ``sensor``,
``study`` (:func:`generate`, in memory), ``marker``, ``writing`` (:func:`synthesize`, the files).
"""

from slidemap.sources.synth.grid import (
    AREAS_CRS,
    BANDS,
    COVER,
    DEM_CRS,
    DEM_MARGIN_M,
    DEM_RESOLUTION_M,
    IMAGE_CRS,
    INVENTORY_CRS,
    ORIGIN_XY,
    PRE_EVENT_ZOOM,
    TRAIN_FRACTION,
    SynthGrid,
    pre_event_grid,
)
from slidemap.sources.synth.landcover import SPECTRA
from slidemap.sources.synth.landslides import MAX_AREA_M2, MAX_RUN_M, MIN_AREA_M2, Landslide
from slidemap.sources.synth.marker import MARKER, SYNTH_FORMAT, SynthFile, SynthMarker, read_marker
from slidemap.sources.synth.params import SynthParams
from slidemap.sources.synth.study import StudyArea, generate, generate_from
from slidemap.sources.synth.terrain import River
from slidemap.sources.synth.writing import dem_grid, synthesize

__all__ = ["AREAS_CRS", "BANDS", "COVER", "DEM_CRS", "DEM_MARGIN_M", "DEM_RESOLUTION_M", "IMAGE_CRS",
           "INVENTORY_CRS", "MARKER", "MAX_AREA_M2", "MAX_RUN_M", "MIN_AREA_M2", "ORIGIN_XY",
           "PRE_EVENT_ZOOM", "SPECTRA", "SYNTH_FORMAT", "TRAIN_FRACTION", "Landslide", "River", "StudyArea",
           "SynthFile", "SynthGrid", "SynthMarker", "SynthParams", "dem_grid", "generate", "generate_from",
           "pre_event_grid", "read_marker", "synthesize"]
