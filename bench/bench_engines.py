"""slidemap beside study 000's framework (Keras / TensorFlow), in one run: training chips/s per precision and
layout, prediction Mpx/s per engine (end to end and network only), each engine's validation F1, and what
``auto`` picks on this machine (marked ``*``).

    python bench/bench_engines.py --keras-python /work/keras-venv/bin/python
    python bench/bench_engines.py --section predict --keep         # reuse the scene, chips and run
    python bench/bench_engines.py --section predict --run slidemap-demo/run --scene slidemap-demo/scene
    python bench/bench_engines.py --section train --epochs 2

Setup (once, kept with ``--keep``): a synthetic study area (``slidemap.sources.synth``, 7 bands at 5 m,
``--scene-size`` px), prepared into a scene, cut into 128 px grid chips, and a U-Net-16 trained on them for
a few epochs, so the int8 engine can be calibrated on the run's own training chips and every engine's
validation F1 compared on its validation chips.

- **train**: ``slidemap.stages.train.run`` for one ``--epochs`` run per setting (fp32 and bf16 autocast,
  channels-last and NCHW), chips/s over the training part of the epochs (``summary.json``), then what
  ``--precision auto`` picks (its measured rates are in the cache, ``slidemap info``); Keras: the same
  U-Net, batch, patch and bands (``bench/keras_unet.py`` in its own virtual environment).
- **predict**: ``slidemap.stages.predict.run`` over the whole scene (GeoTIFF in -> probability.tif,
  mask.tif, landslides.gpkg, overviews) per engine, Mpx/s end to end; the network alone on 4 x 512² tiles
  per engine; Keras: the network alone, one 1,024² pass and 4 x 512² tiles.

Load on a shared machine moves every figure: the load average is printed before each section, and ratios
are only meaningful between rows of the same run. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table, load_average  # noqa: E402


def machine_lines() -> list[str]:
    from slidemap.nn.device import machine

    m = machine()
    return [f"CPU: {m['cpu']} ({m['vendor']} family {m['family']} model {m['model']}), flags "
            f"{', '.join(m['flags'])}, {os.cpu_count()} cores, {m['threads']} torch threads",
            "versions: " + ", ".join(f"{k} {m[k]}" for k in ("torch", "onnxruntime", "slidemap") if k in m)]


def setup(work: Path, scene_size: int, epochs: int, keep: bool) -> dict:
    from slidemap.sources.synth import synthesize
    from slidemap.stages import prepare, sample, train

    if (work / "run" / "bundle.pt").is_file() and keep:
        return {"scene": work / "scene", "chips": work / "chips", "run": work / "run"}
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    data = synthesize(work / "data", seed=0, size=scene_size, landslides=max(40, scene_size // 12))
    scene = prepare.run(prepare.PrepareOptions(images=[data["image"]], out=work / "scene", dem=data["dem"],
                                               inventory=data["inventory"], areas=data["areas"]))
    chips = sample.run(sample.SampleOptions(scene=scene.path, out=work / "chips", size=128, overlap=0.25))
    run = train.run(train.TrainOptions(chips=[chips.path], out=work / "run", filters=16, epochs=epochs,
                                       patience=0, progress=False, precision="32", channels_last=True,
                                       loss="bce+dice"))
    print(f"setup: {scene_size}² scene, {chips.meta.count} chips of 128 px, U-Net-16 trained {epochs} epochs "
          f"(val F1 {run.summary.val_f1_at_best}) in {time.perf_counter() - t0:.0f} s")
    return {"scene": scene.path, "chips": chips.path, "run": run.run}


def keras(python: str | None, bands: int, skip_train: bool) -> dict:
    if not python:
        return {}
    script = Path(__file__).resolve().parent / "keras_unet.py"
    cmd = [python, str(script), "--bands", str(bands)] + (["--skip-train"] if skip_train else [])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"keras failed: {proc.stderr.strip().splitlines()[-1:]}")
        return {}
    return json.loads(proc.stdout.strip().splitlines()[-1])


class KerasServer:
    """bench/keras_unet.py --serve in its own venv: one timed Keras call per request, so Keras's figures are
    taken in the same minutes as slidemap's, alternating with them (round-robin)."""

    def __init__(self, python: str, bands: int) -> None:
        script = Path(__file__).resolve().parent / "keras_unet.py"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["TF_CPP_MIN_LOG_LEVEL"] = "3"
        self.proc = subprocess.Popen([python, str(script), "--bands", str(bands), "--serve"], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, bufsize=1)
        self.framework = json.loads(self.proc.stdout.readline())["framework"]

    def seconds(self, cmd: str) -> float:
        self.proc.stdin.write(cmd + "\n")
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _with_threads(n: int, fn):
    import torch

    def run():
        old = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(old)
    return run


