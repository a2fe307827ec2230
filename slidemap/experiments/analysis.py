"""The numbers of an experiment report, from results.csv alone.

Best models, the studies' tables, the transferability matrix, and paired tests of the studies' conclusions over
seeds.

Everything here is a pure function of the rows (pandas), so the report's tables can be checked against
hand-computed values; where a number comes from, the rows' ``run_folder`` says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

from slidemap.raster.bands import TERRAIN_LAYERS

MODEL = ("architecture", "filters", "batch_size")
NUMERIC = ("size", "filters", "batch_size", "seed", "precision", "recall", "f1", "iou", "miou", "tp", "fp", "fn",
           "tn", "tp_km2", "fp_km2", "fn_km2", "tn_km2", "landslides_found", "landslides_total", "false_alarms",
           "predicted_objects", "epochs_run", "train_seconds")
METRIC_LABELS = {"precision": "precision", "recall": "recall", "f1": "F1", "iou": "IoU"}


def load(path: str | Path) -> pd.DataFrame:
    """results.csv as a frame: numbers as numbers, a ``model`` label, ``local`` (tested on a training site)."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for c in NUMERIC:
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    if len(df):
        df["model"] = df["architecture"] + "-" + df["filters"].astype("Int64").astype(str) + "/b" + \
            df["batch_size"].astype("Int64").astype(str)
        df["local"] = [t in s.split("+") for t, s in zip(df["test_site"], df["train_sites"], strict=True)]
    return df


def areas(df: pd.DataFrame) -> pd.DataFrame:
    """The successful rows of single test areas (no pooled rows)."""
    return df[(df["status"] == "ok") & (df["pooled"] == "")]


