"""The wall time a grid will take on this machine, from a measured calibration step.

A training step (random data) is timed here for every network shape of the grid (architecture, filters,
patch size) in the precision the runs will use: small networks on small patches are bound
by per-step overheads, not by their GFLOP, so scaling one reference step by GFLOP underestimated
examples/quick.yaml three times. Other batch sizes are scaled by chips (small batches of small networks are
underestimated a little). The training loop adds augmentation, the masked loss and Lightning's bookkeeping
(about 16 % over the bare step, docs/performance.md) and validation runs a forward pass (a third of a step)
over the validation chips. Chips per epoch are the chip sets' own counts where the dry run could sample
them, else they come from each site's train area and the sampler: the prepared scene's train areas, else
the input image's header (its size and pixel size, or ``resolution``) cut by the split ratio or measured
over the areas file's train polygons, else the synthetic size. The estimate is an upper bound in epochs
where early stopping may end runs sooner, and says so.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from slidemap.experiments.plan import Plan, RunPlan

if TYPE_CHECKING:
    from slidemap.experiments.sites import ChipCount
    from slidemap.experiments.spec import PrepareSite


def _train_area_px(plan: Plan, site: str) -> float:
    """Pixels of a site's train area(s), from its scene if prepared, else from its inputs' headers."""
    spec_site = plan.spec.sites[site]
    scene = Path(spec_site.scene) if spec_site.scene else plan.sites[site].scene
    if (scene / "scene.json").is_file():
        from slidemap.formats.scene import SceneMeta

        meta = SceneMeta.load(scene / "scene.json")
        px = meta.pixel_size_m[0] * meta.pixel_size_m[1]
        return sum(a.valid_km2 for a in meta.areas if a.role == "train") * 1e6 / px
    if spec_site.synth is not None:
        return 0.6 * spec_site.synth.size ** 2  # synth's train area is 60 % of the scene
    assert spec_site.prepare is not None
    return _inputs_train_px(spec_site.prepare)


def _inputs_train_px(p: PrepareSite) -> float:
    """Pixels of the train area a site's inputs will give.

    The first image's grid (or ``resolution``) over its train part (``split``) or the areas file's train polygons.
    """
    from slidemap.formats.gdal import open_raster, read_vector
    from slidemap.raster.geo import pixel_size_m

    with open_raster(p.images[0], "images") as ds:
        dx, dy = pixel_size_m(ds.crs, ds.transform, ds.height)
        scene_m2 = ds.width * ds.height * dx * dy
        pixel_m2 = p.resolution ** 2 if p.resolution else dx * dy
    if p.ratio is not None:
        train, test = p.ratio
        return scene_m2 * train / (train + test) / pixel_m2
    assert p.areas is not None
    areas = read_vector(p.areas, "areas")
    roles = areas["role"].astype(str).str.strip().str.lower() if "role" in areas else None
    mine = areas[roles == "train"] if roles is not None else areas
    return float(mine.to_crs(mine.estimate_utm_crs()).area.sum()) / pixel_m2 if len(mine) else 0.0


def _chips_per_epoch(plan: Plan, run: RunPlan, counts: dict[str, ChipCount | None],
                     area_px: dict[str, float]) -> float:
    total = 0.0
    for chip in run.chips:
        counted = counts.get(chip.key)
        if counted is not None:
            total += counted.chips
            continue
        l4s = plan.spec.sites[chip.site].l4s
        if l4s is not None:
            from slidemap.sources.l4s import find_patches

            total += len(find_patches(l4s.folder, l4s.train))
            continue
        s = chip.sampling
        if s.method == "random":
            total += s.count * (0.5 if s.require_landslide else 1.0)
        else:
            stride = max(1, round(chip.size * (1 - s.overlap)))
            if chip.site not in area_px:
                area_px[chip.site] = _train_area_px(plan, chip.site)
            total += area_px[chip.site] / stride**2 * (0.3 if s.require_landslide else 1.0)
    return total * (1 - plan.spec.training.val_fraction)


def _seconds_per_chip(arch: str, filters: int, bands: int, size: int, precision: str, device_name: str) -> float:
    """Measured: seconds per chip of a training step of this network shape here, in the resolved ``precision``.

    Batch 16 up to 64 px, where per-step overheads matter; batch 4 above, where the step is bound by its
    arithmetic and a larger batch would only make the calibration longer.
    """
    import torch

    from slidemap.nn.device import AUTOCAST_DTYPE, resolve_device
    from slidemap.nn.models import build_model

    device = resolve_device(device_name)
    dtype = AUTOCAST_DTYPE[precision]
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


def estimate_seconds(plan: Plan, precision: str, device: str, counts: dict[str, ChipCount | None]) -> str:
    """A printable estimate of the grid's wall time, with how it was measured.

    ``precision`` and ``device`` are the experiment's, resolved once; ``counts`` the chip sets counted so far.
    Runs on a site whose inputs do not open are left out, and the line says how many.
    """
    import torch

    from slidemap.errors import UserError
    from slidemap.experiments.spec import site_bands

    rates: dict[tuple, float] = {}
    area_px: dict[str, float] = {}
    total, unknown = 0.0, 0
    t0 = time.perf_counter()
    for run in plan.runs:
        c = run.coords
        try:
            train_chips = _chips_per_epoch(plan, run, counts, area_px)
        except UserError:  # an input that does not open: the dry run lists it
            unknown += 1
            continue
        bands = len(run.bands) if run.bands else len(site_bands(plan.spec, run.train_sites[0]) or [0] * 7)
        key = (c["architecture"], c["filters"], c["size"])  # the band count only changes the first layer
        if key not in rates:
            rates[key] = _seconds_per_chip(c["architecture"], c["filters"], bands, c["size"], precision, device)
        val_chips = train_chips * plan.spec.training.val_fraction / (1 - plan.spec.training.val_fraction)
        total += c["epochs"] * (train_chips * 1.16 + val_chips / 3) * rates[key]
    if unknown == len(plan.runs):
        return "estimated wall time: once the sites' inputs open"
    calibration = time.perf_counter() - t0
    when = (f"{total / 3600:.1f} h" if total >= 5400 else f"{total / 60:.0f} min" if total >= 60
            else f"{total:.0f} s")
    left_out = f" ({unknown} runs left out: their sites' inputs do not open)" if unknown else ""
    counted = sum(n is not None for n in counts.values())
    guessed = (f"; chips counted for {counted} of {len(plan.chipsets)} chip sets, the others guessed from the "
               f"train area's size and the sampler until their site is prepared" if counted < len(plan.chipsets)
               else "")
    epochs = "/".join(str(e) for e in plan.spec.axis_values("epochs"))
    stopping = "; early stopping may end runs sooner" if any(plan.spec.axis_values("patience")) else ""
    return (f"estimated wall time: about {when}{left_out} for {epochs} epochs per run on this machine "
            f"({_cpu_name()}, {torch.get_num_threads()} threads, precision {precision} on {device}{stopping}): a "
            f"training step of each of the grid's {len(rates)} network shapes measured here ({calibration:.0f} s); "
            f"the test-area predictions and each run's fixed costs not included{guessed}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"
