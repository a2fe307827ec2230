"""Training-step throughput (chips/s) of the slidemap networks on this machine, lever by lever.

    python bench/bench_train.py                       # ladder on unet16@128, the grid, then e2e
    python bench/bench_train.py --section levers      # only the ladder (plain fp32 -> every lever)
    python bench/bench_train.py --section grid --configs unet16@128,resunet16@64 --precision bf16
    python bench/bench_train.py --section e2e         # through slidemap.stages.train.run (whole epochs)
    python bench/bench_train.py --quick               # smoke run: few steps, small configs

A step is what the trainer does per batch: forward, masked BCE, backward, Adam. Inputs are one random
batch of 16 chips x 6 bands (pure compute: reading chips is benched by ``--section e2e``). FLOPs of one
forward + backward are counted with ``torch.utils.flop_counter`` and the achieved GFLOP/s are printed as
a fraction of the dense matmul GFLOP/s measured in the same run, in fp32 and bf16, so figures from a
busy or a different machine stay comparable. Prints Markdown tables for docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys

if "--omp-active" not in sys.argv:  # before torch loads libgomp; see `measure` for why
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table, load_average, machine_line, write_chipset  # noqa: E402

from slidemap.nn.losses import masked_bce  # noqa: E402
from slidemap.nn.models import build_model  # noqa: E402
from slidemap.stages import train  # noqa: E402

BANDS = 6
BATCH = 16
DEFAULT_GRID = [f"{arch}{f}@{s}" for arch, fs in (("unet", (16, 32, 64)), ("resunet", (16,)))
                for f in fs for s in (32, 64, 128)]


@dataclass(frozen=True)
class Lever:
    """One way of running the training step; the ladder switches these on one at a time."""

    name: str
    channels_last: bool = False
    bf16: bool = False
    compiled: bool = False
    adam: str = "default"  # default (for-loop on CPU), foreach or fused
    sync_each_step: bool = True  # loss.item() every step, as a naive loop logs it
    threads: int | None = None  # None: torch's default


PLAIN = Lever("plain fp32")
LADDER = [
    PLAIN,
    replace(PLAIN, name="1 thread", threads=1),
    replace(PLAIN, name="no per-step sync", sync_each_step=False),
    replace(PLAIN, name="foreach Adam", adam="foreach"),
    replace(PLAIN, name="fused Adam", adam="fused"),
    replace(PLAIN, name="channels_last", channels_last=True),
    replace(PLAIN, name="bf16 autocast", bf16=True),
    replace(PLAIN, name="channels_last + bf16", channels_last=True, bf16=True),
    replace(PLAIN, name="torch.compile fp32", compiled=True),
    replace(PLAIN, name="torch.compile + bf16", compiled=True, bf16=True),
    replace(PLAIN, name="compile + cl + bf16", compiled=True, bf16=True, channels_last=True),
    Lever("best: cl + bf16 + fused Adam, no sync", channels_last=True, bf16=True, adam="fused",
          sync_each_step=False),
    replace(PLAIN, name="1 thread + channels_last", threads=1, channels_last=True),
    replace(PLAIN, name="1 thread + bf16", threads=1, bf16=True),
    replace(PLAIN, name="1 thread + cl + bf16", threads=1, channels_last=True, bf16=True),
]
BEST = {"32": Lever("best fp32", channels_last=True, adam="fused", sync_each_step=False),
        "bf16": Lever("best bf16", channels_last=True, bf16=True, adam="fused", sync_each_step=False)}


def parse_config(text: str) -> tuple[str, int, int]:
    """``unet16@128`` -> ("unet", 16, 128)."""
    try:
        name, size = text.split("@")
        arch = name.rstrip("0123456789")
        return arch, int(name[len(arch):]), int(size)
    except ValueError:
        raise SystemExit(f"error: --configs {text}: write ARCH FILTERS @ SIZE, e.g. unet16@128") from None


def make_batch(size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A standardised-looking input batch and a 0/1 mask with ~10 % landslide and some nodata."""
    x = torch.randn(BATCH, BANDS, size, size, generator=generator)
    u = torch.rand(BATCH, size, size, generator=generator)
    y = (u < 0.1).to(torch.uint8)
    y[u > 0.98] = 255
    return x, y


