"""Lesions from a DICOM SR TID 1500 measurement report: image regions and 3D points, grouped by tracking identifier."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from detector.labels.files import one_line, read_dicom
from detector.labels.lesions import (
    MIN_TARGET_DIAMETER_MM,
    ImagePlane,
    LabelError,
    LesionOutline,
    LesionRecord,
    record_from_outlines,
)

MEASUREMENT_REPORT = ("126000", "DCM")
MEASUREMENT_GROUP = ("125007", "DCM")
TRACKING_UID = ("112040", "DCM")
TRACKING_IDENTIFIER = ("112039", "DCM")
FINDING = ("121071", "DCM")
ALGORITHM_NAME = ("111001", "DCM")
DIAMETERS = {("81827009", "SCT"), ("103339001", "SCT")}
"""Diameter and Long Axis: the numeric measurements that size a lesion marked only by a point."""
DIAMETER_MEANINGS = {"diameter", "long axis"}
UNLABELLED = "lesion"
"""The label of a lesion whose groups carry no Finding."""
_MM_PER_UNIT = {"mm": 1.0, "cm": 10.0}
_SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
_CURVE_VERTICES = 32
_HALF_PIXEL = 0.5


def is_measurement_report(ds: Dataset) -> bool:
    """Whether a data set is an SR whose document title is Imaging Measurement Report, or whose content template
    is TID 1500."""
    templates = {str(item.get("TemplateIdentifier", "")) for item in ds.get("ContentTemplateSequence", [])}
    return _is_sr(ds) and (_concept(ds) == MEASUREMENT_REPORT or "1500" in templates)


PERSON_OBSERVER_NAME = ("121008", "DCM")
PERSON_OBSERVER_IDENTIFIERS = {("128774", "DCM"), ("128775", "DCM")}
"""Person Observer's Login Name and Identifier Within Person Observer's Role."""
DEVICE_OBSERVER_UID = ("121012", "DCM")


@dataclass(frozen=True)
class SrRegion:
    """One image region of a measurement group, as written: graphic type and (column, row) image coordinates."""

    sop_instance_uid: str
    graphic_type: str
    points: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class SrGroup:
    """One measurement group of a TID 1500 report: how it is tracked, what it names, where it is drawn."""

    tracking_uid: str | None
    tracking_identifier: str | None
    algorithm: str | None
    finding: str | None
    """The Finding's code meaning."""
    regions: tuple[SrRegion, ...]
    points_mm: tuple[tuple[float, float, float], ...]
    """SCOORD3D points (LPS mm)."""


@dataclass(frozen=True)
class SrObserver:
    """Who made an SR, from its observer context: people (name, identifier) and devices (UID)."""

    person_name: str | None
    person_id: str | None
    device_uid: str | None

    @property
    def device_only(self) -> bool:
        return self.device_uid is not None and self.person_name is None


def measurement_groups(ds: Dataset) -> list[SrGroup]:
    """Every measurement group of a TID 1500 report, in document order (an empty list for any other SR)."""
    if not is_measurement_report(ds):
        return []
    groups = []
    for item in _descendants(ds):
        if item.get("ValueType") != "CONTAINER" or _concept(item) != MEASUREMENT_GROUP:
            continue
        fields = {TRACKING_UID: None, TRACKING_IDENTIFIER: None, ALGORITHM_NAME: None, FINDING: None}
        for child in item.get("ContentSequence", []):
            concept = _concept(child)
            if concept in fields and fields[concept] is None:
                fields[concept] = _value(child)
        regions, points = [], []
        for child in _descendants(item):
            if child.get("ValueType") == "SCOORD":
                xy = np.asarray(child.GraphicData, dtype=np.float64).reshape(-1, 2)
                for uid in _referenced_images(child):
                    regions.append(SrRegion(uid, str(child.GraphicType), tuple((float(x), float(y)) for x, y in xy)))
            elif child.get("ValueType") == "SCOORD3D":
                points += [_triple(p) for p in np.asarray(child.GraphicData, dtype=np.float64).reshape(-1, 3)]
        groups.append(SrGroup(fields[TRACKING_UID], fields[TRACKING_IDENTIFIER], fields[ALGORITHM_NAME],
                              fields[FINDING], tuple(regions), tuple(points)))
    return groups


def observer(ds: Dataset) -> SrObserver:
    """The observer context of an SR's root content (TID 1002): the first person's name and identifier, and
    the first device's UID."""
    name = person_id = device = None
    for item in ds.get("ContentSequence", []):
        concept = _concept(item)
        if concept == PERSON_OBSERVER_NAME and name is None:
            name = str(item.get("PersonName", "")) or None
        elif concept in PERSON_OBSERVER_IDENTIFIERS and person_id is None:
            person_id = str(item.get("TextValue", "")) or None
        elif concept == DEVICE_OBSERVER_UID and device is None:
            device = str(item.get("UID", "")) or None
    return SrObserver(name, person_id, device)


