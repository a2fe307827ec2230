"""Running the grid: sites and chip sets once, then every run (train, predict each test area, evaluate).

Runs go in this process, in a pool of worker processes, or as Ray tasks on a cluster.

The experiment resolves its training precision once, before its first run (``auto`` by the machine's rule,
``slidemap.nn.device.resolve_precision``), records it in experiment.json and gives it to every run, so
precision never differs between the runs a grid compares; a later invocation that would resolve it
differently is refused. A run is self-contained: it reads shared chip sets and scenes, writes only its own
folder, and ends by writing its rows (``rows.json``). Everything is resumable: a finished run is never
redone, an interrupted training resumes from its last checkpoint, a finished prediction is not predicted
again, and results.csv is rebuilt from the runs' records after each run (``slidemap.experiments.results``).
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slidemap.errors import UserError
from slidemap.experiments.dispatch import cores, dispatch
from slidemap.experiments.ensembles import ensemble_jobs, execute_ensemble
from slidemap.experiments.plan import Plan, RunPlan, make_plan
from slidemap.experiments.results import (
    read_rows,
    with_pooled,
    write_results,
    write_rows,
)
from slidemap.experiments.scoring import failure, score_site
from slidemap.experiments.sites import check_inputs, materialise_chips, materialise_site, scene_of
from slidemap.experiments.spec import AXES, TRAINING_AXES, Spec, load_spec
from slidemap.formats.files import atomic_file, check_out, output_lock
from slidemap.version import __version__

if TYPE_CHECKING:
    from slidemap.nn.bundle import Bundle
    from slidemap.stages.train import TrainSummary

SPEC_FILE = "experiment.json"
MAY_CHANGE = ("name", "description", "resources", "only", "exclude", "repeats", "seeds", "sizes",
              "predict.outputs", "predict.ensemble")
"""Spec keys (dotted for nested ones) an experiment may change between reruns: they add or drop grid points,
or only say how to run or what to keep; any other change would make old and new runs incomparable."""


@dataclass(frozen=True)
class RunJob:
    """Everything a worker needs for one run (picklable: plain data, no open files)."""

    run: RunPlan
    spec: Spec
    scenes: dict[str, str | None]
    l4s_tests: dict[str, str | None]
    threads: int
    precision: str
    """The experiment's training precision, resolved once (``32``, ``bf16`` or ``16``)."""
    device: str
    """The device type the experiment trains on (``cpu`` or ``cuda``)."""


@dataclass
class Outcome:
    """What one run came to: its rows, the error line if it failed, its wall time and its chips."""

    name: str
    rows: list[dict[str, Any]]
    failed: str | None
    seconds: float
    train_chips: int | None = None
    val_chips: int | None = None


# --- one run ---------------------------------------------------------------------------------------

def execute_run(job: RunJob) -> Outcome:
    """Train (or resume), predict and evaluate every test area of one run; record its rows.

    Any error of this run is recorded (rows with status ``failed`` and the error line) and returned,
    never raised: one failing grid point must not stop the grid.
    """
    import torch

    started = time.perf_counter()
    run = job.run
    torch.set_num_threads(job.threads)
    base = _base_row(job)
    chips: tuple[int | None, int | None] = (None, None)
    try:
        summary, bundle = _train(job)
        chips = (summary.train_chips, summary.val_chips)
        base.update(threshold="", epochs_run=summary.epochs_run, best_epoch=summary.best_epoch,
                    val_f1=summary.val_f1_at_best, train_seconds=summary.seconds, chips_per_s=summary.chips_per_s,
                    train_chips=summary.train_chips, val_chips=summary.val_chips, status="ok", error="")
        if bundle is None:  # trained before (a rerun): read once, every test area shares it and its runner
            from slidemap.nn.bundle import load_bundle

            bundle = load_bundle(run.folder / "bundle.pt")
        rows = []
        for site in run.test_sites:
            rows += score_site(run.folder, job.spec, job.scenes, job.l4s_tests, site, base, bundle)
        rows = with_pooled(rows)
        failed = None
    except (UserError, Exception) as e:  # noqa: BLE001 - recorded, the grid goes on
        message = failure(e, run.folder)
        rows = [{**base, "status": "failed", "error": message[:400]}]
        failed = message
    seconds = time.perf_counter() - started
    for row in rows:
        row["run_seconds"] = round(seconds, 2)
    run.folder.mkdir(parents=True, exist_ok=True)
    write_rows(run.folder, rows)
    return Outcome(run.name, rows, failed, seconds, *chips)


