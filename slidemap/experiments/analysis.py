"""The numbers of an experiment report, from results.csv alone: runs, their levels, the studies' tables.

The best models, the highest average IoU, the scores per scenario, the transferability matrix; the runs as
units (a run's test areas pooled, or one test site's) for the tests of ``slidemap.experiments.conclusions``.

Everything here is a pure function of the rows (pandas), so the report's tables can be checked against
hand-computed values; where a number comes from, the rows' ``run_folder`` says.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from slidemap.experiments.spec import TRAINING_AXES

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
ENSEMBLE_MEMBERS = "members"
"""The column that marks an ensemble's rows (its members' seeds; '' for a single run)."""
RUNS_ON = "precision / device"
"""The column of every run table naming the precision and device of its runs."""


def load(path: str | Path, ensembles: bool = False) -> pd.DataFrame:
    """results.csv as a frame: numbers as numbers, a ``model`` label, ``local`` (tested on a training site).

    Columns an older results.csv lacks (training settings, precision, device) are added empty: they then match
    between every two runs and tables say "not recorded". An ensemble's rows are left out unless ``ensembles``:
    they are not runs, and every statistic here is over single runs.
    """
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if ENSEMBLE_MEMBERS not in df:
        df[ENSEMBLE_MEMBERS] = ""
    if not ensembles:
        df = single_runs(df)
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


def single_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of single runs: an ensemble's rows (``members`` given) never count as a run of the grid."""
    if ENSEMBLE_MEMBERS not in df:
        return df
    return df[df[ENSEMBLE_MEMBERS].fillna("").astype(str) == ""]


def areas(df: pd.DataFrame) -> pd.DataFrame:
    """The successful rows of single test areas of single runs (no pooled rows, no ensembles)."""
    df = single_runs(df)
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


def ensembles_against_members(df: pd.DataFrame) -> pd.DataFrame:
    """Each ensemble's F1 (its test areas pooled) beside its members' (each run's areas pooled): mean, sd, best.

    ``df`` as ``load(path, ensembles=True)`` gives it; empty when it holds no ensemble.
    """
    a = df[(df["status"] == "ok") & (df["pooled"] == "")]
    keys = [c for c in _present(df, FACTORS) if c != "seed"] + ["model"]
    if ENSEMBLE_MEMBERS not in a or (a[ENSEMBLE_MEMBERS] == "").all():
        return pd.DataFrame()
    ens = _pooled(a[a[ENSEMBLE_MEMBERS] != ""], [*keys, ENSEMBLE_MEMBERS, "run_folder"])
    runs = _pooled(a[a[ENSEMBLE_MEMBERS] == ""], [*keys, "seed", "run_folder"])
    point = runs[keys].map(str).agg("|".join, axis=1)
    rows = []
    for _, e in ens.iterrows():
        seeds = {float(x) for x in str(e[ENSEMBLE_MEMBERS]).split("+")}
        mine = runs[(point == "|".join(str(e[k]) for k in keys)) & runs["seed"].isin(seeds)]["f1"]
        rows.append({**{k: e[k] for k in ("scenario", "dataset", "sampling", "size", "model")},
                     "members": e[ENSEMBLE_MEMBERS], "ensemble F1": e["f1"], "members' mean F1": mine.mean(),
                     "members' sd": mine.std(ddof=1) if len(mine) > 1 else np.nan, "best member F1": mine.max(),
                     "run_folder": e["run_folder"]})
    return pd.DataFrame(rows)

