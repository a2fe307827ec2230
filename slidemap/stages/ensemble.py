"""Ensembles of models and the uncertainty map: ``slidemap predict RUN_A RUN_B ... --scene S --out P``.

**The ensemble's rule** (written down here only; ``--help`` and the docs point to it):

- *members*: the bundles (or run folders) given, in order. They must take the same input: the same bands in
  the same order, the same patch size, the same recipe of preparation (what ``predict --image`` redoes) and
  the same kind of standardisation; the first difference is a one-line UserError naming the member and what
  differs. The same model may be given twice.
- *probability*: the mean over the members of their probabilities, tile by tile, before thresholding; each
  member standardises the raw tile with its own bundle's statistics (members trained on different chip sets
  have different normalisers; ``slidemap.nn.inference.MemberAverage``), or, members trained with
  ``standardise: scene``, all with the input's own statistics (``slidemap.stages.standardise``). With
  ``--tta`` every member sees every symmetry, and each view (member x symmetry) counts once.
- *threshold*: the mean of the members' thresholds, each chosen as the member alone would choose it (its
  learned post-processing's threshold, else its validation-F1 optimum); ``--threshold`` applies to each member
  the same way (``best``: the mean of their optima; a number: that number).
- *post-processing* (opening, closing, hole filling, minimum size): the first member's, unless ``--min-area``
  or ``--postprocess`` say otherwise; the domain-shift guard and prediction.json's ``bundle`` describe the
  first member too, and ``ensemble`` lists them all with their thresholds.

**uncertainty.tif** is written beside probability.tif whenever a scene's probability is a mean of several
views (two or more members, or ``--tta`` > 1): the population standard deviation of the views' probabilities
(0 where they agree; at most 0.5), tile by tile, blended across tile overlaps with the probability's weights;
uint8 ``round(std * 254)`` with scale 1/254 on the band (a GIS shows 0-0.5), 255 nodata, tiled, compressed,
with overviews and ``uncertainty.qml``. The standard deviation rather than max - min: it uses every view, so
it does not grow merely because more views were drawn.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling

from slidemap.errors import UserError
from slidemap.formats.gdal import RowWriter, build_overviews, gtiff_profile
from slidemap.formats.prediction import EnsembleInfo, UncertaintyInfo
from slidemap.formats.scene import Recipe
from slidemap.nn.bundle import Bundle, load_bundle
from slidemap.nn.inference import MemberAverage
from slidemap.raster.postprocess import Decision
from slidemap.stages.maps import describe_uncertainty
from slidemap.stages.runners import Runner, build_runner

UNCERTAINTY = "uncertainty.tif"
NODATA = 255


# --- members -------------------------------------------------------------------------------------------

def load_members(model: Path | Bundle | Sequence[Path | Bundle]) -> list[Bundle]:
    """The bundles of ``MODEL`` (one, or an ensemble's), each loaded once and checked to take the same input."""
    given = [model] if isinstance(model, str | Path | Bundle) else list(model)
    if not given:
        raise UserError("MODEL: give at least one model bundle or run folder")
    members = [m if isinstance(m, Bundle) else load_bundle(m, "MODEL") for m in given]
    check_members(members)
    return members


def check_members(members: Sequence[Bundle]) -> None:
    """Every member takes the first one's input: bands (in order), patch size, recipe, standardisation."""
    first = members[0]
    for m in members[1:]:
        what = _difference(first, m)
        if what:
            raise UserError(f"MODEL {m.name}: {what} (MODEL {first.name}); an ensemble's members must take the same "
                            f"input")


def _difference(first: Bundle, other: Bundle) -> str | None:
    """The first way ``other`` takes another input than ``first``, in words; None when they take the same."""
    if other.bands != first.bands:
        return f"its bands {','.join(other.bands)} differ from the first member's {','.join(first.bands)}"
    if other.patch_size != first.patch_size:
        return f"its patch size {other.patch_size} px differs from the first member's {first.patch_size} px"
    if other.meta.standardise != first.meta.standardise:
        return (f"it standardises with the {other.meta.standardise} statistics, the first member with the "
                f"{first.meta.standardise} ones")
    # no recipe (an older bundle) prepares bare images by the band names alone, as the default recipe does
    a, b = ((x.meta.recipe or Recipe()).model_dump() for x in (first, other))
    for key in a:
        if a[key] != b[key]:
            return f"its recipe of preparation has {key} {b[key]}, the first member's {a[key]}"
    return None


def build_members_runner(members: Sequence[Bundle], device: str = "auto", precision: str = "auto",
                         engine: str = "torch", onnx_model: Path | None = None) -> tuple[Runner, dict[str, Any]]:
    """The runner of one model (``build_runner``), or an ensemble's: each member's runner and normaliser averaged.

    Returns the runner and what prediction.json records of it (the first member's engine choice, with
    ``members``).
    """
    if len(members) == 1:
        return build_runner(members[0], device, precision, engine, onnx_model)
    if onnx_model is not None:
        raise UserError(f"--onnx-model {onnx_model}: names one model's export; an ensemble runs each member's "
                        f"export found beside its bundle, so leave --onnx-model out")
    built = [build_runner(m, device, precision, engine) for m in members]
    # members standardised by each input's own statistics share one standardisation (check_members), applied
    # before the ensemble as for one model; the others each take their own bundle's
    own = members[0].meta.standardise == "training"
    runner = MemberAverage([r for r, _ in built], [m.normaliser() for m in members] if own else None)
    return runner, {**built[0][1], "members": len(members)}


def mean_threshold(decisions: Sequence[Decision]) -> Decision:
    """The ensemble's decision: the first member's, cut at the mean of the members' thresholds."""
    if len(decisions) == 1:
        return decisions[0]
    mean = float(np.mean([d.threshold for d in decisions]))
    return dataclasses.replace(decisions[0], threshold=mean)


def ensemble_info(members: Sequence[Bundle], decisions: Sequence[Decision]) -> EnsembleInfo | None:
    """What prediction.json records of an ensemble (None for one model)."""
    if len(members) < 2:
        return None
    return EnsembleInfo(members=[m.name for m in members], thresholds=[d.threshold for d in decisions],
                        postprocess_from=members[0].name)


# --- the uncertainty map -------------------------------------------------------------------------------

def uncertainty_info(members: int, symmetries: int) -> UncertaintyInfo:
    """What prediction.json records of uncertainty.tif."""
    return UncertaintyInfo(members=members, symmetries=symmetries, views=members * symmetries, definition=(
        "population standard deviation of the probabilities of every view (member x symmetry) of a tile, "
        "blended across tile overlaps with the probability's weights; uint8 round(std * 254), scale 1/254, "
        "255 nodata"))


class UncertaintyMap:
    """``uncertainty.tif`` written row by row: uint8 ``round(std * 254)``, 255 where a pixel is nodata.

    A context manager: leaving it without an error closes the file and builds its overviews.
    """

    def __init__(self, path: Path, width: int, height: int, crs: CRS, transform: Affine) -> None:
        self.path, self.size = path, (width, height)
        self.ds = rasterio.open(path, "w", **gtiff_profile(width, height, 1, "uint8", crs, transform,
                                                           nodata=NODATA))
        describe_uncertainty(self.ds)
        self.out = RowWriter(self.ds)

    def write(self, spread: np.ndarray, valid: np.ndarray) -> None:
        """Add the next rows: ``spread`` (h, w) float, ``valid`` (h, w) bool."""
        q = np.rint(np.clip(spread, 0, 1) * 254).astype(np.uint8)
        q[~valid] = NODATA
        self.out.write(q)

    def __enter__(self) -> UncertaintyMap:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if kind is None:
            self.out.close()
        self.ds.close()
        if kind is None:
            build_overviews(self.path, Resampling.average, self.size)
