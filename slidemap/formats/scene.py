"""Reading a scene folder written by ``slidemap prepare``.

A scene folder holds ``stack.tif`` (float32, one band per layer, band descriptions = layer names,
nodata NaN), ``mask.tif`` (uint8: 1 landslide, 0 background, 255 nodata; always present, so it is also
the validity mask of scenes prepared without an inventory), ``areas.gpkg`` (named train/test polygons in
the scene CRS, columns ``name`` and ``role``), ``scene.json`` and ``quicklook.png``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from slidemap.errors import UserError
from slidemap.formats.files import read_json, require_dir

SCENE_FORMAT = "slidemap.scene"
SCENE_FORMAT_VERSION = 1
NODATA_MASK = 255


@dataclass(frozen=True)
class Area:
    name: str
    role: str  # "train" or "test"


class Scene:
    """A prepared scene: its grid, band names, train-area statistics and named areas."""

    def __init__(self, path: str | Path, option: str = "SCENE"):
        self.path = require_dir(path, option, marker="scene.json", what="scene folder")
        meta = read_json(self.path / "scene.json", option)
        if meta.get("format") != SCENE_FORMAT:
            raise UserError(f"{option} {self.path}: scene.json is not a slidemap scene description")
        if meta.get("format_version") != SCENE_FORMAT_VERSION:
            raise UserError(f"{option} {self.path}: scene format version {meta.get('format_version')} is not "
                            f"{SCENE_FORMAT_VERSION}; prepare the scene again with this slidemap")
        self.meta = meta
        self.option = option

    # --- grid -------------------------------------------------------------------------------------
    @property
    def bands(self) -> list[str]:
        return list(self.meta["bands"])

    @property
    def crs(self) -> CRS:
        return CRS.from_user_input(self.meta["crs"])

    @property
    def transform(self) -> Affine:
        return Affine(*self.meta["transform"][:6])

    @property
    def width(self) -> int:
        return int(self.meta["width"])

    @property
    def height(self) -> int:
        return int(self.meta["height"])

    @property
    def pixel_size_m(self) -> tuple[float, float]:
        return tuple(self.meta["pixel_size_m"])

    @property
    def stats(self) -> dict[str, dict[str, float]]:
        """Per-band mean/std/min/max over the valid pixels of the train area(s)."""
        return self.meta["stats"]

    @property
    def has_inventory(self) -> bool:
        return bool(self.meta.get("inventory"))

    @property
    def stack_path(self) -> Path:
        return self.path / "stack.tif"

    @property
    def mask_path(self) -> Path:
        return self.path / "mask.tif"

    @property
    def areas_path(self) -> Path:
        return self.path / "areas.gpkg"

    # --- areas ------------------------------------------------------------------------------------
    @property
    def areas(self) -> list[Area]:
        return [Area(a["name"], a["role"]) for a in self.meta["areas"]]

    def area(self, name: str) -> Area:
        for a in self.areas:
            if a.name == name:
                return a
        known = ", ".join(a.name for a in self.areas) or "none"
        raise UserError(f"--area {name}: no such area in {self.path}; areas are: {known}")

    def areas_with_role(self, role: str) -> list[Area]:
        return [a for a in self.areas if a.role == role]

    def area_geometries(self):
        """GeoDataFrame of the named areas (columns name, role, geometry) in the scene CRS."""
        import geopandas as gpd

        return gpd.read_file(self.areas_path)

    def area_mask(self, name: str, window: Window | None = None) -> np.ndarray:
        """Boolean raster of pixels whose centre lies in area ``name`` (whole grid or one window)."""
        from rasterio import features

        self.area(name)
        gdf = self.area_geometries()
        geoms = list(gdf.loc[gdf["name"] == name].geometry)
        if window is None:
            window = Window(0, 0, self.width, self.height)
        transform = rasterio.windows.transform(window, self.transform)
        shape = (int(window.height), int(window.width))
        if not geoms:
            return np.zeros(shape, dtype=bool)
        return features.geometry_mask(geoms, out_shape=shape, transform=transform, invert=True)

    # --- pixels -----------------------------------------------------------------------------------
    def read(self, window: Window | None = None, bands: list[str] | None = None) -> np.ndarray:
        """Stack pixels (C, H, W) float32, NaN where nodata; ``bands`` selects layers by name."""
        idx = self.band_indexes(bands) if bands else None
        with rasterio.open(self.stack_path) as ds:
            return ds.read(idx, window=window, out_dtype="float32")

    def read_mask(self, window: Window | None = None) -> np.ndarray:
        """mask.tif pixels (H, W) uint8: 1 landslide, 0 background, 255 nodata."""
        with rasterio.open(self.mask_path) as ds:
            return ds.read(1, window=window)

    def band_indexes(self, names: list[str]) -> list[int]:
        """1-based stack band indexes of ``names``; unknown names are a UserError listing the known ones."""
        missing = [n for n in names if n not in self.bands]
        if missing:
            raise UserError(f"--bands: {', '.join(missing)} not in scene {self.path}; it has "
                            f"{', '.join(self.bands)}")
        return [self.bands.index(n) + 1 for n in names]
