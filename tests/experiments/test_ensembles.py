"""``predict: {ensemble: true}``: an ensemble row per grid point over its seeds, resumable, never in the statistics."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import pytest
from test_analysis import _write, dem_grid

from slidemap.experiments import analysis as an
from slidemap.experiments import conclusions
from slidemap.experiments import verdicts as vd
from slidemap.experiments.runner import run_experiment


def _with_ensembles(rows: list[dict], seeds: int) -> list[dict]:
    """``rows`` and, per dataset, an ensemble over its seeds that would turn the DEM claim around."""
    out = list(rows)
    for dataset, bands, counts in (("rgb", "red+nir", (90, 10, 10)), ("rgb+dem", "red+nir+dem", (10, 90, 90))):
        for area in ("t1", "t2"):
            out.append({"dataset": dataset, "bands": bands, "seed": "ensemble", "members": "+".join(
                str(s) for s in range(seeds)), "test_area": area, "counts": counts,
                "run_folder": f"ensembles/{dataset}"})
    return out


def test_the_statistics_leave_ensemble_rows_out(tmp_path):
    x = [10, 20, 30, 40, 50, 60, 70, -5, 0]
    plain = an.load(_write(tmp_path / "plain.csv", dem_grid(x)))
    mixed_path = _write(tmp_path / "mixed.csv", _with_ensembles(dem_grid(x), len(x)))
    mixed = an.load(mixed_path)
    assert len(mixed) == len(plain) and (mixed["members"] == "").all()
    assert len(an.load(mixed_path, ensembles=True)) == len(plain) + 4
    assert len(an.run_level(an.load(mixed_path, ensembles=True))) == len(an.run_level(plain)) == 18
    # the verdicts: the same with and without the ensembles' rows, however they are handed over
    for df in (mixed, an.load(mixed_path, ensembles=True)):
        a = next(c for c in conclusions.claims(df) if c.part == "the DEM")
        b = next(c for c in conclusions.claims(plain) if c.part == "the DEM")
        assert (a.p, a.comparisons[0].n, a.comparisons[0].mean) == (b.p, b.comparisons[0].n, b.comparisons[0].mean)
    units = an.load(mixed_path, ensembles=True)
    units = units[units["pooled"] == ""]
    c = vd.paired(units, "dataset", "rgb+dem", "rgb", "f1", "with vs without")
    assert c.n == 2 * 9 and c.unpaired == 0  # area rows of the 9 seeds; the ensemble's never pair


SPEC = """\
resources: {cpus: 1}
sites: {hills: {synth: {seed: 1, size: 256, landslides: 30}}}
sampling: [{method: grid, overlap: 0.5}]
sizes: [32]
models: [{architecture: unet, filters: 4, batch_size: 8}]
training: {epochs: 1, patience: 0, precision: "32", min_chips: 8}
seeds: [0, 1]
predict: {tile: 96, overlap: 32, ensemble: true}
"""


@pytest.mark.slow
def test_an_ensemble_row_per_grid_point_after_its_seeds_resumable(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent(SPEC))
    out = tmp_path / "out"
    lines: list[str] = []
    assert run_experiment(spec, out, log=lines.append)[:2] == (2, 0)
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    areas = [r for r in rows if not r["pooled"]]
    assert [r["seed"] for r in areas] == ["0", "0", "1", "1", "ensemble", "ensemble"]  # after its last member
    ens = [r for r in areas if r["seed"] == "ensemble"]
    assert {r["members"] for r in ens} == {"0+1"} and all(r["status"] == "ok" for r in ens)
    assert all(r["epochs_run"] == "" and float(r["f1"]) >= 0 for r in ens)
    assert {r["test_area"] for r in ens} == {r["test_area"] for r in areas if r["seed"] == "0"}
    folder = out / "ensembles" / "hills__all__grid__32__unet__f4__b8__ensemble_s0+1"
    assert {r["run_folder"] for r in ens} == {str(folder)}
    info = json.loads(next((folder / "predictions").glob("*/prediction.json")).read_text())
    assert info["ensemble"]["members"] == [str((out / "runs" / f"hills__all__grid__32__unet__f4__b8__s{s}" /
                                                "bundle.pt").resolve()) for s in (0, 1)]
    assert info["uncertainty"]["views"] == 2
    assert any("1 ensembles, 1 to predict" in line for line in lines), lines
    # the report's statistics see the two runs only; its ensemble table, the ensemble beside its members
    assert len(an.run_level(an.load(out / "results.csv"))) == 2
    table = an.ensembles_against_members(an.load(out / "results.csv", ensembles=True))
    tp, fp, fn = (sum(int(r[k]) for r in ens) for k in ("tp", "fp", "fn"))
    assert list(table["members"]) == ["0+1"] and table["ensemble F1"][0] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    singles = an.run_level(an.load(out / "results.csv"))["f1"]
    assert table["members' mean F1"][0] == pytest.approx(singles.mean())
    assert table["best member F1"][0] == pytest.approx(singles.max())
    # a rerun redoes nothing
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    lines.clear()
    assert run_experiment(spec, out, log=lines.append)[:2] == (2, 0)
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} == stamps
    assert any("1 ensembles, 0 to predict" in line for line in lines), lines
    # an interrupted ensemble (its record gone, one area predicted) completes without predicting that area again
    (folder / "rows.json").unlink()
    done = next((folder / "predictions").glob("*/prediction.json"))
    before = done.stat().st_mtime_ns
    assert run_experiment(spec, out, log=lambda t: None)[:2] == (2, 0)
    assert done.stat().st_mtime_ns == before and (folder / "rows.json").is_file()


def test_ensembles_may_be_switched_on_in_a_running_experiment(tmp_path):
    """predict.ensemble is one of the keys an experiment may change between invocations (it adds rows only)."""
    from slidemap.experiments.runner import MAY_CHANGE

    assert "predict.ensemble" in MAY_CHANGE
    from slidemap.experiments.plan import make_plan
    from slidemap.experiments.spec import load_spec

    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent(SPEC).replace("seeds: [0, 1]", "seeds: [0, 1, 2]"))
    plan = make_plan(load_spec(spec), tmp_path / "out")
    assert [e.seeds for e in plan.ensembles] == ["0+1+2"] and len(plan.ensembles[0].members) == 3
    spec.write_text(textwrap.dedent(SPEC).replace("seeds: [0, 1]", "seeds: [0]"))
    assert make_plan(load_spec(spec), tmp_path / "out").ensembles == []  # one seed: nothing to average
    spec.write_text(textwrap.dedent(SPEC).replace(", ensemble: true", ""))
    assert make_plan(load_spec(spec), Path(tmp_path / "out")).ensembles == []
