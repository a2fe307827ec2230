"""Issue 11, "never lose a user's data", shown on the real commands.

1. ``--out`` refuses, in one line and before anything is written, every path whose replacement would lose
   data: a user's folder or file, an input of the command, the folder of an input, ``.``, a path inside an
   input (every file of the test's folder hashed before and after).
2. Corrupt sidecars, bundles, rasters, chip arrays and options: each key of scene.json, chips.json,
   prediction.json and the bundle's metadata deleted, given a wrong type, set out of range; truncated
   GeoTIFFs, garbage GeoPackages and CSV rows: exit 2 and one ``error:`` line (or, for a harmless key, a
   normal run), never a traceback.
3. kill -9 while a finished run is trained on, and a checkpoint write that fails half-way: the old bundle
   and the previous checkpoint stay usable and ``--resume`` finishes the run.
4. A full disk (a 2 MB tmpfs where mounting is allowed, else a patched writer), a read-only file system
   and a folder without write permission: one line naming the path, nothing left behind, no SIGBUS.
5. Two writers of one ``--out``: the second fails at once, naming the first; the first's result is intact.
6. Temporaries of a SIGKILLed command are removed by the next one; SIGTERM cleans up like Ctrl-C.
7. The same inputs and seed give byte-identical outputs (synth, prepare, sample, train, predict).

Everything runs on one synthetic study area of 256 px (module fixture ``study``), through
``slidemap.cli.main`` or, where a process must die, ``python -m slidemap`` in a subprocess.
"""

from __future__ import annotations

import copy
import errno
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import write_l4s

from slidemap.cli import main
from slidemap.formats.files import _HOST, output_lock, sha256
from slidemap.nn.bundle import load_bundle
from slidemap.nn.fitting import readable_checkpoint

pytestmark = pytest.mark.slow  # runs whole commands and grids: `pytest -m 'not slow'` leaves it out

SLIDEMAP = [sys.executable, "-m", "slidemap"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "SLIDEMAP_CHECKPOINT_EVERY_S": "0"}  # checkpoints every epoch
SYNTH = ["--size", "256", "--landslides", "30", "--seed", "0"]
SAMPLE = ["--size", "32", "--overlap", "0.25"]
TRAIN = ["--filters", "8", "--batch-size", "16", "--seed", "0", "--no-progress", "--min-chips", "1"]


# --- helpers ---------------------------------------------------------------------------------------------

def cli(argv: list, capsys) -> tuple[int, list[str]]:
    """Run ``slidemap ARGV`` in this process; returns the exit status and the stderr lines."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err.splitlines()


def ok(argv: list) -> None:
    rc = main([str(a) for a in argv])
    assert rc == 0, argv


def one_error(lines: list[str], *expected: str) -> str:
    """The single ``error:`` line among ``lines`` (the others may only be warnings), holding ``expected``."""
    errors = [line for line in lines if line.startswith("error: ")]
    others = [line for line in lines if not line.startswith(("error: ", "warning: "))]
    assert len(errors) == 1 and not others, lines
    for text in expected:
        assert text in errors[0], (text, errors[0])
    return errors[0]


def snapshot(root: Path) -> dict[str, str | None]:
    """Every path under ``root``, hidden ones included, with the SHA-256 of each file (None: a folder)."""
    tree: dict[str, str | None] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            tree[rel] = "-> " + os.readlink(p)
        else:
            tree[rel] = sha256(p) if p.is_file() else None
    return tree


def truncate(path: Path) -> Path:
    """Cut a file to half its size (a copy interrupted half-way); a symlink is replaced by the cut copy."""
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


def linked_copy(src: Path, dst: Path, copied: tuple[str, ...] = ()) -> Path:
    """``dst`` as a folder of symlinks to ``src``'s files, except ``copied`` (real copies, to be damaged)."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name in copied:
            shutil.copy2(f, dst / f.name)
        elif f.is_file():
            (dst / f.name).symlink_to(f)
    return dst


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def dead_pid() -> int:
    """The pid of a process that has ended (for the name of a killed writer's temporary)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def popen(argv: list) -> subprocess.Popen:
    return subprocess.Popen([*SLIDEMAP, *(str(a) for a in argv)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen, condition: Callable[[], bool], limit: float = 300.0) -> bool:
    """Poll ``condition`` every 10 ms while ``proc`` runs; whether it came true before the process ended."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if condition():
            return True
        if proc.poll() is not None:
            return condition()
        time.sleep(0.01)
    return False


def prepare_args(synth: Path) -> list:
    return ["prepare", "--image", synth / "image.tif", "--dem", synth / "dem.tif", "--inventory",
            synth / "inventory.gpkg", "--areas", synth / "areas.gpkg"]


@dataclass(frozen=True)
class Study:
    """One synthetic study area taken through the pipeline (read-only: shared by the module)."""

    synth: Path
    scene: Path
    chips: Path
    run: Path
    pred: Path
    l4s: Path


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Study:
    root = tmp_path_factory.mktemp("study")
    s = Study(root / "synth", root / "scene", root / "chips", root / "run", root / "pred", root / "l4s")
    ok(["synth", s.synth, *SYNTH])
    ok([*prepare_args(s.synth), "--out", s.scene])
    ok(["sample", s.scene, "--out", s.chips, *SAMPLE])
    ok(["train", s.chips, "--out", s.run, "--epochs", "2", *TRAIN])
    ok(["predict", s.run, "--scene", s.scene, "--out", s.pred])
    write_l4s(s.l4s)
    return s


