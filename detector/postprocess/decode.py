"""From network outputs to per-slice detections: score filter, box decoding, per-class NMS (csrc op)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from detector.models import decode
from detector.ops import nms

NMS_IOU = 0.3
MAX_CANDIDATES = 1000
MAX_PER_SLICE = 50


@dataclass(frozen=True)
class Detections:
    """Detections on one slice: boxes [M, 4] (x1, y1, x2, y2), scores [M], class indices [M], best first."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.scores.numel())


def decode_slice(
    logits: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    score_threshold: float,
    iou_threshold: float = NMS_IOU,
    max_candidates: int = MAX_CANDIDATES,
    max_detections: int = MAX_PER_SLICE,
) -> Detections:
    """One slice's [N, K] logits and [N, 4] deltas on [N, 4] anchors -> NMS-ed detections >= threshold.

    Only the ``max_candidates`` best (anchor, class) pairs above the threshold are decoded; NMS
    runs per class; at most ``max_detections`` survive.
    """
    scores = torch.sigmoid(logits.float())
    flat = scores.reshape(-1)
    keep = torch.nonzero(flat >= score_threshold).squeeze(1)
    if keep.numel() > max_candidates:
        keep = keep[flat[keep].topk(max_candidates).indices]
    classes = logits.shape[1]
    anchor_index, labels = keep // classes, keep % classes
    boxes = decode(deltas[anchor_index].float(), anchors[anchor_index])
    kept_scores = flat[keep]
    survivors = [
        keep_of_class[nms(boxes[keep_of_class], kept_scores[keep_of_class], iou_threshold)]
        for keep_of_class in (torch.nonzero(labels == c).squeeze(1) for c in labels.unique().tolist())
    ]
    chosen = torch.cat(survivors) if survivors else torch.zeros(0, dtype=torch.long)
    chosen = chosen[kept_scores[chosen].argsort(descending=True, stable=True)][:max_detections]
    return Detections(boxes=boxes[chosen], scores=kept_scores[chosen], labels=labels[chosen])
