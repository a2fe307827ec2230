"""``slidemap export``: a bundle as ONNX for QGIS (Deepness), with the ONNX Runtime engines ``predict`` can run.

``slidemap export RUN --onnx M.onnx [--int8]`` writes, all beside ``M.onnx`` and nowhere else:

- ``M.onnx``, **the file for QGIS**: raw band values (N, C, tile, tile) float32 in the bundle's band order
  in, the landslide probability (N, 1, tile, tile) out; the bundle's standardisation is inside the graph
  (NaN and inf become the training mean, as in slidemap). Height and width are fixed at ``tile`` and only
  the batch is dynamic: Deepness takes its tile size from the input shape and fails on a symbolic one.
  Its metadata is what Deepness 0.6.5 reads (``deepness/processing/models/model_base.py``,
  ``ModelBase.get_metadata_*``, each value JSON-encoded): ``model_type`` "Segmentor", ``class_names``
  {"0": "landslide"} (one sigmoid channel: Deepness adds the background class), ``resolution`` in cm per
  pixel, ``tile_size`` (the key its code reads; its docs call it ``tiles_size``, also written),
  ``tiles_overlap`` in percent, ``seg_thresh`` (the bundle's threshold rounded to the 2 decimals the panel
  shows and uses, at least 0.01), ``seg_small_segment`` (always; 0 = off, see
  :func:`slidemap.nn.engines.deepness_small_segment`), and ``standardization_mean`` = 0,
  ``standardization_std`` = 1/255 per band, because Deepness divides every value by 255 before
  standardising (``ModelBase.preprocessing``): with these the network sees the raw values again, whatever
  the layer's data type. slidemap's own keys: ``slidemap_bands`` (names, in order), ``slidemap_threshold``
  (unrounded), ``slidemap_version``, ``slidemap_input``.
- ``M.qml``: a QGIS style for the ``landslide`` polygon layer Deepness adds (and for ``landslides.gpkg``), in
  the red of ``predict``'s ``mask.tif``.
- ``M.engine.onnx`` (and ``M.engine-int8.onnx`` with ``--int8``): the engines of ``predict --engine onnx``
  and ``onnx-int8``: standardised input, any height and width (the strip engine feeds wide tiles). int8 is
  static, calibrated on chips of the bundle's training split.
- ``M.engines.json``: the bundle these files come from (its checksum) and, with ``--int8``, each engine's
  validation F1 on the bundle's validation chips at its best threshold (torch fp32, ONNX fp32, ONNX int8).

A bundle trained with ``standardise: scene`` is refused: it must standardise each scene with that scene's own
statistics, and a file with one standardisation inside would apply the training area's to every layer QGIS
gives it, a silently wrong map wherever the sensor or the light differ (the case such a model is for).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from slidemap.errors import UserError
from slidemap.formats.files import sha256
from slidemap.formats.qgis import write_fill_style
from slidemap.nn.bundle import Bundle, load_bundle
from slidemap.nn.engines import (
    EngineRecord,
    OnnxRunner,
    deepness_small_segment,
    engine_versions,
    export_onnx,
    export_paths,
    pooled_f1,
    quantize_int8,
    require_onnx,
    run_chips,
)
from slidemap.raster.tiling import TILE, check_tiling
from slidemap.stages.maps import LANDSLIDE_RGB
from slidemap.stages.options import StageOptions, StageResult, Tile, TileOverlap
from slidemap.version import __version__

THRESHOLD_DECIMALS = 2
"""Decimals of Deepness's probability-threshold box: it rounds the file's ``seg_thresh`` to these."""
LANDSLIDE_FILL_ALPHA = 110
"""Opacity (0-255) of the landslide polygons' fill in QGIS: the map beneath stays visible."""
LANDSLIDE_OUTLINE = (128, 0, 38)
"""Outline colour of landslide polygons: the darkest red of the probability ramp."""
DEEPNESS_OVERLAP = 64
"""Default tile overlap of an export in px. Deepness cuts half the overlap off each side of a tile instead of
blending it (docs/qgis.md), so 64 px keeps 32 px of context beyond every pasted tile edge."""


class ExportOptions(StageOptions):
    """What ``slidemap export`` takes (see ``slidemap export --help``)."""

    model: Path | Bundle
    """Run folder or model bundle (bundle.pt)."""
    onnx: Path
    """ONNX file to write (e.g. model.onnx)."""
    resolution_cm: float | None = Field(None, gt=0)
    """Pixel size in cm that QGIS resamples the layer to (default: the pixel size of the scene the model was
    trained on)."""
    # Descriptions given here, not as docstrings: the shared types' own (blending tiles) do not hold for Deepness.
    tile: Tile = Field(TILE, description="Tile size in px: the ONNX input's fixed height and width and Deepness's "
                       "tile size (a multiple of 16).")
    overlap: TileOverlap = Field(DEEPNESS_OVERLAP, description="Tile overlap in px, written as Deepness's percent; "
                                 "Deepness cuts half of it off each side of a tile instead of blending.")
    threshold: str | float = "best"
    """Threshold written as seg_thresh: 'best', '0.5' or a number."""
    int8: bool = False
    """Also write the int8 engine, calibrated on the training chips, and measure the engines' validation F1."""


