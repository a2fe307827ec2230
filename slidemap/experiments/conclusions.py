"""Every conclusion of the two studies, in their words, tested on an experiment's runs.

Study 000 (Soares et al. 2020) and study 002 (Ghorbanzadeh et al. 2021): each conclusion becomes a ``Claim``
whose comparisons pair runs that differ only in the factor it is about (``slidemap.experiments.verdicts``),
or says why this grid cannot test it. ``claims`` returns them all with Holm's correction across them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations
from typing import cast

import numpy as np
import pandas as pd

from slidemap.experiments.analysis import areas, run_level, run_level_where, single_runs, site_level
from slidemap.experiments.verdicts import Claim, between, compare, key_of, match_keys, paired, with_holm
from slidemap.raster.bands import TERRAIN_LAYERS

PAPER_SIZES = (32, 64, 128)
"""The patch sizes both studies compared."""


def datasets_of(df: pd.DataFrame) -> dict[str, tuple[tuple[str, ...], bool]]:
    """Each dataset's bands and augmentation, as recorded in the rows."""
    out: dict[str, tuple[tuple[str, ...], bool]] = {}
    for name, g in df.groupby("dataset", sort=False):
        first = g.iloc[0]
        out[cast(str, name)] = (tuple(str(first["bands"]).split("+")), str(first["augment"]) == "True")
    return out


def _dataset_pairs(datasets: dict[str, tuple[tuple[str, ...], bool]], added: Callable[[set[str]], bool]
                   ) -> list[tuple[str, str]]:
    """(with, without) pairs of datasets: the same augmentation, bands that differ by layers ``added`` takes."""
    out = []
    for x, (bx, ax) in datasets.items():
        for y, (by, ay) in datasets.items():
            if ax == ay and set(bx) > set(by) and added(set(bx) - set(by)):
                out.append((x, y))
    return out


def _relabelled(units: pd.DataFrame, pairs: list[tuple[str, str]], a: str, b: str) -> pd.DataFrame:
    """The units of each (a-dataset, b-dataset) pair, the dataset relabelled ``a``/``b``.

    Each dataset pair is kept apart (``_group``), so that runs pair within a dataset pair only.
    """
    frames = []
    for x, y in pairs:
        f = units[units["dataset"].isin([x, y])].copy()
        f["_group"] = f"{x}|{y}"
        f["dataset"] = f["dataset"].map({x: a, y: b})
        frames.append(f)
    return pd.concat(frames, ignore_index=True) if frames else units.iloc[0:0]


def _free_filters(units: pd.DataFrame) -> list[str]:
    """Architectures compared with their own widths when each has exactly one filter count in the grid."""
    per = units.groupby("architecture")["filters"].nunique()
    return ["filters"] if len(per) > 1 and (per == 1).all() else []


def _single_site_scenarios(units: pd.DataFrame) -> dict[str, str]:
    """Scenario -> its one training site, for the scenarios that train on a single site."""
    pairs = units[["scenario", "train_sites"]].drop_duplicates()
    return {s: t for s, t in zip(pairs["scenario"], pairs["train_sites"], strict=True) if "+" not in t}


def claims(df: pd.DataFrame) -> list[Claim]:
    """Every conclusion of both studies, tested on this grid's runs, with Holm's correction across them.

    The unit is a single run: an ensemble's rows, if ``df`` holds any, are left out.
    """
    df = single_runs(df)
    if areas(df).empty:
        return []
    return with_holm([*_soares2020_claims(df), *_ghorbanzadeh2021_claims(df)])


