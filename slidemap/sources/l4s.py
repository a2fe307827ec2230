"""Landslide4Sense patch datasets: import into a chip set, predict in the submission format, evaluate.

Landslide4Sense (Ghorbanzadeh et al., 2022) ships 128x128 patches as HDF5 files: ``img/image_N.h5``
(dataset ``img``, (128, 128, 14), channels last: Sentinel-2 B1-B12 without B8A, slope, DEM) and
``mask/mask_N.h5`` (dataset ``mask``, (128, 128) uint8, 1 landslide). Importing turns a folder (or a list
of its patches) into an ordinary slidemap chip set, so ``train`` works on it unchanged; prediction writes
one ``mask_N.h5`` per patch exactly as the benchmark's own ``Predict.py`` does, so the folder can be
submitted as is; evaluation pools pixel counts over all patches, as the benchmark scores.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slidemap.errors import UserError
from slidemap.formats.chips import ChipSet, open_arrays, write_chipset
from slidemap.formats.files import atomic_dir, atomic_file, read_json, require_dir, require_file, write_json
from slidemap.progress import track
from slidemap.raster.metrics import Counts, confusion, scores

L4S_SIZE = 128
L4S_BANDS = [f"B{i}" for i in range(1, 13)] + ["slope", "dem"]
# The dataset's own per-channel normalisation (its training split), from the benchmark's data loader.
L4S_PUBLISHED_MEAN = [-0.4914, -0.3074, -0.1277, -0.0625, 0.0439, 0.0803, 0.0644, 0.0802, 0.3000, 0.4082,
                      0.0823, 0.0516, 0.3338, 0.7819]
L4S_PUBLISHED_STD = [0.9325, 0.8775, 0.8860, 0.8869, 0.8857, 0.8418, 0.8354, 0.8491, 0.9061, 1.6072, 0.8848,
                     0.9232, 0.9018, 1.2913]
# The benchmark's published U-Net baseline on its validation split (245 patches), in %.
L4S_BASELINE = {"precision": 51.75, "recall": 65.50, "f1": 57.82}

_NUMBER = re.compile(r"^(?:image_|mask_)?(\d+)(?:\.h5)?$")
_IMAGE_NAME = re.compile(r"^image_(\d+)\.h5$")
PREVIEW_RGB = ("B4", "B3", "B2")


@dataclass(frozen=True)
class Patch:
    """One Landslide4Sense patch: its number (N of ``image_N.h5``), image file and mask file if any."""

    number: int
    image: Path
    mask: Path | None

    @property
    def mask_name(self) -> str:
        """File name of this patch's mask in the benchmark's submission format."""
        return f"mask_{self.number}.h5"


# --- reading and writing the HDF5 files -----------------------------------------------------------------

def _read_dataset(path: Path, name: str, what: str) -> np.ndarray:
    """Read dataset ``name`` of an HDF5 file; an unreadable file or a missing dataset is a UserError."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if name not in f or not isinstance(f[name], h5py.Dataset):
                found = ", ".join(sorted(f.keys())) or "nothing"
                raise UserError(f"{what} {path}: no dataset '{name}' (holds {found}); not a Landslide4Sense "
                                f"{'image' if name == 'img' else 'mask'} file")
            return f[name][()]
    except UserError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        reason = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        raise UserError(f"{what} {path}: corrupt or truncated HDF5 ({reason}); copy the file again") from None


def read_image(path: str | Path) -> np.ndarray:
    """A Landslide4Sense image as float32 (14, 128, 128), channels first like every slidemap chip."""
    path = Path(path)
    data = _read_dataset(path, "img", "image")
    if data.shape != (L4S_SIZE, L4S_SIZE, len(L4S_BANDS)):
        raise UserError(f"image {path}: dataset 'img' has shape {data.shape}, expected "
                        f"({L4S_SIZE}, {L4S_SIZE}, {len(L4S_BANDS)}) (rows, cols, channels: "
                        f"B1-B12, slope, dem)")
    if data.dtype.kind not in "fiu":
        raise UserError(f"image {path}: dataset 'img' has type {data.dtype}, expected numbers")
    return np.ascontiguousarray(np.moveaxis(data, -1, 0), dtype=np.float32)


