"""The numbers of an experiment report, from results.csv alone.

The studies' tables (best models, highest average IoU, scores per scenario, the transferability matrix) and the
test of each conclusion the two studies drew, on pairs of runs that differ only in that factor.

Everything here is a pure function of the rows (pandas), so the report's tables and verdicts can be checked
against hand-computed values; where a number comes from, the rows' ``run_folder`` says.

The statistics (``Comparison``, ``Claim``, ``holm``), in the words the report uses:

- the unit is a run: its test areas' counts pooled (or one test site's, where a claim is about sites), never
  one test area of a run, so that a run tested on many areas counts once;
- two runs pair when they differ in the tested factor and in nothing else: every other axis, the seed, the
  training settings, the precision and the device are equal. A run without such a partner is left out and
  counted; one whose only would-be partner differs in precision or device as well is counted apart;
- a pair whose difference is zero (a tie) is dropped before the test and counted ("4 of 16 pairs differ");
- the test is Wilcoxon's signed-rank test on the pairs that differ, one-sided where the claim has a direction:
  exact (scipy's ``method="exact"``) when no two differences tie in size, exact over all 2^n sign changes
  (scipy's ``PermutationMethod``) when some do and n <= ``EXHAUSTIVE_PAIRS``, else the tie-corrected normal
  approximation, and the report says which;
- a verdict needs at least ``MIN_PAIRS`` pairs that differ; with fewer it says "too few pairs";
- the p-values of one report's claims are adjusted together by Holm's step-down method, and a verdict rests
  on the adjusted p at ``ALPHA``;
- beside p, the mean paired difference (ties included) with a 95 % percentile bootstrap interval over the
  pairs (``BOOTSTRAP`` resamples, seeded by the claim, so a report is the same on every rerun).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import combinations
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pandas as pd

from slidemap.experiments.spec import TRAINING_AXES
from slidemap.raster.bands import TERRAIN_LAYERS

TRAINING = TRAINING_AXES
"""Training settings results.csv records per run; one that varies across runs is a factor like any axis."""
RUN_PRECISION, RUN_DEVICE = "precision_mode", "device"
"""The columns naming the precision a run trained in and the device it ran on."""
NOT_RECORDED = "not recorded"
FACTORS = ("scenario", "train_sites", "dataset", "bands", "augment", "sampling", "method", "size",
           "architecture", "filters", "batch_size", *TRAINING, "seed", RUN_PRECISION, RUN_DEVICE)
"""Everything that makes two runs different: a pair of runs must agree on all of these but the tested one."""
DERIVED = {"scenario": ("train_sites",), "dataset": ("bands", "augment"), "sampling": ("method",)}
"""Columns that follow from a factor (a scenario's training sites, a dataset's bands, a sampler's method)."""
NUMERIC = ("size", "filters", "batch_size", "seed", "lr", "epochs", "patience", "precision", "recall", "f1",
           "iou", "miou", "tp", "fp", "fn", "tn", "tp_km2", "fp_km2", "fn_km2", "tn_km2", "landslides_found",
           "landslides_total", "false_alarms", "predicted_objects", "epochs_run", "train_seconds")
METRIC_LABELS = {"precision": "precision", "recall": "recall", "f1": "F1", "iou": "IoU"}
RUNS_ON = "precision / device"
"""The column of every run table naming the precision and device of its runs."""

ALPHA = 0.05
MIN_PAIRS = 6
EXHAUSTIVE_PAIRS = 16
BOOTSTRAP = 10_000
PAPER_SIZES = (32, 64, 128)
STUDIES = {"000": "Soares et al. 2020", "002": "Ghorbanzadeh et al. 2021"}


def load(path: str | Path) -> pd.DataFrame:
    """results.csv as a frame: numbers as numbers, a ``model`` label, ``local`` (tested on a training site).

    Columns an older results.csv lacks (training settings, precision, device) are added empty: they then match
    between every two runs and tables say "not recorded".
    """
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for c in FACTORS:
        if c not in df:
            df[c] = ""
    for c in NUMERIC:
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    if len(df):
        df["model"] = df["architecture"] + "-" + df["filters"].astype("Int64").astype(str) + "/b" + \
            df["batch_size"].astype("Int64").astype(str)
        ok = df[df["status"] == "ok"]
        for c in TRAINING:  # a setting that varies is part of what names a model
            if ok[c].nunique() > 1:
                df["model"] += f" {c} " + df[c].astype(str)
        df["local"] = [t in s.split("+") for t, s in zip(df["test_site"], df["train_sites"], strict=True)]
    return df


def areas(df: pd.DataFrame) -> pd.DataFrame:
    """The successful rows of single test areas (no pooled rows)."""
    return df[(df["status"] == "ok") & (df["pooled"] == "")]


def _present(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    return [c for c in columns if c in frame.columns]


def _pooled(a: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Counts summed over the rows of each key, scores from the sums; ``area_iou``: the mean of the rows' IoU."""
    g = a.groupby(keys, dropna=False, sort=False)
    out = g[["tp", "fp", "fn", "tn"]].sum()
    out["area_iou"] = g["iou"].mean()
    out["areas"] = g.size()
    return _with_scores(out.reset_index())


def run_level(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: counts summed over every test area of every test site.

    ``area_iou`` is the IoU averaged over the run's test areas (study 000's "average mIoU").
    """
    return _pooled(areas(df), [*_present(df, FACTORS), "model", "run_folder"])


def site_level(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run x test site: counts summed over the site's areas, scores from the sums."""
    return _pooled(areas(df), [*_present(df, FACTORS), "model", "run_folder", "test_site", "local"])


def run_level_where(df: pd.DataFrame, local: bool) -> pd.DataFrame:
    """One row per run: counts summed over its test sites that it was (``local``) or was not trained on."""
    a = areas(df)
    return _pooled(a[a["local"] == local], [*_present(df, FACTORS), "model", "run_folder"])


def _with_scores(g: pd.DataFrame) -> pd.DataFrame:
    tp, fp, fn = g["tp"].astype(float), g["fp"].astype(float), g["fn"].astype(float)
    g["precision"] = np.where(tp + fp > 0, tp / (tp + fp).where(tp + fp > 0, 1), 0.0)
    g["recall"] = np.where(tp + fn > 0, tp / (tp + fn).where(tp + fn > 0, 1), 0.0)
    g["f1"] = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).where(2 * tp + fp + fn > 0, 1), 0.0)
    g["iou"] = np.where(tp + fp + fn > 0, tp / (tp + fp + fn).where(tp + fp + fn > 0, 1), 1.0)
    return g


def runs_on(frame: pd.DataFrame) -> str:
    """The precision and device of the runs in ``frame``, e.g. "32 / cpu" (each distinct pair, joined)."""
    pairs = dict.fromkeys(f"{p or NOT_RECORDED} / {d or NOT_RECORDED}" for p, d in
                          zip(frame[RUN_PRECISION].astype(str), frame[RUN_DEVICE].astype(str), strict=True))
    return ", ".join(pairs) if pairs else NOT_RECORDED


def varying(df: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The columns of ``columns`` that take more than one value among the successful runs."""
    a = areas(df)
    return [c for c in columns if c in a and a[c].nunique(dropna=False) > 1]


def mean_sd(df: pd.DataFrame, keys: Sequence[str], metrics: Sequence[str] = ("precision", "recall", "f1", "iou")
            ) -> pd.DataFrame:
    """Mean and standard deviation over seeds (and anything not in ``keys``).

    With the count ``n``, the precision and device of those runs, and the first run's folder.
    """
    g = df.groupby(list(keys), dropna=False, sort=False)
    out = g[list(metrics)].mean()
    sd = g[list(metrics)].std(ddof=1).fillna(0.0).add_suffix("_sd")
    n = g.size().rename("n")
    on = g[[RUN_PRECISION, RUN_DEVICE]].apply(runs_on).rename(RUNS_ON)
    folders = g["run_folder"].first().rename("run_folder")
    return pd.concat([out, sd, n, on, folders], axis=1).reset_index()


def models_per_dataset(df: pd.DataFrame) -> pd.DataFrame:
    """Study 000's table 1: how many models (finished runs) each dataset trained, with its bands."""
    r = run_level(df)
    g = r.groupby("dataset", sort=False)
    return pd.DataFrame({"dataset": list(g.groups), "bands": g["bands"].first().to_numpy(),
                         "augmentation": g["augment"].first().to_numpy(), "models": g.size().to_numpy(),
                         RUNS_ON: g[[RUN_PRECISION, RUN_DEVICE]].apply(runs_on).to_numpy()})


def best_models(df: pd.DataFrame, by: str = "f1") -> pd.DataFrame:
    """Study 000's figure 5: the best model per test area x dataset x sampling x size (x varying settings).

    The model (architecture, filters, batch size) is the one with the highest mean ``by`` over seeds, shown with
    its mean and spread.
    """
    a = areas(df)
    group = ["scenario", "test_site", "test_area", "dataset", "sampling", "size"]
    per_model = mean_sd(a, [*group, "model"])
    idx = per_model.groupby(group, sort=False)[by].idxmax()
    return per_model.loc[idx.to_numpy()].reset_index(drop=True)


def best_average_iou(df: pd.DataFrame) -> pd.DataFrame:
    """Study 000's table 3: the dataset and model with the highest IoU averaged over the test areas.

    Per (scenario x) sampling x size; means over seeds, with each test area's IoU.
    """
    a = areas(df).copy()
    a["where"] = a["test_site"] + "/" + a["test_area"]
    keys = ["scenario", "sampling", "size", "dataset", "model"]
    per = mean_sd(a, [*keys, "where"], ("iou",))
    wide = per.pivot_table(index=keys, columns="where", values="iou")
    wide["average"] = wide.mean(axis=1)
    wide = wide.reset_index()
    idx = wide.groupby(["scenario", "sampling", "size"], sort=False)["average"].idxmax()
    best = wide.loc[idx.to_numpy()].reset_index(drop=True)
    firsts = per.groupby(keys, sort=False)[["run_folder"]].first()
    on = a.groupby(keys, sort=False)[[RUN_PRECISION, RUN_DEVICE]].apply(runs_on)
    best[RUNS_ON] = [on.get(tuple(getattr(r, k) for k in keys), NOT_RECORDED) for r in best.itertuples()]
    best["run_folder"] = [firsts["run_folder"].get(tuple(getattr(r, k) for k in keys), "")
                          for r in best.itertuples()]
    return best


def best_per_size(df: pd.DataFrame) -> pd.DataFrame:
    """Study 000's figure 6: on each test area, per (scenario x) patch size, the model with the highest IoU.

    Mean IoU over seeds; the model is any dataset, sampling, architecture, filters and batch size.
    """
    a = areas(df)
    group = ["scenario", "test_site", "test_area", "size"]
    per = mean_sd(a, [*group, "dataset", "sampling", "model"], ("f1", "iou"))
    idx = per.groupby(group, sort=False)["iou"].idxmax()
    return per.loc[idx.to_numpy()].reset_index(drop=True)


def _study002_keys(df: pd.DataFrame) -> list[str]:
    """What study 002's tables keep apart besides scenario, architecture and size: the other varying factors."""
    return varying(df, ("dataset", "sampling", "filters", "batch_size", *TRAINING))


def transfer_matrix(df: pd.DataFrame) -> pd.DataFrame:
    """Study 002's figure 10: mean F1 per architecture x training scenario x test site.

    Means over seeds, from each run's site-level counts; other factors that vary are kept apart.
    """
    s = site_level(df)
    return mean_sd(s, ["architecture", *_study002_keys(df), "scenario", "test_site"], ("f1",))


def f1_by_size(df: pd.DataFrame) -> pd.DataFrame:
    """Study 002's figure 11: F1 over all test sites by patch size per scenario and architecture."""
    r = run_level(df)
    return mean_sd(r, ["scenario", "architecture", *_study002_keys(df), "size"], ("precision", "recall", "f1"))


def scores_by_scenario(df: pd.DataFrame) -> pd.DataFrame:
    """Study 002's tables 4-7: P/R/F1 per scenario x architecture x size x test site, and over all test sites."""
    keys = ["scenario", "architecture", *_study002_keys(df), "size", "test_site"]
    s = site_level(df)
    per_site = mean_sd(s, keys, ("precision", "recall", "f1"))
    r = run_level(df).assign(test_site="all")
    pooled = mean_sd(r, keys, ("precision", "recall", "f1"))
    return pd.concat([per_site, pooled], ignore_index=True).sort_values(keys, kind="stable")


# --- the statistics --------------------------------------------------------------------------------------

Alternative = Literal["greater", "two-sided"]


@dataclass(frozen=True)
class Comparison:
    """One paired comparison: a - b over the pairs, the test on those that differ, and the mean's interval.

    ``n``: pairs; ``used``: pairs the test used (ties dropped); ``p``: None with fewer than ``MIN_PAIRS`` used;
    ``unpaired``: units left without a partner; ``refused``: of those, the ones whose only would-be partner differs
    in precision or device as well.
    """

    label: str
    n: int
    used: int
    p: float | None
    method: str
    mean: float | None = None
    low: float | None = None
    high: float | None = None
    unpaired: int = 0
    refused: int = 0
    alternative: Alternative = "greater"
    detail: str = ""

    def sentence(self) -> str:
        """The numbers of this comparison in words."""
        if self.n == 0:
            return f"{self.label}: no pairs"
        parts = [self.detail or f"{self.used} of {self.n} pairs differ"]
        if self.mean is not None and self.low is not None:
            parts.append(f"mean difference {self.mean:+.3f} (95 % bootstrap interval {self.low:+.3f} to "
                         f"{self.high:+.3f})")
        elif self.mean is not None:
            parts.append(f"mean difference {self.mean:+.3f} (no interval from fewer than {MIN_PAIRS} pairs)")
        if self.p is not None:
            side = "one-sided" if self.alternative == "greater" else "two-sided"
            parts.append(f"{self.method}, {side} p = {self.p:.3g}")
        else:
            parts.append(f"too few pairs (a verdict needs {MIN_PAIRS} that differ; more seeds give more pairs)")
        if self.unpaired:
            parts.append(f"{self.unpaired} unit(s) without a partner differing only in this" +
                         (f", {self.refused} of them because their partner ran at another precision or on another "
                          f"device" if self.refused else ""))
        return f"{self.label}: " + "; ".join(parts)


def bootstrap_interval(d: np.ndarray, seed: int, resamples: int = BOOTSTRAP) -> tuple[float, float]:
    """The 95 % percentile bootstrap interval of the mean of ``d`` (resampling pairs with replacement)."""
    if d.size == 1:
        return float(d[0]), float(d[0])
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    step = max(1, 2_000_000 // d.size)  # resamples drawn in chunks of about 2 million values
    for start in range(0, resamples, step):
        k = min(step, resamples - start)
        means[start:start + k] = d[rng.integers(0, d.size, size=(k, d.size))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)


def signed_rank(d: np.ndarray, alternative: Alternative) -> tuple[float, str]:
    """Wilcoxon's signed-rank p of non-zero differences ``d`` and how it was computed.

    Each tail is asked of scipy as a lower tail ("less"; the upper tail of ``d`` is the lower tail of ``-d``):
    scipy's upper tails are one minus a sum and lose everything below about 1e-16 (2^-60 came back as 0).
    """
    from scipy import stats

    method: Any
    if np.unique(np.abs(d)).size == d.size:
        method, how = "exact", "exact signed-rank test"
    elif d.size <= EXHAUSTIVE_PAIRS:
        method, how = stats.PermutationMethod(n_resamples=np.inf), \
            "exact signed-rank test (tied differences: all sign changes)"
    else:
        method, how = "asymptotic", "signed-rank test, tie-corrected normal approximation"
    upper = float(stats.wilcoxon(-d, alternative="less", method=method).pvalue)
    if alternative == "greater":
        return upper, how
    lower = float(stats.wilcoxon(d, alternative="less", method=method).pvalue)
    return min(1.0, 2 * min(upper, lower)), how


def compare(label: str, diffs: Sequence[float], alternative: Alternative = "greater", seed_text: str = "",
            unpaired: int = 0, refused: int = 0) -> Comparison:
    """Test paired differences (a - b).

    Ties dropped and counted, the signed-rank p with enough pairs, the mean's bootstrap interval seeded by
    ``seed_text`` and ``label``.
    """
    d = np.round(np.asarray(diffs, dtype=float), 12)  # float noise is no difference
    nonzero = d[d != 0]
    if d.size == 0:
        return Comparison(label, 0, 0, None, "", unpaired=unpaired, refused=refused, alternative=alternative)
    p, method = signed_rank(nonzero, alternative) if nonzero.size >= MIN_PAIRS else (None, "")
    low, high = bootstrap_interval(d, zlib.crc32(f"{seed_text}|{label}".encode())) if d.size >= MIN_PAIRS \
        else (None, None)  # a resampling of a handful of pairs says nothing
    return Comparison(label, int(d.size), int(nonzero.size), p, method, float(d.mean()), low, high, unpaired,
                      refused, alternative)


def holm(ps: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None stays None and does not count among the tests)."""
    tested = sorted((p, i) for i, p in enumerate(ps) if p is not None)
    m = len(tested)
    out: list[float | None] = [None] * len(ps)
    running = 0.0
    for k, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - k) * p))
        out[i] = running
    return out


Kind = Literal["better", "not better", "no difference"]


@dataclass(frozen=True)
class Claim:
    """One conclusion a study drew, in its words, and how this grid tests it.

    ``kind``: "better" (a directional claim: one-sided test, supported when significant), "not better" (A does
    not beat B: one-sided test of A beating B, contradicted when significant) or "no difference" (two-sided,
    contradicted when significant). Several comparisons combine as "all" (every one must hold: the largest p,
    an intersection-union test) or "any" (Bonferroni's bound on the smallest p).
    """

    study: str
    quote: str
    where: str
    test: str
    kind: Kind = "better"
    part: str = ""  # which part of a quoted conclusion this claim tests, in this report's words
    comparisons: tuple[Comparison, ...] = ()
    combine: Literal["all", "any"] = "all"
    why_not: str = ""
    p_holm: float | None = None

    @property
    def p(self) -> float | None:
        """The claim's p before Holm's correction (None: not tested, or too few pairs)."""
        if self.why_not or not self.comparisons or any(c.p is None for c in self.comparisons):
            return None
        ps = [cast(float, c.p) for c in self.comparisons]
        return max(ps) if self.combine == "all" else min(1.0, len(ps) * min(ps))

    @property
    def verdict(self) -> str:
        """Supported / not supported (or contradicted / not contradicted), too few pairs, or why not testable."""
        if self.why_not:
            return f"cannot be tested here: {self.why_not}"
        if self.p is None:
            return "too few pairs"
        significant = self.p_holm is not None and self.p_holm < ALPHA
        if self.kind == "better":
            return "supported" if significant else "not supported"
        return "contradicted" if significant else "not contradicted"

    def sentence(self) -> str:
        """The claim, its verdict and the numbers behind it, as the report prints them."""
        word, _, why = self.verdict.partition(": ")
        part = f" ({self.part})" if self.part else ""
        head = f"Study {self.study} ({STUDIES[self.study]}, {self.where}): \"{self.quote}\"{part} — " + \
            word.upper() + (f": {why}" if why else "")
        if self.why_not:
            return head + "."
        side = {"better": "one-sided, in the claimed direction", "not better": "one-sided, against the claim",
                "no difference": "two-sided"}[self.kind]
        out = f"{head}. Test: {self.test} ({side}). " + "; ".join(c.sentence() for c in self.comparisons)
        if self.p is not None and len(self.comparisons) > 1:
            rule = "the largest p, as every comparison must hold" if self.combine == "all" else \
                f"the smallest p times {len(self.comparisons)} (Bonferroni)"
            out += f". Claim p = {self.p:.3g} ({rule})"
        if self.p_holm is not None:
            out += f"; Holm-adjusted p = {self.p_holm:.3g}"
        if self.against:
            out += "; the mean difference goes the other way"
        return out + "."

    @property
    def against(self) -> bool:
        """A directional claim, not supported, whose every mean difference goes the other way.

        A description, not a test: the test was one-sided in the claimed direction.
        """
        return self.kind == "better" and self.verdict == "not supported" and \
            all(c.mean is not None and c.mean < 0 for c in self.comparisons)


def with_holm(claims: Sequence[Claim]) -> list[Claim]:
    """The claims with their Holm-adjusted p-values (all tested claims of one report form the family)."""
    adjusted = holm([c.p for c in claims])
    return [replace(c, p_holm=a) for c, a in zip(claims, adjusted, strict=True)]


def _keys(frame: pd.DataFrame, tested: Sequence[str]) -> list[str]:
    """The factor columns two units must share when they differ in ``tested`` (and what follows from it)."""
    out = set(tested)
    for t in tested:
        out.update(DERIVED.get(t, ()))
    return [c for c in (*FACTORS, "test_site", "test_area", "_group") if c in frame.columns and c not in out]


def _key(frame: pd.DataFrame, keys: list[str]) -> pd.Series:
    return frame[keys].map(str).agg("|".join, axis=1) if keys else pd.Series("", index=frame.index)


def paired(units: pd.DataFrame, factor: str, a: object, b: object, metric: str, label: str,
           alternative: Alternative = "greater", seed_text: str = "", free: Sequence[str] = ()) -> Comparison:
    """Compare ``metric`` at ``factor == a`` with ``b`` on units equal in every other factor.

    ``free`` factors aside; the differences are ``metric(a) - metric(b)``.
    """
    keys = _keys(units, [factor, *free])
    left, right = units[units[factor] == a], units[units[factor] == b]
    ka, kb = _key(left, keys), _key(right, keys)
    sa = pd.Series(left[metric].to_numpy(float), index=ka.to_numpy())
    sb = pd.Series(right[metric].to_numpy(float), index=kb.to_numpy())
    sa, sb = sa[~sa.index.duplicated(keep=False)], sb[~sb.index.duplicated(keep=False)]  # ambiguous: no pair
    common = sorted(set(sa.index) & set(sb.index))
    unpaired = len(left) + len(right) - 2 * len(common)
    loose = [k for k in keys if k not in (RUN_PRECISION, RUN_DEVICE)]
    la, lb = _key(left, loose), _key(right, loose)
    lone_a = la[~ka.isin(common).to_numpy()]
    lone_b = lb[~kb.isin(common).to_numpy()]
    refused = int(lone_a.isin(set(lb)).sum() + lone_b.isin(set(la)).sum())
    diffs = [sa[k] - sb[k] for k in common]
    return compare(label, diffs, alternative, seed_text, unpaired, refused)


def between(label: str, triples: Sequence[tuple[float, float, float]]) -> Comparison:
    """Does the middle value lie between the outer two, more often than the 1 in 3 of chance?

    ``triples``: (low level, middle level, high level) of matched units. A triple with two equal values is a
    tie and dropped; the test is an exact one-sided binomial test against 1/3 (under no effect, any of the
    three is the middle one with equal chance).
    """
    from scipy import stats

    t = np.round(np.asarray(triples, dtype=float).reshape(-1, 3), 12)
    distinct = np.array([len(set(x)) == 3 for x in t], dtype=bool)
    inside = [(min(x[0], x[2]) < x[1] < max(x[0], x[2])) for x in t[distinct]]
    k, used = int(sum(inside)), int(distinct.sum())
    p = float(stats.binomtest(k, used, 1 / 3, alternative="greater").pvalue) if used >= MIN_PAIRS else None
    return Comparison(label, len(t), used, p, "exact binomial test against 1/3", detail=(
        f"{used} of {len(t)} matched triples without ties, the middle one between the others in {k}"))


# --- the studies' conclusions -------------------------------------------------------------------------

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
    """Every conclusion of both studies, tested on this grid's runs, with Holm's correction across them."""
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
    outer = [k for k in _keys(runs, ["sampling", *config])]
    diffs, unpaired = [], 0
    u = runs[runs["sampling"].isin([rand[0], grid[0]])].copy()
    u["_outer"], u["_config"] = _key(u, outer), _key(u, config)
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
    block = _keys(a, ["dataset", "sampling"])
    diffs = []
    a = a.assign(_block=_key(a, [k for k in block if k not in ("test_site", "test_area")]))
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
    keys = _keys(runs, ["size"])
    u = runs[runs["size"].isin(sizes)].assign(_k=lambda f: _key(f, keys))
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
    keys = _keys(sites, ["scenario"])
    diffs, unpaired = [], 0
    for scenario, site in sorted(single.items()):
        on = sites[sites["test_site"] == site]
        on = on.assign(_k=_key(on, keys))
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