def _base_row(job: RunJob) -> dict[str, Any]:
    c = job.run.coords
    sampling = next(s for s in job.spec.sampling if s.label == c["sampling"])
    return {"scenario": c["scenario"], "train_sites": "+".join(job.run.train_sites), "dataset": c["dataset"],
            "bands": "+".join(job.run.bands) if job.run.bands else "all", "augment": job.run.augment,
            "sampling": c["sampling"], "method": sampling.method, "size": c["size"],
            "architecture": c["architecture"], "filters": c["filters"], "batch_size": c["batch_size"],
            **{a: c[a] for a in TRAINING_AXES}, "seed": c["seed"], "precision_mode": job.precision,
            "device": job.device, "slidemap_version": __version__, "run_folder": str(job.run.folder)}


def _train(job: RunJob) -> tuple[TrainSummary, Bundle | None]:
    """The run's training: skipped when its bundle is there, resumed when it was interrupted.

    Returns its summary and, when it trained now, its bundle as loaded (None: read it from the run folder).
    """
    from slidemap.stages import train
    from slidemap.stages.train import TrainSummary

    run = job.run
    done = (run.folder / "bundle.pt").is_file() and (run.folder / "summary.json").is_file()
    if done:
        return TrainSummary.model_validate(json.loads((run.folder / "summary.json").read_text())), None
    settings = training_settings(job.spec, run.coords)
    check_enough_chips(run, settings["val_fraction"], run.coords["seed"], job.spec.training.min_chips)
    started = (run.folder / "config.yaml").is_file()
    result = train.run(train.TrainOptions(
        chips=[c.folder for c in run.chips], out=run.folder, model=run.coords["architecture"],
        filters=run.coords["filters"], batch_size=run.coords["batch_size"], augment=run.augment,
        bands=list(run.bands) if run.bands else None, seed=run.coords["seed"], resume=started, progress=False,
        threads=job.threads, model_args=run.model_args,
        **{**settings, "precision": job.precision, "device": job.device},
        learn_postprocess=job.spec.predict.postprocess != "none", learning_curve=False, keep_checkpoints=False))
    return result.summary, result.model


def training_settings(spec: Spec, coords: dict[str, Any]) -> dict[str, Any]:
    """The TrainOptions a run takes from ``training:``: the spec's values, each axis at the run's point."""
    from slidemap.stages.train import TrainOptions

    given = spec.training.model_dump()
    return {k: coords[k] if k in TRAINING_AXES else v for k, v in given.items() if k in TrainOptions.model_fields}


def check_enough_chips(run: RunPlan, val_fraction: float, seed: int, min_chips: int) -> tuple[int, int]:
    """A run's (training, validation) chips after its split; fewer than ``min_chips`` to train on is a UserError.

    The split is the one training draws (``slidemap.raster.split.split_chips`` per chip set, seeded the same);
    the error says how many windows the sampler refused and why, and which option admits them.
    """
    from slidemap.formats.chips import ChipSet
    from slidemap.raster.split import split_chips

    train = val = buffer = 0
    sets = []
    for chip in run.chips:
        chipset = ChipSet(chip.folder)
        split = split_chips(chipset.windows or [{} for _ in range(len(chipset))], val_fraction, seed)
        train, val, buffer = train + split.train.size, val + split.val.size, buffer + split.buffer.size
        sets.append((chip, chipset))
    if train >= min_chips:
        return train, val
    told = "; ".join(f"{chip.label()}: {len(cs)} chips{refused_windows(cs.meta.sampler, cs.meta.summary)}"
                     for chip, cs in sets)
    sampler = sets[0][1].meta.sampler
    raise UserError(f"training.min_chips {min_chips}: {train} training chips after the validation split ({val} "
                    f"val, {buffer} buffer) of {told}; admit more with {admitting_options(sampler)}, or lower "
                    f"training.min_chips")