def step_flops(arch: str, filters: int, size: int) -> int:
    """FLOPs of one forward + backward of a batch (convolutions and matmuls, as flop_counter counts)."""
    torch.manual_seed(0)
    net = build_model(arch, in_channels=BANDS, filters=filters)
    x, y = make_batch(size, torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        masked_bce(net(x), y).backward()
    return int(counter.get_total_flops())


def make_step(arch: str, filters: int, size: int, lever: Lever) -> Callable[[], None]:
    """Build model, optimiser and batch under ``lever``; return the function that runs one step."""
    torch.manual_seed(0)
    net = build_model(arch, in_channels=BANDS, filters=filters).train()
    fmt = torch.channels_last if lever.channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    x, y = make_batch(size, torch.Generator().manual_seed(1))
    x = x.contiguous(memory_format=fmt)
    options = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[lever.adam]
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, **options)
    forward = torch.compile(net) if lever.compiled else net
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if lever.bf16 else contextlib.nullcontext
    running = torch.zeros(())

    def step() -> None:
        nonlocal running
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = forward(x)
        loss = masked_bce(logits, y)
        loss.backward()
        optimizer.step()
        if lever.sync_each_step:
            float(loss.item())
        else:
            running = running + loss.detach()

    return step


def _with_threads(threads: int | None, fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` run with ``threads`` intra-op threads (torch's default when None), restoring them after."""
    if not threads:
        return fn

    def run() -> None:
        default = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            fn()
        finally:
            torch.set_num_threads(default)

    return run


def matmul_step(dtype: torch.dtype, size: int = 2048) -> tuple[Callable[[], None], int]:
    """One dense square matmul and its FLOPs (2·n³), timed beside the steps as their ceiling."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    out = torch.empty(size, size, dtype=dtype)
    return (lambda: torch.mm(a, b, out=out)), 2 * size**3


def _timed(fn: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def measure(arch: str, filters: int, size: int, levers: list[Lever], flops: int,
            rounds: int) -> list[dict[str, object]]:
    """One table row per lever: chips/s, GFLOP/s and their share of the matmul ceiling of its precision.

    The levers and the fp32/bf16 matmuls are timed round-robin (one call of each per round), so a burst
    of load from other processes hits all of them alike. Two clocks are kept: wall time (what a user
    sees; on a busy machine it swings with the others' load) and this process's CPU time, which with
    ``OMP_WAIT_POLICY=PASSIVE`` (set by this script) counts only the work done, whatever the load:
    ``chips/CPU-s`` x cores is what an otherwise idle machine would give at perfect thread scaling, and
    ``% of matmul`` compares CPU-time rates of the step and of the matmul, so it is load-independent.
    """
    ceiling_calls = {"32": matmul_step(torch.float32), "bf16": matmul_step(torch.bfloat16)}
    ceiling_times: dict[str, list[tuple[float, float]]] = {key: [] for key in ceiling_calls}
    steps, firsts = {}, {}
    for lever in levers:
        try:
            t0 = time.perf_counter()
            steps[lever] = _with_threads(lever.threads, make_step(arch, filters, size, lever))
            steps[lever]()  # first step: compilation, oneDNN primitive creation
            steps[lever]()
            firsts[lever] = time.perf_counter() - t0
        except Exception as exc:  # e.g. torch.compile without a working C compiler
            print(f"{arch}{filters}@{size} {lever.name}: failed ({exc!r:.200})", flush=True)
    samples: dict[Lever, list[tuple[float, float]]] = {lever: [] for lever in steps}
    for call, _ in ceiling_calls.values():
        call()
    for _ in range(rounds):
        for key, (call, _) in ceiling_calls.items():
            ceiling_times[key].append(_timed(call))
        for lever, step in steps.items():
            samples[lever].append(_timed(step))
    wall_ceiling = {k: ceiling_calls[k][1] / min(w for w, _ in t) / 1e9 for k, t in ceiling_times.items()}
    cpu_ceiling = {k: ceiling_calls[k][1] / statistics.median(c for _, c in t) / 1e9
                   for k, t in ceiling_times.items()}
    print(f"{arch}{filters}@{size}: matmul fp32 {wall_ceiling['32']:.0f} GFLOP/s wall (best), "
          f"{cpu_ceiling['32']:.0f} per CPU-s; bf16 {wall_ceiling['bf16']:.0f} wall, "
          f"{cpu_ceiling['bf16']:.0f} per CPU-s; load {load_average()}", flush=True)
    cores = torch.get_num_threads()
    rows = []
    for lever, times in samples.items():
        wall = [w for w, _ in times]
        cpu = statistics.median(c for _, c in times)
        key = "bf16" if lever.bf16 else "32"
        rows.append({"config": f"{arch}{filters}@{size}", "lever": lever.name,
                     "chips/s": BATCH / statistics.median(wall), "best chips/s": BATCH / min(wall),
                     "chips/CPU-s": BATCH / cpu, f"x{cores} cores": cores * BATCH / cpu,
                     "GFLOP/step": flops / 1e9, "GFLOP/CPU-s": flops / cpu / 1e9,
                     "% of matmul": 100 * (flops / cpu) / (cpu_ceiling[key] * 1e9),
                     "first 2 steps s": firsts[lever], "load": load_average()})
    return rows


def run_levers(configs: list[str], rounds: int, compile_too: bool) -> list[dict[str, object]]:
    """The ladder: plain fp32, then each lever alone, then the combinations."""
    levers = [lv for lv in LADDER if compile_too or not lv.compiled]
    rows = []
    for text in configs:
        arch, filters, size = parse_config(text)
        rows += measure(arch, filters, size, levers, step_flops(arch, filters, size), rounds)
    print("\n" + format_table(rows, ["config", "lever", "chips/s", "best chips/s", "chips/CPU-s",
                                     f"x{torch.get_num_threads()} cores", "GFLOP/CPU-s", "% of matmul",
                                     "first 2 steps s", "load"]), flush=True)
    return rows


def run_grid(configs: list[str], precisions: list[str], rounds: int) -> list[dict[str, object]]:
    """Every configuration, plain fp32 (before) beside the best levers of each precision (after)."""
    rows = []
    for text in configs:
        arch, filters, size = parse_config(text)
        measured = measure(arch, filters, size, [PLAIN] + [BEST[p] for p in precisions],
                           step_flops(arch, filters, size), rounds)
        print("\n".join(format_table(measured).splitlines()[2:]), flush=True)  # as they come
        rows += measured
    print("\n" + format_table(rows, ["config", "lever", "chips/s", "best chips/s", "chips/CPU-s",
                                     f"x{torch.get_num_threads()} cores", "GFLOP/step", "GFLOP/CPU-s",
                                     "% of matmul", "load"]), flush=True)
    return rows


def run_e2e(configs: list[str], precisions: list[str], quick: bool, chips: int, epochs: int) -> None:
    """Whole epochs through ``slidemap.stages.train.run`` on a synthetic chip set: what a user gets."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for text in configs:
            arch, filters, size = parse_config(text)
            chipset = write_chipset(Path(tmp) / f"chips{size}", count=chips, size=size, bands=BANDS)
            for precision in precisions:
                for channels_last in (False, True):
                    out = Path(tmp) / f"run-{text}-{precision}-{channels_last}"
                    t0 = time.perf_counter()
                    result = train.run(train.TrainOptions(
                        chips=[chipset], out=out, model=arch, filters=filters, batch_size=BATCH,
                        epochs=1 if quick else epochs, patience=0, val_fraction=0.1, seed=0, device="cpu",
                        precision="32" if precision == "32" else "bf16-mixed", progress=False,
                        channels_last=channels_last))
                    summary = result.summary
                    rows.append({"config": text, "precision": precision, "channels_last": channels_last,
                                 "chips/s (train epochs)": summary.chips_per_s,
                                 "wall s": time.perf_counter() - t0, "val F1@0.5": summary.val_f1_at_half,
                                 "load": load_average()})
                    print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    print("\n" + format_table(rows))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--section", choices=["levers", "grid", "e2e", "all"], default="all")
    p.add_argument("--configs", help="comma-separated ARCH FILTERS @ SIZE (default: unet16@128 for the "
                   "ladder and e2e; unet16/32/64 and resunet16 at 32/64/128 for the grid)")
    p.add_argument("--precision", choices=["32", "bf16", "both"], default="both",
                   help="precisions of the grid and e2e sections (the plain fp32 row is always the 'before')")
    p.add_argument("--chips", type=int, default=400, help="chips in the e2e section's synthetic chip set")
    p.add_argument("--epochs", type=int, default=2, help="epochs of each e2e run (its validation F1 compares "
                   "the precisions)")
    p.add_argument("--rounds", type=int, default=8, help="timed steps per lever (round-robin)")
    p.add_argument("--no-compile", action="store_true", help="leave the torch.compile levers out of the "
                   "ladder (each compiles for a minute or two on 2 cores)")
    p.add_argument("--omp-active", action="store_true", help="leave OpenMP threads spinning between "
                   "parallel regions (torch's default): faster on an idle machine, far slower on a busy one, "
                   "and CPU time then counts the spinning")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, 32 px configs")
    args = p.parse_args(argv)
    precisions = ["32", "bf16"] if args.precision == "both" else [args.precision]
    given = args.configs.split(",") if args.configs else None
    rounds = 2 if args.quick else args.rounds
    print(f"# bench_train  {machine_line()}")
    print(f"# batch {BATCH}, {BANDS} bands, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}; "
          f"command: {' '.join(sys.argv)}")
    if args.section in ("levers", "all"):
        run_levers(given or (["unet16@32"] if args.quick else ["unet16@128"]), rounds, not args.no_compile)
    if args.section in ("grid", "all"):
        grid = given or (["unet16@32", "resunet16@32"] if args.quick else DEFAULT_GRID)
        run_grid(grid, precisions, rounds)
    if args.section in ("e2e", "all"):
        run_e2e(given or (["unet16@32"] if args.quick else ["unet16@128"]), precisions, args.quick,
                64 if args.quick else args.chips, args.epochs)
    print(f"# done, load {load_average()}")


if __name__ == "__main__":
    main()
