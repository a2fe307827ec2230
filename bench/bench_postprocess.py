"""Does the post-processing learned on validation help? One model's test areas with and without it.

    python bench/bench_postprocess.py --run RUN --scene SCENE      # a trained run and its prepared scene
    python bench/bench_postprocess.py --demo-fast                  # runs `slidemap demo --fast` first

The same bundle predicts the scene twice: with ``--postprocess none`` (the bundle's pixel-F1 threshold
``best``, nothing else: what predict did before) and with the post-processing that training chose on the
validation chips (threshold, opening/closing, hole filling, minimum object size). Both are evaluated on
the scene's test areas (pooled): pixel precision / recall / F1, landslides found, predicted objects and
false alarms (objects touching no landslide). Prints a Markdown table, the chosen post-processing and the
machine; a comparison, never a timed assertion.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table, machine_line  # noqa: E402

from slidemap.nn.bundle import load_bundle  # noqa: E402
from slidemap.stages import evaluate, predict  # noqa: E402


def compare(run: Path, scene: Path, work: Path) -> list[dict]:
    rows = []
    for label, mode in (("threshold only (best)", "none"), ("learned post-processing", "auto")):
        out = work / f"pred_{mode}"
        predict.run(predict.PredictOptions(model=run, scene=scene, out=out, postprocess=mode))
        m = evaluate.run(evaluate.EvaluateOptions(pred=out, truth=scene)).metrics.all
        s, o = m.scores, m.objects
        rows.append({"prediction": label, "P": s.precision, "R": s.recall, "F1": s.f1, "IoU": s.iou,
                     "found": f"{o['landslides_found']}/{o['landslides_total']}",
                     "objects": o["predicted_objects"], "false alarms": o["false_alarms"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="run folder (or bundle.pt)")
    ap.add_argument("--scene", type=Path, help="the prepared scene with test areas and an inventory")
    ap.add_argument("--demo-fast", action="store_true", help="run `slidemap demo --fast` and use its run")
    ap.add_argument("--out", type=Path, default=None, help="keep the work folder here (default: temporary)")
    a = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="bench_post_") as tmp:
        work = a.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if a.demo_fast:
            from slidemap.demo import run_demo

            run_demo(work / "demo", fast=True)
            a.run, a.scene = work / "demo" / "run", work / "demo" / "scene"
        if a.run is None or a.scene is None:
            ap.error("give --run and --scene, or --demo-fast")
        pp = load_bundle(a.run).meta.postprocess
        print(f"post-processing chosen on validation: {pp.model_dump() if pp else None}")
        print(format_table(compare(a.run, a.scene, work)))
    print(f"\n{machine_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