class ExportResult(StageResult):
    """The files written, the QGIS file's metadata, its check against torch and the engines' record."""

    path: Path
    metadata: dict[str, Any]
    files: dict[str, Path]
    check: dict[str, float] = {}
    record: EngineRecord


def run(options: ExportOptions) -> ExportResult:
    """Write ``options.onnx`` for QGIS, its style, the engines and their record (see the module doc)."""
    o = options
    bundle = o.model if isinstance(o.model, Bundle) else load_bundle(o.model, "RUN")
    if bundle.meta.standardise == "scene":
        raise UserError(f"RUN {bundle.name}: was trained with standardise scene (each scene standardised with its "
                        f"own statistics), which an ONNX file cannot do: it holds one standardisation and would "
                        f"give every layer the training area's; predict with slidemap, or train with standardise "
                        f"training to export")
    require_onnx("--onnx")
    check_tiling(o.tile, o.overlap)
    paths = _check_paths(o.onnx, bundle)
    threshold = bundle.threshold(o.threshold)
    metadata = deepness_metadata(bundle, _resolution_cm(bundle, o.resolution_cm), o.tile, o.overlap, threshold)
    chips = _chips(bundle) if o.int8 else None  # a run whose chips are gone fails before anything is written
    # The record goes first and comes back last: a half-finished export is never taken for a whole one.
    paths["record"].unlink(missing_ok=True)
    norm = bundle.normaliser()
    export_onnx(bundle.build_model(), len(bundle.bands), paths["qgis"], norm.mean, norm.std, metadata, tile=o.tile)
    write_fill_style(paths["style"], LANDSLIDE_RGB, LANDSLIDE_FILL_ALPHA, LANDSLIDE_OUTLINE)
    export_onnx(bundle.build_model(), len(bundle.bands), paths["onnx"])
    files = {"onnx": paths["onnx"].name}
    calibration: dict[str, Any] = {}
    validation: dict[str, Any] = {}
    f1: dict[str, float] = {}
    if chips is not None:
        quantize_int8(paths["onnx"], paths["onnx-int8"], chips["calibration"])
        files["onnx-int8"] = paths["onnx-int8"].name
        calibration = {"chips": chips["chips"], "count": chips["calibration_chips"], "part": "training split",
                       "method": "min/max, static, per-channel weights int8, activations uint8, QDQ"}
        validation = {"chips": chips["chips"], "count": chips["validation_chips"], "part": "validation split",
                      "split": chips["split"]}
        f1 = engine_f1(bundle, chips["validation"], chips["validation_masks"], bundle.threshold("best"), paths)
    else:
        paths["onnx-int8"].unlink(missing_ok=True)  # an earlier export's int8 no longer matches this one
    record = EngineRecord(bundle_sha256=sha256(bundle.path) if bundle.path is not None else "",
                          versions=engine_versions(), threshold=bundle.threshold("best"), calibration=calibration,
                          validation=validation, f1=f1, files=files)
    record.save(paths["record"])
    written = {k: p for k, p in paths.items() if p.is_file()}
    return ExportResult(path=o.onnx, metadata=metadata, files=written,
                        check=_check_export(bundle, o.onnx, o.tile), record=record)


def _check_paths(onnx: Path, bundle: Bundle) -> dict[str, Path]:
    """The export's files, after refusing a name that is not ``.onnx``, has no folder or hits the bundle."""
    if onnx.suffix.lower() != ".onnx":
        raise UserError(f"--onnx {onnx}: give a file name ending in .onnx")
    if onnx.is_dir():
        raise UserError(f"--onnx {onnx}: is a folder; give a file name ending in .onnx")
    if not onnx.parent.exists():
        raise UserError(f"--onnx {onnx}: its folder {onnx.parent} does not exist")
    paths = export_paths(onnx)
    if bundle.path is not None:
        for p in paths.values():
            if p.resolve() == bundle.path.resolve():
                raise UserError(f"--onnx {onnx}: would overwrite the bundle {bundle.path}; choose another name")
    return paths


