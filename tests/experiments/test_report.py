"""The report's numbers on a small hand-written results.csv: best picks, table 3, the transfer matrix and
the paired tests equal values computed by hand."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from slidemap.experiments import analysis as an
from slidemap.experiments import conclusions
from slidemap.experiments.results import COLUMNS

# (scenario, train_sites, test_site, test_area, dataset, sampling, method, size, architecture, filters, seed,
#  tp, fp, fn) with tn = 1000 everywhere
RUNS = [
    ("a", "A", "A", "t1", "d", "grid", "grid", 32, "unet", 16, 0, 50, 50, 50),
    ("a", "A", "A", "t2", "d", "grid", "grid", 32, "unet", 16, 0, 30, 10, 60),
    ("a", "A", "A", "t1", "d", "grid", "grid", 32, "unet", 32, 0, 60, 20, 40),
    ("a", "A", "A", "t2", "d", "grid", "grid", 32, "unet", 32, 0, 40, 40, 40),
    ("a", "A", "A", "t1", "d", "rnd", "random", 32, "unet", 16, 0, 70, 30, 30),
    ("a", "A", "A", "t2", "d", "rnd", "random", 32, "unet", 16, 0, 50, 30, 30),
    ("a", "A", "A", "t1", "d", "grid", "grid", 32, "unet", 16, 1, 40, 40, 60),
    ("a", "A", "A", "t2", "d", "grid", "grid", 32, "unet", 16, 1, 20, 20, 60),
    ("a", "A", "B", "t1", "d", "grid", "grid", 32, "unet", 16, 0, 10, 90, 90),
    ("a", "A", "A", "t1", "d", "grid", "grid", 32, "resunet", 16, 0, 80, 20, 20),
    ("a", "A", "B", "t1", "d", "grid", "grid", 32, "resunet", 16, 0, 5, 95, 95),
]


def f1(tp, fp, fn):
    return 2 * tp / (2 * tp + fp + fn)


def iou(tp, fp, fn):
    return tp / (tp + fp + fn)


@pytest.fixture
def results(tmp_path) -> Path:
    path = tmp_path / "results.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for sc, trs, ts, ta, ds, smp, meth, size, arch, filt, seed, tp, fp, fn in RUNS:
            w.writerow({"scenario": sc, "train_sites": trs, "test_site": ts, "test_area": ta, "pooled": "",
                        "dataset": ds, "bands": "red+nir", "augment": "False", "sampling": smp, "method": meth,
                        "size": size, "architecture": arch, "filters": filt, "batch_size": 4, "seed": seed,
                        "tp": tp, "fp": fp, "fn": fn, "tn": 1000, "precision": tp / (tp + fp),
                        "recall": tp / (tp + fn), "f1": f1(tp, fp, fn), "iou": iou(tp, fp, fn),
                        "status": "ok", "run_folder": f"runs/{sc}-{smp}-{arch}{filt}-s{seed}"})
    return path


def test_best_per_group_picks_the_best_mean_over_seeds(results):
    best = an.best_models(an.load(results), "f1")
    row = best[(best["test_site"] == "A") & (best["test_area"] == "t1") & (best["sampling"] == "grid")].iloc[0]
    # unet-16 over seeds: (f1 50/50/50 + f1 40/40/60) / 2 = 0.45; unet-32: 0.6667; resunet-16: 0.8
    assert row["model"] == "resunet-16/b4"
    assert row["f1"] == pytest.approx(f1(80, 20, 20))
    unet16 = an.mean_sd(an.areas(an.load(results)), ["test_site", "test_area", "sampling", "model"])
    u = unet16[(unet16["model"] == "unet-16/b4") & (unet16["test_area"] == "t1") & (unet16["test_site"] == "A")
               & (unet16["sampling"] == "grid")].iloc[0]
    assert u["f1"] == pytest.approx((f1(50, 50, 50) + f1(40, 40, 60)) / 2)
    assert u["n"] == 2 and u["f1_sd"] > 0


def test_best_average_iou_averages_iou_over_test_areas(results):
    t3 = an.best_average_iou(an.load(results))
    grid = t3[t3["sampling"] == "grid"].iloc[0]
    # unet-32 is on both of A's areas and nowhere else: average of t1 and t2 (B has none for it)
    u32 = (iou(60, 20, 40) + iou(40, 40, 40)) / 2
    u16 = ((iou(50, 50, 50) + iou(40, 40, 60)) / 2 + (iou(30, 10, 60) + iou(20, 20, 60)) / 2
           + iou(10, 90, 90)) / 3
    res = (iou(80, 20, 20) + iou(5, 95, 95)) / 2
    best = max((u32, "unet-32/b4"), (u16, "unet-16/b4"), (res, "resunet-16/b4"))
    assert grid["model"] == best[1] and grid["average"] == pytest.approx(best[0])
    rnd = t3[t3["sampling"] == "rnd"].iloc[0]
    assert rnd["average"] == pytest.approx((iou(70, 30, 30) + iou(50, 30, 30)) / 2)


def test_transfer_matrix_cells(results):
    m = an.transfer_matrix(an.load(results))
    # sampling and filters vary in this grid: the matrix keeps them apart instead of averaging over them
    assert {"sampling", "filters"} <= set(m.columns)
    cell = m[(m["architecture"] == "unet") & (m["test_site"] == "A") & (m["sampling"] == "grid")
             & (m["filters"] == 16)].iloc[0]
    # site-level F1 per run (areas pooled by counts), then the mean over the two seeds
    runs = [f1(50 + 30, 50 + 10, 50 + 60), f1(40 + 20, 40 + 20, 60 + 60)]
    assert cell["f1"] == pytest.approx(sum(runs) / len(runs)) and cell["n"] == 2
    assert cell[an.RUNS_ON] == "not recorded / not recorded"
    b = m[(m["architecture"] == "resunet") & (m["test_site"] == "B")].iloc[0]
    assert b["f1"] == pytest.approx(f1(5, 95, 95))


def test_claims_pair_runs_not_test_areas(results):
    claims = conclusions.claims(an.load(results))
    sampling = next(c for c in claims if "random sampling outperformed" in c.quote)
    # the best run of each sampling per seed, over the configurations both trained: seed 0 only (unet-16);
    # each run's IoU averaged over its test areas (study 000's "average mIoU")
    rnd = (iou(70, 30, 30) + iou(50, 30, 30)) / 2
    grid = (iou(50, 50, 50) + iou(30, 10, 60) + iou(10, 90, 90)) / 3
    c = sampling.comparisons[0]
    assert (c.n, c.used) == (1, 1) and c.mean == pytest.approx(rnd - grid)
    assert c.unpaired == 3 and sampling.verdict == "too few pairs" and sampling.p is None
    local = next(c for c in claims if c.quote.startswith("ResU-Net demonstrated the highest score"))
    # filters differ within U-Net (16, 32): only unet-16 pairs with resunet-16; A's two areas pooled, B left out
    pair = local.comparisons[0]
    assert pair.n == 1 and pair.mean == pytest.approx(f1(80, 20, 20) - f1(50 + 30, 50 + 10, 50 + 60))
    assert pair.unpaired == 3 and "1 of 1 pairs differ" in local.sentence()
    assert next(c for c in claims if "64x64" in c.quote).verdict == \
        "cannot be tested here: the grid lacks the patch size(s) 64, 128 px"


# --- the report of a small real grid ---------------------------------------------------------------

GRID = """\
name: two architectures
resources: {cpus: 1}
sites:
  a: {synth: {seed: 3, size: 256, landslides: 30}}
  b: {synth: {seed: 5, size: 256, landslides: 30, relief: 1.4}}
