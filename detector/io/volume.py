"""Load a selected series as a CT volume in HU with its patient geometry."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from detector.io.errors import GeometryError, PixelDataError
from detector.io.geometry import StackGeometry
from detector.io.headers import InstanceHeader, read_headers
from detector.io.pixels import rescale, stored_values
from detector.io.selection import SelectionPolicy, SeriesSelection, select_series
from detector.io.series import Series, missing_attribute, slice_normal

_INT16 = np.iinfo(np.int16)


@dataclass(frozen=True, eq=False)
class Volume:
    """A CT series as ``hu[z, y, x]`` (int16 when the rescale is integral, else float32) plus geometry.

    Slices are sorted along the slice normal (never by InstanceNumber or file name);
    ``geometry.sop_instance_uids[z]`` names the source image of slice z and ``headers[z]`` is its header (the
    dataset read when its pixels were decoded, pixel data dropped), so that no later stage reads the files again.
    """

    hu: NDArray[np.int16] | NDArray[np.float32]
    geometry: StackGeometry
    series_instance_uid: str
    series_number: int | None
    study_instance_uid: str
    frame_of_reference_uid: str | None
    sop_class_uid: str
    slice_thickness_mm: float | None
    body_part_examined: str | None = None
    contrast_agent: str | None = None
    """As the first image's Contrast/Bolus Agent: None absent, "" present but empty."""
    headers: tuple[Dataset, ...] = ()

    def slice_of(self, sop_instance_uid: str) -> int:
        """The index z of the slice read from the image with this SOP Instance UID (KeyError when none)."""
        try:
            return self.geometry.sop_instance_uids.index(sop_instance_uid)
        except ValueError:
            raise KeyError(f"image {sop_instance_uid} is not a slice of series {self.series_instance_uid}") from None


def _sorted_instances(series: Series) -> list[InstanceHeader]:
    reason = missing_attribute(series)
    if reason:
        raise GeometryError(f"{series.label}: {reason}")
    first = series.instances[0]
    for h in series.instances[1:]:
        if not np.allclose(h.orientation, first.orientation, atol=1e-4):  # type: ignore[arg-type]
            raise GeometryError(
                f"{series.label}: instance {h.sop_instance_uid} is oriented differently from {first.sop_instance_uid}"
            )
        if (h.rows, h.columns, h.pixel_spacing) != (first.rows, first.columns, first.pixel_spacing):
            raise GeometryError(
                f"{series.label}: instance {h.sop_instance_uid} differs in size or pixel spacing "
                f"from {first.sop_instance_uid}"
            )
    normal = slice_normal(first.orientation)  # type: ignore[arg-type]
    return sorted(series.instances, key=lambda h: float(np.dot(h.position, normal)))  # type: ignore[arg-type]


def _decode_into(hu: NDArray, k: int, header: InstanceHeader) -> tuple[NDArray, Dataset]:
    """Write slice k's HU into ``hu``; returns the array (promoted to float32 when int16 cannot hold it) and the
    image's dataset without its pixel data."""
    ds = pydicom.dcmread(header.path)
    if str(ds.SOPInstanceUID) != header.sop_instance_uid:
        raise PixelDataError(f"file for instance {header.sop_instance_uid} now holds {ds.SOPInstanceUID}")
    values = stored_values(ds)
    if values.shape != hu.shape[1:]:
        raise PixelDataError(f"instance {header.sop_instance_uid}: pixels {values.shape}, header says {hu.shape[1:]}")
    del ds.PixelData  # the header stays with the volume; the decoded pixels go (pydicom drops its cached array)
    slope, intercept = rescale(ds)
    if hu.dtype == np.int16 and slope == 1.0 and intercept.is_integer():
        shifted = values.astype(np.int32) + int(intercept)
        if _INT16.min <= shifted.min() and shifted.max() <= _INT16.max:
            hu[k] = shifted
            return hu, ds
    if hu.dtype == np.int16:
        hu = hu.astype(np.float32)
    hu[k] = values.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return hu, ds


def load_volume(series: Series) -> Volume:
    """Decode every instance of a series (any transfer syntax pydicom's plugins read) into a sorted volume."""
    ordered = _sorted_instances(series)
    first = ordered[0]
    rows, columns = int(first.rows or 0), int(first.columns or 0)
    orientation = np.asarray(first.orientation, dtype=np.float64)
    geometry = StackGeometry(
        row_direction=orientation[:3] / np.linalg.norm(orientation[:3]),
        column_direction=orientation[3:] / np.linalg.norm(orientation[3:]),
        pixel_spacing_mm=first.pixel_spacing,  # type: ignore[arg-type]
        positions_mm=np.asarray([h.position for h in ordered], dtype=np.float64),
        sop_instance_uids=tuple(h.sop_instance_uid for h in ordered),
        shape=(len(ordered), rows, columns),
    )
    hu: NDArray = np.empty(geometry.shape, dtype=np.int16)
    headers = []
    for k, header in enumerate(ordered):
        hu, dataset = _decode_into(hu, k, header)
        headers.append(dataset)
    return Volume(
        hu=hu,
        geometry=geometry,
        series_instance_uid=series.series_instance_uid,
        series_number=series.series_number,
        study_instance_uid=first.study_instance_uid,
        frame_of_reference_uid=first.frame_of_reference_uid,
        sop_class_uid=first.sop_class_uid,
        slice_thickness_mm=series.slice_thickness_mm,
        body_part_examined=first.body_part_examined,
        contrast_agent=first.contrast_agent,
        headers=tuple(headers),
    )


def read_ct_volume(
    source: Path | Iterable[Path], policy: SelectionPolicy | None = None
) -> tuple[Volume, SeriesSelection]:
    """Read headers, select the series to read, load it: the whole io stage in one call."""
    selection = select_series(read_headers(source), policy)
    return load_volume(selection.chosen), selection
