"""Decode one CT image to Hounsfield units, whatever transfer syntax it was stored in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.uid import UID

from detector.io.errors import PixelDataError


def rescale(ds: Dataset) -> tuple[float, float]:
    """(slope, intercept) of the modality LUT; CT without them is already in HU (1, 0)."""
    slope = ds.get("RescaleSlope")
    intercept = ds.get("RescaleIntercept")
    return (1.0 if slope in (None, "") else float(slope), 0.0 if intercept in (None, "") else float(intercept))


def stored_values(ds: Dataset) -> NDArray[np.integer]:
    """The stored pixel values of a single-frame, single-sample image, decoded by pydicom's handlers."""
    uid = str(ds.SOPInstanceUID)
    if int(ds.get("SamplesPerPixel", 1)) != 1 or int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise PixelDataError(f"instance {uid}: expected one frame of one sample per pixel")
    if "PixelData" not in ds:
        raise PixelDataError(f"instance {uid}: no pixel data")
    syntax = UID(ds.file_meta.get("TransferSyntaxUID", ""))
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError, ValueError) as exc:
        raise PixelDataError(
            f"instance {uid}: cannot decode transfer syntax {syntax} ({syntax.name}): {type(exc).__name__}"
        ) from exc
    if pixels.ndim != 2 or not np.issubdtype(pixels.dtype, np.integer):
        raise PixelDataError(f"instance {uid}: decoded to {pixels.dtype} {pixels.shape}, expected 2D integers")
    return pixels


def read_hu(source: Path | Dataset) -> NDArray[np.float32]:
    """One CT image in HU as float32 (rows, columns): RescaleSlope * stored + RescaleIntercept."""
    ds = source if isinstance(source, Dataset) else pydicom.dcmread(source)
    slope, intercept = rescale(ds)
    return (stored_values(ds).astype(np.float32) * np.float32(slope) + np.float32(intercept)).astype(np.float32)
