"""``slidemap prepare``: co-register images, DEM, inventory and areas into a scene folder.

The first image defines the grid. Every other input is brought onto it: images on another grid and the
DEM are warped bilinearly (GDAL, through a virtual warped dataset read window by window, so memory stays
bounded), the inventory and the areas are reprojected as vectors and rasterised with the centre rule.
Terrain layers are computed from the warped DEM with true metric pixel sizes (see ``slidemap.raster.terrain``).

Two passes over the grid, block by block: the first writes ``stack.tif`` and ``mask.tif``; the second
reads them back to measure each area (landslides, km²) and the band statistics over the train area(s).
Everything is checked before anything is written, and the folder is built in a temporary sibling
(``atomic_dir``), so a bad input or an interruption never leaves a scene folder behind.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio
from affine import Affine
from pydantic import field_validator, model_validator
from rasterio import features
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from slidemap.errors import UserError
from slidemap.figures import QUICKLOOK_SIZE, render_quicklook
from slidemap.formats.files import atomic_dir, sha256
from slidemap.formats.gdal import (
    GDAL_CACHE_MB,
    gtiff_profile,
    open_raster,
    pinned_gpkg_timestamp,
    read_vector,
)
from slidemap.formats.scene import NODATA_MASK, Scene, SceneMeta
from slidemap.progress import bar
from slidemap.raster.bands import TERRAIN_LAYERS, rgb_band_indexes
from slidemap.raster.geo import (
    Grid,
    block_windows,
    bounds_overlap,
    masked_area_km2,
    pixel_size_m,
    row_pixel_areas_m2,
    row_pixel_sizes_m,
)
from slidemap.raster.stats import RunningStats
from slidemap.raster.terrain import terrain_layers
from slidemap.stages.options import Paths, StageOptions, StageResult

BLOCK = 1024  # pixels per side of a processing block (a multiple of the 256 px GeoTIFF tiles)
ROLES = ("train", "test")


class PrepareWarning(UserWarning):
    """Something a user should know about the inputs that does not stop the scene being prepared."""


@dataclass
class Inventory:
    """The landslide polygons, reprojected to the scene CRS and repaired."""

    path: Path
    gdf: object  # GeoDataFrame (geometry only), polygons intersecting the scene
    features: int
    repaired: int

    @property
    def inside(self) -> int:
        return len(self.gdf)


class PrepareOptions(StageOptions):
    """Everything ``slidemap prepare`` takes (see ``slidemap prepare --help``).

    ``images`` are stacked in order, the first defining the grid; ``dem`` (any CRS/resolution) is warped
    bilinearly onto it; ``inventory`` (any OGR format and CRS) is rasterised (None: a scene to predict
    only); ``areas`` names train/test polygons, or ``split`` ("3:2") cuts the scene along ``split_axis``
    where its valid area divides in that ratio (neither: statistics over all valid pixels); ``terrain``
    lists the layers derived from the DEM; ``all_touched`` marks every pixel a polygon touches.
    """

    images: Paths
    out: Path
    dem: Path | None = None
    inventory: Path | None = None
    areas: Path | None = None
    split: str | None = None
    split_axis: Literal["x", "y"] = "x"
    terrain: list[str] = ["dem", "slope"]
    band_names: list[str] | None = None
    all_touched: bool = False

    @field_validator("terrain")
    @classmethod
    def _terrain(cls, terrain: list[str]) -> list[str]:
        names = [t.strip().lower() for t in terrain if t.strip()]
        unknown = [n for n in names if n not in TERRAIN_LAYERS]
        if unknown:
            raise ValueError(f"unknown layer {', '.join(unknown)}; choose from {','.join(TERRAIN_LAYERS)}")
        return list(dict.fromkeys(names))

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
    def _areas_or_split(self) -> PrepareOptions:
        if self.areas is not None and self.split is not None:
            raise ValueError("give --areas or --split, not both")
        return self

    @property
    def ratio(self) -> tuple[int, int] | None:
        return None if self.split is None else tuple(int(p) for p in self.split.split(":"))  # type: ignore


class PrepareResult(StageResult):
    path: Path
    meta: SceneMeta


def run(options: PrepareOptions) -> PrepareResult:
    """Write a scene folder (replaced atomically if it is an earlier scene) and describe it."""
    o = options
    image_paths, dem, inventory, areas = o.images, o.dem, o.inventory, o.areas
    split_axis, band_names, all_touched = o.split_axis, o.band_names, o.all_touched
    terrain = o.terrain if dem is not None else []
    ratio = o.ratio

    with contextlib.ExitStack() as stack:
        image_ds = [stack.enter_context(open_raster(p, "--image")) for p in image_paths]
        grid = _grid_of(image_ds[0], image_paths[0])
        readers = [stack.enter_context(_aligned(ds, grid, "--image", p, image_paths[0]))
                   for ds, p in zip(image_ds, image_paths, strict=True)]
        image_bands = _band_names(image_ds, image_paths, band_names, reserved=terrain)
        dem_reader = None
        if dem is not None:
            dem_ds = stack.enter_context(open_raster(dem, "--dem"))
            dem_reader = stack.enter_context(_aligned(dem_ds, grid, "--dem", Path(dem), image_paths[0]))
        inv = _load_inventory(Path(inventory), grid) if inventory is not None else None
        area_gdf = _load_areas(Path(areas), grid) if areas is not None else None
        bands = image_bands + list(terrain)

        # Band statistics are gathered while the stack is written: over the train area(s) when given,
        # per column (row) for a --split, whose cut is only known afterwards; else over all valid pixels.
        train_geoms = None
        if area_gdf is not None and (area_gdf["role"] == "train").any():
            train_geoms = list(area_gdf.loc[area_gdf["role"] == "train"].geometry)
        lines = grid.width if split_axis == "x" else grid.height
        stats = RunningStats(len(bands), lines if ratio is not None else 1)
        inputs = [*image_paths, *(p for p in (dem, inventory, areas) if p is not None)]
        with atomic_dir(o.out, "scene.json", inputs, "scene") as tmp, \
                rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            valid_profile, overview = _write_layers(tmp, grid, bands, readers, dem_reader, terrain, inv,
                                                    all_touched, stats, split_axis if ratio else None,
                                                    train_geoms)
            if ratio is not None:
                area_gdf, cut = _split_areas(grid, valid_profile, ratio, split_axis)
                stats = stats.merged(np.arange(lines) < cut)
            if area_gdf is None:
                area_gdf = _empty_areas(grid)
            with pinned_gpkg_timestamp():
                area_gdf.to_file(tmp / "areas.gpkg", driver="GPKG", layer="areas")
            area_rows = _summarise(tmp, grid, area_gdf, inv, all_touched)
            _quicklook(tmp, grid, overview, inv, area_gdf, image_paths[0], image_bands)
            sources = _sources(image_paths, dem, inventory, areas)
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
                "inventory": None if inv is None else {
                    "path": str(inv.path.resolve()), "features": inv.features, "repaired": inv.repaired,
                    "inside": inv.inside, "all_touched": all_touched},
                "split": None if ratio is None else {"ratio": list(ratio), "axis": split_axis},
                "sources": sources,
                "quicklook": "quicklook.png",
            }).save(tmp / "scene.json")
    scene = Scene(o.out)
    return PrepareResult(path=scene.path, meta=scene.meta)


# --- checks and loading ---------------------------------------------------------------------------

def _grid_of(ds: rasterio.DatasetReader, path: Path) -> Grid:
    t = ds.transform
    if t.b != 0 or t.d != 0:
        raise UserError(f"--image {path}: has a rotated grid; warp it north-up first (gdalwarp) and retry")
    if t.e >= 0:
        raise UserError(f"--image {path}: rows run northwards (positive y pixel size); warp it north-up "
                        f"first")
    return Grid(ds.crs, t, ds.width, ds.height)




@dataclass(frozen=True)
class _OnGrid:
    """An input raster as seen on the scene grid: its data bands and where it holds data."""

    ds: rasterio.io.DatasetReaderBase  # the file itself, or a WarpedVRT of it onto the grid
    count: int  # data bands (a VRT's added alpha band excluded)
    alpha: int | None = None  # 1-based alpha band of a VRT (sources without a nodata value)

    def read(self, window: Window, bands: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Bands (C, H, W) float32 with NaN at nodata, and validity (H, W): True where every band has data."""
        idx = list(bands) if bands else list(range(1, self.count + 1))
        data = self.ds.read(idx, window=window, out_dtype="float32", masked=True)
        values = data.filled(np.nan)
        valid = ~np.ma.getmaskarray(data).any(axis=0) & np.isfinite(values).all(axis=0)
        if self.alpha is not None:
            valid &= self.ds.read(self.alpha, window=window) > 0
        values[:, ~valid] = np.nan
        return values, valid


