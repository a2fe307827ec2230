"""``slidemap predict``: whole scenes tiled, blended and streamed to disk; patch sets patch by patch.

A region (a prepared scene, one named area of it, or bare images prepared on the fly exactly as at
training time) is predicted strip by strip by the engine of ``slidemap.nn.inference`` (tiles on the
networks' 16-px grid, blended with tapered weights; see ``slidemap.raster.tiling``). Two passes:

1. **probabilities**: each finished strip is masked (nodata: NaN in any used band, 255 in the scene's
   mask, or outside ``--area``), thresholded, cleaned up (the bundle's post-processing learned on
   validation, streamed with a halo of rows: ``slidemap.raster.postprocess``), labelled
   (``slidemap.raster.components``: 4-connected, summing area and probability per landslide) and written,
   in a writer thread, while the network runs on the next strip; a reader thread reads and standardises
   the strip after that, gathering each band's statistics on the way for the domain-shift guard
   (``slidemap.raster.shift``: one warning per band far from the training statistics). Memory depends on the
   region's width and the tile size, never on its height (peak RSS for 10,000² x 7 bands stays well under
   2 GiB, ``bench/bench_predict.py``).
2. **mask and polygons**: the provisional labels are resolved into landslide ids; landslides smaller than
   ``--min-area`` (or the bundle's minimum size in pixels) are dropped from both the polygons and
   ``mask.tif`` (so the two always agree), and the
   polygons are traced one block ahead in a thread and written as soon as a landslide ends.

GDAL's reads, writes and polygonising and numpy's array work release the GIL, so the threads overlap the
network; every output is written in the same order and is byte-identical to a single-threaded run.

**The network** runs as ``--engine`` says (``slidemap.stages.runners``): torch (default) in the precision
``slidemap.nn.device.resolve_precision`` gives, or an ONNX Runtime engine of an export made with ``slidemap
export``. ``--out`` is checked first; nothing is written outside it.

**Outputs** (built in a temporary sibling of ``out`` and renamed when complete): ``probability.tif``
(uint8 ``round(p * 254)``, 255 = nodata; float32 with NaN nodata under ``--float``), ``mask.tif`` (uint8
1/0, 255 = nodata), both on the input's grid (or the area's window), tiled, compressed, with overviews;
``landslides.gpkg`` (one polygon per landslide, columns id, area_m2, mean_probability);
``prediction.json``; ``probability.qml`` and ``mask.qml`` (QGIS styles); ``uncertainty.tif`` and its ``.qml``
where several views were averaged (an ensemble, ``--tta``: ``slidemap.stages.ensemble``). ``probability.tif``
keeps the raw probabilities (scale 1/254 for uint8, so a GIS shows 0-1). ``outputs="mask"`` writes only ``mask.tif`` and
``prediction.json`` (an experiment grid scores hundreds of runs: the mask is all evaluation needs, and the
error maps can be drawn from it later without the network).
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import rasterio
from affine import Affine
from pydantic import Field, model_validator
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.windows import Window

from slidemap.errors import UserError
from slidemap.formats.files import atomic_dir, check_out
from slidemap.formats.gdal import (
    GDAL_CACHE_MB,
    RowWriter,
    build_overviews,
    gtiff_profile,
    open_raster,
    pinned_gpkg_timestamp,
    read_block,
)
from slidemap.formats.prediction import PatchPrediction, ScenePrediction, Threshold
from slidemap.formats.scene import Scene
from slidemap.nn.bundle import Bundle
from slidemap.nn.device import check_engine, check_precision
from slidemap.nn.inference import SymmetryAverage, ViewSpread, iter_probability_strips
from slidemap.nn.normalise import Normaliser, match_bands
from slidemap.progress import bar
from slidemap.raster.components import PIXELS, ComponentLabeler, Components
from slidemap.raster.geo import Grid, area_window, row_pixel_areas_m2
from slidemap.raster.polygons import AREA, LandslideWriter, label_strip, landslide_labeler, polygon_pieces
from slidemap.raster.postprocess import Decision, StripCleaner, decide
from slidemap.raster.shift import InputStats
from slidemap.raster.tiling import BATCH, OVERLAP, TILE, check_tiling
from slidemap.stages import ensemble
from slidemap.stages.bare_images import prepare_like_training
from slidemap.stages.evaluate import AreaEvaluation, EvaluateOptions, EvaluateResult
from slidemap.stages.evaluate import run as evaluate_run
from slidemap.stages.maps import describe_probability, warn_shift, write_styles
from slidemap.stages.options import Device, Precision, StageOptions, StageResult, Tile, TileOverlap
from slidemap.stages.patches import predict_patches
from slidemap.stages.runners import Runner
from slidemap.stages.standardise import scene_normaliser

PROB_NODATA_U8 = 255
MASK_NODATA = 255


class PredictOptions(StageOptions):
    """Everything ``slidemap predict`` takes (see ``slidemap predict --help``).

    One input: ``scene`` (optionally one ``area`` of it), ``images`` (+ ``dem``) or ``chips``.
    """

    model: Path | Bundle | list[Path | Bundle]
    """Model bundle (bundle.pt) or run folder. Several: an ensemble, averaging their probabilities tile by tile,
    cut at the mean of their thresholds, cleaned up as the first (slidemap.stages.ensemble); uncertainty.tif."""
    out: Path
    """Prediction folder to write."""
    scene: Path | None = None
    """Prepared scene folder to predict."""
    area: str | None = None
    """Only this named area of the scene."""
    images: list[Path] | None = None
    """Bare image(s), prepared on the fly as the model's scenes were."""
    dem: Path | None = None
    """DEM for bare images."""
    pre_images: list[Path] | None = None
    """Pre-event image(s) for bare images, when the model uses pre_* or change (d*) layers."""
    chips: Path | None = None
    """Patch dataset (chip set) to predict patch by patch."""
    tile: Tile = TILE
    overlap: TileOverlap = OVERLAP
    threshold: str | float | None = None
    """'best' (validation pixel-F1 optimum), '0.5' or a number; default: the bundle's post-processing
    threshold, else 'best' (patch sets: 0.5, as Landslide4Sense's arg-max). An ensemble's: the mean of its
    members' thresholds, each chosen this way."""
    min_area: float | None = Field(None, ge=0)
    """Drop predicted landslides smaller than this (m²) from the polygons and mask.tif; default: the bundle's
    minimum size."""
    postprocess: Literal["auto", "bundle", "none"] = "auto"
    """auto: the clean-up learned on the validation chips (threshold, opening/closing, hole filling, minimum
    size) on scenes, not on patch sets; bundle: on both; none: off."""
    submission: bool = False
    """With --chips: also write OUT/submission/ holding only the mask_N.h5 files, and OUT/submission.zip, as
    Landslide4Sense submissions are made."""
    batch_size: int = Field(BATCH, ge=1)
    """Tiles per forward pass (scenes: run side by side as one wide tile, so their overlaps are computed once)."""
    device: Device = "auto"
    as_float: bool = False
    """Write probability.tif as float32 (default uint8)."""
    evaluate: bool = False
    """Also evaluate against the scene's inventory (or the chip set's masks)."""
    error_maps: Literal["png", "tif", "none"] = "png"
    """With --evaluate: each area's error map as GeoTIFF and PNG, GeoTIFF only, or none."""
    precision: Precision = "auto"
    tta: int = 1
    """Test-time augmentation: average the probabilities over 1 (off), 2 (mirrored), 4 (rotations) or 8
    (every symmetry of the square) views of each tile; costs that many network passes. Above 1 also writes
    uncertainty.tif (the views' standard deviation)."""
    engine: str = "torch"
    """torch, onnx or onnx-int8: ONNX Runtime running the engines of `slidemap export RUN --onnx M.onnx`
    (needs onnxruntime), from --onnx-model or an export beside the bundle."""
    onnx_model: Path | None = None
    """With --engine onnx / onnx-int8: the .onnx file `slidemap export` wrote (default: an export of this model
    found beside it)."""
    previews: int = Field(24, ge=0)
    """Patch sets: PNG previews of the first patches."""
    outputs: Literal["all", "mask"] = "all"
    """``mask``: only mask.tif and prediction.json (no probabilities, polygons or styles; scenes only)."""

    @model_validator(mode="after")
    def _one_input(self) -> PredictOptions:
        given = [n for n, v in (("--scene", self.scene), ("--image", self.images), ("--chips", self.chips))
                 if v]
        if len(given) != 1:
            raise ValueError("give exactly one input to predict: --scene, --image or --chips")
        if isinstance(self.model, list) and not self.model:
            raise ValueError("MODEL: give at least one model bundle or run folder")
        if self.area is not None and self.scene is None:
            raise ValueError("--area goes with --scene (bare images and chip sets have no named areas)")
        if self.dem is not None and self.images is None:
            raise ValueError("--dem goes with --image (a prepared scene already holds its terrain layers)")
        if self.pre_images and self.images is None:
            raise ValueError("--pre-image goes with --image (a prepared scene already holds its pre-event "
                             "layers)")
        if self.evaluate and self.images:
            raise ValueError("--evaluate needs --scene (or --chips) with a reference to compare against")
        if self.min_area and self.chips:
            raise ValueError("--min-area goes with scenes (patches have no georeference); use --postprocess "
                             "bundle for the minimum object size learned in pixels")
        if self.outputs != "all" and self.chips is not None:
            raise ValueError("outputs 'mask' goes with scenes (a patch set's outputs are its masks)")
        if self.submission and self.chips is None:
            raise ValueError("--submission goes with --chips (a Landslide4Sense patch set)")
        check_tiling(self.tile, self.overlap)
        if self.tta not in SymmetryAverage.CHOICES:
            raise ValueError(f"--tta {self.tta}: use 1, 2, 4 or 8 symmetries")
        check_precision(self.precision)
        check_engine(self.engine)
        if self.onnx_model is not None and self.engine == "torch":
            raise ValueError("--onnx-model goes with --engine onnx or onnx-int8")
        return self


