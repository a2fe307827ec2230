"""The network outside torch: ONNX export (for QGIS and for ONNX Runtime) and the ONNX Runtime engines.

**Export** (:func:`export_onnx`): the bundle's network, traced on the plain (autograd) path so the graph
holds ``MaxPool`` and ``Concat`` as ONNX Runtime fuses them, the sigmoid at the end (probabilities
(N, 1, H, W) out) and, for the file a user takes to QGIS (``slidemap export``), the bundle's
standardisation baked in: raw band values in, in the bundle's band order, NaN and inf treated as nodata
exactly as ``slidemap.nn.normalise`` does (0 after standardising). The QGIS file has its height and width
fixed at one tile size (Deepness reads its tile size from the input shape); the engines ``predict`` runs
keep height and width dynamic, because the strip engine feeds tiles of any width.

**Engines** (:class:`OnnxRunner`): the same call as ``slidemap.nn.inference.TileRunner``, (N, C, h, w)
standardised float32 -> (N, h, w) probabilities, run by ONNX Runtime, in fp32 or static int8. The int8
model (:func:`quantize_int8`) is quantised per channel (weights int8, activations uint8, QDQ) with ranges
calibrated on chips of the bundle's own training split, never on test data; ``slidemap export --int8``
measures each engine's validation F1 and records it beside the files it writes (:class:`EngineRecord`).

onnxruntime and onnx are the optional extra ``slidemap[onnx]``; without them the torch engine stays.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import Field

from slidemap.errors import UserError
from slidemap.formats.base import Sidecar
from slidemap.formats.files import atomic_file

if TYPE_CHECKING:
    from slidemap.nn.models import SegmentationNet

OPSET = 13
"""ONNX opset of the exported graphs: every op they use exists there, per-channel QDQ needs 13, and the
onnxruntime Deepness installs (>=1.12.1, <=1.17.0, its python_requirements/requirements.txt) reads it."""
F1_TOLERANCE = 0.01
"""The most int8's validation F1 may fall below fp32's before ``predict --engine onnx-int8`` warns."""
INSTALL_HINT = "install it with pip install 'slidemap[onnx]' (onnxruntime and onnx)"


def onnxruntime_available() -> bool:
    """Whether the optional ONNX Runtime is installed (``slidemap info`` says so)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def require_onnxruntime(option: str) -> Any:
    """The onnxruntime module, or a UserError naming ``option`` and the extra to install."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"{option}: needs ONNX Runtime, which is not installed; {INSTALL_HINT}") from None
    return onnxruntime


def require_onnx(option: str) -> Any:
    """The onnx module (needed to write and quantise models), or a UserError naming ``option``."""
    try:
        import onnx
    except ImportError:
        raise UserError(f"{option}: needs the onnx package, which is not installed; {INSTALL_HINT}") from None
    return onnx


# --- export ------------------------------------------------------------------------------------------

class _Exported(torch.nn.Module):
    """Standardise (optional), run the network, sigmoid: what the ONNX file computes."""

    mean: torch.Tensor  # buffers, registered when standardising
    std: torch.Tensor

    def __init__(self, net: SegmentationNet, mean: np.ndarray | None, std: np.ndarray | None) -> None:
        super().__init__()
        self.net = net
        self.standardise = mean is not None
        if mean is not None and std is not None:
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
            self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.standardise:
            x = (x - self.mean) / self.std
            x = torch.where(torch.isnan(x) | torch.isinf(x), torch.zeros_like(x), x)
        return torch.sigmoid(self.net.logits(x))


def export_onnx(net: SegmentationNet, bands: int, path: str | Path, mean: np.ndarray | None = None,
                std: np.ndarray | None = None, metadata: dict[str, Any] | None = None,
                tile: int | None = None) -> Path:
    """Write ``net`` as ONNX to ``path`` (atomically).

    Input ``input`` (N, bands, H, W) float32, output ``probability`` (N, 1, H, W); with ``mean``/``std`` the
    standardisation is part of the graph. With ``tile`` H and W are fixed at ``tile`` (only the batch is
    dynamic: what Deepness needs); without, they are dynamic too.

    ``metadata`` values are written JSON-encoded into the model's ``metadata_props`` (what the Deepness
    QGIS plugin reads with ``json.loads``).
    """
    onnx = require_onnx("--onnx")
    model = _Exported(net.float().eval(), mean, std).eval()
    size = tile or 64
    x = torch.zeros(1, bands, size, size)
    dynamic: dict[int, str] = {0: "batch"} if tile else {0: "batch", 2: "height", 3: "width"}
    with atomic_file(path) as tmp, warnings.catch_warnings(), _quiet_logger("torch.onnx"):
        warnings.simplefilter("ignore")
        # Autograd on while tracing: the networks take their plain path (MaxPool, Concat), which ONNX
        # Runtime fuses, not the torch-specific inference path.
        with torch.enable_grad():
            torch.onnx.export(model, (x,), str(tmp), input_names=["input"], output_names=["probability"],
                              dynamic_axes={"input": dynamic, "probability": dynamic}, opset_version=OPSET,
                              dynamo=False, do_constant_folding=True)
        proto = onnx.load(str(tmp))
        for k, v in (metadata or {}).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, json.dumps(v)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return Path(path)


@contextlib.contextmanager
def _quiet_logger(name: str | None) -> Iterator[None]:
    """Errors only from logger ``name`` (None: the root logger) for the block.

    torch.onnx logs every skipped torchvision op at import, and onnxruntime's quantiser logs each calibration
    step on the root logger; neither belongs on the user's screen.
    """
    import logging

    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def deepness_small_segment(min_pixels: float) -> int:
    """Deepness's ``seg_small_segment`` closest to dropping landslides under ``min_pixels`` pixels.

    Deepness 0.6.5 has no area filter: for ``seg_small_segment = n`` it median-blurs the class map with a
    square window of side ``k = (n // 2) * 2 + 1`` (``MapProcessorSegmentation._run``; the erode/dilate
    helper of ``processing_utils`` is never called). A pixel stays a landslide when at least
    ``(k * k + 1) / 2`` pixels of its window are, so a compact landslide smaller than that vanishes and a
    larger one keeps its core with its corners rounded (thin ones vanish too). Returned: the largest odd
    ``k`` with ``(k * k + 1) / 2 <= min_pixels`` (written as ``n = k``, which Deepness uses as it is), or 0
    (off) where that ``k`` is 1, a blur that changes nothing.
    """
    k = 1
    while ((k + 2) ** 2 + 1) / 2 <= min_pixels:
        k += 2
    return k if k >= 3 else 0


# --- the ONNX Runtime engines -----------------------------------------------------------------------------

class OnnxRunner:
    """ONNX Runtime in place of :class:`slidemap.nn.inference.TileRunner`.

    (N, C, h, w) standardised float32 -> (N, h, w) float32 probabilities, for a model written by
    :func:`export_onnx` without standardisation.
    """

    def __init__(self, path: str | Path, engine: str = "onnx", threads: int | None = None) -> None:
        ort = require_onnxruntime(f"--engine {engine}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Idle threads sleep instead of spinning: on a shared machine a spinning pool steals the cores
        # from whatever runs next (the writer and reader threads of the prediction).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = Path(path)
        self.engine = engine
        self.precision = "int8" if engine == "onnx-int8" else "32"
        self.device = torch.device("cpu")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise UserError(f"--engine {engine}: ONNX Runtime cannot load {self.path} "
                            f"({str(e).splitlines()[0][:120]}); export the model again with slidemap "
                            f"export") from None
        self.input = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, h, w) of a standardised batch (N, C, h, w); a malformed output is a RuntimeError."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        (prob,) = self.session.run(None, {self.input: x})
        if prob.ndim != 4 or prob.shape[1] != 1 or prob.shape[2:] != x.shape[2:]:
            raise RuntimeError(f"ONNX model output {prob.shape} for input {x.shape}: expected one "
                               f"probability channel at the input size")
        return prob[:, 0]


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration: np.ndarray,
                  batch_size: int = 8) -> Path:
    """Static int8 quantisation of the fp32 model at ``fp32_path``.

    QDQ: weights int8 per output channel, activations uint8, min/max ranges, calibrated on ``calibration`` (N, C,
    S, S) standardised chips.
    """
    require_onnxruntime("--engine onnx-int8")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Chips(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": np.ascontiguousarray(calibration[i:i + batch_size], np.float32)}
                                 for i in range(0, len(calibration), batch_size)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    out_path = Path(out_path)
    with atomic_file(out_path) as tmp, warnings.catch_warnings(), _quiet_logger(None):
        warnings.simplefilter("ignore")
        pre = tmp.with_name(tmp.name + ".pre.onnx")
        try:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(tmp), _Chips(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
        finally:
            pre.unlink(missing_ok=True)
            for leftover in tmp.parent.glob("augmented_model*.onnx"):
                leftover.unlink(missing_ok=True)
    return out_path


# --- the record of an export's engines ----------------------------------------------------------------------

class EngineRecord(Sidecar):
    """``<name>.engines.json`` beside an export: which bundle its ONNX files come from, and how accurate they are.

    ``files`` names the engines ``predict --engine`` runs (``onnx``, ``onnx-int8``: file names in the same
    folder); ``f1`` holds each engine's validation F1 at the bundle's best threshold (with ``--int8``).
    """

    REDO = "export the model again with slidemap export"

    format: str = "slidemap.engines"
    format_version: int = 2
    bundle_sha256: str
    versions: dict[str, str]
    threshold: float
    calibration: dict[str, Any] = {}
    validation: dict[str, Any] = {}
    f1: dict[str, float] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)

    def f1_drop(self, name: str) -> str:
        """Why engine ``name``'s validation F1 is a concern (fell more than :data:`F1_TOLERANCE`), else ''."""
        ref, f1 = self.f1.get("torch-fp32"), self.f1.get(name)
        if ref is None or f1 is None or f1 >= ref - F1_TOLERANCE:
            return ""
        return f"validation F1 {f1:.4f} against {ref:.4f} in fp32 (more than {F1_TOLERANCE} lower)"


