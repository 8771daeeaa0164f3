"""Pick the series a radiologist would read, with an auditable reason for every series skipped."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from pydicom.uid import UID

from detector.io.errors import NoEligibleSeriesError
from detector.io.headers import HeaderScan
from detector.io.series import Series, group_series, missing_attribute, slice_normal

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_ORIENTATION_DECIMALS = 4
_SAME_POSITION_MM = 1e-3
_ORIGINAL = (("ORIGINAL", "PRIMARY"), ("ORIGINAL", "SECONDARY"))


@dataclass(frozen=True)
class SelectionPolicy:
    """What makes a series readable, and which readable series is preferred."""

    modality: str = "CT"
    min_slices: int = 8
    preferred_max_thickness_mm: float = 5.0
    max_axial_angle_deg: float = 40.0
    """Largest angle between the slice normal and the patient's head-foot axis (gantry tilt)."""

    def __post_init__(self) -> None:
        if self.min_slices < 2:
            raise ValueError(f"min_slices must be at least 2 (a volume needs two slices), got {self.min_slices}")
        if self.preferred_max_thickness_mm <= 0:
            raise ValueError(f"preferred_max_thickness_mm must be > 0, got {self.preferred_max_thickness_mm}")
        if not 0 < self.max_axial_angle_deg < 90:
            raise ValueError(f"max_axial_angle_deg must be in (0, 90), got {self.max_axial_angle_deg}")


@dataclass(frozen=True)
class SkippedSeries:
    """A series that was not chosen, and why, in words an auditor understands."""

    series: Series = field(repr=False)
    reason: str

    def __str__(self) -> str:
        return f"{self.series.label}: {self.reason}"


@dataclass(frozen=True)
class SeriesSelection:
    """The chosen series, why it was chosen, and why every other series and file was not."""

    chosen: Series
    reason: str
    skipped: tuple[SkippedSeries, ...]
    ignored_files: tuple[str, ...]

    @property
    def reasons(self) -> tuple[str, ...]:
        """One line per series and ignored file, the chosen series first: what the audit records."""
        return (f"{self.chosen.label}: {self.reason}", *map(str, self.skipped), *self.ignored_files)


def _mm(value: float) -> str:
    return f"{value:.3g} mm"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _image_type_reason(series: Series) -> str | None:
    n = len(series.instances)
    localizers = sum("LOCALIZER" in h.image_type for h in series.instances)
    if localizers:
        return "LOCALIZER image type" + ("" if localizers == n else f" ({localizers} of {n} instances)")
    wrong = Counter(
        "\\".join(h.image_type[:2]) or "no" for h in series.instances if h.image_type[:2] not in _ORIGINAL
    )
    if wrong:
        kind, count = wrong.most_common(1)[0]
        share = "" if count == n else f" ({count} of {n} instances)"
        return f"{kind} image type{share}, need ORIGINAL\\PRIMARY (or ORIGINAL\\SECONDARY)"
    return None


def _secondary(series: Series) -> bool:
    """An ORIGINAL\\SECONDARY series: original pixels reconstructed again after the scan (read when no PRIMARY is)."""
    return any(h.image_type[:2] == ("ORIGINAL", "SECONDARY") for h in series.instances)


def _orientation_reason(series: Series, policy: SelectionPolicy) -> str | None:
    orientations = {tuple(np.round(h.orientation, _ORIENTATION_DECIMALS)) for h in series.instances if h.orientation}
    if len(orientations) > 1:
        return f"{len(orientations)} slice orientations in one series, need one"
    normal = slice_normal(series.instances[0].orientation)  # type: ignore[arg-type]
    angle = float(np.degrees(np.arccos(min(abs(normal[2]), 1.0))))
    if angle > policy.max_axial_angle_deg:
        plane = {0: "sagittal", 1: "coronal", 2: "oblique"}[int(np.argmax(np.abs(normal)))]
        return f"{plane} slices ({angle:.0f} deg from axial, at most {policy.max_axial_angle_deg:g} allowed)"
    if len({(h.rows, h.columns) for h in series.instances}) > 1:
        return "images of different sizes"
    if len({h.pixel_spacing for h in series.instances}) > 1:
        return "images with different pixel spacings"
    return None


def _duplicate_position_reason(series: Series) -> str | None:
    normal = slice_normal(series.instances[0].orientation)  # type: ignore[arg-type]
    coords = np.sort([float(np.dot(h.position, normal)) for h in series.instances])  # type: ignore[arg-type]
    shared = int(np.sum(np.diff(coords) < _SAME_POSITION_MM))
    return f"{_plural(shared + 1, 'instance')} at one slice position (several acquisitions?)" if shared else None


