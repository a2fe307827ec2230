"""``slidemap evaluate``: score a prediction against a scene's inventory, per area and pooled.

Pixel level: TP/FP/FN/TN counts of the landslide class (also as km², correct in any CRS) and the scores of
``slidemap.raster.metrics``. Object level: connected components (4-connected like the polygons ``predict``
writes) of the truth and of the prediction inside each area, streamed block by block
(``slidemap.raster.components``), so that a 10,000² scene is never held in memory at once. Per area it
writes an error-map GeoTIFF (0 TN, 1 TP, 2 FP, 3 FN, 255 nodata/outside) and a PNG of the image with
TP/FP/FN overlaid (``maps`` "tif": the GeoTIFF only; "none": neither); for the whole run ``metrics.csv``
and, last, ``metrics.json`` (its presence means the evaluation is complete), into the prediction folder,
which is locked meanwhile. A patch prediction
(Landslide4Sense) is scored against its chip set (``slidemap.stages.patches``).

Nodata is excluded everywhere: truth 255, prediction 255 and pixels outside the area (pixel centre
outside the area polygon) or outside the prediction's extent.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import rasterio
from pydantic import Field
from rasterio.crs import CRS
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from slidemap.errors import UserError
from slidemap.figures import error_map_png
from slidemap.formats.files import atomic_file, output_lock, require_dir
from slidemap.formats.gdal import gtiff_profile, open_raster, read_block
from slidemap.formats.prediction import (
    AreaMetrics,
    PatchMetrics,
    SceneMetrics,
    ScenePrediction,
    read_prediction,
)
from slidemap.formats.scene import Scene
from slidemap.raster.components import ComponentLabeler
from slidemap.raster.geo import Grid, area_window, block_windows, bounds_overlap, row_pixel_areas_m2
from slidemap.raster.metrics import (
    CLASS_COLOURS,
    CLASS_NAMES,
    FN,
    FP,
    TN,
    TP,
    Counts,
    error_classes,
    scores,
)
from slidemap.raster.metrics import NODATA_CLASS as NODATA
from slidemap.stages.maps import write_error_map_style
from slidemap.stages.options import StageOptions, StageResult
from slidemap.stages.patches import evaluate_patches

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry

CONNECTIVITY = 4  # as predict's polygons (rasterio.features.shapes): one object = one polygon
POOLED = "all"
GDAL_CACHE_MB = 128
CSV_FIELDS = ("area", "role", "precision", "recall", "f1", "iou", "iou_background", "miou", "accuracy",
              "tp", "fp", "fn", "tn", "nodata", "tp_km2", "fp_km2", "fn_km2", "tn_km2",
              "landslides_found", "landslides_total", "predicted_objects", "false_alarms", "threshold")


class EvaluateWarning(UserWarning):
    """Something the user should know but that does not stop the evaluation (reprojection, coverage)."""


class EvaluateOptions(StageOptions):
    """Everything ``slidemap evaluate`` takes (see ``slidemap evaluate --help``).

    ``truth``: the scene folder holding the reference mask (default: the scene named in prediction.json),
    or the chip set a patch prediction was made from; ``areas``: area names (default: the area the
    prediction was made for, else every test area); ``object_overlap``: share of a landslide's valid
    pixels that must be predicted for it to count as found; ``block``: side of the streamed blocks.
    """

    pred: Path
    """Prediction folder from `slidemap predict`."""
    truth: Path | None = None
    """Scene folder (or chip set) holding the reference inventory (default: the scene named in
    PRED/prediction.json)."""
    areas: list[str] | None = None
    """Area(s) to evaluate, comma-separated (default: the area PRED was predicted for, else all test areas)."""
    object_overlap: float = Field(0.5, gt=0.0, le=1.0)
    """Fraction of a landslide's area that must be predicted for it to count as found."""
    block: int = Field(1024, ge=16)
    """Side of the blocks the rasters are streamed in."""
    maps: Literal["png", "tif", "none"] = "png"
    """Each area's error map: as a GeoTIFF (with its QGIS style) and a PNG over the image, the GeoTIFF only, or
    none (an experiment grid's runs keep their masks; the report draws the maps it shows from them)."""


