"""The training levers for transfer between sites, each against the same baseline, over seeds: F1 mean ± sd.

    python bench/bench_levers.py --out /tmp/levers                 # synthetic sites, 3 seeds
    python bench/bench_levers.py --out /tmp/levers --seeds 0,1,2,3,4 --epochs 30
    python bench/bench_levers.py --out /tmp/levers --data chattogram,l4s   # the real data of ../shared/data
    python bench/bench_levers.py --out /tmp/levers --views    # then: test-time augmentation and ensembles

Two synthetic sites that differ in sensor gain and illumination (``synth: sensor_gain, sun_elevation``, and
in terrain and land cover by seed) are each trained on and tested on both, once per lever and seed, through
the experiment layer (one spec per lever, written into ``--out``; a rerun redoes nothing). The table gives
the pooled F1 per test site (mean ± sd over the seeds) on the site trained on (own) and on the other site
(transfer), and the lever's paired difference against the baseline (on transfer where there is a second
site, else on the own site). A lever becomes a default only where it raises mean transfer F1 by more than the
seed spread. Nothing here is a test.

``--views`` predicts the synthetic baseline's test areas again with the same models: each run alone with
``--tta 8`` beside ``--tta 1``, and the ensemble of each grid point's seeds (``predict RUN_A RUN_B RUN_C``),
pooled F1 per site and the seconds each took (levers of prediction: no training).

``--data`` picks the data: ``synthetic`` (the two sites above), ``chattogram`` (the real Sentinel-2 scene and
label raster of ``../shared/data/chattogram-s2``, split 3:2, 32 px windows holding a landslide: one site, so
own-site F1 only) and ``l4s`` (the six real Landslide4Sense patches of ``../shared/data/landslide4sense-sample``:
four to train and validate, two to test; far too few to train a useful model, so the spread is the finding).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path
from typing import cast

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


SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
L4S_TEST = ("image_16.h5", "image_28.h5")  # two positive patches held out; the rest (one negative) train


def l4s_folders(root: Path) -> dict[str, str]:
    """The sample's patches split into train and test folders (img/, mask/ each) inside ``root``."""
    import shutil

    src = SHARED / "landslide4sense-sample"
    for part in ("train", "test"):
        for kind in ("img", "mask"):
            (root / part / kind).mkdir(parents=True, exist_ok=True)
    for image in sorted((src / "img").glob("image_*.h5")):
        part = "test" if image.name in L4S_TEST else "train"
        mask = image.name.replace("image_", "mask_")
        shutil.copyfile(image, root / part / "img" / image.name)
        shutil.copyfile(src / "mask" / mask, root / part / "mask" / mask)
    return {"folder": str(root / "train"), "test_folder": str(root / "test")}


def spec(name: str, training: dict, seeds: list[int], epochs: int, patience: int, data: str = "synthetic",
         root: Path | None = None) -> dict:
    if data == "chattogram":
        folder = SHARED / "chattogram-s2"
        return {
            "name": f"levers-chattogram-{name}",
            "description": f"training lever '{name}' on the real Chattogram scene and label raster",
            "sites": {"chattogram": {"prepare": {
                "images": [str(folder / "s2_4band.tif")], "band_names": ["red", "green", "blue", "nir"],
                "inventory": str(folder / "labels.tif"), "label_values": [2], "split": "3:2"}}},
            "datasets": {"rgbn": {"bands": ["red", "green", "blue", "nir"], "augment": True}},
            "sampling": [{"method": "grid", "overlap": 0.5, "require_landslide": True, "max_unknown": 0.99}],
            "sizes": [32],
            "models": [{"architecture": "unet", "filters": 8, "batch_size": 16}],
            "training": {"lr": 0.002, "epochs": epochs, "patience": patience, "loss": "bce+dice",
                         "precision": "32", "min_chips": 16, **training},
            "seeds": seeds,
            "predict": {"threshold": 0.5, "outputs": "metrics"},
        }
    if data == "l4s":
        return {
            "name": f"levers-l4s-{name}",
            "description": f"training lever '{name}' on the six real Landslide4Sense sample patches",
            "sites": {"l4s": {"l4s": l4s_folders(cast(Path, root) / "l4s-data")}},
            "datasets": {"rgbn+terrain": {"bands": ["B2", "B3", "B4", "B8", "slope", "dem"], "augment": True}},
            "sampling": [{"method": "grid"}],
            "sizes": [128],
            "models": [{"architecture": "unet", "filters": 8, "batch_size": 2}],
            "training": {"lr": 0.002, "epochs": epochs, "patience": patience, "loss": "bce+dice",
                         "precision": "32", "min_chips": 1, **training},
            "seeds": seeds,
        }
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
    """(trained on, tested on, seed) -> pooled F1 of the site (its one test area's, where it has only one)."""
    pooled, areas = {}, {}
    with open(results, newline="") as f:
        for row in csv.DictReader(f):
            if row["status"] != "ok" or row["seed"] == "ensemble":
                continue
            key = (row["train_sites"], row["test_site"], int(row["seed"]))
            if row["pooled"] == "site":
                pooled[key] = float(row["f1"])
            elif not row["pooled"]:
                areas.setdefault(key, []).append(float(row["f1"]))
    return pooled | {k: v[0] for k, v in areas.items() if k not in pooled and len(v) == 1}


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
    ap.add_argument("--data", default="synthetic", help="comma-separated: synthetic, chattogram, l4s")
    ap.add_argument("--views", action="store_true", help="tta and ensembles of the synthetic baseline (see above)")
    a = ap.parse_args(argv)
    if a.views:
        print(machine_line())
        print(format_table(views_rows(a.out / "baseline")))
        return
    from slidemap.experiments.runner import run_experiment

    seeds = [int(s) for s in a.seeds.split(",")]
    print(machine_line())
    a.out.mkdir(parents=True, exist_ok=True)
    for data in a.data.split(","):
        print(f"# data: {data}", flush=True)
        found: dict[str, dict[tuple[str, str, int], float]] = {}
        for name in a.levers.split(","):
            stem = name.replace(" ", "_").replace("+", "")
            path = a.out / (stem + ".yaml" if data == "synthetic" else f"{data}-{stem}.yaml")
            path.write_text(yaml.safe_dump(spec(name, LEVERS[name], seeds, a.epochs, a.patience, data, a.out),
                                           sort_keys=False))
            done, failed, csv_path = run_experiment(path, a.out / path.stem, log=lambda t: None)
            print(f"{name}: {done} runs done, {failed} failed", flush=True)
            found[name] = read_f1(csv_path)
        print(format_table(lever_rows(found)), flush=True)


