"""Shared test fixtures: tiny GeoTIFFs, inventories and areas written by the tests themselves.

``make_rasters(tmp_path, ...)`` writes a small study area with landslides at known pixel positions;
``tiny_inputs`` / ``tiny_scene`` are one such area and its prepared scene folder, built once per test
session (treat them as read-only). Everything is seeded and takes well under a second.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Landslides of the default tiny area as pixel boxes (col0, row0, col1, row1), end-exclusive, and the
# area each lies in: two in "train", one in each test area.
TINY_LANDSLIDES = ((10, 12, 20, 32), (36, 70, 50, 80), (84, 20, 100, 28), (100, 96, 110, 116))
# Named areas as pixel boxes: train on the left, two disjoint test areas on the right.
TINY_AREAS = (("train", "train", (0, 0, 64, 128)), ("test_a", "test", (72, 0, 128, 60)),
              ("test_b", "test", (72, 68, 128, 128)))
TINY_BANDS = ("blue", "green", "red", "nir")


@dataclass
class Rasters:
    """Paths of a tiny study area and what it holds (pixel boxes refer to the image grid)."""

    image: Path
    dem: Path | None
    inventory: Path | None
    areas: Path | None
    crs: CRS
    transform: Affine
    size: int
    bands: tuple[str, ...]
    pixels: np.ndarray  # (C, H, W) the image's digital numbers
    landslides: tuple[tuple[int, int, int, int], ...]
    area_boxes: tuple = field(default=TINY_AREAS)
    nodata_rows: tuple[int, int] | None = None


def pixel_box(transform: Affine, box: Sequence[int]):
    """Polygon of a pixel box (col0, row0, col1, row1) in the grid's CRS."""
    from shapely.geometry import Polygon

    c0, r0, c1, r1 = box
    return Polygon([transform @ (c0, r0), transform @ (c1, r0), transform @ (c1, r1), transform @ (c0, r1)])


def write_raster(path: Path, data: np.ndarray, crs, transform: Affine, nodata=None,
                 descriptions: Sequence[str] | None = None) -> Path:
    """Write a (C, H, W) or (H, W) array as a GeoTIFF (``crs`` may be None for a CRS-less file)."""
    data = data[None] if data.ndim == 2 else data
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype=data.dtype, crs=crs, transform=transform,
                       nodata=nodata) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
    return path


def write_vector(path: Path, geoms: Sequence, crs, src_crs=None, **columns) -> Path:
    """Write polygons (given in ``src_crs``, default ``crs``) to any OGR file, reprojected to ``crs``."""
    import geopandas as gpd

    gdf = gpd.GeoDataFrame(dict(columns), geometry=list(geoms), crs=src_crs or crs)
    if crs is not None and src_crs is not None:
        gdf = gdf.to_crs(crs)
    if crs is None:
        gdf = gdf.set_crs(None, allow_override=True)
    gdf.to_file(path)
    return path


def plane_dem(a: float, b: float, c: float = 500.0) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """z = c + a·x + b·y for x/y metres east/north of the image centre (slope atan(hypot(a, b)))."""
    return lambda x, y: c + a * x + b * y


