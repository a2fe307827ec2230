"""``slidemap experiment report``: the studies' tables and figures from an experiment's results.csv.

Writes ``report.md``, the same as a self-contained ``report.html`` (figures inlined) and the PNG figures
into the report folder (default ``DIR/report``). Every number is traceable: the tables name the run folder
each row comes from. A report of an unfinished grid works and lists the runs that are missing.
"""

from __future__ import annotations

import base64
import csv
import html
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from slidemap.errors import UserError
from slidemap.experiments import analysis as an
from slidemap.experiments import report_figures as rf
from slidemap.experiments.results import read_rows
from slidemap.experiments.runner import SPEC_FILE
from slidemap.formats.files import atomic_file, check_out


@dataclass
class Doc:
    """A report as blocks, rendered to Markdown and to HTML alike."""

    folder: Path
    blocks: list[tuple] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        """Add a heading of ``level`` (1: the title)."""
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        """Add a paragraph of plain text."""
        self.blocks.append(("p", text))

    def bullets(self, items: list[str]) -> None:
        """Add a bulleted list."""
        self.blocks.append(("ul", items))

    def table(self, frame: pd.DataFrame, floats: int = 3) -> None:
        """Add ``frame`` as a table, floats with ``floats`` decimals and NaN as an empty cell."""
        cols = list(frame.columns)
        rows = [[_cell(v, floats) for v in r] for r in frame.itertuples(index=False)]
        self.blocks.append(("table", cols, rows))

    def image(self, path: Path, alt: str) -> None:
        """Add a figure: linked in Markdown (relative to the folder), embedded in HTML."""
        self.blocks.append(("img", path, alt))

    def markdown(self) -> str:
        """The report as Markdown, figures linked relative to the folder."""
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "ul":
                out.append("\n".join(f"- {x}" for x in b[1]))
            elif b[0] == "table":
                out.append("| " + " | ".join(b[1]) + " |\n|" + "---|" * len(b[1]) + "\n" +
                           "\n".join("| " + " | ".join(r) + " |" for r in b[2]))
            elif b[0] == "img":
                out.append(f"![{b[2]}]({Path(b[1]).relative_to(self.folder)})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        """The report as one self-contained HTML page (figures inlined as data URIs)."""
        out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
               "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;line-height:1.4}"
               "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}"
               "img{max-width:100%}</style></head><body>"]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                out.append(f"<p>{html.escape(b[1])}</p>")
            elif b[0] == "ul":
                out.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in b[1]) + "</ul>")
            elif b[0] == "table":
                head = "".join(f"<th>{html.escape(c)}</th>" for c in b[1])
                body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in b[2])
                out.append(f"<table><tr>{head}</tr>{body}</table>")
            elif b[0] == "img":
                data = base64.b64encode(Path(b[1]).read_bytes()).decode()
                out.append(f"<p><img alt='{html.escape(b[2])}' src='data:image/png;base64,{data}'></p>")
        return "\n".join(out) + "</body></html>\n"


def _cell(v: object, floats: int) -> str:
    if isinstance(v, float):
        return "" if pd.isna(v) else f"{v:.{floats}f}"
    return str(v)


def _pm(frame: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Metric columns as 'mean ± sd' strings when there are several seeds."""
    out = frame.copy()
    several = "n" in out and out["n"].max() > 1
    for m in metrics:
        out[m] = [f"{a:.3f} ± {b:.3f}" if several else f"{a:.3f}" for a, b in zip(out[m], out[f"{m}_sd"],
                                                                                  strict=True)]
        out = out.drop(columns=[f"{m}_sd"])
    return out


def _short(folder: str, root: Path) -> str:
    try:
        return str(Path(folder).relative_to(root))
    except ValueError:
        return folder


def write_report(experiment: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of an experiment folder; returns the path of report.md."""
    root = Path(experiment)
    csv_path = root / "results.csv"
    if not csv_path.is_file() or not (root / SPEC_FILE).is_file():
        raise UserError(f"DIR {root}: not an experiment folder (no results.csv / {SPEC_FILE}); give the --out "
                        f"of `slidemap experiment run`")
    folder = check_out(out or root / "report", "report.md", [csv_path], "report")
    folder.mkdir(parents=True, exist_ok=True)
    df = an.load(csv_path)
    doc = Doc(folder)
    doc.h(1, f"Experiment report: {root.name}")
    _status(doc, root, df)
    a = an.areas(df)
    if a.empty:
        doc.p("No run has finished yet: nothing to report.")
    else:
        _study000(doc, df, root, folder)
        _study002(doc, df, root, folder)
        _conclusions(doc, df)
    md = folder / "report.md"
    with atomic_file(md) as tmp:
        tmp.write_text(doc.markdown())
    with atomic_file(folder / "report.html") as tmp:
        tmp.write_text(doc.html(f"slidemap experiment {root.name}"))
    return md


def _status(doc: Doc, root: Path, df: pd.DataFrame) -> None:
    import json

    from slidemap.experiments.plan import make_plan
    from slidemap.experiments.spec import Spec

    spec = Spec.model_validate(json.loads((root / SPEC_FILE).read_text())["spec"])
    plan = make_plan(spec, root)
    done = [r for r in plan.runs if (read_rows(r.folder) or [{}])[0].get("status") == "ok"]
    failed = [r for r in plan.runs if (read_rows(r.folder) or [{}])[0].get("status") == "failed"]
    missing = [r for r in plan.runs if read_rows(r.folder) is None]
    seeds = sorted(set(a for a in df["seed"].dropna())) if len(df) else []
    doc.p(f"{len(plan.runs)} runs planned: {len(done)} finished, {len(failed)} failed, {len(missing)} missing. "
          f"Seeds: {', '.join(str(int(s)) for s in seeds) or 'none'} — with more than one, every figure shows the "
          f"mean and one standard deviation over seeds. Source: {root / 'results.csv'}; every table names the "
          f"run folder (relative to {root}) its numbers come from.")
    if missing:
        doc.h(2, "Missing runs")
        doc.p("These grid points have no result yet (run `slidemap experiment run` again to complete them):")
        doc.bullets([r.name for r in missing[:200]] + ([f"... and {len(missing) - 200} more"]
                                                       if len(missing) > 200 else []))
    if failed:
        doc.h(2, "Failed runs")
        doc.bullets([f"{r.name}: {(read_rows(r.folder) or [{}])[0].get('error', '')}" for r in failed])


def _study000(doc: Doc, df: pd.DataFrame, root: Path, folder: Path) -> None:
    doc.h(2, "Sampling, patch size and input layers (study 000, Soares et al. 2020)")
    best = an.best_per_group(df, "f1")
    chart = rf.best_models_chart(best, folder / "best_models.png")
    doc.p("Best model (architecture-filters/batch size) per test area, dataset, sampling and patch size, by mean "
          "F1 over seeds (study 000's figure 5); IoU is the landslide-class IoU (what study 000 calls mIoU).")
    doc.image(chart, "best models per dataset, sampling and patch size")
    shown = _pm(best, ["precision", "recall", "f1", "iou"])
    shown["run_folder"] = [_short(f, root) for f in shown["run_folder"]]
    doc.table(shown[["scenario", "test_site", "test_area", "dataset", "sampling", "size", "model", "precision",
                     "recall", "f1", "iou", "n", "run_folder"]])
    best_iou = an.best_per_group(df, "iou")
    doc.p("The same by mean IoU:")
    shown = _pm(best_iou, ["f1", "iou"])
    doc.table(shown[["scenario", "test_site", "test_area", "dataset", "sampling", "size", "model", "f1", "iou",
                     "n"]])

    doc.h(3, "Highest average IoU over the test areas per sampling and patch size (study 000's table 3)")
    t3 = an.table3(df)
    t3_show = t3.copy()
    t3_show["run_folder"] = [_short(f, root) for f in t3_show["run_folder"]]
    doc.table(t3_show)
    _error_maps(doc, df, t3, root, folder)

    factors = [f for f in ("dataset", "sampling", "size", "architecture", "filters", "batch_size")
               if an.areas(df)[f].nunique() > 1]
    if factors:
        doc.h(3, "The effect of each factor on F1")
        runs = an.run_level(df)
        chart = rf.factor_chart(runs, factors, folder / "factors.png")
        doc.p("Each point is one run (its F1 over all its test areas); black: mean and one standard deviation per "
              "level, every other factor pooled.")
        doc.image(chart, "F1 against each factor")


def _error_maps(doc: Doc, df: pd.DataFrame, t3: pd.DataFrame, root: Path, folder: Path) -> None:
    """Study 000's figures 6 and 7: the error maps of the table-3 models, and their areas in km²."""
    a = an.areas(df)
    maps = folder / "error_maps"
    rows = []
    run_folders: dict[str, None] = {}
    r: Any  # a row of t3 (pandas types its fields as any scalar)
    for r in t3.itertuples():
        runs = a[(a["scenario"] == r.scenario) & (a["sampling"] == r.sampling) & (a["size"] == r.size)
                 & (a["dataset"] == r.dataset) & (a["model"] == r.model)]
        first_seed = runs[runs["seed"] == runs["seed"].min()]
        run_folders.update(dict.fromkeys(first_seed["run_folder"]))
        for x in first_seed.itertuples():
            rows.append({"scenario": r.scenario, "sampling": r.sampling, "size": int(r.size),
                         "dataset": r.dataset, "model": r.model,
                         "seed": int(x.seed), "test area": f"{x.test_site}/{x.test_area}", "TP km²": x.tp_km2,
                         "FP km²": x.fp_km2, "FN km²": x.fn_km2, "TN km²": x.tn_km2,
                         "prediction": _short(x.prediction_folder, root)})
            maps.mkdir(exist_ok=True)
            target = maps / f"{r.scenario}_{r.sampling}_{int(r.size)}_{x.test_site}_{x.test_area}.png"
            if _error_map(Path(x.prediction_folder), x.test_area, target):
                doc.image(target, f"error map: {r.sampling} {int(r.size)} px, {r.dataset}, {r.model}, "
                                  f"{x.test_site}/{x.test_area}")
    if rows:
        doc.p("Error maps of those models (first seed; yellow TP, magenta FP, cyan FN) and their areas:")
        doc.table(pd.DataFrame(rows), floats=4)
    curves = [(run, png) for run in run_folders
              if (png := _learning_curve(Path(run), folder / "learning_curves" / f"{Path(run).name}.png"))]
    if curves:
        doc.p("Learning curves of those runs (training and validation loss, validation F1 at 0.5, per epoch):")
        for run, png in curves:
            doc.image(png, f"learning curve: {_short(run, root)}")


def _learning_curve(run: Path, target: Path) -> Path | None:
    """A run's learning curve: copied if it drew one, else drawn from its metrics.csv (grid runs draw none)."""
    from slidemap.figures import plot_learning_curve

    if (run / "learning_curve.png").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / "learning_curve.png", target)
        return target
    try:
        with open(run / "metrics.csv", newline="") as f:
            rows = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    except (OSError, ValueError):
        return None
    if not rows or any({"epoch", "train_loss", "val_loss", "val_f1"} - set(row) for row in rows):
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    return plot_learning_curve(rows, target)


def _error_map(prediction: Path, area: str, target: Path) -> bool:
    """Draw (or copy) the error map of one evaluated area.

    Grid runs write its GeoTIFF only, or with ``outputs: metrics`` only the mask: then the area is evaluated
    again from the mask (the same counts; no network), which writes the GeoTIFF and the PNG.
    """
    from slidemap.figures import error_map_png
    from slidemap.formats.prediction import SceneMetrics
    from slidemap.formats.scene import Scene
    from slidemap.stages import evaluate

    png, tif = prediction / f"error_map_{area}.png", prediction / f"error_map_{area}.tif"
    if png.is_file():
        shutil.copyfile(png, target)
        return True
    if not (prediction / "metrics.json").is_file():
        return False
    metrics = SceneMetrics.load(prediction / "metrics.json")
    row = next((a for a in metrics.areas if a.area == area), None)
    if row is None:
        return False
    if not tif.is_file():
        if not (prediction / "mask.tif").is_file():
            return False
        evaluate.run(evaluate.EvaluateOptions(pred=prediction, truth=Path(metrics.truth), areas=[area],
                                              object_overlap=metrics.object_overlap))
        if png.is_file():
            shutil.copyfile(png, target)
        return png.is_file()
    scene = Scene(metrics.truth)
    error_map_png(tif, target, scene.stack_path, scene.bands,
                  evaluate.error_map_title(row.model_dump(), metrics.threshold))
    return True


def _study002(doc: Doc, df: pd.DataFrame, root: Path, folder: Path) -> None:
    a = an.areas(df)
    if a["scenario"].nunique() < 2 and a["test_site"].nunique() < 2:
        return
    doc.h(2, "Transferability between sites (study 002, Ghorbanzadeh et al. 2021)")
    doc.p("Precision, recall and F1 per training scenario, architecture, patch size and test site, and over all "
          "test sites pooled (study 002's tables 4-7; means over seeds):")
    t = _pm(an.scenario_table(df), ["precision", "recall", "f1"])
    t["run_folder"] = [_short(f, root) for f in t["run_folder"]]
    doc.table(t[["scenario", "architecture", "size", "test_site", "precision", "recall", "f1", "n",
                 "run_folder"]])
    matrix = an.transfer_matrix(df)
    doc.h(3, "Transferability matrix (study 002's figure 10)")
    doc.image(rf.transfer_heatmap(matrix, folder / "transfer.png"), "transferability heat map")
    wide = matrix.pivot_table(index=["architecture", "scenario"], columns="test_site", values="f1").reset_index()
    doc.table(wide)
    doc.h(3, "F1 by patch size (study 002's figure 11)")
    doc.image(rf.size_chart(an.by_size(df), folder / "patch_size.png"), "F1 by patch size")


def _conclusions(doc: Doc, df: pd.DataFrame) -> None:
    items = an.claims(df)
    if not items:
        return
    doc.h(2, "Do the studies' conclusions hold here?")
    doc.p("Each conclusion is tested on pairs of runs that differ only in that factor (same everything else, "
          "seed and test area included): the mean paired difference ± its standard deviation, how many pairs "
          "favour the claim, a two-sided sign test and, with 6 pairs or more, a Wilcoxon signed-rank test. "
          "Supported means p < 0.05 in the claimed direction.")
    doc.bullets([c.sentence() for c in items])
