"""The ``slidemap`` command: a thin layer over the Python API of each pipeline stage.

Every command parses its options, calls one API function and prints what it wrote. A UserError becomes
one line ``error: ...`` and exit status 2 (a traceback only with ``--debug``).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import warnings
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import typer

from slidemap.errors import UserError

if TYPE_CHECKING:
    from slidemap.stages.evaluate import EvaluateResult

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Map landslides from satellite imagery and a DEM with U-Net / ResU-Net.\n\n"
    "Pipeline: synth | prepare -> sample -> train -> predict -> evaluate. `slidemap demo` runs it all.",
)
l4s_app = typer.Typer(no_args_is_help=True, help="Landslide4Sense patch datasets (HDF5 img/mask): import "
                      "them as a chip set; then `train`, `predict MODEL --chips CHIPS`, `evaluate PRED "
                      "--truth CHIPS`.")
app.add_typer(l4s_app, name="l4s")
experiment_app = typer.Typer(no_args_is_help=True, help="Grids of runs from a YAML spec (the studies' "
                             "experiments): run them, resumably, locally or on Ray; report them.")
app.add_typer(experiment_app, name="experiment")

_DEBUG = {"on": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors.")) -> None:
    _DEBUG["on"] = debug


class Method(StrEnum):
    """``sample --method``: a regular lattice of chips, or chips drawn at random."""
    grid = "grid"
    random = "random"


class Arch(StrEnum):
    """``train --model``: study 000's U-Net or study 002's ResU-Net."""
    unet = "unet"
    resunet = "resunet"


class Loss(StrEnum):
    """``train --loss``: binary cross-entropy, BCE plus Dice, or focal loss."""
    bce = "bce"
    bce_dice = "bce+dice"
    focal = "focal"


class Device(StrEnum):
    """``--device``: auto takes the GPU when there is one."""
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class PostMode(StrEnum):
    """``predict --postprocess``: whether the bundle's learned clean-up applies (auto: to scenes only)."""
    auto = "auto"
    bundle = "bundle"
    none = "none"


class Axis(StrEnum):
    """``prepare --split-axis``: cut the scene along columns (x) or rows (y)."""
    x = "x"
    y = "y"


def _split_names(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    return names or None


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Folder to write the synthetic study area into."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives byte-identical files."),
    size: int = typer.Option(2048, help="Image width and height in pixels."),
    pixel_size: float = typer.Option(5.0, help="Image pixel size in metres."),
    landslides: int = typer.Option(120, help="Number of landslides to place."),
    nodata_stripe: bool = typer.Option(True, "--nodata-stripe/--no-nodata-stripe",
                                       help="Blank a stripe of the image, declared as nodata."),
    relief: float = typer.Option(1.0, help="Factor on the height of the hills (0.2-3): steeper slopes."),
    bare_fields: float = typer.Option(1.0, help="Factor on the number of bare fields (0-10), the commonest "
                                      "look-alike of a landslide."),
    settlements: float = typer.Option(1.0, help="Factor on the settled area (0-10)."),
    roads: float = typer.Option(1.0, help="Factor on the number of hill roads (0-10); 0: no roads."),
    landslide_size: float = typer.Option(1.0, help="Factor on landslide areas (0.25-4)."),
    pre_event: bool = typer.Option(False, "--pre-event/--no-pre-event",
                                   help="Also write pre_image.tif: the area before the landslides, acquired "
                                   "differently, on a coarser and shifted grid."),
) -> None:
    """Write a synthetic study area: image, DEM, landslide inventory and train/test areas."""
    from slidemap.sources.synth import synthesize

    paths = synthesize(out, seed=seed, size=size, pixel_size=pixel_size, landslides=landslides,
                       nodata_stripe=nodata_stripe, relief=relief, bare_fields=bare_fields,
                       settlements=settlements, roads=roads, landslide_size=landslide_size,
                       pre_event=pre_event)
    for role, p in paths.items():
        typer.echo(f"{role:10s} {p}")