def views_rows(folder: Path) -> list[dict]:
    """Test-time augmentation and seed ensembles of the synthetic baseline's runs: pooled F1 and seconds."""
    import time

    from slidemap.stages.predict import PredictOptions, run

    def scored(models: list[Path], tta: int, site: str, work: Path) -> tuple[list[int], float]:
        counts, seconds = [0, 0, 0], 0.0
        for area in ("test_a", "test_b"):
            t = time.perf_counter()
            r = run(PredictOptions(model=models if len(models) > 1 else models[0], out=work / f"{site}-{area}-{tta}",
                                   scene=folder / "sites" / site / "scene", area=area, evaluate=True, tta=tta,
                                   tile=256, overlap=32, device="cpu", precision="32", error_maps="none"))
            seconds += time.perf_counter() - t
            px = next(a.pixels for a in r.evaluation.metrics.areas if a.area == area)  # type: ignore[union-attr]
            counts = [c + px[k] for c, k in zip(counts, ("tp", "fp", "fn"), strict=True)]
        return counts, seconds

    def f1(c: list[int]) -> float:
        return 2 * c[0] / max(2 * c[0] + c[1] + c[2], 1)

    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for trained in SITES:
            runs = sorted((folder / "runs").glob(f"{trained}__*"))
            for tested in SITES:
                single = {tta: [scored([r], tta, tested, Path(tmp) / f"{r.name}") for r in runs] for tta in (1, 8)}
                ens = scored(runs, 1, tested, Path(tmp) / f"ens-{trained}")
                rows.append({"trained on": trained, "tested on": tested,
                             "single F1 (tta 1)": mean_sd([f1(c) for c, _ in single[1]]),
                             "single F1 (tta 8)": mean_sd([f1(c) for c, _ in single[8]]),
                             "tta 8 - tta 1 (paired)": mean_sd([f1(b[0]) - f1(a[0]) for a, b in
                                                                 zip(single[1], single[8], strict=True)]),
                             f"ensemble of {len(runs)} F1": f"{f1(ens[0]):.3f}",
                             "s tta 1 / tta 8 / ensemble": " / ".join(f"{v:.2f}" for v in (
                                 statistics.mean(s for _, s in single[1]), statistics.mean(s for _, s in single[8]),
                                 ens[1]))})
    return rows


def lever_rows(found: dict[str, dict[tuple[str, str, int], float]]) -> list[dict]:
    """One row per lever: own and other site F1 (mean ± sd over seeds), paired difference to the baseline."""
    rows = []
    base = found.get("baseline", {})
    transfer_exists = any(tr != te for f1 in found.values() for tr, te, _ in f1)
    for name, f1 in found.items():
        own = [v for (tr, te, _), v in f1.items() if tr == te]
        transfer = [v for (tr, te, _), v in f1.items() if tr != te]
        diffs = [v - base[k] for k, v in f1.items() if (k[0] != k[1]) == transfer_exists and k in base]
        rows.append({"lever": name, "own site F1": mean_sd(own), "other site F1": mean_sd(transfer),
                     ("transfer" if transfer_exists else "own") + " F1 - baseline (paired)":
                     mean_sd(diffs) if name != "baseline" else "",
                     "runs": len({(tr, s) for tr, _, s in f1})})
    return rows

if __name__ == "__main__":
    main()