def refused_windows(sampler: dict[str, Any], summary: dict[str, Any]) -> str:
    """``, N of M windows refused: why`` for a chip set, from its chips.json ('' where none was refused)."""
    drawn, fitting, kept = (summary.get(k) for k in ("drawn", "fitting_windows", "kept"))
    if not all(isinstance(x, int) for x in (drawn, fitting, kept)):
        return ""
    assert isinstance(drawn, int) and isinstance(fitting, int) and isinstance(kept, int)
    grid = sampler.get("method") == "grid"
    why = []
    if grid and drawn > fitting:
        why.append(f"{drawn - fitting} outside the train area or over max_nodata {sampler.get('max_nodata', 0)}")
    no_landslide = (fitting if grid else drawn) - kept
    if no_landslide > 0:
        why.append(f"{no_landslide} without a landslide (require_landslide)")
    return f", {drawn - kept} of {drawn} windows refused: {', '.join(why)}" if why else ""


def admitting_options(sampler: dict[str, Any]) -> str:
    """The options that admit more windows, for the sampler recorded in a chip set."""
    hints = ["a larger sampling overlap" if sampler.get("method") == "grid" else "a larger sampling count"]
    hints.append("a higher sampling max_nodata")
    if "max_unknown" in sampler:
        hints.append("a higher sampling max_unknown")
    if sampler.get("require_landslide"):
        hints.append("require_landslide: false")
    hints.append("a smaller size")
    return ", ".join(hints[:-1]) + " or " + hints[-1]


# --- the grid --------------------------------------------------------------------------------------