# --- 1. --out never replaces what it must not ----------------------------------------------------------

SPEC = """\
name: safety
sites:
  a: {scene: ../scene}
sizes: [32]
training: {epochs: 1}
"""

# command -> (argv with OUT for --out, the data it reads, its main input)
COMMANDS: dict[str, tuple[list, tuple[str, ...], str | None]] = {
    "synth": (["synth", "OUT", *SYNTH], (), None),
    "prepare": ([*prepare_args(Path("DATA/synth")), "--out", "OUT"], ("synth",), "synth/image.tif"),
    "sample": (["sample", "DATA/scene", "--out", "OUT", *SAMPLE], ("scene",), "scene"),
    "train": (["train", "DATA/chips", "--out", "OUT", "--epochs", "1", *TRAIN], ("chips",), "chips"),
    "predict": (["predict", "DATA/run", "--scene", "DATA/scene", "--out", "OUT"], ("run", "scene"), "scene"),
    "l4s import": (["l4s", "import", "DATA/l4s", "--out", "OUT"], ("l4s",), "l4s"),
    "experiment run": (["experiment", "run", "DATA/spec/spec.yaml", "--out", "OUT"], ("spec", "scene"),
                       "spec/spec.yaml"),
}
GENERAL = ("a user's folder", "a user's file", ".")
WITH_INPUT = GENERAL + ("an input", "the folder of an input", "inside an input")
OUT_CASES = {
    "synth": GENERAL,
    "prepare": WITH_INPUT,
    "sample": WITH_INPUT,
    "train": WITH_INPUT,
    "predict": WITH_INPUT + ("the model's run folder", "the model's bundle"),
    "l4s import": WITH_INPUT,
    "experiment run": WITH_INPUT + ("a site's scene", "inside a site's scene"),
}
OUT_MATRIX = [(cmd, case) for cmd, cases in OUT_CASES.items() for case in cases]


def _dangerous_out(case: str, cmd: str, tmp: Path, data: Path) -> str:
    main_input = data / COMMANDS[cmd][2] if COMMANDS[cmd][2] else None
    return str({
        "a user's folder": tmp / "mine",
        "a user's file": tmp / "mine" / "thesis.txt",
        ".": ".",
        "an input": main_input,
        "the folder of an input": main_input.parent if main_input else None,
        "inside an input": main_input / "out" if main_input else None,
        "the model's run folder": data / "run",
        "the model's bundle": data / "run" / "bundle.pt",
        "a site's scene": data / "scene",
        "inside a site's scene": data / "scene" / "experiment",
    }[case])


