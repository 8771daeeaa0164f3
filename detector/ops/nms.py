"""Greedy non-maximum suppression of 2D boxes over torch.ops.ctnode.nms."""

import torch
from torch import Tensor

import detector.ops._library  # noqa: F401  (registers torch.ops.ctnode)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices of the 2D boxes kept by greedy NMS, by decreasing score.

    Boxes are [N, 4] (x1, y1, x2, y2) with area (x2 - x1) * (y2 - y1). Taking
    boxes by decreasing score (ties in input order), each kept box removes
    every later box whose IoU with it exceeds ``iou_threshold``. Two empty
    boxes have an undefined IoU and never remove each other. Returns int64 [M].
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"nms: boxes must be [N, 4] (x1, y1, x2, y2), got {tuple(boxes.shape)}")
    return torch.ops.ctnode.nms(boxes, scores, iou_threshold)


@torch.library.register_fake("ctnode::nms")
def _nms_fake(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((kept,), dtype=torch.long)
