"""``slidemap predict``: a scene, bare images, a patch dataset, or a list of scenes; options from ``PredictOptions``."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer

from slidemap.cli.app import app
from slidemap.cli.evaluate import print_evaluation
from slidemap.cli.options import model_command, warnings_as_lines
from slidemap.errors import UserError
from slidemap.stages.predict import PredictOptions

API_ONLY = ("previews", "outputs", "error_maps")
ONE_SCENE = ("area", "evaluate", "pre_images", "submission")
"""Options that apply to one input, refused with ``--scenes``."""


def _option(name: str, annotation: Any, default: Any, help: str) -> inspect.Parameter:  # noqa: A002
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(default, help=help))


BATCH = [
    _option("scenes", Path | None, None, "A list of scenes (text file: one scene folder or image file(s) per "
            "line) predicted as independent tasks into OUT/<name>/, with all landslides merged into "
            "OUT/landslides.gpkg; resumable."),
    _option("workers", int, 1, "With --scenes: scenes predicted at once on this machine."),
    _option("ray", str | None, None, "With --scenes: run the scenes on Ray ('auto' or ADDRESS)."),
]


@model_command(app, PredictOptions, "predict", arguments=["model"], exclude=API_ONLY, extra=BATCH,
               flags={"images": "--image", "pre_images": "--pre-image", "as_float": "--float"})
def predict(values: dict[str, Any], scenes: Path | None, workers: int, ray: str | None) -> None:
    """Predict landslides over a whole scene (tiled, blended, streamed), many scenes, or a patch dataset."""
    from slidemap.stages import predict as stage

    if scenes is not None:
        _predict_scenes(values, scenes, workers, ray)
        return
    with warnings_as_lines():
        result = stage.run(PredictOptions(**values))
    m = result.meta
    if m.kind == "patches":
        typer.echo(f"prediction {result.path}: {m.count} patch masks, threshold {m.threshold:.4f} "
                   f"({m.threshold_choice}), {m.landslide_pixels} landslide pixels, {result.previews} previews")
        for name in m.submission:
            typer.echo(f"  {name:16s} {result.path / name}")
    else:
        typer.echo(f"prediction {result.path}: {m.landslides} landslides, {m.landslide_km2:.4f} km² of "
                   f"{m.valid_km2:.3f} km² valid, threshold {m.threshold.value:.4f} ({m.threshold.which}), "
                   f"{m.mpx_per_s} Mpx/s, engine {m.engine_choice.get('setting', m.engine)}")
        if m.ensemble is not None:
            alone = ", ".join(f"{t:.4f}" for t in m.ensemble.thresholds)
            typer.echo(f"  ensemble of {len(m.ensemble.members)} models (their thresholds alone: {alone})")
        for name in ("probability.tif", "mask.tif", "landslides.gpkg", *(["uncertainty.tif"] if m.uncertainty else [])):
            typer.echo(f"  {name:16s} {result.path / name}")
    if result.evaluation is not None:
        print_evaluation(result.evaluation)


def _predict_scenes(values: dict[str, Any], scenes: Path, workers: int, ray: str | None) -> None:
    from slidemap.experiments.batch import predict_scenes

    if values.get("scene") or values.get("images") or values.get("chips"):
        raise UserError("--scenes: give the scenes in the list only (no --scene, --image or --chips)")
    alone = [n for n in ONE_SCENE if values.get(n)]
    if alone:
        flag = {"pre_images": "--pre-image"}.get(alone[0], "--" + alone[0].replace("_", "-"))
        raise UserError(f"--scenes: {flag} applies to one scene; predict that scene on its own")
    shared = {k: v for k, v in values.items() if k not in ("model", "out", "scene", "images", "chips", *ONE_SCENE)}
    done, failed, merged = predict_scenes(values["model"], scenes, values["out"], workers=workers, ray=ray,
                                          log=lambda t: typer.echo(t, err=True), **shared)
    typer.echo(f"predictions {values['out']}: {done} scenes done, {failed} failed; all landslides in {merged}")
    if failed:
        raise typer.Exit(1)
