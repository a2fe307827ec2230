"""The experiment layer: spec validation, the grid, resumability, workers and Ray giving the same rows."""

from __future__ import annotations

import csv
import os
import re
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

pytestmark = pytest.mark.slow  # runs whole commands and grids: `pytest -m 'not slow'` leaves it out

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
training: {epochs: 2, patience: 0, precision: "32", min_chips: 8}
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
    ("sites: {a: {synth: {size: 192}}}\n", "sites.a.synth: --size 192: too small for a train and two test areas"),
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


def test_training_is_train_options_less_what_the_grid_sets():
    """``training:`` takes TrainOptions' defaults and checks; lr, loss, epochs and patience may be lists."""
    from slidemap.experiments.spec import SET_BY_THE_GRID, Spec
    from slidemap.stages.train import TrainOptions

    spec = Spec.model_validate({"sites": {"a": {"synth": {}}}})
    for name, field in TrainOptions.model_fields.items():
        if name not in SET_BY_THE_GRID:
            assert getattr(spec.training, name) == field.default, name
    spec = Spec.model_validate({"sites": {"a": {"synth": {}}},
                                "training": {"lr": [0.01, "1e-3"], "precision": "fp32", "loss": "focal"}})
    assert spec.training.lr == [0.01, 0.001] and spec.training.precision == "32"
    assert spec.axis_values("lr") == [0.01, 0.001] and spec.axis_values("loss") == ["focal"]


def test_a_sampler_is_sample_options_less_what_the_chip_set_sets():
    from slidemap.experiments.spec import SET_BY_THE_SAMPLER, Spec
    from slidemap.stages.sample import SampleOptions

    spec = Spec.model_validate({"sites": {"a": {"synth": {}}}, "sizes": [32],
                                "sampling": [{"method": "random", "max_unknown": 0.25, "name": "r"}, {}]})
    assert spec.sampling[0].options() == {**{n: f.default for n, f in SampleOptions.model_fields.items()
                                             if n not in SET_BY_THE_SAMPLER}, "method": "random",
                                          "max_unknown": 0.25}
    assert [s.label for s in spec.sampling] == ["r", "grid"]
    with pytest.raises(ValueError, match="sampling.0 at size 32: max_nodata 2000 must be "
                                         "below 1024 for 32 px windows"):
        Spec.model_validate({"sites": {"a": {"synth": {}}}, "sizes": [32], "sampling": [{"max_nodata": 2000}]})


BAD_TRAINING = [
    ("training: {lr: [0.01, -1]}\n", "training.lr: -1: must be greater than 0"),
    ("training: {lr: [0.01, 0.01]}\n", "training.lr: give one value or a list of distinct values"),
    ("training: {loss: [bce, dice9]}\n", "training.loss: 'dice9': "),  # the words are TrainOptions'
    ("training: {max_time: soon}\n", "training.max_time: 'soon': give the time as DD:HH:MM:SS"),
    ("training: {filters: 8}\n", "training.filters: unknown key"),
    ("training: {min_chips: 0}\n", "training.min_chips: 0: must be greater than or equal to 1"),
]


@pytest.mark.parametrize("text,expected", BAD_TRAINING, ids=[e for _, e in BAD_TRAINING])
def test_bad_training_is_one_line_from_train_options(tmp_path, text, expected):
    spec = write_spec(tmp_path, "sites: {a: {synth: {seed: 1}}}\n" + text)
    with pytest.raises(UserError) as e:
        load_spec(spec)
    assert str(e.value) == f"{spec}: {expected}" or str(e.value).startswith(f"{spec}: {expected}"), str(e.value)


