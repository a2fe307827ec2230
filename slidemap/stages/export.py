"""``slidemap export``: a bundle as ONNX for QGIS (Deepness) and ONNX Runtime; and the ONNX engines.

The engines are what ``predict --engine onnx|onnx-int8|auto`` runs, built once per bundle and kept beside it.

**The exported file** (``slidemap export RUN --onnx model.onnx``) takes raw band values (N, C, H, W)
float32 in the bundle's band order, standardises them with the bundle's statistics inside the graph (NaN
and inf become the training mean, as in slidemap), runs the network and returns the landslide probability
(N, 1, H, W); batch, height and width are dynamic (multiples of 16). Its metadata is what the Deepness
QGIS plugin reads (``deepness/processing/models/model_base.py``, ``ModelBase.get_metadata_*``, each value
JSON-encoded): ``model_type`` "Segmentor", ``class_names`` {"0": "landslide"} (one sigmoid channel:
Deepness adds the background class), ``resolution`` in cm per pixel, ``tile_size`` (the key its code reads;
its docs call it ``tiles_size``, also written), ``tiles_overlap`` in percent, ``seg_thresh`` (the bundle's
threshold) and, when the bundle has a post-processing minimum area, ``seg_small_segment``; and
``standardization_mean`` = 0, ``standardization_std`` = 1/255 per band, because Deepness divides every
value by 255 before standardising (``ModelBase.preprocessing``: ``normalize_values_to_01`` then
``standardize_values``): with these the network sees the raw values again, whatever the layer's data type.
slidemap's own keys: ``slidemap_bands`` (names, in order), ``slidemap_version``, ``slidemap_input``.

**The engines** (:func:`build_engines`): ``<bundle>.onnx`` (fp32, standardised input, as the tile runner
feeds it) and ``<bundle>.int8.onnx`` (static int8, calibrated on chips of the bundle's training split),
with ``<bundle>.engines.json`` recording each engine's validation F1 (torch fp32 and bf16, ONNX fp32 and
int8) on the bundle's validation chips at its best threshold.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from slidemap.errors import UserError
from slidemap.formats.files import sha256
from slidemap.nn.bundle import Bundle, load_bundle
from slidemap.nn.device import versions
from slidemap.nn.engines import (
    EngineRecord,
    OnnxRunner,
    deepness_small_segment,
    engine_paths,
    export_onnx,
    pooled_f1,
    quantize_int8,
    require_onnx,
    run_chips,
)
from slidemap.raster.tiling import check_tiling
from slidemap.stages.options import StageOptions, StageResult
from slidemap.version import __version__


class ExportOptions(StageOptions):
    """What ``slidemap export`` takes (see ``slidemap export --help``)."""

    model: Path | Bundle
    onnx: Path
    resolution_cm: float | None = Field(None, gt=0)
    tile: int = 512
    overlap: int = 64
    threshold: str | float = "best"


class ExportResult(StageResult):
    """The ONNX file written, the metadata it carries, and its check against torch (empty without ORT)."""

    path: Path
    metadata: dict[str, Any]
    check: dict[str, float] = {}


def run(options: ExportOptions) -> ExportResult:
    """Write the bundle's network to ``options.onnx`` with its standardisation and Deepness metadata.

    Then check it: ONNX Runtime (when installed) against torch on random raw values.
    """
    o = options
    require_onnx("--onnx")
    bundle = o.model if isinstance(o.model, Bundle) else load_bundle(o.model, "RUN")
    check_tiling(o.tile, o.overlap)
    if o.onnx.suffix.lower() != ".onnx":
        raise UserError(f"--onnx {o.onnx}: give a file name ending in .onnx")
    if o.onnx.is_dir():
        raise UserError(f"--onnx {o.onnx}: is a folder; give a file name ending in .onnx")
    if not o.onnx.parent.exists():
        raise UserError(f"--onnx {o.onnx}: its folder {o.onnx.parent} does not exist")
    if bundle.path is not None and o.onnx.resolve() == bundle.path.resolve():
        raise UserError(f"--onnx {o.onnx}: is the bundle itself; choose another file")
    metadata = deepness_metadata(bundle, _resolution_cm(bundle, o.resolution_cm), o.tile, o.overlap,
                                 bundle.threshold(o.threshold))
    norm = bundle.normaliser()
    export_onnx(bundle.build_model(), len(bundle.bands), o.onnx, norm.mean, norm.std, metadata)
    return ExportResult(path=o.onnx, metadata=metadata, check=_check_export(bundle, o.onnx))


def deepness_metadata(bundle: Bundle, resolution_cm: float, tile: int, overlap: int,
                      threshold: float) -> dict[str, Any]:
    """The metadata Deepness reads, and slidemap's own (see the module doc)."""
    n = len(bundle.bands)
    meta: dict[str, Any] = {
        "model_type": "Segmentor",
        "class_names": {"0": "landslide"},
        "resolution": round(float(resolution_cm), 4),
        "tile_size": int(tile),
        "tiles_size": int(tile),
        "tiles_overlap": int(round(100 * overlap / tile)),
        "seg_thresh": round(float(threshold), 6),
        "standardization_mean": [0.0] * n,
        "standardization_std": [1.0 / 255.0] * n,
        "slidemap_bands": list(bundle.bands),
        "slidemap_version": __version__,
        "slidemap_input": "raw band values (N, C, H, W) float32 in slidemap_bands order; standardisation is "
                          "inside the model; output: landslide probability (N, 1, H, W)",
    }
    post = bundle.meta.postprocess
    if post is not None:
        # min_area_m2 is unknown (None) for chips without a pixel size: min_pixels alone then
        min_px = max(float(post.min_pixels), (post.min_area_m2 or 0.0) / (resolution_cm / 100) ** 2)
        if min_px > 1:
            meta["seg_small_segment"] = deepness_small_segment(min_px)
    return meta


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