class EvaluateResult(StageResult):
    """The evaluation written into the prediction folder, and its printable table."""

    path: Path
    table: str
    metrics: SceneMetrics | PatchMetrics
    files: dict[str, Path] = {}


def run(options: EvaluateOptions) -> EvaluateResult:
    """Score a prediction folder against its truth; write maps and tables into the prediction folder."""
    o = options
    pred_dir = require_dir(o.pred, "PRED", marker="prediction.json", what="prediction folder")
    info = read_prediction(pred_dir)
    if not isinstance(info, ScenePrediction) or (o.truth is not None and (o.truth / "chips.json").is_file()):
        if o.areas:
            raise UserError("--area: a chip set has no named areas; leave --area out to evaluate patches")
        metrics, table, files = evaluate_patches(pred_dir, o.truth, info)
        return EvaluateResult(path=pred_dir, table=table, metrics=metrics, files=files)
    if not (pred_dir / "mask.tif").is_file():
        raise UserError(f"PRED {pred_dir}: no mask.tif inside; predict again (the folder is incomplete)")
    scene = _truth_scene(o.truth, info)
    names = _choose_areas(scene, o.areas, info)
    # each block is read once: a small GDAL cache keeps memory flat (GDAL's default is 5 % of the RAM)
    cache = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": GDAL_CACHE_MB * 2**20}
    with rasterio.Env(**cache), output_lock(pred_dir.resolve()):
        (pred_dir / "metrics.json").unlink(missing_ok=True)  # the folder never claims a half evaluation
        return _evaluate_scene(pred_dir, scene, names, bool(o.areas), info, o.object_overlap, o.block, o.maps)


def _evaluate_scene(pred_dir: Path, scene: Scene, names: list[str], named: bool, info: ScenePrediction,
                    object_overlap: float, block: int,
                    maps: Literal["png", "tif", "none"] = "png") -> EvaluateResult:
    """Evaluate the chosen areas and write every output."""
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
            coverage = _coverage(geoms[name], grid, name)
            score = AreaScore(read_truth, grid, geoms[name], window, object_overlap)
            tif = None if maps == "none" else pred_dir / f"error_map_{_slug(name)}.tif"
            with _error_map(tif, score.profile) as write:
                for b in block_windows(score.width, score.height, block):
                    gw = Window(window.col_off + b.col_off, window.row_off + b.row_off, b.width, b.height)
                    pred = read_block(pred_ds, "PRED mask.tif", 1, gw)
                    bad = (pred > 1) & (pred != NODATA)
                    if bad.any():
                        raise UserError(f"PRED {pred_ds.name}: value {int(pred[bad][0])} in mask.tif; expected "
                                        f"1 landslide, 0 background, 255 nodata")
                    write(score.add(b, pred), b)
            if tif is not None:
                write_error_map_style(tif)  # the legend in QGIS
            rows.append(score.row(name, roles[name], coverage, tif))
        if not rows:
            raise UserError(f"PRED {pred_dir} and --truth {scene.path}: the prediction covers none of the "
                            f"areas {', '.join(names)}; prediction and truth do not overlap there")
    return write_evaluation(pred_dir, pred_dir, scene, rows, info.threshold.value, info.threshold.which,
                            object_overlap, maps)


