"""Anatomy masks on the real series: the lungs keep the juxtapleural LIDC-IDRI-0001 mass, what lies outside the body
is dropped, the intracranial space holds the brain and not the head holder; the engine drops findings outside."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from detector.infer import findings_at, load_model
from detector.infer.inference import region
from detector.io import Volume, read_ct_volume, read_headers
from detector.labels.lesions import planes_from_headers
from detector.labels.lidc import read_lidc
from detector.postprocess import SliceDetection
from detector.preprocess.regions import AnatomyMask, anatomy_mask


@pytest.fixture(scope="module")
def lidc_0001(ct_data: Callable[[str], Path]) -> tuple[Volume, np.ndarray, list[np.ndarray]]:
    """The series, the 4-reader nodule's centre and its outlines' centres (voxel z, y, x)."""
    folder = ct_data("lidc_idri_0001")
    volume = read_ct_volume(folder / "series")[0]
    planes = planes_from_headers(read_headers(folder / "series").headers)
    [nodule] = [r for r in read_lidc(next((folder / "annotations").glob("*.xml")), planes) if not r.ignore]
    geometry = volume.geometry
    outlines = [geometry.patient_to_voxel(o.plane.to_patient(o.polygon_px.mean(axis=0)))[0] for o in nodule.outlines]
    return volume, geometry.patient_to_voxel(nodule.centre_mm), outlines


def _outside_the_body(volume: Volume) -> np.ndarray:
    """Voxels in the room's air: the middle of the top rows of every fifth slice."""
    return np.array([[z, 4.0, volume.geometry.shape[2] / 2] for z in range(0, volume.geometry.shape[0], 5)])


def test_the_lungs_keep_the_juxtapleural_mass_and_nothing_outside_the_body(lidc_0001: tuple) -> None:
    volume, centre, outlines = lidc_0001
    lungs = anatomy_mask(volume, "lungs")
    assert isinstance(lungs, AnatomyMask)
    assert lungs.contains(centre) and lungs.contains(np.array(outlines)).all()
    assert volume.hu[tuple(np.round(centre).astype(int))] > -300  # a plain threshold lung mask leaves it out
    assert not lungs.contains(_outside_the_body(volume)).any()
    body = anatomy_mask(volume, "body")
    assert body is not None and body.contains(centre)
    assert not body.contains(_outside_the_body(volume)).any()
    assert lungs.cells.sum() < 0.6 * body.cells.sum()


def test_the_engine_drops_findings_centred_outside_the_card_anatomy(lidc_0001: tuple) -> None:
    volume, centre, _ = lidc_0001
    z, y, x = np.round(centre).astype(int)
    on_nodule = [SliceDetection(k, (x - 15.0, y - 15.0, x + 15.0, y + 15.0), 0.9, 0) for k in range(z - 2, z + 3)]
    in_air = [SliceDetection(k, (240.0, 2.0, 270.0, 30.0), 0.95, 0) for k in range(z - 2, z + 3)]
    model = load_model("chest")
    assert len(findings_at(on_nodule + in_air, volume, model)) == 2  # the shipped card: anatomy none
    lungs = replace(model, card=replace(model.card, anatomy="lungs"))
    [kept] = findings_at(on_nodule + in_air, volume, lungs, mask=region(volume, lungs))
    assert kept.score == pytest.approx(0.9)
    assert region(volume, model) is None and region(volume, model, "body") is not None


def test_the_intracranial_space_holds_the_brain_not_the_holder_or_the_room(ct_data: Callable[[str], Path]) -> None:
    volume = read_ct_volume(ct_data("head_ge_patient"))[0]
    inside = anatomy_mask(volume, "intracranial")
    assert inside is not None
    depth, rows, columns = volume.geometry.shape
    middle = np.array([[z, rows / 2, columns / 2] for z in range(depth // 3, 2 * depth // 3)])
    assert inside.contains(middle).all()
    assert not inside.contains(_outside_the_body(volume)).any()
    corners = np.array([[z, rows - 3.0, c] for z in range(depth) for c in (3.0, columns - 4.0)])
    assert not inside.contains(corners).any()


def test_an_unknown_anatomy_is_refused(lidc_0001: tuple) -> None:
    assert anatomy_mask(lidc_0001[0], "none") is None
    with pytest.raises(ValueError, match="anatomy must be one of body, lungs, intracranial, none, got 'liver'"):
        anatomy_mask(lidc_0001[0], "liver")