def read_mask(path: str | Path, what: str = "mask") -> np.ndarray:
    """A Landslide4Sense mask as uint8 (128, 128): 1 landslide, 0 background (255 kept as nodata)."""
    path = Path(path)
    data = _read_dataset(path, "mask", what)
    if data.shape != (L4S_SIZE, L4S_SIZE):
        raise UserError(f"{what} {path}: dataset 'mask' has shape {data.shape}, expected "
                        f"({L4S_SIZE}, {L4S_SIZE})")
    if data.dtype.kind not in "biuf" or not np.isin(data, (0, 1, 255)).all():
        raise UserError(f"{what} {path}: dataset 'mask' holds values other than 0 and 1; expected a "
                        f"landslide mask (1 landslide, 0 background)")
    return data.astype(np.uint8)


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a 0/1 mask in the benchmark's submission format: dataset ``mask``, (128, 128) uint8."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("mask", data=np.asarray(mask, dtype=np.uint8))


# --- finding the patches ----------------------------------------------------------------------------------

def _mask_for(image: Path, number: int) -> Path:
    """Where the benchmark keeps the mask of ``image``: ``img/image_N.h5`` -> ``mask/mask_N.h5``."""
    folder = image.parent.parent / "mask" if image.parent.name == "img" else image.parent
    return folder / f"mask_{number}.h5"


def _number_of(image: Path) -> int | None:
    m = _IMAGE_NAME.match(image.name)
    return int(m.group(1)) if m else None


def _resolve_entry(folder: Path, entry: str) -> Path | None:
    """The image a list line names: ``7``, ``image_7.h5``, ``img/image_7.h5`` or ``TrainData/img/image_7.h5``
    (relative to ``folder``, as the benchmark's own lists are to its data root), or an absolute path."""
    p = Path(entry)
    candidates = [p] if p.is_absolute() else [folder / entry.lstrip("/")]
    m = _NUMBER.match(p.name)
    if m:
        candidates.append(folder / "img" / f"image_{int(m.group(1))}.h5")
    for c in candidates:
        if c.is_file() and _number_of(c) is not None:
            return c
    return None


def _read_list(folder: Path, list_file: Path) -> list[Path]:
    require_file(list_file, "--list")
    try:
        lines = list_file.read_text().splitlines()
    except UnicodeDecodeError:
        raise UserError(f"--list {list_file}: not a text file; give one patch name per line") from None
    images, missing = [], []
    for n, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        image = _resolve_entry(folder, entry)
        if image is None:
            missing.append((n, entry))
        else:
            images.append(image)
    if missing:
        n, entry = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"--list {list_file}: line {n} '{entry}' names no image_N.h5 under {folder}{more}; "
                        f"fix the list or give the folder it is relative to")
    if not images:
        raise UserError(f"--list {list_file}: names no patches; give one name per line (e.g. img/image_1.h5)")
    return images


def find_patches(folder: str | Path, list_file: str | Path | None = None) -> list[Patch]:
    """The patches of a Landslide4Sense folder (or of its ``list_file``), sorted by number.

    Masks are all present or all absent (a test split); a mix means files are missing, which is an error
    rather than a silently smaller training set.
    """
    folder = require_dir(folder, "FOLDER")
    if list_file is not None:
        images = _read_list(folder, Path(list_file))
    else:
        if not (folder / "img").is_dir():
            raise UserError(f"FOLDER {folder}: no img/ folder; give a Landslide4Sense folder holding "
                            f"img/image_N.h5 (and mask/mask_N.h5)")
        images = [p for p in (folder / "img").iterdir() if p.is_file() and _number_of(p) is not None]
        if not images:
            raise UserError(f"FOLDER {folder}/img: holds no image_N.h5 files; give a Landslide4Sense folder")
    unique = {p.resolve(): p for p in images}
    patches = sorted((Patch(_number_of(p), p, None) for p in unique.values()),
                     key=lambda q: (q.number, str(q.image)))
    for a, b in zip(patches, patches[1:], strict=False):
        if a.number == b.number:
            raise UserError(f"FOLDER {folder}: {a.image} and {b.image} share number {a.number}; import each "
                            f"split separately (prediction names its masks by number)")
    masks = [_mask_for(p.image, p.number) for p in patches]
    present = [m.is_file() for m in masks]
    if any(present) and not all(present):
        i = present.index(False)
        raise UserError(f"image {patches[i].image}: its mask {masks[i]} is missing while other images have "
                        f"masks; restore it, or remove the image from the list")
    if all(present):
        patches = [Patch(p.number, p.image, m) for p, m in zip(patches, masks, strict=True)]
    return patches


# --- statistics ---------------------------------------------------------------------------------------