def _value(item: Dataset) -> str | None:
    """The value of a UIDREF, TEXT or CODE content item as text."""
    kind = item.get("ValueType")
    if kind == "UIDREF":
        return str(item.get("UID", "")) or None
    if kind == "TEXT":
        return str(item.get("TextValue", "")) or None
    if kind == "CODE" and item.get("ConceptCodeSequence"):
        return str(item.ConceptCodeSequence[0].get("CodeMeaning", "")) or None
    return None


def read_sr(path: Path, planes: Mapping[str, ImagePlane]) -> list[LesionRecord]:
    """The lesions of a TID 1500 SR, one per tracking UID (else tracking identifier, else measurement group).

    2D regions (POLYLINE, MULTIPOINT, CIRCLE, ELLIPSE) become outlines on their referenced images; explicit
    points (2D POINT, SCOORD3D) give the centre. A lesion with points only is sized by its Diameter or
    Long Axis measurement, else by the extent of its 3D coordinates, else ``MIN_TARGET_DIAMETER_MM``.
    Groups without coordinates (such as an explicit "no abnormality" group) add no lesion.
    """
    ds = read_dicom(path)
    if not _is_sr(ds):
        raise LabelError(f"{path}: not a DICOM SR (SOP Class UID {ds.get('SOPClassUID', 'missing')})")
    groups = [item for item in _descendants(ds) if item.get("ValueType") == "CONTAINER"
              and _concept(item) == MEASUREMENT_GROUP]
    if not groups:
        raise LabelError(f"{path}: the SR has no measurement groups")
    lesions: dict[tuple[str, str], _Lesion] = {}
    try:
        for n, group in enumerate(groups):
            key = _tracking_key(group) or ("measurement group", str(n + 1))
            lesions.setdefault(key, _Lesion()).add(group, planes, path)
        records = [lesion.record(f"{path}: {lesion.name or ' '.join(key)}") for key, lesion in lesions.items()]
    except LabelError:
        raise
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as error:
        raise LabelError(f"{path}: malformed SR content ({one_line(error)})") from error
    return [record for record in records if record is not None]


@dataclass
class _Lesion:
    """What the measurement groups of one tracked lesion say about it."""

    label: str = ""
    name: str = ""
    """The tracking identifier text."""
    outlines: list[LesionOutline] = field(default_factory=list)
    points_mm: list[NDArray[np.float64]] = field(default_factory=list)
    diameters_mm: list[float] = field(default_factory=list)

    def add(self, group: Dataset, planes: Mapping[str, ImagePlane], path: Path) -> None:
        for item in group.get("ContentSequence", []):
            if not self.label and item.get("ValueType") == "CODE" and _concept(item) == FINDING:
                self.label = str(item.ConceptCodeSequence[0].CodeMeaning)
            if not self.name and _concept(item) == TRACKING_IDENTIFIER:
                self.name = str(item.get("TextValue", ""))
        for item in _descendants(group):
            kind = item.get("ValueType")
            if kind == "SCOORD":
                self._add_region(item, planes, path)
            elif kind == "SCOORD3D":
                self.points_mm.append(np.asarray(item.GraphicData, dtype=np.float64).reshape(-1, 3))
            elif kind == "NUM" and _is_diameter(item):
                self._add_diameter(item)

    def _add_region(self, item: Dataset, planes: Mapping[str, ImagePlane], path: Path) -> None:
        uids = _referenced_images(item)
        if not uids:
            raise LabelError(f"{path}: an image region ({item.GraphicType}) references no image")
        xy = np.asarray(item.GraphicData, dtype=np.float64).reshape(-1, 2) - _HALF_PIXEL
        for uid in uids:
            plane = planes.get(uid)
            if plane is None:
                raise LabelError(f"{path}: a region references image {uid}, which is not among the given images")
            if item.GraphicType == "POINT":
                self.points_mm.append(plane.to_patient(xy))
            else:
                self.outlines.append(LesionOutline(plane, _polygon(str(item.GraphicType), xy)))

    def _add_diameter(self, item: Dataset) -> None:
        for measured in item.get("MeasuredValueSequence", []):
            unit = str(measured.MeasurementUnitsCodeSequence[0].CodeValue)
            if unit in _MM_PER_UNIT:
                self.diameters_mm.append(float(measured.NumericValue) * _MM_PER_UNIT[unit])

    def record(self, source: str) -> LesionRecord | None:
        """The lesion as a record, or None when its groups hold no coordinates."""
        label = self.label or UNLABELLED
        points = np.concatenate(self.points_mm) if self.points_mm else None
        if self.outlines:
            record = record_from_outlines(self.outlines, label, source)
            if points is None:
                return record
            return replace(record, centre_mm=_triple(points.mean(axis=0)))
        if points is None:
            return None
        extent = float(max(np.linalg.norm(points - p, axis=1).max() for p in points))
        diameter = max(self.diameters_mm) if self.diameters_mm else extent or MIN_TARGET_DIAMETER_MM
        reason = f"under {MIN_TARGET_DIAMETER_MM:g} mm ({diameter:.1f} mm)" if diameter < MIN_TARGET_DIAMETER_MM else ""
        return LesionRecord(centre_mm=_triple(points.mean(axis=0)), diameter_mm=diameter, label=label,
                            source=source, ignore=bool(reason), reason=reason)


