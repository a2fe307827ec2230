"""Quicklook PNGs: a true-colour view of a stack with polygons drawn on top.

The view is read decimated (never the whole stack at full resolution), stretched per band between
percentiles of its valid pixels (satellite digital numbers use a fraction of their range), and nodata is
shown transparent over a light grey background so that it is never mistaken for dark terrain.
Other stages reuse :func:`true_colour`, :func:`read_overview` and :func:`quicklook_from_stack`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling

# Names a band may carry, per colour, in order of preference (generic names, Sentinel-2, Landsat 8/9).
COLOUR_NAMES = {
    "red": ("red", "r", "b4", "b04", "sr_b4"),
    "green": ("green", "g", "b3", "b03", "sr_b3"),
    "blue": ("blue", "b", "b2", "b02", "sr_b2"),
}
NODATA_GREY = "#d9d9d9"
QUICKLOOK_SIZE = 1200  # pixels along the longer side of the rendered raster


def rgb_band_indexes(bands: Sequence[str]) -> list[int]:
    """0-based indexes of the red, green and blue bands, found by name; else the first three bands.

    Fewer than three bands give a grey view of the first band.
    """
    lower = [b.lower() for b in bands]
    found = []
    for colour in ("red", "green", "blue"):
        idx = next((lower.index(n) for n in COLOUR_NAMES[colour] if n in lower), None)
        found.append(idx)
    if all(i is not None for i in found):
        return found  # type: ignore[return-value]
    if len(bands) >= 3:
        return [0, 1, 2]
    return [0, 0, 0]


def stretch(values: np.ndarray, percentiles: tuple[float, float] = (2.0, 98.0)) -> np.ndarray:
    """Linear stretch of a 2-D band to [0, 1] between percentiles of its finite pixels (NaN stays NaN)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.full(values.shape, np.nan, dtype=np.float32)
    lo, hi = np.percentile(finite, percentiles)
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def true_colour(pixels: np.ndarray, bands: Sequence[str],
                percentiles: tuple[float, float] = (2.0, 98.0)) -> np.ndarray:
    """RGBA image (H, W, 4) in [0, 1] from a (C, H, W) stack; alpha 0 where any chosen band is NaN."""
    idx = rgb_band_indexes(bands)
    rgb = np.stack([stretch(pixels[i].astype(np.float32), percentiles) for i in idx], axis=-1)
    valid = np.all(np.isfinite(rgb), axis=-1)
    rgba = np.zeros((*rgb.shape[:2], 4), dtype=np.float32)
    rgba[..., :3] = np.where(valid[..., None], rgb, 0.0)
    rgba[..., 3] = valid
    return rgba


def read_overview(path: str | Path, max_size: int = QUICKLOOK_SIZE, indexes: Sequence[int] | None = None,
                  ) -> tuple[np.ndarray, Affine]:
    """Bands of a raster decimated so the longer side is at most ``max_size`` (float32, NaN at nodata),
    and the transform of that decimated grid."""
    with rasterio.open(path) as ds:
        scale = max(1.0, max(ds.width, ds.height) / max_size)
        h, w = max(1, round(ds.height / scale)), max(1, round(ds.width / scale))
        idx = list(indexes) if indexes else list(range(1, ds.count + 1))
        data = ds.read(idx, out_shape=(len(idx), h, w), resampling=Resampling.nearest,
                       out_dtype="float32", masked=True)
        pixels = data.filled(np.nan)
        transform = ds.transform @ Affine.scale(ds.width / w, ds.height / h)
    return pixels, transform


def render_quicklook(out_png: str | Path, pixels: np.ndarray, transform: Affine, crs, bands: Sequence[str],
                     inventory=None, areas=None, title: str | None = None) -> Path:
    """Write a PNG of ``pixels`` in true colour with inventory outlines and labelled areas.

    Args:
        out_png: PNG to write.
        pixels: (C, H, W) decimated layers, NaN where nodata (see read_overview).
        transform: the affine transform of ``pixels``' grid.
        crs: its CRS (a geographic one is drawn with the east-west stretch of its latitude).
        bands: names of the C layers (used to find red/green/blue).
        inventory: GeoDataFrame/GeoSeries of landslide polygons in ``crs``, or None.
        areas: GeoDataFrame with ``name``, ``role`` and geometry in ``crs``, or None.
        title: text above the map.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rgba = true_colour(pixels, bands)
    h, w = rgba.shape[:2]
    left, top = transform.c, transform.f
    right, bottom = left + transform.a * w, top + transform.e * h
    aspect = _ground_aspect(crs, top + transform.e * h / 2)

    fig_w = 9.0
    fig, ax = plt.subplots(figsize=(fig_w, max(3.0, min(16.0, fig_w * h / w * aspect))), dpi=110)
    ax.set_facecolor(NODATA_GREY)
    ax.imshow(rgba, extent=(left, right, bottom, top), interpolation="nearest", aspect=aspect)
    if inventory is not None and len(inventory):
        inventory.boundary.plot(ax=ax, color="#ff00ff", linewidth=0.8)
    if areas is not None and len(areas):
        colours = {"train": "#00e5ff", "test": "#ff3d00"}
        for role, group in areas.groupby("role"):
            group.boundary.plot(ax=ax, color=colours.get(role, "white"), linewidth=1.6)
        for name, role, geom in zip(areas["name"], areas["role"], areas.geometry, strict=True):
            p = geom.representative_point()
            ax.annotate(f"{name} ({role})", (p.x, p.y), color="black", fontsize=9, ha="center",
                        va="center", bbox={"boxstyle": "round,pad=0.2", "fc": colours.get(role, "white"),
                                           "alpha": 0.8, "lw": 0})
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.tick_params(labelsize=7)
    ax.ticklabel_format(useOffset=False, style="plain")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def quicklook_from_stack(stack_path: str | Path, out_png: str | Path, bands: Sequence[str], inventory=None,
                         areas=None, title: str | None = None, max_size: int = QUICKLOOK_SIZE) -> Path:
    """render_quicklook of a stack file (its true-colour bands read decimated); ``bands`` names all of
    the stack's bands in order."""
    idx = rgb_band_indexes(bands)
    pixels, transform = read_overview(stack_path, max_size, indexes=[i + 1 for i in idx])
    with rasterio.open(stack_path) as ds:
        crs = ds.crs
    return render_quicklook(out_png, pixels, transform, crs, [bands[i] for i in idx], inventory, areas, title)


def _ground_aspect(crs, lat: float) -> float:
    """y/x display ratio that shows ground distances undistorted (1 for projected CRSs; 1/cos(lat) for
    degrees, so a geographic scene does not look squashed east-west)."""
    if crs is None or not crs.is_geographic:
        return 1.0
    return float(1.0 / max(np.cos(np.radians(lat)), 1e-3))
