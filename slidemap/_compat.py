"""The 0.1 import paths, kept for one release: ``slidemap.prepare`` and friends, with a DeprecationWarning.

The package was reorganised into layers (formats, raster, nn, sources, stages). Importing an old module
path gives a module that forwards to the new home and warns once; the old stage functions, whose options
became pydantic models and whose results became typed, are kept here with their old signatures and
return values. Nothing in the package itself imports these paths.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings
from collections.abc import Callable, Iterable, Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from slidemap.formats.chips import ChipSet
    from slidemap.formats.prediction import PatchPrediction, ScenePrediction
    from slidemap.formats.scene import Scene
    from slidemap.stages.evaluate import EvaluateResult

    PathLike = str | Path

MOVED = {
    "slidemap.files": "slidemap.formats.files", "slidemap.scene": "slidemap.formats.scene",
    "slidemap.chips": "slidemap.formats.chips", "slidemap.geo": "slidemap.raster.geo",
    "slidemap.terrain": "slidemap.raster.terrain", "slidemap.metrics": "slidemap.raster.metrics",
    "slidemap.polygons": "slidemap.raster.polygons", "slidemap.patch_size": "slidemap.raster.tiling",
    "slidemap.quicklook": "slidemap.figures", "slidemap.models": "slidemap.nn.models",
    "slidemap.models.unet": "slidemap.nn.models.unet", "slidemap.models.resunet": "slidemap.nn.models.resunet",
    "slidemap.augment": "slidemap.nn.augment", "slidemap.losses": "slidemap.nn.losses",
    "slidemap.device": "slidemap.nn.device", "slidemap.bundle": "slidemap.nn.bundle",
    "slidemap.prepare": "slidemap.stages.prepare", "slidemap.sample": "slidemap.stages.sample",
    "slidemap.train": "slidemap.stages.train", "slidemap.predict": "slidemap.stages.predict",
    "slidemap.evaluate": "slidemap.stages.evaluate", "slidemap.l4s": "slidemap.sources.l4s",
    "slidemap.synth": "slidemap.sources.synth",
}


def prepare_scene(images: Iterable[PathLike], out: PathLike, dem: PathLike | None = None,
                  inventory: PathLike | None = None, areas: PathLike | None = None, split: str | None = None,
                  split_axis: str = "x", terrain: Iterable[str] = ("dem", "slope"),
                  band_names: list[str] | None = None, all_touched: bool = False) -> Scene:
    """0.1 API: ``slidemap.stages.prepare.run(PrepareOptions(...))``, returning the Scene."""
    from slidemap.formats.scene import Scene
    from slidemap.stages import prepare

    result = prepare.run(prepare.PrepareOptions(
        images=list(images), out=out, dem=dem, inventory=inventory, areas=areas, split=split,
        split_axis=split_axis, terrain=list(terrain), band_names=band_names, all_touched=all_touched))
    return Scene(result.path)


def sample_chips(scene: PathLike, out: PathLike, method: str = "grid", size: int = 128, overlap: float = 0.0,
                 count: int = 5000, require_landslide: bool = False, area: str | None = None, max_nodata: int = 0,
                 seed: int = 0) -> ChipSet:
    """0.1 API: ``slidemap.stages.sample.run(SampleOptions(...))``, returning the ChipSet."""
    from slidemap.formats.chips import ChipSet
    from slidemap.stages import sample

    result = sample.run(sample.SampleOptions(
        scene=scene, out=out, method=method, size=size, overlap=overlap, count=count,
        require_landslide=require_landslide, area=area, max_nodata=max_nodata, seed=seed))
    return ChipSet(result.path)


def train(chips: PathLike | Sequence[PathLike], out: PathLike, model: str = "unet", filters: int = 16,
          batch_size: int = 16, epochs: int = 200, lr: float = 1e-3, val_fraction: float = 0.3,
          augment: bool = True, patience: int = 20, bands: list[str] | None = None, loss: str = "bce",
          pos_weight: float | None = None, seed: int = 0, device: str = "auto", resume: bool = False, *,
          precision: str | None = None, progress: bool = True, max_time: str | None = None,
          model_args: dict[str, Any] | None = None, channels_last: bool | None = True,
          callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """0.1 API: ``slidemap.stages.train.run(TrainOptions(...))``, returning ``{bundle, run, summary}``."""
    from slidemap.stages import train as stage

    result = stage.run(stage.TrainOptions(
        chips=chips, out=out, model=model, filters=filters, batch_size=batch_size, epochs=epochs, lr=lr,
        val_fraction=val_fraction, augment=augment, patience=patience, bands=bands, loss=loss,
        pos_weight=pos_weight, seed=seed, device=device, resume=resume, precision=precision or "auto",
        progress=progress, max_time=max_time, model_args=model_args or {}, channels_last=channels_last),
        callbacks=callbacks)
    return {"bundle": result.bundle, "run": result.run, "summary": result.summary.model_dump()}


def _evaluation_dict(evaluation: EvaluateResult) -> dict[str, Any]:
    out: dict[str, Any] = {"table": evaluation.table, **{k: str(v) for k, v in evaluation.files.items()}}
    out["metrics"] = evaluation.metrics.model_dump()
    return out


def predict(model: PathLike, out: PathLike, scene: PathLike | None = None, area: str | None = None,
            images: list[PathLike] | None = None, dem: PathLike | None = None, tile: int = 512, overlap: int = 64,
            threshold: str | float = "best", min_area: float = 0.0, batch_size: int = 4, device: str = "auto",
            as_float: bool = False, evaluate: bool = False, precision: str = "auto") -> dict[str, Any]:
    """0.1 API: ``slidemap.stages.predict.run(PredictOptions(...))``, returning a dict of figures."""
    from slidemap.stages import predict as stage

    result = stage.run(stage.PredictOptions(
        model=model, out=out, scene=scene, area=area, images=images, dem=dem, tile=tile, overlap=overlap,
        threshold=threshold, min_area=min_area, batch_size=batch_size, device=device, as_float=as_float,
        evaluate=evaluate, precision=precision, postprocess="none"))  # 0.1 had no post-processing
    m = cast("ScenePrediction", result.meta)  # a scene, not patches
    d: dict[str, Any] = {"prediction": str(out), "probability": str(Path(out) / "probability.tif"),
                         "mask": str(Path(out) / "mask.tif"), "polygons": str(Path(out) / "landslides.gpkg"),
                         "landslides": m.landslides, "landslide_km2": m.landslide_km2, "valid_km2": m.valid_km2,
                         "threshold": m.threshold.value, "seconds": m.seconds, "mpx_per_s": m.mpx_per_s}
    if result.evaluation is not None:
        d.update(_evaluation_dict(result.evaluation))
    return d


def evaluate(pred: PathLike, truth: PathLike | None = None, areas: list[str] | None = None,
             object_overlap: float = 0.5, block: int = 1024) -> dict[str, Any]:
    """0.1 API: ``slidemap.stages.evaluate.run(EvaluateOptions(...))``, returning a dict."""
    from slidemap.stages import evaluate as stage

    return _evaluation_dict(stage.run(stage.EvaluateOptions(pred=pred, truth=truth, areas=areas,
                                                            object_overlap=object_overlap, block=block)))


def predict_patches(model: PathLike, chips: PathLike, out: PathLike, threshold: str | float = "best",
                    batch_size: int = 4, device: str = "auto", evaluate: bool = False, previews: int = 24,
                    precision: str = "auto") -> dict[str, Any]:
    """0.1 API of ``slidemap.l4s.predict_patches``: ``predict --chips``."""
    from slidemap.stages import predict as stage

    result = stage.run(stage.PredictOptions(model=model, out=out, chips=chips, threshold=threshold,
                                            batch_size=batch_size, device=device, evaluate=evaluate,
                                            previews=previews, precision=precision, postprocess="none"))
    m = cast("PatchPrediction", result.meta)  # patches, not a scene
    d: dict[str, Any] = {"out": str(out), "patches": m.count, "threshold": round(m.threshold, 4),
                         "previews": result.previews, "landslide_pixels": m.landslide_pixels}
    if result.evaluation is not None:
        d.update(_evaluation_dict(result.evaluation))
    return d


def evaluate_patches(pred: PathLike, chips: PathLike) -> dict[str, Any]:
    """0.1 API of ``slidemap.l4s.evaluate_patches``: ``evaluate PRED --truth CHIPS``."""
    return evaluate(pred, truth=chips)


WRAPPED: dict[str, dict[str, Callable[..., Any]]] = {
    "slidemap.prepare": {"prepare_scene": prepare_scene},
    "slidemap.sample": {"sample_chips": sample_chips},
    "slidemap.train": {"train": train},
    "slidemap.predict": {"predict": predict},
    "slidemap.evaluate": {"evaluate": evaluate},
    "slidemap.l4s": {"predict_patches": predict_patches, "evaluate_patches": evaluate_patches},
}


class _Loader(importlib.abc.Loader):
    def create_module(self, spec: ModuleSpec) -> types.ModuleType:
        return types.ModuleType(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        new = MOVED[module.__name__]
        warnings.warn(f"{module.__name__} moved to {new}; import from there (the old path goes in the next "
                      f"release)", DeprecationWarning, stacklevel=4)
        target = importlib.import_module(new)
        module.__dict__.update({k: v for k, v in vars(target).items() if not k.startswith("__")})
        module.__dict__.update(WRAPPED.get(module.__name__, {}))
        module.__doc__ = f"Deprecated alias of {new}."


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: types.ModuleType | None = None) -> ModuleSpec | None:
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, _Loader())
        return None


def install() -> None:
    """Make the old module paths importable (idempotent)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
