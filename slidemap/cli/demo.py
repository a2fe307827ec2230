"""``slidemap demo``: the whole pipeline on a synthetic study area."""

from __future__ import annotations

from pathlib import Path

import typer

from slidemap.cli.app import app


@app.command()
def demo(
    out: Path = typer.Option(Path("slidemap-demo"), help="Folder for everything the demo writes."),
    fast: bool = typer.Option(False, help="A smaller, quicker run (for CI)."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Run the whole pipeline on the built-in synthetic study area and print the test metrics."""
    from slidemap.demo import run_demo

    run_demo(out, fast=fast, seed=seed)
