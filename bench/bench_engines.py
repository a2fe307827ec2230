"""slidemap beside study 000's framework (Keras / TensorFlow), in one sitting: the two speed ratios.

    python bench/bench_engines.py --keras-python /work/keras-venv/bin/python
    python bench/bench_engines.py --keras-python ... --keep /tmp/engines   # reuse the scene and the run

- **training**: chips/s of U-Net-16 training steps (128 px, batch 16, the scene's 7 bands, Adam + BCE) in the
  precision ``--precision auto`` takes on this machine (and fp32 beside it), timed round-robin with Keras's
  ``train_on_batch`` of the same network, batch, patch and bands, so load hits both alike;
- **prediction**: ``slidemap predict`` end to end (GeoTIFF in -> probability.tif, mask.tif, landslides.gpkg,
  overviews) of a synthetic scene with a trained U-Net-16, Mpx/s, beside Keras's network alone on one
  1,024² pass (study 000 fed its test areas in one pass) taken just before and after (the fastest of each);
- **the ceiling**: slidemap's network alone over the same scene's passes at predict's default tiling (no
  reading, blending, labelling or writing), Mpx/s of scene, beside Keras's pass again: the ratio end to end
  cannot exceed it.

The CPU class decides the targets: a CPU with fast bf16 (``auto`` takes bf16: AMX) should train >= 3x and
predict end to end >= 1.5x Keras; one without >= 1.4x and >= 1.2x. Keras runs in its own virtual
environment (TensorFlow and torch do not share one here): ``python3 -m venv /work/keras-venv &&
/work/keras-venv/bin/pip install tensorflow-cpu keras``. Nothing here is a test.
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
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table, load_average  # noqa: E402

TARGETS = {True: (3.0, 1.5), False: (1.4, 1.2)}
"""(training, prediction) ratio to Keras by CPU class: fast bf16 or not."""


class KerasServer:
    """bench/keras_unet.py --serve in its own venv: one timed Keras call per request, interleaved with ours."""

    def __init__(self, python: str, bands: int, ours: dict[str, str]) -> None:
        script = Path(__file__).resolve().parent / "keras_unet.py"
        # Keras runs as it would on its own: without slidemap's process settings (``ours``)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and k not in ours}
        env["TF_CPP_MIN_LOG_LEVEL"] = "3"
        self.proc = subprocess.Popen([python, str(script), "--bands", str(bands), "--serve"], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, bufsize=1)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        self.framework = json.loads(self.stdout.readline())["framework"]

    def seconds(self, cmd: str) -> float:
        self.stdin.write(cmd + "\n")
        return float(self.stdout.readline())

    def close(self) -> None:
        self.stdin.write("quit\n")
        self.stdin.close()
        self.proc.wait(timeout=60)


def setup(work: Path, scene_size: int, epochs: int) -> dict[str, Path]:
    """A synthetic scene, 128 px chips and a U-Net-16 trained on them (kept in ``work``)."""
    from slidemap.sources.synth import synthesize
    from slidemap.stages import prepare, sample, train

    if (work / "run" / "bundle.pt").is_file():
        return {"scene": work / "scene", "run": work / "run"}
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data = synthesize(work / "data", seed=0, size=scene_size, landslides=max(40, scene_size // 12))
    scene = prepare.run(prepare.PrepareOptions(images=[data["image"]], out=work / "scene", dem=data["dem"],
                                               inventory=data["inventory"], areas=data["areas"]))
    chips = sample.run(sample.SampleOptions(scene=scene.path, out=work / "chips", size=128, overlap=0.25))
    run = train.run(train.TrainOptions(chips=[chips.path], out=work / "run", filters=16, epochs=epochs,
                                       patience=0, progress=False, loss="bce+dice", min_chips=1))
    print(f"setup: {scene_size}² scene, {chips.meta.count} chips of 128 px, U-Net-16 trained {epochs} epochs "
          f"(val F1 {run.summary.val_f1_at_best})")
    return {"scene": scene.path, "run": run.run}


def training_rates(bands: int, precisions: list[str], server: KerasServer | None,
                   seconds: float) -> dict[str, float]:
    """Chips/s of slidemap's training step per precision and of Keras's, round-robin for ``seconds``."""
    import torch

    from slidemap.nn.device import AUTOCAST_DTYPE
    from slidemap.nn.losses import masked_bce
    from slidemap.nn.models import build_model

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, bands, 128, 128, generator=gen).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(16, 1, 128, 128, generator=gen) > 0.9).to(torch.uint8)[:, 0]

    def step_of(precision: str):  # the step SegmentationTask takes: forward, masked BCE, backward, fused Adam
        net = build_model("unet", in_channels=bands, filters=16).to(memory_format=torch.channels_last).train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
        dtype = AUTOCAST_DTYPE[precision]

        def step() -> float:
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                loss = masked_bce(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return 16.0

        return step

    steps = {f"slidemap {p}": step_of(p) for p in precisions}
    if server:
        steps["keras"] = lambda: (server.seconds("train") > -1) * 16.0
    for fn in steps.values():  # warm-up: kernels chosen, memory touched
        fn()
    chips, spent = dict.fromkeys(steps, 0.0), dict.fromkeys(steps, 0.0)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or min(chips.values()) < 48:
        for k, fn in steps.items():
            t0 = time.perf_counter()
            chips[k] += fn()
            spent[k] += time.perf_counter() - t0
    return {k: chips[k] / spent[k] for k in steps}


def prediction_rates(paths: dict[str, Path], out: Path, server: KerasServer | None,
                     repeats: int) -> tuple[float, float | None]:
    """Best end-to-end Mpx/s of ``slidemap predict`` (its own CLI, as a user runs it), and Keras's one-pass Mpx/s
    taken around each repeat."""
    exe = str(Path(sys.executable).with_name("slidemap"))
    folder = out / "pred"

    def predict_once() -> float:
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run([exe, "predict", str(paths["run"]), "--scene", str(paths["scene"]), "--out", str(folder)],
                       check=True, stdout=subprocess.DEVNULL)
        return float(json.loads((folder / "prediction.json").read_text())["mpx_per_s"])

    return best_beside_keras(predict_once, server, repeats)


def best_beside_keras(once: Callable[[], float], server: KerasServer | None,
                      repeats: int) -> tuple[float, float | None]:
    """The best of ``repeats`` calls of ``once`` (Mpx/s), and the best of Keras's one 1,024² pass (Mpx/s) taken
    just before and after each call: the fastest of each, so noise favours neither side."""
    best, keras_rates = 0.0, []
    for _ in range(repeats):
        if server:
            keras_rates.append(1.048576 / server.seconds("infer1024"))
        best = max(best, once())
        if server:
            keras_rates.append(1.048576 / server.seconds("infer1024"))
    return best, (max(keras_rates) if keras_rates else None)


def network_rate(paths: dict[str, Path], server: KerasServer | None, repeats: int) -> tuple[float, float | None]:
    """Mpx/s of slidemap's network alone over the scene's passes at predict's default tiling (no reading, blending
    or writing: the ceiling of the end-to-end rate), and Keras's one-pass Mpx/s taken around each repeat."""
    import numpy as np

    from slidemap.nn.bundle import load_bundle
    from slidemap.nn.inference import TileRunner
    from slidemap.raster.tiling import BATCH, OVERLAP, TILE, AxisTiling, wide_tile

    size = json.loads((paths["scene"] / "scene.json").read_text())
    height, width, bands = int(size["height"]), int(size["width"]), len(size["bands"])
    bundle = load_bundle(paths["run"] / "bundle.pt")
    runner = TileRunner(bundle.build_model(), "cpu", "auto")
    rows = AxisTiling.plan(height, TILE, OVERLAP)
    cols = AxisTiling.plan(width, wide_tile(TILE, OVERLAP, BATCH), OVERLAP)
    passes = len(rows.offsets) * len(cols.offsets)
    # channels-last, as the strip engine hands tiles over
    x = np.random.default_rng(0).standard_normal((1, rows.tile, cols.tile, bands), dtype=np.float32)
    x = x.transpose(0, 3, 1, 2)
    runner(x)  # warm-up: kernels chosen for this shape

    def passes_once() -> float:
        t0 = time.perf_counter()
        for _ in range(passes):
            runner(x)
        return height * width / 1e6 / (time.perf_counter() - t0)

    return best_beside_keras(passes_once, server, repeats)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keras-python", help="Python of a venv with tensorflow-cpu and keras")
    ap.add_argument("--keep", type=Path, help="folder to keep the scene and run in between runs")
    ap.add_argument("--scene-size", type=int, default=3072)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=20.0, help="round-robin time of the training steps")
    ap.add_argument("--repeats", type=int, default=2, help="end-to-end predictions (the fastest is kept)")
    a = ap.parse_args(argv)
    import torch

    from slidemap.nn.device import choose_precision, cpu_name, versions
    from slidemap.runtime import configure

    process_env = configure()  # as the CLI: the allocator's thresholds here, both settings in its child processes

    auto = choose_precision("auto", "cpu")
    fast_bf16 = auto.precision == "bf16"
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; "
          + ", ".join(f"{k} {v}" for k, v in versions().items()))
    print(f"--precision auto: {auto.precision} ({auto.why}); class: {'fast bf16' if fast_bf16 else 'no fast bf16'}")
    root = a.keep or Path(tempfile.mkdtemp(prefix="slidemap-engines-"))
    paths = setup(root / "data", a.scene_size, a.epochs)
    bands = len(json.loads((paths["scene"] / "scene.json").read_text())["bands"])
    server = KerasServer(a.keras_python, bands, process_env) if a.keras_python else None
    print(f"load before: {load_average()}" + (f"; beside {server.framework}" if server else ""))
    precisions = ["32"] + (["bf16"] if fast_bf16 else [])
    train = training_rates(bands, precisions, server, a.seconds)
    e2e, keras_pass = prediction_rates(paths, root, server, a.repeats)
    net, keras_net = network_rate(paths, server, a.repeats)
    if server:
        server.close()
    print(f"load after: {load_average()}")
    target_train, target_predict = TARGETS[fast_bf16]
    ours = train[f"slidemap {auto.precision}"]
    rows = [{"what": f"training chips/s, slidemap {p}", "value": round(r, 1)} for p, r in
            ((k.split()[-1], v) for k, v in train.items() if k != "keras")]
    rows.append({"what": "prediction end to end Mpx/s, slidemap (auto)", "value": round(e2e, 3)})
    rows.append({"what": "network alone over the scene's passes Mpx/s, slidemap (auto)", "value": round(net, 3)})
    if server:
        keras_train = train["keras"]
        rows.append({"what": "training chips/s, Keras fp32", "value": round(keras_train, 1)})
        rows.append({"what": "network alone Mpx/s, Keras one 1,024² pass", "value": round(keras_pass or 0, 3)})
        rows.append({"what": f"training ratio (target >= {target_train})", "value": round(ours / keras_train, 2)})
        rows.append({"what": f"prediction ratio (target >= {target_predict})",
                     "value": round(e2e / keras_pass, 2) if keras_pass else ""})
        rows.append({"what": "ceiling: slidemap's network alone / Keras (taken around it)",
                     "value": round(net / keras_net, 2) if keras_net else ""})
    print(format_table(rows))
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