@contextlib.contextmanager
def _aligned(ds: rasterio.DatasetReader, grid: Grid, option: str, path: Path, first: Path,
             ) -> Iterator[_OnGrid]:
    """``ds`` itself if it lies on ``grid``, else a bilinear WarpedVRT of it onto ``grid``."""
    if (ds.crs == grid.crs and ds.width == grid.width and ds.height == grid.height
            and ds.transform.almost_equals(grid.transform, precision=1e-9 * max(1.0, abs(grid.transform.a)))):
        yield _OnGrid(ds, ds.count)
        return
    from rasterio.warp import transform_bounds

    try:
        in_grid_crs = transform_bounds(ds.crs, grid.crs, *ds.bounds, densify_pts=21)
    except Exception as e:  # noqa: BLE001 - PROJ raises several types
        raise UserError(f"{option} {path}: cannot be aligned with {first} (CRS transform failed: "
                        f"{str(e).splitlines()[0]}); give rasters in compatible CRSs") from None
    if not all(np.isfinite(in_grid_crs)) or not bounds_overlap(in_grid_crs, grid.bounds):
        what = "the DEM" if option == "--dem" else "the image"
        raise UserError(f"{option} {path}: {what} does not overlap {first}; give a raster that covers "
                        f"the scene")
    # Without a nodata value, an alpha band marks the pixels outside the source's footprint.
    add_alpha = ds.nodata is None
    vrt = WarpedVRT(ds, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                    resampling=Resampling.bilinear, add_alpha=add_alpha, tolerance=0.01)
    try:
        yield _OnGrid(vrt, ds.count, alpha=ds.count + 1 if add_alpha else None)
    finally:
        vrt.close()


