"""``slidemap demo``: the whole pipeline on the built-in synthetic study area.

synth -> prepare -> sample -> train -> predict -> evaluate, each step printed with what it wrote, ending
with the test-area metrics table and the paths of the maps. The default run is sized for a minute or so
on a 2-core CPU (README's performance table); ``--fast`` is a smaller run for CI.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from slidemap.stages.evaluate import EvaluateResult


@dataclass(frozen=True)
class DemoConfig:
    """One demo size: the scene, the chips, the network and its training schedule."""

    size: int  # synthetic scene width/height in pixels
    landslides: int
    patch: int
    overlap: float
    filters: int
    epochs: int
    batch_size: int
    patience: int
    loss: str = "bce+dice"


# BCE + Dice instead of plain BCE: with 2-3 % landslide pixels, plain BCE spent the first ~9 epochs
# predicting background only (validation F1 0 until epoch 10, 0.87 at 15); BCE + Dice found landslides from
# epoch 3-4 and reached 0.88-0.89 by epoch 9-10 on the same chips (docs/performance.md, "The demo").
DEFAULT = DemoConfig(size=1536, landslides=120, patch=64, overlap=0.25, filters=16, epochs=12, batch_size=16,
                     patience=0)
# --fast (CI's end-to-end test, floor 0.60 pooled test F1) keeps plain BCE: with BCE + Dice its 1,024² scene
# scored 0.653-0.683 (10, 12 and 20 epochs), against 0.787 measured for BCE at 20 epochs.
FAST = DemoConfig(size=1024, landslides=80, patch=64, overlap=0.25, filters=16, epochs=20, batch_size=16,
                  patience=0, loss="bce")


def run_demo(out: str | Path = "slidemap-demo", fast: bool = False, seed: int = 0) -> EvaluateResult:
    """Run every stage into ``out`` and return the evaluation (with its printable table)."""
    from slidemap.sources.synth import synthesize
    from slidemap.stages import predict, prepare, sample, train

    cfg = FAST if fast else DEFAULT
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(highlight=False, soft_wrap=True)
    t0 = time.perf_counter()

    def step(n: int, text: str) -> None:
        console.print(f"[bold]{n}/6[/bold] {text}  [dim]({time.perf_counter() - t0:.0f} s)[/dim]")

    step(1, f"synth: a {cfg.size}² px synthetic study area with {cfg.landslides} landslides")
    data = synthesize(out / "data", seed=seed, size=cfg.size, landslides=cfg.landslides)
    for role, p in data.items():
        console.print(f"      {role:9s} {p}")

    step(2, "prepare: co-register image + DEM (bilinear), slope, rasterised inventory, named areas")
    scene = prepare.run(prepare.PrepareOptions(images=[data["image"]], out=out / "scene", dem=data["dem"],
                                               inventory=data["inventory"], areas=data["areas"]))
    console.print(f"      scene     {scene.path}  bands {', '.join(scene.meta.bands)}")

    step(3, f"sample: {cfg.patch} px grid chips with {cfg.overlap:.0%} overlap inside the train area")
    chips = sample.run(sample.SampleOptions(scene=scene.path, out=out / "chips", method="grid",
                                            size=cfg.patch, overlap=cfg.overlap, seed=seed))
    console.print(f"      chips     {chips.path}  ({chips.meta.count} chips)")

    step(4, f"train: U-Net, {cfg.filters} filters, up to {cfg.epochs} epochs, {cfg.loss.upper()} + Adam, "
            f"augmented")
    shutil.rmtree(out / "run", ignore_errors=True)  # the demo owns its folder: always a fresh run
    run = train.run(train.TrainOptions(chips=[chips.path], out=out / "run", model="unet", filters=cfg.filters,
                                       batch_size=cfg.batch_size, epochs=cfg.epochs, patience=cfg.patience,
                                       loss=cfg.loss, seed=seed))
    how = run.summary.precision_choice
    console.print(f"      bundle    {run.bundle}  ({run.summary.epochs_run} epochs, "
                  f"{run.summary.chips_per_s} chips/s, {how.get('setting', run.summary.precision)} "
                  f"{how.get('how', '')})")

    step(5, "predict + evaluate: tiled, blended whole-scene prediction; metrics per test area")
    pred = predict.run(predict.PredictOptions(model=run.bundle, out=out / "prediction", scene=scene.path,
                                              evaluate=True))
    step(6, f"done (network: {pred.meta.engine_choice.get('setting', pred.meta.engine)}, "
            f"{pred.meta.engine_choice.get('how', '')})")
    evaluation = pred.evaluation
    assert evaluation is not None  # predict ran with evaluate=True
    console.print(evaluation.table)
    for name in ("probability.tif", "mask.tif", "landslides.gpkg"):
        console.print(f"      {name:16s} {pred.path / name}")
    for key, path in evaluation.files.items():
        console.print(f"      {key:16s} {path}")
    return evaluation
