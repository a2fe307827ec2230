"""Study 000's U-Net, and the small base every slidemap network shares.

The base (`SegmentationNet`) holds what training, the bundle and prediction rely on whatever the
architecture: logits out of shape (N, 1, H, W), a readable error for an input size the network cannot
take, and ``config``, the JSON-serialisable constructor arguments the bundle stores as ``model_args``.

The U-Net follows Soares et al. (2020), itself after Ronneberger et al. (2015): four encoder blocks of two
3x3 convolutions + ReLU, each followed by 2x2 max-pooling; a bottleneck block with ``filters * 16`` maps;
four decoder blocks that up-sample by a 2x2 transposed convolution, concatenate the encoder block of the
same size and apply two 3x3 convolutions + ReLU; a 1x1 convolution head. Batch norm (after each
convolution, before ReLU) and dropout (after each pooling and each concatenation) are optional.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional as F

from slidemap.raster.tiling import size_rule_message

UNET_DEPTH = 4
"""Down-sampling steps of the U-Net: inputs must be multiples of 2**4 = 16 px."""


class SegmentationNet(nn.Module):
    """Base of the slidemap networks: checks the input size, then returns logits (N, 1, H, W).

    Subclasses set ``name`` and ``size_multiple`` (2**down-sampling steps) and implement `logits`; the
    smallest input is twice ``size_multiple``, so the deepest maps are at least 2x2 (batch norm in
    training needs more than one value per channel). ``config`` holds the constructor arguments other
    than ``in_channels`` so that ``build_model(name, in_channels=..., **model.config)`` rebuilds it.
    """

    name: str = "base"
    size_multiple: int = 1

    def __init__(self, in_channels: int, config: dict[str, Any]) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.config = dict(config)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError, in the words of `check_patch_size`, for a shape the network cannot take."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{self.name}: input of shape {tuple(x.shape)} is not (N, {self.in_channels}, "
                             f"H, W); the network was built for {self.in_channels} bands")
        height, width = int(x.shape[-2]), int(x.shape[-1])
        multiple, minimum = self.size_multiple, 2 * self.size_multiple
        if min(height, width) < minimum or height % multiple or width % multiple:
            raise ValueError(size_rule_message(f"{self.name} cannot take a {height}x{width} px input",
                                               multiple, minimum))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, 1, H, W) of ``x`` (N, C, H, W), after :meth:`check_input`."""
        self.check_input(x)
        return self.logits(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """The network itself, without the shape check (the ONNX export traces this)."""
        raise NotImplementedError


def _conv3x3(in_channels: int, out_channels: int, batch_norm: bool) -> list[nn.Module]:
    """3x3 conv (padding 1, so sizes stay) [+ BN] + ReLU; no bias when BN follows (it would cancel)."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return layers


class DoubleConv(nn.Sequential):
    """The U-Net block: two 3x3 convolutions, each followed by [BN and] ReLU."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool) -> None:
        super().__init__(*_conv3x3(in_channels, out_channels, batch_norm),
                         *_conv3x3(out_channels, out_channels, batch_norm))


class UNet(SegmentationNet):
    """Study 000's U-Net (depth 4); with ``filters=32`` it is also study 002's U-Net.

    Args:
        in_channels: input bands.
        filters: maps of the first block; they double at each of the 4 down-sampling steps, so the
            bottleneck has ``filters * 16`` (study 000 compared 16, 32 and 64).
        batch_norm: batch norm after each 3x3 convolution (off in both studies' text).
        dropout: probability of dropping an activation after each pooling and each concatenation.
    """

    name = "unet"
    size_multiple = 2**UNET_DEPTH

    def __init__(self, in_channels: int, filters: int = 16, batch_norm: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__(in_channels, {"filters": filters, "batch_norm": batch_norm, "dropout": dropout})
        widths = [filters * 2**level for level in range(UNET_DEPTH + 1)]
        self.encoder = nn.ModuleList()
        previous = in_channels
        for width in widths[:-1]:
            self.encoder.append(DoubleConv(previous, width, batch_norm))
            previous = width
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(widths[-2], widths[-1], batch_norm)
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for deep, shallow in zip(widths[:0:-1], widths[-2::-1], strict=True):
            self.upsample.append(nn.ConvTranspose2d(deep, shallow, kernel_size=2, stride=2))
            self.decoder.append(DoubleConv(2 * shallow, shallow, batch_norm))
        # Element-wise dropout (as the Keras U-Net of the time): channel-wise dropout would wipe out a
        # large share of a 16-filter block at once.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Conv2d(filters, 1, kernel_size=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder, bottleneck, decoder with skips; without autograd, the faster :meth:`_inference_logits`."""
        if not self.training and not torch.is_grad_enabled():
            return self._inference_logits(x)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.dropout(self.pool(x))
        x = self.bottleneck(x)
        for up, block, skip in zip(self.upsample, self.decoder, reversed(skips), strict=True):
            x = block(self.dropout(torch.cat([up(x), skip], dim=1)))
        return self.head(x)

    def _inference_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The same function without autograd, in fewer passes over memory (prediction and validation).

        Pooling takes two element-wise maxima of strided views: the same values as ``MaxPool2d(2)``,
        whose CPU kernel also computes argmax indices, 4x faster. The decoder's first convolution is
        split by input channels, ``conv(cat(u, s)) = conv_u(u) + conv_s(s)``, so the concatenated map is
        never written: 13 % of a U-Net-16 forward pass on CPU went into ``torch.cat``. Sums are
        rounded in another order, so logits differ from the autograd path by float
        rounding only (about 1e-6 in fp32, 1e-3 in bf16).
        """
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = _max_pool_2x2(x)
        x = self.bottleneck(x)
        for up, block, skip in zip(self.upsample, self.decoder, reversed(skips), strict=True):
            u = up(x)
            seq = cast(DoubleConv, block)  # the decoder holds DoubleConv blocks
            conv, rest = cast(nn.Conv2d, seq[0]), list(seq)[1:]
            half = u.shape[1]
            x = F.conv2d(u, conv.weight[:, :half], conv.bias, padding=1)
            x += F.conv2d(skip, conv.weight[:, half:], None, padding=1)
            for layer in rest:
                x = layer(x)
        return self.head(x)


def _max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``MaxPool2d(2)`` of an even-sized map (NaN propagates alike), as maxima of four strided views."""
    return torch.maximum(torch.maximum(x[..., ::2, ::2], x[..., ::2, 1::2]),
                         torch.maximum(x[..., 1::2, ::2], x[..., 1::2, 1::2]))