def section_steps(bands: int, keras_python: str | None, seconds: float, one_thread: bool = False) -> None:
    """Training steps, round-robin: every torch setting and Keras in the same rounds (fair under load)."""
    import torch

    from slidemap.nn.device import measure
    from slidemap.nn.task import training_probe

    print(f"\n## training steps, round-robin with Keras (U-Net-16, 128 px, batch 16, {bands} bands, "
          f"Adam + BCE), load {load_average()}")
    probe = training_probe("unet", bands, 16, {}, 128, 16, torch.device("cpu"), max_batch=16)
    steps = {s.name: probe.step(s) for s in probe.candidates}
    if one_thread:  # what a machine other jobs keep busy does with one thread (docs/performance.md)
        steps.update({f"{s.name}, 1 thread": _with_threads(1, probe.step(s)) for s in probe.candidates
                      if s.channels_last})
    server = KerasServer(keras_python, bands) if keras_python else None
    if server:
        steps["keras"] = lambda: (server.seconds("train") > -1) * 16.0
    rates = measure(steps, seconds=seconds, min_rounds=3)
    keras_rate = rates.get("keras")
    rows = [{"setting": n if n != "keras" else f"Keras ({server.framework}), fp32", "chips/s": round(r, 1),
             "x Keras": round(r / keras_rate, 2) if keras_rate else ""} for n, r in rates.items()]
    print(format_table(rows))
    if server:
        server.close()
    print(f"load after: {load_average()}")


def section_train(paths: dict, epochs: int, keras_python: str | None) -> None:
    import torch

    from slidemap.formats.chips import ChipSet
    from slidemap.nn.device import cpu_has_native_bf16, resolve_run
    from slidemap.nn.task import training_probe
    from slidemap.stages import train

    print(f"\n## training (U-Net-16, 128 px, batch 16, {epochs} epoch(s) each; chips/s of the last epoch), "
          f"load {load_average()}")
    bands = len(ChipSet(paths["chips"]).bands)
    settings = [("32", True), ("32", False)] + ([("bf16", True), ("bf16", False)] if cpu_has_native_bf16()
                                                else [])
    probe = training_probe("unet", bands, 16, {}, 128, 16, torch.device("cpu"))
    auto = resolve_run("auto", "cpu", "torch", None, probe)
    rows = []
    for precision, cl in settings:
        out = paths["run"].parent / f"train-{precision}-{cl}"
        shutil.rmtree(out, ignore_errors=True)
        r = train.run(train.TrainOptions(chips=[paths["chips"]], out=out, filters=16, epochs=epochs,
                                         patience=0, progress=False, precision=precision, channels_last=cl))
        name = f"torch-{'fp32' if precision == '32' else precision}" + ("" if cl else "-nchw")
        timing = (out / "timing.csv").read_text().splitlines()
        last = float(timing[-1].split(",")[3])  # the last epoch: past oneDNN's first-call set-up, as Keras's
        rows.append({"setting": name + (" *" if name == auto.setting.name else ""),
                     "chips/s": round(last, 1), "all epochs chips/s": r.summary.chips_per_s,
                     "auto's probe chips/s": auto.rates.get(name, float("nan")),
                     "val F1 (best th.)": r.summary.val_f1_at_best})
        shutil.rmtree(out, ignore_errors=True)
    k = keras(keras_python, bands, skip_train=False)
    if k:
        rows.append({"setting": f"Keras ({k['framework']}), fp32",
                     "chips/s": round(k["train_chips_per_s"], 1), "all epochs chips/s": "",
                     "auto's probe chips/s": "", "val F1 (best th.)": ""})
        for r in rows[:-1]:
            r["x Keras"] = round(r["chips/s"] / k["train_chips_per_s"], 2)
    print(format_table(rows))
    print(f"auto ({auto.how}): {auto.setting.name}; * marks it. load after: {load_average()}")