def write_evaluation(pred_dir: Path, folder: Path, scene: Scene, rows: list[dict[str, Any]], threshold: Any,
                     threshold_source: str | None, object_overlap: float,
                     maps: Literal["png", "tif", "none"]) -> EvaluateResult:
    """The PNG error maps, metrics.csv and metrics.json of scored ``rows``, written into ``folder``.

    ``folder`` is the prediction folder ``pred_dir`` itself, or the temporary folder ``predict`` is building it in
    (``AreaEvaluation``); paths are recorded as they will be in ``pred_dir``.
    """
    for row in rows if maps == "png" else []:
        name = Path(row["error_map"]).with_suffix(".png").name
        error_map_png(folder / Path(row["error_map"]).name, folder / name, scene.stack_path, scene.bands,
                      error_map_title(row, threshold))
        row["error_map_png"] = str(pred_dir / name)
    pooled = pool(rows)
    metrics = SceneMetrics(
        prediction=str(pred_dir), truth=str(scene.path), threshold=threshold,
        threshold_source=threshold_source, object_overlap=object_overlap, connectivity=CONNECTIVITY,
        iou_note="iou is the landslide-class IoU (study 000's 'mIoU', its eq. 4); miou is the mean of the "
                 "landslide and background IoU",
        areas=[AreaMetrics(**r) for r in rows], all=AreaMetrics(**pooled))
    # not flushed to disk (~0.5 ms each): remade from the prediction in milliseconds, and checked when read
    write_metrics_csv(folder / "metrics.csv", [*rows, pooled], threshold)
    metrics.save(folder / "metrics.json", sync=False)
    files = {"metrics_json": pred_dir / "metrics.json", "metrics_csv": pred_dir / "metrics.csv"}
    for row in rows:
        if row.get("error_map"):
            files[f"error_map_{_slug(row['area'])}"] = Path(row["error_map"])
        if row.get("error_map_png"):
            files[f"error_png_{_slug(row['area'])}"] = Path(row["error_map_png"])
    return EvaluateResult(path=pred_dir, table=format_table(rows, pooled, threshold, threshold_source),
                          metrics=metrics, files=files)


def truth_reader(truth_ds: rasterio.io.DatasetReaderBase, grid: Grid,
                 path: Path) -> Callable[[Window], np.ndarray]:
    """Return ``read(window)`` giving the truth mask on ``grid``'s pixels (255 outside the truth).

    Same CRS and pixel size with a whole-pixel offset (a prediction of one area's window) is read exactly;
    any other grid is reprojected (nearest) with a warning; no overlap at all is a UserError.
    """
    tgrid = Grid.of(truth_ds)
    if not _grids_overlap(tgrid, grid):
        raise UserError(f"--truth {path}: prediction and truth do not overlap; give the scene the prediction "
                        f"was made from")
    offset = _pixel_offset(tgrid, grid)
    if offset is not None:
        row_off, col_off = offset

        def read_exact(w: Window) -> np.ndarray:
            tw = Window(w.col_off + col_off, w.row_off + row_off, w.width, w.height)
            # a boundless read goes through a VRT (~1.5 ms a block): only where the window leaves the truth
            inside = (tw.col_off >= 0 and tw.row_off >= 0 and tw.col_off + tw.width <= tgrid.width
                      and tw.row_off + tw.height <= tgrid.height)
            return read_block(truth_ds, "--truth", 1, tw, boundless=not inside, fill_value=NODATA)

        return read_exact
    warnings.warn(f"--truth {path}: on another grid than the prediction ({_describe(tgrid)} vs "
                  f"{_describe(grid)}); reprojecting it (nearest) onto the prediction grid", EvaluateWarning,
                  stacklevel=3)

    def read(w: Window) -> np.ndarray:
        from rasterio.warp import Resampling, reproject

        out = np.full((int(w.height), int(w.width)), NODATA, dtype=np.uint8)
        try:
            reproject(rasterio.band(truth_ds, 1), out, dst_transform=window_transform(w, grid.transform),
                      dst_crs=grid.crs, src_nodata=NODATA, dst_nodata=NODATA, resampling=Resampling.nearest)
        except Exception as e:  # noqa: BLE001 - GDAL's read errors come as classes rasterio does not make public
            raise UserError(f"--truth {path}: cannot be read ({str(e).splitlines()[0][:160]}); the file is "
                            f"truncated or corrupt, write it again") from None
        return out

    return read


