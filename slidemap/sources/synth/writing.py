"""Writing a study area: the image, the DEM, the inventory and the areas, each in its own CRS, built in
a temporary folder that replaces ``out`` in one rename.
"""

from __future__ import annotations

import math
from pathlib import Path

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
    SynthGrid,
)
from slidemap.sources.synth.study import StudyArea, generate

GPKG_TIMESTAMP = "2011-01-12T00:00:00Z"  # fixed last_change, so the GeoPackages are byte-identical


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
    study = generate(seed=seed, size=size, pixel_size=pixel_size, landslides=landslides,
                     nodata_stripe=nodata_stripe)
    names = {"image": "image.tif", "dem": "dem.tif", "inventory": "inventory.gpkg", "areas": "areas.gpkg"}
    with atomic_dir(out, "areas.gpkg", what="synthetic study area") as tmp:
        _write_image(tmp / names["image"], study)
        _write_dem(tmp / names["dem"], study)
        _write_vectors(tmp / names["inventory"], tmp / names["areas"], study)
    return {role: out / name for role, name in names.items()}

def _write_image(path: Path, study: StudyArea) -> None:
    import rasterio

    from slidemap.raster.geo import gtiff_profile

    g = study.grid
    profile = gtiff_profile(g.size, g.size, len(BANDS), "uint16", IMAGE_CRS, g.transform, nodata=0)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(study.image)
        ds.descriptions = BANDS
        ds.update_tags(SOURCE="slidemap synth", SEED=str(study.seed), UNITS="surface reflectance x 10000")


def dem_grid(grid: SynthGrid) -> tuple[Affine, int, int]:
    """A 12.5 m grid in EPSG:4326 (degrees sized at the area's centre latitude) covering the image
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


def _write_dem(path: Path, study: StudyArea) -> None:
    import rasterio
    from pyproj import Transformer

    from slidemap.raster.geo import gtiff_profile

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
    previous = pyogrio.get_gdal_config_option("OGR_CURRENT_DATE")
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": GPKG_TIMESTAMP})
    try:
        pyogrio.write_dataframe(inventory, inventory_path, layer="inventory", driver="GPKG")
        pyogrio.write_dataframe(areas, areas_path, layer="areas", driver="GPKG")
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": previous})
