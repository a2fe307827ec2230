"""The network runner of one prediction: torch in the precision the rule gives, or an ONNX export when asked.

``build_runner`` turns ``--device/--precision/--engine`` (and ``--onnx-model``) into a runner: ``torch`` runs
the bundle's network (precision by ``slidemap.nn.device.resolve_precision``); ``onnx`` and ``onnx-int8`` run
the engines ``slidemap export`` wrote, from the export the user names or one found beside the bundle (an
``*.engines.json`` there that records this bundle's checksum). Nothing is built or written here.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from slidemap.errors import UserError
from slidemap.formats.files import sha256
from slidemap.nn.bundle import Bundle
from slidemap.nn.device import check_engine, check_precision, resolve_device
from slidemap.nn.engines import EngineRecord, OnnxRunner, export_paths, require_onnxruntime
from slidemap.nn.inference import MemberAverage, SymmetryAverage, TileRunner, ViewSpread

Runner = TileRunner | OnnxRunner | SymmetryAverage | MemberAverage | ViewSpread
"""What a prediction runs tiles through: (N, C, h, w) standardised float32 (raw for a runner that ``takes_raw``)
-> (N, h, w) probabilities (ViewSpread: (N, 2, h, w), probability and spread)."""
ONNX_ENGINES = ("onnx", "onnx-int8")


class PredictWarning(UserWarning):
    """Something the user should know about an input that prediction could still use."""


def build_runner(bundle: Bundle, device: str = "auto", precision: str = "auto", engine: str = "torch",
                 onnx_model: Path | None = None) -> tuple[Runner, dict[str, Any]]:
    """The runner of ``bundle`` for these options, and what prediction.json records of it (``engine_choice``).

    The runner holds no state between calls: the areas of one run may share it.
    """
    engine = check_engine(engine)
    name = check_precision(precision)
    if onnx_model is not None and engine == "torch":
        raise UserError(f"--onnx-model {onnx_model}: goes with --engine onnx or onnx-int8")
    if engine == "torch":
        dev = resolve_device(device)
        runner = TileRunner(bundle.build_model(), dev, name)
        return runner, {"engine": "torch", "precision": runner.precision, "setting": _setting(runner.precision),
                        "how": "rule" if name == "auto" else "given"}
    if name not in ("auto", "32"):
        raise UserError(f"--engine {engine} --precision {precision}: an ONNX engine runs in its own precision "
                        f"(fp32 or int8); leave --precision at auto or 32")
    if device == "cuda":
        raise UserError(f"--engine {engine} --device cuda: the ONNX engines run on the CPU; use --device cpu "
                        f"or --engine torch")
    require_onnxruntime(f"--engine {engine}")
    record_path, record = find_export(bundle, engine, onnx_model)
    runner_ = OnnxRunner(record_path.parent / record.files[engine], engine)
    concern = record.f1_drop(engine)
    if concern:
        warnings.warn(f"--engine {engine}: {concern} ({record_path})", PredictWarning, stacklevel=2)
    choice: dict[str, Any] = {"engine": engine, "precision": runner_.precision, "setting": engine, "how": "given",
                              "onnx_model": str(runner_.path.resolve())}
    if record.f1:
        choice["validation_f1"] = dict(record.f1)
    return runner_, choice


def _setting(precision: str) -> str:
    return f"torch-{'fp32' if precision == '32' else precision}"


def find_export(bundle: Bundle, engine: str, onnx_model: Path | None) -> tuple[Path, EngineRecord]:
    """The record of the export to run ``engine`` from: the one ``onnx_model`` names, else one beside the bundle.

    A UserError names the option and what to do when there is none, when it comes from another bundle or when
    it holds no ``engine`` (int8 is written by ``export --int8``).
    """
    digest = sha256(bundle.path) if bundle.path is not None else None
    hint = f"slidemap export {bundle.path or 'RUN'} --onnx M.onnx" + (" --int8" if engine == "onnx-int8" else "")
    if onnx_model is not None:
        path = export_paths(onnx_model)["record"] if onnx_model.suffix.lower() == ".onnx" else onnx_model
        if not path.is_file():
            raise UserError(f"--onnx-model {onnx_model}: no {path.name} beside it; give the .onnx file that "
                            f"slidemap export wrote, or export again: {hint}")
        record = EngineRecord.load(path, "--onnx-model")
        if digest is not None and record.bundle_sha256 != digest:
            raise UserError(f"--onnx-model {onnx_model}: was exported from another bundle than MODEL "
                            f"{bundle.name}; export this one: {hint}")
        if engine not in record.files or not (path.parent / record.files[engine]).is_file():
            raise UserError(f"--onnx-model {onnx_model}: holds no {engine} engine; export with: {hint}")
        return path, record
    found = []
    if bundle.path is not None and digest is not None:
        for path in sorted(bundle.path.parent.glob("*.engines.json")):
            try:
                record = EngineRecord.load(path)
            except UserError:
                continue
            if record.bundle_sha256 == digest and engine in record.files and \
                    (path.parent / record.files[engine]).is_file():
                found.append((path.stat().st_mtime_ns, path, record))
    if not found:
        raise UserError(f"--engine {engine}: no ONNX export of MODEL {bundle.name} with that engine beside it; "
                        f"run {hint} (or give --onnx-model)")
    _, path, record = max(found, key=lambda f: f[0])  # the latest export, when there are several
    return path, record
