"""ResNet-style backbone sized for a 2-core CPU, with DCNv2 on the 3x3 convolutions of chosen stages."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detector.models.architecture import DetectorConfig
from detector.ops import ModulatedDeformConv2dPack


class DeformConv3x3(ModulatedDeformConv2dPack):
    """DCNv2 that runs in float32 under autocast (the deformable op has no half-precision autocast rule)."""

    def forward(self, input: Tensor) -> Tensor:
        device = input.device.type
        if torch.is_autocast_enabled(device):
            with torch.autocast(device, enabled=False):
                return super().forward(input.float())
        return super().forward(input)


def conv3x3(in_channels: int, out_channels: int, stride: int, deformable: bool) -> nn.Module:
    """A bias-free 3x3 conv (padding 1); DCNv2 when ``deformable`` (equal to the plain conv when fresh)."""
    if deformable:
        return DeformConv3x3(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm and a residual shortcut (1x1 projection when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, deformable: bool) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride, deformable)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels, 1, deformable)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Backbone(nn.Module):
    """Stem (3x3 stride 2) then one stride-2 stage per ``stage_channels`` entry; returns every stage's output."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, config.stem_channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(config.stem_channels),
            nn.ReLU(inplace=True),
        )
        stages = []
        width = config.stem_channels
        for i, (channels, blocks) in enumerate(zip(config.stage_channels, config.stage_blocks, strict=True)):
            deformable = i in config.dcn_stages
            layers = [BasicBlock(width, channels, 2, deformable)]
            layers += [BasicBlock(channels, channels, 1, deformable) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            width = channels
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        """[B, C, H, W] -> one map per stage, stage i at stride 2 ** (i + 2)."""
        out = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out
