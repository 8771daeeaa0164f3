"""The domain gate: whether a series is what a model was made for (body part, contrast, slices), from its tags
and, when tags are missing, from its pixels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from detector.io import InstanceHeader, Volume, read_hu
from detector.preprocess.anatomy import enclosed, outside_air
from detector.registry import ModelCard

SAMPLED_SLICES = 9
"""Slices, evenly spread over the middle 60% of the series, that the pixel checks look at."""
HEAD_MAX_WIDTH_MM = 240.0
HEAD_MIN_BONE = 0.05
CHEST_MIN_WIDTH_MM = 250.0
CHEST_MIN_LUNG = 0.10
ENHANCED_FRACTION = 0.01
"""Intracranial soft tissue (5 mm clear of the skull) above 130 HU, median over the sampled slices, from which a
head series reads as contrast-enhanced: 0.0018 and 0.0 on the two non-contrast head series of ../shared/ct;
vessels, sinuses and choroid plexus enhance to 150-300 HU after iodine."""
BODY_PARTS = {"HEAD": ("HEAD", "BRAIN", "SKULL"), "CHEST": ("CHEST", "LUNG", "THORAX")}


class OutOfDomainError(ValueError):
    """The series is not what the model was made for; the message lists every reason.

    ``headers``: the refused series' image headers as the detector read them, for the objects that say it was
    not analysed.
    """

    def __init__(self, reasons: Sequence[str], headers: Sequence[Dataset] = ()) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = tuple(reasons)
        self.headers = tuple(headers)


@dataclass(frozen=True)
class Slice:
    """One sampled image in HU with its pixel spacing (rows, columns) in mm."""

    hu: NDArray[np.float32]
    spacing_mm: tuple[float, float]


@dataclass(frozen=True)
class PixelReading:
    """What the pixels say: body part (HEAD, CHEST or None) and, for a head, contrast (None: not judged)."""

    body_part: str | None
    contrast: bool | None
    evidence: str


def sampled(volume: Volume, count: int = SAMPLED_SLICES) -> list[Slice]:
    """``count`` slices of the volume, evenly over its middle 60%."""
    depth = volume.geometry.shape[0]
    picks = np.unique(np.linspace(depth * 0.2, (depth - 1) * 0.8, count).astype(int))
    return [Slice(volume.hu[z].astype(np.float32), volume.geometry.pixel_spacing_mm) for z in picks]


def sampled_files(headers: Sequence[InstanceHeader], count: int = SAMPLED_SLICES) -> list[Slice]:
    """``count`` images of one series (ordered along the table), evenly over its middle 60%, decoded."""
    ordered = sorted((h for h in headers if h.position and h.pixel_spacing), key=lambda h: h.position[2])  # type: ignore[index]
    if not ordered:
        return []
    picks = np.unique(np.linspace(len(ordered) * 0.2, (len(ordered) - 1) * 0.8, count).astype(int))
    return [Slice(read_hu(ordered[k].path), ordered[k].pixel_spacing) for k in picks]  # type: ignore[arg-type]


def _erode(mask: NDArray[np.bool_], steps: int) -> NDArray[np.bool_]:
    for _ in range(steps):
        inner = mask.copy()
        inner[1:] &= mask[:-1]
        inner[:-1] &= mask[1:]
        inner[:, 1:] &= mask[:, :-1]
        inner[:, :-1] &= mask[:, 1:]
        mask = inner
    return mask


def read_pixels(slices: Sequence[Slice]) -> PixelReading:
    """Body part and (for a head) contrast from the sampled slices: the body's width, the share of it that is air
    inside the body (lungs) and bone (skull), and the enhanced share of the brain."""
    if not slices:
        return PixelReading(None, None, "no slice to read")
    widths, lungs, bones, enhanced = [], [], [], []
    for s in slices:
        body = enclosed(s.hu > -300)
        size = max(int(body.sum()), 1)
        columns = np.nonzero(body.any(axis=0))[0]
        widths.append(float(np.ptp(columns) * s.spacing_mm[1]) if columns.size else 0.0)
        lungs.append(float((body & (s.hu < -400) & ~outside_air(s.hu, 0.5)).sum()) / size)
        bones.append(float((body & (s.hu > 400)).sum()) / size)
        brain = _erode(enclosed(s.hu > 300) & (s.hu < 300), int(round(5.0 / s.spacing_mm[0]))) & (s.hu > -50)
        enhanced.append(float((brain & (s.hu > 130)).sum()) / brain.sum() if brain.sum() > 1000 else np.nan)
    width, lung, bone = float(np.median(widths)), float(np.median(lungs)), float(np.median(bones))
    evidence = f"body {width:.0f} mm wide, {lung:.0%} air inside, {bone:.0%} bone"
    if width <= HEAD_MAX_WIDTH_MM and bone >= HEAD_MIN_BONE:
        share = float(np.nanmedian(enhanced)) if not np.isnan(enhanced).all() else float("nan")
        contrast = None if np.isnan(share) else share >= ENHANCED_FRACTION
        return PixelReading("HEAD", contrast, f"{evidence}, {share:.2%} of the brain above 130 HU")
    if width >= CHEST_MIN_WIDTH_MM and lung >= CHEST_MIN_LUNG:
        return PixelReading("CHEST", None, evidence)
    return PixelReading(None, None, evidence)


def _tagged_part(tag: str | None) -> str | None:
    value = (tag or "").strip().upper()
    return next((part for part, names in BODY_PARTS.items() if value in names), None) if value else None


def domain_reasons(volume: Volume, card: ModelCard) -> list[str]:
    """Why ``card``'s model must not read ``volume`` (empty: it may): body part, contrast, slice thickness and
    coverage. Tags decide where they speak; the pixels decide where they are missing, and overrule a body part
    tag they contradict."""
    domain, reasons = card.domain, []
    reading = read_pixels(sampled(volume))
    tagged = _tagged_part(volume.body_part_examined)
    part = reading.body_part or tagged
    if part is not None and part != card.body_part.upper():
        source = "the pixels" if reading.body_part else "Body Part Examined"
        reasons.append(f"body part {part} from {source} ({reading.evidence}); the model reads {card.body_part}")
    contrast = bool(volume.contrast_agent) if volume.contrast_agent is not None else reading.contrast
    if domain.contrast != "any" and contrast is not None and contrast != (domain.contrast == "contrast"):
        said = (f"Contrast/Bolus Agent {volume.contrast_agent!r}" if volume.contrast_agent is not None
                else f"the pixels ({reading.evidence})")
        reasons.append(f"{'contrast-enhanced' if contrast else 'non-contrast'} series by {said}; "
                       f"the model reads {domain.contrast} CT")
    thickness = volume.slice_thickness_mm or float(np.median(volume.geometry.slice_gaps_mm))
    low, high = domain.slice_thickness_mm
    if not low <= thickness <= high:
        reasons.append(f"slices {thickness:.3g} mm thick; the model reads {low:g}-{high:g} mm")
    coverage = float(np.ptp(volume.geometry.slice_coordinates_mm))
    if coverage < domain.min_coverage_mm:
        reasons.append(f"the series covers {coverage:.0f} mm; the model needs {domain.min_coverage_mm:g} mm")
    return reasons