class _BandStats:
    """Streaming per-band mean/std/min/max over non-NaN values (Chan's pairwise update, float64)."""

    def __init__(self, bands: int):
        self.n = np.zeros(bands)
        self.mean = np.zeros(bands)
        self.m2 = np.zeros(bands)
        self.min = np.full(bands, np.inf)
        self.max = np.full(bands, -np.inf)

    def add(self, chip: np.ndarray) -> None:
        x = chip.reshape(chip.shape[0], -1).astype(np.float64)
        ok = ~np.isnan(x)
        n = ok.sum(axis=1).astype(np.float64)
        if not n.any():
            return
        xz = np.where(ok, x, 0.0)
        mean = np.divide(xz.sum(axis=1), n, out=np.zeros_like(n), where=n > 0)
        m2 = (np.where(ok, x - mean[:, None], 0.0) ** 2).sum(axis=1)
        total = self.n + n
        delta = mean - self.mean
        frac = np.divide(n, total, out=np.zeros_like(n), where=total > 0)
        self.mean = self.mean + delta * frac
        self.m2 = self.m2 + m2 + delta**2 * self.n * frac
        self.n = total
        self.min = np.minimum(self.min, np.where(n > 0, np.nanmin(np.where(ok, x, np.inf), axis=1), np.inf))
        self.max = np.maximum(self.max, np.where(n > 0, np.nanmax(np.where(ok, x, -np.inf), axis=1), -np.inf))

    def as_dict(self, names: Sequence[str]) -> dict[str, dict[str, float | None]]:
        out = {}
        for i, name in enumerate(names):
            if self.n[i] == 0:  # a band that is all nodata: standardise it to zero, say so with None
                out[name] = {"mean": 0.0, "std": 1.0, "min": None, "max": None}
            else:
                out[name] = {"mean": float(self.mean[i]), "std": float(np.sqrt(self.m2[i] / self.n[i])),
                             "min": float(self.min[i]), "max": float(self.max[i])}
        return out


def published_band_stats() -> dict[str, dict[str, float]]:
    """The dataset's published per-band mean/std (over its training split), keyed by band name."""
    return {b: {"mean": m, "std": s} for b, m, s in zip(L4S_BANDS, L4S_PUBLISHED_MEAN, L4S_PUBLISHED_STD,
                                                        strict=True)}


# --- import -------------------------------------------------------------------------------------------

def import_l4s(folder: str | Path, out: str | Path, list_file: str | Path | None = None,
               published_stats: bool = False) -> ChipSet:
    """Import Landslide4Sense patches into a chip set at ``out`` (images float32 channels first, masks uint8).

    Statistics are computed from the imported patches by default, so a model trained on a subset or on
    another split sees its own data's distribution; ``published_stats`` uses the dataset's published
    mean/std instead (min/max are always the imported data's). Every file is checked before ``out`` is
    replaced, and a bad one is a one-line error naming it.
    """
    patches = find_patches(folder, list_file)
    with_masks = patches[0].mask is not None
    stats = _BandStats(len(L4S_BANDS))
    positives = 0
    landslide_px = 0
    with atomic_dir(out, "chips.json", [folder, *([list_file] if list_file else [])], "chip set") as tmp:
        images, masks = open_arrays(tmp, len(patches), len(L4S_BANDS), L4S_SIZE, with_masks=with_masks)
        for i, patch in enumerate(track(patches, "importing patches", len(patches))):
            chip = read_image(patch.image)
            images[i] = chip
            stats.add(chip)
            if masks is not None:
                m = read_mask(patch.mask)
                masks[i] = m
                count = int(np.count_nonzero(m == 1))
                landslide_px += count
                positives += count > 0
        images.flush()
        if masks is not None:
            masks.flush()
        band_stats = stats.as_dict(L4S_BANDS)
        if published_stats:
            for name, pub in published_band_stats().items():
                band_stats[name].update(pub)
        windows = [{"id": i, "size": L4S_SIZE, "source": p.image.name} for i, p in enumerate(patches)]
        summary: dict[str, Any] = {"patches": len(patches), "masks": with_masks}
        if with_masks:
            summary.update(positive_patches=positives,
                           landslide_fraction=round(landslide_px / (len(patches) * L4S_SIZE**2), 6))
        meta = {
            "bands": L4S_BANDS,
            "stats": band_stats,
            "stats_source": "published" if published_stats else "imported",
            "size": L4S_SIZE,
            "count": len(patches),
            "sampler": {"method": "l4s-import", "list": str(Path(list_file).resolve()) if list_file else None,
                        "source": str(Path(folder).resolve())},
            "scene": None,
            "summary": summary,
        }
        write_chipset(tmp, images, masks, windows, meta)
        del images, masks  # close the memmaps before the folder is renamed
    return ChipSet(out)


# --- predict --------------------------------------------------------------------------------------------

