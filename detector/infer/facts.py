"""What a read series was, for drift: scanner, kernel, geometry, contrast and a coarse HU histogram of the body."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pydicom
from pydicom.multival import MultiValue

from detector.io import SeriesSelection, Volume
from detector.preprocess.regions import anatomy_mask

HU_EDGES: tuple[float, ...] = tuple(float(v) for v in np.linspace(-1000.0, 2000.0, 13))
"""Bin edges (HU) of the body histogram: 12 bins of 250 HU; values outside go to the first or last bin."""
HISTOGRAM_SLICES = 8
"""Slices (evenly spaced) the body histogram is taken from: a few milliseconds for any series."""
_EQUIPMENT = ("Manufacturer", "ManufacturerModelName", "ConvolutionKernel", "KVP")


def _text(value: object) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue):
        return "\\".join(str(v).strip() for v in value) or None
    return str(value).strip() or None


def _number(value: object) -> float | None:
    try:
        return None if value is None or value == "" else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def body_histogram(volume: Volume, slices: int = HISTOGRAM_SLICES) -> list[float]:
    """Fractions (summing to 1, or all 0 when no body is found) of body voxels in each ``HU_EDGES`` bin, read at the
    centre of each body mask cell on ``slices`` evenly spaced slices."""
    depth = volume.hu.shape[0]
    picked = np.unique(np.linspace(0, depth - 1, min(depth, max(slices, 2))).round().astype(np.int64))
    geometry = volume.geometry
    sub = replace(volume, hu=volume.hu[picked], geometry=replace(
        geometry, positions_mm=geometry.positions_mm[picked],
        sop_instance_uids=tuple(geometry.sop_instance_uids[k] for k in picked),
        shape=(len(picked), *geometry.shape[1:])))
    mask = anatomy_mask(sub, "body")
    if mask is None:  # only "none" has no mask
        return [0.0] * (len(HU_EDGES) - 1)
    cell = mask.cell_px
    samples = sub.hu[:, cell // 2::cell, cell // 2::cell]
    rows, columns = min(samples.shape[1], mask.cells.shape[1]), min(samples.shape[2], mask.cells.shape[2])
    inside = samples[:, :rows, :columns][mask.cells[:, :rows, :columns]]
    values = np.clip(inside.astype(np.float32), HU_EDGES[0], HU_EDGES[-1])
    counts, _ = np.histogram(values, bins=np.asarray(HU_EDGES))
    total = int(counts.sum())
    return [round(float(c) / total, 4) if total else 0.0 for c in counts]


def series_facts(volume: Volume, selection: SeriesSelection) -> dict[str, object]:
    """The read series' equipment (from its first image's header), geometry, contrast and body histogram,
    as JSON-ready data: what drift watching compares between periods."""
    first = selection.chosen.instances[0]
    header = pydicom.dcmread(first.path, stop_before_pixels=True, specific_tags=list(_EQUIPMENT))
    agent = volume.contrast_agent
    return {
        "manufacturer": _text(header.get("Manufacturer")),
        "manufacturer_model_name": _text(header.get("ManufacturerModelName")),
        "convolution_kernel": _text(header.get("ConvolutionKernel")),
        "kvp": _number(header.get("KVP")),
        "slice_thickness_mm": volume.slice_thickness_mm,
        "pixel_spacing_mm": [float(v) for v in volume.geometry.pixel_spacing_mm],
        "contrast": bool(agent),
        "contrast_agent": agent,
        "slices": int(volume.hu.shape[0]),
        "hu_edges": list(HU_EDGES),
        "hu_histogram": body_histogram(volume),
    }
