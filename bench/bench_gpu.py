"""The CUDA path of experiment grids, in one prepared run for a session that is lent a GPU (issue 12).

Measures, on synthetic chip sets (``common.write_chipset``) and through ``slidemap.stages.train.run``:

1. study 000's largest configuration (U-Net, 64 filters, 128 px, batch 32, 7 bands) in the precision ``auto``
   picks on this device (mixed precision on a GPU): chips/s of the training epochs and the GPU's utilisation
   and memory sampled with ``nvidia-smi`` while it trains;
2. several trainings sharing the GPU (``--parallel`` processes of U-Net-16 at 64 px, batch 16, chips held on
   the device): the summed chips/s against one training alone;
3. the 288-run grid of ``examples/soares2020.yaml``: the dry run's estimate, which times a step of each of
   its network shapes on this device.

    python bench/bench_gpu.py                      # on the GPU machine; about 5 minutes
    python bench/bench_gpu.py --device cpu --quick # smoke run anywhere (tiny sizes, no nvidia-smi)

Nothing here is a test; it prints the device, the load and every figure beside its command.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_table, load_average, machine_line, write_chipset  # noqa: E402

from slidemap.stages import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def device_line(device: str) -> str:
    import torch

    if device != "cpu" and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        return f"GPU: {p.name}, {p.total_memory / 1024**3:.0f} GiB, torch {torch.__version__}"
    return f"CPU only: {machine_line()}"


class GpuSampler:
    """Utilisation (%) and memory (MiB) of GPU 0 every 0.5 s from nvidia-smi, while it runs."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.available = shutil.which("nvidia-smi") is not None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits", "-i", "0"],
                                     capture_output=True, text=True, timeout=5).stdout
                util, mem = (float(v) for v in out.strip().split(","))
                self.samples.append((util, mem))
            except (OSError, ValueError, subprocess.SubprocessError):
                pass
            self._stop.wait(0.5)

    def __enter__(self) -> GpuSampler:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.available:
            self._thread.join()

    def summary(self) -> dict[str, object]:
        if not self.samples:
            return {"GPU util % (mean/max)": "n/a", "GPU MiB (max)": "n/a"}
        utils = [u for u, _ in self.samples]
        return {"GPU util % (mean/max)": f"{sum(utils) / len(utils):.0f}/{max(utils):.0f}",
                "GPU MiB (max)": f"{max(m for _, m in self.samples):.0f}"}


def train_once(chips: Path, out: Path, filters: int, batch: int, epochs: int, device: str) -> dict[str, object]:
    result = train.run(train.TrainOptions(chips=chips, out=out, model="unet", filters=filters, batch_size=batch,
                                          epochs=epochs, patience=0, val_fraction=0.1, seed=0, device=device,
                                          progress=False, learn_postprocess=False))
    s = result.summary
    return {"chips/s": s.chips_per_s, "precision": s.precision, "device": s.device, "epochs": s.epochs_run,
            "wall s": s.seconds}


def largest(tmp: Path, device: str, quick: bool) -> dict[str, object]:
    size, filters, batch = (32, 8, 8) if quick else (128, 64, 32)
    chips = write_chipset(tmp / "chips-largest", count=64 if quick else 1024, size=size, bands=7)
    with GpuSampler() as gpu:
        row = train_once(chips, tmp / "run-largest", filters, batch, 1 if quick else 3, device)
    label = f"U-Net-{filters} @ {size} px, batch {batch}" + ("" if quick else " (study 000's largest)")
    return {"what": label, **row, **gpu.summary()}


def shared(tmp: Path, device: str, parallel: int, quick: bool) -> list[dict[str, object]]:
    size, count = (32, 64) if quick else (64, 1024)
    chips = write_chipset(tmp / "chips-shared", count=count, size=size, bands=7)
    epochs = 1 if quick else 3
    alone = train_once(chips, tmp / "run-alone", 16, 16, epochs, device)
    here = str(Path(__file__).resolve().parent)
    code = (f"import json, sys; sys.path.insert(0, {here!r}); from bench_gpu import train_once; "
            f"from pathlib import Path; print(json.dumps(train_once(Path(sys.argv[1]), Path(sys.argv[2]), 16, 16, "
            f"{epochs}, {device!r})))")
    with GpuSampler() as gpu:
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", code, str(chips), str(tmp / f"run-shared-{i}")],
                                  stdout=subprocess.PIPE, text=True) for i in range(parallel)]
        outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        wall = time.perf_counter() - t0
    total = sum(float(o["chips/s"] or 0) for o in outs)
    return [{"what": f"U-Net-16 @ {size} px, batch 16, alone", **alone},
            {"what": f"{parallel} of them at once", "chips/s": round(total, 1),
             "x alone": round(total / float(alone["chips/s"] or 1), 2), "wall s": round(wall, 1), **gpu.summary()}]


def grid_estimate(tmp: Path) -> str:
    from slidemap.experiments.runner import dry_run

    text = dry_run(ROOT / "examples" / "soares2020.yaml", tmp / "soares-dry")
    return text.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--parallel", type=int, default=4, help="trainings sharing the GPU at once")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny chips, one epoch, no grid estimate")
    a = ap.parse_args()
    print(device_line(a.device), f"| load {load_average()}")
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp_name:
        tmp = Path(tmp_name)
        print(format_table([largest(tmp, a.device, a.quick)]), flush=True)
        rows = shared(tmp, a.device, a.parallel, a.quick)
        print(format_table(rows, list(dict.fromkeys(k for r in rows for k in r))), flush=True)
        if not a.quick:
            print("soares2020.yaml (288 runs):", grid_estimate(tmp))
    print(f"load after: {load_average()}")


if __name__ == "__main__":
    main()
