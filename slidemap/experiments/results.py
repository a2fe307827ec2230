"""``results.csv``: one row per run (or ensemble) x test area, plus the pooled rows per test site and per scenario.

Each run writes its rows into its own folder (``rows.json``, atomically, when the run is complete or has
failed); ``results.csv`` is rebuilt from those files in grid order and replaced atomically after every run.
So a kill at any moment leaves no duplicate, missing or half-written row: the CSV is always the old or the
new one, and a rerun rebuilds it from the runs' own records.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from slidemap.formats.files import atomic_file
from slidemap.raster.metrics import Counts, scores

COORDS = ("scenario", "train_sites", "test_site", "test_area", "pooled", "dataset", "bands", "augment",
          "sampling", "method", "size", "architecture", "filters", "batch_size", "lr", "loss", "epochs", "patience",
          "standardise", "seed", "members")
METRICS = ("precision", "recall", "f1", "iou", "miou", "tp", "fp", "fn", "tn", "tp_km2", "fp_km2", "fn_km2",
           "tn_km2", "landslides_found", "landslides_total", "false_alarms", "predicted_objects")
RUN = ("threshold", "epochs_run", "best_epoch", "val_f1", "train_chips", "val_chips", "train_seconds",
       "run_seconds", "chips_per_s", "precision_mode", "device", "slidemap_version", "status", "error", "run_folder",
       "prediction_folder")
COLUMNS = COORDS + METRICS + RUN
"""Every column of results.csv, in order (``pooled``: '' for an area, 'site' or 'scenario' for pooled).

An ensemble's rows (``predict.ensemble``) have ``seed`` "ensemble" and ``members`` its members' seeds (``0+1+2``);
a single run's ``members`` is ''. The statistics leave ensembles out (``slidemap.experiments.analysis.load``).

``precision_mode`` is the training precision the experiment resolved once for all its runs (``precision``
is the metric), ``device`` the device type they trained on; both are on every row, failed runs' too."""

ROWS_FILE = "rows.json"
ENSEMBLE = "ensemble"
"""The ``seed`` of an ensemble's rows."""


def area_row(base: dict[str, Any], site: str, area: str, pixels: dict[str, int], km2: dict[str, float],
             objects: dict[str, int], prediction: Path | None) -> dict[str, Any]:
    """The row of one test area from its confusion counts (pixels), areas (km²) and object counts."""
    c = Counts(**{k: int(pixels.get(k, 0)) for k in ("tp", "fp", "fn", "tn")})
    s = scores(c)
    return {**base, "test_site": site, "test_area": area, "pooled": "",
            **{k: s[k] for k in ("precision", "recall", "f1", "iou", "miou")}, **c.as_dict(),
            **{f"{k}_km2": float(km2.get(k, 0.0)) for k in ("tp", "fp", "fn", "tn")},
            **{k: int(objects.get(k, 0)) for k in ("landslides_found", "landslides_total", "false_alarms",
                                                   "predicted_objects")},
            "prediction_folder": str(prediction) if prediction else ""}


def pool_rows(rows: Sequence[dict[str, Any]], test_site: str, test_area: str, pooled: str) -> dict[str, Any]:
    """One row pooling ``rows``: counts, km² and objects summed, scores from the summed counts."""
    first = rows[0]
    pixels = {k: sum(int(r[k]) for r in rows) for k in ("tp", "fp", "fn", "tn")}
    km2 = {k: sum(float(r[f"{k}_km2"]) for r in rows) for k in ("tp", "fp", "fn", "tn")}
    objects = {k: sum(int(r[k]) for r in rows) for k in ("landslides_found", "landslides_total",
                                                          "false_alarms", "predicted_objects")}
    row = area_row(first, test_site, test_area, pixels, km2, objects, None)
    row["pooled"] = pooled
    return row


def with_pooled(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Area rows, then pooled rows: per test site with several areas, then per scenario.

    The per-scenario row pools all test sites (study 002's "all test datasets"), when there are several sites.
    """
    out = list(rows)
    sites = list(dict.fromkeys(r["test_site"] for r in rows))
    for site in sites:
        mine = [r for r in rows if r["test_site"] == site]
        if len(mine) > 1:
            out.append(pool_rows(mine, site, "all", "site"))
    if len(sites) > 1:
        out.append(pool_rows(rows, "all", "all", "scenario"))
    return out


def write_rows(folder: Path, rows: list[dict[str, Any]]) -> None:
    """A run's record (atomic): its rows, complete or failed."""
    with atomic_file(folder / ROWS_FILE) as tmp:
        tmp.write_text(json.dumps(rows, indent=1, default=str) + "\n")


def read_rows(folder: Path) -> list[dict[str, Any]] | None:
    """A run's record, or None if it has none (not run yet, or killed before it ended)."""
    try:
        rows = json.loads((folder / ROWS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return rows if isinstance(rows, list) else None


def write_results(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write results.csv (atomically) with every column in order; returns the number of rows."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    n = 0
    for row in rows:
        writer.writerow({k: _fmt(row.get(k, "")) for k in COLUMNS})
        n += 1
    with atomic_file(path) as tmp:
        tmp.write_text(buf.getvalue())
    return n


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        return "+".join(str(v) for v in value)
    return value
