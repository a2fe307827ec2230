"""Writing a study area: images, DEM, inventory and areas, each in its own CRS, and the ``synth.json`` marker.

Everything is built in a temporary folder that replaces ``out`` in one rename.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from scipy import ndimage

from slidemap.errors import UserError
from slidemap.sources.synth.grid import (
    AREAS_CRS,
    BANDS,
    DEM_CRS,
    DEM_MARGIN_M,
    DEM_RESOLUTION_M,
    IMAGE_CRS,
    INVENTORY_CRS,
    ORIGIN_XY,
    PRE_EVENT_ZOOM,
    SynthGrid,
)
from slidemap.sources.synth.marker import MARKER, SynthFile, SynthMarker
from slidemap.sources.synth.params import SynthParams
from slidemap.sources.synth.study import StudyArea, generate_from
from slidemap.version import __version__

SYNTH_GPKG_TIMESTAMP = "2011-01-12T00:00:00Z"  # not formats.gdal's: synth's files are pinned by hash
WHAT = "synthetic study area"


def synthesize(out: str | Path, **params: Any) -> dict[str, Path]:
    """Write a synthetic study area into ``out`` (atomically) and return its files by role.

    ``params`` are :class:`SynthParams`' fields (seed, size, pixel_size, landslides, nodata_stripe, relief,
    bare_fields, settlements, roads, landslide_size, pre_event), each described and defaulted there; the
    same parameters give byte-identical files. About 60 % of the landslides go to the train area, 20 % to
    each test area. An earlier synthetic study area in ``out`` (one holding ``synth.json``) is replaced, any
    other non-empty folder is refused.

    Returns:
        ``{"image", "dem", "inventory", "areas", "marker"}`` paths inside ``out`` (and ``"pre_image"``).
    """
    from slidemap.formats.files import atomic_dir, check_out, write_json

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"OUT {out}: exists and is not a folder; choose another path")
    checked = SynthParams.checked(**params)
    check_out(out, MARKER, what=WHAT, option="OUT")  # refuse a user's folder before the work, not after
    study = generate_from(checked)
    files = _files(study)
    marker = SynthMarker(slidemap_version=__version__, files=files, **checked.model_dump())
    with atomic_dir(out, MARKER, what=WHAT) as tmp:
        _write_image(tmp / "image.tif", study.image, study.grid.transform, study.seed)
        if study.pre_image is not None:
            assert study.pre_transform is not None  # made with the pre-event image
            _write_image(tmp / "pre_image.tif", study.pre_image, study.pre_transform, study.seed,
                         "pre-event: before the landslides; other sun, cloud, noise and grid")
        _write_dem(tmp / "dem.tif", study)
        _write_vectors(tmp / "inventory.gpkg", tmp / "areas.gpkg", study)
        write_json(tmp / MARKER, marker)
    return {f.role: out / f.name for f in files} | {"marker": out / MARKER}


def _files(study: StudyArea) -> list[SynthFile]:
    """What :func:`synthesize` writes besides the marker, for the marker."""
    files = [SynthFile(role="image", name="image.tif", crs=IMAGE_CRS.to_string(),
                       pixel_size_m=study.grid.pixel)]
    if study.pre_image is not None:
        files.append(SynthFile(role="pre_image", name="pre_image.tif", crs=IMAGE_CRS.to_string(),
                               pixel_size_m=study.grid.pixel * PRE_EVENT_ZOOM))
    return files + [
        SynthFile(role="dem", name="dem.tif", crs=DEM_CRS.to_string(), pixel_size_m=DEM_RESOLUTION_M),
        SynthFile(role="inventory", name="inventory.gpkg", crs=INVENTORY_CRS.to_string()),
        SynthFile(role="areas", name="areas.gpkg", crs=AREAS_CRS.to_string()),
    ]


def _write_image(path: Path, image: np.ndarray, transform: Affine, seed: int,
                 acquisition: str | None = None) -> None:
    import rasterio

    from slidemap.formats.gdal import gtiff_profile

    height, width = image.shape[1:]
    profile = gtiff_profile(width, height, len(BANDS), "uint16", IMAGE_CRS, transform, nodata=0)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(image)
        ds.descriptions = BANDS
        tags = {"SOURCE": "slidemap synth", "SEED": str(seed), "UNITS": "surface reflectance x 10000"}
        if acquisition:
            tags["ACQUISITION"] = acquisition
        ds.update_tags(**tags)


def dem_grid(grid: SynthGrid) -> tuple[Affine, int, int]:
    """A 12.5 m grid in EPSG:4326 covering the image with a margin.

    Its degrees are sized at the area's centre latitude.
    """
    from rasterio.warp import transform_bounds

    from slidemap.raster.geo import meridian_radii

    x0, y0 = ORIGIN_XY
    west, south, east, north = transform_bounds(IMAGE_CRS, DEM_CRS, x0, y0 - grid.extent_m,
                                                x0 + grid.extent_m, y0, densify_pts=21)
    lat = (south + north) / 2
    m, nrad = meridian_radii(lat)
    res_y = math.degrees(DEM_RESOLUTION_M / float(m))
    res_x = math.degrees(DEM_RESOLUTION_M / (float(nrad) * math.cos(math.radians(lat))))
    pad_x, pad_y = DEM_MARGIN_M / DEM_RESOLUTION_M * res_x, DEM_MARGIN_M / DEM_RESOLUTION_M * res_y
    west, east, south, north = west - pad_x, east + pad_x, south - pad_y, north + pad_y
    width, height = math.ceil((east - west) / res_x), math.ceil((north - south) / res_y)
    return Affine(res_x, 0.0, west, 0.0, -res_y, north), width, height


def _write_dem(path: Path, study: StudyArea) -> None:
    import rasterio
    from pyproj import Transformer

    from slidemap.formats.gdal import gtiff_profile

    transform, width, height = dem_grid(study.grid)
    lon = transform.c + (np.arange(width) + 0.5) * transform.a
    lat = transform.f + (np.arange(height) + 0.5) * transform.e
    lon2, lat2 = np.meshgrid(lon, lat)
    to_utm = Transformer.from_crs(DEM_CRS, IMAGE_CRS, always_xy=True)
    x, y = to_utm.transform(lon2.ravel(), lat2.ravel())
    r, c = study.grid.terrain_index(np.asarray(x), np.asarray(y))
    z = ndimage.map_coordinates(study.elevation, [r, c], order=3, mode="nearest").reshape(height, width)
    profile = gtiff_profile(width, height, 1, "float32", DEM_CRS, transform, nodata=-9999.0)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(z.astype(np.float32), 1)
        ds.descriptions = ("elevation",)
        ds.units = ("metre",)


def _write_vectors(inventory_path: Path, areas_path: Path, study: StudyArea) -> None:
    import geopandas as gpd
    import pyogrio
    import shapely
    from pyproj import Geod

    geod = Geod(ellps="WGS84")
    slides = gpd.GeoSeries([s.outline for s in study.landslides], crs=IMAGE_CRS).to_crs(INVENTORY_CRS)
    inventory = gpd.GeoDataFrame(
        {"id": np.arange(1, len(slides) + 1, dtype=np.int32),
         "area_m2": [round(abs(geod.geometry_area_perimeter(g)[0]), 2) for g in slides]},
        geometry=slides, crs=INVENTORY_CRS)
    names = list(study.areas)
    outlines = [shapely.segmentize(study.areas[k][1], 100.0) for k in names]
    areas = gpd.GeoDataFrame({"name": names, "role": [study.areas[k][0] for k in names]},
                             geometry=gpd.GeoSeries(outlines, crs=IMAGE_CRS).to_crs(AREAS_CRS), crs=AREAS_CRS)
    from slidemap.formats.gdal import pinned_gpkg_timestamp

    with pinned_gpkg_timestamp(SYNTH_GPKG_TIMESTAMP):
        pyogrio.write_dataframe(inventory, inventory_path, layer="inventory", driver="GPKG")
        pyogrio.write_dataframe(areas, areas_path, layer="areas", driver="GPKG")
