"""The prediction folder's description (``prediction.json``) and the evaluation written into it.

A scene prediction folder holds ``probability.tif``, ``mask.tif``, ``landslides.gpkg`` and
``prediction.json`` (:class:`ScenePrediction`; with ``outputs`` "mask" only the mask and the JSON); a patch
prediction holds one ``mask_N.h5`` per patch and ``prediction.json`` (:class:`PatchPrediction`). A scene
prediction that averaged several views (an ensemble, ``--tta``) also holds ``uncertainty.tif``
(:class:`UncertaintyInfo`).
``evaluate`` adds error maps, ``metrics.csv`` and, last, ``metrics.json`` (:class:`SceneMetrics` or
:class:`PatchMetrics`): its presence means the evaluation is complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from slidemap.errors import UserError
from slidemap.formats.base import Record, Sidecar
from slidemap.formats.bundle import Standardise
from slidemap.formats.files import read_json


class Threshold(Record):
    """The probability cut a scene mask was made with; ``which``: the bundle key it came from, or "given"."""

    value: float = Field(ge=0, le=1)
    which: str = "given"


StatsSource = Literal["bundle", "scene.json", "region", "chips.json"]
"""Where the statistics that standardised an input came from (see :class:`Standardisation`)."""


class Standardisation(Record):
    """The statistics the input was standardised with (``slidemap.stages.standardise``).

    ``standardise`` is the bundle's kind; ``source`` where the numbers came from: ``bundle`` (the training
    area's), ``scene.json`` (prepare's, over the same pixels as the region predicted), ``region`` (measured over
    the region predicted) or ``chips.json`` (the patch set's own).
    """

    standardise: Standardise = "training"
    source: StatsSource = "bundle"
    stats: dict[str, dict[str, float]] = {}


class EnsembleInfo(Record):
    """An ensemble's members and how their decision was made (``slidemap.stages.ensemble`` states the rule)."""

    members: list[str] = Field(min_length=2)  # the bundles, in the order given; the first's post-processing
    thresholds: list[float] = []  # each member's threshold as it would predict alone
    threshold_rule: str = "mean of the members' thresholds"
    postprocess_from: str = ""


class UncertaintyInfo(Record):
    """What ``uncertainty.tif`` holds: the spread of the probabilities over the views of each tile."""

    file: str = "uncertainty.tif"
    measure: Literal["std"] = "std"
    definition: str = ""
    members: int = Field(1, ge=1)
    symmetries: int = Field(1, ge=1)
    views: int = Field(2, ge=2)  # members x symmetries
    dtype: str = "uint8"
    scale: float = 1 / 254
    nodata: int = 255


class ScenePrediction(Sidecar):
    """``prediction.json`` of a scene (or one area of it, or bare images)."""

    REDO = "predict again"

    format: str = "slidemap.prediction"
    kind: Literal["scene"] = "scene"
    model: str
    bundle: dict[str, Any] = {}
    scene: str | None = None
    images: list[str] | None = None
    dem: str | None = None
    pre_images: list[str] | None = None
    area: str | None = None
    window: dict[str, int] = {}
    crs: str
    transform: list[float] = Field(min_length=6)
    threshold: Threshold
    postprocess: dict[str, Any] = {}  # what turned probabilities into the mask (slidemap.raster.postprocess)
    input_stats: dict[str, dict[str, Any]] = {}  # per band, over the pixels read (the domain-shift guard)
    shift_warnings: list[str] = []
    standardisation: Standardisation | None = None  # None: written before slidemap recorded it
    tile: int = Field(gt=0)
    overlap: int = Field(ge=0)
    blend_margin: int = Field(ge=0)
    batch_size: int = Field(gt=0)
    device: str
    precision: str
    engine: str = "torch"
    engine_choice: dict[str, Any] = {}
    probability_dtype: Literal["uint8", "float32"] = "uint8"
    min_area_m2: float = Field(0.0, ge=0)
    connectivity: int = 4
    outputs: Literal["all", "mask"] = "all"  # "mask": no probability.tif, landslides.gpkg or styles
    ensemble: EnsembleInfo | None = None  # several models averaged (``model`` and ``bundle``: the first)
    uncertainty: UncertaintyInfo | None = None  # uncertainty.tif, written where views were averaged
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    landslides: int = Field(ge=0)
    landslide_km2: float = Field(ge=0)
    valid_km2: float = Field(ge=0)
    dropped_specks: int = 0
    dropped_specks_km2: float = 0.0
    timings_s: dict[str, float] = {}
    seconds: float | None = None
    mpx: float | None = None
    mpx_per_s: float | None = None


class PatchPrediction(Sidecar):
    """``prediction.json`` of a patch set (one ``mask_N.h5`` per patch, Landslide4Sense's format)."""

    REDO = "predict the chip set again"

    format: str = "slidemap.patch_prediction"
    kind: Literal["patches"] = "patches"
    chips: str
    chips_sha256: str = ""
    model: str
    threshold: float = Field(ge=0, le=1)
    threshold_choice: str = ""
    postprocess: dict[str, Any] = {}
    input_stats: dict[str, dict[str, Any]] = {}
    shift_warnings: list[str] = []
    standardisation: Standardisation | None = None
    submission: list[str] = []  # the folder (and zip) holding only the masks, relative to the prediction
    bands: list[str]
    count: int = Field(ge=0)
    masks: list[str]
    sources: list[str] = []
    landslide_pixels: int = Field(0, ge=0)
    device: str = ""
    precision: str = ""
    engine: str = "torch"
    engine_choice: dict[str, Any] = {}
    ensemble: EnsembleInfo | None = None


def models_of(info: ScenePrediction | PatchPrediction) -> list[str]:
    """The bundles a prediction was made with: its model, or its ensemble's members in order."""
    return list(info.ensemble.members) if info.ensemble is not None else [info.model]


def read_prediction(folder: Path, option: str = "PRED") -> ScenePrediction | PatchPrediction:
    """The description of a prediction folder, scene or patches, validated."""
    data = read_json(folder / "prediction.json", option)
    where = f"{option} {folder / 'prediction.json'}"
    if isinstance(data, dict) and data.get("format") == PatchPrediction.header()[0]:
        return PatchPrediction.from_data(data, where)
    if isinstance(data, dict) and data.get("kind") == "patches":
        raise UserError(f"{where}: a patch prediction of an older slidemap; predict the chip set again")
    return ScenePrediction.from_data(data, where)


class Scores(Record):
    """Pixel scores of the landslide class (and, for mIoU, of the background too)."""

    precision: float
    recall: float
    f1: float
    iou: float
    iou_background: float = 0.0
    miou: float = 0.0
    accuracy: float = 0.0


class AreaMetrics(Record):
    """The evaluation of one area (or ``all``, pooled): pixel counts, km², scores and objects."""

    area: str
    role: str
    pixels: dict[str, int]
    km2: dict[str, float]
    scores: Scores
    objects: dict[str, int] = {}
    window: dict[str, int] | None = None
    error_map: str | None = None
    error_map_png: str | None = None
    coverage: float | None = None


class SceneMetrics(Sidecar):
    """``metrics.json`` of a scene prediction."""

    REDO = "evaluate the prediction again"

    format: str = "slidemap.metrics"
    prediction: str
    truth: str
    threshold: float | None = None
    threshold_source: str | None = None
    object_overlap: float = Field(0.5, gt=0, le=1)
    connectivity: int = 4
    iou_note: str = ""
    areas: list[AreaMetrics]
    all: AreaMetrics


class PatchMetrics(Sidecar):
    """``metrics.json`` of a patch prediction: pixel counts pooled over all patches, as the benchmark."""

    REDO = "evaluate the prediction again"

    format: str = "slidemap.patch_metrics"
    kind: Literal["patches"] = "patches"
    pooling: str = "pixels over all patches"
    chips: str
    patches: int = Field(ge=0)
    threshold: float | None = None
    counts: dict[str, int]
    scores: Scores
