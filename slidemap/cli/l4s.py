"""``slidemap l4s import``: Landslide4Sense HDF5 patches as a chip set."""

from __future__ import annotations

from pathlib import Path

import typer

from slidemap.cli.app import l4s_app


@l4s_app.command("import")
def l4s_import(
    folder: Path = typer.Argument(..., help="Landslide4Sense folder with img/ (and mask/)."),
    out: Path = typer.Option(..., "--out", help="Chip set folder to write."),
    list_file: Path | None = typer.Option(None, "--list", help="Text file naming the patches to import."),
    published_stats: bool = typer.Option(False, help="Use the dataset's published mean/std instead of "
                                         "statistics computed from the imported patches."),
) -> None:
    """Import Landslide4Sense HDF5 patches into a slidemap chip set."""
    from slidemap.sources.l4s import import_l4s

    chips = import_l4s(folder, out, list_file=list_file, published_stats=published_stats)
    typer.echo(f"chip set {chips.path}: {len(chips)} patches, bands {', '.join(chips.bands)}")
    typer.echo("  train on it with `slidemap train`, predict it with `slidemap predict MODEL --chips`, score "
               "a prediction with `slidemap evaluate PRED --truth CHIPS`")
