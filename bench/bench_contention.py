"""slidemap alone, two slidemap commands at once, and slidemap beside a CPU-bound process, per OpenMP setting.

    python bench/bench_contention.py                       # training and prediction, every setting
    python bench/bench_contention.py --section train --settings slidemap,libgomp
    python bench/bench_contention.py --keep /tmp/contention  # reuse the data between runs

Each case runs the real CLI (``slidemap train`` / ``slidemap predict``) in fresh processes, so OpenMP reads
its environment as a user's command does:

- **alone**: one command on an otherwise idle machine;
- **pair**: two copies started together on the same cores; the figure is the pair's wall time over twice the
  alone time (1.0: as fast as running them one after the other; below 1: faster);
- **beside a hog**: one command beside a CPU-bound non-slidemap process (one busy Python loop per core but
  one), time over the alone time.

Settings: ``slidemap`` (what the CLI sets when the user has set nothing), ``libgomp`` (libgomp's own default:
``GOMP_SPINCOUNT=300000``, what torch gets without slidemap), ``passive`` (``OMP_WAIT_POLICY=PASSIVE``), and
``spin=N`` for any spin count. The work: training a U-Net-16 on ~300 grid chips of 64 px for a few epochs in
fp32, and predicting a 2,048² synthetic scene with a model trained on its own area (a trained model traces
the polygons a real one does, not a random network's tens of thousands). Nothing here is a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table, load_average, machine_line  # noqa: E402

EXE = str(Path(sys.executable).with_name("slidemap"))
HOG = "import os, time\nend = time.time() + {s}\nwhile time.time() < end:\n    pass\n"


def setting_env(name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                                                            "OMP_NUM_THREADS")}
    if name == "libgomp":
        env["GOMP_SPINCOUNT"] = "300000"
    elif name == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    elif name.startswith("spin="):
        env["GOMP_SPINCOUNT"] = name.split("=", 1)[1]
    elif name != "slidemap":
        raise SystemExit(f"--settings: unknown setting {name}")
    return env


def prepare_data(root: Path) -> dict[str, Path]:
    """Synthetic areas, scenes, a chip set and a trained run (kept in ``root`` for --keep)."""
    paths = {"chips": root / "chips", "scene": root / "scene-big", "run": root / "run"}
    if all(p.exists() for p in paths.values()):
        return paths
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)

    def cli(*args: str) -> None:
        subprocess.run([EXE, *args], check=True, stdout=subprocess.DEVNULL)

    cli("synth", str(root / "small"), "--seed", "5", "--size", "1024", "--landslides", "60")
    s = root / "small"
    cli("prepare", "--image", str(s / "image.tif"), "--dem", str(s / "dem.tif"), "--inventory",
        str(s / "inventory.gpkg"), "--areas", str(s / "areas.gpkg"), "--out", str(root / "scene"))
    cli("sample", str(root / "scene"), "--size", "64", "--overlap", "0.2", "--out", str(paths["chips"]))
    cli("train", str(paths["chips"]), "--out", str(paths["run"]), "--epochs", "8", "--precision", "32",
        "--no-progress", "--loss", "bce+dice")
    cli("synth", str(root / "big"), "--seed", "6", "--size", "2048", "--landslides", "200")
    b = root / "big"
    cli("prepare", "--image", str(b / "image.tif"), "--dem", str(b / "dem.tif"), "--inventory",
        str(b / "inventory.gpkg"), "--areas", str(b / "areas.gpkg"), "--out", str(paths["scene"]))
    return paths


def command(section: str, paths: dict[str, Path], out: Path, epochs: int) -> list[str]:
    if section == "train":
        return [EXE, "train", str(paths["chips"]), "--out", str(out), "--epochs", str(epochs), "--patience", "0",
                "--precision", "32", "--no-progress", "--seed", "0"]
    return [EXE, "predict", str(paths["run"]), "--scene", str(paths["scene"]), "--out", str(out)]


def timed(cmds: list[list[str]], env: dict[str, str], hog_seconds: float = 0.0) -> list[float]:
    """Wall seconds of each command, all started together (beside ``os.cpu_count() - 1`` hogs if asked)."""
    hogs = [subprocess.Popen([sys.executable, "-c", HOG.format(s=hog_seconds)])
            for _ in range(max(1, (os.cpu_count() or 2) - 1))] if hog_seconds else []
    if hogs:
        time.sleep(0.5)
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in cmds]
    ends = []
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"{' '.join(p.args)} failed: {err.decode()[-400:]}")
        ends.append(time.perf_counter() - t0)
    for h in hogs:
        h.kill()
    return ends


def run_section(section: str, paths: dict[str, Path], settings: list[str], scratch: Path, epochs: int,
                repeats: int) -> list[dict[str, object]]:
    rows = []
    for name in settings:
        env = setting_env(name)

        def outs(k: int, name: str = name) -> list[Path]:
            folders = [scratch / f"{section}-{name}-{k}-{i}" for i in range(2)]
            for f in folders:
                shutil.rmtree(f, ignore_errors=True)
            return folders

        alone = min(timed([command(section, paths, outs(r)[0], epochs)], env)[0] for r in range(repeats))
        pair = max(timed([command(section, paths, o, epochs) for o in outs(9)], env))
        hog = timed([command(section, paths, outs(8)[0], epochs)], env, hog_seconds=alone * 6 + 30)[0]
        rows.append({"work": section, "setting": name, "alone s": f"{alone:.1f}", "pair s": f"{pair:.1f}",
                     "pair / (2 x alone)": f"{pair / (2 * alone):.2f}", "beside a hog s": f"{hog:.1f}",
                     "hog / alone": f"{hog / alone:.2f}"})
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--section", choices=("train", "predict", "all"), default="all")
    ap.add_argument("--settings", default="slidemap,libgomp,passive")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2, help="alone runs per setting (the fastest is kept)")
    ap.add_argument("--keep", type=Path, help="data folder to reuse between runs")
    a = ap.parse_args(argv)
    root = a.keep or Path(tempfile.mkdtemp(prefix="slidemap-contention-"))
    print(machine_line())
    print(f"load before: {load_average()}")
    paths = prepare_data(root / "data")
    scratch = root / "outs"
    scratch.mkdir(exist_ok=True)
    rows = []
    for section in (("train", "predict") if a.section == "all" else (a.section,)):
        rows += run_section(section, paths, a.settings.split(","), scratch, a.epochs, a.repeats)
    print(f"load after: {load_average()}")
    print(format_table(rows))
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
