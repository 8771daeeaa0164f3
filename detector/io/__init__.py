"""DICOM series in, CT volume out: header scan, series selection, HU decoding and patient geometry."""

from detector.io.errors import (
    GeometryError,
    NoDicomFilesError,
    NoEligibleSeriesError,
    PixelDataError,
    SeriesInputError,
)
from detector.io.geometry import PixelLocation, StackGeometry
from detector.io.headers import HeaderScan, InstanceHeader, read_headers
from detector.io.pixels import read_hu
from detector.io.selection import SelectionPolicy, SeriesSelection, SkippedSeries, select_series
from detector.io.series import Series, group_series
from detector.io.volume import Volume, load_volume, read_ct_volume

__all__ = [
    "GeometryError",
    "HeaderScan",
    "InstanceHeader",
    "NoDicomFilesError",
    "NoEligibleSeriesError",
    "PixelDataError",
    "PixelLocation",
    "SelectionPolicy",
    "Series",
    "SeriesInputError",
    "SeriesSelection",
    "SkippedSeries",
    "StackGeometry",
    "Volume",
    "group_series",
    "load_volume",
    "read_ct_volume",
    "read_headers",
    "read_hu",
    "select_series",
]
