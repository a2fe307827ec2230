"""The CLI answers --help for every command, and turns user errors into one line + exit 2.

The error tests run each command's real error path through ``slidemap.cli.main`` on tiny generated inputs:
exit status 2, exactly one stderr line ``error: ...`` naming the option or file at fault, and nothing
written anywhere (no output folder, no temporary sibling, no lock, a user's files untouched).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_l4s

from slidemap.cli import main

COMMANDS = [[], ["synth"], ["prepare"], ["sample"], ["train"], ["predict"], ["evaluate"], ["demo"],
            ["l4s"], ["l4s", "import"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_help(cmd, capsys):
    assert main([*cmd, "--help"]) == 0
    assert "Usage" in capsys.readouterr().out


def test_cli_start_leaves_out_scipy_stats():
    """scipy.signal imports scipy.stats (about 1 s): only the synthetic terrain needs it, and imports it itself."""
    code = "import sys, slidemap.cli; print(sorted(m for m in ('scipy.signal', 'scipy.stats') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_usage_error_exits_2(capsys):
    assert main(["prepare"]) == 2


def test_info_names_the_process_settings(capsys, monkeypatch):
    monkeypatch.setenv("GOMP_SPINCOUNT", "1000")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "536870912")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert main(["info"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("process"))
    assert "GOMP_SPINCOUNT=1000" in line and "MALLOC_TRIM_THRESHOLD_=536870912" in line
    assert "MALLOC_MMAP_THRESHOLD_" not in line


# --- the real error path of each command ----------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_chips(tiny_scene, tmp_path_factory) -> Path:
    """A chip set sampled from conftest's tiny scene (8 grid chips of 32 px; read-only)."""
    from slidemap.stages import sample

    out = tmp_path_factory.mktemp("cli_chips") / "chips"
    return sample.run(sample.SampleOptions(scene=tiny_scene, out=out, size=32)).path


@pytest.fixture(scope="module")
def l4s_folder(tmp_path_factory) -> Path:
    """A Landslide4Sense folder of two valid patches (img/image_N.h5, mask/mask_N.h5)."""
    return write_l4s(tmp_path_factory.mktemp("l4s") / "TrainData", patches=2)


