"""RetinaNet head: a classification and a box branch, weights shared across every pyramid level."""

from __future__ import annotations

import math

from torch import Tensor, nn


def _branch(channels: int, convs: int, out_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
    layers.append(nn.Conv2d(channels, out_channels, 3, padding=1))
    return nn.Sequential(*layers)


class RetinaHead(nn.Module):
    """Per level: class logits [B, A * K, H, W] and box deltas [B, A * 4, H, W].

    The last classification bias starts at ``-log((1 - prior) / prior)``, so every anchor begins
    with foreground probability ``prior`` and the flood of background does not swamp the first steps.
    """

    def __init__(self, channels: int, convs: int, anchors: int, classes: int, prior: float) -> None:
        super().__init__()
        self.classes = classes
        self.cls = _branch(channels, convs, anchors * classes)
        self.box = _branch(channels, convs, anchors * 4)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        last_cls = self.cls[-1]
        assert isinstance(last_cls, nn.Conv2d)
        nn.init.constant_(last_cls.bias, -math.log((1 - prior) / prior))

    def forward(self, levels: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        return [self.cls(x) for x in levels], [self.box(x) for x in levels]
