"""Predicting and scoring a run's (or an ensemble's) test areas, and recording what went wrong.

Each test area is predicted into its own folder and scored in the same pass; a folder that already holds a
complete prediction of the same model (or the same ensemble's members, in order) is not predicted again, so
an interrupted grid resumes where it stopped.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from slidemap.errors import UserError
from slidemap.experiments.results import area_row
from slidemap.experiments.spec import Spec

if TYPE_CHECKING:
    from slidemap.formats.prediction import PatchMetrics, SceneMetrics
    from slidemap.nn.bundle import Bundle


def score_site(folder: Path, spec: Spec, scenes: dict[str, str | None], l4s_tests: dict[str, str | None], site: str,
              base: dict[str, Any], model: Bundle | list[Path]) -> list[dict[str, Any]]:
    """Predict and evaluate each test area of ``site`` (one prediction folder per area under ``folder``), as rows.

    ``model``: a run's bundle, or an ensemble's members' bundle files.
    """
    from slidemap.formats.prediction import PatchMetrics, SceneMetrics
    from slidemap.formats.scene import Scene
    from slidemap.stages import evaluate, predict

    p = spec.predict
    models = [cast(Path, model.path)] if not isinstance(model, list) else model
    rows = []
    scene = scenes.get(site)
    if scene is None:  # Landslide4Sense: the test patch set is one "area"
        chips = l4s_tests.get(site)
        if chips is None:
            raise UserError(f"sites.{site}.l4s: has no test list (test: or test_folder:); it cannot be a test "
                            f"site")
        out = folder / "predictions" / f"{site}__patches"
        metrics = predicted(out, models)
        if metrics is None:
            predict.run(predict.PredictOptions(model=model, out=out, chips=Path(chips), threshold="0.5",
                                               engine=p.engine, device=spec.training.device,
                                               precision=p.precision, tta=p.tta, previews=0))
            metrics = evaluate.run(evaluate.EvaluateOptions(pred=out, truth=Path(chips))).metrics
        assert isinstance(metrics, PatchMetrics)
        rows.append(area_row({**base, "threshold": metrics.threshold}, site, "patches", metrics.counts, {}, {},
                             out))
        return rows
    for area in Scene(scene).areas_with_role("test"):
        out = folder / "predictions" / f"{site}__{area.name}"
        metrics = predicted(out, models)
        if metrics is None:  # predicted and scored in one pass (the metrics are part of the folder)
            evaluation = predict.run(predict.PredictOptions(
                model=model, out=out, scene=Path(scene), area=area.name, tile=p.tile, overlap=p.overlap,
                threshold=p.threshold, min_area=p.min_area, postprocess=p.postprocess, batch_size=p.batch_size,
                engine=p.engine, device=spec.training.device, precision=p.precision, tta=p.tta,
                outputs="all" if p.outputs == "all" else "mask", evaluate=True,
                error_maps="tif" if p.outputs == "all" else "none")).evaluation
            metrics = cast("evaluate.EvaluateResult", evaluation).metrics
        assert isinstance(metrics, SceneMetrics)
        m = metrics.areas[0]
        rows.append(area_row({**base, "threshold": metrics.threshold}, site, area.name, m.pixels, m.km2,
                             m.objects, out))
    if not rows:
        raise UserError(f"sites.{site}: its scene has no test area to evaluate; give it areas with role test")
    return rows


def predicted(folder: Path, models: list[Path]) -> PatchMetrics | SceneMetrics | None:
    """The metrics of an earlier, complete prediction in ``folder`` by these very bundles (else None)."""
    from slidemap.formats.prediction import PatchMetrics, SceneMetrics, models_of, read_prediction

    metrics_file = folder / "metrics.json"
    if not metrics_file.is_file():
        return None
    try:
        if [Path(m).resolve() for m in models_of(read_prediction(folder))] != [m.resolve() for m in models]:
            return None
        data = json.loads(metrics_file.read_text())
        cls = PatchMetrics if data.get("format") == "slidemap.patch_metrics" else SceneMetrics
        return cls.from_data(data, str(metrics_file))
    except (OSError, ValueError, UserError):
        return None


def failure(error: Exception, folder: Path) -> str:
    """The one line a failed run (or ensemble) records; a bug's traceback goes to ``folder/error.txt``."""
    message = " ".join(str(error).split()) or type(error).__name__
    if not isinstance(error, UserError):  # a bug: say where, the folder keeps the traceback
        frame = traceback.extract_tb(error.__traceback__)[-1]
        message = f"{type(error).__name__}: {message} ({Path(frame.filename).name}:{frame.lineno})"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "error.txt").write_text("".join(traceback.format_exception(error)))
    return message
