"""On-the-fly augmentation: the 8 symmetries of the square (rotations by 90° and flips), and photometric shifts.

A landslide has no preferred orientation in a north-up image, so every symmetry of a square chip is an
equally valid training sample. Study 000 applied them once, offline, and then validated on rotated copies
of training chips (a leak); here they are drawn afresh per sample and epoch, after the validation split,
on the batch tensor on the training device, the same for image and mask.

Symmetry ``s`` in 0..7: flip left-right if ``s >= 4``, then rotate by ``s % 4`` quarter turns.

Photometric augmentation (``train --photometric``) shows each chip as another sensor or another day would:
per-band gain and offset, a gain shared by all bands (illumination) and a tone curve (gamma), applied to
the image bands only (terrain layers and indices have no sensor gain), drawn per sample and epoch.
"""

from __future__ import annotations

import math

import torch

SYMMETRIES = 8


def draw_symmetries(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` symmetry indexes in 0..7 (int64, CPU) from ``generator``, so runs with a seed repeat."""
    return torch.randint(0, SYMMETRIES, (n,), generator=generator)


def transform(x: torch.Tensor, symmetry: int) -> torch.Tensor:
    """Apply one symmetry to the last two (square) dimensions of ``x``."""
    if symmetry >= 4:
        x = torch.flip(x, dims=(-1,))
    k = symmetry % 4
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


def apply_symmetries(images: torch.Tensor, masks: torch.Tensor,
                     symmetries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Transform sample ``i`` of ``images`` (B, C, S, S) and ``masks`` (B, S, S) by ``symmetries[i]``.

    Vectorised by grouping the batch by symmetry: at most 8 tensor operations per batch, whatever its size.
    """
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"augmentation needs square chips, got {tuple(images.shape[-2:])}")
    symmetries = symmetries.to(images.device)
    out_images, out_masks = torch.empty_like(images), torch.empty_like(masks)
    for s in range(SYMMETRIES):
        sel = torch.nonzero(symmetries == s).flatten()
        if sel.numel() == 0:
            continue
        out_images[sel] = transform(images[sel], s)
        out_masks[sel] = transform(masks[sel], s)
    return out_images, out_masks


# --- photometric: another sensor's gain and offset, another day's illumination ----------------------------

GAIN_SPREAD = 0.1
"""Per-band gain factor drawn log-uniformly from [1/(1+s), 1+s] (a sensor's band-to-band calibration)."""
ILLUMINATION_SPREAD = 0.2
"""Gain shared by every band of a chip, log-uniform in [1/(1+s), 1+s] (sun angle, haze, exposure)."""
OFFSET_SPREAD = 0.1
"""Per-band offset, uniform in [-s, s] band standard deviations (path radiance, a sensor's dark level)."""
GAMMA_SPREAD = 0.2
"""Exponent on the bands' values relative to their mean, log-uniform in [1/(1+s), 1+s] (a tone curve)."""


def _log_uniform(u: torch.Tensor, spread: float) -> torch.Tensor:
    """Uniform draws ``u`` in [0, 1) mapped log-uniformly onto [1/(1+spread), 1+spread]."""
    return torch.exp((2 * u - 1) * math.log1p(spread))


def draw_photometric(n: int, bands: int, generator: torch.Generator) -> torch.Tensor:
    """Photometric draws of ``n`` chips: (n, bands, 3) gain, offset and gamma, from ``generator``."""
    u = torch.rand(n, 2 * bands + 2, generator=generator, dtype=torch.float64)
    gain = _log_uniform(u[:, :bands], GAIN_SPREAD) * _log_uniform(u[:, bands:bands + 1], ILLUMINATION_SPREAD)
    offset = (2 * u[:, bands + 1:2 * bands + 1] - 1) * OFFSET_SPREAD
    gamma = _log_uniform(u[:, -1:], GAMMA_SPREAD).expand(n, bands)
    return torch.stack([gain, offset, gamma], dim=-1).float()


def apply_photometric(images: torch.Tensor, draws: torch.Tensor, mean_over_std: torch.Tensor) -> torch.Tensor:
    """Standardised chips (B, C, S, S) as the same ground seen with other gains, offsets and tone curve.

    With a band's raw value ``r = mean + std * x``, the chip is seen as ``(gain * mean * (r / mean) ** gamma)
    + offset * std`` and standardised again. ``mean_over_std`` (C,) is each band's mean over its standard
    deviation; bands where it is not positive (terrain, indices: no sensor gain applies) are left alone.
    """
    k = mean_over_std.to(images.device, images.dtype).view(1, -1, 1, 1)
    gain, offset, gamma = (draws[..., i].to(images.device, images.dtype)[..., None, None] for i in range(3))
    apply = (k > 0) & (images != 0).any(dim=1, keepdim=True)  # nodata (0 in every band) stays 0
    safe_k = torch.where(apply, k, torch.ones_like(k))
    relative = torch.clamp(1 + images / safe_k, min=1e-3)  # r / mean, kept positive
    seen = safe_k * (gain * relative ** gamma - 1) + offset
    return torch.where(apply, seen, images)
