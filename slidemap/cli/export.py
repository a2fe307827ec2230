"""``slidemap export``: the model as ONNX for QGIS (Deepness) with its style, and predict's ONNX engines."""

from __future__ import annotations

from typing import Any

import typer

from slidemap.cli.app import app
from slidemap.cli.options import model_command, warnings_as_lines
from slidemap.stages.export import ExportOptions


@model_command(app, ExportOptions, "export", arguments=["model"])
def export(values: dict[str, Any]) -> None:
    """Export the model as ONNX for QGIS (Deepness) with its style, and the ONNX Runtime engines of predict.

    Writes beside M.onnx: M.onnx for QGIS, M.qml (its landslide layer's style), M.engine[-int8].onnx,
    M.engines.json.
    """
    from slidemap.stages import export as stage

    with warnings_as_lines():
        result = stage.run(ExportOptions(**values))
    m = result.metadata
    typer.echo(f"onnx {result.path}: for QGIS; input raw bands {', '.join(m['slidemap_bands'])} (in this "
               f"order), {m['tile_size']} x {m['tile_size']} px, output landslide probability")
    typer.echo(f"  Deepness: Segmentor, {m['resolution']} cm/px, tile {m['tile_size']} px, overlap "
               f"{m['tiles_overlap']} %, threshold {m['seg_thresh']} (the model's {m['slidemap_threshold']}), "
               f"remove small segments {m['seg_small_segment'] or 'off'}")
    if "max_abs_diff" in result.check:
        typer.echo(f"  checked with ONNX Runtime: max |p - p_torch| = {result.check['max_abs_diff']:.1e}")
    for key, what in (("style", "QGIS style of the landslide layer"), ("onnx", "engine of predict --engine onnx"),
                      ("onnx-int8", "engine of predict --engine onnx-int8"), ("record", "the engines' record")):
        if key in result.files:
            typer.echo(f"  {result.files[key].name:24s} {what}")
    if result.record.f1:
        typer.echo("  validation F1: " + ", ".join(f"{k} {v:.4f}" for k, v in result.record.f1.items()))