class PredictResult(StageResult):
    """The prediction folder, its description and (with ``evaluate``) the evaluation."""

    path: Path
    meta: ScenePrediction | PatchPrediction
    evaluation: EvaluateResult | None = None
    previews: int = 0


@dataclass(frozen=True)
class _Region:
    """What is predicted: a window of a scene, its grid, the bands to read and where pixels count."""

    scene: Scene
    band_idx: list[int]  # 1-based stack bands, in the bundle's order
    window: Window
    area_geoms: list | None

    def inside(self, block: Window) -> np.ndarray | None:
        """Which pixels of ``block`` (a window of the region) lie in the area; None where no area is given.

        A region that fits in memory is rasterised once, for pass 1 and the area's scoring in pass 2 alike.
        """
        if self.area_geoms is None:
            return None
        r0, c0, h, w = int(block.row_off), int(block.col_off), int(block.height), int(block.width)
        if self.width * self.height > LABELS_IN_MEMORY:
            return self._rasterised(Window(c0, r0, w, h))
        return self._whole_inside[r0:r0 + h, c0:c0 + w]

    @functools.cached_property
    def _whole_inside(self) -> np.ndarray:
        return self._rasterised(Window(0, 0, self.width, self.height))

    def _rasterised(self, block: Window) -> np.ndarray:
        from rasterio import features

        return features.geometry_mask(cast(list, self.area_geoms), out_shape=(int(block.height), int(block.width)),
                                      invert=True, transform=self.transform @ Affine.translation(int(block.col_off),
                                                                                                int(block.row_off)))

    @property
    def transform(self) -> Affine:
        return self.scene.transform @ Affine.translation(int(self.window.col_off), int(self.window.row_off))

    @property
    def crs(self) -> CRS:
        return self.scene.crs

    @property
    def width(self) -> int:
        return int(self.window.width)

    @property
    def height(self) -> int:
        return int(self.window.height)


