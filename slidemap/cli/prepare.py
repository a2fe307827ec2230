"""``slidemap prepare``: co-register images, DEM and inventory into a scene folder."""

from __future__ import annotations

from typing import Any

import typer

from slidemap.cli.app import app
from slidemap.cli.options import model_command, warnings_as_lines
from slidemap.errors import UserError
from slidemap.stages.prepare import PrepareOptions


@model_command(app, PrepareOptions, "prepare", flags={"images": "--image", "pre_images": "--pre-image"})
def prepare(values: dict[str, Any]) -> None:
    """Co-register images, DEM and inventory into a scene folder (stack, mask, areas, scene.json)."""
    from slidemap.stages import prepare as stage

    if values.get("areas") is not None and values.get("split") is not None:
        raise UserError("--areas / --split: give one (a file of named areas, or e.g. --split 3:2), or neither "
                        "for a scene only to predict")
    with warnings_as_lines():
        result = stage.run(PrepareOptions(**values))
    m = result.meta
    typer.echo(f"scene {result.path}: {m.width}x{m.height} px, bands {', '.join(m.bands)} (pixels "
               f"{m.pixel_size_m[0]:.3g} x {m.pixel_size_m[1]:.3g} m)")
    inv = m.inventory
    if inv is not None and inv.landslides is not None:
        typer.echo(f"  inventory ({inv.kind}): {inv.landslides} landslides, {inv.landslide_km2:.4f} km² "
                   f"({inv.landslide_pixels} px); truth known over {inv.labelled_km2:.3f} km², unknown over "
                   f"{inv.unknown_km2:.3f} km²")
    for area in m.areas:
        typer.echo(f"  {area.role:5s} {area.name}: {area.area_km2:.3f} km², {area.landslides} landslides, "
                   f"{area.landslide_km2:.4f} km² landslide")
