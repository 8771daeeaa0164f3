"""detector.synth: lesions land at their patient position with their density, inside the skull or the lungs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from detector.io import StackGeometry, Volume, read_ct_volume
from detector.synth import Lesion, candidate_mask, insert_lesions, random_lesion, slab


def _water_volume(depth: int = 20) -> Volume:
    """A 0 HU axial stack, 0.5 mm pixels, 2 mm slices, origin (-16, -16, 50)."""
    geometry = StackGeometry(
        row_direction=np.array([1.0, 0.0, 0.0]),
        column_direction=np.array([0.0, 1.0, 0.0]),
        pixel_spacing_mm=(0.5, 0.5),
        positions_mm=np.array([[-16.0, -16.0, 50.0 + 2.0 * k] for k in range(depth)]),
        sop_instance_uids=tuple(f"1.2.3.{k}" for k in range(depth)),
        shape=(depth, 64, 64),
    )
    ct_image = "1.2.840.10008.5.1.4.1.1.2"
    return Volume(np.zeros(geometry.shape, np.int16), geometry, "1.2.3", 1, "1.2", None, ct_image, 2.0)


def test_an_ellipsoid_lands_at_its_patient_centre_with_its_density_and_extent() -> None:
    volume = _water_volume()
    lesion = Lesion(centre_mm=(-3.0, 2.5, 70.0), radii_mm=(4.0, 3.0, 5.0), hu=80.0, noise_hu=0.0)
    out, [inserted] = insert_lesions(volume, [lesion])
    hu = out.hu.astype(np.float64)
    zyx = np.argwhere(hu > 40)
    centroid = out.geometry.voxel_to_patient(zyx).mean(axis=0)
    assert centroid == pytest.approx(lesion.centre_mm, abs=0.3)
    z, y, x = np.rint(out.geometry.patient_to_voxel(lesion.centre_mm)).astype(int)
    assert hu[z, y, x] == 80
    assert volume.hu.max() == 0, "the input volume is left untouched"
    # the slice through the centre shows the full 8 x 6 mm cross-section (16 x 12 px at 0.5 mm)
    x1, y1, x2, y2 = inserted.slice_boxes[int(z)]
    assert (x2 - x1, y2 - y1) == pytest.approx((16, 12), abs=1.01)
    # 5 mm semi-axis along z with 2 mm slices: slices 8..12 (z = 66..74 mm) carry it
    assert sorted(inserted.slice_boxes) == [8, 9, 10, 11, 12]


def test_an_irregular_lesion_differs_from_its_ellipsoid_but_stays_near_it() -> None:
    volume = _water_volume()
    smooth = Lesion(centre_mm=(0.0, 0.0, 70.0), radii_mm=(5.0, 5.0, 5.0), hu=70.0, noise_hu=0.0)
    irregular = replace(smooth, shape="irregular", seed=7)
    a = insert_lesions(volume, [smooth])[0].hu > 35
    b = insert_lesions(volume, [irregular])[0].hu > 35
    assert (a != b).sum() > 0.05 * a.sum()
    assert abs(int(b.sum()) - int(a.sum())) < 0.5 * a.sum()


def test_slab_keeps_patient_geometry() -> None:
    volume = _water_volume()
    part = slab(volume, 5, 9)
    assert part.geometry.shape[0] == 4
    assert np.allclose(part.geometry.voxel_to_patient([0, 3, 4]), volume.geometry.voxel_to_patient([5, 3, 4]))


def test_random_head_lesions_sit_inside_the_skull_and_chest_lesions_in_the_lungs(
    ct_data: Callable[[str], Path],
) -> None:
    rng = np.random.default_rng(3)
    for folder, target in (("head_ge_patient", "head"), ("chest_lung_pet_ct_dx_A0001", "chest")):
        volume, _ = read_ct_volume(ct_data(folder))
        for _ in range(3):
            lesion = random_lesion(target, volume, rng)
            assert lesion is not None
            z, y, x = np.rint(volume.geometry.patient_to_voxel(lesion.centre_mm)).astype(int)
            z = int(np.clip(z, 0, volume.geometry.shape[0] - 1))
            mask = candidate_mask(target, volume.hu[z])
            near = mask[max(y - 2, 0): y + 3, max(x - 2, 0): x + 3]
            assert near.any(), f"{target} lesion centre is not where {target} lesions belong"
            low, high = (50, 90) if target == "head" else (-100, 60)
            assert low <= lesion.hu <= high


def test_no_lesion_lands_in_air_that_a_holder_or_the_table_encloses() -> None:
    # a skull ring (air inside, like the phantom) above a U-shaped holder of 1 px walls, open at the top:
    # the pocket inside the U lies between holder pixels on its row and its column, yet is outside air
    hu = np.full((128, 128), -1000, np.int16)
    yy, xx = np.mgrid[:128, :128]
    radius = np.hypot(yy - 50, xx - 64)
    hu[(radius >= 30) & (radius < 34)] = 1000
    hu[100:120, 20] = hu[100:120, 108] = hu[120, 20:109] = 500
    mask = candidate_mask("head", hu)
    assert mask[50, 64] and mask[30, 64], "the air cavity inside the skull stays a place for lesions"
    assert not mask[110, 64], "the pocket inside the holder is the room's air"
    assert not mask[90, 64] and not mask[5, 5]
    hu[60:64, 20] = 0  # a wall closing nothing changes nothing
    assert np.array_equal(candidate_mask("head", hu)[100:], mask[100:])


def test_no_nodule_lands_between_the_table_shells_under_the_patient() -> None:
    # a chest (tissue, lungs inside) on a table of two thin curved shells 3 px apart: the air between the
    # shells and under the back is enclosed on rows and columns, but it is the room's air, not lung
    hu = np.full((160, 160), -1000, np.int16)
    yy, xx = np.mgrid[:160, :160]
    body = ((yy - 70) / 50) ** 2 + ((xx - 80) / 70) ** 2 < 1
    hu[body] = 40
    hu[body & ((((yy - 70) / 35) ** 2 + ((xx - 55) / 20) ** 2 < 1) | (((yy - 70) / 35) ** 2 + ((xx - 105) / 20) ** 2 < 1))] = -850
    for offset in (0, 4):
        shell = np.abs(yy - (125 + offset + 0.004 * (xx - 80) ** 2)) < 0.6
        hu[shell & (xx > 5) & (xx < 155)] = 200
    mask = candidate_mask("chest", hu)
    assert mask[70, 55] and mask[70, 105], "the lungs stay the place for nodules"
    assert not mask[127, 80], "the gap between the table shells is outside air"
    assert not mask[122, 80] and not mask[5, 5]
