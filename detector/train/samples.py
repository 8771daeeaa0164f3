"""Training samples: real CT slices with synthetic lesions, as model inputs with their boxes on the model grid."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from detector.io import Volume
from detector.preprocess import InputSpec, PlaneMapping, model_input
from detector.synth import InsertedLesion, Target, insert_lesions, random_lesion, slab

MIN_BOX_PX = 2.0
"""A lesion cross-section whose longer side is under this (model pixels) is too small to be a finding on its
slice (the pole of a lesion, or a lesion below the evaluation's 2 mm hit radius): its box is *ignored*,
neither a positive nor background, in training and in evaluation."""
MIN_VISIBLE = 0.5
"""A box a crop cuts to less than this fraction of its area becomes an ignore box for that crop."""


def _no_boxes() -> torch.Tensor:
    return torch.zeros(0, 4)


@dataclass(frozen=True)
class Sample:
    """One network input [C, H, W], its ground-truth boxes [M, 4] (model pixels), class indices [M],
    and ignore boxes [I, 4]: lesion parts where the network is neither rewarded nor punished."""

    image: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    ignore: torch.Tensor = field(default_factory=_no_boxes)


def _slice_of(lesion_z: float, radius_slices: float, depth: int, rng: np.random.Generator) -> int:
    low = int(np.clip(np.ceil(lesion_z - radius_slices * 0.8), 0, depth - 1))
    high = int(np.clip(np.floor(lesion_z + radius_slices * 0.8), low, depth - 1))
    return int(rng.integers(low, high + 1))


def render_sample(
    target: Target,
    volume: Volume,
    spec: InputSpec,
    rng: np.random.Generator,
    lesions: int,
    known: dict[int, list[tuple[float, float, float, float]]] | None = None,
) -> Sample:
    """A random slice of ``volume`` with ``lesions`` (0 for a negative) synthetic lesions on or across it.

    ``known`` (slice index -> source-pixel boxes) are real findings of the background series: ignore boxes.
    """
    depth = volume.geometry.shape[0]
    reach = max(1, int(np.ceil(spec.context_slices * (spec.slice_step_mm or 1.0) / min(volume.geometry.slice_gaps_mm))))
    placed = [lesion for lesion in (random_lesion(target, volume, rng) for _ in range(lesions)) if lesion is not None]
    if placed:
        first = placed[0]
        z_mm = volume.geometry.patient_to_voxel(first.centre_mm)[0]
        radius_slices = max(first.radii_mm) / float(np.median(volume.geometry.slice_gaps_mm))
        z = _slice_of(float(z_mm), radius_slices, depth, rng)
    else:
        z = int(rng.integers(depth))
    start, stop = max(z - reach, 0), min(z + reach + 1, depth)
    if stop - start < 2:
        start, stop = (start, start + 2) if start + 2 <= depth else (depth - 2, depth)
    part = slab(volume, start, stop)
    part, inserted = insert_lesions(part, placed)
    batch = model_input(part, [z - start], spec)
    boxes = [b for b in (_model_box(batch.mapping, truth, z - start) for truth in inserted) if b is not None]
    big = [b for b in boxes if max(b[2] - b[0], b[3] - b[1]) >= MIN_BOX_PX]
    small = [b for b in boxes if max(b[2] - b[0], b[3] - b[1]) < MIN_BOX_PX]
    for real in (known or {}).get(z, []):
        small.append([float(v) for v in batch.mapping.to_model(np.array([real[:2], real[2:]])).reshape(-1)])
    return Sample(
        image=batch.images[0],
        boxes=torch.tensor(big, dtype=torch.float32).reshape(-1, 4),
        labels=torch.zeros(len(big), dtype=torch.long),
        ignore=torch.tensor(small, dtype=torch.float32).reshape(-1, 4),
    )


def _model_box(mapping: PlaneMapping, truth: InsertedLesion, z: int) -> list[float] | None:
    box = truth.slice_boxes.get(z)
    if box is None:
        return None
    corners = mapping.to_model(np.array([box[:2], box[2:]]))
    return [float(v) for v in corners.reshape(-1)]


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def crop(sample: Sample, size: int, rng: np.random.Generator, on_lesion: bool) -> Sample:
    """A ``size`` x ``size`` window of the sample (around a lesion when asked and there is one), boxes clipped.

    A box the window cuts to less than ``MIN_VISIBLE`` of its area becomes an ignore box (the visible part
    of a lesion must not be taught as background); ignore boxes that leave the window are dropped.
    """
    _, height, width = sample.image.shape
    size_y, size_x = min(size, height), min(size, width)
    if on_lesion and len(sample.boxes):
        x1, y1, x2, y2 = sample.boxes[int(rng.integers(len(sample.boxes)))].tolist()
        cx = (x1 + x2) / 2 + rng.uniform(-size_x / 3, size_x / 3)
        cy = (y1 + y2) / 2 + rng.uniform(-size_y / 3, size_y / 3)
        left, top = int(np.clip(cx - size_x / 2, 0, width - size_x)), int(np.clip(cy - size_y / 2, 0, height - size_y))
    else:
        left, top = int(rng.integers(0, width - size_x + 1)), int(rng.integers(0, height - size_y + 1))
    image = sample.image[:, top: top + size_y, left: left + size_x]
    shift = torch.tensor([left, top, left, top], dtype=torch.float32)
    low = torch.tensor([-0.5, -0.5, -0.5, -0.5])
    high = torch.tensor([size_x - 0.5, size_y - 0.5, size_x - 0.5, size_y - 0.5])
    boxes = sample.boxes - shift
    clipped = torch.maximum(torch.minimum(boxes, high), low)
    keep = _area(clipped) >= MIN_VISIBLE * _area(boxes)
    ignore = torch.maximum(torch.minimum(sample.ignore - shift, high), low)
    ignore = torch.cat([ignore, clipped[~keep]])
    ignore = ignore[_area(ignore) > 0]
    return Sample(image=image, boxes=clipped[keep], labels=sample.labels[keep], ignore=ignore)
