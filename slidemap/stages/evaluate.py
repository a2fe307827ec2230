"""Evaluate a prediction folder against the inventory of a scene, per area and pooled.

Pixel level: TP/FP/FN/TN counts of the landslide class (also as km², correct in any CRS) and the scores
of :mod:`slidemap.raster.metrics`. Object level: connected components (``scipy.ndimage.label``, 4-connected like
the polygons ``predict`` writes) of the truth and of the prediction inside each area, labelled block by
block and merged across block seams, so that a 10,000² scene is never held in memory at once. Per area
it writes an error-map GeoTIFF (0 TN, 1 TP, 2 FP, 3 FN, 255 nodata/outside) and a PNG of the image with
TP/FP/FN overlaid; for the whole run ``metrics.json`` and ``metrics.csv``; all atomically, in the
prediction folder.

Nodata is excluded everywhere: truth 255, prediction 255 and pixels outside the area (pixel centre
outside the area polygon) or outside the prediction's extent.
"""

from __future__ import annotations

import csv
import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from slidemap.errors import UserError
from slidemap.formats.files import atomic_file, read_json, require_dir, write_json
from slidemap.formats.scene import Scene
from slidemap.raster.geo import Grid, block_windows, gtiff_profile, open_raster, row_pixel_areas_m2
from slidemap.raster.metrics import Counts, scores

TN, TP, FP, FN, NODATA = 0, 1, 2, 3, 255
CLASS_NAMES = {TN: "tn", TP: "tp", FP: "fp", FN: "fn"}
# TP yellow, FP magenta, FN cyan: distinct for the common colour-vision deficiencies and on any image.
CLASS_COLOURS = {TN: (210, 210, 210), TP: (255, 215, 0), FP: (235, 0, 235), FN: (0, 200, 255)}
CLASS_LABELS = {TP: "TP: landslide found", FP: "FP: false alarm", FN: "FN: landslide missed"}
CONNECTIVITY = 4  # as predict's polygons (rasterio.features.shapes): one object = one polygon
POOLED = "all"
PNG_MAX_SIDE = 1200
GDAL_CACHE_MB = 128
METRICS_FORMAT = "slidemap.metrics"
CSV_FIELDS = ("area", "role", "precision", "recall", "f1", "iou", "iou_background", "miou", "accuracy",
              "tp", "fp", "fn", "tn", "nodata", "tp_km2", "fp_km2", "fn_km2", "tn_km2",
              "landslides_found", "landslides_total", "predicted_objects", "false_alarms", "threshold")


class EvaluateWarning(UserWarning):
    """Something the user should know but that does not stop the evaluation (reprojection, coverage)."""


    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return rasterio.transform.array_bounds(self.height, self.width, self.transform)[:4]


# --- public API -------------------------------------------------------------------------------------
def evaluate(pred: str | Path, truth: str | Path | None = None, areas: Sequence[str] | None = None,
             object_overlap: float = 0.5, block: int = 1024) -> dict[str, Any]:
    """Score a prediction folder against a scene's inventory per area and pooled; write maps and tables.

    Args:
        pred: prediction folder from ``slidemap predict`` (``mask.tif`` 1/0/255, ``prediction.json``).
        truth: scene folder holding the reference mask; a chip set is handed to
            ``slidemap.sources.l4s.evaluate_patches``; None uses the scene named in ``prediction.json``.
        areas: area names to evaluate (default: the area the prediction was made for, else every test area).
        object_overlap: fraction of an inventory landslide's valid pixels that must be predicted for it to
            count as found.
        block: side of the square blocks the rasters are streamed in (memory is O(block²)).

    Returns:
        ``table`` (printable), ``metrics_json``, ``metrics_csv``, ``error_map_<area>`` and
        ``error_png_<area>`` paths, and ``metrics`` (the content of metrics.json).
    """
    pred_dir = require_dir(pred, "PRED", marker="prediction.json", what="prediction folder")
    if truth is not None and (Path(truth) / "chips.json").is_file():
        if areas:
            raise UserError("--area: a chip set has no named areas; leave --area out to evaluate patches")
        from slidemap.sources.l4s import evaluate_patches

        return evaluate_patches(pred_dir, Path(truth))
    if not 0.0 < object_overlap <= 1.0:
        raise UserError(f"--object-overlap {object_overlap}: must be in (0, 1], e.g. 0.5")
    if block < 16:
        raise UserError(f"block {block}: must be at least 16 pixels")
    info = _prediction_info(pred_dir)
    scene = _truth_scene(truth, info)
    names = _choose_areas(scene, areas, info)
    # each block is read once: a small GDAL cache keeps memory flat (GDAL's default is 5 % of the RAM)
    cache = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": GDAL_CACHE_MB * 2**20}
    with rasterio.Env(**cache):
        return _evaluate_scene(pred_dir, scene, names, bool(areas), info, object_overlap, block)


