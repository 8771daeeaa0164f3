"""Group instance headers into series and describe a series' slice stack."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from detector.io.headers import InstanceHeader


@dataclass(frozen=True)
class Series:
    """The instances of one Series Instance UID, in the order they were read (not yet sorted)."""

    series_instance_uid: str
    instances: tuple[InstanceHeader, ...]

    @property
    def series_number(self) -> int | None:
        """The SeriesNumber most instances carry (None when absent)."""
        numbers = [h.series_number for h in self.instances if h.series_number is not None]
        return max(set(numbers), key=numbers.count) if numbers else None

    @property
    def label(self) -> str:
        """How reasons and audit lines name the series: its UID and, when known, its number."""
        number = self.series_number
        return f"series {self.series_instance_uid}" + ("" if number is None else f" (S{number})")

    @property
    def slice_thickness_mm(self) -> float | None:
        """The thickest SliceThickness in the series (the one that limits what can be seen)."""
        values = [h.slice_thickness_mm for h in self.instances if h.slice_thickness_mm is not None]
        return max(values) if values else None


def group_series(headers: Iterable[InstanceHeader]) -> tuple[Series, ...]:
    """Group headers by Series Instance UID; series ordered by series number, then UID."""
    groups: dict[str, list[InstanceHeader]] = defaultdict(list)
    for header in headers:
        groups[header.series_instance_uid].append(header)
    series = [Series(uid, tuple(items)) for uid, items in groups.items()]
    return tuple(sorted(series, key=lambda s: (s.series_number is None, s.series_number or 0, s.series_instance_uid)))


def slice_normal(orientation: tuple[float, float, float, float, float, float]) -> np.ndarray:
    """Unit normal (row cosines x column cosines) of an ImageOrientationPatient."""
    normal = np.cross(np.asarray(orientation[:3], dtype=np.float64), np.asarray(orientation[3:], dtype=np.float64))
    return normal / np.linalg.norm(normal)


def missing_attribute(series: Series) -> str | None:
    """The first geometry attribute some instance lacks, naming that instance, or None."""
    checks = (
        ("ImagePositionPatient", lambda h: h.position),
        ("ImageOrientationPatient", lambda h: h.orientation),
        ("PixelSpacing", lambda h: h.pixel_spacing),
        ("Rows/Columns", lambda h: h.rows and h.columns),
    )
    for name, get in checks:
        missing = [h for h in series.instances if not get(h)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            return f"instance {missing[0].sop_instance_uid} has no {name}{more}"
    return None
