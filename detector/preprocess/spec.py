"""The model's input spec: what a model card says its network expects (windows, context, spacing)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HUWindow:
    """A display window in HU, mapped to [0, 1]: ``clip((hu - (centre - width / 2)) / width, 0, 1)``."""

    centre: float
    width: float

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ValueError(f"window width must be > 0 HU, got {self.width}")


@dataclass(frozen=True)
class InputSpec:
    """2.5D input: ``2 * context_slices + 1`` planes around a slice, each through every window.

    Channels are window-major: channel ``w * planes + (offset + context_slices)`` holds window ``w``
    of the plane at ``offset``. Neighbour planes are the adjacent source slices when
    ``slice_step_mm`` is None, else planes ``offset * slice_step_mm`` away along the slice normal,
    interpolated between source slices. Planes are resampled in-plane to ``pixel_spacing_mm`` and
    padded (bottom and right, with 0) to a multiple of ``pad_multiple``.
    """

    pixel_spacing_mm: float
    windows: tuple[HUWindow, ...]
    context_slices: int = 1
    slice_step_mm: float | None = None
    pad_multiple: int = 32

    def __post_init__(self) -> None:
        if not self.pixel_spacing_mm > 0:
            raise ValueError(f"pixel_spacing_mm must be > 0, got {self.pixel_spacing_mm}")
        if not self.windows:
            raise ValueError("an input spec needs at least one HU window")
        if self.context_slices < 0:
            raise ValueError(f"context_slices must be >= 0, got {self.context_slices}")
        if self.slice_step_mm is not None and not self.slice_step_mm > 0:
            raise ValueError(f"slice_step_mm must be > 0 or None, got {self.slice_step_mm}")
        if self.pad_multiple < 1:
            raise ValueError(f"pad_multiple must be >= 1, got {self.pad_multiple}")

    @property
    def planes(self) -> int:
        """Planes per input: the slice and its neighbours."""
        return 2 * self.context_slices + 1

    @property
    def channels(self) -> int:
        """Input channels of the network: planes x windows."""
        return self.planes * len(self.windows)
