"""Per-crop augmentation: horizontal flips, Gaussian HU noise and HU scale/offset jitter on windowed channels."""

from __future__ import annotations

import numpy as np
import torch

from detector.preprocess import InputSpec
from detector.train.config import Augmentation
from detector.train.samples import Sample


def flip(sample: Sample) -> Sample:
    """The sample mirrored left-right, its boxes and ignore boxes with it."""
    size_x = sample.image.shape[-1]

    def flipped(boxes: torch.Tensor) -> torch.Tensor:
        out = boxes.clone()
        out[:, [0, 2]] = size_x - 1 - boxes[:, [2, 0]]
        return out

    return Sample(image=sample.image.flip(-1), boxes=flipped(sample.boxes), labels=sample.labels,
                  ignore=flipped(sample.ignore))


def _in_hu(image: torch.Tensor, spec: InputSpec, scale: float, offset_hu: float, noise_hu: torch.Tensor | None
           ) -> torch.Tensor:
    """``image``'s channels as if their HU had been ``hu * scale + offset_hu + noise_hu`` (one noise plane per
    context plane, shared by its windows) before windowing; saturated pixels (0 or 1) keep their value."""
    out = image.clone()
    for w, window in enumerate(spec.windows):
        low = window.centre - window.width / 2
        for p in range(spec.planes):
            channel = image[w * spec.planes + p]
            shifted = scale * channel + ((scale - 1.0) * low + offset_hu) / window.width
            if noise_hu is not None:
                shifted = shifted + noise_hu[p] / window.width
            inside = (channel > 0.0) & (channel < 1.0)
            out[w * spec.planes + p] = torch.where(inside, shifted.clamp(0.0, 1.0), channel)
    return out


def augment(sample: Sample, augmentation: Augmentation, spec: InputSpec, rng: np.random.Generator) -> Sample:
    """``sample`` (a float crop) with the augmentation's random draws from ``rng`` applied."""
    if augmentation.flips and rng.random() < 0.5:
        sample = flip(sample)
    scale = 1.0 + rng.uniform(-augmentation.intensity_scale, augmentation.intensity_scale) \
        if augmentation.intensity_scale else 1.0
    offset = rng.uniform(-augmentation.intensity_offset_hu, augmentation.intensity_offset_hu) \
        if augmentation.intensity_offset_hu else 0.0
    noise = None
    if augmentation.hu_noise_sigma is not None:
        sigma = rng.uniform(*augmentation.hu_noise_sigma)
        shape = (spec.planes, *sample.image.shape[-2:])
        noise = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma))
    if scale == 1.0 and offset == 0.0 and noise is None:
        return sample
    return Sample(image=_in_hu(sample.image, spec, scale, offset, noise), boxes=sample.boxes, labels=sample.labels,
                  ignore=sample.ignore)
