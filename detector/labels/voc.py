"""PASCAL-VOC box files, one per image named by SOP Instance UID, as lesions: boxes on neighbouring images join."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from detector.labels.files import xml_root
from detector.labels.lesions import (
    ImagePlane,
    LabelError,
    LesionOutline,
    LesionRecord,
    box_polygon,
    record_from_outlines,
)

GAP_SLICES = 1
"""Unannotated slices allowed between two boxes of one lesion (a reader may skip one)."""

Edges = tuple[float, float, float, float]
StackKey = tuple[object, ...]


@dataclass(frozen=True)
class VocBox:
    """One object's box on one image: its name and pixel edges (x1, y1, x2, y2) in index coordinates."""

    name: str
    edges: Edges


@dataclass(frozen=True, eq=False)
class _Placed:
    path: Path
    box: VocBox
    plane: ImagePlane

    def outline(self) -> LesionOutline:
        return LesionOutline(self.plane, box_polygon(*self.box.edges))


def is_voc(root: ET.Element) -> bool:
    """Whether a parsed XML document is a PASCAL-VOC annotation."""
    return root.tag == "annotation" and any(child.tag in ("object", "size") for child in root)


def read_boxes(path: Path) -> list[VocBox]:
    """The boxes of one file; inclusive pixel bounds xmin..xmax, ymin..ymax become edges xmin - 0.5 .. xmax + 0.5."""
    root = xml_root(path)
    if not is_voc(root):
        raise LabelError(f"{path}: not a PASCAL-VOC annotation (root <{root.tag}>)")
    boxes = []
    for k, obj in enumerate(root.findall("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        bounds = obj.find("bndbox")
        texts = [bounds.findtext(tag) if bounds is not None else None for tag in ("xmin", "ymin", "xmax", "ymax")]
        try:
            x1, y1, x2, y2 = (float(text or "nan") for text in texts)
        except ValueError:
            x1 = y1 = x2 = y2 = float("nan")
        if not name or not (x1 <= x2 and y1 <= y2):
            raise LabelError(f"{path}: object {k} needs a name and a bndbox with numeric xmin <= xmax, ymin <= ymax")
        boxes.append(VocBox(name, (x1 - 0.5, y1 - 0.5, x2 + 0.5, y2 + 0.5)))
    return boxes


def read_voc(paths: Sequence[Path], planes: Mapping[str, ImagePlane]) -> list[LesionRecord]:
    """The lesions of per-slice box files: boxes of one name on images at most ``GAP_SLICES`` apart in their
    stack that overlap in patient space form one lesion (:func:`record_from_outlines`), labelled by the name."""
    placed = []
    for path in paths:
        plane = planes.get(path.stem)
        if plane is None:
            raise LabelError(f"{path}: references image {path.stem} which is not in the study")
        placed += [_Placed(path, box, plane) for box in read_boxes(path)]
    ranks = _slice_ranks(planes)
    group = list(range(len(placed)))
    for i, j in combinations(range(len(placed)), 2):
        if _joined(placed[i], placed[j], ranks):
            old, new = group[j], group[i]
            group = [new if g == old else g for g in group]
    lesions = []
    for g in sorted(set(group)):
        members = sorted((p for p, k in zip(placed, group, strict=True) if k == g),
                         key=lambda p: float(p.plane.position_mm @ p.plane.normal))
        files = list(dict.fromkeys(p.path.name for p in members))
        source = files[0] if len(files) == 1 else f"{files[0]} .. {files[-1]} ({len(files)} files along the normal)"
        lesions.append(record_from_outlines([p.outline() for p in members], members[0].box.name, source))
    return lesions


def _joined(a: _Placed, b: _Placed, ranks: Mapping[str, tuple[StackKey, int]]) -> bool:
    """Same name, neighbouring images of one stack, and boxes that overlap once a's is projected onto b's image."""
    (stack_a, rank_a), (stack_b, rank_b) = ranks[a.plane.sop_instance_uid], ranks[b.plane.sop_instance_uid]
    if a.box.name != b.box.name or stack_a != stack_b or not 1 <= abs(rank_a - rank_b) <= GAP_SLICES + 1:
        return False
    xy, _ = b.plane.to_pixels(a.plane.to_patient(box_polygon(*a.box.edges)))
    x1, y1, x2, y2 = b.box.edges
    return bool(xy[:, 0].min() <= x2 and x1 <= xy[:, 0].max() and xy[:, 1].min() <= y2 and y1 <= xy[:, 1].max())


def _slice_ranks(planes: Mapping[str, ImagePlane]) -> dict[str, tuple[StackKey, int]]:
    """Each image's stack (images sharing orientation, pixel spacing and thickness) and its level along the normal."""
    stacks: dict[StackKey, list[ImagePlane]] = {}
    for plane in planes.values():
        key = (*np.round(plane.row_direction, 3), *np.round(plane.column_direction, 3),
               *plane.pixel_spacing_mm, round(plane.thickness_mm, 3))
        stacks.setdefault(key, []).append(plane)
    ranks = {}
    for key, members in stacks.items():
        along = np.round([float(p.position_mm @ p.normal) for p in members], 2)
        levels = np.unique(along)
        for plane, level in zip(members, np.searchsorted(levels, along), strict=True):
            ranks[plane.sop_instance_uid] = (key, int(level))
    return ranks
