"""Prediction and evaluation of patch datasets (Landslide4Sense and any other chip set), patch by patch.

Prediction writes one ``mask_N.h5`` per patch exactly as the benchmark's own ``Predict.py`` does (dataset
``mask``, (128, 128) uint8, 0/1, named after the image numbers), so the folder can be zipped and submitted.
Inputs are standardised with the *bundle's* statistics (those the network was trained with), not the chip
set's, unless the bundle was trained with ``standardise: scene`` (``slidemap.stages.standardise``); nodata (NaN)
becomes 0 after standardisation, i.e. the mean. Evaluation pools pixel counts
over all patches, as the benchmark scores: one confusion matrix over every pixel, then the scores, so the
many all-background patches do not dominate as a per-patch mean would.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from slidemap.errors import UserError
from slidemap.figures import patch_preview
from slidemap.formats.chips import ChipSet
from slidemap.formats.files import atomic_dir, atomic_file, output_lock, sha256
from slidemap.formats.prediction import EnsembleInfo, PatchMetrics, PatchPrediction, ScenePrediction, Scores
from slidemap.nn.bundle import Bundle
from slidemap.nn.inference import TileRunner
from slidemap.nn.normalise import match_bands
from slidemap.progress import track
from slidemap.raster.metrics import Counts, confusion, scores
from slidemap.raster.postprocess import Decision
from slidemap.raster.shift import InputStats
from slidemap.sources.l4s import mask_name, read_mask, write_mask
from slidemap.stages.maps import warn_shift
from slidemap.stages.standardise import patch_normaliser

if TYPE_CHECKING:
    from slidemap.stages.runners import Runner

SUBMISSION = "submission"


def predict_patches(bundle: Bundle, chips: Path, out: Path, decision: Decision, batch_size: int,
                    device: str, precision: str, previews: int = 24, submission: bool = False,
                    runner: Runner | None = None, choice: dict | None = None,
                    ensemble: EnsembleInfo | None = None) -> tuple[PatchPrediction, int]:
    """Predict every patch of a chip set into ``out`` (replaced atomically).

    Returns its description and the number of previews: PNGs, evenly spread over the patches, in ``out/previews``.

    ``decision`` turns probabilities into masks (for patch datasets by default 0.5 and nothing else, as the
    benchmark's arg-max). With ``submission`` the masks are also gathered, and nothing else, in
    ``out/submission/`` and ``out/submission.zip`` (the masks at the zip's root), as the benchmark asks.
    ``ensemble``: what prediction.json records of an ensemble (``runner`` then averages its members).
    """
    chipset = ChipSet(chips, "--chips")
    where = f"--chips {chipset.path}"
    idx = match_bands(bundle.bands, chipset.bands, where, bundle.name)
    normalise, standardisation = patch_normaliser(bundle, chipset, where)
    if runner is None:
        runner = TileRunner(bundle.build_model(), device, precision)
    n = len(chipset)
    names = [mask_name(w, i) for i, w in enumerate(chipset.windows)] if chipset.windows else \
        [f"mask_{i}.h5" for i in range(n)]
    if len(names) != n or len(set(names)) != n:
        raise UserError(f"--chips {chipset.path}: windows.csv does not name each chip once; import it again")
    show = set(_preview_indexes(n, previews))
    positive_px = 0
    seen = InputStats(bundle.bands)
    inputs = [p for p in (bundle.path, chipset.path) if p is not None]
    with atomic_dir(out, "prediction.json", inputs, "prediction") as tmp:
        (tmp / "previews").mkdir()
        for start in track(range(0, n, batch_size), "predicting patches", -(-n // batch_size)):
            stop = min(start + batch_size, n)
            raw = np.asarray(chipset.images[start:stop], dtype=np.float32)[:, idx]
            seen.add(raw)
            # an ensemble's runner standardises for each member itself (slidemap.nn.inference.MemberAverage)
            prob = runner(raw.copy() if getattr(runner, "takes_raw", False) else normalise(raw.copy()))
            masks = decision.apply(prob)
            for k, i in enumerate(range(start, stop)):
                pred = masks[k].astype(np.uint8)
                positive_px += int(pred.sum())
                write_mask(tmp / names[i], pred)
                if i in show:
                    truth = None if chipset.masks is None else np.asarray(chipset.masks[i])
                    patch_preview(raw[k], bundle.bands, pred, truth,
                                  tmp / "previews" / f"{Path(names[i]).stem}.png")
        shift = warn_shift(bundle, seen, where)
        packed = _submission(tmp, names) if submission else []
        meta = PatchPrediction(
            chips=str(chipset.path.resolve()), chips_sha256=sha256(chipset.path / "chips.json"),
            model=bundle.name, threshold=decision.threshold, threshold_choice=decision.which,
            postprocess=decision.record(), input_stats=seen.as_dict(), shift_warnings=shift,
            standardisation=standardisation, submission=packed, bands=bundle.bands, count=n,
            masks=names, sources=[w.get("source", "") for w in chipset.windows],
            landslide_pixels=positive_px, device=str(runner.device), precision=runner.precision,
            engine=getattr(runner, "engine", "torch"), engine_choice=choice or {}, ensemble=ensemble)
        meta.save(tmp / "prediction.json", sync=False)  # the folder's rename publishes it
    return meta, len(show)


def _submission(folder: Path, names: list[str]) -> list[str]:
    """Write ``submission/`` and ``submission.zip``, both holding only the masks; returns both names.

    The folder holds hard links where the file system allows; the zip has the masks at its root, in patch order.
    """
    import os
    import zipfile

    sub = folder / SUBMISSION
    sub.mkdir()
    for name in names:
        try:
            os.link(folder / name, sub / name)
        except OSError:
            shutil.copyfile(folder / name, sub / name)
    with zipfile.ZipFile(folder / f"{SUBMISSION}.zip", "w") as z:
        for name in names:  # a fixed date: the same masks give the same zip
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, (sub / name).read_bytes())
    return [SUBMISSION, f"{SUBMISSION}.zip"]


def _preview_indexes(n: int, previews: int) -> list[int]:
    if previews <= 0 or n == 0:
        return []
    if n <= previews:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, previews)})


def evaluate_patches(pred: Path, chips: Path | None, info: ScenePrediction | PatchPrediction
                     ) -> tuple[PatchMetrics, str, dict[str, Path]]:
    """Score predicted ``mask_N.h5`` files against the chip set they were predicted from.

    Writes ``metrics.csv`` (one row per patch) and ``metrics.json`` (pooled) into ``pred``. Returns the metrics, a
    printable table and the files written.
    """
    if not isinstance(info, PatchPrediction):
        raise UserError(f"PRED {pred}: a scene prediction, not a patch prediction; evaluate it against its "
                        f"scene folder")
    chipset = ChipSet(chips if chips is not None else Path(info.chips), "--truth")
    if chipset.masks is None:
        raise UserError(f"--truth {chipset.path}: chip set has no masks (imported without mask/); give one "
                        f"with masks")
    if info.chips_sha256 and sha256(chipset.path / "chips.json") != info.chips_sha256:
        raise UserError(f"--truth {chipset.path}: is not the chip set PRED {pred} was predicted from "
                        f"({info.chips}); give that chip set")
    n = len(chipset)
    sources = [w.get("source", "") for w in chipset.windows]
    if len(info.masks) != n or (info.sources and info.sources != sources):
        raise UserError(f"--truth {chipset.path}: does not hold the {len(info.masks)} patches PRED {pred} "
                        f"was predicted from; give that chip set")
    total = Counts()
    rows = []
    for i, name in enumerate(info.masks):
        path = pred / name
        if not path.is_file():
            raise UserError(f"PRED {path}: missing; predict the chip set again")
        p = read_mask(path, "PRED")
        if np.any(p > 1):
            raise UserError(f"PRED {path}: holds value {int(p[p > 1][0])}; a prediction is 0 or 1 per pixel")
        c = confusion(p, np.asarray(chipset.masks[i]))
        total = total + c
        s = scores(c)
        rows.append({"id": i, "source": sources[i] if i < len(sources) else "", "mask": name, **c.as_dict(),
                     **{k: round(s[k], 6) for k in ("precision", "recall", "f1", "iou")}})
    pooled = scores(total)
    metrics = PatchMetrics(chips=str(chipset.path.resolve()), patches=n, threshold=info.threshold,
                           counts=total.as_dict(), scores=Scores(**pooled))
    with output_lock(pred.resolve()):  # not flushed to disk: remade from the prediction, checked when read
        with atomic_file(pred / "metrics.csv", sync=False) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        metrics.save(pred / "metrics.json", sync=False)
    return metrics, format_table(pooled, total, n), {"metrics_json": pred / "metrics.json",
                                                      "metrics_csv": pred / "metrics.csv"}


def format_table(s: dict[str, float], c: Counts, patches: int,
                 baseline: dict[str, float] | None = None) -> str:
    """A printable table of pooled scores in %, beside a baseline column (e.g. ``L4S_BASELINE``) if given."""
    head = f"{'pooled over ' + str(patches) + ' patches':28s} {'slidemap':>9s}"
    if baseline:
        head += f" {'baseline':>9s}"
    lines = [head]
    for key, label in (("precision", "precision %"), ("recall", "recall %"), ("f1", "F1 %"),
                       ("iou", "IoU (landslide) %"), ("miou", "mIoU %")):
        line = f"{label:28s} {100 * s[key]:9.2f}"
        if baseline:
            line += f" {baseline[key]:9.2f}" if key in baseline else f" {'':>9s}"
        lines.append(line)
    lines.append(f"{'pixels tp/fp/fn/tn':28s} {c.tp}/{c.fp}/{c.fn}/{c.tn}")
    return "\n".join(lines)
