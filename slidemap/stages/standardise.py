"""Whose statistics standardise a model's input: the training area's, or (``standardise: scene``) each input's own.

A bundle trained with ``standardise: training`` (the default) standardises every input with the train area's
mean and std it carries (``Bundle.normaliser``). A bundle trained with ``scene`` saw each chip set standardised
with its own statistics (those of the scene it was cut from), so each input is standardised with its own too: a
sensor's other gain and offset, or other illumination, move the statistics with the pixels, and the network sees
the same standardised values.

- a scene, or one ``--area`` of it: the mean and std over the region predicted, over the pixels with a value in
  every band the model uses (and inside the area). They come from scene.json where prepare measured them over
  the same pixels (a scene prepared without areas, predicted whole, and so bare images), else from a first pass
  over the region's rows, which reads the bands once more but costs little beside the network;
- a patch set (``--chips``): the chip set's own statistics (chips.json);
- nodata (NaN) never counts; a band of zero or unknown spread is only centred (``Normaliser.from_stats``).

The choice and the numbers are recorded in prediction.json (:class:`slidemap.formats.prediction.Standardisation`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from rasterio.windows import Window

from slidemap.formats.chips import ChipSet
from slidemap.formats.gdal import open_raster, read_block
from slidemap.formats.prediction import Standardisation, StatsSource
from slidemap.formats.scene import Scene
from slidemap.nn.bundle import Bundle
from slidemap.nn.normalise import Normaliser
from slidemap.raster.stats import RunningStats

PASS_BYTES = 32 << 20
"""Float32 bytes of bands read at once by the statistics pass (rows of the region's whole width)."""


# --- training ------------------------------------------------------------------------------------------------

def training_normalisers(chipsets: Sequence[ChipSet], bands: list[str],
                         standardise: str) -> tuple[Normaliser, list[Normaliser]]:
    """The statistics a run records in its bundle, and those each chip set's chips are standardised with.

    The recorded ones are the chip set's, or for several chip sets (sites) their statistics pooled (weighted by
    each site's valid pixel count). ``training``: every chip set is standardised with them; ``scene``: each with
    its own.
    """
    own = [Normaliser.from_stats(bands, c.stats, f"CHIPS {c.path}: chips.json", "sample it again")
           for c in chipsets]
    if len(chipsets) == 1:
        pooled = own[0]
    else:
        weights = np.array([[_count(c, b) for b in bands] for c in chipsets], dtype=np.float64)
        pooled = Normaliser.pooled(own, weights, f"CHIPS {chipsets[0].path}: chips.json", "sample it again")
    return pooled, own if standardise == "scene" else [pooled] * len(chipsets)


def _count(chipset: ChipSet, band: str) -> float:
    count = getattr(chipset.stats[band], "count", None)
    if count:
        return float(count)
    return float(np.count_nonzero(np.asarray(chipset.masks) != 255)) or 1.0


# --- prediction ----------------------------------------------------------------------------------------------

def _record(bundle: Bundle, source: StatsSource, normalise: Normaliser) -> Standardisation:
    return Standardisation(standardise=bundle.meta.standardise, source=source,
                           stats={b: {k: float(f"{v:.7g}") for k, v in s.items()}
                                  for b, s in normalise.as_stats().items()})


def scene_normaliser(bundle: Bundle, scene: Scene, band_idx: list[int], window: Window,
                     inside: Callable[[Window], np.ndarray | None], area: str | None,
                     where: str) -> tuple[Normaliser, Standardisation]:
    """The standardisation of a region of ``scene`` (``window``, ``band_idx`` 1-based in the bundle's order).

    ``inside(block)`` says which pixels of a block of the region (a window relative to it) lie in ``area`` (None:
    all). A region without a valid pixel has nothing to standardise: it keeps the bundle's statistics.
    """
    if bundle.meta.standardise == "training":
        return bundle.normaliser(), _record(bundle, "bundle", bundle.normaliser())
    if area is None and scene.meta.stats_over == "all":  # prepare measured the very pixels predicted
        normalise = Normaliser.from_stats(bundle.bands, scene.stats, f"{where}: scene.json",
                                          "prepare the scene again")
        return normalise, _record(bundle, "scene.json", normalise)
    stats = _region_stats(scene, band_idx, window, inside)
    if not stats.n.any():
        return bundle.normaliser(), _record(bundle, "bundle", bundle.normaliser())
    normalise = Normaliser.from_stats(bundle.bands, stats.as_dict(bundle.bands), where, "give a region with imagery")
    return normalise, _record(bundle, "region", normalise)


def _region_stats(scene: Scene, band_idx: list[int], window: Window,
                  inside: Callable[[Window], np.ndarray | None]) -> RunningStats:
    """Per-band statistics of the region's pixels that hold a value in every band (and lie inside the area)."""
    width, height = int(window.width), int(window.height)
    row0, col0 = int(window.row_off), int(window.col_off)
    rows = max(1, PASS_BYTES // max(1, 4 * width * len(band_idx)))
    stats = RunningStats(len(band_idx))
    name = f"--scene {scene.path}: stack.tif"
    with open_raster(scene.stack_path, name, need_crs=False) as src:
        for r0 in range(0, height, rows):
            h = min(rows, height - r0)
            raw = read_block(src, name, band_idx, Window(col0, row0 + r0, width, h), "float32")
            # the pixels predict predicts: a value in every band (prepare blanks all bands at nodata)
            valid = np.isfinite(raw).all(axis=0)
            keep = inside(Window(0, r0, width, h))
            if keep is not None:
                valid &= keep
            raw[:, ~valid] = np.nan
            stats.add_finite(raw)
    return stats


def patch_normaliser(bundle: Bundle, chipset: ChipSet, where: str) -> tuple[Normaliser, Standardisation]:
    """The standardisation of a patch set: the bundle's, or for a ``scene`` bundle the chip set's own statistics."""
    if bundle.meta.standardise == "training":
        return bundle.normaliser(), _record(bundle, "bundle", bundle.normaliser())
    normalise = Normaliser.from_stats(bundle.bands, chipset.stats, f"{where}: chips.json",
                                      "import or sample it again")
    return normalise, _record(bundle, "chips.json", normalise)
