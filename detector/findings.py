"""The detector's output, as plain data: what every later stage (reports, audit) consumes."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Code:
    """A coded concept (value, coding scheme designator, meaning), e.g. ("RID50167", "RADLEX", "Hemorrhage")."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class SliceBox:
    """A finding's 2D box on one source image, in pixel index coordinates (column x, row y), x1 < x2, y1 < y2.

    Index coordinates put the centre of the first pixel at (0, 0), as detector.io and detector.preprocess do;
    DICOM image coordinates (SCOORD, GSPS) put it at (0.5, 0.5).
    """

    sop_instance_uid: str
    box_px: tuple[float, float, float, float]
    score: float


@dataclass(frozen=True)
class Finding:
    """One 3D finding in patient space (LPS millimetres), with its per-slice boxes.

    ``voxel_box`` is (z0, y0, x0, z1, y1, x1) in the selected series' volume indices (end exclusive);
    ``slices`` are ordered along the slice normal.
    """

    label: str
    finding_type: Code
    score: float
    centre_mm: tuple[float, float, float]
    size_mm: tuple[float, float, float]
    voxel_box: tuple[int, int, int, int, int, int]
    slices: tuple[SliceBox, ...]
    finding_site: Code | None = None
    tracking_id: str = field(default="")
