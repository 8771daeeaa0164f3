"""detector.labels.lidc: the real LIDC-IDRI reads as targets and ignore regions, the z fallback, bad files."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from detector.io import read_headers
from detector.labels.lesions import ImagePlane, LabelError, planes_from_headers
from detector.labels.lidc import is_lidc, read_lidc

NS = "{http://www.nih.gov}"
Study = tuple[Path, dict[str, ImagePlane]]


def _study(folder: Path) -> Study:
    return next((folder / "annotations").glob("*.xml")), planes_from_headers(read_headers(folder / "series").headers)


@pytest.fixture(scope="module")
def lidc_0001(ct_data: Callable[[str], Path]) -> Study:
    return _study(ct_data("lidc_idri_0001"))


@pytest.fixture(scope="module")
def lidc_0002(ct_data: Callable[[str], Path]) -> Study:
    return _study(ct_data("lidc_idri_0002"))


def _contour_z(xml: Path) -> set[float]:
    """imageZposition of every roi that is a contour (more than one point) in the file."""
    return {float(roi.findtext(f"{NS}imageZposition") or "nan")
            for roi in ET.parse(xml).getroot().iter(f"{NS}roi") if len(roi.findall(f"{NS}edgeMap")) > 1}


def test_the_large_nodule_of_0001_is_the_one_target_of_all_4_readers(lidc_0001: Study) -> None:
    xml, planes = lidc_0001
    lesions = read_lidc(xml, planes)
    targets = [r for r in lesions if not r.ignore]
    assert len(targets) == 1
    target = targets[0]
    assert target.readers == 4 and target.label == "nodule" and target.reason == ""
    assert 28.0 < target.diameter_mm < 33.0, target.diameter_mm  # mean of the 4 readers' extents: 30.6 mm
    outlined_z = {float(o.plane.position_mm[2]) for o in target.outlines}
    assert outlined_z == _contour_z(xml) and min(outlined_z) == -125.0 and max(outlined_z) == -105.0
    assert -125.0 < target.centre_mm[2] < -105.0
    assert any(o.contains(np.array(target.centre_mm)) for o in target.outlines)


def test_the_small_and_non_nodule_marks_of_0001_are_ignore_regions(lidc_0001: Study) -> None:
    lesions = read_lidc(*lidc_0001)
    small = [r for r in lesions if r.ignore and r.label == "nodule"]
    assert len(small) == 3 and all(r.diameter_mm == 3.0 and r.readers == 3 and "< 3 mm" in r.reason for r in small)
    others = [r for r in lesions if r.label == "non-nodule"]
    assert others and all(r.ignore and r.diameter_mm == 6.0 and "non-nodule" in r.reason for r in others)
    assert len(small) + len(others) + 1 == len(lesions)


def test_the_nodule_of_0002_marked_by_2_of_4_readers_is_an_ignore_region(lidc_0002: Study) -> None:
    lesions = read_lidc(*lidc_0002)
    assert all(r.ignore for r in lesions), "no LIDC-0002 mark has 3 readers saying nodule >= 3 mm"
    large = [r for r in lesions if r.label == "nodule" and r.readers == 2 and r.diameter_mm > 3.0]
    assert len(large) == 1 and "marked by 2 of 4 readers" in large[0].reason
    assert 28.0 < large[0].diameter_mm < 36.0, large[0].diameter_mm


def test_rois_fall_back_to_image_z_position_when_the_sop_uid_is_unknown(lidc_0001: Study) -> None:
    xml, planes = lidc_0001
    renamed = {f"other.{uid}": plane for uid, plane in planes.items()}
    [target] = [r for r in read_lidc(xml, planes) if not r.ignore]
    [again] = [r for r in read_lidc(xml, renamed) if not r.ignore]
    assert [o.plane for o in again.outlines] == [o.plane for o in target.outlines]
    gone = {uid: p for uid, p in planes.items() if float(p.position_mm[2]) != -115.0}
    with pytest.raises(LabelError, match="069.xml.*not in the study.*-115"):
        read_lidc(xml, gone)


def test_three_readers_in_a_namespace_free_variant_make_a_target(lidc_0001: Study, tmp_path: Path) -> None:
    _, planes = lidc_0001
    uid = next(u for u, p in planes.items() if float(p.position_mm[2]) == -115.0)
    contour = "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>"
                      for x, y in ((300, 350), (320, 350), (320, 370), (300, 370)))
    session = (f"<readingSession><unblindedReadNodule><noduleID>n</noduleID><roi><imageZposition>-115</imageZposition>"
               f"<imageSOP_UID>{uid}</imageSOP_UID><inclusion>TRUE</inclusion>{contour}</roi>"
               f"</unblindedReadNodule></readingSession>")
    path = tmp_path / "variant.xml"
    path.write_text(f"<IdriReadMessage>{session * 3}<readingSession/></IdriReadMessage>")
    assert is_lidc(ET.parse(path).getroot())
    [target] = read_lidc(path, planes)
    assert not target.ignore and target.readers == 3 and target.diameter_mm == pytest.approx(20 * 0.703125)


_MALFORMED = {
    "<LidcReadMessage><readingSession>": "not well-formed XML",
    "<LidcReadMessage xmlns='http://www.nih.gov'><ResponseHeader/></LidcReadMessage>": "no readingSession",
    ("<LidcReadMessage><readingSession><unblindedReadNodule><noduleID>7</noduleID><roi><imageZposition>-115"
     "</imageZposition><inclusion>TRUE</inclusion></roi></unblindedReadNodule></readingSession></LidcReadMessage>"):
        "nodule '7' has a roi without coordinates",
    ("<LidcReadMessage><readingSession><nonNodule><nonNoduleID>x</nonNoduleID><imageZposition>-115</imageZposition>"
     "<locus><xCoord>1O</xCoord><yCoord>5</yCoord></locus></nonNodule></readingSession></LidcReadMessage>"):
        "non-nodule 'x' has a point without a numeric xCoord",
}


@pytest.mark.parametrize(
    ("text", "what"), list(_MALFORMED.items()), ids=["syntax", "no-session", "no-coords", "bad-coord"]
)
def test_a_malformed_read_raises_a_one_line_label_error_naming_the_file(
    lidc_0001: Study, tmp_path: Path, text: str, what: str
) -> None:
    path = tmp_path / "broken_read.xml"
    path.write_text(text)
    with pytest.raises(LabelError) as error:
        read_lidc(path, lidc_0001[1])
    message = str(error.value)
    assert "broken_read.xml" in message and what in message and "\n" not in message


def test_is_lidc_tells_an_lidc_read_from_other_xml(lidc_0001: Study) -> None:
    assert is_lidc(ET.parse(lidc_0001[0]).getroot())
    assert not is_lidc(ET.fromstring("<annotation><object/></annotation>"))
