"""On-the-fly augmentation: the 8 symmetries of the square (rotations by 90° and flips).

A landslide has no preferred orientation in a north-up image, so every symmetry of a square chip is an
equally valid training sample. Study 000 applied them once, offline, and then validated on rotated copies
of training chips (a leak); here they are drawn afresh per sample and epoch, after the validation split,
on the batch tensor on the training device, the same for image and mask.

Symmetry ``s`` in 0..7: flip left-right if ``s >= 4``, then rotate by ``s % 4`` quarter turns.
"""

from __future__ import annotations

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
