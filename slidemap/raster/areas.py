"""Named train/test areas on the scene grid: read from a vector file, or cut from the scene by a ratio.

Areas are reprojected to the scene CRS, dissolved by name and clipped to the scene; an area outside the
scene, a role other than train/test, or train and test areas that share pixels are one-line UserErrors
(shared pixels would leak test data into training). A ``--split`` cuts the scene where its valid area
divides in the given ratio, along x or y.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from slidemap.errors import UserError
from slidemap.formats.gdal import read_vector
from slidemap.raster.geo import Grid

if TYPE_CHECKING:
    import geopandas as gpd

ROLES = ("train", "test")


def load_areas(path: Path, grid: Grid) -> gpd.GeoDataFrame:
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


def empty_areas(grid: Grid) -> gpd.GeoDataFrame:
    """No areas, with the columns and CRS of :func:`load_areas`' frame: a scene without train/test areas."""
    import geopandas as gpd

    return gpd.GeoDataFrame({"name": [], "role": []}, geometry=[], crs=grid.crs)


def split_areas(grid: Grid, valid_profile: dict[str, np.ndarray], ratio: tuple[int, int],
                axis: str) -> tuple[gpd.GeoDataFrame, int]:
    """Train and test rectangles cut where the scene's valid area divides in ``ratio`` along ``axis``.

    Also returns the cut: the first column or row of the test rectangle.
    """
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