datasets: {rgb: {bands: [blue, green, red, nir]}}
sampling: [{method: grid, overlap: 0.5}]
sizes: [32]
models: [{architecture: unet, filters: 4, batch_size: 8}, {architecture: resunet, filters: 4, batch_size: 8}]
training: {epochs: 1, patience: 0, precision: "32", min_chips: 4}
scenarios: {a: {train: [a]}, both: {train: [a, b]}}
predict: {outputs: metrics}
"""


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    from slidemap.experiments.runner import run_experiment

    root = tmp_path_factory.mktemp("grid")
    (root / "spec.yaml").write_text(GRID)
    assert run_experiment(root / "spec.yaml", root / "out", log=lambda t: None)[:2] == (4, 0)
    return root / "out"


@pytest.mark.slow
def test_report_tables_maps_and_verdicts(grid, tmp_path):
    import json

    import numpy as np
    from matplotlib.image import imread

    from slidemap.experiments.report import write_report

    before = sorted(p.relative_to(grid) for p in (grid / "runs").rglob("*"))
    md = write_report(grid, tmp_path / "report")
    text = md.read_text()
    assert text.startswith("# two architectures\n")  # the spec's name
    assert "<title>two architectures</title>" in (tmp_path / "report" / "report.html").read_text()
    # table 1: four models on the one dataset, trained in fp32 on the CPU
    assert "| rgb | blue+green+red+nir | False | 4 | 32 / cpu |" in text
    # table 2: the chips each scenario trained on, as the chip sets' chips.json count them
    counts = {p.parent.name.split("__")[0]: json.loads(p.read_text())["count"] for p in grid.glob("chips/*/chips.json")}
    assert f"| a | a | rgb | grid | 32 | {counts['a']} |" in text
    assert f"| both | a+b | rgb | grid | 32 | {counts['a'] + counts['b']} |" in text
    # figure 6 per scenario; study 002's maps per scenario x test site, U-Net and ResU-Net side by side
    pngs = [tmp_path / "report" / "best_per_area" / f"{s}.png" for s in ("a", "both")]
    pngs += [tmp_path / "report" / "architectures" / f"{s}__{t}.png" for s in ("a", "both") for t in ("a", "b")]
    for png in pngs:
        image = imread(png)
        assert image.shape[1] >= 700 and np.std(image[..., :3]) > 0.05, png
    assert "architectures side by side, trained: both, tested: b" in text
    # the maps were made from the runs' masks without writing into the runs, and the scratch is gone
    assert sorted(p.relative_to(grid) for p in (grid / "runs").rglob("*")) == before
    assert not list((tmp_path / "report").glob(".maps-*"))
    # every conclusion is listed with its verdict; this grid cannot test most of them, and says why
    assert text.count("- Study 000 (Soares et al. 2020, ") == 8
    assert text.count("- Study 002 (Ghorbanzadeh et al. 2021, ") == 9
    assert "the grid has one patch size" in text and "fewer than two scenarios train on a single site" in text
    # one or two U-Net/ResU-Net pairs per claim: too few for a verdict
    assert "\"the U-Net has more transferability capabilities\" — TOO FEW PAIRS" in text
