"""The wall time a grid will take on this machine, from a measured calibration step.

A training step (random data) is timed here for every network shape of the grid (architecture, filters,
patch size) in the precision the runs will use: small networks on small patches are bound
by per-step overheads, not by their GFLOP, so scaling one reference step by GFLOP underestimated
examples/quick.yaml three times. Other batch sizes are scaled by chips (small batches of small networks are
underestimated a little). The training loop adds augmentation, the masked loss and Lightning's bookkeeping
(about 16 % over the bare step, docs/performance.md) and validation runs a forward pass (a third of a step)
over the validation chips. Chips per epoch come from each site's train area (its scene if prepared, else
the synthetic size) and the sampler. The estimate is an upper bound in epochs (early stopping usually ends
runs sooner) and says so.
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


def _seconds_per_chip(arch: str, filters: int, bands: int, size: int, precision: str) -> float:
    """Measured: seconds per chip of a training step of this network shape here.

    Batch 16 up to 64 px, where per-step overheads matter; batch 4 above, where the step is bound by its
    arithmetic and a larger batch would only make the calibration longer.
    """
    import torch

    from slidemap.nn.device import AUTOCAST_DTYPE, resolve_device, resolve_precision
    from slidemap.nn.models import build_model

    device = resolve_device("auto")
    dtype = AUTOCAST_DTYPE[resolve_precision(precision, device)]
    torch.manual_seed(0)
    net = build_model(arch, bands, filters).to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    batch = 16 if size <= 64 else 4
    x = torch.randn(batch, bands, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, 1, size, size, device=device) > 0.9).float()
    times: list[float] = []
    while len(times) < 3 or (len(times) < 6 and sum(times[1:]) < 0.5):  # a warm-up step, then >= 2 timed
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times[1:]) / batch


def estimate_seconds(plan: Plan) -> str:
    """A printable estimate of the grid's wall time, with how it was measured."""
    import torch

    from slidemap.experiments.spec import site_bands

    precision = plan.spec.training.precision
    epochs = plan.spec.training.epochs
    rates: dict[tuple, float] = {}
    total = 0.0
    t0 = time.perf_counter()
    for run in plan.runs:
        c = run.coords
        bands = len(run.bands) if run.bands else len(site_bands(plan.spec, run.train_sites[0]) or [0] * 7)
        key = (c["architecture"], c["filters"], c["size"])  # the band count only changes the first layer
        if key not in rates:
            rates[key] = _seconds_per_chip(c["architecture"], c["filters"], bands, c["size"], precision)
        train_chips = _chips_per_epoch(plan, run)
        val_chips = train_chips * plan.spec.training.val_fraction / (1 - plan.spec.training.val_fraction)
        total += epochs * (train_chips * 1.16 + val_chips / 3) * rates[key]
    calibration = time.perf_counter() - t0
    cpu = _cpu_name()
    when = f"{total / 3600:.1f} h" if total >= 5400 else f"{total / 60:.0f} min"
    return (f"estimated wall time: about {when} for {epochs} epochs per run on this machine ({cpu}, "
            f"{torch.get_num_threads()} threads; early stopping ends most runs sooner): a training step of each "
            f"of the grid's {len(rates)} network shapes measured here ({calibration:.0f} s); the test-area "
            f"predictions and each run's fixed costs (about 0.25 s a run with quick.yaml's four small test areas on "
            f"a 2-core CPU; more for large areas) not included")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"
