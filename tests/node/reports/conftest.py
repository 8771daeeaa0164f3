"""Fixtures for the report builders: the real chest and head CT series, findings placed on them, the validator."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from detector.findings import Code, Finding, SliceBox
from detector.io import read_hu
from node.reports import AlgorithmIdentity, ReportRun
from node.reports.captions import key_slice
from tests.support import require, require_ct

REPO_ROOT = Path(__file__).resolve().parents[3]
CHEST = "chest_lung_pet_ct_dx_A0001"
HEAD = "head_ge_patient"
NEOPLASM = Code("108369006", "SCT", "Neoplasm")
LUNG = Code("39607008", "SCT", "Lung")
HAEMORRHAGE = Code("50960005", "SCT", "Hemorrhage")
BRAIN = Code("12738006", "SCT", "Brain")


def ct_data(*parts: str) -> Path:
    """A path in the real CT data (CTNODE_TEST_DATA, default ../shared/ct); skips (fails under CI) when it is absent."""
    return require_ct(*parts)


def patient_mm(ds: Dataset, column: float, row: float) -> np.ndarray:
    """The LPS position (mm) of a pixel position on an image, from its plane geometry."""
    iop = np.asarray(ds.ImageOrientationPatient, float)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    return np.asarray(ds.ImagePositionPatient, float) + iop[:3] * column * column_spacing + iop[3:] * row * row_spacing


def finding_on(
    images: list[Dataset],
    boxes: list[tuple[float, float, float, float]],
    score: float,
    label: str,
    finding_type: Code,
    finding_site: Code | None = None,
    tracking_id: str = "",
) -> Finding:
    """A detector finding with one box per image; centre and size follow from the boxes and the geometry."""
    corners = np.array([patient_mm(ds, x, y) for ds, b in zip(images, boxes) for x, y in (b[:2], b[2:])])
    centre = corners.mean(axis=0)
    size = corners.max(axis=0) - corners.min(axis=0)
    return Finding(
        label=label,
        finding_type=finding_type,
        score=score,
        centre_mm=(float(centre[0]), float(centre[1]), float(centre[2])),
        size_mm=(float(size[0]), float(size[1]), float(size[2])),
        voxel_box=(0, int(min(b[1] for b in boxes)), int(min(b[0] for b in boxes)),
                   len(boxes), int(max(b[3] for b in boxes)), int(max(b[2] for b in boxes))),
        slices=tuple(SliceBox(str(ds.SOPInstanceUID), b, score - 0.01 * abs(i - len(boxes) // 2))
                     for i, (ds, b) in enumerate(zip(images, boxes))),
        finding_site=finding_site,
        tracking_id=tracking_id,
    )


def run_on(run_id: str, series: Sequence[Dataset], findings: Sequence[Finding], algorithm: AlgorithmIdentity,
           *args: Any, **kwargs: Any) -> ReportRun:
    """A report run over ``series`` (datasets with pixels) with its findings' key slices in HU, as the detector's
    volume would give them (detector.io's HU conversion, the node's only one)."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in series}
    hu = {uid: read_hu(by_uid[uid]) for uid in {key_slice(f).sop_instance_uid for f in findings}}
    return ReportRun(run_id, series, findings, algorithm, *args, key_slices_hu=hu, **kwargs)


@pytest.fixture(scope="session")
def chest_series() -> list[Dataset]:
    """The 64-slice chest CT, pixels included."""
    return [pydicom.dcmread(p) for p in sorted(ct_data(CHEST, "series_5mm_lung_kernel").glob("*.dcm"))]


@pytest.fixture(scope="session")
def chest_tumour(chest_series: list[Dataset]) -> Finding:
    """The annotated lung tumour as a detector would report it: the radiologists' boxes on their 11 slices."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in chest_series}
    annotated = []
    for xml in ct_data(CHEST, "annotations").glob("*.xml"):
        box = ET.parse(xml).getroot().find("object/bndbox")
        assert box is not None, f"{xml} has no bndbox"
        ds = by_uid[xml.stem]
        x1, y1, x2, y2 = (float(box.findtext(k, "")) for k in ("xmin", "ymin", "xmax", "ymax"))
        annotated.append((float(ds.ImagePositionPatient[2]), ds, (x1, y1, x2, y2)))
    annotated.sort(key=lambda a: a[0])
    return finding_on([a[1] for a in annotated], [a[2] for a in annotated], 0.91,
                      label="tumour", finding_type=NEOPLASM, finding_site=LUNG, tracking_id="lesion A")


@pytest.fixture(scope="session")
def head_series() -> list[Dataset]:
    """The tilted, unevenly spaced GE head CT (no Patient's Birth Date in its headers)."""
    return [pydicom.dcmread(p) for p in sorted(ct_data(HEAD).glob("*.dcm"))]


@pytest.fixture(scope="session")
def head_bleed(head_series: list[Dataset]) -> Finding:
    """A small finding on two neighbouring head slices."""
    images = sorted(head_series, key=lambda ds: int(ds.InstanceNumber))[12:14]
    return finding_on(images, [(300.0, 200.0, 340.0, 236.0), (302.0, 202.0, 338.0, 232.0)], 0.64,
                      label="bleed", finding_type=HAEMORRHAGE, finding_site=BRAIN)


@pytest.fixture(scope="session")
def algorithm() -> AlgorithmIdentity:
    return AlgorithmIdentity(name="ctnode-retinanet-dcn", version="0.3.1", weights_sha256="0123456789abcdef" * 4)


@pytest.fixture(scope="session")
def validate_dicom() -> Path:
    """The shared validator script; skips (fails under CTNODE_REQUIRE_SERVICES=1) when it or its tools are missing."""
    script = REPO_ROOT.parent / "shared" / "tools" / "validate-dicom"
    require(f"the validator script {script}", script.exists())
    missing = [t for t in ("dciodvfy", "dsrdump", "java") if shutil.which(t) is None]
    if not Path("/usr/share/java/pixelmed.jar").exists():
        missing.append("pixelmed.jar")
    require(f"DICOM validators ({', '.join(missing)}; apt-get install dicom3tools dcmtk pixelmed-apps)", not missing)
    return script
