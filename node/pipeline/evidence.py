"""Whether a series' slices look complete: no gap in the stack, and the count the scanner announced.

The fast path of study completion trusts this evidence once every association that brought the study
is released; the quiet timer catches what it cannot judge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

_TAGS = ["ImagePositionPatient", "ImageOrientationPatient", "ImagesInAcquisition", "AcquisitionNumber"]


@dataclass(frozen=True)
class SeriesEvidence:
    """What the slices of one series say: complete or not, and why (the reason goes into the audit)."""

    series_instance_uid: str
    complete: bool
    reason: str


def _vector(ds: pydicom.Dataset, keyword: str, length: int) -> np.ndarray | None:
    """A finite numeric vector of ``length`` values, or None where absent, malformed or out of range."""
    try:
        value = np.asarray(ds[keyword].value, float) if keyword in ds else None
    except (ValueError, TypeError, OverflowError):
        return None
    return value if value is not None and value.shape == (length,) and np.isfinite(value).all() else None


def _count(ds: pydicom.Dataset, keyword: str) -> int | None:
    """A non-negative integer, or None where absent, malformed or out of range (IS "1e400" is infinity)."""
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") and int(value) >= 0 else None
    except (ValueError, TypeError, OverflowError):
        return None


def _slice_facts(path: Path) -> tuple[np.ndarray | None, np.ndarray | None, int | None]:
    """(position, orientation, ImagesInAcquisition) of one stored instance; None where absent or unusable, so one
    bad value costs only its own fact."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
    except (InvalidDicomError, OSError, ValueError, TypeError, OverflowError):
        return None, None, None
    return (_vector(ds, "ImagePositionPatient", 3), _vector(ds, "ImageOrientationPatient", 6),
            _count(ds, "ImagesInAcquisition"))


def series_evidence(series_instance_uid: str, paths: Sequence[Path], max_gap_factor: float) -> SeriesEvidence:
    """Judge the stored instances of one series (their files at ``paths``).

    Complete means: every instance has a position, the positions projected on the slice normal have no
    gap beyond ``max_gap_factor`` x their median spacing, and the instance count equals the scanner's
    ImagesInAcquisition where every instance states the same value. A single image (a localizer, a
    summary page) is complete by itself.
    """
    facts = [_slice_facts(path) for path in paths]
    counts = {announced for _, _, announced in facts}
    if len(counts) == 1 and (announced := counts.pop()) is not None and announced != len(paths):
        return SeriesEvidence(series_instance_uid, False, f"{len(paths)} of {announced} images in acquisition")
    if len(paths) == 1:
        return SeriesEvidence(series_instance_uid, True, "single image")
    positions = [p for p, _, _ in facts if p is not None]
    orientations = [o for _, o, _ in facts if o is not None]
    if len(positions) < len(paths) or not orientations:
        return SeriesEvidence(series_instance_uid, False, "slice positions missing: completeness unknown")
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    along = np.unique(np.round(np.asarray(positions) @ normal, 3))
    if len(along) < 2:
        return SeriesEvidence(series_instance_uid, True, f"{len(paths)} images at one position")
    gaps = np.diff(along)
    median = float(np.median(gaps))
    worst = float(gaps.max())
    if worst > max_gap_factor * median:
        return SeriesEvidence(series_instance_uid, False,
                              f"gap of {worst:.2f} mm in the stack (median spacing {median:.2f} mm)")
    return SeriesEvidence(series_instance_uid, True,
                          f"{len(paths)} images, contiguous at {median:.2f} mm (largest gap {worst:.2f} mm)")
