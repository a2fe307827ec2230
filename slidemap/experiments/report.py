"""``slidemap experiment report``: the studies' tables and figures from an experiment's results.csv.

Writes ``report.md``, the same as a self-contained ``report.html`` (figures inlined) and the PNG figures
into the report folder (default ``DIR/report``). Every number is traceable: the tables name the run folder
each row comes from. A report of an unfinished grid works and lists the runs that are missing.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pandas as pd

from slidemap.errors import UserError
from slidemap.experiments import analysis as an
from slidemap.experiments import conclusions
from slidemap.experiments import report_figures as rf
from slidemap.experiments import verdicts as vd
from slidemap.experiments.plan import Plan, RunPlan, make_plan
from slidemap.experiments.results import read_rows
from slidemap.experiments.runner import SPEC_FILE
from slidemap.experiments.spec import Spec
from slidemap.figures import ErrorPanel
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
    spec = Spec.model_validate(json.loads((root / SPEC_FILE).read_text())["spec"])
    plan = make_plan(spec, root)
    df = an.load(csv_path)
    doc = Doc(folder)
    doc.h(1, spec.name)
    if spec.description:
        doc.p(spec.description)
    _status(doc, root, df, plan)
    if an.areas(df).empty:
        doc.p("No run has finished yet: nothing to report.")
    else:
        # error maps missing from the runs' folders are made here, from the masks, and dropped afterwards
        with tempfile.TemporaryDirectory(dir=folder, prefix=".maps-") as scratch:
            maps = Maps(Path(scratch))
            _sampling_size_layers(doc, df, root, folder, plan, maps)
            _transferability(doc, df, root, folder, maps)
        _conclusions(doc, df)
        _ensembles(doc, an.ensembles_against_members(an.load(csv_path, ensembles=True)), root.resolve())
    md = folder / "report.md"
    with atomic_file(md) as tmp:
        tmp.write_text(doc.markdown())
    with atomic_file(folder / "report.html") as tmp:
        tmp.write_text(doc.html(spec.name))
    return md


def _status(doc: Doc, root: Path, df: pd.DataFrame, plan: Plan) -> None:
    records = {r.name: read_rows(r.folder) for r in plan.runs}
    done = [r for r in plan.runs if (records[r.name] or [{}])[0].get("status") == "ok"]
    failed = [r for r in plan.runs if (records[r.name] or [{}])[0].get("status") == "failed"]
    missing = [r for r in plan.runs if records[r.name] is None]
    seeds = sorted(set(a for a in df["seed"].dropna())) if len(df) else []
    ok = an.areas(df)
    on = an.runs_on(ok) if len(ok) else an.NOT_RECORDED
    doc.p(f"{len(plan.runs)} runs planned: {len(done)} finished, {len(failed)} failed, {len(missing)} missing. "
          f"Seeds: {', '.join(str(int(s)) for s in seeds) or 'none'} — with more than one, every figure shows the "
          f"mean and one standard deviation over seeds. Precision / device of the runs: {on}. Source: "
          f"{root / 'results.csv'}; every table names the run folder (relative to {root}) its numbers come from.")
    if "," in on:
        doc.p("The runs differ in precision or device: no table or test below pairs two runs that differ in "
              "them (the tests count the runs left without a partner for this reason).")
    if missing:
        doc.h(2, "Missing runs")
        doc.p("These grid points have no result yet (run `slidemap experiment run` again to complete them):")
        doc.bullets([r.name for r in missing[:200]] + ([f"... and {len(missing) - 200} more"]
                                                       if len(missing) > 200 else []))
    if failed:
        doc.h(2, "Failed runs")
        doc.bullets([f"{r.name}: {(records[r.name] or [{}])[0].get('error', '')}" for r in failed])


# --- error maps ------------------------------------------------------------------------------------

class Maps:
    """The error-map GeoTIFF of each (prediction, area) the report shows.

    A run that kept its error map (``predict.outputs: all``) gives it as it is; otherwise the area is scored again
    from the prediction's mask (the same counts; no network) in a copy of its folder under ``scratch``, so that
    the report writes nothing into the experiment's runs.
    """

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.made: dict[tuple[str, str], tuple[Path, Any, Any] | None] = {}

    def get(self, prediction: Path, area: str) -> tuple[Path, Any, Any] | None:
        """(GeoTIFF, the area's metrics row, the prediction's metrics), or None when it cannot be had."""
        from slidemap.formats.prediction import SceneMetrics
        from slidemap.stages import evaluate

        key = (str(prediction), area)
        if key in self.made:
            return self.made[key]
        self.made[key] = None
        if not (prediction / "metrics.json").is_file():
            return None
        metrics = SceneMetrics.load(prediction / "metrics.json")
        row = next((a for a in metrics.areas if a.area == area), None)
        if row is None:
            return None
        if row.error_map and Path(row.error_map).is_file():
            self.made[key] = (Path(row.error_map), row, metrics)
        elif (prediction / "mask.tif").is_file():
            copy = self.scratch / str(len(self.made))
            copy.mkdir()
            for name in ("mask.tif", "prediction.json"):
                shutil.copyfile(prediction / name, copy / name)
            scored = evaluate.run(evaluate.EvaluateOptions(pred=copy, truth=Path(metrics.truth), areas=[area],
                                                           object_overlap=metrics.object_overlap, maps="tif"))
            again = scored.metrics.areas[0] if isinstance(scored.metrics, SceneMetrics) else None
            if again is not None and again.error_map:
                self.made[key] = (Path(again.error_map), row, metrics)
        return self.made[key]

    def panel(self, prediction: str, area: str, title: str) -> ErrorPanel | None:
        """One panel of an error-map grid (the area's F1 and IoU added to ``title``)."""
        from slidemap.formats.scene import Scene

        got = self.get(Path(prediction), area) if prediction else None
        if got is None:
            return None
        tif, row, metrics = got
        scene = Scene(metrics.truth)
        return (tif, scene.stack_path, scene.bands, f"{title}\nF1 {row.scores.f1:.2f}  IoU {row.scores.iou:.2f}")

    def png(self, prediction: str, area: str, target: Path) -> bool:
        """One area's error map as its own PNG (with its scores and objects above it)."""
        from slidemap.figures import error_map_png
        from slidemap.formats.scene import Scene
        from slidemap.stages import evaluate

        got = self.get(Path(prediction), area) if prediction else None
        if got is None:
            return False
        tif, row, metrics = got
        scene = Scene(metrics.truth)
        target.parent.mkdir(parents=True, exist_ok=True)
        error_map_png(tif, target, scene.stack_path, scene.bands,
                      evaluate.error_map_title(row.model_dump(), metrics.threshold))
        return True


# --- study 000 -------------------------------------------------------------------------------------

def _sampling_size_layers(doc: Doc, df: pd.DataFrame, root: Path, folder: Path, plan: Plan, maps: Maps) -> None:
    doc.h(2, "Sampling, patch size and input layers (study 000, Soares et al. 2020)")
    doc.h(3, "Models per dataset (study 000's table 1)")
    doc.table(an.models_per_dataset(df))
    doc.h(3, "Samples per dataset, sampling and patch size (study 000's table 2)")
    doc.p(f"The chips of the chip sets each run trained on (its training sites', counted by their chips.json), "
          f"and how many of them its spatial split put into training and validation (results.csv; "
          f"validation fraction {plan.spec.training.val_fraction:g}; the chips that overlap both sides are left "
          f"out). With several seeds, random sampling draws its windows anew for each seed and the counts are "
          f"listed in seed order. Augmentation here transforms the same chips anew in each epoch, so an augmented "
          f"dataset trains on as many chips as the one without (study 000 stored rotated and flipped copies, "
          f"hence its larger counts).")
    doc.table(_samples(plan, df))

    doc.h(3, "Best model per test area, dataset, sampling and patch size (study 000's figure 5)")
    best = an.best_models(df, "f1")
    chart = rf.best_models_chart(best, folder / "best_models.png")
    doc.p("Best model (architecture-filters/batch size) per test area, dataset, sampling and patch size, by mean "
          "F1 over seeds; IoU is the landslide-class IoU (what study 000 calls mIoU).")
    doc.image(chart, "best models per dataset, sampling and patch size")
    shown = _pm(best, ["precision", "recall", "f1", "iou"])
    shown["run_folder"] = [_short(f, root) for f in shown["run_folder"]]
    doc.table(shown[["scenario", "test_site", "test_area", "dataset", "sampling", "size", "model", "precision",
                     "recall", "f1", "iou", "n", an.RUNS_ON, "run_folder"]])
    best_iou = an.best_models(df, "iou")
    doc.p("The same by mean IoU:")
    shown = _pm(best_iou, ["f1", "iou"])
    doc.table(shown[["scenario", "test_site", "test_area", "dataset", "sampling", "size", "model", "f1", "iou",
                     "n", an.RUNS_ON]])

    doc.h(3, "Highest average IoU over the test areas per sampling and patch size (study 000's table 3)")
    best_avg = an.best_average_iou(df)
    shown = best_avg.copy()
    shown["run_folder"] = [_short(f, root) for f in shown["run_folder"]]
    doc.table(shown)
    _best_average_maps(doc, df, best_avg, root, folder, maps)
    _best_per_area_maps(doc, df, folder, maps)

    factors = an.varying(df, ("dataset", "sampling", "size", "architecture", "filters", "batch_size",
                              *an.TRAINING))
    if factors:
        doc.h(3, "The effect of each factor on F1")
        runs = an.run_level(df)
        chart = rf.factor_chart(runs, factors, folder / "factors.png")
        doc.p(f"Each point is one run (its F1 over all its test areas); black: mean and one standard deviation per "
              f"level, every other factor pooled. Runs: {an.runs_on(runs)} (precision / device).")
        doc.image(chart, "F1 against each factor")


def _samples(plan: Plan, df: pd.DataFrame) -> pd.DataFrame:
    """Study 000's table 2: chips per (scenario x) dataset x sampling x size, read from the chip sets' chips.json."""
    from slidemap.formats.chips import ChipsMeta

    counts: dict[Path, int | None] = {}
    rows = []
    for run in plan.runs:
        folders = _trained_on(run)
        for folder in folders:
            if folder not in counts:
                meta = folder / "chips.json"
                counts[folder] = ChipsMeta.load(meta).count if meta.is_file() else None
        got = [counts[folder] for folder in folders]
        n = None if None in got else sum(cast(list[int], got))
        rows.append({**{k: run.coords[k] for k in ("scenario", "dataset", "sampling", "size", "seed")},
                     "train sites": "+".join(run.train_sites), "chips": n})
    frame = pd.DataFrame(rows).drop_duplicates(["scenario", "dataset", "sampling", "size", "seed"])
    used = df[df["status"] == "ok"].drop_duplicates(["scenario", "dataset", "sampling", "size", "seed"])
    split = {(r["scenario"], r["dataset"], r["sampling"], int(r["size"]), int(r["seed"])):
             f"{r['train_chips']} + {r['val_chips']}" for _, r in used.iterrows()
             if str(r.get("train_chips", "")) not in ("", "nan")}
    frame["split"] = [split.get((sc, d, smp, int(size), int(seed)), "") for sc, d, smp, size, seed in
                      zip(frame["scenario"], frame["dataset"], frame["sampling"], frame["size"], frame["seed"],
                          strict=True)]
    keys = [k for k in ("scenario", "train sites") if frame["scenario"].nunique() > 1] + \
        ["dataset", "sampling", "size"]
    g = frame.groupby(keys, sort=False)
    out = g["chips"].agg(lambda v: " / ".join(dict.fromkeys("not sampled yet" if pd.isna(x) else str(int(x))
                                                             for x in v))).reset_index()
    if frame["split"].any():
        out["training + validation chips"] = g["split"].agg(lambda v: " / ".join(x or "-" for x in v)).to_numpy()
    return out


def _trained_on(run: RunPlan) -> list[Path]:
    """The chip sets a run trained on: as its config.yaml records them, else as the plan names them.

    The record wins: a chip set's folder name holds a content key that may change between slidemap versions
    (a sampler option added since), while the run keeps the path it read.
    """
    import yaml

    try:
        recorded = yaml.safe_load((run.folder / "config.yaml").read_text()).get("chips")
    except (OSError, yaml.YAMLError, AttributeError):
        recorded = None
    if isinstance(recorded, str):
        return [Path(recorded)]
    if isinstance(recorded, list) and recorded:
        return [Path(str(c)) for c in recorded]
    return [c.folder for c in run.chips]


def _best_average_maps(doc: Doc, df: pd.DataFrame, best: pd.DataFrame, root: Path, folder: Path,
                       maps: Maps) -> None:
    """Study 000's figure 7: the error maps of the table-3 models, and their areas in km²."""
    a = an.areas(df)
    rows = []
    images: list[tuple[Path, str]] = []
    run_folders: dict[str, None] = {}
    r: Any  # a row of ``best`` (pandas types its fields as any scalar)
    for r in best.itertuples():
        runs = a[(a["scenario"] == r.scenario) & (a["sampling"] == r.sampling) & (a["size"] == r.size)
                 & (a["dataset"] == r.dataset) & (a["model"] == r.model)]
        first_seed = runs[runs["seed"] == runs["seed"].min()]
        run_folders.update(dict.fromkeys(first_seed["run_folder"]))
        for x in first_seed.itertuples():
            rows.append({"scenario": r.scenario, "sampling": r.sampling, "size": int(r.size),
                         "dataset": r.dataset, "model": r.model,
                         "seed": int(x.seed), "test area": f"{x.test_site}/{x.test_area}", "TP km²": x.tp_km2,
                         "FP km²": x.fp_km2, "FN km²": x.fn_km2, "TN km²": x.tn_km2,
                         an.RUNS_ON: an.runs_on(pd.DataFrame([x._asdict()])),
                         "prediction": _short(x.prediction_folder, root)})
            target = folder / "error_maps" / f"{r.scenario}_{r.sampling}_{int(r.size)}_{x.test_site}_{x.test_area}.png"
            if maps.png(x.prediction_folder, x.test_area, target):
                images.append((target, f"error map: {r.sampling} {int(r.size)} px, {r.dataset}, {r.model}, "
                                       f"{x.test_site}/{x.test_area}"))
    if rows:
        doc.p("Error maps of those models (study 000's figure 7; first seed; yellow TP, magenta FP, cyan FN) and "
              "their areas:")
        for image, alt in images:
            doc.image(image, alt)
        doc.table(pd.DataFrame(rows), floats=4)
    curves = [(run, png) for run in run_folders
              if (png := _learning_curve(Path(run), folder / "learning_curves" / f"{Path(run).name}.png"))]
    if curves:
        doc.p("Learning curves of those runs (training and validation loss, validation F1 at 0.5, per epoch):")
        for run, png in curves:
            doc.image(png, f"learning curve: {_short(run, root)}")


def _best_per_area_maps(doc: Doc, df: pd.DataFrame, folder: Path, maps: Maps) -> None:
    """Study 000's figure 6: on each test area, the model with the highest IoU per patch size, mapped."""
    from slidemap.figures import error_map_grid

    best = an.best_per_size(df)
    a = an.areas(df)
    doc.h(3, "The best model of each test area, mapped (study 000's figure 6)")
    doc.p("On each test area and for each patch size, the model (dataset, sampling, architecture-filters/batch "
          "size) with the highest IoU on that area, mean over seeds; the map shows its first seed.")
    for scenario, g in best.groupby("scenario", sort=False):
        panels, labels = [], []
        for (site, area), h in g.groupby(["test_site", "test_area"], sort=False):
            row = []
            r: Any  # a row of ``best`` (pandas types its fields as any scalar)
            for r in h.sort_values("size").itertuples():
                runs = a[(a["scenario"] == scenario) & (a["test_site"] == site) & (a["test_area"] == area)
                         & (a["size"] == r.size) & (a["dataset"] == r.dataset) & (a["sampling"] == r.sampling)
                         & (a["model"] == r.model)].sort_values("seed")
                x: Any = runs.iloc[0]
                row.append(maps.panel(x["prediction_folder"], str(area), f"{int(r.size)} px: {r.sampling}, "
                                      f"{r.dataset}, {r.model}, seed {int(x['seed'])}"))
            panels.append(row)
            labels.append(f"{site}/{area}")
        if any(p is not None for row in panels for p in row):
            png = error_map_grid(panels, folder / "best_per_area" / f"{_slug(str(scenario))}.png",
                                 f"Best model per test area and patch size (by IoU), trained: {scenario}", labels)
            doc.image(png, f"best model per test area and patch size, trained: {scenario}")
    shown = _pm(best, ["f1", "iou"])
    doc.table(shown[["scenario", "test_site", "test_area", "size", "dataset", "sampling", "model", "f1", "iou",
                     "n", an.RUNS_ON]])


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


# --- study 002 -------------------------------------------------------------------------------------

def _transferability(doc: Doc, df: pd.DataFrame, root: Path, folder: Path, maps: Maps) -> None:
    a = an.areas(df)
    if a["scenario"].nunique() < 2 and a["test_site"].nunique() < 2:
        return
    doc.h(2, "Transferability between sites (study 002, Ghorbanzadeh et al. 2021)")
    doc.p("Precision, recall and F1 per training scenario, architecture, patch size and test site, and over all "
          "test sites pooled (study 002's tables 4-7; means over seeds; other factors that vary are kept apart):")
    t = _pm(an.scores_by_scenario(df), ["precision", "recall", "f1"])
    t["run_folder"] = [_short(f, root) for f in t["run_folder"]]
    doc.table(t.drop(columns=[c for c in t.columns if c.endswith("_sd")]))
    matrix = an.transfer_matrix(df)
    doc.h(3, "Transferability matrix (study 002's figure 10)")
    doc.image(rf.transfer_heatmap(matrix, folder / "transfer.png"), "transferability heat map")
    index = [c for c in matrix.columns if c not in ("test_site", "f1", "f1_sd", "n", an.RUNS_ON, "run_folder")]
    wide = matrix.pivot_table(index=index, columns="test_site", values="f1").reset_index()
    on = matrix.groupby(index, sort=False)[an.RUNS_ON].agg(lambda v: ", ".join(dict.fromkeys(v)))
    wide[an.RUNS_ON] = [on.get(tuple(r[k] for k in index) if len(index) > 1 else r[index[0]], an.NOT_RECORDED)
                        for _, r in wide.iterrows()]
    doc.table(wide)
    doc.h(3, "F1 by patch size (study 002's figure 11)")
    sizes = an.f1_by_size(df)
    doc.image(rf.size_chart(sizes, folder / "patch_size.png"), "F1 by patch size")
    doc.table(_pm(sizes, ["precision", "recall", "f1"]).drop(columns=["run_folder"]))
    _architecture_maps(doc, df, folder, maps)


def _architecture_maps(doc: Doc, df: pd.DataFrame, folder: Path, maps: Maps) -> None:
    """Study 002's figures 7-9: U-Net and ResU-Net side by side at each patch size, per scenario and test site."""
    from slidemap.figures import error_map_grid

    a = an.areas(df)
    archs = list(dict.fromkeys(sorted(a["architecture"], key=lambda x: (x != "unet", x != "resunet", x))))
    sizes = sorted(int(s) for s in a["size"].dropna().unique())
    doc.h(3, "The architectures mapped side by side (study 002's figures 7-9)")
    doc.p("For each training scenario and test site: one row per architecture (and test area), one column per "
          "patch size, on the dataset and sampling with the highest mean F1 there; each cell shows the model "
          "(filters/batch size) of that architecture with the highest mean F1 over seeds, its first seed.")
    shown = []
    for (scenario, site), h in a.groupby(["scenario", "test_site"], sort=False):
        dataset, sampling = cast(tuple[str, str], h.groupby(["dataset", "sampling"], sort=False)["f1"].mean().idxmax())
        h = h[(h["dataset"] == dataset) & (h["sampling"] == sampling)]
        panels, labels = [], []
        area_names = list(dict.fromkeys(h["test_area"]))
        for arch in archs:
            for area in area_names:
                row: list[ErrorPanel | None] = []
                for size in sizes:
                    c = h[(h["architecture"] == arch) & (h["size"] == size) & (h["test_area"] == area)]
                    if c.empty:
                        row.append(None)
                        continue
                    model = c.groupby("model", sort=False)["f1"].mean().idxmax()
                    x: Any = c[c["model"] == model].sort_values("seed").iloc[0]
                    row.append(maps.panel(x["prediction_folder"], str(area),
                                          f"{size} px: {model}, seed {int(x['seed'])}"))
                    shown.append({"scenario": scenario, "test site": site, "test area": area, "dataset": dataset,
                                  "sampling": sampling, "size": size, "model": model, "seed": int(x["seed"]),
                                  "f1": float(x["f1"]), an.RUNS_ON: an.runs_on(c[c["model"] == model])})
                panels.append(row)
                labels.append(arch + (f" {area}" if len(area_names) > 1 else ""))
        if any(p is not None for row in panels for p in row):
            png = error_map_grid(panels, folder / "architectures" / f"{_slug(str(scenario))}__{_slug(str(site))}.png",
                                 f"trained: {scenario}, tested: {site} ({dataset}, {sampling})", labels)
            doc.image(png, f"architectures side by side, trained: {scenario}, tested: {site}")
    if shown:
        doc.table(pd.DataFrame(shown))


# --- the conclusions -------------------------------------------------------------------------------

def _conclusions(doc: Doc, df: pd.DataFrame) -> None:
    items = conclusions.claims(df)
    if not items:
        return
    tested = [c for c in items if c.p is not None]
    doc.h(2, "Do the studies' conclusions hold here?")
    doc.p(f"Each conclusion of the two studies, in its own words, tested on this grid's runs (the procedure: "
          f"docs/experiments.md, 'How the conclusions are tested'). The unit is a run (its test areas pooled, or "
          f"one test site where the claim is about sites); two runs pair only when they differ in the tested factor "
          f"alone — every other axis, the seed, the training settings, the precision and the device equal. Tied "
          f"pairs are dropped before the test and counted; a verdict needs at least {vd.MIN_PAIRS} pairs that "
          f"differ. " + (f"Holm's correction runs over the {len(tested)} claim(s) with a test; " if tested else
                         "No claim has enough pairs for a test here. ") +
          f"'supported' means a Holm-adjusted p below {vd.ALPHA} in the claimed direction. Runs: "
          f"{an.runs_on(an.areas(df))} (precision / device).")
    summary = pd.DataFrame([{
        "study": c.study, "conclusion": _clip(c.quote) + (f" ({c.part})" if c.part else ""),
        "verdict": c.verdict + (" (the mean difference goes the other way)" if c.against else ""),
        "pairs differing / pairs": _pairs(c), "mean difference (95 % interval)": _interval(c),
        "p": "" if c.p is None else f"{c.p:.3g}", "Holm p": "" if c.p_holm is None else f"{c.p_holm:.3g}"}
        for c in items])
    doc.table(summary)
    for study, name in vd.STUDIES.items():
        doc.h(3, f"Study {study} ({name})")
        doc.bullets([c.sentence() for c in items if c.study == study])


def _ensembles(doc: Doc, table: pd.DataFrame, root: Path) -> None:
    if table.empty:
        return
    table["run_folder"] = [_short(f, root) for f in table["run_folder"]]
    doc.h(2, "Ensembles of seeds")
    doc.p("Each grid point's models averaged (predict.ensemble; the mean of their probabilities, cut at the mean of "
          "their thresholds), beside its members alone; F1 over the test areas pooled. Ensembles are not runs: "
          "no table or test above counts them.")
    doc.table(table)


def _pairs(claim: vd.Claim) -> str:
    """How many pairs differ of how many, per comparison (a range when there are many)."""
    c = claim.comparisons
    if len(c) <= 3:
        return ", ".join(f"{x.used}/{x.n}" for x in c)
    return f"{len(c)} comparisons, {min(x.used for x in c)}-{max(x.used for x in c)} pairs differing in each"


def _interval(claim: vd.Claim) -> str:
    """The mean paired difference and its bootstrap interval, for a claim of one comparison."""
    if len(claim.comparisons) != 1 or claim.comparisons[0].mean is None:
        return ""
    x = claim.comparisons[0]
    return f"{x.mean:+.3f}" + (f" [{x.low:+.3f}, {x.high:+.3f}]" if x.low is not None else "")


def _clip(text: str, n: int = 90) -> str:
    return text if len(text) <= n else text[:n - 1].rstrip() + "…"


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "+-." else "_" for ch in text) or "x"
