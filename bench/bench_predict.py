"""End-to-end whole-scene prediction: peak RSS and Mpx/s for growing scenes (``slidemap predict``).

    python bench/bench_predict.py                              # 4,096² and 10,000² px, 7 bands, U-Net 16
    python bench/bench_predict.py --precision 32,bf16          # fp32 (before) and bf16 autocast (after)
    python bench/bench_predict.py --sizes 2000 --filters 8     # one size, a smaller network
    python bench/bench_predict.py --workdir /tmp/pb --keep     # keep (and reuse) the synthetic scenes
    python bench/bench_predict.py --trained --sizes 3072 --precision 32   # a trained model on synth scenes
    python bench/bench_predict.py --trained --sizes 3072 --precision 32 --tilings 512/32/2,512/64/4 --rounds 3

Each size gets a synthetic scene folder (7 float32 bands at 10 m, smooth terrain-like fields plus noise,
a NaN stripe of nodata) written block by block, and one predict run in a fresh child process, so the
peak RSS printed is that run's own (``os.wait4``), imports and the network included. The run is the
whole product path: GeoTIFF in -> probability.tif, mask.tif, landslides.gpkg, overviews, on the torch
engine in the precision asked for (``--engine torch``: no ONNX engines built or timed). The bundle
is a randomly initialised U-Net whose head is scaled so about 2 % of the scene comes out landslide (speed
of the network does not depend on the weights; a random network traces tens of thousands of polygons).
``--trained`` instead predicts ``slidemap synth`` scenes (prepared by ``slidemap prepare``) with a U-Net
trained 8 epochs on another synthetic area through the CLI, so the mask and polygons are a real model's.
The table gives each part's share of the run: network and reading (with the labelling and writing that
run beside it in the writer thread), mask and polygons (the second pass), overviews.

What to look for: peak RSS should stay flat from 2,000² to 10,000² (streaming: memory depends on the
scene width and tile size, not on its height) and well under 2 GiB; Mpx/s should not fall with size.
Throughput on a shared 2-core machine depends on the load, printed beside the figures; the child sets
OpenMP's waiting as the CLI does (``slidemap.runtime``; ``--omp-active``: libgomp's default spin), and
``Mpx/CPU-s`` x cores is the idle-machine figure at perfect thread scaling (an upper bound).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GiB, format_table, load_average, machine_line  # noqa: E402

from slidemap.formats.bundle import BundleMeta  # noqa: E402
from slidemap.formats.files import atomic_dir  # noqa: E402
from slidemap.formats.gdal import gtiff_profile  # noqa: E402
from slidemap.formats.scene import BandStats, SceneMeta  # noqa: E402
from slidemap.nn.bundle import save_bundle  # noqa: E402
from slidemap.nn.models import build_model  # noqa: E402
from slidemap.raster.tiling import BATCH, OVERLAP, TILE, AxisTiling, wide_tile  # noqa: E402

BANDS = ["blue", "green", "red", "red_edge", "nir", "dem", "slope"]
PIXEL_M = 10.0


def write_scene(folder: Path, size: int, seed: int = 0) -> Path:
    """A scene folder as ``slidemap prepare`` writes it (stack, mask, empty areas, scene.json), streamed."""
    import geopandas as gpd
    import rasterio
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.windows import Window

    crs, transform = CRS.from_epsg(32645), Affine(PIXEL_M, 0, 400000, 0, -PIXEL_M, 3000000)
    rng = np.random.default_rng(seed)
    phases = rng.uniform(0, 2 * np.pi, (len(BANDS), 3))
    stripe = (size // 3, size // 3 + max(size // 100, 1))  # rows of nodata
    with atomic_dir(folder, "scene.json") as tmp:
        stack_profile = gtiff_profile(size, size, len(BANDS), "float32", crs, transform, nodata=float("nan"))
        mask_profile = gtiff_profile(size, size, 1, "uint8", crs, transform, nodata=255)
        with rasterio.open(tmp / "stack.tif", "w", **stack_profile) as st, \
                rasterio.open(tmp / "mask.tif", "w", **mask_profile) as mk:
            for i, b in enumerate(BANDS, start=1):
                st.set_band_description(i, b)
            for r0 in range(0, size, 512):
                h = min(512, size - r0)
                yy, xx = np.mgrid[r0:r0 + h, 0:size].astype(np.float32)
                block = np.empty((len(BANDS), h, size), np.float32)
                for k, (p0, p1, p2) in enumerate(phases):
                    field = (np.sin(xx / 97 + p0) + np.sin(yy / 61 + p1) + 0.5 * np.sin((xx + yy) / 23 + p2))
                    block[k] = np.round(1000 + 300 * field + rng.normal(0, 20, (h, size)))
                nodata = np.zeros((h, size), bool)
                lo, hi = max(stripe[0] - r0, 0), min(stripe[1] - r0, h)
                if lo < hi:
                    nodata[lo:hi] = True
                block[:, nodata] = np.nan
                st.write(block, window=Window(0, r0, size, h))
                mk.write(np.where(nodata, 255, 0).astype(np.uint8)[None], window=Window(0, r0, size, h))
        gpd.GeoDataFrame({"name": [], "role": []}, geometry=[], crs=crs).to_file(tmp / "areas.gpkg",
                                                                                  layer="areas")
        stats = {b: BandStats(mean=1000.0, std=300.0, min=0.0, max=2000.0) for b in BANDS}
        SceneMeta(bands=BANDS, image_bands=BANDS[:5], terrain=BANDS[5:], crs=crs.to_wkt(),
                  transform=list(transform)[:6], width=size, height=size, pixel_size_m=(PIXEL_M, PIXEL_M),
                  stats=stats, areas=[], inventory=None).save(tmp / "scene.json")
    return folder


def write_bundle(path: Path, filters: int, seed: int = 0) -> Path:
    """A random U-Net whose head makes ~2 % of a standardised synthetic scene come out as landslide."""
    import torch

    torch.manual_seed(seed)
    net = build_model("unet", in_channels=len(BANDS), filters=filters).eval()
    noise = np.random.default_rng(seed).normal(size=(1, len(BANDS), 256, 256)).astype(np.float32)
    x = torch.from_numpy(noise)
    x = torch.nn.functional.avg_pool2d(x, 5, 1, 2) * 3  # smooth, like the scene's fields
    with torch.no_grad():
        logits = net(x).numpy()
        lo, hi = np.percentile(logits, [16, 84])
        scale = 6.0 / max(hi - lo, 1e-6)
        net.head.weight.mul_(scale)
        net.head.bias.mul_(scale)
        net.head.bias.sub_(float(np.percentile(net(x).numpy(), 98)))
    stats = {b: BandStats(mean=1000.0, std=300.0) for b in BANDS}
    return save_bundle(path, net, BundleMeta(architecture="unet", model_args=net.config, bands=BANDS, stats=stats,
                                             patch_size=128, thresholds={"0.5": 0.5, "best": 0.5},
                                             training={"bench": True})).path


EXE = str(Path(sys.executable).with_name("slidemap"))


def _cli(*args: str) -> None:
    subprocess.run([EXE, *args], check=True, stdout=subprocess.DEVNULL)


def synth_scene(folder: Path, size: int, seed: int = 6) -> Path:
    """A ``slidemap synth`` area of ``size``² px prepared into a scene folder (what ``--trained`` predicts)."""
    raw = folder.with_name(folder.name + "-raw")
    _cli("synth", str(raw), "--seed", str(seed), "--size", str(size), "--landslides", str(max(size**2 // 20000, 10)))
    _cli("prepare", "--image", str(raw / "image.tif"), "--dem", str(raw / "dem.tif"), "--inventory",
         str(raw / "inventory.gpkg"), "--areas", str(raw / "areas.gpkg"), "--out", str(folder))
    shutil.rmtree(raw)
    return folder


def trained_run(root: Path, filters: int) -> Path:
    """A U-Net trained 8 epochs (fp32, BCE + Dice) on a 1,024² synthetic area through the CLI; kept in ``root``."""
    run = root / "run"
    if (run / "bundle.pt").exists():
        return run
    synth_scene(root / "scene", 1024, seed=5)
    _cli("sample", str(root / "scene"), "--size", "64", "--overlap", "0.2", "--out", str(root / "chips"))
    _cli("train", str(root / "chips"), "--out", str(run), "--epochs", "8", "--precision", "32", "--no-progress",
         "--loss", "bce+dice", "--filters", str(filters))
    return run


def network_pixels(size: int, tile: int, overlap: int, batch: int) -> float:
    """Pixels the network computes per scene pixel of a size² scene (the strip engine's plan, not timed)."""
    rows, cols = AxisTiling.plan(size, tile, overlap), AxisTiling.plan(size, wide_tile(tile, overlap, batch), overlap)
    return len(rows.offsets) * rows.tile * len(cols.offsets) * cols.tile / size**2


def shares(timings: dict[str, float]) -> dict[str, str]:
    """Each part's share of the prediction's timed parts, in per cent."""
    total = sum(timings.values()) or 1.0
    return {f"{k} %": f"{100 * v / total:.0f}" for k, v in timings.items()}


CHILD = """
import sys, time
import slidemap.runtime
slidemap.runtime.configure()  # as the CLI does, before torch loads
from slidemap.stages.predict import PredictOptions, run
t = time.perf_counter()
run(PredictOptions(model=sys.argv[1], out=sys.argv[2], scene=sys.argv[3], tile=int(sys.argv[4]),
                   overlap=int(sys.argv[5]), batch_size=int(sys.argv[6]), device="cpu", precision=sys.argv[7],
                   engine="torch"))
print(time.perf_counter() - t)
"""


def run_predict(bundle: Path, scene: Path, out: Path, tile: int, overlap: int, batch: int,
                precision: str = "32", omp_active: bool = False) -> dict:
    """One ``predict`` in a child process; its wall time, CPU time, peak RSS and prediction.json."""
    env = dict(os.environ)
    if omp_active:
        env.setdefault("GOMP_SPINCOUNT", "300000")  # libgomp's own default, what torch gets alone
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(bundle), str(out), str(scene), str(tile),
                             str(overlap), str(batch), precision], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    inner = float(proc.stdout.read().decode().strip().splitlines()[-1]) if status == 0 else float("nan")
    if status != 0:
        raise SystemExit(f"predict failed on {scene} (status {status}); run it by hand to see why")
    meta = json.loads((out / "prediction.json").read_text())
    return {"wall_s": wall, "predict_s": inner, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_gib": usage.ru_maxrss * 1024 / GiB, "meta": meta}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4096,10000", help="scene sides in px, comma-separated")
    parser.add_argument("--precision", default="32,bf16", help="CPU inference precisions to run, "
                        "comma-separated (32 and/or bf16)")
    parser.add_argument("--omp-active", action="store_true", help="libgomp's default spin instead of the CLI's")
    parser.add_argument("--trained", action="store_true", help="synth scenes and a trained model (see above)")
    parser.add_argument("--filters", type=int, default=16, help="U-Net initial filters")
    parser.add_argument("--tilings", default=f"{TILE}/{OVERLAP}/{BATCH}",
                        help="tile/overlap/batch-size triples, comma-separated (default: predict's defaults)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of every tiling, interleaved round-robin")
    parser.add_argument("--workdir", type=Path, default=None, help="where scenes go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the scenes (reused by the next run)")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_predict-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# bench_predict: {machine_line()}")
    tilings = [tuple(int(v) for v in t.split("/")) for t in args.tilings.split(",")]
    print(f"# U-Net {args.filters} filters, {len(BANDS)} bands, tile/overlap/batch {args.tilings}, CPU")
    bundle = trained_run(work / "trained", args.filters) if args.trained else \
        write_bundle(work / f"bundle_unet{args.filters}.pt", args.filters)
    rows = []
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            scene = work / f"scene_{size}"
            if not (scene / "scene.json").exists():
                t = time.perf_counter()
                synth_scene(scene, size) if args.trained else write_scene(scene, size)
                print(f"# wrote {scene} in {time.perf_counter() - t:.0f} s")
            runs = [(p, t) for _ in range(args.rounds) for p in args.precision.split(",") for t in tilings]
            for precision, (tile, overlap, batch) in runs:
                out = work / f"pred_{size}_{precision}"
                shutil.rmtree(out, ignore_errors=True)
                r = run_predict(bundle, scene, out, tile, overlap, batch, precision, args.omp_active)
                m = r["meta"]
                mpx = size * size / 1e6
                cores = os.cpu_count() or 1
                rows.append({"scene px": f"{size}²", "tiling": f"{tile}/{overlap}/{batch}",
                             "network px / px": network_pixels(size, tile, overlap, batch),
                             "precision": precision, "seconds": r["predict_s"],
                             "Mpx/s": mpx / r["predict_s"], "km²/s @10 m": mpx * PIXEL_M**2 / r["predict_s"],
                             "Mpx/CPU-s": mpx / r["cpu_s"], f"x{cores} cores Mpx/s": cores * mpx / r["cpu_s"],
                             "peak RSS GiB": r["peak_rss_gib"], "network+IO s": m["timings_s"]["predict"],
                             "mask+polygons s": m["timings_s"]["mask_and_polygons"],
                             "overviews s": m["timings_s"]["overviews"], "landslides": m["landslides"],
                             **shares(m["timings_s"]),
                             "load": load_average()})
                print(format_table(rows[-1:]), flush=True)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(format_table(rows))
    if args.rounds > 1:  # the median of each tiling's interleaved runs
        keys = sorted({(r["scene px"], r["precision"], r["tiling"]) for r in rows}, key=str)
        print(format_table([{"scene px": k[0], "precision": k[1], "tiling": k[2], "median Mpx/s": float(np.median(
            [r["Mpx/s"] for r in rows if (r["scene px"], r["precision"], r["tiling"]) == k]))} for k in keys]))


if __name__ == "__main__":
    main()