def run(options: PredictOptions, runner: Runner | None = None) -> PredictResult:
    """Predict a scene (or an area of it), bare images or a patch set into the folder ``options.out``.

    ``runner``: a runner already built for this model (or ensemble) and these options (``slidemap.stages.
    ensemble.build_members_runner``), so that several predictions of one run share it; by default one is built
    here.
    """
    o = options
    t_start = time.perf_counter()
    members = ensemble.load_members(o.model)  # one model, or an ensemble's, checked to take the same input
    bundle = members[0]
    inputs = [p for p in (*(m.path for m in members), o.scene, o.chips, o.dem, *(o.images or []),
                          *(o.pre_images or [])) if p is not None]
    check_out(o.out, "prediction.json", inputs, "prediction")  # before anything is built or written
    decisions = [_decision(m, o) for m in members]
    decision = ensemble.mean_threshold(decisions)
    if runner is None:
        runner, choice = ensemble.build_members_runner(members, o.device, o.precision, o.engine,
                                                       o.onnx_model)
    else:
        choice = {"engine": getattr(runner, "engine", "torch"), "precision": runner.precision, "how": "given"}
    if o.tta > 1:
        runner = SymmetryAverage(runner, o.tta)
        choice = {**choice, "tta": o.tta}
    if o.chips is not None:
        patch_meta, previews = predict_patches(bundle, o.chips, o.out, decision, o.batch_size, o.device,
                                               o.precision, o.previews, o.submission, runner=runner,
                                               choice=choice, ensemble=ensemble.ensemble_info(members, decisions))
        evaluation = evaluate_run(EvaluateOptions(pred=o.out, truth=o.chips)) if o.evaluate else None
        return PredictResult(path=Path(o.out), meta=patch_meta, evaluation=evaluation, previews=previews)
    inputs = [p for p in inputs if p != o.chips]
    spread = getattr(runner, "views", 1) > 1 and o.outputs == "all"  # uncertainty.tif: the views' spread
    runner = ViewSpread(runner) if spread else runner
    with atomic_dir(o.out, "prediction.json", inputs, "prediction") as tmp:
        if o.images is not None:
            sc = prepare_like_training(bundle, o.images, o.dem, o.pre_images or [], tmp / ".scene")
            where = "--image " + ", ".join(str(p) for p in o.images)
        else:
            sc = Scene(cast(Path, o.scene), "--scene")  # the one input left (validated)
            where = f"--scene {sc.path}"
        band_idx = [i + 1 for i in match_bands(bundle.bands, sc.bands, where, bundle.name)]
        window, area_geoms = _window_of(sc, o.area)
        region = _Region(sc, band_idx, window, area_geoms)
        normalise, standardisation = scene_normaliser(bundle, sc, band_idx, window, region.inside, o.area, where)
        seen = InputStats(bundle.bands)
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), contextlib.ExitStack() as opened:
            # the scene's mask.tif, opened once: where to predict (pass 1) and the truth the area is scored on
            # (where it marks unknown truth, pass 1 goes by the bands alone: only a scoring needs it)
            wanted = sc.mask_path.exists() and (not sc.mask_marks_unknown or bool(o.evaluate and o.area))
            scene_mask = opened.enter_context(open_raster(sc.mask_path, f"--scene {sc.path}: mask.tif",
                                                             need_crs=False)) if wanted else None
            # an area of its own scene is scored from the mask as pass 2 writes it (else evaluated afterwards)
            scoring = AreaEvaluation.start(sc, o.area, Grid(sc.crs, region.transform, region.width,
                                                            region.height), tmp, Path(o.out), o.error_maps,
                                           truth=scene_mask, geom=area_geoms[0] if area_geoms else None) \
                if o.evaluate and o.area else None
            if scoring is not None:
                opened.callback(scoring.close)
            summary = _predict_region(runner, region, normalise, tmp, o, decision, seen, scene_mask, scoring)
        shift = warn_shift(bundle, seen, where)
        if o.outputs == "all":
            write_styles(tmp, o.as_float)
        if o.images is not None:
            shutil.rmtree(tmp / ".scene", ignore_errors=True)
        seconds = time.perf_counter() - t_start
        mpx = region.width * region.height / 1e6
        meta = ScenePrediction(
            model=bundle.name,
            bundle=bundle.meta.model_dump(include={"architecture", "model_args", "bands", "patch_size",
                                                   "thresholds", "training", "slidemap_version"}),
            scene=None if o.images is not None else str(Path(sc.path).resolve()),
            images=[str(p.resolve()) for p in o.images] if o.images else None,
            dem=str(Path(o.dem).resolve()) if o.dem else None, area=o.area,
            pre_images=[str(p.resolve()) for p in o.pre_images] if o.pre_images else None,
            window={"col_off": int(window.col_off), "row_off": int(window.row_off),
                    "width": region.width, "height": region.height},
            crs=sc.crs.to_wkt(), transform=list(region.transform)[:6],
            threshold=Threshold(value=decision.threshold, which=decision.which),
            postprocess=decision.record(), input_stats=seen.as_dict(), shift_warnings=shift,
            standardisation=standardisation,
            tile=o.tile, overlap=o.overlap, blend_margin=check_tiling(o.tile, o.overlap),
            batch_size=o.batch_size, device=str(runner.device), precision=runner.precision,
            engine=choice["engine"], engine_choice=choice,
            probability_dtype="float32" if o.as_float else "uint8", min_area_m2=decision.min_area_m2,
            connectivity=4, outputs=o.outputs, ensemble=ensemble.ensemble_info(members, decisions),
            uncertainty=ensemble.uncertainty_info(len(members), o.tta) if spread else None,
            **summary, seconds=round(seconds, 3), mpx=round(mpx, 4), mpx_per_s=round(mpx / seconds, 4))
        meta.save(tmp / "prediction.json", sync=False)  # the folder's rename publishes it
        evaluation = scoring.finish(decision.threshold, decision.which) if scoring is not None else None
    if o.evaluate and evaluation is None:
        evaluation = evaluate_run(EvaluateOptions(pred=o.out, truth=o.scene, areas=[o.area] if o.area else None,
                                                  maps=o.error_maps))
    return PredictResult(path=Path(o.out), meta=meta, evaluation=evaluation)