def _mask_name(window: dict[str, Any], index: int) -> str:
    """``image_N.h5`` -> ``mask_N.h5`` (the benchmark's naming); chips of other origin: ``mask_<id>.h5``."""
    m = _IMAGE_NAME.match(Path(str(window.get("source") or "")).name)
    return f"mask_{int(m.group(1))}.h5" if m else f"mask_{window.get('id', index)}.h5"


def _band_selection(bundle_bands: Sequence[str], chips: ChipSet, model: Path) -> list[int]:
    """Indexes of the bundle's bands in the chip set; a missing band is a one-line error naming it."""
    missing = [b for b in bundle_bands if b not in chips.bands]
    if missing:
        extra = [b for b in chips.bands if b not in bundle_bands]
        raise UserError(f"--chips {chips.path}: lacks band(s) {', '.join(missing)} that model {model} was "
                        f"trained on" + (f" (it has extra {', '.join(extra)})" if extra else "")
                        + "; import or sample the chips with those bands")
    return [chips.bands.index(b) for b in bundle_bands]


def _bundle_norm(meta: dict[str, Any], model: Path) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (shape (C, 1, 1)) of the bundle's bands, from the statistics it was trained with."""
    stats = meta.get("stats") or {}
    mean, std = [], []
    for b in meta["bands"]:
        s = stats.get(b)
        if not s or s.get("mean") is None or s.get("std") is None:
            raise UserError(f"MODEL {model}: bundle has no statistics for band {b}; train it again")
        mean.append(float(s["mean"]))
        std.append(float(s["std"]) if float(s["std"]) > 0 else 1.0)
    return (np.asarray(mean, np.float32)[:, None, None], np.asarray(std, np.float32)[:, None, None])


def _outline(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    m = mask.astype(bool)
    return m & ~binary_erosion(m, border_value=0)


def _preview(chip: np.ndarray, bands: Sequence[str], pred: np.ndarray, truth: np.ndarray | None,
             path: Path) -> None:
    """RGB (B4/B3/B2, 2-98 % stretch per band) at 2x, predicted outline red, true outline cyan."""
    import matplotlib.image

    idx = [bands.index(b) for b in PREVIEW_RGB] if all(b in bands for b in PREVIEW_RGB) else [0, 0, 0]
    rgb = np.moveaxis(np.asarray(chip[idx], np.float64), 0, -1)
    rgb = np.nan_to_num(rgb, nan=np.nanmin(rgb) if np.isfinite(rgb).any() else 0.0)
    lo, hi = np.percentile(rgb, 2, axis=(0, 1)), np.percentile(rgb, 98, axis=(0, 1))  # per channel
    img = np.clip((rgb - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)
    img = img.repeat(2, axis=0).repeat(2, axis=1)
    if truth is not None:
        img[_outline((truth == 1).repeat(2, axis=0).repeat(2, axis=1))] = (0.0, 1.0, 1.0)
    img[_outline(pred.astype(bool).repeat(2, axis=0).repeat(2, axis=1))] = (1.0, 0.1, 0.1)
    matplotlib.image.imsave(path, (img * 255).astype(np.uint8))


def _preview_indexes(n: int, previews: int) -> list[int]:
    if previews <= 0 or n == 0:
        return []
    if n <= previews:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, previews)})