def object_counts(truth: ComponentLabeler, pred: ComponentLabeler, object_overlap: float) -> dict[str, int]:
    """Inventory landslides found / total, and predicted objects / false alarms.

    Objects with no valid pixel are left out: they lie wholly on nodata.
    """
    t, p = truth.resolve(), pred.resolve()
    t_valid, t_hit = t.sums["valid"], t.sums["hit"]
    p_valid, p_hit = p.sums["valid"], p.sums["hit"]
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
    lines.append(f"threshold {_threshold_text(threshold)}{source}; IoU = landslide class (study 000's 'mIoU'); "
                 f"mIoU = mean of landslide and background IoU; false alarms = predicted objects touching no "
                 f"landslide")
    return "\n".join(lines)


def write_metrics_csv(path: Path, rows: Sequence[dict[str, Any]], threshold: Any) -> None:
    """One CSV row per area (and the pooled row), atomically."""
    with atomic_file(path, sync=False) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in rows:
            flat = {"area": r["area"], "role": r["role"], "threshold": threshold, **r["scores"],
                    **r["pixels"], **{f"{k}_km2": v for k, v in r["km2"].items()}, **r["objects"]}
            writer.writerow({k: flat.get(k) for k in CSV_FIELDS})


class AreaScore:
    """One area's error classes, pixel and km² counts and objects, fed the predicted mask block by block.

    Blocks are windows of the area's ``window`` (of ``grid``), row-major: ``evaluate`` reads them from mask.tif,
    ``predict --evaluate --area`` hands over the mask as it writes it (``AreaEvaluation``). km² are summed
    once, over per-row counts, so any block size gives the same numbers.
    """

    def __init__(self, read_truth: Callable[[Window], np.ndarray], grid: Grid, geom: BaseGeometry,
                 window: Window, object_overlap: float) -> None:
        self.read_truth, self.grid, self.geom, self.window = read_truth, grid, geom, window
        self.object_overlap = object_overlap
        self.width, self.height = int(window.width), int(window.height)
        self.per_row = np.zeros((self.height, 4), dtype=np.int64)  # TN, TP, FP, FN of each row
        self.nodata = 0  # nodata pixels inside the area
        self.truth_objects = ComponentLabeler(self.width, CONNECTIVITY, weights=("valid", "hit"))
        self.pred_objects = ComponentLabeler(self.width, CONNECTIVITY, weights=("valid", "hit"))
        self.profile = gtiff_profile(self.width, self.height, 1, "uint8", grid.crs,
                                     window_transform(window, grid.transform), nodata=NODATA)

    def add(self, b: Window, pred: np.ndarray, inside: np.ndarray | None = None) -> np.ndarray:
        """Score block ``b`` of the area's window, predicted ``pred`` (1/0/255); returns its error classes.

        ``inside``: the block's pixels in the area, where the caller has them rasterised already.
        """
        from rasterio import features

        gw = Window(self.window.col_off + b.col_off, self.window.row_off + b.row_off, b.width, b.height)
        truth = self.read_truth(gw)
        if inside is None:
            inside = features.geometry_mask([self.geom], out_shape=pred.shape, invert=True,
                                            transform=window_transform(gw, self.grid.transform))
        cls = error_classes(pred, truth, inside)
        rows = slice(int(b.row_off), int(b.row_off + b.height))
        for k in (TN, TP, FP, FN):
            self.per_row[rows, k] += np.count_nonzero(cls == k, axis=1)
        self.nodata += int(np.count_nonzero(inside & (cls == NODATA)))
        self.truth_objects.add(b, (truth == 1) & inside, valid=pred != NODATA, hit=(pred != NODATA) & (pred == 1))
        self.pred_objects.add(b, (pred == 1) & inside, valid=truth != NODATA, hit=(truth != NODATA) & (truth == 1))
        return cls

    def row(self, area: str, role: str, coverage: float, error_map: Path | None) -> dict[str, Any]:
        """The area's row of metrics.json: :meth:`result` with its name, role, coverage and error map."""
        return {**self.result(), "error_map": None if error_map is None else str(error_map), "area": area,
                "role": role, "coverage": coverage}

    def result(self) -> dict[str, Any]:
        """Pixels, km², scores, objects and window of the area (the blocks added so far)."""
        pixels = self.per_row.sum(axis=0)
        row_m2 = row_pixel_areas_m2(self.grid.crs, self.grid.transform, int(self.window.row_off), self.height)
        counts = Counts(tp=int(pixels[TP]), fp=int(pixels[FP]), fn=int(pixels[FN]), tn=int(pixels[TN]))
        return {
            "pixels": {**counts.as_dict(), "nodata": self.nodata},
            "km2": {CLASS_NAMES[k]: float(self.per_row[:, k] @ row_m2) / 1e6 for k in (TP, FP, FN, TN)},
            "scores": scores(counts),
            "objects": object_counts(self.truth_objects, self.pred_objects, self.object_overlap),
            "window": {"col_off": int(self.window.col_off), "row_off": int(self.window.row_off),
                       "width": self.width, "height": self.height},
        }