def _band_names(datasets: Sequence[rasterio.DatasetReader], paths: Sequence[Path],
                given: Sequence[str] | None, reserved: Sequence[str]) -> list[str]:
    """Names of the image bands: ``given``, else each file's band descriptions, else band<k> (k counting
    all image bands); made unique, and never equal to a terrain layer's name."""
    counts = [ds.count for ds in datasets]
    total = sum(counts)
    if given is not None:
        names = [str(n).strip() for n in given]
        if len(names) != total:
            per_file = ", ".join(f"{p.name}: {c}" for p, c in zip(paths, counts, strict=True))
            raise UserError(f"--band-names: {len(names)} names for {total} image bands ({per_file}); "
                            f"give one name per band")
        dup = sorted({n for n in names if names.count(n) > 1} | {n for n in names if n in reserved})
        if dup or not all(names):
            raise UserError(f"--band-names: names must be unique, non-empty and not a terrain layer "
                            f"(clash: {', '.join(dup) or 'empty name'})")
        return names
    names = []
    for ds in datasets:
        for desc in ds.descriptions:
            names.append((desc or "").strip().replace(",", "_") or f"band{len(names) + 1}")
    seen = set(reserved)
    unique = []
    for n in names:
        candidate, k = n, 2
        while candidate in seen:
            candidate, k = f"{n}_{k}", k + 1
        seen.add(candidate)
        unique.append(candidate)
    return unique


def _load_inventory(path: Path, grid: Grid) -> Inventory:
    """Read, reproject and repair the inventory; keep the polygons that intersect the scene."""
    import geopandas as gpd
    import shapely

    gdf = read_vector(path, "--inventory")
    n_features = len(gdf)
    geoms = gdf.geometry[gdf.geometry.notna() & ~gdf.geometry.is_empty]
    if len(geoms) == 0:
        warnings.warn(f"--inventory {path}: holds no polygons; the mask will have no landslides",
                      PrepareWarning, stacklevel=3)
        return Inventory(path, gpd.GeoSeries([], crs=grid.crs), n_features, 0)
    invalid = ~geoms.is_valid
    repaired = int(invalid.sum())
    if repaired:
        geoms = geoms.copy()
        geoms[invalid] = shapely.make_valid(geoms[invalid].values)
        noun = "geometry" if repaired == 1 else "geometries"
        warnings.warn(f"--inventory {path}: repaired {repaired} invalid {noun} (self-intersections etc.)",
                      PrepareWarning, stacklevel=3)
    polygons = geoms.apply(_polygonal)
    polygons = polygons[polygons.notna()]
    if len(polygons) == 0:
        raise UserError(f"--inventory {path}: holds no polygons ({geoms.geom_type.iloc[0]}); give landslide "
                        f"polygons")
    polygons = gpd.GeoSeries(polygons.values, crs=gdf.crs).to_crs(grid.crs)
    polygons = polygons[polygons.notna() & ~polygons.is_empty & np.isfinite(polygons.bounds).all(axis=1)]
    if len(polygons) == 0 or not bounds_overlap(tuple(polygons.total_bounds), grid.bounds):
        raise UserError(f"--inventory {path}: does not overlap the images; give the inventory of this scene")
    inside = polygons[polygons.intersects(grid.box())].reset_index(drop=True)
    if len(inside) == 0:
        warnings.warn(f"--inventory {path}: no polygon lies inside the scene; the mask will have no "
                      f"landslides", PrepareWarning, stacklevel=3)
    return Inventory(path, inside, n_features, repaired)