# --- inputs ------------------------------------------------------------------------------------------

def _decision(bundle: Bundle, o: PredictOptions) -> Decision:
    """Threshold, clean-up and minimum object size, with --threshold / --min-area overriding their part.

    The rest is the bundle's post-processing (or 0.5 for patch datasets, as the benchmark).
    """
    given = None
    if o.threshold is not None:
        which = str(o.threshold) if str(o.threshold) in bundle.meta.thresholds else "given"
        given = (bundle.threshold(o.threshold), which)
    return decide(bundle.meta.postprocess, o.postprocess, bundle.threshold("best"), given, o.min_area,
                  o.chips is not None, bundle.name)


def _window_of(scene: Scene, area: str | None) -> tuple[Window, list | None]:
    """The pixel window to predict, and the area's polygon (pixels outside it are nodata).

    The window is the whole scene, or the area's by the one window rule.
    """
    if area is None:
        return Window(0, 0, scene.width, scene.height), None
    geom = scene.area_geometry(area)
    if geom is None:
        raise UserError(f"--area {area}: has no geometry in {scene.areas_path}; prepare the scene again")
    window = area_window(geom, Grid(scene.crs, scene.transform, scene.width, scene.height))
    if window is None:
        raise UserError(f"--area {area}: does not overlap the scene {scene.path}")
    return window, [geom]


