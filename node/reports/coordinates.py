"""Pixel coordinates: the detector's index coordinates and DICOM's image coordinates differ by half a pixel.

detector.findings.SliceBox uses index coordinates (the centre of the first pixel is (0, 0)); SCOORD and
GSPS graphic data use image coordinates, where the first pixel's top-left corner is (0, 0) and its
centre (0.5, 0.5) (PS3.3 C.10.5.1.2).
"""

from __future__ import annotations

import numpy as np

Box = tuple[float, float, float, float]
_HALF = 0.5


def to_image(box_px: Box) -> Box:
    """A (x1, y1, x2, y2) box in index coordinates, in DICOM image coordinates."""
    x1, y1, x2, y2 = box_px
    return x1 + _HALF, y1 + _HALF, x2 + _HALF, y2 + _HALF


def box_polyline(box_px: Box) -> np.ndarray:
    """A closed POLYLINE (5 points, column/row) in DICOM image coordinates tracing a box in index coordinates."""
    x1, y1, x2, y2 = to_image(box_px)
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=float)
