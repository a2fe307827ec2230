"""The experiment layer: spec validation, the grid, resumability, workers and Ray giving the same rows."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from slidemap.cli import main
from slidemap.errors import UserError
from slidemap.experiments.runner import dry_run, run_experiment
from slidemap.experiments.spec import load_spec

TIMING = ("train_seconds", "run_seconds", "chips_per_s", "run_folder", "prediction_folder")

SPEC = """\
name: tiny
resources: {cpus: 1}
sites:
  hills: {synth: {seed: 1, size: 288, landslides: 36}}
  valley: {synth: {seed: 7, size: 288, landslides: 36, relief: 1.4, bare_fields: 3}}
datasets:
  rgb: {bands: [blue, green, red, nir]}
  rgb+dem: {bands: [blue, green, red, nir, dem, slope], augment: true}
sampling:
  - {method: grid, overlap: 0.2}
  - {method: random, count: 40, require_landslide: true}
sizes: [32]
models: [{architecture: unet, filters: 8, batch_size: 8}]
training: {epochs: 2, patience: 0, precision: "32"}
scenarios:
  hills: {train: [hills]}
  both: {train: [hills, valley]}
only: [{dataset: rgb+dem, sampling: grid}, {scenario: hills, dataset: rgb, sampling: random}]
"""


def write_spec(folder: Path, text: str = SPEC, name: str = "spec.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def rows(path: Path, drop=TIMING) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Path:
    """The tiny grid, run once with one worker."""
    root = tmp_path_factory.mktemp("experiment")
    spec = write_spec(root)
    ok, failed, _ = run_experiment(spec, root / "out", log=lambda t: None)
    assert (ok, failed) == (3, 0)
    return root


# --- the spec --------------------------------------------------------------------------------------

BAD_SPECS = [
    ("sites: {a: {synth: {seed: 1}}}\nsizes: [40]\n", "sizes"),
    ("sites: {a: {synth: {seed: 1}}}\nbogus: 1\n", "bogus: unknown key"),
    ("sites: {a: {synth: {seed: 1}}}\nscenarios: {x: {train: [b]}}\n", "unknown site b"),
    ("sites: {a: {synth: {seed: 1}}}\ndatasets: {d: {bands: [red, swir9]}}\n", "site a has no band swir9"),
    ("sites: {a: {synth: {seed: 1, wobble: 2}}}\n", "unknown synth parameter wobble"),
    ("sites: {a: {synth: {seed: 1}, scene: x}}\n", "exactly one of scene, prepare, synth, l4s"),
    ("sites: {a: {synth: {seed: 1}}}\nmodels: [{architecture: vgg}]\n", "models.0.architecture"),
    ("sites: {a: {synth: {seed: 1}}}\ntraining: {epochs: 0}\n", "training.epochs"),
    ("sites: {a: {synth: {seed: 1}}}\ntraining: {precision: fp8}\n", "training.precision: 'fp8': use auto, 32"),
    ("sites: {a: {synth: {seed: 1}}}\npredict: {precision: half}\n", "predict.precision: 'half': use auto, 32"),
    ("sites: {a: {synth: {seed: 1}}}\nexclude: [{colour: red}]\n", "unknown axis colour"),
    ("sites: {a: {synth: {seed: 1}}}\nmodels: [{filters: [16, -1]}]\n", "models.0.filters"),
    ("- just a list\n", "not a mapping"),
    ("sites: {a: {synth: {seed: 1}}\n", "not valid YAML"),
    ("sites: !!python/object:os.system {}\n", "not valid YAML"),
]


@pytest.mark.parametrize("text,expected", BAD_SPECS, ids=[e for _, e in BAD_SPECS])
def test_bad_spec_is_one_line_before_anything_runs(tmp_path, capsys, text, expected):
    spec = write_spec(tmp_path, text)
    assert main(["experiment", "run", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {spec}") and expected in err[0], err
    assert not (tmp_path / "out").exists()


def test_paths_are_relative_to_the_spec(tmp_path):
    spec = write_spec(tmp_path / "deep", "sites: {a: {scene: ../scenes/a}}\n")
    assert load_spec(spec).sites["a"].scene == (tmp_path / "scenes" / "a").resolve()


def test_dry_run_counts_the_studies_grids(tmp_path, capsys):
    """Study 000's grid: 4 datasets x 2 samplings x 3 sizes x 3 filters x 4 batch sizes = 288 runs."""
    spec = Path(__file__).resolve().parents[1] / "examples" / "soares2020.yaml"
    if not spec.is_file():
        pytest.skip("examples/soares2020.yaml not shipped yet")
    # the listing alone: the CLI's --dry-run also times a step of each of the grid's 9 network shapes (~25 s)
    assert dry_run(spec, tmp_path / "o", calibrate=False).startswith("288 runs")


