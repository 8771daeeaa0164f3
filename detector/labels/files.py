"""Opening label files: XML and DICOM, every failure a one-line LabelError naming the file."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from detector.labels.lesions import LabelError


def one_line(error: Exception) -> str:
    """An exception as one line: its type and message, whitespace collapsed."""
    return " ".join(f"{type(error).__name__}: {error}".split())


def xml_root(path: Path) -> ET.Element:
    """The root element of an XML label file."""
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise LabelError(f"{path}: not well-formed XML ({exc})") from None
    except OSError as exc:
        raise LabelError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None


def read_dicom(path: Path, stop_before_pixels: bool = False) -> Dataset:
    """A DICOM label file (an SR or a SEG)."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except Exception as error:  # pydicom raises many types for damaged files
        raise LabelError(f"{path}: not a readable DICOM file ({one_line(error)})") from error