def _user_folder(tmp_path: Path) -> Path:
    """A folder of the user's: one file that no slidemap command wrote."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes\n")
    return folder


def _cases(tmp_path: Path, inputs, scene: Path, chips: Path, l4s: Path) -> dict[str, tuple[list, list[str]]]:
    """name -> (argv, what the one error line must contain); run in ``tmp_path`` as the current folder."""
    nope = tmp_path / "nope"
    mine = _user_folder(tmp_path)
    out = tmp_path / "out"
    prepare = ["prepare", "--image", inputs.image, "--dem", inputs.dem, "--inventory", inputs.inventory]
    train = ["train", chips, "--epochs", "1", "--no-progress", "--min-chips", "1"]
    return {
        "synth --size 40": (["synth", out, "--size", "40"], ["--size 40", "at least 256"]),
        "synth OUT a user's folder": (["synth", mine, "--size", "256"], [f"OUT {mine}", "notes.txt"]),
        "synth OUT .": (["synth", ".", "--size", "256"], ["OUT .", "current folder"]),
        "synth --pixel-size 0": (["synth", out, "--pixel-size", "0"], ["--pixel-size 0"]),

        "prepare missing --image": (["prepare", "--image", nope / "a.tif", "--split", "3:2", "--out", out],
                                    [f"--image {nope / 'a.tif'}", "no such file"]),
        "prepare missing --dem": ([*prepare[:3], "--dem", nope / "dem.tif", "--split", "3:2", "--out", out],
                                  [f"--dem {nope / 'dem.tif'}", "no such file"]),
        "prepare --split 3:x": ([*prepare, "--split", "3:x", "--out", out], ["--split 3:x", "TRAIN:TEST"]),
        "prepare --terrain curv": ([*prepare, "--split", "3:2", "--terrain", "slope,curv", "--out", out],
                                   ["--terrain slope,curv", "unknown layer curv"]),
        "prepare --out a user's folder": ([*prepare, "--split", "3:2", "--out", mine],
                                          [f"--out {mine}", "other content (notes.txt)"]),
        "prepare --out .": ([*prepare, "--split", "3:2", "--out", "."], ["--out .", "current folder"]),
        "prepare --out holds an input": ([*prepare, "--split", "3:2", "--out", inputs.image.parent],
                                         [f"--out {inputs.image.parent}", "holds an input"]),

        "sample missing SCENE": (["sample", nope, "--out", out], [f"SCENE {nope}", "no such scene folder"]),
        "sample --size 40": (["sample", scene, "--out", out, "--size", "40"],
                             ["--size 40", "multiples of 16"]),
        "sample --overlap 1": (["sample", scene, "--out", out, "--overlap", "1"], ["--overlap 1.0"]),
        "sample --area unknown": (["sample", scene, "--out", out, "--size", "32", "--area", "nowhere"],
                                  ["--area nowhere", "no such area"]),
        "sample --out a user's folder": (["sample", scene, "--out", mine, "--size", "32"],
                                         [f"--out {mine}", "other content (notes.txt)"]),
        "sample --out the scene": (["sample", scene, "--out", scene, "--size", "32"],
                                   [f"--out {scene}", "is an input"]),
        "sample --out .": (["sample", scene, "--out", ".", "--size", "32"], ["--out .", "current folder"]),

        "train missing CHIPS": (["train", nope, "--out", out], [f"CHIPS {nope}", "no such chip set"]),
        "train --batch-size 0": ([*train, "--out", out, "--batch-size", "0"],
                                 ["--batch-size 0", "greater than or equal to 1"]),
        "train --max-time abc": ([*train, "--out", out, "--max-time", "abc"],
                                 ["--max-time abc", "DD:HH:MM:SS"]),
        "train --filters 0": ([*train, "--out", "run", "--filters", "0"], ["--filters 0"]),
        "train --precision 8": ([*train, "--out", out, "--precision", "8"], ["--precision 8"]),
        "train --bands swir": ([*train, "--out", out, "--bands", "red,swir"], ["--bands", "swir not in"]),
        "train --resume without a run": ([*train, "--out", out, "--resume"],
                                         ["--resume", "no run to continue"]),
        "train --out a user's folder": ([*train, "--out", mine],
                                        [f"--out {mine}", "other content (notes.txt)"]),
        "train --out .": ([*train, "--out", "."], ["--out .", "current folder"]),
        "train --out the chip set": ([*train, "--out", chips], [f"--out {chips}", "is an input"]),

        "l4s import missing FOLDER": (["l4s", "import", nope, "--out", out], [f"FOLDER {nope}", "no such"]),
        "l4s import missing --list": (["l4s", "import", l4s, "--list", nope / "list.txt", "--out", out],
                                      [f"--list {nope / 'list.txt'}", "no such file"]),
        "l4s import --out a user's folder": (["l4s", "import", l4s, "--out", mine],
                                             [f"--out {mine}", "other content (notes.txt)"]),
        "l4s import --out the input": (["l4s", "import", l4s, "--out", l4s], [f"--out {l4s}", "is an input"]),
        "l4s import --out inside the input": (["l4s", "import", l4s, "--out", l4s / "chips"],
                                              [f"--out {l4s / 'chips'}", "lies inside an input"]),
        "l4s import --out .": (["l4s", "import", l4s, "--out", "."], ["--out .", "current folder"]),
    }


CASE_NAMES = [
    "synth --size 40", "synth OUT a user's folder", "synth OUT .", "synth --pixel-size 0",
    "prepare missing --image", "prepare missing --dem", "prepare --split 3:x", "prepare --terrain curv",
    "prepare --out a user's folder", "prepare --out .", "prepare --out holds an input",
    "sample missing SCENE", "sample --size 40", "sample --overlap 1", "sample --area unknown",
    "sample --out a user's folder", "sample --out the scene", "sample --out .",
    "train missing CHIPS", "train --batch-size 0", "train --max-time abc", "train --filters 0",
    "train --precision 8", "train --bands swir", "train --resume without a run",
    "train --out a user's folder", "train --out .", "train --out the chip set",
    "l4s import missing FOLDER", "l4s import missing --list", "l4s import --out a user's folder",
    "l4s import --out the input", "l4s import --out inside the input", "l4s import --out .",
]


def _tree(*folders: Path) -> dict[str, bytes | None]:
    """Every path under ``folders`` (hidden ones included) with the bytes of the files."""
    return {str(p): (p.read_bytes() if p.is_file() else None)
            for folder in folders for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("name", CASE_NAMES)
def test_error_is_one_line_naming_the_culprit_and_leaves_nothing(name, tmp_path, monkeypatch, capsys,
                                                                 tiny_inputs, tiny_scene, tiny_chips,
                                                                 l4s_folder):
    monkeypatch.chdir(tmp_path)
    cases = _cases(tmp_path, tiny_inputs, tiny_scene, tiny_chips, l4s_folder)
    assert set(cases) == set(CASE_NAMES)
    argv, expected = cases[name]
    watched = (tmp_path, tiny_inputs.image.parent, tiny_scene.parent, tiny_chips.parent, l4s_folder.parent)
    before = _tree(*watched)
    capsys.readouterr()

    rc = main([str(a) for a in argv])

    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert rc == 2, captured
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert _tree(*watched) == before  # nothing created, nothing changed (the user's notes.txt included)
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


def test_rejected_train_option_creates_no_run_folder(tmp_path, monkeypatch, capsys, tiny_chips):
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(tiny_chips), "--filters", "0", "--out", "run"]) == 2
    assert capsys.readouterr().err == "error: --filters 0: must be greater than or equal to 1\n"
    assert list(tmp_path.iterdir()) == []
