"""``slidemap evaluate``: precision, recall, F1, IoU, areas and error maps per test area."""

from __future__ import annotations

from typing import Any

import typer

from slidemap.cli.app import app
from slidemap.cli.options import model_command, warnings_as_lines
from slidemap.stages.evaluate import EvaluateOptions, EvaluateResult


def print_evaluation(result: EvaluateResult) -> None:
    """The metrics table and the paths of the maps, as evaluate and predict --evaluate print them."""
    typer.echo(result.table)
    for key, path in result.files.items():
        typer.echo(f"{key}: {path}")


@model_command(app, EvaluateOptions, "evaluate", arguments=["pred"], exclude=("block",),
               flags={"areas": "--area"})
def evaluate(values: dict[str, Any]) -> None:
    """Precision, recall, F1, IoU, areas in km², found landslides and error maps per test area."""
    from slidemap.stages import evaluate as stage

    with warnings_as_lines():
        result = stage.run(EvaluateOptions(**values))
    print_evaluation(result)
