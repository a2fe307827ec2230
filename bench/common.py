"""Helpers every bench script shares: timing, peak memory, machine load and the matmul ceiling.

Figures on a shared 2-core machine drift with what else runs, so every script prints the load average
beside its figures and judges throughput as a ratio to the dense matrix-multiply rate measured in the
same run (`matmul_gflops`), never as an absolute number taken on another day.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

GiB = 1024**3


def load_average() -> str:
    """The 1/5/15-minute load averages as one string, to print beside every figure."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (falls back to `platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line() -> str:
    """One line naming CPU, cores, torch build, threads and the vector ISA torch dispatches to."""
    return (f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, ISA {torch.backends.cpu.get_cpu_capability()}, "
            f"load {load_average()}")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ``clear_refs`` 5); False if refused.

    Lets one process measure the peak of several phases in turn instead of only its lifetime maximum.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident memory of this process since start (or the last `reset_peak_rss`), in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss_children_bytes() -> int:
    """Largest peak resident memory of any finished child process, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


@dataclass(frozen=True)
class Timing:
    """Seconds per call over repeated runs: the median is the figure, the spread says how noisy."""

    median: float
    best: float
    worst: float
    calls: int

    @property
    def spread(self) -> float:
        """(worst - best) / median: above ~0.2 the machine was busy; re-measure when quieter."""
        return (self.worst - self.best) / self.median if self.median else 0.0


def time_calls(fn: Callable[[], Any], warmup: int = 2, repeats: int = 5, min_seconds: float = 0.0,
               sync: Callable[[], None] | None = None) -> Timing:
    """Time ``fn`` after ``warmup`` calls, ``repeats`` times (more until ``min_seconds`` have passed).

    Args:
        fn: the work to time; its result is discarded.
        warmup: untimed calls first (allocator, oneDNN primitive caches, compilation).
        repeats: timed calls at least.
        min_seconds: keep calling until this much time is spent, so short calls are not one sample.
        sync: called after each call before the clock stops (e.g. ``torch.cuda.synchronize``).
    """
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < repeats or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append(time.perf_counter() - t0)
    return Timing(statistics.median(samples), min(samples), max(samples), len(samples))


def matmul_gflops(dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 5) -> float:
    """Dense square matrix-multiply rate in GFLOP/s: the ceiling a network's convolutions aim at.

    Counts 2·n³ FLOPs per product (multiply + add), the convention `torch.utils.flop_counter` uses, so
    a network's achieved rate divided by this is a fraction of what this CPU can do in this run.
    """
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    out = torch.empty(size, size, dtype=dtype)
    timing = time_calls(lambda: torch.mm(a, b, out=out), warmup=2, repeats=repeats)
    return 2 * size**3 / timing.best / 1e9


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows of dicts as a Markdown table (floats with 3 significant digits), ready for docs/."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    body = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in body)) for i, c in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |",
             "| " + " | ".join("-" * w for w in widths) + " |"]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) + " |" for r in body]
    return "\n".join(lines)


def write_chipset(folder: Path, count: int, size: int, bands: int = 6, seed: int = 0) -> Path:
    """Write a synthetic chip set (blob-shaped landslides brighter in every band) and return its folder.

    Enough structure that a network learns something within an epoch or two, so that validation F1 of
    two precisions can be compared; no scene is needed, so the training bench does not depend on prepare.
    """
    import numpy as np  # noqa: PLC0415

    from slidemap.formats.chips import write_chipset as write  # noqa: PLC0415
    from slidemap.formats.files import atomic_dir  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = rng.normal(0.0, 1.0, (count, bands, size, size)).astype(np.float32)
    masks = np.zeros((count, size, size), dtype=np.uint8)
    for i in range(count):
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(size / 16, size / 6)
            masks[i][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1
    contrast = rng.uniform(0.5, 1.5, (1, bands, 1, 1)).astype(np.float32)
    images += 1.2 * masks[:, None].astype(np.float32) * contrast
    names = [f"b{k + 1}" for k in range(bands)]
    stats = {n: {"mean": float(images[:, k].mean()), "std": float(images[:, k].std()),
                 "min": float(images[:, k].min()), "max": float(images[:, k].max())}
             for k, n in enumerate(names)}
    side = int(np.ceil(np.sqrt(count)))
    windows = [{"row": (i // side) * size, "col": (i % side) * size, "size": size, "area": "train",
                "source": "synthetic"} for i in range(count)]
    with atomic_dir(folder, "chips.json") as tmp:
        write(tmp, images, masks, windows, {"bands": names, "stats": stats, "sampler": {"method": "synthetic",
                                                                                      "seed": seed}})
    return Path(folder)