def _evaluate_scene(pred_dir: Path, scene: Scene, names: list[str], named: bool, info: dict[str, Any],
                    object_overlap: float, block: int) -> dict[str, Any]:
    """Evaluate the chosen areas and write every output (the body of :func:`evaluate`)."""
    roles = {a.name: a.role for a in scene.areas}

    rows: list[dict[str, Any]] = []
    with open_raster(pred_dir / "mask.tif", "PRED mask.tif") as pred_ds, \
            open_raster(scene.mask_path, "--truth mask.tif") as truth_ds:
        if pred_ds.count != 1 or pred_ds.dtypes[0] != "uint8":
            raise UserError(f"PRED {pred_dir / 'mask.tif'}: expected one uint8 band (1/0/255), found "
                            f"{pred_ds.count} band(s) of {pred_ds.dtypes[0]}; give a folder `predict` wrote")
        grid = Grid.of(pred_ds)
        read_truth = truth_reader(truth_ds, grid, scene.mask_path)
        geoms = _area_geometries(scene, names, grid.crs)
        for name in names:
            window = area_window(geoms[name], grid)
            if window is None:
                if named:
                    raise UserError(f"--area {name}: the prediction in {pred_dir} does not cover it; predict "
                                    f"that area or leave --area out")
                warnings.warn(f"area {name}: not covered by the prediction in {pred_dir}; skipped",
                              EvaluateWarning, stacklevel=2)
                continue
            coverage = _coverage(geoms[name], grid)
            if coverage < 0.999:
                warnings.warn(f"area {name}: the prediction covers {coverage:.1%} of it; only that part is "
                              f"evaluated", EvaluateWarning, stacklevel=2)
            stem = f"error_map_{_slug(name)}"
            row = _evaluate_area(pred_ds, read_truth, grid, geoms[name], window, pred_dir / f"{stem}.tif",
                                 object_overlap, block)
            row.update(area=name, role=roles[name], coverage=coverage)
            rows.append(row)
        if not rows:
            raise UserError(f"PRED {pred_dir} and --truth {scene.path}: the prediction covers none of the "
                            f"areas {', '.join(names)}; prediction and truth do not overlap there")

    threshold, threshold_source = _threshold(info.get("threshold"))
    for row in rows:
        png = Path(row["error_map"]).with_suffix(".png")
        error_map_png(Path(row["error_map"]), png, scene, grid, _title(row, threshold))
        row["error_map_png"] = str(png)
    pooled = pool(rows)
    metrics = {
        "format": METRICS_FORMAT, "format_version": 1,
        "prediction": str(pred_dir), "truth": str(scene.path), "threshold": threshold,
        "threshold_source": threshold_source,
        "object_overlap": object_overlap, "connectivity": CONNECTIVITY,
        "iou_note": "iou is the landslide-class IoU (study 000's 'mIoU', its eq. 4); miou is the mean of "
                    "the landslide and background IoU",
        "areas": rows, POOLED: pooled,
    }
    json_path, csv_path = pred_dir / "metrics.json", pred_dir / "metrics.csv"
    write_json(json_path, metrics)
    write_metrics_csv(csv_path, [*rows, pooled], threshold)
    result: dict[str, Any] = {"table": format_table(rows, pooled, threshold, threshold_source),
                              "metrics_json": str(json_path), "metrics_csv": str(csv_path)}
    for row in rows:
        result[f"error_map_{_slug(row['area'])}"] = row["error_map"]
        result[f"error_png_{_slug(row['area'])}"] = row["error_map_png"]
    result["metrics"] = metrics
    return result