class AreaEvaluation:
    """``predict --evaluate --area``: the area scored from the mask as it is written, into the new folder.

    What ``evaluate`` would then write into the prediction folder (same numbers, same files), without reading
    the mask back: the metrics are part of the folder ``predict`` publishes. ``start`` gives None where that is
    not possible (no inventory, or the area is not the prediction's whole window); ``evaluate`` runs afterwards.
    """

    def __init__(self, scene: Scene, area: str, geom: BaseGeometry, grid: Grid, folder: Path, pred_dir: Path,
                 maps: Literal["png", "tif", "none"], object_overlap: float,
                 truth: rasterio.io.DatasetReaderBase | None = None) -> None:
        self.scene, self.area, self.folder, self.pred_dir, self.maps = scene, area, folder, pred_dir, maps
        self._stack = contextlib.ExitStack()
        truth_ds = truth if truth is not None else self._stack.enter_context(
            open_raster(scene.mask_path, "--truth mask.tif"))
        self.coverage = _coverage(geom, grid, area)
        self.score = AreaScore(truth_reader(truth_ds, grid, scene.mask_path), grid, geom,
                               Window(0, 0, grid.width, grid.height), object_overlap)
        self.tif = None if maps == "none" else f"error_map_{_slug(area)}.tif"
        self._write = self._stack.enter_context(_error_map(None if self.tif is None else folder / self.tif,
                                                           self.score.profile))

    @classmethod
    def start(cls, scene: Scene, area: str, grid: Grid, folder: Path, pred_dir: Path,
              maps: Literal["png", "tif", "none"] = "png", object_overlap: float = 0.5,
              truth: rasterio.io.DatasetReaderBase | None = None,
              geom: BaseGeometry | None = None) -> AreaEvaluation | None:
        """The evaluation of ``area`` on the prediction ``grid`` (the area's window), or None if it cannot be fed.

        ``truth`` is the scene's mask.tif and ``geom`` the area's polygon (in the grid's CRS, its window being
        ``grid``) when the caller has them already: predict reads the one and cuts its window by the other.
        """
        if not scene.has_inventory:
            return None
        if geom is None:
            geom = scene.area_geometry(area, grid.crs)
            if geom is None or area_window(geom, grid) != Window(0, 0, grid.width, grid.height):
                return None
        return cls(scene, area, geom, grid, folder, pred_dir, maps, object_overlap, truth)

    def add(self, b: Window, pred: np.ndarray, inside: np.ndarray | None = None) -> None:
        """Score (and map) one block of the mask being written (``inside``: see :meth:`AreaScore.add`)."""
        self._write(self.score.add(b, pred, inside), b)

    def finish(self, threshold: float, threshold_source: str) -> EvaluateResult:
        """Write the error map's style and PNG and the metrics into the folder; the evaluation's result."""
        self.close()
        if self.tif is not None:
            write_error_map_style(self.folder / self.tif)
        row = self.score.row(self.area, self.scene.area(self.area).role, self.coverage,
                             None if self.tif is None else self.pred_dir / self.tif)
        return write_evaluation(self.pred_dir, self.folder, self.scene, [row], threshold, threshold_source,
                                self.score.object_overlap, self.maps)

    def close(self) -> None:
        """Close the truth and the error map (again: a no-op)."""
        self._stack.close()