def site_level(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run x test site: counts summed over the site's areas, scores from the sums."""
    a = areas(df)
    keys = ["scenario", "train_sites", "dataset", "sampling", "size", "architecture", "filters", "batch_size",
            "seed", "model", "test_site", "local", "run_folder"]
    g = a.groupby(keys, dropna=False, sort=False)[["tp", "fp", "fn", "tn"]].sum().reset_index()
    return _with_scores(g)


def run_level(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: counts summed over every test area of every test site."""
    a = areas(df)
    keys = ["scenario", "train_sites", "dataset", "sampling", "size", "architecture", "filters", "batch_size",
            "seed", "model", "run_folder"]
    g = a.groupby(keys, dropna=False, sort=False)[["tp", "fp", "fn", "tn"]].sum().reset_index()
    return _with_scores(g)


def _with_scores(g: pd.DataFrame) -> pd.DataFrame:
    tp, fp, fn = g["tp"].astype(float), g["fp"].astype(float), g["fn"].astype(float)
    g["precision"] = np.where(tp + fp > 0, tp / (tp + fp).where(tp + fp > 0, 1), 0.0)
    g["recall"] = np.where(tp + fn > 0, tp / (tp + fn).where(tp + fn > 0, 1), 0.0)
    g["f1"] = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).where(2 * tp + fp + fn > 0, 1), 0.0)
    g["iou"] = np.where(tp + fp + fn > 0, tp / (tp + fp + fn).where(tp + fp + fn > 0, 1), 1.0)
    return g


def mean_sd(df: pd.DataFrame, keys: Sequence[str], metrics: Sequence[str] = ("precision", "recall", "f1", "iou")
            ) -> pd.DataFrame:
    """Mean and standard deviation over seeds (and anything not in ``keys``), with the count ``n``."""
    g = df.groupby(list(keys), dropna=False, sort=False)
    out = g[list(metrics)].mean()
    sd = g[list(metrics)].std(ddof=1).fillna(0.0).add_suffix("_sd")
    n = g.size().rename("n")
    folders = g["run_folder"].first().rename("run_folder")
    return pd.concat([out, sd, n, folders], axis=1).reset_index()


def best_per_group(df: pd.DataFrame, by: str = "f1") -> pd.DataFrame:
    """Study 000's figure 5: the best model per test area x dataset x sampling x size.

    The model (architecture, filters, batch size) is the one with the highest mean ``by`` over seeds, shown with
    its mean and spread.
    """
    a = areas(df)
    group = ["scenario", "test_site", "test_area", "dataset", "sampling", "size"]
    per_model = mean_sd(a, [*group, "model"])
    idx = per_model.groupby(group, sort=False)[by].idxmax()
    return per_model.loc[idx.to_numpy()].reset_index(drop=True)


def table3(df: pd.DataFrame) -> pd.DataFrame:
    """Study 000's table 3: the best dataset x model per (training scenario x) sampling x size.

    Best by IoU averaged over the test areas (means over seeds), with each test area's IoU.
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
    folders = per.groupby(keys, sort=False)["run_folder"].first()
    best["run_folder"] = [folders.get(tuple(getattr(r, k) for k in keys), "") for r in best.itertuples()]
    return best


def transfer_matrix(df: pd.DataFrame) -> pd.DataFrame:
    """Study 002's figure 10: mean F1 per architecture x training scenario x test site.

    Means over runs and seeds, from each run's site-level counts.
    """
    s = site_level(df)
    return mean_sd(s, ["architecture", "scenario", "test_site"], ("f1",))


def by_size(df: pd.DataFrame) -> pd.DataFrame:
    """Study 002's figure 11: mean F1 over all test sites by patch size per scenario and architecture."""
    r = run_level(df)
    return mean_sd(r, ["scenario", "architecture", "size"], ("precision", "recall", "f1"))


def scenario_table(df: pd.DataFrame) -> pd.DataFrame:
    """Study 002's tables 4-7: P/R/F1 per scenario x model x size x test site, and over all test sites."""
    s = site_level(df)
    per_site = mean_sd(s, ["scenario", "architecture", "size", "test_site"], ("precision", "recall", "f1"))
    r = run_level(df).assign(test_site="all")
    pooled = mean_sd(r, ["scenario", "architecture", "size", "test_site"], ("precision", "recall", "f1"))
    return pd.concat([per_site, pooled], ignore_index=True).sort_values(
        ["scenario", "architecture", "size", "test_site"], kind="stable")


# --- the studies' conclusions, tested on paired runs ----------------------------------------------------

@dataclass(frozen=True)
class Claim:
    """One conclusion a study drew, as a paired comparison in this grid."""

    text: str
    n: int
    mean: float
    sd: float
    wins: int
    p_sign: float | None
    p_wilcoxon: float | None
    metric: str

    why_not: str = "fewer than 2 paired runs"

    @property
    def p(self) -> float | None:
        """The test the verdict rests on: Wilcoxon where there are enough pairs, else the sign test."""
        return self.p_wilcoxon if self.p_wilcoxon is not None else self.p_sign

    @property
    def verdict(self) -> str:
        """Supported, contradicted or not supported at p < 0.05, or why it cannot be tested here."""
        if self.n < 2:
            return f"cannot be tested here ({self.why_not})"
        if self.p is not None and self.p < 0.05:
            return "supported" if self.mean > 0 else "contradicted: the difference goes the other way"
        return "not supported (no significant difference)"

    def sentence(self) -> str:
        """The claim, its verdict and the numbers behind it, as the report prints them."""
        if self.n < 2:
            return f"{self.text}: {self.verdict}."
        wil = f", Wilcoxon p = {self.p_wilcoxon:.3g}" if self.p_wilcoxon is not None else ""
        return (f"{self.text}: {self.verdict} — paired difference in {self.metric} {self.mean:+.3f} ± "
                f"{self.sd:.3f} over {self.n} pairs ({self.wins} of {self.n} in favour; sign test "
                f"p = {self.p_sign:.3g}{wil}).")


def paired(frame: pd.DataFrame, axis: str, a: str | float, b: str | float, metric: str, text: str) -> Claim:
    """Pair rows that differ only in ``axis`` (``a`` vs ``b``) and test ``metric(a) - metric(b)``."""
    from scipy import stats

    free = {axis, "filters"} if axis == "architecture" else {axis}  # architectures differ in width too
    keys = [c for c in ("scenario", "dataset", "sampling", "size", "architecture", "filters", "batch_size",
                        "seed", "test_site", "test_area") if c in frame and c not in free]
    left = frame[frame[axis] == a].groupby(keys, dropna=False)[metric].mean()
    right = frame[frame[axis] == b].groupby(keys, dropna=False)[metric].mean()
    both = pd.concat([left.rename("a"), right.rename("b")], axis=1, join="inner").dropna()
    d = (both["a"] - both["b"]).to_numpy(dtype=float)
    n = int(d.size)
    if n == 0:
        return Claim(text, 0, 0.0, 0.0, 0, None, None, metric)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    p_sign = float(stats.binomtest(wins, wins + losses).pvalue) if wins + losses else 1.0
    p_wil = None
    if n >= 6 and np.any(d != 0):
        p_wil = float(stats.wilcoxon(d).pvalue)
    return Claim(text, n, float(d.mean()), float(d.std(ddof=1)) if n > 1 else 0.0, wins, p_sign, p_wil, metric)


def _dataset_pairs(df: pd.DataFrame, spec_datasets: dict[str, tuple[tuple[str, ...], bool]]
                   ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Dataset pairs differing only by terrain layers (with, without) and only by augmentation."""
    dem, aug = [], []
    names = list(spec_datasets)
    for x in names:
        for y in names:
            bx, ax = spec_datasets[x]
            by, ay = spec_datasets[y]
            if ax == ay and set(bx) > set(by) and set(bx) - set(by) <= set(TERRAIN_LAYERS):
                dem.append((x, y))
            if set(bx) == set(by) and ax and not ay:
                aug.append((x, y))
    return dem, aug


def datasets_of(df: pd.DataFrame) -> dict[str, tuple[tuple[str, ...], bool]]:
    """Each dataset's bands and augmentation, as recorded in the rows."""
    out: dict[str, tuple[tuple[str, ...], bool]] = {}
    for name, g in df.groupby("dataset", sort=False):
        first = g.iloc[0]
        out[cast(str, name)] = (tuple(str(first["bands"]).split("+")), str(first["augment"]) == "True")
    return out


def claims(df: pd.DataFrame) -> list[Claim]:
    """The studies' conclusions, each tested on the runs of this grid that differ only in that factor."""
    a = areas(df)
    if a.empty:
        return []
    out = []
    samplings = {s: m for s, m in zip(a["sampling"], a["method"], strict=True)}
    grid = [s for s, m in samplings.items() if m == "grid"]
    rand = [s for s, m in samplings.items() if m == "random"]
    text = "Random sampling beats grid sampling (study 000)"
    if grid and rand:
        out.append(paired(a, "sampling", rand[0], grid[0], "f1", text))
    else:
        out.append(Claim(text, 0, 0.0, 0.0, 0, None, None, "f1", "the grid has one sampling method"))
    dem, aug = _dataset_pairs(a, datasets_of(a))
    frames = []
    for with_dem, without in dem:
        frames.append(a[a["dataset"].isin([with_dem, without])].replace({"dataset": {with_dem: "+dem",
                                                                                     without: "-dem"}}))
    text = "The DEM layers improve F1 (study 000)"
    if frames:
        out.append(paired(pd.concat(frames), "dataset", "+dem", "-dem", "f1", text))
    else:
        out.append(Claim(text, 0, 0.0, 0.0, 0, None, None, "f1",
                         "no two datasets differ only by the terrain layers"))
    frames = []
    for on, off in aug:
        frames.append(a[a["dataset"].isin([on, off])].replace({"dataset": {on: "+aug", off: "-aug"}}))
    text = "Augmentation improves F1 (study 000)"
    if frames:
        out.append(paired(pd.concat(frames), "dataset", "+aug", "-aug", "f1", text))
    else:
        out.append(Claim(text, 0, 0.0, 0.0, 0, None, None, "f1", "no two datasets differ only by augmentation"))
    sizes = sorted(a["size"].dropna().unique())
    if len(sizes) < 2:
        out.append(Claim("Larger patches give higher precision, smaller ones higher recall (studies 000 and 002)",
                         0, 0.0, 0.0, 0, None, None, "precision", "the grid has one patch size"))
    else:
        big, small = sizes[-1], sizes[0]
        out.append(paired(a, "size", big, small, "precision", f"{int(big)} px patches give higher precision "
                          f"than {int(small)} px (studies 000 and 002)"))
        out.append(paired(a, "size", small, big, "recall", f"{int(small)} px patches give higher recall than "
                          f"{int(big)} px (study 000)"))
    archs = set(a["architecture"])
    if not {"unet", "resunet"} <= archs:
        for text in ("ResU-Net beats U-Net on the sites it was trained on (study 002)",
                     "U-Net transfers better than ResU-Net to sites it was not trained on (study 002)"):
            out.append(Claim(text, 0, 0.0, 0.0, 0, None, None, "f1", "the grid has one architecture"))
    else:
        s = site_level(df)
        s = s.assign(test_area="")
        out.append(paired(s[s["local"]], "architecture", "resunet", "unet", "f1",
                          "ResU-Net beats U-Net on the sites it was trained on (study 002)"))
        out.append(paired(s[~s["local"]], "architecture", "unet", "resunet", "f1",
                          "U-Net transfers better than ResU-Net to sites it was not trained on (study 002)"))
    return out