def error_classes(pred: np.ndarray, truth: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Per-pixel error class (0 TN, 1 TP, 2 FP, 3 FN; 255 where either is nodata or ``inside`` is False)."""
    cls = np.full(pred.shape, NODATA, dtype=np.uint8)
    ok = inside & (pred != NODATA) & (truth != NODATA)
    p, t = pred == 1, truth == 1
    cls[ok & ~p & ~t] = TN
    cls[ok & p & t] = TP
    cls[ok & p & ~t] = FP
    cls[ok & ~p & t] = FN
    return cls


def truth_reader(truth_ds, grid: Grid, path: Path) -> Callable[[Window], np.ndarray]:
    """Return ``read(window)`` giving the truth mask on ``grid``'s pixels (255 outside the truth).

    Same CRS and pixel size with a whole-pixel offset (a prediction of one area's window) is read exactly;
    any other grid is reprojected (nearest) with a warning; no overlap at all is a UserError.
    """
    tgrid = Grid.of(truth_ds)
    if not _bounds_overlap(tgrid, grid):
        raise UserError(f"--truth {path}: prediction and truth do not overlap; give the scene the prediction "
                        f"was made from")
    offset = _pixel_offset(tgrid, grid)
    if offset is not None:
        row_off, col_off = offset
        return lambda w: read_padded(truth_ds, Window(w.col_off + col_off, w.row_off + row_off,
                                                      w.width, w.height))
    warnings.warn(f"--truth {path}: on another grid than the prediction ({_describe(tgrid)} vs "
                  f"{_describe(grid)}); reprojecting it (nearest) onto the prediction grid", EvaluateWarning,
                  stacklevel=3)

    def read(w: Window) -> np.ndarray:
        from rasterio.warp import Resampling, reproject

        out = np.full((int(w.height), int(w.width)), NODATA, dtype=np.uint8)
        reproject(rasterio.band(truth_ds, 1), out, dst_transform=window_transform(w, grid.transform),
                  dst_crs=grid.crs, src_nodata=NODATA, dst_nodata=NODATA, resampling=Resampling.nearest)
        return out

    return read


def read_padded(ds, window: Window, fill: int = NODATA) -> np.ndarray:
    """Band 1 of ``ds`` in ``window``, which may reach outside the raster (filled with ``fill``)."""
    r0, c0, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
    out = np.full((h, w), fill, dtype=ds.dtypes[0])
    rr0, cc0 = max(r0, 0), max(c0, 0)
    rr1, cc1 = min(r0 + h, ds.height), min(c0 + w, ds.width)
    if rr1 > rr0 and cc1 > cc0:
        out[rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = ds.read(1, window=Window(cc0, rr0, cc1 - cc0, rr1 - rr0))
    return out


def area_window(geom, grid: Grid) -> Window | None:
    """Smallest whole-pixel window of ``grid`` holding ``geom``'s bounds, clipped to it (None if empty)."""
    from rasterio.windows import from_bounds

    if geom is None or geom.is_empty:
        return None
    w = from_bounds(*geom.bounds, transform=grid.transform)
    c0, r0 = max(math.floor(w.col_off + 1e-9), 0), max(math.floor(w.row_off + 1e-9), 0)
    c1 = min(math.ceil(w.col_off + w.width - 1e-9), grid.width)
    r1 = min(math.ceil(w.row_off + w.height - 1e-9), grid.height)
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


class ObjectTracker:
    """Connected components of a binary layer streamed block by block (row-major) over one window.

    Each block is labelled alone; labels touching across a block seam (4- or 8-connected) are recorded as
    pairs and merged at the end with a graph's connected components, so memory stays O(block² + objects).
    Per object it sums ``valid`` pixels and ``hit`` pixels (valid pixels where the other layer agrees).
    """

    def __init__(self, width: int, connectivity: int = CONNECTIVITY):
        from scipy import ndimage

        if connectivity not in (4, 8):
            raise ValueError(f"connectivity {connectivity}: must be 4 or 8")
        self.width = width
        self._structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
        self._shifts = (0,) if connectivity == 4 else (-1, 0, 1)
        self.count = 0
        self._valid: list[np.ndarray] = []
        self._hit: list[np.ndarray] = []
        self._pairs: list[np.ndarray] = []
        self._above = np.zeros(width, dtype=np.int64)   # last row of the previous block row
        self._bottom = np.zeros(width, dtype=np.int64)  # last row of the current block row, being filled
        self._left: np.ndarray | None = None            # last column of the block to the left
        self._row = -1

    def add(self, block: Window, objects: np.ndarray, valid: np.ndarray, hit: np.ndarray) -> None:
        """Label one block (offsets relative to the window) and link it to its upper and left neighbours."""
        from scipy import ndimage

        r0, c0 = int(block.row_off), int(block.col_off)
        if r0 != self._row:
            self._above, self._bottom = self._bottom, np.zeros_like(self._bottom)
            self._left, self._row = None, r0
        lab, n = ndimage.label(objects, structure=self._structure)
        if n:
            self._valid.append(np.bincount(lab[valid], minlength=n + 1)[1:])
            self._hit.append(np.bincount(lab[valid & hit], minlength=n + 1)[1:])
        glab = np.where(lab > 0, lab.astype(np.int64) + self.count, 0)
        self.count += n
        h, w = glab.shape
        if r0 > 0:
            self._link_shifted(glab[0], self._above, np.arange(c0, c0 + w), self.width)
        if c0 > 0 and self._left is not None:
            self._link_shifted(glab[:, 0], self._left, np.arange(h), h)
        self._bottom[c0:c0 + w] = glab[-1]
        self._left = glab[:, -1]

    def _link_shifted(self, edge: np.ndarray, neighbour: np.ndarray, index: np.ndarray, size: int) -> None:
        for d in self._shifts:
            j = index + d
            ok = (j >= 0) & (j < size)
            other = np.zeros_like(edge)
            other[ok] = neighbour[j[ok]]
            both = (edge > 0) & (other > 0)
            if both.any():
                self._pairs.append(np.stack([edge[both], other[both]]))

    def totals(self) -> tuple[np.ndarray, np.ndarray]:
        """Per merged object: (valid pixels, hit pixels)."""
        if self.count == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        valid, hit = np.concatenate(self._valid), np.concatenate(self._hit)
        if not self._pairs:
            return valid, hit
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        pairs = np.concatenate(self._pairs, axis=1) - 1
        graph = coo_matrix((np.ones(pairs.shape[1], dtype=np.int8), (pairs[0], pairs[1])),
                           shape=(self.count, self.count))
        n, comp = connected_components(graph, directed=False)
        return (np.bincount(comp, weights=valid, minlength=n).astype(np.int64),
                np.bincount(comp, weights=hit, minlength=n).astype(np.int64))


def object_counts(truth: ObjectTracker, pred: ObjectTracker, object_overlap: float) -> dict[str, int]:
    """Inventory landslides found / total and predicted objects / false alarms (objects with no valid
    pixel are left out: they lie wholly on nodata)."""
    t_valid, t_hit = truth.totals()
    p_valid, p_hit = pred.totals()
    t_seen, p_seen = t_valid > 0, p_valid > 0
    return {
        "landslides_total": int(t_seen.sum()),
        "landslides_found": int((t_seen & (t_hit >= object_overlap * t_valid - 1e-9)).sum()),
        "predicted_objects": int(p_seen.sum()),
        "false_alarms": int((p_seen & (p_hit == 0)).sum()),
    }


def pool(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The pooled row: counts, km² and objects summed over the areas, scores from the summed counts."""
    keys = ("tp", "fp", "fn", "tn")
    pixels = {k: sum(r["pixels"][k] for r in rows) for k in (*keys, "nodata")}
    km2 = {k: sum(r["km2"][k] for r in rows) for k in keys}
    objects = {k: sum(r["objects"][k] for r in rows) for k in rows[0]["objects"]} if rows else {}
    return {"area": POOLED, "role": "+".join(sorted({r["role"] for r in rows})), "pixels": pixels,
            "km2": km2, "scores": scores(Counts(*(pixels[k] for k in keys))), "objects": objects}


def format_table(rows: Sequence[dict[str, Any]], pooled: dict[str, Any], threshold: Any = None,
                 threshold_source: str | None = None) -> str:
    """A fixed-width text table: one line per area and the pooled line."""
    head = (f"{'area':14s} {'P':>6s} {'R':>6s} {'F1':>6s} {'IoU':>6s} {'mIoU':>6s} {'TP km²':>9s} "
            f"{'FP km²':>9s} {'FN km²':>9s} {'found/total':>12s} {'false alarms':>13s}")
    lines = [head, "-" * len(head)]
    for r in [*rows, pooled]:
        s, k, o = r["scores"], r["km2"], r["objects"]
        lines.append(f"{str(r['area'])[:14]:14s} {s['precision']:6.3f} {s['recall']:6.3f} {s['f1']:6.3f} "
                     f"{s['iou']:6.3f} {s['miou']:6.3f} {k['tp']:9.4f} {k['fp']:9.4f} {k['fn']:9.4f} "
                     f"{o['landslides_found']:>5d}/{o['landslides_total']:<6d} "
                     f"{o['false_alarms']:>6d}/{o['predicted_objects']:<6d}")
    source = f" ({threshold_source})" if threshold_source else ""
    lines.append(f"threshold {threshold}{source}; IoU = landslide class (study 000's 'mIoU'); mIoU = mean of "
                 f"landslide and background IoU; false alarms = predicted objects touching no landslide")
    return "\n".join(lines)


def write_metrics_csv(path: Path, rows: Sequence[dict[str, Any]], threshold: Any) -> None:
    """One CSV row per area (and the pooled row), atomically."""
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in rows:
            flat = {"area": r["area"], "role": r["role"], "threshold": threshold, **r["scores"],
                    **r["pixels"], **{f"{k}_km2": v for k, v in r["km2"].items()}, **r["objects"]}
            writer.writerow({k: flat.get(k) for k in CSV_FIELDS})


def error_map_png(tif: Path, png: Path, scene: Scene, grid: Grid, title: str) -> None:
    """Draw the error map over the scene's true-colour image (decimated to at most PNG_MAX_SIDE px)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    with rasterio.open(tif) as ds:
        factor = max(1, math.ceil(max(ds.width, ds.height) / PNG_MAX_SIDE))
        shape = (math.ceil(ds.height / factor), math.ceil(ds.width / factor))
        cls = ds.read(1, out_shape=shape)
        window = _window_in(grid, ds.transform, ds.width, ds.height)
    rgb = true_colour(scene, grid, window, shape)
    image = rgb if rgb is not None else np.full((*shape, 3), 0.55)
    overlay = np.zeros((*shape, 4))
    overlay[cls == NODATA] = (0, 0, 0, 0.55)
    for k in (TP, FP, FN):
        overlay[cls == k] = (*(c / 255 for c in CLASS_COLOURS[k]), 0.85)
    h, w = shape
    scale = min(max(1.0, 760 / w), max(1.0, 1600 / h))  # small areas drawn larger, never past 1600 px
    disp_w, disp_h, header, fig_w = w * scale, h * scale, 64, max(w * scale, 760)
    fig = Figure(figsize=(fig_w / 100, (disp_h + header) / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes(((fig_w - disp_w) / 2 / fig_w, 0, disp_w / fig_w, disp_h / (disp_h + header)))
    ax.imshow(image, interpolation="nearest")
    ax.imshow(overlay, interpolation="nearest")
    ax.set_axis_off()
    handles = [Patch(color=np.array(CLASS_COLOURS[k]) / 255, label=CLASS_LABELS[k]) for k in (TP, FP, FN)]
    handles.append(Patch(color=(0.3, 0.3, 0.3), label="nodata / outside area"))
    fig.legend(handles=handles, loc="upper center", ncol=4, fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, 1.0), handlelength=1.5, columnspacing=1.2)
    fig.text(0.5, 1 - 40 / (disp_h + header), title, ha="center", va="top", fontsize=9)
    with atomic_file(png) as tmp:
        fig.savefig(tmp, format="png")


def true_colour(scene: Scene, grid: Grid, window: Window, shape: tuple[int, int]) -> np.ndarray | None:
    """RGB (H, W, 3) in 0..1 of the scene stack on ``grid``'s ``window``: red/green/blue by band name,
    else bands 1-3 as R, G, B (1 band: grey); a 2-98 % percentile stretch per band. None without a stack."""
    from rasterio.vrt import WarpedVRT

    if not scene.stack_path.is_file():
        return None
    lower = [b.lower() for b in scene.bands]
    if all(n in lower for n in ("red", "green", "blue")):
        idx = [lower.index(n) + 1 for n in ("red", "green", "blue")]
    else:
        idx = [1, 2, 3] if len(lower) >= 3 else [1, 1, 1]
    # warp straight onto the decimated grid: only the output pixels are computed, not the full window
    transform = window_transform(window, grid.transform) @ Affine.scale(window.width / shape[1],
                                                                        window.height / shape[0])
    with rasterio.open(scene.stack_path) as src, WarpedVRT(src, crs=grid.crs, transform=transform,
                                                         width=shape[1], height=shape[0],
                                                         src_nodata=np.nan, nodata=np.nan) as vrt:
        bands = vrt.read(idx, out_dtype="float32")
    out = np.zeros((*shape, 3))
    for i, band in enumerate(bands):
        finite = np.isfinite(band)
        if finite.any():
            lo, hi = np.percentile(band[finite], (2, 98))
            out[..., i] = np.clip((np.where(finite, band, lo) - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    # Image nodata mid-grey, not black: under the map's nodata shading it matches the legend's grey.
    out[~np.isfinite(bands).all(axis=0)] = 0.6
    return out


# --- internals --------------------------------------------------------------------------------------
def _evaluate_area(pred_ds, read_truth, grid: Grid, geom, window: Window, tif: Path, object_overlap: float,
                   block: int) -> dict[str, Any]:
    """Stream one area's window: error classes to ``tif``, pixel counts, km² and object counts."""
    from rasterio import features

    pixels = np.zeros(5, dtype=np.int64)  # TN, TP, FP, FN, nodata inside the area
    km2 = np.zeros(4)
    width, height = int(window.width), int(window.height)
    truth_objects, pred_objects = ObjectTracker(width), ObjectTracker(width)
    profile = gtiff_profile(width, height, 1, "uint8", grid.crs, window_transform(window, grid.transform),
                            nodata=NODATA)
    with atomic_file(tif) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for b in block_windows(width, height, block):
            gw = Window(window.col_off + b.col_off, window.row_off + b.row_off, b.width, b.height)
            pred = pred_ds.read(1, window=gw)
            bad = (pred > 1) & (pred != NODATA)
            if bad.any():
                raise UserError(f"PRED {pred_ds.name}: value {int(pred[bad][0])} in mask.tif; expected 1 "
                                f"landslide, 0 background, 255 nodata")
            truth = read_truth(gw)
            inside = features.geometry_mask([geom], out_shape=pred.shape, invert=True,
                                            transform=window_transform(gw, grid.transform))
            cls = error_classes(pred, truth, inside)
            dst.write(cls, 1, window=b)
            row_m2 = row_pixel_areas_m2(grid.crs, grid.transform, int(gw.row_off), int(gw.height))
            for k in (TN, TP, FP, FN):
                per_row = np.count_nonzero(cls == k, axis=1)
                pixels[k] += int(per_row.sum())
                km2[k] += float(per_row @ row_m2) / 1e6
            pixels[4] += int(np.count_nonzero(inside & (cls == NODATA)))
            truth_objects.add(b, objects=(truth == 1) & inside, valid=pred != NODATA, hit=pred == 1)
            pred_objects.add(b, objects=(pred == 1) & inside, valid=truth != NODATA, hit=truth == 1)
        dst.write_colormap(1, {**{k: (*c, 255) for k, c in CLASS_COLOURS.items()}, NODATA: (0, 0, 0, 0)})
        dst.update_tags(1, classes="0 TN, 1 TP, 2 FP, 3 FN, 255 nodata or outside the area")
    counts = Counts(tp=int(pixels[TP]), fp=int(pixels[FP]), fn=int(pixels[FN]), tn=int(pixels[TN]))
    return {
        "pixels": {**counts.as_dict(), "nodata": int(pixels[4])},
        "km2": {CLASS_NAMES[k]: km2[k] for k in (TP, FP, FN, TN)},
        "scores": scores(counts),
        "objects": object_counts(truth_objects, pred_objects, object_overlap),
        "window": {"col_off": int(window.col_off), "row_off": int(window.row_off),
                   "width": width, "height": height},
        "error_map": str(tif),
    }


def _prediction_info(pred_dir: Path) -> dict[str, Any]:
    info = read_json(pred_dir / "prediction.json", "PRED")
    if not isinstance(info, dict):
        raise UserError(f"PRED {pred_dir}: prediction.json is not an object; predict again")
    if info.get("kind") == "patches":
        raise UserError(f"PRED {pred_dir}: a patch prediction; evaluate it with --truth CHIPS (its chip set)")
    if not (pred_dir / "mask.tif").is_file():
        raise UserError(f"PRED {pred_dir}: no mask.tif inside; predict again (the folder is incomplete)")
    return info


def _truth_scene(truth: str | Path | None, info: dict[str, Any]) -> Scene:
    if truth is None:
        if not info.get("scene"):
            raise UserError("--truth: give the scene folder with the inventory (prediction.json names none)")
        truth = info["scene"]
    scene = Scene(truth, "--truth")
    if "inventory" in scene.meta and not scene.meta["inventory"]:
        raise UserError(f"--truth {scene.path}: the scene was prepared without an inventory; prepare it with "
                        f"--inventory to evaluate against it")
    return scene


def _choose_areas(scene: Scene, areas: Sequence[str] | None, info: dict[str, Any]) -> list[str]:
    if areas:
        return [scene.area(n).name for n in dict.fromkeys(areas)]
    own = info.get("area")
    if own and own in {a.name for a in scene.areas}:
        return [own]
    tests = [a.name for a in scene.areas_with_role("test")]
    if not tests:
        known = ", ".join(a.name for a in scene.areas) or "none"
        raise UserError(f"--area: scene {scene.path} has no test area; name one with --area (areas: {known})")
    return tests


def _area_geometries(scene: Scene, names: Sequence[str], crs: CRS) -> dict[str, Any]:
    gdf = scene.area_geometries()
    if gdf.crs is not None and crs is not None and CRS.from_user_input(gdf.crs) != crs:
        gdf = gdf.to_crs(crs)
    out = {}
    for name in names:
        sel = gdf.loc[gdf["name"] == name]
        out[name] = sel.geometry.union_all() if len(sel) else None
    return out


def _coverage(geom, grid: Grid) -> float:
    from shapely.geometry import box

    return float(geom.intersection(box(*grid.bounds)).area / geom.area) if geom.area else 0.0


def _bounds_overlap(a: Grid, b: Grid) -> bool:
    from rasterio.warp import transform_bounds

    try:
        ab = transform_bounds(a.crs, b.crs, *a.bounds, densify_pts=21) if a.crs != b.crs else a.bounds
    except Exception:  # noqa: BLE001 - CRSs that cannot be related cannot overlap usefully
        return False
    bb = b.bounds
    return ab[0] < bb[2] and bb[0] < ab[2] and ab[1] < bb[3] and bb[1] < ab[3]


def _pixel_offset(truth: Grid, pred: Grid) -> tuple[int, int] | None:
    """(row, col) of ``pred``'s first pixel in ``truth``'s grid, if both share CRS, pixel size and phase."""
    t, p = truth.transform, pred.transform
    if truth.crs != pred.crs or t.b or t.d or p.b or p.d:
        return None
    if not (math.isclose(t.a, p.a, rel_tol=1e-9) and math.isclose(t.e, p.e, rel_tol=1e-9)):
        return None
    col, row = (p.c - t.c) / t.a, (p.f - t.f) / t.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return round(row), round(col)


def _window_in(grid: Grid, transform: Affine, width: int, height: int) -> Window:
    col, row = ~grid.transform @ (transform.c, transform.f)
    return Window(round(col), round(row), width, height)


def _describe(g: Grid) -> str:
    crs = g.crs.to_string() if g.crs else "no CRS"
    return f"{crs}, {abs(g.transform.a):.6g} x {abs(g.transform.e):.6g} px"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)) or "area"


def _threshold(value: Any) -> tuple[float | None, str | None]:
    """The decision threshold ``predict`` used and how it was chosen, from prediction.json's
    ``threshold`` (a number, or ``{"value": 0.42, "which": "best"}``)."""
    if isinstance(value, dict):
        v = value.get("value")
        return (float(v) if isinstance(v, int | float) else None), value.get("which")
    return (float(value) if isinstance(value, int | float) else None), None


def _title(row: dict[str, Any], threshold: Any) -> str:
    s, o = row["scores"], row["objects"]
    return (f"{row['area']} ({row['role']}): P {s['precision']:.2f}  R {s['recall']:.2f}  F1 {s['f1']:.2f}  "
            f"IoU {s['iou']:.2f}  found {o['landslides_found']}/{o['landslides_total']}  "
            f"false alarms {o['false_alarms']}  (threshold {threshold})")
