"""The networks: study 000's U-Net and study 002's ResU-Net, in plain torch.

Both take any number of input bands and return LOGITS of shape (N, 1, H, W): training uses
BCE-with-logits, prediction applies the sigmoid. ``build_model`` is the one way in, so that the trainer
and the bundle (``build_model(meta["architecture"], in_channels=len(bands), **meta["model_args"])``)
build the very same network; ``model.config`` is what the trainer stores as ``model_args``.

Regenerate the parameter table of docs/models.md with
``python -c "from slidemap.nn.models import parameter_table; print(parameter_table())"``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, cast

import torch

from slidemap.errors import UserError
from slidemap.nn.models.resunet import ResidualUnit, ResUNet
from slidemap.nn.models.unet import SegmentationNet, UNet
from slidemap.raster.tiling import MIN_PATCH_SIZE, PATCH_MULTIPLE, check_patch_size

__all__ = ["MODELS", "PATCH_MULTIPLE", "MIN_PATCH_SIZE", "ResUNet", "ResidualUnit", "SegmentationNet",
           "UNet", "build_model", "check_patch_size", "count_layers", "count_parameters",
           "parameter_table", "receptive_field"]

MODELS: dict[str, type[SegmentationNet]] = {"unet": UNet, "resunet": ResUNet}
"""Architecture name (as stored in a bundle's ``architecture``) -> network class."""


def build_model(name: str, in_channels: int, filters: int = 16, **kwargs: Any) -> SegmentationNet:
    """Build a network by name; weights are initialised from torch's global RNG (seed it first).

    Args:
        name: ``"unet"`` or ``"resunet"``.
        in_channels: number of input bands.
        filters: maps of the first block (doubling with each down-sampling step).
        **kwargs: architecture options, e.g. ``batch_norm`` and ``dropout`` for ``unet``.

    Raises:
        UserError: an unknown name, a non-positive count, or an option the architecture lacks.
    """
    if name not in MODELS:
        raise UserError(f"--model {name}: unknown architecture; use one of {', '.join(MODELS)}")
    if isinstance(filters, bool) or not isinstance(filters, int) or filters < 1:
        raise UserError(f"--filters {filters}: must be a positive whole number (the studies used 16, 32, 64)")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise UserError(f"input bands {in_channels}: a network needs at least one input band")
    cls = MODELS[name]
    options = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "in_channels")]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise UserError(f"model option {', '.join(unknown)}: {name} takes only {', '.join(options)}")
    dropout = kwargs.get("dropout", 0.0)
    if not 0.0 <= float(dropout) < 1.0:
        raise UserError(f"dropout {dropout}: must be at least 0 and below 1")
    # every network takes filters; the base class's signature does not say so
    return cast(Callable[..., SegmentationNet], cls)(in_channels=in_channels, filters=filters, **kwargs)


def count_parameters(model: torch.nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) weights; batch-norm running statistics are buffers and never count."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_layers(model: torch.nn.Module) -> dict[str, int]:
    """Convolutional layers by kind, counted as the studies count them.

    ``conv`` is every 3x3 convolution plus the 1x1 head (study 002: U-Net 19, ResU-Net 15);
    ``projection`` the 1x1 shortcut convolutions; ``transposed`` the up-sampling layers.
    """
    counts = {"conv": 0, "projection": 0, "transposed": 0}
    for module in model.modules():
        if isinstance(module, torch.nn.ConvTranspose2d):
            counts["transposed"] += 1
        elif isinstance(module, torch.nn.Conv2d):
            is_projection = module.kernel_size == (1, 1) and module.out_channels != 1
            counts["projection" if is_projection else "conv"] += 1
    return counts


@torch.no_grad()
def receptive_field(name: str, size: int = 384) -> int:
    """Width in px of the input window that can influence one output pixel, measured, not derived.

    Every weight is set to a positive average (1/fan-in) and the input is positive, so that every ReLU
    passes; max-pooling becomes average pooling (same geometry, but its gradient reaches all four
    inputs). The window is where an output pixel's gradient is non-zero, widest over the 16 positions
    the up-sampling grid can put a pixel in.
    """
    model = build_model(name, in_channels=1, filters=2).double().eval()
    if isinstance(getattr(model, "pool", None), torch.nn.MaxPool2d):
        model.pool = torch.nn.AvgPool2d(2)
    for param in model.parameters():
        param.fill_(1.0 / (param[0].numel() if param.ndim > 1 else 1))
    widest = 0
    with torch.enable_grad():
        x = torch.ones(1, 1, size, size, dtype=torch.float64, requires_grad=True)
        out = model(x)
        for offset in range(PATCH_MULTIPLE):
            centre = size // 2 + offset
            (grad,) = torch.autograd.grad(out[0, 0, centre, centre], x, retain_graph=True)
            cols = torch.nonzero(grad[0, 0].abs().sum(dim=0))
            widest = max(widest, int(cols.max() - cols.min() + 1))
    return widest


def parameter_table(band_counts: tuple[int, ...] = (5, 6, 7, 14),
                    filter_counts: tuple[int, ...] = (16, 32, 64)) -> str:
    """Markdown table of trainable parameters per architecture, initial filters and input bands."""
    header = "| network | filters | " + " | ".join(f"{b} bands" for b in band_counts) + " |"
    lines = [header, "|" + "---|" * (2 + len(band_counts))]
    for name in MODELS:
        for filters in filter_counts:
            counts = [count_parameters(build_model(name, bands, filters)) for bands in band_counts]
            lines.append(f"| {name} | {filters} | " + " | ".join(f"{c:,}" for c in counts) + " |")
    return "\n".join(lines)
