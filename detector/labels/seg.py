"""Lesions from a DICOM SEG (binary, fractional or label map): the 3D connected components of each segment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from detector.labels.files import one_line, read_dicom
from detector.labels.lesions import (
    ImagePlane,
    LabelError,
    LesionOutline,
    LesionRecord,
    box_polygon,
    record_from_outlines,
)

SEG_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"}
"""Segmentation Storage and Label Map Segmentation Storage."""
POSITION_TOLERANCE_MM = 0.1
"""A frame without a known source image lies on the image whose position is this close to its own."""
_SAME_LEVEL_MM = 0.01

Extent = tuple[int, int, int, int]
"""A component's pixels on one slice: (x0, y0, x1, y1), inclusive pixel indices."""


def is_seg(ds: Dataset) -> bool:
    """Whether a data set is a DICOM Segmentation (binary, fractional or label map)."""
    return str(ds.get("SOPClassUID", "")) in SEG_CLASSES or (ds.get("Modality") == "SEG" and "SegmentSequence" in ds)


def read_seg(path: Path, planes: Mapping[str, ImagePlane]) -> list[LesionRecord]:
    """One lesion per face-connected 3D component of each segment, outlined per image by its pixel extent.

    Frames map to images by their source image (Derivation Image Sequence), else by plane position; slices
    are neighbours when no image of the referenced series lies between them, so omitted empty frames
    do not join components across them. Segment 0 (a label map's background) holds no lesions.
    """
    ds = read_dicom(path)
    if not is_seg(ds):
        raise LabelError(f"{path}: not a DICOM SEG (SOP Class UID {ds.get('SOPClassUID', 'missing')})")
    try:
        labels = {int(s.SegmentNumber): _segment_label(s) for s in ds.SegmentSequence if int(s.SegmentNumber) > 0}
        frames = _frames(ds, labels, planes, path)
        if not frames:
            return []
        level = _levels(ds, planes, [f.source for f in frames])
        records = []
        for number, label in labels.items():
            mine = [f for f in frames if f.segment == number]
            for k, extents in enumerate(_segment_components(mine, level)):
                outlines = [_outline(frame, extent) for frame, extent in extents]
                records.append(record_from_outlines(outlines, label, f"{path}: segment {number} lesion {k + 1}"))
    except LabelError:
        raise
    except (AttributeError, IndexError, KeyError, TypeError, ValueError, RuntimeError) as error:
        raise LabelError(f"{path}: malformed SEG ({one_line(error)})") from error
    return records


@dataclass(frozen=True, eq=False)
class _Frame:
    """One segment's mask on one frame, the image it lies on and the frame's own pixel grid."""

    segment: int
    mask: NDArray[np.bool_]
    source: ImagePlane
    grid: ImagePlane


def _frames(ds: Dataset, labels: Mapping[int, str], planes: Mapping[str, ImagePlane], path: Path) -> list[_Frame]:
    pixels = ds.pixel_array.reshape(-1, int(ds.Rows), int(ds.Columns))
    kind = str(ds.get("SegmentationType", "BINARY"))
    threshold = float(ds.MaximumFractionalValue) / 2 if kind == "FRACTIONAL" else 1.0
    known = list(planes.values())
    positions = np.stack([p.position_mm for p in known]) if known else np.empty((0, 3))
    frames = []
    for i, pixel_frame in enumerate(pixels):
        if kind == "LABELMAP":
            masks = [(n, pixel_frame == n) for n in labels]
        else:
            number = int(_functional(ds, i, "SegmentIdentificationSequence")[0].ReferencedSegmentNumber)
            if number not in labels:
                raise LabelError(f"{path}: frame {i + 1} belongs to segment {number}, which the SEG does not define")
            masks = [(number, pixel_frame >= threshold)]
        masks = [(n, m) for n, m in masks if m.any()]
        if masks:
            source = _source_plane(ds, i, planes, known, positions, path)
            grid = _grid(ds, i, source)
            frames += [_Frame(n, m, source, grid) for n, m in masks]
    return frames


def _source_plane(
    ds: Dataset, i: int, planes: Mapping[str, ImagePlane], known: list[ImagePlane], positions: NDArray[np.float64],
    path: Path,
) -> ImagePlane:
    uids = [str(s.ReferencedSOPInstanceUID) for d in _functional(ds, i, "DerivationImageSequence")
            for s in d.get("SourceImageSequence", [])]
    for uid in uids:
        if uid in planes:
            return planes[uid]
    position = _functional(ds, i, "PlanePositionSequence")
    if position and known:
        distances = np.linalg.norm(positions - np.asarray(position[0].ImagePositionPatient, dtype=np.float64), axis=1)
        if distances.min() <= POSITION_TOLERANCE_MM:
            return known[int(distances.argmin())]
    if uids:
        raise LabelError(f"{path}: frame {i + 1} is derived from image {uids[0]}, which is not among the given images")
    raise LabelError(f"{path}: frame {i + 1} names no source image and lies on none of the given images")


