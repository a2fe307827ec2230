"""Study 002's ResU-Net, after Zhang, Liu and Wang (2018), "Road extraction by deep residual U-Net".

Seven pre-activation residual units: three in the encoder, a bridge, three in the decoder. A unit computes
``y = shortcut(x) + conv(relu(bn(conv(relu(bn(x))))))``; the shortcut is the identity where shapes agree
and a 1x1 convolution + BN (stride 2 when down-sampling) where they do not. The first unit has no BN/ReLU
before its first convolution (its input is the raw standardised image), as in Zhang et al. Down-sampling
is a stride-2 first convolution in units 2, 3 and the bridge (no max-pooling), so the network has three
down-sampling steps and takes inputs that are multiples of 8 px. Each decoder unit follows a 2x2
transposed-convolution up-sampling (study 002's Conv2DTranspose; Zhang et al. up-sampled bilinearly) and
the concatenation with the encoder unit of the same size. A 1x1 convolution gives the logits.
Counting as the study does: 7 units x 2 convs + the head = 15 convolutional layers (the 1x1 shortcuts and
the 3 transposed convolutions come on top).
"""

from __future__ import annotations

import torch
from torch import nn

from slidemap.nn.models.unet import SegmentationNet

RESUNET_DEPTH = 3
"""Down-sampling steps of the ResU-Net: inputs must be multiples of 2**3 = 8 px."""


class ResidualUnit(nn.Module):
    """Pre-activation residual unit: (BN, ReLU, conv) twice, plus the shortcut.

    Args:
        in_channels: maps coming in.
        out_channels: maps going out.
        stride: 2 for a down-sampling unit (its first convolution and its shortcut stride).
        first: the network's first unit, which starts with the convolution (no BN/ReLU on the image).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, first: bool = False) -> None:
        super().__init__()
        pre: list[nn.Module] = [] if first else [nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True)]
        self.residual = nn.Sequential(
            *pre,
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.stride = stride
        if in_channels == out_channels and stride == 1:
            self.shortcut: nn.Module = nn.Identity()
        else:
            # A 1x1 convolution with stride 2 samples the even rows and columns; it is computed as that
            # sampling followed by a stride-1 1x1 convolution (the same function and weights), because
            # torch 2.13's CPU backward of a strided 1x1 convolution on channels-last tensors corrupts the
            # heap for some batch sizes ("double free or corruption"; reproduced with torch alone).
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shortcut (down-sampled, projected where the shape changes) plus the residual branch."""
        # The residual branch never modifies x in place (its first in-place ReLU acts on BN's output, or,
        # in the first unit, on a convolution's), so the shortcut still sees the unit's input.
        sampled = x[..., ::self.stride, ::self.stride] if self.stride > 1 else x
        return self.shortcut(sampled) + self.residual(x)


class ResUNet(SegmentationNet):
    """Study 002's ResU-Net (3 down-sampling steps, 15 convolutional layers).

    Args:
        in_channels: input bands.
        filters: maps of the first unit; they double at each down-sampling step, so the bridge has
            ``filters * 8`` (Zhang et al.: 64 -> 512).
    """

    name = "resunet"
    size_multiple = 2**RESUNET_DEPTH

    def __init__(self, in_channels: int, filters: int = 16) -> None:
        super().__init__(in_channels, {"filters": filters})
        widths = [filters * 2**level for level in range(RESUNET_DEPTH + 1)]
        self.encoder = nn.ModuleList([ResidualUnit(in_channels, widths[0], first=True)])
        for shallow, deep in zip(widths[:-2], widths[1:-1], strict=True):
            self.encoder.append(ResidualUnit(shallow, deep, stride=2))
        self.bridge = ResidualUnit(widths[-2], widths[-1], stride=2)
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for deep, shallow in zip(widths[:0:-1], widths[-2::-1], strict=True):
            self.upsample.append(nn.ConvTranspose2d(deep, shallow, kernel_size=2, stride=2))
            self.decoder.append(ResidualUnit(2 * shallow, shallow))
        self.head = nn.Conv2d(filters, 1, kernel_size=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Residual encoder, bridge, and decoder on the up-sampled maps concatenated with the skips."""
        skips = []
        for unit in self.encoder:
            x = unit(x)
            skips.append(x)
        x = self.bridge(x)
        for up, unit, skip in zip(self.upsample, self.decoder, reversed(skips), strict=True):
            x = unit(torch.cat([up(x), skip], dim=1))
        return self.head(x)
