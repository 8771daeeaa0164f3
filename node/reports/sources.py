"""The read CT series as the report builders need it: validated, ordered, with header-only evidence copies."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
from pydicom.dataset import Dataset

from detector.findings import Finding
from node.logging import IDENTIFIER_KEYWORDS, phi_registry

# Type 2 attributes highdicom copies from the first evidence instance; real (and de-identified) studies lack some.
_TYPE2_COPIED = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
)
UNSTATED_DEIDENTIFICATION = "Method not stated by the source images"
_REQUIRED = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID",
             "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")


class SourceSeries:
    """The source images of one run, checked to be one series of one study in at most one frame of reference,
    with the pixels in HU of the images the overlays draw (``hounsfield``, by SOP Instance UID).

    A series without Frame of Reference UID (de-identified data often lacks it) is still reported, in image
    coordinates only: :attr:`omissions` says what the objects leave out because of it.
    """

    def __init__(self, datasets: Sequence[Dataset], hounsfield: Mapping[str, np.ndarray] | None = None) -> None:
        if not datasets:
            raise ValueError("a report needs the source images of the read series; none were given")
        for ds in datasets:
            missing = [k for k in _REQUIRED if k not in ds]
            if missing:
                raise ValueError(f"source image {ds.get('SOPInstanceUID', '?')} lacks {', '.join(missing)}")
        for attr in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            values = {str(ds[attr].value) for ds in datasets if ds.get(attr)}
            if len(values) > 1 or (not values and attr != "FrameOfReferenceUID"):
                raise ValueError(f"source images must share one {attr}; found {len(values)} different values")
        # `ctnode detect --dicom` reads files no receiver indexed: the scrubber learns their identifiers here
        phi_registry.remember(*{str(ds.get(k)) for ds in datasets for k in IDENTIFIER_KEYWORDS if ds.get(k)})
        uids = [str(ds.SOPInstanceUID) for ds in datasets]
        if len(set(uids)) != len(uids):
            raise ValueError("source images must have distinct SOP Instance UIDs; the series holds duplicates")
        normal = self._normal(datasets[0])
        self.images: tuple[Dataset, ...] = tuple(
            sorted(datasets, key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))))
        )
        self._by_uid = {str(ds.SOPInstanceUID): ds for ds in self.images}
        self._hounsfield = dict(hounsfield or {})

    @staticmethod
    def _normal(ds: Dataset) -> np.ndarray:
        iop = np.asarray(ds.ImageOrientationPatient, float)
        return np.cross(iop[:3], iop[3:])

    @property
    def first(self) -> Dataset:
        """The first image along the slice normal."""
        return self.images[0]

    @property
    def study_instance_uid(self) -> str:
        """The study every emitted object joins."""
        return str(self.first.StudyInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str | None:
        """The patient coordinate system the images (and the findings' mm coordinates) are in; None when the
        series does not say (or not every image does)."""
        if not all(ds.get("FrameOfReferenceUID") for ds in self.images):
            return None
        return str(self.first.FrameOfReferenceUID)

    @property
    def omissions(self) -> tuple[str, ...]:
        """What the emitted objects leave out or leave empty because the source images lack it, in words."""
        out = []
        if self.frame_of_reference_uid is None:
            out.append("3D finding centres (SCOORD3D) and the overlays' Frame of Reference UID: the read series "
                       "has no Frame of Reference UID, so findings are reported as 2D image regions only")
        empty = [k for k in _TYPE2_COPIED if k not in self.first]
        if empty:
            out.append(f"{', '.join(empty)}: absent from the source images, left empty (Type 2)")
        return tuple(out)

    def image(self, sop_instance_uid: str) -> Dataset:
        """The source image with this SOP Instance UID; KeyError says when it is not in the series."""
        try:
            return self._by_uid[sop_instance_uid]
        except KeyError:
            raise KeyError(f"image {sop_instance_uid} is not in the read series") from None

    def check_findings(self, findings: Sequence[Finding]) -> None:
        """Raise ValueError with the reason when a finding's boxes do not fit the series' images."""
        for n, finding in enumerate(findings, start=1):
            if not finding.slices:
                raise ValueError(f"finding {n} ({finding.label}) has no per-slice boxes to report")
            if not 0.0 <= finding.score <= 1.0:
                raise ValueError(f"finding {n} ({finding.label}) has score {finding.score}; scores lie in [0, 1]")
            for box in finding.slices:
                ds = self.image(box.sop_instance_uid)
                x1, y1, x2, y2 = box.box_px
                if not (0 <= x1 < x2 <= int(ds.Columns) and 0 <= y1 < y2 <= int(ds.Rows)):
                    raise ValueError(
                        f"finding {n} ({finding.label}) box {box.box_px} is not inside the "
                        f"{ds.Columns}x{ds.Rows} image {box.sop_instance_uid}"
                    )

    def headers(self, sop_instance_uids: Sequence[str] | None = None) -> list[Dataset]:
        """Header-only copies (no pixel data) of the images, with absent copied Type 2 attributes added empty."""
        chosen = self.images if sop_instance_uids is None else [self.image(u) for u in sop_instance_uids]
        return [_header(ds) for ds in chosen]

    def hounsfield(self, sop_instance_uid: str) -> np.ndarray:
        """The image's pixels in HU as the run gave them; ValueError when it gave none (or of another size)."""
        ds = self.image(sop_instance_uid)
        hu = self._hounsfield.get(sop_instance_uid)
        if hu is None:
            raise ValueError(f"image {sop_instance_uid} was given without its pixels in HU; secondary captures "
                             "need them")
        if hu.shape != (int(ds.Rows), int(ds.Columns)):
            raise ValueError(f"image {sop_instance_uid}: pixels {hu.shape}, header says {ds.Rows}x{ds.Columns}")
        return hu

    def patient_orientation(self) -> tuple[str, str]:
        """Patient Orientation (row, column directions): the axes nearest Image Orientation (Patient), e.g. L, P."""
        iop = np.asarray(self.first.ImageOrientationPatient, float)
        return _direction(iop[:3]), _direction(iop[3:])


def _direction(vector: np.ndarray) -> str:
    """The patient-orientation letter of an LPS direction's strongest axis (highdicom takes one letter per axis)."""
    axis = int(np.argmax(np.abs(vector)))
    return ("LR", "PA", "HF")[axis][0 if vector[axis] > 0 else 1]


def _header(ds: Dataset) -> Dataset:
    """A copy of ``ds`` without pixel data, ready to be copied into our objects; ``ds`` is untouched.

    Absent copied Type 2 attributes are added empty; a Referenced Study Sequence whose items lack their SOP
    Class UID (Type 1 there) is left out (the sequence is Type 3); an identity-removed statement without a
    method gets one saying the source did not state it (Type 1C).
    """
    header = Dataset()
    header.file_meta = copy.deepcopy(getattr(ds, "file_meta", Dataset()))
    for element in ds:
        if element.tag.group != 0x7FE0:
            header.add(copy.deepcopy(element))
    for keyword in _TYPE2_COPIED:
        if keyword not in header:
            setattr(header, keyword, None)
    references = header.get("ReferencedStudySequence")
    if references is not None and any("ReferencedSOPClassUID" not in item for item in references):
        del header.ReferencedStudySequence
    if (
        header.get("PatientIdentityRemoved") == "YES"
        and not header.get("DeidentificationMethod")
        and not header.get("DeidentificationMethodCodeSequence")
    ):
        header.DeidentificationMethod = UNSTATED_DEIDENTIFICATION
    return header


def copy_anatomy(source: Dataset, target: Dataset) -> None:
    """Body Part Examined and Laterality as General Series needs them on a new series of this anatomy.

    With a body part named, Laterality goes along only when the source has a value; without one, Laterality
    (Type 2C) is present, empty when unknown.
    """
    if "BodyPartExamined" in source:
        target.BodyPartExamined = source.BodyPartExamined
        if source.get("Laterality"):
            target.Laterality = source.Laterality
    else:
        target.Laterality = source.get("Laterality", "")


@contextmanager
def no_identifier_warnings() -> Iterator[None]:
    """Silence highdicom's person-name format warnings: they quote the patient's name, which never goes to logs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*intended person name", category=UserWarning)
        yield