def _grid(ds: Dataset, i: int, source: ImagePlane) -> ImagePlane:
    """The frame's own pixel grid from its plane position, orientation and pixel spacing, else its image's."""
    position = _functional(ds, i, "PlanePositionSequence")
    orientation = _functional(ds, i, "PlaneOrientationSequence")
    measures = _functional(ds, i, "PixelMeasuresSequence")
    if not (position and orientation and measures and "PixelSpacing" in measures[0]):
        return source
    iop = np.asarray(orientation[0].ImageOrientationPatient, dtype=np.float64)
    spacing = measures[0].PixelSpacing
    return ImagePlane(
        sop_instance_uid=source.sop_instance_uid,
        position_mm=np.asarray(position[0].ImagePositionPatient, dtype=np.float64),
        row_direction=iop[:3] / np.linalg.norm(iop[:3]),
        column_direction=iop[3:] / np.linalg.norm(iop[3:]),
        pixel_spacing_mm=(float(spacing[0]), float(spacing[1])),
        thickness_mm=source.thickness_mm,
    )


def _functional(ds: Dataset, i: int, keyword: str) -> list[Dataset]:
    """A functional group macro's items for frame ``i``: per-frame, else shared, else none."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    for item in (per_frame[i] if per_frame else None, shared[0] if shared else None):
        if item is not None and keyword in item:
            return list(item[keyword].value)
    return []


def _levels(ds: Dataset, planes: Mapping[str, ImagePlane], used: list[ImagePlane]) -> dict[ImagePlane, int]:
    """Slice numbers along the normal of the used images among every image of the SEG's referenced series."""
    referenced = [planes[str(r.ReferencedSOPInstanceUID)] for s in ds.get("ReferencedSeriesSequence", [])
                  for r in s.get("ReferencedInstanceSequence", []) if str(r.ReferencedSOPInstanceUID) in planes]
    normal = used[0].normal
    heights = np.sort(np.array([p.position_mm @ normal for p in [*referenced, *used]]))
    numbers = np.concatenate([[0], np.cumsum(np.diff(heights) > _SAME_LEVEL_MM)])
    return {p: int(numbers[np.abs(heights - p.position_mm @ normal).argmin()]) for p in used}


def _segment_components(frames: list[_Frame], level: Mapping[ImagePlane, int]) -> list[list[tuple[_Frame, Extent]]]:
    """The segment's components, each as the (frame, pixel extent) of every slice it touches."""
    if not frames:
        return []
    z = [level[f.source] for f in frames]
    z0 = min(z)
    volume = np.zeros((max(z) - z0 + 1, *frames[0].mask.shape), dtype=bool)
    on_slice: dict[int, _Frame] = {}
    for f, zi in zip(frames, z, strict=True):
        volume[zi - z0] |= f.mask
        on_slice.setdefault(zi - z0, f)
    return [[(on_slice[zi], extent) for zi, extent in sorted(component.items())] for component in components(volume)]


def components(mask: NDArray[np.bool_]) -> list[dict[int, Extent]]:
    """Face-connected components of a (Z, Y, X) mask, each as its pixel extent per slice z.

    Runs of set pixels along x are joined with the overlapping runs of the next row and the next slice.
    """
    edges = np.diff(np.pad(mask, ((0, 0), (0, 0), (1, 1))).astype(np.int8), axis=2)
    zs, ys, starts = (a.tolist() for a in np.nonzero(edges == 1))
    ends = (np.nonzero(edges == -1)[2] - 1).tolist()
    lines: dict[tuple[int, int], list[int]] = {}
    for run, key in enumerate(zip(zs, ys, strict=True)):
        lines.setdefault(key, []).append(run)
    parent = list(range(len(starts)))

    def root(r: int) -> int:
        while parent[r] != r:
            parent[r] = parent[parent[r]]
            r = parent[r]
        return r

    for (z, y), runs in lines.items():
        for neighbours in (lines.get((z, y + 1), []), lines.get((z + 1, y), [])):
            a = b = 0
            while a < len(runs) and b < len(neighbours):
                r, s = runs[a], neighbours[b]
                if starts[r] <= ends[s] and starts[s] <= ends[r]:
                    parent[root(r)] = root(s)
                if ends[r] < ends[s]:
                    a += 1
                else:
                    b += 1
    found: dict[int, dict[int, Extent]] = {}
    for r in range(len(starts)):
        slices = found.setdefault(root(r), {})
        x0, y0, x1, y1 = slices.get(zs[r], (starts[r], ys[r], ends[r], ys[r]))
        slices[zs[r]] = (min(x0, starts[r]), min(y0, ys[r]), max(x1, ends[r]), max(y1, ys[r]))
    return list(found.values())


def _outline(frame: _Frame, extent: Extent) -> LesionOutline:
    """The extent's box (pixel edges at +-0.5) on the frame's grid, in its image's index coordinates."""
    x0, y0, x1, y1 = extent
    box = box_polygon(x0 - 0.5, y0 - 0.5, x1 + 0.5, y1 + 0.5)
    if frame.grid is not frame.source:
        box = frame.source.to_pixels(frame.grid.to_patient(box))[0]
    return LesionOutline(frame.source, box)


def _segment_label(segment: Dataset) -> str:
    if segment.get("SegmentLabel"):
        return str(segment.SegmentLabel)
    types = segment.get("SegmentedPropertyTypeCodeSequence", [])
    return str(types[0].CodeMeaning) if types else f"segment {segment.SegmentNumber}"