def export_paths(onnx_path: Path) -> dict[str, Path]:
    """The files of one export named ``onnx_path``: the QGIS model, its style, the engines and their record."""
    stem = onnx_path.name[:-len(".onnx")] if onnx_path.name.lower().endswith(".onnx") else onnx_path.name
    folder = onnx_path.parent
    return {"qgis": onnx_path, "style": folder / f"{stem}.qml", "onnx": folder / f"{stem}.engine.onnx",
            "onnx-int8": folder / f"{stem}.engine-int8.onnx", "record": folder / f"{stem}.engines.json"}


def engine_versions() -> dict[str, str]:
    """The versions an export was made with (recorded, for the reader; any later ONNX Runtime reads it)."""
    from slidemap.version import __version__

    out = {"torch": torch.__version__, "slidemap": __version__}
    with contextlib.suppress(ImportError):
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    return out


def pooled_f1(prob: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    """F1 of ``prob >= threshold`` against ``truth`` pooled over every valid pixel (255: nodata)."""
    from slidemap.raster.metrics import confusion, scores

    return float(scores(confusion(prob >= threshold, truth))["f1"])


def run_chips(runner: Any, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Probabilities (N, S, S) of standardised chips (N, C, S, S) through ``runner``."""
    return np.concatenate([runner(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