def _soares2020_claims(df: pd.DataFrame) -> list[Claim]:
    runs = run_level(df)
    datasets = datasets_of(areas(df))
    out = []
    # the DEM and augmentation
    quote = "the use of DEM and augmentation helped increase the overall accuracy of the models"
    dem = _dataset_pairs(datasets, lambda added: added <= set(TERRAIN_LAYERS))
    test = "runs whose datasets differ only by terrain layers (F1 over the run's test areas pooled)"
    if dem:
        u = _relabelled(runs, dem, "with", "without")
        out.append(Claim("000", quote, "conclusions", test, part="the DEM", comparisons=(
            paired(u, "dataset", "with", "without", "f1", "with vs without terrain layers", seed_text="dem"),)))
    else:
        out.append(Claim("000", quote, "conclusions", test, part="the DEM",
                         why_not="no two datasets differ only by terrain layers"))
    aug = [(x, y) for x, (bx, ax) in datasets.items() for y, (by, ay) in datasets.items()
           if set(bx) == set(by) and ax and not ay]
    test = "runs whose datasets differ only by augmentation (F1 over the run's test areas pooled)"
    if aug:
        u = _relabelled(runs, aug, "with", "without")
        out.append(Claim("000", quote, "conclusions", test, part="augmentation", comparisons=(
            paired(u, "dataset", "with", "without", "f1", "with vs without augmentation", seed_text="aug"),)))
    else:
        out.append(Claim("000", quote, "conclusions", test, part="augmentation",
                         why_not="no two datasets differ only by augmentation"))
    out.append(_sampling_best(runs))
    out.append(_dataset_over_sampling(df))
    out += _size_trends(runs)
    out.append(_sizes_between(runs))
    out.append(_best_configuration(runs, datasets))
    return out


def _methods(units: pd.DataFrame) -> dict[str, str]:
    return dict(zip(units["sampling"], units["method"], strict=True))


def _sampling_best(runs: pd.DataFrame) -> Claim:
    """Random beats regular sampling in the average IoU of the best models (study 000's table 3)."""
    quote = ("by averaging the mIoU score of both test areas, it can be seen (Table 3) that random sampling "
             "outperformed the regular sampling. Thus, random sampling helped in increasing the generalization "
             "capacity of the models")
    test = ("the IoU averaged over the test areas of the best run of each sampling (the maximum over the datasets "
            "and models both samplings trained), per patch size and everything else equal")
    methods = _methods(runs)
    grid = [s for s, m in methods.items() if m == "grid"]
    rand = [s for s, m in methods.items() if m == "random"]
    if not grid or not rand:
        return Claim("000", quote, "results", test, why_not="the grid lacks a regular or a random sampler")
    config = ["dataset", "bands", "augment", "architecture", "filters", "batch_size", "model"]
    outer = [k for k in match_keys(runs, ["sampling", *config])]
    diffs, unpaired = [], 0
    u = runs[runs["sampling"].isin([rand[0], grid[0]])].copy()
    u["_outer"], u["_config"] = key_of(u, outer), key_of(u, config)
    for _, g in sorted(u.groupby("_outer"), key=lambda kv: str(kv[0])):
        a, b = g[g["sampling"] == rand[0]], g[g["sampling"] == grid[0]]
        shared = set(a["_config"]) & set(b["_config"])
        unpaired += int((~a["_config"].isin(shared)).sum() + (~b["_config"].isin(shared)).sum())
        if shared:
            best = [g.loc[g["_config"].isin(shared), "area_iou"].max() for g in (a, b)]
            diffs.append(best[0] - best[1])
    return Claim("000", quote, "results and discussion", test, comparisons=(
        compare(f"{rand[0]} vs {grid[0]}, best models", diffs, "greater", "sampling", unpaired),))


def _dataset_over_sampling(df: pd.DataFrame) -> Claim:
    """The dataset matters more than the sampling, each test area evaluated on its own."""
    quote = ("When the test areas are evaluated individually, the sampling method seems to be less critical than "
             "the dataset to the overall accuracy of the models")
    test = ("blocks of runs that differ only in dataset and sampling: per test area, the mean absolute F1 "
            "difference between datasets (same sampling) minus that between samplings (same dataset), averaged "
            "over the test areas; one block is one unit")
    a = areas(df)
    if a["dataset"].nunique() < 2 or a["sampling"].nunique() < 2:
        return Claim("000", quote, "results and discussion", test,
                     why_not="the grid needs two datasets and two samplings")
    block = match_keys(a, ["dataset", "sampling"])
    diffs = []
    a = a.assign(_block=key_of(a, [k for k in block if k not in ("test_site", "test_area")]))
    for _, g in sorted(a.groupby("_block"), key=lambda kv: str(kv[0])):
        per_area = []
        for _, h in g.groupby(["test_site", "test_area"]):
            m = h.pivot_table(index="dataset", columns="sampling", values="f1", aggfunc="first").dropna(axis=0)
            m = m.dropna(axis=1)
            if m.shape[0] < 2 or m.shape[1] < 2:
                continue
            x = m.to_numpy(float)
            between_datasets = np.mean([abs(x[i] - x[j]).mean() for i, j in combinations(range(x.shape[0]), 2)])
            between_samplings = np.mean([abs(x[:, i] - x[:, j]).mean()
                                         for i, j in combinations(range(x.shape[1]), 2)])
            per_area.append(between_datasets - between_samplings)
        if per_area:
            diffs.append(float(np.mean(per_area)))
    return Claim("000", quote, "results and discussion", test, comparisons=(
        compare("dataset effect minus sampling effect", diffs, "greater", "dataset>sampling"),))