def test_prepare_site_is_prepare_options(tmp_path):
    """Every prepare option is a key of a site's ``prepare:``; paths are relative to the spec."""
    from slidemap.stages.prepare import PrepareOptions

    spec = write_spec(tmp_path / "deep", """\
        sites:
          a:
            prepare: {images: [s2.tif], inventory: ../labels.tif, label_values: [1, 2], unlabelled_values: [9],
                      resolution: 10, indices: [ndvi], split: "3:2", split_axis: y}
        """)
    p = load_spec(spec).sites["a"].prepare
    options = p.options(tmp_path / "scene")
    assert isinstance(options, PrepareOptions) and options.out == tmp_path / "scene"
    assert options.images == [(tmp_path / "deep" / "s2.tif").resolve()]
    assert options.inventory == (tmp_path / "labels.tif").resolve()
    assert (options.label_values, options.unlabelled_values, options.resolution, options.indices,
            options.split_axis) == ([1.0, 2.0], [9.0], 10.0, ["ndvi"], "y")
    assert set(PrepareOptions.model_fields) == set(type(p).model_fields)


@pytest.mark.parametrize("prepare,expected", [
    ("{images: [a.tif], split: '3:2'}", "sites.a.prepare: give inventory"),
    ("{images: [a.tif], inventory: i.tif}", "sites.a.prepare: give areas"),
    ("{images: [a.tif], inventory: i.tif, split: '3:2', indices: [ndvi9]}", "sites.a.prepare.indices: unknown index"),
    ("{images: [a.tif], inventory: i.tif, split: '3:2', out: x}", "sites.a.prepare.out: 'x': the experiment puts"),
    ("{images: [a.tif], split: '3:2', label_values: [1]}", "sites.a.prepare.label_values: goes with a label raster"),
])
def test_bad_prepare_site_is_one_line(tmp_path, prepare, expected):
    spec = write_spec(tmp_path, f"sites: {{a: {{prepare: {prepare}}}}}\n")
    with pytest.raises(UserError, match="^" + re.escape(f"{spec}: {expected}")):
        load_spec(spec)