# --- pass 1: probabilities and provisional labels -------------------------------------------------------

def _predict_region(runner: Runner, region: _Region, normalise: Normaliser, tmp: Path,
                    o: PredictOptions, decision: Decision, seen: InputStats,
                    scene_mask: rasterio.io.DatasetReaderBase | None = None,
                    scoring: AreaEvaluation | None = None) -> dict[str, Any]:
    """Pass 1: probabilities + provisional labels, streamed; pass 2: mask + polygons; then overviews.

    ``scene_mask`` is the scene's open mask.tif (None: it has none, or pass 1 and the scoring need none).
    """
    t0 = time.perf_counter()
    labels = _Labels(tmp / ".labels.tif", region.width, region.height, region.transform)
    labeler, valid_km2 = _probability_pass(runner, region, normalise, tmp, o, decision, seen, labels, scene_mask)
    t_predict = time.perf_counter() - t0
    t1 = time.perf_counter()
    comps = labeler.resolve({AREA: decision.min_area_m2, PIXELS: decision.min_pixels})
    polygons = o.outputs == "all"
    with pinned_gpkg_timestamp():
        _mask_and_polygons(region, comps, labels, tmp, polygons, scoring)
    t_polygons = time.perf_counter() - t1
    t2 = time.perf_counter()
    if o.outputs == "all":
        build_overviews(tmp / "probability.tif", Resampling.average, (region.width, region.height))
    build_overviews(tmp / "mask.tif", Resampling.nearest, (region.width, region.height))
    return {
        "width": region.width, "height": region.height, "landslides": len(comps),
        "landslide_km2": round(float(comps.sums[AREA].sum()) / 1e6, 6), "valid_km2": round(valid_km2, 6),
        "dropped_specks": comps.dropped,
        "dropped_specks_km2": round(comps.dropped_sums.get(AREA, 0) / 1e6, 6),
        "timings_s": {"predict": round(t_predict, 3), "mask_and_polygons": round(t_polygons, 3),
                      "overviews": round(time.perf_counter() - t2, 3)},
    }


