"""Do pre-event change layers help? The same small U-Net trained with and without them, on one synthetic site.

    python bench/bench_change_layers.py                     # defaults: 768 px site, 15 epochs, seed 0
    python bench/bench_change_layers.py --size 1024 --epochs 30 --seeds 0,1,2
    python bench/bench_change_layers.py --quick             # smoke run (a few minutes on 2 cores)

The site is ``slidemap synth --pre-event`` with extra bare fields (``--bare-fields``): bare fields, roads
and settlements look like fresh scars in the post-event image, but they are there before the event too,
while the landslide scars are not. One scene is prepared with ``--indices ndvi,brightness --pre-image``;
the runs train the same network (architecture, filters, epochs, seed, chips) on

- ``without``: the image bands, ndvi, brightness and slope;
- ``dndvi``: those plus the NDVI change layer ``dndvi``;
- ``all``: those plus the pre-event bands (``pre_*``) and both change layers (``dndvi``, ``dbrightness``);

each predicts the scene and is evaluated on the test areas (pixel precision / recall / F1, pooled, at the
validation-optimal threshold, and the predicted objects that touch no landslide). Prints a Markdown table,
the CPU and the command. Figures vary with the seed and the load of a shared machine (printed beside);
the benchmark is the printed comparison, never a timed assertion.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table, machine_line  # noqa: E402

from slidemap.sources.synth import synthesize  # noqa: E402
from slidemap.stages import evaluate, predict, prepare, sample, train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=768, help="site width and height in pixels (5 m)")
    ap.add_argument("--landslides", type=int, default=90)
    ap.add_argument("--bare-fields", type=float, default=4.0, help="factor on the bare fields (look-alikes)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--filters", type=int, default=8)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--seeds", default="0", help="training seeds, comma-separated (the site uses seed 0)")
    ap.add_argument("--variants", default="without,dndvi,all", help="layer sets to train on (see above)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="keep the work folder here (default: temporary)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 512 px, 4 epochs")
    a = ap.parse_args(argv)
    if a.quick:
        a.size, a.landslides, a.epochs = 512, 50, 4
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="bench_change_") as tmp:
        work = a.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = run(work, a)
    print(format_table(rows))
    print(f"\nCPU: {machine_line()}")
    args = argv if argv is not None else sys.argv[1:]
    print("command: python bench/bench_change_layers.py " + " ".join(args))
    return 0


def run(work: Path, a: argparse.Namespace) -> list[dict]:
    t0 = time.perf_counter()
    site = work / "site"
    if not (site / "synth.json").is_file():
        synthesize(site, seed=0, size=a.size, landslides=a.landslides, bare_fields=a.bare_fields,
                   pre_event=True)
    scene = prepare.run(prepare.PrepareOptions(
        images=[site / "image.tif"], dem=site / "dem.tif", inventory=site / "inventory.gpkg",
        areas=site / "areas.gpkg", indices=["ndvi", "brightness"], pre_images=[site / "pre_image.tif"],
        out=work / "scene")).meta
    chips = sample.run(sample.SampleOptions(scene=work / "scene", out=work / "chips", size=a.patch,
                                            overlap=0.5)).meta
    print(f"site {a.size} px, {scene.inventory.landslides} landslides; scene bands {', '.join(scene.bands)}; "
          f"{chips.count} chips of {a.patch} px; prepared in {time.perf_counter() - t0:.0f} s", flush=True)
    base = [*scene.image_bands, "ndvi", "brightness", "slope"]
    variants = {"without": base, "dndvi": [*base, "dndvi"],
                "all": base + [b for b in scene.bands if b.startswith("pre_")] + ["dndvi", "dbrightness"]}
    rows = []
    for seed in (int(s) for s in a.seeds.split(",")):
        for name in a.variants.split(","):
            rows.append(one_run(work, name, variants[name], seed, a))
            print(f"  {rows[-1]}", flush=True)
    return rows


def one_run(work: Path, name: str, bands: list[str], seed: int, a: argparse.Namespace) -> dict:
    tag = f"{name}_{seed}"
    t0 = time.perf_counter()
    result = train.run(train.TrainOptions(
        chips=[work / "chips"], out=work / f"run_{tag}", bands=bands, filters=a.filters, epochs=a.epochs,
        patience=0, batch_size=16, seed=seed, progress=False, threads=a.threads, device="cpu"))
    seconds = time.perf_counter() - t0
    pred = predict.run(predict.PredictOptions(model=result.bundle, out=work / f"pred_{tag}",
                                              scene=work / "scene", device="cpu", tile=256, overlap=32))
    metrics = evaluate.run(evaluate.EvaluateOptions(pred=pred.path, truth=work / "scene")).metrics
    s, objects = metrics.all.scores, metrics.all.objects
    return {"layers": name, "bands": len(bands), "seed": seed, "epochs": result.summary.epochs_run,
            "threshold": round(result.summary.best_threshold, 3), "test P": round(s.precision, 3),
            "test R": round(s.recall, 3), "test F1": round(s.f1, 3),
            "objects": objects.get("predicted_objects"), "false alarms": objects.get("false_alarms"),
            "found": f"{objects.get('landslides_found')}/{objects.get('landslides_total')}",
            "train s": round(seconds)}


if __name__ == "__main__":
    sys.exit(main())
