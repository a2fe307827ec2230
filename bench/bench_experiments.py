"""The experiment runner's cost: its overhead per run, and --workers 2 against --workers 1.

Runs N runs spread over a spec (default examples/quick.yaml) twice, with one worker and with two, into
fresh folders, and prints per run the wall time split into training epochs (timing.csv), prediction passes
(prediction.json) and everything else (the runner's overhead: start-up, chip loading, threshold choice,
bundle, evaluation, records), and the runs/hour of each worker count with their ratio, in one sitting.
The "outputs" column is pass 2 of each prediction: the mask, polygons and overviews, and the test area's
scoring, which the runner does as the mask is written; the headline share counts it as overhead.

    python bench/bench_experiments.py [--spec examples/quick.yaml] [--runs 8] [--outputs all|metrics]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import time
from pathlib import Path

import yaml


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def limited_spec(spec: Path, runs: int, folder: Path, outputs: str | None = None) -> Path:
    """The spec restricted (with ``only``) to ``runs`` grid points spread evenly over its plan, so that the
    sample holds both scenarios, both samplings, both sizes and both architectures of quick.yaml."""
    from slidemap.experiments.plan import make_plan
    from slidemap.experiments.spec import load_spec

    plan = make_plan(load_spec(spec), folder / "probe")
    data = yaml.safe_load(spec.read_text())
    step = max(1, len(plan.runs) // runs)  # one run per block of the plan, a different position in each
    picked = [plan.runs[min(i * step + i % step, len(plan.runs) - 1)] for i in range(min(runs, len(plan.runs)))]
    data["only"] = [dict(r.coords) for r in picked]
    if outputs:  # what each test area keeps (quick.yaml: metrics)
        data["predict"] = {**(data.get("predict") or {}), "outputs": outputs}
    for site in data.get("sites", {}).values():  # paths stay relative to the original spec
        for key in ("scene",):
            if key in site and not Path(site[key]).is_absolute():
                site[key] = str((spec.parent / site[key]).resolve())
    out = folder / "spec.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def run(spec: Path, out: Path, workers: int) -> float:
    from slidemap.experiments.runner import run_experiment

    t0 = time.perf_counter()
    done, failed, _ = run_experiment(spec, out, workers=workers, log=lambda t: None)
    if failed:
        raise SystemExit(f"{failed} runs failed in {out}")
    return time.perf_counter() - t0


def split_times(out: Path) -> list[tuple[str, float, float, float, float]]:
    """(run, wall, training epochs, prediction passes, their mask/polygons/overviews) per run of a folder."""
    rows = {}
    with open(out / "results.csv", newline="") as f:
        for r in csv.DictReader(f):
            rows.setdefault(r["run_folder"], float(r["run_seconds"]))
    out_rows = []
    for folder, wall in rows.items():
        folder = Path(folder)
        with open(folder / "timing.csv", newline="") as f:
            epochs = sum(float(t["seconds"]) for t in csv.DictReader(f))
        timings = [json.loads(p.read_text())["timings_s"] for p in (folder / "predictions").glob("*/prediction.json")]
        predict = sum(t["predict"] for t in timings)
        outputs = sum(t["mask_and_polygons"] + t["overviews"] for t in timings)
        out_rows.append((folder.name, wall, epochs, predict, outputs))
    return out_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=Path(__file__).resolve().parents[1] / "examples" / "quick.yaml")
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-experiments"))
    ap.add_argument("--outputs", choices=("all", "metrics"), help="override the spec's predict.outputs")
    a = ap.parse_args()
    shutil.rmtree(a.out, ignore_errors=True)
    a.out.mkdir(parents=True)
    spec = limited_spec(a.spec, a.runs, a.out, a.outputs)
    outputs = (yaml.safe_load(spec.read_text()).get("predict") or {}).get("outputs", "all")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; spec {a.spec} "
          f"({a.runs} runs spread over its plan, predict.outputs {outputs})")
    # Sites and chip sets are prepared once (untimed); then the runs alone are timed with 1 and 2 workers.
    run(spec, a.out / "w1", 1)
    shutil.copytree(a.out / "w1", a.out / "w2", ignore=shutil.ignore_patterns("runs", "results.csv"))
    shutil.rmtree(a.out / "w1" / "runs")
    wall1 = run(spec, a.out / "w1", 1)
    wall2 = run(spec, a.out / "w2", 2)
    print(f"\n{'run':60s} {'wall s':>7s} {'epochs s':>9s} {'predict s':>9s} {'outputs s':>9s} {'overhead':>9s}")
    total = [0.0, 0.0, 0.0, 0.0]
    for name, wall, epochs, predict, outputs in split_times(a.out / "w1"):
        other = wall - epochs - predict
        total = [total[0] + wall, total[1] + epochs, total[2] + predict, total[3] + outputs]
        print(f"{name:60s} {wall:7.1f} {epochs:9.1f} {predict:9.2f} {outputs:9.2f} {other / wall:9.1%}")
    runs_wall, epochs, predict, outputs = total
    print(f"{'all runs':60s} {runs_wall:7.1f} {epochs:9.1f} {predict:9.2f} {outputs:9.2f} "
          f"{(runs_wall - epochs - predict) / runs_wall:9.1%}")
    as_prediction = (runs_wall - epochs - predict - outputs) / runs_wall
    print(f"overhead per run {(runs_wall - epochs - predict) / a.runs:.2f} s: "
          f"{(runs_wall - epochs - predict) / runs_wall:.1%} of the runs' wall time counting the prediction outputs "
          f"(mask, polygons, overviews, scoring) as overhead, {as_prediction:.1%} counting them as the prediction; "
          f"{(wall1 - epochs - predict) / wall1:.1%} of the whole "
          f"--workers 1 command ({wall1:.1f} s: start-up, results.csv and progress included)")
    print(f"\n--workers 1: {a.runs / wall1 * 3600:.0f} runs/hour ({wall1:.0f} s); --workers 2: "
          f"{a.runs / wall2 * 3600:.0f} runs/hour ({wall2:.0f} s); ratio {wall1 / wall2:.2f}")


if __name__ == "__main__":
    main()
