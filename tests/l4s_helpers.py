"""Helpers of the Landslide4Sense tests: tiny folders in the benchmark's format and small bundles over its bands."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from slidemap.formats.chips import ChipSet
from slidemap.sources.l4s import L4S_BANDS


def make_l4s(folder: Path, numbers: list[int], masks: bool = True, seed: int = 0) -> Path:
    """Write a tiny Landslide4Sense-format folder: random float64 images, sparse 0/1 masks."""
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    if masks:
        (folder / "mask").mkdir(exist_ok=True)
    for n in numbers:
        with h5py.File(folder / "img" / f"image_{n}.h5", "w") as f:
            f.create_dataset("img", data=rng.normal(n, 1.0, (128, 128, 14)))
        if masks:
            with h5py.File(folder / "mask" / f"mask_{n}.h5", "w") as f:
                f.create_dataset("mask", data=(rng.random((128, 128)) < 0.05).astype(np.uint8))
    return folder


def tiny_bundle(path: Path, bands: list[str], stats: dict, centre_on: np.ndarray | None = None) -> Path:
    """A 4-filter U-Net bundle; ``centre_on`` (a standardised (1, C, H, W) input) shifts its head so that
    about half of that input's pixels are landslide, the logit 0 in the widest gap between two pixels'."""
    import torch

    from slidemap.formats.bundle import BundleMeta
    from slidemap.nn.bundle import save_bundle
    from slidemap.nn.models import build_model

    torch.manual_seed(0)
    model = build_model("unet", len(bands), filters=4)
    if centre_on is not None:
        with torch.no_grad():
            def logits() -> np.ndarray:
                return np.sort(model.eval()(torch.from_numpy(centre_on)).numpy().ravel())

            lo, hi = np.percentile(logits(), [16, 84])  # the head is linear: scale the logits to a ±3 spread
            model.head.weight.mul_(6.0 / max(hi - lo, 1e-6))
            model.head.bias.mul_(6.0 / max(hi - lo, 1e-6))
            middle = logits()[centre_on[0, 0].size // 4: 3 * centre_on[0, 0].size // 4]
            k = int(np.argmax(np.diff(middle)))
            assert middle[k + 1] - middle[k] > 1e-3  # far wider than float rounding between code paths
            model.head.bias.sub_(float(middle[k] + middle[k + 1]) / 2)
    meta = BundleMeta(architecture="unet", model_args=model.config, bands=bands, stats=stats, patch_size=128,
                      thresholds={"0.5": 0.5, "best": 0.5}, training={})
    return save_bundle(path, model, meta).path


def lively_patch_bundle(tmp_path: Path, chips: ChipSet, **meta) -> Path:
    """A bundle over all 14 bands whose mask of the first patch is about half landslide."""
    from slidemap.nn.bundle import load_bundle, save_bundle

    stats = {b: {"mean": float(s.mean), "std": float(s.std), "min": s.min, "max": s.max}
             for b, s in chips.stats.items()}
    x = np.asarray(chips.images[:1], np.float32).copy()
    x = np.nan_to_num((x - np.array([s["mean"] for s in stats.values()], np.float32)[:, None, None])
                      / np.array([s["std"] for s in stats.values()], np.float32)[:, None, None])
    path = tiny_bundle(tmp_path / "base.pt", list(L4S_BANDS), stats, centre_on=x.astype(np.float32))
    b = load_bundle(path)
    return save_bundle(tmp_path / "bundle.pt", b.build_model(), b.meta.model_copy(update=meta)).path
