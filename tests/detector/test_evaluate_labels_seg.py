"""The DICOM SEG label reader: one lesion per connected blob of each segment, for every SEG type; bad files."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from detector.io import read_headers
from detector.labels.lesions import ImagePlane, LabelError, planes_from_headers
from detector.labels.seg import components, is_seg, read_seg

pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent:UserWarning")

Blob = tuple[int, int, int, float, float]
"""(slice, row, column) centre, in-plane radius (pixels), radius along z (slices)."""
BLOBS: dict[int, list[Blob]] = {
    1: [(20, 200, 150, 12.0, 2.5), (25, 200, 150, 8.0, 1.5)],  # one empty slice (23) between the two
    2: [(40, 300, 320, 6.0, 1.5)],
}
LABELS = {1: "nodule", 2: "mass"}


@pytest.fixture(scope="module")
def chest(ct_data: Callable[[str], Path]) -> tuple[list[Dataset], dict[str, ImagePlane]]:
    """The chest series (pixels included, as highdicom needs them) sorted along z, and their planes."""
    folder = ct_data("chest_lung_pet_ct_dx_A0001") / "series_5mm_lung_kernel"
    series = sorted((pydicom.dcmread(p) for p in folder.glob("*.dcm")),
                    key=lambda ds: float(ds.ImagePositionPatient[2]))
    return series, planes_from_headers(read_headers(folder).headers)


def _mask(shape: tuple[int, int, int], blob: Blob) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    cz, cy, cx, radius, radius_z = blob
    return ((x - cx) / radius) ** 2 + ((y - cy) / radius) ** 2 + ((z - cz) / radius_z) ** 2 <= 1


def _seg(series: list[Dataset], kind: str) -> hd.seg.Segmentation:
    shape = (len(series), int(series[0].Rows), int(series[0].Columns))
    masks = {n: np.any([_mask(shape, b) for b in blobs], axis=0) for n, blobs in BLOBS.items()}
    if kind == "LABELMAP":
        pixels = np.zeros(shape, dtype=np.uint8)
        for n, mask in masks.items():
            pixels[mask] = n
    else:
        pixels = np.stack([masks[n] for n in sorted(masks)], axis=-1).astype(np.float32)
        if kind == "FRACTIONAL":
            pixels[23, ..., 0] = np.maximum(pixels[23, ..., 0], 0.3)  # below one half: no bridge between the blobs
    segments = [
        hd.seg.SegmentDescription(
            segment_number=n, segment_label=label,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for n, label in LABELS.items()
    ]
    return hd.seg.Segmentation(series, pixels if kind == "FRACTIONAL" else pixels.astype(np.uint8), kind, segments,
                               hd.UID(), 300, hd.UID(), 1, "ctnode tests", "blobs", "1", "1")


@pytest.fixture(scope="module", params=["BINARY", "FRACTIONAL", "LABELMAP"])
def seg(request: pytest.FixtureRequest, chest: tuple[list[Dataset], dict[str, ImagePlane]]) -> hd.seg.Segmentation:
    return _seg(chest[0], request.param)


def _write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _assert_blobs_read_back(path: Path, series: list[Dataset], planes: dict[str, ImagePlane]) -> None:
    records = read_seg(path, planes)
    expected = [(n, b) for n, blobs in BLOBS.items() for b in blobs]
    assert len(records) == len(expected)
    for record, (n, (z, y, x, radius, radius_z)) in zip(records, expected, strict=True):
        plane = planes[str(series[z].SOPInstanceUID)]
        assert record.label == LABELS[n] and not record.ignore
        assert np.linalg.norm(np.subtract(record.centre_mm, plane.to_patient([[x, y]])[0])) < 0.5
        assert record.diameter_mm == pytest.approx((2 * radius + 1) * plane.pixel_spacing_mm[1])
        slices = range(z - int(radius_z), z + int(radius_z) + 1)
        assert [o.plane.sop_instance_uid for o in record.outlines] == [str(series[i].SOPInstanceUID) for i in slices]
        assert record.outlines[len(slices) // 2].contains(np.array(record.centre_mm))


def test_each_blob_of_each_segment_is_a_lesion(seg: hd.seg.Segmentation,
                                                chest: tuple[list[Dataset], dict[str, ImagePlane]],
                                                tmp_path: Path) -> None:
    series, planes = chest
    assert is_seg(seg)
    _assert_blobs_read_back(_write(seg, tmp_path / "seg.dcm"), series, planes)


@pytest.mark.parametrize("dropped", ["DerivationImageSequence", "PlanePositionSequence"])
def test_frames_map_by_source_image_or_by_position(chest: tuple[list[Dataset], dict[str, ImagePlane]],
                                                   tmp_path: Path, dropped: str) -> None:
    series, planes = chest
    seg = copy.deepcopy(_seg(series, "BINARY"))
    for frame in seg.PerFrameFunctionalGroupsSequence:
        del frame[dropped]
    _assert_blobs_read_back(_write(seg, tmp_path / "seg.dcm"), series, planes)


def test_components_join_faces_only() -> None:
    mask = np.zeros((3, 6, 6), dtype=bool)
    mask[0, 0:3, 0] = mask[0, 2, 0:3] = mask[0, 0:3, 2] = True  # a U on one slice: one component
    mask[1, 4, 4] = mask[1, 5, 5] = True  # diagonal neighbours: two components
    mask[1, 0, 5] = mask[2, 0, 5] = True  # a pixel on two slices: one component
    found = sorted(components(mask), key=lambda c: sorted(c.items()))
    assert found == [{0: (0, 0, 2, 2)}, {1: (4, 4, 4, 4)}, {1: (5, 0, 5, 0), 2: (5, 0, 5, 0)}, {1: (5, 5, 5, 5)}]


def _assert_label_error(path: Path, planes: dict[str, ImagePlane], *words: str) -> None:
    with pytest.raises(LabelError) as caught:
        read_seg(path, planes)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message


def test_bad_files_raise_one_line_errors(chest: tuple[list[Dataset], dict[str, ImagePlane]], tmp_path: Path) -> None:
    series, planes = chest
    seg = _seg(series, "BINARY")
    path = _write(seg, tmp_path / "seg.dcm")
    missing = str(series[20].SOPInstanceUID)
    _assert_label_error(path, {u: p for u, p in planes.items() if u != missing}, missing, "not among the given images")

    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(path.read_bytes()[:3000])
    _assert_label_error(truncated, planes)
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\x00" * 50)
    _assert_label_error(garbage, planes, "not a readable DICOM file")
    image = _write(series[0], tmp_path / "ct.dcm")
    assert not is_seg(series[0])
    _assert_label_error(image, planes, "not a DICOM SEG")

    undefined = copy.deepcopy(seg)
    undefined.PerFrameFunctionalGroupsSequence[0].SegmentIdentificationSequence[0].ReferencedSegmentNumber = 7
    _assert_label_error(_write(undefined, tmp_path / "undefined.dcm"), planes, "segment 7")
