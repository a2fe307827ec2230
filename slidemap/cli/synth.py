"""``slidemap synth``: a synthetic study area (image, DEM, inventory, areas)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer

from slidemap.cli.app import app
from slidemap.cli.options import model_command
from slidemap.sources.synth.params import SynthParams

OUT = inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=Path,
                        default=typer.Argument(..., help="Folder to write the synthetic study area into."))


@model_command(app, SynthParams, "synth", extra=[OUT])
def synth(values: dict[str, Any], out: Path) -> None:
    """Write a synthetic study area: image, DEM, landslide inventory and train/test areas."""
    from slidemap.sources.synth import synthesize

    for role, p in synthesize(out, **values).items():
        typer.echo(f"{role:10s} {p}")
