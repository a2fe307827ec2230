"""``slidemap train``: fit a U-Net or ResU-Net on one or more chip sets, ending with a model bundle.

The run folder holds ``config.yaml`` (options as run), ``metrics.csv`` (one row per epoch, identical for
the same seed on CPU), ``timing.csv`` (wall times, kept apart so metrics.csv stays reproducible),
``checkpoints/best.ckpt`` (lowest validation loss) and ``checkpoints/last.ckpt`` (for ``--resume``),
``learning_curve.png``, ``summary.json`` and ``bundle.pt``, written last: the run is complete when its
bundle's training summary names the run's epochs.

How the pieces follow the studies, and where they depart from them (docs/training.md says more):
- the validation split is drawn before any augmentation and is spatial (``slidemap.raster.split``):
  overlapping windows never straddle training and validation; with several chip sets (sites) it is drawn
  within each site;
- augmentation draws one of the 8 symmetries of the square per sample and epoch (``slidemap.nn.augment``);
- bands are standardised with the train area's statistics (pooled over the sites, weighted by their valid
  pixel counts, when several chip sets are given), or with ``standardise: scene`` each chip set with its own
  (``slidemap.stages.standardise``); nodata becomes 0 after that and weighs nothing;
- Lightning drives the loop (``slidemap.nn.task``, ``slidemap.nn.fitting``); a resumed run ends with the
  weights of an uninterrupted one.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
import yaml
from pydantic import Field, SkipValidation, field_validator

from slidemap.errors import UserError
from slidemap.figures import plot_learning_curve
from slidemap.formats.base import Record
from slidemap.formats.bundle import BundleMeta, PostProcess, Standardise
from slidemap.formats.chips import ChipSet
from slidemap.formats.files import atomic_file, check_out, output_lock, sha256, write_json
from slidemap.formats.scene import BandStats, Recipe
from slidemap.nn.bundle import Bundle, save_bundle
from slidemap.nn.device import PrecisionChoice, choose_precision, resolve_device
from slidemap.nn.losses import LOSSES
from slidemap.nn.models import MODELS
from slidemap.nn.normalise import Normaliser
from slidemap.raster.metrics import best_threshold, confusion, scores
from slidemap.raster.postprocess import choose_postprocess, min_size_cap
from slidemap.raster.split import Split, split_chips
from slidemap.raster.tiling import check_patch_size
from slidemap.stages.options import Device, Paths, Precision, StageOptions, StageResult, one_of
from slidemap.stages.standardise import training_normalisers
from slidemap.version import __version__

RESUMABLE = ("epochs", "patience", "min_epochs", "min_chips", "stop_smoothing", "max_time", "device", "precision",
             "progress", "threads", "slidemap_version", "split")
"""Options a resumed run may change; every other option must be the run's own."""