@app.command()
def prepare(
    image: list[Path] = typer.Option(..., "--image", help="Image GeoTIFF(s), stacked in the given order; "
                                     "the first one defines the grid."),
    out: Path = typer.Option(..., "--out", help="Scene folder to write."),
    dem: Path | None = typer.Option(None, help="DEM raster, any CRS and resolution (averaged where the grid "
                                    "is coarser, else bilinear)."),
    inventory: Path | None = typer.Option(None, help="Landslide polygons (any OGR format and CRS), or a "
                                          "label raster (any grid and CRS; see --label-values)."),
    label_values: str | None = typer.Option(None, help="Label raster: comma-separated values that mean "
                                            "landslide (default 1); its nodata and --unlabelled-values are "
                                            "unknown (255 in mask.tif, counted nowhere), other values "
                                            "background."),
    unlabelled_values: str | None = typer.Option(None, help="Label raster: comma-separated values that mean "
                                                 "'not labelled' (besides its nodata)."),
    areas: Path | None = typer.Option(None, help="Named areas (columns name, role=train|test); give neither "
                                      "this nor --split for a scene only to predict."),
    split: str | None = typer.Option(None, help="Cut the scene into train:test (by valid area) along "
                                     "--split-axis, e.g. 3:2."),
    split_axis: Axis = typer.Option(Axis.x, help="Axis of --split: x (left train, right test) or y "
                                    "(top/bottom)."),
    terrain: str = typer.Option("dem,slope", help="Terrain layers from the DEM: any of "
                                "dem,slope,aspect,hillshade."),
    band_names: str | None = typer.Option(None, help="Comma-separated names of the image bands, in order "
                                          "(default: the files' band descriptions, else band1, band2, ...)."),
    all_touched: bool = typer.Option(False, help="Mask every pixel a polygon touches, not only centres "
                                     "inside."),
    resolution: float | None = typer.Option(None, help="Pixel size of the scene in metres (also for "
                                            "geographic CRSs); default: the first image's. Inputs are "
                                            "averaged where this coarsens them, else bilinear; terrain is "
                                            "derived and the inventory rasterised on the new grid."),
    indices: str | None = typer.Option(None, help="Spectral indices to add, comma-separated: any of "
                                       "ndvi,ndwi,brightness,nbr (bands found by name: red/green/nir/... or "
                                       "B4/B3/B8/...)."),
    pre_image: list[Path] | None = typer.Option(None, "--pre-image", help="Pre-event image(s), any grid; "
                                                "adds their bands as pre_<band> and, for each of --indices, "
                                                "the change layer d<index> (after minus before)."),
    pre_band_names: str | None = typer.Option(None, help="Comma-separated names of the pre-event bands "
                                              "(default: their descriptions, else the image band names)."),
    change: str | None = typer.Option(None, help="Indices that get a change layer d<index> with --pre-image, "
                                      "comma-separated (default: every one of --indices)."),
) -> None:
    """Co-register images, DEM and inventory into a scene folder (stack, mask, areas, scene.json)."""
    from slidemap.stages import prepare as stage

    if areas is not None and split is not None:
        raise UserError("--areas / --split: give one (a file of named areas, or e.g. --split 3:2), or neither "
                        "for a scene only to predict")
    with _warnings_as_lines():
        result = stage.run(stage.PrepareOptions(
            images=image, out=out, dem=dem, inventory=inventory, areas=areas, split=split,
            split_axis=split_axis.value, terrain=_split_names(terrain) or [],
            band_names=_split_names(band_names), all_touched=all_touched,
            label_values=_numbers("--label-values", label_values),
            unlabelled_values=_numbers("--unlabelled-values", unlabelled_values) or [],
            resolution=resolution, indices=_split_names(indices) or [], pre_images=pre_image or [],
            pre_band_names=_split_names(pre_band_names),
            change=None if change is None else _split_names(change) or []))
    m = result.meta
    typer.echo(f"scene {result.path}: {m.width}x{m.height} px, bands {', '.join(m.bands)} (pixels "
               f"{m.pixel_size_m[0]:.3g} x {m.pixel_size_m[1]:.3g} m)")
    inv = m.inventory
    if inv is not None and inv.landslides is not None:
        typer.echo(f"  inventory ({inv.kind}): {inv.landslides} landslides, {inv.landslide_km2:.4f} km² "
                   f"({inv.landslide_pixels} px); truth known over {inv.labelled_km2:.3f} km², unknown over "
                   f"{inv.unknown_km2:.3f} km²")
    for a in m.areas:
        typer.echo(f"  {a.role:5s} {a.name}: {a.area_km2:.3f} km², {a.landslides} landslides, "
                   f"{a.landslide_km2:.4f} km² landslide")


