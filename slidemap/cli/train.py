"""``slidemap train``: fit a U-Net or ResU-Net on chip sets; every option is a field of ``TrainOptions``."""

from __future__ import annotations

from typing import Any

import typer

from slidemap.cli.app import app
from slidemap.cli.options import model_command, warnings_as_lines
from slidemap.stages.train import TrainOptions

API_ONLY = ("model_args", "channels_last", "learn_postprocess", "learning_curve", "keep_checkpoints")
"""TrainOptions fields for Python callers (the experiment runner), not the command line."""


@model_command(app, TrainOptions, "train", arguments=["chips"], exclude=API_ONLY)
def train(values: dict[str, Any]) -> None:
    """Train a U-Net or ResU-Net on chip set(s); writes a run folder with the model bundle."""
    from slidemap.stages import train as stage

    with warnings_as_lines():
        result = stage.run(TrainOptions(**values))
    typer.echo(f"run {result.run}: bundle {result.bundle}")
    for k, v in result.summary.model_dump().items():
        typer.echo(f"  {k}: {v}")