def test_dry_run_estimates_from_a_step_of_each_network_shape(tmp_path, capsys):
    spec = write_spec(tmp_path)
    assert main(["experiment", "run", str(spec), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("estimated wall time: about ") and "network shapes measured here" in last


# --- the grid --------------------------------------------------------------------------------------

def test_rows_cover_every_run_and_test_area(done):
    r = rows(done / "out" / "results.csv")
    runs = {(x["scenario"], x["dataset"], x["sampling"]) for x in r}
    assert runs == {("hills", "rgb+dem", "grid"), ("both", "rgb+dem", "grid"), ("hills", "rgb", "random")}
    # each run: 2 sites x 2 test areas + 2 per-site pools + 1 scenario pool
    assert len(r) == 3 * 7
    for x in r:
        assert x["status"] == "ok"
        for k in ("scenario", "train_sites", "test_site", "test_area", "dataset", "bands", "sampling", "size",
                  "architecture", "filters", "batch_size", "lr", "seed", "f1", "tp", "threshold",
                  "epochs_run", "precision_mode", "device", "slidemap_version"):
            assert x[k] != "", (k, x)
    pooled = [x for x in r if x["pooled"] == "scenario"]
    assert len(pooled) == 3 and all(x["test_site"] == "all" for x in pooled)
    both = [x for x in r if x["scenario"] == "both" and not x["pooled"]]
    assert {x["train_sites"] for x in both} == {"hills+valley"}


def test_pooled_rows_are_the_summed_counts(done):
    r = rows(done / "out" / "results.csv")
    areas = [x for x in r if x["scenario"] == "hills" and x["dataset"] == "rgb+dem" and not x["pooled"]]
    pooled = next(x for x in r if x["scenario"] == "hills" and x["dataset"] == "rgb+dem"
                  and x["pooled"] == "scenario")
    for k in ("tp", "fp", "fn", "tn"):
        assert int(pooled[k]) == sum(int(x[k]) for x in areas)
    tp, fp, fn = (int(pooled[k]) for k in ("tp", "fp", "fn"))
    assert float(pooled["f1"]) == pytest.approx(2 * tp / (2 * tp + fp + fn), rel=1e-5)


def test_a_row_equals_the_stages_run_by_hand(done, tmp_path):
    from slidemap.stages import evaluate, predict, sample, train

    r = rows(done / "out" / "results.csv", drop=())
    row = next(x for x in r if x["scenario"] == "hills" and x["dataset"] == "rgb+dem"
               and x["test_site"] == "hills" and x["test_area"] == "test_a")
    scene = done / "out" / "sites" / "hills" / "scene"
    chips = sample.run(sample.SampleOptions(scene=scene, out=tmp_path / "chips", method="grid", size=32,
                                            overlap=0.2))
    run = train.run(train.TrainOptions(chips=[chips.path], out=tmp_path / "run", filters=8, batch_size=8,
                                       epochs=2, patience=0, precision="32", augment=True, threads=1,
                                       bands=["blue", "green", "red", "nir", "dem", "slope"], progress=False))
    predict.run(predict.PredictOptions(model=run.bundle, out=tmp_path / "pred", scene=scene, area="test_a",
                                       precision="32"))
    m = evaluate.run(evaluate.EvaluateOptions(pred=tmp_path / "pred", areas=["test_a"])).metrics
    assert float(row["f1"]) == pytest.approx(m.areas[0].scores.f1, abs=1e-6)
    assert int(row["tp"]) == m.areas[0].pixels["tp"]


def test_rerun_redoes_nothing_and_a_changed_spec_is_refused(done, capsys):
    out = done / "out"
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("bundle.pt")}
    csv_before = (out / "results.csv").read_text()
    assert run_experiment(done / "spec.yaml", out, log=lambda t: None)[:2] == (3, 0)
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("bundle.pt")} == before
    assert (out / "results.csv").read_text() == csv_before
    changed = write_spec(done, SPEC.replace("lr", "lr").replace("epochs: 2", "epochs: 3"), "changed.yaml")
    with pytest.raises(UserError, match="training.epochs: changed"):
        run_experiment(changed, out, log=lambda t: None)


