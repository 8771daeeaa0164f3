"""Feature pyramid: lateral 1x1 convs, top-down nearest x2 upsampling, summed, then a 3x3 smoothing conv."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class FeaturePyramid(nn.Module):
    """Maps backbone stage outputs (fine to coarse) to ``channels``-wide maps at the same strides."""

    def __init__(self, in_channels: tuple[int, ...], channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.smooth = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        merged = self.lateral[-1](features[-1])
        out = [self.smooth[-1](merged)]
        for k in range(len(features) - 2, -1, -1):
            lateral = self.lateral[k](features[k])
            merged = lateral + F.interpolate(merged, size=lateral.shape[-2:], mode="nearest")
            out.append(self.smooth[k](merged))
        return out[::-1]


class SingleLevel(nn.Module):
    """The FPN's stand-in when it is switched off: a 1x1 conv of the last stage only (single-scale)."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(in_channels, channels, 1)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        return [self.project(features[-1])]