def section_predict(paths: dict, keras_python: str | None, seconds: float) -> None:
    from slidemap.nn.bundle import load_bundle
    from slidemap.nn.device import cpu_has_native_bf16
    from slidemap.stages import predict
    from slidemap.stages.export import build_engines

    bundle = load_bundle(paths["run"])
    t0 = time.perf_counter()
    record = build_engines(bundle, int8=True)
    print(f"\n## prediction (U-Net-16, {len(bundle.bands)} bands), engines built in "
          f"{time.perf_counter() - t0:.1f} s ({record.seconds} s when first built), load {load_average()}")
    engines = [("torch", "32")] + ([("torch", "bf16")] if cpu_has_native_bf16() else []) + \
        [("onnx", "auto"), ("onnx-int8", "auto")]
    auto = predict.run(predict.PredictOptions(model=bundle, out=paths["run"].parent / "pred-auto",
                                              scene=paths["scene"], engine="auto"))
    picked = auto.meta.engine_choice["setting"]
    again = predict.run(predict.PredictOptions(model=bundle, out=paths["run"].parent / "pred-auto-2",
                                               scene=paths["scene"], engine="auto"))
    rows = []
    server = KerasServer(keras_python, len(bundle.bands)) if keras_python else None
    net_only = _network_only(bundle, engines, server, seconds)
    keras_one_pass = []
    for engine, precision in engines:
        out = paths["run"].parent / f"pred-{engine}-{precision}"
        before = 1.048576 / server.seconds("infer1024") if server else None
        r = predict.run(predict.PredictOptions(model=bundle, out=out, scene=paths["scene"], engine=engine,
                                               precision=precision))
        after = 1.048576 / server.seconds("infer1024") if server else None
        name = r.meta.engine_choice["setting"]
        if server:
            keras_one_pass += [before, after]
        rows.append({"engine": name + (" *" if name == picked else ""), "e2e s": r.meta.seconds,
                     "e2e Mpx/s": r.meta.mpx_per_s, "network 4x512² Mpx/s": round(net_only[name], 3),
                     "Keras one pass, same minutes": round((before + after) / 2, 3) if server else "",
                     "e2e x Keras": round(r.meta.mpx_per_s / ((before + after) / 2), 2) if server else "",
                     "val F1": record.f1.get(name, float("nan")),
                     "auto may pick": "yes" if record.eligible(name)[0] or name == "torch-fp32"
                     or (name == "onnx") else "no"})
    for a in (auto, again):
        rows.append({"engine": f"auto -> {picked} ({a.meta.engine_choice['how']})",
                     "e2e s": a.meta.seconds, "e2e Mpx/s": a.meta.mpx_per_s, "network 4x512² Mpx/s": "",
                     "val F1": "", "auto may pick": ""})
    if server:
        rows.append({"engine": f"Keras ({server.framework}), network only", "e2e s": "",
                     "e2e Mpx/s": f"{np.median(keras_one_pass):.3f} (one 1,024² pass, median)",
                     "network 4x512² Mpx/s": round(net_only["keras"], 3), "val F1": "", "auto may pick": ""})
        server.close()
    print(format_table(rows))
    rates = auto.meta.engine_choice.get("rates", {})
    print(f"auto's probe (one {auto.meta.tile}² tile): "
          + ", ".join(f"{n} {v:.3f}" for n, v in rates.items())
          + f" Mpx/s; excluded: {auto.meta.engine_choice.get('excluded', {}) or 'none'}")
    print(f"scene {auto.meta.width}x{auto.meta.height} px; val F1 on {record.validation.get('count')} "
          f"validation chips at threshold {record.threshold:.3f}; int8 calibrated on "
          f"{record.calibration.get('count')} training chips. load after: {load_average()}")


def _network_only(bundle, engines, server, seconds) -> dict[str, float]:
    from slidemap.nn.device import Setting, measure
    from slidemap.stages.runners import build_runner, engine_paths_of

    x = np.random.default_rng(0).standard_normal((4, len(bundle.bands), 512, 512), dtype=np.float32)
    xcl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    steps = {}
    for engine, precision in engines:
        s = Setting(engine, "32" if precision == "auto" else precision, engine == "torch")
        s = Setting(engine, "int8", False) if engine == "onnx-int8" else s
        runner = build_runner(bundle, s, "cpu", engine_paths_of(bundle))
        steps[s.name] = (lambda r=runner, e=engine: r(xcl if e == "torch" else x) is not None
                         and 4 * 512 * 512)
    if server:
        steps["keras"] = lambda: (server.seconds("infer4x512") > -1) * 4 * 512 * 512
    return {k: v / 1e6 for k, v in measure(steps, seconds=seconds, min_rounds=3).items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--section", choices=["all", "steps", "train", "predict"], default="all")
    ap.add_argument("--one-thread", action="store_true", help="steps: also each setting on 1 thread")
    ap.add_argument("--seconds", type=float, default=30.0, help="round-robin budget of an interleaved table")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/slidemap-bench-engines"))
    ap.add_argument("--keep", action="store_true", help="reuse the scene, chips and run in --workdir")
    ap.add_argument("--scene-size", type=int, default=2048)
    ap.add_argument("--setup-epochs", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per training setting (chips/s: the last)")
    ap.add_argument("--run", type=Path, help="a trained run folder to use instead of the setup's "
                    "(e.g. the demo's: slidemap-demo/run); give --scene with it")
    ap.add_argument("--scene", type=Path, help="the scene folder to predict with --run")
    ap.add_argument("--keras-python", default=os.environ.get("KERAS_PYTHON"),
                    help="Python of a venv with tensorflow-cpu + keras (default $KERAS_PYTHON)")
    args = ap.parse_args(argv)
    for line in machine_lines():
        print(line)
    print(f"load before: {load_average()}")
    if args.run and args.scene:
        from slidemap.nn.bundle import load_bundle

        chips = load_bundle(args.run).meta.training["options"]["chips"]
        first = chips[0] if isinstance(chips, list) else chips
        paths = {"run": args.run, "scene": args.scene, "chips": Path(first)}
        print(f"reusing run {args.run} and scene {args.scene}")
    else:
        paths = setup(args.workdir, args.scene_size, args.setup_epochs, args.keep)
    if args.section in ("all", "steps"):
        from slidemap.formats.chips import ChipSet

        section_steps(len(ChipSet(paths["chips"]).bands), args.keras_python, args.seconds, args.one_thread)
    if args.section in ("all", "train"):
        section_train(paths, args.epochs, args.keras_python)
    if args.section in ("all", "predict"):
        section_predict(paths, args.keras_python, args.seconds)


if __name__ == "__main__":
    main()
