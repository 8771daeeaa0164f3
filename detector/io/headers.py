"""Read DICOM headers (never pixel data) from a folder or a list of files."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from detector.io.errors import NoDicomFilesError

Vector3 = tuple[float, float, float]


@dataclass(frozen=True)
class InstanceHeader:
    """The attributes of one stored instance that series selection and volume loading need."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str | None
    series_number: int | None
    instance_number: int | None
    modality: str
    image_type: tuple[str, ...]
    transfer_syntax_uid: str
    rows: int | None
    columns: int | None
    number_of_frames: int
    position: Vector3 | None
    orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness_mm: float | None
    body_part_examined: str | None = None
    contrast_agent: str | None = None
    """Contrast/Bolus Agent: None when the attribute is absent, "" when present and empty (no agent said)."""
    related_series: tuple[tuple[str, str], ...] = ()
    """(Study, Series Instance UID) of each Related Series Sequence item, e.g. the real series a synthetic one
    was made from."""


@dataclass(frozen=True)
class HeaderScan:
    """Headers of every image instance found, plus one reason per file that was not one."""

    headers: tuple[InstanceHeader, ...]
    ignored: tuple[str, ...]


def _floats(ds: Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    numbers = tuple(float(v) for v in (value if isinstance(value, MultiValue) else [value]))
    return numbers if len(numbers) == count else None


def _optional_int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    return None if value is None or value == "" else int(value)


def header_from_dataset(ds: Dataset, path: Path) -> InstanceHeader:
    """Build an ``InstanceHeader`` from a dataset read with or without pixel data."""
    thickness = _floats(ds, "SliceThickness", 1)
    return InstanceHeader(
        path=path,
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        study_instance_uid=str(ds.get("StudyInstanceUID", "")),
        frame_of_reference_uid=str(ds.FrameOfReferenceUID) if ds.get("FrameOfReferenceUID") else None,
        series_number=_optional_int(ds, "SeriesNumber"),
        instance_number=_optional_int(ds, "InstanceNumber"),
        modality=str(ds.get("Modality", "")).upper(),
        image_type=tuple(str(v).upper() for v in ds.get("ImageType", [])),
        transfer_syntax_uid=str(ds.file_meta.get("TransferSyntaxUID", "")),
        rows=_optional_int(ds, "Rows"),
        columns=_optional_int(ds, "Columns"),
        number_of_frames=_optional_int(ds, "NumberOfFrames") or 1,
        position=_floats(ds, "ImagePositionPatient", 3),  # type: ignore[arg-type]
        orientation=_floats(ds, "ImageOrientationPatient", 6),  # type: ignore[arg-type]
        pixel_spacing=_floats(ds, "PixelSpacing", 2),  # type: ignore[arg-type]
        slice_thickness_mm=thickness[0] if thickness else None,
        body_part_examined=str(ds.BodyPartExamined).strip() or None if "BodyPartExamined" in ds else None,
        contrast_agent=str(ds.ContrastBolusAgent or "").strip() if "ContrastBolusAgent" in ds else None,
        related_series=tuple((str(item.get("StudyInstanceUID", "")), str(item.get("SeriesInstanceUID", "")))
                             for item in ds.get("RelatedSeriesSequence", [])),
    )


def _files(source: Path | Iterable[Path]) -> list[Path]:
    if isinstance(source, (str, Path)):
        root = Path(source)
        if root.is_file():
            return [root]
        if not root.is_dir():
            raise NoDicomFilesError(f"{root} is neither a folder nor a file")
        return sorted(p for p in root.rglob("*") if p.is_file())
    return [Path(p) for p in source]


def read_headers(source: Path | Iterable[Path]) -> HeaderScan:
    """Read the header of every file under a folder (recursively) or in a list, skipping pixel data.

    Files that are not DICOM image instances (DICOMDIR, text, truncated files) are listed in
    ``ignored`` with a reason; a source with no image instance at all raises ``NoDicomFilesError``.
    """
    headers: dict[str, InstanceHeader] = {}
    ignored: list[str] = []
    files = _files(source)
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            if not all(k in ds for k in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID")):
                ignored.append(f"file {path.name}: not an image instance (no SOP Class/Instance or Series UID)")
                continue
            header = header_from_dataset(ds, path)
        except InvalidDicomError:
            ignored.append(f"file {path.name}: not a DICOM file")
            continue
        except (OSError, ValueError, EOFError) as exc:
            ignored.append(f"file {path.name}: unreadable DICOM header ({type(exc).__name__})")
            continue
        if header.sop_instance_uid in headers:
            ignored.append(f"file {path.name}: duplicate of instance {header.sop_instance_uid}")
            continue
        headers[header.sop_instance_uid] = header
    if not headers:
        where = source if isinstance(source, (str, Path)) else f"{len(files)} listed files"
        detail = f" ({len(files)} files, none a DICOM image)" if files else " (no files)"
        raise NoDicomFilesError(f"no DICOM image instance in {where}{detail}")
    return HeaderScan(headers=tuple(headers.values()), ignored=tuple(ignored))
