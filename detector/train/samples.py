"""Training samples: real CT slices with synthetic lesions, as model inputs with their boxes on the model grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from detector.io import Volume
from detector.preprocess import InputSpec, PlaneMapping, model_input
from detector.synth import InsertedLesion, Target, insert_lesions, random_lesion, slab


@dataclass(frozen=True)
class Sample:
    """One network input [C, H, W] and its ground-truth boxes [M, 4] (model pixels) and class indices [M]."""

    image: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor


def _slice_of(lesion_z: float, radius_slices: float, depth: int, rng: np.random.Generator) -> int:
    low = int(np.clip(np.ceil(lesion_z - radius_slices * 0.8), 0, depth - 1))
    high = int(np.clip(np.floor(lesion_z + radius_slices * 0.8), low, depth - 1))
    return int(rng.integers(low, high + 1))


def render_sample(
    target: Target, volume: Volume, spec: InputSpec, rng: np.random.Generator, lesions: int
) -> Sample:
    """A random slice of ``volume`` with ``lesions`` (0 for a negative) synthetic lesions on or across it."""
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
    boxes = [_model_box(batch.mapping, truth, z - start) for truth in inserted]
    kept = [b for b in boxes if b is not None]
    return Sample(
        image=batch.images[0],
        boxes=torch.tensor(kept, dtype=torch.float32).reshape(-1, 4),
        labels=torch.zeros(len(kept), dtype=torch.long),
    )


def _model_box(mapping: PlaneMapping, truth: InsertedLesion, z: int) -> list[float] | None:
    box = truth.slice_boxes.get(z)
    if box is None:
        return None
    corners = mapping.to_model(np.array([box[:2], box[2:]]))
    return [float(v) for v in corners.reshape(-1)]


def crop(sample: Sample, size: int, rng: np.random.Generator, on_lesion: bool) -> Sample:
    """A ``size`` x ``size`` window of the sample (around a lesion when asked and there is one), boxes clipped."""
    _, height, width = sample.image.shape
    if on_lesion and len(sample.boxes):
        x1, y1, x2, y2 = sample.boxes[int(rng.integers(len(sample.boxes)))].tolist()
        cx, cy = (x1 + x2) / 2 + rng.uniform(-size / 3, size / 3), (y1 + y2) / 2 + rng.uniform(-size / 3, size / 3)
        left, top = int(np.clip(cx - size / 2, 0, width - size)), int(np.clip(cy - size / 2, 0, height - size))
    else:
        left, top = int(rng.integers(0, width - size + 1)), int(rng.integers(0, height - size + 1))
    image = sample.image[:, top: top + size, left: left + size]
    shift = torch.tensor([left, top, left, top], dtype=torch.float32)
    boxes = sample.boxes - shift
    clipped = torch.stack(
        [boxes[:, 0].clamp(-0.5, size - 0.5), boxes[:, 1].clamp(-0.5, size - 0.5),
         boxes[:, 2].clamp(-0.5, size - 0.5), boxes[:, 3].clamp(-0.5, size - 0.5)], dim=1
    )
    area = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    full = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = area >= 0.5 * full
    return Sample(image=image, boxes=clipped[keep], labels=sample.labels[keep])
