"""``slidemap prepare``: co-register images, DEM, inventory and areas into a scene folder.

The first image defines the grid (or, with ``--resolution``, a grid of that many metres over its extent).
Every other input is brought onto it (``slidemap.raster.align``): images, pre-event images and the DEM are
warped, averaged where the grid coarsens them and bilinear otherwise (GDAL, through a virtual warped dataset
read window by window, so memory stays bounded); an inventory of polygons and the areas are reprojected as
vectors and rasterised with the centre rule; a label raster inventory is resampled nearest
(``slidemap.raster.labels``; pixels whose truth it does not know are 255 in mask.tif). Spectral indices and
change layers are computed block by block (``slidemap.raster.indices``), terrain layers from the warped
DEM with true metric pixel sizes (``slidemap.raster.terrain``); ``slidemap.raster.layers`` reads a block.

Two passes over the grid, block by block: the first writes ``stack.tif`` and ``mask.tif``; the second
reads them back to measure each area (landslides, km²) and the band statistics over the train area(s).
Everything is checked before anything is written, and the folder is built in a temporary sibling
(``atomic_dir``), so a bad input or an interruption never leaves a scene folder behind.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import rasterio
from affine import Affine
from pydantic import Field, ValidationInfo, field_validator, model_validator
from rasterio import features
from rasterio.crs import CRS

from slidemap.errors import UserError
from slidemap.figures import QUICKLOOK_SIZE, render_quicklook
from slidemap.formats.files import atomic_dir, sha256
from slidemap.formats.gdal import GDAL_CACHE_MB, gtiff_profile, is_raster, open_raster, pinned_gpkg_timestamp
from slidemap.formats.scene import NODATA_MASK, Recipe, Scene, SceneMeta
from slidemap.progress import bar
from slidemap.raster.align import MAX_RESOLUTION_M, MIN_RESOLUTION_M, OnGrid, aligned, grid_of, target_grid
from slidemap.raster.areas import empty_areas, load_areas, split_areas
from slidemap.raster.bands import (
    PRE_PREFIX,
    SPECTRAL_INDICES,
    TERRAIN_LAYERS,
    change_name,
    rgb_band_indexes,
)
from slidemap.raster.geo import Grid, block_windows, masked_area_km2, pixel_size_m, row_pixel_areas_m2
from slidemap.raster.indices import index_inputs
from slidemap.raster.inventory import Inventory, LandslideCounter, PolygonInventory, load_polygons
from slidemap.raster.labels import LabelRaster, open_label_raster
from slidemap.raster.layers import StackSources
from slidemap.raster.stats import RunningStats
from slidemap.stages.options import Paths, StageOptions, StageResult

if TYPE_CHECKING:
    import geopandas as gpd

BLOCK = 1024  # pixels per side of a processing block (a multiple of the 256 px GeoTIFF tiles)


class PrepareWarning(UserWarning):
    """Something a user should know about the inputs that does not stop the scene being prepared."""


class PrepareOptions(StageOptions):
    """Everything ``slidemap prepare`` takes (see ``slidemap prepare --help``).

    ``images`` are stacked in order, the first defining the grid, or ``resolution`` (ground metres, also
    for a geographic CRS) a grid of that pixel size over the first image's extent; ``dem`` (any
    CRS/resolution) is warped onto the grid; ``inventory`` is landslide polygons (any OGR format and CRS,
    rasterised) or a label raster (any grid and CRS, resampled nearest: ``label_values`` are landslide,
    default 1; its nodata and ``unlabelled_values`` are unknown, 255 in mask.tif); None: a scene to
    predict only. ``areas`` names train/test polygons, or ``split`` ("3:2") cuts the scene along
    ``split_axis`` where its valid area divides in that ratio (neither: statistics over all valid pixels);
    ``terrain`` lists the layers derived from the DEM; ``all_touched`` marks every pixel a polygon touches.
    ``indices`` adds spectral indices of the image bands (found by name through the band alias table);
    ``pre_images`` (any grid, co-registered like the images) add their bands as ``pre_<band>`` (named by
    ``pre_band_names``, else their descriptions, else the image band names) and, for each index of
    ``change`` (default: every one of ``indices``), the change layer ``d<index>`` (after minus before).
    """

    images: Paths
    """Image GeoTIFF(s), stacked in the given order; the first one defines the grid."""
    out: Path
    """Scene folder to write."""
    dem: Path | None = None
    """DEM raster, any CRS and resolution (averaged where the grid is coarser, else bilinear)."""
    inventory: Path | None = None
    """Landslide polygons (any OGR format and CRS), or a label raster (any grid and CRS; see --label-values)."""
    areas: Path | None = None
    """Named areas (columns name, role=train|test); give neither this nor --split for a scene only to predict."""
    split: str | None = None
    """Cut the scene into train:test (by valid area) along --split-axis, e.g. 3:2."""
    split_axis: Literal["x", "y"] = "x"
    """Axis of --split: x (left train, right test) or y (top/bottom)."""
    terrain: list[str] = ["dem", "slope"]
    """Terrain layers from the DEM: any of dem, slope, aspect, hillshade, comma-separated."""
    band_names: list[str] | None = None
    """Names of the image bands in order, comma-separated (default: the files' band descriptions, else band1,
    band2, ...)."""
    all_touched: bool = False
    """Mask every pixel a polygon touches, not only centres inside."""
    label_values: list[float] | None = None
    """Label raster: comma-separated values that mean landslide (default 1); its nodata and
    --unlabelled-values are unknown (255 in mask.tif, counted nowhere), other values background."""
    unlabelled_values: list[float] = []
    """Label raster: comma-separated values that mean 'not labelled' (besides its nodata)."""
    resolution: float | None = Field(None, ge=MIN_RESOLUTION_M, le=MAX_RESOLUTION_M)
    """Pixel size of the scene in metres (also for geographic CRSs); default: the first image's. Inputs are
    averaged where this coarsens them, else bilinear; terrain is derived and the inventory rasterised on the
    new grid."""
    indices: list[str] = []
    """Spectral indices to add, comma-separated: any of ndvi, ndwi, brightness, nbr (bands found by name:
    red/green/nir/... or B4/B3/B8/...)."""
    pre_images: list[Path] = []
    """Pre-event image(s), any grid; adds their bands as pre_<band> and, for each of --indices, the change
    layer d<index> (after minus before)."""
    pre_band_names: list[str] | None = None
    """Names of the pre-event bands, comma-separated (default: their descriptions, else the image band
    names)."""
    change: list[str] | None = None
    """Indices that get a change layer d<index> with --pre-image, comma-separated (default: every one of
    --indices)."""

    @field_validator("pre_images", mode="before")
    @classmethod
    def _one_or_more(cls, v: Any) -> Any:
        return [v] if isinstance(v, str | Path) else ([] if v is None else v)

    @field_validator("terrain")
    @classmethod
    def _terrain(cls, terrain: list[str]) -> list[str]:
        names = [t.strip().lower() for t in terrain if t.strip()]
        unknown = [n for n in names if n not in TERRAIN_LAYERS]
        if unknown:
            raise ValueError(f"unknown layer {', '.join(unknown)}; choose from {','.join(TERRAIN_LAYERS)}")
        return list(dict.fromkeys(names))

    @field_validator("indices", "change")
    @classmethod
    def _indices(cls, indices: list[str] | None) -> list[str] | None:
        if indices is None:
            return None
        names = [t.strip().lower() for t in indices if t.strip()]
        unknown = [n for n in names if n not in SPECTRAL_INDICES]
        if unknown:
            raise ValueError(f"unknown index {', '.join(unknown)}; choose from {','.join(SPECTRAL_INDICES)}")
        return list(dict.fromkeys(names))

    @field_validator("label_values", "unlabelled_values")
    @classmethod
    def _values(cls, values: list[float] | None, info: ValidationInfo) -> list[float] | None:
        if values is None:
            return None
        if not all(np.isfinite(values)):
            raise ValueError("values must be finite numbers, e.g. 1,2")
        if info.data.get("inventory") is None and (values or info.field_name == "label_values"):
            raise ValueError("goes with a label raster --inventory")
        both = sorted(set(values) & set(info.data.get("label_values") or []))
        if info.field_name == "unlabelled_values" and both:
            raise ValueError(f"{both[0]:g} is also in --label-values; a value is either landslide or unknown")
        return list(dict.fromkeys(values))

    @field_validator("pre_band_names")
    @classmethod
    def _pre_names(cls, names: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if names is not None and not info.data.get("pre_images"):
            raise ValueError("goes with --pre-image")
        return names

    @field_validator("change")
    @classmethod
    def _change(cls, change: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if change and not info.data.get("pre_images"):
            raise ValueError("goes with --pre-image (change layers compare before and after)")
        missing = [c for c in change or [] if c not in info.data.get("indices", [])]
        if missing:
            raise ValueError(f"{', '.join(missing)} is not among --indices; a change layer needs its index")
        return change

    @field_validator("split")
    @classmethod
    def _split(cls, split: str | None) -> str | None:
        if split is None:
            return None
        try:
            train, test = (int(p) for p in split.split(":"))
        except ValueError:
            raise ValueError("expected TRAIN:TEST with whole numbers, e.g. 3:2") from None
        if train <= 0 or test <= 0:
            raise ValueError("both parts must be positive, e.g. 3:2")
        return split

    @model_validator(mode="after")
    def _consistent(self) -> PrepareOptions:
        if self.areas is not None and self.split is not None:
            raise ValueError("give --areas or --split, not both")
        return self

    @property
    def ratio(self) -> tuple[int, int] | None:
        """``split`` as (train, test) parts, e.g. (3, 2); None without ``split``."""
        return None if self.split is None else cast(tuple[int, int], tuple(int(p) for p in self.split.split(":")))


class PrepareResult(StageResult):
    """The scene folder written and its scene.json."""

    path: Path
    meta: SceneMeta


def _warn(message: str) -> None:
    warnings.warn(message, PrepareWarning, stacklevel=4)


def run(options: PrepareOptions) -> PrepareResult:
    """Write a scene folder (replaced atomically if it is an earlier scene) and describe it."""
    image_paths, dem, inventory, areas = options.images, options.dem, options.inventory, options.areas
    split_axis = options.split_axis
    terrain = options.terrain if dem is not None else []
    ratio = options.ratio
    first = image_paths[0]

    with contextlib.ExitStack() as stack:
        image_ds = [stack.enter_context(open_raster(p, "--image")) for p in image_paths]
        native = grid_of(image_ds[0], first)
        grid = target_grid(native, options.resolution)
        readers = [stack.enter_context(aligned(ds, grid, "--image", p, first))
                   for ds, p in zip(image_ds, image_paths, strict=True)]
        image_bands = _band_names(image_ds, image_paths, options.band_names, reserved=terrain)
        where = f"--image ({'+'.join(p.name for p in image_paths)})"
        indices = {n: index_inputs(image_bands, n, "--indices", where) for n in options.indices}
        pre_readers, pre_bands, change = [], [], {}
        if options.pre_images:
            pre_ds = [stack.enter_context(open_raster(p, "--pre-image")) for p in options.pre_images]
            pre_readers = [stack.enter_context(aligned(ds, grid, "--pre-image", p, first,
                                                       what="the pre-event image"))
                           for ds, p in zip(pre_ds, options.pre_images, strict=True)]
            pre_bands = _pre_band_names(pre_ds, options.pre_images, options.pre_band_names, image_bands)
            where = f"--pre-image ({'+'.join(p.name for p in options.pre_images)})"
            change = {n: index_inputs(pre_bands, n, "--indices", where)
                      for n in (options.indices if options.change is None else options.change)}
            if not change:
                _warn("--pre-image: no change layer is made (only the pre_* bands); add e.g. --indices "
                      "ndvi for dndvi")
        dem_reader = None
        if dem is not None:
            dem_ds = stack.enter_context(open_raster(dem, "--dem"))
            dem_reader = stack.enter_context(aligned(dem_ds, grid, "--dem", Path(dem), first, what="the DEM"))
        inv = _open_inventory(stack, options, grid, first)
        area_gdf = load_areas(Path(areas), grid) if areas is not None else None
        sources = StackSources(grid, readers, image_bands, indices, pre_readers, pre_bands, change,
                               dem_reader, list(terrain), inv)
        bands = sources.bands

        # Band statistics are gathered while the stack is written: over the train area(s) when given,
        # per column (row) for a --split, whose cut is only known afterwards; else over all valid pixels.
        train_geoms = None
        if area_gdf is not None and (area_gdf["role"] == "train").any():
            train_geoms = list(area_gdf.loc[area_gdf["role"] == "train"].geometry)
        lines = grid.width if split_axis == "x" else grid.height
        stats = RunningStats(len(bands), lines if ratio is not None else 1)
        inputs = [*image_paths, *options.pre_images, *(p for p in (dem, inventory, areas) if p is not None)]
        with atomic_dir(options.out, "scene.json", inputs, "scene") as tmp, \
                rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            valid_profile, overview, truth_km2 = _write_layers(tmp, sources, stats,
                                                               split_axis if ratio else None, train_geoms)
            if ratio is not None:
                area_gdf, cut = split_areas(grid, valid_profile, ratio, split_axis)
                stats = stats.merged(np.arange(lines) < cut)
            if area_gdf is None:
                area_gdf = empty_areas(grid)
            with pinned_gpkg_timestamp():
                area_gdf.to_file(tmp / "areas.gpkg", driver="GPKG", layer="areas")
            area_rows, scene_row = _summarise(tmp, grid, area_gdf, inv)
            _quicklook(tmp, grid, overview, inv, area_gdf, first, image_bands)
            SceneMeta(**{
                "bands": bands,
                "image_bands": image_bands,
                "terrain": list(terrain),
                "crs": _crs_string(grid.crs),
                "transform": list(grid.transform)[:6],
                "width": grid.width,
                "height": grid.height,
                "pixel_size_m": list(pixel_size_m(grid.crs, grid.transform, grid.height)),
                "stats": stats.as_dict(bands),
                "stats_over": "train" if any(a["role"] == "train" for a in area_rows) else "all",
                "areas": area_rows,
                "inventory": _inventory_info(inv, scene_row, truth_km2),
                "split": None if ratio is None else {"ratio": list(ratio), "axis": split_axis},
                "sources": _sources(options, readers, pre_readers, dem_reader, inv),
                "quicklook": "quicklook.png",
                "recipe": Recipe(image_bands=image_bands, terrain=list(terrain), indices=list(indices),
                                 pre_bands=pre_bands, change=list(change), resolution_m=options.resolution),
                "native_pixel_size_m": list(pixel_size_m(native.crs, native.transform, native.height)),
            }).save(tmp / "scene.json")
    scene = Scene(options.out)
    return PrepareResult(path=scene.path, meta=scene.meta)


# --- checks and loading ---------------------------------------------------------------------------

def _band_names(datasets: Sequence[rasterio.DatasetReader], paths: Sequence[Path],
                given: Sequence[str] | None, reserved: Sequence[str]) -> list[str]:
    """Names of the image bands: ``given``, else each file's band descriptions, else band<k>.

    k counts all image bands. Names are made unique, and never the name of a terrain layer, an index, a change
    layer or a pre-event layer (``pre_*``): prediction tells layers apart by name.
    """
    counts = [ds.count for ds in datasets]
    total = sum(counts)
    derived = set(reserved) | set(SPECTRAL_INDICES) | {change_name(i) for i in SPECTRAL_INDICES}
    if given is not None:
        names = [str(n).strip() for n in given]
        if len(names) != total:
            per_file = ", ".join(f"{p.name}: {c}" for p, c in zip(paths, counts, strict=True))
            raise UserError(f"--band-names: {len(names)} names for {total} image bands ({per_file}); "
                            f"give one name per band")
        dup = sorted({n for n in names if names.count(n) > 1} | {n for n in names if n in derived
                                                                  or n.startswith(PRE_PREFIX)})
        if dup or not all(names):
            raise UserError(f"--band-names: names must be unique, non-empty and not a terrain layer, index "
                            f"(ndvi, ...), change layer (dndvi, ...) or pre_* (clash: "
                            f"{', '.join(dup) or 'empty name'})")
        return names
    names = []
    for ds in datasets:
        for desc in ds.descriptions:
            name = (desc or "").strip().replace(",", "_") or f"band{len(names) + 1}"
            names.append("image_" + name if name.startswith(PRE_PREFIX) else name)
    return _unique(names, derived)


def _unique(names: Sequence[str], taken: set[str]) -> list[str]:
    seen, unique = set(taken), []
    for n in names:
        candidate, k = n, 2
        while candidate in seen:
            candidate, k = f"{n}_{k}", k + 1
        seen.add(candidate)
        unique.append(candidate)
    return unique


def _pre_band_names(datasets: Sequence[rasterio.DatasetReader], paths: Sequence[Path],
                    given: Sequence[str] | None, image_bands: Sequence[str]) -> list[str]:
    """Names (without the pre_ prefix) of the pre-event images' bands.

    ``given``, else the files' band descriptions when every band has one, else the image band names when the
    counts agree, else band<k>.
    """
    counts = [ds.count for ds in datasets]
    total = sum(counts)
    if given is not None:
        names = [str(n).strip() for n in given]
        if len(names) != total:
            per_file = ", ".join(f"{p.name}: {c}" for p, c in zip(paths, counts, strict=True))
            raise UserError(f"--pre-band-names: {len(names)} names for {total} pre-event bands ({per_file}); "
                            f"give one name per band")
        if len(set(names)) != len(names) or not all(names):
            raise UserError("--pre-band-names: names must be unique and non-empty")
        return names
    described = [(d or "").strip().replace(",", "_") for ds in datasets for d in ds.descriptions]
    if all(described):
        return _unique(described, set())
    if total == len(image_bands):
        return list(image_bands)
    return [d or f"band{k}" for k, d in enumerate(described, start=1)]


def _open_inventory(stack: contextlib.ExitStack, options: PrepareOptions, grid: Grid, first: Path,
                    ) -> Inventory | None:
    """The inventory: a label raster if GDAL reads it as a raster, else polygons (any OGR vector)."""
    if options.inventory is None:
        return None
    path = Path(options.inventory)
    if is_raster(path, "--inventory"):
        if options.all_touched:
            raise UserError(f"--all-touched: applies to polygon inventories; {path} is a label raster")
        return stack.enter_context(open_label_raster(path, grid, first, options.label_values or [1.0],
                                                     options.unlabelled_values))
    if options.label_values is not None or options.unlabelled_values:
        raise UserError(f"--label-values / --unlabelled-values: {path} is a vector of polygons, not a label "
                        f"raster; drop them (every polygon is a landslide)")
    return load_polygons(path, grid, options.all_touched, _warn)


# --- pass 1: stack and mask -----------------------------------------------------------------------

def _write_layers(folder: Path, sources: StackSources, stats: RunningStats, split_axis: str | None,
                  train_geoms: list | None) -> tuple[dict[str, np.ndarray], tuple, dict[str, float]]:
    """Write stack.tif and mask.tif block by block, adding the valid pixels to ``stats`` on the way.

    Pixels are added per column or row along ``split_axis`` if given, else those inside ``train_geoms`` if given.

    Returns the valid area (m²) per column and per row (to place a --split cut), a decimated copy of the
    true-colour bands for the quicklook, gathered on the way so the stack is not read again, and the valid
    km² whose truth the inventory knows (``labelled``) and does not (``unknown``).
    """
    grid, bands = sources.grid, sources.bands
    stack_profile = gtiff_profile(grid.width, grid.height, len(bands), "float32", grid.crs, grid.transform,
                                  nodata=float("nan"))
    mask_profile = gtiff_profile(grid.width, grid.height, 1, "uint8", grid.crs, grid.transform,
                                 nodata=None)
    col_m2 = np.zeros(grid.width)
    row_m2 = np.zeros(grid.height)
    truth_m2 = {"labelled": 0.0, "unknown": 0.0}
    rgb = rgb_band_indexes(bands)
    step = max(1, -(-max(grid.width, grid.height) // QUICKLOOK_SIZE))
    overview = np.full((3, -(-grid.height // step), -(-grid.width // step)), np.nan, dtype=np.float32)
    windows = list(block_windows(grid.width, grid.height, BLOCK))
    with contextlib.ExitStack() as stack, rasterio.open(folder / "stack.tif", "w", **stack_profile) as dst, \
            rasterio.open(folder / "mask.tif", "w", **mask_profile) as mdst, bar() as progress:
        for i, name in enumerate(bands, start=1):
            dst.set_band_description(i, name)
        mdst.set_band_description(1, "landslide")
        task = progress.add_task("stack + mask", total=len(windows))
        # A reader thread reads (and warps) block k + 1 while this one compresses and writes block k:
        # GDAL drops the GIL for both, and only that thread touches the input datasets.
        reader = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="slidemap-read"))
        pending = reader.submit(sources.read, windows[0])
        for k, w in enumerate(windows):
            layers, valid, truth = pending.result()
            if k + 1 < len(windows):
                pending = reader.submit(sources.read, windows[k + 1])
            layers[:, ~valid] = np.nan
            dst.write(layers, window=w)
            r0, c0 = int(w.row_off), int(w.col_off)
            if split_axis is not None:
                stats.add_lines(layers, valid, split_axis, c0 if split_axis == "x" else r0)
            else:
                counted = valid if train_geoms is None else valid & features.geometry_mask(
                    train_geoms, out_shape=valid.shape, transform=grid.window_transform(w), invert=True)
                stats.add(layers[:, counted])
            mask = np.zeros(valid.shape, dtype=np.uint8) if truth is None else truth
            row_area = row_pixel_areas_m2(grid.crs, grid.transform, r0, int(w.height))
            unknown = valid & (mask == NODATA_MASK)
            truth_m2["unknown"] += float((unknown.sum(axis=1) * row_area).sum())
            truth_m2["labelled"] += float(((valid & ~unknown).sum(axis=1) * row_area).sum())
            mask[~valid] = NODATA_MASK
            mdst.write(mask, 1, window=w)
            col_m2[c0:c0 + int(w.width)] += (valid * row_area[:, None]).sum(axis=0)
            row_m2[r0:r0 + int(w.height)] += valid.sum(axis=1) * row_area
            first_r, first_c = -r0 % step, -c0 % step
            sub = layers[rgb][:, first_r::step, first_c::step]
            orow, ocol = (r0 + first_r) // step, (c0 + first_c) // step
            overview[:, orow:orow + sub.shape[1], ocol:ocol + sub.shape[2]] = sub
            progress.advance(task)
    if not col_m2.any():
        raise UserError("--image: the images (and DEM) have no pixel where all of them hold data; check "
                        "their nodata values and footprints")
    overview_grid = grid.transform @ Affine.scale(step)
    return ({"x": col_m2, "y": row_m2}, (overview, overview_grid, [bands[i] for i in rgb]),
            {k: v / 1e6 for k, v in truth_m2.items()})


# --- pass 2: statistics and per-area figures ------------------------------------------------------

def _summarise(folder: Path, grid: Grid, area_gdf: gpd.GeoDataFrame,
               inv: Inventory | None) -> tuple[list[dict], dict]:
    """Per-area figures and the whole scene's landslides, from mask.tif.

    Not from the stack: the band statistics came with the write pass.

    An area's landslides are the inventory's landslides (polygons, or connected components of a label
    raster) that own at least one of its valid landslide pixels: the count agrees with the mask (a polygon
    in nodata or smaller than a pixel has none).
    """
    names, roles, geoms = list(area_gdf["name"]), list(area_gdf["role"]), list(area_gdf.geometry)
    n = len(names)
    area_m2, valid_m2, slide_m2, slide_px = (np.zeros(n) for _ in range(4))
    row_lo, col_lo = np.full(n, grid.height), np.full(n, grid.width)
    row_hi, col_hi = np.full(n, -1), np.full(n, -1)
    slide_ids: list[set[int]] = [set() for _ in range(n)]
    scene_ids: set[int] = set()
    scene = {"m2": 0.0, "pixels": 0}
    counter = LandslideCounter(inv, grid.width)
    windows = list(block_windows(grid.width, grid.height, BLOCK))
    with rasterio.open(folder / "mask.tif") as msrc, bar() as progress:
        task = progress.add_task("areas", total=len(windows))
        for w in windows:
            mask = msrc.read(1, window=w)
            valid = mask != NODATA_MASK
            r0, c0 = int(w.row_off), int(w.col_off)
            shape = mask.shape
            wt = grid.window_transform(w)
            landslide = mask == 1
            ids = counter.owners(w, landslide)
            scene_ids.update(np.unique(ids[landslide]).tolist())
            row_area = row_pixel_areas_m2(grid.crs, grid.transform, r0, shape[0])
            scene["m2"] += masked_area_km2(landslide, row_area) * 1e6
            scene["pixels"] += int(landslide.sum())
            for i, geom in enumerate(geoms):
                inside = features.geometry_mask([geom], out_shape=shape, transform=wt, invert=True)
                if not inside.any():
                    continue
                area_m2[i] += masked_area_km2(inside, row_area) * 1e6
                valid_m2[i] += masked_area_km2(inside & valid, row_area) * 1e6
                slide = inside & landslide
                slide_m2[i] += masked_area_km2(slide, row_area) * 1e6
                slide_px[i] += slide.sum()
                slide_ids[i].update(np.unique(ids[slide]).tolist())
                rows, cols = np.nonzero(inside.any(axis=1))[0], np.nonzero(inside.any(axis=0))[0]
                row_lo[i], row_hi[i] = min(row_lo[i], r0 + rows[0]), max(row_hi[i], r0 + rows[-1])
                col_lo[i], col_hi[i] = min(col_lo[i], c0 + cols[0]), max(col_hi[i], c0 + cols[-1])
            progress.advance(task)

    rows_out = []
    for i in range(n):
        if valid_m2[i] == 0:
            warnings.warn(f"area {names[i]}: holds no valid pixel (all nodata)", PrepareWarning, stacklevel=3)
        bounds = None
        if row_hi[i] >= 0:
            bounds = {"row_off": int(row_lo[i]), "col_off": int(col_lo[i]),
                      "height": int(row_hi[i] - row_lo[i] + 1), "width": int(col_hi[i] - col_lo[i] + 1)}
        rows_out.append({"name": names[i], "role": roles[i], "area_km2": area_m2[i] / 1e6,
                         "valid_km2": valid_m2[i] / 1e6, "landslides": counter.count(slide_ids[i]),
                         "landslide_km2": slide_m2[i] / 1e6, "landslide_pixels": int(slide_px[i]),
                         "bounds": bounds})
    return rows_out, {"landslides": counter.count(scene_ids), "landslide_km2": scene["m2"] / 1e6,
                      "landslide_pixels": scene["pixels"]}


# --- outputs --------------------------------------------------------------------------------------

def _inventory_info(inv: Inventory | None, scene_row: dict, truth_km2: dict[str, float]) -> dict | None:
    if inv is None:
        return None
    figures = {**scene_row, "labelled_km2": truth_km2["labelled"], "unknown_km2": truth_km2["unknown"]}
    if isinstance(inv, LabelRaster):
        if scene_row["landslides"] == 0:
            values = ",".join(f"{v:g}" for v in inv.label_values)
            _warn(f"--inventory {inv.path}: no valid pixel of the scene holds label value(s) {values}; the "
                  f"mask has no landslides (give the landslide classes with --label-values)")
        return {"path": str(inv.path.resolve()), "kind": "raster", "features": scene_row["landslides"],
                "inside": scene_row["landslides"], "label_values": list(inv.label_values),
                "unlabelled_values": list(inv.unlabelled_values), "nodata": inv.nodata, **figures}
    return {"path": str(inv.path.resolve()), "kind": "polygons", "features": inv.features,
            "repaired": inv.repaired, "inside": inv.inside, "all_touched": inv.all_touched, **figures}


def _quicklook(folder: Path, grid: Grid, overview: tuple[np.ndarray, Affine, list[str]],
               inv: Inventory | None, area_gdf: gpd.GeoDataFrame, first_image: Path,
               image_bands: list[str]) -> None:
    pixels, transform, names = overview
    title = f"{first_image.name}: {', '.join(image_bands[:8])}" + ("…" if len(image_bands) > 8 else "")
    if isinstance(inv, PolygonInventory):
        title += f" | {inv.inside} landslide polygons"
    elif inv is not None:
        title += f" | label raster {inv.path.name}"
    render_quicklook(folder / "quicklook.png", pixels, transform, grid.crs, names,
                     inventory=inv.gdf if isinstance(inv, PolygonInventory) else None, areas=area_gdf,
                     title=title)


def _sources(options: PrepareOptions, readers: Sequence[OnGrid], pre_readers: Sequence[OnGrid],
             dem_reader: OnGrid | None, inv: Inventory | None) -> list[dict]:
    """Every input with its checksum and how it was brought onto the grid ("none": it lay on it)."""
    items: list[tuple[str, Path, str | None]] = [("image", p, r.resampling)
                                                 for p, r in zip(options.images, readers, strict=True)]
    items += [("pre_image", p, r.resampling) for p, r in zip(options.pre_images, pre_readers, strict=True)]
    if options.dem is not None:
        assert dem_reader is not None  # opened whenever --dem is given
        items.append(("dem", Path(options.dem), dem_reader.resampling))
    if options.inventory is not None:
        how = inv.reader.resampling if isinstance(inv, LabelRaster) else "rasterised"
        items.append(("inventory", Path(options.inventory), how))
    if options.areas is not None:
        items.append(("areas", Path(options.areas), None))
    return [{"role": role, "path": str(p.resolve()), "sha256": sha256(p), "resampling": how}
            for role, p, how in items]


def _crs_string(crs: CRS) -> str:
    """``EPSG:n`` when the CRS is exactly that code (readable), else its WKT (lossless)."""
    epsg = crs.to_epsg()
    if epsg is not None and CRS.from_epsg(epsg) == crs:
        return f"EPSG:{epsg}"
    return crs.to_wkt()
