"""``slidemap sample``: cut training chips from a scene's train area."""

from __future__ import annotations

from typing import Any

import typer

from slidemap.cli.app import app
from slidemap.cli.options import model_command
from slidemap.stages.sample import SampleOptions


@model_command(app, SampleOptions, "sample", arguments=["scene"])
def sample(values: dict[str, Any]) -> None:
    """Cut training chips from a scene's train area (regular grid or random windows)."""
    from slidemap.stages import sample as stage

    options = SampleOptions(**values)
    result = stage.run(options)
    summary = result.meta.summary
    if options.method == "random":
        how = f"random, seed {options.seed}"
        windows = (f"{summary['drawn']} drawn of {summary['fitting_windows']} that fit the train area, "
                   f"{summary['kept']} kept")
    else:
        how = f"grid, overlap {options.overlap:.0%}"
        windows = f"{summary['drawn']} on the grid, {summary['kept']} kept (fit the train area"
        windows += ", with a landslide)" if options.require_landslide else ")"
    typer.echo(f"chip set {result.path}: {result.meta.count} chips of {result.meta.size} px ({how})")
    typer.echo(f"  windows: {windows}")
    typer.echo(f"  landslide pixels: {summary['landslide_fraction_chips']:.2%} in the chips vs "
               f"{summary['landslide_fraction_train_area']:.2%} in the train area")
    typer.echo(f"  known truth: {summary['known_truth_km2']:.4g} km² in the chips of "
               f"{summary['known_truth_km2_train_area']:.4g} km² in the train area")