def _size_trends(runs: pd.DataFrame) -> list[Claim]:
    """Smaller patches: higher recall; larger patches: higher precision.

    In the words of study 000's discussion of all its models; its abstract and conclusions say it of 32 and 128 px.
    """
    sizes = sorted(runs["size"].dropna().unique())
    recall = ("the models trained with smaller window sizes tend to understand the local context better. Thus, they "
              "classify more landslides correctly, achieving higher true positives and lower false negative values")
    precision = ("models trained with the larger window sizes, in general, understand the global context better, "
                 "reducing the false positive errors")
    test = "runs that differ only in patch size, the smallest against the largest of the grid ({}) ({} over " \
           "the run's test areas pooled)"
    if len(sizes) < 2:
        return [Claim("000", q, "results and discussion", test.format("-", m), why_not="the grid has one patch size")
                for q, m in ((recall, "recall"), (precision, "precision"))]
    small, big = int(sizes[0]), int(sizes[-1])
    where = f"{small} vs {big} px"
    return [
        Claim("000", recall, "results and discussion", test.format(where, "recall"), comparisons=(
            paired(runs, "size", small, big, "recall", f"recall, {small} vs {big} px", seed_text="recall"),)),
        Claim("000", precision, "results and discussion", test.format(where, "precision"), comparisons=(
            paired(runs, "size", big, small, "precision", f"precision, {big} vs {small} px",
                   seed_text="precision"),)),
    ]


def _size_triples(runs: pd.DataFrame, metric: str, sizes: Sequence[int]) -> list[tuple[float, float, float]]:
    keys = match_keys(runs, ["size"])
    u = runs[runs["size"].isin(sizes)].assign(_k=lambda f: key_of(f, keys))
    wide = u.pivot_table(index="_k", columns="size", values=metric, aggfunc="first").dropna()
    return [tuple(float(x) for x in row) for row in wide[list(sizes)].sort_index().to_numpy()]  # type: ignore[misc]


def _sizes_between(runs: pd.DataFrame) -> Claim:
    quote = "64x64 tile models achieved results that lie in between the 32x32 and 128x128 models"
    test = ("matched triples of runs that differ only in patch size (32, 64, 128 px): how often 64 px lies "
            "strictly between the other two, in recall and in precision (the run's test areas pooled)")
    missing = [s for s in PAPER_SIZES if s not in set(runs["size"])]
    if missing:
        return Claim("000", quote, "conclusions", test,
                     why_not=f"the grid lacks the patch size(s) {', '.join(map(str, missing))} px")
    return Claim("000", quote, "conclusions", test, comparisons=tuple(
        between(f"{m}, 64 px between 32 and 128 px", _size_triples(runs, m, PAPER_SIZES))
        for m in ("recall", "precision")))


