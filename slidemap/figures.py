"""Every picture slidemap draws: quicklooks, error maps, learning curves and patch previews.

One true-colour renderer (:func:`true_colour`) serves them all: it finds red, green and blue by any of their
names (``slidemap.raster.bands``: generic, Sentinel-2, Landsat), stretches each band between percentiles of
its valid pixels (satellite digital numbers use a fraction of their range) and marks nodata transparent,
so that each figure shows it on a light grey instead of as dark terrain. Stack pixels are read decimated
(never the whole stack at full resolution).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from affine import Affine

from slidemap.errors import UserError
from slidemap.formats.files import atomic_file
from slidemap.raster.bands import rgb_band_indexes
from slidemap.raster.metrics import CLASS_COLOURS, CLASS_LABELS, FN, FP, NODATA_CLASS, TP

if TYPE_CHECKING:
    import geopandas as gpd
    from matplotlib.figure import Figure
    from rasterio.crs import CRS
    from rasterio.windows import Window

NODATA_GREY = "#d9d9d9"
QUICKLOOK_SIZE = 1200  # pixels along the longer side of the rendered raster
PNG_MAX_SIDE = 1200


def agg_figure(width_in: float, height_in: float, dpi: int = 100) -> Figure:
    """A matplotlib Figure on the Agg canvas (no GUI backend, safe in threads and on servers)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically (a reader never sees half a file); returns ``path``."""
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


# --- true colour -----------------------------------------------------------------------------------

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
    """RGBA image (H, W, 4) in [0, 1] from a (C, H, W) stack named ``bands``; alpha 0 where nodata."""
    idx = rgb_band_indexes(bands)
    rgb = np.stack([stretch(pixels[i].astype(np.float32), percentiles) for i in idx], axis=-1)
    valid = np.all(np.isfinite(rgb), axis=-1)
    rgba = np.zeros((*rgb.shape[:2], 4), dtype=np.float32)
    rgba[..., :3] = np.where(valid[..., None], rgb, 0.0)
    rgba[..., 3] = valid
    return rgba


def on_grey(rgba: np.ndarray, grey: float = 0.6) -> np.ndarray:
    """RGB (H, W, 3) of an RGBA image with its transparent (nodata) pixels grey."""
    return np.where(rgba[..., 3:] > 0, rgba[..., :3], grey)


def read_true_colour(stack_path: Path, bands: Sequence[str], crs: CRS | None, transform: Affine,
                     shape: tuple[int, int]) -> np.ndarray | None:
    """RGBA of a stack warped straight onto a (decimated) grid: only the output pixels are computed.

    None when the stack is missing.
    """
    import rasterio
    from rasterio.vrt import WarpedVRT

    if not Path(stack_path).is_file():
        return None
    idx = rgb_band_indexes(bands)
    try:
        with rasterio.open(stack_path) as src, WarpedVRT(src, crs=crs, transform=transform, width=shape[1],
                                                         height=shape[0], src_nodata=np.nan,
                                                         nodata=np.nan) as vrt:
            pixels = vrt.read([i + 1 for i in idx], out_dtype="float32")
    except rasterio.errors.RasterioError as e:  # a truncated or corrupt stack: GDAL fails on the read
        reason = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"{stack_path}: cannot be read ({reason}); the file is truncated or corrupt, write "
                        f"it again") from None
    return true_colour(pixels, [bands[i] for i in idx])


# --- quicklook -------------------------------------------------------------------------------------

def render_quicklook(out_png: str | Path, pixels: np.ndarray, transform: Affine, crs: CRS | None,
                     bands: Sequence[str], inventory: gpd.GeoSeries | None = None,
                     areas: gpd.GeoDataFrame | None = None, title: str | None = None) -> Path:
    """Write a PNG of ``pixels`` (C, H, W; decimated, NaN at nodata) in true colour, in map coordinates.

    Inventory outlines and labelled areas are drawn over it; a geographic grid is drawn with its latitude's
    east-west stretch.
    """
    rgba = true_colour(pixels, bands)
    h, w = rgba.shape[:2]
    left, top = transform.c, transform.f
    right, bottom = left + transform.a * w, top + transform.e * h
    aspect = _ground_aspect(crs, top + transform.e * h / 2)
    fig_w = 9.0
    fig = agg_figure(fig_w, max(3.0, min(16.0, fig_w * h / w * aspect)), dpi=110)
    ax = fig.subplots()
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
    return save_png(fig, out_png)


def _ground_aspect(crs: CRS | None, lat: float) -> float:
    """y/x display ratio that shows ground distances undistorted.

    1 for projected CRSs; 1/cos(lat) for degrees, so a geographic scene does not look squashed east-west.
    """
    if crs is None or not crs.is_geographic:
        return 1.0
    return float(1.0 / max(np.cos(np.radians(lat)), 1e-3))


# --- error maps ------------------------------------------------------------------------------------

def footprint_window(tif: Path, pad: int = 8) -> Window | None:
    """The window of an error map holding its valid pixels (class != 255), padded by ``pad`` px.

    Found on a decimated read: an area's footprint, without the empty corners of its bounding box or the scene's
    nodata. None when it has no valid pixel.
    """
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(tif) as ds:
        factor = max(1, math.ceil(max(ds.width, ds.height) / (2 * PNG_MAX_SIDE)))
        shape = (math.ceil(ds.height / factor), math.ceil(ds.width / factor))
        valid = ds.read(1, out_shape=shape) != NODATA_CLASS
        if not valid.any():
            return None
        rows, cols = np.flatnonzero(valid.any(axis=1)), np.flatnonzero(valid.any(axis=0))
        r0, r1 = max(0, rows[0] * factor - pad), min(ds.height, (rows[-1] + 1) * factor + pad)
        c0, c1 = max(0, cols[0] * factor - pad), min(ds.width, (cols[-1] + 1) * factor + pad)
        return Window(c0, r0, c1 - c0, r1 - r0)


def _error_map_layers(tif: Path, stack_path: Path, bands: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The image (RGB) and the TP/FP/FN overlay (RGBA) of an error map, cropped to the area's footprint.

    Decimated to at most PNG_MAX_SIDE px. Inside the area the image is drawn as it is under TP/FP/FN; outside it
    (within the crop) it is faded to a light wash, so that a thin or diagonal area keeps its landscape around it
    instead of a grey canvas; where the image itself has no data it is grey.
    """
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(tif) as ds:
        win = footprint_window(tif) or Window(0, 0, ds.width, ds.height)
        factor = max(1, math.ceil(max(win.width, win.height) / PNG_MAX_SIDE))
        shape = (math.ceil(win.height / factor), math.ceil(win.width / factor))
        cls = ds.read(1, window=win, out_shape=shape)
        transform = ds.window_transform(win) @ Affine.scale(win.width / shape[1], win.height / shape[0])
        crs = ds.crs
    rgba = read_true_colour(stack_path, bands, crs, transform, shape)
    has_image = rgba[..., 3] > 0 if rgba is not None else np.zeros(shape, dtype=bool)
    image = on_grey(rgba, 0.55) if rgba is not None else np.full((*shape, 3), 0.55)
    outside = cls == NODATA_CLASS
    image[outside & has_image] = 0.35 * image[outside & has_image] + 0.65  # faded: outside the area
    image[_outline(~outside)] = (0.1, 0.1, 0.1)  # the area's edge
    overlay = np.zeros((*shape, 4))
    for k in (TP, FP, FN):
        overlay[cls == k] = (*(c / 255 for c in CLASS_COLOURS[k]), 0.85)
    return image, overlay