def _chips(bundle: Bundle) -> dict[str, Any]:
    """The bundle's training and validation chips for int8 (a UserError naming --int8 when they are gone)."""
    from slidemap.stages.train import bundle_chips

    if bundle.path is None:
        raise UserError("--int8: a bundle held in memory records no training run; save it first")
    try:
        chips = bundle_chips(bundle)
    except UserError as e:
        raise UserError(f"--int8: {e}") from None
    if len(chips["calibration"]) == 0 or len(chips["validation"]) == 0:
        raise UserError(f"--int8: model {bundle.name}'s training run has no training or no validation chips to "
                        f"calibrate and check int8 on; export without --int8")
    return chips


def deepness_metadata(bundle: Bundle, resolution_cm: float, tile: int, overlap: int,
                      threshold: float) -> dict[str, Any]:
    """The metadata Deepness reads, and slidemap's own (see the module doc)."""
    n = len(bundle.bands)
    post = bundle.meta.postprocess
    min_px = 0.0
    if post is not None:
        # min_area_m2 is unknown (None) for chips without a pixel size: min_pixels alone then
        min_px = max(float(post.min_pixels), (post.min_area_m2 or 0.0) / (resolution_cm / 100) ** 2)
    return {
        "model_type": "Segmentor",
        "class_names": {"0": "landslide"},
        "resolution": round(float(resolution_cm), 4),
        "tile_size": int(tile),
        "tiles_size": int(tile),
        "tiles_overlap": int(round(100 * overlap / tile)),
        "seg_thresh": deepness_threshold(threshold),
        "seg_small_segment": deepness_small_segment(min_px),
        "standardization_mean": [0.0] * n,
        "standardization_std": [1.0 / 255.0] * n,
        "slidemap_bands": list(bundle.bands),
        "slidemap_threshold": round(float(threshold), 6),
        "slidemap_version": __version__,
        "slidemap_input": f"raw band values (N, C, {tile}, {tile}) float32 in slidemap_bands order; "
                          f"standardisation is inside the model; output: landslide probability (N, 1, {tile}, "
                          f"{tile})",
    }


def deepness_threshold(threshold: float) -> float:
    """``threshold`` as Deepness's 2-decimal box holds it, at least 0.01: at 0 the panel unticks the threshold."""
    step = 10.0 ** -THRESHOLD_DECIMALS
    return max(round(float(threshold), THRESHOLD_DECIMALS), step)


def _resolution_cm(bundle: Bundle, given: float | None) -> float:
    """Cm per pixel: given, else the bundle's training scene's pixel size."""
    if given is not None:
        return float(given)
    size = bundle.meta.training.get("pixel_size_m")
    if size:
        return 100.0 * float(np.mean(size))
    from slidemap.formats.chips import ChipSet
    from slidemap.formats.scene import Scene

    chips = bundle.meta.training.get("options", {}).get("chips")
    first = chips[0] if isinstance(chips, list) else chips
    try:
        scene = ChipSet(first).meta.scene if first else None
        if scene:
            return 100.0 * float(np.mean(Scene(scene).pixel_size_m))
    except UserError:
        pass
    raise UserError(f"--resolution-cm: model {bundle.name} does not record the pixel size it was trained at "
                    f"(its scene is gone or it was trained on patches); give it, e.g. --resolution-cm 1000 "
                    f"for 10 m pixels")


def _check_export(bundle: Bundle, path: Path, tile: int) -> dict[str, float]:
    """Max |p_onnx - p_torch| on two random raw tiles (with a NaN pixel), when ONNX Runtime is installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {}
    norm = bundle.normaliser()
    rng = np.random.default_rng(0)
    raw = (norm.mean[None, :, None, None] + norm.std[None, :, None, None]
           * rng.standard_normal((2, len(bundle.bands), tile, tile))).astype(np.float32)
    raw[0, 0, 5, 7] = np.nan
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": raw})[0][:, 0]
    with torch.inference_mode():
        want = torch.sigmoid(bundle.build_model()(torch.from_numpy(norm(raw.copy())))).numpy()[:, 0]
    return {"max_abs_diff": float(np.abs(got - want).max())}


def engine_f1(bundle: Bundle, images: np.ndarray, masks: np.ndarray, threshold: float,
              paths: dict[str, Path]) -> dict[str, float]:
    """Validation F1 of torch fp32 and each ONNX engine on the same chips at the same threshold."""
    from slidemap.nn.inference import TileRunner

    runners: dict[str, Any] = {"torch-fp32": TileRunner(bundle.build_model(), "cpu", "32"),
                               "onnx": OnnxRunner(paths["onnx"], "onnx")}
    if paths["onnx-int8"].is_file():
        runners["onnx-int8"] = OnnxRunner(paths["onnx-int8"], "onnx-int8")
    return {name: round(pooled_f1(run_chips(r, images), masks, threshold), 5) for name, r in runners.items()}
