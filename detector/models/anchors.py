"""Square anchors per pyramid level, and the (dx, dy, log dw, log dh) box coding relative to them.

Coordinates are model-grid pixels with the first pixel's centre at (0, 0); boxes are
(x1, y1, x2, y2) on that continuous grid, so a box around pixel 0 alone is (-0.5, -0.5, 0.5, 0.5).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_MAX_LOG_SCALE = math.log(1000.0 / 16)


def level_anchors(height: int, width: int, stride: int, sizes: tuple[float, ...]) -> Tensor:
    """[height * width * len(sizes), 4] anchors, location-major then size, centred on each cell."""
    offset = (stride - 1) / 2.0
    ys = torch.arange(height, dtype=torch.float32) * stride + offset
    xs = torch.arange(width, dtype=torch.float32) * stride + offset
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    centres = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2)
    half = torch.tensor(sizes, dtype=torch.float32).reshape(1, -1, 1) / 2.0
    return torch.cat([centres - half, centres + half], dim=-1).reshape(-1, 4)


def anchors_for(
    shapes: list[tuple[int, int]], strides: tuple[int, ...], sizes: tuple[tuple[float, ...], ...]
) -> Tensor:
    """All levels' anchors concatenated, in the order the head's outputs are flattened."""
    return torch.cat([level_anchors(h, w, s, a) for (h, w), s, a in zip(shapes, strides, sizes, strict=True)])


def encode(boxes: Tensor, anchors: Tensor) -> Tensor:
    """[N, 4] target boxes -> [N, 4] deltas relative to [N, 4] anchors."""
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + aw / 2, anchors[:, 1] + ah / 2
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    bx, by = boxes[:, 0] + bw / 2, boxes[:, 1] + bh / 2
    return torch.stack([(bx - ax) / aw, (by - ay) / ah, torch.log(bw / aw), torch.log(bh / ah)], dim=1)


def decode(deltas: Tensor, anchors: Tensor) -> Tensor:
    """[N, 4] deltas on [N, 4] anchors -> [N, 4] boxes; the inverse of :func:`encode` (scales clamped)."""
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + aw / 2, anchors[:, 1] + ah / 2
    cx, cy = ax + deltas[:, 0] * aw, ay + deltas[:, 1] * ah
    w = aw * torch.exp(deltas[:, 2].clamp(max=_MAX_LOG_SCALE))
    h = ah * torch.exp(deltas[:, 3].clamp(max=_MAX_LOG_SCALE))
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """[N, M] IoU of [N, 4] and [M, 4] boxes (0 where the union is empty)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    low = torch.maximum(a[:, None, :2], b[None, :, :2])
    high = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (high - low).clamp(min=0).prod(dim=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))