def test_a_missing_input_is_one_line_before_anything_runs(tmp_path, capsys):
    """The run refuses with one line; the dry run lists every input, the missing ones marked, and goes on."""
    spec = write_spec(tmp_path, "sites: {a: {prepare: {images: [nowhere.tif], inventory: i.gpkg, split: '3:2'}}}\n")
    assert main(["experiment", "run", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: sites.a.prepare.images.0 {tmp_path / 'nowhere.tif'}: no such file; check the path"]
    assert main(["experiment", "run", str(spec), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == ["inputs (headers only): 2 input(s) missing or unreadable: a run would stop before its "
                       "first step; fix the paths",
                       f"  MISSING sites.a.prepare.images.0 {tmp_path / 'nowhere.tif'}: no such file; check the path",
                       f"  MISSING sites.a.prepare.inventory {tmp_path / 'i.gpkg'}: no such file; check the path"]
    assert out[-1] == "estimated wall time: once every input opens (see the MISSING lines above)"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["soares2020", "ghorbanzadeh2021", "landslide4sense", "quick"])
def test_shipped_specs_pass_the_dry_run(tmp_path, name):
    """Placeholders (YOUR_DATA) are listed as missing; the listing goes on."""
    spec = Path(__file__).resolve().parents[2] / "examples" / f"{name}.yaml"
    lines = dry_run(spec, tmp_path / "o", calibrate=False).splitlines()
    assert any(line.endswith("the same for every run") for line in lines)
    assert not (tmp_path / "o").exists()


def test_paths_are_relative_to_the_spec(tmp_path):
    spec = write_spec(tmp_path / "deep", "sites: {a: {scene: ../scenes/a}}\n")
    assert load_spec(spec).sites["a"].scene == (tmp_path / "scenes" / "a").resolve()


def test_dry_run_counts_the_studies_grids(tmp_path, capsys):
    """Study 000's grid: 4 datasets x 2 samplings x 3 sizes x 3 filters x 4 batch sizes = 288 runs."""
    spec = Path(__file__).resolve().parents[2] / "examples" / "soares2020.yaml"
    if not spec.is_file():
        pytest.skip("examples/soares2020.yaml not shipped yet")
    # the listing alone: the CLI's --dry-run also times a step of each of the grid's network shapes
    lines = dry_run(spec, tmp_path / "o", calibrate=False).splitlines()
    assert ("288 runs, 6 distinct chip sets, 1 sites; training in precision 32 on cpu (training.precision 32), "
            "the same for every run") in lines
    spec = load_spec(spec)
    assert [(s.label, s.require_landslide) for s in spec.sampling] == [("grid", True), ("random", True)]
    assert (spec.training.epochs, spec.training.patience, spec.training.lr, spec.predict.threshold) == (
        200, 0, 0.001, 0.5)


def test_dry_run_estimates_from_a_step_of_each_network_shape(tmp_path, capsys):
    spec = write_spec(tmp_path)
    assert main(["experiment", "run", str(spec), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("estimated wall time: about ") and "network shapes measured here" in out[-1]
    assert "  hills grid 32px: counted after preparing site hills" in out
    assert not (tmp_path / "o").exists()


def test_dry_run_counts_the_chips_of_a_prepared_site(done, tmp_path):
    """A site whose scene exists is sampled aside: the dry run prints the chip set's count and its split."""
    from slidemap.formats.chips import ChipSet
    from slidemap.raster.split import split_chips

    scene = done / "out" / "sites" / "hills" / "scene"
    spec = write_spec(tmp_path, f"""\
        sites: {{hills: {{scene: {scene}}}}}
        sampling: [{{method: grid, overlap: 0.2}}]
        sizes: [32]
        training: {{val_fraction: 0.3, min_chips: 500}}
        """)
    text = dry_run(spec, tmp_path / "o", calibrate=False).splitlines()
    chips = ChipSet(next((done / "out" / "chips").glob("hills__grid__32-*")))
    split = split_chips(chips.windows, 0.3, 0)
    assert (f"  hills grid 32px: {len(chips)} chips, {split.train.size} train / {split.val.size} val / "
            f"{split.buffer.size} buffer; fewer than 500: a run on it alone would stop") in text
    assert f"  sites.hills.scene {scene}: 7 bands (blue, green, red, red_edge, nir, dem, slope), 3 areas" in text
    assert not (tmp_path / "o").exists()


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
        assert (x["lr"], x["loss"], x["epochs"], x["patience"]) == ("0.001", "bce", "2", "0")
        assert (x["precision_mode"], x["device"]) == ("32", "cpu")
        assert int(x["train_chips"]) >= 8 and int(x["val_chips"]) >= 1
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
                                       min_chips=1,
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


def test_a_run_below_min_chips_stops_with_one_line(done, tmp_path):
    """Fewer training chips than training.min_chips: the run fails with how many and what admits more."""
    spec = write_spec(tmp_path, SPEC.replace("min_chips: 8", "min_chips: 30").replace(
        "only: [", "only: [{scenario: hills, dataset: rgb, sampling: random}]\nx: ["), "few.yaml")
    spec.write_text(spec.read_text().replace("\nx: [", "\n# ["))
    ok, failed, csv_path = run_experiment(spec, tmp_path / "out", log=lambda t: None)
    assert (ok, failed) == (0, 1)
    (row,) = rows(csv_path)
    assert row["status"] == "failed" and (row["precision_mode"], row["device"]) == ("32", "cpu")
    assert row["error"].startswith("training.min_chips 30: 18 training chips after the validation split (9 val, "
                                   "0 buffer) of hills random 32px seed 0: 27 chips, 13 of 40 windows refused: 13 "
                                   "without a landslide (require_landslide); admit more with a larger sampling "
                                   "count"), row["error"]


def test_training_lists_are_axes_named_only_where_they_vary(tmp_path):
    """A learning-rate pilot: one run per lr, its folder named by it; single values stay out of the names."""
    from slidemap.experiments.plan import make_plan

    spec = write_spec(tmp_path, """\
        sites: {a: {synth: {seed: 1}}}
        training: {lr: [0.01, 0.001, 0.0001], epochs: [200], patience: 0, loss: bce}
        """)
    plan = make_plan(load_spec(spec), tmp_path / "out")
    assert [r.name for r in plan.runs] == [f"a__all__grid__128__unet__f16__b16__lr{lr}__s0"
                                           for lr in ("0.01", "0.001", "0.0001")]
    assert [(r.coords["lr"], r.coords["epochs"], r.coords["patience"]) for r in plan.runs] == [
        (0.01, 200, 0), (0.001, 200, 0), (0.0001, 200, 0)]
    assert len(plan.chipsets) == 1
    plain = make_plan(load_spec(write_spec(tmp_path, "sites: {a: {synth: {seed: 1}}}\n", "plain.yaml")),
                      tmp_path / "out")
    assert [r.name for r in plain.runs] == ["a__all__grid__128__unet__f16__b16__s0"]


def test_a_learning_rate_axis_runs_once_per_value_and_a_rerun_redoes_nothing(tmp_path):
    spec = write_spec(tmp_path, """\
        resources: {cpus: 1}
        sites: {hills: {synth: {seed: 1, size: 256, landslides: 30}}}
        sampling: [{method: grid, overlap: 0.5}]
        sizes: [32]
        models: [{architecture: unet, filters: 4, batch_size: 8}]
        training: {lr: [0.01, 0.001], epochs: 1, patience: 0, precision: "32", min_chips: 8}
        """)
    lines: list[str] = []
    assert run_experiment(spec, tmp_path / "out", log=lines.append)[:2] == (2, 0)
    r = [x for x in rows(tmp_path / "out" / "results.csv") if not x["pooled"]]
    assert sorted({(x["lr"], x["epochs"], x["patience"], x["loss"]) for x in r}) == [
        ("0.001", "1", "0", "bce"), ("0.01", "1", "0", "bce")]
    assert sorted(p.name for p in (tmp_path / "out" / "runs").iterdir()) == [
        "hills__all__grid__32__unet__f4__b8__lr0.001__s0", "hills__all__grid__32__unet__f4__b8__lr0.01__s0"]
    bundles = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "runs").rglob("bundle.pt")}
    lines.clear()
    assert run_experiment(spec, tmp_path / "out", log=lines.append)[:2] == (2, 0)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "runs").rglob("bundle.pt")} == bundles
    assert any(line.startswith("2 runs, 2 already recorded, 0 to run") for line in lines), lines


def test_precision_is_resolved_once_and_a_different_one_refused(done):
    import json

    record = json.loads((done / "out" / "experiment.json").read_text())
    assert (record["precision"], record["device"]) == ("32", "cpu")
    (done / "out" / "experiment.json").write_text(json.dumps({**record, "precision": "bf16"}))
    try:
        with pytest.raises(UserError, match=r"training.precision 32 resolves to 32 on this machine, but the runs "
                                            r"in .* trained in bf16"):
            run_experiment(done / "spec.yaml", done / "out", log=lambda t: None)
    finally:
        (done / "out" / "experiment.json").write_text(json.dumps(record))


def test_an_experiment_whose_samplers_gained_an_option_continues(done, tmp_path):
    """A sampler recorded before the sample stage had an option (here max_unknown) is the same sampler."""
    import json
    import shutil

    out = tmp_path / "out"
    shutil.copytree(done / "out", out)
    record = json.loads((out / "experiment.json").read_text())
    for sampler in record["spec"]["sampling"]:
        del sampler["max_unknown"]
    (out / "experiment.json").write_text(json.dumps(record))
    assert run_experiment(done / "spec.yaml", out, log=lambda t: None)[:2] == (3, 0)
    record["spec"]["sampling"][0]["overlap"] = 0.5
    (out / "experiment.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match="sampling: an entry changed since the first run"):
        run_experiment(done / "spec.yaml", out, log=lambda t: None)


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