def check_spec_unchanged(spec: Spec, out: Path, spec_path: Path, precision: str, device: str) -> None:
    """Refuse a spec whose run-shaping settings changed since the first run in ``out``; record the spec.

    The training precision is compared as resolved: ``auto`` that resolves on this machine to another precision
    than the experiment's runs used is refused too (its runs would not be comparable).
    """
    recorded = out / SPEC_FILE
    now = json.loads(spec.model_dump_json())
    old_record: dict[str, Any] = {}
    if recorded.is_file():
        try:
            loaded = json.loads(recorded.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            loaded = None
        old_record = loaded if isinstance(loaded, dict) else {}
    old = old_record.get("spec")
    if isinstance(old, dict):
        for key in sorted(set(old) | set(now)):
            if key in MAY_CHANGE:
                continue
            diff = _first_difference(_without(old.get(key), key), _without(now.get(key), key), key)
            if diff:
                raise UserError(f"{spec_path}: {diff} since the first run in {out}; restore it, or run the "
                                f"changed spec with a new --out")
    before = old_record.get("precision")
    if before is not None and before != precision:
        raise UserError(f"{spec_path}: training.precision {spec.training.precision} resolves to {precision} on this "
                        f"machine, but the runs in {out} trained in {before}; give precision: {before} in a spec "
                        f"for a new --out, or continue this experiment on a machine that resolves it to {before}")
    with atomic_file(recorded) as tmp:
        tmp.write_text(json.dumps({"slidemap_version": __version__, "precision": precision, "device": device,
                                   "spec": now}, indent=1) + "\n")


def resolve_training(spec: Spec) -> tuple[str, str]:
    """The experiment's (precision, device type), resolved once on this machine for every run."""
    from slidemap.nn.device import resolve_device, resolve_precision

    device = resolve_device(spec.training.device)
    return resolve_precision(spec.training.precision, device), device.type


def _without(value: Any, key: str) -> Any:
    """``value`` (the spec's ``key`` section) without the nested keys that may change (``MAY_CHANGE``)."""
    if not isinstance(value, dict):
        return value
    return {k: v for k, v in value.items() if f"{key}.{k}" not in MAY_CHANGE}


def _first_difference(old: Any, new: Any, path: str) -> str | None:
    """Where ``new`` departs from ``old``; added keys and list entries (new grid points) are allowed."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in old:
            if k not in new:
                return f"{path}.{k}: removed"
            d = _first_difference(old[k], new[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(old, list) and isinstance(new, list) and path.split(".")[0] in ("sampling", "models"):
        # an entry may gain keys (an option added to the stage since), never change or lose one
        kept = all(any(_first_difference(o, n, path) is None for n in new) for o in old)
        return None if kept else f"{path}: an entry changed"
    if old != new:
        return f"{path}: changed (was {json.dumps(old)}, now {json.dumps(new)})"
    return None


def prepare_shared(plan: Plan, log: Callable[[str], None]) -> dict[str, str]:
    """Prepare every site and sample every chip set the runs need; returns chip-set failures by key."""
    for name, site in plan.spec.sites.items():
        log(f"site {name}: {materialise_site(plan.sites[name], site)}")
    failures = {}
    for key, chip in plan.chipsets.items():
        try:
            log(f"chips {chip.label()}: {materialise_chips(chip, scene_of(plan, chip.site))}")
        except UserError as e:
            failures[key] = f"chip set {chip.label()}: {e}"
            log(f"chips {chip.label()}: FAILED {e}")
    return failures


def run_experiment(spec_path: str | Path, out: str | Path, workers: int = 1, ray: str | None = None,
                   log: Callable[[str], None] | None = None) -> tuple[int, int, Path]:
    """Run (or continue) the grid of ``spec_path`` in ``out``; returns (runs done, runs failed, csv path).

    Then, with ``predict.ensemble``, the ensembles whose seeds have all finished; a failed ensemble counts as failed.
    """
    spec_path = Path(spec_path)
    spec = load_spec(spec_path)
    out_dir = check_out(out, SPEC_FILE, [spec_path, *site_inputs(spec)], "experiment")
    log = log or (lambda text: print(text, file=sys.stderr))
    if workers < 1:
        raise UserError(f"--workers {workers}: must be at least 1")
    check_inputs(spec)
    precision, device = resolve_training(spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    with output_lock(out_dir):
        check_spec_unchanged(spec, out_dir, spec_path, precision, device)
        plan = make_plan(spec, out_dir)
        chip_failures = prepare_shared(plan, log)
        scenes = {n: (str(s) if (s := scene_of(plan, n)) else None) for n in spec.sites}
        l4s_tests = {n: str(plan.sites[n].test_chips) if spec.sites[n].l4s is not None
                     and (plan.sites[n].test_chips / "chips.json").is_file() else None for n in spec.sites}
        threads = spec.resources.cpus or max(1, cores() // (workers if ray is None else 1))
        todo, results_csv = [], out_dir / "results.csv"
        for run in plan.runs:
            rows = read_rows(run.folder)
            if rows and all(r.get("status") == "ok" for r in rows):
                continue
            job = RunJob(run, spec, scenes, l4s_tests, threads, precision, device)
            bad = [chip_failures[c.key] for c in run.chips if c.key in chip_failures]
            if bad:
                write_rows(run.folder, [{**_base_row(job), "status": "failed", "error": bad[0][:400]}])
                continue
            todo.append(job)
        known: dict[Path, list[dict[str, Any]] | None] = {}
        collect(plan, results_csv, known)
        log(f"{len(plan.runs)} runs, {len(plan.runs) - len(todo)} already recorded, {len(todo)} to run "
            f"({'ray ' + ray if ray else f'{workers} worker(s)'}, {threads} thread(s) each; training in "
            f"precision {precision} on {device}, resolved once for every run)")
        folders = {job.run.name: job.run.folder for job in todo}
        with _progress(plan, todo, workers) as tick:
            for outcome in _dispatch(todo, workers, ray, spec):
                tick(outcome)
                known[folders[outcome.name]] = read_rows(folders[outcome.name])  # as the CSV would read it
                collect(plan, results_csv, known)
        failed = sum(1 for run in plan.runs if any(r.get("status") != "ok" for r in read_rows(run.folder) or [{}]))
        failed += _ensembles(plan, scenes, l4s_tests, threads, workers, ray, log, results_csv, known)
    return len(plan.runs) - failed, failed, results_csv


def _ensembles(plan: Plan, scenes: dict[str, str | None], l4s_tests: dict[str, str | None], threads: int,
               workers: int, ray: str | None, log: Callable[[str], None], results_csv: Path,
               known: dict[Path, list[dict[str, Any]] | None]) -> int:
    """Predict the ensembles whose seeds have all finished (after the runs); returns how many failed."""
    if not plan.ensembles:
        return 0
    jobs, waiting = ensemble_jobs(plan.ensembles, plan.spec, scenes, l4s_tests, threads)
    log(f"{len(plan.ensembles)} ensembles, {len(jobs)} to predict, {len(waiting)} waiting for a member to finish")
    folders = {job.plan.name: job.plan.folder for job in jobs}
    failed = 0
    for name, error, seconds in dispatch(execute_ensemble, jobs, workers, ray, plan.spec.resources.cpus or 1,
                                         plan.spec.resources.gpu):
        log(f"ensemble {name}: {'FAILED: ' + error if error else f'{seconds:.0f} s'}")
        failed += error is not None
        known[folders[name]] = read_rows(folders[name])
        collect(plan, results_csv, known)
    return failed


def site_inputs(spec: Spec) -> list[Path]:
    """Every file or folder the sites read: ``--out`` may not be one of them, hold one or lie inside one.

    Scenes, images, DEMs, inventories, Landslide4Sense folders and lists.
    """
    paths: list[Path] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, Path):
            paths.append(obj)
        elif isinstance(obj, dict | list):
            for v in obj.values() if isinstance(obj, dict) else obj:
                walk(v)

    for site in spec.sites.values():
        walk(site.model_dump(mode="python"))
    return paths


def collect(plan: Plan, path: Path, known: dict[Path, list[dict[str, Any]] | None]) -> int:
    """Rebuild results.csv from the runs' records, in grid order; an ensemble's rows after its last member's.

    ``known`` holds records already read (by run or ensemble folder), so that a grid of n runs reads each record
    once rather than n times; the caller puts in each finished run's rows.
    """
    after = {e.members[-1].folder: e.folder for e in plan.ensembles}
    rows = []
    for run in plan.runs:
        for folder in (run.folder, after[run.folder]) if run.folder in after else (run.folder,):
            if folder not in known:
                known[folder] = read_rows(folder)
            rows += known[folder] or []
    return write_results(path, rows)


def _dispatch(jobs: list[RunJob], workers: int, ray: str | None, spec: Spec) -> Iterator[Outcome]:
    """Outcomes as runs finish: in this process, in a pool of processes, or as Ray tasks."""
    yield from dispatch(execute_run, jobs, workers, ray, spec.resources.cpus or 1, spec.resources.gpu)


@contextlib.contextmanager
def _progress(plan: Plan, todo: list[RunJob], workers: int) -> Iterator[Callable[[Outcome], None]]:
    """Runs done / failed / left, the running runs' epochs and an ETA, on a terminal (quiet elsewhere)."""
    state: dict[str, Any] = {"done": 0, "failed": 0, "seconds": [], "started": time.perf_counter()}
    live = None
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.live import Live

        live = Live(console=Console(stderr=True), transient=True, refresh_per_second=1)
        live.start()
    stop = threading.Event()

    def text() -> str:
        left = len(todo) - state["done"] - state["failed"]
        mean = sum(state["seconds"]) / len(state["seconds"]) if state["seconds"] else None
        eta = f", ETA {mean * left / max(1, workers) / 60:.0f} min" if mean else ""
        running = [j.run for j in todo if read_rows(j.run.folder) is None
                   and (j.run.folder / "metrics.csv").is_file()][:workers]
        epochs = "; ".join(f"{r.name}: epoch {_epochs(r.folder)}" for r in running)
        return f"runs: {state['done']} done, {state['failed']} failed, {left} left{eta}  {epochs}"

    def loop() -> None:
        while not stop.wait(2.0):
            if live is not None:
                live.update(text())

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()

    def tick(outcome: Outcome) -> None:
        state["failed" if outcome.failed else "done"] += 1
        state["seconds"].append(outcome.seconds)
        chips = "" if outcome.train_chips is None else f"{outcome.train_chips} train / {outcome.val_chips} val chips, "
        status = f"FAILED: {outcome.failed}" if outcome.failed else f"{chips}{outcome.seconds:.0f} s"
        print(f"run {outcome.name}: {status}", file=sys.stderr)

    try:
        yield tick
    finally:
        stop.set()
        if live is not None:
            live.stop()


def _epochs(folder: Path) -> int:
    try:
        return max(0, len((folder / "metrics.csv").read_text().splitlines()) - 1)
    except OSError:
        return 0


def dry_run(spec_path: str | Path, out: str | Path, calibrate: bool = True) -> str:
    """The grid without running it: the inputs opened, the runs, every chip set counted, an estimated wall time.

    Every input is listed, a missing or unreadable one too (``MISSING ...``: the run itself refuses to start).
    Nothing is written to ``out``. Chip sets are counted where their site's scene exists (given, or prepared by
    an earlier run in ``out``); the others are counted after preparing.
    """
    from slidemap.experiments.estimate import estimate_seconds
    from slidemap.experiments.sites import check_inputs, count_chips

    spec = load_spec(spec_path)
    inputs = check_inputs(spec, strict=False)
    missing = sum(line.startswith("MISSING") for line in inputs)
    plan = make_plan(spec, Path(out).resolve())
    precision, device = resolve_training(spec)
    axes = [a for a in AXES if a not in TRAINING_AXES or len(spec.axis_values(a)) > 1]
    verdict = (f"{missing} input(s) missing or unreadable: a run would stop before its first step; fix the paths"
               if missing else "every input opens")
    lines = [f"inputs (headers only): {verdict}", *(f"  {line}" for line in inputs),
             f"{len(plan.runs)} runs, {len(plan.chipsets)} distinct chip sets, {len(spec.sites)} sites; training in "
             f"precision {precision} on {device} (training.precision {spec.training.precision}), the same for "
             f"every run", "  ".join(f"{a:>12s}" for a in axes)]
    lines += ["  ".join(f"{str(run.coords[a]):>12s}" for a in axes) for run in plan.runs]
    if plan.ensembles:
        lines.append(f"{len(plan.ensembles)} ensembles of each grid point's seeds (predict.ensemble), predicted "
                     f"after their runs")
    seed = spec.seed_list()[0]
    counts = {key: count_chips(plan, chip, seed) for key, chip in plan.chipsets.items()}
    min_chips = spec.training.min_chips
    lines.append(f"chip sets (training / validation chips after the split at seed {seed}, val_fraction "
                 f"{spec.training.val_fraction}; a run needs training.min_chips {min_chips}):")
    for key, chip in plan.chipsets.items():
        n = counts[key]
        if n is None:
            lines.append(f"  {chip.label()}: counted after preparing site {chip.site}")
            continue
        short = f"; fewer than {min_chips}: a run on it alone would stop" if n.train < min_chips else ""
        lines.append(f"  {chip.label()}: {n.chips} chips, {n.train} train / {n.val} val / {n.buffer} buffer{short}")
    if calibrate and missing:
        lines.append("estimated wall time: once every input opens (see the MISSING lines above)")
    elif calibrate:
        lines.append(estimate_seconds(plan, precision, device, counts))
    return "\n".join(lines)
