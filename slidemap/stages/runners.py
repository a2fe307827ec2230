"""The network runner a prediction uses: engine and precision resolved (``auto`` measured), built once per bundle.

``choose_runner`` turns ``--device/--precision/--engine`` into a runner for one bundle at one tile size: torch
in fp32 or bf16, or ONNX Runtime in fp32 or int8 (the engines ``slidemap.stages.export`` builds beside the
bundle). Runners are kept on the bundle, so the test areas of a grid run share one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slidemap.errors import UserError
from slidemap.nn.bundle import Bundle
from slidemap.nn.device import RunChoice, Setting, check_engine, check_precision, resolve_device, resolve_run
from slidemap.nn.inference import TileRunner, inference_probe

if TYPE_CHECKING:
    import torch

    from slidemap.nn.engines import EngineRecord, OnnxRunner


class PredictWarning(UserWarning):
    """Something the user should know about an input that prediction could still use."""


def choose_runner(bundle: Bundle, device: str, precision: str, engine: str, tile: int,
                  log: Callable[[str], None] | None = None) -> tuple[RunChoice, Any]:
    """Resolve ``--device/--precision/--engine`` for this bundle at this tile size and build the runner.

    ``auto`` on a CPU times torch fp32 (the reference), torch bf16 (where the CPU has native bf16), ONNX
    Runtime fp32 and int8 (when onnxruntime is installed) on one tile (rates cached per machine, network
    and tile size); settings that change the numbers (bf16, int8) are candidates only when their validation
    F1, measured when the engines were built, is within 0.01 of torch fp32's.
    """
    from slidemap.nn import engines

    dev = resolve_device(device)
    engine = check_engine(engine)
    name = check_precision(precision)
    if dev.type != "cpu" or (engine in ("auto", "torch") and name not in ("auto", "32")):
        choice = resolve_run(precision, dev, "torch" if engine == "auto" else engine)
        return choice, build_runner(bundle, choice.setting, dev, {})
    if engine in ("onnx", "onnx-int8"):
        engines.require_onnxruntime(f"--engine {engine}")
        built = _engine_record(bundle, int8=engine == "onnx-int8", strict=True, log=log)
        choice = resolve_run(precision, dev, engine)
        ok, why = built.eligible(engine) if engine == "onnx-int8" else (True, "")
        if not ok:
            warnings.warn(f"--engine {engine}: {why}; auto would not pick it", PredictWarning, stacklevel=3)
        return choice, build_runner(bundle, choice.setting, dev, engine_paths_of(bundle))
    # auto on a CPU: build what can be built, keep what may be picked, measure.
    from slidemap.nn.device import cpu_has_native_bf16

    excluded: dict[str, str] = {}
    record: EngineRecord | None = None
    if engine == "torch":
        excluded["onnx"] = "onnx, onnx-int8: --engine torch"
    elif engines.onnxruntime_available() and bundle.path is not None:
        record = _engine_record(bundle, int8=True, strict=False, log=log)
    elif not engines.onnxruntime_available():
        excluded["onnx"] = f"onnx, onnx-int8: onnxruntime is not installed ({engines.INSTALL_HINT})"
    candidates = [Setting("torch", "32", True)]
    if record is None and cpu_has_native_bf16() and name == "auto" and bundle.path is not None:
        from slidemap.stages.export import torch_record  # bf16's accuracy check without the ONNX engines
        try:
            record = torch_record(bundle, log)
        except UserError as e:
            excluded["torch-bf16"] = f"torch-bf16: {str(e).split(': ', 1)[-1]}"
    if cpu_has_native_bf16() and name == "auto" and "torch-bf16" not in excluded:
        ok, why = record.eligible("torch-bf16") if record is not None else (False, "torch-bf16: validation "
                                                                             "F1 not measured")
        if ok:
            candidates.append(Setting("torch", "bf16", True))
        else:
            excluded["torch-bf16"] = why
    if record is not None and engine != "torch" and "onnx" in record.files:
        candidates.append(Setting("onnx", "32", False))
        if "onnx-int8" in record.files:
            ok, why = record.eligible("onnx-int8")
            if ok:
                candidates.append(Setting("onnx-int8", "int8", False))
            else:
                excluded["onnx-int8"] = why
        elif record.calibration.get("error"):
            excluded["onnx-int8"] = f"onnx-int8: {record.calibration['error']}"
    paths = engine_paths_of(bundle)
    runners = {s: (lambda s=s: build_runner(bundle, s, dev, paths)) for s in candidates}
    net_key = {"network": bundle.meta.architecture, "model_args": dict(bundle.meta.model_args)}
    probe = inference_probe(net_key, len(bundle.bands), tile, runners)
    probe.excluded = excluded
    choice = resolve_run(precision, dev, "auto", None, probe)
    return choice, build_runner(bundle, choice.setting, dev, paths)


def engine_paths_of(bundle: Bundle) -> dict[str, Path]:
    """Where the bundle's ONNX engines live (none for a bundle held only in memory)."""
    from slidemap.nn.engines import engine_paths

    return engine_paths(bundle.path) if bundle.path is not None else {}


def _engine_record(bundle: Bundle, int8: bool, strict: bool,
                   log: Callable[[str], None] | None = None) -> EngineRecord:
    """The bundle's engines (built once).

    Without ``strict`` a bundle whose chips are gone gets the fp32 ONNX engine only, with the reason int8 is
    missing recorded.
    """
    from slidemap.stages.export import build_engines

    try:
        return build_engines(bundle, int8=int8, log=log)
    except UserError as e:
        if strict or not int8:
            raise
        record = build_engines(bundle, int8=False, log=log)
        return record.model_copy(update={"calibration": {"error": str(e).split(": ", 1)[-1]}})


def build_runner(bundle: Bundle, setting: Setting, device: torch.device,
                 paths: dict[str, Path]) -> TileRunner | OnnxRunner:
    """The runner of ``setting``, built once per bundle (stateless between calls, so areas share it)."""
    path = paths.get(setting.engine)
    key = (setting, str(device), str(path), path.stat().st_mtime_ns if path and path.is_file() else None)
    if key not in bundle.runners:
        if setting.engine == "torch":
            bundle.runners[key] = TileRunner(bundle.build_model(), device, setting.precision)
        else:
            from slidemap.nn.engines import OnnxRunner

            bundle.runners[key] = OnnxRunner(paths[setting.engine], setting.engine)
    return bundle.runners[key]
