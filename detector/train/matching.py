"""Anchor targets for training: the model's RetinaNet assignment, plus adaptive positives and ignore regions.

* Adaptive positives: IoU >= 0.5 leaves a lesion of a few pixels one positive anchor (the one it claims),
  too thin a signal for the small findings the head model exists for. Each box also takes, among its
  ``CANDIDATES`` best-overlapping anchors of every anchor size, those whose IoU reaches the candidates'
  mean + standard deviation and whose centre lies on the box (grown by ``CENTRE_MARGIN_PX``): the
  adaptive rule of ATSS, with anchor sizes in the place of its pyramid levels.
* Ignore regions: background anchors that cover most of an ignore box (or most of which an ignore box
  covers) are set to ``IGNORE``. A lesion's pole slice or the part of a lesion a crop cut off is real
  lesion signal; teaching it as background punishes the network for seeing lesions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detector.models import AnchorTargets, assign, box_iou, encode
from detector.models.loss import BACKGROUND, IGNORE

CANDIDATES = 4
CENTRE_MARGIN_PX = 1.0
IGNORE_OVERLAP = 0.3
"""Intersection over the smaller of (anchor, ignore box) from which a background anchor is ignored."""


def _overlap_of_smaller(anchors: Tensor, boxes: Tensor) -> Tensor:
    """[N, M] intersection area over the smaller of the two areas."""
    low = torch.maximum(anchors[:, None, :2], boxes[None, :, :2])
    high = torch.minimum(anchors[:, None, 2:], boxes[None, :, 2:])
    inter = (high - low).clamp(min=0).prod(dim=-1)
    area_a = (anchors[:, 2:] - anchors[:, :2]).clamp(min=0).prod(dim=-1)
    area_b = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(dim=-1)
    smaller = torch.minimum(area_a[:, None], area_b[None, :]).clamp(min=1e-6)
    return inter / smaller


def _adaptive_positives(anchors: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """(anchor indices, box indices) of the adaptive positives; an anchor wanted by two boxes goes to its best."""
    iou = box_iou(anchors, boxes)
    sizes = anchors[:, 2] - anchors[:, 0]
    picked = []
    for size in sizes.unique():
        group = torch.nonzero(sizes == size).squeeze(1)
        picked.append(group[iou[group].topk(min(CANDIDATES, group.numel()), dim=0).indices])
    indices = torch.cat(picked)
    values = iou.gather(0, indices)
    threshold = values.mean(dim=0) + values.std(dim=0, unbiased=False)
    centres = (anchors[indices, :2] + anchors[indices, 2:]) / 2
    grown_low, grown_high = boxes[:, :2] - CENTRE_MARGIN_PX, boxes[:, 2:] + CENTRE_MARGIN_PX
    inside = ((centres >= grown_low[None]) & (centres <= grown_high[None])).all(dim=-1)
    chosen = (values >= threshold[None]) & inside & (values > 0)
    wanted = torch.zeros_like(iou, dtype=torch.bool)
    wanted[indices[chosen], torch.nonzero(chosen, as_tuple=True)[1]] = True
    rows = torch.nonzero(wanted.any(dim=1)).squeeze(1)
    best = torch.where(wanted[rows], iou[rows], torch.full_like(iou[rows], -1.0)).argmax(dim=1)
    return rows, best


def training_targets(anchors: Tensor, boxes: Tensor, labels: Tensor, ignore: Tensor) -> AnchorTargets:
    """:func:`detector.models.assign`, plus the adaptive positives, with background on ignore boxes ignored."""
    targets = assign(anchors, boxes, labels)
    out, deltas = targets.labels.clone(), targets.deltas.clone()
    if boxes.numel():
        rows, best = _adaptive_positives(anchors, boxes)
        new = out[rows] < 0
        rows, best = rows[new], best[new]
        out[rows] = labels[best]
        deltas[rows] = encode(boxes[best], anchors[rows])
    if ignore.numel():
        near = (_overlap_of_smaller(anchors, ignore) >= IGNORE_OVERLAP).any(dim=1)
        out[near & (out == BACKGROUND)] = IGNORE
    return AnchorTargets(out, deltas)
