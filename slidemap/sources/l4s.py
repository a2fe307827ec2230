"""Landslide4Sense patch datasets: import into a chip set, predict in the submission format, evaluate.

Landslide4Sense (Ghorbanzadeh et al., 2022) ships 128x128 patches as HDF5 files: ``img/image_N.h5``
(dataset ``img``, (128, 128, 14), channels last: Sentinel-2 B1-B12 without B8A, slope, DEM) and
``mask/mask_N.h5`` (dataset ``mask``, (128, 128) uint8, 1 landslide). Importing turns a folder (or a list
of its patches) into an ordinary slidemap chip set, so ``train`` works on it unchanged; prediction writes
one ``mask_N.h5`` per patch exactly as the benchmark's own ``Predict.py`` does, so the folder can be
submitted as is; evaluation pools pixel counts over all patches, as the benchmark scores.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from slidemap.errors import UserError
from slidemap.formats.chips import ChipSet, open_arrays, write_chipset
from slidemap.formats.files import atomic_dir, require_dir, require_file
from slidemap.progress import track
from slidemap.raster.stats import RunningStats

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


@dataclass(frozen=True)
class Patch:
    """One Landslide4Sense patch: its number (N of ``image_N.h5``), image file and mask file if any."""

    number: int
    image: Path
    mask: Path | None



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
    """The image a list line names, or None.

    ``7``, ``image_7.h5``, ``img/image_7.h5`` or ``TrainData/img/image_7.h5`` (relative to ``folder``, as the
    benchmark's own lists are to its data root), or an absolute path.
    """
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
    # every image was chosen for having a number
    patches = sorted((Patch(cast(int, _number_of(p)), p, None) for p in unique.values()),
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
    stats = RunningStats(len(L4S_BANDS))
    positives = 0
    landslide_px = 0
    with atomic_dir(out, "chips.json", [folder, *([list_file] if list_file else [])], "chip set") as tmp:
        images, masks = open_arrays(tmp, len(patches), len(L4S_BANDS), L4S_SIZE, with_masks=with_masks)
        for i, patch in enumerate(track(patches, "importing patches", len(patches))):
            chip = read_image(patch.image)
            images[i] = chip
            stats.add(chip, ~np.isnan(chip))
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


def mask_name(window: dict[str, Any], index: int) -> str:
    """``image_N.h5`` -> ``mask_N.h5`` (the benchmark's naming); chips of other origin: ``mask_<id>.h5``."""
    m = _IMAGE_NAME.match(Path(str(window.get("source") or "")).name)
    return f"mask_{int(m.group(1))}.h5" if m else f"mask_{window.get('id', index)}.h5"