def test_added_grid_points_continue_the_experiment(done):
    grown = write_spec(done, SPEC.replace("only: [", "only: [{scenario: both, dataset: rgb, sampling: random}, "),
                       "grown.yaml")
    before = {p: p.stat().st_mtime_ns for p in (done / "out" / "runs").rglob("bundle.pt")}
    assert run_experiment(grown, done / "out", log=lambda t: None)[:2] == (4, 0)
    after = {p: p.stat().st_mtime_ns for p in (done / "out" / "runs").rglob("bundle.pt")}
    assert {p: after[p] for p in before} == before and len(after) == 4


def test_metrics_outputs_score_the_same_and_keep_only_the_masks(done, tmp_path):
    """``predict: {outputs: metrics}`` keeps mask.tif and the metrics per test area; its rows equal those of
    the full outputs, the setting may change between reruns, and the report draws error maps from the masks."""
    from slidemap.experiments.report import write_report

    one = "only: [{scenario: hills, dataset: rgb, sampling: random}]\n"
    text = SPEC[:SPEC.index("only:")] + one + "predict: {outputs: metrics}\n"
    spec = write_spec(tmp_path, text)
    assert run_experiment(spec, tmp_path / "out", log=lambda t: None)[:2] == (1, 0)
    got = rows(tmp_path / "out" / "results.csv")
    expected = [x for x in rows(done / "out" / "results.csv")
                if (x["scenario"], x["dataset"], x["sampling"]) == ("hills", "rgb", "random")]
    assert got == expected and len(got) == 7  # each test area, each test site pooled, the scenario pooled
    folders = [p for p in (tmp_path / "out").glob("runs/*/predictions/*") if p.is_dir()]
    assert folders and all(sorted(f.name for f in p.iterdir()) == ["mask.tif", "metrics.csv", "metrics.json",
                                                                   "prediction.json"] for p in folders)
    full = next(p for p in done.glob("out/runs/hills__rgb__random*/predictions/*") if p.is_dir())
    assert {"probability.tif", "landslides.gpkg", f"error_map_{full.name.split('__')[1]}.tif"} <= {
        f.name for f in full.iterdir()}
    # the setting says what to keep, not what to compute: a rerun with it changed redoes nothing
    assert run_experiment(write_spec(tmp_path, text.replace("outputs: metrics", "outputs: all"), "all.yaml"),
                          tmp_path / "out", log=lambda t: None)[:2] == (1, 0)
    assert rows(tmp_path / "out" / "results.csv") == got
    md = write_report(tmp_path / "out", tmp_path / "report")
    maps = list((tmp_path / "report" / "error_maps").glob("*.png"))
    assert maps and "error map:" in md.read_text()


def test_workers_and_ray_give_the_same_rows(done, tmp_path):
    expected = [x for x in rows(done / "out" / "results.csv")  # without the run a later spec added
                if (x["scenario"], x["dataset"], x["sampling"]) != ("both", "rgb", "random")]
    spec = write_spec(tmp_path, SPEC)
    assert run_experiment(spec, tmp_path / "w2", workers=2, log=lambda t: None)[:2] == (3, 0)
    assert rows(tmp_path / "w2" / "results.csv") == expected
    pytest.importorskip("ray")
    assert run_experiment(spec, tmp_path / "ray", ray="auto", log=lambda t: None)[:2] == (3, 0)
    assert rows(tmp_path / "ray" / "results.csv") == expected


