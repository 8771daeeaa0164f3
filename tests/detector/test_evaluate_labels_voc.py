"""detector.labels.voc: the real Lung-PET-CT-Dx tumour boxes as one 3D lesion, slice gaps, names, bad files."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from detector.io import read_headers
from detector.labels.lesions import ImagePlane, LabelError, planes_from_headers
from detector.labels.voc import is_voc, read_boxes, read_voc

Study = tuple[list[Path], dict[str, ImagePlane]]


@pytest.fixture(scope="module")
def a0001(ct_data: Callable[[str], Path]) -> Study:
    """The annotation files in slice order along the normal, and the planes of the series."""
    folder = ct_data("chest_lung_pet_ct_dx_A0001")
    planes = planes_from_headers(read_headers(folder / "series_5mm_lung_kernel").headers)
    files = sorted((folder / "annotations").glob("*.xml"), key=lambda p: float(planes[p.stem].position_mm[2]))
    return files, planes


def test_the_tumour_boxes_on_11_slices_are_one_lesion_centred_inside_them(a0001: Study) -> None:
    files, planes = a0001
    [lesion] = read_voc(files, planes)
    assert lesion.label == "A" and not lesion.ignore and len(files) == 11
    assert {o.plane.sop_instance_uid for o in lesion.outlines} == {p.stem for p in files}
    assert any(o.contains(np.array(lesion.centre_mm)) for o in lesion.outlines)
    assert 50.0 < lesion.diameter_mm < 80.0, lesion.diameter_mm  # 87 px of 0.85 mm across, 50 mm along the normal


def test_boxes_join_across_one_unannotated_slice_but_not_two(a0001: Study) -> None:
    files, planes = a0001
    assert len(read_voc(files[:4] + files[5:], planes)) == 1
    apart = read_voc(files[:4] + files[6:], planes)
    assert len(apart) == 2 and sorted(len(r.outlines) for r in apart) == [4, 5]


def test_boxes_of_another_name_are_another_lesion(a0001: Study, tmp_path: Path) -> None:
    files, planes = a0001
    other = tmp_path / files[5].name
    other.write_text(files[5].read_text().replace("<name>A</name>", "<name>B</name>"))
    lesions = read_voc(files[:5] + [other] + files[6:], planes)
    assert sorted((r.label, len(r.outlines)) for r in lesions) == [("A", 10), ("B", 1)]


def test_inclusive_pixel_bounds_become_box_edges(a0001: Study) -> None:
    files, _ = a0001
    assert files[0].stem.endswith("185555685346057091761687385642")  # xmin 298, ymin 298, xmax 335, ymax 374
    assert [(b.name, b.edges) for b in read_boxes(files[0])] == [("A", (297.5, 297.5, 335.5, 374.5))]


def test_a_file_for_an_image_outside_the_study_is_a_label_error(a0001: Study, tmp_path: Path) -> None:
    files, planes = a0001
    stray = tmp_path / "1.2.3.4.xml"
    stray.write_text(files[0].read_text())
    with pytest.raises(LabelError, match=r"1\.2\.3\.4\.xml: references image 1\.2\.3\.4 which is not in the study"):
        read_voc(files + [stray], planes)


_BOX = "<annotation><object><name>A</name>{}</object></annotation>"
_MALFORMED = {
    "<annotation><object><name>A</name>": "not well-formed XML",
    _BOX.format("<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax></bndbox>"): "object 1 needs a name and a bndbox",
    _BOX.format("<bndbox><xmin>1</xmin><ymin>x</ymin><xmax>4</xmax><ymax>4</ymax></bndbox>"): "object 1 needs a name",
    _BOX.format(""): "object 1 needs a name and a bndbox",
    "<LidcReadMessage><readingSession/></LidcReadMessage>": "not a PASCAL-VOC annotation",
}


@pytest.mark.parametrize(
    ("text", "what"), list(_MALFORMED.items()), ids=["syntax", "no-ymax", "bad-ymin", "no-box", "root"]
)
def test_a_malformed_file_raises_a_one_line_label_error_naming_it(
    a0001: Study, tmp_path: Path, text: str, what: str
) -> None:
    files, planes = a0001
    path = tmp_path / files[0].name
    path.write_text(text)
    with pytest.raises(LabelError) as error:
        read_voc([path], planes)
    message = str(error.value)
    assert path.name in message and what in message and "\n" not in message


def test_is_voc_tells_a_voc_file_from_other_xml(a0001: Study) -> None:
    assert is_voc(ET.parse(a0001[0][0]).getroot())
    assert not is_voc(ET.fromstring("<LidcReadMessage><readingSession/></LidcReadMessage>"))
