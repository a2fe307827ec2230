"""The statistics behind the report's verdicts, on hand-computed cases: tied pairs, too few pairs, exact
signed-rank p-values, Holm's correction, the seeded bootstrap interval, and claims whose unit is the run."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from slidemap.experiments import analysis as an
from slidemap.experiments import conclusions
from slidemap.experiments import verdicts as vd
from slidemap.experiments.results import COLUMNS


def test_tied_pairs_are_dropped_and_counted():
    # the case of the issue: 4 pairs of 16 differ; the exact two-sided p on them is 2/16, and 4 are too few
    c = vd.compare("32 vs 128 px", [0.0] * 12 + [0.1, 0.2, 0.3, 0.4])
    assert (c.n, c.used, c.p) == (16, 4, None)
    assert "4 of 16 pairs differ" in c.sentence() and "too few pairs" in c.sentence()
    assert c.mean == pytest.approx(1.0 / 16)  # ties count in the mean difference
    assert vd.signed_rank(np.array([0.1, 0.2, 0.3, 0.4]), "two-sided") == (0.125, "exact signed-rank test")


def test_too_few_below_six_a_verdict_from_six():
    five = vd.compare("x", [0.1, 0.2, 0.3, 0.4, 0.5])
    assert five.p is None
    six = vd.compare("x", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert six.p == pytest.approx(1 / 64) and six.method == "exact signed-rank test"  # all 6 positive: 1 of 2^6
    # one negative pair of rank 6: T+ = 15; P(T+ >= 15) = P(T- <= 6) = 14 sign patterns of 64
    assert vd.compare("x", [0.1, 0.2, 0.3, 0.4, 0.5, -0.6]).p == pytest.approx(14 / 64)
    # the negative one has rank 1: P(T- <= 1) = 2 / 64
    assert vd.compare("x", [-0.1, 0.2, 0.3, 0.4, 0.5, 0.6]).p == pytest.approx(2 / 64)
    # two sided doubles it
    assert vd.compare("x", [-0.1, 0.2, 0.3, 0.4, 0.5, 0.6], "two-sided").p == pytest.approx(4 / 64)


def test_tiny_p_values_are_not_lost():
    # 60 positive pairs: the exact one-sided p is 2^-60 (scipy's upper tail returns 0 for it)
    assert vd.compare("x", np.arange(1, 61) / 100).p == pytest.approx(2.0 ** -60)
    d = np.arange(1, 73) / 100
    d[0] = -d[0]  # rank 1 negative: 2 sign patterns of 2^72 reach T+ >= 2627
    assert vd.compare("x", d).p == pytest.approx(2 * 2.0 ** -72)
    assert vd.compare("x", d, "two-sided").p == pytest.approx(4 * 2.0 ** -72)


def test_tied_differences_use_every_sign_change():
    # |d| 0.1 twice: midranks 1.5, 1.5, 3..6; T+ = 19.5 when one 0.1 is negative; T- <= 1.5 in 3 of 64 patterns
    c = vd.compare("x", [-0.1, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert c.p == pytest.approx(3 / 64) and "all sign changes" in c.method


def test_holm_adjusts_and_a_claim_loses_significance():
    assert vd.holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])

    def claim(p: float) -> vd.Claim:
        return vd.Claim("000", f"claim {p}", "conclusions", "pairs", comparisons=(
            vd.Comparison("a vs b", 8, 8, p, "exact signed-rank test"),))

    claims = vd.with_holm([claim(0.01), claim(0.03), claim(0.04)])
    # 0.03 alone would be significant; after Holm (0.03 x 2 = 0.06) it is not
    assert [c.verdict for c in claims] == ["supported", "not supported", "not supported"]
    assert [c.p_holm for c in claims] == pytest.approx([0.03, 0.06, 0.06])
    assert "Holm-adjusted p = 0.06" in claims[1].sentence()
    # a claim that could not be tested does not enlarge the family
    untested = vd.Claim("002", "x", "y", "z", why_not="the grid has one architecture")
    assert vd.with_holm([claim(0.03), untested])[0].p_holm == pytest.approx(0.03)


def test_claims_of_several_comparisons():
    both = vd.Claim("002", "best at 64", "x", "y", comparisons=(
        vd.Comparison("64 vs 32", 8, 8, 0.01, ""), vd.Comparison("64 vs 128", 8, 8, 0.2, "")))
    assert both.p == 0.2  # every comparison must hold: the largest p
    none = vd.Claim("002", "no size wins", "x", "y", kind="no difference", combine="any", comparisons=(
        vd.Comparison("32 vs 64", 8, 8, 0.01, "", alternative="two-sided"),
        vd.Comparison("32 vs 128", 8, 8, 0.5, "", alternative="two-sided")))
    assert none.p == pytest.approx(0.02)  # Bonferroni over the two
    assert vd.with_holm([none])[0].verdict == "contradicted"
    short = vd.Claim("002", "x", "x", "y", comparisons=(vd.Comparison("a", 8, 8, 0.01, ""),
                                                         vd.Comparison("b", 5, 5, None, "")))
    assert short.p is None and short.verdict == "too few pairs"


def test_bootstrap_interval_is_seeded():
    assert vd.bootstrap_interval(np.array([0.2] * 8), 1) == (0.2, 0.2)
    # two pairs 0 and 1: resampled means 0, 0.5, 1 with chances 1/4, 1/2, 1/4 -> the interval is [0, 1]
    assert vd.bootstrap_interval(np.array([0.0, 1.0]), 7) == (0.0, 1.0)
    d = [0.05, -0.02, 0.11, 0.07, 0.03, 0.09, -0.01, 0.04]
    a, b = vd.compare("x", d, seed_text="claim"), vd.compare("x", d, seed_text="claim")
    assert (a.low, a.high) == (b.low, b.high)  # a rerun gives the same report
    assert a.low is not None and a.high is not None and a.low < float(np.mean(d)) < a.high
    # the interval of the mean of 8 pairs lies within the range of the pairs and not beyond it
    assert -0.02 <= a.low and a.high <= 0.11
    other = vd.compare("x", d, seed_text="another claim")
    assert (other.low, other.high) != (a.low, a.high)


def test_between_counts_triples():
    c = vd.between("recall", [(1, 2, 3)] * 6 + [(1, 1, 2)])
    assert (c.n, c.used) == (7, 6) and c.p == pytest.approx((1 / 3) ** 6)
    assert "6 of 7 matched triples without ties, the middle one between the others in 6" in c.sentence()


# --- claims on rows --------------------------------------------------------------------------------

def _write(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            tp, fp, fn = r.pop("counts")
            w.writerow({"scenario": "a", "train_sites": "A", "test_site": "A", "pooled": "", "sampling": "grid",
                        "method": "grid", "size": 32, "architecture": "unet", "filters": 16, "batch_size": 4,
                        "augment": "False", "tp": tp, "fp": fp, "fn": fn, "tn": 1000, "status": "ok",
                        "iou": tp / (tp + fp + fn), "f1": 2 * tp / (2 * tp + fp + fn), "precision_mode": "32",
                        "device": "cpu", **r})
    return path


def dem_grid(x_by_seed: list[int], precision: dict[int, str] | None = None) -> list[dict]:
    """Runs with and without a DEM per seed, two test areas each; with the DEM, area t1 finds x more pixels."""
    rows = []
    for seed, x in enumerate(x_by_seed):
        for dataset, bands, shift in (("rgb", "red+nir", 0), ("rgb+dem", "red+nir+dem", x)):
            folder = f"runs/{dataset}-s{seed}"
            mode = (precision or {}).get(seed, "32") if dataset == "rgb+dem" else "32"
            rows.append({"dataset": dataset, "bands": bands, "seed": seed, "test_area": "t1",
                         "counts": (50 + shift, 50, 50 - shift), "run_folder": folder, "precision_mode": mode})
            rows.append({"dataset": dataset, "bands": bands, "seed": seed, "test_area": "t2",
                         "counts": (50, 50, 50), "run_folder": folder, "precision_mode": mode})
    return rows


def test_dem_claim_pairs_runs_drops_ties_and_is_supported(tmp_path):
    # 9 seeds: 7 better with the DEM, 1 worse by the smallest margin, 1 tied
    df = an.load(_write(tmp_path / "results.csv", dem_grid([10, 20, 30, 40, 50, 60, 70, -5, 0])))
    claims = conclusions.claims(df)
    dem = next(c for c in claims if c.part == "the DEM")
    c = dem.comparisons[0]
    # one pair per run (its two areas pooled), not per test area: 9 pairs, the tie dropped
    assert (c.n, c.used, c.unpaired) == (9, 8, 0)
    # pooled F1 with the DEM: (200 + 2x) / (400 + x) against 0.5 without
    diffs = [1.5 * x / (400 + x) for x in (10, 20, 30, 40, 50, 60, 70, -5, 0)]
    assert c.mean == pytest.approx(np.mean(diffs))
    # T+ = 36 - 1 (the negative pair has rank 1): P(T- <= 1) = 2 / 2^8
    assert c.p == pytest.approx(2 / 256) and c.method == "exact signed-rank test"
    # the only tested claim: Holm leaves it as it is
    assert [x for x in claims if x.p is not None] == [dem] and dem.p_holm == pytest.approx(2 / 256)
    assert dem.verdict == "supported"
    text = dem.sentence()
    assert "8 of 9 pairs differ" in text and "one-sided p = 0.00781" in text and "Holm-adjusted p = 0.00781" in text
    aug = next(x for x in claims if x.part == "augmentation")
    assert aug.verdict == "cannot be tested here: no two datasets differ only by augmentation"


def test_runs_that_differ_in_precision_do_not_pair(tmp_path):
    rows = dem_grid([10, 20, 30, 40, 50, 60, 70, -5, 0], precision={3: "bf16-mixed"})
    df = an.load(_write(tmp_path / "results.csv", rows))
    c = next(c for c in conclusions.claims(df) if c.part == "the DEM").comparisons[0]
    assert (c.n, c.used, c.unpaired, c.refused) == (8, 7, 2, 2)
    assert "2 unit(s) without a partner differing only in this, 2 of them because their partner ran at another " \
           "precision or on another device" in c.sentence()


def test_an_older_results_csv_says_not_recorded(tmp_path):
    rows = dem_grid([10, 20, 30, 40, 50, 60])
    for r in rows:
        r["precision_mode"] = r["device"] = ""
    df = an.load(_write(tmp_path / "results.csv", rows))
    assert an.runs_on(an.areas(df)) == "not recorded / not recorded"
    assert next(c for c in conclusions.claims(df) if c.part == "the DEM").comparisons[0].n == 6


def test_a_varying_training_setting_is_a_factor(tmp_path):
    rows = dem_grid([10, 20, 30, 40, 50, 60])
    for r in list(rows):
        rows.append({**r, "lr": 0.01, "run_folder": r["run_folder"] + "-lr", "counts": (50, 50, 50)})
    for r in rows:
        r.setdefault("lr", 0.001)
    df = an.load(_write(tmp_path / "results.csv", rows))
    assert set(df["model"]) == {"unet-16/b4 lr 0.001", "unet-16/b4 lr 0.01"}
    c = next(c for c in conclusions.claims(df) if c.part == "the DEM").comparisons[0]
    # runs pair within a learning rate: 6 pairs at 0.001 (all differ), 6 tied at 0.01
    assert (c.n, c.used, c.unpaired) == (12, 6, 0)


def test_collective_training_against_the_site_alone(tmp_path):
    rows = []
    for seed in range(7):
        for scenario, train, x in (("A", "A", 0), ("B", "B", 0), ("all", "A+B", 10 * seed + 5)):
            for site in ("A", "B"):
                rows.append({"scenario": scenario, "train_sites": train, "test_site": site, "test_area": "t",
                             "seed": seed, "dataset": "d", "bands": "red", "counts": (50 + x, 50, 50 - x),
                             "run_folder": f"runs/{scenario}-s{seed}"})
    df = an.load(_write(tmp_path / "results.csv", rows))
    claims = conclusions.claims(df)
    collective = next(c for c in claims if c.quote.startswith("our hypothesis was not confirmed"))
    c = collective.comparisons[0]
    # per test site and seed, the all-sites run against the run of that site alone: 2 sites x 7 seeds
    assert (c.n, c.used) == (14, 14) and c.p == pytest.approx(2.0 ** -14)
    assert collective.kind == "not better" and collective.verdict == "contradicted"
    own = next(c for c in claims if c.quote.startswith("regarding the second and third"))
    # each site's own run against the run trained on the other site, on that site: identical counts, all tied
    assert (own.comparisons[0].n, own.comparisons[0].used) == (14, 0) and own.verdict == "too few pairs"


def test_a_claim_whose_difference_goes_the_other_way_says_so():
    claim = vd.with_holm([vd.Claim("002", "the U-Net has more transferability capabilities", "conclusions", "pairs",
                                   comparisons=(vd.Comparison("unet vs resunet", 16, 16, 0.9996, "exact",
                                                              mean=-0.277, low=-0.4, high=-0.15),))])[0]
    assert claim.verdict == "not supported" and claim.against
    assert claim.sentence().endswith("Holm-adjusted p = 1; the mean difference goes the other way.")  # 0.9996, 3 digits


def test_sizes_in_between_and_the_best_size(tmp_path):
    # per seed, three runs at 32, 64 and 128 px: recall falls and precision rises with size, F1 stays equal
    rows = []
    for seed in range(6):
        for size, fn, fp in ((32, 10, 30), (64, 20, 20), (128, 30, 10)):
            rows.append({"dataset": "d", "bands": "red", "seed": seed, "size": size, "test_area": "t",
                         "counts": (50 + seed, fp, fn), "run_folder": f"runs/{size}-s{seed}"})
    claims = conclusions.claims(an.load(_write(tmp_path / "results.csv", rows)))
    middle = next(c for c in claims if c.quote.startswith("64x64 tile models"))
    # 64 px lies between the others in all 6 triples, in recall and in precision: (1/3)^6 each
    assert [(c.used, c.p) for c in middle.comparisons] == [(6, pytest.approx(3.0 ** -6))] * 2
    assert middle.p == pytest.approx(3.0 ** -6)
    recall = next(c for c in claims if c.quote.startswith("the models trained with smaller window sizes"))
    assert recall.comparisons[0].label == "recall, 32 vs 128 px" and recall.comparisons[0].used == 6
    # F1 = 2 tp / (2 tp + 40) at every size: every pair tied, no verdict
    unet = next(c for c in claims if c.quote.startswith("The resulting mean f1-score values of the U-Net"))
    assert [(c.n, c.used) for c in unet.comparisons] == [(6, 0), (6, 0)] and unet.verdict == "too few pairs"
    # three tested claims (middle, recall, precision): Holm multiplies the smallest p by 3
    tested = sorted(c.p for c in claims if c.p is not None)
    assert len(tested) == 3 and min(c.p_holm for c in claims if c.p_holm is not None) == pytest.approx(3 * tested[0])


def test_the_best_combination_must_beat_every_other(tmp_path):
    # 2 datasets x 2 samplings x 2 sizes, 6 seeds; 128 px random on the DEM + augmentation dataset finds the most
    rows = []
    for seed in range(6):
        for dataset, bands, aug in (("re", "red+nir", "False"), ("re+dem+aug", "red+nir+dem", "True")):
            for sampling in ("grid", "random"):
                for size in (32, 128):
                    best = (dataset, sampling, size) == ("re+dem+aug", "random", 128)
                    rows.append({"dataset": dataset, "bands": bands, "augment": aug, "sampling": sampling,
                                 "method": sampling, "size": size, "seed": seed, "test_area": "t",
                                 "counts": (60 + seed if best else 50, 50, 50),
                                 "run_folder": f"runs/{dataset}-{sampling}-{size}-s{seed}"})
    claims = conclusions.claims(an.load(_write(tmp_path / "results.csv", rows)))
    best = next(c for c in claims if c.quote.startswith("The 128x128 random model"))
    assert len(best.comparisons) == 7 and all((c.n, c.used) == (6, 6) for c in best.comparisons)
    # every comparison: 6 positive pairs of distinct sizes, exact one-sided p = 1/64; the claim takes the largest
    assert best.p == pytest.approx(1 / 64)
    assert best.comparisons[0].label == "against grid 32 px, re"