def ineligibility(series: Series, policy: SelectionPolicy) -> str | None:
    """Why a series cannot be read as an axial CT volume, or None when it can."""
    modalities = sorted({h.modality or "no modality" for h in series.instances})
    if modalities != [policy.modality]:
        return f"modality {'/'.join(modalities)}, need {policy.modality}"
    reason = _image_type_reason(series)
    if reason:
        return reason
    sop_classes = {h.sop_class_uid for h in series.instances}
    if sop_classes != {CT_IMAGE_STORAGE}:
        names = ", ".join(sorted(UID(u).name for u in sop_classes - {CT_IMAGE_STORAGE}))
        return f"{names} objects, need CT Image Storage"
    reason = missing_attribute(series) or _orientation_reason(series, policy) or _duplicate_position_reason(series)
    if reason:
        return reason
    if len(series.instances) < policy.min_slices:
        return f"{_plural(len(series.instances), 'slice')}, need {policy.min_slices}"
    return None


def _thickness(series: Series) -> float:
    """SliceThickness, or the median distance between slices when the header lacks it."""
    if series.slice_thickness_mm is not None:
        return series.slice_thickness_mm
    normal = slice_normal(series.instances[0].orientation)  # type: ignore[arg-type]
    coords = np.sort([float(np.dot(h.position, normal)) for h in series.instances])  # type: ignore[arg-type]
    return float(np.median(np.diff(coords)))


def _describe(series: Series) -> str:
    """E.g. "28 axial slices of 4-7 mm" (a range when SliceThickness varies within the series)."""
    values = {h.slice_thickness_mm for h in series.instances} - {None}
    low = min(values) if values else _thickness(series)
    span = f"{low:.3g}-{_mm(_thickness(series))}" if low < _thickness(series) else _mm(low)
    return f"{_plural(len(series.instances), 'axial slice')} of {span}"


def _why_not(series: Series, chosen: Series, policy: SelectionPolicy) -> str:
    t, tc = _thickness(series), _thickness(chosen)
    n, nc = len(series.instances), len(chosen.instances)
    own = _describe(series)
    if _secondary(series) and not _secondary(chosen):
        return f"{own}, ORIGINAL\\SECONDARY; chose the PRIMARY {chosen.label}"
    if t > policy.preferred_max_thickness_mm >= tc:
        return f"{own}, thicker than the preferred {_mm(policy.preferred_max_thickness_mm)}; chose {chosen.label}"
    if t > tc:
        return f"{own}; chose the thinner {chosen.label} of {_mm(tc)}"
    if n < nc:
        return f"{own}; chose {chosen.label} with as thin and more slices ({nc})"
    return f"{own}; equal to {chosen.label}, which comes first by series number"


def select_series(scan: HeaderScan, policy: SelectionPolicy | None = None) -> SeriesSelection:
    """Choose the thinnest readable axial CT series (<= the preferred thickness first, then more slices).

    Raises ``NoEligibleSeriesError`` listing every series' and ignored file's reason when none is readable.
    """
    policy = policy or SelectionPolicy()
    eligible: list[Series] = []
    skipped: list[SkippedSeries] = []
    all_series = group_series(scan.headers)
    for series in all_series:
        reason = ineligibility(series, policy)
        if reason is None:
            eligible.append(series)
        else:
            skipped.append(SkippedSeries(series, reason))
    if not eligible:
        raise NoEligibleSeriesError([*map(str, skipped), *scan.ignored])

    def rank(s: Series) -> tuple[bool, bool, float, int]:
        return (_secondary(s), _thickness(s) > policy.preferred_max_thickness_mm, _thickness(s), -len(s.instances))

    ordered = sorted(eligible, key=rank)  # stable: ties keep series-number order
    chosen = ordered[0]
    skipped += [SkippedSeries(s, _why_not(s, chosen, policy)) for s in ordered[1:]]
    position = {s.series_instance_uid: i for i, s in enumerate(all_series)}
    skipped.sort(key=lambda s: position[s.series.series_instance_uid])
    preference = "the only readable series" if len(ordered) == 1 else f"the thinnest of {len(ordered)} readable series"
    if _thickness(chosen) > policy.preferred_max_thickness_mm:
        preference += f", none <= {_mm(policy.preferred_max_thickness_mm)}"
    kind = "ORIGINAL\\SECONDARY" if _secondary(chosen) else "ORIGINAL\\PRIMARY"
    reason = f"chosen: {_describe(chosen)}, {kind} CT ({preference})"
    return SeriesSelection(chosen=chosen, reason=reason, skipped=tuple(skipped), ignored_files=scan.ignored)