def _numbers(option: str, value: str | None) -> list[float] | None:
    """Comma-separated numbers, or a one-line UserError naming ``option``."""
    names = _split_names(value)
    if names is None:
        return None
    try:
        return [float(v) for v in names]
    except ValueError:
        raise UserError(f"{option} {value}: expected comma-separated numbers, e.g. 1,2") from None


@app.command()
def sample(
    scene: Path = typer.Argument(..., help="Scene folder from `slidemap prepare`."),
    out: Path = typer.Option(..., "--out", help="Chip set folder to write."),
    method: Method = typer.Option(Method.grid, help="grid: regular windows; random: random windows."),
    size: int = typer.Option(128, help="Patch size in pixels (a multiple of 16, at least 32)."),
    overlap: float = typer.Option(0.0, help="Grid overlap fraction in [0, 1) (study 000: 0.2; study 002: 0)"),
    count: int = typer.Option(5000, help="Random windows to draw (distinct offsets; study 000: 5000)."),
    require_landslide: bool = typer.Option(False, help="Keep only windows holding a landslide pixel."),
    area: str | None = typer.Option(None, help="Train area to sample (default: all train areas)."),
    max_nodata: int = typer.Option(0, help="Most pixels without imagery a window may hold."),
    max_unknown: float = typer.Option(0.5, help="Largest share of a window whose truth may be unknown (a label "
                                      "raster's unlabelled pixels; training ignores them), in [0, 1)."),
    seed: int = typer.Option(0, help="Random seed (same seed: identical chips)."),
) -> None:
    """Cut training chips from a scene's train area (regular grid or random windows)."""
    from slidemap.stages import sample as stage

    result = stage.run(stage.SampleOptions(
        scene=scene, out=out, method=method.value, size=size, overlap=overlap, count=count,
        require_landslide=require_landslide, area=area, max_nodata=max_nodata, max_unknown=max_unknown,
        seed=seed))
    summary = result.meta.summary
    if method == Method.random:
        how = f"random, seed {seed}"
        windows = (f"{summary['drawn']} drawn of {summary['fitting_windows']} that fit the train area, "
                   f"{summary['kept']} kept")
    else:
        how = f"grid, overlap {overlap:.0%}"
        windows = f"{summary['drawn']} on the grid, {summary['kept']} kept (fit the train area"
        windows += ", with a landslide)" if require_landslide else ")"
    typer.echo(f"chip set {result.path}: {result.meta.count} chips of {result.meta.size} px ({how})")
    typer.echo(f"  windows: {windows}")
    typer.echo(f"  landslide pixels: {summary['landslide_fraction_chips']:.2%} in the chips vs "
               f"{summary['landslide_fraction_train_area']:.2%} in the train area")
    typer.echo(f"  known truth: {summary['known_truth_km2']:.4g} km² in the chips of "
               f"{summary['known_truth_km2_train_area']:.4g} km² in the train area")


