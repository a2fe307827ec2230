"""The report's figures: the studies' charts with the spread over seeds they never showed.

Each function takes the frames of ``slidemap.experiments.analysis`` and writes one PNG; error bars are one
standard deviation over seeds (none when a grid has one seed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from slidemap.experiments.analysis import METRIC_LABELS, RUNS_ON
from slidemap.figures import agg_figure, save_png

COLOURS = ("#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb")


def best_models_chart(best: pd.DataFrame, path: Path) -> Path:
    """Figure 5 of study 000: P, R, F1 and IoU of the best model per dataset x sampling x size.

    One panel per test area.
    """
    where = list(dict.fromkeys(best["test_site"] + "/" + best["test_area"]))
    fig = agg_figure(max(7.0, 0.55 * best.groupby(["dataset", "sampling", "size"]).ngroups + 2),
                      2.8 * len(where) + 0.6)
    axes = fig.subplots(len(where), 1, squeeze=False)[:, 0]
    metrics = list(METRIC_LABELS)
    for ax, w in zip(axes, where, strict=True):
        rows = best[best["test_site"] + "/" + best["test_area"] == w]
        several = best["scenario"].nunique() > 1
        labels = [(f"{r.scenario}: " if several else "") + f"{r.dataset}\n{r.sampling} {int(r.size)}"
                  for r in rows.itertuples()]
        x = np.arange(len(rows))
        width = 0.8 / len(metrics)
        for k, m in enumerate(metrics):
            ax.bar(x + (k - 1.5) * width, rows[m], width, yerr=rows[f"{m}_sd"] if rows["n"].max() > 1 else None,
                   color=COLOURS[k], label=METRIC_LABELS[m], capsize=2, error_kw={"lw": 0.8})
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("score")
        ax.set_title(f"test area {w}: best model per dataset, sampling and patch size (by F1)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(ncol=4, fontsize=8, loc="upper right")
    fig.tight_layout()
    return save_png(fig, path)


def factor_chart(runs: pd.DataFrame, factors: list[str], path: Path) -> Path:
    """F1 against each factor, the other factors pooled.

    One point per run (mean over its test areas), with the mean and one standard deviation per level.
    """
    fig = agg_figure(3.0 * len(factors) + 0.5, 3.2)
    axes = fig.subplots(1, len(factors), squeeze=False, sharey=True)[0]
    rng = np.random.default_rng(0)
    for ax, f in zip(axes, factors, strict=True):
        levels = list(dict.fromkeys(sorted(runs[f].dropna().unique(), key=lambda v: (str(type(v)), v))))
        for i, level in enumerate(levels):
            y = runs.loc[runs[f] == level, "f1"].to_numpy(dtype=float)
            ax.scatter(i + rng.uniform(-0.12, 0.12, y.size), y, s=10, alpha=0.5, color=COLOURS[0])
            ax.errorbar(i + 0.25, y.mean(), yerr=y.std(ddof=1) if y.size > 1 else None, fmt="o", color="black",
                        capsize=3, ms=4)
        ax.set_xticks(range(len(levels)), [str(v) for v in levels], fontsize=7, rotation=30)
        ax.set_title(f.replace("_", " "), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("F1 (run, all test areas)")
    fig.tight_layout()
    return save_png(fig, path)


def _kept_apart(frame: pd.DataFrame, shown: set[str]) -> list[str]:
    """The key columns of a mean_sd frame besides ``shown`` ones and the numbers: what a chart keeps apart."""
    numbers = {"n", RUNS_ON, "run_folder"} | {c for c in frame.columns if c.endswith("_sd")} | set(METRIC_LABELS)
    return [c for c in frame.columns if c not in numbers and c not in shown]


def _label(values: object) -> str:
    items = values if isinstance(values, tuple) else (values,)
    return " ".join(str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in items)


def transfer_heatmap(matrix: pd.DataFrame, path: Path) -> Path:
    """Figure 10 of study 002: mean F1 per training scenario (rows) and test site (columns).

    One panel per architecture (and per level of any other factor that varies), each cell with its spread over
    seeds.
    """
    apart = _kept_apart(matrix, {"scenario", "test_site"})
    groups = list(matrix.groupby(apart, sort=False)) if apart else [("", matrix)]
    scenarios = list(dict.fromkeys(matrix["scenario"]))
    sites = list(dict.fromkeys(matrix["test_site"]))
    cols = min(4, len(groups))
    rows = -(-len(groups) // cols)
    fig = agg_figure(1.0 + (1.3 * len(sites) + 1.6) * cols, (1.2 + 0.6 * len(scenarios)) * rows)
    fig.set_layout_engine("constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    vmax = max(0.01, float(np.nanmax(matrix["f1"])))
    im = None
    for ax, (key, m) in zip(axes, groups, strict=False):
        grid = np.full((len(scenarios), len(sites)), np.nan)
        sd = np.zeros_like(grid)
        for r in m.itertuples():
            grid[scenarios.index(r.scenario), sites.index(r.test_site)] = r.f1
            sd[scenarios.index(r.scenario), sites.index(r.test_site)] = r.f1_sd
        im = ax.imshow(grid, vmin=0, vmax=vmax, cmap="viridis")
        for i in range(len(scenarios)):
            for j in range(len(sites)):
                if np.isfinite(grid[i, j]):
                    text = f"{grid[i, j]:.2f}" + (f"\n±{sd[i, j]:.2f}" if sd[i, j] else "")
                    ax.text(j, i, text, ha="center", va="center", fontsize=8,
                            color="white" if grid[i, j] < 0.6 * vmax else "black")
        ax.set_xticks(range(len(sites)), sites, fontsize=8)
        ax.set_yticks(range(len(scenarios)), [f"trained: {s}" for s in scenarios], fontsize=8)
        ax.set_xlabel("test site")
        ax.set_title(_label(key), fontsize=9)
    for ax in axes[len(groups):]:
        ax.set_axis_off()
    assert im is not None  # a matrix has at least one group
    fig.colorbar(im, ax=list(axes), label="mean F1", shrink=0.8)
    return save_png(fig, path)


def size_chart(frame: pd.DataFrame, path: Path) -> Path:
    """Figure 11 of study 002: mean F1 over all test sites by patch size, per scenario and architecture.

    One line per architecture (and per level of any other factor that varies).
    """
    scenarios = list(dict.fromkeys(frame["scenario"]))
    apart = _kept_apart(frame, {"scenario", "size"})
    fig = agg_figure(3.0 * len(scenarios) + 0.5, 3.4)
    axes = fig.subplots(1, len(scenarios), squeeze=False, sharey=True)[0]
    # colour: the other factors' level; line style: the architecture
    others = [c for c in apart if c != "architecture"]
    colours = {k: COLOURS[i % len(COLOURS)] for i, k in enumerate(dict.fromkeys(
        frame[others].itertuples(index=False, name=None) if others else [()]))}
    styles = {a: ("-", "--", ":", "-.")[i % 4] for i, a in enumerate(dict.fromkeys(frame["architecture"]))}
    for ax, sc in zip(axes, scenarios, strict=True):
        for key, g in frame[frame["scenario"] == sc].groupby(apart, sort=False):
            g = g.sort_values("size")
            first = g.iloc[0]
            ax.errorbar(g["size"], g["f1"], yerr=g["f1_sd"] if g["n"].max() > 1 else None, marker="o",
                        capsize=3, color=colours[tuple(first[c] for c in others)],
                        linestyle=styles[first["architecture"]], label=_label(key))
        ax.set_xscale("log", base=2)
        sizes = sorted(frame["size"].unique())
        ax.set_xticks(sizes, [str(int(s)) for s in sizes])
        ax.set_title(f"trained: {sc}", fontsize=9)
        ax.set_xlabel("patch size (px)")
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("F1, all test sites")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, path)
