"""Model inputs: shapes, 2.5D channel order, slice interpolation, tilt alignment and the inverse pixel map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.io import StackGeometry, Volume
from detector.preprocess import HUWindow, InputSpec, context_planes, model_input, plane_mapping

WIDE = HUWindow(centre=100.0, width=1000.0)


def _volume(hu: np.ndarray, positions: list[list[float]], spacing_mm: float = 0.5) -> Volume:
    geometry = StackGeometry(
        row_direction=np.array([1.0, 0.0, 0.0]),
        column_direction=np.array([0.0, 1.0, 0.0]),
        pixel_spacing_mm=(spacing_mm, spacing_mm),
        positions_mm=np.asarray(positions, dtype=np.float64),
        sop_instance_uids=tuple(f"1.2.3.{i}" for i in range(len(positions))),
        shape=hu.shape,  # type: ignore[arg-type]
    )
    return Volume(hu, geometry, "1.2.3", 3, "1.2", None, "1.2.840.10008.5.1.4.1.1.2", 1.0)


def _blob(shape: tuple[int, int], x: float, y: float, sigma: float = 3.0) -> np.ndarray:
    rows, columns = np.mgrid[: shape[0], : shape[1]]
    return (1000.0 * np.exp(-((columns - x) ** 2 + (rows - y) ** 2) / (2 * sigma**2))).astype(np.float32)


def _centroid_xy(image: torch.Tensor) -> np.ndarray:
    w = image.double().numpy()
    rows, columns = np.mgrid[: w.shape[0], : w.shape[1]]
    return np.array([(w * columns).sum() / w.sum(), (w * rows).sum() / w.sum()])


def test_shapes_follow_the_spec() -> None:
    volume = _volume(np.zeros((5, 512, 512), np.int16), [[0, 0, z] for z in range(5)], spacing_mm=0.4882812)
    spec = InputSpec(pixel_spacing_mm=0.7, windows=(HUWindow(40, 80), WIDE), context_slices=1, pad_multiple=32)
    batch = model_input(volume, [0, 2, 4], spec)
    assert spec.channels == 6
    assert batch.images.shape == (3, 6, 384, 384)
    assert batch.images.dtype == torch.float32
    assert batch.mapping.resampled_shape == (357, 357)
    assert batch.mapping.model_spacing_mm[0] == pytest.approx(0.7, abs=0.002)
    assert batch.slice_indices == (0, 2, 4)


def test_channels_are_window_major_with_neighbours_clamped_at_the_ends() -> None:
    hu = np.stack([np.full((8, 8), 10 * k, np.int16) for k in range(4)])
    volume = _volume(hu, [[0, 0, 2.0 * k] for k in range(4)])
    narrow = HUWindow(centre=15.0, width=20.0)
    spec = InputSpec(pixel_spacing_mm=0.5, windows=(WIDE, narrow), context_slices=1, pad_multiple=1)
    means = model_input(volume, [0], spec).images[0].mean(dim=(1, 2))
    wide = [(v + 400) / 1000 for v in (0, 0, 10)]
    assert means.tolist() == pytest.approx(wide + [0.0, 0.0, 0.25])


def test_slice_step_interpolates_between_uneven_slices() -> None:
    z = [0.0, 1.0, 4.0, 11.0]
    hu = np.stack([np.full((4, 4), v, np.float32) for v in z])  # HU equals the slice position
    spec = InputSpec(pixel_spacing_mm=0.5, windows=(WIDE,), context_slices=2, slice_step_mm=1.5, pad_multiple=1)
    planes = context_planes(_volume(hu, [[0, 0, v] for v in z]), 1, spec)
    assert planes[:, 0, 0].tolist() == pytest.approx([0.0, 0.0, 1.0, 2.5, 4.0])


def test_tilted_neighbours_are_aligned_along_the_normal() -> None:
    shift_mm, step_mm, spacing = 1.3, 4.0, 0.5
    y_patient, x_patient = 20.0, 14.0
    # gantry tilt: each slice's origin moves 1.3 mm along y, so the blob sits on different rows
    hu = np.stack([_blob((64, 64), x_patient / spacing, (y_patient - k * shift_mm) / spacing) for k in range(3)])
    volume = _volume(hu, [[0, k * shift_mm, k * step_mm] for k in range(3)], spacing)
    assert volume.geometry.tilt_deg == pytest.approx(np.degrees(np.arctan(shift_mm / step_mm)))
    spec = InputSpec(pixel_spacing_mm=spacing, windows=(WIDE,), context_slices=1, pad_multiple=1)
    centres = [_centroid_xy(p) for p in context_planes(volume, 1, spec)]
    expected = np.array([x_patient, y_patient - shift_mm]) / spacing
    for centre in centres:
        assert centre == pytest.approx(expected, abs=0.05)


def test_model_pixels_map_back_to_source_pixels() -> None:
    source_xy = (300.3, 120.7)
    hu = np.stack([_blob((512, 512), *source_xy) for _ in range(2)])
    volume = _volume(hu, [[0, 0, 0], [0, 0, 1]], spacing_mm=0.5)
    spec = InputSpec(pixel_spacing_mm=1.0, windows=(HUWindow(500.0, 1000.0),), context_slices=0)
    batch = model_input(volume, [0], spec)
    mapping = batch.mapping
    assert mapping.to_source(_centroid_xy(batch.images[0, 0])) == pytest.approx(source_xy, abs=0.1)
    box = np.array([10.0, 20.0, 30.5, 41.0])
    assert mapping.box_to_source(box) == pytest.approx([20.5, 40.5, 61.5, 82.5])
    assert np.allclose(mapping.to_model(mapping.to_source([[3.2, 7.9], [0.0, 200.0]])), [[3.2, 7.9], [0.0, 200.0]])


def test_padding_lies_bottom_right_and_is_zero() -> None:
    mapping = plane_mapping((100, 90), (1.0, 1.0), 1.0, 32)
    assert (mapping.resampled_shape, mapping.padded_shape) == ((100, 90), (128, 96))
    out = mapping.resample(torch.ones(1, 100, 90))
    assert out[0, :100, :90].min() == 1.0 and out[0, 100:].abs().max() == 0 and out[0, :, 90:].abs().max() == 0


def test_bad_spec_and_indices_are_refused() -> None:
    with pytest.raises(ValueError, match="window width must be > 0 HU"):
        HUWindow(40, 0)
    with pytest.raises(ValueError, match="at least one HU window"):
        InputSpec(pixel_spacing_mm=0.7, windows=())
    with pytest.raises(ValueError, match="pixel_spacing_mm must be > 0"):
        InputSpec(pixel_spacing_mm=0.0, windows=(WIDE,))
    volume = _volume(np.zeros((2, 4, 4), np.int16), [[0, 0, 0], [0, 0, 1]])
    with pytest.raises(IndexError, match=r"slice indices \[2\] outside the volume's 2 slices"):
        model_input(volume, [2], InputSpec(pixel_spacing_mm=0.5, windows=(WIDE,)))