class TrainOptions(StageOptions):
    """Everything ``slidemap train`` takes: ``slidemap train --help`` and a spec's ``training:`` derive from it."""

    chips: Paths
    """Chip set folder(s) (from `sample` or `l4s import`); several chip sets (sites) train one model on all."""
    out: Path
    """Run folder to write."""
    model: one_of(MODELS) = "unet"  # type: ignore[valid-type]
    """Network architecture: unet (study 000) or resunet (study 002)."""
    filters: int = Field(16, ge=1, le=256)
    """Filters of the first block, doubling with each down-sampling (study 000: 16, 32, 64)."""
    batch_size: int = Field(16, ge=1)
    """Chips per training batch."""
    epochs: int = Field(200, ge=1)
    """Most epochs to train."""
    lr: float = Field(1e-3, gt=0)
    """Adam's learning rate."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """constant, or cosine: the learning rate falls along a half cosine towards 0 at the last epoch."""
    warmup_epochs: int = Field(0, ge=0)
    """Epochs over which the learning rate first rises linearly to --lr."""
    val_fraction: float = Field(0.3, gt=0, lt=1)
    """Share of the chips held out for validation, in whole spatial blocks (overlapping chips never straddle
    the split)."""
    min_chips: int = Field(32, ge=1)
    """Fewest training chips (after the validation split) a run starts with: fewer is an error, not a model."""
    augment: bool = True
    """The 8 symmetries of the square (90° rotations and flips), drawn per chip and epoch."""
    photometric: bool = False
    """Per-band gain and offset, illumination and a tone curve on the image bands, drawn per chip and epoch:
    for a model used on another sensor or another day."""
    standardise: Standardise = "training"
    """training: bands standardised with the training area's mean and std, also at prediction; scene: each chip
    set with its own scene's, and each input predicted with its own (over the region predicted): for another
    sensor or illumination. `export` refuses scene models."""
    patience: int = Field(20, ge=0)
    """Epochs without a lower (smoothed) validation loss before training stops; 0: never stops early."""
    min_epochs: int = Field(0, ge=0)
    """Early stopping never ends a run before this many epochs."""
    stop_smoothing: float = Field(0.0, ge=0, lt=1)
    """Early stopping watches an exponential moving average of the validation loss with this factor (0: the
    loss itself), so one noisy epoch of a small validation set neither resets nor ends the count."""
    bands: list[str] | None = None
    """Bands to train on, comma-separated names (default: every band of the chip set)."""
    loss: one_of(LOSSES) = "bce"  # type: ignore[valid-type]
    """Loss: bce (binary cross-entropy), bce+dice or focal."""
    pos_weight: float | None = Field(None, gt=0)
    """Weight of landslide pixels in the loss (default 1)."""
    seed: int = Field(0, ge=0)
    """Random seed: the same seed on a CPU gives the same run."""
    device: Device = "auto"
    precision: Precision = "auto"
    resume: bool = False
    """Continue the run in --out from its last checkpoint (or train a finished run on to more --epochs)."""
    max_time: str | None = None
    """Stop training after this wall time, DD:HH:MM:SS."""
    progress: bool = True
    """Show a progress bar."""
    threads: int | None = Field(None, ge=1)
    """CPU threads (default: torch's, one per core)."""
    model_args: dict[str, Any] = {}
    """Further arguments of the architecture (e.g. batch_norm, dropout for unet)."""
    channels_last: bool = True
    """Channels-last memory layout (faster convolutions on CPUs and GPUs alike, docs/performance.md)."""
    learn_postprocess: bool = True
    """False skips choosing the post-processing on the validation chips (a grid that scores raw masks)."""
    learning_curve: bool = True
    """False skips ``learning_curve.png`` (a grid's report draws the curves it shows from metrics.csv)."""
    keep_checkpoints: bool = True
    """False removes ``checkpoints/`` once the bundle is written: a finished grid run needs only its bundle
    (study 000's U-Net-64 checkpoints are ~0.4 GB a run)."""

    @field_validator("max_time")
    @classmethod
    def _max_time(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"\d{1,2}:\d{1,2}:\d{1,2}:\d{1,2}", v):
            raise ValueError("give the time as DD:HH:MM:SS, e.g. 00:02:00:00 for two hours")
        return v

    @field_validator("bands")
    @classmethod
    def _bands(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError("name each band once, e.g. red,green,nir")
        return v


class TrainSummary(Record):
    """The figures of a finished run (``summary.json``; the bundle keeps all but the wall-clock ones)."""

    epochs_run: int
    best_epoch: int
    best_val_loss: float
    val_f1_at_half: float
    best_threshold: float
    val_f1_at_best: float
    train_chips: int
    val_chips: int
    buffer_chips: int
    split: str
    device: str
    precision: str
    channels_last: bool = True
    precision_choice: dict[str, Any] = {}
    postprocess: dict[str, Any] | None = None
    seconds: float | None = None
    chips_per_s: float | None = None


class TrainResult(StageResult):
    """The run folder, the bundle it ended with, and the run's summary."""

    run: Path
    bundle: Path
    summary: TrainSummary
    model: SkipValidation[Bundle | None] = Field(default=None, exclude=True, repr=False)
    """The bundle as loaded (weights in memory), for a caller that predicts next; not serialised."""


def run(options: TrainOptions, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Train a network on the chip set(s) and write a run folder that ends with ``bundle.pt``.

    Everything is checked before the run folder is touched. ``callbacks`` are extra Lightning callbacks
    (tests use one to interrupt a run).
    """
    o = options
    device = resolve_device(o.device)
    choice = choose_precision(o.precision, device)  # a bad --precision fails before anything is read
    chipsets = [ChipSet(c) for c in o.chips]
    bands = _bands(chipsets, o.bands)
    size = chipsets[0].size
    if any(c.size != size for c in chipsets):
        raise UserError(f"CHIPS: chip sets of different sizes ({', '.join(str(c.size) for c in chipsets)} "
                        f"px); train on chip sets cut at one patch size")
    check_patch_size(size)
    for c in chipsets:
        if c.masks is None:
            raise UserError(f"CHIPS {c.path}: has no masks.npy; training needs a chip set with masks")
    normalise, per_chipset = training_normalisers(chipsets, bands, o.standardise)
    out = check_out(o.out, "config.yaml", o.chips, "run")
    resume_from = _check_run_folder(out, o.resume)
    precision = choice.precision
    split = _split(chipsets, o.val_fraction, o.seed)
    _check_enough_chips(chipsets, split, o.min_chips)
    batch_size = o.batch_size
    if batch_size > len(split.train):
        warnings.warn(f"--batch-size {batch_size} is larger than the {len(split.train)} training chips; "
                      f"using {len(split.train)}", stacklevel=2)
        batch_size = len(split.train)
    config = _config(o.replace(batch_size=batch_size), chipsets, bands, device.type, precision, split)
    if o.resume:
        _check_resumable(out, config)

    from slidemap.nn.task import load_chip_tensors

    images, masks = load_chip_tensors(chipsets, bands, per_chipset)
    if not bool((masks[torch.as_tensor(split.train)] == 1).any()):
        raise UserError(f"CHIPS {', '.join(str(c.path) for c in chipsets)}: no landslide pixel in the "
                        f"{len(split.train)} training chips; sample with --require-landslide or from an area "
                        f"with landslides")

    out.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        out.mkdir(parents=True, exist_ok=True)
        with atomic_file(out / "config.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        try:
            return _fit_and_bundle(o, out, device, choice, images, masks, split, bands, size, normalise,
                                   batch_size, config, resume_from, callbacks, chipsets)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM in training or after it, before the bundle
            print(f"training interrupted; continue it with --resume --out {out}", file=sys.stderr)
            raise


def _fit_and_bundle(o: TrainOptions, out: Path, device: torch.device, choice: PrecisionChoice, images: torch.Tensor,
                    masks: torch.Tensor, split: Split, bands: list[str], size: int, normalise: Normaliser,
                    batch_size: int, config: dict[str, Any], resume_from: Path | None,
                    callbacks: Sequence[Any], chipsets: list[ChipSet]) -> TrainResult:
    import lightning.pytorch as pl

    from slidemap.nn.fitting import fit, load_net_weights
    from slidemap.nn.models import build_model
    from slidemap.nn.task import SegmentationTask, predict_chips

    precision, channels_last = choice.precision, o.channels_last
    threads = torch.get_num_threads()
    if o.threads:
        torch.set_num_threads(o.threads)
    started = time.perf_counter()
    try:
        pl.seed_everything(o.seed, workers=False, verbose=False)
        net = build_model(o.model, in_channels=len(bands), filters=o.filters, **o.model_args)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        task = SegmentationTask(net, images, masks, split.train, split.val, batch_size=batch_size,
                                val_batch_size=max(2 * batch_size, 32), lr=o.lr, loss=o.loss,
                                pos_weight=o.pos_weight, augment=o.augment, seed=o.seed,
                                channels_last=channels_last,
                                photometric=_photometric_ratio(bands, normalise) if o.photometric else None,
                                lr_schedule=o.lr_schedule, warmup_epochs=o.warmup_epochs,
                                stop_smoothing=o.stop_smoothing)
        outcome = fit(task, out, device.type, precision, o.epochs, o.patience, o.max_time, o.progress,
                      resume_from, len(split.train), callbacks, min_epochs=o.min_epochs)
        if outcome.interrupted:  # no bundle for a half-trained run; the checkpoints stay
            raise KeyboardInterrupt
        if not outcome.log.rows:
            raise UserError(f"--max-time {o.max_time}: no epoch finished in time; allow more time")
        seconds = time.perf_counter() - started
        load_net_weights(net, outcome.best or out / "checkpoints" / "last.ckpt")
        val_idx = torch.as_tensor(split.val)
        # the threshold and post-processing are chosen on fp32 probabilities whatever precision trained
        prob = predict_chips(net, images, val_idx, max(2 * batch_size, 32), device)
        truth = masks[val_idx].numpy()
    finally:
        torch.set_num_threads(threads)
    f1_half = scores(confusion(prob >= 0.5, truth))["f1"]
    threshold, f1_best = best_threshold(prob, truth)
    if f1_best <= f1_half:  # no threshold beats 0.5 (e.g. nothing to find): keep 0.5
        threshold, f1_best = 0.5, f1_half
    pixel_sizes = _scene_pixel_sizes(chipsets)
    areas = {round(px[0] * px[1], 6) if px else None for px in pixel_sizes}
    pixel_area_m2 = areas.pop() if len(areas) == 1 else None  # the scenes' pixels are of one size
    postprocess = (_postprocess(prob, truth, threshold, pixel_area_m2, min_size_cap(masks.numpy()))
                   if o.learn_postprocess else None)

    log = outcome.log
    best = min(log.rows, key=lambda r: (r["val_loss"], r["epoch"]))
    train_seconds = sum(t["train_seconds"] for t in log.timing)
    chips_seen = len(split.train) * len(log.timing)
    summary = TrainSummary(
        epochs_run=len(log.rows), best_epoch=best["epoch"], best_val_loss=round(best["val_loss"], 5),
        val_f1_at_half=round(f1_half, 4), best_threshold=round(threshold, 4),
        val_f1_at_best=round(f1_best, 4),
        train_chips=len(split.train), val_chips=len(split.val), buffer_chips=int(split.buffer.size),
        split=split.method, device=device.type, precision=precision, channels_last=channels_last,
        precision_choice=choice.record(), postprocess=postprocess.model_dump() if postprocess else None,
        seconds=round(seconds, 1),
        chips_per_s=round(chips_seen / train_seconds, 1) if train_seconds else None)
    if o.learning_curve:
        plot_learning_curve(log.rows, out / "learning_curve.png")
    reproducible = summary.model_dump(exclude={"seconds", "chips_per_s", "precision_choice"})
    meta = BundleMeta(
        architecture=o.model, model_args=dict(net.config), bands=bands,
        stats=_training_stats(chipsets, normalise), patch_size=size,
        thresholds={"0.5": 0.5, "best": float(threshold)}, postprocess=postprocess,
        training={**reproducible, "options": {k: v for k, v in config.items() if k != "split"},
                  "split": split.as_dict(),
                  # what `slidemap export` writes as the resolution QGIS resamples to
                  **({"pixel_size_m": list(pixel_sizes[0])} if pixel_sizes[0] else {})},
        recipe=_recipe(chipsets), standardise=o.standardise)
    write_json(out / "summary.json", summary)
    bundle = save_bundle(out / "bundle.pt", net.cpu(), meta)
    if not o.keep_checkpoints:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return TrainResult(run=out, bundle=cast(Path, bundle.path), summary=summary, model=bundle)


def _photometric_ratio(bands: list[str], normalise: Normaliser) -> torch.Tensor:
    """Each band's mean over its standard deviation, 0 for the bands no sensor gain applies to (terrain, indices)."""
    from slidemap.raster.bands import layer_kinds

    kinds = layer_kinds(bands)
    spectral = set(kinds.image) | set(kinds.pre)
    ratio = [float(m) / float(s) if b in spectral and s > 0 else 0.0
             for b, m, s in zip(bands, normalise.mean, normalise.std, strict=True)]
    return torch.tensor(ratio, dtype=torch.float32)


def _scene_pixel_sizes(chipsets: list[ChipSet]) -> list[tuple[float, float] | None]:
    """Pixel (x, y) in metres of the scene each chip set was cut from; None where it is not known."""
    from slidemap.formats.scene import Scene

    sizes: list[tuple[float, float] | None] = []
    for c in chipsets:
        scene = c.meta.scene
        try:
            px = Scene(scene).pixel_size_m if scene and (Path(scene) / "scene.json").is_file() else None
        except UserError:
            px = None
        sizes.append((float(px[0]), float(px[1])) if px else None)
    return sizes


# --- post-processing chosen on the validation chips -----------------------------------------------

def _postprocess(prob: np.ndarray, truth: np.ndarray, pixel_threshold: float, pixel_area_m2: float | None,
                 max_min_pixels: int | None) -> PostProcess | None:
    """Threshold, clean-up and minimum object size maximising validation F1.

    See ``slidemap.raster.postprocess``; the minimum size is at most half the smallest landslides of the chip
    masks. None when the validation chips hold no landslide.
    """
    result = choose_postprocess(prob, truth, reference_threshold=pixel_threshold, max_min_pixels=max_min_pixels)
    if result is None:
        return None
    b, r = result.best, result.reference
    return PostProcess(
        threshold=b.threshold, opening=b.cleanup.opening, closing=b.cleanup.closing,
        fill_holes=b.cleanup.fill_holes, min_pixels=b.min_pixels,
        min_area_m2=round(b.min_pixels * pixel_area_m2, 3) if pixel_area_m2 else None,
        validation={"f1": round(b.f1, 4), "false_alarms": b.false_alarms, "objects": b.objects,
                    "reference_threshold": r.threshold, "reference_f1": round(r.f1, 4),
                    "reference_false_alarms": r.false_alarms, "reference_objects": r.objects,
                    "candidates": len(result.tried), "max_min_pixels": -1 if max_min_pixels is None
                    else max_min_pixels})


def _training_stats(chipsets: list[ChipSet], normalise: Normaliser) -> dict[str, BandStats]:
    """The bundle's band statistics: the mean/std standardised with, and the chip sets' range and count.

    The range and pixel count are what predict's domain-shift guard compares an input with.
    """
    out = {}
    for b, s in normalise.as_stats().items():
        parts = [c.stats.get(b) for c in chipsets]
        lows = [p.min for p in parts if p is not None and p.min is not None]
        highs = [p.max for p in parts if p is not None and p.max is not None]
        counts = [p.count for p in parts if p is not None and p.count]
        out[b] = BandStats(mean=s["mean"], std=s["std"], min=min(lows) if lows else None,
                           max=max(highs) if highs else None, count=sum(counts) if counts else None)
    return out


# --- checks before anything is written ------------------------------------------------------------

def _recipe(chipsets: list[ChipSet]) -> Recipe | None:
    """How the chip sets' scenes were made, if they all agree (else, or for patch datasets, None)."""
    recipes = [c.meta.recipe for c in chipsets]
    return recipes[0] if recipes[0] is not None and all(r == recipes[0] for r in recipes) else None


def _bands(chipsets: list[ChipSet], wanted: list[str] | None) -> list[str]:
    """The bands to train on: ``wanted`` (checked in every chip set) or the first chip set's.

    Every other chip set must hold them.
    """
    bands = list(wanted) if wanted else chipsets[0].bands
    for c in chipsets:
        c.band_indexes(bands)  # a missing band is a UserError naming the chip set
    return bands


def _split(chipsets: list[ChipSet], val_fraction: float, seed: int) -> Split:
    """The spatial split of each chip set (site), concatenated.

    A scene chip set without windows.csv is refused (its overlapping chips would straddle training and
    validation).
    """
    parts, offset = [], 0
    for c in chipsets:
        windows: list[dict[str, Any]]
        if not c.windows:
            if c.meta.scene:
                raise UserError(f"CHIPS {c.path}: windows.csv is missing, so overlapping chips cannot be "
                                f"kept apart in the validation split; sample the chip set again")
            windows = [{} for _ in range(len(c))]  # patches without positions: split by patch
        else:
            windows = c.windows
        s = split_chips(windows, val_fraction, seed)
        parts.append(Split(s.train + offset, s.val + offset, s.buffer + offset, s.method))
        offset += len(c)
    if len(parts) == 1:
        return parts[0]
    methods = sorted({p.method for p in parts})
    return Split(np.concatenate([p.train for p in parts]), np.concatenate([p.val for p in parts]),
                 np.concatenate([p.buffer for p in parts]), " + ".join(methods) + " (within each site)")


def _config(o: TrainOptions, chipsets: list[ChipSet], bands: list[str], device: str, precision: str,
            split: Split) -> dict[str, Any]:
    """config.yaml: the options as run (absolute chip paths, their chips.json hashes)."""
    many = len(chipsets) > 1
    paths = [str(c.path.resolve()) for c in chipsets]
    hashes = [sha256(c.path / "chips.json") for c in chipsets]
    return {
        "chips": paths if many else paths[0], "chips_sha256": hashes if many else hashes[0],
        "model": o.model, "filters": o.filters, "model_args": dict(o.model_args), "batch_size": o.batch_size,
        "epochs": o.epochs, "lr": o.lr, "lr_schedule": o.lr_schedule, "warmup_epochs": o.warmup_epochs,
        "val_fraction": o.val_fraction, "min_chips": o.min_chips, "augment": o.augment, "photometric": o.photometric,
        "min_epochs": o.min_epochs, "stop_smoothing": o.stop_smoothing,
        "patience": o.patience, "bands": bands, "loss": o.loss, "pos_weight": o.pos_weight, "seed": o.seed,
        "device": device, "precision": precision, "max_time": o.max_time, "split": split.as_dict(),
        "slidemap_version": __version__,
        # only when asked for: a run of the default resumes as before the option existed
        **({"standardise": o.standardise} if o.standardise != "training" else {}),
    }


def _check_enough_chips(chipsets: list[ChipSet], split: Split, min_chips: int) -> None:
    """Refuse a run that would train on fewer than ``min_chips`` chips, saying what the sampler refused."""
    if len(split.train) >= min_chips:
        return
    told = []
    for c in chipsets:
        summary = c.meta.summary or {}
        drawn, kept = summary.get("drawn"), summary.get("kept")
        refused = (f", {drawn - kept} of {drawn} windows refused by the sampler"
                   if isinstance(drawn, int) and isinstance(kept, int) and drawn > kept else "")
        told.append(f"{c.path} holds {len(c)} chips{refused}")
    raise UserError(f"--min-chips {min_chips}: {len(split.train)} training chips after the validation split "
                    f"({len(split.val)} validation, {split.buffer.size} buffer); {'; '.join(told)}. Sample more "
                    f"(more grid overlap or random windows, a higher --max-unknown or --max-nodata, a smaller "
                    f"size), lower --val-fraction, or lower --min-chips")


def _check_run_folder(out: Path, resume: bool) -> Path | None:
    """Refuse to overwrite a run; with ``resume`` return the checkpoint to continue from (if any).

    An unreadable ``last.ckpt`` (a disk that filled up under an older slidemap) falls back to
    ``best.ckpt`` with a warning: per-epoch seeds make training on from an earlier epoch land on the same
    weights.
    """
    from slidemap.nn.fitting import readable_checkpoint

    done, started = (out / "bundle.pt").is_file(), (out / "config.yaml").is_file()
    if not resume:
        if done:
            raise UserError(f"--out {out}: holds a finished run; choose another --out, or pass --resume to "
                            f"train it on")
        if started:
            raise UserError(f"--out {out}: holds an unfinished run; pass --resume to continue it, or choose "
                            f"another --out")
        return None
    if not started:
        raise UserError(f"--resume: {out} holds no run to continue (no config.yaml); run without --resume")
    last, best = out / "checkpoints" / "last.ckpt", out / "checkpoints" / "best.ckpt"
    if last.is_file() and readable_checkpoint(last, resumable=True):
        return last
    if best.is_file() and readable_checkpoint(best, resumable=True):
        warnings.warn(f"{last} is {'unreadable' if last.is_file() else 'missing'}; resuming from {best}",
                      stacklevel=3)
        return best
    if last.is_file() or best.is_file():
        raise UserError(f"--resume: the checkpoints in {out / 'checkpoints'} are unreadable (truncated?) or hold "
                        f"weights only; start a new run with another --out")
    warnings.warn(f"{last} missing: the run stopped before its first epoch ended; starting it afresh",
                  stacklevel=3)
    return None


def _check_resumable(out: Path, config: dict[str, Any]) -> None:
    """A resumed run must keep the options that shape its results; say which ones differ."""
    try:
        old = yaml.safe_load((out / "config.yaml").read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"--resume: {out / 'config.yaml'} is not valid YAML ({str(e).splitlines()[0]}); "
                        f"start a new run") from None
    if not isinstance(old, dict):
        raise UserError(f"--resume: {out / 'config.yaml'} is not a run configuration; start a new run")
    unwritten = {"standardise": "training"}  # options config.yaml holds only where they are not the default
    old, config = {**unwritten, **old}, {**unwritten, **config}
    changed = [k for k in config if k not in RESUMABLE and old.get(k) != config[k]]
    if changed:
        what = "; ".join(f"{k} was {old.get(k)!r}, now {config[k]!r}" for k in changed)
        raise UserError(f"--resume: {what}; resume with the run's options or start a new --out")


# --- a bundle's own chips (for int8 calibration and engine checks) ------------------------------------------

def bundle_chips(bundle: Any, calibration: int = 64, max_val: int = 512) -> dict[str, Any]:
    """Chips of the bundle's own training run, standardised with its statistics.

    ``calibration`` chips spread evenly over the training split (never the validation chips, never test data) and
    up to ``max_val`` validation chips with their masks, by the run's own split (same chip sets, fraction, seed).

    A UserError naming the bundle when its chip sets are gone or changed since training.
    """
    options = bundle.meta.training.get("options", {})
    paths = options.get("chips")
    if not paths:
        raise UserError(f"MODEL {bundle.name}: records no training chip sets; train it with this slidemap")
    paths = [paths] if isinstance(paths, str) else list(paths)
    hashes = options.get("chips_sha256")
    hashes = [hashes] if isinstance(hashes, str) else list(hashes or [])
    chipsets = []
    for i, p in enumerate(paths):
        if not (Path(p) / "chips.json").is_file():
            raise UserError(f"MODEL {bundle.name}: its training chip set {p} is gone; int8 calibration and "
                            f"the engines' accuracy check need it (export without --int8)")
        if i < len(hashes) and sha256(Path(p) / "chips.json") != hashes[i]:
            raise UserError(f"MODEL {bundle.name}: its training chip set {p} changed since training; "
                            f"export without --int8")
        chipsets.append(ChipSet(p))
    split = _split(chipsets, float(options.get("val_fraction", 0.3)), int(options.get("seed", 0)))
    normalise = bundle.normaliser()
    train_idx = np.sort(split.train)
    take = np.unique(np.linspace(0, len(train_idx) - 1, min(calibration, len(train_idx))).round().astype(int))
    val_idx = np.sort(split.val)
    if len(val_idx) > max_val:
        val_idx = val_idx[np.unique(np.linspace(0, len(val_idx) - 1, max_val).round().astype(int))]
    calib, _ = _read_chips(chipsets, bundle.bands, normalise, train_idx[take])
    val, val_masks = _read_chips(chipsets, bundle.bands, normalise, val_idx)
    return {"calibration": calib, "validation": val, "validation_masks": val_masks,
            "chips": [str(Path(p).resolve()) for p in paths], "calibration_chips": int(len(calib)),
            "validation_chips": int(len(val)), "split": split.method}


def _read_chips(chipsets: list[ChipSet], bands: list[str], normalise: Normaliser,
                idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chips ``idx`` (global over the chip sets, in order) standardised, and their masks (255: nodata)."""
    images, masks = [], []
    offset = 0
    for c in chipsets:
        local = idx[(idx >= offset) & (idx < offset + len(c))] - offset
        if len(local):
            raw = np.asarray(c.images[local][:, c.band_indexes(bands)], dtype=np.float32)
            nodata = np.isnan(raw).any(axis=1)
            images.append(normalise(raw))
            if c.masks is None:  # deleted since training (chips.json, which is checked, is unchanged)
                raise UserError(f"CHIPS {c.path}: masks.npy is gone; the engines' accuracy check needs it "
                                f"(export without --int8)")
            m = np.array(c.masks[local], dtype=np.uint8)
            m[nodata] = 255
            masks.append(m)
        offset += len(c)
    size, nb = chipsets[0].size, len(bands)
    if not images:
        return np.zeros((0, nb, size, size), np.float32), np.zeros((0, size, size), np.uint8)
    return np.concatenate(images), np.concatenate(masks)