def predict_patches(model: str | Path, chips: str | Path, out: str | Path, threshold: str | float = "best",
                    batch_size: int = 4, device: str = "auto", evaluate: bool = False,
                    previews: int = 24, precision: str = "auto") -> dict[str, Any]:
    """Predict every patch of a chip set with a model bundle; write ``mask_N.h5`` files into ``out``.

    The masks are in the benchmark's submission format (dataset ``mask``, (128, 128) uint8, 0/1, named
    after the image numbers), so ``out`` can be zipped and submitted. Inputs are standardised with the
    *bundle's* statistics (those the network was trained with), never the chip set's; nodata (NaN)
    becomes 0 after standardisation, i.e. the training mean. ``previews`` PNGs (evenly spread over the
    patches) go to ``out/previews``; ``evaluate`` also scores against the chip set's masks. The network
    runs as in whole-scene prediction (`slidemap.stages.predict.TileRunner`: device, ``precision``).
    """
    from slidemap.nn.bundle import load_bundle
    from slidemap.stages.predict import TileRunner

    bundle = load_bundle(model)
    model = Path(model)
    chipset = ChipSet(chips, "--chips")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    th = bundle.threshold(threshold)
    idx = _band_selection(bundle.bands, chipset, model)
    mean, std = _bundle_norm(bundle.meta, model)
    runner = TileRunner(bundle.build_model(), device, precision)
    n = len(chipset)
    names = [_mask_name(w, i) for i, w in enumerate(chipset.windows)] if chipset.windows else \
        [f"mask_{i}.h5" for i in range(n)]
    if len(names) != n or len(set(names)) != n:
        raise UserError(f"--chips {chipset.path}: windows.csv does not name each chip once; import it again")
    show = set(_preview_indexes(n, previews))
    positive_px = 0
    with atomic_dir(out, "prediction.json", [model, chipset.path], "prediction") as tmp:
        (tmp / "previews").mkdir()
        for start in track(range(0, n, batch_size), "predicting patches", -(-n // batch_size)):
            stop = min(start + batch_size, n)
            raw = np.asarray(chipset.images[start:stop], dtype=np.float32)[:, idx]
            x = np.nan_to_num((raw - mean) / std, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
            prob = runner(x)
            for k, i in enumerate(range(start, stop)):
                pred = (prob[k] >= th).astype(np.uint8)
                positive_px += int(pred.sum())
                write_mask(tmp / names[i], pred)
                if i in show:
                    truth = None if chipset.masks is None else np.asarray(chipset.masks[i])
                    png = tmp / "previews" / f"{Path(names[i]).stem}.png"
                    _preview(raw[k], bundle.bands, pred, truth, png)
        write_json(tmp / "prediction.json", {
            "kind": "patches", "chips": str(chipset.path.resolve()), "model": str(model.resolve()),
            "threshold": th, "threshold_choice": str(threshold), "bands": bundle.bands, "count": n,
            "masks": names, "sources": [w.get("source", "") for w in chipset.windows],
            "landslide_pixels": positive_px, "device": str(runner.device), "precision": runner.precision,
        })
    result: dict[str, Any] = {"out": str(out), "patches": n, "threshold": round(th, 4),
                              "previews": len(show), "landslide_pixels": positive_px}
    if evaluate:
        if chipset.masks is None:
            raise UserError(f"--evaluate: chip set {chipset.path} has no masks to evaluate against; drop "
                            f"--evaluate (masks were written to {out})")
        result.update(evaluate_patches(out, chipset.path))
    return result


# --- evaluate -------------------------------------------------------------------------------------------

def evaluate_patches(pred: str | Path, chips: str | Path) -> dict[str, Any]:
    """Score predicted ``mask_N.h5`` files against a chip set's masks, pooling pixel counts over all patches.

    Pooling (one confusion matrix over every pixel, then the scores) is how Landslide4Sense scores, and
    it keeps the many all-background patches from dominating as a per-patch mean would. Writes
    ``metrics.json`` (pooled counts and scores) and ``metrics.csv`` (one row per patch) into ``pred``.
    """
    pred = require_dir(pred, "PRED", marker="prediction.json", what="prediction folder")
    info = read_json(pred / "prediction.json", "PRED")
    if info.get("kind") != "patches":
        raise UserError(f"PRED {pred}: a scene prediction, not a patch prediction; evaluate it against its "
                        f"scene folder")
    chipset = ChipSet(chips, "--truth")
    if chipset.masks is None:
        raise UserError(f"--truth {chipset.path}: chip set has no masks (imported without mask/); give one "
                        f"with masks")
    n = len(chipset)
    names = info.get("masks") or [_mask_name(w, i) for i, w in enumerate(chipset.windows)]
    sources = [w.get("source", "") for w in chipset.windows]
    if len(names) != n or (info.get("sources") and info["sources"] != sources):
        raise UserError(f"--truth {chipset.path}: does not hold the {len(names)} patches PRED {pred} was "
                        f"predicted from; give that chip set")
    total = Counts()
    rows = []
    for i, name in enumerate(names):
        path = pred / name
        if not path.is_file():
            raise UserError(f"PRED {path}: missing; predict the chip set again")
        p = read_mask(path, "PRED")
        c = confusion(p, np.asarray(chipset.masks[i]))
        total = total + c
        s = scores(c)
        rows.append({"id": i, "source": sources[i] if i < len(sources) else "", "mask": name, **c.as_dict(),
                     **{k: round(s[k], 6) for k in ("precision", "recall", "f1", "iou")}})
    pooled = scores(total)
    with atomic_file(pred / "metrics.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    write_json(pred / "metrics.json", {"kind": "patches", "pooling": "pixels over all patches",
                                       "chips": str(chipset.path.resolve()), "patches": n,
                                       "threshold": info.get("threshold"), "counts": total.as_dict(),
                                       "scores": pooled})
    return {"table": format_table(pooled, total, n), **{k: round(v, 6) for k, v in pooled.items()},
            "metrics_json": str(pred / "metrics.json"), "metrics_csv": str(pred / "metrics.csv")}


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