def _probability_pass(runner: Runner, region: _Region, normalise: Normaliser, tmp: Path,
                      o: PredictOptions, decision: Decision, seen: InputStats, stored: _Labels,
                      scene_mask: rasterio.io.DatasetReaderBase | None) -> tuple[ComponentLabeler, float]:
    sc, width, height = region.scene, region.width, region.height
    transform, crs = region.transform, region.crs
    row0, col0 = int(region.window.row_off), int(region.window.col_off)
    prob_profile = gtiff_profile(width, height, 1, "float32" if o.as_float else "uint8", crs, transform,
                                 nodata=float("nan") if o.as_float else PROB_NODATA_U8)
    labeler = landslide_labeler(width)
    row_areas = row_pixel_areas_m2(crs, transform, 0, height)
    total_km2 = float(row_areas.sum() * width / 1e6)
    valid_km2 = 0.0
    progress = bar("km²", transient=False)
    stack_name, mask_name = f"--scene {sc.path}: stack.tif", f"--scene {sc.path}: mask.tif"

    with contextlib.ExitStack() as stack:
        stack.callback(stored.close)
        src = stack.enter_context(open_raster(sc.stack_path, stack_name, need_crs=False))
        # where the mask marks unknown truth, where to predict is told by the bands alone (prepare blanks
        # every band at nodata)
        msk = None if sc.mask_marks_unknown else scene_mask
        prob_out = None
        if o.outputs == "all":
            prob_ds = stack.enter_context(rasterio.open(tmp / "probability.tif", "w", **prob_profile))
            describe_probability(prob_ds, o.as_float)
            prob_out = RowWriter(prob_ds)
        layered = getattr(runner, "layers", 1) > 1  # ViewSpread: the views' spread goes to uncertainty.tif
        spread_out = stack.enter_context(ensemble.UncertaintyMap(tmp / ensemble.UNCERTAINTY, width, height, crs,
                                                                 transform)) if layered else None
        stack.enter_context(progress)
        task = progress.add_task("predict", total=total_km2)

        def read_rows(r0: int, r1: int) -> np.ndarray:
            raw = read_block(src, stack_name, region.band_idx, Window(col0, row0 + r0, width, r1 - r0),
                             "float32")
            seen.add_rows(r0, raw)  # the domain-shift guard's statistics, gathered while reading
            return raw

        cleaner = StripCleaner(height, decision.cleanup)

        def label_rows(strips: list[tuple]) -> None:
            for r, binary, valid, prob in strips:
                labels = label_strip(labeler, r, binary, prob, row_areas[r:r + len(binary)])
                labels[~valid] = -1
                stored.write(labels)

        def finish_strip(r0: int, prob: np.ndarray, valid: np.ndarray) -> float:
            """Mask, label and write one strip; returns its valid km². Runs in the writer thread."""
            layers, prob = (prob, prob[0]) if prob.ndim == 3 else (None, prob)  # ViewSpread: mean, spread
            h = len(prob)
            if msk is not None:
                valid &= read_block(msk, mask_name, 1, Window(col0, row0 + r0, width, h)) != MASK_NODATA
            inside = region.inside(Window(0, r0, width, h))
            if inside is not None:
                valid &= inside
            # the clean-up is streamed too: strips come back final once enough rows below them are known
            label_rows(cleaner.push(r0, valid & (prob >= decision.threshold), valid, prob))
            if prob_out is not None and o.as_float:
                prob_out.write(np.where(valid, prob, np.float32(np.nan)).astype(np.float32))
            elif prob_out is not None:
                q = np.rint(np.clip(prob, 0, 1) * 254).astype(np.uint8)
                q[~valid] = PROB_NODATA_U8
                prob_out.write(q)
            if spread_out is not None and layers is not None:
                spread_out.write(layers[1], valid)
            progress.update(task, advance=float(row_areas[r0:r0 + h].sum() * width / 1e6))
            return float((valid.sum(axis=1) * row_areas[r0:r0 + h]).sum() / 1e6)

        # Strips are labelled and written (GDAL compresses without the GIL) in one writer thread, in
        # order, while the network predicts the next strip; at most two finished strips wait.
        strips = stack.enter_context(contextlib.closing(iter_probability_strips(
            runner, read_rows, height, width, o.tile, o.overlap, None, o.batch_size, normalise)))
        writer = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="slidemap-write"))
        queued: deque = deque()
        for r0, prob, valid in strips:
            queued.append(writer.submit(finish_strip, r0, prob, valid))
            while len(queued) > 2:
                valid_km2 += queued.popleft().result()
        while queued:
            valid_km2 += queued.popleft().result()
        label_rows(cleaner.finish())
        if prob_out is not None:
            prob_out.close()
        stored.close()
    return labeler, valid_km2