def _check_export(bundle: Bundle, path: Path) -> dict[str, float]:
    """Max |p_onnx - p_torch| on random raw values (with a NaN pixel), when ONNX Runtime is installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {}
    norm = bundle.normaliser()
    rng = np.random.default_rng(0)
    raw = (norm.mean[None, :, None, None] + norm.std[None, :, None, None]
           * rng.standard_normal((2, len(bundle.bands), 64, 96))).astype(np.float32)
    raw[0, 0, 5, 7] = np.nan
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": raw})[0][:, 0]
    with torch.inference_mode():
        want = torch.sigmoid(bundle.build_model()(torch.from_numpy(norm(raw.copy())))).numpy()[:, 0]
    return {"max_abs_diff": float(np.abs(got - want).max())}


# --- engines for predict ------------------------------------------------------------------------------

def build_engines(bundle: Bundle, int8: bool = True, log: Callable[[str], None] | None = None) -> EngineRecord:
    """The ONNX engines of ``bundle`` and their validation F1, built once and kept beside it.

    They are rebuilt when the bundle, onnxruntime or slidemap changed. ``int8`` False: the fp32 model only, no
    chips needed.
    """
    if bundle.path is None:
        raise UserError("--engine: a bundle held in memory has no folder to keep its ONNX engines in; "
                        "save it first")
    paths = engine_paths(bundle.path)
    digest = sha256(bundle.path)
    record = _valid_record(paths, digest)
    if record is not None and "onnx" in record.files and (not int8 or "onnx-int8" in record.files):
        return record
    t0 = time.perf_counter()
    if log:
        log(f"building the ONNX engine{'s (fp32, int8)' if int8 else ''} of {bundle.name}, once")
    paths["onnx"].parent.mkdir(parents=True, exist_ok=True)
    if record is None or not paths["onnx"].is_file():
        export_onnx(bundle.build_model(), len(bundle.bands), paths["onnx"])
    files = {"onnx": paths["onnx"].name}
    threshold = bundle.threshold("best")
    f1: dict[str, float] = {}
    calibration: dict[str, Any] = {}
    validation: dict[str, Any] = {}
    if int8:
        from slidemap.stages.train import bundle_chips

        chips = bundle_chips(bundle)
        if len(chips["calibration"]) == 0 or len(chips["validation"]) == 0:
            raise UserError(f"MODEL {bundle.name}: its training run has no training or no validation chips "
                            f"to calibrate and check int8 on; use --engine torch or onnx")
        quantize_int8(paths["onnx"], paths["onnx-int8"], chips["calibration"])
        files["onnx-int8"] = paths["onnx-int8"].name
        calibration = {"chips": chips["chips"], "count": chips["calibration_chips"], "part": "training split",
                       "method": "min/max, static, per-channel weights int8, activations uint8, QDQ"}
        validation = {"chips": chips["chips"], "count": chips["validation_chips"], "part": "validation split",
                      "split": chips["split"]}
        f1 = engine_f1(bundle, chips["validation"], chips["validation_masks"], threshold, paths)
    record = EngineRecord(bundle_sha256=digest, versions=versions(), threshold=threshold,
                          calibration=calibration, validation=validation, f1=f1, files=files,
                          seconds=round(time.perf_counter() - t0, 2))
    record.save(paths["record"])
    return record


def torch_record(bundle: Bundle, log: Callable[[str], None] | None = None) -> EngineRecord:
    """bf16's validation F1 beside fp32's, kept beside the bundle like the engines' record.

    The evidence ``auto`` needs to predict in bf16 where onnxruntime is not installed (or ``--engine torch``);
    building the ONNX engines later replaces it (its versions then differ).
    """
    if bundle.path is None:
        raise UserError("--precision auto: a bundle held in memory has no folder to keep its accuracy check in")
    paths = engine_paths(bundle.path)
    digest = sha256(bundle.path)
    record = _valid_record(paths, digest)
    if record is not None:
        return record
    from slidemap.stages.train import bundle_chips

    t0 = time.perf_counter()
    if log:
        log(f"checking bf16's validation F1 against fp32 for {bundle.name}, once")
    chips = bundle_chips(bundle)
    if len(chips["validation"]) == 0:
        raise UserError(f"MODEL {bundle.name}: its training run has no validation chips to check bf16 on")
    threshold = bundle.threshold("best")
    f1 = engine_f1(bundle, chips["validation"], chips["validation_masks"], threshold, None)
    record = EngineRecord(bundle_sha256=digest, versions=versions(), threshold=threshold,
                          validation={"chips": chips["chips"], "count": chips["validation_chips"],
                                      "part": "validation split", "split": chips["split"]},
                          f1=f1, files={}, seconds=round(time.perf_counter() - t0, 2))
    paths["record"].parent.mkdir(parents=True, exist_ok=True)
    record.save(paths["record"])
    return record


def engine_f1(bundle: Bundle, images: np.ndarray, masks: np.ndarray, threshold: float,
              paths: dict[str, Path] | None) -> dict[str, float]:
    """Validation F1 of each engine on the same chips at the same threshold (torch only without ``paths``)."""
    from slidemap.nn.device import cpu_has_native_bf16
    from slidemap.nn.inference import TileRunner

    runners: dict[str, Any] = {"torch-fp32": TileRunner(bundle.build_model(), "cpu", "32")}
    if cpu_has_native_bf16():
        runners["torch-bf16"] = TileRunner(bundle.build_model(), "cpu", "bf16")
    if paths is not None:
        runners["onnx"] = OnnxRunner(paths["onnx"], "onnx")
        if paths["onnx-int8"].is_file():
            runners["onnx-int8"] = OnnxRunner(paths["onnx-int8"], "onnx-int8")
    return {name: round(pooled_f1(run_chips(r, images), masks, threshold), 5) for name, r in runners.items()}


def existing_record(bundle: Bundle) -> EngineRecord | None:
    """The bundle's engine record if one was built for it with these versions (nothing is built)."""
    if bundle.path is None:
        return None
    return _valid_record(engine_paths(bundle.path), sha256(bundle.path))


def _valid_record(paths: dict[str, Path], digest: str) -> EngineRecord | None:
    if not paths["record"].is_file():
        return None
    try:
        record = EngineRecord.load(paths["record"])
    except UserError:
        return None
    if record.bundle_sha256 != digest or record.versions != versions():
        return None
    if any(not paths[name].is_file() for name in record.files if name in ("onnx", "onnx-int8")):
        return None
    return record
