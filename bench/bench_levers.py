"""The training levers for transfer between sites, each against the same baseline, over seeds: F1 mean ± sd.

    python bench/bench_levers.py --out /tmp/levers                 # synthetic sites, 3 seeds
    python bench/bench_levers.py --out /tmp/levers --seeds 0,1,2,3,4 --epochs 30

Two synthetic sites that differ in sensor gain and illumination (``synth: sensor_gain, sun_elevation``, and
in terrain and land cover by seed) are each trained on and tested on both, once per lever and seed, through
the experiment layer (one spec per lever, written into ``--out``; a rerun redoes nothing). The table gives
the pooled F1 per test site (mean ± sd over the seeds) on the site trained on (own) and on the other site
(transfer), and the lever's paired difference against the baseline on transfer. A lever becomes a default
only where it raises mean transfer F1 by more than the seed spread. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table, machine_line  # noqa: E402

SITES = {
    "sunny": {"synth": {"seed": 11, "size": 512, "landslides": 60, "relief": 1.2, "bare_fields": 1.5}},
    "dim": {"synth": {"seed": 23, "size": 512, "landslides": 60, "relief": 1.2, "bare_fields": 1.5,
                      "sensor_gain": 1.6, "sun_elevation": 30}},
}
LEVERS = {
    "baseline": {},
    "photometric": {"photometric": True},
    "cosine + warm-up": {"lr_schedule": "cosine", "warmup_epochs": 2},
    "smoothed stopping": {"stop_smoothing": 0.6, "min_epochs": 8},
    "per-scene standardisation": {"standardise": "scene"},
}


def spec(name: str, training: dict, seeds: list[int], epochs: int, patience: int) -> dict:
    return {
        "name": f"levers-{name}",
        "description": f"training lever '{name}' on two sites that differ in sensor gain and illumination",
        "sites": SITES,
        "datasets": {"rgbn+dem": {"bands": ["blue", "green", "red", "nir", "dem", "slope"], "augment": True}},
        "sampling": [{"method": "grid", "overlap": 0.5}],
        "sizes": [64],
        "models": [{"architecture": "unet", "filters": 8, "batch_size": 16}],
        "training": {"lr": 0.002, "epochs": epochs, "patience": patience, "loss": "bce+dice",
                     "precision": "32", "min_chips": 16, **training},
        "seeds": seeds,
        "scenarios": {"sunny": {"train": ["sunny"]}, "dim": {"train": ["dim"]}},
        "predict": {"tile": 256, "overlap": 32, "outputs": "metrics"},
    }


def read_f1(results: Path) -> dict[tuple[str, str, int], float]:
    """(trained on, tested on, seed) -> pooled F1 of the site."""
    out = {}
    with open(results, newline="") as f:
        for row in csv.DictReader(f):
            if row["pooled"] == "site" and row["status"] == "ok":
                out[(row["train_sites"], row["test_site"], int(row["seed"]))] = float(row["f1"])
    return out


def mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--patience", type=int, default=6)
    ap.add_argument("--levers", default=",".join(LEVERS))
    a = ap.parse_args(argv)
    from slidemap.experiments.runner import run_experiment

    seeds = [int(s) for s in a.seeds.split(",")]
    print(machine_line())
    a.out.mkdir(parents=True, exist_ok=True)
    found: dict[str, dict[tuple[str, str, int], float]] = {}
    for name in a.levers.split(","):
        path = a.out / f"{name.replace(' ', '_').replace('+', '')}.yaml"
        path.write_text(yaml.safe_dump(spec(name, LEVERS[name], seeds, a.epochs, a.patience), sort_keys=False))
        folder = a.out / path.stem
        done, failed, csv_path = run_experiment(path, folder, log=lambda t: None)
        print(f"{name}: {done} runs done, {failed} failed", flush=True)
        found[name] = read_f1(csv_path)
    rows = []
    base = found.get("baseline", {})
    for name, f1 in found.items():
        own = [v for (tr, te, _), v in f1.items() if tr == te]
        transfer = [v for (tr, te, _), v in f1.items() if tr != te]
        diffs = [v - base[k] for k, v in f1.items() if k[0] != k[1] and k in base]
        rows.append({"lever": name, "own site F1": mean_sd(own), "other site F1": mean_sd(transfer),
                     "transfer F1 - baseline (paired)": mean_sd(diffs) if name != "baseline" else "",
                     "runs": len({(tr, s) for tr, _, s in f1})})
    print(format_table(rows))


if __name__ == "__main__":
    main()
