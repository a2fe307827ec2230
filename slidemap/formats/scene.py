"""The scene folder written by ``slidemap prepare``, and its description ``scene.json``.

A scene folder holds ``stack.tif`` (float32, one band per layer, band descriptions = layer names,
nodata NaN), ``mask.tif`` (uint8: 1 landslide, 0 background, 255 nodata; always present, so it is also
the validity mask of scenes prepared without an inventory), ``areas.gpkg`` (named train/test polygons in
the scene CRS, columns ``name`` and ``role``), ``scene.json`` (:class:`SceneMeta`) and ``quicklook.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import rasterio
from affine import Affine
from pydantic import Field, field_validator, model_validator
from rasterio.crs import CRS
from rasterio.windows import Window

from slidemap.errors import UserError
from slidemap.formats.base import Record, Sidecar
from slidemap.formats.files import require_dir

if TYPE_CHECKING:
    import geopandas as gpd
    from shapely.geometry.base import BaseGeometry

NODATA_MASK = 255
Role = Literal["train", "test"]


class BandStats(Record):
    """Per-band statistics over the valid pixels of the train area(s); None where a band has none."""

    mean: float | None = None
    std: float | None = Field(None, ge=0)
    min: float | None = None
    max: float | None = None
    count: int | None = Field(None, ge=0)


class PixelBox(Record):
    """A block of whole pixels of the scene grid."""

    row_off: int = Field(ge=0)
    col_off: int = Field(ge=0)
    height: int = Field(gt=0)
    width: int = Field(gt=0)


class AreaInfo(Record):
    """One named area: its role and what prepare measured in it."""

    name: str = Field(min_length=1)
    role: Role
    area_km2: float = Field(0.0, ge=0)
    valid_km2: float = Field(0.0, ge=0)
    landslides: int = Field(0, ge=0)
    landslide_km2: float = Field(0.0, ge=0)
    landslide_pixels: int = Field(0, ge=0)
    bounds: PixelBox | None = None


class InventoryInfo(Record):
    """Where the landslide inventory came from and what of it lies in the scene.

    ``kind`` "polygons": ``features`` polygons in the file, ``inside`` of them intersect the scene.
    ``kind`` "raster" (a label raster): ``label_values`` are landslide, its ``nodata`` and
    ``unlabelled_values`` unknown; ``features`` and ``inside`` both count its landslides on the scene grid.
    For both, ``landslides`` counts the landslides owning at least one valid mask pixel (polygons, or
    4-connected components of a label raster), ``landslide_km2`` / ``landslide_pixels`` their mask pixels,
    and ``labelled_km2`` / ``unknown_km2`` the valid pixels whose truth is known / unknown (255 in the mask).
    """

    path: str = ""
    kind: Literal["polygons", "raster"] = "polygons"
    features: int = Field(0, ge=0)
    repaired: int = Field(0, ge=0)
    inside: int = Field(0, ge=0)
    all_touched: bool = False
    label_values: list[float] | None = None
    unlabelled_values: list[float] | None = None
    nodata: float | None = None
    landslides: int | None = Field(None, ge=0)
    landslide_km2: float | None = Field(None, ge=0)
    landslide_pixels: int | None = Field(None, ge=0)
    labelled_km2: float | None = Field(None, ge=0)
    unknown_km2: float | None = Field(None, ge=0)


class SourceInfo(Record):
    """One input file of the scene (image, DEM, inventory, areas...), its checksum and how it was resampled."""

    role: str
    path: str
    sha256: str = ""
    resampling: str | None = None  # how it was brought onto the scene grid ("none": it lay on it)


class Recipe(Record):
    """How a scene's layers were made from its inputs: what prediction on bare images must redo.

    Carried from scene.json into chips.json and the model bundle, so ``predict --image`` prepares bare
    images onto the same resolution with the same band names, indices and pre-event layers.
    """

    image_bands: list[str] = []
    terrain: list[str] = []
    indices: list[str] = []
    pre_bands: list[str] = []  # the pre-event images' band names, without the pre_ prefix
    change: list[str] = []  # indices with a change layer d<index>
    resolution_m: float | None = Field(None, gt=0)  # --resolution: the grid was resampled to it


class SplitInfo(Record):
    """``--split``: the train:test ratio of the valid area and the axis the scene was cut along."""

    ratio: tuple[int, int]
    axis: Literal["x", "y"]


class SceneMeta(Sidecar):
    """``scene.json``: the grid, the layers, their train-area statistics, the areas and the sources."""

    REDO = "prepare the scene again"

    format: str = "slidemap.scene"
    bands: list[str] = Field(min_length=1)
    image_bands: list[str] | None = None
    terrain: list[str] = []
    crs: str
    transform: list[float] = Field(min_length=6, max_length=9)
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    pixel_size_m: tuple[float, float]
    stats: dict[str, BandStats] = {}
    stats_over: Literal["train", "all"] = "train"
    areas: list[AreaInfo] = []
    inventory: InventoryInfo | None = None
    split: SplitInfo | None = None
    sources: list[SourceInfo] = []
    quicklook: str | None = None
    recipe: Recipe | None = None  # how the layers were made (indices, pre-event layers, resolution)
    native_pixel_size_m: tuple[float, float] | None = None  # the first image's pixels, before --resolution

    @field_validator("bands")
    @classmethod
    def _unique(cls, bands: list[str]) -> list[str]:
        dup = sorted({b for b in bands if bands.count(b) > 1})
        if dup:
            raise ValueError(f"band names repeat ({', '.join(dup)})")
        return bands

    @field_validator("crs")
    @classmethod
    def _crs(cls, crs: str) -> str:
        try:
            CRS.from_user_input(crs)
        except Exception as e:  # noqa: BLE001 - rasterio raises CRSError and others
            raise ValueError(f"not a CRS ({str(e).splitlines()[0][:80]})") from None
        return crs

    @model_validator(mode="after")
    def _areas_unique(self) -> SceneMeta:
        names = [a.name for a in self.areas]
        if len(set(names)) != len(names):
            raise ValueError("areas: area names repeat")
        return self


class Scene:
    """A prepared scene folder: its grid, band names, train-area statistics and named areas."""

    def __init__(self, path: str | Path, option: str = "SCENE") -> None:
        self.path = require_dir(path, option, marker="scene.json", what="scene folder")
        self.meta = SceneMeta.load(self.path / "scene.json", option)
        self.option = option

    # --- grid -------------------------------------------------------------------------------------
    @property
    def bands(self) -> list[str]:
        """Layer names, in stack.tif's band order."""
        return list(self.meta.bands)

    @property
    def crs(self) -> CRS:
        """The grid's CRS, parsed from scene.json."""
        return CRS.from_user_input(self.meta.crs)

    @property
    def transform(self) -> Affine:
        """Pixel-to-CRS transform of the whole grid."""
        return Affine(*self.meta.transform[:6])

    @property
    def width(self) -> int:
        """Columns of the scene grid (pixels across)."""
        return self.meta.width

    @property
    def height(self) -> int:
        """Rows of the scene grid (pixels down)."""
        return self.meta.height

    @property
    def pixel_size_m(self) -> tuple[float, float]:
        """Pixel (width, height) on the ground in metres, also for a geographic CRS."""
        return self.meta.pixel_size_m

    @property
    def stats(self) -> dict[str, BandStats]:
        """Per-band mean/std/min/max over the valid pixels of the train area(s)."""
        return self.meta.stats

    @property
    def has_inventory(self) -> bool:
        """Whether the scene was prepared with landslide truth (else it is for prediction only)."""
        return self.meta.inventory is not None

    @property
    def mask_marks_unknown(self) -> bool:
        """Whether mask.tif marks unknown truth with 255 (a label raster's unlabelled pixels), not only nodata."""
        inv = self.meta.inventory
        return inv is not None and inv.kind == "raster" and bool(inv.unknown_km2)

    @property
    def stack_path(self) -> Path:
        """The layers' GeoTIFF (float32, NaN nodata)."""
        return self.path / "stack.tif"

    @property
    def mask_path(self) -> Path:
        """The truth and validity GeoTIFF (1, 0, 255 nodata)."""
        return self.path / "mask.tif"

    @property
    def areas_path(self) -> Path:
        """The named areas' GeoPackage."""
        return self.path / "areas.gpkg"

    # --- areas ------------------------------------------------------------------------------------
    @property
    def areas(self) -> list[AreaInfo]:
        """The named areas as scene.json describes them (a copy)."""
        return list(self.meta.areas)

    def area(self, name: str) -> AreaInfo:
        """The area called ``name``; an unknown name is a UserError listing the known ones."""
        for a in self.areas:
            if a.name == name:
                return a
        known = ", ".join(a.name for a in self.areas) or "none"
        raise UserError(f"--area {name}: no such area in {self.path}; areas are: {known}")

    def areas_with_role(self, role: str) -> list[AreaInfo]:
        """The areas whose role is ``role`` ("train" or "test"), in scene.json's order."""
        return [a for a in self.areas if a.role == role]

    def area_geometries(self) -> gpd.GeoDataFrame:
        """GeoDataFrame of the named areas (columns name, role, geometry) in the scene CRS."""
        from slidemap.formats.gdal import read_vector

        return read_vector(self.areas_path, f"SCENE {self.path}: areas.gpkg")

    def area_geometry(self, name: str, crs: CRS | None = None) -> BaseGeometry | None:
        """The (dissolved) polygon of area ``name`` in the scene CRS (or in ``crs``), or None if it has none."""
        self.area(name)
        gdf = self.area_geometries()
        shapes = gdf.geometry[(gdf["name"].astype(str) == name).to_numpy()]
        shapes = shapes[shapes.notna() & ~shapes.is_empty]
        if not len(shapes):
            return None
        geom = shapes.union_all()
        if crs is None or gdf.crs is None or CRS.from_user_input(gdf.crs) == crs:
            return geom
        import geopandas as gpd

        return gpd.GeoSeries([geom], crs=gdf.crs).to_crs(crs).iloc[0]

    def area_mask(self, name: str, window: Window | None = None) -> np.ndarray:
        """Boolean raster of pixels whose centre lies in area ``name`` (whole grid or one window)."""
        from rasterio import features

        geom = self.area_geometry(name)
        if window is None:
            window = Window(0, 0, self.width, self.height)
        transform = rasterio.windows.transform(window, self.transform)
        shape = (int(window.height), int(window.width))
        if geom is None:
            return np.zeros(shape, dtype=bool)
        return features.geometry_mask([geom], out_shape=shape, transform=transform, invert=True)

    # --- pixels -----------------------------------------------------------------------------------
    def read(self, window: Window | None = None, bands: list[str] | None = None) -> np.ndarray:
        """Stack pixels (C, H, W) float32, NaN where nodata; ``bands`` selects layers by name."""
        from slidemap.formats.gdal import read_raster

        idx = self.band_indexes(bands) if bands else None
        return read_raster(self.stack_path, f"SCENE {self.path}: stack.tif", idx, window, "float32")

    def read_mask(self, window: Window | None = None) -> np.ndarray:
        """mask.tif pixels (H, W) uint8: 1 landslide, 0 background, 255 nodata."""
        from slidemap.formats.gdal import read_raster

        return read_raster(self.mask_path, f"SCENE {self.path}: mask.tif", 1, window)

    def band_indexes(self, names: list[str]) -> list[int]:
        """1-based stack band indexes of ``names``; unknown names are a UserError listing the known ones."""
        missing = [n for n in names if n not in self.bands]
        if missing:
            raise UserError(f"--bands: {', '.join(missing)} not in scene {self.path}; it has "
                            f"{', '.join(self.bands)}")
        return [self.bands.index(n) + 1 for n in names]

