"""The wall time a grid will take on this machine, from a measured calibration step.

One reference training step per architecture (16 filters, 64 px, batch 16, random data) is timed here in
the precision the runs will use, and every network shape of the grid is scaled from it by its training
GFLOP per chip, counted on meta tensors (no compute); larger batches run somewhat more efficiently than the
reference, so large-batch runs are overestimated a little. Chips per epoch
come from each site's train area (its scene if prepared, else the synthetic size) and the sampler. The
estimate is an upper bound in epochs (early stopping usually ends runs sooner) and says so.
"""

from __future__ import annotations

import time
from pathlib import Path

from slidemap.experiments.plan import Plan, RunPlan


def _train_area_px(plan: Plan, site: str) -> float:
    """Pixels of a site's train area(s), from its scene if prepared, else a guess from its inputs."""
    spec_site = plan.spec.sites[site]
    scene = Path(spec_site.scene) if spec_site.scene else plan.sites[site].scene
    if (scene / "scene.json").is_file():
        from slidemap.formats.scene import SceneMeta

        meta = SceneMeta.load(scene / "scene.json")
        px = meta.pixel_size_m[0] * meta.pixel_size_m[1]
        return sum(a.valid_km2 for a in meta.areas if a.role == "train") * 1e6 / px
    if spec_site.synth is not None:
        return 0.6 * spec_site.synth.size ** 2  # synth's train area is 60 % of the scene
    if spec_site.l4s is not None:
        return 3799 * 128 * 128  # the benchmark's training split
    return 4096 ** 2 * 0.6


def _chips_per_epoch(plan: Plan, run: RunPlan) -> float:
    total = 0.0
    for chip in run.chips:
        if plan.spec.sites[chip.site].l4s is not None:
            total += 3799
            continue
        s = chip.sampling
        if s.method == "random":
            total += s.count * (0.5 if s.require_landslide else 1.0)
        else:
            stride = max(1, round(chip.size * (1 - s.overlap)))
            total += _train_area_px(plan, chip.site) / stride**2 * (0.3 if s.require_landslide else 1.0)
    return total * (1 - plan.spec.training.val_fraction)


def _gflop_per_chip(arch: str, filters: int, bands: int, size: int, batch: int) -> float:
    """Forward + backward GFLOP of one chip, counted on meta tensors (nothing is computed)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from slidemap.nn.models import build_model

    with torch.device("meta"):
        net = build_model(arch, bands, filters)
        x = torch.randn(batch, bands, size, size)
    with FlopCounterMode(display=False) as counter:
        net(x).sum().backward()
    return counter.get_total_flops() / 1e9 / batch


def _seconds_per_gflop(arch: str, bands: int, precision: str) -> float:
    """Measured: seconds per training GFLOP of a reference step (16 filters, 64 px, batch 16) here."""
    import torch

    from slidemap.nn.device import AUTOCAST_DTYPE, resolve_device, resolve_precision
    from slidemap.nn.models import build_model

    device = resolve_device("auto")
    dtype = AUTOCAST_DTYPE[resolve_precision(precision, device)]
    torch.manual_seed(0)
    net = build_model(arch, bands, 16).to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    x = torch.randn(16, bands, 64, 64, device=device).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(16, 1, 64, 64, device=device) > 0.9).float()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step = sorted(times[1:])[len(times[1:]) // 2]
    return step / (_gflop_per_chip(arch, 16, bands, 64, 16) * 16)


def estimate_seconds(plan: Plan) -> str:
    """A printable estimate of the grid's wall time, with how it was measured."""
    import torch

    from slidemap.experiments.spec import site_bands

    precision = plan.spec.training.precision
    epochs = plan.spec.training.epochs
    rates: dict[tuple, float] = {}
    flops: dict[tuple, float] = {}
    total = 0.0
    t0 = time.perf_counter()
    for run in plan.runs:
        c = run.coords
        bands = len(run.bands) if run.bands else len(site_bands(plan.spec, run.train_sites[0]) or [0] * 7)
        key = (c["architecture"], c["filters"], bands, c["size"], c["batch_size"])
        if key not in flops:
            flops[key] = _gflop_per_chip(*key)
        if (c["architecture"], bands) not in rates:
            rates[(c["architecture"], bands)] = _seconds_per_gflop(c["architecture"], bands, precision)
        seconds_per_chip = flops[key] * rates[(c["architecture"], bands)]
        total += epochs * _chips_per_epoch(plan, run) * seconds_per_chip * 1.25  # + validation
    calibration = time.perf_counter() - t0
    cpu = _cpu_name()
    when = f"{total / 3600:.1f} h" if total >= 5400 else f"{total / 60:.0f} min"
    return (f"estimated wall time: at most {when} for {epochs} epochs per run on this machine ({cpu}, "
            f"{torch.get_num_threads()} threads; early stopping ends most runs sooner): a reference training "
            f"step per architecture measured here ({calibration:.0f} s), scaled by each network's GFLOP per "
            f"chip (counted); prediction and per-run start-up not included")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"
