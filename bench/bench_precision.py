"""Does bf16 cost accuracy? fp32 against bf16 training + prediction on the demo's data, seed by seed.

    python bench/bench_precision.py                      # demo-sized scene, seeds 0 and 1
    python bench/bench_precision.py --seeds 0,1,2,3      # more seeds: the spread between seeds is large
    python bench/bench_precision.py --fast               # the CI demo's smaller scene and 20 epochs

The data are the demo's (`slidemap.demo.DEFAULT`: synthetic 1,536² scene, 120 landslides, 64 px grid
chips with 25 % overlap), made once. For each seed the same chips are trained on in fp32 and in bf16
autocast (U-Net-16, loss and early stopping as in the demo), and each bundle predicts the scene in its
own precision (torch engine, the bundle's ``best`` threshold and no post-processing, so that only the
precision differs) and is evaluated on the two test areas. This is the evidence behind ``--precision auto``
choosing bf16 on CPUs that have it: compare the validation and test F1 of the two precisions with the
spread between seeds.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table, load_average, machine_line  # noqa: E402

from slidemap.demo import DEFAULT, FAST  # noqa: E402
from slidemap.formats.prediction import SceneMetrics  # noqa: E402
from slidemap.sources.synth import synthesize  # noqa: E402
from slidemap.stages import predict, prepare, sample, train  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    p.add_argument("--fast", action="store_true", help="the CI demo's configuration")
    p.add_argument("--workdir", type=Path, help="keep the files here (default: a temporary folder)")
    args = p.parse_args(argv)

    cfg = FAST if args.fast else DEFAULT
    print(f"# bench_precision  {machine_line()}")
    print(f"# command: {' '.join(sys.argv)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        work = args.workdir or Path(tmp)
        data = synthesize(work / "data", seed=0, size=cfg.size, landslides=cfg.landslides)
        scene = prepare.run(prepare.PrepareOptions(images=[data["image"]], out=work / "scene", dem=data["dem"],
                                                   inventory=data["inventory"], areas=data["areas"]))
        chips = sample.run(sample.SampleOptions(scene=scene.path, out=work / "chips", method="grid",
                                                size=cfg.patch, overlap=cfg.overlap, seed=0))
        for seed in (int(s) for s in args.seeds.split(",")):
            for train_precision, predict_precision in (("32", "32"), ("bf16-mixed", "bf16")):
                run = work / f"run_{seed}_{predict_precision}"
                t0 = time.perf_counter()
                result = train.run(train.TrainOptions(
                    chips=[chips.path], out=run, model="unet", filters=cfg.filters, batch_size=cfg.batch_size,
                    epochs=cfg.epochs, patience=cfg.patience, loss=cfg.loss, seed=seed, precision=train_precision,
                    progress=False, learn_postprocess=False))  # the predictions below use no post-processing
                train_s = time.perf_counter() - t0
                with open(run / "metrics.csv", newline="") as f:
                    history = list(csv.DictReader(f))
                pred = predict.run(predict.PredictOptions(
                    model=result.bundle, out=work / f"pred_{seed}_{predict_precision}", scene=scene.path,
                    evaluate=True, precision=predict_precision, engine="torch", threshold="best",
                    postprocess="none"))
                assert pred.evaluation is not None and isinstance(pred.evaluation.metrics, SceneMetrics)
                areas = {a.area: a for a in pred.evaluation.metrics.areas}
                found = sum(a.objects["landslides_found"] for a in areas.values())
                total = sum(a.objects["landslides_total"] for a in areas.values())
                rows.append({
                    "seed": seed, "precision": predict_precision, "epochs": len(history),
                    "train s": train_s, "best val F1": max(float(r["val_f1"]) for r in history),
                    "last val F1": float(history[-1]["val_f1"]),
                    **{f"test F1 {name}": a.scores.f1 for name, a in areas.items()},
                    "found": f"{found}/{total}", "load": load_average(),
                })
                print(format_table(rows[-1:]), flush=True)
    print("\n" + format_table(rows))


if __name__ == "__main__":
    main()
