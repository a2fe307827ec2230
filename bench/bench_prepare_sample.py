"""Prepare and sample throughput (Mpx/s) on a synthetic scene, against one training epoch on its chips.

    python bench/bench_prepare_sample.py                 # 4,096² scene at 5 m, 128 px grid chips
    python bench/bench_prepare_sample.py --size 2048 --chip-size 64 --overlap 0.5
    python bench/bench_prepare_sample.py --quick         # smoke run: 512² scene, 64 px chips

The scene comes from ``slidemap.sources.synth.synthesize`` (its time is printed, not judged). ``prepare`` is
timed from the GeoTIFF/GeoPackage inputs to the complete scene folder and reported per scene pixel;
``sample`` per scene pixel and per chip pixel written. The epoch is one epoch of
``slidemap.stages.train.run`` (U-Net-16, batch 16, the trainer's defaults) on the very chips sampled, so the
target "prepare + sample < 10 % of an epoch" is a ratio measured in one run on one machine.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GiB, format_table, load_average, machine_line, peak_rss_bytes, reset_peak_rss  # noqa: E402

from slidemap.sources.synth import synthesize  # noqa: E402
from slidemap.stages import prepare, sample, train  # noqa: E402


def timed(fn, *args, **kwargs):
    """(result, seconds, peak RSS bytes during the call)."""
    reset_peak_rss()
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t0, peak_rss_bytes()


def epoch_seconds(run: Path) -> tuple[float, float]:
    """(training seconds, training + validation seconds) of the first epoch, from the run's timing.csv."""
    with open(run / "timing.csv", newline="") as f:
        first = next(csv.DictReader(f))
    return float(first["train_seconds"]), float(first["seconds"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--size", type=int, default=4096, help="synthetic scene width and height in px")
    p.add_argument("--pixel-size", type=float, default=5.0, help="scene pixel size in metres")
    p.add_argument("--chip-size", type=int, default=128)
    p.add_argument("--overlap", type=float, default=0.0, help="grid overlap fraction")
    p.add_argument("--precision", choices=["32", "bf16-mixed"], default="32", help="of the training epoch")
    p.add_argument("--workdir", type=Path, help="keep the files here (default: a temporary folder)")
    p.add_argument("--quick", action="store_true", help="smoke run: 512² scene, 64 px chips")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.chip_size = 512, 64

    print(f"# bench_prepare_sample  {machine_line()}")
    print(f"# command: {' '.join(sys.argv)}")
    with tempfile.TemporaryDirectory(prefix="bench-prep-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        n = args.size
        landslides = max(20, int(120 * (n / 2048) ** 2))
        files, synth_s, synth_rss = timed(synthesize, work / "synth", seed=0, size=n,
                                          pixel_size=args.pixel_size, landslides=landslides)
        scene, prep_s, prep_rss = timed(prepare.run, prepare.PrepareOptions(
            images=[files["image"]], out=work / "scene", dem=files["dem"], inventory=files["inventory"],
            areas=files["areas"]))
        chips, samp_s, samp_rss = timed(sample.run, sample.SampleOptions(
            scene=work / "scene", out=work / "chips", method="grid", size=args.chip_size, overlap=args.overlap))
        n_chips = chips.meta.count
        chip_px = n_chips * args.chip_size**2
        _, train_s, train_rss = timed(train.run, train.TrainOptions(
            chips=[work / "chips"], out=work / "run", model="unet", filters=16, batch_size=16, epochs=1,
            patience=0, seed=0, device="cpu", precision=args.precision, progress=False))
        epoch_train_s, epoch_s = epoch_seconds(work / "run")
        mpx = n * n / 1e6
        rows = [
            {"stage": "synth (not judged)", "seconds": synth_s, "Mpx/s": mpx / synth_s, "peak RSS GiB":
             synth_rss / GiB, "note": f"{n}² px, {len(scene.meta.bands)} bands after prepare"},
            {"stage": "prepare", "seconds": prep_s, "Mpx/s": mpx / prep_s, "peak RSS GiB": prep_rss / GiB,
             "note": f"scene {n}² px"},
            {"stage": "sample (grid)", "seconds": samp_s, "Mpx/s": mpx / samp_s,
             "peak RSS GiB": samp_rss / GiB,
             "note": f"{n_chips} chips of {args.chip_size} px = {chip_px / 1e6:.1f} Mpx "
                     f"({chip_px / 1e6 / samp_s:.1f} chip-Mpx/s)"},
            {"stage": "train 1 epoch", "seconds": epoch_s, "Mpx/s": chip_px / 1e6 / epoch_s,
             "peak RSS GiB": train_rss / GiB, "note": f"training part {epoch_train_s:.1f} s; whole call "
                                                      f"{train_s:.1f} s; precision {args.precision}"},
        ]
        print("\n" + format_table(rows))
        share = (prep_s + samp_s) / epoch_s
        print(f"\nprepare + sample = {prep_s + samp_s:.1f} s = {100 * share:.1f} % of one training epoch "
              f"({epoch_s:.1f} s) on the same chips (target < 10 %); load {load_average()}")


if __name__ == "__main__":
    main()