LABELS_IN_MEMORY = 64 << 20
"""Bytes of provisional labels (int32) kept in memory between the passes: a region up to ~4096² px."""


class _Labels:
    """The provisional labels between the passes: in memory, or in a temporary GeoTIFF for a large region.

    In memory up to ``LABELS_IN_MEMORY`` bytes (an experiment's test area); beyond, streamed to the output
    folder, so memory stays flat on a whole scene.
    """

    def __init__(self, path: Path, width: int, height: int, transform: Affine) -> None:
        self.path = path
        self.array = np.empty((height, width), np.int32) if width * height * 4 <= LABELS_IN_MEMORY else None
        self._row = 0
        self._ds: rasterio.io.DatasetWriter | None = None
        self._out: RowWriter | None = None
        if self.array is None:
            self._ds = rasterio.open(path, "w", **_labels_profile(width, height, transform))
            self._out = RowWriter(self._ds)

    def write(self, rows: np.ndarray) -> None:
        """Add ``rows``, the next ones down."""
        if self._out is not None:
            self._out.write(rows)
        elif self.array is not None:
            self.array[self._row:self._row + len(rows)] = rows
            self._row += len(rows)

    def close(self) -> None:
        """Finish writing (again: a no-op)."""
        if self._out is not None and self._ds is not None:
            self._out.close()
            self._ds.close()
            self._out = None

    @contextlib.contextmanager
    def reader(self) -> Iterator[Callable[[Window], np.ndarray]]:
        """``read(window)`` of the labels; the temporary file is removed afterwards."""
        if self.array is not None:
            array = self.array
            yield lambda w: array[int(w.row_off):int(w.row_off + w.height), int(w.col_off):int(w.col_off + w.width)]
            return
        with rasterio.open(self.path) as ds:
            yield lambda w: ds.read(1, window=w)
        self.path.unlink()


def _labels_profile(width: int, height: int, transform: Affine) -> dict[str, Any]:
    """The profile of the provisional labels kept on disk between the passes.

    An internal file: no CRS (nothing reads one), and PackBits, which every GDAL has and which is quicker to
    write and read than deflate for labels.
    """
    return gtiff_profile(width, height, 1, "int32", None, transform, compress="packbits")


# --- pass 2: mask and polygons -------------------------------------------------------------------------

def _mask_and_polygons(region: _Region, comps: Components, stored: _Labels, tmp: Path,
                       with_polygons: bool = True, scoring: AreaEvaluation | None = None) -> None:
    width, height = region.width, region.height
    polygons = LandslideWriter(tmp / "landslides.gpkg", comps, region.transform, region.crs) if with_polygons \
        else None
    mask_profile = gtiff_profile(width, height, 1, "uint8", region.crs, region.transform, nodata=MASK_NODATA)
    with stored.reader() as read_labels, \
            rasterio.open(tmp / "mask.tif", "w", **mask_profile) as mask_ds, \
            ThreadPoolExecutor(1, thread_name_prefix="slidemap-polygonise") as tracer:

        def trace_block(win: Window) -> tuple[np.ndarray, list]:
            """Final ids -> mask block and polygon pieces; runs in the tracer thread, one block ahead."""
            labels = read_labels(win)
            ids = comps.ids(labels)
            m = (ids > 0).astype(np.uint8)
            m[labels < 0] = MASK_NODATA
            return m, polygon_pieces(ids, int(win.row_off)) if polygons is not None else []

        # Tracing block k + 1 (GDAL reads and polygonizes without the GIL) overlaps dissolving and
        # writing the polygons and the mask of block k here.
        blocks = list(_row_blocks(width, height, 512))
        pending = tracer.submit(trace_block, blocks[0])
        for k, win in enumerate(blocks):
            m, pieces = pending.result()
            if k + 1 < len(blocks):
                pending = tracer.submit(trace_block, blocks[k + 1])
            mask_ds.write(m, 1, window=win)
            if scoring is not None:
                scoring.add(win, m, region.inside(win))
            if polygons is not None:
                polygons.add_pieces(pieces, int(win.row_off + win.height))
    if polygons is not None:
        polygons.close()


def _row_blocks(width: int, height: int, rows: int) -> Iterator[Window]:
    for r in range(0, height, rows):
        yield Window(0, r, width, min(rows, height - r))