def test_a_failing_run_is_recorded_and_the_grid_goes_on(tmp_path, capsys):
    spec = write_spec(tmp_path, SPEC.replace("only: [", "only: [{scenario: hills, dataset: rgb, "
                                             "sampling: grid}, ").replace("overlap: 0.2}",
                                             "overlap: 0.2, max_nodata: 0}")
                      .replace("count: 40, require_landslide: true", "count: 1, require_landslide: true"))
    code = main(["experiment", "run", str(spec), "--out", str(tmp_path / "out")])
    r = rows(tmp_path / "out" / "results.csv")
    failed = [x for x in r if x["status"] == "failed"]
    assert code == 1 and failed and all(x["error"] for x in failed)
    assert any(x["status"] == "ok" for x in r)
    assert "failed" in capsys.readouterr().out


def test_killed_runner_resumes_without_duplicates(tmp_path):
    """SIGKILL the runner while it trains, then again just after the first run is recorded; the rerun
    completes the grid, keeps finished runs untouched and writes every row once."""
    spec = write_spec(tmp_path, SPEC.replace("epochs: 2", "epochs: 6"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "slidemap", "experiment", "run", str(spec), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run_until(condition, limit=240.0):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.time()
        while proc.poll() is None and not condition() and time.time() - t0 < limit:
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()

    run_until(lambda: any(out.glob("runs/*/checkpoints/last.ckpt")))
    run_until(lambda: any(out.glob("runs/*/rows.json")))
    finished = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/bundle.pt")
                if (p.parent / "rows.json").is_file()}
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    r = rows(out / "results.csv")
    keys = [(x["scenario"], x["dataset"], x["sampling"], x["test_site"], x["test_area"], x["pooled"]) for x in r]
    assert len(keys) == len(set(keys)) == 21 and all(x["status"] == "ok" for x in r)
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    assert not list(out.rglob(".*.tmp-*"))


# --- the report ------------------------------------------------------------------------------------

def test_report_has_every_section_and_real_figures(done, tmp_path):
    import numpy as np
    from matplotlib.image import imread

    from slidemap.experiments.report import write_report

    md = write_report(done / "out", tmp_path / "report")
    text = md.read_text()
    for heading in ("Sampling, patch size and input layers", "study 000's table 3", "effect of each factor",
                    "Transferability between sites", "Transferability matrix", "F1 by patch size",
                    "Do the studies' conclusions hold here?"):
        assert heading in text, heading
    html = (tmp_path / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "<table>" in html
    for png in ("best_models.png", "factors.png", "transfer.png", "patch_size.png"):
        image = imread(tmp_path / "report" / png)
        assert image.shape[0] > 150 and image.shape[1] > 250, png
        assert np.std(image[..., :3]) > 0.05, f"{png} is (nearly) blank"
    assert list((tmp_path / "report" / "error_maps").glob("*.png"))
    # grid runs draw no learning curve; the report draws those of its table-3 runs from their metrics.csv
    assert not list((done / "out").glob("runs/*/learning_curve.png"))
    assert not list((done / "out").glob("runs/*/checkpoints"))
    curves = list((tmp_path / "report" / "learning_curves").glob("*.png"))
    assert curves and all(np.std(imread(c)[..., :3]) > 0.05 for c in curves)
    assert "learning curve: runs/" in (tmp_path / "report" / "report.md").read_text()
    assert "runs/" in text  # tables name the run folders


def test_report_of_a_partial_grid_names_the_missing_runs(done, tmp_path):
    import shutil

    from slidemap.experiments.report import write_report

    partial = tmp_path / "partial"
    shutil.copytree(done / "out", partial, ignore=shutil.ignore_patterns("*.tif", "*.pt", "*.ckpt", "*.npy"))
    missing = next((partial / "runs").iterdir())
    (missing / "rows.json").unlink()
    text = write_report(partial).read_text()
    assert "Missing runs" in text and missing.name in text and "1 missing" in text
