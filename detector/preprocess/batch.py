"""Assemble model inputs: 2.5D context, in-plane resampling and HU windows, per the model's input spec."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from detector.io import Volume
from detector.preprocess.context import context_planes
from detector.preprocess.plane import PlaneMapping, plane_mapping
from detector.preprocess.spec import InputSpec


@dataclass(frozen=True, eq=False)
class ModelInput:
    """A batch of network inputs (B, C, H, W) in [0, 1], the source slices they centre on, and the grid map."""

    images: torch.Tensor
    slice_indices: tuple[int, ...]
    mapping: PlaneMapping


def volume_mapping(volume: Volume, spec: InputSpec) -> PlaneMapping:
    """The in-plane mapping every slice of ``volume`` shares under ``spec``."""
    _, rows, columns = volume.geometry.shape
    return plane_mapping((rows, columns), volume.geometry.pixel_spacing_mm, spec.pixel_spacing_mm, spec.pad_multiple)


def window(planes: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """(P, H, W) HU -> (windows * P, H, W) in [0, 1], window-major."""
    return torch.cat([((planes - (w.centre - w.width / 2)) / w.width).clamp_(0.0, 1.0) for w in spec.windows])


def model_input(volume: Volume, indices: Sequence[int], spec: InputSpec) -> ModelInput:
    """Network inputs for the slices ``indices`` of ``volume``: (len(indices), spec.channels, H, W) float32."""
    depth = volume.geometry.shape[0]
    bad = [i for i in indices if not 0 <= i < depth]
    if bad:
        raise IndexError(f"slice indices {bad} outside the volume's {depth} slices")
    mapping = volume_mapping(volume, spec)
    images = [window(mapping.resample(context_planes(volume, i, spec)), spec) for i in indices]
    height, width = mapping.padded_shape
    batch = torch.stack(images) if images else torch.empty(0, spec.channels, height, width)
    return ModelInput(images=batch, slice_indices=tuple(indices), mapping=mapping)
