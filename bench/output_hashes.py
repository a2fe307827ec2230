"""Hash what the pipeline writes, stage by stage, to show a refactoring kept (or say how it changed) the outputs.

    python bench/output_hashes.py OUT_DIR [--slidemap PATH_TO_SLIDEMAP_EXECUTABLE] > hashes.txt

Runs, through the real CLI: ``synth --seed 3 --size 384``; ``prepare`` with areas and with ``--split 3:2``;
``sample`` grid (64 px, overlap 0.25) and random (``--require-landslide``); ``train --precision 32 --seed 0``
(U-Net-8, 4 epochs); ``predict --evaluate``; then prints one ``key hash`` line per output: raster pixels (not
file bytes, which hold timestamps nowhere but creation options may differ), chip arrays, the network's
weights, metrics.csv, the polygons' geometries and areas, the evaluation metrics. Run it once with the old
code and once with the new (``--slidemap`` names each one's executable, e.g. from a git worktree's venv)
and ``diff`` the two files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def raster_hash(path: Path) -> str:
    import rasterio

    with rasterio.open(path) as src:
        arr = src.read()
        meta = f"{src.crs}|{tuple(src.transform)}|{src.dtypes}|{src.nodata}|{src.descriptions}"
    return digest(arr.tobytes() + meta.encode())


def weights_hash(bundle: Path) -> str:
    import torch

    state = torch.load(bundle, map_location="cpu", weights_only=False)
    tensors = state.get("state_dict", state) if isinstance(state, dict) else state
    parts = [k.encode() + v.numpy().tobytes() for k, v in sorted(tensors.items()) if hasattr(v, "numpy")]
    return digest(b"".join(parts))


def polygons_hash(gpkg: Path) -> str:
    import geopandas as gpd

    gdf = gpd.read_file(gpkg)
    wkb = b"".join(g.wkb for g in gdf.geometry.normalize())
    return f"{digest(wkb)} ({len(gdf)} polygons)"


def run(exe: str, *args: str) -> None:
    subprocess.run([exe, *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--slidemap", default=str(Path(sys.executable).with_name("slidemap")))
    ap.add_argument("--hash-only", action="store_true", help="hash the outputs already in OUT_DIR")
    a = ap.parse_args()
    out, exe = a.out, a.slidemap
    out.mkdir(parents=True, exist_ok=True)
    if not a.hash_only:
        run_pipeline(out, exe)
    for k, v in hashes(out).items():
        print(f"{k} {v}")


def run_pipeline(out: Path, exe: str) -> None:
    """synth, both prepares, both samples, train and predict through the CLI of ``exe``."""
    run(exe, "synth", str(out / "data"), "--seed", "3", "--size", "384", "--landslides", "30")
    d = out / "data"
    run(exe, "prepare", "--image", str(d / "image.tif"), "--dem", str(d / "dem.tif"), "--inventory",
        str(d / "inventory.gpkg"), "--areas", str(d / "areas.gpkg"), "--out", str(out / "scene"))
    run(exe, "prepare", "--image", str(d / "image.tif"), "--dem", str(d / "dem.tif"), "--inventory",
        str(d / "inventory.gpkg"), "--split", "3:2", "--out", str(out / "scene-split"))
    run(exe, "sample", str(out / "scene"), "--size", "64", "--overlap", "0.25", "--out", str(out / "grid"))
    run(exe, "sample", str(out / "scene"), "--method", "random", "--size", "64", "--count", "200",
        "--require-landslide", "--out", str(out / "random"))
    help_text = subprocess.run([exe, "train", "--help"], capture_output=True, text=True).stdout
    few = ["--min-chips", "1"] if "--min-chips" in help_text else []  # this small grid has fewer than 32
    run(exe, "train", str(out / "grid"), "--out", str(out / "run"), "--filters", "8", "--epochs", "4",
        "--precision", "32", "--seed", "0", "--no-progress", *few)
    run(exe, "predict", str(out / "run"), "--scene", str(out / "scene"), "--out", str(out / "pred"), "--evaluate")


def hashes(out: Path) -> dict[str, str]:
    """One hash per output: pixels, chip arrays, weights, metrics, polygons, scores (paths left out)."""
    d = out / "data"
    rows: dict[str, str] = {}
    for name in ("image.tif", "dem.tif"):
        rows[f"synth/{name}"] = raster_hash(d / name)
    rows["synth/inventory.gpkg"] = polygons_hash(d / "inventory.gpkg")
    for scene in ("scene", "scene-split"):
        for name in ("stack.tif", "mask.tif"):
            rows[f"{scene}/{name}"] = raster_hash(out / scene / name)
    for chips in ("grid", "random"):
        for name in ("images.npy", "masks.npy"):
            rows[f"{chips}/{name}"] = digest(np.load(out / chips / name).tobytes())
        rows[f"{chips}/windows.csv"] = digest((out / chips / "windows.csv").read_bytes())
    rows["run/weights"] = weights_hash(out / "run" / "bundle.pt")
    rows["run/metrics.csv"] = digest((out / "run" / "metrics.csv").read_bytes())
    summary = json.loads((out / "run" / "summary.json").read_text())
    rows["run/threshold"] = str(summary.get("best_threshold"))
    for name in ("probability.tif", "mask.tif"):
        rows[f"pred/{name}"] = raster_hash(out / "pred" / name)
    rows["pred/landslides.gpkg"] = polygons_hash(out / "pred" / "landslides.gpkg")
    metrics = sorted((out / "pred").rglob("metrics.json"))
    for m in metrics:
        data = json.loads(m.read_text())
        text = json.dumps(data, sort_keys=True, default=str).replace(str(out), "OUT")
        rows[f"pred/{m.relative_to(out / 'pred')}"] = digest(text.encode())
    return rows


if __name__ == "__main__":
    main()