def _best_configuration(runs: pd.DataFrame, datasets: dict[str, tuple[tuple[str, ...], bool]]) -> Claim:
    quote = ("The 128x128 random model trained with the RapidEye+DEM+Augmentation dataset achieved the best "
             "performance in this research")
    test = ("runs that differ only in sampling, patch size and dataset: 128 px random sampling on the dataset with "
            "terrain layers and augmentation against every other combination of the grid (F1 over the run's test "
            "areas pooled)")
    rand = [s for s, m in _methods(runs).items() if m == "random"]
    full = sorted((d for d, (bands, aug) in datasets.items() if aug and set(bands) & set(TERRAIN_LAYERS)),
                  key=lambda d: -len(datasets[d][0]))
    why = "the grid lacks 128 px patches" if 128 not in set(runs["size"]) else \
        "the grid has no random sampler" if not rand else \
        "no dataset has both terrain layers and augmentation" if not full else ""
    if why:
        return Claim("000", quote, "conclusions", test, why_not=why)
    u = runs.assign(_config=runs["sampling"] + " " + runs["size"].astype(int).astype(str) + " px, " +
                    runs["dataset"])
    target = f"{rand[0]} 128 px, {full[0]}"
    others = [c for c in dict.fromkeys(u["_config"]) if c != target]
    if not others:
        return Claim("000", quote, "conclusions", test, why_not="the grid has one combination only")
    tested = ["sampling", "size", "dataset"]
    return Claim("000", quote, "conclusions", test, comparisons=tuple(
        paired(u, "_config", target, o, "f1", f"against {o}", seed_text="best", free=tested) for o in others))


def _ghorbanzadeh2021_claims(df: pd.DataFrame) -> list[Claim]:
    runs = run_level(df)
    sites = site_level(df)
    out = [_collective_vs_local(sites), _own_site_best(sites)]
    archs = set(runs["architecture"])
    arch_claims = [
        ("ResU-Net demonstrated the highest score in those cases where it was trained on only the local training "
         "datasets; the ResU-Net resulting scores were higher than the U-Net ones whenever the training and "
         "testing set belonged to the same study area", "conclusions; transferability assessment",
         "resunet", "unet", run_level_where(df, True), "the test sites each run was trained on"),
        ("the U-Net has more transferability capabilities", "conclusions", "unet", "resunet",
         run_level_where(df, False), "the test sites each run was not trained on"),
        ("although the ResU-Net led to higher performances", "conclusions", "resunet", "unet", runs,
         "all the run's test sites"),
    ]
    for quote, where, a, b, units, sites_text in arch_claims:
        test = f"runs that differ only in architecture (F1 over {sites_text}, pooled)"
        if not {"unet", "resunet"} <= archs:
            out.append(Claim("002", quote, where, test, why_not="the grid has one architecture"))
        elif units.empty or not {"unet", "resunet"} <= set(units["architecture"]):
            out.append(Claim("002", quote, where, test, why_not=f"no run is tested on {sites_text.split(' ', 1)[1]}"))
        else:
            out.append(Claim("002", quote, where, test, comparisons=(
                paired(units, "architecture", a, b, "f1", f"{a} vs {b}", seed_text=quote,
                       free=_free_filters(units)),)))
    out += _best_sizes(runs)
    out.append(_no_size_advantage(runs))
    quote = "the inclusion of topographic slope data helped to discriminate landslides from bare land in many cases"
    test = ("runs whose datasets differ only by terrain layers including slope (precision over the run's test "
            "areas pooled: fewer false positives)")
    slope = _dataset_pairs(datasets_of(areas(df)), lambda added: "slope" in added and added <= set(TERRAIN_LAYERS))
    if slope:
        u = _relabelled(runs, slope, "with", "without")
        out.append(Claim("002", quote, "discussion", test, comparisons=(
            paired(u, "dataset", "with", "without", "precision", "with vs without slope", seed_text="slope"),)))
    else:
        out.append(Claim("002", quote, "discussion", test,
                         why_not="no two datasets differ only by terrain layers including slope"))
    return out


def _collective_vs_local(sites: pd.DataFrame) -> Claim:
    quote = ("our hypothesis was not confirmed, and local training data based only on each target study area often "
             "outperformed a collective training dataset")
    test = ("on each test site, runs trained on all sites together against runs trained on that site alone, "
            "everything else equal (F1 over the site's test areas pooled; a unit is a run pair on one site)")
    single = _single_site_scenarios(sites)
    trained = set().union(*(set(t.split("+")) for t in sites["train_sites"]))
    collective = [s for s, t in dict(zip(sites["scenario"], sites["train_sites"], strict=True)).items()
                  if "+" in t and set(t.split("+")) == trained]
    if not single or not collective:
        why = "no scenario trains on a single site" if not single else "no scenario trains on all sites together"
        return Claim("002", quote, "discussion", test, kind="not better", why_not=why)
    frames = []
    for scenario, site in single.items():
        f = sites[(sites["test_site"] == site) & sites["scenario"].isin([scenario, collective[0]])].copy()
        f["scenario"] = f["scenario"].map({scenario: "local", collective[0]: "all"})
        frames.append(f)
    u = pd.concat(frames, ignore_index=True)
    return Claim("002", quote, "discussion", test, kind="not better", comparisons=(
        paired(u, "scenario", "all", "local", "f1", "all sites vs the site alone", seed_text="collective"),))