@pytest.mark.parametrize("cmd,case", OUT_MATRIX, ids=[f"{c} --out {k}" for c, k in OUT_MATRIX])
def test_dangerous_out_is_refused_and_nothing_changes(cmd, case, study, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    argv, needs, _ = COMMANDS[cmd]
    for name in needs:
        if name == "spec":
            (data / "spec").mkdir(parents=True)
            (data / "spec" / "spec.yaml").write_text(SPEC)
        else:
            shutil.copytree(getattr(study, name), data / name)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("three years of work\n")
    (tmp_path / "work").mkdir()  # the current folder: empty, so only the '.' rule can refuse it
    monkeypatch.chdir(tmp_path / "work")
    out = _dangerous_out(case, cmd, tmp_path, data)
    argv = [out if a == "OUT" else str(a).replace("DATA", str(data)) for a in argv]
    before = snapshot(tmp_path)

    rc, err = cli(argv, capsys)

    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert out in err[0], err
    assert snapshot(tmp_path) == before  # every file byte-identical, nothing created (hidden ones included)


# --- 2. corrupt sidecars, bundles, rasters and arrays: one line, never a traceback ----------------------

SCENE_KEYS = ("format", "format_version", "slidemap_version", "bands", "image_bands", "terrain", "crs",
              "transform", "width", "height", "pixel_size_m", "stats", "stats_over", "areas", "inventory",
              "split", "sources", "quicklook", "recipe", "native_pixel_size_m")
CHIPS_KEYS = ("format", "format_version", "slidemap_version", "bands", "stats", "size", "count", "sampler",
              "scene", "summary", "recipe", "scene_crs", "scene_transform")
PRED_KEYS = ("format", "format_version", "slidemap_version", "kind", "model", "bundle", "scene", "images",
             "dem", "pre_images", "area", "window", "crs", "transform", "threshold", "postprocess", "input_stats",
             "shift_warnings", "standardisation", "tile", "overlap", "blend_margin", "batch_size", "device",
             "precision", "engine", "engine_choice", "probability_dtype", "min_area_m2", "connectivity", "outputs",
             "ensemble", "uncertainty", "width", "height", "landslides", "landslide_km2", "valid_km2",
             "dropped_specks", "dropped_specks_km2", "timings_s", "seconds", "mpx", "mpx_per_s")
BUNDLE_KEYS = ("format", "format_version", "slidemap_version", "architecture", "model_args", "bands", "stats",
               "patch_size", "thresholds", "postprocess", "training", "recipe")
KEYS = {"scene.json": SCENE_KEYS, "chips.json": CHIPS_KEYS, "prediction.json": PRED_KEYS,
        "bundle": BUNDLE_KEYS}
NUMERIC = {"scene.json": ("format_version", "width", "height"),
           "chips.json": ("format_version", "size", "count"),
           "prediction.json": ("format_version", "tile", "overlap", "blend_margin", "batch_size",
                               "min_area_m2", "connectivity", "width", "height", "landslides",
                               "landslide_km2", "valid_km2", "dropped_specks", "dropped_specks_km2",
                               "seconds", "mpx", "mpx_per_s"),
           "bundle": ("format_version", "patch_size")}
UNMODELLED = {"chips.json": ("scene_crs", "scene_transform")}  # extra keys kept as written, read by no one
DELETE, WRONG_TYPE = "<delete>", "<wrong type>"
BAND = "<first band>"

# (sidecar, id, key path, value, must be refused)
EXPLICIT = [
    ("scene.json", "width -1", ("width",), -1, True),
    ("scene.json", "stats.BAND.std -1", ("stats", BAND, "std"), -1.0, True),
    ("scene.json", "areas.0.role validation", ("areas", 0, "role"), "validation", True),
    ("scene.json", "areas.0.area_km2 -1", ("areas", 0, "area_km2"), -1.0, True),
    ("scene.json", "crs not a CRS", ("crs",), "EPSG:0", True),
    ("scene.json", "transform of 2 numbers", ("transform",), [1.0, 2.0], True),
    ("scene.json", "bands repeat", ("bands",), ["blue"] * 7, True),
    ("scene.json", "recipe.resolution_m -1", ("recipe", "resolution_m"), -1.0, True),
    ("chips.json", "stats.BAND.std -1", ("stats", BAND, "std"), -1.0, True),
    ("chips.json", "stats.BAND.mean text", ("stats", BAND, "mean"), "x", True),
    ("chips.json", "bands empty", ("bands",), [], True),
    ("chips.json", "size 0", ("size",), 0, True),
    ("prediction.json", "threshold.value 1.5", ("threshold", "value"), 1.5, True),
    ("prediction.json", "threshold.value -0.5", ("threshold", "value"), -0.5, True),
    ("prediction.json", "threshold.value text", ("threshold", "value"), "high", True),
    ("prediction.json", "kind patches", ("kind",), "patches", True),
    ("prediction.json", "outputs polygons", ("outputs",), "polygons", True),
    ("bundle", "thresholds.best 1.5", ("thresholds", "best"), 1.5, True),
    ("bundle", "thresholds.best -0.1", ("thresholds", "best"), -0.1, True),
    ("bundle", "model_args.filters 100000", ("model_args", "filters"), 100000, True),
    ("bundle", "model_args.filters 0", ("model_args", "filters"), 0, True),
    ("bundle", "model_args.filters 8.5", ("model_args", "filters"), 8.5, True),
    ("bundle", "model_args.dropout 1.5", ("model_args", "dropout"), 1.5, True),
    ("bundle", "model_args.depth 1000", ("model_args", "depth"), 1000, True),
    ("bundle", "model_args.filters 16 (weights of 8)", ("model_args", "filters"), 16, True),
    ("bundle", "patch_size 100000", ("patch_size",), 100000, True),
    ("bundle", "architecture vgg", ("architecture",), "vgg", True),
    ("bundle", "100 bands", ("bands",), [f"b{i}" for i in range(100)], True),
    ("bundle", "stats without the first band", ("stats", BAND), DELETE, True),
    ("bundle", "stats.BAND.std -1", ("stats", BAND, "std"), -1.0, True),
    ("bundle", "recipe.resolution_m 0", ("recipe", "resolution_m"), 0.0, True),
    ("bundle", "recipe.image_bands text", ("recipe", "image_bands"), "blue", True),
]


def _fuzz_cases() -> list[tuple[str, str, tuple, Any, bool]]:
    cases = []
    for sidecar, keys in KEYS.items():
        for key in keys:
            header = key in ("format", "format_version")
            modelled = key not in UNMODELLED.get(sidecar, ())
            cases.append((sidecar, f"{key} deleted", (key,), DELETE, header))
            cases.append((sidecar, f"{key} wrong type", (key,), WRONG_TYPE, modelled))
            if key in NUMERIC[sidecar]:
                cases.append((sidecar, f"{key} -1", (key,), -1, header))
    return cases + EXPLICIT


FUZZ = _fuzz_cases()


def _wrong_type(value: Any) -> Any:
    if isinstance(value, bool):
        return "maybe"
    if isinstance(value, int | float):
        return "abc"
    if isinstance(value, str | dict):
        return [1, 2]
    if isinstance(value, list):
        return "abc"
    return [1, 2]  # None


def _mutated(data: dict, path: tuple, value: Any) -> dict:
    data = copy.deepcopy(data)
    path = tuple(data["bands"][0] if p == BAND else p for p in path)
    node = data
    for p in path[:-1]:
        node = node[p]
    if value == DELETE:
        del node[path[-1]]
    elif value == WRONG_TYPE:
        node[path[-1]] = _wrong_type(node[path[-1]])
    else:
        node[path[-1]] = value
    return data


def _bundle_parts(path: Path) -> tuple[dict, dict]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return json.loads(obj["meta_json"]), obj["state_dict"]


def _fuzz_command(sidecar: str, study: Study, tmp: Path, data: dict) -> tuple[list, Path]:
    """Write the mutated sidecar into a copy of its folder; the command that reads it and its result."""
    text = json.dumps(data)
    if sidecar == "scene.json":
        scene = linked_copy(study.scene, tmp / "scene")
        (scene / "scene.json").unlink()
        (scene / "scene.json").write_text(text)
        return ["sample", scene, "--out", tmp / "chips", "--size", "32"], tmp / "chips" / "chips.json"
    if sidecar == "chips.json":
        chips = linked_copy(study.chips, tmp / "chips")
        (chips / "chips.json").unlink()
        (chips / "chips.json").write_text(text)
        return ["train", chips, "--out", tmp / "run", "--epochs", "1", *TRAIN], tmp / "run" / "bundle.pt"
    if sidecar == "prediction.json":
        pred = linked_copy(study.pred, tmp / "pred")
        (pred / "prediction.json").unlink()
        (pred / "prediction.json").write_text(text)
        return ["evaluate", pred], pred / "metrics.json"
    _, state = _bundle_parts(study.run / "bundle.pt")
    torch.save({"meta_json": text, "state_dict": state}, tmp / "bundle.pt")
    return ["predict", tmp / "bundle.pt", "--scene", study.scene, "--out", tmp / "pred"], \
        tmp / "pred" / "prediction.json"


def _sidecar_data(sidecar: str, study: Study) -> dict:
    if sidecar == "bundle":
        return _bundle_parts(study.run / "bundle.pt")[0]
    folder = {"scene.json": study.scene, "chips.json": study.chips, "prediction.json": study.pred}[sidecar]
    return json.loads((folder / sidecar).read_text())


def test_fuzz_covers_every_key_written(study):
    for sidecar, keys in KEYS.items():
        assert tuple(_sidecar_data(sidecar, study)) == keys, sidecar


@pytest.mark.parametrize("sidecar,name,path,value,refuse", FUZZ, ids=[f"{c[0]}: {c[1]}" for c in FUZZ])
def test_corrupt_sidecar_is_one_line_or_harmless(sidecar, name, path, value, refuse, study, tmp_path, capsys):
    data = _mutated(_sidecar_data(sidecar, study), path, value)
    argv, result = _fuzz_command(sidecar, study, tmp_path, data)

    rc, err = cli(argv, capsys)  # an exception escaping main fails this test with its traceback

    if refuse or rc != 0:
        assert rc == 2, (rc, err)
        one_error(err)
    else:
        assert result.is_file(), err  # a harmless change: the command ran to the end


def _bundle_with(tmp: Path, study: Study, meta: Any = None, state: Any = None,
                 raw: bytes | None = None) -> Path:
    path = tmp / "bundle.pt"
    if raw is not None:
        path.write_bytes(raw)
        return path
    good_meta, good_state = _bundle_parts(study.run / "bundle.pt")
    obj: dict[str, Any] = {"meta_json": json.dumps(good_meta) if meta is None else meta,
                           "state_dict": good_state if state is None else state}
    torch.save(obj, path)
    return path


def _predict(bundle: Path, study: Study, tmp: Path) -> list:
    return ["predict", bundle, "--scene", study.scene, "--out", tmp / "pred"]


def _first_weight_dropped(study: Study) -> dict:
    state = dict(_bundle_parts(study.run / "bundle.pt")[1])
    state.pop(next(iter(state)))
    return state


def _first_weight_reshaped(study: Study) -> dict:
    state = dict(_bundle_parts(study.run / "bundle.pt")[1])
    first = next(iter(state))
    state[first] = torch.zeros(3, 3)
    return state


def _garbage_csv_row(chips: Path) -> None:
    lines = (chips / "windows.csv").read_text().splitlines()
    lines[3] = "2,x,,-5,train,"
    (chips / "windows.csv").write_text("\n".join(lines) + "\n")


def _shorter_masks(chips: Path) -> None:
    masks = np.load(chips / "masks.npy")
    np.save(chips / "masks.npy", masks[:-3])


def _scene_chipset_without_windows(chips: Path) -> None:
    (chips / "windows.csv").unlink()


def _garbage(path: Path) -> None:
    path.write_bytes(b"GPKG? no: " + bytes(range(256)) * 40)


def _special(name: str, study: Study, tmp: Path) -> tuple[list, tuple[str, ...]]:
    """name -> (argv, texts the error line must hold), on damaged copies in ``tmp``."""
    out = tmp / "out"
    if name.startswith("bundle"):
        what = name.split(": ", 1)[1]
        bundle = {
            "empty file": lambda: _bundle_with(tmp, study, raw=b""),
            "truncated to half": lambda: truncate(shutil.copy(study.run / "bundle.pt", tmp / "bundle.pt")),
            "not a torch file": lambda: _bundle_with(tmp, study, raw=b"just some text\n" * 10),
            "metadata not JSON": lambda: _bundle_with(tmp, study, meta="{'architecture': unet"),
            "metadata a JSON list": lambda: _bundle_with(tmp, study, meta="[1, 2, 3]"),
            "metadata empty": lambda: _bundle_with(tmp, study, meta=""),
            "metadata not text": lambda: _bundle_with(tmp, study, meta=torch.zeros(3)),
            "weights a list": lambda: _bundle_with(tmp, study, state=[1, 2]),
            "a weight missing": lambda: _bundle_with(tmp, study, state=_first_weight_dropped(study)),
            "a weight of another shape": lambda: _bundle_with(tmp, study,
                                                              state=_first_weight_reshaped(study)),
        }[what]()
        return _predict(bundle, study, tmp), (str(bundle),)
    if name.startswith("scene "):  # scene files damaged, read by sample, predict or evaluate
        file, command = name.removeprefix("scene ").split(" read by ")
        damage = truncate if "truncated" in file else _garbage
        file = file.split()[0]
        scene = linked_copy(study.scene, tmp / "scene", copied=(file,))
        damage(scene / file)
        if command == "sample":
            return ["sample", scene, "--out", out, "--size", "32"], (file,)
        if command == "predict":
            area = ["--area", "test_a"] if file == "areas.gpkg" else []
            return ["predict", study.run, "--scene", scene, "--out", out, *area], (file,)
        pred = linked_copy(study.pred, tmp / "pred")
        return ["evaluate", pred, "--truth", scene], (file,)
    if name.startswith("synth "):  # prepare's inputs damaged
        file = name.split()[1]
        synth = linked_copy(study.synth, tmp / "synth", copied=(file,))
        truncate(synth / file)
        return [*prepare_args(synth), "--out", out], (file,)
    if name == "prediction mask.tif truncated read by evaluate":
        pred = linked_copy(study.pred, tmp / "pred", copied=("mask.tif",))
        truncate(pred / "mask.tif")
        return ["evaluate", pred], ("mask.tif",)
    if name == "prediction.json empty read by evaluate":
        pred = linked_copy(study.pred, tmp / "pred", copied=("prediction.json",))
        (pred / "prediction.json").write_text("")
        return ["evaluate", pred], ("prediction.json",)
    if name == "scene.json not JSON read by sample":
        scene = linked_copy(study.scene, tmp / "scene", copied=("scene.json",))
        (scene / "scene.json").write_text('{"format": "slidemap.scene", ')
        return ["sample", scene, "--out", out, "--size", "32"], ("scene.json",)
    if name in ("--max-time abc", "--filters 0"):
        option, value = name.split()
        return ["train", study.chips, "--out", out, "--epochs", "1", *TRAIN, option, value], (name,)
    # chip sets damaged, read by train
    damage, files, expected = {
        "chips masks.npy shorter than images.npy": (_shorter_masks, ("masks.npy",), "masks.npy"),
        "chips images.npy truncated": (truncate, ("images.npy",), "chip arrays unreadable"),
        "chips masks.npy truncated": (truncate, ("masks.npy",), "chip arrays unreadable"),
        "chips garbage windows.csv row": (_garbage_csv_row, ("windows.csv",), "windows.csv line 4"),
        "chips windows.csv of a scene chip set missing": (_scene_chipset_without_windows, ("windows.csv",),
                                                          "windows.csv is missing"),
        "chips chips.json a JSON list": (lambda c: (c / "chips.json").write_text("[]"), ("chips.json",),
                                         "chips.json"),
    }[name]
    chips = linked_copy(study.chips, tmp / "chips", copied=files)
    target = chips / files[0]
    damage(target if damage is truncate else chips)
    return ["train", chips, "--out", out, "--epochs", "1", *TRAIN], (expected,)


SPECIALS = [
    "bundle: empty file", "bundle: truncated to half", "bundle: not a torch file",
    "bundle: metadata not JSON", "bundle: metadata a JSON list", "bundle: metadata empty",
    "bundle: metadata not text",
    "bundle: weights a list", "bundle: a weight missing", "bundle: a weight of another shape",
    "scene stack.tif truncated read by sample", "scene stack.tif truncated read by predict",
    "scene mask.tif truncated read by sample", "scene mask.tif truncated read by predict",
    "scene mask.tif truncated read by evaluate", "scene stack.tif truncated read by evaluate",
    "prediction mask.tif truncated read by evaluate",
    "scene areas.gpkg garbage read by sample", "scene areas.gpkg garbage read by predict",
    "scene areas.gpkg garbage read by evaluate", "scene areas.gpkg truncated read by sample",
    "synth image.tif truncated read by prepare", "synth dem.tif truncated read by prepare",
    "synth inventory.gpkg truncated read by prepare", "synth areas.gpkg truncated read by prepare",
    "scene.json not JSON read by sample", "prediction.json empty read by evaluate",
    "chips masks.npy shorter than images.npy", "chips images.npy truncated", "chips masks.npy truncated",
    "chips garbage windows.csv row", "chips windows.csv of a scene chip set missing",
    "chips chips.json a JSON list", "--max-time abc", "--filters 0",
]


@pytest.mark.parametrize("name", SPECIALS)
def test_corrupt_input_is_one_line(name, study, tmp_path, capsys):
    argv, expected = _special(name, study, tmp_path)
    before = {p: sha256(p) for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()}

    rc, err = cli(argv, capsys)

    assert rc == 2, err
    one_error(err, *expected)
    assert not (tmp_path / "out").exists()  # nothing half-made (--max-time abc: no run stub either)
    assert before == {p: sha256(p) for p in before}
    assert not [p for p in tmp_path.rglob(".*") if ".tmp-" in p.name or p.name.endswith(".lock")]


# --- 3. kill -9 and failed checkpoint writes while training -----------------------------------------------

def finished_run(study: Study, folder: Path) -> Path:
    """A finished 2-epoch run trained in ``folder`` (a copied run would resume with Lightning's warning that
    its checkpoint folder moved)."""
    ok(["train", study.chips, "--out", folder, "--epochs", "2", *TRAIN])
    return folder


def _epochs_in(ckpt: Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"]) + 1


def test_kill_while_a_finished_run_trains_on_keeps_its_bundle(study, tmp_path, capsys):
    run = finished_run(study, tmp_path / "run")
    bundle = (run / "bundle.pt").read_bytes()
    last = run / "checkpoints" / "last.ckpt"
    inode = last.stat().st_ino

    proc = popen(["train", study.chips, "--out", run, "--resume", "--epochs", "60", *TRAIN])
    new_checkpoint = wait_for(proc, lambda: last.stat().st_ino != inode)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate()

    assert new_checkpoint and proc.returncode == -signal.SIGKILL, stderr
    assert (run / "bundle.pt").read_bytes() == bundle  # the old model is still there, whole
    assert load_bundle(run).meta.training["epochs_run"] == 2
    done = _epochs_in(last)
    assert done > 2
    rc, err = cli(["train", study.chips, "--out", run, "--resume", "--epochs", done + 1, *TRAIN], capsys)
    assert rc == 0, err
    assert load_bundle(run).meta.training["epochs_run"] == done + 1
    assert not hidden(run) and not hidden(run / "checkpoints")


def _checkpoint_write_fails_half_way(monkeypatch) -> None:
    """torch.save of last.ckpt writes half its bytes, then the disk is full."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if ".last.ckpt.tmp-" in str(getattr(f, "name", f)):
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_failed_checkpoint_write_keeps_the_previous_one_and_resume_continues(study, tmp_path, monkeypatch,
                                                                            capsys):
    run = finished_run(study, tmp_path / "run")
    checkpoints = run / "checkpoints"
    last = checkpoints / "last.ckpt"
    previous, bundle = last.read_bytes(), (run / "bundle.pt").read_bytes()
    resume = ["train", study.chips, "--out", run, "--resume", "--epochs", "3", *TRAIN]

    with monkeypatch.context() as m:
        _checkpoint_write_fails_half_way(m)
        rc, err = cli(resume, capsys)
    assert rc == 2, err
    one_error(err, str(last), "no space left")
    assert last.read_bytes() == previous and readable_checkpoint(last)
    assert (run / "bundle.pt").read_bytes() == bundle
    assert not hidden(checkpoints) and not hidden(run)  # no temporary, no lock left

    rc, err = cli(resume, capsys)
    assert rc == 0, err
    assert load_bundle(run).meta.training["epochs_run"] == 3 and _epochs_in(last) == 3


def test_truncated_last_checkpoint_resumes_from_best_with_a_warning(study, tmp_path, capsys):
    run = finished_run(study, tmp_path / "run")
    truncate(run / "checkpoints" / "last.ckpt")

    rc, err = cli(["train", study.chips, "--out", run, "--resume", "--epochs", "3", *TRAIN], capsys)

    assert rc == 0, err
    assert any(line.startswith("warning: ") and "resuming from" in line and "best.ckpt" in line
               for line in err), err
    assert load_bundle(run).meta.training["epochs_run"] == 3


def test_unreadable_checkpoints_are_one_line(study, tmp_path, capsys):
    run = shutil.copytree(study.run, tmp_path / "run")
    for name in ("last.ckpt", "best.ckpt"):
        truncate(run / "checkpoints" / name)
    before = snapshot(run)
    rc, err = cli(["train", study.chips, "--out", run, "--resume", "--epochs", "3", *TRAIN], capsys)
    assert rc == 2
    one_error(err, "--resume", "unreadable")
    assert snapshot(run) == before


# --- 4. full disk, read-only file system, no permission -------------------------------------------------

def _mount(folder: Path, options: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"this environment refuses to mount a tmpfs ({r.stderr.strip() or r.returncode})")


@pytest.fixture
def full_disk(tmp_path):
    """A 2 MB tmpfs with all but 128 KiB taken by someone else's file."""
    disk = tmp_path / "disk"
    _mount(disk, "size=2m")
    try:
        (disk / "ballast").write_bytes(b"\0" * (2048 - 128) * 1024)
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.fixture
def read_only_disk(tmp_path):
    disk = tmp_path / "ro"
    _mount(disk, "size=1m,ro")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# command -> argv writing to OUT
WRITERS = {
    "synth": ["synth", "OUT", *SYNTH],
    "prepare": [*prepare_args(Path("STUDY/synth")), "--out", "OUT"],
    "sample": ["sample", "STUDY/scene", "--out", "OUT", "--size", "32", "--overlap", "0.75"],
    "train": ["train", "STUDY/chips", "--out", "OUT", "--epochs", "1", *TRAIN],
    "predict": ["predict", "STUDY/run", "--scene", "STUDY/scene", "--out", "OUT"],
    "evaluate": None,
    "l4s import": ["l4s", "import", "STUDY/l4s", "--out", "OUT"],
}


def _writer(cmd: str, study: Study, out: Path) -> list[str]:
    root = str(study.scene.parent)
    return [str(out) if a == "OUT" else str(a).replace("STUDY", root) for a in WRITERS[cmd]]


LIBTIFF = re.compile(r"_tiff\w+: No space left on device\.")


@pytest.mark.parametrize("cmd", ["synth", "prepare", "sample", "predict", "l4s import", "train"])
def test_full_disk_is_one_line_without_sigbus_and_leaves_nothing(cmd, study, full_disk):
    out = full_disk / "out"
    r = subprocess.run([*SLIDEMAP, *_writer(cmd, study, out)], env=ENV, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])  # SIGBUS would be -7 (shell: 135)
    # libtiff (inside GDAL) prints its own "_tiffWriteProc: No space left on device." straight to stderr
    lines = [line for line in r.stderr.splitlines() if not LIBTIFF.fullmatch(line)]
    one_error(lines, str(full_disk), "no space left")
    left = sorted(str(p.relative_to(full_disk)) for p in full_disk.rglob("*"))
    if cmd == "train":  # the run folder stays, to be resumed once there is space; no temporary in it
        assert [p for p in left if not p.startswith("out")] == ["ballast"], left
        assert not [p for p in left if "/." in p or p.startswith(".")], left
    else:
        assert left == ["ballast"]  # no temporary, lock or stub


@pytest.mark.parametrize("cmd", ["synth", "prepare", "sample", "train", "predict", "l4s import"])
def test_read_only_file_system_is_one_line(cmd, study, read_only_disk, capsys):
    rc, err = cli(_writer(cmd, study, read_only_disk / "out"), capsys)
    assert rc == 2
    one_error(err, str(read_only_disk), "read-only")


@pytest.mark.parametrize("cmd", ["synth", "sample", "train", "predict", "l4s import"])
def test_folder_without_write_permission_is_one_line(cmd, study, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: a folder's permissions do not stop writes")
        rc, err = cli(_writer(cmd, study, locked / "out"), capsys)
        assert rc == 2
        one_error(err, str(locked), "permission denied")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("cmd", ["sample", "l4s import", "synth"])
def test_full_disk_patched_is_one_line_and_leaves_nothing(cmd, study, tmp_path, monkeypatch, capsys):
    """The same without a mount: the space reservation (or, for synth, a GeoTIFF writer) finds no space."""
    if cmd == "synth":
        import slidemap.sources.synth.writing as writing

        monkeypatch.setattr(writing, "_write_dem", _no_space)
    else:
        monkeypatch.setattr(os, "posix_fallocate", _no_space)
    out = tmp_path / "out"
    rc, err = cli(_writer(cmd, study, out), capsys)
    assert rc == 2
    one_error(err, str(tmp_path), "no space left")
    assert list(tmp_path.iterdir()) == []


# --- 5. two writers of one --out ----------------------------------------------------------------------------

LOCKED = {"synth": "synth", "prepare": "scene", "sample": "chips", "predict": "pred", "l4s import": "chips"}


@pytest.mark.parametrize("cmd", [*LOCKED, "train --resume", "evaluate"])
def test_second_writer_fails_at_once_naming_the_first(cmd, study, tmp_path, capsys):
    """While a writer holds an output (here: this process, through the lock every writer takes), a second
    writer of it is refused in one line naming the holder's pid; the output stays as it was."""
    if cmd == "train --resume":
        out = shutil.copytree(study.run, tmp_path / "run")
        argv = ["train", study.chips, "--out", out, "--resume", "--epochs", "3", *TRAIN]
    elif cmd == "evaluate":
        out = shutil.copytree(study.pred, tmp_path / "pred")
        argv = ["evaluate", out]
    else:
        out = shutil.copytree(getattr(study, LOCKED[cmd]), tmp_path / "out")
        argv = _writer(cmd, study, out)
    before = snapshot(out)
    t0 = time.monotonic()
    with output_lock(out.resolve()):
        rc, err = cli(argv, capsys)
    assert rc == 2
    one_error(err, "another slidemap command is writing it", f"pid {os.getpid()}")
    assert time.monotonic() - t0 < 60  # at once: no waiting for the lock
    assert snapshot(out) == before


def test_second_writer_of_a_running_command_fails_and_the_first_completes(study, tmp_path, capsys):
    run = tmp_path / "run"
    train = ["train", study.chips, "--out", run, "--epochs", "6", *TRAIN]
    proc = popen(train)
    started = wait_for(proc, lambda: (run / "config.yaml").exists())

    rc, err = cli([*train, "--resume"], capsys)

    _, stderr = proc.communicate(timeout=600)
    assert started and proc.returncode == 0, stderr
    assert rc == 2
    one_error(err, f"--out {run}", "another slidemap command is writing it", f"pid {proc.pid}")
    assert load_bundle(run).meta.training["epochs_run"] == 6  # the first writer's result, complete
    assert len((run / "metrics.csv").read_text().splitlines()) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and not hidden(run)


# --- 6. temporaries of killed commands ------------------------------------------------------------------

def test_sigkilled_writer_leaves_a_temporary_the_next_run_removes(tmp_path, capsys):
    out = tmp_path / "synth"
    proc = popen(["synth", out, "--size", "1024", "--landslides", "60"])
    writing = wait_for(proc, lambda: any(p.is_dir() and any(p.iterdir())
                                         for p in tmp_path.glob(".synth.tmp-*")))
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert writing and proc.returncode == -signal.SIGKILL
    stale = list(tmp_path.glob(".synth.tmp-*"))
    assert stale and not out.exists()

    rc, err = cli(["synth", out, *SYNTH], capsys)

    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]  # the stale temporary and lock are gone
    assert {p.name for p in out.iterdir()} == {"image.tif", "dem.tif", "inventory.gpkg", "areas.gpkg",
                                              "synth.json"}


def test_sigterm_cleans_up_like_ctrl_c(tmp_path):
    out = tmp_path / "synth"
    proc = popen(["synth", out, "--size", "1024", "--landslides", "60"])
    writing = wait_for(proc, lambda: any(tmp_path.glob(".synth.tmp-*")))
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert writing, stderr
    assert proc.returncode != 0 and proc.returncode != -signal.SIGTERM, stderr  # it handled the signal
    assert list(tmp_path.iterdir()) == []  # no output, no temporary, no lock


def test_sigterm_while_training_keeps_the_run_resumable(study, tmp_path, capsys):
    run = tmp_path / "run"
    proc = popen(["train", study.chips, "--out", run, "--epochs", "60", *TRAIN])
    started = wait_for(proc, lambda: (run / "checkpoints" / "last.ckpt").exists())
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert started and proc.returncode == 130, stderr
    assert "--resume" in stderr
    assert not (run / "bundle.pt").exists()
    assert not hidden(run) and not hidden(run / "checkpoints") and hidden(tmp_path) == []
    done = _epochs_in(run / "checkpoints" / "last.ckpt")
    rc, err = cli(["train", study.chips, "--out", run, "--resume", "--epochs", done + 1, *TRAIN], capsys)
    assert rc == 0, err


def test_stale_file_temporaries_in_a_run_are_removed_by_the_next_writer(study, tmp_path, capsys):
    """A kill during an atomic file write (a checkpoint, the bundle, metrics.csv) leaves its temporary
    beside the file; the next command writing that file removes it, another host's or live one stays."""
    run = finished_run(study, tmp_path / "run")
    pid = dead_pid()
    stale = [run / "checkpoints" / f".last.ckpt.tmp-{_HOST}-{pid}-0badf00d.ckpt",
             run / f".bundle.pt.tmp-{_HOST}-{pid}-0badf00d.pt",
             run / f".metrics.csv.tmp-{_HOST}-{pid}-0badf00d.csv"]
    alive = [run / f".bundle.pt.tmp-{_HOST}-1-0badf00d.pt",
             run / f".bundle.pt.tmp-otherhost-{pid}-0badf00d.pt"]
    for p in stale + alive:
        p.write_bytes(b"half a file")

    rc, err = cli(["train", study.chips, "--out", run, "--resume", "--epochs", "3", *TRAIN], capsys)

    assert rc == 0, err
    assert not [p for p in stale if p.exists()]
    assert all(p.exists() for p in alive)


def test_interrupted_evaluation_never_claims_to_be_complete(study, tmp_path, monkeypatch, capsys):
    pred = shutil.copytree(study.pred, tmp_path / "pred")
    assert main(["evaluate", str(pred)]) == 0
    import slidemap.stages.evaluate as evaluate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(evaluate, "error_map_png", interrupted)
        rc, _ = cli(["evaluate", pred], capsys)
    assert rc == 130
    assert not (pred / "metrics.json").exists()  # the folder does not claim a half evaluation
    assert not hidden(pred) and hidden(tmp_path) == []
    rc, err = cli(["evaluate", pred], capsys)
    assert rc == 0 and (pred / "metrics.json").is_file(), err


# --- 7. byte-reproducible outputs ------------------------------------------------------------------------

def _same_bytes(a: Path, b: Path, names: tuple[str, ...]) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_same_inputs_and_seed_give_byte_identical_outputs(study, tmp_path):
    again = tmp_path / "again"
    ok(["synth", again / "synth", *SYNTH])
    _same_bytes(study.synth, again / "synth", tuple(sorted(p.name for p in study.synth.iterdir())))

    ok([*prepare_args(study.synth), "--out", again / "scene"])
    _same_bytes(study.scene, again / "scene", ("stack.tif", "mask.tif", "areas.gpkg"))

    ok(["sample", study.scene, "--out", again / "chips", *SAMPLE])
    _same_bytes(study.chips, again / "chips", ("images.npy", "masks.npy", "windows.csv", "chips.json"))

    ok(["train", study.chips, "--out", again / "run", "--epochs", "2", *TRAIN])
    _same_bytes(study.run, again / "run", ("bundle.pt", "metrics.csv", "config.yaml"))

    ok(["predict", study.run, "--scene", study.scene, "--out", again / "pred"])
    _same_bytes(study.pred, again / "pred", ("probability.tif", "mask.tif", "landslides.gpkg"))
