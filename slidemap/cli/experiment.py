"""``slidemap experiment run`` and ``slidemap experiment report``: grids of runs from a YAML spec."""

from __future__ import annotations

from pathlib import Path

import typer

from slidemap.cli.app import experiment_app


@experiment_app.command("run")
def experiment_run(
    spec: Path = typer.Argument(..., help="Experiment spec (YAML), e.g. examples/quick.yaml."),
    out: Path = typer.Option(..., "--out", help="Experiment folder: sites, chip sets, runs, results.csv. "
                             "Run again with the same spec and --out to continue."),
    workers: int = typer.Option(1, help="Runs trained at once on this machine (the cores are split "
                                "between them)."),
    ray: str | None = typer.Option(None, help="Run on Ray: 'auto' (a local Ray instance, or the cluster "
                                   "this machine belongs to) or a cluster ADDRESS."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Open every input (headers only), list the runs, "
                                 "count every chip set whose scene exists (the others after preparing) and "
                                 "estimate the wall time from a training step timed on this machine; write "
                                 "nothing."),
) -> None:
    """Run (or continue) the grid of an experiment spec; one row per run and test area in results.csv."""
    from slidemap.experiments import runner

    if dry_run:
        typer.echo(runner.dry_run(spec, out))
        return
    done, failed, csv_path = runner.run_experiment(spec, out, workers=workers, ray=ray,
                                                   log=lambda t: typer.echo(t, err=True))
    typer.echo(f"results {csv_path}: {done} runs done, {failed} failed")
    if failed:
        raise typer.Exit(1)


@experiment_app.command("report")
def experiment_report(
    folder: Path = typer.Argument(..., help="Experiment folder (the --out of `experiment run`)."),
    out: Path | None = typer.Option(None, "--out", help="Report folder (default: FOLDER/report)."),
) -> None:
    """Write an experiment's report: the studies' tables and maps, and each of their conclusions tested on its runs.

    report.md, report.html (figures inlined) and PNGs; the title is the spec's name.
    """
    from slidemap.experiments.report import write_report

    typer.echo(f"report {write_report(folder, out)}")
