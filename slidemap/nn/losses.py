"""Segmentation losses that ignore nodata: BCE, BCE + Dice and focal, all on logits.

Every loss takes logits (B, 1, H, W) and a uint8 mask (B, H, W) with 1 landslide, 0 background and 255
nodata. Nodata pixels get weight 0, so a chip's blank border or a cloud never teaches the network
anything. Losses are computed in float32 whatever the autocast precision, for a stable sum.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from slidemap.errors import UserError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES = ("bce", "bce+dice", "focal")
FOCAL_GAMMA = 2.0


def _targets(logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (B, H, W) in float32, 0/1 targets and 0/1 validity weights."""
    logits = logits.float().reshape(mask.shape)
    target = (mask == 1).to(logits.dtype)
    valid = (mask != 255).to(logits.dtype)
    return logits, target, valid


def _pos_weight(pos_weight: float | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if pos_weight is None else torch.tensor(float(pos_weight), device=like.device)


def masked_bce(logits: torch.Tensor, mask: torch.Tensor, pos_weight: float | None = None) -> torch.Tensor:
    """Mean binary cross-entropy over valid pixels; ``pos_weight`` scales the landslide terms."""
    logits, target, valid = _targets(logits, mask)
    total = F.binary_cross_entropy_with_logits(logits, target, weight=valid, reduction="sum",
                                               pos_weight=_pos_weight(pos_weight, logits))
    return total / valid.sum().clamp_min(1.0)


def soft_dice(logits: torch.Tensor, mask: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of the landslide class over all valid pixels of the batch (pooled, as F1 is)."""
    logits, target, valid = _targets(logits, mask)
    prob = torch.sigmoid(logits) * valid
    target = target * valid
    inter = (prob * target).sum()
    return 1.0 - (2.0 * inter + eps) / (prob.sum() + target.sum() + eps)


def masked_focal(logits: torch.Tensor, mask: torch.Tensor, pos_weight: float | None = None,
                 gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """Focal loss (Lin et al. 2017): BCE scaled by (1 - p_t)^gamma, so easy background pixels fade out."""
    logits, target, valid = _targets(logits, mask)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none",
                                             pos_weight=_pos_weight(pos_weight, logits))
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    return ((1 - p_t) ** gamma * bce * valid).sum() / valid.sum().clamp_min(1.0)


def build_loss(name: str, pos_weight: float | None = None) -> LossFn:
    """The loss called ``name`` (``bce``, ``bce+dice``, ``focal``) as ``fn(logits, mask) -> scalar``."""
    if pos_weight is not None and not pos_weight > 0:
        raise UserError(f"--pos-weight {pos_weight}: must be a positive number (e.g. 5 to weigh landslide "
                        f"pixels five times)")
    if name == "bce":
        return lambda logits, mask: masked_bce(logits, mask, pos_weight)
    if name == "bce+dice":
        return lambda logits, mask: masked_bce(logits, mask, pos_weight) + soft_dice(logits, mask)
    if name == "focal":
        return lambda logits, mask: masked_focal(logits, mask, pos_weight)
    raise UserError(f"--loss {name}: unknown loss; use one of {', '.join(LOSSES)}")
