"""Detection losses: sigmoid focal loss (or plain BCE for the ablation) and the anchor assignment they train on."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from detector.models.anchors import box_iou, encode
from detector.models.architecture import DetectorConfig

POSITIVE_IOU = 0.5
NEGATIVE_IOU = 0.4
IGNORE = -1
BACKGROUND = -2


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float | None = 0.25, gamma: float = 2.0) -> Tensor:
    """Summed ``-alpha_t (1 - p_t) ** gamma log(p_t)`` over every element, p = sigmoid(logits).

    ``p_t`` is p where the target is 1 and 1 - p where it is 0; ``alpha_t`` is ``alpha`` for
    targets 1 and ``1 - alpha`` for targets 0 (no weighting when ``alpha`` is None). With
    ``gamma = 0`` and ``alpha = None`` it is the summed binary cross-entropy.
    """
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma if gamma else ce
    if alpha is not None:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.sum()


@dataclass(frozen=True)
class AnchorTargets:
    """What each anchor should predict: its class (or background, or ignored) and its box deltas."""

    labels: Tensor
    """[N] int64: class index for positives, ``BACKGROUND`` for negatives, ``IGNORE`` in between."""
    deltas: Tensor
    """[N, 4] regression targets (meaningful for positives only)."""



def assign(anchors: Tensor, boxes: Tensor, labels: Tensor) -> AnchorTargets:
    """RetinaNet assignment: IoU >= 0.5 positive, < 0.4 background, else ignored.

    Each ground-truth box also claims the anchors of its highest IoU, so findings smaller than
    every anchor (a 2 mm lesion) still train some anchor.
    """
    n = anchors.shape[0]
    if boxes.numel() == 0:
        return AnchorTargets(torch.full((n,), BACKGROUND, dtype=torch.long), torch.zeros(n, 4))
    iou = box_iou(anchors, boxes)
    best_iou, best_box = iou.max(dim=1)
    out = torch.full((n,), IGNORE, dtype=torch.long)
    out[best_iou < NEGATIVE_IOU] = BACKGROUND
    positive = best_iou >= POSITIVE_IOU
    per_box_best = iou.max(dim=0).values
    claimed_anchor, claimed_box = torch.nonzero((iou == per_box_best[None]) & (per_box_best[None] > 0), as_tuple=True)
    best_box[claimed_anchor] = claimed_box
    positive[claimed_anchor] = True
    out[positive] = labels[best_box[positive]]
    return AnchorTargets(out, encode(boxes[best_box], anchors))


def detection_loss(
    config: DetectorConfig, cls_logits: Tensor, box_deltas: Tensor, targets: list[AnchorTargets]
) -> tuple[Tensor, Tensor]:
    """(classification, box) losses of a batch, each normalised by the number of positive anchors.

    ``cls_logits`` is [B, N, K], ``box_deltas`` [B, N, 4]; box loss is smooth L1 on positives.
    """
    labels = torch.stack([t.labels for t in targets])
    deltas = torch.stack([t.deltas for t in targets])
    positive = labels >= 0
    valid = labels != IGNORE
    num_pos = max(1.0, float(positive.sum()))
    onehot = torch.zeros_like(cls_logits)
    onehot[positive] = F.one_hot(labels[positive], config.num_classes).to(cls_logits.dtype)
    if config.loss == "focal":
        cls = sigmoid_focal_loss(cls_logits[valid], onehot[valid], config.focal_alpha, config.focal_gamma)
    else:
        cls = sigmoid_focal_loss(cls_logits[valid], onehot[valid], None, 0.0)
    box = F.smooth_l1_loss(box_deltas[positive], deltas[positive], beta=1 / 9, reduction="sum")
    return cls / num_pos, box / num_pos