OWN_SITE = "read as: each site's own model scores best on it"


def _own_site_best(sites: pd.DataFrame) -> Claim:
    quote = ("regarding the second and third scenarios (training with the Taiwan and China datasets, "
             "respectively), the highest mean f1-score was obtained for the local testing areas")
    test = ("on each test site, the run trained on that site alone against the mean of the matched runs trained on "
            "another single site (F1 over the site's test areas pooled; a unit is a run on its own site). The paper "
            "compared one model across test sites, whose difficulty differs; here the models are compared on one "
            "site")
    single = _single_site_scenarios(sites)
    if len(single) < 2:
        return Claim("002", quote, "transferability assessment", test, part=OWN_SITE,
                     why_not="fewer than two scenarios train on a single site")
    keys = match_keys(sites, ["scenario"])
    diffs, unpaired = [], 0
    for scenario, site in sorted(single.items()):
        on = sites[sites["test_site"] == site]
        on = on.assign(_k=key_of(on, keys))
        own = on[on["scenario"] == scenario].set_index("_k")["f1"]
        other = on[on["scenario"].isin([s for s in single if s != scenario])].groupby("_k")["f1"].mean()
        common = sorted(set(own.index) & set(other.index))
        unpaired += len(own) - len(common)
        diffs += [float(own[k] - other[k]) for k in common]
    return Claim("002", quote, "transferability assessment", test, part=OWN_SITE,
                 comparisons=(compare("own site vs other single sites", diffs, "greater", "own", unpaired),))


def _best_sizes(runs: pd.DataFrame) -> list[Claim]:
    out = []
    for arch, size, name, quote in (
            ("unet", 128, "U-Net", "The resulting mean f1-score values of the U-Net model yielded a better "
                                   "performance for the sample size of 128 × 128 pixels"),
            ("resunet", 64, "ResU-Net", "the ResU-Net achieved the best results with a sample size of 64 × 64 "
                                        "pixels")):
        test = (f"{name} runs that differ only in patch size, {size} px against each other size the paper tried "
                f"(F1 over all the run's test sites pooled)")
        mine = runs[runs["architecture"] == arch]
        missing = [s for s in PAPER_SIZES if s not in set(mine["size"])]
        if mine.empty or missing:
            why = f"the grid has no {name}" if mine.empty else \
                f"the grid lacks {name} runs at {', '.join(map(str, missing))} px"
            out.append(Claim("002", quote, "impact of sample input sizes", test, why_not=why))
            continue
        out.append(Claim("002", quote, "impact of sample input sizes", test, comparisons=tuple(
            paired(mine, "size", size, other, "f1", f"{size} vs {other} px", seed_text=name)
            for other in PAPER_SIZES if other != size)))
    return out


def _no_size_advantage(runs: pd.DataFrame) -> Claim:
    quote = ("we did not observe a definitive advantage to guide the choice of window sizes that would potentially "
             "provide substantial improvements")
    test = ("runs that differ only in patch size, every two sizes of the grid (F1 over all the run's test sites "
            "pooled); a significant difference contradicts the claim, none does not show equivalence")
    sizes = sorted(int(s) for s in runs["size"].dropna().unique())
    if len(sizes) < 2:
        return Claim("002", quote, "impact of sample input sizes", test, kind="no difference",
                     why_not="the grid has one patch size")
    return Claim("002", quote, "impact of sample input sizes", test, kind="no difference", combine="any",
                 comparisons=tuple(paired(runs, "size", a, b, "f1", f"{a} vs {b} px", "two-sided", "sizes")
                                   for a, b in combinations(sizes, 2)))