def _error_map_legend(fig: Figure, top: float) -> None:
    """The legend of the error-map classes, centred at the top of ``fig`` (``top``: its upper edge, 0-1)."""
    from matplotlib.patches import Patch

    # an RGB array is a colour to matplotlib, though its stubs only name tuples
    handles = [Patch(color=cast(Any, np.array(CLASS_COLOURS[k]) / 255), label=CLASS_LABELS[k]) for k in (TP, FP, FN)]
    handles.append(Patch(facecolor=(0.85, 0.85, 0.85), edgecolor=(0.1, 0.1, 0.1),
                         label="outside the area or no truth"))
    handles.append(Patch(color=(0.55, 0.55, 0.55), label="no image data"))
    fig.legend(handles=handles, loc="upper center", ncol=3, fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, top), handlelength=1.5, columnspacing=1.2)


def error_map_png(tif: Path, png: Path, stack_path: Path, bands: Sequence[str], title: str) -> Path:
    """Draw an error-map GeoTIFF (0 TN, 1 TP, 2 FP, 3 FN, 255 outside) over the stack's true colour.

    Cropped to the area's valid footprint and decimated to at most PNG_MAX_SIDE px (see _error_map_layers).
    """
    image, overlay = _error_map_layers(tif, stack_path, bands)
    h, w = image.shape[:2]
    scale = min(max(1.0, 760 / w), max(1.0, 1600 / h))  # small areas drawn larger, never past 1600 px
    disp_w, disp_h, header, fig_w = w * scale, h * scale, 84, max(w * scale, 760)
    fig = agg_figure(fig_w / 100, (disp_h + header) / 100)
    ax = fig.add_axes(((fig_w - disp_w) / 2 / fig_w, 0, disp_w / fig_w, disp_h / (disp_h + header)))
    ax.imshow(image, interpolation="nearest")
    ax.imshow(overlay, interpolation="nearest")
    ax.set_axis_off()
    _error_map_legend(fig, 1.0)
    fig.text(0.5, 1 - 60 / (disp_h + header), title, ha="center", va="top", fontsize=9)
    return save_png(fig, png)


