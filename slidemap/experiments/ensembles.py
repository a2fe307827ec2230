"""``predict: {ensemble: true}``: per grid point with two or more seeds, the ensemble of its seeds' models.

Once every seed of a grid point has finished (status ok), its models are predicted together on each test area
as one ensemble (``slidemap.stages.ensemble``: probabilities averaged tile by tile, the mean of the members'
thresholds, the first member's post-processing) into ``ensembles/<point>__ensemble_s<seeds>/``, and scored
like a run. Its rows in results.csv copy the grid point's coordinates, with ``seed`` "ensemble" and ``members``
the members' seeds; the training columns stay empty (an ensemble trains nothing). Resumable like the runs: an
ensemble with a complete record is not redone, a finished area not predicted again; a grid point whose seeds
have not all finished waits for the next invocation. The report's statistics leave ensembles out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slidemap.errors import UserError
from slidemap.experiments.plan import EnsemblePlan
from slidemap.experiments.results import COORDS, ENSEMBLE, read_rows, with_pooled, write_rows
from slidemap.experiments.scoring import failure, score_site
from slidemap.experiments.spec import Spec

KEPT = (*COORDS, "precision_mode", "device", "slidemap_version")
"""What an ensemble's rows take from its first member's: the grid point's coordinates and where it ran."""


@dataclass(frozen=True)
class EnsembleJob:
    """Everything a worker needs for one ensemble (picklable: plain data)."""

    plan: EnsemblePlan
    spec: Spec
    scenes: dict[str, str | None]
    l4s_tests: dict[str, str | None]
    threads: int
    base: dict[str, Any]


def ensemble_jobs(ensembles: list[EnsemblePlan], spec: Spec, scenes: dict[str, str | None],
                  l4s_tests: dict[str, str | None], threads: int) -> tuple[list[EnsembleJob], list[str]]:
    """The ensembles to predict now: not recorded complete, every member finished; and those still waiting."""
    jobs, waiting = [], []
    for e in ensembles:
        done = read_rows(e.folder)
        if done and all(r.get("status") == "ok" for r in done):
            continue
        members = [read_rows(m.folder) for m in e.members]
        if not all(rows and all(r.get("status") == "ok" for r in rows) for rows in members):
            waiting.append(e.name)
            continue
        first = (members[0] or [{}])[0]
        base = {**{k: first.get(k, "") for k in KEPT}, "seed": ENSEMBLE, "members": e.seeds,
                "run_folder": str(e.folder), "status": "ok", "error": ""}
        jobs.append(EnsembleJob(e, spec, scenes, l4s_tests, threads, base))
    return jobs, waiting


def execute_ensemble(job: EnsembleJob) -> tuple[str, str | None, float]:
    """Predict and score every test area with the ensemble; record its rows. Returns (name, error, seconds).

    An error is recorded (rows with status ``failed``), never raised: the grid goes on.
    """
    import torch

    started = time.perf_counter()
    e = job.plan
    torch.set_num_threads(job.threads)
    models = [m.folder / "bundle.pt" for m in e.members]
    failed: str | None = None
    try:
        rows: list[dict[str, Any]] = []
        for site in e.members[0].test_sites:
            rows += score_site(e.folder, job.spec, job.scenes, job.l4s_tests, site, job.base, models)
        rows = with_pooled(rows)
    except (UserError, Exception) as error:  # noqa: BLE001 - recorded, the grid goes on
        failed = failure(error, e.folder)
        rows = [{**job.base, "status": "failed", "error": failed[:400]}]
    seconds = time.perf_counter() - started
    for row in rows:
        row["run_seconds"] = round(seconds, 2)
    Path(e.folder).mkdir(parents=True, exist_ok=True)
    write_rows(e.folder, rows)
    return e.name, failed, seconds
