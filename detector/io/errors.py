"""Typed errors for reading CT series; messages name UIDs and counts, never patient identifiers."""

from __future__ import annotations

from collections.abc import Sequence


class SeriesInputError(ValueError):
    """Base class: the DICOM input cannot become a CT volume."""


class NoDicomFilesError(SeriesInputError):
    """The folder or file list holds no readable DICOM image instance."""


class GeometryError(SeriesInputError):
    """Slice geometry is missing or inconsistent (position, orientation, size, spacing)."""


class PixelDataError(SeriesInputError):
    """An instance's pixel data cannot be decoded or has an unexpected layout."""


class NoEligibleSeriesError(SeriesInputError):
    """Every series was skipped; ``reasons`` says why, one line per series or file."""

    def __init__(self, reasons: Sequence[str]) -> None:
        self.reasons = tuple(reasons)
        super().__init__("no series a radiologist would read: " + "; ".join(self.reasons))