ErrorPanel = tuple[Path, Path, Sequence[str], str]
"""One panel of an error-map grid: the error-map GeoTIFF, the scene's stack, its band names, the panel title."""


def error_map_grid(panels: Sequence[Sequence[ErrorPanel | None]], png: Path, title: str,
                   row_labels: Sequence[str] = (), panel_in: float = 3.2) -> Path:
    """Error maps side by side: one row per entry of ``panels``, one column per panel (None: an empty cell).

    Each panel is drawn as error_map_png draws one map, under one legend and one title.
    """
    rows, cols = len(panels), max((len(r) for r in panels), default=1)
    header_in, label_in = 1.35, 0.4 if row_labels else 0.1  # the legend, the title, the first panel titles
    width = max(7.6, cols * panel_in + label_in)  # the legend's three columns need about 7.6 in
    fig = agg_figure(width, rows * (panel_in + 0.35) + header_in)
    top = 1 - header_in / fig.get_figheight()
    grid = fig.add_gridspec(rows, cols, left=label_in / width, right=0.99, bottom=0.01, top=top, hspace=0.3,
                            wspace=0.05)
    for i, row in enumerate(panels):
        for j in range(cols):
            ax = fig.add_subplot(grid[i, j])
            ax.set_axis_off()
            panel = row[j] if j < len(row) else None
            if panel is None:
                continue
            image, overlay = _error_map_layers(panel[0], panel[1], panel[2])
            ax.imshow(image, interpolation="nearest")
            ax.imshow(overlay, interpolation="nearest")
            ax.set_title(panel[3], fontsize=8)
        if i < len(row_labels):
            fig.text(0.1 / width, top - (i + 0.5) * (top - 0.01) / rows, row_labels[i], rotation=90, ha="left",
                     va="center", fontsize=9)
    _error_map_legend(fig, 1.0)
    fig.text(0.5, 1 - 0.6 / fig.get_figheight(), title, ha="center", va="top", fontsize=10)
    return save_png(fig, png)


# --- training and patches --------------------------------------------------------------------------

def plot_learning_curve(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Train and validation loss, and validation F1 at 0.5, per epoch (PNG)."""
    epochs = [r["epoch"] for r in rows]
    fig = agg_figure(8, 3.5)
    ax_loss, ax_f1 = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in rows], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.legend()
    ax_f1.plot(epochs, [r["val_f1"] for r in rows], color="tab:green")
    ax_f1.set(xlabel="epoch", ylabel="F1", title="Validation F1 (threshold 0.5)", ylim=(0, 1))
    for ax in (ax_loss, ax_f1):
        ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.9, wspace=0.25)  # tight_layout: +50 % time
    return save_png(fig, path)


def _outline(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    m = mask.astype(bool)
    return m & ~binary_erosion(m, border_value=0)


def patch_preview(chip: np.ndarray, bands: Sequence[str], pred: np.ndarray, truth: np.ndarray | None,
                  path: Path) -> Path:
    """A patch in true colour at 2x, the predicted outline red, the true outline cyan (PNG)."""
    import matplotlib.image

    img = on_grey(true_colour(np.asarray(chip, np.float32), bands))
    img = img.repeat(2, axis=0).repeat(2, axis=1)
    if truth is not None:
        img[_outline((truth == 1).repeat(2, axis=0).repeat(2, axis=1))] = (0.0, 1.0, 1.0)
    img[_outline(pred.astype(bool).repeat(2, axis=0).repeat(2, axis=1))] = (1.0, 0.1, 0.1)
    with atomic_file(path) as tmp:
        matplotlib.image.imsave(tmp, (img * 255).astype(np.uint8), format="png")
    return Path(path)
