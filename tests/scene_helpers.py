"""Helpers of the real-scene tests (label rasters, target resolution, indices and pre-event layers): small
synthetic rasters with irregular landslides, and an untrained model bundle to predict with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from affine import Affine
from conftest import write_raster

from slidemap.formats.bundle import BundleMeta
from slidemap.formats.scene import Recipe
from slidemap.nn.bundle import save_bundle
from slidemap.nn.models import build_model


def blobs(shape: tuple[int, int], n: int, radius: tuple[float, float], seed: int) -> np.ndarray:
    """Boolean (H, W) of ``n`` irregular blobs (ellipses with wavy rims) of ``radius`` pixels (min, max)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    rows, cols = np.mgrid[0:h, 0:w] + 0.5
    out = np.zeros(shape, dtype=bool)
    for _ in range(n):
        r = rng.uniform(*radius)
        cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
        ay, ax = rng.uniform(0.6, 1.0) * r, r
        theta = np.arctan2(rows - cy, cols - cx)
        rim = 1 + 0.2 * np.sin(3 * theta + rng.uniform(0, 6)) + 0.1 * np.sin(5 * theta)
        out |= ((rows - cy) / ay) ** 2 + ((cols - cx) / ax) ** 2 <= rim**2
    return out


def image_with(tmp: Path, slides: np.ndarray, transform: Affine, crs: str,
               bands=("blue", "green", "red", "nir"), seed: int = 0, name: str = "image.tif") -> Path:
    """A uint16 image (nodata 0) whose landslide pixels are bright bare ground, the rest vegetation."""
    rng = np.random.default_rng(seed)
    veg = np.array([300, 600, 400, 3000])[: len(bands), None, None]
    bare = np.array([1400, 1500, 1600, 2000])[: len(bands), None, None]
    pixels = np.where(slides[None], bare, veg) + rng.normal(0, 40, (len(bands), *slides.shape))
    return write_raster(tmp / name, np.clip(pixels, 1, 60000).astype(np.uint16), crs, transform, nodata=0,
                        descriptions=list(bands))


def untrained_bundle(path: Path, bands, recipe: Recipe | None = None, seed: int = 0) -> Path:
    """A small random U-Net bundle for ``bands`` (unit statistics), optionally with a recipe."""
    torch.manual_seed(seed)
    net = build_model("unet", in_channels=len(bands), filters=4)
    meta = BundleMeta(architecture="unet", model_args=net.config, bands=list(bands), patch_size=32,
                      stats={b: {"mean": 0.0, "std": 1000.0} for b in bands},
                      thresholds={"0.5": 0.5, "best": 0.5}, recipe=recipe)
    return save_bundle(path, net, meta).path