def _polygonal(geom):
    """The polygon parts of a geometry (make_valid may return collections with lines), or None."""
    import shapely

    if geom is None:
        return None
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [g for g in shapely.get_parts(geom) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else None


def _load_areas(path: Path, grid: Grid):
    """Read the named areas, reproject and clip them to the scene, and refuse overlaps and outsiders."""
    import geopandas as gpd

    gdf = read_vector(path, "--areas")
    missing = [c for c in ("name", "role") if c not in gdf.columns]
    if missing:
        raise UserError(f"--areas {path}: no column {' / '.join(missing)}; give each area a name and a role "
                        f"(train or test)")
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
    if len(gdf) == 0:
        raise UserError(f"--areas {path}: holds no areas; draw at least one train or test polygon")
    roles = gdf["role"].astype(str).str.strip().str.lower()
    bad = sorted(set(roles) - set(ROLES))
    if bad:
        raise UserError(f"--areas {path}: role {', '.join(bad)} is not train or test; use one of those")
    gdf = gpd.GeoDataFrame({"name": gdf["name"].astype(str).str.strip(), "role": roles},
                           geometry=gdf.geometry.make_valid(), crs=gdf.crs)
    mixed = [n for n, g in gdf.groupby("name") if g["role"].nunique() > 1]
    if mixed:
        raise UserError(f"--areas {path}: area {mixed[0]} is both train and test; give each name one role")
    gdf = gdf.dissolve(by="name", as_index=False)[["name", "role", "geometry"]].to_crs(grid.crs)
    scene_box = grid.box()
    for name, geom in zip(gdf["name"], gdf.geometry, strict=True):
        if not geom.intersects(scene_box) or geom.intersection(scene_box).area == 0:
            raise UserError(f"--areas {path}: area {name} lies outside the scene; draw it over the images")
    gdf["geometry"] = gdf.geometry.intersection(scene_box)
    pixel_area = abs(grid.transform.a * grid.transform.e)
    train, test = gdf[gdf["role"] == "train"], gdf[gdf["role"] == "test"]
    for tn, tg in zip(train["name"], train.geometry, strict=True):
        for sn, sg in zip(test["name"], test.geometry, strict=True):
            if tg.intersection(sg).area > 0.5 * pixel_area:
                raise UserError(f"--areas {path}: train area {tn} and test area {sn} overlap; make them "
                                f"disjoint (shared pixels would leak test data into training)")
    order = {r: i for i, r in enumerate(ROLES)}
    return gdf.sort_values(by=["role", "name"], key=lambda s: s.map(order) if s.name == "role" else s,
                           ignore_index=True)


def _empty_areas(grid: Grid):
    import geopandas as gpd

    return gpd.GeoDataFrame({"name": [], "role": []}, geometry=[], crs=grid.crs)


# --- pass 1: stack and mask -----------------------------------------------------------------------

def _write_layers(folder: Path, grid: Grid, bands: list[str], readers: Sequence[_OnGrid],
                  dem_reader: _OnGrid | None, terrain: Sequence[str], inv: Inventory | None,
                  all_touched: bool, stats: RunningStats, split_axis: str | None,
                  train_geoms: list | None) -> tuple[dict[str, np.ndarray], tuple]:
    """Write stack.tif and mask.tif block by block, adding the valid pixels to ``stats`` on the way
    (per column or row along ``split_axis`` if given, else those inside ``train_geoms`` if given).

    Returns the valid area (m²) per column and per row (to place a --split cut), and a decimated copy
    of the true-colour bands for the quicklook, gathered on the way so the stack is not read again.
    """
    stack_profile = gtiff_profile(grid.width, grid.height, len(bands), "float32", grid.crs, grid.transform,
                                  nodata=float("nan"))
    mask_profile = gtiff_profile(grid.width, grid.height, 1, "uint8", grid.crs, grid.transform,
                                 nodata=None)
    col_m2 = np.zeros(grid.width)
    row_m2 = np.zeros(grid.height)
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
        pending = reader.submit(_read_block, grid, windows[0], readers, dem_reader, terrain)
        for k, w in enumerate(windows):
            layers, valid = pending.result()
            if k + 1 < len(windows):
                pending = reader.submit(_read_block, grid, windows[k + 1], readers, dem_reader, terrain)
            layers[:, ~valid] = np.nan
            dst.write(layers, window=w)
            r0, c0 = int(w.row_off), int(w.col_off)
            if split_axis is not None:
                stats.add_lines(layers, valid, split_axis, c0 if split_axis == "x" else r0)
            else:
                counted = valid if train_geoms is None else valid & features.geometry_mask(
                    train_geoms, out_shape=valid.shape, transform=grid.window_transform(w), invert=True)
                stats.add(layers[:, counted])
            mask = (_rasterise_inventory(grid, w, inv, all_touched) > 0).astype(np.uint8)
            mask[~valid] = NODATA_MASK
            mdst.write(mask, 1, window=w)
            row_area = row_pixel_areas_m2(grid.crs, grid.transform, r0, int(w.height))
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
    return {"x": col_m2, "y": row_m2}, (overview, overview_grid, [bands[i] for i in rgb])


def _read_block(grid: Grid, w: Window, readers: Sequence[_OnGrid], dem_reader: _OnGrid | None,
                terrain: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Layers (C, H, W) float32 of one block and its validity (H, W): valid where every input has data."""
    shape = (int(w.height), int(w.width))
    valid = np.ones(shape, dtype=bool)
    layers = []
    for reader in readers:
        values, ok = reader.read(w)
        valid &= ok
        layers.append(values)
    if dem_reader is not None and terrain:
        # One pixel of context around the block so slopes at block edges are as inside it.
        r0, c0 = int(w.row_off), int(w.col_off)
        top, left = max(0, r0 - 1), max(0, c0 - 1)
        bottom, right = min(grid.height, r0 + shape[0] + 1), min(grid.width, c0 + shape[1] + 1)
        halo = Window(left, top, right - left, bottom - top)
        values, _ = dem_reader.read(halo, bands=[1])
        dem = values[0].astype(np.float64)
        dx, dy = row_pixel_sizes_m(grid.crs, grid.transform, top, bottom - top)
        derived = terrain_layers(dem, dx, dy, terrain)
        crop = (slice(r0 - top, r0 - top + shape[0]), slice(c0 - left, c0 - left + shape[1]))
        valid &= np.isfinite(dem[crop])
        layers.append(np.stack([derived[n][crop] for n in terrain]))
    return np.concatenate(layers).astype(np.float32), valid


def _rasterise_inventory(grid: Grid, w: Window, inv: Inventory | None, all_touched: bool) -> np.ndarray:
    """Polygon number (1-based, 0: none) of each pixel of block ``w``; where polygons overlap, the later."""
    shape = (int(w.height), int(w.width))
    if inv is None or len(inv.gdf) == 0:
        return np.zeros(shape, dtype=np.int32)
    box = grid.box(int(w.col_off), int(w.row_off), shape[1], shape[0])
    hits = np.sort(inv.gdf.sindex.query(box, predicate="intersects"))
    if len(hits) == 0:
        return np.zeros(shape, dtype=np.int32)
    return features.rasterize(((inv.gdf.iloc[i], int(i) + 1) for i in hits), out_shape=shape, fill=0,
                              transform=grid.window_transform(w), all_touched=all_touched, dtype="int32")


# --- areas from --split ---------------------------------------------------------------------------

def _split_areas(grid: Grid, valid_profile: dict[str, np.ndarray], ratio: tuple[int, int], axis: str):
    """Train and test rectangles cut where the scene's valid area divides in ``ratio`` along ``axis``,
    and the cut (the first column or row of the test rectangle)."""
    import geopandas as gpd

    profile = valid_profile[axis]
    if len(profile) < 2:
        raise UserError(f"--split: the scene is one pixel along {axis}; it cannot be cut")
    cumulative = np.cumsum(profile)
    target = cumulative[-1] * ratio[0] / sum(ratio)
    cut = int(np.clip(np.searchsorted(cumulative, target) + 1, 1, len(profile) - 1))
    if axis == "x":
        boxes = [grid.box(0, 0, cut, grid.height), grid.box(cut, 0, grid.width - cut, grid.height)]
    else:
        boxes = [grid.box(0, 0, grid.width, cut), grid.box(0, cut, grid.width, grid.height - cut)]
    return gpd.GeoDataFrame({"name": ["train", "test"], "role": ["train", "test"]}, geometry=boxes,
                            crs=grid.crs), cut


# --- pass 2: statistics and per-area figures ------------------------------------------------------

def _summarise(folder: Path, grid: Grid, area_gdf, inv: Inventory | None, all_touched: bool) -> list[dict]:
    """Per-area figures (from mask.tif, not the stack: the band statistics came with the write pass).

    An area's landslides are the inventory polygons that own at least one of its valid landslide
    pixels: the count agrees with the mask (a polygon in nodata or smaller than a pixel has none).
    """
    names, roles, geoms = list(area_gdf["name"]), list(area_gdf["role"]), list(area_gdf.geometry)
    n = len(names)
    area_m2, valid_m2, slide_m2, slide_px = (np.zeros(n) for _ in range(4))
    row_lo, col_lo = np.full(n, grid.height), np.full(n, grid.width)
    row_hi, col_hi = np.full(n, -1), np.full(n, -1)
    slide_ids: list[set[int]] = [set() for _ in range(n)]
    windows = list(block_windows(grid.width, grid.height, BLOCK))
    with rasterio.open(folder / "mask.tif") as msrc, bar() as progress:
        task = progress.add_task("areas", total=len(windows))
        for w in windows:
            mask = msrc.read(1, window=w)
            valid = mask != NODATA_MASK
            r0, c0 = int(w.row_off), int(w.col_off)
            shape = mask.shape
            wt = grid.window_transform(w)
            ids = _rasterise_inventory(grid, w, inv, all_touched) if n else None
            for i, geom in enumerate(geoms):
                inside = features.geometry_mask([geom], out_shape=shape, transform=wt, invert=True)
                if not inside.any():
                    continue
                area_m2[i] += masked_area_km2(inside, grid.crs, grid.transform, r0) * 1e6
                valid_m2[i] += masked_area_km2(inside & valid, grid.crs, grid.transform, r0) * 1e6
                slide = inside & (mask == 1)
                slide_m2[i] += masked_area_km2(slide, grid.crs, grid.transform, r0) * 1e6
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
                         "valid_km2": valid_m2[i] / 1e6, "landslides": len(slide_ids[i]),
                         "landslide_km2": slide_m2[i] / 1e6, "landslide_pixels": int(slide_px[i]),
                         "bounds": bounds})
    return rows_out


# --- outputs --------------------------------------------------------------------------------------

def _quicklook(folder: Path, grid: Grid, overview: tuple[np.ndarray, Affine, list[str]],
               inv: Inventory | None, area_gdf, first_image: Path, image_bands: list[str]) -> None:
    pixels, transform, names = overview
    title = f"{first_image.name}: {', '.join(image_bands[:8])}" + ("…" if len(image_bands) > 8 else "")
    if inv is not None:
        title += f" | {inv.inside} landslide polygons"
    render_quicklook(folder / "quicklook.png", pixels, transform, grid.crs, names,
                     inventory=None if inv is None else inv.gdf, areas=area_gdf, title=title)


def _sources(images: Sequence[Path], dem, inventory, areas) -> list[dict]:
    items = [("image", p) for p in images] + [(role, Path(p)) for role, p in
                                               (("dem", dem), ("inventory", inventory), ("areas", areas))
                                               if p is not None]
    return [{"role": role, "path": str(p.resolve()), "sha256": sha256(p)} for role, p in items]


def _crs_string(crs: CRS) -> str:
    """``EPSG:n`` when the CRS is exactly that code (readable), else its WKT (lossless)."""
    epsg = crs.to_epsg()
    if epsg is not None and CRS.from_epsg(epsg) == crs:
        return f"EPSG:{epsg}"
    return crs.to_wkt()