@app.command()
def train(
    chips: list[Path] = typer.Argument(..., help="Chip set folder(s) (from `sample` or `l4s import`); "
                                       "several chip sets (sites) train one model on all of them."),
    out: Path = typer.Option(..., "--out", help="Run folder to write."),
    model: Arch = typer.Option(Arch.unet, help="Network architecture."),
    filters: int = typer.Option(16, help="Initial number of filters (study 000: 16/32/64)."),
    batch_size: int = typer.Option(16, help="Chips per batch."),
    epochs: int = typer.Option(200, help="Maximum epochs."),
    lr: float = typer.Option(1e-3, help="Adam learning rate."),
    val_fraction: float = typer.Option(0.3, help="Fraction of chips held out for validation (whole spatial "
                                       "blocks; overlapping chips never straddle the split)."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Random 90° rotations and flips."),
    patience: int = typer.Option(20, help="Early-stopping patience in epochs (0: off)."),
    bands: str | None = typer.Option(None, help="Comma-separated band names to use (default: all)."),
    loss: Loss = typer.Option(Loss.bce, help="Loss function."),
    pos_weight: float | None = typer.Option(None, help="Weight of landslide pixels in BCE."),
    seed: int = typer.Option(0, help="Random seed (same seed on CPU: identical run)."),
    device: Device = typer.Option(Device.auto, help="Training device."),
    resume: bool = typer.Option(False, help="Continue an interrupted run from its last checkpoint."),
    precision: str = typer.Option("auto", help="auto, 32, bf16 or 16 (GPU only); auto: bf16 on a GPU that has "
                                  "it and on a CPU whose bf16 matmul is at least 1.5x its fp32 (measured once "
                                  "per machine, `slidemap info`), else 32."),
    max_time: str | None = typer.Option(None, help="Stop training after this wall time, DD:HH:MM:SS."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    threads: int | None = typer.Option(None, help="CPU threads (default: every core; on a machine other jobs "
                                       "keep busy, 1 thread can train faster than 2, docs/performance.md)."),
) -> None:
    """Train a U-Net or ResU-Net on chip set(s); writes a run folder with the model bundle."""
    from slidemap.stages import train as stage

    options = stage.TrainOptions(
        chips=chips, out=out, model=model.value, filters=filters, batch_size=batch_size, epochs=epochs, lr=lr,
        val_fraction=val_fraction, augment=augment, patience=patience, bands=_split_names(bands),
        loss=loss.value, pos_weight=pos_weight, seed=seed, device=device.value, resume=resume,
        precision=precision, max_time=max_time, progress=progress, threads=threads)
    with _warnings_as_lines():
        result = stage.run(options)
    typer.echo(f"run {result.run}: bundle {result.bundle}")
    for k, v in result.summary.model_dump().items():
        typer.echo(f"  {k}: {v}")


@app.command()
def predict(
    model: Path = typer.Argument(..., help="Model bundle (bundle.pt) or run folder."),
    out: Path = typer.Option(..., "--out", help="Prediction folder to write."),
    scene: Path | None = typer.Option(None, help="Prepared scene folder to predict."),
    area: str | None = typer.Option(None, help="Only this named area of the scene."),
    image: list[Path] | None = typer.Option(None, "--image", help="Bare image(s), prepared on the fly."),
    dem: Path | None = typer.Option(None, help="DEM for bare images."),
    pre_image: list[Path] | None = typer.Option(None, "--pre-image", help="Pre-event image(s) for bare "
                                                "images, when the model uses pre_* or change (d*) layers."),
    chips: Path | None = typer.Option(None, help="Patch dataset (chip set) to predict patch by patch."),
    scenes: Path | None = typer.Option(None, help="A list of scenes (text file: one scene folder or image "
                                       "file(s) per line) predicted as independent tasks into OUT/<name>/, "
                                       "with all landslides merged into OUT/landslides.gpkg; resumable."),
    workers: int = typer.Option(1, help="With --scenes: scenes predicted at once on this machine."),
    ray: str | None = typer.Option(None, help="With --scenes: run the scenes on Ray ('auto' or ADDRESS)."),
    tile: int = typer.Option(512, help="Tile size in pixels (a multiple of 16)."),
    overlap: int = typer.Option(64, help="Overlap between tiles in pixels; tile minus overlap must be a "
                                "multiple of 16 (more overlap: closer to one-pass prediction, slower)."),
    threshold: str | None = typer.Option(None, help="'best' (validation pixel-F1 optimum), '0.5' or a number; "
                                         "default: the bundle's post-processing threshold, else 'best' "
                                         "(patch sets: 0.5, as Landslide4Sense's arg-max)."),
    min_area: float | None = typer.Option(None, help="Drop predicted landslides smaller than this (m²) from "
                                          "the polygons and mask.tif; default: the bundle's minimum size."),
    postprocess: PostMode = typer.Option(PostMode.auto, help="auto: apply the clean-up learned on the "
                                         "validation chips (threshold, opening/closing, hole filling, minimum "
                                         "size) to scenes, not to patch sets; bundle: to both; none: off."),
    submission: bool = typer.Option(False, "--submission", help="With --chips: also write OUT/submission/ "
                                    "holding only the mask_N.h5 files, and OUT/submission.zip (masks at its "
                                    "root), as Landslide4Sense submissions are made."),
    batch_size: int = typer.Option(4, help="Tiles per forward pass (scenes: run side by side as one wide "
                                   "tile, so their overlaps are computed once)."),
    device: Device = typer.Option(Device.auto, help="Inference device."),
    as_float: bool = typer.Option(False, "--float", help="Write probability.tif as float32 (default uint8)."),
    evaluate: bool = typer.Option(False, "--evaluate", help="Also evaluate against the scene's inventory."),
    precision: str = typer.Option("auto", help="auto, 32, bf16 or 16 (GPU only), for --engine torch; auto: "
                                  "bf16 where this device runs it fast (the rule `slidemap info` shows), else "
                                  "fp32."),
    engine: str = typer.Option("torch", help="torch, onnx or onnx-int8: ONNX Runtime running the engines of "
                               "`slidemap export RUN --onnx M.onnx` (needs onnxruntime), from "
                               "--onnx-model or an export beside the bundle."),
    onnx_model: Path | None = typer.Option(None, "--onnx-model", help="With --engine onnx / onnx-int8: the "
                                           ".onnx file `slidemap export` wrote (default: an export of this "
                                           "model found beside it)."),
) -> None:
    """Predict landslides over a whole scene (tiled, blended, streamed), many scenes, or a patch dataset."""
    from slidemap.stages import predict as stage

    if scenes is not None:
        if scene or image or chips:
            raise UserError("--scenes: give the scenes in the list only (no --scene, --image or --chips)")
        alone = [name for name, given in (("--area", area), ("--evaluate", evaluate), ("--pre-image", pre_image),
                                          ("--submission", submission)) if given]
        if alone:
            raise UserError(f"--scenes: {alone[0]} applies to one scene; predict that scene on its own")
        from slidemap.experiments.batch import predict_scenes

        done, failed, merged = predict_scenes(
            model, scenes, out, dem=dem, workers=workers, ray=ray, log=lambda t: typer.echo(t, err=True),
            tile=tile, overlap=overlap, threshold=threshold, min_area=min_area, batch_size=batch_size,
            device=device.value, as_float=as_float, precision=precision, engine=engine, onnx_model=onnx_model,
            postprocess=postprocess.value)
        typer.echo(f"predictions {out}: {done} scenes done, {failed} failed; all landslides in {merged}")
        if failed:
            raise typer.Exit(1)
        return

    options = stage.PredictOptions(
        model=model, out=out, scene=scene, area=area, images=image or None, dem=dem,
        pre_images=pre_image or None, chips=chips, tile=tile,
        overlap=overlap, threshold=threshold, min_area=min_area, batch_size=batch_size, device=device.value,
        as_float=as_float, evaluate=evaluate, precision=precision, engine=engine, onnx_model=onnx_model,
        postprocess=postprocess.value, submission=submission)
    with _warnings_as_lines():
        result = stage.run(options)
    m = result.meta
    if m.kind == "patches":
        typer.echo(f"prediction {result.path}: {m.count} patch masks, threshold {m.threshold:.4f} "
                   f"({m.threshold_choice}), {m.landslide_pixels} landslide pixels, {result.previews} previews")
        for name in m.submission:
            typer.echo(f"  {name:16s} {result.path / name}")
    else:
        typer.echo(f"prediction {result.path}: {m.landslides} landslides, {m.landslide_km2:.4f} km² of "
                   f"{m.valid_km2:.3f} km² valid, threshold {m.threshold.value:.4f} ({m.threshold.which}), "
                   f"{m.mpx_per_s} Mpx/s, engine {m.engine_choice.get('setting', m.engine)}")
        for name in ("probability.tif", "mask.tif", "landslides.gpkg"):
            typer.echo(f"  {name:16s} {result.path / name}")
    if result.evaluation is not None:
        _print_evaluation(result.evaluation)


@app.command()
def evaluate(
    pred: Path = typer.Argument(..., help="Prediction folder from `slidemap predict`."),
    truth: Path | None = typer.Option(None, help="Scene folder (or chip set) holding the reference inventory "
                                      "(default: the scene named in PRED/prediction.json)."),
    area: list[str] | None = typer.Option(None, "--area", help="Area(s) to evaluate, repeatable (default: "
                                          "the area PRED was predicted for, else all test areas)."),
    object_overlap: float = typer.Option(0.5, help="Fraction of a landslide's area that must be predicted "
                                         "for it to count as found."),
) -> None:
    """Precision, recall, F1, IoU, areas in km², found landslides and error maps per test area."""
    from slidemap.stages import evaluate as stage

    with _warnings_as_lines():
        result = stage.run(stage.EvaluateOptions(pred=pred, truth=truth, areas=area or None,
                                                 object_overlap=object_overlap))
    _print_evaluation(result)


@app.command()
def demo(
    out: Path = typer.Option(Path("slidemap-demo"), help="Folder for everything the demo writes."),
    fast: bool = typer.Option(False, help="A smaller, quicker run (for CI)."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Run the whole pipeline on the built-in synthetic study area and print the test metrics."""
    from slidemap.demo import run_demo

    run_demo(out, fast=fast, seed=seed)


@app.command()
def export(
    run: Path = typer.Argument(..., help="Run folder or model bundle (bundle.pt)."),
    onnx: Path = typer.Option(..., "--onnx", help="ONNX file to write (e.g. model.onnx)."),
    resolution_cm: float | None = typer.Option(None, help="Pixel size in cm that QGIS resamples the layer to "
                                               "(default: the pixel size of the scene the model was trained "
                                               "on)."),
    tile: int = typer.Option(512, help="Tile size in px, a multiple of 16: the QGIS file's fixed input height "
                             "and width, and Deepness's tile_size."),
    overlap: int = typer.Option(64, help="Tile overlap in pixels (written as Deepness's percent)."),
    threshold: str = typer.Option("best", help="Threshold written as seg_thresh, rounded to the 2 decimals "
                                  "Deepness shows: 'best', '0.5' or a number."),
    int8: bool = typer.Option(False, "--int8", help="Also write the int8 engine for `predict --engine "
                              "onnx-int8`, calibrated on the model's training chips, and record the validation "
                              "F1 of torch fp32, ONNX fp32 and int8 in M.engines.json."),
) -> None:
    """Export the model as ONNX for QGIS (Deepness) with its style, and the ONNX Runtime engines of predict.

    Writes beside M.onnx: M.onnx for QGIS, M.qml (its landslide layer's style), M.engine[-int8].onnx, M.engines.json.
    """
    from slidemap.stages import export as stage

    with _warnings_as_lines():
        result = stage.run(stage.ExportOptions(model=run, onnx=onnx, resolution_cm=resolution_cm, tile=tile,
                                               overlap=overlap, threshold=threshold, int8=int8))
    m = result.metadata
    typer.echo(f"onnx {result.path}: for QGIS; input raw bands {', '.join(m['slidemap_bands'])} (in this "
               f"order), {m['tile_size']} x {m['tile_size']} px, output landslide probability")
    typer.echo(f"  Deepness: Segmentor, {m['resolution']} cm/px, tile {m['tile_size']} px, overlap "
               f"{m['tiles_overlap']} %, threshold {m['seg_thresh']} (the model's {m['slidemap_threshold']}), "
               f"remove small segments {m['seg_small_segment'] or 'off'}")
    if "max_abs_diff" in result.check:
        typer.echo(f"  checked with ONNX Runtime: max |p - p_torch| = {result.check['max_abs_diff']:.1e}")
    for key, what in (("style", "QGIS style of the landslide layer"), ("onnx", "engine of predict --engine onnx"),
                      ("onnx-int8", "engine of predict --engine onnx-int8"), ("record", "the engines' record")):
        if key in result.files:
            typer.echo(f"  {result.files[key].name:24s} {what}")
    if result.record.f1:
        typer.echo("  validation F1: " + ", ".join(f"{k} {v:.4f}" for k, v in result.record.f1.items()))


@app.command()
def info() -> None:
    """This machine as slidemap sees it: CPU, threads, versions, and the precision `auto` takes (measured anew)."""
    import torch

    from slidemap.nn.device import (
        BF16_SPEEDUP,
        bf16_measurement,
        cache_dir,
        choose_precision,
        cpu_has_native_bf16,
        cpu_info,
        cpu_name,
        versions,
    )
    from slidemap.nn.engines import onnxruntime_available

    typer.echo(f"cpu        {cpu_name()}")
    typer.echo(f"flags      {', '.join(cpu_info()['flags']) or 'none of note'}")
    typer.echo(f"threads    {torch.get_num_threads()}")
    typer.echo("versions   " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    if not onnxruntime_available():
        typer.echo("onnx       not installed: --engine onnx / onnx-int8 need pip install 'slidemap[onnx]'")
    if cpu_has_native_bf16():
        m = bf16_measurement(remeasure=True)
        typer.echo(f"matmul     fp32 {m.fp32_gflops:.0f} GFLOP/s, bf16 {m.bf16_gflops:.0f} GFLOP/s: bf16 "
                   f"{m.speedup:.2f}x (auto takes bf16 from {BF16_SPEEDUP}x; kept in "
                   f"{cache_dir() / 'precision.json'})")
    choice = choose_precision("auto", "cpu")
    typer.echo(f"auto       --precision {choice.precision} on the CPU: {choice.why}")
    if torch.cuda.is_available():
        gpu = choose_precision("auto", "cuda")
        typer.echo(f"           --precision {gpu.precision} on {torch.cuda.get_device_name()}: {gpu.why}")


@l4s_app.command("import")
def l4s_import(
    folder: Path = typer.Argument(..., help="Landslide4Sense folder with img/ (and mask/)."),
    out: Path = typer.Option(..., "--out", help="Chip set folder to write."),
    list_file: Path | None = typer.Option(None, "--list", help="Text file naming the patches to import."),
    published_stats: bool = typer.Option(False, help="Use the dataset's published mean/std instead of "
                                         "statistics computed from the imported patches."),
) -> None:
    """Import Landslide4Sense HDF5 patches into a slidemap chip set."""
    from slidemap.sources.l4s import import_l4s

    chips = import_l4s(folder, out, list_file=list_file, published_stats=published_stats)
    typer.echo(f"chip set {chips.path}: {len(chips)} patches, bands {', '.join(chips.bands)}")
    typer.echo("  train on it with `slidemap train`, predict it with `slidemap predict MODEL --chips`, score "
               "a prediction with `slidemap evaluate PRED --truth CHIPS`")


@experiment_app.command("run")
def experiment_run(
    spec: Path = typer.Argument(..., help="Experiment spec (YAML), e.g. examples/quick.yaml."),
    out: Path = typer.Option(..., "--out", help="Experiment folder: sites, chip sets, runs, results.csv. "
                             "Run again with the same spec and --out to continue."),
    workers: int = typer.Option(1, help="Runs trained at once on this machine (the cores are split "
                                "between them)."),
    ray: str | None = typer.Option(None, help="Run on Ray: 'auto' (a local Ray instance, or the cluster "
                                   "this machine belongs to) or a cluster ADDRESS."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Open every input (headers only), list the runs, "
                                 "count every chip set whose scene exists (the others after preparing) and "
                                 "estimate the wall time from a training step timed on this machine; write "
                                 "nothing."),
) -> None:
    """Run (or continue) the grid of an experiment spec; one row per run and test area in results.csv."""
    from slidemap.experiments import runner

    if dry_run:
        typer.echo(runner.dry_run(spec, out))
        return
    done, failed, csv_path = runner.run_experiment(spec, out, workers=workers, ray=ray,
                                                   log=lambda t: typer.echo(t, err=True))
    typer.echo(f"results {csv_path}: {done} runs done, {failed} failed")
    if failed:
        raise typer.Exit(1)


@experiment_app.command("report")
def experiment_report(
    folder: Path = typer.Argument(..., help="Experiment folder (the --out of `experiment run`)."),
    out: Path | None = typer.Option(None, "--out", help="Report folder (default: FOLDER/report)."),
) -> None:
    """Write an experiment's report: the studies' tables and maps, and each of their conclusions tested on its runs.

    report.md, report.html (figures inlined) and PNGs; the title is the spec's name.
    """
    from slidemap.experiments.report import write_report

    typer.echo(f"report {write_report(folder, out)}")


def _print_evaluation(result: EvaluateResult) -> None:
    typer.echo(result.table)
    for key, path in result.files.items():
        typer.echo(f"{key}: {path}")


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Slidemap's own warnings as one ``warning: ...`` line each on stderr; others as Python shows them."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        # shown once the recording has stopped: inside it, showwarning would append to the very list being
        # shown, without end
        for w in caught:
            if w.category.__module__.startswith("slidemap") or issubclass(w.category, UserWarning) \
                    and str(w.filename).find("slidemap") >= 0:
                typer.echo(f"warning: {w.message}", err=True)
            elif not issubclass(w.category, DeprecationWarning | PendingDeprecationWarning):
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM cleans up like Ctrl-C: temporary folders removed, locks released."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning UserError into ``error: ...`` and exit status 2."""
    # OpenMP's wait policy is left to libgomp (spin briefly, then sleep; less spin when oversubscribed):
    # OMP_WAIT_POLICY=PASSIVE, the default here until 2026-11-30, made training 1.3x (U-Net-16, 128 px) to
    # 2.3x (U-Net-8, 64 px) slower on an idle 2-core machine, and was no cheaper under a 2-process load
    # (docs/performance.md). A user on a busy shared machine can still set it.
    with contextlib.suppress(ValueError):  # not in the main thread (tests calling main from a thread)
        signal.signal(signal.SIGTERM, _terminate)
    try:
        rc = app(args=argv, standalone_mode=False)
    except UserError as e:
        if _DEBUG["on"]:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        typer.echo(f"error: {message}", err=True)
        return 2
    except OSError as e:
        from slidemap.formats.files import DISK_ERRORS

        if e.errno not in DISK_ERRORS or _DEBUG["on"]:
            raise
        typer.echo(f"error: {f'{e.filename}: ' if e.filename else ''}{DISK_ERRORS[e.errno]}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except typer.Exit as e:
        return e.exit_code
    except Exception as e:  # usage errors of typer's click: show them as click would
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            return e.exit_code
        if type(e).__name__ == "Abort":
            return 1
        raise
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
