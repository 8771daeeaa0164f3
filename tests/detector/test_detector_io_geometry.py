"""Patient geometry of loaded volumes: the tilted, unevenly spaced GE head series and synthetic stacks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from detector.io import GeometryError, StackGeometry, read_ct_volume, read_headers


@pytest.fixture(scope="module")
def ge_head(ct_data: Callable[[str], Path]):  # type: ignore[no-untyped-def]
    folder = ct_data("head_ge_patient")
    volume, _ = read_ct_volume(folder)
    positions = {h.sop_instance_uid: np.array(h.position) for h in read_headers(folder).headers}
    return volume, positions


def test_ge_head_positions_implied_by_geometry_match_image_position_patient(ge_head) -> None:  # type: ignore[no-untyped-def]
    volume, positions = ge_head
    g = volume.geometry
    implied = g.voxel_to_patient(np.stack([np.arange(g.shape[0]), np.zeros(g.shape[0]), np.zeros(g.shape[0])], axis=1))
    expected = np.stack([positions[uid] for uid in g.sop_instance_uids])
    assert volume.hu.shape == (28, 512, 512)
    assert np.max(np.linalg.norm(implied - expected, axis=1)) < 0.5


def test_ge_head_far_corner_of_every_slice_matches_dicom_pixel_formula(ge_head) -> None:  # type: ignore[no-untyped-def]
    volume, positions = ge_head
    g = volume.geometry
    for z, uid in enumerate(g.sop_instance_uids):
        # DICOM: P(c, r) = IPP + c * column spacing * row cosines + r * row spacing * column cosines
        expected = positions[uid] + 511 * 0.4882812 * g.row_direction + 300 * 0.4882812 * g.column_direction
        assert np.linalg.norm(g.voxel_to_patient([z, 300, 511]) - expected) < 0.5


def test_ge_head_keeps_tilt_and_uneven_gaps(ge_head) -> None:  # type: ignore[no-untyped-def]
    g = ge_head[0].geometry
    assert g.tilt_deg == pytest.approx(18.5, abs=0.1)
    gaps = g.slice_gaps_mm
    assert np.all(gaps > 0)
    assert gaps.min() == pytest.approx(1.08, abs=0.05) and gaps.max() == pytest.approx(7.0, abs=0.05)
    assert g.affine_error_mm > 0.5  # one uniform affine cannot describe this stack; per-slice positions do
    assert g.sop_instance_uids == tuple(dict.fromkeys(g.sop_instance_uids))


def test_ge_head_voxel_patient_round_trip_and_locate(ge_head) -> None:  # type: ignore[no-untyped-def]
    volume, positions = ge_head
    g = volume.geometry
    voxels = np.array([[0.0, 0.0, 0.0], [13.4, 250.5, 17.25], [27.0, 511.0, 511.0], [14.9, 3.0, 400.0]])
    assert np.allclose(g.patient_to_voxel(g.voxel_to_patient(voxels)), voxels, atol=1e-6)
    here = g.locate(g.voxel_to_patient([20.0, 120.0, 240.0]))
    assert here.sop_instance_uid == g.sop_instance_uids[20]
    assert (here.x, here.y) == pytest.approx((240.0, 120.0), abs=1e-6)
    assert here.distance_mm == pytest.approx(0.0, abs=1e-6)
    between = g.locate(positions[g.sop_instance_uids[5]] + 1.0 * g.normal)
    assert between.slice_index == 5 and between.distance_mm == pytest.approx(1.0)


def _geometry(positions: list[list[float]]) -> StackGeometry:
    return StackGeometry(
        row_direction=np.array([1.0, 0.0, 0.0]),
        column_direction=np.array([0.0, 1.0, 0.0]),
        pixel_spacing_mm=(0.5, 0.5),
        positions_mm=np.array(positions, dtype=np.float64),
        sop_instance_uids=tuple(f"1.2.3.{i}" for i in range(len(positions))),
        shape=(len(positions), 4, 4),
    )


def test_uniform_stack_affine_is_exact() -> None:
    g = _geometry([[0, 0, z] for z in (10.0, 12.5, 15.0, 17.5)])
    assert g.affine_error_mm < 1e-9
    assert np.allclose(g.affine @ [2, 3, 1, 1], [0.5, 1.5, 15.0, 1.0])


def test_duplicate_slice_positions_are_refused_with_the_uids() -> None:
    with pytest.raises(GeometryError, match=r"1\.2\.3\.0 and 1\.2\.3\.1"):
        _geometry([[0, 0, 5.0], [0, 0, 5.0], [0, 0, 6.0]])