def metric_crs(crs: CRS, lon: float, lat: float) -> CRS:
    """``crs`` if projected, else the UTM zone at ``lon``/``lat`` (a CRS to define planes in metres)."""
    if not crs.is_geographic:
        return crs
    zone = int((lon + 180) // 6) + 1
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def write_dem(path: Path, image_crs, image_bounds, dem_crs, dem_pixel: float, surface,
              surface_crs=None, margin: float = 0.15, nodata: float | None = -9999.0) -> Path:
    """A DEM in ``dem_crs`` on pixels of ``dem_pixel`` (its units) covering the image with a margin.

    ``surface(x, y)`` gives the elevation at offsets x/y (``surface_crs`` units, metres by default: the
    image CRS if projected, else its UTM zone) from the image centre, evaluated at each DEM pixel centre.
    """
    from rasterio.warp import transform_bounds

    image_crs, dem_crs = CRS.from_user_input(image_crs), CRS.from_user_input(dem_crs)
    left, bottom, right, top = transform_bounds(image_crs, dem_crs, *image_bounds)
    mx, my = (right - left) * margin, (top - bottom) * margin
    left, bottom, right, top = left - mx, bottom - my, right + mx, top + my
    w, h = int(np.ceil((right - left) / dem_pixel)), int(np.ceil((top - bottom) / dem_pixel))
    transform = Affine(dem_pixel, 0, left, 0, -dem_pixel, top)
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    xs, ys = transform @ (cols.ravel(), rows.ravel())
    centre = np.mean(image_bounds[0::2]), np.mean(image_bounds[1::2])
    if surface_crs is None:
        lon, lat = warp_transform(image_crs, "EPSG:4326", [centre[0]], [centre[1]])
        surface_crs = metric_crs(image_crs, lon[0], lat[0])
    sx, sy = warp_transform(dem_crs, surface_crs, xs, ys)
    (cx,), (cy,) = warp_transform(image_crs, surface_crs, [centre[0]], [centre[1]])
    z = surface(np.asarray(sx) - cx, np.asarray(sy) - cy).reshape(h, w).astype(np.float32)
    return write_raster(path, z, dem_crs, transform, nodata=nodata)


def surface_at(rasters: Rasters, surface, rows: np.ndarray, cols: np.ndarray, surface_crs=None) -> np.ndarray:
    """``surface`` evaluated at image pixel centres (rows, cols), as write_dem defines it."""
    x, y = rasters.transform @ (np.asarray(cols) + 0.5, np.asarray(rows) + 0.5)
    left, top = rasters.transform @ (0, 0)
    right, bottom = rasters.transform @ (rasters.size, rasters.size)
    centre = (left + right) / 2, (top + bottom) / 2
    if surface_crs is None:
        lon, lat = warp_transform(rasters.crs, "EPSG:4326", [centre[0]], [centre[1]])
        surface_crs = metric_crs(rasters.crs, lon[0], lat[0])
    sx, sy = warp_transform(rasters.crs, surface_crs, np.ravel(x), np.ravel(y))
    (cx,), (cy,) = warp_transform(rasters.crs, surface_crs, [centre[0]], [centre[1]])
    return surface(np.asarray(sx) - cx, np.asarray(sy) - cy).reshape(np.shape(x))


def make_rasters(tmp_path: Path, size: int = 128, pixel: float = 10.0, crs="EPSG:32633",
                 origin: tuple[float, float] = (500000.0, 5100000.0), seed: int = 0,
                 bands: Sequence[str] | None = TINY_BANDS, dem: bool = True, dem_crs="EPSG:4326",
                 dem_pixel: float | None = None, surface=None, surface_crs=None,
                 inventory_crs="EPSG:4326",
                 inventory_name: str = "inventory.gpkg", areas: bool = True,
                 nodata_rows: tuple[int, int] | None = None) -> Rasters:
    """Write a tiny study area into ``tmp_path``: image.tif (uint16, ``bands`` as descriptions, nodata 0),
    dem.tif (by default the plane z = 500 + 0.3·x - 0.2·y in metres, on a grid twice as coarse, in
    ``dem_crs``; see write_dem), the inventory (landslides of
    TINY_LANDSLIDES scaled to ``size``, in ``inventory_crs``) and areas.gpkg (TINY_AREAS scaled).

    ``origin`` is the image's top-left corner in ``crs`` units (and ``pixel`` is in those units, so a
    geographic image takes degrees). ``nodata_rows`` blanks rows [r0, r1) of the image to nodata.
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    crs = CRS.from_user_input(crs)
    rng = np.random.default_rng(seed)
    transform = Affine(pixel, 0, origin[0], 0, -pixel, origin[1])
    scale = size / 128
    slides = tuple(tuple(int(round(v * scale)) for v in box) for box in TINY_LANDSLIDES)
    area_boxes = tuple((n, r, tuple(int(round(v * scale)) for v in box)) for n, r, box in TINY_AREAS)
    nb = len(bands) if bands else 3
    pixels = (rng.normal(800, 60, size=(nb, size, size)) + 100 * np.arange(nb)[:, None, None])
    for c0, r0, c1, r1 in slides:
        pixels[:, r0:r1, c0:c1] += 1500
    pixels = np.clip(pixels, 1, 60000).astype(np.uint16)
    if nodata_rows:
        pixels[:, nodata_rows[0]:nodata_rows[1], :] = 0
    image = write_raster(tmp_path / "image.tif", pixels, crs, transform, nodata=0,
                         descriptions=list(bands) if bands else None)
    bounds = rasterio.transform.array_bounds(size, size, transform)  # left, bottom, right, top
    dem_path = None
    if dem:
        dem_crs = CRS.from_user_input(dem_crs)
        if dem_pixel is None:  # twice the image pixel, in the DEM's units
            dem_pixel = 2 * pixel_metres(crs, pixel) / (111_000.0 if dem_crs.is_geographic else 1.0)
        dem_path = write_dem(tmp_path / "dem.tif", crs, bounds, dem_crs, dem_pixel,
                             surface or plane_dem(0.3, -0.2), surface_crs=surface_crs)
    inv_path = None
    if inventory_name:
        geoms = [pixel_box(transform, b) for b in slides]
        inv_path = write_vector(tmp_path / inventory_name, geoms, inventory_crs, src_crs=crs,
                                id=list(range(1, len(geoms) + 1)))
    areas_path = None
    if areas:
        geoms = [pixel_box(transform, b) for _, _, b in area_boxes]
        areas_path = write_vector(tmp_path / "areas.gpkg", geoms, "EPSG:4326", src_crs=crs,
                                  name=[n for n, _, _ in area_boxes], role=[r for _, r, _ in area_boxes])
    return Rasters(image, dem_path, inv_path, areas_path, crs, transform, size,
                   tuple(bands) if bands else tuple(f"band{i + 1}" for i in range(nb)), pixels, slides,
                   area_boxes, nodata_rows)


def pixel_metres(crs: CRS, pixel: float) -> float:
    """Rough metres of ``pixel`` CRS units (for choosing a DEM pixel size)."""
    return pixel * 111_000.0 if crs.is_geographic else pixel


@pytest.fixture(scope="session")
def tiny_inputs(tmp_path_factory) -> Rasters:
    """A 128 px study area: 4-band image, plane DEM (EPSG:4326), 4 landslides, train + 2 test areas."""
    return make_rasters(tmp_path_factory.mktemp("tiny_inputs"))


@pytest.fixture(scope="session")
def tiny_scene(tmp_path_factory, tiny_inputs) -> Path:
    """The prepared scene folder of ``tiny_inputs`` (read-only: shared by the whole session)."""
    from slidemap.stages import prepare

    out = tmp_path_factory.mktemp("tiny_scene") / "scene"
    return prepare.run(prepare.PrepareOptions(images=[tiny_inputs.image], out=out, dem=tiny_inputs.dem,
                                              inventory=tiny_inputs.inventory, areas=tiny_inputs.areas)).path


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """What slidemap measures on this machine goes to a cache of the test session, never the user's ~/.cache."""
    import os

    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


def cli_error(capsys, argv) -> str:
    """Run the real CLI, expect exit status 2 and exactly one ``error:`` line on stderr; return it."""
    from slidemap.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def write_l4s(folder: Path, patches: int = 4) -> Path:
    """A Landslide4Sense folder: img/image_N.h5 and mask/mask_N.h5 (about 0.9 MB per patch)."""
    import h5py

    from slidemap.sources.l4s import L4S_BANDS, L4S_SIZE

    (folder / "img").mkdir(parents=True)
    (folder / "mask").mkdir()
    rng = np.random.default_rng(0)
    for n in range(1, patches + 1):
        with h5py.File(folder / "img" / f"image_{n}.h5", "w") as f:
            f.create_dataset("img", data=rng.random((L4S_SIZE, L4S_SIZE, len(L4S_BANDS)), dtype=np.float32))
        with h5py.File(folder / "mask" / f"mask_{n}.h5", "w") as f:
            f.create_dataset("mask", data=(rng.random((L4S_SIZE, L4S_SIZE)) < 0.1).astype(np.uint8))
    return folder