def _polygon(graphic_type: str, xy: NDArray[np.float64]) -> NDArray[np.float64]:
    """An outline polygon from SCOORD points (index coordinates): circles and ellipses are sampled."""
    if graphic_type == "CIRCLE":
        radius = float(np.linalg.norm(xy[1] - xy[0]))
        return _ellipse(xy[0], np.array([radius, 0.0]), np.array([0.0, radius]))
    if graphic_type == "ELLIPSE":
        return _ellipse((xy[0] + xy[1]) / 2, (xy[1] - xy[0]) / 2, (xy[3] - xy[2]) / 2)
    if len(xy) > 1 and np.array_equal(xy[0], xy[-1]):
        return xy[:-1]
    return xy


def _ellipse(centre: NDArray[np.float64], a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    t = np.linspace(0.0, 2 * np.pi, _CURVE_VERTICES, endpoint=False)[:, None]
    return centre + np.cos(t) * a + np.sin(t) * b


def _referenced_images(item: Dataset) -> list[str]:
    """SOP Instance UIDs of the images a SCOORD is selected from (its IMAGE children, or itself)."""
    holders = [item, *(c for c in item.get("ContentSequence", []) if c.get("ValueType") == "IMAGE")]
    return [str(ref.ReferencedSOPInstanceUID) for h in holders for ref in h.get("ReferencedSOPSequence", [])]


def _tracking_key(group: Dataset) -> tuple[str, str] | None:
    """How the group's lesion is known: ("algorithm finding", algorithm + tracking identifier) for a group an
    algorithm made (it tracks each image region on its own, and names all groups of one finding alike),
    else ("tracking UID", uid), else ("tracking identifier", text), from the group's own items."""
    text = uid = algorithm = None
    for item in group.get("ContentSequence", []):
        if _concept(item) == TRACKING_UID and item.get("UID"):
            uid = str(item.UID)
        elif _concept(item) == TRACKING_IDENTIFIER and item.get("TextValue"):
            text = str(item.TextValue)
        elif _concept(item) == ALGORITHM_NAME and item.get("TextValue"):
            algorithm = str(item.TextValue)
    if algorithm and text:
        return "algorithm finding", f"{algorithm}: {text}"
    if uid:
        return "tracking UID", uid
    return ("tracking identifier", text) if text else None


def _is_diameter(item: Dataset) -> bool:
    names = item.get("ConceptNameCodeSequence", [])
    return bool(names) and (_concept(item) in DIAMETERS or str(names[0].get("CodeMeaning", "")).lower()
                            in DIAMETER_MEANINGS)


def _concept(item: Dataset) -> tuple[str, str] | None:
    names = item.get("ConceptNameCodeSequence", [])
    if not names:
        return None
    return str(names[0].get("CodeValue", "")), str(names[0].get("CodingSchemeDesignator", ""))


def _descendants(item: Dataset) -> Iterator[Dataset]:
    for child in item.get("ContentSequence", []):
        yield child
        yield from _descendants(child)


def _is_sr(ds: Dataset) -> bool:
    return str(ds.get("SOPClassUID", "")).startswith(_SR_CLASS_PREFIX) or str(ds.get("Modality", "")) == "SR"


def _triple(v: NDArray[np.float64]) -> tuple[float, float, float]:
    return float(v[0]), float(v[1]), float(v[2])




def region_polygon(region: SrRegion) -> NDArray[np.float64]:
    """A region's outline polygon in its image's pixel index coordinates (circles and ellipses sampled)."""
    return _polygon(region.graphic_type, np.asarray(region.points, dtype=np.float64).reshape(-1, 2) - _HALF_PIXEL)