@contextlib.contextmanager
def _error_map(tif: Path | None, profile: dict[str, Any]) -> Iterator[Callable[[np.ndarray, Window], None]]:
    """``write(classes, window)`` into the error-map GeoTIFF ``tif``, written atomically; a no-op without one."""
    if tif is None:
        yield lambda classes, window: None
        return
    with atomic_file(tif) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        yield lambda classes, window: dst.write(classes, 1, window=window)
        dst.write_colormap(1, {**{k: (*c, 255) for k, c in CLASS_COLOURS.items()}, NODATA: (0, 0, 0, 0)})
        dst.update_tags(1, classes="0 TN, 1 TP, 2 FP, 3 FN, 255 nodata or outside the area")


def _truth_scene(truth: Path | None, info: ScenePrediction) -> Scene:
    if truth is None:
        if not info.scene:
            raise UserError("--truth: give the scene folder with the inventory (prediction.json names none)")
        truth = Path(info.scene)
    scene = Scene(truth, "--truth")
    if not scene.has_inventory:
        raise UserError(f"--truth {scene.path}: the scene was prepared without an inventory; prepare it with "
                        f"--inventory to evaluate against it")
    return scene


def _choose_areas(scene: Scene, areas: Sequence[str] | None, info: ScenePrediction) -> list[str]:
    if areas:
        return [scene.area(n).name for n in dict.fromkeys(areas)]
    own = info.area
    if own and own in {a.name for a in scene.areas}:
        return [own]
    tests = [a.name for a in scene.areas_with_role("test")]
    if not tests:
        known = ", ".join(a.name for a in scene.areas) or "none"
        raise UserError(f"--area: scene {scene.path} has no test area; name one with --area (areas: {known})")
    return tests


def _area_geometries(scene: Scene, names: Sequence[str], crs: CRS) -> dict[str, Any]:
    return {name: scene.area_geometry(name, crs) for name in names}


def _coverage(geom: BaseGeometry, grid: Grid, name: str) -> float:
    """The share of area ``name`` the prediction's grid covers; a warning when it is not whole."""
    from shapely.geometry import box

    coverage = float(geom.intersection(box(*grid.bounds)).area / geom.area) if geom.area else 0.0
    if coverage < 0.999:
        warnings.warn(f"area {name}: the prediction covers {coverage:.1%} of it; only that part is evaluated",
                      EvaluateWarning, stacklevel=3)
    return coverage


def _grids_overlap(a: Grid, b: Grid) -> bool:
    from rasterio.warp import transform_bounds

    try:
        ab = transform_bounds(a.crs, b.crs, *a.bounds, densify_pts=21) if a.crs != b.crs else a.bounds
    except Exception:  # noqa: BLE001 - CRSs that cannot be related cannot overlap usefully
        return False
    return bounds_overlap(ab, b.bounds)


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


def _describe(g: Grid) -> str:
    crs = g.crs.to_string() if g.crs else "no CRS"
    return f"{crs}, {abs(g.transform.a):.6g} x {abs(g.transform.e):.6g} px"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)) or "area"


def error_map_title(row: dict[str, Any], threshold: Any) -> str:
    """The line above an error map: the area's scores and objects."""
    s, o = row["scores"], row["objects"]
    return (f"{row['area']} ({row['role']}): P {s['precision']:.2f}  R {s['recall']:.2f}  F1 {s['f1']:.2f}  "
            f"IoU {s['iou']:.2f}  found {o['landslides_found']}/{o['landslides_total']}  "
            f"false alarms {o['false_alarms']}  (threshold {_threshold_text(threshold)})")


def _threshold_text(threshold: Any) -> str:
    """0.69, not 0.6900000000000001 (a threshold chosen on a grid of 0.01 steps)."""
    return f"{threshold:.4g}" if isinstance(threshold, float) else str(threshold)
